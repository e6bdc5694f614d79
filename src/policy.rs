//! Policies: when an item is backed up (its [`Schedule`]) and how long each of its recovery points
//! lives (its [`Retention`]), both read in the policy's time [`Zone`].
//!
//! This module owns the policy types as the catalog stores them (serde JSON, each rule and the
//! schedule as its command-line text) and as users type them (`Display` and `FromStr` round-trip),
//! and their pure evaluation over timestamps. It must not touch the vault, read the clock or look
//! at the environment (except [`Zone::system`]): callers pass `now` and the points, so every answer
//! is reproducible in a test. Invariants: a `Retention` keeps something (at least one rule with
//! N ≥ 1); a `Schedule` has at least one day and a valid time; a `Zone` is one the tz database
//! knows. Nothing here writes anything, so there is no crash story.

pub mod retention;
pub mod schedule;

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

pub use retention::{
    DayOfMonth, MonthlyRule, Period, Point, Retention, Role, RoleKind, Verdict, WeeklyRule,
    YearlyRule,
};
pub use schedule::Schedule;

/// Errors of policy parsing and validation; each names what was given and what is accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid {flag} value {value:?}: expected {expected}")]
    Rule {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "this retention keeps nothing: give at least one of --keep-daily, --keep-weekly, \
         --keep-monthly or --keep-yearly with N of 1 or more"
    )]
    KeepsNothing,
    #[error(
        "invalid retention {value:?}: {problem}; expected flags such as \
         \"--keep-daily 7 --keep-weekly 4@sun --keep-monthly 12@last\""
    )]
    Retention { value: String, problem: String },
    #[error(
        "invalid schedule {value:?}: {problem}; expected \"daily HH:MM\" or \
         \"weekly DAY[,DAY...] HH:MM\" with DAY one of mon, tue, wed, thu, fri, sat, sun and a \
         24-hour time from 00:00 to 23:59, e.g. \"weekly mon,thu 02:00\""
    )]
    Schedule { value: String, problem: String },
    #[error(
        "unknown time zone {name:?}: give an IANA name such as Europe/Paris, America/New_York or UTC"
    )]
    UnknownZone { name: String },
}

/// A policy as one protected item follows it: schedule, retention and the zone both are read in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub schedule: Schedule,
    pub retention: Retention,
    pub zone: Zone,
}

impl Policy {
    /// The policy `coffre init` names `default`: daily at 02:00, `--keep-daily 30`.
    pub fn vault_default(zone: Zone) -> Policy {
        Policy {
            schedule: Schedule::vault_default(),
            retention: Retention::vault_default(),
            zone,
        }
    }

    /// [`retention::evaluate`] in this policy's zone.
    pub fn evaluate(&self, points: &[Point], stopped: bool, now: Timestamp) -> Vec<Verdict> {
        retention::evaluate(points, &self.retention, self.zone.time_zone(), stopped, now)
    }

    /// [`schedule::next_slot`] in this policy's zone.
    pub fn next_slot(&self, after: Timestamp) -> Option<Timestamp> {
        schedule::next_slot(&self.schedule, self.zone.time_zone(), after)
    }

    /// [`schedule::is_due`] in this policy's zone.
    pub fn is_due(&self, newest_point: Option<Timestamp>, now: Timestamp) -> bool {
        schedule::is_due(&self.schedule, self.zone.time_zone(), newest_point, now)
    }
}

/// A time zone known by its IANA name (`Europe/Paris`, `UTC`), which is what the catalog stores.
///
/// Zones are looked up in the system's tz database, or in the copy built into coffre when the
/// machine has none, so a stored name resolves on any machine.
#[derive(Clone, Debug)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl Zone {
    /// Looks `name` up; case does not matter (`europe/paris` is stored as `Europe/Paris`).
    pub fn parse(name: &str) -> Result<Zone, PolicyError> {
        let name = name.trim();
        let unknown = || PolicyError::UnknownZone {
            name: name.to_string(),
        };
        // `Etc/Unknown` is jiff's stand-in for "could not tell", not a zone anyone lives in.
        if name.is_empty() || name.eq_ignore_ascii_case("Etc/Unknown") {
            return Err(unknown());
        }
        let tz = TimeZone::get(name).map_err(|_| unknown())?;
        let name = tz.iana_name().unwrap_or(name).to_string();
        Ok(Zone { name, tz })
    }

    /// UTC.
    pub fn utc() -> Zone {
        Zone {
            name: "UTC".to_string(),
            tz: TimeZone::UTC,
        }
    }

    /// The machine's zone (`TZ`, else `/etc/localtime`), or UTC when it is unknown or has no IANA
    /// name to store (a zone file copied rather than linked, a POSIX `TZ` rule string).
    pub fn system() -> Zone {
        let Ok(tz) = TimeZone::try_system() else {
            return Zone::utc();
        };
        let name = match tz.iana_name() {
            Some(name) if name != "Etc/Unknown" => name.to_string(),
            _ => return Zone::utc(),
        };
        Zone { name, tz }
    }

    /// The IANA name, as stored and shown.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The zone's rules, for the evaluation functions.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl FromStr for Zone {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Zone, PolicyError> {
        Zone::parse(s)
    }
}

/// Implements serde for a type as its `Display` text, parsed back (and so validated) by `FromStr`:
/// the catalog's JSON then reads like the command line.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_text;

serde_as_text!(Zone);

const WEEKDAYS: [(&str, &str, Weekday); 7] = [
    ("mon", "monday", Weekday::Monday),
    ("tue", "tuesday", Weekday::Tuesday),
    ("wed", "wednesday", Weekday::Wednesday),
    ("thu", "thursday", Weekday::Thursday),
    ("fri", "friday", Weekday::Friday),
    ("sat", "saturday", Weekday::Saturday),
    ("sun", "sunday", Weekday::Sunday),
];

/// `mon`…`sun` or the full English name, any case.
fn parse_weekday(s: &str) -> Option<Weekday> {
    WEEKDAYS
        .iter()
        .find(|(short, long, _)| s.eq_ignore_ascii_case(short) || s.eq_ignore_ascii_case(long))
        .map(|&(_, _, day)| day)
}

/// The three-letter name the parsers accept and `Display` prints.
fn weekday_name(day: Weekday) -> &'static str {
    WEEKDAYS[usize::from(day.to_monday_zero_offset().unsigned_abs())].0
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// `jan`…`dec`, any case, as 1…12.
fn parse_month(s: &str) -> Option<i8> {
    let index = MONTHS.iter().position(|m| s.eq_ignore_ascii_case(m))?;
    i8::try_from(index + 1).ok()
}

/// The three-letter name of month 1…12 (`???` for anything else, which validation rejects first).
fn month_name(month: i8) -> &'static str {
    usize::try_from(month - 1)
        .ok()
        .and_then(|i| MONTHS.get(i))
        .copied()
        .unwrap_or("???")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_resolve_by_iana_name_in_any_case() {
        assert_eq!(Zone::parse("Europe/Paris").unwrap().name(), "Europe/Paris");
        assert_eq!(Zone::parse("europe/paris").unwrap().name(), "Europe/Paris");
        assert_eq!(Zone::parse(" UTC ").unwrap(), Zone::utc());
        assert_eq!(Zone::parse("utc").unwrap().to_string(), "UTC");
    }

    #[test]
    fn unknown_zones_are_refused_with_an_example() {
        for bad in ["", "Mars/Olympus", "+02:00", "Etc/Unknown", "Europe/"] {
            let err = Zone::parse(bad).unwrap_err();
            assert!(matches!(err, PolicyError::UnknownZone { .. }), "{bad}");
            assert!(err.to_string().contains("Europe/Paris"), "{err}");
        }
    }

    #[test]
    fn the_system_zone_is_a_named_zone() {
        // Whatever the machine says, the answer must be storable and resolve again.
        let zone = Zone::system();
        assert_eq!(Zone::parse(zone.name()).unwrap(), zone);
    }

    #[test]
    fn weekday_and_month_names_round_trip() {
        for (short, long, day) in WEEKDAYS {
            assert_eq!(parse_weekday(short), Some(day));
            assert_eq!(parse_weekday(&long.to_uppercase()), Some(day));
            assert_eq!(weekday_name(day), short);
        }
        assert_eq!(parse_weekday("mo"), None);
        for (i, name) in MONTHS.iter().enumerate() {
            let month = i8::try_from(i + 1).unwrap();
            assert_eq!(parse_month(name), Some(month));
            assert_eq!(month_name(month), *name);
        }
        assert_eq!(parse_month("january"), None);
    }

    #[test]
    fn a_policy_round_trips_through_json() {
        let policy = Policy {
            schedule: "weekly mon,thu 02:30".parse().unwrap(),
            retention:
                "--keep-daily 7 --keep-weekly 4@sat --keep-monthly 12@last --keep-yearly 3@feb-29"
                    .parse()
                    .unwrap(),
            zone: Zone::parse("Europe/Paris").unwrap(),
        };
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            json,
            r#"{"schedule":"weekly mon,thu 02:30","retention":{"daily":7,"weekly":"4@sat","monthly":"12@last","yearly":"3@feb-29"},"zone":"Europe/Paris"}"#
        );
        let back: Policy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, policy);
    }

    #[test]
    fn stored_json_is_validated_on_load() {
        let bad = [
            r#"{"schedule":"daily 25:00","retention":{"daily":7},"zone":"UTC"}"#,
            r#"{"schedule":"daily 02:00","retention":{},"zone":"UTC"}"#,
            r#"{"schedule":"daily 02:00","retention":{"daily":0},"zone":"UTC"}"#,
            r#"{"schedule":"daily 02:00","retention":{"weekly":"4@xyz"},"zone":"UTC"}"#,
            r#"{"schedule":"daily 02:00","retention":{"daily":7},"zone":"Nowhere/Land"}"#,
        ];
        for json in bad {
            assert!(serde_json::from_str::<Policy>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn the_vault_default_is_daily_at_two_keeping_thirty_days() {
        let policy = Policy::vault_default(Zone::utc());
        assert_eq!(policy.schedule.to_string(), "daily 02:00");
        assert_eq!(policy.retention.to_string(), "--keep-daily 30");
    }

    #[test]
    fn a_policy_evaluates_in_its_own_zone() {
        let policy = Policy::vault_default(Zone::parse("Asia/Tokyo").unwrap());
        let ts = |s: &str| s.parse::<Timestamp>().unwrap();
        // 02:00 in Tokyo is 17:00 UTC the day before.
        assert_eq!(
            policy.next_slot(ts("2026-11-02T12:00:00Z")),
            Some(ts("2026-11-02T17:00:00Z"))
        );
        let newest = Some(ts("2026-11-02T12:00:00Z"));
        assert!(!policy.is_due(newest, ts("2026-11-02T16:59:59Z")));
        assert!(policy.is_due(newest, ts("2026-11-02T17:00:00Z")));
        // 14:30 and 15:30 UTC are 23:30 on the 2nd and 00:30 on the 3rd in Tokyo: two days.
        let points: Vec<Point> = ["2026-11-02T14:30:00Z", "2026-11-02T15:30:00Z"]
            .iter()
            .enumerate()
            .map(|(i, t)| Point {
                id: i.to_string(),
                taken_at: ts(t),
                keep_until: None,
            })
            .collect();
        let verdicts = policy.evaluate(&points, false, ts("2026-11-03T00:00:00Z"));
        assert_eq!(verdicts[0].reason, "daily until 2026-12-02");
        assert_eq!(verdicts[1].reason, "newest point of the item");
    }
}
