//! Reachability: the trees, content lists and chunks that recovery points need.
//!
//! Owns the walk from points' roots through directory trees and (nested) content lists, each
//! unique blob decoded once. Garbage collection marks with it (whatever is not reached is
//! garbage); `check` and `verify` use it to find what a point needs that the catalog cannot give.
//! A blob that cannot be read is recorded in `broken`, never skipped silently: a collection
//! deletes nothing while any is. Pure reads: no crash story.

use std::collections::HashSet;

use super::catalog::{Catalog, PointRow};
use super::format::{self, ChunkId, Content, Entry, Extent, ListId, TreeId};
use super::{VaultError, VaultResult};

/// A blob a point needs that the catalog cannot give.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Broken {
    /// "point", "tree" or "content list".
    pub what: &'static str,
    pub id: String,
    pub detail: String,
}

/// Everything the walked points need.
#[derive(Default)]
pub struct Reach {
    pub trees: HashSet<TreeId>,
    pub lists: HashSet<ListId>,
    pub chunks: HashSet<ChunkId>,
    pub broken: Vec<Broken>,
}

/// True for errors that mean "this blob is damaged or gone" (as opposed to "cannot read the
/// catalog at all", which stops the walk).
fn is_damage(e: &VaultError) -> bool {
    e.is_damage() && !matches!(e, VaultError::BadChunk { .. })
}

impl Reach {
    /// Adds what point `p` needs.
    pub(super) fn add_point(&mut self, c: &Catalog, p: &PointRow) -> VaultResult<()> {
        match format::decode_root(&p.root) {
            Ok(root) => self.add_root(c, &root),
            Err(e) => {
                self.broken.push(Broken {
                    what: "point",
                    id: p.id.clone(),
                    detail: e.to_string(),
                });
                Ok(())
            }
        }
    }

    fn add_root(&mut self, c: &Catalog, root: &Entry) -> VaultResult<()> {
        let mut stack = Vec::new();
        self.add_entry(c, root, &mut stack)?;
        while let Some(t) = stack.pop() {
            match c.tree(&t) {
                Ok(entries) => {
                    for e in &entries {
                        self.add_entry(c, e, &mut stack)?;
                    }
                }
                Err(e) if is_damage(&e) => self.broken.push(Broken {
                    what: "tree",
                    id: t.to_hex(),
                    detail: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn add_entry(&mut self, c: &Catalog, e: &Entry, stack: &mut Vec<TreeId>) -> VaultResult<()> {
        match e.content {
            Content::None => {}
            Content::Chunk(id) => {
                self.chunks.insert(id);
            }
            Content::List(id) => self.add_list(c, id)?,
        }
        if let Some(t) = e.subtree
            && self.trees.insert(t)
        {
            stack.push(t);
        }
        Ok(())
    }

    fn add_list(&mut self, c: &Catalog, id: ListId) -> VaultResult<()> {
        if !self.lists.insert(id) {
            return Ok(());
        }
        let mut stack = vec![id];
        while let Some(l) = stack.pop() {
            let extents = match c.list(&l) {
                Ok(x) => x,
                Err(e) if is_damage(&e) => {
                    self.broken.push(Broken {
                        what: "content list",
                        id: l.to_hex(),
                        detail: e.to_string(),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            for x in extents {
                match x {
                    Extent::Data { id, .. } => {
                        self.chunks.insert(id);
                    }
                    Extent::Sub { id, .. } => {
                        if self.lists.insert(id) {
                            stack.push(id);
                        }
                    }
                    Extent::Hole { .. } => {}
                }
            }
        }
        Ok(())
    }
}
