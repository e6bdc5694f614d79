//! `coffre backup`: parse the item definitions, back each item up with `backup::backup_item`
//! (which registers or redefines the item only if its backup succeeds), print the results.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::{Cli, EXIT_PARTIAL, UsageError};
use crate::backup::BackupError;
use crate::backup::excludes::{check_excludes, parse_size};
use crate::backup::{
    BackupReport, Change, ChangeListener, DryRunReport, RunOptions, backup_item, dry_run_files,
};
use crate::progress::{Progress, human_bytes};
use crate::vault::{
    DiskSource, FilesSource, ItemSource, MAX_NOTE_BYTES, PointLabels, Vault, VmSource, check_tag,
    human_time_zone,
};

#[derive(clap::Args)]
pub struct BackupArgs {
    /// Item name: back up PATH as this item (registered on first use)
    #[arg(long, value_name = "NAME")]
    item: Option<String>,
    /// With --item: the directory to back up. Without: names of stored items to back up again
    #[arg(value_name = "PATH|NAME")]
    args: Vec<std::ffi::OsString>,
    /// Leave out entries matching PATTERN (repeatable; gitignore rules: a pattern without `/`
    /// matches a name at any depth, one with `/` is anchored at PATH, `dir/` matches directories
    /// only, `**`, `{a,b}` and `!pattern` work)
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// As --exclude, ignoring case
    #[arg(long, value_name = "PATTERN")]
    iexclude: Vec<String>,
    /// Read --exclude patterns from FILE, one a line (`#` comments); the file is read again at
    /// every backup of the item
    #[arg(long, value_name = "FILE")]
    exclude_file: Vec<PathBuf>,
    /// Leave out the contents of directories holding a valid CACHEDIR.TAG (the tag is kept)
    #[arg(long)]
    exclude_caches: bool,
    /// Leave out the contents of directories holding a file named NAME (the file is kept);
    /// NAME:HEADER only counts a file that starts with HEADER
    #[arg(long, value_name = "NAME[:HEADER]")]
    exclude_if_present: Vec<String>,
    /// Leave out files larger than SIZE (bytes, or with K, M, G, T: powers of 1024)
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    exclude_larger_than: Option<u64>,
    /// Do not descend into other file systems (mount points are kept as empty directories)
    #[arg(long, short = 'x')]
    one_file_system: bool,
    /// Write nothing: walk the source as the backup would and say what it would read (with -v,
    /// list each file: `+ PATH` new, `M PATH` changed since the last point)
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Back up every protected item whose schedule had a slot since its newest point (one
    /// catch-up backup however many were missed), then prune those items: the systemd timer's
    /// command
    #[arg(long, conflicts_with_all = ["item", "args", "exclude", "iexclude", "exclude_file",
        "exclude_caches", "exclude_if_present", "exclude_larger_than", "one_file_system", "time",
        "keep_until", "policy", "dry_run"])]
    due: bool,
    /// With --due: do not bring the replicas named with `coffre vault set replica` up to date
    /// afterwards (without it, each existing one is; a missing one, perhaps unplugged, is an
    /// error and never created)
    #[arg(long, requires = "due")]
    no_replicate: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// Options every backup command takes.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Fail at once if another writer holds the vault (with --due: or a replica), instead of
    /// waiting (as --lock-wait 0)
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
    /// Tag the new point (repeatable, or comma-separated: `--tag a,b`); `points --tag` selects
    #[arg(long, value_name = "TAG")]
    tag: Vec<String>,
    /// A free-text note on the new point, shown by `coffre points`
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
}

impl RunArgs {
    /// The tags and note of the new points, checked (a bad one is a usage error).
    pub(super) fn labels(&self) -> Result<PointLabels> {
        let mut tags: Vec<String> = Vec::new();
        for t in self.tag.iter().flat_map(|t| t.split(',')) {
            check_tag(t).map_err(|e| UsageError(e.to_string()))?;
            if !tags.iter().any(|x| x == t) {
                tags.push(t.to_string());
            }
        }
        if let Some(n) = &self.note
            && n.len() > MAX_NOTE_BYTES
        {
            return Err(UsageError(format!("--note is longer than {MAX_NOTE_BYTES} bytes")).into());
        }
        Ok(PointLabels {
            tags,
            note: self.note.clone(),
        })
    }
}

/// Parses `--exclude-larger-than`.
fn size_arg(s: &str) -> std::result::Result<u64, String> {
    parse_size(s).ok_or_else(|| "use a size in bytes, or with K, M, G or T (10M, 1G)".into())
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

impl BackupArgs {
    /// True for `backup --due`.
    pub fn due(&self) -> bool {
        self.due
    }
}

/// `coffre backup --item NAME PATH [--exclude GLOB]... [-x]` or `coffre backup NAME...`
pub fn run(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    if args.due {
        return super::schedule::run_due(cli, &args.run, !args.no_replicate);
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
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("cannot back up {}", path.to_string_lossy()))?;
        if !path.is_dir() {
            bail!(
                "{} is not a directory (disk images come with `backup-disk`)",
                path.display()
            );
        }
        let def = files_source(path, args)?;
        todo.push((name.clone(), Ok(ItemSource::Files(def))));
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
    if args.dry_run {
        return dry_run(cli, todo, &args.run);
    }
    execute(cli, todo, &args.run)
}

/// The definition `backup --item NAME PATH` gives: PATH and the exclude options, checked (a bad
/// pattern or an unreadable exclude file is a usage error, found before the vault is touched).
fn files_source(path: PathBuf, args: &BackupArgs) -> Result<FilesSource> {
    let mut exclude_files = Vec::new();
    for f in &args.exclude_file {
        exclude_files.push(
            std::fs::canonicalize(f).map_err(|e| {
                UsageError(format!("cannot read exclude file {}: {e}", f.display()))
            })?,
        );
    }
    let def = FilesSource {
        path,
        excludes: args.exclude.clone(),
        one_file_system: args.one_file_system,
        iexcludes: args.iexclude.clone(),
        exclude_files,
        exclude_caches: args.exclude_caches,
        exclude_if_present: args.exclude_if_present.clone(),
        exclude_larger_than: args.exclude_larger_than,
    };
    check_excludes(&def).map_err(|e| UsageError(e.to_string()))?;
    Ok(def)
}

/// Prints `+ PATH` / `M PATH` for each file a backup reads (`-v`).
fn change_listener() -> ChangeListener {
    ChangeListener(std::sync::Arc::new(|change, path| {
        let mark = match change {
            Change::New => '+',
            Change::Modified => 'M',
        };
        println!("{mark} {path}");
    }))
}

/// `backup --dry-run`: walks each files item as its backup would, writing nothing (no lock, no
/// vault created, no point, no pack).
fn dry_run(cli: &Cli, todo: Vec<(String, Result<ItemSource>)>, run: &RunArgs) -> Result<ExitCode> {
    run.labels()?;
    let path = cli.vault_path()?;
    let vault = Vault::exists(&path).then(|| cli.open_vault()).transpose()?;
    let opts = RunOptions {
        on_change: (cli.verbose > 0 && !run.json).then(change_listener),
        ..RunOptions::default()
    };
    let mut json_out = Vec::new();
    let mut failed = false;
    for (name, job) in todo {
        let report = job.and_then(|job| match job {
            ItemSource::Files(def) => Ok(dry_run_files(vault.as_ref(), &name, &def, &opts)?),
            other => Err(UsageError(format!(
                "--dry-run applies to files items; {name:?} is a {} item",
                other.kind().as_str()
            ))
            .into()),
        });
        match report {
            Ok(r) if run.json => {
                let mut v = serde_json::to_value(&r)?;
                v["item"] = name.into();
                json_out.push(v);
            }
            Ok(r) => print_dry_run(&name, &r),
            Err(e) if e.downcast_ref::<UsageError>().is_some() => return Err(e),
            Err(e) => {
                eprintln!("error: {}", super::error_line(&e));
                failed = true;
            }
        }
    }
    if run.json {
        println!("{}", serde_json::to_string_pretty(&json_out)?);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_dry_run(name: &str, r: &DryRunReport) {
    for w in &r.warnings {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
    println!(
        "dry run of {name:?}: would back up {} files, {} dirs, {}",
        r.files,
        r.dirs,
        human_bytes(r.logical_bytes)
    );
    println!(
        "  would read {} files ({}): {} new, {} changed; nothing was written",
        r.new_files + r.modified_files,
        human_bytes(r.read_bytes),
        r.new_files,
        r.modified_files
    );
}

/// The first option given to `coffre backup NAME...` that only `--item NAME PATH` can apply.
fn stored_form_refuses(args: &BackupArgs) -> Option<&'static str> {
    [
        (!args.exclude.is_empty(), "--exclude"),
        (!args.iexclude.is_empty(), "--iexclude"),
        (!args.exclude_file.is_empty(), "--exclude-file"),
        (args.exclude_caches, "--exclude-caches"),
        (!args.exclude_if_present.is_empty(), "--exclude-if-present"),
        (args.exclude_larger_than.is_some(), "--exclude-larger-than"),
        (args.one_file_system, "--one-file-system"),
    ]
    .into_iter()
    .find_map(|(given, opt)| given.then_some(opt))
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
    let labels = run.labels()?;
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
        let result = job.and_then(|job| backup_one(cli, &vault, &lock, &name, &job, run, &labels));
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
    labels: &PointLabels,
) -> Result<BackupReport> {
    // -v lists the files read, one a line: no progress line between them.
    let listing = cli.verbose > 0 && !run.json;
    let opts = RunOptions {
        threads: run.threads,
        progress: !cli.quiet && !run.json && !listing,
        time: run.time,
        keep_until: run.keep_until,
        policy: run.policy.clone(),
        labels: labels.clone(),
        on_change: listing.then(change_listener),
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
