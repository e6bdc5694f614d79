//! Rebuilding the chunk table from packs: nothing that was written is ever lost.
//!
//! Packs describe themselves (every record carries its chunks' ids and lengths, checked by a
//! header hash), so a pack the catalog does not name — quarantined in `packs/orphaned/` by a
//! recovery after a lost or older `vault.db`, or left in `packs/` — can be put back: it is moved
//! back into `packs/` and its chunks are registered, so the next backups deduplicate against
//! them instead of storing them again. Points whose catalog rows were lost cannot be rebuilt
//! from packs (their trees live in the catalog); their data is kept.
//! Every pack is fsync'd before the transaction that names it (the catalog's invariant); a chunk
//! already known only as bad is registered from a pack only after its bytes check out; a pack
//! with no readable record stays in quarantine.
//! Crash story: one transaction registers the packs already moved back; a pack moved back but
//! not registered is found by the next run (or quarantined again by the next writer, harmlessly).

use std::collections::HashSet;

use super::catalog::ChunkLoc;
use super::packs;
use super::store::{LocalStore, ORPHANED_DIR, PackStore};
use super::{Vault, VaultError, VaultResult, WriteLock, io_err, now_ns};

/// What `rebuild_index` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RebuildReport {
    /// Packs moved back from `packs/orphaned/`.
    pub unquarantined: Vec<String>,
    /// Packs registered in the catalog.
    pub packs: u64,
    /// Chunks registered (not known before, or known only as bad).
    pub chunks: u64,
    /// Packs that could not be read in full (their readable records were registered).
    pub damaged: Vec<String>,
}

impl Vault {
    /// Registers every pack of `packs/` and `packs/orphaned/` the catalog does not name.
    pub fn rebuild_index(&self, _lock: &WriteLock) -> VaultResult<RebuildReport> {
        let mut report = RebuildReport::default();
        let dir = self.root().join("packs");
        let orphaned = LocalStore::new(dir.join(ORPHANED_DIR));
        if dir.join(ORPHANED_DIR).is_dir() {
            for p in orphaned.list().map_err(io_err(&dir))? {
                let (from, to) = (
                    dir.join(ORPHANED_DIR).join(format!("{}.pack", p.name)),
                    dir.join(format!("{}.pack", p.name)),
                );
                if to.exists() || !has_records(&from) {
                    continue; // a pack of that name is back already, or nothing to register
                }
                std::fs::rename(&from, &to).map_err(io_err(&from))?;
                report.unquarantined.push(p.name);
            }
            super::sync_dir(&dir)?;
        }
        let known: HashSet<String> = self.catalog.pack_names()?.into_iter().collect();
        let store = self.store();
        let unknown: Vec<_> = store
            .list()
            .map_err(io_err(&dir))?
            .into_iter()
            .filter(|p| !known.contains(&p.name))
            .collect();
        self.catalog.begin()?;
        let r = (|| {
            // Rows naming packs that are gone (a catalog older than a gc that moved their
            // chunks) are bad: the copies found here replace them.
            super::write::mark_missing_packs(&self.catalog, &*store)?;
            for p in &unknown {
                let mut data = vec![0u8; p.size as usize];
                store
                    .read_at(&p.name, 0, &mut data)
                    .map_err(io_err(&dir.join(&p.name)))?;
                let (chunks, err) = packs::scan(&data);
                if err.is_some() {
                    report.damaged.push(p.name.clone());
                }
                if chunks.is_empty() {
                    continue;
                }
                // Durable before the catalog names it (a killed writer's pack never was).
                let path = dir.join(format!("{}.pack", p.name));
                std::fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err(&path))?;
                let pack = self.catalog.insert_pack(&p.name, p.size, now_ns())?;
                report.packs += 1;
                for c in chunks {
                    if self.catalog.has_good_chunk(&c.id)? {
                        continue;
                    }
                    // Replacing a row known bad: only with bytes that check out.
                    if self.catalog.chunk(&c.id)?.is_some() && !chunk_checks_out(&data, &c) {
                        continue;
                    }
                    let loc = ChunkLoc {
                        pack,
                        record: c.record,
                        offset: c.offset,
                        len: c.len,
                        bad: false,
                    };
                    self.catalog.insert_chunk(&c.id, &loc)?;
                    report.chunks += 1;
                }
            }
            Ok::<(), VaultError>(())
        })();
        match r {
            Ok(()) => {
                self.catalog.commit()?;
                // The lost commits are dealt with: stop reporting them.
                let have = self
                    .catalog
                    .meta("commit_seq")?
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                super::write_commit_seq(self.root(), have);
            }
            Err(e) => {
                self.catalog.rollback();
                return Err(e);
            }
        }
        Ok(report)
    }
}

/// True if the pack at `path` holds at least one readable record.
fn has_records(path: &std::path::Path) -> bool {
    std::fs::read(path).is_ok_and(|d| !packs::scan(&d).0.is_empty())
}

/// True if the chunk's record decompresses and the chunk's bytes hash to its id.
fn chunk_checks_out(pack: &[u8], c: &packs::ScannedChunk) -> bool {
    let start = c.record.offset as usize;
    let Some(stored) = pack.get(start..start + c.record.stored_len as usize) else {
        return false;
    };
    let plain = match c.record.codec {
        packs::Codec::Raw => stored.to_vec(),
        packs::Codec::Zstd => match zstd::bulk::decompress(stored, c.record.plain_len as usize) {
            Ok(p) => p,
            Err(_) => return false,
        },
    };
    plain
        .get(c.offset as usize..(c.offset + c.len) as usize)
        .is_some_and(|b| super::ChunkId::of(b) == c.id)
}
