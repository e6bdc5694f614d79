//! Locks and leases: one exclusive writer, any number of readers that a garbage collection can see.
//!
//! `WriteLock` is an advisory `flock(LOCK_EX)` on `VAULT/lock`, held for the life of a write
//! (backup, state change, in-place restore); the kernel drops it when the process dies, so a
//! killed writer never wedges the vault. A `Lease` is a file `VAULT/leases/<random>.lease`, held
//! under `flock(LOCK_SH)` by a reader (mount, restore) for its life, recording the vault's
//! *epoch* when it started. Garbage collection raises the epoch when it commits that packs are no
//! longer named, and deletes such a pack only when no live lease is older than that commit: a
//! reader that started before may still ask for it. A lease whose flock can be taken exclusively
//! belongs to a dead process and is stale. A reader that cannot write the vault (read-only
//! media, where no gc can run either; a full disk; another user's vault) reads without a lease.
//! The writer records who it is in `VAULT/lock` (pid, start time, command line) once it holds the
//! lock, so a second writer can say whom it waits for; it waits as `LockWait` says (at once,
//! up to a limit, or as long as it takes) and never silently: `on_wait` is called first.
//! Crash story: locks die with their process; a stale lease file is ignored and removed by the
//! next garbage collection; a dead holder's record is ignored (its pid is gone, and the lock is
//! free anyway).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{VaultError, VaultResult, io_err, random_hex};

/// Held while writing; dropping it releases the lock (so does the process dying).
pub struct WriteLock {
    _file: File,
}

/// `flock` with EINTR retried. Ok(false) if `nonblock` and someone else holds it.
fn flock(f: &File, op: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock on an fd we own; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Who holds the writer lock, as the holder recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: u32,
    /// Its command line (`coffre backup home`).
    pub command: String,
    /// When it took the lock (ns since the epoch).
    pub since: i64,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PID {} ({}) since {} UTC",
            self.pid,
            self.command,
            super::human_time(self.since)
        )
    }
}

/// How long a writer waits for the lock.
#[derive(Clone, Copy, Debug, Default)]
pub struct LockWait {
    /// `None`: as long as it takes; `Some(ZERO)`: fail at once.
    pub limit: Option<Duration>,
    /// Called once, before waiting, when the lock is held (the CLI prints whom it waits for).
    pub on_wait: Option<fn(Option<&LockHolder>)>,
}

/// A wait as a user typed it: `30s`, `5m`, `2h`, `1.5s`.
pub(super) fn shown_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s, d.subsec_nanos()) {
        (s, 0) if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{:.3}s", d.as_secs_f64()),
    }
}

/// How often a bounded wait tries the lock again.
const POLL: Duration = Duration::from_millis(50);

/// The holder's record in `VAULT/lock`, if it is readable and its process alive.
fn read_holder(path: &Path) -> Option<LockHolder> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let pid: u32 = lines.next()?.parse().ok()?;
    let since: i64 = lines.next()?.parse().ok()?;
    let command = lines.next()?.to_string();
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(LockHolder {
        pid,
        command,
        since,
    })
}

/// This process's command line, for the lock record (one line, at most 200 characters).
fn command_line() -> String {
    let mut args = std::env::args();
    let prog = args
        .next()
        .map(|a| a.rsplit('/').next().unwrap_or(&a).to_string())
        .unwrap_or_default();
    let line: String = std::iter::once(prog)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    line
}

/// Records this process as the holder (best effort: the lock works without the record).
fn record_holder(f: &File) {
    let text = format!(
        "{}\n{}\n{}\n",
        std::process::id(),
        super::now_ns(),
        command_line()
    );
    if let Err(e) = f
        .set_len(0)
        .and_then(|_| f.write_all_at(text.as_bytes(), 0))
    {
        log::debug!("cannot record the lock holder: {e}");
    }
}

/// Takes the writer lock of the vault at `root`, waiting as `wait` says.
pub(super) fn write_lock(root: &Path, wait: &LockWait) -> VaultResult<WriteLock> {
    let path = root.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    let try_lock = |f: &File| flock(f, libc::LOCK_EX | libc::LOCK_NB).map_err(io_err(&path));
    if !try_lock(&f)? {
        let holder = read_holder(&path);
        let shown = holder.as_ref().map_or_else(
            || "another writer".to_string(),
            |h| format!("another writer, {h}"),
        );
        if wait.limit == Some(Duration::ZERO) {
            return Err(VaultError::Locked {
                path: root.to_path_buf(),
                holder: shown,
            });
        }
        if let Some(notify) = wait.on_wait {
            notify(holder.as_ref());
        }
        match wait.limit {
            None => {
                flock(&f, libc::LOCK_EX).map_err(io_err(&path))?;
            }
            Some(limit) => {
                let deadline = Instant::now() + limit;
                while !try_lock(&f)? {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(VaultError::LockTimeout {
                            path: root.to_path_buf(),
                            holder: shown,
                            waited: limit,
                        });
                    }
                    std::thread::sleep(left.min(POLL));
                }
            }
        }
    }
    record_holder(&f);
    Ok(WriteLock { _file: f })
}

/// Held by a garbage collection for its whole run: one at a time per vault.
pub struct GcLock {
    _file: File,
}

/// Takes the collector's lock (`VAULT/gc.lock`), or says another collection runs.
pub(super) fn gc_lock(root: &Path) -> VaultResult<GcLock> {
    let path = root.join("gc.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    if !flock(&f, libc::LOCK_EX | libc::LOCK_NB).map_err(io_err(&path))? {
        return Err(VaultError::GcRunning(root.to_path_buf()));
    }
    Ok(GcLock { _file: f })
}

/// The directory of lease files.
pub const LEASES_DIR: &str = "leases";

/// A reader's lease: while it lives, packs the reader may still ask for are not deleted.
pub struct Lease {
    path: Option<PathBuf>,
    _file: Option<File>,
    epoch: u64,
}

impl Lease {
    /// Takes a lease on the vault at `root`. `epoch` is read *after* the lease file exists, so a
    /// collection that does not see the file yet committed before the reader read anything.
    pub(super) fn take(
        root: &Path,
        epoch: impl FnOnce() -> VaultResult<u64>,
    ) -> VaultResult<Lease> {
        let dir = root.join(LEASES_DIR);
        // A file gone before it was renamed (swept as a dead reader's): try again.
        let mut made = make_lease(&dir);
        for _ in 0..3 {
            match &made {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => made = make_lease(&dir),
                _ => break,
            }
        }
        let (path, file) = match made {
            Ok((p, f)) => (Some(p), Some(f)),
            // A vault this reader cannot write (read-only media: nothing can delete packs under
            // us; another user's vault), or a full disk: read without a lease rather than not
            // at all, and say so when a gc could run.
            Err(e) => {
                let quiet = matches!(
                    e.kind(),
                    std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
                );
                let level = if quiet {
                    log::Level::Debug
                } else {
                    log::Level::Warn
                };
                log::log!(
                    level,
                    "reading {} without a lease (a gc running now could delete data this reader \
                     needs): {e}",
                    root.display()
                );
                (None, None)
            }
        };
        let epoch = epoch()?;
        let mut lease = Lease {
            path,
            _file: file,
            epoch,
        };
        if let (Some(p), Some(f)) = (&lease.path, &lease._file) {
            use std::io::Write;
            let mut w = f;
            if let Err(e) = w.write_all(format!("{epoch} {}\n", std::process::id()).as_bytes()) {
                // A full disk: an empty lease would hold back every collection; go without.
                log::debug!("reading {} without a lease: {e}", p.display());
                let _ = std::fs::remove_file(p);
                lease.path = None;
                lease._file = None;
            }
        }
        Ok(lease)
    }

    /// The vault's epoch when this lease was taken.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Creates a lease file in `dir`, locked under a name a collection leaves alone while young,
/// then renamed: a collection never sees a `.lease` file whose flock is not held yet.
fn make_lease(dir: &Path) -> std::io::Result<(PathBuf, File)> {
    std::fs::create_dir_all(dir)?;
    let name = random_hex(8);
    let (tmp, path) = (
        dir.join(format!("{name}.new")),
        dir.join(format!("{name}.lease")),
    );
    let f = File::options()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    flock(&f, libc::LOCK_SH)?;
    std::fs::rename(&tmp, &path)?;
    Ok((path, f))
}

/// The oldest epoch among live leases (`None` if there is none), removing stale lease files.
/// A lease file that is not written yet counts as epoch 0: its reader may be about to read.
pub(super) fn oldest_lease(root: &Path) -> VaultResult<Option<u64>> {
    let dir = root.join(LEASES_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut oldest: Option<u64> = None;
    for ent in entries {
        let path = ent.map_err(io_err(&dir))?.path();
        if path.extension().is_some_and(|x| x == "new") {
            // A reader killed between creating and renaming its lease: gone if unlocked and a
            // minute old (a young one may belong to a reader about to lock it).
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() >= 60));
            if old
                && let Ok(f) = File::open(&path)
                && flock(&f, libc::LOCK_EX | libc::LOCK_NB).unwrap_or(false)
            {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        if path.extension().is_none_or(|x| x != "lease") {
            continue;
        }
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // just ended
            Err(_) => {
                // A lease this process cannot read (another user's reader): assume the oldest.
                oldest = Some(0);
                continue;
            }
        };
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB).map_err(io_err(&path))? {
            let _ = std::fs::remove_file(&path); // its reader is gone
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let epoch = text
            .split_whitespace()
            .next()
            .and_then(|e| e.parse().ok())
            .unwrap_or(0);
        oldest = Some(oldest.map_or(epoch, |o: u64| o.min(epoch)));
    }
    Ok(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_seen_while_held_and_stale_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(oldest_lease(dir.path()).unwrap(), None);
        let a = Lease::take(dir.path(), || Ok(7)).unwrap();
        let b = Lease::take(dir.path(), || Ok(3)).unwrap();
        assert_eq!((a.epoch(), b.epoch()), (7, 3));
        assert_eq!(oldest_lease(dir.path()).unwrap(), Some(3));
        drop(b);
        assert_eq!(oldest_lease(dir.path()).unwrap(), Some(7));
        // A lease file left by a dead process (no flock held) is stale and removed.
        let stale = dir.path().join(LEASES_DIR).join("dead.lease");
        std::fs::write(&stale, "1 99999\n").unwrap();
        assert_eq!(oldest_lease(dir.path()).unwrap(), Some(7));
        assert!(!stale.exists());
        drop(a);
        assert_eq!(oldest_lease(dir.path()).unwrap(), None);
    }

    #[test]
    fn a_second_writer_waits_or_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let now = LockWait {
            limit: Some(Duration::ZERO),
            on_wait: None,
        };
        let l = write_lock(dir.path(), &now).unwrap();
        // The holder recorded itself; a second writer names it.
        let me = read_holder(&dir.path().join("lock")).expect("holder record");
        assert_eq!(me.pid, std::process::id());
        match write_lock(dir.path(), &now) {
            Err(VaultError::Locked { holder, .. }) => {
                assert!(holder.contains(&format!("PID {}", me.pid)), "{holder}")
            }
            other => panic!("not refused: {:?}", other.map(|_| ())),
        }
        // A bounded wait gives up after its limit, having said whom it waited for.
        static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let bounded = LockWait {
            limit: Some(Duration::from_millis(120)),
            on_wait: Some(|h| TOLD.store(h.is_some(), std::sync::atomic::Ordering::SeqCst)),
        };
        let t = Instant::now();
        assert!(matches!(
            write_lock(dir.path(), &bounded),
            Err(VaultError::LockTimeout { .. })
        ));
        assert!(t.elapsed() >= Duration::from_millis(120));
        assert!(TOLD.load(std::sync::atomic::Ordering::SeqCst));
        drop(l);
        assert!(write_lock(dir.path(), &now).is_ok());
    }
}
