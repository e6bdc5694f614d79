//! What is known to be damaged, so a backup never points at it again.
//!
//! Readers (mount, restore, reprotect) never write the catalog; when one finds a chunk, tree or
//! content list that fails its check (wrong hash, cannot decompress, past the end of its pack,
//! pack missing), it appends the id to the journal `VAULT/damaged` (one line each, `O_APPEND`,
//! best effort: a read-only vault keeps no journal). The next write session gathers every known
//! damage — the journal, chunks marked bad in the catalog, and chunks of packs that are missing
//! or shorter than recorded — marks those chunks bad in its transaction, stores again whatever
//! the source still has, replaces damaged tree and list blobs with the good ones it builds, and
//! after its commit clears the journal.
//! Crash story: the journal only grows until a session commits; a lost line costs one more
//! failed read, never a wrong byte (every read is still checked).

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::format::{ChunkId, ListId, TreeId};

/// The journal's file name in the vault directory.
pub const JOURNAL: &str = "damaged";

/// An id found damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damaged {
    Chunk(ChunkId),
    Tree(TreeId),
    List(ListId),
}

impl Damaged {
    fn line(&self) -> String {
        match self {
            Damaged::Chunk(id) => format!("chunk {id}\n"),
            Damaged::Tree(id) => format!("tree {id}\n"),
            Damaged::List(id) => format!("list {id}\n"),
        }
    }

    fn parse(line: &str) -> Option<Damaged> {
        let (kind, hex) = line.split_once(' ')?;
        let hex = hex.trim();
        Some(match kind {
            "chunk" => Damaged::Chunk(ChunkId::from_hex(hex)?),
            "tree" => Damaged::Tree(TreeId::from_hex(hex)?),
            "list" => Damaged::List(ListId::from_hex(hex)?),
            _ => return None,
        })
    }
}

/// The damage journal of one vault.
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(root: &Path) -> Journal {
        Journal {
            path: root.join(JOURNAL),
        }
    }

    /// Records a damaged id (best effort: a failure to record is logged, never fatal).
    pub fn report(&self, d: Damaged) {
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| f.write_all(d.line().as_bytes()));
        if let Err(e) = r {
            log::debug!("cannot record damage in {}: {e}", self.path.display());
        }
    }

    /// Takes every id recorded so far (unreadable lines are skipped): the journal is moved aside
    /// to `damaged.taken`, so what readers record from now on goes to a new journal and is not
    /// lost when the taking session clears what it took. A taken journal left by a session that
    /// did not commit is taken again.
    pub fn take(&self) -> Vec<Damaged> {
        let taken = self.taken_path();
        if !taken.exists() {
            let _ = std::fs::rename(&self.path, &taken);
        } else if let Ok(more) = std::fs::read_to_string(&self.path) {
            // Both: append the new journal to the one already taken.
            let r = std::fs::OpenOptions::new()
                .append(true)
                .open(&taken)
                .and_then(|mut f| f.write_all(more.as_bytes()));
            if r.is_ok() {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        std::fs::read_to_string(&taken)
            .unwrap_or_default()
            .lines()
            .filter_map(Damaged::parse)
            .collect()
    }

    /// Forgets what was taken (after the session that took it committed).
    pub fn clear_taken(&self) {
        let _ = std::fs::remove_file(self.taken_path());
    }

    fn taken_path(&self) -> PathBuf {
        self.path.with_extension("taken")
    }
}

/// What a write session knows to be damaged, shared by its threads.
#[derive(Default)]
pub struct DamageSet {
    chunks: HashSet<ChunkId>,
    trees: Mutex<HashSet<TreeId>>,
    lists: Mutex<HashSet<ListId>>,
    /// Damaged ids the session stored again.
    repaired: Mutex<HashSet<[u8; 32]>>,
    /// Some catalog blob is known damaged: blobs already stored are checked before reuse.
    check_blobs: AtomicBool,
}

impl DamageSet {
    pub fn new(chunks: HashSet<ChunkId>, found: &[Damaged]) -> DamageSet {
        let set = DamageSet {
            chunks,
            ..Default::default()
        };
        let mut set = set;
        for d in found {
            match d {
                Damaged::Chunk(id) => {
                    set.chunks.insert(*id);
                }
                Damaged::Tree(id) => {
                    set.trees.get_mut().expect("fresh lock").insert(*id);
                }
                Damaged::List(id) => {
                    set.lists.get_mut().expect("fresh lock").insert(*id);
                }
            }
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
            && self.trees.lock().expect("damage lock").is_empty()
            && self.lists.lock().expect("damage lock").is_empty()
    }

    /// True if some chunk is known damaged (then cached file contents must be checked).
    pub fn has_chunks(&self) -> bool {
        !self.chunks.is_empty()
    }

    pub fn chunk(&self, id: &ChunkId) -> bool {
        self.chunks.contains(id)
    }

    /// Every chunk known damaged, for a repair.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        self.chunks.iter().copied().collect()
    }

    pub fn tree(&self, id: &TreeId) -> bool {
        self.trees.lock().expect("damage lock").contains(id)
    }

    pub fn list(&self, id: &ListId) -> bool {
        self.lists.lock().expect("damage lock").contains(id)
    }

    /// True (once) if tree `id` was reported damaged (the caller checks the stored blob).
    pub fn take_tree(&self, id: &TreeId) -> bool {
        self.trees.lock().expect("damage lock").remove(id)
    }

    /// True (once) if list `id` was reported damaged (the caller checks the stored blob).
    pub fn take_list(&self, id: &ListId) -> bool {
        self.lists.lock().expect("damage lock").remove(id)
    }

    /// Damaged blobs not repaired (yet): they stay in the journal.
    pub fn unrepaired_blobs(&self) -> Vec<Damaged> {
        let trees = self.trees.lock().expect("damage lock");
        let lists = self.lists.lock().expect("damage lock");
        trees
            .iter()
            .map(|t| Damaged::Tree(*t))
            .chain(lists.iter().map(|l| Damaged::List(*l)))
            .collect()
    }

    /// A tree found damaged during the session (by the files cache reading it). Trees below it
    /// were not read, so from now on every tree already stored is checked before reuse.
    pub fn add_tree(&self, id: TreeId) {
        self.trees.lock().expect("damage lock").insert(id);
        self.check_blobs.store(true, Ordering::SeqCst);
    }

    /// A list found damaged during the session.
    pub fn add_list(&self, id: ListId) {
        self.lists.lock().expect("damage lock").insert(id);
        self.check_blobs.store(true, Ordering::SeqCst);
    }

    /// True if stored blobs must be checked before a new point reuses them.
    pub fn check_blobs(&self) -> bool {
        self.check_blobs.load(Ordering::SeqCst)
    }

    /// Notes that a damaged id was stored again.
    pub fn repaired(&self, id: [u8; 32]) {
        self.repaired.lock().expect("damage lock").insert(id);
    }

    pub fn repaired_count(&self) -> u64 {
        self.repaired.lock().expect("damage lock").len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_round_trips_and_skips_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        assert!(j.take().is_empty());
        let c = Damaged::Chunk(ChunkId::of(b"c"));
        let t = Damaged::Tree(TreeId::of(b"t"));
        j.report(c);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap()
            .write_all(b"nonsense line\nchunk 12\n")
            .unwrap();
        j.report(t);
        assert_eq!(j.take(), vec![c, t]);
        // Recorded while the session runs: kept for the next one.
        let l = Damaged::List(ListId::of(b"l"));
        j.report(l);
        j.clear_taken();
        assert_eq!(j.take(), vec![l]);
        j.clear_taken();
        assert!(j.take().is_empty());
    }
}
