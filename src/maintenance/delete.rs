//! Deleting and undeleting chosen points: `forget` (and `stop-protection --delete-data`) soft-
//! delete live points, `purge` ends soft-deleted ones before their period is over, `undelete`
//! brings soft-deleted ones back.
//!
//! With the vault's soft-delete period at 0, a forget purges at once. Under immutability a forget
//! is refused for any point its policy has not expired yet (a stopped item's points are judged by
//! their policy, as if protected), and a purge for any point still inside its soft-delete period.
//! An undeleted point is kept at least `UNDELETE_KEEP_DAYS` more days (or until the time given),
//! so the next prune does not take it straight back. Each plan applies in one transaction.

use std::collections::{BTreeMap, HashSet};

use super::{MaintenanceError, MaintenanceResult, evaluate_item, when};
use crate::vault::{
    AppliedChanges, DAY_NS, Deletion, Item, PointChanges, PointRow, Vault, VaultError,
    VaultSettings, WriteLock, human_time_zone,
};

/// How long an undeleted point is kept when no time is given.
pub const UNDELETE_KEEP_DAYS: i64 = 14;

/// Live points to soft-delete (or purge at once when soft delete is off).
#[derive(Clone, Debug)]
pub struct ForgetPlan {
    pub now: i64,
    pub settings: VaultSettings,
    pub by: Deletion,
    pub points: Vec<PointRow>,
}

impl ForgetPlan {
    /// Plans to delete `points` (live points, as `Vault::resolve_point` gives them), checking
    /// immutability.
    pub fn compute(
        vault: &Vault,
        points: Vec<PointRow>,
        by: Deletion,
        now: i64,
    ) -> MaintenanceResult<ForgetPlan> {
        let mut seen = HashSet::new();
        let points: Vec<PointRow> = points
            .into_iter()
            .filter(|p| seen.insert(p.rowid))
            .collect();
        let settings = vault.settings()?;
        if settings.immutability.is_on() {
            check_forget(vault, &points, by, now, settings)?;
        }
        Ok(ForgetPlan {
            now,
            settings,
            by,
            points,
        })
    }

    /// Plans to delete every live point of `item`.
    pub fn for_item(
        vault: &Vault,
        item: &Item,
        by: Deletion,
        now: i64,
    ) -> MaintenanceResult<ForgetPlan> {
        ForgetPlan::compute(vault, vault.points(Some(item))?, by, now)
    }

    /// True when the points are purged at once (the soft-delete period is 0).
    pub fn purges_at_once(&self) -> bool {
        self.settings.soft_delete_days == 0
    }

    /// When the forgotten points will be purged (ns).
    pub fn purge_time(&self) -> i64 {
        self.settings.purge_time(self.now)
    }

    pub fn changes(&self) -> PointChanges {
        let mut changes = PointChanges::new(self.now, self.by);
        let rows = self.points.iter().map(|p| p.rowid);
        match self.purges_at_once() {
            true => changes.purge.extend(rows),
            false => changes.soft_delete.extend(rows),
        }
        changes
    }

    /// Applies the plan in one transaction (computed under `lock`).
    pub fn apply(&self, vault: &Vault, lock: &WriteLock) -> MaintenanceResult<AppliedChanges> {
        Ok(vault.apply_point_changes(lock, &self.changes())?)
    }
}

/// Refuses to delete a point its policy has not expired yet.
fn check_forget(
    vault: &Vault,
    points: &[PointRow],
    by: Deletion,
    now: i64,
    settings: VaultSettings,
) -> MaintenanceResult<()> {
    let mut by_item: BTreeMap<&str, Vec<&PointRow>> = BTreeMap::new();
    for p in points {
        by_item.entry(&p.item).or_default().push(p);
    }
    let command = match by {
        Deletion::Forget => "forget",
        Deletion::Prune => "prune",
        Deletion::StopProtection => "stop-protection --delete-data",
    };
    for (name, chosen) in by_item {
        let item = vault.item(name)?;
        let policy = vault.policy(&item.policy)?;
        let evaluated = evaluate_item(vault, &item, &policy, now, true)?;
        for p in chosen {
            let Some(e) = evaluated.iter().find(|e| e.point.rowid == p.rowid) else {
                continue;
            };
            if !e.verdict.expired {
                return Err(MaintenanceError::Immutable {
                    level: settings.immutability,
                    detail: format!(
                        "{command} would end point {name}@{} ({}) before its expiry ({}: {})",
                        p.id,
                        human_time_zone(p.time),
                        when(e.verdict.expires),
                        e.verdict.reason
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Soft-deleted points to purge now, before their period is over.
#[derive(Clone, Debug)]
pub struct PurgePlan {
    pub now: i64,
    pub settings: VaultSettings,
    pub points: Vec<PointRow>,
}

impl PurgePlan {
    /// Plans to purge `points` (soft-deleted, as `Vault::resolve_deleted_point` gives them);
    /// under immutability only those whose period is over.
    pub fn compute(vault: &Vault, points: Vec<PointRow>, now: i64) -> MaintenanceResult<PurgePlan> {
        let settings = vault.settings()?;
        for p in &points {
            let Some(deleted_at) = p.deleted_at else {
                return Err(
                    VaultError::DeletedPointNotFound(format!("{}@{}", p.item, p.id)).into(),
                );
            };
            let purge_time = settings.purge_time(deleted_at);
            if settings.immutability.is_on() && purge_time > now {
                return Err(MaintenanceError::Immutable {
                    level: settings.immutability,
                    detail: format!(
                        "purge would end point {}@{} now; it stays recoverable until {}, \
                         when prune purges it",
                        p.item,
                        p.id,
                        human_time_zone(purge_time)
                    ),
                });
            }
        }
        Ok(PurgePlan {
            now,
            settings,
            points,
        })
    }

    pub fn changes(&self) -> PointChanges {
        let mut changes = PointChanges::new(self.now, Deletion::Forget);
        changes.purge.extend(self.points.iter().map(|p| p.rowid));
        changes
    }

    pub fn apply(&self, vault: &Vault, lock: &WriteLock) -> MaintenanceResult<AppliedChanges> {
        Ok(vault.apply_point_changes(lock, &self.changes())?)
    }
}

/// Soft-deleted points to bring back, each with the time it is kept at least until.
#[derive(Clone, Debug)]
pub struct UndeletePlan {
    pub now: i64,
    pub points: Vec<(PointRow, i64)>,
}

impl UndeletePlan {
    /// Plans to undelete `points` (soft-deleted), kept at least until `keep_until` or
    /// `UNDELETE_KEEP_DAYS` days from `now`. Undeleting only lengthens lives: immutability
    /// allows it.
    pub fn compute(
        points: Vec<PointRow>,
        keep_until: Option<i64>,
        now: i64,
    ) -> MaintenanceResult<UndeletePlan> {
        let keep = keep_until.unwrap_or(now.saturating_add(UNDELETE_KEEP_DAYS * DAY_NS));
        if keep <= now {
            return Err(MaintenanceError::Refused(format!(
                "--keep-until {} is not in the future: the next prune would take the point \
                 again",
                human_time_zone(keep)
            )));
        }
        Ok(UndeletePlan {
            now,
            points: points.into_iter().map(|p| (p, keep)).collect(),
        })
    }

    pub fn changes(&self) -> PointChanges {
        let mut changes = PointChanges::new(self.now, Deletion::Forget);
        changes
            .undelete
            .extend(self.points.iter().map(|(p, keep)| (p.rowid, *keep)));
        changes
    }

    pub fn apply(&self, vault: &Vault, lock: &WriteLock) -> MaintenanceResult<AppliedChanges> {
        Ok(vault.apply_point_changes(lock, &self.changes())?)
    }
}
