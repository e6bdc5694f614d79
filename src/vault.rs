//! The vault: the only door to `vault.db` and `packs/`.
//!
//! Layout of a vault directory: `vault.db` (+ `-wal`, `-shm`), `packs/<name>.pack`,
//! `packs/orphaned/` (quarantined packs), `leases/`, `lock`, `damaged` (the damage journal),
//! `commit-seq` (how many write sessions committed). `Vault` opens and checks a vault
//! (refusing foreign, newer or damaged ones before changing anything) and offers operations, not
//! parts: `begin_write` (the write session: the only way to add data), `reader()` (the read side:
//! trees, lists, verified chunks, content readers), item and point operations, `lock` (one
//! writer) and `lease` (readers a garbage collection must wait for). Taking the writer lock runs
//! recovery: pack files the catalog does not name are leftovers of a killed writer, or of a
//! catalog put back from an older copy, and are moved to `packs/orphaned/`, never deleted.
//! `lifecycle.rs` adds the operations of the point lifecycle: policies, vault settings, soft
//! delete, purge and undelete (each one transaction; the rules that decide them live in
//! `maintenance/`). `replicate.rs` keeps a second vault (a replica) in step with this one.

mod catalog;
mod chunks;
pub mod content;
pub mod damage;
pub mod format;
mod gc;
mod lifecycle;
mod lock;
pub mod model;
mod names;
pub mod objstore;
pub mod packs;
mod reach;
mod reader;
mod rebuild;
mod remote;
mod repair;
mod replicate;
mod scrub;
pub mod seal;
pub mod store;
mod verify;
pub mod write;

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use catalog::{CatalogTotals, PointRow};
pub use chunks::ChunkBytes;
pub use content::{ContentError, ContentReader};
pub use damage::DamageSet;
pub use format::{ChunkId, Content, Entry, Extent, Kind, ListId, Timestamp, TreeId};
pub use gc::{GcOptions, GcReport, REPACK_BELOW};
pub use lifecycle::{AppliedChanges, ItemRemoval, PointChanges};
pub use lock::{Lease, LockHolder, LockWait, WriteLock};
pub use model::{
    BadItemName, BadPolicyName, BadTag, DAY_NS, DEFAULT_POLICY, DEFAULT_SOFT_DELETE_DAYS, Deletion,
    DiskSource, FilesSource, Immutability, Item, ItemKind, ItemSource, ItemState, MAX_NOTE_BYTES,
    PointLabels, VaultSettings, VmSource, check_item_name, check_policy_name, check_tag,
};
pub use names::{
    human_time, human_time_zone, mount_path, point_dir_name, point_dir_names, ser_opt_time,
    ser_time, split_point_ref, timestamp,
};
pub use reach::{Broken, Reach};
pub use reader::VaultReader;
pub use rebuild::RebuildReport;
pub use repair::{RepairReport, Unrepaired};
pub use replicate::{ReplicateOptions, ReplicateProgress, ReplicateReport, SkippedPoint};
pub use verify::{BadChunk, CatalogCheck, PackJob, PackVerifier, VerifyState};
pub use write::{ChunkSink, Committed, NewPoint, SessionOptions, SinkMode, WriteSession};

use catalog::{Catalog, CatalogPool};
use names::{parse_latest, pick_point};
use store::{LocalStore, PackStore};

/// Errors of the storage layer, each carrying what the user needs to act.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no vault at {0} (create one with `coffre init`, or pass --vault DIR)")]
    NotFound(PathBuf),
    #[error("{0} is not a coffre vault (it holds other data); choose another directory")]
    Foreign(PathBuf),
    #[error(
        "{path} was written by a newer coffre (catalog schema {found}, this build reads up to {supported}); upgrade coffre"
    )]
    Newer {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "vault catalog {path} is damaged ({detail}); restore vault.db from a replica or backup"
    )]
    Damaged { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("catalog: {0}")]
    Format(#[from] format::FormatError),
    #[error("{what} {id} is missing from the catalog")]
    Missing { what: &'static str, id: String },
    #[error("chunk {id} is damaged: {detail}")]
    BadChunk { id: ChunkId, detail: String },
    #[error("item {name:?} already exists as a {kind} item")]
    ItemKind { name: String, kind: &'static str },
    #[error("{0}")]
    Threads(String),
    #[error("{0}")]
    WriteFailed(String),
    #[error(transparent)]
    BadName(#[from] BadItemName),
    #[error("another `coffre gc` is running on vault {0}; let it finish")]
    GcRunning(PathBuf),
    #[error(
        "gc deleted nothing: points need data the catalog cannot give ({0}); run `coffre check` \
         for the list, and back the items up again"
    )]
    GcRefused(String),
    #[error(
        "vault {} is locked by {holder}; wait for it (drop --no-wait, or give \
         --lock-wait a duration)",
        path.display()
    )]
    Locked { path: PathBuf, holder: String },
    #[error(
        "gave up after waiting {} for the lock of vault {}, held by {holder}",
        lock::shown_duration(*waited),
        path.display()
    )]
    LockTimeout {
        path: PathBuf,
        holder: String,
        waited: std::time::Duration,
    },
    #[error("an item named {0:?} already exists")]
    ItemExists(String),
    #[error(
        "vault {0} can only be read (a read-only file system, a full disk, or no write permission): \
         listing, restoring and mounting work; this command needs it writable"
    )]
    ReadOnly(PathBuf),
    #[error("no item named {0:?} (see `coffre items`)")]
    ItemNotFound(String),
    #[error("no recovery point {0:?} (see `coffre points`)")]
    PointNotFound(String),
    #[error("ambiguous: {spec:?} matches points {candidates}; give more of the id")]
    AmbiguousPoint { spec: String, candidates: String },
    #[error("no soft-deleted recovery point {0:?} (see `coffre points --deleted`)")]
    DeletedPointNotFound(String),
    #[error(
        "recovery point {0:?} is soft-deleted: `coffre undelete {0}` brings it back (a mount shows \
         it under deleted/)"
    )]
    PointSoftDeleted(String),
    #[error(transparent)]
    BadPolicyName(#[from] BadPolicyName),
    #[error("no policy named {0:?} (see `coffre policy list`)")]
    PolicyNotFound(String),
    #[error("a policy named {0:?} already exists; change it with `coffre policy set {0} ...`")]
    PolicyExists(String),
    #[error(
        "policy {name:?} is followed by {}; give them another one first with \
         `coffre policy assign OTHER ITEM...`",
        .items.join(", ")
    )]
    PolicyInUse { name: String, items: Vec<String> },
    #[error(
        "the policy `default` cannot be removed: new items follow it (change it with \
         `coffre policy set default ...`)"
    )]
    DefaultPolicy,
    #[error(
        "policy {name:?} in the catalog cannot be read ({detail}); redefine it with `coffre policy set`"
    )]
    BadPolicy { name: String, detail: String },
    #[error(
        "item {item:?} follows policy {has:?}; --policy only chooses the policy of a new item \
         (to change it: `coffre policy assign {given} {item}`)"
    )]
    PolicyMismatch {
        item: String,
        has: String,
        given: String,
    },
    #[error("immutability is locked: it can never be turned off")]
    ImmutabilityLocked,
    #[error("cannot replicate to {}: {detail}", path.display())]
    BadReplica { path: PathBuf, detail: String },
    #[error(
        "{0:?} cannot name a replica: use letters, digits, '.', '_' and '-' (not first), at most 64"
    )]
    BadReplicaName(String),
    #[error("no replica named {0:?} (see `coffre vault show`)")]
    ReplicaNotFound(String),
    #[error("{url}: {detail}")]
    BadRemote { url: String, detail: String },
    #[error("{0}")]
    Remote(String),
    #[error(
        "{0} is a replica in object storage and can only be read (items, points, ls, restore, \
         mount, verify); run this command on the primary vault"
    )]
    RemoteReadOnly(String),
}

impl VaultError {
    /// True for "this blob or chunk is damaged or gone", as opposed to "cannot work at all".
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            VaultError::Damaged { .. }
                | VaultError::Missing { .. }
                | VaultError::Format(_)
                | VaultError::BadChunk { .. }
        )
    }
}

/// Mode of the vault directory and `packs/`: the owner only.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in a vault: the owner only.
pub const FILE_MODE: u32 = 0o600;

pub type VaultResult<T> = Result<T, VaultError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VaultError + '_ {
    move |source| VaultError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Default zstd level for new vaults. Level 3 with small chunks grouped into one frame gives a
/// smaller vault than borg's zstd,3 at the speed of per-chunk level 1 (see BENCHMARKS.md).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Default bytes of neighbouring disk-image blocks compressed together: one 32 KiB block per
/// zstd frame, so a random read through the mount decompresses 32 KiB (see `image_frame`).
pub const DEFAULT_IMAGE_FRAME: usize = 32 * 1024;
/// The largest image frame a vault may ask for: the mount's largest read. With bigger frames two
/// such reads share a frame and wait for each other (`cat` through the mount ran at half the
/// speed with 2 MiB frames) for 2 % less space (BENCHMARKS.md).
pub const MAX_IMAGE_FRAME: usize = 1 << 20;

/// Parses an image frame size: a byte count with an optional K or M suffix (powers of 1024), a
/// multiple of 32 KiB from 32K to 1M.
pub fn parse_image_frame(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1024),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        _ => (t, 1),
    };
    let bytes = digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{s:?} is not a size (use e.g. 32K, 256K or 1M)"))?;
    check_image_frame(bytes).map_err(|e| format!("{e}, not {s}"))
}

/// `bytes` if it is an image frame size a vault may have: a multiple of 32 KiB up to 1 MiB.
pub fn check_image_frame(bytes: usize) -> Result<usize, String> {
    if !(DEFAULT_IMAGE_FRAME..=MAX_IMAGE_FRAME).contains(&bytes)
        || !bytes.is_multiple_of(DEFAULT_IMAGE_FRAME)
    {
        return Err("an image frame must be a multiple of 32K from 32K to 1M".into());
    }
    Ok(bytes)
}

/// Options for `Vault::init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub zstd_level: i32,
    /// Bytes of neighbouring disk-image blocks per zstd frame (`parse_image_frame`).
    pub image_frame: usize,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            zstd_level: DEFAULT_ZSTD_LEVEL,
            image_frame: DEFAULT_IMAGE_FRAME,
        }
    }
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A random lowercase hex string of `2 * bytes` characters, from the kernel's generator.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // getrandom(2) only fails on bad arguments; fall back to the clock if it ever does.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), bytes, 0) };
    if n != bytes as isize {
        let t = now_ns().to_le_bytes();
        let h = blake3::hash(&[&t[..], &std::process::id().to_le_bytes()].concat());
        buf.copy_from_slice(&h.as_bytes()[..bytes]);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// An open vault.
pub struct Vault {
    root: PathBuf,
    catalog: Catalog,
    store: Arc<dyn PackStore>,
    reader: Arc<VaultReader>,
    zstd_level: i32,
    image_frame: usize,
    id: String,
    lock_wait: LockWait,
    /// The URL of a replica in object storage opened for reading (`root` is its cache).
    remote: Option<String>,
}

/// The catalog's meta key for `Vault::image_frame`.
const IMAGE_FRAME_KEY: &str = "image_frame";

/// The image frame a catalog asks for: the default for vaults made before the setting, and for
/// a value this coffre does not know (a later version's, or a hand edit): reading never needs
/// it, and a backup then writes the layout every version reads.
fn image_frame_of(catalog: &Catalog) -> VaultResult<usize> {
    Ok(match catalog.meta(IMAGE_FRAME_KEY)? {
        None => DEFAULT_IMAGE_FRAME,
        Some(v) => parse_image_frame(&v).unwrap_or_else(|e| {
            log::warn!("vault.db: image frame {v:?} ignored ({e}); 32K is used");
            DEFAULT_IMAGE_FRAME
        }),
    })
}

/// Decompressed records a process keeps in memory, by default.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

impl Vault {
    /// The directory used when neither `--vault` nor `$COFFRE_VAULT` is given.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("COFFRE_VAULT").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(x).join("coffre/vault"));
        }
        std::env::var_os("HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(home_of_user)
            .map(|h| h.join(".local/share/coffre/vault"))
    }

    /// True if `path` looks like a vault (has a catalog file).
    pub fn exists(path: &Path) -> bool {
        path.join("vault.db").is_file()
    }

    /// Creates a new vault in `path` (created if missing; must be empty if it exists).
    pub fn init(path: &Path, opts: &InitOptions) -> VaultResult<Vault> {
        if path.exists() {
            let mut it = fs::read_dir(path).map_err(io_err(path))?;
            if it.next().is_some() {
                if Self::exists(path) {
                    return Err(VaultError::Io {
                        path: path.to_path_buf(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "a vault already exists here",
                        ),
                    });
                }
                return Err(VaultError::Foreign(path.to_path_buf()));
            }
        }
        if !(-7..=22).contains(&opts.zstd_level) {
            return Err(VaultError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "zstd level must be between -7 and 22",
                ),
            });
        }
        let frame = check_image_frame(opts.image_frame).map_err(|e| VaultError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        // Owner only, whatever the umask: the vault holds everything that was backed up.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path.join("packs"))
            .map_err(io_err(path))?;
        for dir in [path.to_path_buf(), path.join("packs")] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(DIR_MODE))
                .map_err(io_err(&dir))?;
        }
        let db = path.join("vault.db");
        for file in [path.join("lock"), db.clone()] {
            // SQLite creates vault.db-wal and -shm with the mode of vault.db.
            File::options()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&file)
                .map_err(io_err(&file))?;
        }
        let id = random_hex(16);
        Catalog::create(
            &db,
            &[
                ("vault_id", id),
                ("zstd_level", opts.zstd_level.to_string()),
                (IMAGE_FRAME_KEY, frame.to_string()),
                ("created", now_ns().to_string()),
            ],
        )?;
        // The catalog file and packs/ must survive a crash right after init.
        sync_dir(path)?;
        Self::open(path)
    }

    /// Opens an existing vault, checking it without changing anything.
    pub fn open(path: &Path) -> VaultResult<Vault> {
        let store: Arc<dyn PackStore> = Arc::new(LocalStore::new(path.join("packs")));
        Self::open_with_store(path, store, None)
    }

    /// Opens the catalog in `path` with packs in `store`; `remote` (a URL) makes it read-only.
    fn open_with_store(
        path: &Path,
        store: Arc<dyn PackStore>,
        remote: Option<String>,
    ) -> VaultResult<Vault> {
        let db = path.join("vault.db");
        if !db.is_file() {
            if path.is_dir() && fs::read_dir(path).map_err(io_err(path))?.next().is_some() {
                return Err(VaultError::Foreign(path.to_path_buf()));
            }
            return Err(VaultError::NotFound(path.to_path_buf()));
        }
        let catalog = Catalog::open(&db)?;
        check_commit_seq(path, &catalog)?;
        let zstd_level = catalog
            .meta("zstd_level")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_ZSTD_LEVEL);
        let image_frame = image_frame_of(&catalog)?;
        let id = catalog.meta("vault_id")?.unwrap_or_default();
        let pool = Arc::new(CatalogPool::new(db, None));
        // Room for two frames per core: restore threads each read their own part of an image,
        // and each must find its current frame still cached at its next block.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let reader = Arc::new(VaultReader::new(
            path.to_path_buf(),
            pool,
            store.clone(),
            DEFAULT_CACHE_BYTES.max(2 * cores * image_frame),
        ));
        Ok(Vault {
            root: path.to_path_buf(),
            catalog,
            store,
            reader,
            zstd_level,
            image_frame,
            id,
            lock_wait: LockWait::default(),
            remote,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The URL of a replica in object storage opened with `open_remote` (its `root` is then
    /// the local cache of its catalog).
    pub fn remote_url(&self) -> Option<&str> {
        self.remote.as_deref()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn zstd_level(&self) -> i32 {
        self.zstd_level
    }

    /// Bytes of neighbouring disk-image blocks new backups compress into one zstd frame. 32 KiB
    /// (the default): a random read decompresses one block. Larger frames give zstd the context
    /// of the neighbouring blocks (a smaller vault, as large chunks do) and cost a random read
    /// up to the whole frame. Frames never change a block's id, so dedup is unchanged and
    /// points written with any frame size read alike.
    pub fn image_frame(&self) -> usize {
        self.image_frame
    }

    /// Sets the image frame of the backups that open the vault from now on
    /// (`parse_image_frame` checked `bytes`).
    pub fn set_image_frame(&self, _lock: &WriteLock, bytes: usize) -> VaultResult<()> {
        self.catalog.set_meta(IMAGE_FRAME_KEY, &bytes.to_string())
    }

    /// True if the vault can only be read (read-only media, a full disk, no write permission).
    pub fn read_only(&self) -> bool {
        self.catalog.read_only()
    }

    fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    fn db_path(&self) -> PathBuf {
        self.root.join("vault.db")
    }

    /// Size of vault.db and its WAL.
    pub fn catalog_bytes(&self) -> u64 {
        ["vault.db", "vault.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.root().join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    pub(crate) fn store(&self) -> Arc<dyn PackStore> {
        self.store.clone()
    }

    /// The read side, shareable by any number of threads.
    pub fn reader(&self) -> Arc<VaultReader> {
        self.reader.clone()
    }

    /// How `lock(true)` waits for another writer (default: as long as it takes).
    pub fn set_lock_wait(&mut self, wait: LockWait) {
        self.lock_wait = wait;
    }

    /// Takes the writer lock (waiting for it as `set_lock_wait` said, unless `wait` is false)
    /// and recovers from a killed writer.
    pub fn lock(&self, wait: bool) -> VaultResult<WriteLock> {
        if let Some(url) = &self.remote {
            return Err(VaultError::RemoteReadOnly(url.clone()));
        }
        if self.catalog.read_only() {
            return Err(VaultError::ReadOnly(self.root.clone()));
        }
        let how = match wait {
            true => self.lock_wait,
            false => LockWait {
                limit: Some(std::time::Duration::ZERO),
                on_wait: None,
            },
        };
        let lock = lock::write_lock(&self.root, &how)?;
        self.recover()?;
        Ok(lock)
    }

    /// A reader's lease (see `lock`): hold it while reading points, so a garbage collection
    /// never deletes a pack this process may still ask for.
    pub fn lease(&self) -> VaultResult<Lease> {
        Lease::take(&self.root, || self.epoch())
    }

    /// The oldest epoch a live reader started at, if any reader is live.
    pub fn oldest_lease(&self) -> VaultResult<Option<u64>> {
        lock::oldest_lease(&self.root)
    }

    /// The vault's epoch: raised by every commit that stops naming packs.
    pub fn epoch(&self) -> VaultResult<u64> {
        Ok(self
            .catalog
            .meta("epoch")?
            .and_then(|e| e.parse().ok())
            .unwrap_or(0))
    }

    /// Quarantines pack files the catalog does not name (leftovers of a killed writer, or of a
    /// catalog put back from an older copy) into `packs/orphaned/`. Runs only under the writer
    /// lock, so no live writer can own them; never deletes: the records are self-describing,
    /// and the chunk table can be rebuilt from them.
    fn recover(&self) -> VaultResult<()> {
        let known: std::collections::HashSet<String> =
            self.catalog.pack_names()?.into_iter().collect();
        let dir = self.root.join("packs");
        let listed = self.store.list().map_err(io_err(&dir))?;
        // In a replica, these are an interrupted `replicate`'s packs: its next run takes them.
        let level = match self.catalog.meta("replica_of")? {
            Some(_) => log::Level::Info,
            None => log::Level::Warn,
        };
        for p in listed.into_iter().filter(|p| !known.contains(&p.name)) {
            log::log!(
                level,
                "pack {} is not named by the catalog; moved to {}/{} (`coffre vault \
                 rebuild-index` registers it again)",
                p.name,
                dir.display(),
                store::ORPHANED_DIR
            );
            self.store.quarantine(&p.name).map_err(io_err(&dir))?;
        }
        Ok(())
    }

    /// The first part of the vault that other users may read or enter (its directory, `packs/`,
    /// the catalog files, the lock or a pack with any group or other permission bit), with its
    /// mode. `None` for a vault only its owner can use, as `init` makes it.
    pub fn exposed(&self) -> Option<(PathBuf, u32)> {
        let mut paths = vec![self.root.clone(), self.packs_dir()];
        for f in ["vault.db", "vault.db-wal", "vault.db-shm", "lock"] {
            paths.push(self.root.join(f));
        }
        if let Ok(packs) = fs::read_dir(self.packs_dir()) {
            paths.extend(packs.filter_map(|e| Some(e.ok()?.path())));
        }
        paths.into_iter().find_map(|p| {
            let mode = fs::symlink_metadata(&p).ok()?.permissions().mode() & 0o7777;
            (mode & 0o077 != 0).then_some((p, mode))
        })
    }

    /// Finds an item by name.
    pub fn item(&self, name: &str) -> VaultResult<Item> {
        self.catalog
            .item(name)?
            .ok_or_else(|| VaultError::ItemNotFound(name.to_string()))
    }

    /// Finds an item by name, if it exists.
    pub fn find_item(&self, name: &str) -> VaultResult<Option<Item>> {
        self.catalog.item(name)
    }

    pub fn items(&self) -> VaultResult<Vec<Item>> {
        self.catalog.items()
    }

    /// Live points, oldest first; of one item if given.
    pub fn points(&self, item: Option<&Item>) -> VaultResult<Vec<PointRow>> {
        self.catalog.points(item.map(|i| i.id))
    }

    pub fn totals(&self) -> VaultResult<CatalogTotals> {
        self.catalog.totals()
    }

    /// Changes an item under the writer lock, in one transaction: `change` edits a copy of the
    /// item as stored now (name and kind stay).
    pub fn update_item(
        &self,
        _lock: &WriteLock,
        name: &str,
        change: impl FnOnce(&mut Item) -> VaultResult<()>,
    ) -> VaultResult<Item> {
        self.catalog.begin()?;
        let r = (|| {
            let mut item = self.item(name)?;
            change(&mut item)?;
            self.catalog.update_item(&item)?;
            Ok(item)
        })();
        match r {
            Ok(item) => {
                self.catalog.commit()?;
                Ok(item)
            }
            Err(e) => {
                self.catalog.rollback();
                Err(e)
            }
        }
    }

    /// Registers a new item with no point yet (a VM restored to a new place, protected anew).
    /// It follows the `default` policy.
    pub fn create_item(
        &self,
        _lock: &WriteLock,
        name: &str,
        source: &ItemSource,
    ) -> VaultResult<Item> {
        check_item_name(name)?;
        self.catalog
            .create_item(name, source.kind(), &source.to_json(), now_ns(), None)
    }

    /// Resolves `POINT` of an item, in any form `vault::names` reads (`latest`, `latest~2`, an
    /// id or unique prefix, a mount directory name, RFC 3339, the local time tables print); an
    /// empty spec is `latest`. Several matches are an error that lists them.
    pub fn resolve_point(&self, item: &Item, spec: &str) -> VaultResult<PointRow> {
        let points = self.catalog.points(Some(item.id))?;
        let full = format!("{}@{}", item.name, spec);
        let spec = if spec.is_empty() { "latest" } else { spec };
        let r = pick_point(points, spec, &full, VaultError::PointNotFound);
        if !matches!(r, Err(VaultError::PointNotFound(_))) || parse_latest(spec).is_some() {
            return r;
        }
        match self.resolve_deleted_point(item, spec) {
            Ok(p) => Err(VaultError::PointSoftDeleted(format!(
                "{}@{}",
                item.name, p.id
            ))),
            Err(_) => r,
        }
    }

    /// As `resolve_point`, but a soft-deleted point is found too (by id, prefix or directory
    /// name; `latest` stays the newest live point): for commands that only read, like `verify`.
    pub fn resolve_point_or_deleted(&self, item: &Item, spec: &str) -> VaultResult<PointRow> {
        match self.resolve_point(item, spec) {
            Err(VaultError::PointSoftDeleted(_)) => self.resolve_deleted_point(item, spec),
            r => r,
        }
    }

    /// Resolves `NAME[@POINT]` (the newest point when no point is given).
    pub fn resolve(&self, spec: &str) -> VaultResult<(Item, PointRow)> {
        let (name, point) = split_point_ref(spec);
        let item = self.item(name)?;
        let point = self.resolve_point(&item, point)?;
        Ok((item, point))
    }
}

/// The file beside the catalog that remembers how many write sessions committed: a catalog that
/// counts fewer lost its newest commits (a damaged WAL, or an older copy put back).
const COMMIT_SEQ: &str = "commit-seq";

/// Records, after a session's commit, how many sessions have committed (best effort). A count
/// above the catalog's is kept: lost commits stay reported until `rebuild-index` acknowledges
/// them (`acknowledge`).
fn note_commit_seq(root: &Path, seq: u64) {
    let recorded = recorded_commit_seq(root).unwrap_or(0);
    write_commit_seq(root, seq.max(recorded));
}

fn recorded_commit_seq(root: &Path) -> Option<u64> {
    fs::read_to_string(root.join(COMMIT_SEQ))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
}

pub(crate) fn write_commit_seq(root: &Path, seq: u64) {
    let (tmp, dst) = (root.join("commit-seq.tmp"), root.join(COMMIT_SEQ));
    // A rename after the write: the file holds one whole number or the previous one.
    let r = fs::write(&tmp, format!("{seq}\n")).and_then(|_| fs::rename(&tmp, &dst));
    if let Err(e) = r {
        log::debug!("cannot record the commit count in {}: {e}", dst.display());
    }
}

/// Warns when the catalog counts fewer committed sessions than were recorded beside it, and
/// while packs wait in quarantine.
fn check_commit_seq(root: &Path, catalog: &Catalog) -> VaultResult<()> {
    let orphaned = fs::read_dir(root.join("packs").join(store::ORPHANED_DIR))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            })
            .count()
        })
        .unwrap_or(0);
    if orphaned > 0 {
        log::warn!(
            "{} of {} wait in packs/orphaned (their catalog rows were lost); \
             `coffre vault rebuild-index` registers their data again",
            crate::words::plural(orphaned as u64, "pack"),
            root.display()
        );
    }
    let recorded = recorded_commit_seq(root);
    let have = catalog
        .meta("commit_seq")?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if let Some(r) = recorded
        && r > have
    {
        log::warn!(
            "the catalog of {} lost its newest {} backups (a damaged vault.db-wal, or an older \
             vault.db put back); the next writer moves their packs to packs/orphaned, and \
             `coffre vault rebuild-index` registers their data again (and ends this warning)",
            root.display(),
            r - have
        );
    }
    Ok(())
}

/// The home directory of the effective user from the password database (system services run
/// without `$HOME`).
fn home_of_user() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid out value (null pointers, zero ids).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid buffers of the sizes given; getpwuid_r fills `pw` and points `out` at it.
    let r = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if r != 0 || out.is_null() || pw.pw_dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir points into `buf`, NUL-terminated, alive for this scope.
    let dir = unsafe { std::ffi::CStr::from_ptr(pw.pw_dir) };
    (!dir.to_bytes().is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
}

/// fsyncs a directory so renames and new files in it survive a crash.
pub fn sync_dir(path: &Path) -> VaultResult<()> {
    store::sync_dir(path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_and_damaged_catalogs_are_refused_without_change() {
        let dir = tempfile::tempdir().unwrap();
        // A directory with other files is foreign.
        fs::write(dir.path().join("x"), b"data").unwrap();
        assert!(matches!(
            Vault::open(dir.path()),
            Err(VaultError::Foreign(_))
        ));
        // A vault.db that is not SQLite is damaged.
        let v = dir.path().join("v");
        fs::create_dir(&v).unwrap();
        fs::write(v.join("vault.db"), vec![b'x'; 4096]).unwrap();
        assert!(matches!(Vault::open(&v), Err(VaultError::Damaged { .. })));
        assert_eq!(fs::read(v.join("vault.db")).unwrap(), vec![b'x'; 4096]);
        // An SQLite database of another program is foreign.
        let o = dir.path().join("o");
        fs::create_dir(&o).unwrap();
        rusqlite::Connection::open(o.join("vault.db"))
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        assert!(matches!(Vault::open(&o), Err(VaultError::Foreign(_))));
    }
}
