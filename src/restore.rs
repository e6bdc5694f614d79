//! Restores out of recovery points, without FUSE.
//!
//! `files` writes a point's tree (or chosen paths of it) into a directory; `image` writes whole
//! disk images and VMs for the sidecar. A restore only reads the vault, except that an in-place
//! VM or disk restore marks the item `needs-reprotect` before it writes, and `--protect-as`
//! registers the restored copy as a new item.

pub mod files;
pub mod image;

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
    #[error("{0}")]
    Plan(String),
    /// Not even one worker thread could start (see `threads::refused`).
    #[error("{0}")]
    Thread(std::io::Error),
}
