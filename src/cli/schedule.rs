//! `coffre schedule` and `coffre backup --due`.

use std::process::ExitCode;

use anyhow::Result;

use super::backup::RunArgs;
use super::{Cli, EXIT_PARTIAL};
use crate::backup::RunOptions;
use crate::schedule::{SchedulePlan, backup_due};
use crate::vault::{ItemState, human_time, human_time_zone, now_ns};

#[derive(clap::Args)]
pub struct ScheduleArgs {
    #[arg(long)]
    json: bool,
}

fn time_or_dash(t: Option<i64>) -> String {
    t.map_or_else(|| "-".to_string(), human_time)
}

/// `coffre schedule [--json]`
pub fn show(cli: &Cli, args: &ScheduleArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    let plan = SchedulePlan::compute(&vault, now_ns())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan.entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = super::table::new(
        &[
            "ITEM",
            "POLICY",
            "SCHEDULE",
            "LAST POINT",
            "NEXT SLOT",
            "DUE",
        ],
        &[],
    );
    for e in &plan.entries {
        let due = match (e.due, e.state) {
            (true, _) if e.last_point.is_none() => "yes (no point yet)".to_string(),
            (true, _) => "yes".to_string(),
            (false, ItemState::Protected) => "no".to_string(),
            (false, state) => format!("no ({state})"),
        };
        t.add_row(vec![
            e.item.clone(),
            e.policy.clone(),
            format!("{} {}", e.schedule, e.zone),
            time_or_dash(e.last_point),
            time_or_dash(e.next_slot),
            due,
        ]);
    }
    super::table::print(&t);
    Ok(ExitCode::SUCCESS)
}

/// `coffre backup --due`: exit 0, 3 if some point misses entries, 1 if some backup (or the
/// replicate that follows) failed.
pub fn run_due(cli: &Cli, run: &RunArgs, replicate: bool) -> Result<ExitCode> {
    let mut vault = cli.open_vault()?;
    let lock = vault.lock(!run.no_wait)?;
    let opts = RunOptions {
        threads: run.threads,
        progress: !cli.quiet && !run.json,
        labels: run.labels()?,
        ..RunOptions::default()
    };
    let mut json_out = Vec::new();
    let done = backup_due(
        &vault,
        &lock,
        &opts,
        now_ns(),
        |name, result| match result {
            Ok(report) => {
                let warnings = super::plain_warnings(&report.warnings);
                for w in &warnings {
                    eprintln!("warning: {name}: {}: {}", w.path, w.message);
                }
                let p = &report.point;
                if run.json {
                    json_out.push(serde_json::json!({
                        "item": name,
                        "point": p,
                        "warnings": warnings,
                    }));
                } else if !cli.quiet {
                    println!(
                        "point {} of {name:?} at {}: {}",
                        p.id,
                        human_time_zone(p.time),
                        super::contents(p.files, p.dirs, report.other, p.logical_bytes)
                    );
                }
            }
            Err(e) => {
                let e = crate::words::plain(&e.to_string());
                eprintln!("error: backup of item {name:?} failed: {e}");
                if run.json {
                    json_out.push(serde_json::json!({ "item": name, "error": e }));
                }
            }
        },
    )?;
    for e in done.plan.waiting_for_reprotect() {
        eprintln!(
            "skipped item {:?}: it was restored in place; `coffre-restore reprotect {}` \
             re-enables its backups",
            e.item, e.item
        );
    }
    let (expired, purged) = done.prune.as_ref().map_or((0, 0), |(plan, applied)| {
        (plan.expired().count(), applied.purged)
    });
    // The replicas follow once the new points are committed, without the writer lock.
    drop(lock);
    if run.no_wait {
        // Nor for a replica's lock (another replicate into it).
        vault.set_lock_wait(super::lock_wait(Some(std::time::Duration::ZERO)));
    }
    let (replicas, replicas_failed) = if replicate && !done.backed_up.is_empty() {
        super::replicate::replicate_all(cli, &vault, run.json)?
    } else {
        (Vec::new(), false)
    };
    if run.json {
        let out = serde_json::json!({
            "backups": json_out,
            "failed": done.failed,
            "expired": expired,
            "purged": purged,
            "replicas": replicas,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if done.backed_up.is_empty() && done.failed.is_empty() {
        let next = done
            .plan
            .entries
            .iter()
            .filter(|e| e.state == ItemState::Protected)
            .filter_map(|e| e.next_slot.map(|t| (t, &e.item)))
            .min();
        match next {
            Some((t, item)) => println!("nothing is due; next: {item:?} at {}", human_time_zone(t)),
            None => println!("nothing is due"),
        }
    } else if done.prune.is_some() {
        println!(
            "pruned the items backed up: {} expired, {purged} purged",
            crate::words::plural(expired as u64, "point")
        );
    }
    Ok(if !done.failed.is_empty() || replicas_failed {
        ExitCode::FAILURE
    } else if done.partial {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::SUCCESS
    })
}
