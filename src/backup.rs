//! Backups: turning a source into a recovery point.
//!
//! `files` captures a directory tree, `disk` raw images and block devices, `vm` a config file
//! and its disks; `backup_item` runs whichever an item needs. Every backup writes through one
//! `vault::WriteSession` (dedup, compression, packs, one transaction).
//! Crash story: nothing becomes visible until the session commits, and that happens only after
//! every pack it names is durable; a killed backup leaves only packs the catalog does not name,
//! which the next writer quarantines; an interrupted one (Ctrl-C, see `interrupt`) stops before
//! its commit and its session deletes the packs it wrote, so the vault is as it was. An item is created or redefined in the same transaction,
//! so a failed backup changes no definition.

pub mod disk;
pub mod excludes;
pub mod files;
pub mod vm;

pub use files::{BackupReport, Change, ChangeListener, DryRunReport, RunOptions, dry_run_files};

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::vault::{Entry, ItemSource, ItemState, Kind, Timestamp, Vault, VaultError, WriteLock};

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
    #[error("bad --exclude pattern {pattern:?}: {detail}")]
    Exclude { pattern: String, detail: String },
    #[error("cannot read exclude file {path}: {source}")]
    ExcludeFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup aborted: {0}")]
    Aborted(String),
    /// Ctrl-C or SIGTERM (see `interrupt`): stopped before the commit, nothing was kept.
    #[error("interrupted")]
    Interrupted,
    #[error("{phase}-script failed: {detail}")]
    Script { phase: &'static str, detail: String },
    #[error("{0}")]
    NotProtected(String),
    /// The system refused a thread the backup cannot do without (see `threads::refused`).
    #[error("{0}")]
    Thread(std::io::Error),
    #[error(
        "refused by the vault's immutability ({level}: no change may make an existing point end \
         earlier): a point back-dated to {time}, before the newest point of item {item:?} \
         ({newest}), could take a role from an existing point"
    )]
    Immutable {
        level: crate::vault::Immutability,
        item: String,
        time: String,
        newest: String,
    },
}

/// Backs up item `name` as `def` describes it (a new item is registered by its first successful
/// backup). Items that are stopped or wait for re-protection are refused with what to run.
pub fn backup_item(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    def: &ItemSource,
    opts: &RunOptions,
) -> Result<BackupReport, BackupError> {
    // A point made here would be dropped by the next replicate, which mirrors the primary.
    if let Some(primary) = vault.replica_of()? {
        return Err(BackupError::NotProtected(format!(
            "vault {} is a replica (of vault {primary}): back up into the primary; \
             `coffre replicate` brings its points here",
            vault.root().display()
        )));
    }
    if let Some(item) = vault.find_item(name)? {
        match item.state {
            ItemState::Protected => {}
            ItemState::NeedsReprotect => {
                return Err(BackupError::NotProtected(format!(
                    "item {name:?} was restored in place; run `coffre-restore reprotect {name}` first"
                )));
            }
            ItemState::Stopped => {
                return Err(BackupError::NotProtected(format!(
                    "protection of item {name:?} is stopped; `coffre resume-protection {name}` resumes it"
                )));
            }
            ItemState::Removed => {
                return Err(BackupError::NotProtected(format!(
                    "item {name:?} was removed (`coffre item rm`); its soft-deleted points keep \
                     the name until they are purged; `coffre resume-protection {name}` takes it back"
                )));
            }
        }
        check_back_dating(vault, &item, opts)?;
    }
    match def {
        ItemSource::Files(f) => files::backup_files(vault, lock, name, f, opts),
        ItemSource::Disk(_) => disk::backup_images(vault, lock, name, def, false, opts),
        ItemSource::Vm(v) => vm::backup_vm(vault, lock, name, v, opts),
    }
}

/// `Err(Interrupted)` once the user asked to stop: called right before a commit, so an
/// interrupted backup leaves nothing (its session rolls back and deletes its packs).
pub(crate) fn check_interrupt() -> Result<(), BackupError> {
    if crate::interrupt::requested() {
        return Err(BackupError::Interrupted);
    }
    Ok(())
}

/// Under immutability, a point back-dated before the item's newest one is refused: it could be
/// the newest of a past day, week, month or year and take that role, and so the life it gives,
/// from a point already there. A point taken now never lands in a past period.
fn check_back_dating(
    vault: &Vault,
    item: &crate::vault::Item,
    opts: &RunOptions,
) -> Result<(), BackupError> {
    let Some(time) = opts.time else {
        return Ok(());
    };
    let level = vault.settings()?.immutability;
    if !level.is_on() {
        return Ok(());
    }
    match vault.points(Some(item))?.last() {
        Some(newest) if newest.time > time => Err(BackupError::Immutable {
            level,
            item: item.name.clone(),
            time: crate::vault::human_time_zone(time),
            newest: crate::vault::human_time_zone(newest.time),
        }),
        _ => Ok(()),
    }
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
    /// Whether to stop: a thread failed, or the user interrupted the backup.
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed) || crate::interrupt::requested()
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
