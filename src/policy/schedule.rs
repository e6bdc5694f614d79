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

/// 02:00, the default policy's time; a `const` so that jiff checks it at compile time.
const TWO_AM: Time = Time::constant(2, 0, 0, 0);

impl Schedule {
    /// The schedule of the vault's `default` policy: daily at 02:00.
    pub(super) fn vault_default() -> Schedule {
        Schedule {
            weekly: None,
            at: TWO_AM,
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
            [kind, days, _] if kind.eq_ignore_ascii_case("daily") && parse_days(days).is_ok() => {
                return Err(bad(
                    "a daily schedule takes no days (use weekly)".to_string()
                ));
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

#[cfg(test)]
mod tests {
    use jiff::ToSpan;
    use jiff::civil::DateTime;
    use jiff::tz::AmbiguousOffset;
    use proptest::prelude::*;

    use super::*;

    fn schedule(text: &str) -> Schedule {
        text.parse().unwrap()
    }

    fn paris() -> TimeZone {
        TimeZone::get("Europe/Paris").unwrap()
    }

    /// A wall-clock time in `tz` (`2026-11-02 02:00[:ss]`).
    fn at(tz: &TimeZone, wall: &str) -> Timestamp {
        let wall: DateTime = wall.replace(' ', "T").parse().unwrap();
        tz.to_ambiguous_timestamp(wall).compatible().unwrap()
    }

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn wall(tz: &TimeZone, t: Option<Timestamp>) -> String {
        tz.to_datetime(t.unwrap()).to_string()
    }

    #[test]
    fn schedules_parse_and_print_back() {
        let cases = [
            ("daily 02:00", "daily 02:00"),
            ("weekly mon,thu 02:00", "weekly mon,thu 02:00"),
            ("Weekly SUN,mon 2:05", "weekly mon,sun 02:05"),
            ("weekly monday,mon,Friday 23:59", "weekly mon,fri 23:59"),
            ("  daily   0:00 ", "daily 00:00"),
        ];
        for (text, printed) in cases {
            let parsed = schedule(text);
            assert_eq!(parsed.to_string(), printed, "{text}");
            assert_eq!(schedule(printed), parsed);
        }
        let weekly = schedule("weekly thu,mon 02:30");
        assert_eq!(
            weekly.days(),
            Some(vec![Weekday::Monday, Weekday::Thursday])
        );
        assert_eq!(weekly.time_of_day(), Time::constant(2, 30, 0, 0));
        assert_eq!(schedule("daily 02:00").days(), None);
    }

    #[test]
    fn bad_schedules_say_what_is_accepted() {
        let cases = [
            ("daily 25:00", "\"25:00\" is not a time"),
            ("daily 24:00", "\"24:00\" is not a time"),
            ("daily 12:60", "\"12:60\" is not a time"),
            ("daily 2am", "\"2am\" is not a time"),
            ("daily 12:5", "\"12:5\" is not a time"),
            ("daily 123:00", "\"123:00\" is not a time"),
            ("daily +1:00", "\"+1:00\" is not a time"),
            ("weekly 02:00", "needs its days"),
            ("weekly mon,,tue 02:00", "a day in the list is empty"),
            ("weekly mon, 02:00", "a day in the list is empty"),
            ("weekly mon,xyz 02:00", "\"xyz\" is not a day"),
            ("hourly 02:00", "\"hourly\" is neither daily nor weekly"),
            ("", "it is empty"),
            ("daily", "wrong number of words"),
            ("daily mon 02:00", "takes no days"),
            ("daily 02:00 03:00", "wrong number of words"),
        ];
        for (text, problem) in cases {
            let err = text.parse::<Schedule>().unwrap_err();
            assert!(matches!(err, PolicyError::Schedule { .. }), "{text}");
            let message = err.to_string();
            assert!(message.contains(problem), "{text}: {message}");
            assert!(message.contains("\"daily HH:MM\""), "{text}: {message}");
        }
    }

    #[test]
    fn the_next_slot_is_strictly_after() {
        let tz = paris();
        let daily = schedule("daily 02:00");
        let next = |after: &str| wall(&tz, next_slot(&daily, &tz, at(&tz, after)));
        assert_eq!(next("2026-11-02 01:59:59"), "2026-11-02T02:00:00");
        assert_eq!(next("2026-11-02 02:00"), "2026-11-03T02:00:00");
        assert_eq!(next("2026-11-02 23:00"), "2026-11-03T02:00:00");
    }

    #[test]
    fn weekly_slots_fall_on_their_days_only() {
        let tz = paris();
        let weekly = schedule("weekly mon,thu 02:00");
        assert_eq!(date("2026-11-03").weekday(), Weekday::Tuesday);
        let next = |after: &str| wall(&tz, next_slot(&weekly, &tz, at(&tz, after)));
        assert_eq!(next("2026-11-03 12:00"), "2026-11-05T02:00:00");
        assert_eq!(next("2026-11-05 02:00"), "2026-11-09T02:00:00");
        let last = |t: &str| wall(&tz, last_slot_at_or_before(&weekly, &tz, at(&tz, t)));
        assert_eq!(last("2026-11-05 02:00"), "2026-11-05T02:00:00");
        assert_eq!(last("2026-11-05 01:59:59"), "2026-11-02T02:00:00");
        assert_eq!(last("2026-11-08 23:00"), "2026-11-05T02:00:00");
    }

    fn date(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn a_slot_in_the_spring_forward_gap_runs_after_the_gap() {
        let tz = paris();
        let daily = schedule("daily 02:30");
        // 2026-03-29: Paris skips from 02:00 to 03:00; the slot is 03:30 CEST.
        let slot = next_slot(&daily, &tz, at(&tz, "2026-03-28 02:30"));
        assert_eq!(slot, Some(utc("2026-03-29T01:30:00Z")));
        assert_eq!(wall(&tz, slot), "2026-03-29T03:30:00");
        // And it is the only slot that day.
        let after = next_slot(&daily, &tz, slot.unwrap());
        assert_eq!(wall(&tz, after), "2026-03-30T02:30:00");
    }

    #[test]
    fn a_slot_in_the_fall_back_fold_runs_once_at_the_first_time() {
        let tz = paris();
        let daily = schedule("daily 02:30");
        // 2026-10-25: 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET).
        let slot = next_slot(&daily, &tz, at(&tz, "2026-10-24 12:00"));
        assert_eq!(slot, Some(utc("2026-10-25T00:30:00Z")));
        // The second 02:30 is not a slot.
        let after = next_slot(&daily, &tz, slot.unwrap());
        assert_eq!(after, Some(utc("2026-10-26T01:30:00Z")));
        let newest = utc("2026-10-25T00:40:00Z");
        assert!(!is_due(
            &daily,
            &tz,
            Some(newest),
            utc("2026-10-25T01:45:00Z")
        ));
    }

    #[test]
    fn an_item_without_points_is_due() {
        let tz = paris();
        assert!(is_due(
            &schedule("weekly sun 02:00"),
            &tz,
            None,
            at(&tz, "2026-11-03 12:00")
        ));
    }

    #[test]
    fn due_once_the_slot_after_the_newest_point_has_come() {
        let tz = paris();
        let daily = schedule("daily 02:00");
        let newest = Some(at(&tz, "2026-11-02 02:05"));
        let due = |now: &str| is_due(&daily, &tz, newest, at(&tz, now));
        assert!(!due("2026-11-02 02:20"));
        assert!(!due("2026-11-03 01:59:59"));
        assert!(due("2026-11-03 02:00"));
        assert!(due("2026-11-03 09:00"));
    }

    #[test]
    fn missed_nights_give_one_catch_up_then_nothing() {
        let tz = paris();
        let daily = schedule("daily 02:00");
        // The machine was off three nights; the timer's first run at 08:00 finds the item due.
        let newest = at(&tz, "2026-11-02 02:03");
        let wake = at(&tz, "2026-11-06 08:00");
        assert!(is_due(&daily, &tz, Some(newest), wake));
        // The catch-up backup's point, then the timer's next runs: nothing due until tomorrow.
        let caught_up = at(&tz, "2026-11-06 08:01");
        for later in ["2026-11-06 08:01", "2026-11-06 08:15", "2026-11-07 01:59"] {
            assert!(
                !is_due(&daily, &tz, Some(caught_up), at(&tz, later)),
                "{later}"
            );
        }
        assert!(is_due(
            &daily,
            &tz,
            Some(caught_up),
            at(&tz, "2026-11-07 02:00")
        ));
    }

    #[test]
    fn a_schedule_change_is_read_at_the_next_check() {
        let tz = paris();
        // Last backup Monday 02:10 under "weekly mon"; checked Tuesday at 03:00.
        let newest = Some(at(&tz, "2026-11-02 02:10"));
        let now = at(&tz, "2026-11-03 03:00");
        assert!(!is_due(&schedule("weekly mon 02:00"), &tz, newest, now));
        assert!(is_due(&schedule("daily 02:00"), &tz, newest, now));
        // Daily to weekly: a Tuesday check under "weekly fri" waits for Friday.
        assert!(!is_due(&schedule("weekly fri 02:00"), &tz, newest, now));
    }

    #[test]
    fn a_point_from_the_future_holds_the_item_until_a_later_slot() {
        let tz = TimeZone::UTC;
        let daily = schedule("daily 02:00");
        let newest = Some(utc("2026-11-10T12:00:00Z"));
        assert!(!is_due(&daily, &tz, newest, utc("2026-11-05T03:00:00Z")));
        assert!(is_due(&daily, &tz, newest, utc("2026-11-11T02:00:00Z")));
    }

    #[test]
    fn the_ends_of_time_have_no_slot_past_them() {
        let tz = paris();
        let daily = schedule("daily 02:00");
        assert_eq!(next_slot(&daily, &tz, Timestamp::MAX), None);
        assert_eq!(last_slot_at_or_before(&daily, &tz, Timestamp::MIN), None);
        assert!(next_slot(&daily, &tz, Timestamp::MIN).is_some());
        assert!(last_slot_at_or_before(&daily, &tz, Timestamp::MAX).is_some());
    }

    #[test]
    fn schedules_serialise_as_their_text() {
        let weekly = schedule("weekly thu,mon 02:30");
        let json = serde_json::to_string(&weekly).unwrap();
        assert_eq!(json, "\"weekly mon,thu 02:30\"");
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), weekly);
        assert!(serde_json::from_str::<Schedule>("\"weekly 02:30\"").is_err());
    }

    #[test]
    fn every_clock_change_of_four_years_gives_one_slot_a_day() {
        // Slots every 10 minutes of the 3 hours around each clock change of 2025-2028, in zones
        // with 1-hour, 30-minute and midnight changes: each day keeps exactly one slot, at its
        // time or moved forward by a gap.
        let start = utc("2025-01-01T00:00:00Z");
        let end = utc("2029-01-01T00:00:00Z");
        for name in [
            "Europe/Paris",
            "America/New_York",
            "Australia/Lord_Howe",
            "America/Havana",
        ] {
            let tz = TimeZone::get(name).unwrap();
            let changes = tz.following(start).take_while(|t| t.timestamp() < end);
            let mut count = 0;
            for change in changes {
                count += 1;
                let local = tz.to_datetime(change.timestamp());
                for minutes in (-90..=90_i64).step_by(10) {
                    let wall = local.checked_add(minutes.minutes()).unwrap();
                    let text = format!("daily {:02}:{:02}", wall.hour(), wall.minute());
                    let daily = schedule(&text);
                    // From just before the day before, so that its slot is the first one found.
                    let eve_day = wall.date().yesterday().unwrap();
                    let eve = eve_day.to_datetime(Time::midnight());
                    let eve = tz.to_ambiguous_timestamp(eve).compatible().unwrap();
                    let eve = eve.checked_sub(1.second()).unwrap();
                    let first = next_slot(&daily, &tz, eve).unwrap();
                    let second = next_slot(&daily, &tz, first).unwrap();
                    let third = next_slot(&daily, &tz, second).unwrap();
                    let days: Vec<Date> = [first, second, third]
                        .iter()
                        .map(|&t| tz.to_datetime(t).date())
                        .collect();
                    let expected: Vec<Date> = (0..3)
                        .map(|d| eve_day.checked_add(d.days()).unwrap())
                        .collect();
                    assert_eq!(days, expected, "{name} {text} around {local}");
                    for slot in [first, second, third] {
                        assert!(tz.to_datetime(slot).time() >= daily.time_of_day());
                    }
                }
            }
            assert!(count >= 8, "{name}: {count} clock changes");
        }
    }

    // ---- properties -------------------------------------------------------------------------

    const ZONES: [&str; 6] = [
        "UTC",
        "Europe/Paris",
        "America/New_York",
        "Australia/Lord_Howe",
        "America/Havana",
        "Asia/Kolkata",
    ];

    fn zones() -> impl Strategy<Value = TimeZone> {
        proptest::sample::select(&ZONES[..]).prop_map(|name| TimeZone::get(name).unwrap())
    }

    fn schedules() -> impl Strategy<Value = Schedule> {
        let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        (0..128_u8, 0..24_u8, 0..60_u8).prop_map(move |(mask, hour, minute)| {
            let days: Vec<&str> = (0..7)
                .filter(|d| mask & (1 << d) != 0)
                .map(|d| names[d])
                .collect();
            let text = match days.is_empty() {
                true => format!("daily {hour:02}:{minute:02}"),
                false => format!("weekly {} {hour:02}:{minute:02}", days.join(",")),
            };
            schedule(&text)
        })
    }

    /// Any instant from 2025 to 2028, to the second: every DST change of those years.
    fn instants() -> impl Strategy<Value = Timestamp> {
        (0..4 * 366 * 86_400_i64).prop_map(|s| {
            utc("2025-01-01T00:00:00Z")
                .checked_add(s.seconds())
                .unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn next_slot_is_the_first_slot_after(s in schedules(), tz in zones(), after in instants()) {
            let next = next_slot(&s, &tz, after).unwrap();
            prop_assert!(next > after);
            prop_assert!(next.duration_since(after) <= jiff::SignedDuration::from_hours(8 * 24));
            // It is a slot, and no slot lies between `after` and it.
            prop_assert_eq!(last_slot_at_or_before(&s, &tz, next), Some(next));
            let just_before = next.checked_sub(1.nanosecond()).unwrap();
            prop_assert!(last_slot_at_or_before(&s, &tz, just_before).is_none_or(|l| l <= after));
        }

        #[test]
        fn last_slot_is_the_latest_at_or_before(s in schedules(), tz in zones(), t in instants()) {
            let last = last_slot_at_or_before(&s, &tz, t).unwrap();
            prop_assert!(last <= t);
            prop_assert!(next_slot(&s, &tz, last).unwrap() > t);
        }

        #[test]
        fn slots_are_at_the_time_of_day_unless_it_was_skipped(
            s in schedules(), tz in zones(), t in instants(),
        ) {
            let slot = next_slot(&s, &tz, t).unwrap();
            let local = tz.to_datetime(slot);
            prop_assert!(s.runs_on(local.date().weekday()));
            if local.time() != s.time_of_day() {
                // Only a spring-forward gap moves a slot, and only forward (in these zones, never
                // past midnight).
                let wanted = local.date().to_datetime(s.time_of_day());
                let offset = tz.to_ambiguous_timestamp(wanted).offset();
                prop_assert!(matches!(offset, AmbiguousOffset::Gap { .. }), "{} {}", s, local);
                prop_assert!(local.time() > s.time_of_day());
            }
        }

        #[test]
        fn a_backup_makes_the_item_not_due_until_the_next_slot(
            s in schedules(), tz in zones(), backup in instants(), wait in 0..(9 * 86_400_i64),
        ) {
            let now = backup.checked_add(wait.seconds()).unwrap();
            prop_assert!(!is_due(&s, &tz, Some(backup), backup));
            let next = next_slot(&s, &tz, backup).unwrap();
            prop_assert_eq!(is_due(&s, &tz, Some(backup), now), next <= now);
        }
    }
}
