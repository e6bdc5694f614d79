//! Scheduled backups: which items are due, and `backup --due`, the entry point of the systemd
//! timer (`scripts/systemd/`).
//!
//! An item is due when it is protected and its policy's schedule had a slot after its newest
//! point (an item with no point is due): one catch-up backup however many slots were missed (see
//! `policy::schedule`). `SchedulePlan::compute` answers for every item at a `now` the caller
//! passes; `backup_due` backs up the due items one after the other (one failing does not stop
//! the others), then prunes those items at the same `now`. Stopped items are never due; items
//! waiting for re-protection are skipped (the plan says so, so a caller can tell the user).
//! Crash story: each backup and the prune commit on their own; a run killed half-way leaves the
//! items it did not reach due, and the next run takes them.

use crate::backup::{BackupError, BackupReport, RunOptions, backup_item};
use crate::maintenance::{MaintenanceError, PrunePlan};
use crate::vault::{AppliedChanges, Item, ItemState, Vault, VaultError, WriteLock};

/// Why a scheduling question could not be answered (a single backup's failure is reported per
/// item instead).
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Maintenance(#[from] MaintenanceError),
}

/// One item's place in the schedule.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScheduleEntry {
    pub item: String,
    pub policy: String,
    /// `daily 02:00`, `weekly mon,thu 02:00`
    pub schedule: String,
    pub zone: String,
    pub state: ItemState,
    /// When the newest live point was taken (ns; RFC 3339 in JSON).
    #[serde(serialize_with = "crate::vault::ser_opt_time")]
    pub last_point: Option<i64>,
    /// The first slot after the newest point (ns): in the past when the item is due, else its
    /// next backup. None for an item with no point.
    #[serde(serialize_with = "crate::vault::ser_opt_time")]
    pub next_slot: Option<i64>,
    /// A slot came after the newest point (whatever the item's state).
    pub slot_passed: bool,
    /// `slot_passed` and protected: `backup --due` backs it up.
    pub due: bool,
}

/// The schedule of every item at `now`.
#[derive(Clone, Debug)]
pub struct SchedulePlan {
    pub now: i64,
    pub entries: Vec<ScheduleEntry>,
}

impl SchedulePlan {
    pub fn compute(vault: &Vault, now: i64) -> Result<SchedulePlan, ScheduleError> {
        let policies: std::collections::HashMap<String, crate::policy::Policy> =
            vault.policies()?.into_iter().collect();
        let mut entries = Vec::new();
        for item in vault.items()? {
            let policy = policies
                .get(&item.policy)
                .ok_or_else(|| VaultError::PolicyNotFound(item.policy.clone()))?;
            let last_point = vault.points(Some(&item))?.last().map(|p| p.time);
            let newest = last_point.map(crate::maintenance::timestamp);
            let slot_passed = policy.is_due(newest, crate::maintenance::timestamp(now));
            let next_slot = newest
                .and_then(|t| policy.next_slot(t))
                .and_then(crate::maintenance::ns_of);
            entries.push(ScheduleEntry {
                due: slot_passed && item.state == ItemState::Protected,
                item: item.name,
                policy: item.policy,
                schedule: policy.schedule.to_string(),
                zone: policy.zone.to_string(),
                state: item.state,
                last_point,
                next_slot,
                slot_passed,
            });
        }
        Ok(SchedulePlan { now, entries })
    }

    /// The items `backup --due` backs up.
    pub fn due(&self) -> impl Iterator<Item = &ScheduleEntry> {
        self.entries.iter().filter(|e| e.due)
    }

    /// Items whose slot passed but that wait for `coffre-restore reprotect`.
    pub fn waiting_for_reprotect(&self) -> impl Iterator<Item = &ScheduleEntry> {
        self.entries
            .iter()
            .filter(|e| e.slot_passed && e.state == ItemState::NeedsReprotect)
    }
}

/// What `backup_due` did.
#[derive(Debug)]
pub struct DueRun {
    pub plan: SchedulePlan,
    /// Items backed up, and those whose backup failed (each reported to the caller as it ends).
    pub backed_up: Vec<String>,
    pub failed: Vec<String>,
    /// Some backup finished with entries it could not read.
    pub partial: bool,
    /// The prune of the due items, when there were any.
    pub prune: Option<(PrunePlan, AppliedChanges)>,
}

/// Backs up every due item at `now`, calling `report` after each backup, then prunes those
/// items at `now`.
pub fn backup_due(
    vault: &Vault,
    lock: &WriteLock,
    opts: &RunOptions,
    now: i64,
    mut report: impl FnMut(&str, &Result<BackupReport, BackupError>),
) -> Result<DueRun, ScheduleError> {
    let plan = SchedulePlan::compute(vault, now)?;
    let mut run = DueRun {
        plan,
        backed_up: Vec::new(),
        failed: Vec::new(),
        partial: false,
        prune: None,
    };
    let mut items: Vec<Item> = Vec::new();
    let due: Vec<String> = run.plan.due().map(|e| e.item.clone()).collect();
    for name in due {
        let result = backup_stored(vault, lock, &name, opts, &mut items);
        report(&name, &result);
        match result {
            Ok(r) => {
                run.partial |= !r.warnings.is_empty();
                run.backed_up.push(name);
            }
            Err(_) => run.failed.push(name),
        }
    }
    if !items.is_empty() {
        let plan = PrunePlan::compute(vault, &items, now)?;
        let done = plan.apply(vault, lock)?;
        run.prune = Some((plan, done));
    }
    Ok(run)
}

/// Backs up item `name` with its stored definition; remembers the item for the prune.
fn backup_stored(
    vault: &Vault,
    lock: &WriteLock,
    name: &str,
    opts: &RunOptions,
    items: &mut Vec<Item>,
) -> Result<BackupReport, BackupError> {
    let item = vault.item(name)?;
    let source = item.source.clone().ok_or_else(|| {
        BackupError::NotProtected(format!(
            "item {name:?} has no usable stored definition; back it up once with \
             `coffre backup --item {name} ...` to store one"
        ))
    })?;
    items.push(item);
    backup_item(vault, lock, name, &source, opts)
}
