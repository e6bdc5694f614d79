//! `coffre vault show|set|rebuild-index`: the vault's lifecycle settings, its remembered
//! replicas, and registering packs the catalog does not name.

use std::process::ExitCode;

use anyhow::Result;

use super::Cli;
use crate::maintenance::SettingChange;
use crate::maintenance::policies::change_setting;
use crate::vault::Immutability;
use crate::words::plural;

#[derive(clap::Args)]
pub struct VaultArgs {
    #[command(subcommand)]
    command: VaultCommand,
}

#[derive(clap::Subcommand)]
enum VaultCommand {
    /// Show the vault's settings
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Change a setting
    Set {
        #[command(subcommand)]
        setting: Setting,
    },
    /// Register every pack the catalog does not name (moved back from packs/orphaned/), so no
    /// written chunk is lost and the next backups do not store them again
    RebuildIndex {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand)]
enum Setting {
    /// Days a deleted or expired point stays recoverable before it is purged (default 14; 0:
    /// deletions purge at once)
    SoftDeleteDays { days: u32 },
    /// off; on: nothing may make an existing point end earlier (no forget or purge of a point
    /// before its time, no shorter policy or soft-delete period); locked: on, for ever
    Immutability { level: Level },
    /// Remember a replica (a directory, s3://BUCKET/PREFIX or azure://CONTAINER/PREFIX) under a
    /// name, for `coffre replicate --to NAME`
    Replica {
        name: String,
        /// The replica: a directory (made absolute) or an object-storage URL
        #[arg(value_name = "TARGET")]
        dir: std::path::PathBuf,
    },
    /// Forget a remembered replica (its directory is left as it is)
    NoReplica { name: String },
    /// Encrypt new replicas in object storage or file:///DIR with the key in FILE (created, 32
    /// random bytes, when FILE does not exist); keep a copy of FILE away from this machine:
    /// without it a replica cannot be read
    ReplicaKey {
        #[arg(value_name = "FILE")]
        file: std::path::PathBuf,
    },
    /// Forget the replica key (new replicas are plain; an encrypted one refuses to be updated)
    NoReplicaKey,
    /// Bytes of neighbouring disk-image blocks that new backups compress together (a multiple of
    /// 32K up to 1M; default 32K, one block per frame). Larger frames store new blocks smaller and
    /// back them up faster (1M: 12-20 % smaller on the benchmark images, near restic and borg),
    /// but the first random read of a frame decompresses up to all of it (milliseconds instead of
    /// about 0.1 ms). Blocks already stored keep their frames; every point reads alike
    ImageFrame {
        #[arg(value_name = "SIZE", value_parser = crate::vault::parse_image_frame)]
        size: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Level {
    Off,
    On,
    Locked,
}

impl From<Level> for Immutability {
    fn from(l: Level) -> Immutability {
        match l {
            Level::Off => Immutability::Off,
            Level::On => Immutability::On,
            Level::Locked => Immutability::Locked,
        }
    }
}

pub fn run(cli: &Cli, args: &VaultArgs) -> Result<ExitCode> {
    let vault = cli.open_vault()?;
    match &args.command {
        VaultCommand::Show { json } => {
            let s = vault.settings()?;
            if *json {
                let mut v = serde_json::to_value(s)?;
                v["path"] = vault.root().display().to_string().into();
                v["id"] = vault.id().into();
                let replicas: serde_json::Map<String, serde_json::Value> = vault
                    .replicas()?
                    .into_iter()
                    .map(|(n, d)| (n, d.display().to_string().into()))
                    .collect();
                v["replicas"] = replicas.into();
                v["replica_key"] = vault.replica_key()?.map(|k| k.check_value()).into();
                v["image_frame"] = vault.image_frame().into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("vault             {}", vault.root().display());
                println!("id                {}", vault.id());
                println!("soft-delete-days  {}", s.soft_delete_days);
                println!("immutability      {}", s.immutability);
                println!("image-frame       {}", kib(vault.image_frame()));
                for (name, dir) in vault.replicas()? {
                    println!("replica {name:<9} {}", dir.display());
                }
                if let Some(k) = vault.replica_key()? {
                    println!("replica-key       set (check value {})", k.check_value());
                }
            }
        }
        VaultCommand::RebuildIndex { json } => {
            let lock = vault.lock(true)?;
            let r = vault.rebuild_index(&lock)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} moved back from packs/orphaned; {} registered with {}",
                    plural(r.unquarantined.len() as u64, "pack"),
                    plural(r.packs, "pack"),
                    plural(r.chunks, "chunk")
                );
                for d in &r.damaged {
                    eprintln!("warning: pack {d} is damaged: its readable records were registered");
                }
            }
        }
        VaultCommand::Set { setting } => set(&vault, setting)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn set(vault: &crate::vault::Vault, setting: &Setting) -> Result<()> {
    let change = match setting {
        Setting::SoftDeleteDays { days } => SettingChange::SoftDeleteDays(*days),
        Setting::Immutability { level } => SettingChange::Immutability((*level).into()),
        Setting::Replica { name, dir } => {
            // A URL (s3://, azure://) is kept as given; a directory is made absolute.
            let dir = match crate::vault::objstore::remote_url(dir) {
                Some(url) => std::path::PathBuf::from(url),
                None => std::path::absolute(dir)?,
            };
            let lock = vault.lock(true)?;
            vault.set_replica(&lock, name, Some(&dir))?;
            println!("replica {name} is {}", dir.display());
            return Ok(());
        }
        Setting::ReplicaKey { file } => return set_replica_key(vault, file),
        Setting::NoReplicaKey => {
            let lock = vault.lock(true)?;
            vault.set_replica_key(&lock, None)?;
            println!("replica key forgotten: new replicas are not encrypted");
            return Ok(());
        }
        Setting::ImageFrame { size } => {
            let lock = vault.lock(true)?;
            let old = vault.image_frame();
            vault.set_image_frame(&lock, *size)?;
            println!("image-frame {} (was {})", kib(*size), kib(old));
            return Ok(());
        }
        Setting::NoReplica { name } => {
            let lock = vault.lock(true)?;
            vault.set_replica(&lock, name, None)?;
            println!("replica {name} forgotten");
            return Ok(());
        }
    };
    let lock = vault.lock(true)?;
    let (old, new) = change_setting(vault, &lock, change)?;
    match change {
        SettingChange::SoftDeleteDays(_) => println!(
            "soft-delete-days {} (was {})",
            new.soft_delete_days, old.soft_delete_days
        ),
        SettingChange::Immutability(_) => println!(
            "immutability {} (was {})",
            new.immutability, old.immutability
        ),
    }
    Ok(())
}

/// An image frame size as `vault set image-frame` takes it (32K, 1M).
fn kib(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{}M", bytes >> 20)
    } else {
        format!("{}K", bytes >> 10)
    }
}

/// `vault set replica-key FILE`: reads FILE, or creates it first.
fn set_replica_key(vault: &crate::vault::Vault, file: &std::path::Path) -> Result<()> {
    use crate::vault::seal::ReplicaKey;
    let created = !file.exists();
    if created {
        ReplicaKey::create_file(file)
            .map_err(|e| anyhow::anyhow!("cannot create key file {}: {e}", file.display()))?;
    }
    let key = ReplicaKey::from_file(file).map_err(anyhow::Error::msg)?;
    let lock = vault.lock(true)?;
    vault.set_replica_key(&lock, Some(&key))?;
    if created {
        println!("created key file {}", file.display());
    }
    println!(
        "replicas in object storage and file:///DIR are encrypted with this key (check value \
         {}); keep a copy of {} away from this machine: without it no replica can be read",
        key.check_value(),
        file.display()
    );
    Ok(())
}
