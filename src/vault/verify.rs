//! Checking a vault: the catalog against itself and its packs (`check`), and every stored byte
//! against its id (`scrub_pack`, driven by `maintenance::verify`).
//!
//! Owns the catalog check (every point's blobs decode and hash to their ids, every chunk a point
//! needs has a good row whose pack exists and is long enough), the list of packs to read in
//! verification order, and the verification state: when each pack was last read in full, kept in
//! `VAULT/verify.db`, apart from the catalog so a verification never waits for a backup's
//! transaction (nor holds one up). Losing that file only means the next verification starts from
//! the packs it cannot date. Damaged chunks found are written to the damage journal, which the
//! next write session (or `mark_damage`, when the writer lock is free) turns into `bad` marks;
//! backups then store those chunks again from their sources.
//! Crash story: verification changes the catalog only through a write session; verify.db is
//! written one pack at a time (a killed run keeps what it finished).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{Connection, params};

use super::catalog::ChunkRow;
use super::damage::{Damaged, Journal};
use super::reach::{Broken, Reach};
use super::scrub::scrub_pack;
use super::{ChunkId, PointRow, Vault, VaultResult, WriteLock, io_err};

/// A pack to verify: its chunk rows (`None`: all of them, fetched by the thread that reads the
/// pack, so reading starts at once) and when it was last verified (ns).
#[derive(Clone, Debug)]
pub struct PackJob {
    pub id: i64,
    pub name: String,
    pub size: u64,
    pub rows: Option<Vec<ChunkRow>>,
    pub last_verified: Option<i64>,
}

/// A chunk whose bytes are not what its id says (or cannot be read).
#[derive(Clone, Debug, serde::Serialize)]
pub struct BadChunk {
    pub id: String,
    pub pack: String,
    pub detail: String,
}

/// What the catalog check found: each is a reason for `check` to fail.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CatalogCheck {
    pub points: u64,
    pub trees: u64,
    pub lists: u64,
    pub chunks: u64,
    pub packs: u64,
    /// Blobs points need that cannot be read.
    pub broken: Vec<Broken>,
    /// Chunks points need that the catalog has no row for.
    pub missing_chunks: Vec<String>,
    /// Chunks points need that are marked bad, or whose pack is missing or too short.
    pub bad_chunks: Vec<BadChunk>,
    /// Packs the catalog names that are missing or shorter than it says (a failure only through
    /// `bad_chunks`, when a point needs a chunk in one; otherwise `coffre gc` forgets them).
    pub bad_packs: Vec<String>,
    /// Pack files the catalog does not name (the next backup quarantines them).
    pub unknown_packs: Vec<String>,
}

impl CatalogCheck {
    pub fn is_clean(&self) -> bool {
        self.broken.is_empty() && self.missing_chunks.is_empty() && self.bad_chunks.is_empty()
    }
}

impl Vault {
    /// Live and soft-deleted points: everything verification and gc care for.
    pub fn all_points(&self) -> VaultResult<Vec<PointRow>> {
        self.catalog.points_after(0)
    }

    /// The catalog check over `points` (every point, live or soft-deleted, if `None`), on one
    /// snapshot of the catalog, with the pack files listed after it: hold a lease, so a pack the
    /// snapshot names is not deleted by a gc meanwhile. Reads only the catalog and the listing.
    pub fn check_catalog(
        &self,
        points: Option<&[PointRow]>,
    ) -> VaultResult<(CatalogCheck, Reach, Vec<PointRow>)> {
        self.catalog.begin_read()?;
        let r = self.check_snapshot(points);
        self.catalog.rollback();
        r
    }

    fn check_snapshot(
        &self,
        points: Option<&[PointRow]>,
    ) -> VaultResult<(CatalogCheck, Reach, Vec<PointRow>)> {
        let points = match points {
            Some(p) => p.to_vec(),
            None => self.catalog.points_after(0)?,
        };
        let points = &points[..];
        let mut reach = Reach::default();
        for p in points {
            reach.add_point(&self.catalog, p)?;
        }
        let all_packs = self.catalog.packs()?;
        let names: HashMap<i64, (String, u64)> = all_packs
            .iter()
            .map(|(i, n, s)| (*i, (n.clone(), *s)))
            .collect();
        let packs = self.catalog.live_packs()?;
        let mut out = CatalogCheck {
            points: points.len() as u64,
            trees: reach.trees.len() as u64,
            lists: reach.lists.len() as u64,
            chunks: reach.chunks.len() as u64,
            packs: packs.len() as u64,
            broken: reach.broken.clone(),
            ..CatalogCheck::default()
        };
        let rows = self.catalog.chunk_rows()?;
        // Listed after every catalog read: a pack the snapshot names exists unless damaged.
        let dir = self.packs_dir();
        let listed: HashMap<String, u64> = self
            .store
            .list()
            .map_err(io_err(&dir))?
            .into_iter()
            .map(|p| (p.name, p.size))
            .collect();
        for (_, name, size) in &packs {
            if listed.get(name).is_none_or(|have| have < size) {
                out.bad_packs.push(name.clone());
            }
        }
        let named: HashSet<&String> = all_packs.iter().map(|p| &p.1).collect();
        out.unknown_packs = listed
            .keys()
            .filter(|n| !named.contains(n))
            .cloned()
            .collect();
        out.unknown_packs.sort();
        let mut seen = HashSet::new();
        for row in rows {
            if !reach.chunks.contains(&row.id) {
                continue;
            }
            seen.insert(row.id);
            let (pack, _) = names
                .get(&row.loc.pack)
                .cloned()
                .unwrap_or_else(|| (format!("#{}", row.loc.pack), 0));
            let end = row.loc.record.offset + row.loc.record.stored_len as u64;
            let detail = if row.loc.bad {
                Some("marked bad by an earlier read or verification".to_string())
            } else if !listed.contains_key(&pack) {
                Some(format!("its pack {pack} is missing"))
            } else if listed[&pack] < end {
                Some(format!("its record lies past the end of pack {pack}"))
            } else {
                None
            };
            if let Some(detail) = detail {
                out.bad_chunks.push(BadChunk {
                    id: row.id.to_hex(),
                    pack,
                    detail,
                });
            }
        }
        out.missing_chunks = reach
            .chunks
            .iter()
            .filter(|id| !seen.contains(*id))
            .map(|id| id.to_hex())
            .collect();
        out.missing_chunks.sort();
        Ok((out, reach, points.to_vec()))
    }

    /// Every named pack holding a chunk of `only` (all packs if `None`), least recently verified
    /// first (never verified first of all), with its chunk rows.
    pub fn verify_jobs(&self, only: Option<&HashSet<ChunkId>>) -> VaultResult<Vec<PackJob>> {
        let state = VerifyState::open(self.root())?;
        let mut rows: Option<HashMap<i64, Vec<ChunkRow>>> = None;
        if let Some(only) = only {
            let mut by_pack: HashMap<i64, Vec<ChunkRow>> = HashMap::new();
            for r in self.catalog.chunk_rows()? {
                if only.contains(&r.id) {
                    by_pack.entry(r.loc.pack).or_default().push(r);
                }
            }
            rows = Some(by_pack);
        }
        let mut jobs: Vec<PackJob> = Vec::new();
        for (id, name, size) in self.catalog.live_packs()? {
            let rows = match rows.as_mut() {
                Some(by_pack) => match by_pack.remove(&id) {
                    Some(r) => Some(r),
                    None => continue,
                },
                None => None,
            };
            let last_verified = state.last(&name)?;
            jobs.push(PackJob {
                id,
                name,
                size,
                rows,
                last_verified,
            });
        }
        jobs.sort_by(|a, b| (a.last_verified, &a.name).cmp(&(b.last_verified, &b.name)));
        Ok(jobs)
    }

    /// What reads packs for a verification, shareable by threads.
    pub fn pack_verifier(&self) -> PackVerifier {
        PackVerifier {
            store: self.store(),
            pool: self.reader.pool(),
        }
    }

    /// Records damaged chunks in the damage journal (read by the next write session).
    pub fn report_damage(&self, ids: &[ChunkId]) {
        let journal = Journal::new(self.root());
        for id in ids {
            journal.report(Damaged::Chunk(*id));
        }
    }

    /// Marks every chunk in the damage journal bad in the catalog now (one empty write session),
    /// so backups store them again from their sources.
    pub fn mark_damage(&self, lock: &WriteLock) -> VaultResult<()> {
        let mut s = self.begin_write(lock, &super::SessionOptions::default())?;
        s.commit_with(|_, _| Ok(()))
    }
}

/// Reads packs and checks their chunks; `Send + Sync`.
pub struct PackVerifier {
    store: std::sync::Arc<dyn super::store::PackStore>,
    pool: std::sync::Arc<super::catalog::CatalogPool>,
}

/// What reading one pack found.
pub struct PackChecked {
    pub bad: Vec<BadChunk>,
    /// Bytes read.
    pub read: u64,
    /// Chunks checked.
    pub chunks: u64,
}

impl PackVerifier {
    /// Reads one pack and checks every chunk of the job. Errors that say nothing about the
    /// data (no permission, too many open files) are returned.
    pub fn verify(&self, job: &PackJob) -> VaultResult<PackChecked> {
        let mut rows = match &job.rows {
            Some(r) => r.clone(),
            None => self.pool.with(|c| c.pack_chunk_rows(job.id))?,
        };
        let chunks = rows.len() as u64;
        let mut bad = Vec::new();
        let read = scrub_pack(&*self.store, &job.name, &mut rows, |row, r| {
            if let Err(detail) = r {
                bad.push(BadChunk {
                    id: row.id.to_hex(),
                    pack: job.name.clone(),
                    detail,
                });
            }
        })
        .map_err(|e| super::VaultError::Io {
            path: format!("{}/{}.pack", self.store.describe(), job.name).into(),
            source: e,
        })?
        .read;
        Ok(PackChecked { bad, read, chunks })
    }
}

/// When each pack was last verified in full: `VAULT/verify.db`.
pub struct VerifyState {
    conn: Connection,
}

impl VerifyState {
    /// Opens (creating) `VAULT/verify.db`; on a vault this process cannot write (read-only
    /// media, another user's replica), a state in memory: every pack counts as never verified.
    pub fn open(root: &Path) -> VaultResult<VerifyState> {
        let path = root.join("verify.db");
        let conn = match Self::open_file(&path) {
            Ok(c) => c,
            Err(e) => {
                log::debug!("verification times kept in memory only: {e}");
                Connection::open_in_memory()?
            }
        };
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS verified(pack TEXT PRIMARY KEY, at INTEGER NOT NULL)",
        )?;
        Ok(VerifyState { conn })
    }

    fn open_file(path: &Path) -> VaultResult<Connection> {
        // Private like every vault file, whatever the umask.
        std::fs::File::options()
            .create(true)
            .append(true)
            .mode(super::FILE_MODE)
            .open(path)
            .map_err(io_err(path))?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS verified(pack TEXT PRIMARY KEY, at INTEGER NOT NULL)",
        )?;
        Ok(conn)
    }

    pub fn last(&self, pack: &str) -> VaultResult<Option<i64>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .prepare_cached("SELECT at FROM verified WHERE pack = ?1")?
            .query_row([pack], |r| r.get(0))
            .optional()?)
    }

    /// Records that `pack` was read in full at `at` (ns).
    pub fn record(&self, pack: &str, at: i64) -> VaultResult<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO verified(pack, at) VALUES (?1, ?2)")?
            .execute(params![pack, at])?;
        Ok(())
    }
}
