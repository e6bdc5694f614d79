//! Policies end to end, through the real binary: back-dated points (`backup --time`) over two
//! years, pruned at chosen wall-clock times (Debian's `faketime`), and the kept set compared with
//! a reference computation of issue 9's rules written here, independently of `coffre::policy`
//! (jiff only does the calendar arithmetic). Also soft delete, undelete, purge, immutability,
//! `backup --due` and the policy commands' errors.
//!
//! Every command runs with TZ=UTC and the policies under test are in UTC, so a day is a UTC day;
//! the policy module's own tests cover other zones and clock changes. faketime starts each
//! process at the time it is given and lets its clock run on.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::process::{Command, Output};
use std::time::Duration;

use common::{TestVault, run_with_deadline, stderr};
use jiff::civil::{Date, DateTime, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde_json::Value;

// ---- driving the binary ----------------------------------------------------------------------

/// Splits a command line on spaces, keeping "double-quoted words" together.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut word, mut quoted, mut started) = (String::new(), false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started {
                    out.push(std::mem::take(&mut word));
                }
                started = false;
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

struct Vault {
    t: TestVault,
}

impl Vault {
    fn new() -> Vault {
        assert!(
            Command::new("faketime").arg("--help").output().is_ok(),
            "these tests need Debian's faketime (`apt-get install faketime`; .ci/run does)"
        );
        let v = Vault {
            t: TestVault::new(),
        };
        v.ok("init");
        std::fs::create_dir_all(v.t.path("src")).unwrap();
        std::fs::write(v.t.path("src/file"), b"data").unwrap();
        v
    }

    /// The directory every item backs up.
    fn src(&self) -> String {
        self.t.path("src").to_str().unwrap().to_string()
    }

    /// Runs `coffre LINE` (at wall-clock time `now`, UTC, when given).
    fn run_at(&self, now: Option<&str>, line: &str) -> Output {
        let bin = env!("CARGO_BIN_EXE_coffre");
        let mut c = match now {
            Some(now) => {
                let mut c = Command::new("faketime");
                c.arg(now).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.args(words(line))
            .env("COFFRE_VAULT", self.t.vault())
            .env("TZ", "UTC")
            .env("RUST_BACKTRACE", "0")
            // faketime would shift the file times fstat reports and not those of fstatat, and
            // the backup would see every file change while it is read.
            .env("NO_FAKE_STAT", "1")
            .env_remove("COFFRE_CRASH_AT")
            .env_remove("COFFRE_FAIL_WRITE_AFTER");
        run_with_deadline(&mut c, Duration::from_secs(120))
    }

    fn ok_at(&self, now: Option<&str>, line: &str) -> String {
        let out = self.run_at(now, line);
        assert!(
            out.status.success(),
            "coffre {line} at {now:?} failed with {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn ok(&self, line: &str) -> String {
        self.ok_at(None, line)
    }

    fn json_at(&self, now: Option<&str>, line: &str) -> Value {
        serde_json::from_str(&self.ok_at(now, &format!("{line} --json"))).unwrap()
    }

    /// Insists on exit `code` with `needle` in stderr; returns stderr.
    fn fails_at(&self, now: Option<&str>, line: &str, code: i32, needle: &str) -> String {
        let out = self.run_at(now, line);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "coffre {line}: {err}");
        assert!(
            err.contains(needle),
            "coffre {line}: expected {needle:?} in: {err}"
        );
        err
    }

    fn fails(&self, line: &str, code: i32, needle: &str) -> String {
        self.fails_at(None, line, code, needle)
    }

    /// A back-dated point of `item`, with `extra` options; its id.
    fn backup(&self, item: &str, time: Timestamp, extra: &str) -> String {
        let line = format!(
            "backup -q --item {item} {} --time {time} {extra}",
            self.src()
        );
        let v = self.json_at(None, &line);
        v[0]["point"]["id"].as_str().unwrap().to_string()
    }

    /// Live points of `item` as `points --json` lists them (at `now`), by id.
    fn points_at(&self, now: Option<&str>, item: &str) -> BTreeMap<String, Value> {
        by_id(self.json_at(now, &format!("points {item}")))
    }

    fn points(&self, item: &str) -> BTreeMap<String, Value> {
        self.points_at(None, item)
    }

    /// Soft-deleted points of `item`, by id.
    fn deleted(&self, item: &str) -> BTreeMap<String, Value> {
        by_id(self.json_at(None, &format!("points {item} --deleted")))
    }
}

fn by_id(list: Value) -> BTreeMap<String, Value> {
    let list = list.as_array().unwrap();
    list.iter()
        .map(|p| (p["id"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// `2026-06-15 12:00:00`, as faketime takes it (in TZ=UTC).
fn wall(t: Timestamp) -> String {
    TimeZone::UTC
        .to_datetime(t)
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn ns(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap()
}

const DAY_NS: i64 = 86_400_000_000_000;

// ---- the reference: issue 9's rules, written out again ---------------------------------------

#[derive(Clone, Debug)]
struct RefPoint {
    id: String,
    time: Timestamp,
    keep_until: Option<Timestamp>,
}

/// A retention: `--keep-daily N`, `--keep-weekly N@DAY`, `--keep-monthly N@DOM` (31 = last),
/// `--keep-yearly N@MON-DOM`.
#[derive(Clone, Copy, Debug, Default)]
struct Rules {
    daily: Option<i64>,
    weekly: Option<(i64, Weekday)>,
    monthly: Option<(i64, i8)>,
    yearly: Option<(i64, i8, i8)>,
}

#[derive(Clone, Debug, PartialEq)]
struct Expected {
    /// None: never.
    expires: Option<Timestamp>,
    roles: BTreeSet<&'static str>,
}

fn civil(t: Timestamp) -> DateTime {
    TimeZone::UTC.to_datetime(t)
}

fn instant(d: DateTime) -> Timestamp {
    TimeZone::UTC.to_timestamp(d).unwrap()
}

/// Day `day` of the month, or the month's last day when it is shorter.
fn clamped(year: i16, month: i8, day: i8) -> Date {
    let first = Date::new(year, month, 1).unwrap();
    Date::new(year, month, day.min(first.days_in_month())).unwrap()
}

/// The last day of the week (ending on `day`) that holds `d`.
fn week_end(d: Date, day: Weekday) -> Date {
    let mut end = d;
    while end.weekday() != day {
        end = end.tomorrow().unwrap();
    }
    end
}

/// The last day of the month-period (ending on day `dom`) that holds `d`.
fn month_end(d: Date, dom: i8) -> Date {
    let here = clamped(d.year(), d.month(), dom);
    if d <= here {
        return here;
    }
    let next = d.first_of_month().checked_add(1.month()).unwrap();
    clamped(next.year(), next.month(), dom)
}

/// The last day of the year-period (ending on `month`-`day`) that holds `d`.
fn year_end(d: Date, month: i8, day: i8) -> Date {
    let here = clamped(d.year(), month, day);
    if d <= here {
        here
    } else {
        clamped(d.year() + 1, month, day)
    }
}

/// Every point's roles and expiry under `rules`: the newest point of each period holds the
/// period's role and is kept for the rule's span from its time; a point with no role is kept one
/// day; `keep_until` extends; the newest point of the item never expires.
fn reference(points: &[RefPoint], rules: &Rules) -> HashMap<String, Expected> {
    let mut newest_first: Vec<&RefPoint> = points.iter().collect();
    newest_first.sort_by(|a, b| (b.time, &b.id).cmp(&(a.time, &a.id)));
    let mut held: HashSet<(&'static str, Date)> = HashSet::new();
    let mut out = HashMap::new();
    for (rank, p) in newest_first.iter().enumerate() {
        let local = civil(p.time);
        let date = local.date();
        let mut periods: Vec<(&'static str, Date, DateTime)> = Vec::new();
        if let Some(n) = rules.daily {
            periods.push(("daily", date, local.checked_add(n.days()).unwrap()));
        }
        if let Some((n, day)) = rules.weekly {
            let until = local.checked_add((7 * n).days()).unwrap();
            periods.push(("weekly", week_end(date, day), until));
        }
        if let Some((n, dom)) = rules.monthly {
            let until = local.checked_add(n.months()).unwrap();
            periods.push(("monthly", month_end(date, dom), until));
        }
        if let Some((n, m, d)) = rules.yearly {
            let until = local.checked_add(n.years()).unwrap();
            periods.push(("yearly", year_end(date, m, d), until));
        }
        let mut roles = BTreeSet::new();
        let mut expiry: Option<Timestamp> = None;
        for (kind, end, until) in periods {
            if held.insert((kind, end)) {
                roles.insert(kind);
                expiry = expiry.max(Some(instant(until)));
            }
        }
        let mut expires = expiry.unwrap_or_else(|| instant(local.checked_add(1.day()).unwrap()));
        if let Some(k) = p.keep_until {
            expires = expires.max(k);
        }
        let expires = (rank > 0).then_some(expires);
        out.insert(p.id.clone(), Expected { expires, roles });
    }
    out
}

/// One item as the vault should hold it: live points, and soft-deleted ones with their time.
#[derive(Default)]
struct Model {
    live: Vec<RefPoint>,
    deleted: Vec<(RefPoint, Timestamp)>,
}

impl Model {
    /// What `prune` at `now` does under `rules` with a soft-delete period of `days`: returns
    /// the ids it expires and those it purges.
    fn prune(&mut self, rules: &Rules, now: Timestamp, days: i64) -> [BTreeSet<String>; 2] {
        let expected = reference(&self.live, rules);
        let (gone, kept): (Vec<RefPoint>, Vec<RefPoint>) = self
            .live
            .drain(..)
            .partition(|p| expected[&p.id].expires.is_some_and(|e| e <= now));
        self.live = kept;
        let expired = gone.iter().map(|p| p.id.clone()).collect();
        self.deleted.extend(gone.into_iter().map(|p| (p, now)));
        let over = |at: &Timestamp| at.checked_add((24 * days).hours()).unwrap() <= now;
        let purged = self
            .deleted
            .iter()
            .filter(|(_, at)| over(at))
            .map(|(p, _)| p.id.clone())
            .collect();
        self.deleted.retain(|(_, at)| !over(at));
        [expired, purged]
    }

    fn live_ids(&self) -> BTreeSet<String> {
        self.live.iter().map(|p| p.id.clone()).collect()
    }

    fn deleted_ids(&self) -> BTreeSet<String> {
        self.deleted.iter().map(|(p, _)| p.id.clone()).collect()
    }
}

/// `points --json` lists the model's live points, each with the reference's expiry and roles.
fn assert_points_match(v: &Vault, now: &str, item: &str, model: &Model, rules: &Rules) {
    let listed = v.points_at(Some(now), item);
    let ids: BTreeSet<String> = listed.keys().cloned().collect();
    same_set(
        &ids,
        &model.live_ids(),
        &format!("live points of {item} at {now}"),
    );
    let expected = reference(&model.live, rules);
    for (id, p) in &listed {
        let want = &expected[id];
        let why = format!("point {id} taken {}: {}", p["time"], p["reason"]);
        assert_eq!(
            common::json_ns(&p["expires"]),
            want.expires.map(ns),
            "expiry of {why}"
        );
        let roles: BTreeSet<&str> = p["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(roles, want.roles, "roles of {why}");
    }
}

/// Runs `prune --dry-run` and `prune` at `now` and checks both against the model (which it
/// advances); returns the prune's JSON.
fn prune_and_check(
    v: &Vault,
    now: Timestamp,
    item: &str,
    model: &mut Model,
    rules: &Rules,
    days: i64,
) -> Value {
    let at = wall(now);
    let before = v.points_at(Some(&at), item);
    let dry = v.json_at(Some(&at), &format!("prune --dry-run {item}"));
    assert_eq!(
        v.points_at(Some(&at), item),
        before,
        "a dry run changes nothing"
    );
    let done = v.json_at(Some(&at), &format!("prune {item}"));
    let [expired, purged] = model.prune(rules, now, days);
    for report in [&dry, &done] {
        let by_action = |action: &str| -> BTreeSet<String> {
            let points = report["points"].as_array().unwrap();
            points
                .iter()
                .filter(|p| p["action"] == action)
                .map(|p| p["id"].as_str().unwrap().to_string())
                .collect()
        };
        same_set(&by_action("expire"), &expired, &format!("expired at {at}"));
        same_set(&by_action("purge"), &purged, &format!("purged at {at}"));
        same_set(
            &by_action("keep"),
            &model.live_ids(),
            &format!("kept at {at}"),
        );
    }
    assert_points_match(v, &at, item, model, rules);
    let deleted: BTreeSet<String> = v.deleted(item).into_keys().collect();
    let what = format!("soft-deleted after the prune at {at}");
    same_set(&deleted, &model.deleted_ids(), &what);
    done
}

/// Asserts two sets of point ids are equal, naming only the differences.
fn same_set(got: &BTreeSet<String>, want: &BTreeSet<String>, what: &str) {
    let extra: Vec<&String> = got.difference(want).collect();
    let missing: Vec<&String> = want.difference(got).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: coffre has {extra:?} more and {missing:?} fewer than the reference"
    );
}

/// A back-dated point of item `home` (policy `p`), recorded in the model too.
fn add(v: &Vault, model: &mut Model, time: Timestamp, keep_until: Option<Timestamp>) {
    let extra = match keep_until {
        Some(k) => format!("--policy p --keep-until {k}"),
        None => "--policy p".to_string(),
    };
    let id = v.backup("home", time, &extra);
    model.live.push(RefPoint {
        id,
        time,
        keep_until,
    });
}

fn at(d: Date, hour: i8, minute: i8) -> Timestamp {
    instant(d.at(hour, minute, 0, 0))
}

// ---- the tests -------------------------------------------------------------------------------

#[test]
fn retention_over_two_years_matches_the_reference() {
    let v = Vault::new();
    v.ok(
        "policy create p --schedule \"weekly mon,thu 02:00\" --keep-daily 14 --keep-weekly 8@sun \
         --keep-monthly 12@last --keep-yearly 3@dec-31 --timezone UTC",
    );
    let mut rules = Rules {
        daily: Some(14),
        weekly: Some((8, Weekday::Sunday)),
        monthly: Some((12, 31)),
        yearly: Some((3, 12, 31)),
    };
    let mut model = Model::default();

    // Half a year of weekly backups on Monday and Thursday, a few minutes late each time.
    let mut day = Date::constant(2024, 6, 17);
    while day < Date::constant(2025, 1, 1) {
        if matches!(day.weekday(), Weekday::Monday | Weekday::Thursday) {
            add(&v, &mut model, at(day, 2, day.day() % 7 * 3), None);
        }
        day = day.tomorrow().unwrap();
    }
    // A prune half-way, as the timer would have run it.
    let mid = ts("2025-01-01T12:00:00Z");
    prune_and_check(&v, mid, "home", &mut model, &rules, 14);

    // weekly -> daily: the retention is the same, so is every expiry.
    v.ok("policy set p --schedule \"daily 02:30\"");
    assert_points_match(&v, &wall(mid), "home", &model, &rules);

    // A year of daily backups with missed days (every ninth, and ten days in August), days with
    // three points, and on-demand points with --keep-until: one no rule keeps (a later point
    // takes the day), one whose --keep-until passes before the prune.
    let mut day = Date::constant(2025, 1, 1);
    let mut n = 0;
    while day < Date::constant(2026, 1, 1) {
        n += 1;
        let missed = n % 9 == 0 || (day.month() == 8 && (10..=20).contains(&day.day()));
        if !missed {
            add(&v, &mut model, at(day, 2, 30), None);
            if n % 10 == 0 {
                add(&v, &mut model, at(day, 11, 0), None);
                add(&v, &mut model, at(day, 18, 45), None);
            }
        }
        if day == Date::constant(2025, 3, 3) {
            add(
                &v,
                &mut model,
                at(day, 14, 0),
                Some(ts("2026-09-01T00:00:00Z")),
            );
            add(&v, &mut model, at(day, 16, 0), None);
        }
        if day == Date::constant(2025, 10, 7) {
            add(
                &v,
                &mut model,
                at(day, 15, 0),
                Some(ts("2025-10-20T00:00:00Z")),
            );
        }
        day = day.tomorrow().unwrap();
    }

    // daily -> weekly, on Sundays, and this morning's point.
    v.ok("policy set p --schedule \"weekly sun 03:00\"");
    let mut day = Date::constant(2026, 1, 4);
    while day < Date::constant(2026, 6, 15) {
        add(&v, &mut model, at(day, 3, 0), None);
        day = day.checked_add(7.days()).unwrap();
    }
    // Points that hold no role, one expired by now and one not: Sunday's 03:00 point (a later
    // one takes the day and the week) and this morning's 01:00 one.
    add(&v, &mut model, at(Date::constant(2026, 6, 14), 20, 0), None);
    add(&v, &mut model, at(Date::constant(2026, 6, 15), 1, 0), None);
    add(&v, &mut model, at(Date::constant(2026, 6, 15), 2, 0), None);
    assert!(model.live.len() > 400, "{} points", model.live.len());

    let now = ts("2026-06-15T12:00:00Z");
    let done = prune_and_check(&v, now, "home", &mut model, &rules, 14);
    let reasons: Vec<&str> = done["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["reason"].as_str())
        .collect();
    let has = |prefix: &str| reasons.iter().any(|r| r.starts_with(prefix));
    assert!(has("newest point of the item"), "{reasons:?}");
    assert!(has("yearly (dec-31) until "), "{reasons:?}");
    assert!(has("monthly (last) until "), "{reasons:?}");
    assert!(has("weekly (sun) until "), "{reasons:?}");
    assert!(has("kept until 2026-09-01 (--keep-until)"), "{reasons:?}");
    assert!(
        has("no role: expires 1 day after it was taken"),
        "{reasons:?}"
    );

    // Shortened: three monthly points, no yearly rule: points that lose their role expire now.
    let at_now = Some(wall(now));
    v.ok_at(
        at_now.as_deref(),
        "policy set p --keep-monthly 3@last --keep-yearly 0",
    );
    rules.monthly = Some((3, 31));
    rules.yearly = None;
    let done = prune_and_check(&v, now, "home", &mut model, &rules, 14);
    assert!(
        done["expired"].as_u64().unwrap() >= 8,
        "{}",
        done["expired"]
    );

    // Lengthened: every point not deleted yet is kept longer; nothing expires.
    v.ok_at(
        at_now.as_deref(),
        "policy set p --keep-daily 60 --keep-weekly 12@sun",
    );
    rules.daily = Some(60);
    rules.weekly = Some((12, Weekday::Sunday));
    let done = prune_and_check(&v, now, "home", &mut model, &rules, 14);
    assert_eq!(done["expired"], 0);

    // Soft-deleted points are purged when their 14 days are over, not before; meanwhile time
    // goes on and more points expire.
    let done = prune_and_check(
        &v,
        ts("2026-06-28T12:00:00Z"),
        "home",
        &mut model,
        &rules,
        14,
    );
    assert_eq!(done["purged"], 0, "13 days after the deletions");
    let done = prune_and_check(
        &v,
        ts("2026-06-29T13:00:00Z"),
        "home",
        &mut model,
        &rules,
        14,
    );
    assert!(done["purged"].as_u64().unwrap() > 8, "{}", done["purged"]);
}

#[test]
fn soft_delete_undelete_and_purge() {
    let v = Vault::new();
    let now = ts("2026-06-15T12:00:00Z");
    let at_now = wall(now);
    let at_now = Some(at_now.as_str());
    v.ok("policy create p --schedule \"daily 02:00\" --keep-daily 3 --timezone UTC");
    let rules = Rules {
        daily: Some(3),
        ..Rules::default()
    };
    let mut model = Model::default();
    for d in 5..=14 {
        add(
            &v,
            &mut model,
            ts(&format!("2026-06-{d:02}T02:00:00Z")),
            None,
        );
    }

    // forget: a point its policy keeps goes to soft delete for 14 days.
    let ninth = model.live[8].id.clone();
    let out = v.ok_at(at_now, &format!("forget home@{ninth}"));
    assert!(out.contains("soft-deleted until 2026-06-29 12:00"), "{out}");
    assert!(
        out.contains(&format!("coffre undelete home@{ninth}")),
        "{out}"
    );
    let deleted = v.deleted("home");
    assert_eq!(deleted.keys().collect::<Vec<_>>(), vec![&ninth]);
    let p = &deleted[&ninth];
    assert_eq!(p["deleted_by"], "forget");
    let deleted_at = common::json_ns(&p["deleted_at"]).unwrap();
    assert!((ns(now)..ns(now) + 60_000_000_000).contains(&deleted_at));
    assert_eq!(
        common::json_ns(&p["purge_at"]).unwrap(),
        deleted_at + 14 * DAY_NS
    );
    let human = v.ok("points home --deleted");
    assert!(
        human.contains("forget") && human.contains("2026-06-29 12:00"),
        "{human}"
    );
    let gone = model.live.remove(8);
    model.deleted.push((gone, now));
    assert_points_match(&v, &wall(now), "home", &model, &rules);

    // prune soft-deletes the expired ones (3 days: only the newest is left).
    prune_and_check(&v, now, "home", &mut model, &rules, 14);
    assert_eq!(model.live.len(), 1);

    // undelete: back, and kept 14 more days so the next prune does not take it again.
    let out = v.ok_at(at_now, &format!("undelete home@{ninth}"));
    assert!(
        out.contains("kept at least until 2026-06-29 12:00"),
        "{out}"
    );
    let keep_until = common::json_ns(&v.points("home")[&ninth]["keep_until"]).unwrap();
    let fortnight = ns(now) + 14 * DAY_NS;
    assert!((fortnight..fortnight + 60_000_000_000).contains(&keep_until));
    let keep_until = Timestamp::from_nanosecond(keep_until.into()).unwrap();
    let back = model
        .deleted
        .iter()
        .position(|(p, _)| p.id == ninth)
        .unwrap();
    let (mut p, _) = model.deleted.remove(back);
    p.keep_until = Some(keep_until);
    model.live.push(p);
    // undelete --keep-until, of a point prune took.
    let (mut taken, _) = model.deleted.remove(0);
    let line = format!(
        "undelete home@{} --keep-until 2026-07-01T00:00:00Z",
        taken.id
    );
    v.ok_at(at_now, &line);
    taken.keep_until = Some(ts("2026-07-01T00:00:00Z"));
    let taken_id = taken.id.clone();
    model.live.push(taken);
    prune_and_check(&v, now, "home", &mut model, &rules, 14);
    assert!(model.live_ids().contains(&ninth) && model.live_ids().contains(&taken_id));

    // purge: a soft-deleted point goes now, for good.
    let (victim, _) = model.deleted.remove(0);
    let out = v.ok(&format!("purge home@{}", victim.id));
    assert!(out.contains("purged"), "{out}");
    let deleted: BTreeSet<String> = v.deleted("home").into_keys().collect();
    assert_eq!(deleted, model.deleted_ids());
    let missing = "no soft-deleted recovery point";
    v.fails(&format!("undelete home@{}", victim.id), 1, missing);
    v.fails(&format!("purge home@{ninth}"), 1, missing);

    // soft-delete-days 0: forget purges at once, and prune purges every soft-deleted point.
    v.ok("vault set soft-delete-days 0");
    model.live.sort_by_key(|p| p.time);
    let newest = model.live.pop().unwrap().id;
    let out = v.ok_at(at_now, &format!("forget home@{newest}"));
    assert!(out.contains("purged"), "{out}");
    assert!(!v.deleted("home").contains_key(&newest));
    let later = now.checked_add(1.hour()).unwrap();
    prune_and_check(&v, later, "home", &mut model, &rules, 0);
    assert!(v.deleted("home").is_empty());
    v.ok("vault set soft-delete-days 14");

    // stop-protection --delete-data soft-deletes every point.
    let n = model.live.len();
    assert!(n > 0);
    let out = v.ok("stop-protection home --delete-data");
    let said = match n {
        1 => "1 point deleted".to_string(),
        _ => format!("{n} points deleted"),
    };
    assert!(out.contains(&said), "{out}");
    let deleted = v.deleted("home");
    assert_eq!(deleted.len(), n);
    assert!(
        deleted
            .values()
            .all(|p| p["deleted_by"] == "stop-protection")
    );
    assert!(v.points("home").is_empty());

    // Specs that name no point.
    v.fails("forget home", 2, "NAME@POINT");
    v.fails("undelete home@", 2, "NAME@POINT");
    v.fails("forget nope@123", 1, "no item named");
}

#[test]
fn immutability_refuses_what_would_shorten_a_point_life() {
    let v = Vault::new();
    let now = ts("2026-06-15T12:00:00Z");
    let at_now = wall(now);
    let at_now = Some(at_now.as_str());
    v.ok(
        "policy create p --schedule \"daily 02:00\" --keep-daily 7 --keep-weekly 4 --timezone UTC",
    );
    v.ok("policy create short --schedule \"daily 02:00\" --keep-daily 2 --timezone UTC");
    let mut ids = Vec::new();
    for d in 1..=40 {
        let time = ts("2026-05-06T02:00:00Z")
            .checked_add((24 * d).hours())
            .unwrap();
        ids.push(v.backup("x", time, "--policy p"));
    }
    // Pruned two days ago: a point has expired since, not pruned yet.
    v.ok_at(Some("2026-06-13 12:00:00"), "prune");
    let points = v.points_at(at_now, "x");
    let expired = points
        .iter()
        .find(|(_, p)| common::json_ns(&p["expires"]).is_some_and(|e| e <= ns(now)))
        .map(|(id, _)| id.clone())
        .expect("a point expired since the last prune");
    let deleted: Vec<String> = v.deleted("x").into_keys().collect();
    assert!(!deleted.is_empty());

    v.ok("vault set immutability on");
    assert_eq!(v.json_at(None, "vault show")["immutability"], "on");

    let before = v.points_at(at_now, "x");
    // forget of a point not expired yet: refused, naming the rule and the point.
    let newest = ids.last().unwrap();
    let err = v.fails_at(at_now, &format!("forget x@{newest}"), 1, "immutability (on");
    assert!(
        err.contains("forget would end point") && err.contains("newest point"),
        "{err}"
    );
    // A shorter retention, by `policy set` or by assigning a shorter policy: refused.
    let err = v.fails_at(at_now, "policy set p --keep-daily 3", 1, "immutability (on");
    assert!(
        err.contains("would expire") && err.contains("instead of"),
        "{err}"
    );
    v.fails_at(at_now, "policy set p --keep-weekly 0", 1, "immutability");
    v.fails_at(at_now, "policy assign short x", 1, "immutability");
    // A shorter soft-delete period, an early purge, deleting by stop-protection: refused.
    v.fails("vault set soft-delete-days 7", 1, "can only be raised");
    v.fails_at(
        at_now,
        &format!("purge x@{}", deleted[0]),
        1,
        "purge would end point",
    );
    let stop = "stop-protection --delete-data would end point";
    v.fails_at(at_now, "stop-protection x --delete-data", 1, stop);
    // A point back-dated into the item's past could take a role from a point there.
    let src = v.src();
    let back = format!("backup --item x {src} --time 2026-05-31T23:00:00Z");
    v.fails_at(at_now, &back, 1, "before the newest point of item \"x\"");
    // None of them changed anything.
    assert_eq!(v.points_at(at_now, "x"), before);
    assert_eq!(v.deleted("x").len(), deleted.len());
    let items = v.json_at(None, "items");
    assert_eq!(items[0]["state"], "protected");
    assert_eq!(items[0]["policy"], "p");

    // What shortens no life is allowed: forget of a point its policy has expired, a longer rule,
    // a schedule change, a longer soft-delete period, undelete, and prune by the policy.
    v.ok_at(at_now, &format!("forget x@{expired}"));
    v.ok_at(at_now, "policy set p --keep-daily 10");
    v.ok_at(at_now, "policy set p --schedule \"weekly sun 03:00\"");
    v.ok("vault set soft-delete-days 30");
    v.ok_at(at_now, &format!("undelete x@{}", deleted[0]));
    let pruned = v.json_at(Some("2026-07-15 12:00:00"), "prune");
    assert!(pruned["expired"].as_u64().unwrap() > 0);

    // on can be turned off; locked never.
    v.ok("vault set immutability off");
    v.ok("vault set immutability locked");
    let never = "immutability is locked: it can never be turned off";
    v.fails("vault set immutability off", 1, never);
    v.fails("vault set immutability on", 1, never);
    let newest = v.points("x").into_keys().last().unwrap();
    v.fails_at(
        at_now,
        &format!("forget x@{newest}"),
        1,
        "immutability (locked",
    );
    v.fails("vault set immutability maybe", 2, "invalid value");
}

#[test]
fn backup_due_follows_the_schedule_at_chosen_times() {
    let v = Vault::new();
    v.ok("policy create nightly --schedule \"daily 02:00\" --keep-daily 2 --timezone UTC");
    v.ok("policy create mondays --schedule \"weekly mon 02:00\" --keep-daily 30 --timezone UTC");
    let src = v.src();
    // Registered on Sunday evening; c is stopped.
    let sunday = Some("2026-11-01 23:00:00");
    v.ok_at(
        sunday,
        &format!("backup -q --item a {src} --policy nightly"),
    );
    v.ok_at(
        sunday,
        &format!("backup -q --item b {src} --policy mondays"),
    );
    v.ok_at(
        sunday,
        &format!("backup -q --item c {src} --policy nightly"),
    );
    v.ok("stop-protection c");
    let count = |item: &str| v.points(item).len();
    let schedule = |now: &str| by_item(v.json_at(Some(now), "schedule"));
    let due = |now: &str| -> BTreeMap<String, bool> {
        let s = schedule(now);
        s.into_iter()
            .map(|(item, e)| (item, e["due"].as_bool().unwrap()))
            .collect()
    };
    let expect =
        |a: bool, b: bool| BTreeMap::from([("a".into(), a), ("b".into(), b), ("c".into(), false)]);

    // Just before the slot: nothing is due.
    let before = "2026-11-02 01:59:00";
    assert_eq!(due(before), expect(false, false));
    let out = v.ok_at(Some(before), "backup --due");
    let next = "nothing is due; next: \"a\" at 2026-11-02 02:00:00 UTC";
    assert!(out.contains(next), "{out}");
    assert_eq!((count("a"), count("b"), count("c")), (1, 1, 1));

    // Monday 02:05: a (daily) and b (weekly on Monday) are due; c is stopped.
    let monday = "2026-11-02 02:05:00";
    let s = schedule(monday);
    assert_eq!(
        common::json_ns(&s["a"]["next_slot"]),
        Some(ns(ts("2026-11-02T02:00:00Z")))
    );
    assert_eq!(s["c"]["state"], "stopped");
    assert_eq!(due(monday), expect(true, true));
    v.ok_at(Some(monday), "backup --due");
    assert_eq!((count("a"), count("b"), count("c")), (2, 2, 1));
    // A second run finds nothing due.
    let out = v.ok_at(Some("2026-11-02 02:20:00"), "backup --due");
    assert!(out.contains("nothing is due"), "{out}");
    assert_eq!((count("a"), count("b")), (2, 2));

    // The machine was off three nights: on Thursday at 08:00 a gets one catch-up backup, not
    // three, and the prune that follows expires its points older than two days.
    let thursday = "2026-11-05 08:00:00";
    assert_eq!(due(thursday), expect(true, false));
    let out = v.ok_at(Some(thursday), "backup --due");
    assert!(out.contains("2 points expired"), "{out}");
    assert_eq!(count("a"), 1);
    assert_eq!(v.deleted("a").len(), 2);
    assert_eq!(count("b"), 2);
    let out = v.ok_at(Some("2026-11-05 08:15:00"), "backup --due");
    assert!(out.contains("nothing is due"), "{out}");
    assert_eq!(count("a"), 1);
    let out = v.ok_at(Some("2026-11-05 08:15:00"), "schedule");
    assert!(out.contains("no (stopped)"), "{out}");

    // An item failing does not stop the others; the run exits 1.
    let other = v.t.path("other");
    std::fs::create_dir(&other).unwrap();
    let line = format!("backup -q --item d {} --policy nightly", other.display());
    v.ok_at(Some("2026-11-09 01:00:00"), &line);
    std::fs::remove_dir(&other).unwrap();
    let out = v.run_at(Some("2026-11-09 02:10:00"), "backup --due");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("backup of item \"d\" failed"),
        "{}",
        stderr(&out)
    );
    // a: its Thursday point expired and the new one is kept; b: a third point.
    assert_eq!((count("a"), count("b"), count("d")), (1, 3, 1));
}

fn by_item(list: Value) -> BTreeMap<String, Value> {
    let list = list.as_array().unwrap();
    list.iter()
        .map(|e| (e["item"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

#[test]
fn policy_commands_and_their_errors() {
    let v = Vault::new();
    // init made `default`: daily 02:00, 30 days, in the machine's zone (TZ=UTC here).
    let list = v.json_at(None, "policy list");
    assert_eq!(list[0]["name"], "default");
    assert_eq!(list[0]["schedule"], "daily 02:00");
    assert_eq!(list[0]["retention"], serde_json::json!({"daily": 30}));
    assert_eq!(list[0]["zone"], "UTC");

    // The example a restic or borg user knows.
    v.ok(
        "policy create r --schedule \"weekly mon,thu 02:30\" --keep-daily 7 --keep-weekly 4 \
         --keep-monthly 12",
    );
    let show = v.ok("policy show r");
    let flags = "--keep-daily 7 --keep-weekly 4@sun --keep-monthly 12@1";
    assert!(show.contains(flags), "{show}");
    let weekly = "the newest point of each week ending on sun, kept 4 weeks";
    assert!(show.contains(weekly), "{show}");
    let r = v.json_at(None, "policy show r");
    assert_eq!(r["schedule"], "weekly mon,thu 02:30");
    assert_eq!(r["zone"], "UTC");

    // Usage errors (exit 2): a bad schedule, zone or rule, a policy that keeps nothing.
    let create = "policy create bad --schedule";
    v.fails(
        &format!("{create} \"daily 25:00\" --keep-daily 1"),
        2,
        "invalid schedule",
    );
    v.fails(
        &format!("{create} hourly --keep-daily 1"),
        2,
        "\"daily HH:MM\"",
    );
    let zone = format!("{create} \"daily 02:00\" --keep-daily 1 --timezone Mars/Base");
    v.fails(&zone, 2, "unknown time zone");
    v.fails(
        &format!("{create} \"daily 02:00\" --keep-weekly 4@xyz"),
        2,
        "--keep-weekly",
    );
    v.fails(&format!("{create} \"daily 02:00\""), 2, "keeps nothing");
    v.fails(
        &format!("{create} \"daily 02:00\" --keep-daily 0"),
        2,
        "keeps nothing",
    );
    let slash = "policy create a/b --schedule \"daily 02:00\" --keep-daily 1";
    v.fails(slash, 2, "invalid policy name");
    v.fails("policy create", 2, "NAME");
    let nothing = "policy set r --keep-daily 0 --keep-weekly 0 --keep-monthly 0";
    v.fails(nothing, 2, "keeps nothing");
    // Errors about the vault's policies (exit 1).
    let again = "policy create r --schedule \"daily 02:00\" --keep-daily 1";
    v.fails(again, 1, "already exists");
    v.fails(
        "policy set nope --keep-daily 1",
        1,
        "no policy named \"nope\"",
    );
    v.fails("policy show nope", 1, "coffre policy list");

    // New items follow default, or --policy.
    let src = v.src();
    v.ok(&format!("backup -q --item x {src}"));
    v.ok(&format!("backup -q --item y {src} --policy r"));
    let items = v.json_at(None, "items");
    assert_eq!(items[0]["policy"], "default");
    assert_eq!(items[1]["policy"], "r");
    v.fails(
        &format!("backup --item z {src} --policy nope"),
        1,
        "no policy named",
    );
    assert_eq!(v.json_at(None, "items").as_array().unwrap().len(), 2);
    let assign = "coffre policy assign r x";
    v.fails(&format!("backup --item x {src} --policy r"), 1, assign);
    v.fails("backup x --policy r", 2, "coffre policy assign");
    v.fails("backup --due x", 2, "cannot be used with");
    v.fails(
        &format!("backup --item x {src} --time yesterday"),
        2,
        "RFC 3339",
    );
    let early = format!(
        "backup --item x {src} --time 2026-01-02T00:00:00Z --keep-until 2026-01-01T00:00:00Z"
    );
    v.fails(&early, 2, "is not after the point's time");

    // rm: refused for default, and while items follow the policy.
    v.fails("policy rm default", 1, "cannot be removed");
    v.fails("policy rm r", 1, "followed by y");
    v.ok("policy assign default y");
    v.ok("policy rm r");
    assert_eq!(v.json_at(None, "policy list").as_array().unwrap().len(), 1);
    v.fails("policy assign nope y", 1, "no policy named");
    v.fails("policy assign default nope", 1, "no item named");
}
