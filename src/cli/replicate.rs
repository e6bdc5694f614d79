//! `coffre replicate --to DIR|URL|NAME [ITEM...] [--json]`: keeps a replica (a second vault, in
//! a directory or in object storage) in step with this one, and prints what it did.
//! `coffre repair --from DIR|URL|NAME`: heals this vault from one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::Cli;
use crate::progress::{Progress, human_bytes};
use crate::vault::{RepairReport, ReplicateOptions, ReplicateProgress, ReplicateReport, Vault};
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
        key: cli.replica_key(&vault)?,
    };
    let to = vault.replica_target(&args.to)?;
    let report = vault.replicate_to(&to, &opts, &bar)?;
    bar.0.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet {
        print_text(&report);
    }
    warn(&report);
    Ok(if report.skipped.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Brings every replica named with `coffre vault set replica` up to date (after
/// `backup --due`): one JSON value per replica, and whether any failed (each failure is one
/// error line; the others still run).
pub fn replicate_all(
    cli: &Cli,
    vault: &Vault,
    json: bool,
) -> Result<(Vec<serde_json::Value>, bool)> {
    let mut out = Vec::new();
    let mut failed = false;
    let opts = ReplicateOptions {
        key: cli.replica_key(vault)?,
        ..ReplicateOptions::default()
    };
    for (name, dir) in vault.replicas()? {
        let bar = Bar(Progress::bytes("replicate", 0, !cli.quiet && !json));
        // Never created here: a missing replica is most likely an unplugged disk, and a new one
        // would fill the disk its mount point is on.
        let missing = match crate::vault::objstore::remote_url(&dir) {
            Some(url) => url
                .strip_prefix("file://")
                .is_some_and(|p| !std::path::Path::new(p).is_dir()),
            None => !Vault::exists(&dir),
        };
        let result = if !missing {
            vault
                .replicate_to(&dir, &opts, &bar)
                .map_err(anyhow::Error::from)
        } else {
            Err(anyhow::anyhow!(
                "no replica at {} (is its disk unplugged?); `coffre replicate --to {name}` \
                 creates it",
                dir.display()
            ))
        };
        bar.0.finish();
        match result {
            Ok(report) => {
                if !json && !cli.quiet {
                    print_text(&report);
                }
                warn(&report);
                failed |= !report.skipped.is_empty();
                out.push(serde_json::json!({ "name": name, "report": report }));
            }
            Err(e) => {
                let e = crate::words::plain(&e.to_string());
                eprintln!("error: replicate to replica {name:?} failed: {e}");
                out.push(serde_json::json!({ "name": name, "error": e }));
                failed = true;
            }
        }
    }
    Ok((out, failed))
}

/// The points a run could not copy, and the damage it found.
fn warn(r: &ReplicateReport) {
    for s in &r.skipped {
        eprintln!(
            "warning: point {}@{} was not replicated: {}",
            s.item, s.point, s.reason
        );
    }
    for id in &r.damaged_chunks {
        eprintln!(
            "warning: chunk {id} is damaged in this vault: marked bad here and in the replica \
             (the next backup of a source that still has it stores it again)"
        );
    }
}

fn print_text(r: &ReplicateReport) {
    if r.created {
        println!("created replica {}", r.target);
    }
    println!(
        "replica {}{}: {} added, {} updated, {} purged; {} copied ({}){} in {:.1} s",
        r.target,
        if r.sealed { " (encrypted)" } else { "" },
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

#[derive(clap::Args)]
pub struct RepairArgs {
    /// The replica to fetch from: a directory, s3://BUCKET/PREFIX, azure://CONTAINER/PREFIX,
    /// file:///DIR, or the name of one remembered with `coffre vault set replica NAME TARGET`
    /// (an encrypted one opens with the vault's replica key, or --key-file)
    #[arg(long, value_name = "DIR|URL|NAME")]
    from: PathBuf,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// `coffre repair --from DIR|NAME [--json]`: exit 0 when nothing a point needs stays missing.
pub fn repair(cli: &Cli, args: &RepairArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    let from = vault.replica_target(&args.from)?;
    if let Some(url) = crate::vault::objstore::remote_url(&from) {
        let replica = Vault::open_remote(url, cli.replica_key(&vault)?)?;
        return repair_with(cli, args, &vault, &replica);
    }
    if !Vault::exists(&from) {
        // Not `Vault::open`'s advice to create one: an empty vault has nothing to give.
        anyhow::bail!(
            "no vault at {} to repair from (is its disk unplugged?)",
            from.display()
        );
    }
    let replica = Vault::open(&from)?;
    // The same directory (a byte copy of the vault, made by rsync or cp, is a good source).
    let dir_id = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
    };
    if dir_id(&from).is_some() && dir_id(&from) == dir_id(vault.root()) {
        anyhow::bail!(
            "cannot repair {} from itself: give a replica (see `coffre vault show`)",
            from.display()
        );
    }
    repair_with(cli, args, &vault, &replica)
}

fn repair_with(cli: &Cli, args: &RepairArgs, vault: &Vault, replica: &Vault) -> Result<ExitCode> {
    vault.restore_packs_dir()?;
    let lock = vault.lock(true)?;
    let report = vault.repair_from(replica, &lock)?;
    drop(lock);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet || !report.unrepaired.is_empty() {
        print_repair(&report);
    }
    Ok(if report.unrepaired_needed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_repair(r: &RepairReport) {
    if r.chunks_repaired == 0 && r.blobs_repaired == 0 && r.unrepaired.is_empty() {
        println!(
            "nothing to repair: no chunk is marked bad and every point's data is in the catalog \
             (`coffre verify` reads every byte back and marks what is damaged)"
        );
        return;
    }
    println!(
        "repaired {} ({}) and {} from {} in {:.1} s",
        plural(r.chunks_repaired, "chunk"),
        human_bytes(r.bytes_repaired),
        plural(r.blobs_repaired, "catalog entry"),
        r.from,
        r.seconds
    );
    for u in &r.unrepaired {
        eprintln!("not repaired: {} {}: {}", u.what, u.id, u.detail);
    }
    if r.unrepaired_needed > 0 {
        eprintln!(
            "{} of these that points need could not be repaired; `coffre verify` names the \
             files, and the next backup of a source that still has them stores them again",
            r.unrepaired_needed
        );
    }
}
