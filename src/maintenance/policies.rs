//! Changing what decides a point's life: policies (create, set, assign, remove) and the vault's
//! lifecycle settings (`soft-delete-days`, `immutability`).
//!
//! A change of retention is retroactive: nothing is stored per point, the next prune evaluates
//! every point with the policy as it is then. Under immutability a change is refused when any
//! point not yet expired would expire earlier than it does now (compared point by point with
//! the retention module's evaluation, old policy against new); a lower `soft-delete-days` is
//! refused too (it would purge sooner), and `locked` is never turned off. Schedules and time
//! zones change nothing else than when backups run and where days begin, and are checked the
//! same way. Each change is one transaction.

use super::{MaintenanceError, MaintenanceResult, check_no_earlier_expiry};
use crate::policy::{
    MonthlyRule, Policy, PolicyError, Retention, Schedule, WeeklyRule, YearlyRule, Zone,
};
use crate::vault::{Immutability, Item, Vault, VaultError, VaultSettings, WriteLock};

/// What `policy create` or `policy set` gives; `None` keeps what the policy has (a rule with
/// N = 0 turns that rule off).
#[derive(Clone, Debug, Default)]
pub struct PolicyEdit {
    pub schedule: Option<Schedule>,
    pub daily: Option<u32>,
    pub weekly: Option<WeeklyRule>,
    pub monthly: Option<MonthlyRule>,
    pub yearly: Option<YearlyRule>,
    pub zone: Option<Zone>,
}

impl PolicyEdit {
    /// The policy this edit makes of `base`; for a new policy (`None`) the schedule defaults to
    /// the default policy's and the zone to the machine's.
    pub fn apply_to(&self, base: Option<&Policy>) -> Result<Policy, PolicyError> {
        let old = base.map(|p| &p.retention);
        let retention = Retention::new(
            self.daily.or(old.and_then(Retention::daily)),
            self.weekly.or(old.and_then(Retention::weekly)),
            self.monthly.or(old.and_then(Retention::monthly)),
            self.yearly.or(old.and_then(Retention::yearly)),
        )?;
        let schedule = self
            .schedule
            .or(base.map(|p| p.schedule))
            .unwrap_or_else(|| Policy::vault_default(Zone::utc()).schedule);
        let zone = match (&self.zone, base) {
            (Some(zone), _) => zone.clone(),
            (None, Some(p)) => p.zone.clone(),
            (None, None) => Zone::system(),
        };
        Ok(Policy {
            schedule,
            retention,
            zone,
        })
    }
}

/// Stores a new policy `name` made of `edit`.
pub fn create_policy(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    edit: &PolicyEdit,
) -> MaintenanceResult<Policy> {
    let policy = edit.apply_to(None)?;
    vault.create_policy(lock, name, &policy)?;
    Ok(policy)
}

/// Changes policy `name` by `edit`, for every item that follows it; returns the old and the new
/// policy.
pub fn set_policy(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    edit: &PolicyEdit,
    now: i64,
) -> MaintenanceResult<(Policy, Policy)> {
    let old = vault.policy(name)?;
    let new = edit.apply_to(Some(&old))?;
    let change = format!("`policy set {name}`");
    for item in vault.items()?.iter().filter(|i| i.policy == name) {
        check_no_earlier_expiry(vault, item, &old, &new, now, &change)?;
    }
    vault.update_policy(lock, name, &new)?;
    Ok((old, new))
}

/// Makes `items` follow policy `name`, all or none.
pub fn assign_policy(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    items: &[Item],
    now: i64,
) -> MaintenanceResult<()> {
    let new = vault.policy(name)?;
    let change = format!("`policy assign {name}`");
    for item in items.iter().filter(|i| i.policy != name) {
        let old = vault.policy(&item.policy)?;
        check_no_earlier_expiry(vault, item, &old, &new, now, &change)?;
    }
    vault.assign_policy(lock, name, items)?;
    Ok(())
}

/// Removes policy `name`: refused while an item follows it, and for `default`.
pub fn remove_policy(vault: &Vault, lock: &WriteLock, name: &str) -> MaintenanceResult<()> {
    Ok(vault.remove_policy(lock, name)?)
}

/// One `coffre vault set` change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingChange {
    SoftDeleteDays(u32),
    Immutability(Immutability),
}

/// Applies a setting change; returns the settings before and after.
pub fn change_setting(
    vault: &Vault,
    lock: &WriteLock,
    change: SettingChange,
) -> MaintenanceResult<(VaultSettings, VaultSettings)> {
    let old = vault.settings()?;
    let mut new = old;
    match change {
        SettingChange::SoftDeleteDays(days) => {
            if old.immutability.is_on() && days < old.soft_delete_days {
                return Err(MaintenanceError::Immutable {
                    level: old.immutability,
                    detail: format!(
                        "soft-delete-days can only be raised (it is {}): a shorter period would \
                         purge soft-deleted points sooner",
                        old.soft_delete_days
                    ),
                });
            }
            new.soft_delete_days = days;
        }
        SettingChange::Immutability(level) => {
            if old.immutability == Immutability::Locked && level != Immutability::Locked {
                return Err(VaultError::ImmutabilityLocked.into());
            }
            new.immutability = level;
        }
    }
    vault.set_settings(lock, &new)?;
    Ok((old, new))
}
