//! coffre: backups you can browse. Recovery points of directories (and, in later work, disks and
//! virtual machines) are kept in a vault: metadata in SQLite, data in a deduplicated,
//! zstd-compressed, BLAKE3-addressed chunk store.
//!
//! ```text
//!   coffre (src/main.rs)      coffre-restore (src/bin/coffre-restore.rs)     thin: clap + cli/
//!        |                              |
//!   backup/  schedule     restore/   maintenance/ (prune, delete, policies)   protection
//!        |        \           |           |            chunking   progress   fsmeta
//!        |         `--------- policy/ (schedule, retention: pure) -'
//!        \______________________________|_______________________________/
//!                  vault/  the only code that touches vault.db and packs/
//!                    catalog (SQLite)  packs (format, writer)  chunks (pread, cache)
//!                    lifecycle (policies, settings, soft delete, purge, undelete)
//! ```
//!
//! Locking table (who may run beside whom):
//!
//! | operation            | writer lock | may run beside                                   |
//! |----------------------|-------------|--------------------------------------------------|
//! | backup               | exclusive   | list, restore, (mount)                           |
//! | backup --due         | exclusive   | list, restore, (mount): backups then one prune   |
//! | prune, forget, purge,| exclusive   | list, restore, (mount)                           |
//! | undelete, policy and |             |                                                  |
//! | vault set changes    |             |                                                  |
//! | prune --dry-run      | none        | everything (a plan computed, nothing applied)    |
//! | list/points/stats    | none        | everything                                       |
//! | restore              | none        | everything (reads committed points only)         |
//!
//! The writer lock is an advisory `flock` on `VAULT/lock`; a second writer waits, or fails at once
//! with `--no-wait`. Readers rely on SQLite WAL snapshots and on packs being immutable once named
//! by the catalog, so they never block writers and writers never break them.

pub mod backup;
pub mod chunking;
pub mod cli;
pub mod fsmeta;
pub mod maintenance;
pub mod mount;
pub mod policy;
pub mod progress;
pub mod protection;
pub mod restore;
pub mod schedule;
pub mod testing;
pub mod vault;
