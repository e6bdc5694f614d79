//! `coffre policy create|set|list|show|assign|rm`, and the time parser the lifecycle options
//! share (`--time`, `--keep-until`).

use std::process::ExitCode;

use anyhow::Result;

use super::{Cli, UsageError};
use crate::maintenance::policies::{assign_policy, create_policy, remove_policy, set_policy};
use crate::maintenance::{MaintenanceError, PolicyEdit};
use crate::policy::{MonthlyRule, Policy, Schedule, WeeklyRule, YearlyRule, Zone};
use crate::vault::{Item, Vault, check_policy_name, now_ns};

#[derive(clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(clap::Subcommand)]
enum PolicyCommand {
    /// Create a policy: when its items are backed up and how long their points are kept
    ///
    /// Example, for restic and borg users: `coffre policy create home --schedule "daily 02:00"
    /// --keep-daily 7 --keep-weekly 4 --keep-monthly 12` keeps the newest point of each day for 7
    /// days, of each week (ending on Sunday) for 4 weeks and of each month for 12 months.
    Create {
        /// The policy's name (letters, digits, '-', '_', '.')
        name: String,
        /// When to back up: "daily HH:MM" or "weekly DAY[,DAY...] HH:MM" (DAY mon..sun)
        #[arg(long, value_name = "SCHEDULE")]
        schedule: Schedule,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Change a policy; a change of retention applies to the existing points at the next prune
    Set {
        /// The policy's name
        name: String,
        /// When to back up: "daily HH:MM" or "weekly DAY[,DAY...] HH:MM" (DAY mon..sun)
        #[arg(long, value_name = "SCHEDULE")]
        schedule: Option<Schedule>,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// List policies
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a policy, its rules in words, and the items that follow it
    Show {
        /// The policy's name
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Make items follow a policy (their existing points are judged by it from the next prune)
    Assign {
        /// The policy's name
        name: String,
        #[arg(value_name = "ITEM", required = true)]
        items: Vec<String>,
        /// Fail at once if another writer holds the vault, instead of waiting
        #[arg(long)]
        no_wait: bool,
    },
    /// Remove a policy that no item follows
    Rm {
        /// The policy's name
        name: String,
    },
}

/// The retention flags and the zone, shared by `create` and `set`.
#[derive(clap::Args)]
struct RuleArgs {
    /// Keep the newest point of each day for N days (0 turns the rule off)
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Keep the newest point of each week, weeks ending on DAY (default sun), for N weeks
    #[arg(long, value_name = "N[@DAY]")]
    keep_weekly: Option<WeeklyRule>,
    /// Keep the newest point of each month-period, ending on day DOM or `last` (default 1), for
    /// N months
    #[arg(long, value_name = "N[@DOM]")]
    keep_monthly: Option<MonthlyRule>,
    /// Keep the newest point of each year-period, ending on MON-DOM (default jan-1), for N years
    #[arg(long, value_name = "N[@MON-DOM]")]
    keep_yearly: Option<YearlyRule>,
    /// The time zone the schedule and the days are read in (an IANA name such as Europe/Paris)
    /// [default for a new policy: the machine's]
    #[arg(long, value_name = "TZ")]
    timezone: Option<Zone>,
}

impl RuleArgs {
    fn edit(&self, schedule: Option<Schedule>) -> PolicyEdit {
        PolicyEdit {
            schedule,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            zone: self.timezone.clone(),
        }
    }
}

/// Parses `--time` and `--keep-until`: an RFC 3339 time, as nanoseconds since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "{s:?} is not an RFC 3339 time between 1970 and 2262; give one such as \
             2026-11-23T02:00:00Z or 2026-11-23T03:00:00+01:00"
        )
    };
    let t: jiff::Timestamp = s.trim().parse().map_err(|_| bad())?;
    crate::maintenance::ns_of(t)
        .filter(|&ns| ns >= 0)
        .ok_or_else(bad)
}

/// A policy library error: a policy that keeps nothing or a bad value is a usage error.
fn usage_or(e: MaintenanceError) -> anyhow::Error {
    match e {
        MaintenanceError::Policy(p) => UsageError(p.to_string()).into(),
        MaintenanceError::Vault(crate::vault::VaultError::BadPolicyName(b)) => {
            UsageError(b.to_string()).into()
        }
        other => other.into(),
    }
}

pub fn run(cli: &Cli, args: &PolicyArgs) -> Result<ExitCode> {
    match &args.command {
        PolicyCommand::Create {
            name,
            schedule,
            rules,
        } => {
            check_policy_name(name).map_err(|e| UsageError(e.to_string()))?;
            // Check the rules before the vault is touched.
            let edit = rules.edit(Some(*schedule));
            edit.apply_to(None).map_err(|e| UsageError(e.to_string()))?;
            let vault = cli.open_vault()?;
            let lock = vault.lock(true)?;
            let policy = create_policy(&vault, &lock, name, &edit).map_err(usage_or)?;
            println!("created policy {name}: {}", summary(&policy));
        }
        PolicyCommand::Set {
            name,
            schedule,
            rules,
        } => {
            let edit = rules.edit(*schedule);
            let vault = cli.open_vault()?;
            let lock = vault.lock(true)?;
            let (old, new) = set_policy(&vault, &lock, name, &edit, now_ns()).map_err(usage_or)?;
            if old == new {
                println!("policy {name} unchanged: {}", summary(&new));
            } else {
                println!("policy {name}: {}", summary(&new));
                println!("  was: {}", summary(&old));
                if old.retention != new.retention || old.zone != new.zone {
                    println!(
                        "  the next prune judges every point of its items by the new retention"
                    );
                }
            }
        }
        PolicyCommand::List { json } => list(&cli.open_vault()?, *json)?,
        PolicyCommand::Show { name, json } => show(&cli.open_vault()?, name, *json)?,
        PolicyCommand::Assign {
            name,
            items,
            no_wait,
        } => {
            let vault = cli.open_vault()?;
            let lock = vault.lock(!no_wait)?;
            let items: Vec<Item> = items
                .iter()
                .map(|n| vault.item(n))
                .collect::<Result<_, _>>()?;
            assign_policy(&vault, &lock, name, &items, now_ns())?;
            let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
            println!("{} now follow policy {name}", names.join(", "));
        }
        PolicyCommand::Rm { name } => {
            let vault = cli.open_vault()?;
            let lock = vault.lock(true)?;
            remove_policy(&vault, &lock, name)?;
            println!("removed policy {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `daily 02:00 (Europe/Paris), --keep-daily 7 --keep-weekly 4@sun`
fn summary(p: &Policy) -> String {
    format!("{} ({}), {}", p.schedule, p.zone, p.retention)
}

/// The items that follow each policy.
fn followers(vault: &Vault, name: &str) -> Result<Vec<String>> {
    Ok(vault
        .items()?
        .into_iter()
        .filter(|i| i.policy == name)
        .map(|i| i.name)
        .collect())
}

fn as_json(vault: &Vault, name: &str, p: &Policy) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(p)?;
    v["name"] = name.into();
    v["items"] = followers(vault, name)?.into();
    Ok(v)
}

fn list(vault: &Vault, json: bool) -> Result<()> {
    let policies = vault.policies()?;
    if json {
        let all = policies
            .iter()
            .map(|(n, p)| as_json(vault, n, p))
            .collect::<Result<Vec<_>>>()?;
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<24} {:<16} {:>5}  RETENTION",
        "POLICY", "SCHEDULE", "ZONE", "ITEMS"
    );
    for (name, p) in policies {
        println!(
            "{:<16} {:<24} {:<16} {:>5}  {}",
            name,
            p.schedule.to_string(),
            p.zone.name(),
            followers(vault, &name)?.len(),
            p.retention
        );
    }
    Ok(())
}

fn show(vault: &Vault, name: &str, json: bool) -> Result<()> {
    let p = vault.policy(name)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&as_json(vault, name, &p)?)?
        );
        return Ok(());
    }
    println!("policy     {name}");
    println!("schedule   {} ({})", p.schedule, p.zone);
    println!("retention  {}", p.retention);
    let r = &p.retention;
    if let Some(n) = r.daily() {
        println!(
            "  daily    the newest point of each day, kept {}",
            crate::words::plural(u64::from(n), "day")
        );
    }
    if let Some(w) = r.weekly() {
        // `4@sun`: the rule as typed names its day.
        let rule = w.to_string();
        let day = rule.rsplit('@').next().unwrap_or("sun");
        println!(
            "  weekly   the newest point of each week ending on {day}, kept {}",
            crate::words::plural(u64::from(w.count), "week")
        );
    }
    if let Some(m) = r.monthly() {
        println!(
            "  monthly  the newest point of each month-period ending on day {}, kept {} months",
            m.day, m.count
        );
    }
    if let Some(y) = r.yearly() {
        // `3@jan-1`: the rule as typed names its date.
        let rule = y.to_string();
        let date = rule.rsplit('@').next().unwrap_or("jan-1");
        println!(
            "  yearly   the newest point of each year-period ending on {date}, kept {} years",
            y.count
        );
    }
    println!(
        "  others   a point with no role expires 1 day after it was taken; the newest point of \
         an item never expires"
    );
    println!("zone       {}", p.zone);
    let items = followers(vault, name)?;
    let items = match items.is_empty() {
        true => "(none)".to_string(),
        false => items.join(", "),
    };
    println!("items      {items}");
    Ok(())
}
