//! Garbage collection: give back the space of data no point needs, while backups and mounts go on.
//!
//! Owns `Vault::gc`. *Mark*: without the writer lock, on one read snapshot of the catalog, walk
//! every live and soft-deleted point (`Reach`). Then *rounds*, each under the writer lock for one
//! short commit: catch up with the points committed since the mark (walking only trees not seen
//! yet), plan from the chunk table as it is now, and act on a bounded slice of it. A pack holding
//! nothing live is *doomed*; a pack with less than `REPACK_BELOW` of its bytes live has its live
//! chunks read back, checked (`scrub`) and written into new packs by a write session (their rows
//! then name the new packs), then is doomed. The first round also dooms the trees and content
//! lists no point needs (brought back if a backup stores them again before they go). Dead
//! chunks in packs that stay keep their rows: a later backup may deduplicate against them.
//! A doomed pack keeps its row (with the epoch of that commit) and its remaining rows, marked
//! garbage: a reader that started before (a mount showing a point just purged, with a file open)
//! still finds and reads them, while backups never reuse them. Its file is deleted, and its rows
//! forgotten, only when no reader's lease is older than that epoch; doomed trees and lists go
//! by the same rule, after a last check, under the lock, that no point needs them. Quarantined packs whose
//! every chunk the catalog holds elsewhere (a killed gc's or backup's leftovers) are deleted.
//! Safety nets: nothing is deleted while any blob a point needs cannot be read; a pack is doomed
//! only when no live row names it any more, checked inside the commit.
//! Crash story: each round is one transaction. A killed round leaves new packs nobody names
//! (quarantined by the next writer, deleted by the next gc as redundant); a doomed pack not yet
//! deleted is deleted by the next gc; one whose file is gone but rows remain is forgotten by it.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::catalog::{Catalog, ChunkRow};
use super::lock::gc_lock;
use super::reach::Reach;
use super::scrub::scrub_pack;
use super::store::{LocalStore, ORPHANED_DIR, PackStore};
use super::write::{SessionOptions, SinkMode};
use super::{ChunkId, Vault, VaultError, VaultResult, WriteLock, io_err, packs};

/// By default a pack is repacked when less than this share of its stored bytes is live.
/// Measured on the benchmark's Linux-tree history (see BENCHMARKS.md, `scripts/bench-gc`).
pub const REPACK_BELOW: f64 = 0.8;
/// Live bytes one round moves at most, so the writer lock is held for seconds, not minutes.
const ROUND_BYTES: u64 = 256 << 20;

/// How a collection runs.
#[derive(Clone, Debug, Default)]
pub struct GcOptions {
    /// Plan and report only.
    pub dry_run: bool,
    /// Compression threads for repacking (0 = one per core).
    pub threads: usize,
    /// Repack packs with less than this share of live bytes (`None`: `REPACK_BELOW`).
    pub repack_below: Option<f64>,
}

/// What a collection did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Packs that held nothing live.
    pub packs_emptied: u64,
    /// Packs whose live chunks were moved into new packs.
    pub packs_repacked: u64,
    /// Pack files deleted (including those an earlier gc left for readers).
    pub packs_deleted: u64,
    /// Bytes of the pack files deleted.
    pub bytes_deleted: u64,
    /// Bytes of new packs written by repacking.
    pub bytes_written: u64,
    /// Packs no longer named but kept until readers that started before the gc end.
    pub packs_waiting: u64,
    pub bytes_waiting: u64,
    /// Trees and content lists no longer needed but kept for such readers.
    pub blobs_waiting: u64,
    /// Quarantined packs deleted because the catalog holds all their chunks elsewhere.
    pub orphans_deleted: u64,
    pub orphan_bytes_deleted: u64,
    pub chunks_dropped: u64,
    pub trees_dropped: u64,
    pub lists_dropped: u64,
    /// Size of vault.db (with its WAL) before and after.
    pub catalog_bytes_before: u64,
    pub catalog_bytes_after: u64,
    /// Rounds under the writer lock.
    pub rounds: u64,
    pub seconds: f64,
}

impl GcReport {
    /// Pack bytes given back to the file system (negative if repacking wrote more than it
    /// freed so far, e.g. while old packs wait for readers). The catalog's change is apart.
    pub fn reclaimed(&self) -> i64 {
        (self.bytes_deleted + self.orphan_bytes_deleted) as i64 - self.bytes_written as i64
    }
}

/// One pack the plan acts on.
#[derive(Clone)]
struct PackPlan {
    id: i64,
    name: String,
    size: u64,
    live: Vec<ChunkRow>,
    dead: Vec<ChunkRow>,
    /// Live stored bytes (each chunk's share of its record).
    live_stored: u64,
    /// Record offsets of records holding one chunk: their chunks stay alone when moved.
    single: HashSet<u64>,
}

/// What a round may do, as seen now.
struct Plan {
    /// Packs with nothing live, then packs to repack (least live first).
    packs: Vec<PackPlan>,
    dead_trees: Vec<[u8; 32]>,
    dead_lists: Vec<[u8; 32]>,
}

impl Plan {
    fn new(c: &Catalog, reach: &Reach, skip: &HashSet<i64>, below: f64) -> VaultResult<Plan> {
        let mut by_pack: HashMap<i64, Vec<ChunkRow>> = HashMap::new();
        for row in c.chunk_rows()? {
            by_pack.entry(row.loc.pack).or_default().push(row);
        }
        let mut packs = Vec::new();
        for (id, name, size) in c.live_packs()? {
            if skip.contains(&id) {
                continue;
            }
            let rows = by_pack.remove(&id).unwrap_or_default();
            if let Some(p) = plan_pack(id, name, size, rows, reach, below) {
                packs.push(p);
            }
        }
        packs.sort_by_key(|p| (p.live_stored, p.id));
        let dead = |table: &str, live: &dyn Fn(&[u8; 32]) -> bool| -> VaultResult<Vec<[u8; 32]>> {
            Ok(c.blob_ids(table)?
                .into_iter()
                .filter(|id| !live(id))
                .collect())
        };
        Ok(Plan {
            packs,
            dead_trees: dead("trees", &|id| reach.trees.contains(&super::TreeId(*id)))?,
            dead_lists: dead("lists", &|id| reach.lists.contains(&super::ListId(*id)))?,
        })
    }

    /// The next slice: every pack with nothing live, and packs to repack up to `ROUND_BYTES`.
    fn round(&self) -> Vec<PackPlan> {
        let mut out = Vec::new();
        let mut moved = 0u64;
        for p in &self.packs {
            if p.live.is_empty() {
                out.push(p.clone());
            } else if moved < ROUND_BYTES {
                moved += p.live.iter().map(|r| r.loc.len as u64).sum::<u64>();
                out.push(p.clone());
            }
        }
        out
    }
}

/// The plan for one pack, if it has garbage worth acting on.
fn plan_pack(
    id: i64,
    name: String,
    size: u64,
    rows: Vec<ChunkRow>,
    reach: &Reach,
    below: f64,
) -> Option<PackPlan> {
    let mut per_record: HashMap<u64, usize> = HashMap::new();
    for r in &rows {
        *per_record.entry(r.loc.record.offset).or_default() += 1;
    }
    let (live, dead): (Vec<ChunkRow>, Vec<ChunkRow>) =
        rows.into_iter().partition(|r| reach.chunks.contains(&r.id));
    let live_stored: u64 = live
        .iter()
        .map(|r| {
            let rec = r.loc.record;
            (rec.stored_len as u64 * r.loc.len as u64) / (rec.plain_len as u64).max(1)
        })
        .sum();
    let worth = live.is_empty() || (live_stored as f64) < below * size as f64;
    if !worth || (dead.is_empty() && !live.is_empty()) {
        return None;
    }
    let single = per_record
        .into_iter()
        .filter(|&(_, n)| n == 1)
        .map(|(off, _)| off)
        .collect();
    Some(PackPlan {
        id,
        name,
        size,
        live,
        dead,
        live_stored,
        single,
    })
}

/// The mark: what points need.
struct Mark {
    reach: Reach,
}

impl Mark {
    /// Walks every point of one catalog snapshot.
    fn new(db: &std::path::Path) -> VaultResult<Mark> {
        let c = Catalog::open(db)?;
        c.begin_read()?;
        let mut mark = Mark {
            reach: Reach::default(),
        };
        let r = mark.catch_up(&c);
        c.rollback();
        r.map(|()| mark)
    }

    /// Adds what every point needs now (under the writer lock: no other commit can come between
    /// this and the round's commit). Every point is looked at, not only rows above a mark: a
    /// row id freed by a purge is given to the next point. Trees already walked are skipped, so
    /// this costs one root per point plus what is new.
    fn catch_up(&mut self, c: &Catalog) -> VaultResult<()> {
        for p in c.points_after(0)? {
            self.reach.add_point(c, &p)?;
        }
        if let Some(b) = self.reach.broken.first() {
            let more = self.reach.broken.len() - 1;
            return Err(VaultError::GcRefused(format!(
                "{} {}: {}{}",
                b.what,
                b.id,
                b.detail,
                if more > 0 {
                    format!(", and {more} more")
                } else {
                    String::new()
                }
            )));
        }
        Ok(())
    }
}

impl Vault {
    /// Collects garbage (see the module header). Takes the writer lock only for each round's
    /// commit; refuses to run twice at once.
    pub fn gc(&self, opts: &GcOptions) -> VaultResult<GcReport> {
        let started = Instant::now();
        // A dry run changes nothing: it may run beside a gc.
        let _only = if opts.dry_run {
            None
        } else {
            Some(gc_lock(self.root())?)
        };
        let mut report = GcReport {
            dry_run: opts.dry_run,
            catalog_bytes_before: self.catalog_bytes(),
            ..GcReport::default()
        };
        let below = opts.repack_below.unwrap_or(REPACK_BELOW);
        let mut mark = Mark::new(&self.db_path())?;
        crate::testing::crash_point("gc-marked");
        if opts.dry_run {
            let plan = Plan::new(&self.catalog, &mark.reach, &HashSet::new(), below)?;
            describe(&plan.packs, &mut report);
            report.trees_dropped = plan.dead_trees.len() as u64;
            report.lists_dropped = plan.dead_lists.len() as u64;
            report.catalog_bytes_after = report.catalog_bytes_before;
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        let mut tried = HashSet::new();
        loop {
            let lock = self.lock(true)?;
            mark.catch_up(&self.catalog)?;
            let plan = Plan::new(&self.catalog, &mark.reach, &tried, below)?;
            let round = plan.round();
            let blobs =
                report.rounds == 0 && !(plan.dead_trees.is_empty() && plan.dead_lists.is_empty());
            if round.is_empty() && !blobs {
                break;
            }
            tried.extend(round.iter().map(|p| p.id));
            self.gc_round(&lock, &round, blobs.then_some(&plan), opts, &mut report)?;
            report.rounds += 1;
            self.delete_doomed(&lock, &mark.reach, &mut report)?;
        }
        let lock = self.lock(true)?;
        mark.catch_up(&self.catalog)?;
        self.delete_doomed(&lock, &mark.reach, &mut report)?;
        self.delete_redundant_orphans(&lock, &mut report)?;
        self.compact_catalog(&lock)?;
        report.catalog_bytes_after = self.catalog_bytes();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// One round: move the live chunks of `round`'s packs, drop their dead rows, stop naming
    /// every pack no row names any more, and (first round) drop dead trees and lists.
    fn gc_round(
        &self,
        lock: &WriteLock,
        round: &[PackPlan],
        blobs: Option<&Plan>,
        opts: &GcOptions,
        report: &mut GcReport,
    ) -> VaultResult<()> {
        let mut session = self.begin_write(
            lock,
            &SessionOptions {
                threads: opts.threads,
            },
        )?;
        let unreadable = self.move_live(&session, round)?;
        let (emptied, repacked, dropped) = session.commit_with(|c, _| {
            for id in &unreadable {
                c.mark_chunk_bad(id)?;
            }
            let epoch = c
                .meta("epoch")?
                .and_then(|e| e.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            let (mut emptied, mut repacked, mut dropped) = (0, 0, 0);
            for p in round {
                // Rows of moved chunks name their new packs now; a chunk that could not be
                // read keeps its pack (and the pack's dead rows stay reusable).
                if c.chunks_in_pack(p.id)? == p.dead.len() as u64 {
                    c.doom_pack(p.id, epoch)?;
                    dropped += p.dead.len() as u64;
                    if p.live.is_empty() {
                        emptied += 1;
                    } else {
                        repacked += 1;
                    }
                }
            }
            if let Some(plan) = blobs {
                for id in &plan.dead_trees {
                    c.doom_blob("trees", id, Some(epoch))?;
                }
                for id in &plan.dead_lists {
                    c.doom_blob("lists", id, Some(epoch))?;
                }
            }
            c.set_meta("epoch", &epoch.to_string())?;
            Ok((emptied, repacked, dropped))
        })?;
        report.packs_emptied += emptied;
        report.packs_repacked += repacked;
        report.chunks_dropped += dropped;
        report.bytes_written += session.stored_bytes();
        crate::testing::crash_point("gc-round-committed");
        Ok(())
    }

    /// Reads back the live chunks of the round's packs and hands them to the session; returns
    /// the live chunks that could not be read (they stay where they are, marked bad).
    fn move_live(
        &self,
        session: &super::WriteSession<'_>,
        round: &[PackPlan],
    ) -> VaultResult<Vec<ChunkId>> {
        let mut group = session.sink(SinkMode::Group);
        let mut alone = session.sink(SinkMode::Alone);
        let mut image = session.sink(SinkMode::Image);
        let mut unreadable = Vec::new();
        let mut failed = None;
        for p in round.iter().filter(|p| !p.live.is_empty()) {
            let mut rows = p.live.clone();
            scrub_pack(
                &*self.store(),
                &p.name,
                &mut rows,
                |row, bytes| match bytes {
                    Ok(b) if failed.is_none() => {
                        let sink = if p.single.contains(&row.loc.record.offset) {
                            &mut alone
                        } else if super::write::in_image_frame(
                            row.loc.record.plain_len,
                            row.loc.len,
                        ) {
                            // An image frame stays one (of the vault's frame size now).
                            &mut image
                        } else {
                            &mut group
                        };
                        if let Err(e) = sink.relocate(row.id, b) {
                            failed = Some(e);
                        }
                    }
                    Ok(_) => {}
                    Err(why) => {
                        log::warn!(
                            "chunk {} in pack {} is damaged: {why}; left in place",
                            row.id,
                            p.name
                        );
                        unreadable.push(row.id);
                    }
                },
            )
            .map_err(io_err(&self.packs_dir().join(format!("{}.pack", p.name))))?;
            crate::testing::crash_point("gc-pack-moved");
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(unreadable),
        }
    }

    /// Deletes doomed packs, trees and lists no live reader may still ask for (no lease older
    /// than the commit that doomed them), and brings back doomed trees and lists a point needs
    /// again (`reach` is up to date: taken under this lock).
    fn delete_doomed(
        &self,
        _lock: &WriteLock,
        reach: &Reach,
        report: &mut GcReport,
    ) -> VaultResult<()> {
        let oldest = self.oldest_lease()?;
        let may_go = |epoch: u64| oldest.is_none_or(|o| o >= epoch);
        self.delete_doomed_blobs(reach, &may_go, report)?;
        let doomed = self.catalog.doomed_packs()?;
        (report.packs_waiting, report.bytes_waiting) = (0, 0);
        if doomed.is_empty() {
            return Ok(());
        }
        let dir = self.packs_dir();
        let sizes: HashMap<String, u64> = self
            .store
            .list()
            .map_err(io_err(&dir))?
            .into_iter()
            .map(|p| (p.name, p.size))
            .collect();
        for (id, name, epoch) in doomed {
            let size = sizes.get(&name).copied().unwrap_or(0);
            if !may_go(epoch) {
                report.packs_waiting += 1;
                report.bytes_waiting += size;
                continue;
            }
            match self.store.delete(&name) {
                Ok(()) => {
                    report.packs_deleted += 1;
                    report.bytes_deleted += size;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&dir.join(format!("{name}.pack")))(e)),
            }
            crate::testing::crash_point("gc-pack-deleted");
            self.catalog.forget_pack(id)?;
        }
        self.store.sync().map_err(io_err(&dir))
    }

    fn delete_doomed_blobs(
        &self,
        reach: &Reach,
        may_go: &dyn Fn(u64) -> bool,
        report: &mut GcReport,
    ) -> VaultResult<()> {
        report.blobs_waiting = 0;
        for table in ["trees", "lists"] {
            for (id, epoch) in self.catalog.doomed_blobs(table)? {
                let needed = if table == "trees" {
                    reach.trees.contains(&super::TreeId(id))
                } else {
                    reach.lists.contains(&super::ListId(id))
                };
                if needed {
                    self.catalog.doom_blob(table, &id, None)?;
                } else if may_go(epoch) {
                    self.catalog.delete_blob(table, &id)?;
                    if table == "trees" {
                        report.trees_dropped += 1;
                    } else {
                        report.lists_dropped += 1;
                    }
                } else {
                    report.blobs_waiting += 1;
                }
            }
        }
        Ok(())
    }

    /// Deletes quarantined packs whose every readable chunk the catalog holds elsewhere, read
    /// back and checked: nothing would be lost (a killed gc's or backup's copies). Others stay
    /// for `coffre vault rebuild-index`.
    fn delete_redundant_orphans(
        &self,
        _lock: &WriteLock,
        report: &mut GcReport,
    ) -> VaultResult<()> {
        let dir = self.packs_dir().join(ORPHANED_DIR);
        if !dir.is_dir() {
            return Ok(());
        }
        let orphans = LocalStore::new(dir.clone());
        let present: HashSet<String> = self
            .store
            .list()
            .map_err(io_err(&self.packs_dir()))?
            .into_iter()
            .map(|p| p.name)
            .collect();
        for p in orphans.list().map_err(io_err(&dir))? {
            let mut data = vec![0u8; p.size as usize];
            if orphans.read_at(&p.name, 0, &mut data).is_err()
                || packs::check_header(&data).is_err()
            {
                continue;
            }
            let (chunks, _) = packs::scan(&data);
            if self.held_elsewhere(&chunks, &present)? {
                orphans.delete(&p.name).map_err(io_err(&dir))?;
                report.orphans_deleted += 1;
                report.orphan_bytes_deleted += p.size;
            }
        }
        Ok(())
    }

    fn held_elsewhere(
        &self,
        chunks: &[packs::ScannedChunk],
        present: &HashSet<String>,
    ) -> VaultResult<bool> {
        let reader = self.reader();
        for c in chunks {
            let Some(loc) = self.catalog.chunk(&c.id)? else {
                return Ok(false);
            };
            let named = self.catalog.pack_name(loc.pack)?;
            if loc.bad || !named.is_some_and(|n| present.contains(&n)) {
                return Ok(false);
            }
            // The other copy must really be there: read it back (checked against its id).
            if reader.read_chunk(&c.id).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Gives the catalog's free pages back when they are a fair share of it.
    fn compact_catalog(&self, _lock: &WriteLock) -> VaultResult<()> {
        let (free, all) = self.catalog.free_pages()?;
        if free * 10 > all && free > 256 {
            self.catalog.vacuum()?;
        }
        Ok(())
    }
}

/// A dry run's counts: what the rounds would act on (written bytes estimated from the live
/// chunks' share of their records).
fn describe(packs: &[PackPlan], report: &mut GcReport) {
    for p in packs {
        if p.live.is_empty() {
            report.packs_emptied += 1;
        } else {
            report.packs_repacked += 1;
        }
        report.chunks_dropped += p.dead.len() as u64;
        report.bytes_deleted += p.size;
        report.bytes_written += p.live_stored;
    }
}
