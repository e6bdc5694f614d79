//! The read side of a vault, shared by every thread of a process: trees, content lists, chunks,
//! items and points, and a `ContentReader` for any file or image of a point.
//!
//! `VaultReader` owns a pool of catalog connections (SQLite WAL readers: they see the last
//! committed state and never block a writer) and the `ChunkSource`. It is `Send + Sync` and lives
//! behind an `Arc`, so the mount, restore workers and backup walkers share one. It never writes.

use std::path::PathBuf;
use std::sync::Arc;

use super::catalog::{CatalogPool, CatalogTotals, PointRow};
use super::chunks::{ChunkBytes, ChunkSource};
use super::content::ContentReader;
use super::damage::{Damaged, Journal};
use super::format::{self, ChunkId, Entry, Extent, ListId, TreeId, check_name};
use super::model::Item;
use super::store::PackStore;
use super::{VaultError, VaultResult};

/// Read access to a vault for any number of threads.
pub struct VaultReader {
    root: PathBuf,
    pool: Arc<CatalogPool>,
    chunks: ChunkSource,
    journal: Journal,
}

impl VaultReader {
    pub(super) fn new(
        root: PathBuf,
        pool: Arc<CatalogPool>,
        store: Arc<dyn PackStore>,
        cache_bytes: usize,
    ) -> VaultReader {
        VaultReader {
            journal: Journal::new(&root),
            root,
            chunks: ChunkSource::new(store, pool.clone(), cache_bytes),
            pool,
        }
    }

    /// The vault directory.
    /// The catalog connections this reader shares (verification fetches rows through them).
    pub(super) fn pool(&self) -> Arc<CatalogPool> {
        self.pool.clone()
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// A directory listing, sorted by name.
    pub fn tree(&self, id: &TreeId) -> VaultResult<Vec<Entry>> {
        self.pool
            .with(|c| c.tree(id))
            .inspect_err(|e| self.note(e, Damaged::Tree(*id)))
    }

    /// A content list.
    pub fn list(&self, id: &ListId) -> VaultResult<Vec<Extent>> {
        self.pool
            .with(|c| c.list(id))
            .inspect_err(|e| self.note(e, Damaged::List(*id)))
    }

    /// The verified bytes of a chunk: the only way to read chunk data.
    pub fn read_chunk(&self, id: &ChunkId) -> VaultResult<ChunkBytes> {
        self.chunks.read_chunk(id).inspect_err(|e| {
            for c in self.chunks.covered_by(id, e) {
                self.note(e, Damaged::Chunk(c));
            }
        })
    }

    /// Records in the damage journal an id whose data failed its check, so the next backup
    /// stores it again (see `vault::damage`).
    fn note(&self, e: &VaultError, what: Damaged) {
        if matches!(
            e,
            VaultError::BadChunk { .. }
                | VaultError::Missing { .. }
                | VaultError::Damaged { .. }
                | VaultError::Format(_)
        ) {
            self.journal.report(what);
        }
    }

    /// A seekable reader over a regular file's (or image's) content.
    pub fn content(self: &Arc<Self>, entry: &Entry) -> VaultResult<ContentReader> {
        ContentReader::new(self.clone(), entry)
    }

    pub fn items(&self) -> VaultResult<Vec<Item>> {
        self.pool.with(|c| c.items())
    }

    /// Live points, oldest first; of one item if given.
    pub fn points(&self, item: Option<i64>) -> VaultResult<Vec<PointRow>> {
        self.pool.with(|c| c.points(item))
    }

    /// Soft-deleted points of every item, oldest first (`deleted_at` and `deleted_by` set): the
    /// mount shows them read-only under `deleted/<item>/<point>/`. Their trees and chunks stay
    /// readable until they are purged.
    pub fn deleted_points(&self) -> VaultResult<Vec<PointRow>> {
        self.pool.with(|c| c.deleted_points(None))
    }

    /// A cheap fingerprint of the points (live and soft-deleted) and items, to notice additions and removals.
    pub fn points_signature(&self) -> VaultResult<(i64, i64, i64)> {
        self.pool.with(|c| c.points_signature())
    }

    pub fn totals(&self) -> VaultResult<CatalogTotals> {
        self.pool.with(|c| c.totals())
    }

    /// The root directory entry of a point.
    pub fn root_entry(&self, point: &PointRow) -> VaultResult<Entry> {
        Ok(format::decode_root(&point.root)?)
    }

    /// The entry at `path` (slash-separated, relative to `root`), or `None` if there is none.
    /// `.` and empty components are skipped; a component that is not a safe name matches nothing.
    pub fn lookup(&self, root: &Entry, path: &[u8]) -> VaultResult<Option<Entry>> {
        let mut cur = root.clone();
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            if check_name(comp).is_err() {
                return Ok(None);
            }
            let Some(tree) = cur.subtree else {
                return Ok(None);
            };
            let entries = self.tree(&tree)?;
            match entries.binary_search_by(|e| e.name.as_slice().cmp(comp)) {
                Ok(i) => cur = entries[i].clone(),
                Err(_) => return Ok(None),
            }
        }
        Ok(Some(cur))
    }
}
