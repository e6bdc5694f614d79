//! `coffre backup`: register or look up items, run the backup, print the point and warnings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::{Cli, EXIT_PARTIAL, UsageError};
use crate::backup::disk::{DiskOptions, backup_disks};
use crate::backup::files::{BackupReport, FilesOptions, backup_files, check_excludes};
use crate::backup::vm::{VmOptions, backup_vm};
use crate::progress::human_bytes;
use crate::vault::{Item, ItemKind, Vault, human_time, now_ns};

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
    #[command(flatten)]
    run: RunArgs,
}

/// Options every backup command takes.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Fail at once if another backup holds the vault, instead of waiting
    #[arg(long)]
    no_wait: bool,
    /// Worker threads (0 = one per core, at most 256)
    #[arg(long, default_value_t = 0, value_parser = super::threads_arg)]
    threads: usize,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
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

/// The stored definition of a VM item.
#[derive(serde::Serialize, serde::Deserialize)]
struct VmSource {
    config: PathBuf,
    disks: Vec<PathBuf>,
    #[serde(default)]
    pre_script: Option<String>,
    #[serde(default)]
    post_script: Option<String>,
}

/// The stored definition of a disk item.
#[derive(serde::Serialize, serde::Deserialize)]
struct DiskSource {
    images: Vec<PathBuf>,
}

/// One backup to run.
enum Job {
    Files(FilesSource),
    Disk(DiskSource),
    Vm(VmSource),
}

impl Job {
    fn kind(&self) -> ItemKind {
        match self {
            Job::Files(_) => ItemKind::Files,
            Job::Disk(_) => ItemKind::Disk,
            Job::Vm(_) => ItemKind::Vm,
        }
    }
    fn source(&self) -> Result<serde_json::Value> {
        Ok(match self {
            Job::Files(s) => serde_json::to_value(s)?,
            Job::Disk(s) => serde_json::to_value(s)?,
            Job::Vm(s) => serde_json::to_value(s)?,
        })
    }
}

/// The stored definition of a files item.
#[derive(serde::Serialize, serde::Deserialize)]
struct FilesSource {
    path: PathBuf,
    #[serde(default)]
    excludes: Vec<String>,
    #[serde(default)]
    one_file_system: bool,
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
    let todo = vec![(args.item.clone(), Ok(Job::Disk(DiskSource { images })))];
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
    let todo = vec![(args.item.clone(), Ok(Job::Vm(src)))];
    execute(cli, todo, &args.run)
}

/// `coffre backup --item NAME PATH [--exclude GLOB]... [-x]` or `coffre backup NAME...`
pub fn run(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    let mut todo: Vec<(String, Result<Job>)> = Vec::new();
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
            Ok(Job::Files(FilesSource {
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

/// The stored definition of item `name`, as a job.
fn stored_job(vault: &Vault, name: &std::ffi::OsStr) -> Result<Job> {
    let name = name
        .to_str()
        .with_context(|| format!("no item is named {name:?} (item names are UTF-8)"))?;
    let item = vault.item(name)?;
    let bad = || format!("item {name:?} has no usable stored definition");
    Ok(match item.kind {
        ItemKind::Files => {
            Job::Files(serde_json::from_value(item.source.clone()).with_context(bad)?)
        }
        ItemKind::Disk => Job::Disk(serde_json::from_value(item.source.clone()).with_context(bad)?),
        ItemKind::Vm => Job::Vm(serde_json::from_value(item.source.clone()).with_context(bad)?),
    })
}

/// Backs up every item of `todo` (one failing does not stop the others), reports each result,
/// and returns the worst status: 1 if any item failed, else 3 if any point misses entries, else 0.
fn execute(cli: &Cli, todo: Vec<(String, Result<Job>)>, run: &RunArgs) -> Result<ExitCode> {
    let json = run.json;
    let vault = cli.open_or_init_vault()?;
    let lock = vault.lock(!run.no_wait)?;
    let total = todo.len();
    let (mut failed, mut partial) = (Vec::new(), false);
    let mut json_out = Vec::new();
    for (name, job) in todo {
        match job.and_then(|job| backup_one(cli, &vault, &lock, &name, &job, run)) {
            Ok(report) => {
                partial |= !report.warnings.is_empty();
                if json {
                    json_out.push(serde_json::json!({
                        "item": name,
                        "point": report.point,
                        "catalog_bytes": report.catalog_bytes,
                        "warnings": report.warnings,
                    }));
                } else {
                    print_report(&name, &report);
                }
            }
            Err(e) => {
                let line = super::error_line(&e);
                eprintln!("error: {line}");
                if json {
                    json_out.push(serde_json::json!({ "item": name, "error": line }));
                }
                failed.push(name);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&json_out)?);
    }
    if !failed.is_empty() {
        if total > 1 {
            eprintln!(
                "error: {} of {total} items failed: {}",
                failed.len(),
                failed.join(", ")
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(if partial {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::SUCCESS
    })
}

/// Backs up one item. Its definition is stored only once the backup succeeded, and an item
/// created for this backup is removed again if the backup fails (no item with 0 points).
fn backup_one(
    cli: &Cli,
    vault: &Vault,
    lock: &crate::vault::WriteLock,
    name: &str,
    job: &Job,
    run: &RunArgs,
) -> Result<BackupReport> {
    let threads = run.threads;
    let progress = !cli.quiet && !run.json;
    if let Some(item) = vault.catalog().item(name)?
        && item.state != crate::vault::PROTECTED
    {
        if item.state == crate::vault::NEEDS_REPROTECT {
            bail!(
                "skipping item {name:?}: it was restored in place; run `coffre-restore reprotect {name}` first"
            );
        }
        bail!(
            "skipping item {name:?}: its protection is stopped; `coffre resume-protection {name}` resumes it"
        );
    }
    let (item, created) = register(vault, name, job)?;
    let report = match job {
        Job::Files(src) => {
            let opts = FilesOptions {
                excludes: src.excludes.clone(),
                one_file_system: src.one_file_system,
                threads,
                progress,
            };
            backup_files(vault, lock, &item, &src.path, &opts)
        }
        Job::Disk(src) => {
            let opts = DiskOptions { threads, progress };
            backup_disks(vault, lock, &item, &src.images, &opts)
        }
        Job::Vm(src) => {
            let opts = VmOptions {
                pre_script: src.pre_script.clone(),
                post_script: src.post_script.clone(),
                disk: DiskOptions { threads, progress },
            };
            backup_vm(vault, lock, &item, &src.config, &src.disks, &opts)
        }
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            if created && let Err(d) = vault.catalog().delete_item_without_points(item.id) {
                log::warn!("cannot remove item {name:?} after its failed first backup: {d}");
            }
            return Err(anyhow::Error::from(e).context(format!("backup of item {name:?} failed")));
        }
    };
    // The point is committed: now the definition that made it becomes the stored one.
    let value = job.source()?;
    if !created && item.source != value {
        vault.catalog().set_item_source(item.id, &value)?;
    }
    Ok(report)
}

fn print_report(name: &str, report: &BackupReport) {
    for w in &report.warnings {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
    let p = &report.point;
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

/// Finds the item, or creates it (`true`: created now). An existing item's stored definition is
/// left as it is: `backup_one` replaces it once the backup succeeded.
fn register(vault: &Vault, name: &str, job: &Job) -> Result<(Item, bool)> {
    let catalog = vault.catalog();
    match catalog.item(name)? {
        Some(item) if item.kind != job.kind() => {
            bail!(
                "item {name:?} already exists as a {} item",
                item.kind.as_str()
            )
        }
        Some(item) => Ok((item, false)),
        None => Ok((
            catalog.create_item(name, job.kind(), &job.source()?, now_ns())?,
            true,
        )),
    }
}
