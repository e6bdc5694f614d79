//! The storage side of the point lifecycle: policies, the vault's settings, soft delete, purge
//! and undelete.
//!
//! These are operations, not decisions: which points expire, and whether immutability allows a
//! change, is decided in `maintenance/` from the policy module's evaluation; here each decision
//! is applied under the writer lock in one transaction. Settings live in `meta`
//! (`soft_delete_days`, `immutability`); the one rule kept here too, as a last line of defence,
//! is that `immutability locked` is never turned off. Purging removes catalog rows only: the
//! chunks those points used become garbage for a later gc, and no pack is touched.
//! Crash story: every method commits once; a crash leaves the change whole or absent.

use super::catalog::{Catalog, PointRow};
use super::model::{
    DEFAULT_POLICY, Deletion, Immutability, Item, ItemState, VaultSettings, check_item_name,
    check_policy_name,
};
use super::{Vault, VaultError, VaultResult, WriteLock, now_ns};
use crate::policy::Policy;

const SOFT_DELETE_DAYS_KEY: &str = "soft_delete_days";
const IMMUTABILITY_KEY: &str = "immutability";

/// What one lifecycle operation does to points, applied in one transaction by
/// [`Vault::apply_point_changes`]. Points are named by `PointRow::rowid`.
#[derive(Clone, Debug)]
pub struct PointChanges {
    /// When the change happens (ns): the soft-delete time it records.
    pub now: i64,
    /// What soft-deletes the points in `soft_delete` (recorded on them; unused by purges and
    /// undeletes).
    pub by: Deletion,
    /// Live points to soft-delete (a point no longer live is left alone).
    pub soft_delete: Vec<i64>,
    /// Points whose rows go for good, live or soft-deleted.
    pub purge: Vec<i64>,
    /// Soft-deleted points to bring back, each kept at least until the time given (ns).
    pub undelete: Vec<(i64, i64)>,
}

impl PointChanges {
    /// No change yet, made at `now` by `by`.
    pub fn new(now: i64, by: Deletion) -> PointChanges {
        PointChanges {
            now,
            by,
            soft_delete: Vec::new(),
            purge: Vec::new(),
            undelete: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.soft_delete.is_empty() && self.purge.is_empty() && self.undelete.is_empty()
    }
}

/// What [`Vault::apply_point_changes`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppliedChanges {
    pub soft_deleted: usize,
    pub purged: usize,
    pub undeleted: usize,
}

impl Vault {
    /// Runs `f` in one write transaction (the caller holds the writer lock).
    pub(super) fn transaction<T>(
        &self,
        f: impl FnOnce(&Catalog) -> VaultResult<T>,
    ) -> VaultResult<T> {
        self.catalog.begin()?;
        match f(&self.catalog) {
            Ok(v) => {
                self.catalog.commit()?;
                Ok(v)
            }
            Err(e) => {
                self.catalog.rollback();
                Err(e)
            }
        }
    }

    // ---- policies ----

    /// The policy named `name`.
    pub fn policy(&self, name: &str) -> VaultResult<Policy> {
        self.catalog
            .policy(name)?
            .ok_or_else(|| VaultError::PolicyNotFound(name.to_string()))
    }

    /// Every policy, by name.
    pub fn policies(&self) -> VaultResult<Vec<(String, Policy)>> {
        self.catalog.policies()
    }

    /// Stores a new policy.
    pub fn create_policy(&self, _lock: &WriteLock, name: &str, policy: &Policy) -> VaultResult<()> {
        check_policy_name(name)?;
        self.transaction(|c| {
            if c.policy(name)?.is_some() {
                return Err(VaultError::PolicyExists(name.to_string()));
            }
            c.insert_policy(name, policy, now_ns())
        })
    }

    /// Replaces the definition of an existing policy.
    pub fn update_policy(&self, _lock: &WriteLock, name: &str, policy: &Policy) -> VaultResult<()> {
        self.transaction(|c| match c.update_policy(name, policy)? {
            0 => Err(VaultError::PolicyNotFound(name.to_string())),
            _ => Ok(()),
        })
    }

    /// Removes a policy no item follows (never `default`).
    pub fn remove_policy(&self, _lock: &WriteLock, name: &str) -> VaultResult<()> {
        if name == DEFAULT_POLICY {
            return Err(VaultError::DefaultPolicy);
        }
        self.transaction(|c| {
            let users: Vec<String> = c
                .items()?
                .into_iter()
                .filter(|i| i.policy == name)
                .map(|i| i.name)
                .collect();
            if !users.is_empty() {
                return Err(VaultError::PolicyInUse {
                    name: name.to_string(),
                    items: users,
                });
            }
            match c.delete_policy(name)? {
                0 => Err(VaultError::PolicyNotFound(name.to_string())),
                _ => Ok(()),
            }
        })
    }

    /// Makes every item of `items` follow policy `name`, all or none.
    pub fn assign_policy(&self, _lock: &WriteLock, name: &str, items: &[Item]) -> VaultResult<()> {
        self.transaction(|c| {
            for item in items {
                c.set_item_policy(item.id, name)?;
            }
            Ok(())
        })
    }

    // ---- settings ----

    /// The vault's lifecycle settings, as stored now (another process may have changed them).
    pub fn settings(&self) -> VaultResult<VaultSettings> {
        let damaged = |key: &str, value: &str| VaultError::Damaged {
            path: self.db_path(),
            detail: format!("setting {key} has the value {value:?}"),
        };
        let mut settings = VaultSettings::default();
        if let Some(v) = self.catalog.meta(SOFT_DELETE_DAYS_KEY)? {
            settings.soft_delete_days = v.parse().map_err(|_| damaged(SOFT_DELETE_DAYS_KEY, &v))?;
        }
        if let Some(v) = self.catalog.meta(IMMUTABILITY_KEY)? {
            settings.immutability =
                Immutability::parse(&v).ok_or_else(|| damaged(IMMUTABILITY_KEY, &v))?;
        }
        Ok(settings)
    }

    /// Stores the lifecycle settings. Whether a change shortens a point's life is checked by
    /// `maintenance`; this only refuses to turn a locked immutability off.
    pub fn set_settings(&self, _lock: &WriteLock, settings: &VaultSettings) -> VaultResult<()> {
        self.transaction(|c| {
            let locked = c.meta(IMMUTABILITY_KEY)?.as_deref() == Some("locked");
            if locked && settings.immutability != Immutability::Locked {
                return Err(VaultError::ImmutabilityLocked);
            }
            c.set_meta(SOFT_DELETE_DAYS_KEY, &settings.soft_delete_days.to_string())?;
            c.set_meta(IMMUTABILITY_KEY, settings.immutability.as_str())
        })
    }

    // ---- soft delete, purge, undelete ----

    /// Soft-deleted points, oldest first; of one item if given.
    pub fn deleted_points(&self, item: Option<&Item>) -> VaultResult<Vec<PointRow>> {
        self.catalog.deleted_points(item.map(|i| i.id))
    }

    /// Resolves `POINT` among the soft-deleted points of an item: a point id (or unique prefix),
    /// or a point directory name as the mount shows it (`2026-11-23T140005Z`).
    pub fn resolve_deleted_point(&self, item: &Item, spec: &str) -> VaultResult<PointRow> {
        let points = self.catalog.deleted_points(Some(item.id))?;
        super::pick_point(
            points,
            spec,
            &format!("{}@{}", item.name, spec),
            VaultError::DeletedPointNotFound,
        )
    }

    /// Applies soft deletes, purges and undeletes in one transaction.
    pub fn apply_point_changes(
        &self,
        _lock: &WriteLock,
        changes: &PointChanges,
    ) -> VaultResult<AppliedChanges> {
        self.transaction(|c| apply(c, changes))
    }

    /// Changes an item (as `update_item`) and its points in one transaction: `stop-protection
    /// --delete-data` stops the item and soft-deletes its points together.
    pub fn update_item_and_points(
        &self,
        _lock: &WriteLock,
        name: &str,
        change: impl FnOnce(&mut Item) -> VaultResult<()>,
        changes: &PointChanges,
    ) -> VaultResult<(Item, AppliedChanges)> {
        self.transaction(|c| {
            let mut item = c
                .item(name)?
                .ok_or_else(|| VaultError::ItemNotFound(name.to_string()))?;
            change(&mut item)?;
            c.update_item(&item)?;
            Ok((item, apply(c, changes)?))
        })
    }
}

/// What became of an item `Vault::remove_item` removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemRemoval {
    /// Its row is gone: no point named it any more.
    Gone,
    /// Marked `removed`: its row goes with the purge of its last (soft-deleted) point.
    Pending,
}

impl Vault {
    /// Renames an item; its points, files cache and policy follow it (they name it by id).
    pub fn rename_item(&self, _lock: &WriteLock, name: &str, new_name: &str) -> VaultResult<Item> {
        check_item_name(new_name)?;
        self.transaction(|c| {
            let item = c
                .item(name)?
                .ok_or_else(|| VaultError::ItemNotFound(name.to_string()))?;
            if c.item(new_name)?.is_some() {
                return Err(VaultError::ItemExists(new_name.to_string()));
            }
            c.rename_item(item.id, new_name)?;
            c.item(new_name)?
                .ok_or_else(|| VaultError::ItemNotFound(new_name.to_string()))
        })
    }

    /// Applies `changes` (deleting the item's points) and removes item `name` in one
    /// transaction: its row goes if no point names it any more, else it is marked `removed`
    /// and goes when its last point is purged.
    pub fn remove_item(
        &self,
        _lock: &WriteLock,
        name: &str,
        changes: &PointChanges,
    ) -> VaultResult<(ItemRemoval, AppliedChanges)> {
        self.transaction(|c| {
            let mut item = c
                .item(name)?
                .ok_or_else(|| VaultError::ItemNotFound(name.to_string()))?;
            let done = apply(c, changes)?;
            if c.delete_item_without_points(item.id)? == 1 {
                return Ok((ItemRemoval::Gone, done));
            }
            item.state = ItemState::Removed;
            c.update_item(&item)?;
            Ok((ItemRemoval::Pending, done))
        })
    }
}

fn apply(c: &Catalog, changes: &PointChanges) -> VaultResult<AppliedChanges> {
    let mut done = AppliedChanges::default();
    for &rowid in &changes.soft_delete {
        done.soft_deleted += c.soft_delete_point(rowid, changes.now, changes.by)?;
    }
    for &rowid in &changes.purge {
        done.purged += c.purge_point(rowid)?;
    }
    if done.purged > 0 {
        // A removed item goes with its last point.
        c.delete_removed_items_without_points()?;
    }
    for &(rowid, keep_until) in &changes.undelete {
        done.undeleted += c.undelete_point(rowid, keep_until)?;
    }
    Ok(done)
}
