//! The write session: the only way to add data to a vault.
//!
//! `Vault::begin_write(&lock, opts)` opens a catalog transaction on a connection of its own and
//! starts the pack-writer thread; the compression pool starts with the first record (after the
//! backup's own threads, so a thread limit shrinks the pool; with no pool thread at all, sinks
//! compress on their own threads). Backup code hands chunk bytes to
//! `ChunkSink`s (cloneable, `Send`: one per worker thread), which deduplicate (against the vault and
//! this session), group small chunks into one record (256 KiB: grouping small files compresses
//! better and faster than one frame per file), and pass records to the pool; the writer appends
//! them to packs and seals (fsyncs) each pack at `PACK_TARGET`. Trees, content lists and new items
//! go into the same transaction; `commit(point)` makes the point visible.
//! Invariant: a chunk row names only a pack that was made durable; here `register_pack` is the
//! one place that inserts pack and chunk rows, and it only takes a `SealedPack`, which only the
//! writer makes, after `finish` and the store's `sync` (the other place is `rebuild_index`, which
//! fsyncs each pack before naming it).
//! Crash story: nothing is visible before the single COMMIT. Dropping a session without commit
//! rolls back and deletes the packs it wrote; a killed process leaves packs the catalog does not
//! name, which recovery quarantines.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use super::catalog::{Catalog, ChunkLoc, PointRow};
use super::damage::{DamageSet, Damaged, Journal};
use super::format::{self, ChunkId, Entry, Extent, ListId, TreeId};
use super::model::{ItemSource, check_item_name};
use super::packs::{Codec, PACK_TARGET, PackWriter, Record, RecordPos};
use super::store::PackStore;
use super::{Vault, VaultError, VaultResult, WriteLock, now_ns, random_hex};

/// A record is closed once it holds this many plain bytes.
pub const GROUP_TARGET: usize = 256 * 1024;
/// Chunks at least this big get a record of their own.
const ALONE: usize = GROUP_TARGET / 2;
/// True if a record of `plain_len` bytes holding a chunk of `len` bytes is an image frame of
/// several disk blocks (a block is 32 KiB; grouped file chunks are cut by content, so a record of
/// them that is only whole blocks is as unlikely as harmless): moved or repaired, its chunks go
/// to an `Image` sink, so frames stay frames.
pub(super) fn in_image_frame(plain_len: u32, len: u32) -> bool {
    let block = super::DEFAULT_IMAGE_FRAME as u32; // the smallest frame: one block
    len == block && plain_len > len && plain_len.is_multiple_of(block)
}

/// How a session runs.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Compression threads (0 = one per core).
    pub threads: usize,
}

/// How a sink packs chunks into records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkMode {
    /// Small chunks share one zstd frame (files: better ratio, fewer records).
    Group,
    /// Every chunk is a record of its own.
    Alone,
    /// Disk-image blocks: neighbouring blocks share one frame of the vault's image frame size
    /// (`Vault::image_frame`; at its default, 32 KiB, each block is a record of its own, so a
    /// random read through the mount decompresses one block).
    Image,
}

/// A point to commit: what the backup knows; the session adds ids, counts and sizes.
#[derive(Clone, Debug)]
pub struct NewPoint {
    pub item: i64,
    /// When the backup started (or the time it is recorded as taken).
    pub time: i64,
    pub root: Entry,
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    pub warnings: u64,
    pub consistency: Option<String>,
    /// `backup --keep-until`: keep the point at least until then (ns), whatever its policy says.
    pub keep_until: Option<i64>,
    /// `backup --tag` and `--note`.
    pub labels: super::model::PointLabels,
}

/// What a committed session added.
#[derive(Clone, Debug)]
pub struct Committed {
    pub point: PointRow,
    /// Bytes of new trees and content lists added to the catalog.
    pub catalog_bytes: u64,
    /// Chunks, trees and lists known damaged that this session stored again.
    pub repaired: u64,
}

/// A group of plain chunk bytes on its way to the compression pool.
struct RawRecord {
    plain: Vec<u8>,
    chunks: Vec<(ChunkId, u32)>,
}

/// A chunk in a pack: id, record, offset in the record's plain bytes, length.
type PackChunk = (ChunkId, RecordPos, u32, u32);

/// A pack that is durable (finished and its directory entry synced), with the chunks it holds.
struct SealedPack {
    name: String,
    size: u64,
    chunks: Vec<PackChunk>,
}

/// The first failure of any thread of the session; later ones are consequences.
#[derive(Default)]
struct Failure(Mutex<Option<String>>);

impl Failure {
    fn set(&self, e: impl std::fmt::Display) {
        let mut slot = self.0.lock().expect("failure lock");
        if slot.is_none() {
            *slot = Some(e.to_string());
        }
    }
    fn get(&self) -> Option<String> {
        self.0.lock().expect("failure lock").clone()
    }
}

/// What every sink shares (`Sync`).
struct SinkShared {
    raw: Sender<RawRecord>,
    /// The compression pool, started by the first record (so a backup's own required threads
    /// start first and the pool takes what the system allows).
    pool: Mutex<Pool>,
    records: Sender<Record>,
    level: i32,
    /// `Vault::image_frame`: where an `Image` sink closes a record.
    image_frame: usize,
    claimed: Mutex<HashSet<ChunkId>>,
    damage: Arc<DamageSet>,
    new_chunks: AtomicU64,
    new_bytes: AtomicU64,
    failure: Arc<Failure>,
    db: std::path::PathBuf,
}

/// The compression threads, once started.
struct Pool {
    /// Until the pool starts: the receiving end its threads take.
    input: Option<Receiver<RawRecord>>,
    want: usize,
    handles: Vec<JoinHandle<()>>,
    /// No thread could start: sinks compress on their own thread.
    inline: bool,
}

/// The catalog side, owned by whichever thread builds trees.
struct TxSide {
    catalog: Catalog,
    sealed: Receiver<SealedPack>,
    packs: Vec<String>,
    catalog_bytes: u64,
}

/// An open write session. See the module header.
pub struct WriteSession<'v> {
    /// A session lives no longer than the writer lock it was begun under.
    _lock: std::marker::PhantomData<&'v WriteLock>,
    store: Arc<dyn PackStore>,
    root: std::path::PathBuf,
    tx: Mutex<TxSide>,
    shared: Option<SinkShared>,
    writer: Option<JoinHandle<()>>,
    stored: Arc<AtomicU64>,
    started: Instant,
    /// Wall-clock time the session began (before any source was read).
    started_ns: i64,
    damage: Arc<DamageSet>,
    journal: Journal,
    done: bool,
}

impl Vault {
    /// Starts the only kind of write there is. Holding `_lock` proves this process is the
    /// vault's one writer.
    pub fn begin_write<'l>(
        &self,
        _lock: &'l WriteLock,
        opts: &SessionOptions,
    ) -> VaultResult<WriteSession<'l>> {
        let catalog = Catalog::open(&self.db_path())?;
        catalog.begin()?;
        let journal = Journal::new(self.root());
        let damage = Arc::new(gather_damage(&catalog, &*self.store(), &journal)?);
        let threads = crate::threads::count(opts.threads, 1);
        let failure = Arc::new(Failure::default());
        let stored = Arc::new(AtomicU64::new(0));
        let (raw_tx, raw_rx) = bounded::<RawRecord>(2 * threads);
        let (rec_tx, rec_rx) = bounded::<Record>(2 * threads);
        let (sealed_tx, sealed_rx) = unbounded::<SealedPack>();
        // The writer is the one thread a session cannot do without.
        let (store, f, st) = (self.store(), failure.clone(), stored.clone());
        let writer = std::thread::Builder::new()
            .name("pack writer".into())
            .spawn(move || write_packs(&*store, rec_rx, &sealed_tx, &st, &f))
            .map_err(|e| {
                VaultError::Threads(crate::threads::refused("pack writer", e).to_string())
            })?;
        Ok(WriteSession {
            _lock: std::marker::PhantomData,
            store: self.store(),
            root: self.root().to_path_buf(),
            tx: Mutex::new(TxSide {
                catalog,
                sealed: sealed_rx,
                packs: Vec::new(),
                catalog_bytes: 0,
            }),
            shared: Some(SinkShared {
                raw: raw_tx,
                pool: Mutex::new(Pool {
                    input: Some(raw_rx),
                    want: threads,
                    handles: Vec::new(),
                    inline: false,
                }),
                records: rec_tx,
                level: self.zstd_level(),
                image_frame: self.image_frame(),
                claimed: Mutex::new(HashSet::new()),
                damage: damage.clone(),
                new_chunks: AtomicU64::new(0),
                new_bytes: AtomicU64::new(0),
                failure,
                db: self.db_path(),
            }),
            writer: Some(writer),
            stored,
            started: Instant::now(),
            started_ns: now_ns(),
            damage,
            journal,
            done: false,
        })
    }
}

impl WriteSession<'_> {
    /// `Vault::image_frame` of the vault written to: where `Image` sinks close their records.
    pub fn image_frame(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(super::DEFAULT_IMAGE_FRAME, |s| s.image_frame)
    }

    /// A new sink for one worker thread.
    pub fn sink(&self, mode: SinkMode) -> ChunkSink<'_> {
        ChunkSink {
            shared: self.shared.as_ref().expect("sinks exist until commit"),
            mode,
            catalog: None,
            buf: Vec::new(),
            chunks: Vec::new(),
        }
    }

    /// What is known to be damaged: a backup must not reuse it (the files cache checks here).
    pub fn damage(&self) -> &DamageSet {
        &self.damage
    }

    /// The first failure of a session thread, if any (a backup can stop early on it).
    pub fn failed(&self) -> Option<String> {
        self.shared.as_ref().and_then(|s| s.failure.get())
    }

    fn with_tx<T>(&self, f: impl FnOnce(&mut TxSide) -> VaultResult<T>) -> VaultResult<T> {
        let mut tx = self.tx.lock().expect("transaction lock");
        // Register packs sealed meanwhile, so the final commit has less to do.
        let sealed: Vec<SealedPack> = tx.sealed.try_iter().collect();
        for p in sealed {
            register_pack(&mut tx, p)?;
        }
        f(&mut tx)
    }

    /// Stores a directory listing (entries sorted by name, names unique); returns its id.
    pub fn put_tree(&self, entries: &[Entry]) -> VaultResult<TreeId> {
        let enc = format::encode_tree(entries);
        let id = TreeId::of(&enc);
        self.with_tx(|tx| {
            // Replaced only if the stored blob really is damaged (a reported id may have been
            // repaired since it was reported).
            let suspect = self.damage.take_tree(&id) || self.damage.check_blobs();
            let replace = suspect && tx.catalog.tree_damaged(&id)?;
            if replace {
                self.damage.repaired(id.0);
            }
            tx.catalog_bytes += tx.catalog.put_tree(&id, &enc, replace)?;
            Ok(id)
        })
    }

    /// Stores a content list; returns its id.
    pub fn put_list(&self, extents: &[Extent]) -> VaultResult<ListId> {
        let enc = format::encode_list(extents);
        let id = ListId::of(&enc);
        self.with_tx(|tx| {
            let suspect = self.damage.take_list(&id) || self.damage.check_blobs();
            let replace = suspect && tx.catalog.list_damaged(&id)?;
            if replace {
                self.damage.repaired(id.0);
            }
            tx.catalog_bytes += tx.catalog.put_list(&id, &enc, replace)?;
            Ok(id)
        })
    }

    /// Creates or redefines an item inside this session: the change exists only if the session
    /// commits (a failed first backup leaves no item; a failed backup keeps the old definition).
    /// A new item follows the `default` policy.
    pub fn define_item(&self, name: &str, source: &ItemSource) -> VaultResult<i64> {
        self.define_item_following(name, source, None)
    }

    /// `define_item`, with the policy a new item follows (`None`: `default`). Naming a policy
    /// other than the one an existing item follows is refused: that is `policy assign`'s job.
    pub fn define_item_following(
        &self,
        name: &str,
        source: &ItemSource,
        policy: Option<&str>,
    ) -> VaultResult<i64> {
        check_item_name(name)?;
        self.with_tx(|tx| match tx.catalog.item(name)? {
            Some(item) if item.kind != source.kind() => Err(VaultError::ItemKind {
                name: name.to_string(),
                kind: item.kind.as_str(),
            }),
            Some(item) if policy.is_some_and(|p| p != item.policy) => {
                Err(VaultError::PolicyMismatch {
                    item: name.to_string(),
                    has: item.policy,
                    given: policy.unwrap_or_default().to_string(),
                })
            }
            Some(mut item) => {
                if item.source.as_ref() != Some(source) {
                    item.source = Some(source.clone());
                    tx.catalog.update_item(&item)?;
                }
                Ok(item.id)
            }
            None => Ok(tx
                .catalog
                .create_item(name, source.kind(), &source.to_json(), now_ns(), policy)?
                .id),
        })
    }

    /// Waits for every chunk to be stored, records the point and commits: the point exists from
    /// here on. All sinks must be gone (they borrow the session).
    pub fn commit(mut self, p: NewPoint) -> VaultResult<Committed> {
        let (new_chunks, new_bytes) = self.new_counts();
        let (stored, started, started_ns) = (
            self.stored.load(Ordering::Relaxed),
            self.started,
            self.started_ns,
        );
        let (point, catalog_bytes) = self.commit_with(|c, catalog_bytes| {
            let point = PointRow {
                rowid: 0,
                id: new_point_id(c)?,
                item: c.item_name(p.item)?.unwrap_or_default(),
                time: p.time,
                root: format::encode_root(&p.root),
                files: p.files,
                dirs: p.dirs,
                logical_bytes: p.logical_bytes,
                new_chunks,
                new_bytes,
                stored_bytes: stored,
                warnings: p.warnings,
                duration_ms: started.elapsed().as_millis() as u64,
                consistency: p.consistency,
                started: Some(started_ns),
                keep_until: p.keep_until,
                deleted_at: None,
                deleted_by: None,
                tags: p.labels.tags,
                note: p.labels.note,
            };
            c.insert_point(p.item, &point)?;
            Ok((point, catalog_bytes))
        })?;
        Ok(Committed {
            point,
            catalog_bytes,
            repaired: self.damage.repaired_count(),
        })
    }

    fn new_counts(&self) -> (u64, u64) {
        self.shared.as_ref().map_or((0, 0), |s| {
            (
                s.new_chunks.load(Ordering::Relaxed),
                s.new_bytes.load(Ordering::Relaxed),
            )
        })
    }

    /// Pack bytes this session wrote so far.
    pub fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Waits for every chunk to be stored, registers the packs, runs `f` in the transaction
    /// (given the catalog bytes this session added) and commits. `commit` records a point with
    /// it; maintenance (a collection's round) records its own changes.
    pub(super) fn commit_with<T>(
        &mut self,
        f: impl FnOnce(&Catalog, u64) -> VaultResult<T>,
    ) -> VaultResult<T> {
        let shared = self.shared.take().expect("commit runs once");
        let failure = shared.failure.clone();
        if !shared.stop() {
            failure.set("a storage thread panicked");
        }
        if self.writer.take().is_some_and(|h| h.join().is_err()) {
            failure.set("the pack writer panicked");
        }
        if let Some(e) = failure.get() {
            return Err(VaultError::WriteFailed(e));
        }
        let mut tx = self.tx.lock().expect("transaction lock");
        let sealed: Vec<SealedPack> = tx.sealed.try_iter().collect();
        for s in sealed {
            register_pack(&mut tx, s)?;
        }
        let out = f(&tx.catalog, tx.catalog_bytes)?;
        let seq = tx.catalog.bump_commit_seq()?;
        crate::testing::crash_point("before-commit");
        tx.catalog.commit()?;
        drop(tx);
        self.done = true;
        super::note_commit_seq(&self.root, seq);
        // Damaged chunks are marked bad in the catalog now; keep only blobs not repaired.
        self.journal.clear_taken();
        for d in self.damage.unrepaired_blobs() {
            self.journal.report(d);
        }
        Ok(out)
    }
}

impl Drop for WriteSession<'_> {
    /// Without a commit: stop the threads, roll back, and delete the packs this session wrote
    /// (nothing names them; recovery would only quarantine them).
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(shared) = self.shared.take() {
            shared.stop();
        }
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        let Ok(mut tx) = self.tx.lock() else { return };
        tx.catalog.rollback();
        let late: Vec<String> = tx.sealed.try_iter().map(|p| p.name).collect();
        tx.packs.extend(late);
        for name in &tx.packs {
            let _ = self.store.delete(name);
        }
    }
}

impl SinkShared {
    /// Hands a group of plain chunks to the compression pool, starting the pool on first use;
    /// compresses here when no pool thread could start.
    fn send(&self, raw: RawRecord) -> Result<(), ()> {
        let inline = {
            let mut pool = self.pool.lock().expect("pool lock");
            if let Some(input) = pool.input.take() {
                self.start_pool(&mut pool, input);
            }
            pool.inline
        };
        if inline {
            let mut z = zstd::bulk::Compressor::new(self.level).map_err(|e| {
                self.failure.set(format!("zstd level {}: {e}", self.level));
            })?;
            return match compress(&mut z, raw) {
                Ok(rec) => self.records.send(rec).map_err(|_| ()),
                Err(e) => {
                    self.failure.set(format!("zstd level {}: {e}", self.level));
                    Err(())
                }
            };
        }
        self.raw.send(raw).map_err(|_| ())
    }

    fn start_pool(&self, pool: &mut Pool, input: Receiver<RawRecord>) {
        for i in 0..pool.want {
            let (rx, tx, f, level) = (
                input.clone(),
                self.records.clone(),
                self.failure.clone(),
                self.level,
            );
            let spawned = std::thread::Builder::new()
                .name("compression".into())
                .spawn(move || compress_loop(level, rx, tx, &f));
            match spawned {
                Ok(h) => pool.handles.push(h),
                Err(e) => {
                    log::warn!("running with {i} of {} compression threads: {e}", pool.want);
                    break;
                }
            }
        }
        pool.inline = pool.handles.is_empty();
    }

    /// Closes the pool's input and waits for its threads; false if one panicked.
    fn stop(self) -> bool {
        let handles = std::mem::take(&mut self.pool.lock().expect("pool lock").handles);
        drop(self); // the senders: pool threads drain their input and end, then the writer
        handles.into_iter().all(|h| h.join().is_ok())
    }
}

/// Records a sealed pack and its chunks (inside the session's transaction). The only place pack
/// and chunk rows are written: a `SealedPack` exists only once its pack is durable.
fn register_pack(tx: &mut TxSide, p: SealedPack) -> VaultResult<()> {
    tx.packs.push(p.name.clone());
    let pack = tx.catalog.insert_pack(&p.name, p.size, now_ns())?;
    for (id, record, offset, len) in &p.chunks {
        tx.catalog.insert_chunk(
            id,
            &ChunkLoc {
                pack,
                record: *record,
                offset: *offset,
                len: *len,
                bad: false,
            },
        )?;
    }
    Ok(())
}

/// Everything known damaged, marked in the session's transaction: chunks of packs that are
/// missing or shorter than the catalog says, and ids readers recorded in the journal.
fn gather_damage(
    catalog: &Catalog,
    store: &dyn PackStore,
    journal: &Journal,
) -> VaultResult<DamageSet> {
    mark_missing_packs(catalog, store)?;
    let mut found = journal.take();
    // A reported blob that checks out now (repaired since) is not damage any more.
    let mut still = Vec::with_capacity(found.len());
    for d in found.drain(..) {
        let keep = match &d {
            Damaged::Chunk(id) => {
                catalog.mark_chunk_bad(id)?;
                true
            }
            Damaged::Tree(id) => catalog.tree_damaged(id)?,
            Damaged::List(id) => catalog.list_damaged(id)?,
        };
        if keep {
            still.push(d);
        }
    }
    let found = still;
    let bad: HashSet<ChunkId> = catalog.bad_chunks()?.into_iter().collect();
    Ok(DamageSet::new(bad, &found))
}

/// Marks bad the chunks of packs that are missing or shorter than the catalog says (so no
/// backup deduplicates against them, and `rebuild-index` may register other copies).
pub(super) fn mark_missing_packs(catalog: &Catalog, store: &dyn PackStore) -> VaultResult<()> {
    let listed: std::collections::HashMap<String, u64> = store
        .list()
        .map_err(|e| VaultError::Io {
            path: store.describe().into(),
            source: e,
        })?
        .into_iter()
        .map(|p| (p.name, p.size))
        .collect();
    for (id, name, size) in catalog.packs()? {
        match listed.get(&name) {
            None => {
                let n = catalog.mark_pack_damaged(id, 0)?;
                if n > 0 {
                    log::warn!(
                        "pack {name} is missing: {} marked bad (a backup of their sources or \
                         `coffre repair --from` stores them again)",
                        crate::words::plural(n as u64, "chunk")
                    );
                }
            }
            Some(&have) if have < size => {
                let n = catalog.mark_pack_damaged(id, have)?;
                if n > 0 {
                    log::warn!(
                        "pack {name} is truncated: {} marked bad (a backup of their sources or \
                         `coffre repair --from` stores them again)",
                        crate::words::plural(n as u64, "chunk")
                    );
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A fresh point id (8 hex digits) not used in this vault yet.
fn new_point_id(catalog: &Catalog) -> VaultResult<String> {
    loop {
        let pid = random_hex(4);
        if !catalog.point_id_taken(&pid)? {
            return Ok(pid);
        }
    }
}

/// Where one worker hands chunk bytes to the session. Cloning gives another worker its own
/// grouping buffer; dropping flushes it.
pub struct ChunkSink<'s> {
    shared: &'s SinkShared,
    mode: SinkMode,
    catalog: Option<Catalog>,
    buf: Vec<u8>,
    chunks: Vec<(ChunkId, u32)>,
}

impl Clone for ChunkSink<'_> {
    fn clone(&self) -> Self {
        ChunkSink {
            shared: self.shared,
            mode: self.mode,
            catalog: None,
            buf: Vec::new(),
            chunks: Vec::new(),
        }
    }
}

impl ChunkSink<'_> {
    /// Stores chunk `id` with bytes `data` unless the vault already holds a good copy or this
    /// session already took it. Returns true if it is new. Chunks known to be bad are stored
    /// again.
    pub fn put(&mut self, id: ChunkId, data: &[u8]) -> VaultResult<bool> {
        if !self.claim(&id, data.len())? {
            return Ok(false);
        }
        self.add(id, data)?;
        Ok(true)
    }

    /// Where this sink closes a record: records of chunks this big or bigger hold them alone.
    fn target(&self) -> usize {
        match self.mode {
            SinkMode::Alone => 0,
            SinkMode::Group => GROUP_TARGET,
            SinkMode::Image => self.shared.image_frame,
        }
    }

    /// Adds a claimed chunk to the open record, or sends it in one of its own.
    fn add(&mut self, id: ChunkId, data: &[u8]) -> VaultResult<()> {
        let target = self.target();
        if data.len() >= target.min(ALONE.max(target / 2)) {
            return self.send(data.to_vec(), vec![(id, data.len() as u32)]);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(target + target / 2);
        }
        self.buf.extend_from_slice(data);
        self.chunks.push((id, data.len() as u32));
        if self.buf.len() >= target {
            self.flush()?;
        }
        Ok(())
    }

    /// Stores chunk `id` again even though the vault holds it (a collection moving live chunks
    /// out of a pack it empties): when the session commits, the chunk's row names the new copy.
    /// The caller checked `data` against `id`.
    pub(super) fn relocate(&mut self, id: ChunkId, data: &[u8]) -> VaultResult<()> {
        if !self.shared.claimed.lock().expect("dedup lock").insert(id) {
            return Ok(());
        }
        self.add(id, data)
    }

    /// Hands the open group, if any, to the compression pool.
    pub fn flush(&mut self) -> VaultResult<()> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        let plain = std::mem::take(&mut self.buf);
        let chunks = std::mem::take(&mut self.chunks);
        self.send(plain, chunks)
    }

    fn send(&self, plain: Vec<u8>, chunks: Vec<(ChunkId, u32)>) -> VaultResult<()> {
        self.shared.send(RawRecord { plain, chunks }).map_err(|_| {
            VaultError::WriteFailed(
                self.shared
                    .failure
                    .get()
                    .unwrap_or_else(|| "the pack writer stopped".into()),
            )
        })
    }

    /// True if the caller must store this chunk: it is neither in the vault as a good chunk
    /// (checked on this sink's own catalog connection) nor claimed by another sink.
    fn claim(&mut self, id: &ChunkId, len: usize) -> VaultResult<bool> {
        let shared = self.shared;
        if shared.claimed.lock().expect("dedup lock").contains(id) {
            return Ok(false);
        }
        let damaged = shared.damage.chunk(id);
        if !damaged {
            if self.catalog.is_none() {
                self.catalog = Some(Catalog::open(&shared.db)?);
            }
            let catalog = self.catalog.as_ref().expect("opened above");
            if catalog.has_good_chunk(id)? {
                return Ok(false);
            }
        }
        let fresh = shared.claimed.lock().expect("dedup lock").insert(*id);
        if fresh {
            shared.new_chunks.fetch_add(1, Ordering::Relaxed);
            shared.new_bytes.fetch_add(len as u64, Ordering::Relaxed);
            if damaged {
                shared.damage.repaired(id.0);
            }
        }
        Ok(fresh)
    }
}

impl Drop for ChunkSink<'_> {
    fn drop(&mut self) {
        // A failed send is recorded as the session's failure, which commit reports.
        let _ = self.flush();
    }
}

/// A compression thread: raw groups in, records out.
fn compress_loop(level: i32, rx: Receiver<RawRecord>, tx: Sender<Record>, failure: &Failure) {
    let mut z = match zstd::bulk::Compressor::new(level) {
        Ok(z) => z,
        Err(e) => return failure.set(format!("zstd level {level}: {e}")),
    };
    for raw in rx {
        let rec = match compress(&mut z, raw) {
            Ok(r) => r,
            Err(e) => return failure.set(format!("zstd level {level}: {e}")),
        };
        if tx.send(rec).is_err() {
            return; // the writer stopped; it recorded why
        }
    }
}

/// One record from a group of plain chunks. Incompressible data is stored raw: reading it back
/// costs a copy, not a decompression.
fn compress(z: &mut zstd::bulk::Compressor, raw: RawRecord) -> std::io::Result<Record> {
    let packed = z.compress(&raw.plain)?;
    let plain_len = raw.plain.len() as u32;
    let (codec, payload) = if packed.len() + raw.plain.len() / 64 < raw.plain.len() {
        (Codec::Zstd, packed)
    } else {
        (Codec::Raw, raw.plain)
    };
    Ok(Record {
        codec,
        plain_len,
        payload,
        chunks: raw.chunks,
    })
}

/// The pack-writing thread: see `append_packs`. A failure is recorded before `records` closes,
/// so whoever finds the channel closed also finds why.
fn write_packs(
    store: &dyn PackStore,
    records: Receiver<Record>,
    sealed: &Sender<SealedPack>,
    stored: &AtomicU64,
    failure: &Failure,
) {
    if let Err(e) = append_packs(store, &records, sealed, stored) {
        failure.set(e);
    }
    drop(records);
}

/// Appends records, seals packs at `PACK_TARGET`, reports each sealed pack once it and its
/// directory entry are durable. On a write error the open pack is removed and the error
/// returned (sealed packs are deleted by the session's rollback).
fn append_packs(
    store: &dyn PackStore,
    records: &Receiver<Record>,
    sealed: &Sender<SealedPack>,
    stored: &AtomicU64,
) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| {
        format!(
            "cannot write a pack in {}: {what}: {e} (is the vault's disk full?)",
            store.describe()
        )
    };
    let mut cur: Option<(PackWriter, Vec<PackChunk>)> = None;
    let mut done: Vec<SealedPack> = Vec::new();
    for rec in records.iter() {
        if cur.is_none() {
            let w = PackWriter::create(store, &random_hex(12)).map_err(|e| fail("create", e))?;
            cur = Some((w, Vec::new()));
        }
        let (w, list) = cur.as_mut().expect("pack opened above");
        let before = w.len();
        let injected = crate::testing::write_limit()
            .is_some_and(|limit| stored.load(Ordering::Relaxed) + rec.payload.len() as u64 > limit);
        let pos = if injected {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            w.append(&rec)
        };
        let pos = match pos {
            Ok(p) => p,
            Err(e) => {
                if let Some((w, _)) = cur.take() {
                    w.abort();
                }
                return Err(fail("append", e));
            }
        };
        stored.fetch_add(w.len() - before, Ordering::Relaxed);
        let mut off = 0u32;
        for (id, len) in &rec.chunks {
            list.push((*id, pos, off, *len));
            off += len;
        }
        if w.len() >= PACK_TARGET {
            let (w, list) = cur.take().expect("pack is open");
            done.push(seal(w, list).map_err(|e| fail("seal", e))?);
            // Report in batches, each after the directory sync that makes it durable.
            publish(store, &mut done, sealed).map_err(|e| fail("sync", e))?;
        }
    }
    if let Some((w, list)) = cur.take() {
        done.push(seal(w, list).map_err(|e| fail("seal", e))?);
    }
    publish(store, &mut done, sealed).map_err(|e| fail("sync", e))
}

fn seal(w: PackWriter, chunks: Vec<PackChunk>) -> std::io::Result<SealedPack> {
    let (name, size) = w.seal()?;
    crate::testing::crash_point("pack-sealed");
    crate::testing::interrupt_point("pack-sealed");
    Ok(SealedPack { name, size, chunks })
}

/// Makes finished packs' directory entries durable, then hands them to the session.
fn publish(
    store: &dyn PackStore,
    done: &mut Vec<SealedPack>,
    sealed: &Sender<SealedPack>,
) -> std::io::Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    store.sync()?;
    for p in done.drain(..) {
        // The receiver lives as long as the session; if it is gone, nobody needs the pack.
        let _ = sealed.send(p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{FilesSource, InitOptions, Kind};

    fn files_def() -> ItemSource {
        ItemSource::Files(FilesSource {
            path: "/src".into(),
            excludes: vec![],
            ..Default::default()
        })
    }

    fn point(item: i64) -> NewPoint {
        NewPoint {
            item,
            time: 7,
            root: Entry {
                kind: Some(Kind::Dir),
                ..Default::default()
            },
            files: 0,
            dirs: 1,
            logical_bytes: 0,
            warnings: 0,
            consistency: None,
            keep_until: None,
            labels: Default::default(),
        }
    }

    fn pack_count(v: &Vault) -> usize {
        v.store().list().unwrap().len()
    }

    #[test]
    fn sinks_on_many_threads_store_each_chunk_once_and_commit_makes_it_readable() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::init(&dir.path().join("v"), &InitOptions::default()).unwrap();
        let lock = v.lock(false).unwrap();
        let s = v
            .begin_write(&lock, &SessionOptions { threads: 2 })
            .unwrap();
        let item = s.define_item("a", &files_def()).unwrap();
        let chunks: Vec<Vec<u8>> = (0..200u32)
            .map(|i| (0..3000).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        std::thread::scope(|sc| {
            let sink = s.sink(SinkMode::Group);
            for _ in 0..4 {
                let mut sink = sink.clone();
                let chunks = &chunks;
                sc.spawn(move || {
                    for c in chunks {
                        sink.put(ChunkId::of(c), c).unwrap();
                    }
                });
            }
        });
        let done = s.commit(point(item)).unwrap();
        assert_eq!(
            done.point.new_chunks, 200,
            "four threads, each chunk stored once"
        );
        assert_eq!(done.point.item, "a");
        for c in &chunks {
            assert_eq!(&*v.reader().read_chunk(&ChunkId::of(c)).unwrap(), &c[..]);
        }
        // A second session finds them all in the vault.
        let s = v.begin_write(&lock, &SessionOptions::default()).unwrap();
        let mut sink = s.sink(SinkMode::Group);
        assert!(!sink.put(ChunkId::of(&chunks[0]), &chunks[0]).unwrap());
    }

    #[test]
    fn a_session_dropped_without_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::init(&dir.path().join("v"), &InitOptions::default()).unwrap();
        let lock = v.lock(false).unwrap();
        let s = v
            .begin_write(&lock, &SessionOptions { threads: 1 })
            .unwrap();
        s.define_item("gone", &files_def()).unwrap();
        let big: Vec<u8> = (0..(40u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let mut sink = s.sink(SinkMode::Alone);
        for piece in big.chunks(1 << 20) {
            sink.put(ChunkId::of(piece), piece).unwrap();
        }
        drop(sink);
        drop(s);
        assert_eq!(
            pack_count(&v),
            0,
            "the packs of a rolled-back session are deleted"
        );
        assert!(v.find_item("gone").unwrap().is_none());
        assert_eq!(v.totals().unwrap().chunks, 0);
    }
}
