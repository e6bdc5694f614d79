//! `coffre verify`, `check` and `gc`: the vault's health and its garbage, printed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use super::{Cli, UsageError};
use crate::maintenance::verify::{self, VerifyOptions, VerifyProgress, VerifyReport};
use crate::progress::{Progress, human_bytes};
use crate::vault::{GcOptions, GcReport, PointRow, Vault};
use crate::words::plural;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// What to verify: ITEM (its points) or ITEM@POINT [default: every point, live or
    /// soft-deleted]
    #[arg(value_name = "ITEM[@POINT]")]
    targets: Vec<String>,
    /// Stop starting packs after this long (e.g. 10m, 1h30m); the next run continues with the
    /// packs verified longest ago
    #[arg(long, value_name = "D", value_parser = super::duration_arg)]
    max_duration: Option<Duration>,
    /// Read only this percentage of the packs, chosen at random
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    sample: Option<f64>,
    /// Reading threads [default: 0 = one per core]
    #[arg(long, default_value_t = 0, value_parser = super::threads_arg)]
    threads: usize,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct GcArgs {
    /// Show what would be reclaimed, and change nothing
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Compression threads for repacking [default: 0 = one per core]
    #[arg(long, default_value_t = 0, value_parser = super::threads_arg)]
    threads: usize,
    /// Rewrite packs with less than PCT % of their bytes still needed (0 only deletes packs
    /// with nothing needed; 100 rewrites every pack holding any garbage)
    #[arg(long, value_name = "PCT", default_value_t = crate::vault::REPACK_BELOW * 100.0, value_parser = parse_share)]
    repack_below: f64,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// A percentage from 0 to 100 (`%` allowed).
fn parse_share(s: &str) -> std::result::Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "{s:?} is not a percentage: use a number from 0 to 100"
        )),
    }
}

/// A percentage above 0, up to 100.
fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    match parse_share(s) {
        Ok(p) if p > 0.0 => Ok(p),
        _ => Err(format!(
            "{s:?} is not a percentage: use a number above 0, up to 100"
        )),
    }
}

/// The points `verify` was asked about.
fn chosen_points(vault: &Vault, targets: &[String]) -> Result<Option<Vec<PointRow>>> {
    if targets.is_empty() {
        return Ok(None);
    }
    let mut out: Vec<PointRow> = Vec::new();
    for t in targets {
        match t.split_once('@') {
            Some((name, point)) if !name.is_empty() && !point.is_empty() => {
                out.push(vault.resolve_point_or_deleted(&vault.item(name)?, point)?);
            }
            Some(_) => {
                return Err(UsageError(format!(
                    "{t:?} does not name a point: give ITEM or ITEM@POINT"
                ))
                .into());
            }
            None => {
                let item = vault.item(t)?;
                let all = vault.all_points()?;
                out.extend(all.into_iter().filter(|p| p.item == item.name));
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    Ok(Some(out))
}

/// Progress of the data half on the terminal: a byte bar, its total known at `start`.
struct Line(Progress);

impl VerifyProgress for Line {
    fn start(&self, _packs: u64, bytes: u64) {
        self.0.add_total(bytes);
    }
    fn pack_done(&self, bytes: u64) {
        self.0.add(0, bytes);
    }
}

/// `coffre verify [ITEM[@POINT]...] [--max-duration D] [--sample PCT] [--json]`
pub fn verify(cli: &Cli, args: &VerifyArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    let points = chosen_points(&vault, &args.targets)?;
    let opts = VerifyOptions {
        max_duration: args.max_duration,
        sample: args.sample,
        threads: args.threads,
    };
    let line = Line(Progress::bytes("verify", 0, !cli.quiet && !args.json));
    let report = verify::verify(&vault, points, &opts, &line)?;
    line.0.finish();
    print_report(&report, args.json, true, cli.quiet)
}

/// `coffre check [--json]`
pub fn check(cli: &Cli, args: &CheckArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    let report = verify::check(&vault)?;
    print_report(&report, args.json, false, cli.quiet)
}

/// Prints the report (with `-q`, only when something is damaged) and gives the exit code.
fn print_report(r: &VerifyReport, json: bool, data: bool, quiet: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else if !(quiet && r.is_clean()) {
        print_text(r, data);
    }
    Ok(if r.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(r: &VerifyReport, data: bool) {
    let c = &r.check;
    println!(
        "catalog: {}, {}, {}, {} in {}",
        plural(c.points, "point"),
        plural(c.trees, "tree"),
        plural(c.lists, "content list"),
        plural(c.chunks, "chunk"),
        plural(c.packs, "pack")
    );
    for b in &c.broken {
        println!("damaged {} {}: {}", b.what, b.id, b.detail);
    }
    for p in &c.bad_packs {
        println!("pack {p} is missing or shorter than the catalog says");
    }
    if !c.bad_packs.is_empty() && c.bad_chunks.is_empty() {
        println!("  (no point needs data from it; `coffre gc` forgets it)");
    }
    for id in &c.missing_chunks {
        println!("chunk {id} is needed but not in the catalog");
    }
    let mut shown = std::collections::HashSet::new();
    for b in c.bad_chunks.iter().chain(&r.damaged_chunks) {
        if !shown.insert(&b.id) {
            continue;
        }
        println!("damaged chunk {} (pack {}): {}", b.id, b.pack, b.detail);
    }
    for p in &c.unknown_packs {
        println!("note: pack {p} is not named by the catalog (the next backup quarantines it)");
    }
    if data {
        println!(
            "data: {} of {} read ({}, {}) in {:.1} s{}",
            r.packs_verified,
            plural(r.packs_total, "pack"),
            human_bytes(r.bytes_read),
            plural(r.chunks_verified, "chunk"),
            r.seconds,
            if r.packs_left > 0 {
                format!(
                    "; {} left for the next run (it starts with them)",
                    plural(r.packs_left, "pack")
                )
            } else {
                String::new()
            }
        );
    }
    if !r.unreferenced_damaged.is_empty() {
        println!(
            "note: {} no point needs (marked bad, so no backup reuses them; `coffre gc` drops \
             them)",
            plural(r.unreferenced_damaged.len() as u64, "damaged chunk")
        );
    }
    if r.is_clean() {
        println!("no damage found in what the points need");
        return;
    }
    println!("damaged files ({}):", r.damaged_files.len());
    for f in &r.damaged_files {
        println!("  {}", f.path);
    }
    if !r.damaged_chunks.is_empty() {
        println!(
            "{}; the next backup of each item stores them again from its source if the source \
             still has them (`coffre restore` of the damaged files fails with an error naming them)",
            if r.marked {
                "damaged chunks are marked bad"
            } else {
                "damaged chunks will be marked bad by the next backup (a writer holds the vault)"
            }
        );
    }
}

/// `coffre gc [--dry-run] [--json]`
pub fn gc(cli: &Cli, args: &GcArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    let report = vault.gc(&GcOptions {
        dry_run: args.dry_run,
        threads: args.threads,
        repack_below: Some(args.repack_below / 100.0),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet || args.dry_run {
        print_gc(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_gc(r: &GcReport) {
    if r.dry_run {
        println!(
            "would delete {} with nothing live and repack {} (freeing about {}, writing about \
             {}), drop {}, {} and {}",
            plural(r.packs_emptied, "pack"),
            r.packs_repacked,
            human_bytes(r.bytes_deleted),
            human_bytes(r.bytes_written),
            plural(r.chunks_dropped, "chunk"),
            plural(r.trees_dropped, "tree"),
            plural(r.lists_dropped, "content list")
        );
        return;
    }
    println!(
        "gc: {} emptied, {} repacked ({} written), {} deleted ({}); dropped {}, {}, {}",
        plural(r.packs_emptied, "pack"),
        r.packs_repacked,
        human_bytes(r.bytes_written),
        plural(r.packs_deleted, "pack file"),
        human_bytes(r.bytes_deleted),
        plural(r.chunks_dropped, "chunk"),
        plural(r.trees_dropped, "tree"),
        plural(r.lists_dropped, "content list")
    );
    if r.orphans_deleted > 0 {
        println!(
            "deleted {} whose chunks the vault holds elsewhere ({})",
            plural(r.orphans_deleted, "quarantined pack"),
            human_bytes(r.orphan_bytes_deleted)
        );
    }
    if r.packs_waiting > 0 {
        println!(
            "{} ({}) wait for readers that started before this gc (a mount or restore); the \
             next `coffre gc` after they end deletes them",
            plural(r.packs_waiting, "pack"),
            human_bytes(r.bytes_waiting)
        );
    }
    let reclaimed = r.reclaimed();
    println!(
        "reclaimed {} of packs in {:.1} s ({} under the writer lock)",
        if reclaimed >= 0 {
            human_bytes(reclaimed as u64)
        } else {
            format!("-{}", human_bytes(reclaimed.unsigned_abs()))
        },
        r.seconds,
        plural(r.rounds, "round")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_or_say_what_is_wrong() {
        let d = super::super::duration_arg;
        assert_eq!(d("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(d("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(d("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(d("5").unwrap(), Duration::from_secs(5));
        for bad in ["", "m", "10x", "-5m"] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }
}
