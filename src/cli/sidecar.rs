//! `coffre-restore`: whole-disk and VM restores, and re-protection after an in-place restore.
//!
//! Thin: parses arguments, plans with `restore::image`, prints the plan (`--dry-run` stops there),
//! applies it; `reprotect` is `protection::reprotect`. No workflow lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};

use super::UsageError;
use crate::progress::human_bytes;
use crate::protection::{Reprotected, reprotect};
use crate::restore::image::{
    ImagePlan, RestorePlan, RestoreTarget, apply_plan, images_in, plan_disk, plan_vm,
};
use crate::vault::{Item, ItemKind, PointRow, Vault};

/// Restore whole disks and virtual machines from a coffre vault, and re-protect an item after an
/// in-place restore so its next backup continues incrementally.
#[derive(Parser)]
#[command(name = "coffre-restore", version, propagate_version = true)]
struct Sidecar {
    /// The vault directory [default: $COFFRE_VAULT, else $XDG_DATA_HOME/coffre/vault, else
    /// ~/.local/share/coffre/vault]
    #[arg(long, global = true, value_name = "DIR")]
    vault: Option<PathBuf>,
    /// Quiet: no progress bars and no lines about what is written (a --dry-run still shows
    /// its plan); warnings, errors and what to run next remain
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Restore a disk image to a file or block device (sparse; every block checked)
    Disk {
        /// Item and point: NAME (latest) or NAME@POINT (an id or prefix, latest~N, a time, or a
        /// mount directory name such as 2026-11-23T140005Z)
        #[arg(value_name = "NAME[@POINT]")]
        spec: String,
        /// Target file or block device
        #[arg(
            long,
            value_name = "PATH|DEVICE",
            conflicts_with = "in_place",
            required_unless_present = "in_place"
        )]
        to: Option<PathBuf>,
        /// Write the images back where they were backed up from (the item then needs
        /// `coffre-restore reprotect` before its next backup)
        #[arg(long)]
        in_place: bool,
        /// Which image of the point, if it has several (as named in the point)
        #[arg(long, value_name = "NAME")]
        image: Option<String>,
        /// Overwrite an existing target (with --to; --in-place always overwrites)
        #[arg(long, conflicts_with = "in_place")]
        force: bool,
        /// Show what would be written, write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a VM (config and disks) to a directory, or in place
    Vm {
        #[arg(value_name = "NAME[@POINT]")]
        spec: String,
        /// Target directory: DIR/<config> and DIR/disks/<disk>.img
        #[arg(
            long,
            value_name = "DIR",
            conflicts_with = "in_place",
            required_unless_present = "in_place"
        )]
        to: Option<PathBuf>,
        /// Write config and disks back where they were backed up from
        #[arg(long)]
        in_place: bool,
        /// With --to: protect the restored copy as a new VM item (its first backup stores
        /// almost nothing new)
        #[arg(long, value_name = "NEW", requires = "to")]
        protect_as: Option<String>,
        /// Overwrite existing files in DIR (with --to; --in-place always overwrites)
        #[arg(long, conflicts_with = "in_place")]
        force: bool,
        /// Show what would be written, write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-enable protection of an item restored in place, with the restored point as baseline
    Reprotect {
        name: String,
        /// Re-protect even if the item's disks no longer match the restored point
        #[arg(long)]
        force: bool,
    },
}

/// The `coffre-restore` command line with the manual's longer descriptions.
pub fn command() -> clap::Command {
    super::docs::document(Sidecar::command(), super::docs::SIDECAR_DETAILS)
}

/// Entry point of the `coffre-restore` binary.
pub fn main() -> ExitCode {
    super::private_umask();
    super::default_sigpipe();
    let cli: Sidecar = super::parse(command());
    super::init_logging("warn");
    match run(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", super::error_line(&e));
            super::exit_code_for(&e)
        }
    }
}

fn open(cli: &Sidecar) -> Result<Vault> {
    let path = cli
        .vault
        .clone()
        .or_else(Vault::default_path)
        .context("no vault given: pass --vault DIR or set COFFRE_VAULT")?;
    let mut vault = Vault::open(&path)?;
    super::warn_if_exposed(&vault);
    vault.set_lock_wait(super::lock_wait(None));
    Ok(vault)
}

fn resolve(vault: &Vault, spec: &str, kind: ItemKind) -> Result<(Item, PointRow)> {
    let (name, point) = crate::vault::split_point_ref(spec);
    let item = vault.item(name)?;
    if item.kind != kind {
        let hint = match item.kind {
            ItemKind::Files => "restore its files with `coffre restore` or from `coffre mount`",
            ItemKind::Disk => "use `coffre-restore disk`",
            ItemKind::Vm => "use `coffre-restore vm`",
        };
        bail!("item {name:?} is a {} item; {hint}", item.kind.as_str());
    }
    let point = vault.resolve_point(&item, point)?;
    Ok((item, point))
}

fn show(plans: &[ImagePlan], dry: bool) {
    for p in plans {
        println!(
            "{} {} -> {} ({} logical, {} data{}{})",
            if dry { "would restore" } else { "restoring" },
            p.source,
            p.target.display(),
            human_bytes(p.size),
            human_bytes(p.data_bytes),
            if p.device { ", block device" } else { "" },
            if p.overwrite { ", overwriting" } else { "" },
        );
        if p.own_source {
            println!("  (the item's own source: this is an in-place restore)");
        }
    }
}

fn execute(vault: &Vault, plan: &RestorePlan, dry: bool, quiet: bool) -> Result<()> {
    if dry || !quiet {
        show(&plan.images, dry);
    }
    if dry {
        return Ok(());
    }
    crate::interrupt::end_with(&format!(
        "interrupted: the restore of {}@{} did not finish; a file target is replaced only when \
         complete (a partial copy may remain beside it), a device may be partly written; the same \
         command completes it",
        plan.item.name, plan.point
    ));
    let lock = if plan.in_place || plan.protect_as.is_some() {
        Some(vault.lock(true)?)
    } else {
        None
    };
    let out = apply_plan(vault, lock.as_ref(), plan, !quiet, |p, n| {
        if !quiet {
            println!(
                "  {} written to {}, every block checked",
                human_bytes(n),
                p.target.display()
            );
        }
    })
    .with_context(|| format!("restore of {}@{} failed", plan.item.name, plan.point))?;
    let name = &plan.item.name;
    if out.needs_reprotect {
        println!(
            "item {name:?} is now needs-reprotect: run `coffre-restore reprotect {name}` before its next backup"
        );
    }
    if let Some(new) = &out.protected_as {
        println!(
            "the restored copy is now protected as item {new:?}: back it up with `coffre backup {new}`"
        );
    }
    Ok(())
}

fn run(cli: &Sidecar) -> Result<ExitCode> {
    let vault = open(cli)?;
    match &cli.command {
        Cmd::Disk {
            spec,
            to,
            in_place,
            image,
            force,
            dry_run,
        } => {
            let (item, point) = resolve(&vault, spec, ItemKind::Disk)?;
            let names = images_in(&vault, &point, "")?;
            if let Some(i) = image
                && !names.contains(i)
            {
                return Err(UsageError(format!(
                    "--image {i}: point {} has no such image (it has {})",
                    point.id,
                    names.join(", ")
                ))
                .into());
            }
            let target = match (to, in_place) {
                (_, true) => RestoreTarget::InPlace,
                (Some(to), false) => RestoreTarget::To(to.clone()),
                (None, false) => {
                    return Err(UsageError("give --to PATH|DEVICE or --in-place".into()).into());
                }
            };
            let plan = plan_disk(&vault, &item, &point, &target, image.as_deref(), *force)?;
            execute(&vault, &plan, *dry_run, cli.quiet)?;
        }
        Cmd::Vm {
            spec,
            to,
            in_place,
            protect_as,
            force,
            dry_run,
        } => {
            if let Some(new) = protect_as {
                super::check_item_name(new)?;
            }
            let (item, point) = resolve(&vault, spec, ItemKind::Vm)?;
            let target = match (to, in_place) {
                (_, true) => RestoreTarget::InPlace,
                (Some(to), false) => RestoreTarget::To(to.clone()),
                (None, false) => {
                    return Err(UsageError("give --to DIR or --in-place".into()).into());
                }
            };
            let plan = plan_vm(
                &vault,
                &item,
                &point,
                &target,
                *force,
                protect_as.as_deref(),
            )?;
            execute(&vault, &plan, *dry_run, cli.quiet)?;
        }
        Cmd::Reprotect { name, force } => {
            let lock = vault.lock(true)?;
            match reprotect(&vault, &lock, name, *force)? {
                Reprotected::NothingToDo(state) => {
                    println!("item {name:?} is {state}; nothing to re-protect")
                }
                Reprotected::Baseline(point) => println!(
                    "item {name:?} is protected again with point {point} as its baseline: the next \
                     backup stores only blocks changed since the restore"
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
