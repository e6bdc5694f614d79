//! Replicas in object storage: `replicate --to s3://BUCKET/PREFIX | azure://CONTAINER/PREFIX`
//! and `--vault URL` for reading one. Owns the remote layout, its writer lock, the catalog's
//! base and delta objects and the local cache of the catalog.
//!
//! Layout under PREFIX: `packs/NAME.pack` (the primary's packs, byte for byte, through
//! `RemotePacks`); `catalog/base-G.db.zst` (a whole replica catalog, zstd) and
//! `catalog/delta-G-S.db.zst` (what run S after base G changed: a small SQLite file with the
//! rows each table gained or changed and the keys it lost, computed by comparing the catalog
//! before and after the run; a row is identified by its table's primary key, else by a unique
//! `id` column, so a new catalog table must have one of them); `lock` (the writer lock). The
//! catalog is the newest base and its deltas 1, 2, ... in order; a run whose deltas since the
//! base outweigh the base writes base G+1 instead (compaction) and then removes the older
//! objects. A replicate plans and commits exactly as to a directory (`replicate.rs`: the same
//! plan, scrub and commit), on a copy of the cached catalog; only moving packs and publishing
//! the catalog differ. Seams for sealing: packs move only through an `Arc<dyn PackStore>`
//! (`RemotePacks`), catalog objects only through `put_catalog_object`/`get_catalog_object`.
//! Commit order: every pack is put (and read back) before the catalog object that names it;
//! the catalog object, put only if absent, is the commit point. Nothing is half-visible: a pack
//! no catalog names is ignored by readers, and taken (same name and size) by the next run
//! instead of being sent again. Lock: `lock` is created only if absent (a conditional put); it
//! records host, pid and start; a lock is stale when its host is this host and its process is
//! gone, or when it is older than 24 hours; a stale lock is removed and taken.
//! Cache: `$XDG_CACHE_HOME/coffre/remote/HASH/` (else `~/.cache/...`): `cat-G-S/vault.db`
//! (the catalog as of base G and S deltas; made in a temporary directory and renamed, so a
//! named one is always whole; in use while a process holds a shared lock on its `inuse`) and
//! `blocks/` (`BlockCache`). Crash story: a killed run leaves packs no catalog names (taken
//! by the next run) and at worst a temporary cache directory (`tmp-*`, removed by the next
//! refresh; a writer's `work-*`, by the next writer).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::objstore::{BlockCache, DEFAULT_CACHE_MB, Remote, RemotePacks, Target};
use super::replicate::{Plan, ReplicateOptions, ReplicateProgress, ReplicateReport};
use super::store::PackStore;
use super::{InitOptions, Vault, VaultError, VaultResult, random_hex};

const LOCK_KEY: &str = "lock";
/// A lock older than this is stale whoever holds it.
const LOCK_STALE_SECS: i64 = 24 * 3600;
/// Deltas kept at most before a compaction.
const MAX_DELTAS: usize = 64;

fn base_key(g: u64) -> String {
    format!("catalog/base-{g:08}.db.zst")
}

fn delta_key(g: u64, s: u64) -> String {
    format!("catalog/delta-{g:08}-{s:08}.db.zst")
}

/// The catalog as the remote holds it: the newest base and its deltas (1..=n, in order).
#[derive(Clone, Debug)]
struct CatalogObjects {
    base_gen: u64,
    base_size: u64,
    deltas: Vec<u64>,
    /// Every catalog object, for the cleanup after a compaction.
    all: Vec<String>,
}

impl CatalogObjects {
    fn seq(&self) -> u64 {
        self.deltas.len() as u64
    }
}

fn remote_err(remote: &Remote) -> impl FnOnce(io::Error) -> VaultError + '_ {
    move |e| VaultError::Remote(format!("{}: {e}", remote.url()))
}

/// Lists `catalog/`: `None` if there is no replica there yet.
fn catalog_objects(remote: &Remote) -> VaultResult<Option<CatalogObjects>> {
    let listed = remote.list("catalog").map_err(remote_err(remote))?;
    let mut bases: Vec<(u64, u64)> = Vec::new();
    let mut deltas: HashMap<(u64, u64), u64> = HashMap::new();
    let mut all = Vec::new();
    for (name, size, _) in listed {
        let Some(stem) = name.strip_suffix(".db.zst") else {
            continue;
        };
        all.push(format!("catalog/{name}"));
        if let Some(g) = stem.strip_prefix("base-").and_then(|g| g.parse().ok()) {
            bases.push((g, size));
        } else if let Some((g, s)) = stem.strip_prefix("delta-").and_then(|r| r.split_once('-'))
            && let (Ok(g), Ok(s)) = (g.parse(), s.parse())
        {
            deltas.insert((g, s), size);
        }
    }
    let Some(&(base_gen, base_size)) = bases.iter().max() else {
        return Ok(None);
    };
    let mut seq = Vec::new();
    while let Some(&size) = deltas.get(&(base_gen, seq.len() as u64 + 1)) {
        seq.push(size);
    }
    Ok(Some(CatalogObjects {
        base_gen,
        base_size,
        deltas: seq,
        all,
    }))
}

// The seam for sealing the catalog: every catalog object goes up through `put_catalog_object`
// and comes down through `get_catalog_object`, as plain bytes in and out.

/// Puts catalog object `key` (only if absent: the commit point); returns the bytes sent, or
/// `None` if the object exists (another writer got there first).
fn put_catalog_object(remote: &Remote, key: &str, plain: &[u8]) -> VaultResult<Option<u64>> {
    // Sealed under its own key name: an object moved to another name fails to open.
    let packed = match remote.key() {
        Some(k) => super::seal::seal_blob(k, key, plain),
        None => zstd::bulk::compress(plain, 3),
    }
    .map_err(remote_err(remote))?;
    let len = packed.len() as u64;
    let created = remote.put(key, packed, true).map_err(remote_err(remote))?;
    Ok(created.then_some(len))
}

/// Gets catalog object `key` as plain bytes (`None` if it is gone: a compaction removed it).
fn get_catalog_object(remote: &Remote, key: &str) -> VaultResult<Option<Vec<u8>>> {
    let Some(packed) = remote.get(key).map_err(remote_err(remote))? else {
        return Ok(None);
    };
    if let Some(k) = remote.key() {
        return super::seal::open_blob(k, key, &packed)
            .map(Some)
            .map_err(|e| {
                VaultError::Remote(format!(
                    "{}: catalog object {key} cannot be opened: {e}",
                    remote.url()
                ))
            });
    }
    let mut out = Vec::new();
    zstd::stream::copy_decode(&packed[..], &mut out).map_err(|e| {
        VaultError::Remote(format!(
            "{}: catalog object {key} cannot be read ({e})",
            remote.url()
        ))
    })?;
    Ok(Some(out))
}

/// The object that marks an encrypted replica: it holds the key's check value, which tells a
/// wrong key from damage and reveals nothing else.
const SEALED_KEY: &str = "sealed";

/// Refuses a key that does not fit the replica: a sealed replica opened without its key or with
/// another, a key given for a plain replica that exists. A new replica (`created`) is marked
/// sealed when a key is given, before anything else is put there.
fn check_seal(remote: &Remote, created: bool) -> VaultResult<()> {
    let url = remote.url();
    let marker = remote.get(SEALED_KEY).map_err(remote_err(remote))?;
    let stored = marker.as_deref().map(|m| {
        String::from_utf8_lossy(m)
            .lines()
            .find_map(|l| l.strip_prefix("check ").map(str::to_string))
            .unwrap_or_default()
    });
    match (stored, remote.key()) {
        (None, None) => Ok(()),
        (Some(check), Some(k)) if check == k.check_value() => Ok(()),
        (Some(_), Some(_)) => Err(VaultError::Remote(format!(
            "the key given is not the key of replica {url} (see `coffre vault set replica-key`, \
             --key-file, COFFRE_KEY_FILE)"
        ))),
        (Some(_), None) => Err(VaultError::Remote(format!(
            "replica {url} is encrypted: give its key with --key-file FILE or COFFRE_KEY_FILE"
        ))),
        (None, Some(k)) if created => {
            let text = format!("coffre sealed replica\ncheck {}\n", k.check_value());
            remote
                .put(SEALED_KEY, text.into_bytes(), false)
                .map_err(remote_err(remote))?;
            Ok(())
        }
        (None, Some(_)) => Err(VaultError::Remote(format!(
            "replica {url} is not encrypted (it was made without a replica key): replicate to \
             a new place to have an encrypted copy, or forget the key with `coffre vault set \
             no-replica-key`"
        ))),
    }
}

/// The pack store of a replica: sealed when the replica is.
fn replica_packs(remote: &Arc<Remote>, packs: RemotePacks) -> Arc<dyn PackStore> {
    match remote.key() {
        Some(k) => Arc::new(super::seal::SealedStore::new(Arc::new(packs), k.clone())),
        None => Arc::new(packs),
    }
}

/// The local cache directory of `url`.
fn cache_root(url: &str) -> VaultResult<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .ok_or_else(|| {
            VaultError::Remote("no cache directory: set XDG_CACHE_HOME or HOME".into())
        })?;
    let hash = blake3::hash(url.trim_end_matches('/').as_bytes()).to_hex();
    let dir = base.join("coffre/remote").join(&hash.as_str()[..16]);
    fs::create_dir_all(&dir).map_err(super::io_err(&dir))?;
    Ok(dir)
}

/// A cache snapshot of the catalog held in use (its `inuse` file, shared-locked).
struct Snapshot {
    dir: PathBuf,
    pin: File,
}

fn flock(f: &File, how: libc::c_int) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), how) == 0 }
}

fn pin(dir: &Path) -> VaultResult<File> {
    let path = dir.join("inuse");
    let f = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(super::io_err(&path))?;
    flock(&f, libc::LOCK_SH);
    Ok(f)
}

/// Brings the cached catalog up to the remote's (downloading only the deltas it lacks, or the
/// base when it changed) and returns it pinned, or `None` if there is no replica there yet.
fn refresh(remote: &Remote, root: &Path) -> VaultResult<Option<(Snapshot, CatalogObjects)>> {
    for _ in 0..3 {
        let Some(objs) = catalog_objects(remote)? else {
            return Ok(None);
        };
        let want = root.join(format!("cat-{}-{}", objs.base_gen, objs.seq()));
        if want.join("vault.db").is_file() {
            let pin = pin(&want)?;
            clean(root, &want);
            return Ok(Some((Snapshot { dir: want, pin }, objs)));
        }
        let tmp = root.join(format!("tmp-{}", random_hex(8)));
        fs::create_dir_all(&tmp).map_err(super::io_err(&tmp))?;
        let pinned = pin(&tmp)?;
        match build(remote, root, &objs, &tmp) {
            Ok(true) => {}
            Ok(false) => {
                // A compaction removed what we listed: list again.
                let _ = fs::remove_dir_all(&tmp);
                continue;
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
        if fs::rename(&tmp, &want).is_err() {
            // Another process made it meanwhile.
            let _ = fs::remove_dir_all(&tmp);
            continue;
        }
        clean(root, &want);
        return Ok(Some((
            Snapshot {
                dir: want,
                pin: pinned,
            },
            objs,
        )));
    }
    Err(VaultError::Remote(format!(
        "{}: the catalog kept changing while it was read; try again",
        remote.url()
    )))
}

/// Fills `tmp` with the catalog `objs` describes, from the newest cached snapshot of the same
/// base when there is one. `Ok(false)`: an object listed is gone.
fn build(remote: &Remote, root: &Path, objs: &CatalogObjects, tmp: &Path) -> VaultResult<bool> {
    let db = tmp.join("vault.db");
    let mut have = 0;
    let cached = (0..objs.seq())
        .rev()
        .map(|s| {
            (
                s,
                root.join(format!("cat-{}-{s}", objs.base_gen))
                    .join("vault.db"),
            )
        })
        .find(|(_, p)| p.is_file());
    match cached {
        Some((s, path)) => {
            fs::copy(&path, &db).map_err(super::io_err(&db))?;
            have = s;
        }
        None => {
            let Some(bytes) = get_catalog_object(remote, &base_key(objs.base_gen))? else {
                return Ok(false);
            };
            fs::write(&db, bytes).map_err(super::io_err(&db))?;
        }
    }
    for s in have + 1..=objs.seq() {
        let Some(bytes) = get_catalog_object(remote, &delta_key(objs.base_gen, s))? else {
            return Ok(false);
        };
        let file = tmp.join("delta.db");
        fs::write(&file, bytes).map_err(super::io_err(&file))?;
        apply_delta(&db, &file)?;
        let _ = fs::remove_file(&file);
    }
    Ok(true)
}

/// Removes cache snapshots other than `keep` that no process holds, and stale temporaries.
fn clean(root: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if path == keep || !(name.starts_with("cat-") || name.starts_with("tmp-")) {
            continue;
        }
        let Ok(f) = File::options().append(true).open(path.join("inuse")) else {
            continue;
        };
        if flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Removes the work directories of killed writers (under the remote lock: no writer is live).
fn remove_work_dirs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("work-") {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The tables of a catalog and the columns that identify a row of each.
fn tables(conn: &rusqlite::Connection, schema: &str) -> VaultResult<Vec<(String, Vec<String>)>> {
    let mut out = Vec::new();
    let names: Vec<String> = conn
        .prepare(&format!(
            "SELECT name FROM {schema}.sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for t in names {
        let mut cols: Vec<(i64, String)> = conn
            .prepare(&format!("PRAGMA {schema}.table_info(\"{t}\")"))?
            .query_map([], |r| Ok((r.get::<_, i64>(5)?, r.get::<_, String>(1)?)))?
            .collect::<Result<_, _>>()?;
        cols.retain(|(pk, _)| *pk > 0);
        cols.sort();
        let mut key: Vec<String> = cols.into_iter().map(|(_, c)| c).collect();
        if key.is_empty() {
            key.push("id".into()); // trees, lists: UNIQUE id
        }
        out.push((t, key));
    }
    Ok(out)
}

/// Writes to `delta` what turns catalog `old` into `new`: per table `up_T` (rows of `new` not
/// in `old`) and `del_T` (keys of `old` not in `new`), each only if not empty. Returns how many
/// rows changed, not counting the counters every commit moves.
fn make_delta(old: &Path, new: &Path, delta: &Path) -> VaultResult<u64> {
    let conn = rusqlite::Connection::open(delta)?;
    conn.execute_batch("PRAGMA page_size = 1024")?;
    conn.execute("ATTACH DATABASE ?1 AS o", [old.to_string_lossy()])?;
    conn.execute("ATTACH DATABASE ?1 AS n", [new.to_string_lossy()])?;
    let mut changed = 0u64;
    conn.execute_batch("BEGIN")?;
    for (t, key) in tables(&conn, "n")? {
        let k = key_list(&key);
        conn.execute_batch(&format!(
            "CREATE TABLE \"up_{t}\" AS SELECT * FROM n.\"{t}\" EXCEPT SELECT * FROM o.\"{t}\";
             CREATE TABLE \"del_{t}\" AS SELECT {k} FROM o.\"{t}\" EXCEPT SELECT {k} FROM n.\"{t}\";"
        ))?;
        for (table, counted) in [
            (
                format!("up_{t}"),
                match t.as_str() {
                    "meta" => " WHERE key NOT IN ('commit_seq', 'items_seq')",
                    _ => "",
                },
            ),
            (format!("del_{t}"), ""),
        ] {
            let rows: i64 =
                conn.query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
                    r.get(0)
                })?;
            if rows == 0 {
                conn.execute_batch(&format!("DROP TABLE \"{table}\""))?;
                continue;
            }
            let n: i64 = conn.query_row(
                &format!("SELECT count(*) FROM \"{table}\"{counted}"),
                [],
                |r| r.get(0),
            )?;
            changed += n as u64;
        }
    }
    conn.execute_batch("COMMIT; DETACH DATABASE o; DETACH DATABASE n; VACUUM")?;
    Ok(changed)
}

fn key_list(key: &[String]) -> String {
    key.iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies a delta `make_delta` wrote to catalog `db`, in one transaction.
fn apply_delta(db: &Path, delta: &Path) -> VaultResult<()> {
    let conn = rusqlite::Connection::open(db)?;
    conn.execute("ATTACH DATABASE ?1 AS d", [delta.to_string_lossy()])?;
    let present: std::collections::HashSet<String> = conn
        .prepare("SELECT name FROM d.sqlite_master WHERE type = 'table'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        for (t, key) in tables(&conn, "main")? {
            if present.contains(&format!("del_{t}")) {
                let k = key_list(&key);
                conn.execute_batch(&format!(
                    "DELETE FROM main.\"{t}\" WHERE ({k}) IN (SELECT {k} FROM d.\"del_{t}\")"
                ))?;
            }
            if present.contains(&format!("up_{t}")) {
                conn.execute_batch(&format!(
                    "INSERT OR REPLACE INTO main.\"{t}\" SELECT * FROM d.\"up_{t}\""
                ))?;
            }
        }
        Ok::<_, VaultError>(())
    })();
    match r {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(())
}

/// The writer lock of a remote replica, removed when dropped.
struct RemoteLock<'a> {
    remote: &'a Remote,
}

/// This host's name.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most len bytes into our buffer.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl<'a> RemoteLock<'a> {
    fn take(remote: &'a Remote) -> VaultResult<RemoteLock<'a>> {
        let now = super::now_ns() / 1_000_000_000;
        let me = serde_json::json!({
            "host": hostname(),
            "pid": std::process::id(),
            "started": now,
            "command": "replicate",
        });
        let body = serde_json::to_vec(&me).unwrap_or_default();
        for _ in 0..2 {
            if remote
                .put(LOCK_KEY, body.clone(), true)
                .map_err(remote_err(remote))?
            {
                return Ok(RemoteLock { remote });
            }
            let held = remote.get(LOCK_KEY).map_err(remote_err(remote))?;
            let holder: serde_json::Value = held
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            if !stale(&holder, now) {
                return Err(VaultError::Remote(format!(
                    "{} is locked by another replicate (host {}, pid {}, since {}); if that \
                     process is gone, remove the object {}",
                    remote.url(),
                    holder["host"].as_str().unwrap_or("?"),
                    holder["pid"],
                    super::human_time(holder["started"].as_i64().unwrap_or(0) * 1_000_000_000),
                    LOCK_KEY
                )));
            }
            log::info!("{}: taking over a stale lock ({holder})", remote.url());
            remote.delete(LOCK_KEY).map_err(remote_err(remote))?;
        }
        Err(VaultError::Remote(format!(
            "{}: another writer took the lock meanwhile; try again",
            remote.url()
        )))
    }
}

/// A lock is stale when its process on this host is gone, or when it is older than a day.
fn stale(holder: &serde_json::Value, now: i64) -> bool {
    let old = holder["started"]
        .as_i64()
        .is_none_or(|t| now - t > LOCK_STALE_SECS);
    let here = holder["host"].as_str() == Some(&hostname());
    let dead = holder["pid"].as_i64().is_some_and(|pid| {
        // SAFETY: signal 0 only checks that the process exists.
        pid > 0
            && unsafe { libc::kill(pid as libc::pid_t, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    });
    old || (here && dead)
}

impl Drop for RemoteLock<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.remote.delete(LOCK_KEY) {
            log::warn!("cannot remove the lock of {}: {e}", self.remote.url());
        }
    }
}

impl Vault {
    /// Opens the replica at `url` read-only: its catalog from the local cache (refreshed),
    /// its packs by ranged reads through the block cache.
    pub fn open_remote(url: &str, key: Option<super::seal::ReplicaKey>) -> VaultResult<Vault> {
        let target = Target::parse(url)?;
        let remote = Arc::new(Remote::connect(&target)?.with_key(key));
        // Before the cache: a cached catalog must not open without the key either.
        check_seal(&remote, false)?;
        let root = cache_root(url)?;
        let Some((snap, _)) = refresh(&remote, &root)? else {
            return Err(VaultError::Remote(format!(
                "{url}: no replica there (nothing was replicated to it yet)"
            )));
        };
        let limit = std::env::var("COFFRE_REMOTE_CACHE_MB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(DEFAULT_CACHE_MB)
            << 20;
        let blocks = root.join("blocks");
        let cache = BlockCache::open(&blocks, limit).map_err(super::io_err(&blocks))?;
        let packs = RemotePacks::new(remote.clone(), Some(cache)).pinned(snap.pin);
        let store = replica_packs(&remote, packs);
        Vault::open_with_store(&snap.dir, store, Some(url.to_string()))
    }

    /// Brings the replica at `url` up to date (see the module header).
    pub(super) fn replicate_remote(
        &self,
        url: &str,
        opts: &ReplicateOptions,
        progress: &dyn ReplicateProgress,
    ) -> VaultResult<ReplicateReport> {
        let started = Instant::now();
        let target = Target::parse(url)?;
        let remote = Arc::new(Remote::connect(&target)?.with_key(opts.key.clone()));
        let _lease = self.lease()?;
        let _lock = RemoteLock::take(&remote)?;
        let root = cache_root(url)?;
        remove_work_dirs(&root);
        let current = refresh(&remote, &root)?;
        let work = root.join(format!("work-{}", random_hex(8)));
        let r = self.replicate_into(&remote, current.as_ref(), &work, opts, progress);
        let (mut report, objs) = match r {
            Ok(x) => x,
            Err(e) => {
                let _ = fs::remove_dir_all(&work);
                return Err(e);
            }
        };
        report.target = url.to_string();
        report.sealed = remote.key().is_some();
        if let Some(name) = objs {
            let keep = root.join(name);
            if fs::rename(&work, &keep).is_err() {
                let _ = fs::remove_dir_all(&work);
            }
            clean(&root, &keep);
        } else {
            let _ = fs::remove_dir_all(&work);
        }
        report.bytes_sent = remote.bytes_sent();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Plans on a copy of the cached catalog in `work`, sends the packs, commits there and
    /// publishes the change; returns the report and the cache name of the new catalog (`None`
    /// when nothing changed).
    fn replicate_into(
        &self,
        remote: &Arc<Remote>,
        current: Option<&(Snapshot, CatalogObjects)>,
        work: &Path,
        opts: &ReplicateOptions,
        progress: &dyn ReplicateProgress,
    ) -> VaultResult<(ReplicateReport, Option<String>)> {
        check_seal(remote, current.is_none())?;
        let packs = replica_packs(remote, RemotePacks::new(remote.clone(), None));
        let created = current.is_none();
        match current {
            Some((snap, _)) => {
                fs::create_dir_all(work).map_err(super::io_err(work))?;
                let db = work.join("vault.db");
                fs::copy(snap.dir.join("vault.db"), &db).map_err(super::io_err(&db))?;
            }
            None => {
                let init = InitOptions {
                    zstd_level: self.zstd_level,
                    image_frame: self.image_frame,
                };
                drop(Vault::init(work, &init)?);
            }
        }
        let _pin = pin(work)?;
        let mut report = ReplicateReport {
            created,
            ..ReplicateReport::default()
        };
        {
            let replica = Vault::open_with_store(work, packs.clone(), None)?;
            self.check_replica(&replica, remote.url(), created)?;
            self.catalog.begin_read()?;
            let plan = self.plan(&replica, opts);
            self.catalog.rollback();
            let mut plan = plan?;
            let present = self.send_packs(&packs, &mut plan, progress, &mut report)?;
            replica.commit_plan(&plan, &self.id, &mut report)?;
            report.skipped = std::mem::take(&mut plan.skipped);
            // Packs an interrupted run sent that no run needs any more (the primary dropped
            // them): named by no catalog, so no reader can want them.
            let named: std::collections::HashSet<String> =
                replica.catalog.pack_names()?.into_iter().collect();
            for name in present.keys().filter(|n| !named.contains(*n)) {
                let _ = packs.delete(name);
            }
        }
        let name = publish(remote, current, work, &mut report)?;
        Ok((report, name))
    }

    /// Refuses a replica of another vault, or a vault with points of its own.
    fn check_replica(&self, replica: &Vault, url: &str, created: bool) -> VaultResult<()> {
        let bad = |detail: String| VaultError::BadRemote {
            url: url.to_string(),
            detail,
        };
        match replica.replica_of()? {
            Some(id) if id == self.id => Ok(()),
            Some(id) => Err(bad(format!(
                "it is a replica of another vault (id {id}; this vault's id is {})",
                self.id
            ))),
            None if !created && !replica.catalog.points_after(0)?.is_empty() => {
                Err(bad("it holds a vault with backups of its own".into()))
            }
            None => Ok(()),
        }
    }

    /// Puts every pack of the plan the remote lacks (a pack there with the right size is an
    /// interrupted run's, taken as it is), each read back and compared; scrubs every one.
    /// Returns the packs the remote had before (listed only when there is something to send).
    fn send_packs(
        &self,
        packs: &Arc<dyn PackStore>,
        plan: &mut Plan,
        progress: &dyn ReplicateProgress,
        report: &mut ReplicateReport,
    ) -> VaultResult<HashMap<String, u64>> {
        let err = |e: io::Error| VaultError::Remote(format!("{}: {e}", packs.describe()));
        let present: HashMap<String, u64> = if plan.copy.is_empty() {
            HashMap::new()
        } else {
            packs
                .list()
                .map_err(err)?
                .into_iter()
                .map(|p| (p.name, p.size))
                .collect()
        };
        let total = plan
            .copy
            .iter()
            .filter(|p| present.get(&p.name) != Some(&p.size))
            .map(|p| p.size)
            .sum();
        progress.start(total);
        for p in &mut plan.copy {
            let mut data = vec![0u8; p.size as usize];
            let src = self.packs_dir().join(format!("{}.pack", p.name));
            self.store
                .read_at(&p.name, 0, &mut data)
                .map_err(super::io_err(&src))?;
            self.scrub_copy(p, &data, report);
            if present.get(&p.name) == Some(&p.size) {
                report.packs_resumed += 1;
                continue;
            }
            let sum = blake3::hash(&data);
            let mut up = packs.create(&p.name).map_err(err)?;
            up.write_all(&data).map_err(err)?;
            up.finish().map_err(err)?;
            crate::testing::crash_point("replicate-pack-sent");
            packs.read_at(&p.name, 0, &mut data).map_err(err)?;
            if blake3::hash(&data) != sum {
                return Err(VaultError::Remote(format!(
                    "{}: pack {} reads back different bytes than were sent",
                    packs.describe(),
                    p.name
                )));
            }
            report.packs_copied += 1;
            report.bytes_copied += p.size;
            progress.copied(p.size);
            crate::testing::crash_point("replicate-pack-copied");
        }
        Ok(present)
    }
}

/// Publishes the catalog in `work` (the commit point): a delta after `current`, or a new base
/// when there is none or the deltas outweigh it. Returns the cache name of the catalog now
/// current, or `None` if nothing changed.
fn publish(
    remote: &Remote,
    current: Option<&(Snapshot, CatalogObjects)>,
    work: &Path,
    report: &mut ReplicateReport,
) -> VaultResult<Option<String>> {
    let db = work.join("vault.db");
    let (base_gen, key, bytes) = match current {
        Some((snap, objs)) => {
            let delta = work.join("delta.db");
            let changed = make_delta(&snap.dir.join("vault.db"), &db, &delta)?;
            if changed == 0 {
                return Ok(None);
            }
            let bytes = fs::read(&delta).map_err(super::io_err(&delta))?;
            let _ = fs::remove_file(&delta);
            // Compressed as `put_catalog_object` will, to weigh it against the base.
            let packed = zstd::bulk::compress(&bytes, 3).map_or(bytes.len(), |p| p.len());
            let deltas: u64 = objs.deltas.iter().sum::<u64>() + packed as u64;
            if deltas > objs.base_size || objs.deltas.len() >= MAX_DELTAS {
                let whole = fs::read(&db).map_err(super::io_err(&db))?;
                (objs.base_gen + 1, base_key(objs.base_gen + 1), whole)
            } else {
                (
                    objs.base_gen,
                    delta_key(objs.base_gen, objs.seq() + 1),
                    bytes,
                )
            }
        }
        None => (1, base_key(1), fs::read(&db).map_err(super::io_err(&db))?),
    };
    crate::testing::crash_point("replicate-before-commit");
    let Some(sent) = put_catalog_object(remote, &key, &bytes)? else {
        return Err(VaultError::Remote(format!(
            "{}: catalog object {key} appeared meanwhile (another writer without the lock?); \
             run replicate again",
            remote.url()
        )));
    };
    report.catalog_bytes_sent = sent;
    let seq = match current {
        Some((_, objs)) if objs.base_gen == base_gen => objs.seq() + 1,
        _ => 0,
    };
    if let Some((_, objs)) = current
        && base_gen != objs.base_gen
    {
        // Compacted: the older base and deltas are not read any more.
        for old in &objs.all {
            let _ = remote.delete(old);
        }
    }
    Ok(Some(format!("cat-{base_gen}-{seq}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(db: &Path) -> Vec<String> {
        let c = rusqlite::Connection::open(db).unwrap();
        let mut out = Vec::new();
        for t in ["meta", "items", "trees"] {
            let mut st = c.prepare(&format!("SELECT * FROM {t} ORDER BY 1")).unwrap();
            let n = st.column_count();
            let rows = st
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap();
            out.extend(rows.map(|r| format!("{t}: {}", r.unwrap())));
        }
        out
    }

    #[test]
    fn a_delta_turns_the_old_catalog_into_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old.db"), dir.path().join("new.db"));
        rusqlite::Connection::open(&old)
            .unwrap()
            .execute_batch(
                "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
                 CREATE TABLE trees(id BLOB NOT NULL UNIQUE, data BLOB NOT NULL);
                 INSERT INTO meta VALUES ('commit_seq', '1'), ('keep', 'x'), ('gone', 'y');
                 INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c');
                 INSERT INTO trees VALUES (x'01', x'aa'), (x'02', x'bb');",
            )
            .unwrap();
        fs::copy(&old, &new).unwrap();
        rusqlite::Connection::open(&new)
            .unwrap()
            .execute_batch(
                "UPDATE meta SET value = '2' WHERE key = 'commit_seq';
                 DELETE FROM meta WHERE key = 'gone';
                 UPDATE items SET name = 'tmp' WHERE id = 1;
                 UPDATE items SET name = 'a' WHERE id = 2;
                 UPDATE items SET name = 'b' WHERE id = 1;
                 DELETE FROM items WHERE id = 3;
                 INSERT INTO items VALUES (4, 'd');
                 INSERT INTO trees VALUES (x'03', x'cc');",
            )
            .unwrap();
        let delta = dir.path().join("delta.db");
        let changed = make_delta(&old, &new, &delta).unwrap();
        // meta: 1 gone (the counter is not counted); items: 2 renamed, 1 gone, 1 new; trees: 1.
        assert_eq!(changed, 1 + 4 + 1);
        let copy = dir.path().join("copy.db");
        fs::copy(&old, &copy).unwrap();
        apply_delta(&copy, &delta).unwrap();
        assert_eq!(dump(&copy), dump(&new));
        // Nothing changed: nothing to publish.
        let same = dir.path().join("same.db");
        assert_eq!(make_delta(&new, &new, &same).unwrap(), 0);
    }
}
