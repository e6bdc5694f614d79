//! `verify` and `check`: is every point still restorable, byte for byte?
//!
//! `check` is the catalog half (`Vault::check_catalog`: blobs decode, needed chunks have good
//! rows in packs that exist and are long enough). `verify` adds the data half: every pack that
//! holds a chunk of the chosen points is read in full, sequentially, on all cores, and every
//! chunk is decompressed and hashed (`Vault::verify_pack`). Packs go least recently verified
//! first, and each one's time is recorded as soon as it is read, so `--max-duration` stops
//! cleanly between packs and the next run continues where this one stopped; `--sample` reads a
//! random share. Damage is journaled (and marked bad at once if the writer lock is free), and
//! named as the mount shows it: `items/NAME/POINT/path` of every file that needs a damaged chunk.
//! The run holds a reader's lease, so a concurrent gc never deletes a pack under it.
//! Crash story: nothing here changes the catalog but `mark_damage`, one write session.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::vault::{
    BadChunk, CatalogCheck, ChunkId, Content, Entry, Extent, ListId, PackJob, PackVerifier,
    PointRow, TreeId, Vault, VaultError, VaultReader, VaultResult, VerifyState, point_dir_names,
};

/// How a verification runs.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Stop starting packs once this much time has passed.
    pub max_duration: Option<Duration>,
    /// Read only this percentage of the packs, chosen at random (1-100).
    pub sample: Option<f64>,
    /// Reading threads (0 = one per core).
    pub threads: usize,
}

/// A file (or image) that needs a damaged chunk, as the mount names it.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct DamagedFile {
    pub item: String,
    pub point: String,
    /// `items/NAME/POINT/path` (`deleted/...` for a soft-deleted point).
    pub path: String,
}

/// What a verification found and how far it got.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub check: CatalogCheck,
    /// Packs holding chunks of the chosen points.
    pub packs_total: u64,
    pub packs_verified: u64,
    /// Packs left for the next run (time box or sample).
    pub packs_left: u64,
    pub bytes_read: u64,
    pub chunks_verified: u64,
    pub seconds: f64,
    /// True if `--max-duration` stopped the run before every chosen pack was read.
    pub stopped_in_time: bool,
    /// Damaged chunks the chosen points need.
    pub damaged_chunks: Vec<BadChunk>,
    /// Damaged chunks no point needs (marked bad, so no backup reuses them; gc drops them).
    pub unreferenced_damaged: Vec<BadChunk>,
    pub damaged_files: Vec<DamagedFile>,
    /// True if the damage was marked bad in the catalog now (else: by the next backup).
    pub marked: bool,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.check.is_clean() && self.damaged_chunks.is_empty()
    }
}

/// Progress of the data half: packs and bytes done, of the totals.
pub trait VerifyProgress: Sync {
    fn start(&self, packs: u64, bytes: u64);
    fn pack_done(&self, bytes: u64);
}

/// `check`: the catalog half only, over every point.
pub fn check(vault: &Vault) -> VaultResult<VerifyReport> {
    let started = Instant::now();
    let _lease = vault.lease()?;
    let (check, _, points) = vault.check_catalog(None)?;
    let mut report = VerifyReport {
        check,
        ..VerifyReport::default()
    };
    report.damaged_files = name_damage(vault, &points, &damaged_ids(&report))?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// `verify`: the catalog half, then every byte of the chosen points (all if `points` is None).
pub fn verify(
    vault: &Vault,
    points: Option<Vec<PointRow>>,
    opts: &VerifyOptions,
    progress: &dyn VerifyProgress,
) -> VaultResult<VerifyReport> {
    let started = Instant::now();
    let _lease = vault.lease()?;
    let mut report = VerifyReport::default();
    let (reach, points) = match points {
        // Every point: the data half needs nothing from the catalog half, so they run at once.
        None => {
            let jobs = chosen_jobs(vault, None, opts, &mut report)?;
            let verifier = vault.pack_verifier();
            let root = vault.root().to_path_buf();
            let (checked, data) = std::thread::scope(|s| {
                let data = s.spawn(|| run_jobs(&root, &verifier, &jobs, opts, started, progress));
                let checked = vault.check_catalog(None);
                (checked, data.join())
            });
            let (check, reach, points) = checked?;
            report.check = check;
            let data =
                data.map_err(|_| VaultError::Threads("a verification thread panicked".into()))?;
            data?.apply(&mut report);
            (reach, points)
        }
        Some(points) => {
            let (check, reach, points) = vault.check_catalog(Some(&points))?;
            report.check = check;
            let jobs = chosen_jobs(vault, Some(&reach.chunks), opts, &mut report)?;
            let verifier = vault.pack_verifier();
            run_jobs(vault.root(), &verifier, &jobs, opts, started, progress)?.apply(&mut report);
            (reach, points)
        }
    };
    report.packs_left = report.packs_total - report.packs_verified;
    let (needed, unreferenced) = std::mem::take(&mut report.damaged_chunks)
        .into_iter()
        .partition(|b| ChunkId::from_hex(&b.id).is_some_and(|id| reach.chunks.contains(&id)));
    (report.damaged_chunks, report.unreferenced_damaged) = (needed, unreferenced);
    let ids = damaged_ids(&report);
    let all_bad = report
        .damaged_chunks
        .iter()
        .chain(&report.unreferenced_damaged);
    let bad: Vec<ChunkId> = all_bad.filter_map(|b| ChunkId::from_hex(&b.id)).collect();
    if !bad.is_empty() {
        vault.report_damage(&bad);
        // Marked now if no writer holds the vault; else the writer's next session marks them.
        if let Ok(lock) = vault.lock(false) {
            vault.mark_damage(&lock)?;
            report.marked = true;
        }
    }
    report.damaged_files = name_damage(vault, &points, &ids)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The packs to read (all holding a chunk of `only`, or every pack), sampled if asked.
fn chosen_jobs(
    vault: &Vault,
    only: Option<&HashSet<ChunkId>>,
    opts: &VerifyOptions,
    report: &mut VerifyReport,
) -> VaultResult<Vec<PackJob>> {
    let mut jobs = vault.verify_jobs(only)?;
    report.packs_total = jobs.len() as u64;
    if let Some(pct) = opts.sample {
        sample(&mut jobs, pct);
    }
    Ok(jobs)
}

/// What the data half found.
struct DataHalf {
    packs: u64,
    read: u64,
    chunks: u64,
    bad: Vec<BadChunk>,
    stopped: bool,
}

impl DataHalf {
    fn apply(self, report: &mut VerifyReport) {
        report.packs_verified = self.packs;
        report.bytes_read = self.read;
        report.chunks_verified = self.chunks;
        report.damaged_chunks = self.bad;
        report.stopped_in_time = self.stopped;
    }
}

/// Keeps a random `pct` % of the jobs (at least one), in their order.
fn sample(jobs: &mut Vec<PackJob>, pct: f64) {
    let keep = ((jobs.len() as f64 * pct / 100.0).ceil() as usize).clamp(1, jobs.len().max(1));
    let seed = crate::vault::random_hex(8);
    let mut keyed: Vec<(blake3::Hash, PackJob)> = jobs
        .drain(..)
        .map(|j| (blake3::hash(format!("{seed}{}", j.name).as_bytes()), j))
        .collect();
    keyed.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    keyed.truncate(keep);
    jobs.extend(keyed.into_iter().map(|(_, j)| j));
}

/// Reads the jobs on all cores, oldest verification first; records each pack's time as it ends.
fn run_jobs(
    root: &std::path::Path,
    verifier: &PackVerifier,
    jobs: &[PackJob],
    opts: &VerifyOptions,
    started: Instant,
    progress: &dyn VerifyProgress,
) -> VaultResult<DataHalf> {
    progress.start(jobs.len() as u64, jobs.iter().map(|j| j.size).sum());
    let state = Mutex::new(VerifyState::open(root)?);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let out = Mutex::new((0u64, 0u64, 0u64, Vec::<BadChunk>::new(), None));
    let threads = crate::threads::count(opts.threads, 1).min(jobs.len().max(1));
    let read_bytes = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs.len() || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let job = &jobs[i];
                    if out_of_time(opts, started, &read_bytes, job.size, threads) {
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    crate::testing::crash_point("verify-pack");
                    let checked = match verifier.verify(job) {
                        Ok(r) => r,
                        Err(e) => {
                            out.lock().expect("report lock").4.get_or_insert(e);
                            stop.store(true, Ordering::Relaxed);
                            return;
                        }
                    };
                    read_bytes.fetch_add(checked.read, Ordering::Relaxed);
                    let saved = state
                        .lock()
                        .expect("state lock")
                        .record(&job.name, crate::vault::now_ns());
                    let mut o = out.lock().expect("report lock");
                    o.0 += 1;
                    o.1 += checked.read;
                    o.2 += checked.chunks;
                    o.3.extend(checked.bad);
                    if let Err(e) = saved {
                        o.4.get_or_insert(e);
                    }
                    drop(o);
                    progress.pack_done(job.size);
                }
            });
        }
    });
    let (packs, read, chunks, bad, err) = out.into_inner().expect("report lock");
    if let Some(e) = err {
        return Err(e);
    }
    Ok(DataHalf {
        packs,
        read,
        chunks,
        bad,
        stopped: stop.load(Ordering::Relaxed),
    })
}

/// True if reading one more pack of `size` bytes would likely end after the time box, judged by
/// the throughput so far (all threads together).
fn out_of_time(
    opts: &VerifyOptions,
    started: Instant,
    read: &std::sync::atomic::AtomicU64,
    size: u64,
    threads: usize,
) -> bool {
    let Some(max) = opts.max_duration else {
        return false;
    };
    let spent = started.elapsed();
    if spent >= max {
        return true;
    }
    let done = read.load(Ordering::Relaxed);
    if done == 0 {
        return false;
    }
    let per_byte = spent.as_secs_f64() / done as f64;
    // One pack per thread is in flight at a time: this one takes `threads` times its share.
    spent.as_secs_f64() + per_byte * size as f64 * threads as f64 > max.as_secs_f64()
}

/// Every damaged or missing chunk and unreadable blob id the report names.
fn damaged_ids(report: &VerifyReport) -> HashSet<[u8; 32]> {
    let c = &report.check;
    let chunks = c
        .bad_chunks
        .iter()
        .chain(&report.damaged_chunks)
        .map(|b| &b.id);
    chunks
        .chain(&c.missing_chunks)
        .chain(c.broken.iter().map(|b| &b.id))
        .filter_map(|h| ChunkId::from_hex(h).map(|i| i.0))
        .collect()
}

/// Names every file of `points` that needs one of `bad` (chunk, list or tree ids), as the mount
/// shows it. Trees and lists are walked once each, however many points share them.
fn name_damage(
    vault: &Vault,
    points: &[PointRow],
    bad: &HashSet<[u8; 32]>,
) -> VaultResult<Vec<DamagedFile>> {
    if bad.is_empty() {
        return Ok(Vec::new());
    }
    let live: Vec<PointRow> = vault.points(None)?;
    let deleted: Vec<PointRow> = vault.deleted_points(None)?;
    let mut dirs: HashMap<String, String> = HashMap::new();
    for (p, n) in live.iter().zip(point_dir_names(&live)) {
        dirs.insert(p.id.clone(), format!("items/{}/{n}", p.item));
    }
    for (p, n) in deleted.iter().zip(point_dir_names(&deleted)) {
        dirs.insert(p.id.clone(), format!("deleted/{}/{n}", p.item));
    }
    let mut namer = Namer {
        reader: vault.reader(),
        bad,
        trees: HashMap::new(),
        lists: HashMap::new(),
    };
    let mut out = Vec::new();
    for p in points {
        let base = dirs.get(&p.id).cloned().unwrap_or_else(|| p.id.clone());
        let Ok(root) = crate::vault::format::decode_root(&p.root) else {
            out.push(damaged(p, base));
            continue;
        };
        for rel in namer.entry(&root)? {
            let path = if rel.is_empty() {
                base.clone()
            } else {
                format!("{base}/{}", String::from_utf8_lossy(&rel))
            };
            out.push(damaged(p, path));
        }
    }
    out.sort();
    Ok(out)
}

fn damaged(p: &PointRow, path: String) -> DamagedFile {
    DamagedFile {
        item: p.item.clone(),
        point: p.id.clone(),
        path,
    }
}

/// Finds the damaged paths under trees, memoised by tree and list id.
struct Namer<'a> {
    reader: std::sync::Arc<VaultReader>,
    bad: &'a HashSet<[u8; 32]>,
    trees: HashMap<TreeId, std::rc::Rc<Vec<Vec<u8>>>>,
    lists: HashMap<ListId, bool>,
}

impl Namer<'_> {
    /// Paths (relative to `e`; empty = `e` itself) that need damaged data.
    fn entry(&mut self, e: &Entry) -> VaultResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let own = match e.content {
            Content::None => false,
            Content::Chunk(id) => self.bad.contains(&id.0),
            Content::List(id) => self.list(id)?,
        };
        if own {
            out.push(Vec::new());
        }
        if let Some(t) = e.subtree {
            for rel in self.tree(t)?.iter() {
                out.push(rel.clone());
            }
        }
        Ok(out)
    }

    fn tree(&mut self, id: TreeId) -> VaultResult<std::rc::Rc<Vec<Vec<u8>>>> {
        if let Some(r) = self.trees.get(&id) {
            return Ok(r.clone());
        }
        let mut out = Vec::new();
        if self.bad.contains(&id.0) {
            out.push(Vec::new()); // the directory itself cannot be listed
        } else if let Ok(entries) = self.reader.tree(&id) {
            for child in &entries {
                for rel in self.entry(child)? {
                    let mut p = child.name.clone();
                    if !rel.is_empty() {
                        p.push(b'/');
                        p.extend_from_slice(&rel);
                    }
                    out.push(p);
                }
            }
        } else {
            out.push(Vec::new());
        }
        let r = std::rc::Rc::new(out);
        self.trees.insert(id, r.clone());
        Ok(r)
    }

    fn list(&mut self, id: ListId) -> VaultResult<bool> {
        if let Some(&b) = self.lists.get(&id) {
            return Ok(b);
        }
        let bad = self.bad.contains(&id.0)
            || match self.reader.list(&id) {
                Err(_) => true,
                Ok(extents) => {
                    let mut any = false;
                    for x in extents {
                        any |= match x {
                            Extent::Data { id, .. } => self.bad.contains(&id.0),
                            Extent::Sub { id, .. } => self.list(id)?,
                            Extent::Hole { .. } => false,
                        };
                    }
                    any
                }
            };
        self.lists.insert(id, bad);
        Ok(bad)
    }
}
