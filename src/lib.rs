//! coffre: backups you can browse. Recovery points of directories, disk images and virtual
//! machines are kept in a vault: metadata in SQLite, data in a deduplicated, zstd-compressed,
//! BLAKE3-addressed chunk store; every point shows as a read-only FUSE file system.
//!
//! ```text
//!   coffre (src/main.rs)          coffre-restore (src/bin/coffre-restore.rs)      thin: clap
//!        |                                  |                                     + cli/ (print)
//!   backup/ (files, excludes, disk, vm)   restore/ (files, image plans)   browse (ls, find,
//!   diff, dump)   items (show, edit, rename, rm)   protection   schedule
//!   maintenance/ (prune, forget, purge, undelete, policies, verify/check)   policy/ (pure)
//!   mount/ (view: pure logic; fuse: the fuser adapter)   chunking  fsmeta  progress  threads
//!   interrupt (Ctrl-C as a request)   words (counts, sizes, errors in plain words)
//!        \_____________________________|_______________________________/
//!                 vault/  the only code that touches vault.db and packs/
//!     write (WriteSession, ChunkSink)   reader (VaultReader) -> chunks (read_chunk) -> content
//!     catalog (SQLite, private)   store (PackStore: LocalStore)   packs (format)   lock (leases)
//!     model (Item, ItemSource, ItemState)   format (ids, trees, lists)   damage (journal)
//!     names (point specs and times: the one parser, jiff)
//!     lifecycle (policies, settings, soft delete, purge, undelete)   rebuild (rebuild-index)
//!     reach (what points need)   scrub (read a pack back, checked)   verify (check, verify.db)
//!     gc (mark, rounds, doomed packs)   replicate (a second vault kept in step)
//!     objstore (S3/Azure: RemotePacks, block cache)   remote (replicas in object storage)
//! ```
//!
//! Seams: data enters only through a `vault::WriteSession` (`Vault::begin_write`), chunk bytes
//! leave only through `VaultReader::read_chunk` (checked against their id) and the one
//! `ContentReader` built on it, packs are reached only through the `PackStore` trait, and no
//! code outside `vault/` sees SQL, a transaction or a pack offset. Workflows (backup of an item,
//! restore plans, protection changes) are library functions; `cli/` parses and prints.
//!
//! Locking table (who may run beside whom). The writer lock is an advisory `flock` on
//! `VAULT/lock`; a reader's lease is a shared `flock` on a file in `VAULT/leases/` recording the
//! vault's epoch when it started (see `vault::lock`).
//!
//! | operation                       | takes              | waits for         | may run beside            |
//! |---------------------------------|--------------------|-------------------|---------------------------|
//! | backup, backup-disk, backup-vm  | writer lock        | another writer    | mounts, restores, listings|
//! | backup --due                    | writer lock        | another writer    | readers: backups, then one prune |
//! | prune, forget, purge, undelete, policy and vault set changes | writer lock | another writer | readers |
//! | item edit, rename, rm           | writer lock        | another writer    | readers                   |
//! | backup --dry-run, item show     | nothing            | nothing           | everything                |
//! | prune --dry-run                 | nothing            | nothing           | everything                |
//! | stop/resume-protection          | writer lock        | another writer    | everything but writers    |
//! | coffre-restore ... --in-place, reprotect, --protect-as | writer lock | another writer | readers |
//! | mount                           | lease (its life)   | nothing           | everything                |
//! | restore, coffre-restore --to    | lease              | nothing           | everything                |
//! | vault rebuild-index             | writer lock        | another writer    | readers                   |
//! | items, points, stats, schedule, policy list/show, vault show | nothing | nothing | everything |
//! | ls, find, diff (catalog only)  | nothing            | nothing           | everything                |
//! | dump (reads chunk data)         | lease              | nothing           | everything                |
//! | gc                              | `VAULT/gc.lock` (its life); writer lock per round (seconds) | another gc (refused); a writer, per round; leases older than the round that doomed a pack, before deleting it | backups (between rounds), mounts, restores, verify |
//! | verify                          | lease; writer lock only if free (`lock(false)`) to mark damage | nothing | everything |
//! | check                           | lease (a snapshot) | nothing           | everything                |
//! | replicate --to DIR              | this vault: lease; the replica: writer lock | another writer of the replica | everything on this vault (a gc keeps the packs it copies) |
//! | replicate --to s3://, azure://  | this vault: lease; the replica: `PREFIX/lock` (conditional create) | nothing: a held lock fails at once, naming its holder | everything on this vault; readers of the replica |
//! | --vault s3://, azure:// (read)  | a shared `flock` on its cached catalog | nothing | everything |
//! | repair --from DIR               | this vault: writer lock; the replica: lease | another writer of this vault | readers here; everything on the replica |
//!
//! Readers rely on SQLite WAL snapshots and on packs being immutable while named by the catalog,
//! so they never block writers and writers never break them. A second writer waits, saying whom
//! for (the holder records its pid, command and start in `VAULT/lock`), as long as `--lock-wait`
//! allows (default: as long as it takes), or fails at once with `--no-wait` / `--lock-wait 0`.

pub mod backup;
pub mod browse;
pub mod chunking;
pub mod cli;
pub mod fsmeta;
pub mod interrupt;
pub mod items;
pub mod maintenance;
pub mod mount;
pub mod policy;
pub mod progress;
pub mod protection;
pub mod restore;
pub mod schedule;
pub mod testing;
pub mod threads;
pub mod vault;
pub mod words;
