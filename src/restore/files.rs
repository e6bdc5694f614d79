//! File restore: writes a point's tree, or chosen paths of it, into a target directory.
//!
//! The calling thread walks the tree and creates every entry with `*at` calls relative to open
//! directory fds (never following a symlink inside the target); regular files are created here
//! and handed, open, to worker threads that write their content (holes stay holes) and metadata.
//! A directory's metadata is applied by whichever thread finishes its last pending child (a
//! counter per directory, holding the directory's fd), so directory mtimes come out exact and
//! no path longer than PATH_MAX is ever needed. Names from the catalog are checked by the tree decoder: a
//! name with `/`, `.`, `..` or NUL never reaches a system call.
//! Crash story: a restore only writes into the target; a killed restore leaves a partial tree
//! that a rerun overwrites.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::bounded;

use super::RestoreError;
use crate::fsmeta;
use crate::progress::Progress;
use crate::vault::content::WriteOptions;
use crate::vault::{ContentError, Entry, Kind, PointRow, Vault, VaultError, VaultReader};

/// How to run a restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Worker threads (0 = one per core).
    pub threads: usize,
    pub progress: bool,
}

/// What a restore did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Entries that could not be restored (the restore exits non-zero if any).
    pub errors: Vec<String>,
    /// Notes that do not fail the restore (e.g. ownership not restored when not root).
    pub notes: Vec<String>,
}

struct FileJob {
    fd: OwnedFd,
    entry: Entry,
    path: String,
    parent: Arc<DirDone>,
}

/// A restored directory waiting for its children: its metadata is applied when `pending`
/// (one token for the walk of its entries, one per queued file) drops to zero.
struct DirDone {
    fd: OwnedFd,
    entry: Option<Entry>,
    pending: AtomicUsize,
    path: String,
}

impl DirDone {
    fn new(fd: OwnedFd, entry: Option<Entry>, path: String) -> Arc<DirDone> {
        Arc::new(DirDone {
            fd,
            entry,
            pending: AtomicUsize::new(1),
            path,
        })
    }

    fn hold(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops one token; the last one applies the directory's metadata.
    fn release(&self, shared: &Shared) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(e) = &self.entry else { return };
        let fd = self.fd.as_fd();
        let r = (|| {
            for (k, v) in &e.xattrs {
                fsmeta::fset_xattr(fd, k, v)?;
            }
            if shared.chown {
                fsmeta::fchown(fd, e.uid, e.gid)?;
            }
            fsmeta::fchmod(fd, e.mode)?;
            fsmeta::set_times(fd, ts(e.mtime), ts(e.mtime))
        })();
        if let Err(err) = r {
            shared.error(&self.path, format!("cannot set directory metadata: {err}"));
        }
    }
}

struct Shared {
    errors: Mutex<Vec<String>>,
    chown: bool,
}

impl Shared {
    fn error(&self, path: &str, what: impl std::fmt::Display) {
        self.errors
            .lock()
            .expect("errors lock")
            .push(format!("{path}: {what}"));
    }
}

fn ts(t: crate::vault::Timestamp) -> (i64, u32) {
    (t.sec, t.nsec)
}

/// Writes a file's content into `fd` (a new, empty file; holes stay holes) and sets its metadata.
/// Returns the bytes written.
fn write_file(reader: &Arc<VaultReader>, job: &FileJob, chown: bool) -> Result<u64, String> {
    let io = |e: std::io::Error| e.to_string();
    let file = std::fs::File::from(job.fd.try_clone().map_err(io)?);
    let content = reader.content(&job.entry).map_err(|e| e.to_string())?;
    let written = content
        .write_to(&file, &WriteOptions::default())
        .map_err(|e| match e {
            ContentError::Vault(v) => v.to_string(),
            ContentError::Target(e) => e.to_string(),
        })?;
    let e = &job.entry;
    for (k, v) in &e.xattrs {
        fsmeta::fset_xattr(file.as_fd(), k, v).map_err(io)?;
    }
    if chown {
        fsmeta::fchown(file.as_fd(), e.uid, e.gid).map_err(io)?;
    }
    fsmeta::fchmod(file.as_fd(), e.mode).map_err(io)?;
    fsmeta::set_times(file.as_fd(), ts(e.mtime), ts(e.mtime)).map_err(io)?;
    Ok(written)
}

struct Walk<'a> {
    reader: &'a VaultReader,
    shared: &'a Shared,
    jobs: crossbeam_channel::Sender<FileJob>,
    target_fd: &'a OwnedFd,
    /// Hard-link groups: link key -> path of the first restored link, relative to the target.
    links: HashMap<(u64, u64), Vec<u8>>,
    report: RestoreReport,
    progress: &'a Progress,
    display_root: String,
}

fn rel_join(base: &[u8], name: &[u8]) -> Vec<u8> {
    if base.is_empty() {
        return name.to_vec();
    }
    let mut p = base.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

impl Walk<'_> {
    fn show(&self, rel: &[u8]) -> String {
        format!("{}/{}", self.display_root, String::from_utf8_lossy(rel))
    }

    /// Removes a non-directory that is in the way of a new entry.
    fn clear(&self, dir: BorrowedFd, name: &[u8]) -> std::io::Result<()> {
        match fsmeta::unlink_at(dir, name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Restores `e` as `name` inside `dir` (relative path `rel`).
    fn entry(&mut self, parent: &Arc<DirDone>, rel: &[u8], e: &Entry) -> Result<(), RestoreError> {
        let dir = parent.fd.as_fd();
        let name = e.name.as_slice();
        let path = self.show(rel);
        let io_note = |this: &Self, what: &str, err: std::io::Error| {
            this.shared.error(&path, format!("{what}: {err}"));
        };
        match e.kind() {
            Kind::Dir => {
                match fsmeta::mkdir_at(dir, name, 0o700) {
                    Ok(()) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                        let is_dir = fsmeta::lstat_at(dir, name)
                            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
                        if !is_dir
                            && let Err(err) = self
                                .clear(dir, name)
                                .and_then(|_| fsmeta::mkdir_at(dir, name, 0o700))
                        {
                            io_note(self, "cannot create directory", err);
                            return Ok(());
                        }
                    }
                    Err(err) => {
                        io_note(self, "cannot create directory", err);
                        return Ok(());
                    }
                }
                let sub = match fsmeta::open_dir_at(dir, name) {
                    Ok(fd) => fd,
                    Err(err) => {
                        io_note(self, "cannot open directory", err);
                        return Ok(());
                    }
                };
                let done = DirDone::new(sub, Some(e.clone()), path.clone());
                self.children(&done, rel, e)?;
            }
            Kind::File => {
                if let Some(key) = e.link_key() {
                    if let Some(first) = self.links.get(&key) {
                        let r = self.clear(dir, name).and_then(|_| {
                            fsmeta::link_at(self.target_fd.as_fd(), first, dir, name)
                        });
                        match r {
                            Ok(()) => self.report.files += 1,
                            Err(err) => io_note(self, "cannot create hard link", err),
                        }
                        return Ok(());
                    }
                    self.links.insert(key, rel.to_vec());
                }
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                let fd = match fsmeta::open_at(dir, name, flags, 0o600) {
                    Err(err) if err.raw_os_error() == Some(libc::EEXIST) => self
                        .clear(dir, name)
                        .and_then(|_| fsmeta::open_at(dir, name, flags, 0o600)),
                    r => r,
                };
                match fd {
                    Ok(fd) => {
                        self.report.files += 1;
                        self.report.bytes += e.size;
                        parent.hold();
                        let job = FileJob {
                            fd,
                            entry: e.clone(),
                            path,
                            parent: parent.clone(),
                        };
                        if self.jobs.send(job).is_err() {
                            return Err(RestoreError::Vault(VaultError::Io {
                                path: self.display_root.clone().into(),
                                source: std::io::Error::other("restore workers stopped"),
                            }));
                        }
                    }
                    Err(err) => io_note(self, "cannot create file", err),
                }
            }
            Kind::Symlink | Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                let made = self.clear(dir, name).and_then(|_| match e.kind() {
                    Kind::Symlink => fsmeta::symlink_at(&e.target, dir, name),
                    k => fsmeta::mknod_at(dir, name, k.ifmt() | (e.mode & 0o777), e.rdev),
                });
                if let Err(err) = made {
                    io_note(self, "cannot create", err);
                    return Ok(());
                }
                self.report.files += 1;
                if let Err(err) = self.special_meta(dir, e) {
                    io_note(self, "cannot set metadata", err);
                }
            }
        }
        Ok(())
    }

    fn special_meta(&self, dir: BorrowedFd, e: &Entry) -> std::io::Result<()> {
        let name = e.name.as_slice();
        for (k, v) in &e.xattrs {
            fsmeta::set_xattr_at(dir, name, k, v)?;
        }
        if self.shared.chown {
            fsmeta::lchown_at(dir, name, e.uid, e.gid)?;
        }
        if e.kind() != Kind::Symlink {
            fsmeta::chmod_at(dir, name, e.mode)?;
        }
        fsmeta::set_times_at(dir, name, ts(e.mtime), ts(e.mtime))
    }

    /// Restores the entries of directory entry `e` into `dir`, then releases the walk's token.
    fn children(&mut self, dir: &Arc<DirDone>, rel: &[u8], e: &Entry) -> Result<(), RestoreError> {
        let result = self.children_inner(dir, rel, e);
        dir.release(self.shared);
        result
    }

    fn children_inner(
        &mut self,
        dir: &Arc<DirDone>,
        rel: &[u8],
        e: &Entry,
    ) -> Result<(), RestoreError> {
        let Some(tree) = e.subtree else { return Ok(()) };
        let entries = match self.reader.tree(&tree) {
            Ok(t) => t,
            Err(err) => {
                self.shared.error(&self.show(rel), err);
                return Ok(());
            }
        };
        self.report.dirs += 1;
        for child in &entries {
            let child_rel = rel_join(rel, &child.name);
            self.entry(dir, &child_rel, child)?;
            self.progress.tick();
        }
        Ok(())
    }
}

/// Finds the entry at `path` (slash-separated, relative to the point's root) in the point.
pub(crate) fn lookup(
    vault: &Vault,
    root: &Entry,
    path: &std::ffi::OsStr,
) -> Result<Entry, RestoreError> {
    use std::os::unix::ffi::OsStrExt;
    vault
        .reader()
        .lookup(root, path.as_bytes())?
        .ok_or_else(|| RestoreError::NoSuchPath(path.to_string_lossy().into_owned()))
}

/// Restores `point` (all of it, or the given `paths` inside it) into `target`.
///
/// With no paths, the point's root directory becomes `target` itself (its metadata included).
/// Each path is restored as `target/<last component>`.
pub fn restore_files(
    vault: &Vault,
    point: &PointRow,
    paths: &[std::ffi::OsString],
    target: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let _lease = vault.lease()?;
    let reader = vault.reader();
    let root = reader.root_entry(point)?;
    let selected: Vec<Entry> = paths
        .iter()
        .map(|p| {
            let mut e = lookup(vault, &root, p)?;
            if e.name.is_empty() {
                e.name = b".".to_vec();
            }
            Ok(e)
        })
        .collect::<Result<_, RestoreError>>()?;
    let terr = |e| RestoreError::Target {
        path: target.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(target).map_err(terr)?;
    fsmeta::raise_fd_limit();
    let target_fd = fsmeta::open_dir(target).map_err(terr)?;
    // SAFETY: geteuid has no preconditions.
    let chown = unsafe { libc::geteuid() } == 0;
    let shared = Shared {
        errors: Mutex::new(Vec::new()),
        chown,
    };
    let threads = crate::threads::count(opts.threads, 1);
    let progress = Progress::new("restore", opts.progress);
    let (tx, rx) = bounded::<FileJob>(1024);
    let display_root = target.display().to_string();
    let mut report = std::thread::scope(|s| -> Result<_, RestoreError> {
        crate::threads::spawn_workers(s, "restore worker", threads, |_| {
            let (rx, shared, progress, reader) = (rx.clone(), &shared, &progress, &reader);
            move || {
                for job in rx {
                    match write_file(reader, &job, shared.chown) {
                        Ok(n) => progress.add(1, n),
                        Err(e) => shared.error(&job.path, e),
                    }
                    let parent = job.parent.clone();
                    drop(job); // close the file before its directory may be finished
                    parent.release(shared);
                }
            }
        })
        .map_err(RestoreError::Thread)?;
        drop(rx);
        let mut walk = Walk {
            reader: &reader,
            shared: &shared,
            jobs: tx,
            target_fd: &target_fd,
            links: HashMap::new(),
            report: RestoreReport::default(),
            progress: &progress,
            display_root: display_root.clone(),
        };
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(terr);
        if selected.is_empty() {
            let top = DirDone::new(dup(&target_fd)?, Some(root.clone()), display_root.clone());
            walk.children(&top, b"", &root)?;
        } else {
            let top = DirDone::new(dup(&target_fd)?, None, display_root.clone());
            for e in &selected {
                if e.name == b"." {
                    top.hold();
                    walk.children(&top, b"", e)?;
                } else {
                    walk.entry(&top, &e.name.clone(), e)?;
                }
            }
            top.release(&shared);
        }
        Ok(walk.report)
    })?;
    progress.finish();
    report.errors = shared.errors.into_inner().expect("errors lock");
    if !chown {
        report
            .notes
            .push("not running as root: file owners were not restored".into());
    }
    Ok(report)
}
