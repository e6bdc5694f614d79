//! `coffre mount`: every recovery point of every item as a read-only FUSE file system.
//!
//! `view` is the pure logic (inodes, attributes, listings, reads), `fuse` the fuser adapter (the
//! only code that knows fuser). This module checks the mount point, mounts (fuser's own mount
//! code: no libfuse needed), runs the
//! request threads, keeps the point list fresh (a poll of the catalog twice a second, with kernel
//! invalidations for the virtual directories) and unmounts on SIGINT/SIGTERM.
//! It only reads: it never takes the vault's writer lock, so backups run while mounted.
//! Crash story: nothing to lose; a killed mount leaves a dead mount point that `coffre umount`
//! (or `umount`) clears.

mod fuse;
pub mod view;

pub use fuse::{configure_kernel, reply_xattr, session_config};

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::vault::{Vault, VaultError};
use view::View;

/// Why a mount could not start.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("mount point {0} does not exist or is not a directory")]
    NotADir(PathBuf),
    #[error("mount point {0} is not empty; mount on an empty directory")]
    NotEmpty(PathBuf),
    #[error(
        "{0} is already a mount point (busy); unmount it first (`coffre umount {0}` for a coffre mount, `umount {0}` otherwise)"
    )]
    Busy(PathBuf),
    #[error("/dev/fuse is missing: load the fuse module (modprobe fuse) or install fuse3")]
    NoFuse,
    #[error("cannot mount on {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a mount point")]
    NotMounted(PathBuf),
    #[error(
        "{path} is not a coffre mount (it is a {fstype} file system); coffre umount only unmounts coffre mounts"
    )]
    NotCoffre { path: PathBuf, fstype: String },
    #[error("{0}")]
    Thread(std::io::Error),
    #[error("cannot unmount {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to mount.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Let other users in (the kernel still enforces each file's captured permissions).
    pub allow_other: bool,
    /// Request threads (0 = two per core).
    pub threads: usize,
}

fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Ok(b)) = (std::fs::metadata(p), std::fs::metadata(p.join(".."))) else {
        return false;
    };
    a.dev() != b.dev() || a.ino() == b.ino()
}

/// Checks a mount point the way the user needs to hear about it.
pub fn check_mount_point(p: &Path) -> Result<PathBuf, MountError> {
    let p = std::fs::canonicalize(p).map_err(|_| MountError::NotADir(p.to_path_buf()))?;
    if !p.is_dir() {
        return Err(MountError::NotADir(p));
    }
    if is_mount_point(&p) {
        return Err(MountError::Busy(p));
    }
    let mut entries = std::fs::read_dir(&p).map_err(|e| MountError::Mount {
        path: p.clone(),
        source: e,
    })?;
    if entries.next().is_some() {
        return Err(MountError::NotEmpty(p));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuse);
    }
    Ok(p)
}

/// Mounts `vault` on `mountpoint` and serves it until unmounted (SIGINT, SIGTERM, `umount`).
/// `ready` is called once the mount answers.
pub fn mount(
    vault: &Vault,
    mountpoint: &Path,
    opts: &MountOptions,
    ready: impl FnOnce(),
) -> Result<(), MountError> {
    let mountpoint = check_mount_point(mountpoint)?;
    // Request threads free what other threads allocated (reply buffers, records): with one
    // malloc arena per thread that memory stays mapped. Two arenas keep RSS close to live data.
    // SAFETY: mallopt only tunes the allocator; called before any request thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    // While mounted, a garbage collection must not delete a pack this mount may still read.
    let _lease = vault.lease()?;
    let view = Arc::new(View::new(vault.reader())?);
    let threads = crate::threads::count(opts.threads, 2);
    let fsname = format!("coffre:{}", vault.root().display());

    // Signals are taken by one thread with sigwait: block them before any thread starts.
    let signals = block_signals();
    let (prefetch_tx, prefetch_rx) = crossbeam_channel::bounded(256);
    let (session, notifier, mut unmounter) = fuse::Served::start(
        view.clone(),
        prefetch_tx,
        &mountpoint,
        &session_config(&fsname, opts.allow_other, threads),
    )
    .map_err(|e| MountError::Mount {
        path: mountpoint.clone(),
        source: e,
    })?;
    let stop = Arc::new(AtomicBool::new(false));

    let sig_stop = stop.clone();
    let sig_mountpoint = mountpoint.clone();
    let thread_err = |name, e| MountError::Thread(crate::threads::refused(name, e));
    let spawn = |name: &'static str| std::thread::Builder::new().name(name.into());
    let sig_thread = spawn("signals").spawn(move || {
        while !sig_stop.load(Ordering::Relaxed) {
            if wait_signal(&signals, Duration::from_millis(200)) {
                log::info!("signal received, unmounting");
                stop_on_signal(&sig_mountpoint, &mut unmounter, &sig_stop);
                break;
            }
        }
    });
    // Without it a signal would be lost: no mount without it (the session unmounts on drop).
    let sig_thread = sig_thread.map_err(|e| thread_err("signal", e))?;
    let ref_stop = stop.clone();
    let ref_view = view.clone();
    let pf_notifier = notifier.clone();
    let ra_mountpoint = mountpoint.clone();
    let refresher = spawn("refresher").spawn(move || {
        raise_readahead(&ra_mountpoint);
        refresh_loop(&ref_view, &notifier, &ref_stop)
    });
    let pf_view = view.clone();
    let prefetcher =
        spawn("prefetcher").spawn(move || prefetch_loop(&pf_view, &pf_notifier, prefetch_rx));
    // Both only make the mount better (new points show up; read-ahead across files): without
    // one, the mount still serves, with a warning.
    let refresher = refresher
        .map_err(|e| log::warn!("new points will not appear while mounted: {e}"))
        .ok();
    let prefetcher = prefetcher
        .map_err(|e| log::warn!("no read-ahead across files: {e}"))
        .ok();

    ready();
    let result = session.run();
    stop.store(true, Ordering::Relaxed);
    let _ = sig_thread.join();
    if let Some(t) = refresher {
        let _ = t.join();
    }
    // The session (and with it the prefetch sender) is gone: the prefetcher ends.
    if let Some(t) = prefetcher {
        let _ = t.join();
    }
    result.map_err(|e| match e.raw_os_error() {
        // fuser could not start its request threads.
        Some(libc::EAGAIN) => thread_err("request", e),
        _ => MountError::Mount {
            path: mountpoint,
            source: e,
        },
    })
}

/// Raises the kernel's read-ahead for this mount from 128 KiB to 4 MiB, so a sequential read of a
/// big file costs one FUSE round trip per MiB instead of one per 128 KiB (root only; best effort).
/// The device number comes from /proc/self/mountinfo, not from a `stat` of the mount point: that
/// would be a request to this very mount, and one in flight makes an unmount fail with EBUSY.
fn raise_readahead(mountpoint: &Path) {
    let Some(m) = mount_at(mountpoint) else {
        return;
    };
    let path = format!("/sys/class/bdi/{}/read_ahead_kb", m.dev);
    if let Err(e) = std::fs::write(&path, "4096") {
        log::info!("cannot raise read-ahead ({path}): {e}");
    }
}

/// Read-ahead across files: when a file is read from its start, the files that follow it in its
/// directory are decompressed and pushed into the kernel's page cache (FUSE_NOTIFY_STORE), so a
/// copy in directory order (cp -a, rsync, tar) reads most files without a FUSE round trip.
fn prefetch_loop(view: &View, notifier: &fuse::Kernel, rx: crossbeam_channel::Receiver<u64>) {
    const FILES: usize = 64;
    const BYTES: u64 = 8 << 20;
    for ino in rx {
        for (child, size) in view.next_in_dir(ino, FILES, BYTES) {
            let Ok(data) = view.read(child, 0, size.min(u32::MAX as u64) as u32) else {
                continue;
            };
            for (i, piece) in data.chunks(1 << 20).enumerate() {
                let at = (i << 20) as u64;
                if !notifier.store(child, at, piece) {
                    break;
                }
            }
        }
    }
}

/// Polls the catalog for new or removed points and invalidates what the kernel cached of the
/// virtual directories, so a finished backup shows up within about a second.
fn refresh_loop(view: &View, notifier: &fuse::Kernel, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        let changed = match view.refresh() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("cannot refresh the list of points: {e}");
                continue;
            }
        };
        let Some(view::PointsChange { old, new }) = changed else {
            continue;
        };
        let inval_inode = |ino: u64| {
            notifier.inval_inode(ino);
        };
        let inval_entry = |parent: u64, name: &[u8]| {
            notifier.inval_entry(parent, OsStr::from_bytes(name));
        };
        inval_inode(View::ITEMS);
        inval_inode(View::IDS);
        inval_inode(View::DELETED);
        // deleted/<item>/: points soft-deleted, undeleted or purged.
        for item in old.deleted.keys().chain(new.deleted.keys()) {
            let ids = |p: &view::Points| -> Vec<String> {
                p.deleted
                    .get(item)
                    .map(|l| l.iter().map(|p| p.id.clone()).collect())
                    .unwrap_or_default()
            };
            if ids(&old) != ids(&new) {
                inval_entry(View::DELETED, item.as_bytes());
                if let Some(dir) = view.known_child(View::DELETED, item.as_bytes()) {
                    inval_inode(dir);
                }
            }
        }
        for (item, list) in &old.by_item {
            if !new.by_item.contains_key(item) {
                inval_entry(View::ITEMS, item.as_bytes());
            }
            for p in list {
                // A point gone, or now under another name: its old name must be looked up again.
                let renamed = new
                    .by_id
                    .get(&p.id)
                    .is_some_and(|q| q.dir_name != p.dir_name);
                if renamed && let Some(dir) = view.known_child(View::ITEMS, item.as_bytes()) {
                    inval_entry(dir, p.dir_name.as_bytes());
                }
                if !new.by_id.contains_key(&p.id) {
                    inval_entry(View::IDS, p.id.as_bytes());
                    if let Some(dir) = view.known_child(View::ITEMS, item.as_bytes()) {
                        inval_entry(dir, p.dir_name.as_bytes());
                    }
                }
            }
        }
        for (item, list) in &new.by_item {
            let before: Vec<&String> = old
                .by_item
                .get(item)
                .map(|l| l.iter().map(|p| &p.id).collect())
                .unwrap_or_default();
            let now: Vec<&String> = list.iter().map(|p| &p.id).collect();
            if before != now
                && let Some(dir) = view.known_child(View::ITEMS, item.as_bytes())
            {
                inval_inode(dir);
                inval_entry(dir, b"latest");
                if let Some(l) = view.known_child(dir, b"latest") {
                    inval_inode(l);
                }
            }
        }
    }
}

struct SignalSet(libc::sigset_t);

fn block_signals() -> SignalSet {
    // SAFETY: plain sigset manipulation on a local value, then pthread_sigmask for this thread
    // (threads started later inherit the mask).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        SignalSet(set)
    }
}

fn wait_signal(set: &SignalSet, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid set and timespec; no siginfo wanted.
    unsafe { libc::sigtimedwait(&set.0, std::ptr::null_mut(), &ts) > 0 }
}

/// Ends the mount when a signal asks for it; a signal is never ignored. The unmount is retried
/// while the kernel answers EBUSY (a request in flight, a process passing through), then done
/// lazily (a file held open keeps a busy mount for as long as it stays open). If the session
/// has still not ended a few seconds later, the process exits: the kernel then fails whatever
/// still uses the mount, as a libfuse file system does on a signal.
fn stop_on_signal(mountpoint: &Path, unmounter: &mut fuse::Unmounter, ended: &AtomicBool) {
    match unmount_retrying(mountpoint, Duration::from_secs(1)) {
        Ok(()) => {}
        // Not root: fuser unmounts through fusermount (lazily).
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            if let Err(e) = unmounter.unmount() {
                log::error!("unmount failed: {e}");
            }
        }
        Err(e) => log::error!("unmount failed: {e}"),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !ended.load(Ordering::Relaxed) {
        if std::time::Instant::now() > deadline {
            log::warn!("files in the mount were still open; stopping anyway");
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `umount2(path, 0)`, retried while EBUSY for up to `busy_for`, then `MNT_DETACH`. A path that
/// is no longer a mount point (EINVAL: someone else unmounted it) counts as done.
fn unmount_retrying(mountpoint: &Path, busy_for: Duration) -> std::io::Result<()> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let deadline = std::time::Instant::now() + busy_for;
    loop {
        // SAFETY: valid C string.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) => return Ok(()),
            Some(libc::EBUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(libc::EBUSY) => {
                log::info!("{} is busy: detaching it", mountpoint.display());
                // SAFETY: valid C string.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                    return Ok(());
                }
                return Err(std::io::Error::last_os_error());
            }
            _ => return Err(e),
        }
    }
}

/// One line of /proc/self/mountinfo, the fields coffre needs.
#[derive(Clone, Debug)]
pub struct MountInfo {
    /// `major:minor` of the mounted file system.
    pub dev: String,
    pub mount_point: PathBuf,
    /// `fuse.coffre` for a coffre mount (`fuse` for one made before the subtype was set).
    pub fstype: String,
    /// `coffre:<vault>` for a coffre mount.
    pub source: String,
}

impl MountInfo {
    /// True for a mount made by `coffre mount`.
    pub fn is_coffre(&self) -> bool {
        self.fstype == "fuse.coffre"
            || (self.fstype.starts_with("fuse") && self.source.starts_with("coffre:"))
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and tab, newline, backslash).
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let digit = |k: usize| u32::from(b[i + k] - b'0');
            out.push((digit(1) * 64 + digit(2) * 8 + digit(3)) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The file system mounted at `path` (the top one, if several are stacked), from
/// /proc/self/mountinfo. `path` must be absolute and canonical.
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines()
        .rev()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountInfo {
                dev: l.get(2)?.to_string(),
                mount_point: PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(l.get(4)?))),
                fstype: r.first()?.to_string(),
                source: String::from_utf8_lossy(&unescape_mountinfo(r.get(1)?)).into_owned(),
            })
        })
        .find(|m| m.mount_point == path)
}

/// The absolute, canonical form of a mount point, also for a dead FUSE mount (whose `stat` fails
/// with ENOTCONN): then its parent is resolved instead.
fn resolve_mount_point(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(abs),
        _ => abs,
    }
}

/// Unmounts a coffre mount (`coffre umount`); refuses anything else.
pub fn umount(mountpoint: &Path) -> Result<(), MountError> {
    let resolved = resolve_mount_point(mountpoint);
    match mount_at(&resolved) {
        None => return Err(MountError::NotMounted(mountpoint.to_path_buf())),
        Some(m) if !m.is_coffre() => {
            return Err(MountError::NotCoffre {
                path: mountpoint.to_path_buf(),
                fstype: m.fstype,
            });
        }
        Some(_) => {}
    }
    let mountpoint = resolved.as_path();
    let err = |e| MountError::Unmount {
        path: mountpoint.to_path_buf(),
        source: e,
    };
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // A request in flight (or a process passing through) makes the kernel answer EBUSY for a
    // moment: retry for a second before reporting it.
    let mut tries = 0;
    let e = loop {
        // SAFETY: valid C string. The path was checked as canonical: follow no symlink now.
        if unsafe { libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) || tries == 20 {
            break e;
        }
        tries += 1;
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Err(MountError::Unmount {
            path: mountpoint.to_path_buf(),
            source: std::io::Error::other(
                "busy: a process still uses it (its working directory or an open file); \
                 close it, or detach with umount -l",
            ),
        });
    }
    if e.raw_os_error() == Some(libc::EPERM) {
        // Not root: the setuid helper can unmount a FUSE mount we own.
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(mountpoint)
            .status()
            .map_err(err)?;
        if st.success() {
            return Ok(());
        }
    }
    Err(err(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape_mountinfo(r"/mnt/a\040b\011c\134d"),
            b"/mnt/a b\tc\\d"
        );
        assert_eq!(unescape_mountinfo(r"/x\0"), b"/x\\0");
        assert_eq!(unescape_mountinfo(r"\134"), b"\\");
    }
}
