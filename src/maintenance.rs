//! Maintenance: the lifecycle of recovery points after their backup, as workflows a scheduler or
//! the CLI runs the same way.
//!
//! A point is kept while its item's *current* policy says so (`prune`, so policy changes are
//! retroactive), then soft-deleted (listed, mounted under `deleted/`, recoverable by `undelete`),
//! then purged once the vault's soft-delete period has passed (its row goes; its data becomes
//! garbage for a later gc). Each workflow is a `*Plan`: computed from the vault and a `now` the
//! caller passes (nothing here reads the clock), shown (`--dry-run`), then applied under the
//! writer lock in one transaction. This module also owns the immutability rule: with
//! `immutability on` or `locked`, no forget, purge, policy change or setting may make a point
//! end earlier than it would now; the comparison uses the retention module's own evaluation.
//! A plan applied must be computed under the same writer lock (the CLI does both in one run).
//! Crash story: a plan changes nothing until its single commit.

pub mod delete;
pub mod policies;
pub mod prune;
pub mod verify;

use std::collections::HashMap;

use jiff::Timestamp;

use crate::policy::{Point, Policy, PolicyError, Verdict};
use crate::vault::{Immutability, Item, ItemState, PointRow, Vault, VaultError, human_time_zone};

pub use delete::{ForgetPlan, PurgePlan, UndeletePlan};
pub use policies::{PolicyEdit, SettingChange};
pub use prune::{PointAction, PrunePlan};

/// Why a maintenance workflow was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The immutability rule: `detail` says which point and why.
    #[error(
        "refused by the vault's immutability ({level}: no change may make an existing point end \
         earlier): {detail}"
    )]
    Immutable { level: Immutability, detail: String },
    #[error("{0}")]
    Refused(String),
}

pub type MaintenanceResult<T> = Result<T, MaintenanceError>;

/// One live point with what the retention of its item's policy says about it.
#[derive(Clone, Debug)]
pub struct Evaluated {
    pub point: PointRow,
    pub verdict: Verdict,
}

impl Evaluated {
    /// When the point expires (ns); `None`: never (or past what a nanosecond count holds, 2262).
    pub fn expires_ns(&self) -> Option<i64> {
        self.verdict.expires.and_then(ns_of)
    }
}

/// The verdicts of one item's live points under its policy.
#[derive(Clone, Debug)]
pub struct ItemVerdicts {
    pub item: Item,
    pub policy: Policy,
    /// Oldest first, as the catalog lists points.
    pub points: Vec<Evaluated>,
}

/// A nanosecond count as a timestamp. Every `i64` of nanoseconds (years 1677 to 2262) lies
/// inside jiff's range (years -9999 to 9999), so the fallback is never taken.
pub fn timestamp(ns: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A timestamp as nanoseconds since the epoch; `None` past 2262.
pub fn ns_of(t: Timestamp) -> Option<i64> {
    i64::try_from(t.as_nanosecond()).ok()
}

/// The retention points of catalog rows.
fn retention_points(rows: &[PointRow]) -> Vec<Point> {
    rows.iter()
        .map(|p| Point {
            id: p.id.clone(),
            taken_at: timestamp(p.time),
            keep_until: p.keep_until.map(timestamp),
        })
        .collect()
}

/// The verdicts of `item`'s live points under `policy` at `now`. With `as_protected`, a stopped
/// item is evaluated as if it were protected: the expiries its policy gives, which is what
/// immutability protects (stopping keeps points longer than that; resuming gives them back).
fn evaluate_item(
    vault: &Vault,
    item: &Item,
    policy: &Policy,
    now: i64,
    as_protected: bool,
) -> MaintenanceResult<Vec<Evaluated>> {
    let rows = vault.points(Some(item))?;
    // A removed item's points (undeleted ones) are kept like a stopped item's.
    let stopped = matches!(item.state, ItemState::Stopped | ItemState::Removed) && !as_protected;
    let verdicts = policy.evaluate(&retention_points(&rows), stopped, timestamp(now));
    Ok(rows
        .into_iter()
        .zip(verdicts)
        .map(|(point, verdict)| Evaluated { point, verdict })
        .collect())
}

/// The verdicts of every live point of `items` (all items when empty) under their policies.
pub fn evaluate(vault: &Vault, items: &[Item], now: i64) -> MaintenanceResult<Vec<ItemVerdicts>> {
    let items = match items.is_empty() {
        true => vault.items()?,
        false => items.to_vec(),
    };
    let policies: HashMap<String, Policy> = vault.policies()?.into_iter().collect();
    items
        .into_iter()
        .map(|item| {
            let policy = policies
                .get(&item.policy)
                .cloned()
                .ok_or_else(|| VaultError::PolicyNotFound(item.policy.clone()))?;
            let points = evaluate_item(vault, &item, &policy, now, false)?;
            Ok(ItemVerdicts {
                item,
                policy,
                points,
            })
        })
        .collect()
}

/// Refuses, under immutability, when some live point of `item` would expire earlier under
/// `new` than under `old` (a point already expired under `old` is not protected any more).
/// `change` names the change for the message (`policy set p`).
fn check_no_earlier_expiry(
    vault: &Vault,
    item: &Item,
    old: &Policy,
    new: &Policy,
    now: i64,
    change: &str,
) -> MaintenanceResult<()> {
    let level = vault.settings()?.immutability;
    if !level.is_on() {
        return Ok(());
    }
    let before = evaluate_item(vault, item, old, now, true)?;
    let rows: Vec<PointRow> = before.iter().map(|e| e.point.clone()).collect();
    let after = new.evaluate(&retention_points(&rows), false, timestamp(now));
    let mut shortened = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| !b.verdict.expired && expiry_order(a.expires, b.verdict.expires).is_lt());
    let Some((first, after)) = shortened.next() else {
        return Ok(());
    };
    let more = shortened.count();
    let mut detail = format!(
        "with {change}, point {}@{} ({}) would expire {} instead of {}",
        item.name,
        first.point.id,
        human_time_zone(first.point.time),
        when(after.expires),
        when(first.verdict.expires),
    );
    match more {
        0 => {}
        1 => detail.push_str(" (and 1 more point)"),
        n => detail.push_str(&format!(" (and {n} more points)")),
    }
    Err(MaintenanceError::Immutable { level, detail })
}

/// Orders expiries with `None` (never) last.
fn expiry_order(a: Option<Timestamp>, b: Option<Timestamp>) -> std::cmp::Ordering {
    match (a, b) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (Some(a), Some(b)) => a.cmp(&b),
    }
}

/// An expiry for people: `2027-03-07 02:00:00 UTC` or `never`.
pub fn when(t: Option<Timestamp>) -> String {
    match t.and_then(ns_of) {
        Some(ns) => human_time_zone(ns),
        None if t.is_some() => "after 2262".to_string(),
        None => "never".to_string(),
    }
}
