//! `coffre prune`, `forget`, `undelete`, `purge`: the point lifecycle, printed.

use std::process::ExitCode;

use anyhow::Result;

use super::{Cli, UsageError};
use crate::maintenance::{
    Evaluated, ForgetPlan, PointAction, PrunePlan, PurgePlan, UndeletePlan, when,
};
use crate::vault::{
    Deletion, Item, PointRow, Vault, VaultSettings, human_time, human_time_zone, now_ns, timestamp,
};

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Items to prune [default: every item]
    #[arg(value_name = "ITEM")]
    items: Vec<String>,
    /// Show what would be kept, expired and purged, and change nothing
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// Fail at once if another writer holds the vault, instead of waiting
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Args)]
pub struct ForgetArgs {
    /// Points to soft-delete: NAME@POINT, POINT a point id (or unique prefix), `latest`,
    /// `latest~N`, a time (RFC 3339, or local as `coffre points` shows it) or a mount directory
    /// name such as 2026-11-23T140005Z
    #[arg(value_name = "NAME@POINT", required = true)]
    specs: Vec<String>,
    /// Fail at once if another writer holds the vault, instead of waiting
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Args)]
pub struct UndeleteArgs {
    /// A soft-deleted point (see `coffre points --deleted`): NAME@POINT
    #[arg(value_name = "NAME@POINT")]
    spec: String,
    /// Keep it at least until TIME (RFC 3339) [default: 14 days from now, so the next prune
    /// does not take it again]
    #[arg(long, value_name = "TIME", value_parser = super::policy::parse_time)]
    keep_until: Option<i64>,
}

#[derive(clap::Args)]
pub struct PurgeArgs {
    /// Soft-deleted points to purge now (see `coffre points --deleted`): NAME@POINT
    #[arg(value_name = "NAME@POINT", required = true)]
    specs: Vec<String>,
}

/// Splits `NAME@POINT`; the point is required (these commands never default to `latest`).
fn split_spec(spec: &str) -> Result<(&str, &str)> {
    match spec.split_once('@') {
        Some((name, point)) if !name.is_empty() && !point.is_empty() => Ok((name, point)),
        _ => Err(UsageError(format!(
            "{spec:?} does not name a point: give NAME@POINT, such as home@3fa2c1d0"
        ))
        .into()),
    }
}

fn live_point(vault: &Vault, spec: &str) -> Result<PointRow> {
    let (name, point) = split_spec(spec)?;
    Ok(vault.resolve_point(&vault.item(name)?, point)?)
}

fn deleted_point(vault: &Vault, spec: &str) -> Result<PointRow> {
    let (name, point) = split_spec(spec)?;
    Ok(vault.resolve_deleted_point(&vault.item(name)?, point)?)
}

/// `coffre prune [ITEM...] [--dry-run] [--json]`
pub fn prune(cli: &Cli, args: &PruneArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    // A dry run changes nothing, so it needs no writer lock and never waits for a backup.
    let lock = match args.dry_run {
        true => None,
        false => Some(vault.lock(!args.no_wait)?),
    };
    let items: Vec<Item> = args
        .items
        .iter()
        .map(|n| vault.item(n))
        .collect::<Result<_, _>>()?;
    let plan = PrunePlan::compute(&vault, &items, now_ns())?;
    if let Some(lock) = &lock {
        plan.apply(&vault, lock)?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&prune_json(&plan, args.dry_run))?
        );
    } else {
        print_prune(&plan, args.dry_run);
    }
    Ok(ExitCode::SUCCESS)
}

/// One point of a plan as JSON: `expires` in ns (null: never), `roles` by kind.
pub fn evaluated_json(e: &Evaluated) -> serde_json::Value {
    let roles: Vec<_> = e.verdict.roles.iter().map(|r| r.kind).collect();
    serde_json::json!({
        "item": e.point.item,
        "id": e.point.id,
        "time": timestamp(e.point.time),
        "action": PrunePlan::action(e),
        "expires": e.expires_ns().map(timestamp),
        "roles": roles,
        "reason": e.verdict.reason,
    })
}

fn purge_reason(p: &PointRow, settings: &VaultSettings) -> String {
    let deleted_at = p.deleted_at.unwrap_or(p.time);
    format!(
        "soft-deleted {} by {}; its soft-delete period ended {}",
        human_time_zone(deleted_at),
        p.deleted_by.as_deref().unwrap_or("an older coffre"),
        human_time_zone(settings.purge_time(deleted_at))
    )
}

fn prune_json(plan: &PrunePlan, dry_run: bool) -> serde_json::Value {
    let mut points: Vec<serde_json::Value> = plan
        .items
        .iter()
        .flat_map(|i| &i.points)
        .map(evaluated_json)
        .collect();
    points.extend(plan.purge.iter().map(|p| {
        serde_json::json!({
            "item": p.item,
            "id": p.id,
            "time": timestamp(p.time),
            "action": PointAction::Purge,
            "deleted_at": p.deleted_at.map(timestamp),
            "deleted_by": p.deleted_by,
            "reason": purge_reason(p, &plan.settings),
        })
    }));
    let (kept, expired, purged) = plan.counts();
    serde_json::json!({
        "dry_run": dry_run,
        "now": timestamp(plan.now),
        "soft_delete_days": plan.settings.soft_delete_days,
        "points": points,
        "kept": kept,
        "expired": expired,
        "purged": purged,
    })
}

fn print_prune(plan: &PrunePlan, dry_run: bool) {
    for item in &plan.items {
        for e in &item.points {
            let action = match PrunePlan::action(e) {
                PointAction::Expire => "expire",
                _ => "keep",
            };
            println!(
                "{action:<7} {}@{}  {}  {}",
                e.point.item,
                e.point.id,
                human_time(e.point.time),
                e.verdict.reason
            );
        }
    }
    for p in &plan.purge {
        println!(
            "purge   {}@{}  {}  {}",
            p.item,
            p.id,
            human_time(p.time),
            purge_reason(p, &plan.settings)
        );
    }
    let (kept, expired, purged) = plan.counts();
    let fate = match plan.settings.soft_delete_days {
        0 => "purged at once: soft delete is off".to_string(),
        days => format!(
            "soft-deleted, recoverable with `coffre undelete` for {}, until {}",
            crate::words::plural(u64::from(days), "day"),
            human_time_zone(plan.settings.purge_time(plan.now))
        ),
    };
    if dry_run {
        println!(
            "dry run, nothing changed: {} would be kept, {expired} expired ({fate}), {purged} \
             purged",
            crate::words::plural(kept as u64, "point")
        );
    } else {
        println!(
            "{} kept, {expired} expired ({fate}), {purged} purged",
            crate::words::plural(kept as u64, "point")
        );
    }
}

/// `coffre forget NAME@POINT...`
pub fn forget(cli: &Cli, args: &ForgetArgs) -> Result<ExitCode> {
    for spec in &args.specs {
        split_spec(spec)?;
    }
    let vault = cli.open_vault()?;
    let lock = vault.lock(!args.no_wait)?;
    let points = args
        .specs
        .iter()
        .map(|s| live_point(&vault, s))
        .collect::<Result<Vec<_>>>()?;
    let plan = ForgetPlan::compute(&vault, points, Deletion::Forget, now_ns())?;
    plan.apply(&vault, &lock)?;
    for p in &plan.points {
        if plan.purges_at_once() {
            println!(
                "purged {}@{} ({}): soft delete is off (soft-delete-days 0)",
                p.item,
                p.id,
                human_time_zone(p.time)
            );
        } else {
            println!(
                "forgot {}@{} ({}): soft-deleted until {}; `coffre undelete {}@{}` \
                 brings it back",
                p.item,
                p.id,
                human_time_zone(p.time),
                human_time_zone(plan.purge_time()),
                p.item,
                p.id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `coffre undelete NAME@POINT [--keep-until TIME]`
pub fn undelete(cli: &Cli, args: &UndeleteArgs) -> Result<ExitCode> {
    split_spec(&args.spec)?;
    let now = now_ns();
    if args.keep_until.is_some_and(|t| t <= now) {
        return Err(UsageError(
            "--keep-until is not in the future: the next prune would take the point again".into(),
        )
        .into());
    }
    let vault = cli.open_vault()?;
    let lock = vault.lock(true)?;
    let point = deleted_point(&vault, &args.spec)?;
    let plan = UndeletePlan::compute(vec![point], args.keep_until, now)?;
    plan.apply(&vault, &lock)?;
    for (p, keep) in &plan.points {
        println!(
            "undeleted {}@{} ({}): kept at least until {}",
            p.item,
            p.id,
            human_time_zone(p.time),
            when(Some(crate::maintenance::timestamp(*keep)))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `coffre purge NAME@POINT...`
pub fn purge(cli: &Cli, args: &PurgeArgs) -> Result<ExitCode> {
    for spec in &args.specs {
        split_spec(spec)?;
    }
    let vault = cli.open_vault()?;
    let lock = vault.lock(true)?;
    let points = args
        .specs
        .iter()
        .map(|s| deleted_point(&vault, s))
        .collect::<Result<Vec<_>>>()?;
    let plan = PurgePlan::compute(&vault, points, now_ns())?;
    plan.apply(&vault, &lock)?;
    for p in &plan.points {
        println!(
            "purged {}@{} ({}); its data is reclaimed by a later garbage collection",
            p.item,
            p.id,
            human_time_zone(p.time)
        );
    }
    Ok(ExitCode::SUCCESS)
}
