//! `coffre item show|edit|rename|rm NAME`: one item at a time (`coffre items` lists them all).
//! Parses and prints; the workflows are in `crate::items`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{Cli, UsageError, table};
use crate::backup::excludes::{check_excludes, parse_size};
use crate::items::{ItemEdit, ItemSummary, Removed, edit, remove, rename, summary};
use crate::progress::human_bytes;
use crate::vault::{ItemRemoval, ItemSource, human_time};

#[derive(clap::Args)]
pub struct ItemArgs {
    #[command(subcommand)]
    command: ItemCommand,
}

#[derive(clap::Subcommand)]
enum ItemCommand {
    /// Show an item: kind, source, excludes, scripts, policy, state, points and the last point
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Change an item's path, exclude rules, scripts or policy (used from its next backup)
    Edit(EditArgs),
    /// Rename an item; its points, files cache and policy follow
    Rename { name: String, new_name: String },
    /// Remove an item (refused while it has points, unless --forget-points)
    Rm {
        name: String,
        /// Soft-delete the item's points too, as `coffre forget` does (`coffre undelete` brings
        /// them back during the vault's soft-delete period; the item goes when they are purged)
        #[arg(long)]
        forget_points: bool,
    },
}

#[derive(clap::Args)]
struct EditArgs {
    name: String,
    /// The directory a files item backs up
    #[arg(long, value_name = "DIR")]
    path: Option<PathBuf>,
    /// Drop every exclude rule first (then add the ones given)
    #[arg(long)]
    clear_excludes: bool,
    /// Add an exclude pattern (as `backup --exclude`)
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Add a case-insensitive exclude pattern
    #[arg(long, value_name = "PATTERN")]
    iexclude: Vec<String>,
    /// Add a file of exclude patterns (read at every backup)
    #[arg(long, value_name = "FILE")]
    exclude_file: Vec<PathBuf>,
    /// Leave out the contents of directories holding a valid CACHEDIR.TAG
    #[arg(long, overrides_with = "no_exclude_caches")]
    exclude_caches: bool,
    /// Back up cache directories again
    #[arg(long)]
    no_exclude_caches: bool,
    /// Add a tag file name: directories holding it keep only that file
    #[arg(long, value_name = "NAME")]
    exclude_if_present: Vec<String>,
    /// Leave out files larger than SIZE (10M, 1G)
    #[arg(long, value_name = "SIZE", value_parser = size_arg, conflicts_with = "no_exclude_larger_than")]
    exclude_larger_than: Option<u64>,
    /// No size limit
    #[arg(long)]
    no_exclude_larger_than: bool,
    /// The command run before a VM's disks are read (sh -c)
    #[arg(long, value_name = "CMD", conflicts_with = "no_pre_script")]
    pre_script: Option<String>,
    /// No pre-script
    #[arg(long)]
    no_pre_script: bool,
    /// The command run after a VM's capture (sh -c)
    #[arg(long, value_name = "CMD", conflicts_with = "no_post_script")]
    post_script: Option<String>,
    /// No post-script
    #[arg(long)]
    no_post_script: bool,
    /// Make the item follow this policy (as `coffre policy assign`)
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
}

fn size_arg(s: &str) -> std::result::Result<u64, String> {
    parse_size(s).ok_or_else(|| "use a size in bytes, or with K, M, G or T (10M, 1G)".into())
}

/// `Some(Some(v))` for a value, `Some(None)` for its `--no-` form, `None` for neither.
fn set_or_clear<T: Clone>(value: &Option<T>, clear: bool) -> Option<Option<T>> {
    match (value, clear) {
        (Some(v), _) => Some(Some(v.clone())),
        (None, true) => Some(None),
        (None, false) => None,
    }
}

impl EditArgs {
    fn to_edit(&self) -> Result<ItemEdit> {
        let canonical = |p: &PathBuf| {
            std::fs::canonicalize(p).map_err(|e| UsageError(format!("{}: {e}", p.display())))
        };
        let e = ItemEdit {
            path: self.path.as_ref().map(canonical).transpose()?,
            clear_excludes: self.clear_excludes,
            add_excludes: self.exclude.clone(),
            add_iexcludes: self.iexclude.clone(),
            add_exclude_files: self
                .exclude_file
                .iter()
                .map(canonical)
                .collect::<Result<_, _>>()?,
            add_exclude_if_present: self.exclude_if_present.clone(),
            exclude_caches: match (self.exclude_caches, self.no_exclude_caches) {
                (true, _) => Some(true),
                (false, true) => Some(false),
                _ => None,
            },
            exclude_larger_than: set_or_clear(
                &self.exclude_larger_than,
                self.no_exclude_larger_than,
            ),
            pre_script: set_or_clear(&self.pre_script, self.no_pre_script),
            post_script: set_or_clear(&self.post_script, self.no_post_script),
            policy: self.policy.clone(),
        };
        let empty = e.path.is_none()
            && !e.clear_excludes
            && e.add_excludes.is_empty()
            && e.add_iexcludes.is_empty()
            && e.add_exclude_files.is_empty()
            && e.add_exclude_if_present.is_empty()
            && e.exclude_caches.is_none()
            && e.exclude_larger_than.is_none()
            && e.pre_script.is_none()
            && e.post_script.is_none()
            && e.policy.is_none();
        // Bad patterns are usage errors, found before the vault is touched.
        let added = crate::vault::FilesSource {
            excludes: e.add_excludes.clone(),
            iexcludes: e.add_iexcludes.clone(),
            exclude_files: e.add_exclude_files.clone(),
            exclude_if_present: e.add_exclude_if_present.clone(),
            ..Default::default()
        };
        check_excludes(&added).map_err(|e| UsageError(e.to_string()))?;
        if empty {
            return Err(UsageError(format!(
                "nothing to change: give --path, --exclude…, --pre-script/--post-script or \
                 --policy (see `coffre item edit --help`); `coffre item show {}` shows the item",
                self.name
            ))
            .into());
        }
        Ok(e)
    }
}

pub fn run(cli: &Cli, args: &ItemArgs) -> Result<ExitCode> {
    match &args.command {
        ItemCommand::Show { name, json } => {
            let s = summary(&cli.open_vault()?, name)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&show_json(&s)?)?);
            } else {
                print_summary(&s);
            }
        }
        ItemCommand::Edit(e) => {
            let change = e.to_edit()?;
            let vault = cli.open_vault()?;
            let lock = vault.lock(true)?;
            edit(&vault, &lock, &e.name, &change)
                .with_context(|| format!("item {:?} was not changed", e.name))?;
            drop(lock);
            println!("changed item {:?}:", e.name);
            print_summary(&summary(&vault, &e.name)?);
        }
        ItemCommand::Rename { name, new_name } => {
            super::check_item_name(new_name)?;
            let vault = cli.open_vault()?;
            let lock = vault.lock(true)?;
            let item = rename(&vault, &lock, name, new_name)?;
            let n = vault.points(Some(&item))?.len();
            println!("renamed item {name:?} to {new_name:?} (its {n} points follow)");
        }
        ItemCommand::Rm {
            name,
            forget_points,
        } => {
            let vault = cli.open_vault()?;
            let lock = vault.lock(true)?;
            let r = remove(&vault, &lock, name, *forget_points)?;
            print_removed(name, &r);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_removed(name: &str, r: &Removed) {
    let p = &r.points;
    match (r.removal, r.purge_at) {
        (ItemRemoval::Gone, _) if p.purged > 0 => println!(
            "removed item {name:?}; its {} points were purged (the vault's soft-delete period is 0)",
            p.purged
        ),
        (ItemRemoval::Gone, _) => println!("removed item {name:?}"),
        (ItemRemoval::Pending, Some(at)) => println!(
            "removed item {name:?}; its {} points are soft-deleted, recoverable until {} UTC \
             (`coffre points --deleted {name}`, `coffre undelete {name}@ID`); the name is freed \
             when they are purged",
            p.soft_deleted,
            human_time(at)
        ),
        (ItemRemoval::Pending, None) => println!(
            "removed item {name:?}; the name is freed when its soft-deleted points are purged"
        ),
    }
}

/// The exclude rules of a files item, one a line.
fn exclude_lines(source: &ItemSource) -> Vec<String> {
    let ItemSource::Files(f) = source else {
        return Vec::new();
    };
    let mut out: Vec<String> = f
        .excludes
        .iter()
        .map(|p| format!("--exclude {p}"))
        .collect();
    out.extend(f.iexcludes.iter().map(|p| format!("--iexclude {p}")));
    out.extend(
        f.exclude_files
            .iter()
            .map(|p| format!("--exclude-file {}", p.display())),
    );
    if f.exclude_caches {
        out.push("--exclude-caches".into());
    }
    out.extend(
        f.exclude_if_present
            .iter()
            .map(|n| format!("--exclude-if-present {n}")),
    );
    if let Some(max) = f.exclude_larger_than {
        out.push(format!("--exclude-larger-than {}", human_bytes(max)));
    }
    if f.one_file_system {
        out.push("--one-file-system".into());
    }
    out
}

fn print_summary(s: &ItemSummary) {
    let i = &s.item;
    let mut rows: Vec<(&str, String)> = vec![
        ("item", i.name.clone()),
        ("kind", i.kind.as_str().into()),
        ("state", i.state.as_str().into()),
        ("policy", i.policy.clone()),
        ("source", super::list::source_line(i.source.as_ref())),
    ];
    if let Some(src) = &i.source {
        let ex = exclude_lines(src);
        if !ex.is_empty() {
            rows.push(("excludes", ex.join("\n")));
        }
        for (phase, script) in src.scripts() {
            rows.push((
                if phase == "pre" {
                    "pre-script"
                } else {
                    "post-script"
                },
                script.to_string(),
            ));
        }
    }
    let deleted = match s.deleted {
        0 => String::new(),
        n => format!(" (+{n} soft-deleted)"),
    };
    rows.push(("points", format!("{}{deleted}", s.points.len())));
    let last = s.points.last().map_or_else(
        || "-".to_string(),
        |p| format!("{} at {} UTC", p.id, human_time(p.time)),
    );
    rows.push(("last point", last));
    rows.push(("created", format!("{} UTC", human_time(i.created))));
    table::print_pairs(rows);
}

fn show_json(s: &ItemSummary) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(&s.item)?;
    for (phase, script) in s.item.source.iter().flat_map(|x| x.scripts()) {
        v[format!("{phase}_script")] = script.into();
    }
    v["points"] = s.points.len().into();
    v["deleted_points"] = s.deleted.into();
    v["last_point"] = serde_json::to_value(s.points.last())?;
    Ok(v)
}
