//! Replication to a local directory: a second vault kept in step with this one, pack by pack.
//! (Object storage targets go to `remote.rs`, which reuses the plan, scrub and commit here.)
//!
//! Owns `Vault::replicate_to`. The replica is an ordinary vault (`vault.db`, `packs/`) whose
//! meta records `replica_of` (the primary's id), so every reading command works on it unchanged,
//! and replicating another vault into it is refused. Under the primary's lease (a gc there keeps
//! every pack this run may copy) and the replica's writer lock: *plan* on one snapshot of the
//! primary's catalog (the points of the chosen items the replica lacks, walked from their roots
//! and pruned at every tree and list the replica already has; the chunks they need that the
//! replica lacks, and the packs holding them), *copy* each missing pack whole into
//! `REPLICA/incoming/` (read, BLAKE3 of the bytes read, written as `NAME.part`, fsync'd, read back
//! and compared, every chunk row scrubbed against its id, then renamed `NAME.pack`), *place* them
//! into `packs/` (fsync of the directory), and *commit* one transaction of the replica's catalog:
//! pack and chunk rows, trees and lists (as stored), policies, items (with the primary's ids, so
//! renames follow), new points, the state of known points (soft delete, undelete, labels), and
//! purges (replica points the primary no longer has). Pack identity: a pack in `incoming/` or
//! `packs/orphaned/` with the primary pack's name and size is trusted to be that pack (names are
//! random 96-bit and packs immutable; only a complete, verified, fsync'd copy is ever named
//! `NAME.pack` in `incoming/`); it is scrubbed again, not copied again.
//! Crash story: nothing is visible on the replica before the single commit. A run killed while
//! copying leaves verified packs in `incoming/` (which the replica's recovery never touches); one
//! killed after placing them leaves packs the replica's catalog does not name, which its next
//! writer quarantines into `packs/orphaned/`; the next run takes them from either place.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::catalog::{Catalog, ChunkRow, PointRow};
use super::format::{self, ChunkId, Content, Entry, Extent, ListId, TreeId};
use super::model::Item;
use super::scrub::scrub_pack;
use super::store::{ORPHANED_DIR, PackInfo, PackStore, PackUpload};
use super::{InitOptions, Vault, VaultError, VaultResult, io_err, now_ns, sync_dir};
use crate::policy::Policy;

/// The meta key naming the vault a replica copies.
const REPLICA_OF: &str = "replica_of";
/// The meta keys of replica targets remembered by name (`coffre vault set replica NAME DIR`).
const REPLICA_NAME_PREFIX: &str = "replica.";
/// Where packs wait in a replica between their copy and the commit that names them.
const INCOMING: &str = "incoming";
/// Settings a replica takes from its primary.
const MIRRORED_META: &[&str] = &["soft_delete_days", "immutability", "image_frame"];

impl Vault {
    /// The id of the vault this one is a replica of, if it is one.
    pub fn replica_of(&self) -> VaultResult<Option<String>> {
        self.catalog.meta(REPLICA_OF)
    }
}

/// What `replicate_to` copies.
#[derive(Clone, Debug, Default)]
pub struct ReplicateOptions {
    /// Items to replicate (all if empty).
    pub items: Vec<String>,
    /// Seal the replica with this key (object-storage and `file://` replicas only).
    pub key: Option<super::seal::ReplicaKey>,
}

/// A point the replica could not receive: the primary cannot give all its data.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SkippedPoint {
    pub item: String,
    pub point: String,
    pub reason: String,
}

/// What a replication did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReplicateReport {
    pub target: String,
    /// The replica was created by this run.
    pub created: bool,
    pub points_added: u64,
    /// Known points whose state followed the primary's (soft delete, undelete, labels).
    pub points_updated: u64,
    /// Points removed from the replica because the primary purged them.
    pub points_purged: u64,
    /// Packs copied, and their bytes (the transfer).
    pub packs_copied: u64,
    pub bytes_copied: u64,
    /// Packs a killed run had copied already, taken as they were.
    pub packs_resumed: u64,
    pub chunks_added: u64,
    pub trees_added: u64,
    pub lists_added: u64,
    /// Chunks whose bytes did not check out (damaged in the primary; marked bad on both sides).
    pub damaged_chunks: Vec<String>,
    pub skipped: Vec<SkippedPoint>,
    /// Object storage only: bytes of the catalog object put (a delta, or a whole base), and
    /// of every object put (packs, catalog, lock): the transfer.
    pub catalog_bytes_sent: u64,
    pub bytes_sent: u64,
    /// True if the replica is encrypted (with the vault's replica key or the key given).
    pub sealed: bool,
    pub seconds: f64,
}

/// Told about the copy: its total, then each pack copied.
pub trait ReplicateProgress {
    fn start(&self, _bytes: u64) {}
    fn copied(&self, _bytes: u64) {}
}

impl ReplicateProgress for () {}

/// A pack to bring: its name and size, and the rows to register (the primary's locations).
pub(super) struct PackCopy {
    pub(super) name: String,
    pub(super) size: u64,
    pub(super) rows: Vec<ChunkRow>,
}

/// What the replica's commit does, computed from one snapshot of the primary.
#[derive(Default)]
pub(super) struct Plan {
    policies: Vec<(String, Policy)>,
    meta: Vec<(&'static str, String)>,
    items: Vec<Item>,
    drop_items: Vec<i64>,
    purge: Vec<i64>,
    update: Vec<PointRow>,
    /// New points with their (primary = replica) item id.
    add: Vec<(i64, PointRow)>,
    trees: Vec<([u8; 32], Vec<u8>)>,
    lists: Vec<([u8; 32], Vec<u8>)>,
    pub(super) copy: Vec<PackCopy>,
    /// Rows to register in packs the replica has: (row, pack name).
    rows_in_present: Vec<(ChunkRow, String)>,
    pub(super) skipped: Vec<SkippedPoint>,
}

/// What a point needs of a chunk.
#[derive(Clone)]
enum Need {
    Have,
    Row(ChunkRow),
    Missing(String),
}

/// Walks new points on the primary, pruned at what the replica has.
struct Walker<'a> {
    primary: &'a Catalog,
    replica: &'a Catalog,
    /// Blobs already planned (or present on the replica).
    done_trees: HashSet<TreeId>,
    done_lists: HashSet<ListId>,
    chunks: HashMap<ChunkId, Need>,
    primary_packs: HashMap<i64, String>,
    replica_packs: HashMap<String, (i64, u64, bool)>,
}

/// What one point adds.
#[derive(Default)]
struct PointWalk {
    trees: Vec<TreeId>,
    lists: Vec<ListId>,
    seen_trees: HashSet<TreeId>,
    seen_lists: HashSet<ListId>,
    rows: Vec<ChunkRow>,
}

/// Damage of a blob (as opposed to a catalog that cannot be read at all).
fn damage(e: &VaultError) -> Option<String> {
    matches!(
        e,
        VaultError::Damaged { .. } | VaultError::Missing { .. } | VaultError::Format(_)
    )
    .then(|| e.to_string())
}

impl Walker<'_> {
    /// Everything point `p` needs that the replica lacks, or why the primary cannot give it.
    fn walk(&mut self, p: &PointRow) -> VaultResult<Result<PointWalk, String>> {
        let root = match format::decode_root(&p.root) {
            Ok(r) => r,
            Err(e) => return Ok(Err(format!("its root cannot be read: {e}"))),
        };
        let mut w = PointWalk::default();
        let mut stack = Vec::new();
        if let Err(why) = self.entry(&root, &mut w, &mut stack)? {
            return Ok(Err(why));
        }
        while let Some(t) = stack.pop() {
            let entries = match self.primary.tree(&t) {
                Ok(e) => e,
                Err(e) => match damage(&e) {
                    Some(why) => return Ok(Err(why)),
                    None => return Err(e),
                },
            };
            w.trees.push(t);
            for e in &entries {
                if let Err(why) = self.entry(e, &mut w, &mut stack)? {
                    return Ok(Err(why));
                }
            }
        }
        Ok(Ok(w))
    }

    fn entry(
        &mut self,
        e: &Entry,
        w: &mut PointWalk,
        stack: &mut Vec<TreeId>,
    ) -> VaultResult<Result<(), String>> {
        match e.content {
            Content::None => {}
            Content::Chunk(id) => {
                if let Err(why) = self.chunk(id, w)? {
                    return Ok(Err(why));
                }
            }
            Content::List(id) => {
                if let Err(why) = self.list(id, w)? {
                    return Ok(Err(why));
                }
            }
        }
        if let Some(t) = e.subtree
            && !self.done_trees.contains(&t)
            && w.seen_trees.insert(t)
            && !self.replica.has_live_blob("trees", &t.0)?
        {
            stack.push(t);
        }
        Ok(Ok(()))
    }

    fn list(&mut self, id: ListId, w: &mut PointWalk) -> VaultResult<Result<(), String>> {
        let mut stack = vec![id];
        while let Some(l) = stack.pop() {
            if self.done_lists.contains(&l)
                || !w.seen_lists.insert(l)
                || self.replica.has_live_blob("lists", &l.0)?
            {
                continue;
            }
            let extents = match self.primary.list(&l) {
                Ok(x) => x,
                Err(e) => match damage(&e) {
                    Some(why) => return Ok(Err(why)),
                    None => return Err(e),
                },
            };
            w.lists.push(l);
            for x in extents {
                match x {
                    Extent::Data { id, .. } => {
                        if let Err(why) = self.chunk(id, w)? {
                            return Ok(Err(why));
                        }
                    }
                    Extent::Sub { id, .. } => stack.push(id),
                    Extent::Hole { .. } => {}
                }
            }
        }
        Ok(Ok(()))
    }

    fn chunk(&mut self, id: ChunkId, w: &mut PointWalk) -> VaultResult<Result<(), String>> {
        let need = match self.chunks.get(&id) {
            Some(n) => n.clone(),
            None => {
                let n = self.need(id)?;
                self.chunks.insert(id, n.clone());
                n
            }
        };
        Ok(match need {
            Need::Have => Ok(()),
            Need::Row(row) => {
                w.rows.push(row);
                Ok(())
            }
            Need::Missing(why) => Err(why),
        })
    }

    fn need(&self, id: ChunkId) -> VaultResult<Need> {
        if matches!(self.replica.chunk_state(&id)?, Some(0 | 1)) {
            return Ok(Need::Have);
        }
        let Some(loc) = self.primary.chunk(&id)? else {
            return Ok(Need::Missing(format!(
                "chunk {id} is not in the catalog (run `coffre check`)"
            )));
        };
        if self.primary.chunk_state(&id)? == Some(2) {
            return Ok(Need::Missing(format!(
                "chunk {id} is garbage left for a gc (run `coffre check`)"
            )));
        }
        let name = self
            .primary_packs
            .get(&loc.pack)
            .cloned()
            .unwrap_or_default();
        if self.replica_packs.get(&name).is_some_and(|p| p.2) {
            return Ok(Need::Missing(format!(
                "the replica's gc is removing pack {name}, which holds chunk {id}; run gc on \
                 the replica, then replicate again"
            )));
        }
        Ok(Need::Row(ChunkRow { id, loc }))
    }
}

/// One pack held in memory, as a store `scrub_pack` can read.
struct OnePack<'a> {
    name: &'a str,
    data: &'a [u8],
}

impl PackStore for OnePack<'_> {
    fn describe(&self) -> String {
        self.name.to_string()
    }
    fn create(&self, _name: &str) -> io::Result<Box<dyn PackUpload>> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if name != self.name {
            return Err(io::ErrorKind::NotFound.into());
        }
        let start = offset as usize;
        let src = self
            .data
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn list(&self) -> io::Result<Vec<PackInfo>> {
        Ok(vec![PackInfo {
            name: self.name.to_string(),
            size: self.data.len() as u64,
        }])
    }
    fn delete(&self, _name: &str) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn quarantine(&self, _name: &str) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

fn bad_target(path: &Path, detail: impl Into<String>) -> VaultError {
    VaultError::BadReplica {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

impl Vault {
    /// Brings the replica at `target` (a directory, created on first use) up to date with this
    /// vault's points of the chosen items (see the module header).
    pub fn replicate_to(
        &self,
        target: &Path,
        opts: &ReplicateOptions,
        progress: &dyn ReplicateProgress,
    ) -> VaultResult<ReplicateReport> {
        if let Some(url) = super::objstore::remote_url(target) {
            return self.replicate_remote(url, opts, progress);
        }
        if opts.key.is_some() {
            return Err(bad_target(
                target,
                "a replica key is set and a directory replica is a plain vault: name it \
                 file:///DIR for an encrypted replica in a directory, or forget the key with \
                 `coffre vault set no-replica-key`",
            ));
        }
        let started = Instant::now();
        let _lease = self.lease()?;
        let (mut replica, created) = self.open_replica(target)?;
        replica.set_lock_wait(self.lock_wait);
        let _lock = replica.lock(true)?;
        let mut report = ReplicateReport {
            target: target.display().to_string(),
            created,
            ..ReplicateReport::default()
        };
        self.catalog.begin_read()?;
        let plan = self.plan(&replica, opts);
        self.catalog.rollback();
        let mut plan = plan?;
        let incoming = target.join(INCOMING);
        let placed = self.bring_packs(&replica, &mut plan, &incoming, progress, &mut report)?;
        replica.place(&placed)?;
        crate::testing::crash_point("replicate-packs-placed");
        replica.commit_plan(&plan, &self.id, &mut report)?;
        // Whatever is left in incoming/ is not needed any more (the primary dropped it).
        let _ = fs::remove_dir_all(&incoming);
        report.skipped = plan.skipped;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Opens the replica at `target`, creating it in a missing or empty directory; refuses a
    /// file, a foreign directory, this vault itself, a replica of another vault and a vault
    /// with points of its own.
    fn open_replica(&self, target: &Path) -> VaultResult<(Vault, bool)> {
        if target.exists() && !target.is_dir() {
            return Err(bad_target(target, "it is not a directory"));
        }
        let same = fs::canonicalize(target)
            .ok()
            .is_some_and(|t| fs::canonicalize(self.root()).is_ok_and(|r| r == t));
        if same {
            return Err(bad_target(target, "it is this vault"));
        }
        let created = !Vault::exists(target);
        let replica = if created {
            let opts = InitOptions {
                zstd_level: self.zstd_level,
                image_frame: self.image_frame,
            };
            Vault::init(target, &opts).map_err(|e| match e {
                VaultError::Foreign(_) => bad_target(
                    target,
                    "the directory is not empty and holds no coffre vault",
                ),
                VaultError::Io { source, .. } => bad_target(target, source.to_string()),
                e => e,
            })?
        } else {
            Vault::open(target)?
        };
        match replica.catalog.meta(REPLICA_OF)? {
            Some(id) if id == self.id => {}
            Some(id) => {
                return Err(bad_target(
                    target,
                    format!(
                        "it is a replica of another vault (id {id}; this vault's id is {})",
                        self.id
                    ),
                ));
            }
            None if !created && !replica.catalog.points_after(0)?.is_empty() => {
                return Err(bad_target(
                    target,
                    "it is a vault with backups of its own, not a replica of this one",
                ));
            }
            None => {}
        }
        Ok((replica, created))
    }

    /// The plan, read from the primary (`self`, inside a read transaction) and the replica.
    pub(super) fn plan(&self, replica: &Vault, opts: &ReplicateOptions) -> VaultResult<Plan> {
        let (p, r) = (&self.catalog, &replica.catalog);
        let mut plan = Plan {
            policies: p.policies()?,
            ..Plan::default()
        };
        for &key in MIRRORED_META {
            if let Some(v) = p.meta(key)? {
                plan.meta.push((key, v));
            }
        }
        let all_items = p.items()?;
        for name in &opts.items {
            if !all_items.iter().any(|i| &i.name == name) {
                return Err(VaultError::ItemNotFound(name.clone()));
            }
        }
        let chosen = |i: &Item| opts.items.is_empty() || opts.items.contains(&i.name);
        plan.items = all_items.into_iter().filter(chosen).collect();
        let ids: HashSet<i64> = plan.items.iter().map(|i| i.id).collect();
        let item_id: HashMap<&str, i64> = plan.items.iter().map(|i| (&*i.name, i.id)).collect();
        let replica_items = r.items()?;
        if opts.items.is_empty() {
            plan.drop_items = replica_items
                .iter()
                .filter(|i| !ids.contains(&i.id))
                .map(|i| i.id)
                .collect();
        }
        // Replica points in scope: of items this run mirrors (all, without a choice).
        let in_scope: HashSet<&str> = replica_items
            .iter()
            .filter(|i| opts.items.is_empty() || ids.contains(&i.id))
            .map(|i| &*i.name)
            .collect();
        let primary_points: Vec<PointRow> = p
            .points_after(0)?
            .into_iter()
            .filter(|pt| item_id.contains_key(&*pt.item))
            .collect();
        let known: HashMap<String, PointRow> = r
            .points_after(0)?
            .into_iter()
            .map(|pt| (pt.id.clone(), pt))
            .collect();
        let on_primary: HashSet<&str> = primary_points.iter().map(|pt| &*pt.id).collect();
        plan.purge = known
            .values()
            .filter(|pt| in_scope.contains(&*pt.item) && !on_primary.contains(&*pt.id))
            .map(|pt| pt.rowid)
            .collect();
        let mut walker = Walker {
            primary: p,
            replica: r,
            done_trees: HashSet::new(),
            done_lists: HashSet::new(),
            chunks: HashMap::new(),
            primary_packs: p.packs()?.into_iter().map(|(i, n, _)| (i, n)).collect(),
            replica_packs: r.packs_by_name()?,
        };
        let mut rows: Vec<ChunkRow> = Vec::new();
        for pt in primary_points {
            if let Some(old) = known.get(&pt.id) {
                if changed(old, &pt) {
                    plan.update.push(pt);
                }
                continue;
            }
            match walker.walk(&pt)? {
                Ok(w) => {
                    for t in w.trees {
                        if walker.done_trees.insert(t) {
                            plan.trees.push((t.0, raw(p, "trees", &t.0)?));
                        }
                    }
                    for l in w.lists {
                        if walker.done_lists.insert(l) {
                            plan.lists.push((l.0, raw(p, "lists", &l.0)?));
                        }
                    }
                    rows.extend(w.rows);
                    plan.add.push((item_id[&*pt.item], pt));
                }
                Err(reason) => plan.skipped.push(SkippedPoint {
                    item: pt.item.clone(),
                    point: pt.id.clone(),
                    reason,
                }),
            }
        }
        self.plan_packs(&walker, rows, &mut plan)?;
        Ok(plan)
    }

    /// Groups the rows new points need by pack: rows in packs the replica has are registered
    /// there; other packs are copied, with every row of theirs the replica lacks.
    fn plan_packs(&self, w: &Walker, rows: Vec<ChunkRow>, plan: &mut Plan) -> VaultResult<()> {
        let sizes: HashMap<i64, u64> = self
            .catalog
            .packs()?
            .into_iter()
            .map(|(i, _, s)| (i, s))
            .collect();
        let mut by_pack: HashMap<i64, Vec<ChunkRow>> = HashMap::new();
        let mut seen = HashSet::new();
        for row in rows {
            if seen.insert(row.id) {
                by_pack.entry(row.loc.pack).or_default().push(row);
            }
        }
        let mut packs: Vec<_> = by_pack.into_iter().collect();
        packs.sort_by_key(|(id, _)| *id);
        for (id, wanted) in packs {
            let name = w.primary_packs.get(&id).cloned().unwrap_or_default();
            if w.replica_packs.contains_key(&name) {
                plan.rows_in_present
                    .extend(wanted.into_iter().map(|r| (r, name.clone())));
                continue;
            }
            let mut rows = Vec::new();
            for row in self.catalog.chunk_rows_in_pack(id)? {
                let lacks = matches!(w.replica.chunk_state(&row.id)?, None | Some(2));
                if lacks && self.catalog.chunk_state(&row.id)? != Some(2) {
                    rows.push(row);
                }
            }
            plan.copy.push(PackCopy {
                name,
                size: sizes.get(&id).copied().unwrap_or(0),
                rows,
            });
        }
        Ok(())
    }

    /// Copies (or takes from a killed run) every pack of the plan into `incoming`; returns where
    /// each one is now.
    fn bring_packs(
        &self,
        replica: &Vault,
        plan: &mut Plan,
        incoming: &Path,
        progress: &dyn ReplicateProgress,
        report: &mut ReplicateReport,
    ) -> VaultResult<Vec<(String, PathBuf)>> {
        let leftovers = leftovers(replica.root(), incoming)?;
        let total = plan
            .copy
            .iter()
            .filter(|p| leftovers.get(&p.name).is_none_or(|(_, s)| *s != p.size))
            .map(|p| p.size)
            .sum();
        progress.start(total);
        if !plan.copy.is_empty() {
            fs::create_dir_all(incoming).map_err(io_err(incoming))?;
        }
        let mut placed = Vec::new();
        for p in &mut plan.copy {
            let (path, data) = match leftovers.get(&p.name) {
                Some((path, size)) if *size == p.size => {
                    report.packs_resumed += 1;
                    (path.clone(), fs::read(path).map_err(io_err(path))?)
                }
                _ => {
                    let (path, data) = self.copy_pack(&p.name, p.size, incoming)?;
                    report.packs_copied += 1;
                    report.bytes_copied += p.size;
                    progress.copied(p.size);
                    crate::testing::crash_point("replicate-pack-copied");
                    (path, data)
                }
            };
            self.scrub_copy(p, &data, report);
            placed.push((p.name.clone(), path));
        }
        Ok(placed)
    }

    /// Copies one pack into `incoming` and checks the copy reads back as the bytes read;
    /// returns its path and bytes.
    fn copy_pack(&self, name: &str, size: u64, incoming: &Path) -> VaultResult<(PathBuf, Vec<u8>)> {
        let src = self.packs_dir().join(format!("{name}.pack"));
        let mut data = vec![0u8; size as usize];
        self.store
            .read_at(name, 0, &mut data)
            .map_err(io_err(&src))?;
        let sum = blake3::hash(&data);
        let part = incoming.join(format!("{name}.part"));
        let dst = incoming.join(format!("{name}.pack"));
        // Durable under a temporary name: `NAME.pack` in incoming/ is always a whole copy.
        fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(super::FILE_MODE)
            .open(&part)
            .and_then(|mut f| f.write_all(&data).and_then(|_| f.sync_all()))
            .map_err(io_err(&part))?;
        let back = fs::read(&part).map_err(io_err(&part))?;
        if blake3::hash(&back) != sum {
            return Err(bad_target(
                incoming,
                format!("the copy of pack {name} reads back different bytes (a failing disk?)"),
            ));
        }
        fs::rename(&part, &dst).map_err(io_err(&dst))?;
        sync_dir(incoming)?;
        Ok((dst, back))
    }

    /// Moves packs into `packs/` and makes that durable (before the commit that names them).
    fn place(&self, placed: &[(String, PathBuf)]) -> VaultResult<()> {
        if placed.is_empty() {
            return Ok(());
        }
        let dir = self.packs_dir();
        for (name, from) in placed {
            let to = dir.join(format!("{name}.pack"));
            fs::rename(from, &to).map_err(io_err(&to))?;
        }
        sync_dir(&dir)?;
        for (_, from) in placed {
            if let Some(parent) = from.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// The replica's one transaction (`self` is the replica; its writer lock is held).
    pub(super) fn commit_plan(
        &self,
        plan: &Plan,
        primary_id: &str,
        report: &mut ReplicateReport,
    ) -> VaultResult<()> {
        let c = &self.catalog;
        c.begin()?;
        let r = (|| {
            c.set_meta(REPLICA_OF, primary_id)?;
            for (key, value) in &plan.meta {
                c.set_meta(key, value)?;
            }
            let now = now_ns();
            for (name, policy) in &plan.policies {
                c.mirror_policy(name, policy, now)?;
            }
            for &rowid in &plan.purge {
                report.points_purged += c.purge_point(rowid)? as u64;
            }
            for &id in &plan.drop_items {
                c.delete_item(id)?;
            }
            let ids: Vec<i64> = plan.items.iter().map(|i| i.id).collect();
            c.unname_items(&ids)?;
            for item in &plan.items {
                c.mirror_item(item)?;
            }
            self.register_packs(plan, report)?;
            for (id, data) in &plan.trees {
                c.put_blob_raw("trees", id, data)?;
            }
            for (id, data) in &plan.lists {
                c.put_blob_raw("lists", id, data)?;
            }
            (report.trees_added, report.lists_added) =
                (plan.trees.len() as u64, plan.lists.len() as u64);
            for (item, p) in &plan.add {
                c.insert_point(*item, p)?;
                c.set_point_state(&p.id, p)?;
            }
            for p in &plan.update {
                c.set_point_state(&p.id, p)?;
            }
            (report.points_added, report.points_updated) =
                (plan.add.len() as u64, plan.update.len() as u64);
            c.bump_commit_seq()
        })();
        match r {
            Ok(seq) => {
                crate::testing::crash_point("replicate-before-commit");
                c.commit()?;
                super::note_commit_seq(self.root(), seq);
                Ok(())
            }
            Err(e) => {
                c.rollback();
                Err(e)
            }
        }
    }

    /// Pack rows of the copied packs and the chunk rows the plan registers.
    fn register_packs(&self, plan: &Plan, report: &mut ReplicateReport) -> VaultResult<()> {
        let c = &self.catalog;
        let now = now_ns();
        for p in &plan.copy {
            let pack = c.insert_pack(&p.name, p.size, now)?;
            for row in &p.rows {
                c.insert_chunk_row(&row.id, &super::catalog::ChunkLoc { pack, ..row.loc })?;
            }
            report.chunks_added += p.rows.len() as u64;
        }
        let present = c.packs_by_name()?;
        for (row, name) in &plan.rows_in_present {
            let Some(&(pack, _, _)) = present.get(name) else {
                continue;
            };
            c.insert_chunk_row(&row.id, &super::catalog::ChunkLoc { pack, ..row.loc })?;
            report.chunks_added += 1;
        }
        Ok(())
    }
}

impl Vault {
    /// Remembers (or, with `None`, forgets) replica target `name`.
    pub fn set_replica(
        &self,
        _lock: &super::WriteLock,
        name: &str,
        dir: Option<&Path>,
    ) -> VaultResult<()> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok || name.starts_with('.') {
            return Err(VaultError::BadReplicaName(name.to_string()));
        }
        let key = format!("{REPLICA_NAME_PREFIX}{name}");
        self.transaction(|c| match dir {
            Some(d) => c.set_meta(&key, &d.to_string_lossy()),
            None => match c.delete_meta(&key)? {
                0 => Err(VaultError::ReplicaNotFound(name.to_string())),
                _ => Ok(()),
            },
        })
    }

    /// Remembered replica targets, by name.
    pub fn replicas(&self) -> VaultResult<Vec<(String, PathBuf)>> {
        Ok(self
            .catalog
            .meta_with_prefix(REPLICA_NAME_PREFIX)?
            .into_iter()
            .map(|(k, v)| (k[REPLICA_NAME_PREFIX.len()..].to_string(), PathBuf::from(v)))
            .collect())
    }

    /// Where `--to TARGET` points: a remembered replica's directory when TARGET is one's name
    /// (no `/` in it), else TARGET as a path.
    pub fn replica_target(&self, target: &Path) -> VaultResult<PathBuf> {
        let text = target.to_string_lossy();
        if !text.contains('/')
            && let Some((_, dir)) = self.replicas()?.into_iter().find(|(n, _)| *n == text)
        {
            return Ok(dir);
        }
        Ok(target.to_path_buf())
    }
}

/// True if a point's state after its backup differs between the two sides.
fn changed(a: &PointRow, b: &PointRow) -> bool {
    (a.keep_until, a.deleted_at, &a.deleted_by, &a.tags, &a.note)
        != (b.keep_until, b.deleted_at, &b.deleted_by, &b.tags, &b.note)
}

/// A blob as the primary stores it (it was just read, checked, by the walk).
fn raw(c: &Catalog, table: &'static str, id: &[u8; 32]) -> VaultResult<Vec<u8>> {
    c.blob_raw(table, id)?.ok_or(VaultError::Missing {
        what: if table == "trees" {
            "tree"
        } else {
            "content list"
        },
        id: TreeId(*id).to_hex(),
    })
}

/// Packs a killed run left: verified copies in `incoming/`, and packs placed but never named,
/// which the replica's recovery moved to `packs/orphaned/`: name -> (path, size).
fn leftovers(root: &Path, incoming: &Path) -> VaultResult<HashMap<String, (PathBuf, u64)>> {
    let mut out = HashMap::new();
    for dir in [
        root.join("packs").join(ORPHANED_DIR),
        incoming.to_path_buf(),
    ] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.map_err(io_err(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".pack") else {
                continue;
            };
            let size = e.metadata().map_err(io_err(&e.path()))?.len();
            out.insert(stem.to_string(), (e.path(), size));
        }
    }
    Ok(out)
}

impl Vault {
    /// Checks the rows a copy of pack `p` registers against the bytes read (`data`): damaged
    /// chunks are marked bad in the plan, reported to this vault's damage journal and named in
    /// the report.
    pub(super) fn scrub_copy(&self, p: &mut PackCopy, data: &[u8], report: &mut ReplicateReport) {
        let bad = scrub(&p.name, data, &mut p.rows);
        if !bad.is_empty() {
            self.report_damage(&bad);
            report
                .damaged_chunks
                .extend(bad.iter().map(|id| id.to_hex()));
        }
    }
}

/// Checks every row against the pack's bytes; rows that do not check out are marked bad.
/// Returns their ids.
fn scrub(name: &str, data: &[u8], rows: &mut [ChunkRow]) -> Vec<ChunkId> {
    let one = OnePack { name, data };
    let mut bad = HashSet::new();
    // Reading from memory cannot fail; damage comes back through the callback.
    let _ = scrub_pack(&one, name, rows, |row, r| {
        if r.is_err() {
            bad.insert(row.id);
        }
    });
    for row in rows.iter_mut() {
        if bad.contains(&row.id) {
            row.loc.bad = true;
        }
    }
    bad.into_iter().collect()
}
