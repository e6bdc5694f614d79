//! Backup of a directory tree (`files` items).
//!
//! Three kinds of threads: the walker (readdir, lstat, xattrs, the files cache), N workers
//! (read, chunk, hash, dedup, compress) and the pack writer; the calling thread builds trees and
//! owns the catalog transaction. The walker emits events in depth-first order and the builder
//! consumes them in that order, waiting for a worker's result where an entry needs one; bounded
//! channels keep memory flat whatever the tree size.
//! Files cache: a file whose size, mtime, ctime and inode equal the previous point's entry is not
//! read; its content reference is reused. Unreadable entries become warnings and are left out.
//! Crash story: see `backup` — one transaction, committed after every pack is fsync'd.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use super::sink::{self, Dedup, Grouper, SealedPack};
use super::{Abort, BackupError, Warning, data_regions, entry_from_stat, ts};
use crate::chunking;
use crate::fsmeta;
use crate::progress::Progress;
use crate::vault::catalog::Catalog;
use crate::vault::format::{self, encode_list, encode_tree};
use crate::vault::{
    Content, Entry, Extent, Hash32, Item, Kind, PointRow, Timestamp, TreeId, Vault, VaultRef,
    WriteLock, now_ns,
};

/// How to run a files backup.
#[derive(Clone, Debug, Default)]
pub struct FilesOptions {
    /// Glob patterns; a pattern with `/` matches the path relative to the source, one without
    /// matches any entry's name.
    pub excludes: Vec<String>,
    /// Do not descend into directories on another file system (the mount point itself is kept).
    pub one_file_system: bool,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Show a progress line on a terminal.
    pub progress: bool,
}

/// What a finished backup produced.
#[derive(Debug)]
pub struct BackupReport {
    pub point: PointRow,
    pub warnings: Vec<Warning>,
    /// Bytes of new trees and content lists added to the catalog.
    pub catalog_bytes: u64,
}

enum Event {
    Enter(Entry),
    Leave,
    Entry(Entry, Option<u64>),
    Warn(Warning),
}

struct Job {
    seq: u64,
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    path: String,
    entry_size: u64,
    mtime: Timestamp,
    ctime: Timestamp,
    ino: u64,
}

struct FileData {
    content: Content,
    list: Option<(Hash32, Vec<u8>)>,
    size: u64,
    changed: Option<Warning>,
}

struct FileDone {
    seq: u64,
    result: Result<FileData, Warning>,
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn join(base: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(base.len() + 1 + name.len());
    p.extend_from_slice(base);
    if !base.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

struct Excludes {
    by_name: Vec<glob::Pattern>,
    by_path: Vec<glob::Pattern>,
}

/// Checks `--exclude` patterns without backing anything up (so a bad one is refused before the
/// catalog changes).
pub fn check_excludes(patterns: &[String]) -> Result<(), BackupError> {
    Excludes::new(patterns).map(drop)
}

impl Excludes {
    fn new(patterns: &[String]) -> Result<Excludes, BackupError> {
        let mut ex = Excludes {
            by_name: Vec::new(),
            by_path: Vec::new(),
        };
        for p in patterns {
            let pat = glob::Pattern::new(p.trim_start_matches("./")).map_err(|e| {
                BackupError::Exclude {
                    pattern: p.clone(),
                    detail: e.to_string(),
                }
            })?;
            if p.contains('/') {
                ex.by_path.push(pat);
            } else {
                ex.by_name.push(pat);
            }
        }
        Ok(ex)
    }

    fn matches(&self, name: &[u8], rel: &[u8], abs: &[u8]) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let name = String::from_utf8_lossy(name);
        if self.by_name.iter().any(|p| p.matches_with(&name, opts)) {
            return true;
        }
        if self.by_path.is_empty() {
            return false;
        }
        let rel = String::from_utf8_lossy(rel);
        let abs = String::from_utf8_lossy(abs);
        self.by_path
            .iter()
            .any(|p| p.matches_with(&rel, opts) || p.matches_with(&abs, opts))
    }
}

struct Walker<'a> {
    catalog: Catalog,
    excludes: Excludes,
    one_fs: bool,
    root_dev: u64,
    skip: Option<(u64, u64)>,
    source: Vec<u8>,
    events: Sender<Event>,
    jobs: Sender<Job>,
    seq: u64,
    abort: &'a Abort,
}

/// The walker stops when the builder or the workers are gone.
struct Stop;

impl Walker<'_> {
    fn emit(&self, ev: Event) -> Result<(), Stop> {
        if self.abort.is_set() {
            return Err(Stop);
        }
        self.events.send(ev).map_err(|_| Stop)
    }

    fn warn(&self, rel: &[u8], message: String) -> Result<(), Stop> {
        self.emit(Event::Warn(Warning {
            path: show(&join(&self.source, rel)),
            message,
        }))
    }

    fn prev_tree(&self, id: Option<TreeId>) -> Vec<Entry> {
        let Some(id) = id else { return Vec::new() };
        match self.catalog.tree(&id) {
            Ok(t) => t,
            Err(e) => {
                // The files cache is an optimisation: a damaged previous tree only costs re-reading.
                log::warn!("previous point's tree {id:?} unreadable, re-reading files: {e}");
                Vec::new()
            }
        }
    }

    fn walk_dir(
        &mut self,
        dir: Arc<OwnedFd>,
        rel: &[u8],
        prev: Option<TreeId>,
    ) -> Result<(), Stop> {
        let mut names = match fsmeta::read_dir_names(dir.as_fd()) {
            Ok(n) => n,
            Err(e) => return self.warn(rel, format!("cannot list directory: {e}")),
        };
        names.sort_unstable();
        let prev = self.prev_tree(prev);
        for name in names {
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                join(rel, &name)
            };
            let abs = join(&self.source, &child_rel);
            if self.excludes.matches(&name, &child_rel, &abs) {
                continue;
            }
            let st = match fsmeta::lstat_at(dir.as_fd(), &name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // vanished
                Err(e) => {
                    self.warn(&child_rel, format!("cannot stat: {e}"))?;
                    continue;
                }
            };
            let Some(kind) = Kind::from_mode(st.st_mode) else {
                log::info!("skipping socket {}", show(&abs));
                continue;
            };
            let mut entry = entry_from_stat(name.clone(), &st, kind);
            match fsmeta::xattrs_at(dir.as_fd(), &name) {
                Ok(x) => entry.xattrs = x,
                Err(e) => self.warn(&child_rel, format!("cannot read extended attributes: {e}"))?,
            }
            let before = prev
                .binary_search_by(|p| p.name.as_slice().cmp(&name))
                .ok()
                .map(|i| &prev[i]);
            match kind {
                Kind::File => {
                    if let Some(p) = before.filter(|p| {
                        p.kind() == Kind::File
                            && p.size == entry.size
                            && p.mtime == entry.mtime
                            && p.ctime == entry.ctime
                            && p.ino == entry.ino
                    }) {
                        entry.content = p.content;
                        self.emit(Event::Entry(entry, None))?;
                    } else if entry.size == 0 {
                        self.emit(Event::Entry(entry, None))?;
                    } else {
                        self.seq += 1;
                        let job = Job {
                            seq: self.seq,
                            dir: dir.clone(),
                            name,
                            path: show(&abs),
                            entry_size: entry.size,
                            mtime: entry.mtime,
                            ctime: entry.ctime,
                            ino: entry.ino,
                        };
                        self.jobs.send(job).map_err(|_| Stop)?;
                        self.emit(Event::Entry(entry, Some(self.seq)))?;
                    }
                }
                Kind::Symlink => match fsmeta::readlink_at(dir.as_fd(), &name) {
                    Ok(t) => {
                        entry.size = t.len() as u64;
                        entry.target = t;
                        self.emit(Event::Entry(entry, None))?;
                    }
                    Err(e) => self.warn(&child_rel, format!("cannot read symlink: {e}"))?,
                },
                Kind::Dir => {
                    if self.skip == Some((st.st_dev, st.st_ino)) {
                        log::info!("not backing up the vault itself ({})", show(&abs));
                        continue;
                    }
                    let sub_prev = before
                        .filter(|p| p.kind() == Kind::Dir)
                        .and_then(|p| p.subtree);
                    self.emit(Event::Enter(entry))?;
                    if self.one_fs && st.st_dev != self.root_dev {
                        log::info!("not crossing into another file system at {}", show(&abs));
                    } else {
                        match fsmeta::open_dir_at(dir.as_fd(), &name) {
                            Ok(fd) => self.walk_dir(Arc::new(fd), &child_rel, sub_prev)?,
                            Err(e) => {
                                self.warn(&child_rel, format!("cannot open directory: {e}"))?
                            }
                        }
                    }
                    self.emit(Event::Leave)?;
                }
                Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                    self.emit(Event::Entry(entry, None))?
                }
            }
        }
        Ok(())
    }
}

/// Reads `len` bytes from `offset` with positional reads.
struct RangeReader<'a> {
    file: &'a std::fs::File,
    pos: u64,
    end: u64,
}

impl std::io::Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

struct WorkerCtx<'a> {
    dedup: &'a Dedup,
    abort: &'a Abort,
    progress: &'a Progress,
}

/// Reads one file into chunks. Outer error: fatal for the backup; inner: a warning for this file.
fn read_file(
    ctx: &WorkerCtx,
    catalog: &Catalog,
    grouper: &mut Grouper,
    chunker: &mut chunking::Chunker,
    job: &Job,
) -> Result<Result<FileData, Warning>, BackupError> {
    let warn = |m: String| {
        Ok(Err(Warning {
            path: job.path.clone(),
            message: m,
        }))
    };
    let open = |flags| fsmeta::open_at(job.dir.as_fd(), &job.name, flags, 0);
    let fd = match open(libc::O_RDONLY | libc::O_NOATIME | libc::O_NOCTTY) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(libc::O_RDONLY | libc::O_NOCTTY),
        r => r,
    };
    let file = match fd {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return warn(format!("cannot open: {e}")),
    };
    let st0 = match fsmeta::fstat(file.as_fd()) {
        Ok(st) => st,
        Err(e) => return warn(format!("cannot stat: {e}")),
    };
    if st0.st_mode & libc::S_IFMT != libc::S_IFREG {
        return warn("changed into something other than a file while being read".into());
    }
    let size = st0.st_size as u64;
    let regions = if (st0.st_blocks as u64) * 512 < size {
        match data_regions(&file, size) {
            Ok(r) => r,
            Err(e) => return warn(format!("cannot find holes: {e}")),
        }
    } else {
        vec![(0, size)]
    };
    let mut extents: Vec<Extent> = Vec::new();
    let mut pos = 0u64;
    let mut fatal: Option<BackupError> = None;
    for (start, len) in regions {
        if start > pos {
            extents.push(Extent::Hole { len: start - pos });
        }
        let reader = RangeReader {
            file: &file,
            pos: start,
            end: start + len,
        };
        let got = chunker.cut_stream(reader, |chunk| {
            if ctx.abort.is_set() {
                return Err(std::io::Error::other("backup aborted"));
            }
            let id = Hash32::of(chunk);
            let stored = ctx
                .dedup
                .claim(catalog, &id, chunk.len())
                .map_err(BackupError::from)
                .and_then(|fresh| {
                    if fresh {
                        grouper.add(id, chunk)
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = stored {
                fatal = Some(e);
                return Err(std::io::Error::other("backup aborted"));
            }
            ctx.progress.add(0, chunk.len() as u64);
            extents.push(Extent::Data {
                id,
                len: chunk.len() as u64,
            });
            Ok(())
        });
        if let Some(e) = fatal {
            return Err(e);
        }
        match got {
            Ok(n) => {
                pos = start + n;
                if n < len {
                    break; // the file shrank while we read it
                }
            }
            Err(e) => return warn(format!("read error: {e}")),
        }
    }
    // A trailing hole (the file ends in a hole), unless the file shrank under us.
    let st1 = fsmeta::fstat(file.as_fd()).ok();
    let grew_or_shrank = st1.is_none_or(|s| s.st_size as u64 != size);
    if pos < size && !grew_or_shrank {
        extents.push(Extent::Hole { len: size - pos });
        pos = size;
    }
    let same = |s: &libc::stat| {
        s.st_size as u64 == job.entry_size
            && ts(s.st_mtime, s.st_mtime_nsec) == job.mtime
            && ts(s.st_ctime, s.st_ctime_nsec) == job.ctime
            && s.st_ino == job.ino
    };
    let changed =
        (!same(&st0) || st1.is_none_or(|s| !same(&s)) || pos != job.entry_size).then(|| Warning {
            path: job.path.clone(),
            message: "changed while being read; the point holds the bytes that were read".into(),
        });
    let (content, list) = match extents.as_slice() {
        [] => (Content::None, None),
        [Extent::Data { id, .. }] => (Content::Chunk(*id), None),
        _ => {
            let enc = encode_list(&extents);
            let id = Hash32::of(&enc);
            (Content::List(id), Some((id, enc)))
        }
    };
    Ok(Ok(FileData {
        content,
        list,
        size: pos,
        changed,
    }))
}

fn run_worker(
    ctx: &WorkerCtx,
    vault: &VaultRef,
    jobs: Receiver<Job>,
    results: Sender<FileDone>,
    records: Sender<crate::vault::packs::Record>,
) {
    let setup = || -> Result<(Catalog, Grouper), BackupError> {
        let grouper = Grouper::new(vault.zstd_level(), records)
            .map_err(|e| BackupError::Aborted(format!("zstd level {}: {e}", vault.zstd_level())))?;
        Ok((vault.connect()?, grouper))
    };
    let (catalog, mut grouper) = match setup() {
        Ok(x) => x,
        Err(e) => return ctx.abort.fail(e),
    };
    let mut chunker = chunking::Chunker::default();
    for job in jobs {
        if ctx.abort.is_set() {
            continue; // drain so the walker is never stuck on a full queue
        }
        match read_file(ctx, &catalog, &mut grouper, &mut chunker, &job) {
            Ok(result) => {
                ctx.progress.add(1, 0);
                if results
                    .send(FileDone {
                        seq: job.seq,
                        result,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                ctx.abort.fail(e);
                return;
            }
        }
    }
    if let Err(e) = grouper.flush() {
        ctx.abort.fail(e);
    }
}

/// Totals kept by the builder.
#[derive(Default)]
struct Tally {
    files: u64,
    dirs: u64,
    logical: u64,
    catalog_bytes: u64,
}

struct Builder<'a> {
    catalog: &'a Catalog,
    results: Receiver<FileDone>,
    sealed: Receiver<SealedPack>,
    pending: HashMap<u64, FileDone>,
    warnings: Vec<Warning>,
    tally: Tally,
    packs_written: Vec<String>,
    now: i64,
}

impl Builder<'_> {
    fn wait(&mut self, seq: u64) -> Option<FileDone> {
        loop {
            if let Some(d) = self.pending.remove(&seq) {
                return Some(d);
            }
            let d = self.results.recv().ok()?;
            self.pending.insert(d.seq, d);
        }
    }

    fn drain_sealed(&mut self, block: bool) -> Result<(), BackupError> {
        loop {
            let p = if block {
                match self.sealed.recv() {
                    Ok(p) => p,
                    Err(_) => return Ok(()),
                }
            } else {
                match self.sealed.try_recv() {
                    Ok(p) => p,
                    Err(_) => return Ok(()),
                }
            };
            self.packs_written.push(p.name.clone());
            sink::register_pack(self.catalog, &p, self.now)?;
        }
    }

    /// Consumes the walker's events and returns the root entry.
    fn build(
        &mut self,
        events: Receiver<Event>,
        progress: &Progress,
    ) -> Result<Option<Entry>, BackupError> {
        let mut frames: Vec<(Entry, Vec<Entry>)> = Vec::new();
        let mut root = None;
        let mut n = 0u64;
        for ev in events {
            match ev {
                Event::Enter(e) => frames.push((e, Vec::new())),
                Event::Entry(mut e, seq) => {
                    if let Some(seq) = seq {
                        let Some(done) = self.wait(seq) else {
                            return Ok(None); // workers are gone: the abort slot says why
                        };
                        match done.result {
                            Ok(data) => {
                                if let Some((id, enc)) = &data.list {
                                    self.tally.catalog_bytes += self.catalog.put_list(id, enc)?;
                                }
                                e.content = data.content;
                                e.size = data.size;
                                self.warnings.extend(data.changed);
                            }
                            Err(w) => {
                                self.warnings.push(w);
                                continue;
                            }
                        }
                    }
                    if e.kind() == Kind::File {
                        self.tally.files += 1;
                        self.tally.logical += e.size;
                    }
                    if let Some(f) = frames.last_mut() {
                        f.1.push(e);
                    }
                }
                Event::Leave => {
                    let Some((mut dir, children)) = frames.pop() else {
                        return Err(BackupError::Aborted("walker sent unbalanced events".into()));
                    };
                    let enc = encode_tree(&children);
                    let id = Hash32::of(&enc);
                    self.tally.catalog_bytes += self.catalog.put_tree(&id, &enc)?;
                    dir.subtree = Some(id);
                    self.tally.dirs += 1;
                    match frames.last_mut() {
                        Some(parent) => parent.1.push(dir),
                        None => root = Some(dir),
                    }
                }
                Event::Warn(w) => self.warnings.push(w),
            }
            n += 1;
            if n.is_multiple_of(256) {
                self.drain_sealed(false)?;
                progress.tick();
            }
        }
        Ok(root)
    }
}

/// Backs up the directory `source` as a new recovery point of `item`.
pub fn backup_files(
    vault: &Vault,
    _lock: &WriteLock,
    item: &Item,
    source: &Path,
    opts: &FilesOptions,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let start_ns = crate::testing::point_time(now_ns());
    let src_err = |e| BackupError::Source {
        path: source.to_path_buf(),
        source: e,
    };
    let source = std::fs::canonicalize(source).map_err(src_err)?;
    let src_err = |e| BackupError::Source {
        path: source.clone(),
        source: e,
    };
    fsmeta::raise_fd_limit();
    let root_fd = fsmeta::open_dir(&source).map_err(src_err)?;
    let root_st = fsmeta::fstat(root_fd.as_fd()).map_err(src_err)?;
    let mut root_entry = entry_from_stat(Vec::new(), &root_st, Kind::Dir);
    {
        // xattrs of the root: reach it through its parent is not possible for "/", so use the fd.
        let dot = fsmeta::xattrs_at(root_fd.as_fd(), b".");
        match dot {
            Ok(x) => root_entry.xattrs = x,
            Err(e) => log::warn!(
                "cannot read extended attributes of {}: {e}",
                source.display()
            ),
        }
    }
    let vault_st = std::fs::metadata(vault.root()).ok();
    use std::os::unix::fs::MetadataExt;
    let skip = vault_st.map(|m| (m.dev(), m.ino()));

    let excludes = Excludes::new(&opts.excludes)?;
    let catalog = vault.catalog();
    let prev_root = catalog
        .points(Some(item.id))?
        .last()
        .and_then(|p| format::decode_root(&p.root).ok())
        .and_then(|e| e.subtree);

    let threads = crate::threads::count(opts.threads, 1);
    let abort = Abort::default();
    let dedup = Dedup::default();
    let stored = AtomicU64::new(0);
    let progress = Progress::new("backup", opts.progress);
    let (ev_tx, ev_rx) = bounded::<Event>(16 * 1024);
    let (job_tx, job_rx) = bounded::<Job>(512);
    let (res_tx, res_rx) = unbounded::<FileDone>();
    let (rec_tx, rec_rx) = bounded(2 * threads);
    let (sealed_tx, sealed_rx) = unbounded::<SealedPack>();

    catalog.begin()?;
    let mut builder = Builder {
        catalog,
        results: res_rx,
        sealed: sealed_rx,
        pending: HashMap::new(),
        warnings: Vec::new(),
        tally: Tally::default(),
        packs_written: Vec::new(),
        now: start_ns,
    };
    let walker_catalog = vault.connect()?;
    let source_bytes = source.as_os_str().as_encoded_bytes().to_vec();
    let ctx = WorkerCtx {
        dedup: &dedup,
        abort: &abort,
        progress: &progress,
    };

    let shared_vault = vault.shared();
    let outcome: Result<Option<Entry>, BackupError> = std::thread::scope(|s| {
        let packs_dir = vault.packs_dir();
        let (abort_ref, stored_ref) = (&abort, &stored);
        let thread_err = BackupError::Thread;
        crate::threads::try_spawn(s, "pack writer", move || {
            if let Err(e) = sink::run_pack_writer(&packs_dir, rec_rx, sealed_tx, stored_ref) {
                abort_ref.fail(e);
            }
        })
        .map_err(thread_err)?;
        let root_fd = Arc::new(root_fd);
        let one_fs = opts.one_file_system;
        std::thread::Builder::new()
            .name("walker".into())
            .stack_size(256 << 20) // one frame per directory level: deep trees need room
            .spawn_scoped(s, move || {
                let mut w = Walker {
                    catalog: walker_catalog,
                    excludes,
                    one_fs,
                    root_dev: root_st.st_dev,
                    skip,
                    source: source_bytes,
                    events: ev_tx,
                    jobs: job_tx,
                    seq: 0,
                    abort: abort_ref,
                };
                if w.emit(Event::Enter(root_entry)).is_ok()
                    && w.walk_dir(root_fd, b"", prev_root).is_ok()
                {
                    let _ = w.emit(Event::Leave);
                }
            })
            .map_err(|e| thread_err(crate::threads::refused("walker", e)))?;
        // The pool comes last: when the system allows fewer threads than asked, it is the
        // pool that shrinks, not a thread the backup cannot do without.
        crate::threads::spawn_workers(s, "backup worker", threads, |_| {
            let (jobs, results, records, ctx) =
                (job_rx.clone(), res_tx.clone(), rec_tx.clone(), &ctx);
            let v = &shared_vault;
            move || run_worker(ctx, v, jobs, results, records)
        })
        .map_err(thread_err)?;
        drop((job_rx, res_tx, rec_tx));
        let built = builder.build(ev_rx, &progress);
        if built.is_err() {
            abort.flag.store(true, Ordering::SeqCst);
        }
        built
    });
    // All threads have ended: every pack is sealed (or the backup failed).
    let fin = outcome.and_then(|root| {
        if abort.is_set() {
            return Err(abort.take("a worker stopped"));
        }
        builder.drain_sealed(true)?;
        let mut root = root.ok_or_else(|| BackupError::Aborted("no root directory".into()))?;
        root.name = Vec::new();
        let point = PointRow {
            rowid: 0,
            id: sink::new_point_id(catalog)?,
            item: item.name.clone(),
            time: start_ns,
            root: format::encode_root(&root),
            files: builder.tally.files,
            dirs: builder.tally.dirs,
            logical_bytes: builder.tally.logical,
            new_chunks: dedup.new_chunks.load(Ordering::Relaxed),
            new_bytes: dedup.new_bytes.load(Ordering::Relaxed),
            stored_bytes: stored.load(Ordering::Relaxed),
            warnings: builder.warnings.len() as u64,
            duration_ms: started.elapsed().as_millis() as u64,
            consistency: None,
        };
        sink::commit_point(catalog, item.id, &point)?;
        Ok(point)
    });
    progress.finish();
    match fin {
        Ok(point) => Ok(BackupReport {
            point,
            warnings: std::mem::take(&mut builder.warnings),
            catalog_bytes: builder.tally.catalog_bytes,
        }),
        Err(e) => {
            catalog.rollback();
            // Sealed packs of this backup are unreferenced now; remove them (recovery would too).
            while let Ok(p) = builder.sealed.try_recv() {
                builder.packs_written.push(p.name);
            }
            sink::discard_packs(&vault.packs_dir(), &builder.packs_written);
            Err(e)
        }
    }
}
