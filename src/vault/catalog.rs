//! The catalog: `vault.db`, SQLite in WAL mode.
//!
//! Owns the schema (migrated by `PRAGMA user_version`) and every SQL statement in coffre; the rest
//! of the code sees items, points, trees, lists and chunk locations. Must not be opened by code
//! outside `vault/`. Invariants: a row in `chunks` names a pack that was fsync'd before the row
//! committed; a point row is inserted in the same transaction as every tree and list it reaches,
//! so a point is visible only when complete. A point is live (`deleted_at` NULL), soft-deleted
//! (`deleted_at` set, its row and data kept) or purged (its row gone; its chunks become garbage
//! for gc). Crash story: SQLite's WAL makes each transaction atomic and `synchronous=FULL` makes a
//! committed one durable; a killed backup rolls back whole.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::format::{self, ChunkId, Entry, Extent, ListId, TreeId};
use super::model::{DEFAULT_POLICY, Deletion, Item, ItemKind};
use super::packs::{Codec, RecordPos};
use super::{VaultError, VaultResult};
use crate::policy::{Policy, Zone};

/// The schema version this build writes. Older catalogs are migrated; newer ones are refused.
pub const SCHEMA_VERSION: i64 = 6;

/// Migrations from version N-1 to N, in order (index 0 migrates 1 -> 2).
const MIGRATIONS: &[&str] = &[
    // 2: how consistent a point is (crash / file / application), for disk and VM points.
    "ALTER TABLE points ADD COLUMN consistency TEXT;",
    // 3: pack ids are never reused (AUTOINCREMENT): readers cache records by pack id, so an id
    // given to a new pack after a delete could hand them another pack's bytes. Points record
    // when their backup really started (the files cache's racy check), apart from the time they
    // are recorded as taken. Chunks marked bad are found without a scan.
    "CREATE TABLE packs_v3(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        created INTEGER NOT NULL,
        verified INTEGER
     );
     INSERT INTO packs_v3(id, name, size, created, verified)
        SELECT id, name, size, created, verified FROM packs;
     DROP TABLE packs;
     ALTER TABLE packs_v3 RENAME TO packs;
     ALTER TABLE points ADD COLUMN started INTEGER;
     CREATE INDEX chunks_bad ON chunks(bad) WHERE bad = 1;",
    // 4: policies (issue 9). Every item follows one (`seed` creates `default` and gives it to the
    // existing items); a point may be kept at least until `keep_until` (`backup --keep-until`,
    // `undelete`); a soft-deleted point records what deleted it (before 4, only
    // `stop-protection --delete-data` could).
    "CREATE TABLE policies(
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        definition TEXT NOT NULL,
        created INTEGER NOT NULL
     );
     ALTER TABLE items ADD COLUMN policy INTEGER REFERENCES policies(id);
     ALTER TABLE points ADD COLUMN keep_until INTEGER;
     ALTER TABLE points ADD COLUMN deleted_by TEXT;
     UPDATE points SET deleted_by = 'stop-protection' WHERE deleted_at IS NOT NULL;
     CREATE INDEX points_deleted ON points(item, deleted_at) WHERE deleted_at IS NOT NULL;",
    // 5: garbage collection. A pack gc emptied is `doomed` (the epoch of that commit) and kept,
    // with its chunks' rows marked garbage (bad = 2: readers that started before may still read
    // them, backups store them anew), until no reader older than that epoch is left. Chunks are
    // found by pack without a scan.
    // Trees and content lists no point needs are doomed the same way, and stored anew (undoomed)
    // if a backup needs them again before they go.
    "ALTER TABLE packs ADD COLUMN doomed INTEGER;
     ALTER TABLE trees ADD COLUMN doomed INTEGER;
     ALTER TABLE lists ADD COLUMN doomed INTEGER;
     CREATE INDEX chunks_pack ON chunks(pack);",
    // 6: labels users attach to points (issue 12): `backup --tag` (a JSON array of strings;
    // NULL: none) and `backup --note` (free text).
    "ALTER TABLE points ADD COLUMN tags TEXT;
     ALTER TABLE points ADD COLUMN note TEXT;",
];

/// Rows a migration adds that SQL alone cannot compute, in the migration's transaction.
fn seed(tx: &Connection, version: i64) -> rusqlite::Result<()> {
    if version == 4 {
        // The default policy reads its schedule in the machine's zone, known only at run time.
        let definition = policy_json(&Policy::vault_default(Zone::system()));
        tx.execute(
            "INSERT INTO policies(name, definition, created) VALUES (?1, ?2, ?3)",
            params![DEFAULT_POLICY, definition, super::now_ns()],
        )?;
        tx.execute(
            "UPDATE items SET policy = (SELECT id FROM policies WHERE name = ?1)",
            [DEFAULT_POLICY],
        )?;
    }
    Ok(())
}

/// A policy as the catalog stores it: the policy module's JSON.
fn policy_json(policy: &Policy) -> String {
    // Serialising strings and numbers cannot fail.
    serde_json::to_string(policy).unwrap_or_default()
}
/// The value of `meta.format` that marks a coffre vault.
pub const FORMAT_NAME: &str = "coffre-vault";

const SCHEMA_V1: &str = r#"
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'protected',
    created INTEGER NOT NULL
);
CREATE TABLE points(
    id INTEGER PRIMARY KEY,
    pid TEXT NOT NULL UNIQUE,
    item INTEGER NOT NULL REFERENCES items(id),
    time INTEGER NOT NULL,
    root BLOB NOT NULL,
    files INTEGER NOT NULL,
    dirs INTEGER NOT NULL,
    logical_bytes INTEGER NOT NULL,
    new_chunks INTEGER NOT NULL,
    new_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    warnings INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE INDEX points_by_item ON points(item, time);
CREATE TABLE packs(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    created INTEGER NOT NULL,
    verified INTEGER
);
CREATE TABLE chunks(
    id BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    rec_offset INTEGER NOT NULL,
    rec_stored INTEGER NOT NULL,
    rec_plain INTEGER NOT NULL,
    codec INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    bad INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE trees(id BLOB NOT NULL UNIQUE, data BLOB NOT NULL);
CREATE TABLE lists(id BLOB NOT NULL UNIQUE, data BLOB NOT NULL);
"#;
// New catalogs are created at version 1 and migrated like old ones, so every step is exercised.

/// A recovery point as the catalog lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PointRow {
    #[serde(skip)]
    pub rowid: i64,
    pub id: String,
    pub item: String,
    /// Nanoseconds since the epoch (UTC); RFC 3339 in JSON.
    #[serde(serialize_with = "super::ser_time")]
    pub time: i64,
    #[serde(skip)]
    pub root: Vec<u8>,
    pub files: u64,
    pub dirs: u64,
    pub logical_bytes: u64,
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    pub warnings: u64,
    pub duration_ms: u64,
    /// `crash`, `file` or `application` for disk and VM points; none for files points.
    pub consistency: Option<String>,
    /// When the backup that made it started (ns); none for points made before schema 3.
    #[serde(skip)]
    pub started: Option<i64>,
    /// Kept at least until then (ns): `backup --keep-until`, `undelete`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "super::ser_opt_time"
    )]
    pub keep_until: Option<i64>,
    /// When it was soft-deleted (ns); none for a live point.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "super::ser_opt_time"
    )]
    pub deleted_at: Option<i64>,
    /// What soft-deleted it: `forget`, `prune` or `stop-protection`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<String>,
    /// `backup --tag`, in the order given (none: empty).
    pub tags: Vec<String>,
    /// `backup --note`.
    pub note: Option<String>,
}

impl PointRow {
    /// True if the point has every tag of `all`.
    pub fn has_tags(&self, all: &[String]) -> bool {
        all.iter().all(|t| self.tags.contains(t))
    }
}

/// Tags as stored: a JSON array, NULL for none.
fn tags_json(tags: &[String]) -> Option<String> {
    (!tags.is_empty()).then(|| serde_json::to_string(tags).unwrap_or_default())
}

/// Tags as read; a value this build cannot parse reads as no tags.
fn tags_from(stored: Option<String>) -> Vec<String> {
    stored
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// Where a chunk's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    pub pack: i64,
    pub record: RecordPos,
    pub offset: u32,
    pub len: u32,
    pub bad: bool,
}

/// `"trees"` or `"lists"`: the only tables a blob id may name.
fn blob_table(table: &str) -> &'static str {
    if table == "trees" { "trees" } else { "lists" }
}

/// A chunk row: the chunk and where it is.
#[derive(Clone, Copy, Debug)]
pub struct ChunkRow {
    pub id: ChunkId,
    pub loc: ChunkLoc,
}

/// Totals for `coffre stats`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CatalogTotals {
    pub items: u64,
    pub points: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    pub logical_bytes: u64,
    pub trees: u64,
    pub lists: u64,
}

/// A connection to `vault.db`.
pub struct Catalog {
    conn: Connection,
    read_only: bool,
}

/// `path` as the path part of an SQLite `file:` URI.
fn uri_escape(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn sql_err(path: &Path, e: rusqlite::Error) -> VaultError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            VaultError::Damaged {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }
        }
        _ => VaultError::Sql(e),
    }
}

impl Catalog {
    /// Opens an existing catalog and checks it is a coffre vault this build understands.
    pub fn open(path: &Path) -> VaultResult<Catalog> {
        match Self::open_writable(path) {
            Ok(c) => Ok(c),
            Err(e @ (VaultError::Foreign(_) | VaultError::Newer { .. })) => Err(e),
            // A vault on read-only media (a backup disk mounted ro), or on a full disk, is still
            // read: without the WAL index if need be (immutable), as long as no committed data
            // waits in the WAL.
            Err(e) => Self::open_read_only(path, false)
                .or_else(|_| Self::open_read_only(path, true))
                .map_err(|ro| match ro {
                    VaultError::Foreign(_) | VaultError::Newer { .. } => ro,
                    _ => e,
                }),
        }
    }

    fn open_writable(path: &Path) -> VaultResult<Catalog> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_err(path, e))?;
        let c = Catalog {
            conn,
            read_only: false,
        };
        // Check before configuring: switching a foreign database to WAL would change it.
        c.conn
            .busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| sql_err(path, e))?;
        c.check(path)?;
        c.configure().map_err(|e| sql_err(path, e))?;
        c.migrate().map_err(|e| sql_err(path, e))?;
        Ok(c)
    }

    /// Opens without writing anything (`mode=ro`, or `immutable=1` when even the WAL index
    /// cannot be made). Needs the current schema: an older one is migrated on writable storage.
    fn open_read_only(path: &Path, immutable: bool) -> VaultResult<Catalog> {
        if immutable {
            let wal = path.with_file_name("vault.db-wal");
            if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
                return Err(VaultError::Damaged {
                    path: path.to_path_buf(),
                    detail: "read-only, and committed data still waits in vault.db-wal; \
                             copy the vault to writable storage to open it"
                        .into(),
                });
            }
        }
        let uri = format!(
            "file:{}?{}",
            uri_escape(path),
            if immutable { "immutable=1" } else { "mode=ro" }
        );
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_err(path, e))?;
        let c = Catalog {
            conn,
            read_only: true,
        };
        c.check(path)?;
        let v: i64 = c
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| sql_err(path, e))?;
        if v < SCHEMA_VERSION {
            return Err(VaultError::Damaged {
                path: path.to_path_buf(),
                detail: format!(
                    "read-only, and in an older format (schema {v}); open it once on writable \
                     storage to upgrade it"
                ),
            });
        }
        Ok(c)
    }

    /// True if this connection cannot write (read-only media, or a full disk).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Brings an older catalog up to `SCHEMA_VERSION`, one transaction per step (a crash leaves
    /// it at a consistent version; the next open continues).
    fn migrate(&self) -> rusqlite::Result<()> {
        loop {
            let v: i64 = self
                .conn
                .pragma_query_value(None, "user_version", |r| r.get(0))?;
            if v >= SCHEMA_VERSION {
                return Ok(());
            }
            let tx = self.conn.unchecked_transaction()?;
            // Another process may have migrated meanwhile: check again inside the transaction.
            let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if now == v {
                tx.execute_batch(MIGRATIONS[(v - 1) as usize])?;
                seed(&tx, v + 1)?;
                tx.pragma_update(None, "user_version", v + 1)?;
            }
            tx.commit()?;
        }
    }

    /// Creates a new catalog at `path` (which must not exist) with the given metadata.
    pub fn create(path: &Path, meta: &[(&str, String)]) -> VaultResult<Catalog> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_err(path, e))?;
        let c = Catalog {
            conn,
            read_only: false,
        };
        c.configure().map_err(|e| sql_err(path, e))?;
        let tx = c.conn.unchecked_transaction()?;
        tx.execute_batch(SCHEMA_V1)?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('format', ?1)",
            [FORMAT_NAME],
        )?;
        for (k, v) in meta {
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)",
                params![k, v],
            )?;
        }
        tx.pragma_update(None, "user_version", 1)?;
        tx.commit()?;
        c.migrate()?;
        Ok(c)
    }

    fn configure(&self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(std::time::Duration::from_secs(30))?;
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.set_prepared_statement_cache_capacity(64);
        Ok(())
    }

    fn check(&self, path: &Path) -> VaultResult<()> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| sql_err(path, e))?;
        let has_meta: bool = self
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'",
                [],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(|e| sql_err(path, e))?;
        let format: Option<String> = if has_meta {
            self.conn
                .query_row("SELECT value FROM meta WHERE key='format'", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|e| sql_err(path, e))?
        } else {
            None
        };
        if format.as_deref() != Some(FORMAT_NAME) {
            return Err(VaultError::Foreign(path.to_path_buf()));
        }
        if version > SCHEMA_VERSION {
            return Err(VaultError::Newer {
                path: path.to_path_buf(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            return Err(VaultError::Damaged {
                path: path.to_path_buf(),
                detail: format!("schema version {version}"),
            });
        }
        Ok(())
    }

    pub fn meta(&self, key: &str) -> VaultResult<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key=?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Starts a write transaction (the caller holds the vault's writer lock).
    pub(super) fn begin(&self) -> VaultResult<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    /// Starts a read transaction: every read until `commit` sees one snapshot of the catalog
    /// (WAL mode: writers go on meanwhile).
    pub(super) fn begin_read(&self) -> VaultResult<()> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        Ok(())
    }

    pub(super) fn commit(&self) -> VaultResult<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    pub(super) fn rollback(&self) {
        // Nothing to do if no transaction is open; an error here means none was.
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    // ---- items ----

    const ITEM_COLS: &'static str = "i.id, i.name, i.kind, i.source, i.state, i.created, \
        (SELECT name FROM policies WHERE id = i.policy)";

    fn row_item(r: &rusqlite::Row) -> rusqlite::Result<Item> {
        let (kind, source, state): (String, String, String) = (r.get(2)?, r.get(3)?, r.get(4)?);
        Ok(Item::from_row(
            r.get(0)?,
            r.get(1)?,
            &kind,
            &source,
            &state,
            r.get(5)?,
            r.get(6)?,
        ))
    }

    pub fn item(&self, name: &str) -> VaultResult<Option<Item>> {
        let sql = format!("SELECT {} FROM items i WHERE name=?1", Self::ITEM_COLS);
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([name], Self::row_item)
            .optional()?)
    }

    pub fn items(&self) -> VaultResult<Vec<Item>> {
        let sql = format!("SELECT {} FROM items i ORDER BY name", Self::ITEM_COLS);
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map([], Self::row_item)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Registers an item following `policy` (`default` when none is given; it must exist).
    pub fn create_item(
        &self,
        name: &str,
        kind: ItemKind,
        source: &serde_json::Value,
        now: i64,
        policy: Option<&str>,
    ) -> VaultResult<Item> {
        let policy = policy.unwrap_or(DEFAULT_POLICY);
        let policy_id = self
            .policy_id(policy)?
            .ok_or_else(|| VaultError::PolicyNotFound(policy.to_string()))?;
        self.conn.execute(
            "INSERT INTO items(name, kind, source, created, policy) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, kind.as_str(), source.to_string(), now, policy_id],
        )?;
        self.item(name)?
            .ok_or_else(|| VaultError::ItemNotFound(name.to_string()))
    }

    /// Makes item `item` follow policy `policy` (which must exist).
    pub fn set_item_policy(&self, item: i64, policy: &str) -> VaultResult<()> {
        let policy_id = self
            .policy_id(policy)?
            .ok_or_else(|| VaultError::PolicyNotFound(policy.to_string()))?;
        self.conn.execute(
            "UPDATE items SET policy=?2 WHERE id=?1",
            params![item, policy_id],
        )?;
        Ok(())
    }

    /// Stores an item's state and definition (kind and name never change here).
    pub fn update_item(&self, item: &Item) -> VaultResult<()> {
        self.conn.execute(
            "UPDATE items SET state=?2, source=?3 WHERE id=?1",
            params![item.id, item.state.as_str(), item.source_json().to_string()],
        )?;
        Ok(())
    }

    /// Renames an item (its points follow: they name it by id).
    pub fn rename_item(&self, item: i64, new_name: &str) -> VaultResult<()> {
        self.conn.execute(
            "UPDATE items SET name=?2 WHERE id=?1",
            params![item, new_name],
        )?;
        // A rename changes no point: readers (a mount) see it through this counter.
        self.bump_items_seq()
    }

    /// Tells readers that item names may have changed (`points_signature` includes it).
    fn bump_items_seq(&self) -> VaultResult<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES ('items_seq', '1')
             ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
            [],
        )?;
        Ok(())
    }

    /// Removes an item's row if no point (live or soft-deleted) names it; returns 1 if it went.
    pub fn delete_item_without_points(&self, item: i64) -> VaultResult<usize> {
        Ok(self.conn.execute(
            "DELETE FROM items WHERE id=?1 AND NOT EXISTS (SELECT 1 FROM points WHERE item=?1)",
            [item],
        )?)
    }

    /// Removes the rows of removed items whose last point was purged; returns how many went.
    pub fn delete_removed_items_without_points(&self) -> VaultResult<usize> {
        Ok(self.conn.execute(
            "DELETE FROM items WHERE state='removed'
                AND NOT EXISTS (SELECT 1 FROM points WHERE item=items.id)",
            [],
        )?)
    }

    pub fn item_name(&self, id: i64) -> VaultResult<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT name FROM items WHERE id=?1", [id], |r| r.get(0))
            .optional()?)
    }

    // ---- policies and settings ----

    fn policy_id(&self, name: &str) -> VaultResult<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM policies WHERE name=?1")?
            .query_row([name], |r| r.get(0))
            .optional()?)
    }

    fn parse_policy(name: &str, definition: &str) -> VaultResult<Policy> {
        serde_json::from_str(definition).map_err(|e| VaultError::BadPolicy {
            name: name.to_string(),
            detail: e.to_string(),
        })
    }

    /// The policy named `name`, if there is one.
    pub fn policy(&self, name: &str) -> VaultResult<Option<Policy>> {
        let definition: Option<String> = self
            .conn
            .prepare_cached("SELECT definition FROM policies WHERE name=?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        definition.map(|d| Self::parse_policy(name, &d)).transpose()
    }

    /// Every policy, by name.
    pub fn policies(&self) -> VaultResult<Vec<(String, Policy)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name, definition FROM policies ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let rows: Vec<(String, String)> = rows.collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(name, d)| Ok((name.clone(), Self::parse_policy(&name, &d)?)))
            .collect()
    }

    pub fn insert_policy(&self, name: &str, policy: &Policy, now: i64) -> VaultResult<()> {
        self.conn.execute(
            "INSERT INTO policies(name, definition, created) VALUES (?1, ?2, ?3)",
            params![name, policy_json(policy), now],
        )?;
        Ok(())
    }

    /// Replaces a policy's definition; returns how many rows changed (0: no such policy).
    pub fn update_policy(&self, name: &str, policy: &Policy) -> VaultResult<usize> {
        Ok(self.conn.execute(
            "UPDATE policies SET definition=?2 WHERE name=?1",
            params![name, policy_json(policy)],
        )?)
    }

    /// Removes a policy; returns how many rows went (0: no such policy).
    pub fn delete_policy(&self, name: &str) -> VaultResult<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM policies WHERE name=?1", [name])?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> VaultResult<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    // ---- soft delete, purge, undelete ----

    /// Soft-deletes one point if it is live; returns 1 if it was.
    pub fn soft_delete_point(&self, rowid: i64, now: i64, by: Deletion) -> VaultResult<usize> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE points SET deleted_at=?2, deleted_by=?3 WHERE id=?1 AND deleted_at IS NULL",
            )?
            .execute(params![rowid, now, by.as_str()])?)
    }

    /// Removes a point's row for good (live or soft-deleted); returns 1 if it existed.
    pub fn purge_point(&self, rowid: i64) -> VaultResult<usize> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM points WHERE id=?1")?
            .execute([rowid])?)
    }

    /// Brings a soft-deleted point back, kept at least until `keep_until`; returns 1 if it was
    /// soft-deleted.
    pub fn undelete_point(&self, rowid: i64, keep_until: i64) -> VaultResult<usize> {
        Ok(self.conn.execute(
            "UPDATE points SET deleted_at=NULL, deleted_by=NULL,
                keep_until=max(coalesce(keep_until, ?2), ?2)
             WHERE id=?1 AND deleted_at IS NOT NULL",
            params![rowid, keep_until],
        )?)
    }

    // ---- points ----

    const POINT_COLS: &'static str = "p.id, p.pid, i.name, p.time, p.root, p.files, p.dirs, \
        p.logical_bytes, p.new_chunks, p.new_bytes, p.stored_bytes, p.warnings, p.duration_ms, \
        p.consistency, p.started, p.keep_until, p.deleted_at, p.deleted_by, p.tags, p.note";

    fn row_point(r: &rusqlite::Row) -> rusqlite::Result<PointRow> {
        Ok(PointRow {
            rowid: r.get(0)?,
            id: r.get(1)?,
            item: r.get(2)?,
            time: r.get(3)?,
            root: r.get(4)?,
            files: r.get(5)?,
            dirs: r.get(6)?,
            logical_bytes: r.get(7)?,
            new_chunks: r.get(8)?,
            new_bytes: r.get(9)?,
            stored_bytes: r.get(10)?,
            warnings: r.get(11)?,
            duration_ms: r.get(12)?,
            consistency: r.get(13)?,
            started: r.get(14)?,
            keep_until: r.get(15)?,
            deleted_at: r.get(16)?,
            deleted_by: r.get(17)?,
            tags: tags_from(r.get(18)?),
            note: r.get(19)?,
        })
    }

    /// Live points, oldest first; of one item if given.
    pub fn points(&self, item: Option<i64>) -> VaultResult<Vec<PointRow>> {
        let sql = format!(
            "SELECT {} FROM points p JOIN items i ON i.id = p.item
             WHERE p.deleted_at IS NULL AND (?1 IS NULL OR p.item = ?1) ORDER BY p.time, p.id",
            Self::POINT_COLS
        );
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map([item], Self::row_point)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Soft-deleted points, oldest first; of one item if given.
    pub fn deleted_points(&self, item: Option<i64>) -> VaultResult<Vec<PointRow>> {
        let sql = format!(
            "SELECT {} FROM points p JOIN items i ON i.id = p.item
             WHERE p.deleted_at IS NOT NULL AND (?1 IS NULL OR p.item = ?1) ORDER BY p.time, p.id",
            Self::POINT_COLS
        );
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map([item], Self::row_point)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A cheap fingerprint of the points (live and soft-deleted) and items, to notice additions,
    /// soft deletes, undeletes, purges and item renames (`items_seq`, bumped by each rename).
    pub fn points_signature(&self) -> VaultResult<(i64, i64, i64)> {
        Ok(self.conn.query_row(
            "SELECT count(*) + ((SELECT count(*) FROM items) << 32)
                    + (coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'items_seq'), 0)
                       << 48),
                    coalesce(max(id), 0),
                    coalesce(sum(CASE WHEN deleted_at IS NULL THEN id ELSE -id END), 0)
             FROM points",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    /// Replaces the root of point `pid` (`repair --from`: a root damaged here, whole there).
    pub fn set_point_root(&self, pid: &str, root: &[u8]) -> VaultResult<()> {
        self.conn
            .prepare_cached("UPDATE points SET root=?2 WHERE pid=?1")?
            .execute(params![pid, root])?;
        Ok(())
    }

    pub fn insert_point(&self, item: i64, p: &PointRow) -> VaultResult<()> {
        self.conn.execute(
            "INSERT INTO points(pid, item, time, root, files, dirs, logical_bytes, new_chunks,
                new_bytes, stored_bytes, warnings, duration_ms, consistency, started, keep_until,
                tags, note)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                p.id,
                item,
                p.time,
                p.root,
                p.files,
                p.dirs,
                p.logical_bytes,
                p.new_chunks,
                p.new_bytes,
                p.stored_bytes,
                p.warnings,
                p.duration_ms,
                p.consistency,
                p.started,
                p.keep_until,
                tags_json(&p.tags),
                p.note
            ],
        )?;
        Ok(())
    }

    pub fn point_id_taken(&self, pid: &str) -> VaultResult<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM points WHERE pid=?1", [pid], |_| Ok(()))
            .optional()?
            .is_some())
    }

    // ---- packs and chunks ----

    pub fn insert_pack(&self, name: &str, size: u64, now: i64) -> VaultResult<i64> {
        self.conn.execute(
            "INSERT INTO packs(name, size, created) VALUES (?1, ?2, ?3)",
            params![name, size, now],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn pack_name(&self, id: i64) -> VaultResult<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT name FROM packs WHERE id=?1")?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    /// Counts one more committed write session (inside its transaction); returns the new count.
    pub fn bump_commit_seq(&self) -> VaultResult<u64> {
        let n = self
            .meta("commit_seq")?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('commit_seq', ?1)",
            [n.to_string()],
        )?;
        Ok(n)
    }

    /// Every pack the catalog names: id, name, size (doomed ones too).
    pub fn packs(&self) -> VaultResult<Vec<(i64, String, u64)>> {
        self.packs_where("1")
    }

    /// Packs not doomed by a garbage collection: id, name, size.
    pub fn live_packs(&self) -> VaultResult<Vec<(i64, String, u64)>> {
        self.packs_where("doomed IS NULL")
    }

    fn packs_where(&self, cond: &str) -> VaultResult<Vec<(i64, String, u64)>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT id, name, size FROM packs WHERE {cond}"))?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Marks bad the chunks of `pack` whose record does not end within `valid` bytes (all of
    /// them when `valid` is 0: the pack is missing). Returns how many were marked.
    pub fn mark_pack_damaged(&self, pack: i64, valid: u64) -> VaultResult<usize> {
        Ok(self.conn.execute(
            "UPDATE chunks SET bad=1 WHERE pack=?1 AND bad=0 AND rec_offset + rec_stored > ?2",
            params![pack, valid],
        )?)
    }

    /// Marks a chunk bad (a read found it damaged).
    pub fn mark_chunk_bad(&self, id: &ChunkId) -> VaultResult<()> {
        self.conn
            .prepare_cached("UPDATE chunks SET bad=1 WHERE id=?1")?
            .execute([&id.0[..]])?;
        Ok(())
    }

    /// Ids of every chunk marked bad (damaged; not gc's garbage).
    pub fn bad_chunks(&self) -> VaultResult<Vec<ChunkId>> {
        let mut st = self.conn.prepare("SELECT id FROM chunks WHERE bad=1")?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(id) = ChunkId::from_slice(&r?) {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn pack_names(&self) -> VaultResult<Vec<String>> {
        let mut st = self.conn.prepare("SELECT name FROM packs")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn insert_chunk(&self, id: &ChunkId, loc: &ChunkLoc) -> VaultResult<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO chunks(id, pack, rec_offset, rec_stored, rec_plain, codec,
                    offset, len) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                &id.0[..],
                loc.pack,
                loc.record.offset,
                loc.record.stored_len,
                loc.record.plain_len,
                loc.record.codec as i64,
                loc.offset,
                loc.len
            ])?;
        Ok(())
    }

    pub fn chunk(&self, id: &ChunkId) -> VaultResult<Option<ChunkLoc>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT pack, rec_offset, rec_stored, rec_plain, codec, offset, len, bad
                 FROM chunks WHERE id=?1",
            )?
            .query_row([&id.0[..]], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, u64>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, u32>(6)?,
                    r.get::<_, bool>(7)?,
                ))
            })
            .optional()?;
        let Some((pack, offset, stored_len, plain_len, codec, off, len, bad)) = row else {
            return Ok(None);
        };
        let codec = Codec::from_code(codec).ok_or_else(|| VaultError::Damaged {
            path: "vault.db".into(),
            detail: format!("chunk {id} has unknown codec {codec}"),
        })?;
        Ok(Some(ChunkLoc {
            pack,
            record: RecordPos {
                offset,
                stored_len,
                plain_len,
                codec,
            },
            offset: off,
            len,
            bad,
        }))
    }

    /// True if the chunk is stored and not known to be bad (so a backup may reuse it).
    pub fn has_good_chunk(&self, id: &ChunkId) -> VaultResult<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT bad FROM chunks WHERE id=?1")?
            .query_row([&id.0[..]], |r| r.get::<_, bool>(0))
            .optional()?
            .is_some_and(|bad| !bad))
    }

    // ---- garbage collection and verification ----

    /// Every chunk row, for a collection's plan or a verification.
    pub fn chunk_rows(&self) -> VaultResult<Vec<ChunkRow>> {
        self.chunk_rows_where("1", [])
    }

    /// The chunk rows of one pack.
    pub fn pack_chunk_rows(&self, pack: i64) -> VaultResult<Vec<ChunkRow>> {
        self.chunk_rows_where("pack = ?1", [pack])
    }

    fn chunk_rows_where<P: rusqlite::Params>(
        &self,
        cond: &str,
        p: P,
    ) -> VaultResult<Vec<ChunkRow>> {
        let sql = format!(
            "SELECT id, pack, rec_offset, rec_stored, rec_plain, codec, offset, len, bad
             FROM chunks WHERE {cond}"
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(p, |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                (
                    r.get::<_, i64>(1)?,
                    r.get::<_, u64>(2)?,
                    r.get::<_, u32>(3)?,
                ),
                (r.get::<_, u32>(4)?, r.get::<_, i64>(5)?),
                (
                    r.get::<_, u32>(6)?,
                    r.get::<_, u32>(7)?,
                    r.get::<_, bool>(8)?,
                ),
            ))
        })?;
        let damaged = |detail: String| VaultError::Damaged {
            path: "vault.db".into(),
            detail,
        };
        let mut out = Vec::new();
        for row in rows {
            let (id, (pack, rec_offset, stored_len), (plain_len, codec), (offset, len, bad)) = row?;
            let id = ChunkId::from_slice(&id)
                .ok_or_else(|| damaged("a chunk row has a malformed id".into()))?;
            let codec = Codec::from_code(codec)
                .ok_or_else(|| damaged(format!("chunk {id} has unknown codec {codec}")))?;
            let record = RecordPos {
                offset: rec_offset,
                stored_len,
                plain_len,
                codec,
            };
            out.push(ChunkRow {
                id,
                loc: ChunkLoc {
                    pack,
                    record,
                    offset,
                    len,
                    bad,
                },
            });
        }
        Ok(out)
    }

    /// How many chunk rows that are not garbage still name `pack`.
    pub fn chunks_in_pack(&self, pack: i64) -> VaultResult<u64> {
        Ok(self
            .conn
            .prepare_cached("SELECT count(*) FROM chunks WHERE pack = ?1 AND bad != 2")?
            .query_row([pack], |r| r.get(0))?)
    }

    /// Dooms pack `id` at `epoch`: its remaining rows become garbage (still readable by readers
    /// that started before; never reused by a backup), and it is deleted once no such reader is
    /// left.
    pub fn doom_pack(&self, id: i64, epoch: u64) -> VaultResult<()> {
        self.conn.execute(
            "UPDATE packs SET doomed = ?2 WHERE id = ?1",
            params![id, epoch],
        )?;
        self.conn
            .execute("UPDATE chunks SET bad = 2 WHERE pack = ?1", [id])?;
        Ok(())
    }

    /// Doomed packs: id, name and the epoch of the commit that doomed them.
    pub fn doomed_packs(&self) -> VaultResult<Vec<(i64, String, u64)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, doomed FROM packs WHERE doomed IS NOT NULL")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets a doomed pack whose file is gone, with its garbage rows (one transaction).
    pub fn forget_pack(&self, id: i64) -> VaultResult<()> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute("DELETE FROM chunks WHERE pack = ?1", [id])?;
        tx.execute("DELETE FROM packs WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    /// Every point, live or soft-deleted, with a row id above `after`.
    pub fn points_after(&self, after: i64) -> VaultResult<Vec<PointRow>> {
        let sql = format!(
            "SELECT {} FROM points p JOIN items i ON i.id = p.item WHERE p.id > ?1 ORDER BY p.id",
            Self::POINT_COLS
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([after], Self::row_point)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The ids of every tree (`"trees"`) or content list (`"lists"`) not doomed.
    pub fn blob_ids(&self, table: &str) -> VaultResult<Vec<[u8; 32]>> {
        let table = blob_table(table);
        let sql = format!("SELECT id FROM {table} WHERE doomed IS NULL");
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            if let Ok(id) = <[u8; 32]>::try_from(r?.as_slice()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Doomed trees or content lists: id and the epoch of the commit that doomed them.
    pub fn doomed_blobs(&self, table: &str) -> VaultResult<Vec<([u8; 32], u64)>> {
        let table = blob_table(table);
        let sql = format!("SELECT id, doomed FROM {table} WHERE doomed IS NOT NULL");
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, u64>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, epoch) = r?;
            if let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) {
                out.push((id, epoch));
            }
        }
        Ok(out)
    }

    /// Dooms (`Some(epoch)`) or brings back (`None`) a tree or content list.
    pub fn doom_blob(&self, table: &str, id: &[u8; 32], epoch: Option<u64>) -> VaultResult<()> {
        let sql = format!("UPDATE {} SET doomed = ?2 WHERE id = ?1", blob_table(table));
        self.conn
            .prepare_cached(&sql)?
            .execute(params![&id[..], epoch])?;
        Ok(())
    }

    /// Removes a doomed tree or content list for good.
    pub fn delete_blob(&self, table: &str, id: &[u8; 32]) -> VaultResult<()> {
        let sql = format!("DELETE FROM {} WHERE id = ?1", blob_table(table));
        self.conn.prepare_cached(&sql)?.execute([&id[..]])?;
        Ok(())
    }

    /// Pages SQLite keeps free inside vault.db, and its page count.
    pub fn free_pages(&self) -> VaultResult<(u64, u64)> {
        let free: u64 = self
            .conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        let all: u64 = self
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))?;
        Ok((free, all))
    }

    /// Gives free pages back to the file system (outside any transaction).
    pub fn vacuum(&self) -> VaultResult<()> {
        self.conn.execute_batch("VACUUM")?;
        // Readers may keep the WAL from being truncated; it is reused either way.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    // ---- trees and content lists ----

    fn get_blob(&self, table: &str, id: &[u8; 32]) -> VaultResult<Option<Vec<u8>>> {
        let sql = format!("SELECT data FROM {table} WHERE id=?1");
        let data: Option<Vec<u8>> = self
            .conn
            .prepare_cached(&sql)?
            .query_row([&id[..]], |r| r.get(0))
            .optional()?;
        let Some(data) = data else { return Ok(None) };
        let hex = TreeId(*id).to_hex();
        let plain = zstd::bulk::decompress(&data, 64 << 20).map_err(|e| VaultError::Damaged {
            path: "vault.db".into(),
            detail: format!("{table} blob {hex}: {e}"),
        })?;
        if blake3::hash(&plain).as_bytes() != id {
            return Err(VaultError::Damaged {
                path: "vault.db".into(),
                detail: format!("{table} blob {hex} does not match its id"),
            });
        }
        Ok(Some(plain))
    }

    /// Stores a blob under its id; returns the stored (compressed) size if it was new, else 0.
    /// With `replace`, a blob already there is written again (it was found damaged).
    fn put_blob(
        &self,
        table: &str,
        id: &[u8; 32],
        plain: &[u8],
        replace: bool,
    ) -> VaultResult<u64> {
        let exists_sql = format!("SELECT doomed FROM {table} WHERE id=?1");
        let existing: Option<Option<i64>> = self
            .conn
            .prepare_cached(&exists_sql)?
            .query_row([&id[..]], |r| r.get(0))
            .optional()?;
        if !replace && let Some(doomed) = existing {
            // Doomed by a gc but needed again: it stays (same id, same bytes).
            if doomed.is_some() {
                self.doom_blob(table, id, None)?;
            }
            return Ok(0);
        }
        let z = zstd::bulk::compress(plain, 3).map_err(|e| VaultError::Io {
            path: "vault.db".into(),
            source: e,
        })?;
        let sql = format!("INSERT OR REPLACE INTO {table}(id, data) VALUES (?1, ?2)");
        self.conn
            .prepare_cached(&sql)?
            .execute(params![&id[..], z])?;
        Ok(z.len() as u64)
    }

    /// True if a blob is stored under `id` in `table` ("trees" or "lists") but is damaged.
    fn blob_damaged(&self, table: &str, id: &[u8; 32]) -> VaultResult<bool> {
        match self.get_blob(table, id) {
            Ok(_) => Ok(false),
            Err(VaultError::Damaged { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    pub fn tree_damaged(&self, id: &TreeId) -> VaultResult<bool> {
        self.blob_damaged("trees", &id.0)
    }

    pub fn list_damaged(&self, id: &ListId) -> VaultResult<bool> {
        self.blob_damaged("lists", &id.0)
    }

    pub fn tree(&self, id: &TreeId) -> VaultResult<Vec<Entry>> {
        let plain = self.get_blob("trees", &id.0)?.ok_or(VaultError::Missing {
            what: "tree",
            id: id.to_hex(),
        })?;
        Ok(format::decode_tree(&plain)?)
    }

    /// Stores an encoded tree; returns bytes added to the catalog (0 if it was already there).
    pub fn put_tree(&self, id: &TreeId, encoded: &[u8], replace: bool) -> VaultResult<u64> {
        self.put_blob("trees", &id.0, encoded, replace)
    }

    pub fn list(&self, id: &ListId) -> VaultResult<Vec<Extent>> {
        let plain = self.get_blob("lists", &id.0)?.ok_or(VaultError::Missing {
            what: "content list",
            id: id.to_hex(),
        })?;
        Ok(format::decode_list(&plain)?)
    }

    pub fn put_list(&self, id: &ListId, encoded: &[u8], replace: bool) -> VaultResult<u64> {
        self.put_blob("lists", &id.0, encoded, replace)
    }

    // ---- replication (the replica's side is written only by `replicate`) ----

    /// A blob as stored (zstd-compressed), not checked: the caller read it checked first.
    pub fn blob_raw(&self, table: &str, id: &[u8; 32]) -> VaultResult<Option<Vec<u8>>> {
        let sql = format!("SELECT data FROM {} WHERE id=?1", blob_table(table));
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([&id[..]], |r| r.get(0))
            .optional()?)
    }

    /// True if a blob is stored under `id` and not doomed by a gc.
    pub fn has_live_blob(&self, table: &str, id: &[u8; 32]) -> VaultResult<bool> {
        let sql = format!(
            "SELECT 1 FROM {} WHERE id=?1 AND doomed IS NULL",
            blob_table(table)
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([&id[..]], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Stores a blob as another catalog stored it (compressed), replacing a doomed copy.
    pub fn put_blob_raw(&self, table: &str, id: &[u8; 32], data: &[u8]) -> VaultResult<()> {
        let sql = format!(
            "INSERT OR REPLACE INTO {}(id, data) VALUES (?1, ?2)",
            blob_table(table)
        );
        self.conn
            .prepare_cached(&sql)?
            .execute(params![&id[..], data])?;
        Ok(())
    }

    /// The `bad` value of a chunk's row (0 good, 1 damaged, 2 garbage), if it has one.
    pub fn chunk_state(&self, id: &ChunkId) -> VaultResult<Option<u8>> {
        Ok(self
            .conn
            .prepare_cached("SELECT bad FROM chunks WHERE id=?1")?
            .query_row([&id.0[..]], |r| r.get(0))
            .optional()?)
    }

    /// The rows of the chunks stored in the record at `rec_offset` of pack `pack`.
    pub fn chunks_in_record(&self, pack: i64, rec_offset: u64) -> VaultResult<Vec<ChunkRow>> {
        self.chunk_rows_where("pack = ?1 AND rec_offset = ?2", [pack, rec_offset as i64])
    }

    /// The chunk rows naming pack `pack`.
    pub fn chunk_rows_in_pack(&self, pack: i64) -> VaultResult<Vec<ChunkRow>> {
        self.chunk_rows_where("pack = ?1", [pack])
    }

    /// Inserts (or replaces) a chunk row as given, its `bad` mark included.
    pub fn insert_chunk_row(&self, id: &ChunkId, loc: &ChunkLoc) -> VaultResult<()> {
        self.insert_chunk(id, loc)?;
        if loc.bad {
            self.mark_chunk_bad(id)?;
        }
        Ok(())
    }

    /// Every pack the catalog names: name -> (id, size, doomed).
    pub fn packs_by_name(
        &self,
    ) -> VaultResult<std::collections::HashMap<String, (i64, u64, bool)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, size, doomed IS NOT NULL FROM packs")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(1)?, (r.get(0)?, r.get(2)?, r.get(3)?)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sets what may change of a point after its backup (soft delete, undelete, labels).
    pub fn set_point_state(&self, pid: &str, p: &PointRow) -> VaultResult<()> {
        self.conn
            .prepare_cached(
                "UPDATE points SET keep_until=?2, deleted_at=?3, deleted_by=?4, tags=?5, note=?6
                 WHERE pid=?1",
            )?
            .execute(params![
                pid,
                p.keep_until,
                p.deleted_at,
                p.deleted_by,
                tags_json(&p.tags),
                p.note
            ])?;
        Ok(())
    }

    /// Inserts or updates policy `name` as another catalog defines it.
    pub fn mirror_policy(&self, name: &str, policy: &Policy, now: i64) -> VaultResult<()> {
        if self.update_policy(name, policy)? == 0 {
            self.insert_policy(name, policy, now)?;
        }
        Ok(())
    }

    /// Inserts or updates an item with the id, name, kind, definition, state and policy another
    /// catalog gives it (the policy must exist here).
    pub fn mirror_item(&self, item: &Item) -> VaultResult<()> {
        self.conn.execute(
            "INSERT INTO items(id, name, kind, source, state, created, policy)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT id FROM policies WHERE name = ?7))
             ON CONFLICT(id) DO UPDATE SET name=excluded.name, kind=excluded.kind,
                source=excluded.source, state=excluded.state, created=excluded.created,
                policy=excluded.policy",
            params![
                item.id,
                item.name,
                item.kind.as_str(),
                item.source_json().to_string(),
                item.state.as_str(),
                item.created,
                item.policy
            ],
        )?;
        Ok(())
    }

    /// Gives items temporary names (so mirrored renames may swap names), and tells readers
    /// items may have been renamed.
    pub fn unname_items(&self, ids: &[i64]) -> VaultResult<()> {
        for id in ids {
            self.conn.execute(
                "UPDATE items SET name = printf('.replicating-%d', id) WHERE id=?1",
                [id],
            )?;
        }
        self.bump_items_seq()
    }

    /// Removes an item's row (its points must be gone).
    pub fn delete_item(&self, id: i64) -> VaultResult<()> {
        self.conn.execute("DELETE FROM items WHERE id=?1", [id])?;
        Ok(())
    }

    /// Every meta entry whose key starts with `prefix`, by key.
    pub fn meta_with_prefix(&self, prefix: &str) -> VaultResult<Vec<(String, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT key, value FROM meta WHERE substr(key, 1, ?2) = ?1 ORDER BY key")?;
        let rows = st.query_map(params![prefix, prefix.len() as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Removes a meta entry; returns 1 if it existed.
    pub fn delete_meta(&self, key: &str) -> VaultResult<usize> {
        Ok(self.conn.execute("DELETE FROM meta WHERE key=?1", [key])?)
    }

    // ---- totals ----

    pub fn totals(&self) -> VaultResult<CatalogTotals> {
        let q = |sql: &str| -> VaultResult<u64> {
            Ok(self
                .conn
                .query_row(sql, [], |r| r.get::<_, Option<u64>>(0))?
                .unwrap_or(0))
        };
        Ok(CatalogTotals {
            items: q("SELECT count(*) FROM items")?,
            points: q("SELECT count(*) FROM points WHERE deleted_at IS NULL")?,
            chunks: q("SELECT count(*) FROM chunks")?,
            chunk_bytes: q("SELECT sum(len) FROM chunks")?,
            packs: q("SELECT count(*) FROM packs")?,
            pack_bytes: q("SELECT sum(size) FROM packs")?,
            logical_bytes: q("SELECT sum(logical_bytes) FROM points WHERE deleted_at IS NULL")?,
            trees: q("SELECT count(*) FROM trees")?,
            lists: q("SELECT count(*) FROM lists")?,
        })
    }
}

/// Catalog connections shared by the threads of one process (a connection serves one thread at a
/// time; the pool hands each caller one and takes it back).
pub struct CatalogPool {
    path: PathBuf,
    conns: Mutex<Vec<Catalog>>,
}

impl CatalogPool {
    /// A pool over `path`, starting with `first` (the connection that checked the vault).
    pub fn new(path: PathBuf, first: Option<Catalog>) -> CatalogPool {
        CatalogPool {
            path,
            conns: Mutex::new(first.into_iter().collect()),
        }
    }

    /// Runs `f` with a connection from the pool (a new one if all are busy).
    pub fn with<T>(&self, f: impl FnOnce(&Catalog) -> VaultResult<T>) -> VaultResult<T> {
        let conn = self.conns.lock().expect("catalog pool lock").pop();
        let conn = match conn {
            Some(c) => c,
            None => Catalog::open(&self.path)?,
        };
        let r = f(&conn);
        let mut conns = self.conns.lock().expect("catalog pool lock");
        if conns.len() < 64 {
            conns.push(conn);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_2_catalog_migrates_and_pack_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("vault.db");
        {
            // A catalog as coffre wrote it before schema 3.
            let c = Connection::open(&db).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute("INSERT INTO meta VALUES ('format', ?1)", [FORMAT_NAME])
                .unwrap();
            c.execute_batch(
                "INSERT INTO packs(id, name, size, created) VALUES (4, 'a', 10, 0), (5, 'b', 10, 0);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let c = Catalog::open(&db).unwrap();
        let v: i64 = c
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        assert_eq!(c.pack_name(5).unwrap().as_deref(), Some("b"));
        c.conn.execute("DELETE FROM packs WHERE id=5", []).unwrap();
        let id = c.insert_pack("c", 10, 0).unwrap();
        assert!(id > 5, "pack id {id} reuses a deleted one");
        assert_eq!(c.points(None).unwrap().len(), 0);
    }

    #[test]
    fn a_schema_3_catalog_migrates_to_policies() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("vault.db");
        {
            // A catalog as coffre wrote it before schema 4: an item, a live point and a point
            // soft-deleted by `stop-protection --delete-data`.
            let c = Connection::open(&db).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.execute("INSERT INTO meta VALUES ('format', ?1)", [FORMAT_NAME])
                .unwrap();
            c.execute_batch(
                "INSERT INTO items(id, name, kind, source, created)
                    VALUES (1, 'home', 'files', '{\"path\":\"/home\"}', 0);
                 INSERT INTO points(pid, item, time, root, files, dirs, logical_bytes, new_chunks,
                    new_bytes, stored_bytes, warnings, duration_ms, deleted_at)
                    VALUES ('aaaaaaaa', 1, 10, x'', 0, 0, 0, 0, 0, 0, 0, 0, NULL),
                           ('bbbbbbbb', 1, 20, x'', 0, 0, 0, 0, 0, 0, 0, 0, 30);
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let c = Catalog::open(&db).unwrap();
        let v: i64 = c
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        // The default policy exists, in the machine's zone, and the old item follows it.
        let default = c.policy(DEFAULT_POLICY).unwrap().expect("default policy");
        assert_eq!(default, Policy::vault_default(Zone::system()));
        assert_eq!(c.item("home").unwrap().unwrap().policy, DEFAULT_POLICY);
        let live = c.points(None).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].keep_until, None);
        let deleted = c.deleted_points(None).unwrap();
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].deleted_at, Some(30));
        assert_eq!(deleted[0].deleted_by.as_deref(), Some("stop-protection"));
        // New items follow `default` unless told otherwise, and only a policy that exists.
        let src = serde_json::json!({"path": "/x"});
        let item = c.create_item("x", ItemKind::Files, &src, 0, None).unwrap();
        assert_eq!(item.policy, DEFAULT_POLICY);
        assert!(matches!(
            c.create_item("y", ItemKind::Files, &src, 0, Some("nope")),
            Err(VaultError::PolicyNotFound(_))
        ));
    }

    #[test]
    fn a_schema_5_catalog_migrates_to_point_tags_and_notes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("vault.db");
        {
            // A catalog as coffre wrote it before schema 6: an item and two points.
            let c = Connection::open(&db).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            for (i, m) in MIGRATIONS[..4].iter().enumerate() {
                c.execute_batch(m).unwrap();
                seed(&c, i as i64 + 2).unwrap();
            }
            c.execute("INSERT INTO meta VALUES ('format', ?1)", [FORMAT_NAME])
                .unwrap();
            c.execute_batch(
                "INSERT INTO items(id, name, kind, source, created, policy)
                    VALUES (1, 'home', 'files', '{\"path\":\"/home\"}', 0, 1);
                 INSERT INTO points(pid, item, time, root, files, dirs, logical_bytes, new_chunks,
                    new_bytes, stored_bytes, warnings, duration_ms, keep_until)
                    VALUES ('aaaaaaaa', 1, 10, x'', 0, 0, 0, 0, 0, 0, 0, 0, 99),
                           ('bbbbbbbb', 1, 20, x'', 0, 0, 0, 0, 0, 0, 0, 0, NULL);
                 PRAGMA user_version = 5;",
            )
            .unwrap();
        }
        let c = Catalog::open(&db).unwrap();
        let v: i64 = c
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        // Old points have no tags and no note, and keep everything else.
        let old = c.points(None).unwrap();
        assert_eq!(old.len(), 2);
        assert!(old.iter().all(|p| p.tags.is_empty() && p.note.is_none()));
        assert_eq!(old[0].keep_until, Some(99));
        // A new point keeps its tags (in order) and note.
        let mut p = old[1].clone();
        p.id = "cccccccc".into();
        p.time = 30;
        p.tags = vec!["weekly".into(), "pre-upgrade".into()];
        p.note = Some("before the kernel upgrade".into());
        c.insert_point(1, &p).unwrap();
        let new = c.points(None).unwrap().pop().unwrap();
        assert_eq!(new.tags, p.tags);
        assert_eq!(new.note, p.note);
        assert!(new.has_tags(&["pre-upgrade".into()]));
        assert!(!new.has_tags(&["pre-upgrade".into(), "daily".into()]));
    }
}
