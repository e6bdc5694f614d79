//! `coffre replicate --to DIR|URL|NAME [ITEM...] [--json]`: keeps a replica (a second vault, in
//! a directory or in object storage) in step with this one, and prints what it did.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Cli;
use crate::progress::{Progress, human_bytes};
use crate::vault::{ReplicateOptions, ReplicateProgress, ReplicateReport};
use crate::words::plural;

#[derive(clap::Args)]
pub struct ReplicateArgs {
    /// The replica: a directory (created on first use), s3://BUCKET/PREFIX or
    /// azure://CONTAINER/PREFIX (credentials from the AWS_* / AZURE_* environment variables,
    /// see README), or the name of one remembered with `coffre vault set replica NAME TARGET`
    #[arg(long, value_name = "DIR|URL|NAME")]
    to: PathBuf,
    /// Items to replicate [default: all]
    #[arg(value_name = "ITEM")]
    items: Vec<String>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// The copy's byte bar on a terminal.
struct Bar(Progress);

impl ReplicateProgress for Bar {
    fn start(&self, bytes: u64) {
        self.0.add_total(bytes);
    }
    fn copied(&self, bytes: u64) {
        self.0.add(0, bytes);
    }
}

/// `coffre replicate --to DIR [ITEM...] [--json]`
pub fn run(cli: &Cli, args: &ReplicateArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    let bar = Bar(Progress::bytes("replicate", 0, !cli.quiet && !args.json));
    let opts = ReplicateOptions {
        items: args.items.clone(),
    };
    let to = vault.replica_target(&args.to)?;
    let report = vault.replicate_to(&to, &opts, &bar)?;
    bar.0.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet {
        print_text(&report);
    }
    for s in &report.skipped {
        eprintln!(
            "warning: point {}@{} was not replicated: {}",
            s.item, s.point, s.reason
        );
    }
    for id in &report.damaged_chunks {
        eprintln!(
            "warning: chunk {id} is damaged in this vault: marked bad here and in the replica \
             (the next backup of a source that still has it stores it again)"
        );
    }
    Ok(if report.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(r: &ReplicateReport) {
    if r.created {
        println!("created replica {}", r.target);
    }
    println!(
        "replica {}: {} added, {} updated, {} purged; {} copied ({}){} in {:.1} s",
        r.target,
        plural(r.points_added, "point"),
        r.points_updated,
        r.points_purged,
        plural(r.packs_copied, "pack"),
        human_bytes(r.bytes_copied),
        if r.packs_resumed > 0 {
            format!(", {} taken from an interrupted run", r.packs_resumed)
        } else {
            String::new()
        },
        r.seconds
    );
    if r.bytes_sent > 0 {
        println!(
            "sent {} in all (catalog {})",
            human_bytes(r.bytes_sent),
            human_bytes(r.catalog_bytes_sent)
        );
    }
}
