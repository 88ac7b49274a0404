//! `triggers.cron[].schedule`: a crontab(5) time expression, evaluated in
//! UTC. The calendar work (the next matching minute) is croner's; this
//! module keeps ol.yaml to crontab(5) and says what is wrong in its terms.
//!
//! A schedule has the 5 fields `minute hour day-of-month month day-of-week`.
//! Each field is `*` or a comma list of `n`, `a-b`, `*/n` or `a-b/n`; months
//! may be named `JAN`-`DEC` and days `SUN`-`SAT` (any case), and day of week
//! 7 is Sunday too. `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight` and `@hourly` stand for their usual expressions. As in Vixie
//! cron and cronie, when both day fields are restricted a day matching
//! either fires; a day field starting with `*` (so `*/2` too) counts as
//! unrestricted, and then both must match.
//!
//! Why a thin layer over croner rather than croner alone:
//! - **The grammar.** croner reads more than crontab(5): seconds and year
//!   fields, `L`, `W`, `#`, `?` and a `+` prefix. A schedule copied from or
//!   to a crontab must mean the same in both, so every field is checked
//!   here against crontab(5)'s grammar first, and anything else is refused.
//! - **The messages.** croner's errors do not say which field is wrong; ours
//!   name the field, quote it and say why (``minute field `60`: `60` is out
//!   of range 0-59``).
//! - **Day of month or day of week.** crontab(5) counts a day field that
//!   starts with `*` as unrestricted; croner counts only a bare `*`, so it
//!   would run `0 0 */2 * 1` on odd days *or* Mondays, where Vixie cron and
//!   cronie run it on odd days that are Mondays. crontab(5) is what users
//!   read, so croner is told to require both fields (its `dom_and_dow`)
//!   whenever either starts with `*`.
//! - **What croner is given**: the expression as checked, written again with
//!   numbers (names replaced, shorthands expanded, a `*` inside a list
//!   written as its range, which croner only reads alone or before a step),
//!   so croner's own reading of names, a text replacement over the whole
//!   expression that turns `SAT-SUN` into `6-7`, never applies.
//! - **A schedule that never fires** (`0 0 30 2 *`) is refused when read;
//!   croner would only fail when asked for its next time.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Why a cron expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not 5 fields.
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week), found {found}{}",
        if *found == 6 { " (seconds are not supported)" } else { "" }
    )]
    FieldCount {
        /// Fields found.
        found: usize,
    },
    /// An `@` shorthand other than those crontab(5) defines for times.
    #[error(
        "unknown shorthand `{0}`, expected one of @yearly, @annually, @monthly, \
         @weekly, @daily, @midnight, @hourly"
    )]
    UnknownShorthand(String),
    /// One field is malformed or out of range.
    #[error("{field} field `{text}`: {reason}")]
    Field {
        /// Which field: `minute`, `hour`, `day-of-month`, `month` or
        /// `day-of-week`.
        field: &'static str,
        /// The field as written.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Well-formed, but no month has the days asked for (`0 0 30 2 *`).
    #[error("`{0}` never fires: no month in it has any of its days of the month")]
    NeverFires(String),
    /// Passed the checks here, yet croner refused it. Not expected: the
    /// checks here are stricter than croner's.
    #[error("`{text}`: {reason}")]
    Refused {
        /// The expression as written (trimmed).
        text: String,
        /// What croner said.
        reason: String,
    },
}

/// A validated 5-field cron schedule (`minute hour day-of-month month
/// day-of-week`), evaluated in UTC; see the module doc for its grammar.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// The expression as written (trimmed).
    text: String,
    /// croner's reading of it, with the crontab(5) day rule.
    cron: Cron,
}

/// The range and names of one cron field.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names of the values from `min` up, if the field has any.
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

impl FieldSpec {
    fn error(&self, text: &str, reason: String) -> CronError {
        CronError::Field {
            field: self.name,
            text: text.to_owned(),
            reason,
        }
    }

    /// One value: a number in range, or a name.
    fn value(&self, field: &str, item: &str) -> Result<u32, CronError> {
        if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(item)) {
            return Ok(self.min + i as u32);
        }
        let number = if !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()) {
            item.parse::<u32>().ok()
        } else {
            None
        };
        match number {
            Some(n) if (self.min..=self.max).contains(&n) => Ok(n),
            Some(_) => Err(self.error(
                field,
                format!("`{item}` is out of range {}-{}", self.min, self.max),
            )),
            None if self.names.is_empty() => {
                Err(self.error(field, format!("`{item}` is not a number")))
            }
            None => Err(self.error(
                field,
                format!(
                    "`{item}` is neither a number nor one of {}",
                    self.names.join(", ")
                ),
            )),
        }
    }

    fn step(&self, field: &str, step: &str) -> Result<u32, CronError> {
        let valid = 1..=self.max;
        match step.parse::<u32>() {
            Ok(n) if step.bytes().all(|b| b.is_ascii_digit()) && valid.contains(&n) => Ok(n),
            _ => Err(self.error(
                field,
                format!("step `{step}` must be a number from 1 to {}", self.max),
            )),
        }
    }

    /// Checks a field against crontab(5)'s grammar and writes it again with
    /// numbers only (names replaced, leading zeros dropped).
    fn check(&self, field: &str) -> Result<String, CronError> {
        let mut items = Vec::new();
        let listed = field.contains(',');
        for item in field.split(',') {
            if item.is_empty() {
                return Err(self.error(field, "empty list item".to_owned()));
            }
            let (base, step) = match item.split_once('/') {
                Some((base, step)) => (base, Some(self.step(field, step)?)),
                None => (item, None),
            };
            let base = if base == "*" && listed && step.is_none() {
                // croner reads `*` only alone or before a step.
                format!("{}-{}", self.min, self.max)
            } else if base == "*" {
                "*".to_owned()
            } else if let Some((a, b)) = base.split_once('-') {
                let (low, high) = (self.value(field, a)?, self.value(field, b)?);
                if low > high {
                    return Err(self.error(field, format!("range `{base}` goes backwards")));
                }
                format!("{low}-{high}")
            } else {
                let value = self.value(field, base)?;
                if step.is_some() {
                    return Err(self.error(
                        field,
                        format!("step `{item}` needs a range or `*` before the `/`"),
                    ));
                }
                value.to_string()
            };
            items.push(match step {
                Some(step) => format!("{base}/{step}"),
                None => base,
            });
        }
        Ok(items.join(","))
    }
}

impl CronSchedule {
    /// Parses and validates a cron expression.
    pub fn parse(text: &str) -> Result<Self, CronError> {
        let trimmed = text.trim();
        let expanded = if trimmed.starts_with('@') {
            match trimmed.to_ascii_lowercase().as_str() {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                _ => return Err(CronError::UnknownShorthand(trimmed.to_owned())),
            }
        } else {
            trimmed
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(CronError::FieldCount {
                found: fields.len(),
            });
        };
        let checked = [
            MINUTE.check(minute)?,
            HOUR.check(hour)?,
            DAY_OF_MONTH.check(dom)?,
            MONTH.check(month)?,
            DAY_OF_WEEK.check(dow)?,
        ]
        .join(" ");
        let refused = |e: croner::errors::CronError| CronError::Refused {
            text: trimmed.to_owned(),
            reason: e.to_string(),
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            // The crontab(5) day rule (see the module doc).
            .dom_and_dow(dom.starts_with('*') || dow.starts_with('*'))
            .build()
            .parse(&checked)
            .map_err(refused)?;
        // Every date falls on every weekday within 400 years, far less than
        // croner searches before it gives up.
        let epoch = jiff::civil::date(1970, 1, 1).at(0, 0, 0, 0);
        if cron.find_next_occurrence(&epoch, false).is_err() {
            return Err(CronError::NeverFires(trimmed.to_owned()));
        }
        Ok(Self {
            text: trimmed.to_owned(),
            cron,
        })
    }

    /// The expression as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The next time the schedule fires strictly after `t` (UTC, whole
    /// minutes); `None` only past the years croner searches (to 5000).
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let after = TimeZone::UTC.to_datetime(Timestamp::try_from(t).ok()?);
        let next = self.cron.find_next_occurrence(&after, false).ok()?;
        let next = TimeZone::UTC.to_timestamp(next).ok()?;
        Some(next.into())
    }
}

/// Schedules are equal when written alike: croner's reading follows from
/// the text.
impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CronSchedule {}

impl FromStr for CronSchedule {
    type Err = CronError;
    fn from_str(text: &str) -> Result<Self, CronError> {
        Self::parse(text)
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::ol_yaml::tests::assert_err;

    fn cron(text: &str) -> CronSchedule {
        CronSchedule::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn cron_err(text: &str) -> String {
        match CronSchedule::parse(text) {
            Ok(s) => panic!("{text:?} parsed: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// A UTC time; `second` may carry a fraction.
    fn utc(year: i16, month: i8, day: i8, hour: i8, minute: i8, second: f64) -> SystemTime {
        let civil = jiff::civil::date(year, month, day).at(hour, minute, 0, 0);
        let whole = TimeZone::UTC.to_timestamp(civil).expect("in range");
        SystemTime::from(whole) + Duration::from_secs_f64(second)
    }

    fn next(schedule: &str, after: SystemTime) -> SystemTime {
        cron(schedule)
            .next_after(after)
            .unwrap_or_else(|| panic!("{schedule:?} never fires"))
    }

    /// The first `count` times `schedule` fires after `from`.
    fn firings(schedule: &str, from: SystemTime, count: usize) -> Vec<SystemTime> {
        let schedule = cron(schedule);
        std::iter::successors(schedule.next_after(from), |t| schedule.next_after(*t))
            .take(count)
            .collect()
    }

    #[test]
    fn cron_accepts_standard_expressions() {
        for text in [
            "* * * * *",
            "*/5 * * * *",
            "0 0 * * *",
            "0,15,30,45 * * * *",
            "0-59/10 8-18 * * 1-5",
            "30 4 1,15 * 5",
            "0 12 * JAN-MAR,dec mon-FRI",
            "0 0 29 2 *",
            "0 0 31 * *",
            "0 0 * * 7",
            "0 0 * * 5-7",
            "59 23 31 12 *",
            "  1  2  3  4  5  ",
            "@yearly",
            "@ANNUALLY",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ] {
            let schedule = cron(text);
            assert_eq!(schedule.as_str(), text.trim());
            assert_eq!(schedule.to_string(), text.trim());
            assert_eq!(text.parse::<CronSchedule>().as_ref(), Ok(&schedule));
        }
    }

    #[test]
    fn cron_rejects_malformed_expressions_naming_the_field() {
        for (text, expected) in [
            (
                "",
                "expected 5 fields (minute hour day-of-month month day-of-week), found 0",
            ),
            ("* * * *", "found 4"),
            ("0 * * * * *", "found 6 (seconds are not supported)"),
            ("60 * * * *", "minute field `60`: `60` is out of range 0-59"),
            ("* 24 * * *", "hour field `24`: `24` is out of range 0-23"),
            (
                "* * 0 * *",
                "day-of-month field `0`: `0` is out of range 1-31",
            ),
            ("* * 32 * *", "day-of-month field `32`"),
            ("* * * 13 *", "month field `13`: `13` is out of range 1-12"),
            (
                "* * * * 8",
                "day-of-week field `8`: `8` is out of range 0-7",
            ),
            (
                "* * * FOO *",
                "month field `FOO`: `FOO` is neither a number nor one of JAN, FEB",
            ),
            ("* * * * MONDAY", "day-of-week field `MONDAY`"),
            ("* * * * JAN", "day-of-week field `JAN`"),
            ("a * * * *", "minute field `a`: `a` is not a number"),
            ("-1 * * * *", "minute field `-1`"),
            ("+1 * * * *", "minute field `+1`: `+1` is not a number"),
            (
                "*/0 * * * *",
                "minute field `*/0`: step `0` must be a number from 1 to 59",
            ),
            ("*/60 * * * *", "step `60` must be a number from 1 to 59"),
            ("*/x * * * *", "step `x`"),
            ("*/ * * * *", "step ``"),
            (
                "5/15 * * * *",
                "minute field `5/15`: step `5/15` needs a range or `*` before the `/`",
            ),
            (
                "10-5 * * * *",
                "minute field `10-5`: range `10-5` goes backwards",
            ),
            ("1,,2 * * * *", "minute field `1,,2`: empty list item"),
            ("1, * * * *", "empty list item"),
            ("1-2-3 * * * *", "`2-3` is not a number"),
            ("* * * * FRI-MON", "range `FRI-MON` goes backwards"),
            ("@reboot", "unknown shorthand `@reboot`"),
            ("@every 5m", "unknown shorthand"),
            ("0 0 30 2 *", "`0 0 30 2 *` never fires"),
            ("0 0 31 4,6,9,11 *", "never fires"),
            ("0 0 31 2 */2", "never fires"),
            // croner's extensions are not crontab(5)'s: refused.
            ("0 0 L * *", "day-of-month field `L`: `L` is not a number"),
            ("0 0 15W * *", "day-of-month field `15W`"),
            ("0 0 ? * *", "day-of-month field `?`"),
            ("0 0 * * 5#2", "day-of-week field `5#2`"),
            ("0 0 * * 5L", "day-of-week field `5L`"),
            ("0 0 1 * +MON", "day-of-week field `+MON`"),
            ("0 0 * * SAT-SUN", "range `SAT-SUN` goes backwards"),
            ("0 0 0 * * * *", "found 7"),
        ] {
            let message = cron_err(text);
            assert!(
                message.contains(expected),
                "{text:?}: {message:?} lacks {expected:?}"
            );
        }
        // With both day fields restricted a matching weekday is enough.
        cron("0 0 30 2 1");
    }

    #[test]
    fn cron_errors_in_ol_yaml_name_the_entry() {
        assert_err(
            "triggers:\n  cron:\n    - schedule: '* * * * *'\n    - schedule: '61 * * * *'\n",
            "ol.yaml: triggers.cron[1].schedule: minute field `61`: `61` is out of range 0-59",
        );
        assert_err(
            "triggers: {cron: [{}]}",
            "ol.yaml: triggers.cron[0]: missing field `schedule`",
        );
    }

    #[test]
    fn cron_fields_select_the_values_crontab_says() {
        let from = utc(2025, 1, 1, 0, 0, 0.0);
        assert_eq!(
            firings("0-10/5,30 */6 1-7 JAN,jul * ", from, 5),
            [
                utc(2025, 1, 1, 0, 5, 0.0),
                utc(2025, 1, 1, 0, 10, 0.0),
                utc(2025, 1, 1, 0, 30, 0.0),
                utc(2025, 1, 1, 6, 0, 0.0),
                utc(2025, 1, 1, 6, 5, 0.0),
            ]
        );
        assert_eq!(
            next("0-10/5,30 */6 1-7 JAN,jul *", utc(2025, 1, 7, 18, 30, 0.0)),
            utc(2025, 7, 1, 0, 0, 0.0),
            "January 7th was the last day before July"
        );
        // 2025-06-09 is a Monday.
        let monday = utc(2025, 6, 9, 12, 0, 0.0);
        let days = |schedule: &str| -> Vec<i8> {
            firings(schedule, monday, 4)
                .into_iter()
                .map(|t| {
                    TimeZone::UTC
                        .to_datetime(Timestamp::try_from(t).expect("in range"))
                        .day()
                })
                .collect()
        };
        assert_eq!(days("0 0 * * 7"), [15, 22, 29, 6], "7 is Sunday");
        assert_eq!(days("0 0 * * SUN,7"), [15, 22, 29, 6]);
        assert_eq!(days("0 0 * * 5-7"), [13, 14, 15, 20], "Friday to Sunday");
        assert_eq!(days("0 0 * * */2"), [10, 12, 14, 15], "0, 2, 4, 6");
        assert_eq!(days("0 0 * * */7"), [15, 22, 29, 6], "0 and 7: Sunday");
        assert_eq!(
            firings("* * * * *", utc(2025, 6, 10, 10, 7, 0.0), 3),
            [
                utc(2025, 6, 10, 10, 8, 0.0),
                utc(2025, 6, 10, 10, 9, 0.0),
                utc(2025, 6, 10, 10, 10, 0.0),
            ]
        );
    }

    #[test]
    fn shorthands_fire_like_their_expressions() {
        // 2025-06-10 is a Tuesday.
        let from = utc(2025, 6, 10, 10, 7, 0.0);
        for (shorthand, expected) in [
            ("@yearly", utc(2026, 1, 1, 0, 0, 0.0)),
            ("@annually", utc(2026, 1, 1, 0, 0, 0.0)),
            ("@monthly", utc(2025, 7, 1, 0, 0, 0.0)),
            ("@weekly", utc(2025, 6, 15, 0, 0, 0.0)),
            ("@daily", utc(2025, 6, 11, 0, 0, 0.0)),
            ("@midnight", utc(2025, 6, 11, 0, 0, 0.0)),
            ("@hourly", utc(2025, 6, 10, 11, 0, 0.0)),
            ("@HOURLY", utc(2025, 6, 10, 11, 0, 0.0)),
        ] {
            assert_eq!(next(shorthand, from), expected, "{shorthand}");
        }
    }

    #[test]
    fn next_after_steps_to_the_next_matching_minute() {
        let at = |h, m| utc(2025, 6, 10, h, m, 0.0);
        assert_eq!(next("*/15 * * * *", at(10, 7)), at(10, 15));
        assert_eq!(
            next("*/15 * * * *", at(10, 15)),
            at(10, 30),
            "strictly after"
        );
        assert_eq!(
            next("*/15 * * * *", utc(2025, 6, 10, 10, 14, 59.5)),
            at(10, 15)
        );
        assert_eq!(
            next("*/15 * * * *", utc(2025, 6, 10, 10, 15, 0.25)),
            at(10, 30),
            "seconds past a firing minute do not fire it again"
        );
        assert_eq!(next("* * * * *", at(10, 7)), at(10, 8));
        assert_eq!(
            next("*/15 * * * *", at(23, 50)),
            utc(2025, 6, 11, 0, 0, 0.0)
        );
        assert_eq!(next("30 9 * * *", at(10, 0)), utc(2025, 6, 11, 9, 30, 0.0));
        assert_eq!(next("@hourly", at(10, 0)), at(11, 0));
        assert_eq!(
            next("0 0 1 1 *", utc(2025, 12, 31, 23, 59, 0.0)),
            utc(2026, 1, 1, 0, 0, 0.0),
            "year boundary"
        );
        assert_eq!(
            next("59 23 31 12 *", utc(2025, 12, 31, 23, 59, 0.0)),
            utc(2026, 12, 31, 23, 59, 0.0)
        );
        assert_eq!(
            next("0 0 31 * *", utc(2025, 4, 1, 0, 0, 0.0)),
            utc(2025, 5, 31, 0, 0, 0.0),
            "April has no 31st"
        );
    }

    #[test]
    fn next_after_finds_leap_days() {
        assert_eq!(
            next("0 0 29 2 *", utc(2025, 3, 1, 0, 0, 0.0)),
            utc(2028, 2, 29, 0, 0, 0.0)
        );
        assert_eq!(
            next("0 0 29 2 *", utc(2096, 2, 29, 0, 0, 0.0)),
            utc(2104, 2, 29, 0, 0, 0.0),
            "2100 is not a leap year"
        );
        // Feb 29 on a Sunday (`*/7` is 0 and 7; AND: the field starts with `*`).
        assert_eq!(
            next("0 0 29 2 */7", utc(2025, 1, 1, 0, 0, 0.0)),
            utc(2032, 2, 29, 0, 0, 0.0)
        );
    }

    #[test]
    fn next_after_uses_cron_day_semantics() {
        // 2025-06-10 is a Tuesday.
        let from = utc(2025, 6, 10, 12, 0, 0.0);
        // Both restricted: the 13th OR a Friday, whichever comes first.
        assert_eq!(next("0 0 13 * 5", from), utc(2025, 6, 13, 0, 0, 0.0));
        assert_eq!(next("0 0 13 * MON", from), utc(2025, 6, 13, 0, 0, 0.0));
        assert_eq!(next("0 0 20 * MON", from), utc(2025, 6, 16, 0, 0, 0.0));
        // Only the weekday restricted.
        assert_eq!(
            next("0 12 * * MON-FRI", utc(2025, 6, 14, 0, 0, 0.0)),
            utc(2025, 6, 16, 12, 0, 0.0)
        );
        assert_eq!(next("0 0 * * 0", from), utc(2025, 6, 15, 0, 0, 0.0));
        assert_eq!(next("0 0 * * 7", from), utc(2025, 6, 15, 0, 0, 0.0));
        // Only the day of month restricted.
        assert_eq!(next("0 0 1 * *", from), utc(2025, 7, 1, 0, 0, 0.0));
        // `*/2` counts as unrestricted: odd days AND Mondays.
        assert_eq!(next("0 0 */2 * 1", from), utc(2025, 6, 23, 0, 0, 0.0));
        // A month restriction applies to both day fields.
        assert_eq!(next("0 0 1 JAN MON", from), utc(2026, 1, 1, 0, 0, 0.0));
        assert_eq!(next("0 0 2 JAN MON", from), utc(2026, 1, 2, 0, 0, 0.0));
        assert_eq!(next("0 0 20 JAN MON", from), utc(2026, 1, 5, 0, 0, 0.0));
    }

    #[test]
    fn next_after_works_before_the_epoch() {
        assert_eq!(next("0 0 * * *", utc(1969, 12, 31, 13, 0, 0.0)), UNIX_EPOCH);
        assert_eq!(
            next("30 * * * *", utc(1969, 12, 31, 22, 10, 0.5)),
            utc(1969, 12, 31, 22, 30, 0.0)
        );
    }
}
