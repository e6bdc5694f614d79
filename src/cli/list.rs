//! `coffre items`, `points`, `stats`: human tables by default (sized to their content), `--json`
//! for scripts. `points` shows when each point expires under its item's current policy (or, with
//! `--deleted`, when each soft-deleted point is purged), and the tags and note of each point.

use std::process::ExitCode;

use anyhow::Result;

use super::{UsageError, table};
use crate::maintenance::{Evaluated, evaluate};
use crate::progress::human_bytes;
use serde::Serialize;

use super::browse::MountPaths;
use crate::policy::RoleKind;
use crate::vault::{ItemSource, PointRow, Vault, check_tag, human_time, now_ns, timestamp};

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
    /// `backup --tag` labels (empty: none).
    tags: &'a [String],
    /// `backup --note` text.
    note: Option<&'a str>,
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
            tags: &p.tags,
            note: p.note.as_deref(),
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

/// An item's source in one line: the directory, the images, or the VM's config and disks.
pub(super) fn source_line(source: Option<&ItemSource>) -> String {
    match source {
        Some(ItemSource::Files(f)) => f.path.display().to_string(),
        Some(ItemSource::Disk(d)) => join_paths(&d.images),
        Some(ItemSource::Vm(v)) => format!("{} + {}", v.config.display(), join_paths(&v.disks)),
        None => "(unreadable definition)".into(),
    }
}

/// The `items` table: every item (files, disk, vm) with its policy, points, last point and
/// source; scripts are always shown (they run as whoever runs `coffre backup NAME`).
pub fn items(vault: &Vault, json: bool) -> Result<ExitCode> {
    let items = vault.items()?;
    let points = vault.points(None)?;
    let last = |name: &str| points.iter().rev().find(|p| p.item == name);
    if json {
        let mut out = Vec::new();
        for i in &items {
            let mut v = serde_json::to_value(i)?;
            // Scripts at the top level too: whoever can write the vault decides what
            // `coffre backup NAME` runs, so scripts are never hidden inside the definition.
            for (phase, script) in i.source.iter().flat_map(|s| s.scripts()) {
                v[format!("{phase}_script")] = script.into();
            }
            v["points"] = points.iter().filter(|p| p.item == i.name).count().into();
            // The same shape as `item show --json`: the point as `points --json` has it.
            v["last_point"] = serde_json::to_value(last(&i.name))?;
            out.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table::new(
        &[
            "ITEM",
            "KIND",
            "STATE",
            "POLICY",
            "POINTS",
            "LAST POINT (UTC)",
            "SOURCE",
        ],
        &[4],
    );
    for i in items {
        let n = points.iter().filter(|p| p.item == i.name).count();
        let mut src = source_line(i.source.as_ref());
        for (phase, script) in i.source.iter().flat_map(|s| s.scripts()) {
            src.push_str(&format!("\n{phase}-script: {script}"));
        }
        let last = last(&i.name).map_or_else(
            || "-".to_string(),
            |p| format!("{} {}", human_time(p.time), p.id),
        );
        t.add_row(vec![
            i.name,
            i.kind.as_str().to_string(),
            i.state.as_str().to_string(),
            i.policy,
            n.to_string(),
            last,
            src,
        ]);
    }
    table::print(&t);
    Ok(ExitCode::SUCCESS)
}

/// `points --tag`: each value a comma-separated list the point must all have; a point shows if
/// it matches any value (restic's rule). Empty: every point.
fn tag_filter(tags: &[String]) -> Result<Vec<Vec<String>>> {
    tags.iter()
        .map(|group| {
            group
                .split(',')
                .map(|t| {
                    check_tag(t).map_err(|e| UsageError(e.to_string()))?;
                    Ok(t.to_string())
                })
                .collect()
        })
        .collect()
}

fn selected(p: &PointRow, filter: &[Vec<String>]) -> bool {
    filter.is_empty() || filter.iter().any(|all| p.has_tags(all))
}

/// The TAGS and NOTE cells of a point.
fn labels(p: &PointRow) -> [String; 2] {
    [p.tags.join(","), p.note.clone().unwrap_or_default()]
}

pub fn points(
    vault: &Vault,
    item: Option<&str>,
    deleted: bool,
    tags: &[String],
    json: bool,
) -> Result<ExitCode> {
    let filter = tag_filter(tags)?;
    let item = item.map(|n| vault.item(n)).transpose()?;
    if deleted {
        return deleted_points(vault, item.as_ref(), &filter, json);
    }
    let items: Vec<_> = item.into_iter().collect();
    let mut evaluated: Vec<Evaluated> = evaluate(vault, &items, now_ns())?
        .into_iter()
        .flat_map(|i| i.points)
        .filter(|e| selected(&e.point, &filter))
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
    let labelled = evaluated
        .iter()
        .any(|e| !e.point.tags.is_empty() || e.point.note.is_some());
    let mut header = vec![
        "ID",
        "ITEM",
        "TIME",
        "FILES",
        "SIZE",
        "NEW STORED",
        "EXPIRES",
        "WHY",
    ];
    if labelled {
        header.extend(["TAGS", "NOTE"]);
    }
    let mut t = table::new(&header, &[3, 4, 5]);
    for e in evaluated {
        let p = &e.point;
        let expires = e
            .expires_ns()
            .map_or_else(|| "never".to_string(), human_time);
        let mut row = vec![
            p.id.clone(),
            p.item.clone(),
            human_time(p.time),
            p.files.to_string(),
            human_bytes(p.logical_bytes),
            human_bytes(p.stored_bytes),
            expires,
            e.verdict.reason.clone(),
        ];
        if labelled {
            row.extend(labels(p));
        }
        t.add_row(row);
    }
    table::print(&t);
    Ok(ExitCode::SUCCESS)
}

/// `coffre points --deleted`: soft-deleted points with what deleted them and their purge time.
fn deleted_points(
    vault: &Vault,
    item: Option<&crate::vault::Item>,
    filter: &[Vec<String>],
    json: bool,
) -> Result<ExitCode> {
    let settings = vault.settings()?;
    let mut points = vault.deleted_points(item)?;
    points.retain(|p| selected(p, filter));
    let purge_at = |p: &PointRow| p.deleted_at.map(|d| settings.purge_time(d));
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
    let mut t = table::new(
        &[
            "ID", "ITEM", "TIME", "DELETED", "BY", "PURGE", "TAGS", "NOTE",
        ],
        &[],
    );
    for p in &points {
        let mut row = vec![
            p.id.clone(),
            p.item.clone(),
            human_time(p.time),
            p.deleted_at.map_or_else(|| "-".into(), human_time),
            p.deleted_by.clone().unwrap_or_else(|| "-".into()),
            purge_at(p).map_or_else(|| "-".into(), human_time),
        ];
        row.extend(labels(p));
        t.add_row(row);
    }
    table::print(&t);
    Ok(ExitCode::SUCCESS)
}

pub fn stats(vault: &Vault, json: bool) -> Result<ExitCode> {
    let t = vault.totals()?;
    let catalog_bytes = vault.catalog_bytes();
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
