//! Repair from a replica: damaged or missing data of this vault fetched back from a second copy.
//!
//! Owns `Vault::repair_from`. Under this vault's writer lock and the replica's lease: the
//! catalog check finds what points need that this vault cannot give (trees and content lists
//! that fail their check or are gone, chunks with no row or in a pack it no longer names); a
//! write session adds every chunk marked bad (by `verify`, a reader's damage journal, or a pack
//! that is missing or short). Each is read from the replica through its ordinary checked read
//! path (a chunk's bytes must hash to its id, a blob must decode and hash to its id), then
//! stored as new data of this vault: chunks into new packs (a chunk that had a record of its
//! own, like a disk block, gets one again), trees and lists replacing the damaged blobs.
//! Before all that, a point whose root cannot be followed (it does not decode, or names what is
//! gone) takes the root of the same point in a replica of this vault, if whole there.
//! Whatever the replica lacks too, or holds damaged, is reported, never guessed.
//! Crash story: the roots are one transaction; each level of trees and lists, then the chunks,
//! is one write session: nothing changes before its single commit, which names the new packs
//! and points the rows at them. A kill before it leaves packs the catalog does not name, which
//! the next writer quarantines; the next repair starts over from what is still damaged.

use std::collections::HashSet;
use std::os::unix::fs::DirBuilderExt;
use std::time::Instant;

use super::format::{ChunkId, ListId, TreeId};
use super::write::SinkMode;
use super::{SessionOptions, Vault, VaultResult, WriteLock};

/// Something this vault needs that the replica could not give.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Unrepaired {
    /// "chunk", "tree" or "content list".
    pub what: &'static str,
    pub id: String,
    pub detail: String,
}

/// What a repair did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairReport {
    pub from: String,
    /// Damaged or missing chunks stored again from the replica.
    pub chunks_repaired: u64,
    /// Their plain bytes.
    pub bytes_repaired: u64,
    /// Trees and content lists stored again from the replica.
    pub blobs_repaired: u64,
    /// What the replica could not give (a failure when a point needs it).
    pub unrepaired: Vec<Unrepaired>,
    /// How many of `unrepaired` some live or soft-deleted point needs.
    pub unrepaired_needed: u64,
    pub seconds: f64,
}

/// A blob a point needs that this vault cannot give.
enum Blob {
    Tree(TreeId),
    List(ListId),
}

impl Vault {
    /// Fetches every damaged or missing chunk, tree and content list from `replica` (see the
    /// module header). Holding `lock` proves this process is this vault's writer.
    pub fn repair_from(&self, replica: &Vault, lock: &WriteLock) -> VaultResult<RepairReport> {
        let started = Instant::now();
        let _lease = replica.lease()?;
        let mut report = RepairReport {
            from: replica.root().display().to_string(),
            ..RepairReport::default()
        };
        self.repair_roots(replica, &mut report)?;
        // A damaged tree hides the trees below it from the check: repair level by level until
        // the check finds nothing new.
        let mut tried = HashSet::new();
        let (check, reach) = loop {
            let (check, reach, _) = self.check_catalog(None)?;
            let blobs: Vec<Blob> = check
                .broken
                .iter()
                .filter(|b| tried.insert(b.id.clone()))
                .filter_map(|b| match b.what {
                    "tree" => TreeId::from_hex(&b.id).map(Blob::Tree),
                    "content list" => ListId::from_hex(&b.id).map(Blob::List),
                    _ => None,
                })
                .collect();
            if blobs.is_empty() {
                break (check, reach);
            }
            let mut session = self.begin_write(lock, &SessionOptions::default())?;
            for blob in &blobs {
                self.repair_blob(replica, &session, blob, &mut report)?;
            }
            session.commit_with(|_, _| Ok(()))?;
        };
        let mut session = self.begin_write(lock, &SessionOptions::default())?;
        let mut chunks: Vec<ChunkId> = session.damage().chunk_ids();
        // The check's bad chunks add those whose pack the catalog no longer names (a lost
        // pack row marks nothing bad).
        chunks.extend(
            check
                .missing_chunks
                .iter()
                .chain(check.bad_chunks.iter().map(|b| &b.id))
                .filter_map(|h| ChunkId::from_hex(h)),
        );
        let chunks: Vec<ChunkId> = {
            let mut seen = HashSet::new();
            chunks.into_iter().filter(|c| seen.insert(*c)).collect()
        };
        self.repair_chunks(replica, &session, &chunks, &mut report)?;
        session.commit_with(|_, _| Ok(()))?;
        for b in &check.broken {
            if !report.unrepaired.iter().any(|u| u.id == b.id) {
                report.unrepaired.push(Unrepaired {
                    what: b.what,
                    id: b.id.clone(),
                    detail: b.detail.clone(),
                });
            }
        }
        report.unrepaired_needed = report
            .unrepaired
            .iter()
            .filter(|u| {
                u.what != "chunk"
                    || ChunkId::from_hex(&u.id).is_some_and(|id| reach.chunks.contains(&id))
            })
            .count() as u64;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Makes `packs/` again, empty, if it is gone with every pack in it (before taking the
    /// writer lock, whose recovery lists it), so that a repair gives them all back.
    pub fn restore_packs_dir(&self) -> VaultResult<()> {
        let packs = self.packs_dir();
        if packs.symlink_metadata().is_err() {
            match std::fs::DirBuilder::new()
                .mode(super::DIR_MODE)
                .create(&packs)
            {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(super::io_err(&packs)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Points whose root this vault cannot follow (it does not decode, or names a tree, list
    /// or chunk that is damaged or gone) take the root the same point has in the replica, if
    /// that one is whole there and differs: a root is catalog data like a tree, but has no id
    /// to check it by, so only a replica of this vault (or a copy of it) is asked.
    fn repair_roots(&self, replica: &Vault, report: &mut RepairReport) -> VaultResult<()> {
        if replica.id() != self.id() && replica.replica_of()?.as_deref() != Some(self.id()) {
            return Ok(());
        }
        let theirs: std::collections::HashMap<String, Vec<u8>> = replica
            .catalog
            .points_after(0)?
            .into_iter()
            .map(|p| (p.id, p.root))
            .collect();
        let mut fixed = Vec::new();
        for p in self.catalog.points_after(0)? {
            if let Some(root) = theirs.get(&p.id)
                && *root != p.root
                && !root_whole(&self.catalog, &p.root)?
                && root_whole(&replica.catalog, root)?
            {
                fixed.push((p.id, root.clone()));
            }
        }
        if !fixed.is_empty() {
            let seq = self.transaction(|c| {
                for (pid, root) in &fixed {
                    c.set_point_root(pid, root)?;
                }
                c.bump_commit_seq()
            })?;
            super::note_commit_seq(self.root(), seq);
            report.blobs_repaired += fixed.len() as u64;
        }
        Ok(())
    }

    /// Stores tree or list `blob` again from the replica's checked copy.
    fn repair_blob(
        &self,
        replica: &Vault,
        session: &super::WriteSession<'_>,
        blob: &Blob,
        report: &mut RepairReport,
    ) -> VaultResult<()> {
        let reader = replica.reader();
        let (what, id, got) = match blob {
            Blob::Tree(id) => {
                session.damage().add_tree(*id);
                let got = match reader.tree(id) {
                    Ok(entries) => session.put_tree(&entries).map(|n| n == *id),
                    Err(e) => Err(e),
                };
                ("tree", id.to_hex(), got)
            }
            Blob::List(id) => {
                session.damage().add_list(*id);
                let got = match reader.list(id) {
                    Ok(extents) => session.put_list(&extents).map(|n| n == *id),
                    Err(e) => Err(e),
                };
                ("content list", id.to_hex(), got)
            }
        };
        match got {
            Ok(true) => report.blobs_repaired += 1,
            Ok(false) => report.unrepaired.push(Unrepaired {
                what,
                id,
                detail: "the replica's copy encodes differently".into(),
            }),
            Err(e) if e.is_damage() => report.unrepaired.push(Unrepaired {
                what,
                id,
                detail: format!("the replica cannot give it: {e}"),
            }),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Stores `chunks` again from the replica's checked copies.
    fn repair_chunks(
        &self,
        replica: &Vault,
        session: &super::WriteSession<'_>,
        chunks: &[ChunkId],
        report: &mut RepairReport,
    ) -> VaultResult<()> {
        let reader = replica.reader();
        let mut alone = session.sink(SinkMode::Alone);
        let mut grouped = session.sink(SinkMode::Group);
        let mut image = session.sink(SinkMode::Image);
        for id in &in_replica_order(replica, chunks)? {
            let bytes = match reader.read_chunk(id) {
                Ok(b) => b,
                Err(e) if e.is_damage() => {
                    report.unrepaired.push(Unrepaired {
                        what: "chunk",
                        id: id.to_hex(),
                        detail: format!("the replica cannot give it: {e}"),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let data: &[u8] = &bytes;
            // A chunk that had a record of its own (a disk block) gets one again; a block of an
            // image frame goes into a frame again.
            let sink = match self.catalog.chunk(id)? {
                Some(l) if l.record.plain_len == l.len => &mut alone,
                Some(l) if super::write::in_image_frame(l.record.plain_len, l.len) => &mut image,
                _ => &mut grouped,
            };
            sink.relocate(*id, data)?;
            report.chunks_repaired += 1;
            report.bytes_repaired += data.len() as u64;
        }
        alone.flush()?;
        image.flush()?;
        grouped.flush()
    }
}

/// `chunks` in the order the replica stores them (those it lacks last), so the chunks of one
/// record are read together and each record is decompressed once.
fn in_replica_order(replica: &Vault, chunks: &[ChunkId]) -> VaultResult<Vec<ChunkId>> {
    let mut keyed = Vec::with_capacity(chunks.len());
    for id in chunks {
        let at = replica
            .catalog
            .chunk(id)?
            .map(|l| (l.pack, l.record.offset, l.offset));
        keyed.push((at.is_none(), at, *id));
    }
    keyed.sort_unstable();
    Ok(keyed.into_iter().map(|(_, _, id)| id).collect())
}

/// True if point root `root` decodes and what it names directly is in catalog `c`.
fn root_whole(c: &super::catalog::Catalog, root: &[u8]) -> VaultResult<bool> {
    let Ok(e) = super::format::decode_root(root) else {
        return Ok(false);
    };
    let found = |r: VaultResult<()>| match r {
        Ok(()) => Ok(true),
        Err(e) if e.is_damage() => Ok(false),
        Err(e) => Err(e),
    };
    let content = match e.content {
        super::format::Content::None => true,
        super::format::Content::Chunk(id) => c.chunk(&id)?.is_some(),
        super::format::Content::List(id) => found(c.list(&id).map(|_| ()))?,
    };
    let tree = match e.subtree {
        Some(t) => found(c.tree(&t).map(|_| ()))?,
        None => true,
    };
    Ok(content && tree)
}
