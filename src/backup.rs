//! Backups: turning a source into a recovery point.
//!
//! `files` captures a directory tree, `disk` raw images and block devices, `vm` a config file
//! and its disks. The shared
//! machinery here is the chunk sink: workers compress new chunks into records (small chunks are
//! grouped so they compress together), one thread appends records to packs and seals them.
//! Crash story: nothing becomes visible until the single catalog transaction of a backup commits,
//! and that happens only after every pack it names is fsync'd; a killed backup leaves only pack
//! files the catalog does not know, which the next writer deletes.

pub mod disk;
pub mod files;
pub mod sink;
pub mod vm;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::vault::{Entry, Kind, Timestamp, VaultError};

/// Why a backup failed as a whole (per-file problems are `Warning`s instead).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("cannot read the backup source {path}: {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write pack {path}: {source} (is the vault's disk full?)")]
    PackWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad --exclude pattern {pattern:?}: {detail}")]
    Exclude { pattern: String, detail: String },
    #[error("backup aborted: {0}")]
    Aborted(String),
    #[error("{phase}-script failed: {detail}")]
    Script { phase: &'static str, detail: String },
    /// The system refused a thread the backup cannot do without (see `threads::refused`).
    #[error("{0}")]
    Thread(std::io::Error),
}

/// Something that could not be captured exactly; the backup goes on and exits with code 3.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Warning {
    pub path: String,
    pub message: String,
}

/// Shared abort state: the first fatal error wins, everyone else stops early.
#[derive(Default)]
pub(crate) struct Abort {
    pub(crate) flag: AtomicBool,
    error: Mutex<Option<BackupError>>,
}

impl Abort {
    pub(crate) fn fail(&self, e: BackupError) {
        let mut slot = self.error.lock().expect("abort lock");
        // `Aborted` is what a thread reports when another one stopped first: keep the cause.
        let secondary = |e: &Option<BackupError>| matches!(e, None | Some(BackupError::Aborted(_)));
        if secondary(&slot) {
            *slot = Some(e);
        }
        self.flag.store(true, Ordering::SeqCst);
    }
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
    pub(crate) fn take(&self, fallback: &str) -> BackupError {
        self.error
            .lock()
            .expect("abort lock")
            .take()
            .unwrap_or_else(|| BackupError::Aborted(fallback.into()))
    }
}

pub(crate) fn ts(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

/// Builds an entry's metadata from `lstat`.
pub(crate) fn entry_from_stat(name: Vec<u8>, st: &libc::stat, kind: Kind) -> Entry {
    let nlink = st.st_nlink;
    Entry {
        name,
        kind: Some(kind),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: ts(st.st_mtime, st.st_mtime_nsec),
        ctime: ts(st.st_ctime, st.st_ctime_nsec),
        size: if matches!(kind, Kind::File | Kind::Dir) {
            st.st_size as u64
        } else {
            0
        },
        ino: if kind == Kind::File { st.st_ino } else { 0 },
        nlink: if matches!(kind, Kind::File | Kind::Dir) {
            nlink
        } else {
            0
        },
        dev: if kind == Kind::File && nlink > 1 {
            st.st_dev
        } else {
            0
        },
        rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            st.st_rdev
        } else {
            0
        },
        ..Default::default()
    }
}

/// Data regions of a possibly sparse file (holes excluded); the whole file where the file system
/// cannot tell.
pub(crate) fn data_regions(file: &std::fs::File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on an fd we own; no memory involved.
        let d = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if d < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(out), // only a hole remains
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(vec![(0, size)]),
                _ => Err(e),
            };
        }
        let d = d as u64;
        if d >= size {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d as i64, libc::SEEK_HOLE) };
        let h = if h < 0 { size } else { (h as u64).min(size) };
        out.push((d, h - d));
        pos = h;
    }
    Ok(out)
}
