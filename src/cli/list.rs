//! `coffre items`, `points`, `stats`: human tables by default, `--json` for scripts. `points`
//! shows when each point expires under its item's current policy (or, with `--deleted`, when each
//! soft-deleted point is purged).

use std::process::ExitCode;

use anyhow::Result;

use crate::maintenance::{Evaluated, evaluate};
use crate::progress::human_bytes;
use serde::Serialize;

use super::browse::MountPaths;
use crate::policy::RoleKind;
use crate::vault::{ItemSource, PointRow, Vault, human_time, now_ns, timestamp};

/// A point in `points --json` (times RFC 3339, UTC). The keys are the documented schema.
#[derive(Serialize)]
struct PointJson<'a> {
    id: &'a str,
    item: &'a str,
    time: jiff::Timestamp,
    /// Where the point shows inside a mount: `items/<item>/<dir>` (`deleted/...` once deleted).
    mount_path: String,
    files: u64,
    dirs: u64,
    logical_bytes: u64,
    new_chunks: u64,
    new_bytes: u64,
    stored_bytes: u64,
    warnings: u64,
    duration_ms: u64,
    /// `crash`, `file` or `application` for disk and VM points; null for files points.
    consistency: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_until: Option<jiff::Timestamp>,
}

impl<'a> PointJson<'a> {
    fn new(p: &'a PointRow, paths: &MountPaths) -> PointJson<'a> {
        PointJson {
            id: &p.id,
            item: &p.item,
            time: timestamp(p.time),
            mount_path: paths.of(p),
            files: p.files,
            dirs: p.dirs,
            logical_bytes: p.logical_bytes,
            new_chunks: p.new_chunks,
            new_bytes: p.new_bytes,
            stored_bytes: p.stored_bytes,
            warnings: p.warnings,
            duration_ms: p.duration_ms,
            consistency: p.consistency.as_deref(),
            keep_until: p.keep_until.map(timestamp),
        }
    }
}

/// A live point: when it expires (null: never), its retention roles and why.
#[derive(Serialize)]
struct LivePointJson<'a> {
    #[serde(flatten)]
    point: PointJson<'a>,
    expires: Option<jiff::Timestamp>,
    roles: Vec<RoleKind>,
    reason: &'a str,
}

/// A soft-deleted point: when and by what it was deleted, when it is purged.
#[derive(Serialize)]
struct DeletedPointJson<'a> {
    #[serde(flatten)]
    point: PointJson<'a>,
    deleted_at: Option<jiff::Timestamp>,
    deleted_by: Option<&'a str>,
    purge_at: Option<jiff::Timestamp>,
}

fn join_paths(p: &[std::path::PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn items(vault: &Vault, json: bool) -> Result<ExitCode> {
    let items = vault.items()?;
    if json {
        let mut out = Vec::new();
        for i in &items {
            let mut v = serde_json::to_value(i)?;
            // Scripts at the top level too: whoever can write the vault decides what
            // `coffre backup NAME` runs, so scripts are never hidden inside the definition.
            for (phase, script) in i.source.iter().flat_map(|s| s.scripts()) {
                v[format!("{phase}_script")] = script.into();
            }
            out.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let points = vault.points(None)?;
    println!(
        "{:<24} {:<6} {:<16} {:<12} {:>6}  source",
        "ITEM", "KIND", "STATE", "POLICY", "POINTS"
    );
    for i in items {
        let n = points.iter().filter(|p| p.item == i.name).count();
        let src = match &i.source {
            Some(ItemSource::Files(f)) => f.path.display().to_string(),
            Some(ItemSource::Disk(d)) => join_paths(&d.images),
            Some(ItemSource::Vm(v)) => format!("{} + {}", v.config.display(), join_paths(&v.disks)),
            None => "(unreadable definition)".into(),
        };
        println!(
            "{:<24} {:<6} {:<16} {:<12} {:>6}  {}",
            i.name,
            i.kind.as_str(),
            i.state.as_str(),
            i.policy,
            n,
            src
        );
        // Scripts run as whoever runs `coffre backup NAME`: always show them.
        for (phase, script) in i.source.iter().flat_map(|s| s.scripts()) {
            println!("{:<24} {phase}-script: {script}", "");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn points(vault: &Vault, item: Option<&str>, deleted: bool, json: bool) -> Result<ExitCode> {
    let item = item.map(|n| vault.item(n)).transpose()?;
    if deleted {
        return deleted_points(vault, item.as_ref(), json);
    }
    let items: Vec<_> = item.into_iter().collect();
    let mut evaluated: Vec<Evaluated> = evaluate(vault, &items, now_ns())?
        .into_iter()
        .flat_map(|i| i.points)
        .collect();
    evaluated.sort_by_key(|e| (e.point.time, e.point.rowid));
    if json {
        let paths = MountPaths::new(vault)?;
        let out: Vec<LivePointJson> = evaluated
            .iter()
            .map(|e| LivePointJson {
                point: PointJson::new(&e.point, &paths),
                expires: e.verdict.expires,
                roles: e.verdict.roles.iter().map(|r| r.kind).collect(),
                reason: &e.verdict.reason,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8}  {:<20} {:<19} {:>9} {:>11} {:>11}  {:<19}  WHY",
        "ID", "ITEM", "TIME", "FILES", "SIZE", "NEW STORED", "EXPIRES"
    );
    for e in evaluated {
        let p = &e.point;
        let expires = e
            .expires_ns()
            .map_or_else(|| "never".to_string(), human_time);
        println!(
            "{:<8}  {:<20} {:<19} {:>9} {:>11} {:>11}  {:<19}  {}",
            p.id,
            p.item,
            human_time(p.time),
            p.files,
            human_bytes(p.logical_bytes),
            human_bytes(p.stored_bytes),
            expires,
            e.verdict.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `coffre points --deleted`: soft-deleted points with what deleted them and their purge time.
fn deleted_points(
    vault: &Vault,
    item: Option<&crate::vault::Item>,
    json: bool,
) -> Result<ExitCode> {
    let settings = vault.settings()?;
    let points = vault.deleted_points(item)?;
    let purge_at = |p: &crate::vault::PointRow| p.deleted_at.map(|d| settings.purge_time(d));
    if json {
        let paths = MountPaths::new(vault)?;
        let out: Vec<DeletedPointJson> = points
            .iter()
            .map(|p| DeletedPointJson {
                point: PointJson::new(p, &paths),
                deleted_at: p.deleted_at.map(timestamp),
                deleted_by: p.deleted_by.as_deref(),
                purge_at: purge_at(p).map(timestamp),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8}  {:<20} {:<19}  {:<19}  {:<15}  PURGE",
        "ID", "ITEM", "TIME", "DELETED", "BY"
    );
    for p in &points {
        println!(
            "{:<8}  {:<20} {:<19}  {:<19}  {:<15}  {}",
            p.id,
            p.item,
            human_time(p.time),
            p.deleted_at.map_or_else(|| "-".into(), human_time),
            p.deleted_by.as_deref().unwrap_or("-"),
            purge_at(p).map_or_else(|| "-".into(), human_time),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stats(vault: &Vault, json: bool) -> Result<ExitCode> {
    let t = vault.totals()?;
    let catalog_bytes = ["vault.db", "vault.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(vault.root().join(f)).ok())
        .map(|m| m.len())
        .sum::<u64>();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let dedup = ratio(t.logical_bytes, t.chunk_bytes);
    let compression = ratio(t.chunk_bytes, t.pack_bytes);
    if json {
        let mut v = serde_json::to_value(&t)?;
        v["catalog_bytes"] = catalog_bytes.into();
        v["dedup_ratio"] = dedup.into();
        v["compression_ratio"] = compression.into();
        v["total_ratio"] = ratio(t.logical_bytes, t.pack_bytes + catalog_bytes).into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("vault        {}", vault.root().display());
    println!("items        {}   points {}", t.items, t.points);
    println!(
        "logical      {} (sum of all live points)",
        human_bytes(t.logical_bytes)
    );
    println!(
        "unique data  {} in {} chunks",
        human_bytes(t.chunk_bytes),
        t.chunks
    );
    println!(
        "packs        {} in {} files",
        human_bytes(t.pack_bytes),
        t.packs
    );
    println!(
        "catalog      {} ({} trees, {} content lists)",
        human_bytes(catalog_bytes),
        t.trees,
        t.lists
    );
    println!(
        "dedup        {dedup:.2}x   compression {compression:.2}x   total {:.2}x",
        ratio(t.logical_bytes, t.pack_bytes + catalog_bytes)
    );
    Ok(ExitCode::SUCCESS)
}
