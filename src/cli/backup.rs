//! `coffre backup`: parse the item definitions, back each item up with `backup::backup_item`
//! (which registers or redefines the item only if its backup succeeds), print the results.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::{Cli, EXIT_PARTIAL, UsageError};
use crate::backup::BackupError;
use crate::backup::files::check_excludes;
use crate::backup::{BackupReport, RunOptions, backup_item};
use crate::progress::{Progress, human_bytes};
use crate::vault::{DiskSource, FilesSource, ItemSource, Vault, VmSource, human_time_zone};

#[derive(clap::Args)]
pub struct BackupArgs {
    /// Item name: back up PATH as this item (registered on first use)
    #[arg(long, value_name = "NAME")]
    item: Option<String>,
    /// With --item: the directory to back up. Without: names of stored items to back up again
    #[arg(value_name = "PATH|NAME")]
    args: Vec<std::ffi::OsString>,
    /// Leave out entries matching GLOB (repeatable). A pattern with `/` matches the path
    /// relative to the backed-up directory (or the absolute path); one without matches any name
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Do not descend into other file systems (mount points are kept as empty directories)
    #[arg(long, short = 'x')]
    one_file_system: bool,
    /// Back up every protected item whose schedule had a slot since its newest point (one
    /// catch-up backup however many were missed), then prune those items: the systemd timer's
    /// command
    #[arg(long, conflicts_with_all = ["item", "args", "exclude", "one_file_system", "time", "keep_until", "policy"])]
    due: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// Options every backup command takes.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Fail at once if another backup holds the vault, instead of waiting
    #[arg(long)]
    pub(super) no_wait: bool,
    /// Worker threads (0 = one per core, at most 256)
    #[arg(long, default_value_t = 0, value_parser = super::threads_arg)]
    pub(super) threads: usize,
    /// Print the result as JSON
    #[arg(long)]
    pub(super) json: bool,
    /// Record the point as taken at TIME (RFC 3339, e.g. 2026-11-23T02:00:00Z), to import old
    /// backups
    #[arg(long, value_name = "TIME", value_parser = super::policy::parse_time)]
    time: Option<i64>,
    /// Keep the new point at least until TIME (RFC 3339), whatever its policy says
    #[arg(long, value_name = "TIME", value_parser = super::policy::parse_time)]
    keep_until: Option<i64>,
    /// The policy a new item follows [default: default] (to change an item's policy: `coffre
    /// policy assign`)
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
}

/// Arguments of `coffre backup-disk`.
#[derive(clap::Args)]
pub struct BackupDiskArgs {
    /// Item name (registered on first use; the images are remembered)
    #[arg(long, value_name = "NAME")]
    item: String,
    /// Raw image files or block devices; each shows as <name>.img in the point
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

/// Arguments of `coffre backup-vm`.
#[derive(clap::Args)]
pub struct BackupVmArgs {
    /// Item name (registered on first use; config, disks and scripts are remembered)
    #[arg(long, value_name = "NAME")]
    item: String,
    /// The VM's config file (shown at the top of each point)
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// A disk image or block device of the VM (repeatable; shown under disks/)
    #[arg(long = "disk", value_name = "IMAGE", required = true)]
    disks: Vec<PathBuf>,
    /// Run before the disks are read (sh -c); if it fails, no point is made
    #[arg(long, value_name = "CMD")]
    pre_script: Option<String>,
    /// Run after the capture, even when it or the pre-script failed (sh -c)
    #[arg(long, value_name = "CMD")]
    post_script: Option<String>,
    #[command(flatten)]
    run: RunArgs,
}

/// `coffre backup-disk --item NAME IMAGE...`
pub fn run_disk(cli: &Cli, args: &BackupDiskArgs) -> Result<ExitCode> {
    super::check_item_name(&args.item)?;
    let mut images = Vec::new();
    for p in &args.images {
        images.push(
            std::fs::canonicalize(p).with_context(|| format!("cannot back up {}", p.display()))?,
        );
    }
    let todo = vec![(
        args.item.clone(),
        Ok(ItemSource::Disk(DiskSource { images })),
    )];
    execute(cli, todo, &args.run)
}

fn canonical(p: &std::path::Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("cannot back up {}", p.display()))
}

/// `coffre backup-vm --item NAME --config FILE --disk IMAGE...`
pub fn run_vm(cli: &Cli, args: &BackupVmArgs) -> Result<ExitCode> {
    super::check_item_name(&args.item)?;
    let disks = args
        .disks
        .iter()
        .map(|p| canonical(p))
        .collect::<Result<_>>()?;
    let src = VmSource {
        config: canonical(&args.config)?,
        disks,
        pre_script: args.pre_script.clone(),
        post_script: args.post_script.clone(),
    };
    let todo = vec![(args.item.clone(), Ok(ItemSource::Vm(src)))];
    execute(cli, todo, &args.run)
}

/// `coffre backup --item NAME PATH [--exclude GLOB]... [-x]` or `coffre backup NAME...`
pub fn run(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    if args.due {
        return super::schedule::run_due(cli, &args.run);
    }
    let mut todo: Vec<(String, Result<ItemSource>)> = Vec::new();
    if let Some(name) = &args.item {
        super::check_item_name(name)?;
        let [path] = args.args.as_slice() else {
            return Err(UsageError(
                "--item NAME takes exactly one PATH (the directory to back up)".into(),
            )
            .into());
        };
        // A bad pattern is a usage error, found before the vault is touched.
        check_excludes(&args.exclude).map_err(|e| UsageError(e.to_string()))?;
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("cannot back up {}", path.to_string_lossy()))?;
        if !path.is_dir() {
            bail!(
                "{} is not a directory (disk images come with `backup-disk`)",
                path.display()
            );
        }
        todo.push((
            name.clone(),
            Ok(ItemSource::Files(FilesSource {
                path,
                excludes: args.exclude.clone(),
                one_file_system: args.one_file_system,
            })),
        ));
    } else {
        if args.args.is_empty() {
            return Err(UsageError(
                "nothing to back up: use `coffre backup --item NAME PATH` or `coffre backup NAME...`"
                    .into(),
            )
            .into());
        }
        if let Some(opt) = stored_form_refuses(args) {
            return Err(UsageError(format!(
                "{opt} does not apply to `coffre backup NAME...`, which uses each item's stored \
                 definition; to change it, run `coffre backup --item NAME PATH {opt} ...`"
            ))
            .into());
        }
        if args.run.policy.is_some() {
            return Err(super::UsageError(
                "--policy chooses the policy of a new item (`coffre backup --item NAME PATH \
                 --policy P`); to change the policy of stored items: `coffre policy assign P NAME...`"
                    .into(),
            )
            .into());
        }
        let vault = cli.open_vault()?;
        for name in &args.args {
            let shown = name.to_string_lossy().into_owned();
            todo.push((shown, stored_job(&vault, name)));
        }
    }
    execute(cli, todo, &args.run)
}

/// The first option given to `coffre backup NAME...` that only `--item NAME PATH` can apply.
fn stored_form_refuses(args: &BackupArgs) -> Option<&'static str> {
    if !args.exclude.is_empty() {
        Some("--exclude")
    } else if args.one_file_system {
        Some("--one-file-system")
    } else {
        None
    }
}

/// The stored definition of item `name`.
fn stored_job(vault: &Vault, name: &std::ffi::OsStr) -> Result<ItemSource> {
    let name = name
        .to_str()
        .with_context(|| format!("no item is named {name:?} (item names are UTF-8)"))?;
    vault
        .item(name)?
        .source
        .with_context(|| format!("item {name:?} has no usable stored definition"))
}

/// Backs up every item of `todo` (one failing does not stop the others), reports each result,
/// and returns the worst status: 1 if any item failed, else 3 if any point misses entries, else 0;
/// 130 if Ctrl-C stopped it (the running backup commits nothing).
fn execute(cli: &Cli, todo: Vec<(String, Result<ItemSource>)>, run: &RunArgs) -> Result<ExitCode> {
    check_keep_until(run)?;
    let vault = cli.open_or_init_vault()?;
    let lock = vault.lock(!run.no_wait)?;
    // From here a Ctrl-C stops the running backup before its commit (see `interrupt`).
    crate::interrupt::catch();
    let total = todo.len();
    let items = Progress::items("backup", total as u64, !cli.quiet && !run.json && total > 1);
    let mut outcome = Outcome::default();
    for (name, job) in todo {
        if crate::interrupt::requested() {
            break;
        }
        let result = job.and_then(|job| backup_one(cli, &vault, &lock, &name, &job, run));
        items.next_item();
        match result {
            Err(e) if is_interrupted(&e) => break,
            Ok(report) => outcome.made(cli, run.json, name, &report),
            Err(e) => outcome.failed(run.json, name, &e),
        }
    }
    items.finish();
    outcome.finish(run.json, total)
}

/// `--keep-until` must be after the point's time (a usage error, found before the vault opens).
fn check_keep_until(run: &RunArgs) -> Result<()> {
    if let Some(until) = run.keep_until {
        let time = run.time.unwrap_or_else(crate::vault::now_ns);
        if until <= time {
            return Err(super::UsageError(format!(
                "--keep-until {} is not after the point's time ({})",
                human_time_zone(until),
                human_time_zone(time)
            ))
            .into());
        }
    }
    Ok(())
}

/// What `backup A B C` did so far.
#[derive(Default)]
struct Outcome {
    kept: Vec<String>,
    failed: Vec<String>,
    partial: bool,
    json: Vec<serde_json::Value>,
}

impl Outcome {
    fn made(&mut self, cli: &Cli, json: bool, name: String, report: &BackupReport) {
        self.partial |= !report.warnings.is_empty();
        if json {
            self.json.push(serde_json::json!({
                "item": name,
                "point": report.point,
                "catalog_bytes": report.catalog_bytes,
                "repaired": report.repaired,
                "warnings": super::plain_warnings(&report.warnings),
            }));
        } else {
            crate::progress::suspend(|| print_report(&name, report, cli.quiet));
        }
        self.kept.push(name);
    }

    fn failed(&mut self, json: bool, name: String, e: &anyhow::Error) {
        let line = super::error_line(e);
        crate::progress::suspend(|| eprintln!("error: {line}"));
        if json {
            self.json
                .push(serde_json::json!({ "item": name, "error": line }));
        }
        self.failed.push(name);
    }

    /// Prints the JSON and the closing line; the exit code.
    fn finish(self, json: bool, total: usize) -> Result<ExitCode> {
        if json {
            println!("{}", serde_json::to_string_pretty(&self.json)?);
        }
        if crate::interrupt::requested() {
            match json {
                true => super::print_json_error(&interrupted_line(&self.kept)),
                false => eprintln!("{}", interrupted_line(&self.kept)),
            }
            return Ok(ExitCode::from(super::EXIT_INTERRUPTED));
        }
        if !self.failed.is_empty() {
            if total > 1 {
                eprintln!(
                    "error: {} of {total} items failed: {}",
                    self.failed.len(),
                    self.failed.join(", ")
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        Ok(if self.partial {
            ExitCode::from(EXIT_PARTIAL)
        } else {
            ExitCode::SUCCESS
        })
    }
}

fn is_interrupted(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<BackupError>(),
        Some(BackupError::Interrupted)
    )
}

/// What an interrupted `backup` kept: the points committed before the interrupt, nothing else
/// (the running backup's session rolled back and deleted its packs).
fn interrupted_line(kept: &[String]) -> String {
    if kept.is_empty() {
        return "interrupted: nothing was committed; the vault is unchanged".into();
    }
    let names: Vec<String> = kept.iter().map(|n| format!("{n:?}")).collect();
    let (points, verb) = match kept.len() {
        1 => ("point", "is"),
        _ => ("points", "are"),
    };
    format!(
        "interrupted: the new {points} of {} {verb} kept; nothing else was committed",
        names.join(", ")
    )
}

/// Backs up one item (see `backup::backup_item`).
fn backup_one(
    cli: &Cli,
    vault: &Vault,
    lock: &crate::vault::WriteLock,
    name: &str,
    job: &ItemSource,
    run: &RunArgs,
) -> Result<BackupReport> {
    let opts = RunOptions {
        threads: run.threads,
        progress: !cli.quiet && !run.json,
        time: run.time,
        keep_until: run.keep_until,
        policy: run.policy.clone(),
    };
    backup_item(vault, lock, name, job, &opts)
        .with_context(|| format!("backup of item {name:?} failed"))
}

/// Warnings always (they set exit status 3), the summary unless `quiet`.
fn print_report(name: &str, report: &BackupReport, quiet: bool) {
    for w in super::plain_warnings(&report.warnings) {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
    if quiet {
        return;
    }
    let p = &report.point;
    println!(
        "point {} of {:?} at {}: {}",
        p.id,
        name,
        human_time_zone(p.time),
        super::contents(p.files, p.dirs, report.other, p.logical_bytes)
    );
    println!(
        "  new data {} in {}, {} written to packs, catalog +{}, {:.2} s",
        human_bytes(p.new_bytes),
        super::plural(p.new_chunks, "chunk"),
        human_bytes(p.stored_bytes),
        human_bytes(report.catalog_bytes),
        p.duration_ms as f64 / 1000.0
    );
    if report.repaired > 0 {
        println!(
            "  repaired: {} (chunks or catalog blobs) stored again from the source",
            super::plural(report.repaired, "damaged block")
        );
    }
    if !report.warnings.is_empty() {
        eprintln!(
            "{} could not be captured exactly (listed above); the point was made",
            super::plural(report.warnings.len() as u64, "entry")
        );
    }
}
