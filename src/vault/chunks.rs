//! Reading chunks: pack maps, record decompression, a bounded cache, hash verification.
//!
//! Owns the read path from a `ChunkLoc` to plain bytes. Sealed packs are opened once and read
//! with `pread` (see `ChunkReader` for why not mmap); a record (one zstd frame holding one or
//! more chunks) is decompressed once and kept in a byte-bounded cache, so reading the small files
//! of one directory in order costs one decompression. Every chunk is checked against its BLAKE3
//! id the first time it is handed out of a cached record: damaged data is an error, never wrong
//! bytes. Thread-safe (`&self` everywhere); never writes.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::catalog::{Catalog, ChunkLoc};
use super::format::ChunkId;
use super::packs::{self, Codec};
use super::{VaultError, VaultResult};

/// Decompressed records kept in memory, by default.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

/// A decompressed record and which of its chunks (by offset) were already checked.
pub struct Record {
    data: Vec<u8>,
    verified: Mutex<Vec<u32>>,
}

impl Record {
    /// The record's plain bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
}

type CachedRecord = (Arc<Record>, u64);

/// Shared, bounded cache of decompressed records keyed by (pack, payload offset).
struct RecordCache {
    /// (pack, payload offset) -> (record bytes, last use tick)
    map: HashMap<(i64, u64), CachedRecord>,
    bytes: usize,
    limit: usize,
    tick: u64,
}

impl RecordCache {
    fn get(&mut self, key: (i64, u64)) -> Option<Arc<Record>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&key).map(|(v, t)| {
            *t = tick;
            v.clone()
        })
    }

    fn put(&mut self, key: (i64, u64), v: Arc<Record>) {
        if v.data.len() > self.limit / 4 {
            return;
        }
        self.tick += 1;
        self.bytes += v.data.len();
        if let Some((old, _)) = self.map.insert(key, (v, self.tick)) {
            self.bytes -= old.data.len();
        }
        if self.bytes > self.limit {
            // Evict the older half: amortised O(1) per insert, and good enough an LRU for
            // sequential and directory-ordered reads.
            let mut ticks: Vec<u64> = self.map.values().map(|(_, t)| *t).collect();
            ticks.sort_unstable();
            let cut = ticks[ticks.len() / 2];
            let mut freed = 0;
            self.map.retain(|_, (v, t)| {
                let keep = *t > cut;
                if !keep {
                    freed += v.data.len();
                }
                keep
            });
            self.bytes -= freed;
        }
    }
}

/// Resolves pack ids to open files and chunk locations to verified bytes.
///
/// Why `pread` and not memmap2 (which DESIGN.md suggested): measured on a full restore of the
/// Linux tree, every mapped pack page stayed in the process RSS (170+ MiB, even with
/// `MADV_DONTNEED` after each record), and a pack truncated behind our back would kill the process
/// with SIGBUS instead of giving an error. One `pread` per record costs a copy of compressed bytes,
/// which is small next to decompressing them.
pub struct ChunkReader {
    packs_dir: PathBuf,
    files: Mutex<HashMap<i64, Arc<File>>>,
    cache: Mutex<RecordCache>,
}

impl ChunkReader {
    pub fn new(packs_dir: PathBuf, cache_bytes: usize) -> ChunkReader {
        ChunkReader {
            packs_dir,
            files: Mutex::new(HashMap::new()),
            cache: Mutex::new(RecordCache {
                map: HashMap::new(),
                bytes: 0,
                limit: cache_bytes,
                tick: 0,
            }),
        }
    }

    fn file(&self, pack: i64, catalog: &Catalog) -> VaultResult<Arc<File>> {
        if let Some(f) = self.files.lock().expect("pack files lock").get(&pack) {
            return Ok(f.clone());
        }
        let name = catalog
            .pack_name(pack)?
            .ok_or_else(|| VaultError::Damaged {
                path: self.packs_dir.with_file_name("vault.db"),
                detail: format!("a chunk names unknown pack {pack}"),
            })?;
        let path = self.packs_dir.join(format!("{name}.pack"));
        let io = |e| VaultError::Io {
            path: path.clone(),
            source: e,
        };
        let f = File::open(&path).map_err(io)?;
        let mut header = [0u8; packs::PACK_HEADER_LEN as usize];
        f.read_exact_at(&mut header, 0).map_err(io)?;
        packs::check_header(&header).map_err(|e| VaultError::Damaged {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let f = Arc::new(f);
        self.files
            .lock()
            .expect("pack files lock")
            .insert(pack, f.clone());
        Ok(f)
    }

    /// Returns the decompressed record that holds chunk `id` at `loc`, and the chunk's range in
    /// it, checked against `id`. `catalog` names the pack (looked up on first use of a pack).
    pub fn record(
        &self,
        id: &ChunkId,
        loc: &ChunkLoc,
        catalog: &Catalog,
    ) -> VaultResult<(Arc<Record>, std::ops::Range<usize>)> {
        let range = loc.offset as usize..loc.offset as usize + loc.len as usize;
        let rec = self.load(id, loc, catalog)?;
        let mut verified = rec.verified.lock().expect("verified lock");
        if !verified.contains(&loc.offset) {
            let data = rec.data.get(range.clone()).unwrap_or_default();
            if ChunkId::of(data) != *id {
                return Err(VaultError::BadChunk {
                    id: *id,
                    detail: "content does not match its hash".into(),
                });
            }
            verified.push(loc.offset);
        }
        drop(verified);
        Ok((rec, range))
    }

    fn load(&self, id: &ChunkId, loc: &ChunkLoc, catalog: &Catalog) -> VaultResult<Arc<Record>> {
        let key = (loc.pack, loc.record.offset);
        if let Some(rec) = self.cache.lock().expect("cache lock").get(key) {
            return Ok(rec);
        }
        let bad = |detail: String| VaultError::BadChunk { id: *id, detail };
        let file = self.file(loc.pack, catalog)?;
        let mut stored = vec![0u8; loc.record.stored_len as usize];
        file.read_exact_at(&mut stored, loc.record.offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    bad("record lies past the end of its pack".into())
                }
                _ => bad(format!("cannot read its pack: {e}")),
            })?;
        let plain = match loc.record.codec {
            Codec::Raw => stored,
            Codec::Zstd => {
                let mut out = Vec::with_capacity(loc.record.plain_len as usize);
                zstd::bulk::Decompressor::new()
                    .and_then(|mut d| d.decompress_to_buffer(&stored[..], &mut out))
                    .map_err(|e| bad(format!("cannot decompress: {e}")))?;
                out
            }
        };
        if plain.len() != loc.record.plain_len as usize
            || (loc.offset as usize + loc.len as usize) > plain.len()
        {
            return Err(bad("record has the wrong length".into()));
        }
        let rec = Arc::new(Record {
            data: plain,
            verified: Mutex::new(Vec::new()),
        });
        self.cache.lock().expect("cache lock").put(key, rec.clone());
        Ok(rec)
    }
}
