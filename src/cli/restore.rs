//! `coffre restore NAME[@POINT] [PATH...] --to DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::Cli;
use crate::restore::files::{RestoreOptions, restore_files};

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// Item and point: NAME (latest point) or NAME@POINT, POINT an id or unique prefix,
    /// `latest~N`, a time (RFC 3339, or local as `coffre points` shows it) or a mount directory
    /// name such as 2026-11-23T140005Z
    #[arg(value_name = "NAME[@POINT]")]
    spec: String,
    /// Paths inside the point to restore (default: everything); each is restored under its own
    /// path, DIR/<path>
    #[arg(value_name = "PATH")]
    paths: Vec<std::ffi::OsString>,
    /// Target directory (created if missing; an entry in the way is replaced once its
    /// replacement is complete, an existing directory is merged into)
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Give an existing DIR the point root's owner, mode, xattrs and times (a DIR the restore
    /// creates always gets them)
    #[arg(long)]
    root_metadata: bool,
    /// Worker threads (0 = one per core, at most 256)
    #[arg(long, default_value_t = 0, value_parser = super::threads_arg)]
    threads: usize,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, args: &RestoreArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    let (item, point) = vault.resolve(&args.spec)?;
    let name = &item.name;
    crate::interrupt::end_with(&format!(
        "interrupted: the restore into {} did not finish; entries it was replacing are as they \
         were, a new file may be partly written; the same command completes it",
        args.to.display()
    ));
    let opts = RestoreOptions {
        threads: args.threads,
        progress: !cli.quiet && !args.json,
        root_metadata: args.root_metadata,
    };
    let report = restore_files(&vault, &point, &args.paths, &args.to, &opts)
        .with_context(|| format!("restore of {name}@{} failed", point.id))?;
    let mut report = report;
    for line in report.notes.iter_mut().chain(report.errors.iter_mut()) {
        *line = crate::words::plain(line);
    }
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet {
        println!(
            "restored {} from point {} of {:?} into {}",
            super::contents(report.files, report.dirs, report.other, report.bytes),
            point.id,
            name,
            args.to.display()
        );
        if report.replaced > 0 {
            println!(
                "  {} replaced what was at {} path",
                super::plural(report.replaced, "entry"),
                if report.replaced == 1 { "its" } else { "their" }
            );
        }
    }
    if report.errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {} could not be restored (listed above); whatever was at {} was left as it was",
            super::plural(report.errors.len() as u64, "entry"),
            if report.errors.len() == 1 {
                "its path"
            } else {
                "their paths"
            }
        );
        Ok(ExitCode::FAILURE)
    }
}
