//! Backup of a directory tree (`files` items).
//!
//! Stages: the walker (readdir, lstat, xattrs, the files cache), N workers (read, chunk, hash,
//! hand chunks to the write session's sinks, which dedup, compress and pack them), and the
//! calling thread, which builds trees into the session and commits the point. The walker emits events in depth-first order and the builder
//! consumes them in that order, waiting for a worker's result where an entry needs one; bounded
//! channels keep memory flat whatever the tree size.
//! Files cache: a file whose size, mtime, ctime and inode equal the previous point's entry is not
//! read; its content reference is reused — unless the entry is *racy*: its mtime or ctime is not
//! older than the start of the backup that recorded it minus `RACY_WINDOW` (a file rewritten in
//! the same timestamp tick as that backup looks unchanged; git has the same rule for its index).
//! Unreadable entries become warnings and are left out.
//! Crash story: see `vault::write` — one transaction, committed after every pack is durable.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use super::excludes::Excludes;
use super::{Abort, BackupError, Warning, check_interrupt, data_regions, entry_from_stat, ts};
use crate::chunking;
use crate::fsmeta;
use crate::progress::Progress;
use crate::vault::{
    ChunkId, ChunkSink, Content, DamageSet, Entry, Extent, FilesSource, ItemSource, Kind, NewPoint,
    PointRow, SessionOptions, SinkMode, Timestamp, TreeId, Vault, VaultReader, WriteLock,
    WriteSession,
};

/// How close to the start of the previous backup a file may have changed and still be trusted
/// unread: 2 s covers the coarsest timestamps in use (FAT's 2 s mtime, ext4 with 128-byte
/// inodes and network file systems' 1 s).
const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// A file a backup reads, as `-v` lists it: new since the previous point, or changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    New,
    Modified,
}

/// A function told about a file read: what kind of change, and its path.
pub type OnChange = dyn Fn(Change, &str) + Send + Sync;

/// Told about every file a backup (or a dry run) reads, with its path, from the walker thread.
#[derive(Clone)]
pub struct ChangeListener(pub Arc<OnChange>);

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeListener")
    }
}

/// How to run a backup (files, disks or VMs).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// Record the point as taken at this time (ns since the epoch) instead of now.
    pub time: Option<i64>,
    /// Keep the new point at least until this time (ns), whatever its policy says.
    pub keep_until: Option<i64>,
    /// The policy a new item follows (`None`: `default`); an existing item must already follow
    /// it.
    pub policy: Option<String>,
    /// Tags and note of the new point.
    pub labels: crate::vault::PointLabels,
    /// Told about each file read (files items only).
    pub on_change: Option<ChangeListener>,
}

/// What a finished backup produced.
#[derive(Debug)]
pub struct BackupReport {
    pub point: PointRow,
    pub warnings: Vec<Warning>,
    /// Bytes of new trees and content lists added to the catalog.
    pub catalog_bytes: u64,
    /// Damaged chunks, trees and lists this backup stored again from the source.
    pub repaired: u64,
    /// Symlinks, fifos and device nodes in the point (not in `point.files`).
    pub other: u64,
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
    /// The content list to store, when the file has more than one extent.
    list: Option<Vec<Extent>>,
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

/// What a walk found to read (files new or changed since the previous point).
#[derive(Clone, Copy, Debug, Default)]
struct ToRead {
    new: u64,
    modified: u64,
    bytes: u64,
}

struct Walker<'a> {
    /// The vault's read side (none for a dry run without a vault: everything is new).
    reader: Option<&'a VaultReader>,
    /// What is known damaged: a cached entry that points at it is read again.
    damage: &'a DamageSet,
    /// Cache entries changed at or after this time (ns) are not trusted (see the module header).
    racy_after: i64,
    excludes: Excludes,
    one_fs: bool,
    root_dev: u64,
    skip: Option<(u64, u64)>,
    source: Vec<u8>,
    events: Sender<Event>,
    /// Where files to read go; none in a dry run, which reads nothing.
    jobs: Option<Sender<Job>>,
    seq: u64,
    abort: &'a Abort,
    on_change: Option<ChangeListener>,
    to_read: ToRead,
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
        let (Some(id), Some(reader)) = (id, self.reader) else {
            return Vec::new();
        };
        match reader.tree(&id) {
            Ok(t) => t,
            Err(e) => {
                // Rebuilt from the source below; the builder writes it again over the damage.
                self.damage.add_tree(id);
                // The files cache is an optimisation: a damaged previous tree only costs re-reading.
                log::warn!("previous point's tree {id:?} unreadable, re-reading files: {e}");
                Vec::new()
            }
        }
    }

    /// True if a cached content points at nothing known damaged (else the file is read again
    /// and its chunks stored anew).
    fn reusable(&self, c: &Content) -> bool {
        match c {
            Content::None => true,
            Content::Chunk(id) => !self.damage.chunk(id),
            Content::List(id) if self.damage.list(id) => false,
            Content::List(id) if self.damage.has_chunks() => {
                match self.reader.map(|r| r.list(id)) {
                    None => true,
                    Some(got) => match got {
                        Ok(list) => list.iter().all(|x| match x {
                            Extent::Data { id, .. } => !self.damage.chunk(id),
                            _ => true,
                        }),
                        Err(_) => {
                            self.damage.add_list(*id);
                            false
                        }
                    },
                }
            }
            Content::List(_) => true,
        }
    }

    /// Counts a file about to be read and tells the listener.
    fn will_read(&mut self, existed: bool, abs: &[u8], entry: &Entry) {
        let change = if existed {
            self.to_read.modified += 1;
            Change::Modified
        } else {
            self.to_read.new += 1;
            Change::New
        };
        self.to_read.bytes += entry.size;
        if let Some(l) = &self.on_change {
            (l.0)(change, &show(abs));
        }
    }

    /// Walks the whole source from its root directory; returns what it found to read.
    fn walk(mut self, root_fd: Arc<OwnedFd>, root: Entry, prev: Option<TreeId>) -> ToRead {
        if self.emit(Event::Enter(root)).is_ok() && self.walk_dir(root_fd, b"", prev).is_ok() {
            let _ = self.emit(Event::Leave);
        }
        self.to_read
    }

    /// A cache entry that may hide a change made in the same timestamp tick as its backup.
    fn racy(&self, p: &Entry) -> bool {
        let ns = |t: Timestamp| t.sec.saturating_mul(1_000_000_000) + t.nsec as i64;
        ns(p.mtime) >= self.racy_after || ns(p.ctime) >= self.racy_after
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
        if let Some(tag) = self.excludes.tagged(dir.as_fd(), &names) {
            log::info!(
                "{} holds {}: keeping only that file",
                show(&join(&self.source, rel)),
                show(&tag)
            );
            names = vec![tag];
        }
        let prev = self.prev_tree(prev);
        for name in names {
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                join(rel, &name)
            };
            let abs = join(&self.source, &child_rel);
            let st = match fsmeta::lstat_at(dir.as_fd(), &name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // vanished
                Err(e) => {
                    if !self.excludes.path(&child_rel, false) {
                        self.warn(&child_rel, format!("cannot stat: {e}"))?;
                    }
                    continue;
                }
            };
            let Some(kind) = Kind::from_mode(st.st_mode) else {
                log::info!("skipping socket {}", show(&abs));
                continue;
            };
            if self.excludes.path(&child_rel, kind == Kind::Dir)
                || (kind == Kind::File && self.excludes.too_large(st.st_size as u64))
            {
                continue;
            }
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
                            && !self.racy(p)
                            && self.reusable(&p.content)
                    }) {
                        entry.content = p.content;
                        self.emit(Event::Entry(entry, None))?;
                    } else if entry.size == 0 {
                        // Nothing to read, but new or changed all the same: listed by -v.
                        self.will_read(
                            before.is_some_and(|p| p.kind() == Kind::File),
                            &abs,
                            &entry,
                        );
                        self.emit(Event::Entry(entry, None))?;
                    } else {
                        self.will_read(
                            before.is_some_and(|p| p.kind() == Kind::File),
                            &abs,
                            &entry,
                        );
                        let Some(jobs) = &self.jobs else {
                            self.emit(Event::Entry(entry, None))?; // a dry run
                            continue;
                        };
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
                        jobs.send(job).map_err(|_| Stop)?;
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
    abort: &'a Abort,
    progress: &'a Progress,
}

/// Reads one file into chunks. Outer error: fatal for the backup; inner: a warning for this file.
fn read_file(
    ctx: &WorkerCtx,
    sink: &mut ChunkSink,
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
            let id = ChunkId::of(chunk);
            if let Err(e) = sink.put(id, chunk) {
                fatal = Some(e.into());
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
        _ => (Content::None, Some(extents)), // the builder stores the list and names it
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
    mut sink: ChunkSink,
    jobs: Receiver<Job>,
    results: Sender<FileDone>,
) {
    let mut chunker = chunking::Chunker::default();
    for job in jobs {
        if ctx.abort.is_set() {
            continue; // drain so the walker is never stuck on a full queue
        }
        match read_file(ctx, &mut sink, &mut chunker, &job) {
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
    if let Err(e) = sink.flush() {
        ctx.abort.fail(e.into());
    }
}

/// Totals kept by the builder.
#[derive(Default)]
struct Tally {
    files: u64,
    dirs: u64,
    other: u64,
    logical: u64,
}

struct Builder<'a> {
    session: &'a WriteSession<'a>,
    results: Receiver<FileDone>,
    pending: HashMap<u64, FileDone>,
    warnings: Vec<Warning>,
    tally: Tally,
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

    /// Consumes the walker's events and returns the root entry.
    fn build(&mut self, events: Receiver<Event>) -> Result<Option<Entry>, BackupError> {
        let mut frames: Vec<(Entry, Vec<Entry>)> = Vec::new();
        let mut root = None;
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
                                e.content = match &data.list {
                                    Some(list) => Content::List(self.session.put_list(list)?),
                                    None => data.content,
                                };
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
                    } else if e.kind() != Kind::Dir {
                        self.tally.other += 1;
                    }
                    if let Some(f) = frames.last_mut() {
                        f.1.push(e);
                    }
                }
                Event::Leave => {
                    let Some((mut dir, children)) = frames.pop() else {
                        return Err(BackupError::Aborted("walker sent unbalanced events".into()));
                    };
                    dir.subtree = Some(self.session.put_tree(&children)?);
                    self.tally.dirs += 1;
                    match frames.last_mut() {
                        Some(parent) => parent.1.push(dir),
                        None => root = Some(dir),
                    }
                }
                Event::Warn(w) => self.warnings.push(w),
            }
        }
        Ok(root)
    }
}

/// The opened source directory and what the walk needs to know about it.
struct Source {
    path: std::path::PathBuf,
    fd: OwnedFd,
    stat: libc::stat,
    root: Entry,
    /// The vault's own directory, never backed up into itself.
    skip: Option<(u64, u64)>,
}

fn open_source(vault: Option<&Vault>, path: &Path) -> Result<Source, BackupError> {
    let src_err = |p: &Path| {
        let p = p.to_path_buf();
        move |e| BackupError::Source { path: p, source: e }
    };
    let path = std::fs::canonicalize(path).map_err(src_err(path))?;
    fsmeta::raise_fd_limit();
    let fd = fsmeta::open_dir(&path).map_err(src_err(&path))?;
    let stat = fsmeta::fstat(fd.as_fd()).map_err(src_err(&path))?;
    let mut root = entry_from_stat(Vec::new(), &stat, Kind::Dir);
    // The root's xattrs through its own fd ("/" has no parent to reach it through).
    match fsmeta::xattrs_at(fd.as_fd(), b".") {
        Ok(x) => root.xattrs = x,
        Err(e) => log::warn!("cannot read extended attributes of {}: {e}", path.display()),
    }
    use std::os::unix::fs::MetadataExt;
    let skip = vault
        .and_then(|v| std::fs::metadata(v.root()).ok())
        .map(|m| (m.dev(), m.ino()));
    Ok(Source {
        path,
        fd,
        stat,
        root,
        skip,
    })
}

/// The previous point's tree (for the files cache) and the time after which its entries are
/// racy.
fn previous(vault: &Vault, name: &str) -> Result<(Option<TreeId>, i64), BackupError> {
    let Some(item) = vault.find_item(name)? else {
        return Ok((None, 0));
    };
    let last: Option<PointRow> = vault.points(Some(&item))?.pop();
    Ok(match last {
        Some(p) => {
            let tree = vault.reader().root_entry(&p).ok().and_then(|e| e.subtree);
            (tree, p.started.unwrap_or(p.time) - RACY_WINDOW_NS)
        }
        None => (None, 0),
    })
}

/// Backs up the directory `def.path` as a new recovery point of item `name`. The item is created,
/// or its definition updated, only if the backup succeeds.
pub fn backup_files(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    def: &FilesSource,
    opts: &RunOptions,
) -> Result<BackupReport, BackupError> {
    let started = crate::testing::point_time(crate::vault::now_ns());
    let excludes = Excludes::new(def)?;
    let src = open_source(Some(vault), &def.path)?;
    let (prev_root, racy_after) = previous(vault, name)?;
    let session = vault.begin_write(
        lock,
        &SessionOptions {
            threads: opts.threads,
        },
    )?;
    let source = ItemSource::Files(def.clone());
    let item = session.define_item_following(name, &source, opts.policy.as_deref())?;
    let walk = WalkSetup {
        excludes,
        one_fs: def.one_file_system,
        prev_root,
        racy_after,
    };
    let progress = Progress::spinner(&format!("backup {name}"), opts.progress);
    let built = run_pipeline(vault, &session, src, walk, opts, &progress);
    progress.finish();
    check_interrupt()?;
    let (root, warnings, tally) = built?;
    let committed = session.commit(NewPoint {
        item,
        time: opts.time.unwrap_or(started),
        root,
        files: tally.files,
        dirs: tally.dirs,
        logical_bytes: tally.logical,
        warnings: warnings.len() as u64,
        consistency: None,
        keep_until: opts.keep_until,
        labels: opts.labels.clone(),
    })?;
    Ok(BackupReport {
        point: committed.point,
        warnings,
        catalog_bytes: committed.catalog_bytes,
        repaired: committed.repaired,
        other: tally.other,
    })
}

/// What the walker needs besides the source.
struct WalkSetup {
    excludes: Excludes,
    one_fs: bool,
    prev_root: Option<TreeId>,
    racy_after: i64,
}

fn worker_count(threads: usize) -> usize {
    crate::threads::count(threads, 1)
}

/// A walker over `src` sending to `events` (and files to read to `jobs`, unless a dry run).
#[allow(clippy::too_many_arguments)]
fn walker<'a>(
    reader: Option<&'a VaultReader>,
    damage: &'a DamageSet,
    src: &Source,
    walk: WalkSetup,
    events: Sender<Event>,
    jobs: Option<Sender<Job>>,
    abort: &'a Abort,
    opts: &RunOptions,
) -> Walker<'a> {
    Walker {
        reader,
        damage,
        racy_after: walk.racy_after,
        excludes: walk.excludes,
        one_fs: walk.one_fs,
        root_dev: src.stat.st_dev,
        skip: src.skip,
        source: src.path.as_os_str().as_encoded_bytes().to_vec(),
        events,
        jobs,
        seq: 0,
        abort,
        on_change: opts.on_change.clone(),
        to_read: ToRead::default(),
    }
}

fn spawn_walker<'scope, T: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<std::thread::ScopedJoinHandle<'scope, T>, BackupError> {
    std::thread::Builder::new()
        .name("walker".into())
        .stack_size(256 << 20) // one frame per directory level: deep trees need room
        .spawn_scoped(s, f)
        .map_err(|e| BackupError::Thread(crate::threads::refused("walker", e)))
}

/// What `backup --dry-run` found: what the point would hold and what would be read for it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DryRunReport {
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    /// Files that would be read: new since the previous point, or changed.
    pub new_files: u64,
    pub modified_files: u64,
    pub read_bytes: u64,
    pub warnings: Vec<Warning>,
}

/// Walks `def` as a backup of item `name` would (excludes, the files cache of the previous
/// point) and reports what would be read, reading no file and writing nothing: no lock, no
/// session. Without a vault, every file is new.
pub fn dry_run_files(
    vault: Option<&Vault>,
    name: &str,
    def: &FilesSource,
    opts: &RunOptions,
) -> Result<DryRunReport, BackupError> {
    let excludes = Excludes::new(def)?;
    let src = open_source(vault, &def.path)?;
    let (prev_root, racy_after) = match vault {
        Some(v) => previous(v, name)?,
        None => (None, 0),
    };
    let walk = WalkSetup {
        excludes,
        one_fs: def.one_file_system,
        prev_root,
        racy_after,
    };
    let reader = vault.map(|v| v.reader());
    let damage = DamageSet::new(Default::default(), &[]);
    let abort = Abort::default();
    let (ev_tx, ev_rx) = bounded::<Event>(16 * 1024);
    let w = walker(
        reader.as_deref(),
        &damage,
        &src,
        walk,
        ev_tx,
        None,
        &abort,
        opts,
    );
    let (root_fd, root_entry) = (Arc::new(src.fd), src.root);
    let mut report = DryRunReport::default();
    let to_read = std::thread::scope(|s| {
        let walker = spawn_walker(s, move || w.walk(root_fd, root_entry, prev_root))?;
        for ev in ev_rx {
            match ev {
                Event::Enter(_) => report.dirs += 1,
                Event::Entry(e, _) if e.kind() == Kind::File => {
                    report.files += 1;
                    report.logical_bytes += e.size;
                }
                Event::Warn(w) => report.warnings.push(w),
                Event::Entry(..) | Event::Leave => {}
            }
        }
        walker
            .join()
            .map_err(|_| BackupError::Aborted("the walker panicked".into()))
    })?;
    report.new_files = to_read.new;
    report.modified_files = to_read.modified;
    report.read_bytes = to_read.bytes;
    Ok(report)
}

/// Runs walker, workers and builder; returns the root entry, the warnings and the totals.
fn run_pipeline(
    vault: &Vault,
    session: &WriteSession,
    src: Source,
    walk: WalkSetup,
    opts: &RunOptions,
    progress: &Progress,
) -> Result<(Entry, Vec<Warning>, Tally), BackupError> {
    let abort = Abort::default();
    let (ev_tx, ev_rx) = bounded::<Event>(16 * 1024);
    let (job_tx, job_rx) = bounded::<Job>(512);
    let (res_tx, res_rx) = unbounded::<FileDone>();
    let mut builder = Builder {
        session,
        results: res_rx,
        pending: HashMap::new(),
        warnings: Vec::new(),
        tally: Tally::default(),
    };
    let reader = vault.reader();
    let ctx = WorkerCtx {
        abort: &abort,
        progress,
    };
    let root = std::thread::scope(|s| {
        let prev = walk.prev_root;
        let w = walker(
            Some(&reader),
            session.damage(),
            &src,
            walk,
            ev_tx,
            Some(job_tx),
            &abort,
            opts,
        );
        let (root_fd, root_entry) = (Arc::new(src.fd), src.root);
        let walker = spawn_walker(s, move || w.walk(root_fd, root_entry, prev));
        // The pool comes last: when the system allows fewer threads than asked, it is the pool
        // that shrinks, not a thread the backup cannot do without.
        let sink = session.sink(SinkMode::Group);
        let pool =
            crate::threads::spawn_workers(s, "backup worker", worker_count(opts.threads), |_| {
                let (jobs, results, ctx, sink) =
                    (job_rx.clone(), res_tx.clone(), &ctx, sink.clone());
                move || run_worker(ctx, sink, jobs, results)
            });
        drop((job_rx, res_tx, sink));
        let built = walker
            .and_then(|_| pool.map_err(BackupError::Thread))
            .and_then(|_| builder.build(ev_rx));
        if built.is_err() {
            abort.flag.store(true, Ordering::SeqCst);
        }
        built
    })?;
    if abort.is_set() {
        return Err(abort.take("a worker stopped"));
    }
    if let Some(e) = session.failed() {
        return Err(BackupError::Vault(crate::vault::VaultError::WriteFailed(e)));
    }
    let mut root = root.ok_or_else(|| BackupError::Aborted("no root directory".into()))?;
    root.name = Vec::new();
    Ok((root, builder.warnings, builder.tally))
}
