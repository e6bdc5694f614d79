//! `coffre backup`: register or look up items, run the backup, print the point and warnings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::{Cli, EXIT_PARTIAL};
use crate::backup::{RunOptions, backup_item};
use crate::progress::human_bytes;
use crate::vault::{DiskSource, FilesSource, ItemSource, VmSource, check_item_name, human_time};

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
    /// Worker threads [default: one per core]
    #[arg(long, default_value_t = 0)]
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

fn valid_item_name(name: &str) -> Result<()> {
    Ok(check_item_name(name)?)
}

/// `coffre backup-disk --item NAME IMAGE...`
pub fn run_disk(cli: &Cli, args: &BackupDiskArgs) -> Result<ExitCode> {
    valid_item_name(&args.item)?;
    let mut images = Vec::new();
    for p in &args.images {
        images.push(
            std::fs::canonicalize(p).with_context(|| format!("cannot back up {}", p.display()))?,
        );
    }
    let todo = vec![(args.item.clone(), ItemSource::Disk(DiskSource { images }))];
    execute(cli, todo, &args.run)
}

fn canonical(p: &std::path::Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("cannot back up {}", p.display()))
}

/// `coffre backup-vm --item NAME --config FILE --disk IMAGE...`
pub fn run_vm(cli: &Cli, args: &BackupVmArgs) -> Result<ExitCode> {
    valid_item_name(&args.item)?;
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
    let todo = vec![(args.item.clone(), ItemSource::Vm(src))];
    execute(cli, todo, &args.run)
}

pub fn run(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    if args.due {
        return super::schedule::run_due(cli, &args.run);
    }
    let mut todo: Vec<(String, ItemSource)> = Vec::new();
    if let Some(name) = &args.item {
        valid_item_name(name)?;
        let [path] = args.args.as_slice() else {
            bail!("--item NAME takes exactly one PATH (the directory to back up)");
        };
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
            ItemSource::Files(FilesSource {
                path,
                excludes: args.exclude.clone(),
                one_file_system: args.one_file_system,
            }),
        ));
    } else {
        if args.args.is_empty() {
            bail!(
                "nothing to back up: use `coffre backup --item NAME PATH` or `coffre backup NAME...`"
            );
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
            let name = name
                .to_str()
                .with_context(|| format!("no item is named {name:?} (item names are UTF-8)"))?;
            let item = vault.item(name)?;
            let job = item
                .source
                .with_context(|| format!("item {name:?} has no usable stored definition"))?;
            todo.push((name.to_string(), job));
        }
    }
    execute(cli, todo, &args.run)
}

fn execute(cli: &Cli, todo: Vec<(String, ItemSource)>, run: &RunArgs) -> Result<ExitCode> {
    let (no_wait, threads, json) = (run.no_wait, run.threads, run.json);
    if let Some(until) = run.keep_until {
        let time = run.time.unwrap_or_else(crate::vault::now_ns);
        if until <= time {
            return Err(super::UsageError(format!(
                "--keep-until {} UTC is not after the point's time ({} UTC)",
                human_time(until),
                human_time(time)
            ))
            .into());
        }
    }
    let vault = cli.open_or_init_vault()?;
    let lock = vault.lock(!no_wait)?;
    let mut code = ExitCode::SUCCESS;
    let mut json_out = Vec::new();
    let opts = RunOptions {
        threads,
        progress: !cli.quiet && !json,
        time: run.time,
        keep_until: run.keep_until,
        policy: run.policy.clone(),
    };

    for (name, job) in todo {
        let report = backup_item(&vault, &lock, &name, &job, &opts)
            .with_context(|| format!("backup of item {name:?} failed"))?;
        for w in &report.warnings {
            eprintln!("warning: {}: {}", w.path, w.message);
        }
        if !report.warnings.is_empty() {
            code = ExitCode::from(EXIT_PARTIAL);
        }
        let p = &report.point;
        if json {
            json_out.push(serde_json::json!({
                "point": p,
                "catalog_bytes": report.catalog_bytes,
                "warnings": report.warnings,
            }));
        } else {
            println!(
                "point {} of {:?} at {} UTC: {} files, {} dirs, {}",
                p.id,
                name,
                human_time(p.time),
                p.files,
                p.dirs,
                human_bytes(p.logical_bytes)
            );
            println!(
                "  new data {} in {} chunks, {} written to packs, catalog +{}, {:.2} s",
                human_bytes(p.new_bytes),
                p.new_chunks,
                human_bytes(p.stored_bytes),
                human_bytes(report.catalog_bytes),
                p.duration_ms as f64 / 1000.0
            );
            if !report.warnings.is_empty() {
                eprintln!(
                    "{} entries could not be captured exactly (listed above); the point was made",
                    report.warnings.len()
                );
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&json_out)?);
    }
    Ok(code)
}
