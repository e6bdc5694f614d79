//! `coffre-restore`: whole-disk and VM restores, and re-protection after an in-place restore.
//!
//! Thin: parses arguments, plans with `restore::image`, prints the plan (`--dry-run` stops there),
//! applies it, and moves protection states (`needs-reprotect` after an in-place restore,
//! `protected` again after `reprotect`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use super::UsageError;
use crate::progress::human_bytes;
use crate::restore::image::{ImagePlan, apply, differs, plan_image};
use crate::vault::{Item, ItemKind, PointRow, Vault, now_ns};

/// Restore whole disks and virtual machines from a coffre vault, and re-protect an item after an
/// in-place restore so its next backup continues incrementally.
#[derive(Parser)]
#[command(name = "coffre-restore", version, propagate_version = true)]
struct Sidecar {
    /// The vault directory [default: $COFFRE_VAULT, else $XDG_DATA_HOME/coffre/vault, else
    /// ~/.local/share/coffre/vault]
    #[arg(long, global = true, value_name = "DIR")]
    vault: Option<PathBuf>,
    /// No progress line
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Restore a disk image to a file or block device (sparse; every block checked)
    Disk {
        /// Item and point: NAME, NAME@ID or NAME@2026-11-23T140005Z
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

/// Entry point of the `coffre-restore` binary.
pub fn main() -> ExitCode {
    super::private_umask();
    let cli = Sidecar::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
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
    let vault = Vault::open(&path)?;
    super::warn_if_exposed(&vault);
    Ok(vault)
}

fn resolve(vault: &Vault, spec: &str, kind: ItemKind) -> Result<(Item, PointRow)> {
    let (name, point) = spec.split_once('@').unwrap_or((spec, "latest"));
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

fn paths(item: &Item, key: &str) -> Vec<PathBuf> {
    item.source
        .get(key)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(PathBuf::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Image names inside a point directory (or its `disks/`), in order.
fn images_in(vault: &Vault, point: &PointRow, dir: &str) -> Result<Vec<String>> {
    let root = crate::vault::format::decode_root(&point.root)?;
    let tree = if dir.is_empty() {
        root
    } else {
        crate::restore::files::lookup(vault, &root, std::ffi::OsStr::new(dir))?
    };
    let Some(id) = tree.subtree else {
        return Ok(Vec::new());
    };
    Ok(vault
        .catalog()
        .tree(&id)?
        .into_iter()
        .filter(|e| e.kind() == crate::vault::Kind::File)
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect())
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
    }
}

fn execute(vault: &Vault, plans: &[ImagePlan], dry: bool, quiet: bool) -> Result<()> {
    show(plans, dry);
    if dry {
        return Ok(());
    }
    for p in plans {
        let n =
            apply(vault, p, !quiet).with_context(|| format!("restore of {} failed", p.source))?;
        println!(
            "  {} written to {}, every block checked",
            human_bytes(n),
            p.target.display()
        );
    }
    Ok(())
}

/// Marks an item restored in place: backups wait for `reprotect`.
fn mark_restored(vault: &Vault, item: &Item, point: &PointRow) -> Result<()> {
    let mut src = item.source.clone();
    src["restored_point"] = point.id.clone().into();
    vault.catalog().set_item_source(item.id, &src)?;
    vault
        .catalog()
        .set_item_state(item.id, crate::vault::NEEDS_REPROTECT)?;
    println!(
        "item {:?} is now {}: run `coffre-restore reprotect {}` before its next backup",
        item.name,
        crate::vault::NEEDS_REPROTECT,
        item.name
    );
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
            let plans = if *in_place {
                let originals = paths(&item, "images");
                let mut plans = Vec::new();
                for orig in &originals {
                    let name = String::from_utf8_lossy(&crate::backup::disk::image_name(orig)?)
                        .into_owned();
                    if image.as_ref().is_some_and(|i| *i != name) {
                        continue;
                    }
                    plans.push(plan_image(&vault, &point, &name, orig, true)?);
                }
                if plans.is_empty() {
                    bail!(
                        "nothing to restore in place: none of the item's images ({}) is in point {}",
                        originals
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        point.id
                    );
                }
                plans
            } else {
                let name = match (image, names.as_slice()) {
                    (Some(i), _) => i.clone(),
                    (None, [one]) => one.clone(),
                    (None, many) => bail!(
                        "point {} has {} images ({}); choose one with --image",
                        point.id,
                        many.len(),
                        many.join(", ")
                    ),
                };
                let to = to.as_ref().context("give --to PATH|DEVICE or --in-place")?;
                vec![plan_image(&vault, &point, &name, to, *force)?]
            };
            let _lock = if *in_place && !dry_run {
                Some(vault.lock(true)?)
            } else {
                None
            };
            execute(&vault, &plans, *dry_run, cli.quiet)?;
            if *in_place && !dry_run {
                mark_restored(&vault, &item, &point)?;
            }
        }
        Cmd::Vm {
            spec,
            to,
            in_place,
            protect_as,
            force,
            dry_run,
        } => {
            // Everything --protect-as needs is checked before anything is written.
            if let Some(new) = protect_as {
                super::check_item_name(new)?;
                if vault.catalog().item(new)?.is_some() {
                    bail!(
                        "an item named {new:?} already exists; choose another name for --protect-as"
                    );
                }
            }
            let (item, point) = resolve(&vault, spec, ItemKind::Vm)?;
            let config = item
                .source
                .get("config")
                .and_then(|c| c.as_str())
                .map(PathBuf::from)
                .context("the VM item has no stored config path")?;
            let config_name = config
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut plans = Vec::new();
            if *in_place {
                plans.push(plan_image(&vault, &point, &config_name, &config, true)?);
                for orig in paths(&item, "disks") {
                    let name = String::from_utf8_lossy(&crate::backup::disk::image_name(&orig)?)
                        .into_owned();
                    plans.push(plan_image(
                        &vault,
                        &point,
                        &format!("disks/{name}"),
                        &orig,
                        true,
                    )?);
                }
            } else {
                let dir = to.as_ref().context("give --to DIR or --in-place")?;
                plans.push(plan_image(
                    &vault,
                    &point,
                    &config_name,
                    &dir.join(&config_name),
                    *force,
                )?);
                for name in images_in(&vault, &point, "disks")? {
                    let target = dir.join("disks").join(&name);
                    plans.push(plan_image(
                        &vault,
                        &point,
                        &format!("disks/{name}"),
                        &target,
                        *force,
                    )?);
                }
            }
            let _lock = if *in_place && !dry_run {
                Some(vault.lock(true)?)
            } else {
                None
            };
            execute(&vault, &plans, *dry_run, cli.quiet)?;
            if *dry_run {
                if let Some(new) = protect_as {
                    println!("would protect the restored copy as item {new:?}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if *in_place {
                mark_restored(&vault, &item, &point)?;
            } else if let Some(new) = protect_as {
                protect_copy(&vault, new, &plans)?;
            }
        }
        Cmd::Reprotect { name, force } => {
            let _lock = vault.lock(true)?;
            reprotect(&vault, name, *force)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Registers a VM restored to a new place as a new item (its first backup dedups against the
/// point it came from).
fn protect_copy(vault: &Vault, new: &str, plans: &[ImagePlan]) -> Result<()> {
    if vault.catalog().item(new)?.is_some() {
        bail!("an item named {new:?} already exists; choose another name for --protect-as");
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let config = canon(&plans[0].target);
    let disks: Vec<PathBuf> = plans[1..].iter().map(|p| canon(&p.target)).collect();
    let src = serde_json::json!({ "config": config, "disks": disks });
    vault
        .catalog()
        .create_item(new, ItemKind::Vm, &src, now_ns())?;
    println!(
        "the restored copy is now protected as item {new:?}: back it up with `coffre backup {new}`"
    );
    Ok(())
}

fn reprotect(vault: &Vault, name: &str, force: bool) -> Result<()> {
    let item = vault.item(name)?;
    if item.state != crate::vault::NEEDS_REPROTECT {
        println!("item {name:?} is {}; nothing to re-protect", item.state);
        return Ok(());
    }
    let pid = item
        .source
        .get("restored_point")
        .and_then(|p| p.as_str())
        .unwrap_or("latest")
        .to_string();
    let point = vault.resolve_point(&item, &pid)?;
    let pairs: Vec<(String, PathBuf)> = match item.kind {
        ItemKind::Disk => paths(&item, "images")
            .into_iter()
            .map(|p| {
                Ok((
                    String::from_utf8_lossy(&crate::backup::disk::image_name(&p)?).into_owned(),
                    p,
                ))
            })
            .collect::<Result<_>>()?,
        ItemKind::Vm => paths(&item, "disks")
            .into_iter()
            .map(|p| {
                let n = String::from_utf8_lossy(&crate::backup::disk::image_name(&p)?).into_owned();
                Ok((format!("disks/{n}"), p))
            })
            .collect::<Result<_>>()?,
        ItemKind::Files => bail!("files items never need re-protection"),
    };
    if !force {
        for (source, path) in &pairs {
            if let Some(off) = differs(vault, &point, source, path)? {
                bail!(
                    "{} no longer matches point {} (first difference at byte {off}); it changed \
                     since the restore. Restore again, or pass --force to re-protect it as it is",
                    path.display(),
                    point.id
                );
            }
        }
    }
    let mut src = item.source.clone();
    if let Some(o) = src.as_object_mut() {
        o.remove("restored_point");
    }
    vault.catalog().set_item_source(item.id, &src)?;
    vault
        .catalog()
        .set_item_state(item.id, crate::vault::PROTECTED)?;
    println!(
        "item {name:?} is protected again with point {} as its baseline: the next backup stores \
         only blocks changed since the restore",
        point.id
    );
    Ok(())
}
