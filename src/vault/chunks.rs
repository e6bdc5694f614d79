//! Reading chunks: pack maps, record decompression, a bounded cache, hash verification.
//!
//! Owns the read path from a `ChunkLoc` to plain bytes. Sealed packs are mapped with memmap2 and
//! the maps are shared; a record (one zstd frame holding one or more chunks) is decompressed once
//! and kept in a byte-bounded cache, so reading the small files of one directory in order costs
//! one decompression. Every chunk handed out is checked against its BLAKE3 id: damaged data is an
//! error, never wrong bytes. Thread-safe (`&self` everywhere); never writes.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

use super::catalog::ChunkLoc;
use super::format::ChunkId;
use super::packs::{self, Codec};
use super::{VaultError, VaultResult};

/// Decompressed records kept in memory, by default.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

type CachedRecord = (Arc<Vec<u8>>, u64);

/// Shared, bounded cache of decompressed records keyed by (pack, payload offset).
struct RecordCache {
    /// (pack, payload offset) -> (record bytes, last use tick)
    map: HashMap<(i64, u64), CachedRecord>,
    bytes: usize,
    limit: usize,
    tick: u64,
}

impl RecordCache {
    fn get(&mut self, key: (i64, u64)) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&key).map(|(v, t)| {
            *t = tick;
            v.clone()
        })
    }

    fn put(&mut self, key: (i64, u64), v: Arc<Vec<u8>>) {
        if v.len() > self.limit / 4 {
            return;
        }
        self.tick += 1;
        self.bytes += v.len();
        if let Some((old, _)) = self.map.insert(key, (v, self.tick)) {
            self.bytes -= old.len();
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
                    freed += v.len();
                }
                keep
            });
            self.bytes -= freed;
        }
    }
}

/// Resolves pack ids to maps and chunk locations to verified bytes.
pub struct ChunkReader {
    packs_dir: PathBuf,
    maps: Mutex<HashMap<i64, Arc<Mmap>>>,
    cache: Mutex<RecordCache>,
}

impl ChunkReader {
    pub fn new(packs_dir: PathBuf, cache_bytes: usize) -> ChunkReader {
        ChunkReader {
            packs_dir,
            maps: Mutex::new(HashMap::new()),
            cache: Mutex::new(RecordCache {
                map: HashMap::new(),
                bytes: 0,
                limit: cache_bytes,
                tick: 0,
            }),
        }
    }

    fn map(&self, pack: i64, name: &dyn Fn(i64) -> VaultResult<String>) -> VaultResult<Arc<Mmap>> {
        if let Some(m) = self.maps.lock().expect("pack map lock").get(&pack) {
            return Ok(m.clone());
        }
        let name = name(pack)?;
        let path = self.packs_dir.join(format!("{name}.pack"));
        let f = File::open(&path).map_err(|e| VaultError::Io {
            path: path.clone(),
            source: e,
        })?;
        // SAFETY: sealed packs are immutable: coffre never writes to or truncates a pack file
        // after it is named in the catalog (gc replaces packs by unlinking them, which leaves
        // existing maps valid).
        let m = unsafe { Mmap::map(&f) }.map_err(|e| VaultError::Io {
            path: path.clone(),
            source: e,
        })?;
        packs::check_header(&m).map_err(|e| VaultError::Damaged {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let m = Arc::new(m);
        self.maps
            .lock()
            .expect("pack map lock")
            .insert(pack, m.clone());
        Ok(m)
    }

    /// Returns the decompressed record that holds the chunk at `loc`, and the chunk's range in it.
    /// `name` maps a pack id to its file name (a catalog lookup, done only on first use).
    pub fn record(
        &self,
        id: &ChunkId,
        loc: &ChunkLoc,
        name: &dyn Fn(i64) -> VaultResult<String>,
    ) -> VaultResult<(Arc<Vec<u8>>, std::ops::Range<usize>)> {
        let key = (loc.pack, loc.record.offset);
        let range = loc.offset as usize..loc.offset as usize + loc.len as usize;
        if let Some(rec) = self.cache.lock().expect("cache lock").get(key) {
            return Ok((rec, range));
        }
        let bad = |detail: String| VaultError::BadChunk { id: *id, detail };
        let map = self.map(loc.pack, name)?;
        let start = loc.record.offset as usize;
        let stored = map
            .get(start..start + loc.record.stored_len as usize)
            .ok_or_else(|| bad("record lies past the end of its pack".into()))?;
        let plain = match loc.record.codec {
            Codec::Raw => stored.to_vec(),
            Codec::Zstd => {
                let mut out = Vec::with_capacity(loc.record.plain_len as usize);
                zstd::bulk::Decompressor::new()
                    .and_then(|mut d| d.decompress_to_buffer(stored, &mut out))
                    .map_err(|e| bad(format!("cannot decompress: {e}")))?;
                out
            }
        };
        if plain.len() != loc.record.plain_len as usize || range.end > plain.len() {
            return Err(bad("record has the wrong length".into()));
        }
        let rec = Arc::new(plain);
        self.cache.lock().expect("cache lock").put(key, rec.clone());
        Ok((rec, range))
    }

    /// Reads one chunk and checks it against its id.
    pub fn read(
        &self,
        id: &ChunkId,
        loc: &ChunkLoc,
        name: &dyn Fn(i64) -> VaultResult<String>,
    ) -> VaultResult<Vec<u8>> {
        let (rec, range) = self.record(id, loc, name)?;
        let data = &rec[range];
        if ChunkId::of(data) != *id {
            return Err(VaultError::BadChunk {
                id: *id,
                detail: "content does not match its hash".into(),
            });
        }
        Ok(data.to_vec())
    }
}
