//! `coffre backup`: register or look up items, run the backup, print the point and warnings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::{Cli, EXIT_PARTIAL};
use crate::backup::disk::{DiskOptions, backup_disks};
use crate::backup::files::{FilesOptions, backup_files};
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
    /// Worker threads [default: one per core]
    #[arg(long, default_value_t = 0)]
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
    let todo = vec![(args.item.clone(), Job::Disk(DiskSource { images }))];
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
    let todo = vec![(args.item.clone(), Job::Vm(src))];
    execute(cli, todo, &args.run)
}

pub fn run(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    let mut todo: Vec<(String, Job)> = Vec::new();
    if let Some(name) = &args.item {
        super::check_item_name(name)?;
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
            Job::Files(FilesSource {
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
        let vault = cli.open_vault()?;
        for name in &args.args {
            let name = name
                .to_str()
                .with_context(|| format!("no item is named {name:?} (item names are UTF-8)"))?;
            let item = vault.item(name)?;
            let bad = || format!("item {name:?} has no usable stored definition");
            let job = match item.kind {
                ItemKind::Files => {
                    Job::Files(serde_json::from_value(item.source.clone()).with_context(bad)?)
                }
                ItemKind::Disk => {
                    Job::Disk(serde_json::from_value(item.source.clone()).with_context(bad)?)
                }
                ItemKind::Vm => {
                    Job::Vm(serde_json::from_value(item.source.clone()).with_context(bad)?)
                }
            };
            todo.push((name.to_string(), job));
        }
    }
    execute(cli, todo, &args.run)
}

fn execute(cli: &Cli, todo: Vec<(String, Job)>, run: &RunArgs) -> Result<ExitCode> {
    let (no_wait, threads, json) = (run.no_wait, run.threads, run.json);
    let vault = cli.open_or_init_vault()?;
    let lock = vault.lock(!no_wait)?;
    let mut code = ExitCode::SUCCESS;
    let mut json_out = Vec::new();
    let progress = !cli.quiet && !json;
    for (name, job) in todo {
        if let Some(item) = vault.catalog().item(&name)?
            && item.state != crate::vault::PROTECTED
        {
            let why = if item.state == crate::vault::NEEDS_REPROTECT {
                format!("it was restored in place; run `coffre-restore reprotect {name}` first")
            } else {
                format!("its protection is stopped; `coffre resume-protection {name}` resumes it")
            };
            eprintln!("skipping item {name:?}: {why}");
            code = ExitCode::FAILURE;
            continue;
        }
        let item = register(&vault, &name, &job)?;
        let report = match &job {
            Job::Files(src) => {
                let opts = FilesOptions {
                    excludes: src.excludes.clone(),
                    one_file_system: src.one_file_system,
                    threads,
                    progress,
                };
                backup_files(&vault, &lock, &item, &src.path, &opts)
            }
            Job::Disk(src) => {
                let opts = DiskOptions { threads, progress };
                backup_disks(&vault, &lock, &item, &src.images, &opts)
            }
            Job::Vm(src) => {
                let opts = VmOptions {
                    pre_script: src.pre_script.clone(),
                    post_script: src.post_script.clone(),
                    disk: DiskOptions { threads, progress },
                };
                backup_vm(&vault, &lock, &item, &src.config, &src.disks, &opts)
            }
        }
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

/// Finds the item, creating it or updating its stored definition.
fn register(vault: &Vault, name: &str, job: &Job) -> Result<Item> {
    let value = job.source()?;
    let catalog = vault.catalog();
    match catalog.item(name)? {
        Some(item) if item.kind != job.kind() => {
            bail!(
                "item {name:?} already exists as a {} item",
                item.kind.as_str()
            )
        }
        Some(item) => {
            if item.source != value {
                catalog.set_item_source(item.id, &value)?;
            }
            Ok(item)
        }
        None => Ok(catalog.create_item(name, job.kind(), &value, now_ns())?),
    }
}
