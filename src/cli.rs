//! The `coffre` command line: clap definitions, dispatch, output and exit codes.
//!
//! The only layer that uses `anyhow`; it turns library errors into one `error: ...` line and an
//! exit code (0 ok, 1 error, 2 usage, 3 backup finished but some entries could not be read).
//! It holds no storage logic: every command calls `backup`, `restore`, `protection`, `mount`,
//! `maintenance`, `schedule` or `vault`.

mod backup;
mod browse;
mod docs;
mod generate;
mod items;
mod list;
mod maint;
mod mount;
mod policy;
mod prune;
mod replicate;
mod restore;
mod schedule;
mod settings;
pub mod sidecar;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::vault::seal::ReplicaKey;
use crate::vault::{InitOptions, LockWait, Vault};

/// Exit code: some entries could not be captured (the point was still made).
pub const EXIT_PARTIAL: u8 = 3;
/// Exit code: interrupted by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// coffre keeps recovery points of directories, disk images and VMs in a deduplicated,
/// compressed vault that you can browse (coffre mount) and restore from.
#[derive(Parser)]
#[command(name = "coffre", version, propagate_version = true)]
pub struct Cli {
    /// The vault directory [default: $COFFRE_VAULT, else $XDG_DATA_HOME/coffre/vault, else
    /// ~/.local/share/coffre/vault], or a replica in object storage (s3://BUCKET/PREFIX,
    /// azure://CONTAINER/PREFIX), read-only
    #[arg(long, global = true, value_name = "DIR|URL")]
    vault: Option<PathBuf>,
    /// More output: -v lists each file a backup reads (`+ PATH` new, `M PATH` changed) and logs
    /// info; -vv debug
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Quiet: no progress bars and no summaries; warnings, errors and --json output remain
    #[arg(short, long, global = true)]
    quiet: bool,
    /// How long to wait for another writer to release the vault (`30s`, `5m`, `1h`; `0`: fail
    /// at once) [default: as long as it takes, saying whom it waits for]
    #[arg(long, global = true, value_name = "DURATION", value_parser = duration_arg)]
    lock_wait: Option<std::time::Duration>,
    /// The key file of an encrypted replica, to read one (`--vault s3://...|file:///DIR`) or to
    /// replicate or repair with another key than the vault's own [default: $COFFRE_KEY_FILE]
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new, empty vault
    Init {
        /// zstd compression level for new data (-7 to 22; higher is smaller and slower)
        #[arg(long, default_value_t = crate::vault::DEFAULT_ZSTD_LEVEL,
              value_parser = clap::value_parser!(i32).range(-7..=22))]
        zstd_level: i32,
        /// Bytes of neighbouring disk-image blocks compressed together, a multiple of 32K up to
        /// 1M: 32K (one block per frame) keeps random reads through the mount fastest; 1M stored
        /// the benchmark images 12-20 % smaller, and the first random read of a frame then costs
        /// milliseconds (see `coffre vault set image-frame`)
        #[arg(long, value_name = "SIZE", default_value = "32K",
              value_parser = crate::vault::parse_image_frame)]
        image_frame: usize,
    },
    /// Back up a directory as a new recovery point
    ///
    /// `coffre backup --item NAME PATH` backs up PATH as item NAME (registering it on first use and
    /// remembering PATH and the options); `coffre backup NAME...` backs up stored items again;
    /// `coffre backup --due` backs up the items their policies' schedules say are due.
    Backup(backup::BackupArgs),
    /// Back up raw disk images or block devices as one recovery point (a `disk` item)
    BackupDisk(backup::BackupDiskArgs),
    /// Back up a VM's config file and disks as one recovery point (a `vm` item)
    BackupVm(backup::BackupVmArgs),
    /// List protected items: kind, state, policy, points, last point and source
    Items {
        #[arg(long)]
        json: bool,
    },
    /// Show, change, rename or remove one item
    Item(items::ItemArgs),
    /// List recovery points (of one item, or all) with when each expires
    Points {
        /// Item name
        item: Option<String>,
        /// List soft-deleted points instead, with their purge time
        #[arg(long)]
        deleted: bool,
        /// Only points with these tags (`--tag a,b`: both; repeated: either, as restic)
        #[arg(long, value_name = "TAG[,TAG...]")]
        tag: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show vault totals: logical vs stored bytes, dedup and compression ratios
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// List the entries of a point (no FUSE needed), like `restic ls`
    Ls(browse::LsArgs),
    /// Find entries by name or path glob across every point of some items, newest first
    Find(browse::FindArgs),
    /// Show what changed between two points: + added, - removed, M modified, U metadata only,
    /// T type changed
    Diff(browse::DiffArgs),
    /// Write a file of a point to stdout, or a directory as a tar stream
    Dump(browse::DumpArgs),
    /// Restore files from a recovery point into a directory (no FUSE needed)
    Restore(restore::RestoreArgs),
    /// Show every recovery point as a read-only file system (foreground; Ctrl-C or umount ends it)
    Mount(mount::MountArgs),
    /// Stop protecting an item: no new backups; its points are kept (or soft-deleted with
    /// --delete-data)
    StopProtection {
        name: String,
        /// Also soft-delete the item's points (their data is reclaimed by a later gc)
        #[arg(long)]
        delete_data: bool,
    },
    /// Resume backups of a stopped item
    ResumeProtection { name: String },
    /// Unmount a coffre mount
    Umount {
        /// The mount point
        mountpoint: PathBuf,
    },
    /// Manage policies: when items are backed up and how long their points are kept
    Policy(policy::PolicyArgs),
    /// Apply retention: soft-delete expired points, purge those whose soft-delete period ended
    Prune(prune::PruneArgs),
    /// Soft-delete chosen points (recoverable with `coffre undelete` for the soft-delete period)
    Forget(prune::ForgetArgs),
    /// Bring back a soft-deleted point
    Undelete(prune::UndeleteArgs),
    /// Purge soft-deleted points now, before their soft-delete period ends
    Purge(prune::PurgeArgs),
    /// Show each item's last point, next scheduled slot and whether it is due
    Schedule(schedule::ScheduleArgs),
    /// Show or change the vault's settings (soft-delete period, immutability, replicas)
    Vault(settings::VaultArgs),
    /// Read every stored byte back and check it against its id (exit 1 if anything is damaged)
    ///
    /// Checks the catalog (as `coffre check` does), then reads every pack holding data of the
    /// chosen points, decompresses it and checks each chunk's BLAKE3 id, on all cores. Packs are
    /// read least recently verified first and each one's time is kept, so a time-boxed run
    /// (`--max-duration`) continues where the last one stopped. Damaged chunks are marked bad
    /// (the next backup stores them again from the source) and the files that need them are
    /// named as the mount shows them.
    Verify(maint::VerifyArgs),
    /// Check the catalog quickly: every point's trees and lists, every chunk's pack present and
    /// long enough (no data is read; exit 1 on a problem)
    Check(maint::CheckArgs),
    /// Reclaim the space of data no live or soft-deleted point needs
    ///
    /// Packs with nothing live are deleted; packs mostly garbage are rewritten. Runs beside
    /// backups (it takes the writer lock only for short commits) and mounts (a pack a running
    /// mount or restore may still read is deleted by a later gc, after it ends).
    Gc(maint::GcArgs),
    /// Copy this vault's points to a replica (a directory, S3 or Azure Blob), incrementally
    ///
    /// Copies the packs the new points need that the replica lacks (each one read back and
    /// checked), then adds their points in one commit: a point appears on the replica only with
    /// all its data. Soft deletes, undeletes and purges follow this vault. `coffre --vault DIR`
    /// (or `--vault s3://...`, `--vault azure://...`: read-only) lists, restores, mounts and
    /// verifies the replica like any vault.
    Replicate(replicate::ReplicateArgs),
    /// Fetch damaged or missing data back from a replica (exit 1 if some stays missing)
    ///
    /// Every chunk marked bad (by `coffre verify`, a read that failed, or a pack that is missing
    /// or short), every chunk with no row or in a pack the catalog no longer names, and every
    /// damaged tree or content list is read from the replica, checked against its id and
    /// stored again in new packs of this vault; a point whose root cannot be followed takes the
    /// root the same point has in a replica of this vault.
    Repair(replicate::RepairArgs),
    /// Write man pages or shell completions (see README: Install)
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

impl Cli {
    fn vault_path(&self) -> Result<PathBuf> {
        self.vault
            .clone()
            .or_else(Vault::default_path)
            .context("no vault given: pass --vault DIR or set COFFRE_VAULT")
    }

    fn open_vault(&self) -> Result<Vault> {
        let path = self.vault_path()?;
        // A replica in object storage (s3://, azure://) opens read-only from its cached catalog.
        let mut vault = match crate::vault::objstore::remote_url(&path) {
            Some(url) => Vault::open_remote(url, self.given_key()?)?,
            None => Vault::open(&path)?,
        };
        warn_if_exposed(&vault);
        vault.set_lock_wait(self.lock_wait());
        Ok(vault)
    }

    /// Opens the vault, creating it on first use (the first backup needs no `init`).
    fn open_or_init_vault(&self) -> Result<Vault> {
        let path = self.vault_path()?;
        let remote = crate::vault::objstore::remote_url(&path).is_some();
        if !remote && !Vault::exists(&path) && !path.exists() {
            eprintln!("creating vault {}", path.display());
            let mut vault = Vault::init(&path, &InitOptions::default())?;
            vault.set_lock_wait(self.lock_wait());
            return Ok(vault);
        }
        self.open_vault()
    }

    /// The key given with --key-file or COFFRE_KEY_FILE, if any.
    fn given_key(&self) -> Result<Option<ReplicaKey>> {
        let file = self.key_file.clone().or_else(|| {
            std::env::var_os("COFFRE_KEY_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        match file {
            Some(f) => Ok(Some(ReplicaKey::from_file(&f).map_err(anyhow::Error::msg)?)),
            None => Ok(None),
        }
    }

    /// The key a replica of `vault` is sealed with: the one given, else the vault's own.
    fn replica_key(&self, vault: &Vault) -> Result<Option<ReplicaKey>> {
        match self.given_key()? {
            Some(k) => Ok(Some(k)),
            None => Ok(vault.replica_key()?),
        }
    }

    /// How writers wait for the vault lock (`--lock-wait`).
    fn lock_wait(&self) -> LockWait {
        lock_wait(self.lock_wait)
    }
}

/// Waits up to `limit` (none: as long as it takes), saying on stderr whom it waits for.
pub fn lock_wait(limit: Option<std::time::Duration>) -> LockWait {
    LockWait {
        limit,
        on_wait: Some(|holder| match holder {
            Some(h) => eprintln!("waiting for the vault lock held by {h}"),
            None => eprintln!("waiting for the vault lock held by another process"),
        }),
    }
}

/// Parses `--lock-wait`: a number of seconds, or a duration with units (`30s`, `5m`, `1h30m`).
pub fn duration_arg(s: &str) -> std::result::Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration: use e.g. 0, 30s, 5m, 1h or 1h30m");
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let d: jiff::SignedDuration = s.parse().map_err(|_| bad())?;
    std::time::Duration::try_from(d).map_err(|_| bad())
}

/// Says, in one line (once per run, however often the vault is opened), when other users can
/// read the vault (made by an older coffre, or loosened by hand) and how to close it.
pub fn warn_if_exposed(vault: &Vault) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some((path, mode)) = vault.exposed()
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        eprintln!(
            "warning: other users may read vault {} ({} has mode {mode:04o}); fix: chmod -R go-rwx {}",
            vault.root().display(),
            path.display(),
            vault.root().display()
        );
    }
}

/// What both binaries do first: files they create (vault, restored copies) are private to the
/// user unless coffre sets another mode on purpose.
pub fn private_umask() {
    // SAFETY: umask only sets the process's file creation mask.
    unsafe { libc::umask(0o077) };
}

/// `coffre points | head` ends quietly, like any Unix tool, instead of panicking on a closed
/// pipe (Rust ignores SIGPIPE by default).
pub fn default_sigpipe() {
    // SAFETY: restores the default disposition of one signal; no handler runs Rust code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// A bad argument found after parsing (clap finds the others): one `error:` line, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit code 2 for a usage error, 1 for any other error.
pub fn exit_code_for(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// `vault::check_item_name` as a usage error, for every argument that names a new item.
pub fn check_item_name(name: &str) -> Result<()> {
    crate::vault::check_item_name(name).map_err(|e| UsageError(e.to_string()).into())
}

/// Parses `--threads N`: 0 (the default: as many as there are cores) up to
/// `threads::MAX_THREADS`; anything else is a usage error.
pub fn threads_arg(s: &str) -> std::result::Result<usize, String> {
    let max = crate::threads::MAX_THREADS;
    match s.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("use a number from 0 (automatic) to {max}")),
    }
}

/// One line for an error and its causes, leaving out a cause whose text the line already holds
/// (library errors often name their source in their own message).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = crate::words::plain(&cause.to_string());
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The `coffre` command line with the manual's longer descriptions (`--help` and the man pages
/// show the same words).
pub fn command() -> clap::Command {
    docs::document(Cli::command(), docs::DETAILS)
}

/// Parses the process's arguments with `cmd`: a usage error is clap's message in plain words
/// (`words::plain`) and exit code 2; `--help` and `--version` print and exit 0.
fn parse<T: FromArgMatches>(cmd: clap::Command) -> T {
    try_parse(cmd).unwrap_or_else(|e| exit_with(e))
}

fn try_parse<T: FromArgMatches>(cmd: clap::Command) -> Result<T, clap::Error> {
    cmd.try_get_matches().and_then(|m| T::from_arg_matches(&m))
}

/// Ends the process for a clap error: help and version as clap prints them, a usage error in
/// plain words with exit code 2.
fn exit_with(e: clap::Error) -> ! {
    if !e.use_stderr() {
        e.exit();
    }
    eprint!("{}", crate::words::plain(&e.render().to_string()));
    std::process::exit(2)
}

/// Log lines as the other messages look: `warning: ...` in plain words (`-v`: `info: ...`).
fn init_logging(filter: &str) {
    use std::io::Write;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format(|buf, record| {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug | log::Level::Trace => "debug",
            };
            let text = crate::words::plain(&record.args().to_string());
            writeln!(buf, "{level}: {text}")
        })
        .init();
}

pub use crate::progress::plural;

/// Warnings with their messages in plain words (`words::plain`), for text and JSON alike.
pub fn plain_warnings(ws: &[crate::backup::Warning]) -> Vec<crate::backup::Warning> {
    ws.iter()
        .map(|w| crate::backup::Warning {
            path: w.path.clone(),
            message: crate::words::plain(&w.message),
        })
        .collect()
}

/// What a point holds, in the same words for `backup` and `restore` (so the two agree):
/// `3 files, 1 dir, 2 other entries, 1.2 MiB` (other entries: symlinks, fifos, devices; left out
/// when there are none).
pub fn contents(files: u64, dirs: u64, other: u64, bytes: u64) -> String {
    let mut s = format!("{}, {}", plural(files, "file"), plural(dirs, "dir"));
    if other > 0 {
        s.push_str(&format!(", {}", plural(other, "other entry")));
    }
    s.push_str(&format!(", {}", crate::progress::human_bytes(bytes)));
    s
}

/// Entry point of the `coffre` binary.
pub fn main() -> ExitCode {
    private_umask();
    default_sigpipe();
    let json = json_requested(std::env::args_os());
    let cli: Cli = match try_parse(command()) {
        Ok(cli) => cli,
        Err(e) if json && e.use_stderr() => {
            // clap's message without its usage and hint lines, on one line.
            let text = crate::words::plain(&e.render().to_string());
            let message = text.split("\n\n").next().unwrap_or_default();
            let message = message.strip_prefix("error: ").unwrap_or(message);
            print_json_error(&message.split_whitespace().collect::<Vec<_>>().join(" "));
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
        Err(e) => exit_with(e),
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // fuser warns when the kernel already dropped a mount that `umount` ended: not news.
    init_logging(&format!("{level},fuser=error"));
    match run(&cli) {
        Ok(code) => code,
        Err(e) if json => {
            print_json_error(&error_line(&e));
            exit_code_for(&e)
        }
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            exit_code_for(&e)
        }
    }
}

/// Whether `--json` was asked for (before a `--`): errors are then JSON too.
fn json_requested(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    args.skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// An error under `--json`: one line `{"error": "..."}` on stderr (stdout keeps only what a
/// command printed before it failed); the exit code is the same as without `--json`.
pub(crate) fn print_json_error(message: &str) {
    #[derive(serde::Serialize)]
    struct JsonError<'a> {
        error: &'a str,
    }
    let line = serde_json::to_string(&JsonError { error: message })
        .unwrap_or_else(|_| r#"{"error":"(unprintable)"}"#.to_string());
    eprintln!("{line}");
}

/// Refuses `--key-file` where nothing would use it (never a silently ignored option): it reads
/// an encrypted replica (`--vault URL`) or seals one (replicate, repair, backup --due).
fn check_key_file(cli: &Cli) -> Result<()> {
    let Some(file) = &cli.key_file else {
        return Ok(());
    };
    let remote = cli
        .vault_path()
        .is_ok_and(|v| crate::vault::objstore::remote_url(&v).is_some());
    let uses = match &cli.command {
        Command::Replicate(_) | Command::Repair(_) => true,
        Command::Backup(args) => args.due(),
        _ => false,
    };
    if remote || uses {
        return Ok(());
    }
    Err(UsageError(format!(
        "--key-file {} is not used here: it reads an encrypted replica (--vault s3://..., \
         azure://..., file:///DIR) or seals one (replicate, repair, backup --due)",
        file.display()
    ))
    .into())
}

fn run(cli: &Cli) -> Result<ExitCode> {
    check_key_file(cli)?;
    match &cli.command {
        Command::Init {
            zstd_level,
            image_frame,
        } => {
            let path = cli.vault_path()?;
            if let Some(url) = crate::vault::objstore::remote_url(&path) {
                anyhow::bail!(
                    "{url} is object storage: a vault is made there by `coffre replicate --to {url}`"
                );
            }
            let v = Vault::init(
                &path,
                &InitOptions {
                    zstd_level: *zstd_level,
                    image_frame: *image_frame,
                },
            )
            .with_context(|| format!("cannot create a vault in {}", path.display()))?;
            println!("created vault {} (id {})", v.root().display(), v.id());
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup(args) => backup::run(cli, args),
        Command::BackupDisk(args) => backup::run_disk(cli, args),
        Command::BackupVm(args) => backup::run_vm(cli, args),
        Command::Items { json } => list::items(&cli.open_vault()?, *json),
        Command::Item(args) => items::run(cli, args),
        Command::Points {
            item,
            deleted,
            tag,
            json,
        } => list::points(&cli.open_vault()?, item.as_deref(), *deleted, tag, *json),
        Command::Stats { json } => list::stats(&cli.open_vault()?, *json),
        Command::Ls(args) => browse::ls(cli, args),
        Command::Find(args) => browse::find(cli, args),
        Command::Diff(args) => browse::diff(cli, args),
        Command::Dump(args) => browse::dump(cli, args),
        Command::Restore(args) => restore::run(cli, args),
        Command::Mount(args) => mount::run(cli, args),
        Command::StopProtection { name, delete_data } => {
            let vault = cli.open_vault()?;
            let lock = vault.lock(true)?;
            let n = crate::protection::stop(&vault, &lock, name, *delete_data)?;
            if *delete_data {
                let how = match vault.settings()?.soft_delete_days {
                    0 => "purged (soft delete is off)".to_string(),
                    days => format!(
                        "soft-deleted, recoverable for {}",
                        plural(days.into(), "day")
                    ),
                };
                let n = plural(n as u64, "point");
                println!("protection of {name:?} stopped; {n} deleted ({how})");
            } else {
                println!("protection of {name:?} stopped; its points are kept");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ResumeProtection { name } => {
            let vault = cli.open_vault()?;
            let lock = vault.lock(true)?;
            crate::protection::resume(&vault, &lock, name)?;
            println!("protection of {name:?} resumed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Umount { mountpoint } => {
            crate::mount::umount(mountpoint)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(args) => policy::run(cli, args),
        Command::Prune(args) => prune::prune(cli, args),
        Command::Forget(args) => prune::forget(cli, args),
        Command::Undelete(args) => prune::undelete(cli, args),
        Command::Purge(args) => prune::purge(cli, args),
        Command::Schedule(args) => schedule::show(cli, args),
        Command::Vault(args) => settings::run(cli, args),
        Command::Verify(args) => maint::verify(cli, args),
        Command::Check(args) => maint::check(cli, args),
        Command::Gc(args) => maint::gc(cli, args),
        Command::Replicate(args) => replicate::run(cli, args),
        Command::Repair(args) => replicate::repair(cli, args),
        Command::Generate(args) => generate::run(args),
    }
}
