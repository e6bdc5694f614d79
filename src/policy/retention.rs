//! Retention: how long each recovery point of an item is kept.
//!
//! Times are read in the policy's time zone (`--timezone`, by default the machine's, UTC when it
//! is unknown). A *day* is a calendar day there, from midnight to midnight, so it is 23 or 25
//! hours long on the days clocks change. The rules:
//!
//! - `--keep-daily N`: the newest point of each calendar day is that day's *daily* point; it is
//!   kept N days from the time it was taken.
//! - `--keep-weekly N[@DAY]` (DAY mon…sun, default sun): a week is the 7 days ending on DAY,
//!   up to midnight at the end of DAY. The newest point of each week is its *weekly* point (so the
//!   one taken on DAY when there is one); it is kept N weeks (7×N days) from its time.
//! - `--keep-monthly N[@DOM|@last]` (DOM 1…31, default 1): a month-period ends at the end of day
//!   DOM of a month (the month's last day when it is shorter, so `@31` and `@last` agree) and
//!   starts the day after the previous one ended. Its newest point is the *monthly* point; it is
//!   kept N calendar months from its time (Jan 31 + 1 month is the last day of February).
//! - `--keep-yearly N[@MON-DOM]` (default jan-1): a year-period ends at the end of MON-DOM
//!   (`feb-29` is Feb 28 in common years). Its newest point is the *yearly* point; it is kept N
//!   calendar years from its time (Feb 29 + 1 year is Feb 28).
//! - A point may hold several roles; it expires at the latest of their expiries. A point with no
//!   role (an older point of a day that has a newer one, or any point that holds no role when there
//!   is no daily rule) expires 1 day after it was taken.
//! - `--keep-until TIME`, given to `backup`, moves that point's expiry to TIME when TIME is later;
//!   it never makes a point expire sooner.
//! - The newest point of an item never expires by policy, so a failing source never loses its last
//!   good point; the points of a stopped item never expire.
//! - A point is expired once its expiry is at or before now; `prune` then soft-deletes it.
//! - Roles are computed over the points that are not soft-deleted, from the current policy: a
//!   shorter rule expires existing points at the next prune, a longer one keeps them longer.
//!
//! In detail:
//!
//! - "N days (weeks, months, years) from its time" means the same wall-clock time N calendar days
//!   (7×N days, N months, N years) later in the zone. When that time does not exist on that day
//!   (clocks spring forward) it is moved forward by the gap (02:30 becomes 03:30); when it exists
//!   twice (clocks fall back) the earlier one is used.
//! - A rule with N = 0 is off, exactly as if it were not given (`policy set --keep-weekly 0`
//!   removes the weekly rule). A retention must keep something: at least one rule with N ≥ 1.
//! - Two points taken at the same instant: the one whose id sorts last counts as the newer.
//! - An expiry past the calendar's end (year 9999) is shown as never.
//!
//! This module owns the retention rules (parse, print, store) and their evaluation, which is pure:
//! no vault, no clock. Evaluation sorts the points once and visits each once per rule, so it costs
//! O(n log n) for n points.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Weekday};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

use super::{PolicyError, month_name, parse_month, parse_weekday, serde_as_text, weekday_name};

const DAILY_FLAG: &str = "--keep-daily";
const WEEKLY_FLAG: &str = "--keep-weekly";
const MONTHLY_FLAG: &str = "--keep-monthly";
const YEARLY_FLAG: &str = "--keep-yearly";

const DAILY_FORM: &str = "a whole number of days N (0 turns the rule off), e.g. 7";
const WEEKLY_FORM: &str =
    "N or N@DAY with DAY one of mon, tue, wed, thu, fri, sat, sun (default sun), e.g. 4@sun";
const MONTHLY_FORM: &str = "N, N@DOM with DOM from 1 to 31, or N@last (default 1), e.g. 12@last";
const YEARLY_FORM: &str =
    "N or N@MON-DOM, a date that exists in a leap year (default jan-1), e.g. 3@dec-31";

/// How long an item's points are kept: up to four rules, at least one of them with N ≥ 1.
///
/// Built by [`Retention::new`], parsed from the flags (`--keep-daily 7 --keep-weekly 4@sun`, the
/// form `Display` prints), or loaded from JSON (`{"daily":7,"weekly":"4@sun"}`); all three check
/// that it keeps something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RetentionFields")]
pub struct Retention {
    #[serde(skip_serializing_if = "Option::is_none")]
    daily: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weekly: Option<WeeklyRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    monthly: Option<MonthlyRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    yearly: Option<YearlyRule>,
}

/// `--keep-weekly N@DAY`: weeks end on `day`; each week's newest point is kept `count` weeks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeeklyRule {
    pub count: u32,
    pub day: Weekday,
}

/// `--keep-monthly N@DOM`: month-periods end on `day`; each one's newest point is kept `count`
/// months.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonthlyRule {
    pub count: u32,
    pub day: DayOfMonth,
}

/// The day a month-period ends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DayOfMonth {
    /// Day 1…31 (checked by [`Retention::new`]); in a shorter month, the month's last day.
    Day(u8),
    /// The month's last day.
    Last,
}

/// `--keep-yearly N@MON-DOM`: year-periods end on `month`-`day`; each one's newest point is kept
/// `count` years.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct YearlyRule {
    pub count: u32,
    /// 1…12.
    pub month: i8,
    /// 1…31, a day that exists in `month` of a leap year (checked by [`Retention::new`]).
    pub day: i8,
}

impl Retention {
    /// Checks and builds a retention. A rule with count 0 is dropped (it is off); an
    /// out-of-range day is refused, and so is a retention left with no rule.
    pub fn new(
        daily: Option<u32>,
        weekly: Option<WeeklyRule>,
        monthly: Option<MonthlyRule>,
        yearly: Option<YearlyRule>,
    ) -> Result<Retention, PolicyError> {
        if let Some(rule) = monthly {
            check_day_of_month(rule)?;
        }
        if let Some(rule) = yearly {
            check_month_day(rule)?;
        }
        let retention = Retention {
            daily: daily.filter(|&n| n > 0),
            weekly: weekly.filter(|r| r.count > 0),
            monthly: monthly.filter(|r| r.count > 0),
            yearly: yearly.filter(|r| r.count > 0),
        };
        if retention.rules().is_empty() {
            return Err(PolicyError::KeepsNothing);
        }
        Ok(retention)
    }

    /// The retention of the vault's `default` policy: `--keep-daily 30`.
    pub(super) fn vault_default() -> Retention {
        Retention {
            daily: Some(30),
            weekly: None,
            monthly: None,
            yearly: None,
        }
    }

    /// `--keep-daily N`, when on.
    pub fn daily(&self) -> Option<u32> {
        self.daily
    }

    /// `--keep-weekly`, when on.
    pub fn weekly(&self) -> Option<WeeklyRule> {
        self.weekly
    }

    /// `--keep-monthly`, when on.
    pub fn monthly(&self) -> Option<MonthlyRule> {
        self.monthly
    }

    /// `--keep-yearly`, when on.
    pub fn yearly(&self) -> Option<YearlyRule> {
        self.yearly
    }

    /// The rules that are on, shortest period first.
    fn rules(&self) -> Vec<Rule> {
        let daily = self.daily.map(Rule::Daily);
        let weekly = self.weekly.map(Rule::Weekly);
        let monthly = self.monthly.map(Rule::Monthly);
        let yearly = self.yearly.map(Rule::Yearly);
        [daily, weekly, monthly, yearly]
            .into_iter()
            .flatten()
            .collect()
    }
}

fn check_day_of_month(rule: MonthlyRule) -> Result<(), PolicyError> {
    match rule.day {
        DayOfMonth::Day(1..=31) | DayOfMonth::Last => Ok(()),
        DayOfMonth::Day(_) => Err(PolicyError::Rule {
            flag: MONTHLY_FLAG,
            value: rule.to_string(),
            expected: MONTHLY_FORM,
        }),
    }
}

fn check_month_day(rule: YearlyRule) -> Result<(), PolicyError> {
    // 2000 is a leap year: feb-29 is allowed, feb-30 is not.
    let exists = Date::new(2000, rule.month, rule.day).is_ok();
    if exists {
        Ok(())
    } else {
        Err(PolicyError::Rule {
            flag: YEARLY_FLAG,
            value: rule.to_string(),
            expected: YEARLY_FORM,
        })
    }
}

/// The JSON shape of a retention, checked by `Retention::new` on the way in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFields {
    daily: Option<u32>,
    weekly: Option<WeeklyRule>,
    monthly: Option<MonthlyRule>,
    yearly: Option<YearlyRule>,
}

impl TryFrom<RetentionFields> for Retention {
    type Error = PolicyError;
    fn try_from(f: RetentionFields) -> Result<Retention, PolicyError> {
        Retention::new(f.daily, f.weekly, f.monthly, f.yearly)
    }
}

impl fmt::Display for Retention {
    /// The flags that give this retention, e.g. `--keep-daily 7 --keep-weekly 4@sun`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut flags = Vec::new();
        if let Some(n) = self.daily {
            flags.push(format!("{DAILY_FLAG} {n}"));
        }
        if let Some(rule) = self.weekly {
            flags.push(format!("{WEEKLY_FLAG} {rule}"));
        }
        if let Some(rule) = self.monthly {
            flags.push(format!("{MONTHLY_FLAG} {rule}"));
        }
        if let Some(rule) = self.yearly {
            flags.push(format!("{YEARLY_FLAG} {rule}"));
        }
        f.write_str(&flags.join(" "))
    }
}

impl FromStr for Retention {
    type Err = PolicyError;

    /// Parses the flags `Display` prints; `--keep-daily=7` works too.
    fn from_str(s: &str) -> Result<Retention, PolicyError> {
        let problem = |problem: String| PolicyError::Retention {
            value: s.to_string(),
            problem,
        };
        let (mut daily, mut weekly, mut monthly, mut yearly) = (None, None, None, None);
        let mut tokens = s.split_whitespace();
        while let Some(token) = tokens.next() {
            let (flag, value) = match token.split_once('=') {
                Some((flag, value)) => (flag, Some(value)),
                None => (token, tokens.next()),
            };
            let value = value.ok_or_else(|| problem(format!("{flag} needs a value")))?;
            let twice = || problem(format!("{flag} is given twice"));
            match flag {
                DAILY_FLAG => set_once(&mut daily, parse_count(DAILY_FLAG, DAILY_FORM, value)?)
                    .ok_or_else(twice)?,
                WEEKLY_FLAG => set_once(&mut weekly, value.parse()?).ok_or_else(twice)?,
                MONTHLY_FLAG => set_once(&mut monthly, value.parse()?).ok_or_else(twice)?,
                YEARLY_FLAG => set_once(&mut yearly, value.parse()?).ok_or_else(twice)?,
                _ => return Err(problem(format!("unknown flag {flag:?}"))),
            }
        }
        Retention::new(daily, weekly, monthly, yearly)
    }
}

/// Stores `value` in an empty `slot`; `None` when the slot was already filled.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// Digits only: `u32::from_str` would also take `+7`, which no one types on purpose.
fn parse_count(flag: &'static str, expected: &'static str, s: &str) -> Result<u32, PolicyError> {
    let bad = || PolicyError::Rule {
        flag,
        value: s.to_string(),
        expected,
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

/// Splits `N@SUFFIX` into the count and the suffix, if any.
fn split_rule<'a>(
    flag: &'static str,
    expected: &'static str,
    s: &'a str,
) -> Result<(u32, Option<&'a str>), PolicyError> {
    let (count, suffix) = match s.split_once('@') {
        Some((count, suffix)) => (count, Some(suffix)),
        None => (s, None),
    };
    Ok((parse_count(flag, expected, count)?, suffix))
}

impl FromStr for WeeklyRule {
    type Err = PolicyError;
    /// `N` or `N@DAY`.
    fn from_str(s: &str) -> Result<WeeklyRule, PolicyError> {
        let (count, day) = split_rule(WEEKLY_FLAG, WEEKLY_FORM, s)?;
        let day = match day {
            None => Weekday::Sunday,
            Some(day) => parse_weekday(day).ok_or_else(|| PolicyError::Rule {
                flag: WEEKLY_FLAG,
                value: s.to_string(),
                expected: WEEKLY_FORM,
            })?,
        };
        Ok(WeeklyRule { count, day })
    }
}

impl fmt::Display for WeeklyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.count, weekday_name(self.day))
    }
}

impl FromStr for MonthlyRule {
    type Err = PolicyError;
    /// `N`, `N@DOM` or `N@last`.
    fn from_str(s: &str) -> Result<MonthlyRule, PolicyError> {
        let (count, day) = split_rule(MONTHLY_FLAG, MONTHLY_FORM, s)?;
        let bad = || PolicyError::Rule {
            flag: MONTHLY_FLAG,
            value: s.to_string(),
            expected: MONTHLY_FORM,
        };
        let day = match day {
            None => DayOfMonth::Day(1),
            Some(day) if day.eq_ignore_ascii_case("last") => DayOfMonth::Last,
            Some(day) => parse_count(MONTHLY_FLAG, MONTHLY_FORM, day)
                .ok()
                .and_then(|d| u8::try_from(d).ok())
                .filter(|d| (1..=31).contains(d))
                .map(DayOfMonth::Day)
                .ok_or_else(bad)?,
        };
        Ok(MonthlyRule { count, day })
    }
}

impl fmt::Display for MonthlyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.count, self.day)
    }
}

impl fmt::Display for DayOfMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DayOfMonth::Day(d) => write!(f, "{d}"),
            DayOfMonth::Last => f.write_str("last"),
        }
    }
}

impl FromStr for YearlyRule {
    type Err = PolicyError;
    /// `N` or `N@MON-DOM`.
    fn from_str(s: &str) -> Result<YearlyRule, PolicyError> {
        let (count, date) = split_rule(YEARLY_FLAG, YEARLY_FORM, s)?;
        let bad = || PolicyError::Rule {
            flag: YEARLY_FLAG,
            value: s.to_string(),
            expected: YEARLY_FORM,
        };
        let Some(date) = date else {
            return Ok(YearlyRule {
                count,
                month: 1,
                day: 1,
            });
        };
        let (month, day) = date.split_once('-').ok_or_else(bad)?;
        let month = parse_month(month).ok_or_else(bad)?;
        let day = parse_count(YEARLY_FLAG, YEARLY_FORM, day)
            .ok()
            .and_then(|d| i8::try_from(d).ok())
            .ok_or_else(bad)?;
        let rule = YearlyRule { count, month, day };
        check_month_day(rule).map_err(|_| bad())?;
        Ok(rule)
    }
}

impl fmt::Display for YearlyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}-{}", self.count, month_name(self.month), self.day)
    }
}

serde_as_text!(WeeklyRule);
serde_as_text!(MonthlyRule);
serde_as_text!(YearlyRule);

/// A recovery point as retention sees it. Pass only the points that are not soft-deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// Opaque to retention, except that it breaks ties between points taken at the same instant.
    pub id: String,
    pub taken_at: Timestamp,
    /// `backup --keep-until`: the point lives at least until then.
    pub keep_until: Option<Timestamp>,
}

/// Which rule a role comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleKind {
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

/// The days a role's point stands for, both ends included, as dates in the policy's zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Period {
    pub first: Date,
    pub last: Date,
}

/// A role a point holds: it is the newest point of `period` for rule `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Role {
    pub kind: RoleKind,
    pub period: Period,
    /// When this role alone would let the point expire; `None` past year 9999.
    pub until: Option<Timestamp>,
}

/// What retention decided for one point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub id: String,
    pub taken_at: Timestamp,
    /// Shortest period first (daily, weekly, monthly, yearly).
    pub roles: Vec<Role>,
    /// When the point expires; `None`: never (newest point, stopped item, or past year 9999).
    pub expires: Option<Timestamp>,
    /// `expires` is at or before `now`: the next prune soft-deletes this point.
    pub expired: bool,
    /// Why, for people: `weekly (sun) until 2027-03-07`, `newest point of the item`, …
    pub reason: String,
}

/// Evaluates `retention` over one item's points that are not soft-deleted, in zone `tz`.
///
/// Returns one verdict per point, in the order of `points`; the newest of `points` is the item's
/// newest point (so after `forget` of the newest, the next one down is kept). `stopped`: the
/// item's protection is stopped, so nothing expires. `now` only decides each verdict's `expired`; roles and expiries
/// do not depend on it. The rules are in this module's documentation.
pub fn evaluate(
    points: &[Point],
    retention: &Retention,
    tz: &TimeZone,
    stopped: bool,
    now: Timestamp,
) -> Vec<Verdict> {
    let rules = retention.rules();
    let mut newest_first: Vec<usize> = (0..points.len()).collect();
    newest_first.sort_unstable_by(|&a, &b| age_order(&points[b], &points[a]));
    // Per rule, the periods whose newest point has been seen: walking newest first, the first
    // point of a period to arrive is the one that holds it.
    let mut held: Vec<HashSet<Date>> = vec![HashSet::new(); rules.len()];
    let mut verdicts = Vec::with_capacity(points.len());
    for (rank, &index) in newest_first.iter().enumerate() {
        let point = &points[index];
        let local = tz.to_datetime(point.taken_at);
        let roles = claim_roles(&rules, &mut held, local, tz);
        let standing = match (stopped, rank) {
            (true, _) => Standing::Stopped,
            (false, 0) => Standing::Newest,
            (false, _) => Standing::Expires,
        };
        let verdict = decide(point, local, roles, &rules, standing, tz, now);
        verdicts.push((index, verdict));
    }
    verdicts.sort_unstable_by_key(|&(index, _)| index);
    verdicts.into_iter().map(|(_, verdict)| verdict).collect()
}

/// Orders points oldest first; the id breaks ties so that the result never depends on input order.
fn age_order(a: &Point, b: &Point) -> std::cmp::Ordering {
    a.taken_at.cmp(&b.taken_at).then_with(|| a.id.cmp(&b.id))
}

/// Why a point may or may not expire, before its roles are looked at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Standing {
    Stopped,
    Newest,
    Expires,
}

/// The roles of periods not yet held, for a point taken at `local`; marks them held.
fn claim_roles(
    rules: &[Rule],
    held: &mut [HashSet<Date>],
    local: DateTime,
    tz: &TimeZone,
) -> Vec<Role> {
    rules
        .iter()
        .zip(held.iter_mut())
        .filter_map(|(rule, held)| {
            let period = rule.period(local.date());
            // Periods of one rule never overlap, so the last day names the period.
            held.insert(period.last).then(|| Role {
                kind: rule.kind(),
                period,
                until: rule.until(local, tz),
            })
        })
        .collect()
}

/// Combines roles, `keep_until` and standing into the verdict for one point.
fn decide(
    point: &Point,
    local: DateTime,
    roles: Vec<Role>,
    rules: &[Rule],
    standing: Standing,
    tz: &TimeZone,
    now: Timestamp,
) -> Verdict {
    // The role that keeps the point longest; `None` (past year 9999) outlasts any time.
    let longest = roles.iter().max_by(|a, b| expiry_order(a.until, b.until));
    let by_roles = match longest {
        Some(role) => role.until,
        None => add_civil(local, 1.day(), tz),
    };
    let extended = match (point.keep_until, by_roles) {
        (Some(until), Some(expiry)) if until > expiry => Some(until),
        _ => None,
    };
    let expires = match standing {
        Standing::Stopped | Standing::Newest => None,
        Standing::Expires => extended.or(by_roles),
    };
    let reason = match (standing, extended, longest) {
        (Standing::Stopped, _, _) => "item is stopped: its points do not expire".to_string(),
        (Standing::Newest, _, _) => "newest point of the item".to_string(),
        (Standing::Expires, Some(until), _) => {
            format!("kept until {} (--keep-until)", day_of(Some(until), tz))
        }
        (Standing::Expires, None, Some(role)) => role_reason(role, &roles, rules, tz),
        (Standing::Expires, None, None) => "no role: expires 1 day after it was taken".to_string(),
    };
    Verdict {
        id: point.id.clone(),
        taken_at: point.taken_at,
        expired: expires.is_some_and(|expiry| expiry <= now),
        expires,
        roles,
        reason,
    }
}

/// Orders expiries, `None` (never) last: it is later than any time.
fn expiry_order(a: Option<Timestamp>, b: Option<Timestamp>) -> std::cmp::Ordering {
    match (a, b) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (Some(a), Some(b)) => a.cmp(&b),
    }
}

/// `weekly (sun) until 2027-03-07; also daily`.
fn role_reason(winner: &Role, roles: &[Role], rules: &[Rule], tz: &TimeZone) -> String {
    let label = |kind: RoleKind| {
        rules
            .iter()
            .find(|rule| rule.kind() == kind)
            .map_or_else(String::new, |rule| rule.label())
    };
    let mut reason = format!("{} until {}", label(winner.kind), day_of(winner.until, tz));
    let others: Vec<String> = roles
        .iter()
        .filter(|role| role.kind != winner.kind)
        .map(|role| label(role.kind))
        .collect();
    if !others.is_empty() {
        reason.push_str("; also ");
        reason.push_str(&others.join(", "));
    }
    reason
}

/// The date of `t` in the zone, as reasons show it.
fn day_of(t: Option<Timestamp>, tz: &TimeZone) -> String {
    match t {
        Some(t) => tz.to_datetime(t).date().to_string(),
        None => "the end of time (past year 9999)".to_string(),
    }
}

/// `local` moved by calendar units in the zone, resolved as the module documentation says
/// (a gap moves forward, a fold takes the earlier time); `None` past the calendar's ends.
fn add_civil(local: DateTime, span: Span, tz: &TimeZone) -> Option<Timestamp> {
    let later = local.checked_add(span).ok()?;
    tz.to_ambiguous_timestamp(later).compatible().ok()
}

/// One rule that is on, with the questions evaluation asks of it.
#[derive(Clone, Copy, Debug)]
enum Rule {
    Daily(u32),
    Weekly(WeeklyRule),
    Monthly(MonthlyRule),
    Yearly(YearlyRule),
}

impl Rule {
    fn kind(self) -> RoleKind {
        match self {
            Rule::Daily(_) => RoleKind::Daily,
            Rule::Weekly(_) => RoleKind::Weekly,
            Rule::Monthly(_) => RoleKind::Monthly,
            Rule::Yearly(_) => RoleKind::Yearly,
        }
    }

    /// `daily`, `weekly (sun)`, `monthly (last)`, `yearly (jan-1)`.
    fn label(self) -> String {
        match self {
            Rule::Daily(_) => "daily".to_string(),
            Rule::Weekly(r) => format!("weekly ({})", weekday_name(r.day)),
            Rule::Monthly(r) => format!("monthly ({})", r.day),
            Rule::Yearly(r) => format!("yearly ({}-{})", month_name(r.month), r.day),
        }
    }

    /// The period of this rule that holds `date`.
    fn period(self, date: Date) -> Period {
        match self {
            Rule::Daily(_) => Period {
                first: date,
                last: date,
            },
            Rule::Weekly(r) => week_of(date, r.day),
            Rule::Monthly(r) => month_period_of(date, r.day),
            Rule::Yearly(r) => year_period_of(date, r.month, r.day),
        }
    }

    /// When a point taken at `local` stops being kept by this rule; `None` past year 9999.
    fn until(self, local: DateTime, tz: &TimeZone) -> Option<Timestamp> {
        let span = match self {
            Rule::Daily(n) => Span::new().try_days(n),
            Rule::Weekly(r) => Span::new().try_weeks(r.count),
            Rule::Monthly(r) => Span::new().try_months(r.count),
            Rule::Yearly(r) => Span::new().try_years(r.count),
        };
        add_civil(local, span.ok()?, tz)
    }
}

impl Period {
    /// The days after `previous_end` up to and including `end`. A missing end lies beyond the
    /// calendar (year ±9999): the period is cut at the calendar's edge, which only the first or
    /// last period can reach, so periods stay distinct.
    fn after(previous_end: Option<Date>, end: Option<Date>) -> Period {
        Period {
            first: previous_end.map_or(Date::MIN, |d| shift(d, 1)),
            last: end.unwrap_or(Date::MAX),
        }
    }
}

/// `date` moved by `days` (small), held at the calendar's edges instead of failing.
fn shift(date: Date, days: i8) -> Date {
    let edge = if days < 0 { Date::MIN } else { Date::MAX };
    Span::new()
        .try_days(days)
        .and_then(|span| date.checked_add(span))
        .unwrap_or(edge)
}

/// The 7 days ending on `end_day` that hold `date`.
fn week_of(date: Date, end_day: Weekday) -> Period {
    let last = shift(date, date.weekday().until(end_day));
    Period {
        first: shift(last, -6),
        last,
    }
}

/// The day a month-period ends in the month of `any_day`.
fn month_end(any_day: Date, dom: DayOfMonth) -> Date {
    let last = any_day.last_of_month();
    match dom {
        DayOfMonth::Day(d) if i16::from(d) < i16::from(last.day()) => {
            // d < the month's length, so the date exists; `last` is a fallback that cannot happen.
            Date::new(last.year(), last.month(), i8::try_from(d).unwrap_or(1)).unwrap_or(last)
        }
        DayOfMonth::Day(_) | DayOfMonth::Last => last,
    }
}

/// The month-period ending on `dom` that holds `date`.
fn month_period_of(date: Date, dom: DayOfMonth) -> Period {
    let end_here = month_end(date, dom);
    let first_of_month = date.first_of_month();
    if date <= end_here {
        let before = first_of_month.checked_sub(1.month()).ok();
        Period::after(before.map(|m| month_end(m, dom)), Some(end_here))
    } else {
        let next = first_of_month.checked_add(1.month()).ok();
        Period::after(Some(end_here), next.map(|m| month_end(m, dom)))
    }
}

/// The day a year-period ends in `year`; `None` outside the calendar.
fn year_end(year: i16, month: i8, day: i8) -> Option<Date> {
    let last = Date::new(year, month, 1).ok()?.last_of_month();
    Some(if day < last.day() {
        Date::new(year, month, day).unwrap_or(last)
    } else {
        last
    })
}

/// The year-period ending on `month`-`day` that holds `date`.
fn year_period_of(date: Date, month: i8, day: i8) -> Period {
    let year = date.year();
    let end_here = year_end(year, month, day);
    match end_here {
        Some(end) if date <= end => {
            Period::after(year_end(year.saturating_sub(1), month, day), Some(end))
        }
        _ => Period::after(end_here, year_end(year.saturating_add(1), month, day)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    /// A wall-clock time in `tz` (`2026-03-01 14:00[:ss]`), resolved as the module resolves them.
    fn at(tz: &TimeZone, wall: &str) -> Timestamp {
        let wall: DateTime = wall.replace(' ', "T").parse().unwrap();
        tz.to_ambiguous_timestamp(wall).compatible().unwrap()
    }

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// Points `p00`, `p01`, … taken at `walls` in `tz`.
    fn points(tz: &TimeZone, walls: &[&str]) -> Vec<Point> {
        let times: Vec<Timestamp> = walls.iter().map(|w| at(tz, w)).collect();
        points_at(&times)
    }

    fn points_at(times: &[Timestamp]) -> Vec<Point> {
        let point = |(i, &taken_at)| Point {
            id: format!("p{i:02}"),
            taken_at,
            keep_until: None,
        };
        times.iter().enumerate().map(point).collect()
    }

    fn retention(flags: &str) -> Retention {
        flags.parse().unwrap()
    }

    /// Verdicts by id, evaluated long before any expiry.
    fn eval(points: &[Point], flags: &str, tz: &TimeZone) -> HashMap<String, Verdict> {
        let verdicts = evaluate(points, &retention(flags), tz, false, Timestamp::UNIX_EPOCH);
        verdicts.into_iter().map(|v| (v.id.clone(), v)).collect()
    }

    /// Ids of the points holding a role of `kind`, sorted.
    fn holders(verdicts: &HashMap<String, Verdict>, kind: RoleKind) -> Vec<&str> {
        let mut ids: Vec<&str> = verdicts
            .values()
            .filter(|v| v.roles.iter().any(|r| r.kind == kind))
            .map(|v| v.id.as_str())
            .collect();
        ids.sort_unstable();
        ids
    }

    fn role(verdict: &Verdict, kind: RoleKind) -> &Role {
        verdict.roles.iter().find(|r| r.kind == kind).unwrap()
    }

    fn date(s: &str) -> Date {
        s.parse().unwrap()
    }

    fn period(first: &str, last: &str) -> Period {
        Period {
            first: date(first),
            last: date(last),
        }
    }

    /// The expiry as a wall-clock time in `tz`.
    fn expiry_wall(verdict: &Verdict, tz: &TimeZone) -> String {
        tz.to_datetime(verdict.expires.unwrap()).to_string()
    }

    #[test]
    fn rules_parse_with_their_defaults_and_print_back() {
        let weekly = [
            ("4", "4@sun"),
            ("4@mon", "4@mon"),
            ("4@Wednesday", "4@wed"),
            ("0@sat", "0@sat"),
        ];
        for (text, printed) in weekly {
            let rule: WeeklyRule = text.parse().unwrap();
            assert_eq!(rule.to_string(), printed);
            assert_eq!(printed.parse::<WeeklyRule>().unwrap(), rule);
        }
        let monthly = [
            ("12", "12@1"),
            ("12@15", "12@15"),
            ("12@31", "12@31"),
            ("12@LAST", "12@last"),
        ];
        for (text, printed) in monthly {
            let rule: MonthlyRule = text.parse().unwrap();
            assert_eq!(rule.to_string(), printed);
            assert_eq!(printed.parse::<MonthlyRule>().unwrap(), rule);
        }
        let yearly = [
            ("3", "3@jan-1"),
            ("3@feb-29", "3@feb-29"),
            ("3@Dec-31", "3@dec-31"),
            ("3@jun-05", "3@jun-5"),
        ];
        for (text, printed) in yearly {
            let rule: YearlyRule = text.parse().unwrap();
            assert_eq!(rule.to_string(), printed);
            assert_eq!(printed.parse::<YearlyRule>().unwrap(), rule);
        }
    }

    #[test]
    fn bad_rules_are_refused_with_the_accepted_form() {
        let weekly = [
            "",
            "x",
            "-1",
            "+4",
            "4@",
            "4@xyz",
            "4@sun@mon",
            "4.5",
            "99999999999",
        ];
        for text in weekly {
            let err = text.parse::<WeeklyRule>().unwrap_err();
            assert!(err.to_string().contains("--keep-weekly"), "{text}: {err}");
            assert!(err.to_string().contains("N@DAY"), "{text}: {err}");
        }
        for text in ["12@0", "12@32", "12@first", "12@-1", "12@", "@15"] {
            let err = text.parse::<MonthlyRule>().unwrap_err();
            assert!(err.to_string().contains("N@last"), "{text}: {err}");
        }
        for text in [
            "3@feb-30",
            "3@apr-31",
            "3@jan",
            "3@13-1",
            "3@jan-0",
            "3@jan-1-2",
        ] {
            let err = text.parse::<YearlyRule>().unwrap_err();
            assert!(err.to_string().contains("N@MON-DOM"), "{text}: {err}");
        }
    }

    #[test]
    fn a_retention_must_keep_something() {
        assert_eq!(
            Retention::new(None, None, None, None),
            Err(PolicyError::KeepsNothing)
        );
        let zeros = "--keep-daily 0 --keep-weekly 0 --keep-monthly 0@last --keep-yearly 0";
        assert_eq!(zeros.parse::<Retention>(), Err(PolicyError::KeepsNothing));
        assert_eq!("".parse::<Retention>(), Err(PolicyError::KeepsNothing));
        assert!(
            PolicyError::KeepsNothing
                .to_string()
                .contains("--keep-daily")
        );
        // A zero turns one rule off and leaves the others.
        let some = retention("--keep-daily 0 --keep-weekly 4");
        assert_eq!(some.daily(), None);
        assert_eq!(some.to_string(), "--keep-weekly 4@sun");
    }

    #[test]
    fn hand_built_rules_are_checked_too() {
        let monthly = MonthlyRule {
            count: 1,
            day: DayOfMonth::Day(40),
        };
        assert!(Retention::new(None, None, Some(monthly), None).is_err());
        let yearly = YearlyRule {
            count: 1,
            month: 2,
            day: 30,
        };
        assert!(Retention::new(None, None, None, Some(yearly)).is_err());
    }

    #[test]
    fn retentions_print_as_flags_and_parse_back() {
        let texts = [
            "--keep-daily 7",
            "--keep-daily 7 --keep-weekly 4@sun --keep-monthly 12@1",
            "--keep-weekly 4@wed --keep-monthly 12@last --keep-yearly 3@feb-29",
        ];
        for text in texts {
            assert_eq!(retention(text).to_string(), text);
        }
        let loose = retention("--keep-monthly=12  --keep-daily 7");
        assert_eq!(loose.to_string(), "--keep-daily 7 --keep-monthly 12@1");
        for bad in [
            "--keep-daily",
            "--keep-daily 7 --keep-daily 8",
            "--keep-hourly 4",
            "7",
        ] {
            let err = bad.parse::<Retention>().unwrap_err();
            assert!(matches!(err, PolicyError::Retention { .. }), "{bad}: {err}");
        }
        assert!(matches!(
            "--keep-daily x".parse::<Retention>(),
            Err(PolicyError::Rule {
                flag: "--keep-daily",
                ..
            })
        ));
    }

    #[test]
    fn nothing_to_evaluate_gives_nothing() {
        assert!(eval(&[], "--keep-daily 7", &TimeZone::UTC).is_empty());
    }

    #[test]
    fn the_newest_point_of_each_day_is_its_daily_point() {
        let tz = zone("Europe/Paris");
        let pts = points(
            &tz,
            &[
                "2026-11-02 08:00",
                "2026-11-02 12:00",
                "2026-11-02 18:00",
                "2026-11-03 09:00",
                "2026-11-04 10:00",
            ],
        );
        let v = eval(&pts, "--keep-daily 7", &tz);
        assert_eq!(holders(&v, RoleKind::Daily), ["p02", "p03", "p04"]);
        // Kept 7 days from its own time, not from the end of its day.
        assert_eq!(expiry_wall(&v["p02"], &tz), "2026-11-09T18:00:00");
        assert_eq!(v["p02"].reason, "daily until 2026-11-09");
        assert_eq!(
            role(&v["p02"], RoleKind::Daily).period,
            period("2026-11-02", "2026-11-02")
        );
        // The older points of that day hold nothing and go one day after they were taken.
        for id in ["p00", "p01"] {
            assert!(v[id].roles.is_empty());
            assert_eq!(v[id].reason, "no role: expires 1 day after it was taken");
        }
        assert_eq!(expiry_wall(&v["p00"], &tz), "2026-11-03T08:00:00");
    }

    #[test]
    fn a_day_ends_at_midnight_in_the_zone() {
        let paris = zone("Europe/Paris");
        let pts = points(&paris, &["2026-11-02 23:59:59", "2026-11-03 00:00:00"]);
        let v = eval(&pts, "--keep-daily 7", &paris);
        assert_eq!(holders(&v, RoleKind::Daily), ["p00", "p01"]);
        // The same two instants are 22:59:59 and 23:00:00 UTC: one day there.
        let v = eval(&pts, "--keep-daily 7", &TimeZone::UTC);
        assert_eq!(holders(&v, RoleKind::Daily), ["p01"]);
    }

    #[test]
    fn missed_days_leave_no_hole_in_the_other_days() {
        let tz = TimeZone::UTC;
        let pts = points(
            &tz,
            &["2026-11-01 02:00", "2026-11-02 02:00", "2026-11-06 02:00"],
        );
        let v = eval(&pts, "--keep-daily 3", &tz);
        assert_eq!(holders(&v, RoleKind::Daily), ["p00", "p01", "p02"]);
        assert_eq!(expiry_wall(&v["p00"], &tz), "2026-11-04T02:00:00");
        assert_eq!(expiry_wall(&v["p01"], &tz), "2026-11-05T02:00:00");
    }

    #[test]
    fn weeks_end_on_the_chosen_day() {
        let tz = zone("Europe/Paris");
        assert_eq!(date("2026-11-04").weekday(), Weekday::Wednesday);
        // Every day at noon, Monday 2 to Sunday 15 November 2026.
        let walls: Vec<String> = (2..=15).map(|d| format!("2026-11-{d:02} 12:00")).collect();
        let walls: Vec<&str> = walls.iter().map(String::as_str).collect();
        let pts = points(&tz, &walls);
        let v = eval(&pts, "--keep-weekly 4@wed", &tz);
        // Nov 4 and Nov 11 are Wednesdays; Nov 15 is the newest point of the week ending Nov 18.
        assert_eq!(holders(&v, RoleKind::Weekly), ["p02", "p09", "p13"]);
        let wed = &v["p02"];
        assert_eq!(
            role(wed, RoleKind::Weekly).period,
            period("2026-10-29", "2026-11-04")
        );
        assert_eq!(expiry_wall(wed, &tz), "2026-12-02T12:00:00");
        assert_eq!(wed.reason, "weekly (wed) until 2026-12-02");
        assert_eq!(
            role(&v["p13"], RoleKind::Weekly).period,
            period("2026-11-12", "2026-11-18")
        );
    }

    #[test]
    fn a_week_holds_the_whole_of_its_last_day() {
        let tz = zone("Europe/Paris");
        let pts = points(
            &tz,
            &[
                "2026-11-08 23:59:59",
                "2026-11-09 00:00:00",
                "2026-11-10 12:00",
            ],
        );
        let v = eval(&pts, "--keep-weekly 4", &tz);
        assert_eq!(holders(&v, RoleKind::Weekly), ["p00", "p02"]);
        assert_eq!(
            role(&v["p00"], RoleKind::Weekly).period,
            period("2026-11-02", "2026-11-08")
        );
        assert!(v["p01"].roles.is_empty());
    }

    #[test]
    fn the_point_taken_on_the_weeks_day_is_its_weekly_point() {
        let tz = TimeZone::UTC;
        // Friday, Sunday morning, Saturday evening (listed out of order on purpose).
        let pts = points(
            &tz,
            &["2026-11-06 10:00", "2026-11-08 09:00", "2026-11-07 20:00"],
        );
        let v = eval(&pts, "--keep-weekly 4", &tz);
        assert_eq!(holders(&v, RoleKind::Weekly), ["p01"]);
        // Without the Sunday point, the week's newest is Saturday's.
        let v = eval(&[pts[0].clone(), pts[2].clone()], "--keep-weekly 4", &tz);
        assert_eq!(holders(&v, RoleKind::Weekly), ["p02"]);
    }

    #[test]
    fn a_month_day_past_the_months_end_means_its_last_day() {
        let tz = TimeZone::UTC;
        let pts = points(
            &tz,
            &[
                "2026-01-31 12:00",
                "2026-02-28 12:00",
                "2026-03-01 12:00",
                "2026-03-30 12:00",
                "2026-03-31 12:00",
            ],
        );
        let v = eval(&pts, "--keep-monthly 12@31", &tz);
        assert_eq!(
            role(&v["p01"], RoleKind::Monthly).period,
            period("2026-02-01", "2026-02-28")
        );
        assert_eq!(holders(&v, RoleKind::Monthly), ["p00", "p01", "p04"]);
        // @30: January 31 opens the period ending February 28 (February has no 30th), and
        // March 31 the one ending April 30.
        let v = eval(&pts, "--keep-monthly 12@30", &tz);
        assert_eq!(holders(&v, RoleKind::Monthly), ["p01", "p03", "p04"]);
        assert_eq!(
            role(&v["p01"], RoleKind::Monthly).period,
            period("2026-01-31", "2026-02-28")
        );
        assert_eq!(
            role(&v["p04"], RoleKind::Monthly).period,
            period("2026-03-31", "2026-04-30")
        );
        // @29 in a leap year ends February on the 29th.
        let pts = points(
            &tz,
            &["2028-02-28 12:00", "2028-02-29 12:00", "2028-03-01 12:00"],
        );
        let v = eval(&pts, "--keep-monthly 12@29", &tz);
        assert_eq!(holders(&v, RoleKind::Monthly), ["p01", "p02"]);
        assert_eq!(
            role(&v["p01"], RoleKind::Monthly).period,
            period("2028-01-30", "2028-02-29")
        );
    }

    #[test]
    fn at_last_and_at_31_make_the_same_periods() {
        let last = Rule::Monthly("1@last".parse().unwrap());
        let day31 = Rule::Monthly("1@31".parse().unwrap());
        let mut day = date("2026-12-01");
        while day < date("2029-01-01") {
            assert_eq!(last.period(day), day31.period(day), "{day}");
            assert_eq!(last.period(day).last, day.last_of_month(), "{day}");
            day = day.tomorrow().unwrap();
        }
    }

    #[test]
    fn monthly_periods_end_on_the_first_by_default() {
        let tz = zone("Europe/Paris");
        let pts = points(&tz, &["2026-04-01 23:00", "2026-04-02 00:30"]);
        let v = eval(&pts, "--keep-monthly 12", &tz);
        assert_eq!(holders(&v, RoleKind::Monthly), ["p00", "p01"]);
        assert_eq!(
            role(&v["p00"], RoleKind::Monthly).period,
            period("2026-03-02", "2026-04-01")
        );
        assert_eq!(
            role(&v["p01"], RoleKind::Monthly).period,
            period("2026-04-02", "2026-05-01")
        );
    }

    #[test]
    fn months_are_counted_on_the_calendar() {
        let tz = TimeZone::UTC;
        let pts = points(
            &tz,
            &["2026-01-31 10:00", "2028-01-31 10:00", "2028-03-31 10:00"],
        );
        let v = eval(&pts, "--keep-monthly 1@last", &tz);
        assert_eq!(expiry_wall(&v["p00"], &tz), "2026-02-28T10:00:00");
        assert_eq!(expiry_wall(&v["p01"], &tz), "2028-02-29T10:00:00");
        assert_eq!(v["p01"].reason, "monthly (last) until 2028-02-29");
        let v = eval(&pts, "--keep-monthly 13@last", &tz);
        assert_eq!(expiry_wall(&v["p00"], &tz), "2027-02-28T10:00:00");
    }

    #[test]
    fn yearly_periods_end_on_their_date() {
        let tz = TimeZone::UTC;
        let pts = points(
            &tz,
            &[
                "2025-12-31 23:59:59",
                "2026-01-01 00:00:01",
                "2026-01-02 00:00:00",
                "2026-12-31 12:00",
            ],
        );
        let v = eval(&pts, "--keep-yearly 3", &tz);
        assert_eq!(holders(&v, RoleKind::Yearly), ["p01", "p03"]);
        assert_eq!(
            role(&v["p01"], RoleKind::Yearly).period,
            period("2025-01-02", "2026-01-01")
        );
        assert_eq!(v["p01"].reason, "yearly (jan-1) until 2029-01-01");
        let v = eval(&pts, "--keep-yearly 3@dec-31", &tz);
        assert_eq!(holders(&v, RoleKind::Yearly), ["p00", "p03"]);
        assert_eq!(
            role(&v["p03"], RoleKind::Yearly).period,
            period("2026-01-01", "2026-12-31")
        );
    }

    #[test]
    fn a_year_ending_on_feb_29_ends_on_feb_28_in_common_years() {
        let rule = Rule::Yearly("1@feb-29".parse().unwrap());
        let expected = [
            ("2027-02-28", period("2026-03-01", "2027-02-28")),
            ("2027-03-01", period("2027-03-01", "2028-02-29")),
            ("2028-02-29", period("2027-03-01", "2028-02-29")),
            ("2028-03-01", period("2028-03-01", "2029-02-28")),
        ];
        for (day, period) in expected {
            assert_eq!(rule.period(date(day)), period, "{day}");
        }
        let tz = TimeZone::UTC;
        let pts = points(
            &tz,
            &["2028-02-28 10:00", "2028-02-29 10:00", "2028-03-01 10:00"],
        );
        let v = eval(&pts, "--keep-yearly 1@feb-29", &tz);
        assert_eq!(holders(&v, RoleKind::Yearly), ["p01", "p02"]);
        // One calendar year after Feb 29 is Feb 28.
        assert_eq!(expiry_wall(&v["p01"], &tz), "2029-02-28T10:00:00");
    }

    #[test]
    fn days_are_civil_days_across_spring_forward() {
        let tz = zone("Europe/Paris");
        // Paris skips 02:00–03:00 on 2026-03-29.
        let pts = points_at(&[
            at(&tz, "2026-03-28 02:30"),
            at(&tz, "2026-03-28 12:00"),
            at(&tz, "2026-03-29 01:00"),
            at(&tz, "2026-03-30 12:00"),
        ]);
        let v = eval(&pts, "--keep-daily 1", &tz);
        // 02:30 does not exist on the 29th: the expiry moves forward by the gap, 23 hours later.
        assert_eq!(expiry_wall(&v["p00"], &tz), "2026-03-29T03:30:00");
        assert_eq!(v["p00"].expires.unwrap(), utc("2026-03-29T01:30:00Z"));
        assert_eq!(holders(&v, RoleKind::Daily), ["p01", "p02", "p03"]);
        // A daily point kept 1 day from 12:00 on the short day is kept 23 hours.
        assert_eq!(v["p01"].expires.unwrap(), utc("2026-03-29T10:00:00Z"));
    }

    #[test]
    fn days_are_civil_days_across_fall_back() {
        let tz = zone("Europe/Paris");
        // On 2026-10-25 Paris goes from 03:00 CEST back to 02:00 CET: 02:30 happens twice.
        let pts = points_at(&[
            at(&tz, "2026-10-24 02:30"),
            utc("2026-10-25T00:30:00Z"), // 02:30 CEST
            utc("2026-10-25T01:30:00Z"), // 02:30 CET
            utc("2026-10-25T22:59:59Z"), // 23:59:59 CET, still the 25th
            utc("2026-10-25T23:00:00Z"), // midnight: the 26th
        ]);
        let v = eval(&pts, "--keep-daily 1", &tz);
        // The 25th is 25 hours long and holds p01..p03; p03 is its daily point.
        assert_eq!(holders(&v, RoleKind::Daily), ["p00", "p03", "p04"]);
        // 02:30 on the 25th is ambiguous: the earlier one (CEST), exactly 24 hours later.
        assert_eq!(v["p00"].expires.unwrap(), utc("2026-10-25T00:30:00Z"));
        // From the second 02:30 of the 25th, one day later is 02:30 CET on the 26th.
        assert_eq!(v["p02"].expires.unwrap(), utc("2026-10-26T01:30:00Z"));
        assert_eq!(v["p01"].expires.unwrap(), utc("2026-10-26T01:30:00Z"));
    }

    #[test]
    fn keep_until_extends_and_never_shortens() {
        let tz = TimeZone::UTC;
        let mut pts = points(
            &tz,
            &["2026-11-02 08:00", "2026-11-02 12:00", "2026-11-03 12:00"],
        );
        pts[0].keep_until = Some(at(&tz, "2027-01-01 00:00"));
        pts[1].keep_until = Some(at(&tz, "2026-11-03 00:00"));
        let v = eval(&pts, "--keep-daily 7", &tz);
        assert_eq!(v["p00"].expires, pts[0].keep_until);
        assert_eq!(v["p00"].reason, "kept until 2027-01-01 (--keep-until)");
        // The daily role keeps p01 longer than its --keep-until asked.
        assert_eq!(expiry_wall(&v["p01"], &tz), "2026-11-09T12:00:00");
        assert_eq!(v["p01"].reason, "daily until 2026-11-09");
    }

    #[test]
    fn the_newest_point_never_expires() {
        let tz = TimeZone::UTC;
        let pts = points(&tz, &["2020-01-01 00:00", "2020-01-02 00:00"]);
        let far = at(&tz, "2090-01-01 00:00");
        let v = evaluate(&pts, &retention("--keep-daily 1"), &tz, false, far);
        assert_eq!(v[1].expires, None);
        assert!(!v[1].expired);
        assert_eq!(v[1].reason, "newest point of the item");
        // It still holds its roles; they are shown, they just do not decide.
        assert_eq!(v[1].roles.len(), 1);
        assert!(v[0].expired);
    }

    #[test]
    fn points_of_a_stopped_item_never_expire() {
        let tz = TimeZone::UTC;
        let pts = points(
            &tz,
            &["2020-01-01 00:00", "2020-01-01 06:00", "2020-01-02 00:00"],
        );
        let far = at(&tz, "2090-01-01 00:00");
        let v = evaluate(&pts, &retention("--keep-daily 1"), &tz, true, far);
        for verdict in &v {
            assert_eq!(verdict.expires, None);
            assert!(!verdict.expired);
            assert_eq!(verdict.reason, "item is stopped: its points do not expire");
        }
    }

    #[test]
    fn expired_means_the_expiry_is_at_or_before_now() {
        let tz = TimeZone::UTC;
        let pts = points(&tz, &["2026-11-02 08:00", "2026-11-03 08:00"]);
        let expiry = at(&tz, "2026-11-09 08:00");
        let rules = retention("--keep-daily 7");
        let just_before = expiry.checked_sub(1.nanosecond()).unwrap();
        assert!(!evaluate(&pts, &rules, &tz, false, just_before)[0].expired);
        assert!(evaluate(&pts, &rules, &tz, false, expiry)[0].expired);
    }

    #[test]
    fn policy_changes_apply_to_existing_points() {
        let tz = TimeZone::UTC;
        let walls: Vec<String> = (1..=30).map(|d| format!("2026-11-{d:02} 02:00")).collect();
        let walls: Vec<&str> = walls.iter().map(String::as_str).collect();
        let pts = points(&tz, &walls);
        let now = at(&tz, "2026-12-01 00:00");
        let kept = |flags: &str| -> Vec<String> {
            let v = evaluate(&pts, &retention(flags), &tz, false, now);
            v.into_iter().filter(|v| !v.expired).map(|v| v.id).collect()
        };
        assert_eq!(kept("--keep-daily 3"), ["p27", "p28", "p29"]);
        // Lengthened: the same points, kept longer.
        assert_eq!(kept("--keep-daily 10").len(), 10);
        // A weekly rule added: Sundays (Nov 1, 8, 15, 22, 29) come back for 4 weeks.
        assert_eq!(
            kept("--keep-daily 3 --keep-weekly 4"),
            ["p07", "p14", "p21", "p27", "p28", "p29"]
        );
    }

    #[test]
    fn reasons_name_the_longest_role_and_the_others() {
        let tz = TimeZone::UTC;
        assert_eq!(date("2027-02-07").weekday(), Weekday::Sunday);
        let pts = points(&tz, &["2027-02-07 12:00", "2027-02-08 12:00"]);
        let v = eval(&pts, "--keep-daily 7 --keep-weekly 4", &tz);
        assert_eq!(v["p00"].reason, "weekly (sun) until 2027-03-07; also daily");
        let flags = "--keep-daily 7 --keep-weekly 4 --keep-monthly 6@7 --keep-yearly 2@feb-7";
        let v = eval(&pts, flags, &tz);
        assert_eq!(
            v["p00"].reason,
            "yearly (feb-7) until 2029-02-07; also daily, weekly (sun), monthly (7)"
        );
        let kinds: Vec<RoleKind> = v["p00"].roles.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                RoleKind::Daily,
                RoleKind::Weekly,
                RoleKind::Monthly,
                RoleKind::Yearly
            ]
        );
    }

    #[test]
    fn verdicts_serialise_for_json_output() {
        let tz = TimeZone::UTC;
        let pts = points(&tz, &["2027-02-07 12:00", "2027-02-08 12:00"]);
        let v = evaluate(
            &pts,
            &retention("--keep-weekly 4"),
            &tz,
            false,
            utc("2027-02-09T00:00:00Z"),
        );
        let json = serde_json::to_value(&v[0]).unwrap();
        assert_eq!(json["expires"], "2027-03-07T12:00:00Z");
        assert_eq!(json["roles"][0]["kind"], "weekly");
        assert_eq!(json["roles"][0]["period"]["first"], "2027-02-01");
        assert_eq!(json["roles"][0]["period"]["last"], "2027-02-07");
        assert_eq!(json["expired"], false);
    }

    #[test]
    fn points_taken_at_the_same_instant_are_ordered_by_id() {
        let tz = TimeZone::UTC;
        let t = at(&tz, "2026-11-02 08:00");
        let mut pts = points_at(&[t, t]);
        pts[0].id = "b".to_string();
        pts[1].id = "a".to_string();
        let v = eval(&pts, "--keep-daily 7", &tz);
        assert_eq!(v["b"].expires, None);
        assert_eq!(holders(&v, RoleKind::Daily), ["b"]);
        pts.reverse();
        assert_eq!(eval(&pts, "--keep-daily 7", &tz), v);
    }

    #[test]
    fn the_ends_of_time_do_not_panic() {
        let tz = zone("Europe/Paris");
        let pts = points_at(&[
            Timestamp::MIN,
            Timestamp::MIN.checked_add(1.hour()).unwrap(),
            Timestamp::MAX.checked_sub(25.hours()).unwrap(),
            Timestamp::MAX.checked_sub(1.hour()).unwrap(),
            Timestamp::MAX,
        ]);
        let huge = "--keep-daily 4294967295 --keep-weekly 4294967295@sat \
                    --keep-monthly 4294967295@last --keep-yearly 4294967295@dec-31";
        for flags in [
            huge,
            "--keep-daily 1 --keep-weekly 1 --keep-monthly 1 --keep-yearly 1",
        ] {
            let v = evaluate(&pts, &retention(flags), &tz, false, Timestamp::MAX);
            assert_eq!(v.len(), pts.len());
            for (verdict, point) in v.iter().zip(&pts) {
                assert!(verdict.expires.is_none_or(|e| e > point.taken_at));
            }
        }
        // p01 holds every role of the calendar's first day, each one past year 9999.
        let v = eval(&pts, huge, &tz);
        assert_eq!(v["p01"].roles.len(), 4);
        assert_eq!(v["p01"].expires, None);
        assert!(
            v["p01"].reason.contains("the end of time"),
            "{}",
            v["p01"].reason
        );
    }

    #[test]
    fn ten_thousand_points_are_evaluated_quickly() {
        let tz = zone("Europe/Paris");
        let start = at(&tz, "2025-01-01 00:00");
        let times: Vec<Timestamp> = (0..10_000)
            .map(|i| start.checked_add((i * 105).minutes()).unwrap())
            .collect();
        let pts = points_at(&times);
        let rules = retention("--keep-daily 7 --keep-weekly 4 --keep-monthly 12 --keep-yearly 3");
        let now = times[9_999];
        let clock = std::time::Instant::now();
        let v = evaluate(&pts, &rules, &tz, false, now);
        let elapsed = clock.elapsed();
        eprintln!("10,000 points evaluated in {elapsed:?} (unoptimised test build)");
        assert_eq!(v.len(), 10_000);
        // Generous for a shared machine and a debug build; a release build takes a few ms.
        assert!(elapsed < std::time::Duration::from_secs(1), "{elapsed:?}");
    }

    // ---- properties -------------------------------------------------------------------------

    const ZONES: [&str; 7] = [
        "UTC",
        "Europe/Paris",
        "America/New_York",
        "Australia/Lord_Howe",
        "Pacific/Apia",
        "Asia/Kolkata",
        "America/Havana",
    ];

    fn zones() -> impl Strategy<Value = TimeZone> {
        proptest::sample::select(&ZONES[..]).prop_map(zone)
    }

    fn weekdays() -> impl Strategy<Value = Weekday> {
        (0..7_i8).prop_map(|d| Weekday::from_monday_zero_offset(d).unwrap())
    }

    fn retentions() -> impl Strategy<Value = Retention> {
        let daily = proptest::option::of(1..40_u32);
        let weekly = proptest::option::of((1..10_u32, weekdays()));
        let monthly = proptest::option::of((1..24_u32, 1..=32_u8));
        let yearly = proptest::option::of((1..5_u32, 1..=12_i8, 1..=31_i8));
        (daily, weekly, monthly, yearly).prop_filter_map("keeps nothing", |(d, w, m, y)| {
            let weekly = w.map(|(count, day)| WeeklyRule { count, day });
            let monthly = m.map(|(count, d)| MonthlyRule {
                count,
                day: if d > 31 {
                    DayOfMonth::Last
                } else {
                    DayOfMonth::Day(d)
                },
            });
            // Clamp the day into the month (of a leap year) so that most draws are valid.
            let yearly = y.map(|(count, month, day)| {
                let longest = Date::new(2000, month, 1).unwrap().days_in_month();
                YearlyRule {
                    count,
                    month,
                    day: day.min(longest),
                }
            });
            Retention::new(d, weekly, monthly, yearly).ok()
        })
    }

    /// Up to 60 points over 400 days from 2025-12-01, several a day at times.
    fn point_sets() -> impl Strategy<Value = Vec<Point>> {
        let one = (0..400_i64, 0..86_400_i64, proptest::option::of(0..500_i64));
        proptest::collection::vec(one, 1..60).prop_map(|raw| {
            let base = utc("2025-12-01T00:00:00Z");
            let after = |secs: i64| base.checked_add(secs.seconds()).unwrap();
            raw.into_iter()
                .enumerate()
                .map(|(i, (day, sec, keep))| Point {
                    id: format!("p{i:02}"),
                    taken_at: after(day * 86_400 + sec),
                    keep_until: keep.map(|d| after(d * 86_400)),
                })
                .collect()
        })
    }

    fn newest(points: &[Point]) -> &Point {
        points.iter().max_by(|a, b| age_order(a, b)).unwrap()
    }

    /// The last day of `rule`'s period holding `day`, found by walking forward one day at a
    /// time to the first day that ends a period: independent of the arithmetic in `period`.
    fn period_end_by_walking(rule: Rule, day: Date) -> Date {
        let ends_period = |d: Date| match rule {
            Rule::Daily(_) => true,
            Rule::Weekly(r) => d.weekday() == r.day,
            Rule::Monthly(r) => match r.day {
                DayOfMonth::Last => d == d.last_of_month(),
                DayOfMonth::Day(n) => {
                    i16::from(d.day()) == i16::from(n).min(d.days_in_month().into())
                }
            },
            Rule::Yearly(r) => d.month() == r.month && d.day() == r.day.min(d.days_in_month()),
        };
        let mut d = day;
        while !ends_period(d) {
            d = d.tomorrow().unwrap();
        }
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn each_period_has_exactly_its_newest_point_as_holder(
            pts in point_sets(), rules in retentions(), tz in zones(),
        ) {
            let v = evaluate(&pts, &rules, &tz, false, Timestamp::UNIX_EPOCH);
            for rule in rules.rules() {
                let mut newest_by_period: HashMap<Date, &Point> = HashMap::new();
                for p in &pts {
                    let end = period_end_by_walking(rule, tz.to_datetime(p.taken_at).date());
                    let slot = newest_by_period.entry(end).or_insert(p);
                    if age_order(p, slot).is_gt() {
                        *slot = p;
                    }
                }
                let mut expected: Vec<(&str, Date)> =
                    newest_by_period.iter().map(|(&end, p)| (p.id.as_str(), end)).collect();
                expected.sort_unstable();
                let mut got: Vec<(&str, Date)> = v
                    .iter()
                    .flat_map(|v| v.roles.iter().map(move |r| (v, r)))
                    .filter(|(_, r)| r.kind == rule.kind())
                    .map(|(v, r)| (v.id.as_str(), r.period.last))
                    .collect();
                got.sort_unstable();
                prop_assert_eq!(got, expected, "{}", rule.label());
            }
        }

        #[test]
        fn expiries_are_after_the_point_and_respect_keep_until(
            pts in point_sets(), rules in retentions(), tz in zones(), now_day in 0..800_i64,
        ) {
            let now = utc("2025-12-01T00:00:00Z").checked_add((now_day * 24).hours()).unwrap();
            let v = evaluate(&pts, &rules, &tz, false, now);
            prop_assert_eq!(v.len(), pts.len());
            let newest_id = &newest(&pts).id;
            for (verdict, point) in v.iter().zip(&pts) {
                prop_assert_eq!(&verdict.id, &point.id);
                prop_assert_eq!(verdict.expires.is_none(), &point.id == newest_id);
                if let Some(expiry) = verdict.expires {
                    prop_assert!(expiry > point.taken_at);
                    prop_assert!(point.keep_until.is_none_or(|k| expiry >= k));
                    prop_assert_eq!(verdict.expired, expiry <= now);
                    for role in &verdict.roles {
                        prop_assert!(role.until.is_some_and(|u| u <= expiry));
                    }
                } else {
                    prop_assert!(!verdict.expired);
                }
            }
        }

        #[test]
        fn input_order_does_not_matter(
            (pts, shuffled) in point_sets().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle())),
            rules in retentions(), tz in zones(),
        ) {
            let now = utc("2026-06-01T00:00:00Z");
            let mut a = evaluate(&pts, &rules, &tz, false, now);
            let mut b = evaluate(&shuffled, &rules, &tz, false, now);
            a.sort_by(|x, y| x.id.cmp(&y.id));
            b.sort_by(|x, y| x.id.cmp(&y.id));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn a_new_point_never_lengthens_another_points_life(
            pts in point_sets(), rules in retentions(), tz in zones(),
            day in 0..420_i64, sec in 0..86_400_i64,
        ) {
            let before = evaluate(&pts, &rules, &tz, false, Timestamp::UNIX_EPOCH);
            let mut more = pts.clone();
            more.push(Point {
                id: "new".to_string(),
                taken_at: utc("2025-12-01T00:00:00Z").checked_add((day * 86_400 + sec).seconds()).unwrap(),
                keep_until: None,
            });
            let after = evaluate(&more, &rules, &tz, false, Timestamp::UNIX_EPOCH);
            for (old, new) in before.iter().zip(&after) {
                prop_assert!(expiry_order(new.expires, old.expires).is_le(), "{}", old.id);
            }
        }

        #[test]
        fn longer_rules_never_expire_a_point_sooner(
            pts in point_sets(), rules in retentions(), tz in zones(), extra in 0..30_u32,
        ) {
            let longer = Retention::new(
                rules.daily().map(|n| n + extra),
                rules.weekly().map(|r| WeeklyRule { count: r.count + extra, ..r }),
                rules.monthly().map(|r| MonthlyRule { count: r.count + extra, ..r }),
                rules.yearly().map(|r| YearlyRule { count: r.count + extra, ..r }),
            ).unwrap();
            let short = evaluate(&pts, &rules, &tz, false, Timestamp::UNIX_EPOCH);
            let long = evaluate(&pts, &longer, &tz, false, Timestamp::UNIX_EPOCH);
            for (s, l) in short.iter().zip(&long) {
                prop_assert!(expiry_order(l.expires, s.expires).is_ge(), "{}", s.id);
                prop_assert_eq!(&s.roles.len(), &l.roles.len());
            }
        }

        #[test]
        fn a_stopped_item_keeps_everything(
            pts in point_sets(), rules in retentions(), tz in zones(),
        ) {
            let v = evaluate(&pts, &rules, &tz, true, Timestamp::MAX);
            prop_assert!(v.iter().all(|v| v.expires.is_none() && !v.expired));
        }
    }
}
