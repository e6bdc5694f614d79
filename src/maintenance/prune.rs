//! Prune: apply retention. Every live point of the chosen items is evaluated with its item's
//! current policy; expired ones are soft-deleted (purged at once when the vault's soft-delete
//! period is 0), and soft-deleted points whose period has ended are purged.
//!
//! `PrunePlan::compute` decides, `apply` changes the catalog in one transaction under the writer
//! lock. Expiry is not an early deletion, so immutability allows it: the policy's own expiry and
//! the soft-delete period are the life immutability promises. Evaluation costs O(n log n) per
//! item and applying one statement per changed point, so 10,000 points prune well under a second
//! (see BENCHMARKS.md).

use super::{Evaluated, ItemVerdicts, MaintenanceResult, evaluate};
use crate::vault::{
    AppliedChanges, Deletion, Item, PointChanges, PointRow, Vault, VaultSettings, WriteLock,
};

/// What prune does to a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PointAction {
    /// Live and not expired.
    Keep,
    /// Live and expired: soft-deleted (or purged at once when soft delete is off).
    Expire,
    /// Soft-deleted and past its soft-delete period: its row goes.
    Purge,
}

/// What a prune would do, computed at `now`.
#[derive(Clone, Debug)]
pub struct PrunePlan {
    pub now: i64,
    pub settings: VaultSettings,
    /// The evaluated live points, per item.
    pub items: Vec<ItemVerdicts>,
    /// Soft-deleted points whose purge time has come.
    pub purge: Vec<PointRow>,
}

impl PrunePlan {
    /// Evaluates the points of `items` (every item when empty) at `now`.
    pub fn compute(vault: &Vault, items: &[Item], now: i64) -> MaintenanceResult<PrunePlan> {
        let settings = vault.settings()?;
        let evaluated = evaluate(vault, items, now)?;
        let deleted = match items.is_empty() {
            true => vault.deleted_points(None)?,
            false => {
                let mut all = Vec::new();
                for item in items {
                    all.extend(vault.deleted_points(Some(item))?);
                }
                all
            }
        };
        let purge = deleted
            .into_iter()
            .filter(|p| p.deleted_at.is_some_and(|d| settings.purge_time(d) <= now))
            .collect();
        Ok(PrunePlan {
            now,
            settings,
            items: evaluated,
            purge,
        })
    }

    /// The live points that expire, with their items' names.
    pub fn expired(&self) -> impl Iterator<Item = &Evaluated> {
        self.items
            .iter()
            .flat_map(|i| &i.points)
            .filter(|e| e.verdict.expired)
    }

    /// The action for a live point of the plan.
    pub fn action(e: &Evaluated) -> PointAction {
        match e.verdict.expired {
            true => PointAction::Expire,
            false => PointAction::Keep,
        }
    }

    /// Live points kept, live points expiring, soft-deleted points purged.
    pub fn counts(&self) -> (usize, usize, usize) {
        let live: usize = self.items.iter().map(|i| i.points.len()).sum();
        let expired = self.expired().count();
        (live - expired, expired, self.purge.len())
    }

    /// The catalog changes this plan makes.
    pub fn changes(&self) -> PointChanges {
        let mut changes = PointChanges::new(self.now, Deletion::Prune);
        let expired = self.expired().map(|e| e.point.rowid);
        match self.settings.soft_delete_days {
            0 => changes.purge.extend(expired),
            _ => changes.soft_delete.extend(expired),
        }
        changes.purge.extend(self.purge.iter().map(|p| p.rowid));
        changes
    }

    /// Applies the plan in one transaction. It must have been computed under `lock`.
    pub fn apply(&self, vault: &Vault, lock: &WriteLock) -> MaintenanceResult<AppliedChanges> {
        let changes = self.changes();
        if changes.is_empty() {
            return Ok(AppliedChanges::default());
        }
        Ok(vault.apply_point_changes(lock, &changes)?)
    }
}
