//! `coffre backup`: register or look up items, run the backup, print the point and warnings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::{Cli, EXIT_PARTIAL};
use crate::backup::files::{FilesOptions, backup_files};
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

/// The stored definition of a files item.
#[derive(serde::Serialize, serde::Deserialize)]
struct FilesSource {
    path: PathBuf,
    #[serde(default)]
    excludes: Vec<String>,
    #[serde(default)]
    one_file_system: bool,
}

fn valid_item_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 200
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "invalid item name {name:?}: use letters, digits, '-', '_' and '.', not starting with '.'"
        );
    }
    Ok(())
}

pub fn run(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    let mut todo: Vec<(String, FilesSource)> = Vec::new();
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
            FilesSource {
                path,
                excludes: args.exclude.clone(),
                one_file_system: args.one_file_system,
            },
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
            if item.kind != ItemKind::Files {
                bail!(
                    "item {name:?} is a {} item; this version backs up files items only",
                    item.kind.as_str()
                );
            }
            let src: FilesSource = serde_json::from_value(item.source.clone())
                .with_context(|| format!("item {name:?} has no usable stored definition"))?;
            todo.push((name.to_string(), src));
        }
    }

    let vault = cli.open_or_init_vault()?;
    let lock = vault.lock(!args.no_wait)?;
    let mut code = ExitCode::SUCCESS;
    let mut json_out = Vec::new();
    for (name, src) in todo {
        let item = register(&vault, &name, &src)?;
        let opts = FilesOptions {
            excludes: src.excludes.clone(),
            one_file_system: src.one_file_system,
            threads: args.threads,
            progress: !cli.quiet && !args.json,
        };
        let report = backup_files(&vault, &lock, &item, &src.path, &opts)
            .with_context(|| format!("backup of item {name:?} failed"))?;
        for w in &report.warnings {
            eprintln!("warning: {}: {}", w.path, w.message);
        }
        if !report.warnings.is_empty() {
            code = ExitCode::from(EXIT_PARTIAL);
        }
        let p = &report.point;
        if args.json {
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
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json_out)?);
    }
    Ok(code)
}

/// Finds the item, creating it or updating its stored definition.
fn register(vault: &Vault, name: &str, src: &FilesSource) -> Result<Item> {
    let value = serde_json::to_value(src)?;
    let catalog = vault.catalog();
    match catalog.item(name)? {
        Some(item) if item.kind != ItemKind::Files => {
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
        None => Ok(catalog.create_item(name, ItemKind::Files, &value, now_ns())?),
    }
}
