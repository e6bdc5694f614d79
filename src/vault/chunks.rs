//! Reading chunks: the only way to get chunk bytes. `ChunkSource::read_chunk(id)` looks the chunk
//! up (a bounded location cache in front of the catalog), names its pack, reads the record
//! through the pack store, decompresses it once into a byte-bounded cache (reading the small files
//! of one directory in order costs one decompression; threads that need the same record, such as
//! neighbouring blocks of one image frame, wait for that one decompression) and checks the chunk against its BLAKE3 id
//! the first time it is handed out of a cached record: damaged data is an error, never wrong
//! bytes. Thread-safe (`&self` everywhere); never writes. Caches key records by pack id, which
//! the catalog never reuses, so a deleted pack's id cannot serve another pack's bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::catalog::{CatalogPool, ChunkLoc};
use super::format::ChunkId;
use super::packs::{self, Codec};
use super::store::PackStore;
use super::{VaultError, VaultResult};

/// A decompressed record and which of its chunks (by offset) were already checked.
struct Record {
    data: Vec<u8>,
    verified: Mutex<Vec<u32>>,
}

type CachedRecord = (Arc<Record>, u64);
/// A record by (pack id, payload offset).
type RecordKey = (i64, u64);

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

/// The detail of a chunk whose record was read but whose bytes are not its own: the other chunks
/// of the record may be whole.
const MISMATCH: &str = "content does not match its hash";

/// Chunk locations kept in memory at most (about 80 bytes each).
const MAX_LOCATIONS: usize = 1 << 16;

/// Verified bytes of one chunk (a range of a cached, decompressed record).
pub struct ChunkBytes {
    rec: Arc<Record>,
    range: std::ops::Range<usize>,
}

impl std::ops::Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.rec.data[self.range.clone()]
    }
}

/// Resolves chunk ids to verified bytes. See the module header.
pub struct ChunkSource {
    store: Arc<dyn PackStore>,
    pool: Arc<CatalogPool>,
    /// pack id -> pack name, for packs whose header was checked
    packs: RwLock<HashMap<i64, Arc<str>>>,
    locations: Mutex<HashMap<ChunkId, ChunkLoc>>,
    cache: Mutex<RecordCache>,
    /// Records being read and decompressed now, so threads asking for chunks of the same record
    /// (neighbouring blocks of one image frame) wait for one decompression instead of each
    /// doing it.
    loading: Mutex<HashMap<RecordKey, Arc<Mutex<()>>>>,
}

impl ChunkSource {
    pub fn new(store: Arc<dyn PackStore>, pool: Arc<CatalogPool>, cache_bytes: usize) -> Self {
        ChunkSource {
            store,
            pool,
            packs: RwLock::new(HashMap::new()),
            locations: Mutex::new(HashMap::new()),
            cache: Mutex::new(RecordCache {
                map: HashMap::new(),
                bytes: 0,
                limit: cache_bytes,
                tick: 0,
            }),
            loading: Mutex::new(HashMap::new()),
        }
    }

    /// The bytes of chunk `id`, checked against it. A failure with a cached location looks the
    /// chunk up again: a backup may have stored a good copy elsewhere since (damage healed).
    pub fn read_chunk(&self, id: &ChunkId) -> VaultResult<ChunkBytes> {
        let loc = self.location(id)?;
        match self.read_at(id, &loc) {
            Ok(b) => Ok(b),
            Err(e) => {
                self.locations.lock().expect("locations lock").remove(id);
                match self.location(id) {
                    Ok(now) if now != loc => self.read_at(id, &now),
                    _ => Err(e),
                }
            }
        }
    }

    fn read_at(&self, id: &ChunkId, loc: &ChunkLoc) -> VaultResult<ChunkBytes> {
        let loc = *loc;
        let range = loc.offset as usize..loc.offset as usize + loc.len as usize;
        let rec = self.load(id, &loc)?;
        let mut verified = rec.verified.lock().expect("verified lock");
        if !verified.contains(&loc.offset) {
            let data = rec.data.get(range.clone()).unwrap_or_default();
            if ChunkId::of(data) != *id {
                return Err(VaultError::BadChunk {
                    id: *id,
                    detail: MISMATCH.into(),
                });
            }
            verified.push(loc.offset);
        }
        drop(verified);
        Ok(ChunkBytes { rec, range })
    }

    /// The chunks a failure to read `id` shows damaged, so the next backup stores them all again
    /// at once: `id`, and the other chunks of its record that are damaged too (every one when
    /// the record could not be read: a short pack, a frame zstd refuses; those whose bytes do
    /// not match their id when it could, as when a flipped byte changed a frame's output).
    pub fn covered_by(&self, id: &ChunkId, e: &VaultError) -> Vec<ChunkId> {
        let mut out = vec![*id];
        let VaultError::BadChunk { detail, .. } = e else {
            return out;
        };
        let Ok(loc) = self.location(id) else {
            return out;
        };
        if loc.record.plain_len == loc.len {
            return out;
        }
        let key = (loc.pack, loc.record.offset);
        let read = if detail == MISMATCH {
            match self.cache.lock().expect("cache lock").get(key) {
                Some(rec) => Some(rec),
                None => return out, // the record is gone from the cache: no more is known
            }
        } else {
            None
        };
        let rows = self
            .pool
            .with(|c| c.chunks_in_record(loc.pack, loc.record.offset))
            .unwrap_or_default();
        for row in rows.into_iter().filter(|r| r.id != *id) {
            let whole = read.as_ref().is_some_and(|rec| {
                let at = row.loc.offset as usize..(row.loc.offset + row.loc.len) as usize;
                rec.data.get(at).is_some_and(|b| ChunkId::of(b) == row.id)
            });
            if !whole {
                out.push(row.id);
            }
        }
        out
    }

    fn location(&self, id: &ChunkId) -> VaultResult<ChunkLoc> {
        if let Some(l) = self.locations.lock().expect("locations lock").get(id) {
            return Ok(*l);
        }
        let loc = self
            .pool
            .with(|c| c.chunk(id))?
            .ok_or_else(|| VaultError::Missing {
                what: "chunk",
                id: id.to_hex(),
            })?;
        let mut locs = self.locations.lock().expect("locations lock");
        if locs.len() >= MAX_LOCATIONS {
            locs.clear();
        }
        locs.insert(*id, loc);
        Ok(loc)
    }

    /// The name of pack `pack`, its header checked on first use.
    fn pack_name(&self, id: &ChunkId, pack: i64) -> VaultResult<Arc<str>> {
        if let Some(n) = self.packs.read().expect("packs lock").get(&pack) {
            return Ok(n.clone());
        }
        let name: Arc<str> = self
            .pool
            .with(|c| c.pack_name(pack))?
            .ok_or_else(|| VaultError::Damaged {
                path: "vault.db".into(),
                detail: format!("chunk {id} names unknown pack {pack}"),
            })?
            .into();
        let mut header = [0u8; packs::PACK_HEADER_LEN as usize];
        self.store
            .read_at(&name, 0, &mut header)
            .map_err(|e| pack_error(id, &name, e))?;
        packs::check_header(&header).map_err(|e| VaultError::BadChunk {
            id: *id,
            detail: format!("its pack {name} is damaged: {e}"),
        })?;
        self.packs
            .write()
            .expect("packs lock")
            .insert(pack, name.clone());
        Ok(name)
    }

    fn load(&self, id: &ChunkId, loc: &ChunkLoc) -> VaultResult<Arc<Record>> {
        let key = (loc.pack, loc.record.offset);
        if let Some(rec) = self.cache.lock().expect("cache lock").get(key) {
            return Ok(rec);
        }
        let turn = self
            .loading
            .lock()
            .expect("loading lock")
            .entry(key)
            .or_default()
            .clone();
        // A thread that panicked while decompressing leaves nothing half-done behind the lock.
        let held = turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Whoever held the turn before may have cached the record meanwhile.
        let cached = self.cache.lock().expect("cache lock").get(key);
        let r = match cached {
            Some(rec) => Ok(rec),
            None => self.decompress(id, loc),
        };
        drop(held);
        // The last thread with this turn removes it; the map's lock is held until `turn` is
        // dropped, so two last threads cannot both see the other and leave it behind.
        let mut loading = self.loading.lock().expect("loading lock");
        if Arc::strong_count(&turn) == 2 {
            loading.remove(&key);
        }
        drop(turn);
        drop(loading);
        r
    }

    /// Reads and decompresses the record holding `id` and caches it.
    fn decompress(&self, id: &ChunkId, loc: &ChunkLoc) -> VaultResult<Arc<Record>> {
        let key = (loc.pack, loc.record.offset);
        let bad = |detail: String| VaultError::BadChunk { id: *id, detail };
        let name = self.pack_name(id, loc.pack)?;
        let mut stored = vec![0u8; loc.record.stored_len as usize];
        self.store
            .read_at(&name, loc.record.offset, &mut stored)
            .map_err(|e| pack_error(id, &name, e))?;
        let plain = match loc.record.codec {
            Codec::Raw => stored,
            Codec::Zstd => {
                let mut out = Vec::with_capacity(loc.record.plain_len as usize);
                with_decompressor(|d| d.decompress_to_buffer(&stored[..], &mut out))
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

thread_local! {
    /// One zstd context per reading thread, made on its first record and kept.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's zstd decompression context.
fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        f(slot.as_mut().expect("made above"))
    })
}

fn pack_error(id: &ChunkId, pack: &str, e: std::io::Error) -> VaultError {
    let detail = match e.kind() {
        std::io::ErrorKind::UnexpectedEof => format!("its record lies past the end of pack {pack}"),
        std::io::ErrorKind::NotFound => format!("its pack {pack} is missing"),
        _ => format!("cannot read its pack {pack}: {e}"),
    };
    VaultError::BadChunk { id: *id, detail }
}
