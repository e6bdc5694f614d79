//! Point names and times: the one parser for every way a user names a recovery point, and the
//! formatters that print those names, so every name coffre prints resolves again.
//!
//! A point spec (the `POINT` of `NAME@POINT`) is `latest` or `latest~N` (N points before the
//! newest), a point id or a unique prefix of it, the point's directory name in the mount
//! (`2026-11-23T140005Z`, `2026-11-23T140005Z-3fa2c1d0`), an RFC 3339 time
//! (`2026-11-23T14:00:05Z`, `2026-11-23T15:00:05+01:00`), the local time tables print
//! (`2026-11-23 15:00:05`), or a local date (`2026-11-23`). A time without fraction names the
//! points of that second. Several matches are an error listing the candidates. Tables show
//! local time (the `TZ` variable, else the system zone); JSON and mount names use UTC. Pure
//! logic over `PointRow`s: nothing here touches the catalog.

use std::sync::OnceLock;

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

use super::catalog::PointRow;
use super::{VaultError, VaultResult};

const NS: i64 = 1_000_000_000;

/// A catalog time (ns since the epoch) as a `jiff::Timestamp` (clamped to jiff's range).
/// serde: a time kept in nanoseconds, written as RFC 3339 (UTC), like every time in coffre's
/// JSON.
pub fn ser_time<S: serde::Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&timestamp(*t), s)
}

/// serde: `ser_time` for an optional time (null when absent).
pub fn ser_opt_time<S: serde::Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&t.map(timestamp), s)
}

pub fn timestamp(time_ns: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_nanosecond(time_ns as i128).unwrap_or(if time_ns < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    })
}

/// The zone tables are printed in: `TZ`, else the system's, else UTC.
fn local_zone() -> &'static TimeZone {
    static ZONE: OnceLock<TimeZone> = OnceLock::new();
    ZONE.get_or_init(TimeZone::system)
}

/// The UTC name of a point directory in the mount: `2026-11-23T140005Z`.
pub fn point_dir_name(time_ns: i64) -> String {
    timestamp(time_ns)
        .to_zoned(TimeZone::UTC)
        .strftime("%Y-%m-%dT%H%M%SZ")
        .to_string()
}

/// A time as tables print it, in local time: `2026-11-23 15:00:05`.
pub fn human_time(time_ns: i64) -> String {
    timestamp(time_ns)
        .to_zoned(local_zone().clone())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A local time with its zone, for sentences: `2026-11-23 15:00:05 CET`.
pub fn human_time_zone(time_ns: i64) -> String {
    timestamp(time_ns)
        .to_zoned(local_zone().clone())
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// The directory names of points in the mount, one per row of `points` (oldest first, as
/// `Catalog::points` lists them; any mix of items): the UTC second (`2026-11-23T140005Z`), or
/// `<second>-<id>` for a point whose item already has an earlier point in that second. The
/// mount and `resolve_point` both name points with this, so every name the mount shows resolves.
pub fn point_dir_names(points: &[PointRow]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    points
        .iter()
        .map(|p| {
            let name = point_dir_name(p.time);
            if seen.insert((p.item.as_str(), name.clone())) {
                name
            } else {
                format!("{name}-{}", p.id)
            }
        })
        .collect()
}

/// Where a point shows inside a mount: `items/<item>/<dir name>`, or `deleted/<item>/<dir
/// name>` for a soft-deleted point.
pub fn mount_path(p: &PointRow, dir_name: &str) -> String {
    let top = if p.deleted_at.is_some() {
        "deleted"
    } else {
        "items"
    };
    format!("{top}/{}/{dir_name}", p.item)
}

/// Splits `NAME[@POINT]`; the point is `latest` when not given.
pub fn split_point_ref(spec: &str) -> (&str, &str) {
    spec.split_once('@').unwrap_or((spec, "latest"))
}

/// What a time spec names: an instant and whether it is a whole second (or day) wide.
struct TimeRange {
    start: i64,
    len: i64,
}

impl TimeRange {
    fn contains(&self, t: i64) -> bool {
        t >= self.start && t - self.start < self.len
    }
}

/// Reads a time in any form points are shown in: RFC 3339 (with an offset), a local date and
/// time (`2026-11-23 15:00:05`, `2026-11-23T15:00:05`), or a local date.
fn parse_time(spec: &str) -> Option<TimeRange> {
    let whole = |ts: jiff::Timestamp| {
        let ns = ts.as_nanosecond() as i64;
        let len = if ts.subsec_nanosecond() == 0 { NS } else { 1 };
        TimeRange { start: ns, len }
    };
    if let Ok(ts) = spec.parse::<jiff::Timestamp>() {
        return Some(whole(ts));
    }
    if let Ok(dt) = spec.parse::<DateTime>()
        && spec.contains(':')
    {
        return dt
            .to_zoned(local_zone().clone())
            .ok()
            .map(|z| whole(z.timestamp()));
    }
    let day = spec.parse::<Date>().ok()?;
    let start = day.to_zoned(local_zone().clone()).ok()?;
    let end = day.tomorrow().ok()?.to_zoned(local_zone().clone()).ok()?;
    let start_ns = start.timestamp().as_nanosecond() as i64;
    Some(TimeRange {
        start: start_ns,
        len: end.timestamp().as_nanosecond() as i64 - start_ns,
    })
}

/// `latest` -> 0, `latest~N` -> N; None for anything else.
pub(super) fn parse_latest(spec: &str) -> Option<Option<usize>> {
    if spec == "latest" {
        return Some(Some(0));
    }
    let n = spec.strip_prefix("latest~")?;
    Some(n.parse::<usize>().ok())
}

/// The one point of `points` (oldest first, one item) that `spec` names (see the module
/// header); `full` is the spec as the user wrote it (`NAME@POINT`) for messages. A mount name
/// or a whole id matches exactly; otherwise every point whose id starts with `spec` or whose
/// time falls in the time `spec` names is a candidate, and several are `ambiguous`.
pub(super) fn pick_point(
    mut points: Vec<PointRow>,
    spec: &str,
    full: &str,
    not_found: fn(String) -> VaultError,
) -> VaultResult<PointRow> {
    if let Some(back) = parse_latest(spec) {
        let i = back.and_then(|b| points.len().checked_sub(b + 1));
        return i
            .map(|i| points.swap_remove(i))
            .ok_or_else(|| not_found(full.to_string()));
    }
    let names = point_dir_names(&points);
    if spec.is_empty() {
        return Err(not_found(full.to_string()));
    }
    if let Some(i) = (0..points.len()).find(|&i| names[i] == spec || points[i].id == spec) {
        return Ok(points.swap_remove(i));
    }
    let time = parse_time(spec);
    let hits: Vec<usize> = (0..points.len())
        .filter(|&i| {
            points[i].id.starts_with(spec)
                || time.as_ref().is_some_and(|t| t.contains(points[i].time))
        })
        .collect();
    match hits.as_slice() {
        [] => Err(not_found(full.to_string())),
        [i] => Ok(points.swap_remove(*i)),
        many => Err(VaultError::AmbiguousPoint {
            spec: full.to_string(),
            candidates: many
                .iter()
                .map(|&i| {
                    let p = &points[i];
                    format!("{} ({}, {})", p.id, names[i], human_time(p.time))
                })
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn row(item: &str, id: &str, time: i64) -> PointRow {
        PointRow {
            rowid: 0,
            id: id.into(),
            item: item.into(),
            time,
            root: Vec::new(),
            files: 0,
            dirs: 0,
            logical_bytes: 0,
            new_chunks: 0,
            new_bytes: 0,
            stored_bytes: 0,
            warnings: 0,
            duration_ms: 0,
            consistency: None,
            started: None,
            keep_until: None,
            deleted_at: None,
            deleted_by: None,
            tags: Vec::new(),
            note: None,
        }
    }

    #[test]
    fn points_of_one_second_get_their_id_after_the_first() {
        let t = 1_795_442_405_000_000_000;
        let rows = [
            row("a", "00000001", t),
            row("b", "00000002", t + 1),
            row("a", "00000003", t + 999_999_999),
            row("a", "00000004", t + 1_000_000_000),
        ];
        assert_eq!(
            point_dir_names(&rows),
            [
                "2026-11-23T140005Z",
                "2026-11-23T140005Z",
                "2026-11-23T140005Z-00000003",
                "2026-11-23T140006Z"
            ]
        );
    }

    #[test]
    fn point_names_are_utc_and_sortable() {
        assert_eq!(point_dir_name(0), "1970-01-01T000000Z");
        assert_eq!(
            point_dir_name(1_795_442_405_000_000_000),
            "2026-11-23T140005Z"
        );
        assert_eq!(
            point_dir_name(951_782_400 * 1_000_000_000),
            "2000-02-29T000000Z"
        );
    }

    fn pick(points: &[PointRow], spec: &str) -> Result<String, String> {
        pick_point(points.to_vec(), spec, spec, VaultError::PointNotFound)
            .map(|p| p.id)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_form_resolves_and_ambiguity_lists_candidates() {
        // The unit tests run in whatever zone the machine has; local forms are built with it.
        let t = 1_795_442_405_000_000_000; // 2026-11-23 14:00:05 UTC
        let rows = [
            row("a", "3fa2c1d0", t),
            row("a", "3fb00000", t + 500_000_000),
            row("a", "77000000", t + 86_400 * NS),
        ];
        assert_eq!(pick(&rows, "latest").unwrap(), "77000000");
        assert_eq!(pick(&rows, "latest~1").unwrap(), "3fb00000");
        assert_eq!(pick(&rows, "latest~2").unwrap(), "3fa2c1d0");
        assert!(pick(&rows, "latest~3").is_err());
        assert!(pick(&rows, "latest~x").is_err());
        assert_eq!(pick(&rows, "3fa").unwrap(), "3fa2c1d0");
        assert_eq!(pick(&rows, "2026-11-23T140005Z").unwrap(), "3fa2c1d0");
        assert_eq!(
            pick(&rows, "2026-11-23T140005Z-3fb00000").unwrap(),
            "3fb00000"
        );
        assert_eq!(pick(&rows, "2026-11-24T14:00:05Z").unwrap(), "77000000");
        assert_eq!(
            pick(&rows, "2026-11-24T15:00:05+01:00").unwrap(),
            "77000000"
        );
        assert_eq!(pick(&rows, "2026-11-23T14:00:05.5Z").unwrap(), "3fb00000");
        assert_eq!(
            pick(&rows, &human_time(t + 86_400 * NS)).unwrap(),
            "77000000"
        );
        let day = &human_time(t + 86_400 * NS)[..10];
        assert_eq!(pick(&rows, day).unwrap(), "77000000");
        let e = pick(&rows, "3f").unwrap_err();
        assert!(
            e.contains("ambiguous") && e.contains("3fa2c1d0") && e.contains("3fb00000"),
            "{e}"
        );
        let e = pick(&rows, "2026-11-23T14:00:05Z").unwrap_err();
        assert!(e.contains("3fa2c1d0 (2026-11-23T140005Z,"), "{e}");
        assert!(pick(&rows, "nope").is_err());
        assert!(pick(&rows, "").is_err());
    }

    #[test]
    fn json_times_are_rfc3339_utc() {
        assert_eq!(
            timestamp(1_795_442_405_000_000_000).to_string(),
            "2026-11-23T14:00:05Z"
        );
        assert_eq!(
            timestamp(1_795_442_405_000_000_001).to_string(),
            "2026-11-23T14:00:05.000000001Z"
        );
    }
}
