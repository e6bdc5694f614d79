//! Items as a whole: what `coffre item show|edit|rename|rm` do.
//!
//! An item's definition changes only through `edit` (checked first: a files item's path must be
//! a directory and its exclude rules must compile) or through the next `backup --item NAME
//! PATH`. `rename` keeps the item's points, files cache and policy (they name it by id). `remove`
//! refuses while the item has live points unless told to forget them: then they are soft-deleted
//! as `coffre forget` would (the vault's immutability rule applies; with a soft-delete period of
//! 0 they are purged), and the item's row goes with its last point (marked `removed` until then,
//! so `coffre undelete` still finds its points). Each change is one transaction under the writer
//! lock; a policy change goes through `maintenance::policies::assign_policy` first.

use std::path::PathBuf;

use crate::backup::BackupError;
use crate::backup::excludes::check_excludes;
use crate::maintenance::policies::assign_policy;
use crate::maintenance::{ForgetPlan, MaintenanceError};
use crate::vault::{
    AppliedChanges, Deletion, Item, ItemRemoval, ItemSource, PointRow, Vault, VaultError,
    WriteLock, now_ns,
};

/// Why an item command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Maintenance(#[from] MaintenanceError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("{0}")]
    Refused(String),
}

pub type ItemResult<T> = Result<T, ItemError>;

/// What `item show` reports.
#[derive(Clone, Debug)]
pub struct ItemSummary {
    pub item: Item,
    /// Live points, oldest first.
    pub points: Vec<PointRow>,
    /// How many soft-deleted points the item has.
    pub deleted: usize,
}

/// The item `name` with its points.
pub fn summary(vault: &Vault, name: &str) -> ItemResult<ItemSummary> {
    let item = vault.item(name)?;
    let points = vault.points(Some(&item))?;
    let deleted = vault.deleted_points(Some(&item))?.len();
    Ok(ItemSummary {
        item,
        points,
        deleted,
    })
}

/// What `item edit` changes; `None` leaves a part as it is.
#[derive(Clone, Debug, Default)]
pub struct ItemEdit {
    /// A new directory (files items).
    pub path: Option<PathBuf>,
    /// Drop every exclude rule before the ones below are added.
    pub clear_excludes: bool,
    pub add_excludes: Vec<String>,
    pub add_iexcludes: Vec<String>,
    pub add_exclude_files: Vec<PathBuf>,
    pub add_exclude_if_present: Vec<String>,
    pub exclude_caches: Option<bool>,
    /// `Some(None)`: no size limit any more.
    pub exclude_larger_than: Option<Option<u64>>,
    /// `Some(None)`: remove the script (VM items).
    pub pre_script: Option<Option<String>>,
    pub post_script: Option<Option<String>>,
    pub policy: Option<String>,
}

impl ItemEdit {
    fn touches_files(&self) -> bool {
        self.path.is_some()
            || self.clear_excludes
            || !self.add_excludes.is_empty()
            || !self.add_iexcludes.is_empty()
            || !self.add_exclude_files.is_empty()
            || !self.add_exclude_if_present.is_empty()
            || self.exclude_caches.is_some()
            || self.exclude_larger_than.is_some()
    }

    fn touches_scripts(&self) -> bool {
        self.pre_script.is_some() || self.post_script.is_some()
    }

    /// The definition `source` becomes, checked.
    fn apply(&self, name: &str, source: &ItemSource) -> ItemResult<ItemSource> {
        let refuse = |what: &str| {
            ItemError::Refused(format!(
                "{what} applies to files items; {name:?} is a {} item",
                source.kind().as_str()
            ))
        };
        let mut new = source.clone();
        match &mut new {
            ItemSource::Files(f) => {
                if self.touches_scripts() {
                    return Err(ItemError::Refused(format!(
                        "--pre-script and --post-script apply to vm items; {name:?} is a files item"
                    )));
                }
                if let Some(p) = &self.path {
                    if !p.is_dir() {
                        return Err(ItemError::Refused(format!(
                            "{} is not a directory",
                            p.display()
                        )));
                    }
                    f.path = p.clone();
                }
                if self.clear_excludes {
                    f.excludes.clear();
                    f.iexcludes.clear();
                    f.exclude_files.clear();
                    f.exclude_if_present.clear();
                    f.exclude_caches = false;
                    f.exclude_larger_than = None;
                }
                f.excludes.extend(self.add_excludes.iter().cloned());
                f.iexcludes.extend(self.add_iexcludes.iter().cloned());
                f.exclude_files
                    .extend(self.add_exclude_files.iter().cloned());
                f.exclude_if_present
                    .extend(self.add_exclude_if_present.iter().cloned());
                if let Some(c) = self.exclude_caches {
                    f.exclude_caches = c;
                }
                if let Some(l) = self.exclude_larger_than {
                    f.exclude_larger_than = l;
                }
                check_excludes(f)?;
            }
            ItemSource::Vm(v) => {
                if self.touches_files() {
                    return Err(refuse("--path and the exclude options"));
                }
                if let Some(s) = &self.pre_script {
                    v.pre_script = s.clone();
                }
                if let Some(s) = &self.post_script {
                    v.post_script = s.clone();
                }
            }
            ItemSource::Disk(_) => {
                if self.touches_files() {
                    return Err(refuse("--path and the exclude options"));
                }
                if self.touches_scripts() {
                    return Err(ItemError::Refused(format!(
                        "--pre-script and --post-script apply to vm items; {name:?} is a disk item"
                    )));
                }
            }
        }
        Ok(new)
    }
}

/// Applies `edit` to item `name`: the policy first (refused by an immutable vault if it would
/// end a point earlier), then the definition. Returns the item as stored now.
pub fn edit(vault: &Vault, lock: &WriteLock, name: &str, edit: &ItemEdit) -> ItemResult<Item> {
    let item = vault.item(name)?;
    let source = item.source.clone().ok_or_else(|| {
        ItemError::Refused(format!(
            "item {name:?} has a definition this coffre cannot read; it cannot be edited"
        ))
    })?;
    let new = edit.apply(name, &source)?;
    if let Some(policy) = &edit.policy {
        assign_policy(vault, lock, policy, std::slice::from_ref(&item), now_ns())?;
    }
    if new != source {
        vault.update_item(lock, name, |i| {
            i.source = Some(new);
            Ok(())
        })?;
    }
    Ok(vault.item(name)?)
}

/// Renames item `name` to `new_name` (a new, unused, valid name).
pub fn rename(vault: &Vault, lock: &WriteLock, name: &str, new_name: &str) -> ItemResult<Item> {
    Ok(vault.rename_item(lock, name, new_name)?)
}

/// What `remove` did.
#[derive(Clone, Debug)]
pub struct Removed {
    pub removal: ItemRemoval,
    pub points: AppliedChanges,
    /// When the forgotten points are purged (ns), if they were soft-deleted.
    pub purge_at: Option<i64>,
}

/// Removes item `name`. With live points it is refused unless `forget_points`, which deletes
/// them as `coffre forget` does (in the same transaction as the removal).
pub fn remove(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    forget_points: bool,
) -> ItemResult<Removed> {
    let item = vault.item(name)?;
    let live = vault.points(Some(&item))?;
    if !live.is_empty() && !forget_points {
        return Err(ItemError::Refused(format!(
            "item {name:?} has {} point{}; `coffre item rm {name} --forget-points` deletes them \
             with it (soft delete: `coffre undelete` brings them back for the vault's soft-delete \
             period)",
            live.len(),
            if live.len() == 1 { "" } else { "s" }
        )));
    }
    let plan = ForgetPlan::compute(vault, live, Deletion::Forget, now_ns())?;
    let (removal, points) = vault.remove_item(lock, name, &plan.changes())?;
    Ok(Removed {
        removal,
        points,
        purge_at: (points.soft_deleted > 0).then(|| plan.purge_time()),
    })
}
