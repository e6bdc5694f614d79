//! Backups: turning a source into a recovery point.
//!
//! `files` captures a directory tree. Later issues add `disk` and `vm` beside it. The shared
//! machinery here is the chunk sink: workers compress new chunks into records (small chunks are
//! grouped so they compress together), one thread appends records to packs and seals them.
//! Crash story: nothing becomes visible until the single catalog transaction of a backup commits,
//! and that happens only after every pack it names is fsync'd; a killed backup leaves only pack
//! files the catalog does not know, which the next writer deletes.

pub mod files;
pub mod sink;

use std::path::PathBuf;

use crate::vault::VaultError;

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
}

/// Something that could not be captured exactly; the backup goes on and exits with code 3.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Warning {
    pub path: String,
    pub message: String,
}
