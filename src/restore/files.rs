//! File restore: writes a point's tree, or chosen paths of it, into a target directory.
//!
//! Nothing at the target changes before its replacement is complete. Every file, symlink, fifo
//! and device is made under a temporary name (`.coffre-tmp.PID.N`, `O_EXCL`) beside its final
//! name, given its content and metadata through a descriptor of its own, checked to be the node
//! that was made, and only then renamed over the final name; if anything fails the temporary is
//! removed and what was at the final name is left as it was. A hard link's other names are
//! linked from the first name's directory descriptor once its file is complete. A directory is
//! made in place; one that must replace a non-directory is built under a temporary name and
//! exchanged in once its own entries are in. An existing directory is never removed.
//!
//! The walk is iterative (an explicit stack: any depth) and works with `*at` calls relative to
//! open directory fds, never following a symlink inside the target. A directory's fd is held only
//! while entries of it are still to come, and its metadata is applied by whichever thread
//! finishes the last of them (a counter per directory), so its mtime comes out exact and a chain
//! of 10,000 directories needs a handful of fds. Regular files are written by worker threads.
//! Names from the catalog are checked by the tree decoder: a name with `/`, `.`, `..` or NUL
//! never reaches a system call.
//! Crash story: a killed restore leaves the entries it finished, the target's other entries
//! untouched, and perhaps `.coffre-tmp.*` temporaries; a file that replaces an existing one is
//! fsync'd before the rename, so a power cut leaves the old file or the new one, never an empty
//! one (new files are not fsync'd, like restic and borg: nothing is lost if they are).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

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
    /// Give an existing target directory the point root's owner, mode, xattrs and times (a
    /// directory the restore creates always gets them).
    pub root_metadata: bool,
}

/// What a restore did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    /// Regular files (each name of a hard-linked file counts, as in the backup's count).
    pub files: u64,
    pub dirs: u64,
    /// Symlinks, fifos and device nodes.
    pub other: u64,
    /// The files' sizes (each name of a hard-linked file counts, as in the point's size).
    pub bytes: u64,
    /// Restored entries that replaced an existing one at the target.
    pub replaced: u64,
    /// Entries that could not be restored, each saying what is at its path now (the restore
    /// exits non-zero if any).
    pub errors: Vec<String>,
    /// Notes that do not fail the restore (e.g. ownership not restored when not root).
    pub notes: Vec<String>,
}

/// The POSIX ACL xattrs: removed from a restored entry that did not have them, so an ACL inherited
/// from a default ACL at the target never widens the captured permissions.
const ACCESS_ACL: &[u8] = b"system.posix_acl_access";
const DEFAULT_ACL: &[u8] = b"system.posix_acl_default";

/// Which entries of a directory to restore: all of them, or only those on the way to the chosen
/// paths (by name).
#[derive(Clone, Debug, PartialEq)]
enum Selection {
    All,
    Only(BTreeMap<Vec<u8>, Selection>),
}

impl Selection {
    /// The selection of `paths`, each a list of names from the point's root: the same path twice
    /// is one path, and a path inside another chosen one adds nothing. No path, or the root
    /// itself, selects everything.
    fn of(paths: &[Vec<Vec<u8>>]) -> Selection {
        if paths.is_empty() || paths.iter().any(|p| p.is_empty()) {
            return Selection::All;
        }
        let mut top = Selection::Only(BTreeMap::new());
        for path in paths {
            let mut node = &mut top;
            for (i, name) in path.iter().enumerate() {
                let Selection::Only(map) = node else { break };
                if i + 1 == path.len() {
                    map.insert(name.clone(), Selection::All);
                    break;
                }
                node = map
                    .entry(name.clone())
                    .or_insert_with(|| Selection::Only(BTreeMap::new()));
            }
        }
        top
    }
}

/// A fresh temporary name for the target (`.coffre-tmp.PID.N`).
fn tmp_name() -> Vec<u8> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    format!(
        ".coffre-tmp.{}.{}",
        PID.get_or_init(std::process::id),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
    .into_bytes()
}

/// Makes something under a fresh temporary name with `make`, which fails with EEXIST when the
/// name is taken (`O_EXCL`, `mknodat`, `symlinkat`, `linkat`, `mkdirat` all do).
fn make_tmp<T>(mut make: impl FnMut(&[u8]) -> io::Result<T>) -> io::Result<(Vec<u8>, T)> {
    let mut tries = 0;
    loop {
        let name = tmp_name();
        match make(&name) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && tries < 100 => tries += 1,
            r => return r.map(|v| (name, v)),
        }
    }
}

/// Moves the complete entry at `tmp` over `name` in `dir`. Returns whether it replaced one.
/// `fresh`: `dir` was created empty by this restore, so nothing can be in the way.
fn commit(dir: BorrowedFd, tmp: &[u8], name: &[u8], fresh: bool) -> io::Result<bool> {
    let existed = !fresh && fsmeta::lstat_at(dir, name).is_ok();
    fsmeta::rename_at(dir, tmp, dir, name, 0).map_err(|e| match e.raw_os_error() {
        Some(libc::EISDIR | libc::ENOTEMPTY | libc::EEXIST) => {
            io::Error::other("a directory is in the way")
        }
        _ => e,
    })?;
    Ok(existed)
}

/// What a failed entry left at its path, for the error message.
fn left_as_it_was(dir: BorrowedFd, name: &[u8]) -> &'static str {
    if fsmeta::lstat_at(dir, name).is_ok() {
        "what was there was left as it was"
    } else {
        "nothing was created there"
    }
}

/// Gives a node the restore made (or a directory it restores) exactly the captured metadata,
/// through `fd` (the node's own descriptor, `O_PATH` for symlinks and specials), in the order the
/// kernel needs: POSIX ACLs the entry did not have (inherited from a default ACL) are removed;
/// then the owner (chown clears setuid/setgid and `security.capability`, so it comes before
/// them); then the xattrs (captured ACLs, capabilities); then the mode (after the xattrs, so a
/// read-only mode cannot refuse a non-root restore its `user.*` xattrs; a captured ACL agrees with
/// the captured mode, so chmod leaves it as set; chmod never clears capabilities); then the times
/// (everything before changes only the ctime).
/// `may_have_acl`: the node may carry an ACL the entry did not have (inherited from its
/// directory's default ACL, or there before); otherwise removing one is skipped.
fn apply_meta(fd: BorrowedFd, e: &Entry, chown: bool, may_have_acl: bool) -> io::Result<()> {
    let kind = e.kind();
    if kind != Kind::Symlink && may_have_acl {
        let has = |k: &[u8]| e.xattrs.iter().any(|(n, _)| n == k);
        if !has(ACCESS_ACL) {
            fsmeta::fremove_xattr(fd, ACCESS_ACL)?;
        }
        if kind == Kind::Dir && !has(DEFAULT_ACL) {
            fsmeta::fremove_xattr(fd, DEFAULT_ACL)?;
        }
    }
    if chown {
        fsmeta::fchown(fd, e.uid, e.gid)?;
    }
    for (k, v) in &e.xattrs {
        fsmeta::fset_xattr(fd, k, v)?;
    }
    if kind != Kind::Symlink {
        fsmeta::fchmod(fd, e.mode)?;
    }
    fsmeta::set_times(fd, ts(e.mtime), ts(e.mtime))
}

fn ts(t: crate::vault::Timestamp) -> (i64, u32) {
    (t.sec, t.nsec)
}

/// A directory being restored, waiting for its entries: its metadata is applied when `pending`
/// (one token for the walk of its listing, one per subdirectory not yet opened, per file being
/// written, per hard link waiting for its first name) drops to zero.
struct DirDone {
    fd: OwnedFd,
    /// Created empty by this restore: nothing of its own can be in the way of an entry.
    fresh: bool,
    /// It has a default ACL: what is created in it inherits one.
    inherits: bool,
    /// Metadata to apply when complete: `None` for an existing directory that is only on the way
    /// to chosen paths, or the existing target (unless asked).
    meta: Option<Entry>,
    pending: AtomicUsize,
    /// Some entry of it could not be restored.
    failed: AtomicBool,
    path: String,
    /// Set when the directory was built under a temporary name to replace a non-directory.
    swap: Option<Swap>,
}

/// Where a directory built under a temporary name goes once complete.
struct Swap {
    /// Holds a token of the parent until the exchange (it changes the parent's mtime).
    parent: Arc<DirDone>,
    tmp: Vec<u8>,
    name: Vec<u8>,
}

impl DirDone {
    fn new(
        fd: OwnedFd,
        fresh: bool,
        meta: Option<Entry>,
        path: String,
        swap: Option<Swap>,
    ) -> Arc<DirDone> {
        Arc::new(DirDone {
            inherits: fsmeta::fhas_xattr(fd.as_fd(), DEFAULT_ACL),
            fresh,
            fd,
            meta,
            pending: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            path,
            swap,
        })
    }

    fn hold(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops one token; the last one applies the directory's metadata (and swaps it in).
    fn release(&self, sh: &Shared) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if let Some(e) = &self.meta
            && let Err(err) = apply_meta(self.fd.as_fd(), e, sh.chown, !self.fresh || self.inherits)
        {
            sh.fail(
                self,
                &self.path,
                format!("cannot set directory metadata: {err}"),
            );
        }
        if let Some(s) = &self.swap {
            self.swap_in(s, sh);
            s.parent.release(sh);
        }
    }

    /// Exchanges the complete directory with the non-directory that was in its way, then removes
    /// that; a directory with failed entries is not swapped in.
    fn swap_in(&self, s: &Swap, sh: &Shared) {
        let (pdir, shown_tmp) = (s.parent.fd.as_fd(), String::from_utf8_lossy(&s.tmp));
        if self.failed.load(Ordering::Acquire) {
            sh.fail(
                &s.parent,
                &self.path,
                format!(
                    "some of its entries could not be restored, so the non-directory in its way \
                     was left as it was; what was restored is in {shown_tmp} beside it"
                ),
            );
            return;
        }
        let r = match fsmeta::rename_at(pdir, &s.tmp, pdir, &s.name, libc::RENAME_EXCHANGE) {
            Ok(()) => fsmeta::unlink_at(pdir, &s.tmp).map(|_| true),
            // What was in the way went away meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                fsmeta::rename_at(pdir, &s.tmp, pdir, &s.name, libc::RENAME_NOREPLACE)
                    .map(|_| false)
            }
            Err(e) => Err(e),
        };
        match r {
            Ok(replaced) => {
                if replaced {
                    sh.replaced.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(err) => sh.fail(
                &s.parent,
                &self.path,
                format!(
                    "cannot put the directory in place ({err}); it is in {shown_tmp} beside it"
                ),
            ),
        }
    }
}

/// Where a hard-link group stands.
enum LinkGroup {
    /// The first name's file is being written; these names wait for it.
    Writing(Vec<Waiting>),
    /// The first name is complete: link from its directory (`dir` while that is still held open,
    /// else reopened at `rel_dir` without following symlinks) and check the inode.
    Done(LinkSource),
    /// The first name could not be restored.
    Failed(String),
}

#[derive(Clone)]
struct LinkSource {
    dir: Weak<DirDone>,
    rel_dir: Vec<u8>,
    name: Vec<u8>,
    dev: u64,
    ino: u64,
    /// The file's size: each further name counts it again, as the backup did.
    size: u64,
}

/// A hard link waiting for its first name's file (holds a token of `dir`).
struct Waiting {
    dir: Arc<DirDone>,
    name: Vec<u8>,
    path: String,
}

/// What every thread of one restore shares.
struct Shared<'a> {
    reader: &'a Arc<VaultReader>,
    target: BorrowedFd<'a>,
    display_root: String,
    chown: bool,
    progress: &'a Progress,
    errors: Mutex<Vec<String>>,
    links: Mutex<HashMap<(u64, u64), LinkGroup>>,
    files: AtomicU64,
    dirs: AtomicU64,
    /// Symlinks, fifos and devices.
    other: AtomicU64,
    bytes: AtomicU64,
    replaced: AtomicU64,
}

impl Shared<'_> {
    fn show(&self, rel: &[u8]) -> String {
        format!("{}/{}", self.display_root, String::from_utf8_lossy(rel))
    }

    /// Records that an entry of `dir` could not be restored.
    fn fail(&self, dir: &DirDone, path: &str, what: impl std::fmt::Display) {
        dir.failed.store(true, Ordering::Release);
        self.errors
            .lock()
            .expect("errors lock")
            .push(format!("{path}: {what}"));
    }

    fn restored(&self, replaced: bool) {
        self.files.fetch_add(1, Ordering::Relaxed);
        if replaced {
            self.replaced.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Links `name` in `to` to the complete first name at `src`: made under a temporary name,
    /// checked to be the first name's inode, then renamed over `name`.
    fn link(&self, src: &LinkSource, to: &DirDone, name: &[u8], path: &str) {
        let held = src.dir.upgrade();
        let reopened;
        let from = match &held {
            Some(d) => d.fd.as_fd(),
            None => match fsmeta::open_dir_components(self.target, &src.rel_dir) {
                Ok(fd) => {
                    reopened = fd;
                    reopened.as_fd()
                }
                Err(err) => {
                    let left = left_as_it_was(to.fd.as_fd(), name);
                    return self.fail(
                        to,
                        path,
                        format!("cannot reach its first link: {err}; {left}"),
                    );
                }
            },
        };
        let dir = to.fd.as_fd();
        let r = make_tmp(|n| fsmeta::link_at(from, &src.name, dir, n)).and_then(|(tmp, ())| {
            let same = fsmeta::lstat_at(dir, &tmp)
                .is_ok_and(|st| st.st_dev == src.dev && st.st_ino == src.ino);
            let r = if same {
                commit(dir, &tmp, name, to.fresh)
            } else {
                Err(io::Error::other(
                    "its first link was replaced while being restored",
                ))
            };
            if r.is_err() {
                let _ = fsmeta::unlink_at(dir, &tmp);
            }
            r
        });
        match r {
            Ok(replaced) => {
                self.restored(replaced);
                self.bytes.fetch_add(src.size, Ordering::Relaxed);
                self.progress.add(0, src.size);
            }
            Err(err) => {
                let left = left_as_it_was(dir, name);
                self.fail(to, path, format!("cannot create hard link: {err}; {left}"));
            }
        }
    }

    /// The first name of group `key` is complete (`Some`) or failed (`None`): settles the names
    /// waiting for it.
    fn link_group_settled(&self, key: (u64, u64), done: Option<LinkSource>, first: &str) {
        let waiting = {
            let mut links = self.links.lock().expect("links lock");
            let state = match &done {
                Some(src) => LinkGroup::Done(src.clone()),
                None => LinkGroup::Failed(first.to_string()),
            };
            match links.insert(key, state) {
                Some(LinkGroup::Writing(w)) => w,
                _ => Vec::new(),
            }
        };
        for w in waiting {
            match &done {
                Some(src) => self.link(src, &w.dir, &w.name, &w.path),
                None => self.first_failed(&w.dir, &w.name, &w.path, first),
            }
            w.dir.release(self);
        }
    }

    fn first_failed(&self, dir: &DirDone, name: &[u8], path: &str, first: &str) {
        let left = left_as_it_was(dir.fd.as_fd(), name);
        self.fail(
            dir,
            path,
            format!("not restored: it is a hard link to {first}, which could not be; {left}"),
        );
    }
}

/// A regular file made under `tmp` in `parent`, for a worker to fill and put in place.
struct FileJob {
    fd: OwnedFd,
    tmp: Vec<u8>,
    entry: Entry,
    path: String,
    parent: Arc<DirDone>,
    /// The first name of a hard-link group: its key and its directory's path in the target.
    first_link: Option<((u64, u64), Vec<u8>)>,
}

/// Writes a job's content and metadata, and renames it into place. Returns the bytes written
/// and whether it replaced an existing entry.
fn write_file(
    reader: &Arc<VaultReader>,
    job: &FileJob,
    chown: bool,
) -> Result<(u64, bool), String> {
    let io = |e: io::Error| e.to_string();
    let file = std::fs::File::from(job.fd.try_clone().map_err(io)?);
    let content = reader
        .content(&job.entry)
        .map_err(|e| format!("cannot read it from the vault: {e}"))?;
    let written = content
        .write_to(&file, &WriteOptions::default())
        .map_err(|e| match e {
            ContentError::Vault(v) => format!("cannot read it from the vault: {v}"),
            ContentError::Target(e) => format!("cannot write it: {e}"),
        })?;
    apply_meta(file.as_fd(), &job.entry, chown, job.parent.inherits)
        .map_err(|e| format!("cannot set metadata: {e}"))?;
    let dir = job.parent.fd.as_fd();
    let name = job.entry.name.as_slice();
    let fresh = job.parent.fresh;
    if !fresh && fsmeta::lstat_at(dir, name).is_ok() {
        // Survives a power cut: the old file stays until the new one is on disk.
        file.sync_all().map_err(io)?;
    }
    if job.tmp == name {
        return Ok((written, false)); // made under its own name in a fresh directory
    }
    let replaced = commit(dir, &job.tmp, name, fresh).map_err(io)?;
    Ok((written, replaced))
}

/// The worker loop: fills the files the walk made, puts them in place, settles hard links.
fn worker(sh: &Shared, jobs: crossbeam_channel::Receiver<FileJob>) {
    for job in jobs {
        let dir = job.parent.fd.as_fd();
        let name = job.entry.name.as_slice();
        let done = match write_file(sh.reader, &job, sh.chown) {
            Ok((_, replaced)) => {
                sh.restored(replaced);
                sh.bytes.fetch_add(job.entry.size, Ordering::Relaxed);
                // The bar's total is the files' sizes (what was written leaves out holes).
                sh.progress.add(1, job.entry.size);
                crate::testing::interrupt_point("restore-file-written");
                true
            }
            Err(e) => {
                let _ = fsmeta::unlink_at(dir, &job.tmp);
                let left = left_as_it_was(dir, name);
                sh.fail(&job.parent, &job.path, format!("{e}; {left}"));
                false
            }
        };
        if let Some((key, rel_dir)) = &job.first_link {
            let src = done
                .then(|| fsmeta::fstat(job.fd.as_fd()).ok())
                .flatten()
                .map(|st| LinkSource {
                    dir: Arc::downgrade(&job.parent),
                    rel_dir: rel_dir.clone(),
                    name: name.to_vec(),
                    dev: st.st_dev,
                    ino: st.st_ino,
                    size: job.entry.size,
                });
            sh.link_group_settled(*key, src, &job.path);
        }
        let parent = job.parent.clone();
        drop(job); // close the file before its directory may be finished
        parent.release(sh);
    }
}

/// A subdirectory still to restore (holds a token of `parent` until it is opened).
struct DirWork {
    parent: Arc<DirDone>,
    rel: Vec<u8>,
    entry: Entry,
    sel: Selection,
}

/// The walk: runs on the calling thread, creates directories and special files, and hands
/// regular files to the workers.
struct Walk<'s, 'a> {
    sh: &'s Shared<'a>,
    jobs: crossbeam_channel::Sender<FileJob>,
    stack: Vec<DirWork>,
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

impl Walk<'_, '_> {
    /// Restores everything `sel` chooses below `root` into `top` (the target).
    fn run(
        &mut self,
        top: &Arc<DirDone>,
        root: &Entry,
        sel: &Selection,
    ) -> Result<(), RestoreError> {
        self.fill(top, b"", root, sel)?;
        while let Some(w) = self.stack.pop() {
            if let Some(dir) = self.open(&w) {
                self.fill(&dir, &w.rel, &w.entry, &w.sel)?;
            }
        }
        Ok(())
    }

    /// Creates (or finds) the directory of `w` and opens it; releases the parent's token for it
    /// unless it must be swapped in later.
    fn open(&mut self, w: &DirWork) -> Option<Arc<DirDone>> {
        let sh = self.sh;
        let (pdir, name) = (w.parent.fd.as_fd(), w.entry.name.as_slice());
        let path = sh.show(&w.rel);
        let give_up = |what: String| {
            sh.fail(
                &w.parent,
                &path,
                format!("{what}; nothing below it was restored"),
            );
            w.parent.release(sh);
            None
        };
        let mut tmp = None;
        let created = match fsmeta::mkdir_at(pdir, name, 0o700) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let is_dir = fsmeta::lstat_at(pdir, name)
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
                if !is_dir {
                    match make_tmp(|n| fsmeta::mkdir_at(pdir, n, 0o700)) {
                        Ok((t, ())) => tmp = Some(t),
                        Err(err) => return give_up(format!("cannot create directory: {err}")),
                    }
                }
                !is_dir
            }
            Err(err) => return give_up(format!("cannot create directory: {err}")),
        };
        let fd = match fsmeta::open_dir_at(pdir, tmp.as_deref().unwrap_or(name)) {
            Ok(fd) => fd,
            Err(err) => {
                if let Some(t) = &tmp {
                    let _ = fsmeta::rmdir_at(pdir, t);
                }
                return give_up(format!("cannot open directory: {err}"));
            }
        };
        // A directory the restore made, or one chosen (or inside a chosen one), gets its
        // captured metadata; an existing one merely on the way keeps its own.
        let meta = (created || w.sel == Selection::All).then(|| w.entry.clone());
        let fresh = created && tmp.is_none();
        let swap = tmp.map(|tmp| Swap {
            parent: w.parent.clone(),
            tmp,
            name: name.to_vec(),
        });
        let in_place = swap.is_none();
        let dir = DirDone::new(fd, fresh, meta, path, swap);
        if in_place {
            w.parent.release(sh);
        }
        Some(dir)
    }

    /// Restores the entries `sel` chooses of directory entry `e` into `dir`: non-directories
    /// now, subdirectories pushed on the stack (in order); then releases the walk's token.
    fn fill(
        &mut self,
        dir: &Arc<DirDone>,
        rel: &[u8],
        e: &Entry,
        sel: &Selection,
    ) -> Result<(), RestoreError> {
        let result = self.fill_inner(dir, rel, e, sel);
        dir.release(self.sh);
        result
    }

    fn fill_inner(
        &mut self,
        dir: &Arc<DirDone>,
        rel: &[u8],
        e: &Entry,
        sel: &Selection,
    ) -> Result<(), RestoreError> {
        let sh = self.sh;
        let Some(tree) = e.subtree else { return Ok(()) };
        let entries = match sh.reader.tree(&tree) {
            Ok(t) => t,
            Err(err) => {
                let what = format!("cannot read its listing: {err}; nothing below it was restored");
                sh.fail(dir, &dir.path, what);
                return Ok(());
            }
        };
        sh.dirs.fetch_add(1, Ordering::Relaxed);
        let mut subdirs = Vec::new();
        for child in entries {
            let child_sel = match sel {
                Selection::All => Selection::All,
                Selection::Only(map) => match map.get(&child.name) {
                    Some(s) => s.clone(),
                    None => continue,
                },
            };
            let child_rel = rel_join(rel, &child.name);
            if child.kind() == Kind::Dir {
                dir.hold();
                subdirs.push(DirWork {
                    parent: dir.clone(),
                    rel: child_rel,
                    entry: child,
                    sel: child_sel,
                });
            } else {
                self.non_dir(dir, rel, &child_rel, child)?;
            }
        }
        self.stack.extend(subdirs.into_iter().rev());
        Ok(())
    }

    /// Restores a file, symlink, fifo or device `e` into `dir` (at `rel_dir`).
    fn non_dir(
        &mut self,
        dir: &Arc<DirDone>,
        rel_dir: &[u8],
        rel: &[u8],
        e: Entry,
    ) -> Result<(), RestoreError> {
        let sh = self.sh;
        let path = sh.show(rel);
        if e.kind() != Kind::File {
            self.special(dir, &e, &path);
            return Ok(());
        }
        let mut first_link = None;
        if let Some(key) = e.link_key() {
            let mut links = sh.links.lock().expect("links lock");
            match links.get_mut(&key) {
                None => {
                    links.insert(key, LinkGroup::Writing(Vec::new()));
                    first_link = Some((key, rel_dir.to_vec()));
                }
                Some(LinkGroup::Writing(waiting)) => {
                    dir.hold();
                    waiting.push(Waiting {
                        dir: dir.clone(),
                        name: e.name,
                        path,
                    });
                    return Ok(());
                }
                Some(LinkGroup::Done(src)) => {
                    let src = src.clone();
                    drop(links);
                    sh.link(&src, dir, &e.name, &path);
                    return Ok(());
                }
                Some(LinkGroup::Failed(first)) => {
                    let first = first.clone();
                    drop(links);
                    sh.first_failed(dir, &e.name, &path, &first);
                    return Ok(());
                }
            }
        }
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        // In a directory this restore made, nothing is in the way: the file is made under its
        // own name (and removed again if it cannot be completed).
        let made = if dir.fresh {
            fsmeta::open_at(dir.fd.as_fd(), &e.name, flags, 0o600).map(|fd| (e.name.clone(), fd))
        } else {
            make_tmp(|n| fsmeta::open_at(dir.fd.as_fd(), n, flags, 0o600))
        };
        let (tmp, fd) = match made {
            Ok(x) => x,
            Err(err) => {
                let left = left_as_it_was(dir.fd.as_fd(), &e.name);
                sh.fail(
                    dir,
                    &path,
                    format!("cannot create a file beside it: {err}; {left}"),
                );
                if let Some((key, _)) = first_link {
                    sh.link_group_settled(key, None, &path);
                }
                return Ok(());
            }
        };
        dir.hold();
        let job = FileJob {
            fd,
            tmp,
            entry: e,
            path,
            parent: dir.clone(),
            first_link,
        };
        if let Err(crossbeam_channel::SendError(job)) = self.jobs.send(job) {
            let _ = fsmeta::unlink_at(dir.fd.as_fd(), &job.tmp);
            return Err(RestoreError::Vault(VaultError::Io {
                path: sh.display_root.clone().into(),
                source: io::Error::other("restore workers stopped"),
            }));
        }
        Ok(())
    }

    /// Makes a symlink, fifo or device under a temporary name, checks through an `O_PATH`
    /// descriptor that the node there is the one made, sets its metadata through that
    /// descriptor and renames it into place.
    fn special(&mut self, dir: &DirDone, e: &Entry, path: &str) {
        let sh = self.sh;
        let d = dir.fd.as_fd();
        let kind = e.kind();
        let made = make_tmp(|n| match kind {
            Kind::Symlink => fsmeta::symlink_at(&e.target, d, n),
            k => fsmeta::mknod_at(d, n, k.ifmt() | 0o600, e.rdev),
        });
        let r = made.and_then(|(tmp, ())| {
            let r = (|| {
                let fd = fsmeta::open_path_at(d, &tmp)?;
                if fsmeta::fstat(fd.as_fd())?.st_mode & libc::S_IFMT != kind.ifmt() {
                    return Err(io::Error::other("it was replaced while being restored"));
                }
                apply_meta(fd.as_fd(), e, sh.chown, dir.inherits)?;
                commit(d, &tmp, &e.name, dir.fresh)
            })();
            if r.is_err() {
                let _ = fsmeta::unlink_at(d, &tmp);
            }
            r
        });
        match r {
            Ok(replaced) => {
                sh.other.fetch_add(1, Ordering::Relaxed);
                sh.replaced.fetch_add(replaced as u64, Ordering::Relaxed);
            }
            Err(err) => {
                let left = left_as_it_was(d, &e.name);
                sh.fail(dir, path, format!("cannot create: {err}; {left}"));
            }
        }
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

/// The names of `path` from the point's root (`.` and empty components dropped), after checking
/// the point has it.
fn path_names(
    vault: &Vault,
    root: &Entry,
    path: &std::ffi::OsStr,
) -> Result<Vec<Vec<u8>>, RestoreError> {
    use std::os::unix::ffi::OsStrExt;
    lookup(vault, root, path)?;
    Ok(path
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect())
}

/// Creates the target directory (and its parents) unless it exists. Returns whether it did.
fn make_target(target: &Path) -> io::Result<bool> {
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::create_dir(target) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Restores `point` (all of it, or the given `paths` inside it) into `target`.
///
/// Each path is restored under its own path inside the point (`target/a/b` for `a/b`), like
/// borg's extract and restic's `--include`, so no two can clash; the same path twice, or a path
/// inside another chosen one, is restored once. The directories on the way are created as they
/// were captured, or left as they are when they exist. With no paths, the point's root is
/// `target` itself. The target gets the root's metadata only when the restore creates it, or
/// with `opts.root_metadata`.
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
    let names = paths
        .iter()
        .map(|p| path_names(vault, &root, p))
        .collect::<Result<Vec<_>, _>>()?;
    let sel = Selection::of(&names);
    let terr = |e| RestoreError::Target {
        path: target.to_path_buf(),
        source: e,
    };
    let created = make_target(target).map_err(terr)?;
    // Each queued file holds its descriptor (and its directory's): keep the queue well inside
    // the descriptor limit.
    let queue = (fsmeta::raise_fd_limit() / 4).clamp(16, 1024) as usize;
    let target_fd = fsmeta::open_dir(target).map_err(terr)?;
    // SAFETY: geteuid has no preconditions.
    let chown = unsafe { libc::geteuid() } == 0;
    let threads = crate::threads::count(opts.threads, 1);
    let label = format!("restore {}", target.display());
    let progress = match paths.is_empty() {
        // The whole point: its size is known.
        true => Progress::bytes(&label, point.logical_bytes, opts.progress),
        false => Progress::spinner(&label, opts.progress),
    };
    let sh = Shared {
        reader: &reader,
        target: target_fd.as_fd(),
        display_root: target.display().to_string(),
        chown,
        progress: &progress,
        errors: Mutex::new(Vec::new()),
        links: Mutex::new(HashMap::new()),
        files: AtomicU64::new(0),
        dirs: AtomicU64::new(0),
        other: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        replaced: AtomicU64::new(0),
    };
    let (tx, rx) = bounded::<FileJob>(queue);
    let top_meta = (created || opts.root_metadata).then(|| root.clone());
    let top = DirDone::new(
        target_fd.try_clone().map_err(terr)?,
        created,
        top_meta,
        sh.display_root.clone(),
        None,
    );
    std::thread::scope(|s| -> Result<(), RestoreError> {
        crate::threads::spawn_workers(s, "restore worker", threads, |_| {
            let (rx, sh) = (rx.clone(), &sh);
            move || worker(sh, rx)
        })
        .map_err(RestoreError::Thread)?;
        drop(rx);
        let mut walk = Walk {
            sh: &sh,
            jobs: tx,
            stack: Vec::new(),
        };
        walk.run(&top, &root, &sel)
        // The walk (and with it the job sender) is dropped here: the workers finish the queue.
    })?;
    // Names still waiting for a first link that never came (the walk stopped early).
    let stuck: Vec<LinkGroup> = sh
        .links
        .lock()
        .expect("links lock")
        .drain()
        .map(|(_, g)| g)
        .collect();
    for g in stuck {
        if let LinkGroup::Writing(waiting) = g {
            for w in waiting {
                sh.first_failed(&w.dir, &w.name, &w.path, "a file");
                w.dir.release(&sh);
            }
        }
    }
    drop(top);
    progress.finish();
    let mut report = RestoreReport {
        files: sh.files.into_inner(),
        dirs: sh.dirs.into_inner(),
        other: sh.other.into_inner(),
        bytes: sh.bytes.into_inner(),
        replaced: sh.replaced.into_inner(),
        errors: sh.errors.into_inner().expect("errors lock"),
        notes: Vec::new(),
    };
    if !chown {
        report
            .notes
            .push("not running as root: file owners were not restored".into());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(paths: &[&str]) -> Vec<Vec<Vec<u8>>> {
        paths
            .iter()
            .map(|p| {
                p.split('/')
                    .filter(|c| !c.is_empty())
                    .map(|c| c.as_bytes().to_vec())
                    .collect()
            })
            .collect()
    }

    fn only(entries: Vec<(&str, Selection)>) -> Selection {
        Selection::Only(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    #[test]
    fn a_selection_merges_repeated_and_nested_paths() {
        assert_eq!(Selection::of(&[]), Selection::All);
        assert_eq!(Selection::of(&names(&["a", ""])), Selection::All);
        let want = only(vec![
            ("a", Selection::All),
            (
                "b",
                only(vec![("f", Selection::All), ("sub", Selection::All)]),
            ),
        ]);
        for order in [
            &["a/f", "b/f", "a/sub", "b/sub", "b/f", "a"][..],
            &["a", "a/f", "b/sub", "b/f", "b/sub/deeper"],
            &["b/sub/deeper", "b/sub", "a/x/y", "b/f", "a", "a"],
        ] {
            assert_eq!(Selection::of(&names(order)), want, "{order:?}");
        }
    }
}
