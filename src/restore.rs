//! Restores out of recovery points, without FUSE.
//!
//! `files` writes a point's tree (or chosen paths of it) into a directory. Later issues add the
//! disk and VM restores of the sidecar beside it. A restore only reads the vault: it takes no
//! lock and never changes protection state.

pub mod files;

use std::path::PathBuf;

use crate::vault::VaultError;

/// Why a restore could not run at all (per-entry problems are collected in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("cannot use restore target {path}: {source}")]
    Target {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not in this recovery point")]
    NoSuchPath(String),
}
