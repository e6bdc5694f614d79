//! Schedules: when an item is due for a backup.
//!
//! A schedule is `daily HH:MM` or `weekly DAY[,DAY...] HH:MM` (DAY mon…sun, a 24-hour time), read
//! in the policy's time zone. Each scheduled day has exactly one *slot*: that day at HH:MM. When
//! clocks spring forward past HH:MM that day, the slot moves forward by the gap (a 02:30 slot runs
//! at 03:30); when clocks fall back and HH:MM happens twice, the slot is the first of the two.
//!
//! An item with no point is due. An item with points is due when a slot came after its newest
//! point and at or before now: however many slots were missed (a machine that was off for a
//! week), that is one catch-up backup, and the backup it triggers makes the item not due until the
//! next slot. A point time-stamped later than now (`backup --time` in the future, a clock set
//! back) holds the item until a slot after that time.
//!
//! This module owns the schedule type (parse, print, store) and these pure functions over
//! timestamps: no clock, no vault. Invariants: at least one day, and a time from 00:00 to 23:59.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

use super::{PolicyError, parse_weekday, serde_as_text, weekday_name};

/// When to back up: every day, or on chosen weekdays, at a time of day.
///
/// Text form (parse, `Display`, and the catalog's JSON): `daily 02:00`, `weekly mon,thu 02:00`.
/// Days print in week order, Monday first, without repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Bit `d` set: runs on the weekday with Monday-zero offset `d`. `None`: daily.
    weekly: Option<u8>,
    /// Hours and minutes only: seconds and below are always zero.
    at: Time,
}

impl Schedule {
    /// The schedule of the vault's `default` policy: daily at 02:00.
    pub(super) fn vault_default() -> Schedule {
        Schedule {
            weekly: None,
            at: Time::constant(2, 0, 0, 0),
        }
    }

    /// The days it runs on; `None` for a daily schedule.
    pub fn days(&self) -> Option<Vec<Weekday>> {
        let mask = self.weekly?;
        let week = Weekday::Monday.cycle_forward().take(7);
        Some(week.filter(|&day| mask & bit(day) != 0).collect())
    }

    /// The time of day of its slots, in the policy's zone.
    pub fn time_of_day(&self) -> Time {
        self.at
    }

    fn runs_on(&self, day: Weekday) -> bool {
        self.weekly.is_none_or(|mask| mask & bit(day) != 0)
    }

    /// The slot of `date` in `tz`, if the schedule runs that day.
    fn slot_on(&self, date: Date, tz: &TimeZone) -> Option<Timestamp> {
        if !self.runs_on(date.weekday()) {
            return None;
        }
        let wall = date.to_datetime(self.time_of_day());
        tz.to_ambiguous_timestamp(wall).compatible().ok()
    }

    /// The slots of the days around `t`'s date in `tz`. Nine days each way covers a full week
    /// plus the largest shift a zone has ever made (Samoa skipped a whole day in 2011), so the
    /// slots just before and just after `t` are always among them.
    fn slots_around(&self, tz: &TimeZone, t: Timestamp) -> impl Iterator<Item = Timestamp> {
        let today = tz.to_datetime(t).date();
        (-9..=9_i64).filter_map(move |offset| {
            let date = Span::new()
                .try_days(offset)
                .and_then(|span| today.checked_add(span))
                .ok()?;
            self.slot_on(date, tz)
        })
    }
}

/// The bit of `day` in `Schedule::weekly`.
fn bit(day: Weekday) -> u8 {
    1 << day.to_monday_zero_offset()
}

/// The first slot strictly after `after`; `None` only past the calendar's end (year 9999).
pub fn next_slot(schedule: &Schedule, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
    schedule
        .slots_around(tz, after)
        .filter(|&slot| slot > after)
        .min()
}

/// The last slot at or before `t`; `None` only before the calendar's start (year -9999).
pub fn last_slot_at_or_before(
    schedule: &Schedule,
    tz: &TimeZone,
    t: Timestamp,
) -> Option<Timestamp> {
    schedule.slots_around(tz, t).filter(|&slot| slot <= t).max()
}

/// Whether the item is due at `now`: it has no point, or a slot came after its newest point and
/// at or before `now` (one catch-up however many slots were missed).
pub fn is_due(
    schedule: &Schedule,
    tz: &TimeZone,
    newest_point: Option<Timestamp>,
    now: Timestamp,
) -> bool {
    match newest_point {
        None => true,
        Some(newest) => last_slot_at_or_before(schedule, tz, now).is_some_and(|slot| slot > newest),
    }
}

impl FromStr for Schedule {
    type Err = PolicyError;

    /// `daily HH:MM` or `weekly DAY[,DAY...] HH:MM`; words in any case, days as `mon` or `monday`,
    /// the hour with one or two digits.
    fn from_str(s: &str) -> Result<Schedule, PolicyError> {
        let bad = |problem: String| PolicyError::Schedule {
            value: s.to_string(),
            problem,
        };
        let words: Vec<&str> = s.split_whitespace().collect();
        let (weekly, time) = match words.as_slice() {
            [kind, time] if kind.eq_ignore_ascii_case("daily") => (None, *time),
            [kind, days, time] if kind.eq_ignore_ascii_case("weekly") => {
                (Some(parse_days(days).map_err(bad)?), *time)
            }
            [kind, _] if kind.eq_ignore_ascii_case("weekly") => {
                return Err(bad("a weekly schedule needs its days".to_string()));
            }
            [] => return Err(bad("it is empty".to_string())),
            [kind, ..] if !is_kind(kind) => {
                return Err(bad(format!("{kind:?} is neither daily nor weekly")));
            }
            _ => return Err(bad("wrong number of words".to_string())),
        };
        let at = parse_time(time)
            .ok_or_else(|| bad(format!("{time:?} is not a time from 00:00 to 23:59")))?;
        Ok(Schedule { weekly, at })
    }
}

fn is_kind(word: &str) -> bool {
    word.eq_ignore_ascii_case("daily") || word.eq_ignore_ascii_case("weekly")
}

/// `mon,thu` as a day mask; a problem for the error message otherwise.
fn parse_days(list: &str) -> Result<u8, String> {
    let mut mask = 0;
    for name in list.split(',') {
        let day = parse_weekday(name).ok_or_else(|| match name {
            "" => "a day in the list is empty".to_string(),
            _ => format!("{name:?} is not a day"),
        })?;
        mask |= bit(day);
    }
    Ok(mask)
}

/// `HH:MM` (or `H:MM`) on a 24-hour clock.
fn parse_time(text: &str) -> Option<Time> {
    let (hour, minute) = text.split_once(':')?;
    let digits = |s: &str, lengths: &[usize]| {
        (lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i8>().ok())
            .flatten()
    };
    // Time::new refuses 24:00 and 12:60.
    Time::new(digits(hour, &[1, 2])?, digits(minute, &[2])?, 0, 0).ok()
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.days() {
            None => f.write_str("daily")?,
            Some(days) => {
                let names: Vec<&str> = days.into_iter().map(weekday_name).collect();
                write!(f, "weekly {}", names.join(","))?;
            }
        }
        write!(f, " {:02}:{:02}", self.at.hour(), self.at.minute())
    }
}

serde_as_text!(Schedule);
