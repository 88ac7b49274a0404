//! A lambda's optional `ol.yaml` (DESIGN.md §1.4): which HTTP methods and
//! cron schedules trigger it, extra environment variables for its sandbox,
//! and limits that lower the worker's defaults.
//!
//! ```yaml
//! triggers:
//!   http: [{method: GET}, {method: POST}]   # no `http` key: every method
//!   cron: [{schedule: "*/5 * * * *"}]
//! environment: {KEY: value}
//! limits: {mem_mb: 128, runtime_sec: 10, procs: 16, cpu_percent: 100}
//! ```
//!
//! Parsing is strict, so that a typo never silently falls back to a default:
//! an unknown key, a wrong type or a bad value is an error naming the key's
//! path (`ol.yaml: triggers.http[1].method: unknown HTTP method ...`). The
//! text is read as plain YAML first (syntax errors carry line and column),
//! then mapped onto the typed config through `serde_path_to_error`, which
//! supplies the path.
//!
//! Choices worth knowing:
//! - `triggers.http` absent (or `~`): every method is allowed. Present: only
//!   the listed ones, so an empty list allows none (a cron-only lambda).
//!   `HEAD` is not implied by `GET`. Methods are case-insensitive here and
//!   kept in upper case.
//! - `environment`: any valid variable name (`[A-Za-z_][A-Za-z0-9_]*`) is
//!   allowed, `OL_*` included (`OL_ENTRY_FILE`, `OL_WSGI_ENTRY` and
//!   `OL_ASGI_ENTRY` are meant to be set here); a lambda only ever affects
//!   its own sandbox. Numbers and booleans are stringified (`PORT: 8080` is
//!   `"8080"`); null, lists and maps are errors.
//! - `limits` may only lower the worker's limits ([`LimitOverrides::apply`]);
//!   zero is an error, except for `swappiness` (0..=100).
//! - `cron` schedules have the 5 fields of crontab(5) with Vixie cron /
//!   cronie semantics, evaluated in UTC (see [`CronSchedule`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ol_sandbox::Limits;
use serde::Deserialize;

use crate::yaml_shape::{self, ShapeError};
use serde::de::{self, Deserializer, Visitor};

/// Name of the config file inside a lambda's code directory.
pub const FILE_NAME: &str = "ol.yaml";

/// Why an `ol.yaml` was rejected; every message starts with `ol.yaml:` and
/// names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum OlYamlError {
    /// The file exists but cannot be read.
    #[error("ol.yaml: cannot read {}: {source}", path.display())]
    Read {
        /// Path of the file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid YAML, or holds more than one document.
    #[error("ol.yaml: {0}")]
    Syntax(String),
    /// The text is too large, nests too deeply or holds too many aliases;
    /// refused before it is parsed (see [`crate::yaml_shape`]).
    #[error("ol.yaml: {0}")]
    Shape(#[from] ShapeError),
    /// Valid YAML that does not fit the schema: an unknown key, a wrong type
    /// or an invalid value.
    #[error("ol.yaml: {}{message}", key_prefix(key))]
    Invalid {
        /// Path of the offending key, e.g. `triggers.http[1].method`
        /// (`.` for the document itself).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A limit of zero (every limit but `swappiness` must be at least 1).
    #[error("ol.yaml: limits.{key}: must be at least 1, got 0")]
    LimitZero {
        /// Key under `limits`.
        key: &'static str,
    },
    /// A limit above the largest value the key can have at all.
    #[error("ol.yaml: limits.{key}: must be at most {max}, got {asked}")]
    LimitOutOfRange {
        /// Key under `limits`.
        key: &'static str,
        /// Value in `ol.yaml`.
        asked: u64,
        /// Largest valid value.
        max: u64,
    },
    /// A limit above the worker's: a lambda may only lower its limits.
    #[error(
        "ol.yaml: limits.{key}: {asked} is above this worker's limit of {max} \
         (a lambda may only lower its limits)"
    )]
    LimitAboveWorker {
        /// Key under `limits`.
        key: &'static str,
        /// Value in `ol.yaml`.
        asked: u64,
        /// The worker's value.
        max: u64,
    },
}

/// `"a.b: "` for a key path, nothing for the document root.
fn key_prefix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// A lambda's `ol.yaml`; [`Default`] is what a lambda without one gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LambdaConfig {
    /// What may run the lambda.
    pub triggers: Triggers,
    /// Extra environment variables for its sandbox, ordered by name.
    #[serde(deserialize_with = "deserialize_environment")]
    pub environment: BTreeMap<String, String>,
    /// Limits lowering the worker's.
    pub limits: LimitOverrides,
}

impl LambdaConfig {
    /// The environment as name/value pairs, ordered by name (the form
    /// `ol_sandbox::SandboxSpec::env` takes).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Parses the text of an `ol.yaml`. An empty document (or one holding only
/// comments or `~`) gives the default config. A text over
/// [`yaml_shape::MAX_BYTES`], nested deeper than [`yaml_shape::MAX_DEPTH`]
/// or with more than [`yaml_shape::MAX_ALIASES`] aliases is refused before
/// it is parsed: the YAML parser's time grows with the square of the depth.
pub fn parse(text: &str) -> Result<LambdaConfig, OlYamlError> {
    yaml_shape::check(text)?;
    let value: Option<serde_yaml_ng::Value> =
        serde_yaml_ng::from_str(text).map_err(|e| OlYamlError::Syntax(e.to_string()))?;
    let Some(value) = value else {
        return Ok(LambdaConfig::default());
    };
    let config: LambdaConfig =
        serde_path_to_error::deserialize(value).map_err(|e| OlYamlError::Invalid {
            key: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
    config.limits.validate()?;
    Ok(config)
}

/// Reads and parses `code_dir/ol.yaml`; a missing file gives the default
/// config, any other read failure is an error. Blocking (a small file): call
/// it from `spawn_blocking` or a blocking context.
pub fn load(code_dir: &Path) -> Result<LambdaConfig, OlYamlError> {
    use std::io::Read;
    let path = code_dir.join(FILE_NAME);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LambdaConfig::default()),
        Err(source) => return Err(OlYamlError::Read { path, source }),
    };
    // One byte past the cap is enough to refuse it: a huge file is never
    // read whole.
    let size = file.metadata().map_or(0, |meta| meta.len());
    if size > yaml_shape::MAX_BYTES as u64 {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        return Err(ShapeError::TooLarge { size }.into());
    }
    let mut text = String::new();
    file.take(yaml_shape::MAX_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|source| OlYamlError::Read {
            path: path.clone(),
            source,
        })?;
    parse(&text)
}

// ---------------------------------------------------------------- triggers

/// `triggers`: what may run the lambda.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    /// HTTP methods that may call it; `None` (no `http` key): every method.
    pub http: Option<Vec<HttpTrigger>>,
    /// Schedules that run it.
    pub cron: Vec<CronTrigger>,
}

impl Triggers {
    /// Whether an HTTP request with this method may call the lambda
    /// (compared case-insensitively).
    pub fn allows(&self, method: &str) -> bool {
        match &self.http {
            None => true,
            Some(list) => list
                .iter()
                .any(|t| t.method.as_str().eq_ignore_ascii_case(method)),
        }
    }

    /// The methods that may call the lambda, in upper case, in the order
    /// written and without repeats, for a 405 answer and its `Allow` header;
    /// `None`: every method.
    pub fn allowed_methods(&self) -> Option<Vec<String>> {
        let list = self.http.as_ref()?;
        let mut methods: Vec<String> = Vec::with_capacity(list.len());
        for trigger in list {
            let name = trigger.method.as_str();
            if !methods.iter().any(|m| m == name) {
                methods.push(name.to_owned());
            }
        }
        Some(methods)
    }
}

/// One entry of `triggers.http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    /// The method it allows.
    pub method: HttpMethod,
}

/// An HTTP method a lambda may restrict itself to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpMethod {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `PATCH`
    Patch,
    /// `OPTIONS`
    Options,
}

impl HttpMethod {
    /// Every method, in the order error messages list them.
    pub const ALL: [HttpMethod; 7] = [
        Self::Get,
        Self::Head,
        Self::Post,
        Self::Put,
        Self::Delete,
        Self::Patch,
        Self::Options,
    ];

    /// The method's name in upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Patch => "PATCH",
            Self::Options => "OPTIONS",
        }
    }

    /// The method named `name`, in any case; `None` for any other name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::from_name(&name).ok_or_else(|| {
            let all: Vec<&str> = Self::ALL.iter().map(|m| m.as_str()).collect();
            de::Error::custom(format_args!(
                "unknown HTTP method `{name}`, expected one of {}",
                all.join(", ")
            ))
        })
    }
}

/// One entry of `triggers.cron`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronTrigger {
    /// When the lambda runs.
    pub schedule: CronSchedule,
}

// ------------------------------------------------------------- environment

/// Reads `environment`, checking names and stringifying scalar values.
fn deserialize_environment<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<EnvName, EnvValue>>::deserialize(deserializer)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name.0, value.0))
        .collect())
}

/// A valid environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct EnvName(String);

impl EnvName {
    fn is_valid(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }
}

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if Self::is_valid(&name) {
            Ok(Self(name))
        } else {
            Err(de::Error::custom(format_args!(
                "invalid environment variable name `{name}` (must match [A-Za-z_][A-Za-z0-9_]*)"
            )))
        }
    }
}

/// An environment value: a string, or a number or boolean as written.
struct EnvValue(String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl Visitor<'_> for Scalar {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(Scalar)
    }
}

// ------------------------------------------------------------------ limits

/// `limits`: values lowering the worker's limits; `None` keeps the worker's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitOverrides {
    /// Most processes (and threads).
    pub procs: Option<u32>,
    /// Memory limit in MiB.
    pub mem_mb: Option<u64>,
    /// CPU share in percent of one core.
    pub cpu_percent: Option<u32>,
    /// Swappiness of the memory cgroup (0..=100).
    pub swappiness: Option<u32>,
    /// Longest a single call may run, in seconds.
    pub runtime_sec: Option<u64>,
    /// Largest request body accepted, in MiB.
    pub max_body_mb: Option<u64>,
    /// Largest response returned, in MiB.
    pub max_response_mb: Option<u64>,
    /// Size of `/host` and of `/tmp`, in MiB.
    pub disk_mb: Option<u64>,
    /// Output kept per stream, in KiB.
    pub log_kb: Option<u64>,
}

/// Largest valid swappiness (the kernel's bound).
const MAX_SWAPPINESS: u64 = 100;

impl LimitOverrides {
    /// Every override with its key, in the order the docs list them.
    fn requested(&self) -> [(&'static str, Option<u64>); 9] {
        [
            ("mem_mb", self.mem_mb),
            ("runtime_sec", self.runtime_sec),
            ("procs", self.procs.map(u64::from)),
            ("cpu_percent", self.cpu_percent.map(u64::from)),
            ("swappiness", self.swappiness.map(u64::from)),
            ("max_body_mb", self.max_body_mb),
            ("max_response_mb", self.max_response_mb),
            ("disk_mb", self.disk_mb),
            ("log_kb", self.log_kb),
        ]
    }

    /// Checks the values on their own: zero is an error except for
    /// `swappiness`, which must be at most 100.
    pub fn validate(&self) -> Result<(), OlYamlError> {
        for (key, asked) in self.requested() {
            match (key, asked) {
                ("swappiness", Some(asked)) if asked > MAX_SWAPPINESS => {
                    return Err(OlYamlError::LimitOutOfRange {
                        key,
                        asked,
                        max: MAX_SWAPPINESS,
                    });
                }
                ("swappiness", _) => {}
                (_, Some(0)) => return Err(OlYamlError::LimitZero { key }),
                _ => {}
            }
        }
        Ok(())
    }

    /// The worker's limits with these overrides applied. The worker's
    /// values are maxima: asking for more than the worker gives is an error
    /// naming the key and both values, as is an invalid value
    /// ([`validate`](Self::validate)).
    pub fn apply(&self, worker: &Limits) -> Result<Limits, OlYamlError> {
        self.validate()?;
        Ok(Limits {
            procs: at_most("procs", self.procs, worker.procs)?,
            mem_mb: at_most("mem_mb", self.mem_mb, worker.mem_mb)?,
            cpu_percent: at_most("cpu_percent", self.cpu_percent, worker.cpu_percent)?,
            swappiness: at_most("swappiness", self.swappiness, worker.swappiness)?,
            runtime_sec: at_most("runtime_sec", self.runtime_sec, worker.runtime_sec)?,
            max_body_mb: at_most("max_body_mb", self.max_body_mb, worker.max_body_mb)?,
            max_response_mb: at_most(
                "max_response_mb",
                self.max_response_mb,
                worker.max_response_mb,
            )?,
            disk_mb: at_most("disk_mb", self.disk_mb, worker.disk_mb)?,
            log_kb: at_most("log_kb", self.log_kb, worker.log_kb)?,
        })
    }
}

/// `asked` if it is at most the worker's `max`, `max` if nothing was asked.
fn at_most<T: Copy + Into<u64>>(
    key: &'static str,
    asked: Option<T>,
    max: T,
) -> Result<T, OlYamlError> {
    match asked {
        None => Ok(max),
        Some(v) if v.into() <= max.into() => Ok(v),
        Some(v) => Err(OlYamlError::LimitAboveWorker {
            key,
            asked: v.into(),
            max: max.into(),
        }),
    }
}

// -------------------------------------------------------------------- cron

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
}

/// A validated 5-field cron schedule (`minute hour day-of-month month
/// day-of-week`), evaluated in UTC.
///
/// Each field is `*` or a comma list of `n`, `a-b`, `*/n` or `a-b/n`;
/// months may be named `JAN`-`DEC` and days `SUN`-`SAT` (any case), and day
/// of week 7 is Sunday too. `@yearly`, `@annually`, `@monthly`, `@weekly`,
/// `@daily`, `@midnight` and `@hourly` stand for their usual expressions.
/// As in Vixie cron and cronie, when both day fields are restricted a day
/// matching either fires; a day field starting with `*` (so `*/2` too)
/// counts as unrestricted, and then both must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    text: String,
    /// Bit n: minute n.
    minutes: u64,
    /// Bit n: hour n.
    hours: u64,
    /// Bit n: day of month n (1-31).
    days_of_month: u64,
    /// Bit n: month n (1-12).
    months: u64,
    /// Bit n: day of week n (0 = Sunday).
    days_of_week: u64,
    /// Day-of-month field starts with `*`.
    dom_star: bool,
    /// Day-of-week field starts with `*`.
    dow_star: bool,
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

/// Most days in each month (February: in a leap year).
const MAX_DAYS_IN_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// Days in the Gregorian calendar's 400-year cycle, a whole number of weeks:
/// a schedule that fires at all fires within one cycle.
const DAYS_IN_400_YEARS: i64 = 146_097;

const MINUTES_PER_DAY: i64 = 24 * 60;

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

    /// The set of values a field selects, as bits, and whether the field
    /// starts with `*`.
    fn parse(&self, field: &str) -> Result<(u64, bool), CronError> {
        let mut bits = 0u64;
        for item in field.split(',') {
            if item.is_empty() {
                return Err(self.error(field, "empty list item".to_owned()));
            }
            let (base, step) = match item.split_once('/') {
                Some((base, step)) => (base, Some(self.step(field, step)?)),
                None => (item, None),
            };
            let (low, high) = if base == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = base.split_once('-') {
                let (low, high) = (self.value(field, a)?, self.value(field, b)?);
                if low > high {
                    return Err(self.error(field, format!("range `{base}` goes backwards")));
                }
                (low, high)
            } else {
                let value = self.value(field, base)?;
                if step.is_some() {
                    return Err(self.error(
                        field,
                        format!("step `{item}` needs a range or `*` before the `/`"),
                    ));
                }
                (value, value)
            };
            for v in (low..=high).step_by(step.unwrap_or(1)) {
                bits |= 1 << v;
            }
        }
        Ok((bits, field.starts_with('*')))
    }

    fn step(&self, field: &str, step: &str) -> Result<usize, CronError> {
        let valid = 1..=self.max;
        match step.parse::<u32>() {
            Ok(n) if step.bytes().all(|b| b.is_ascii_digit()) && valid.contains(&n) => {
                Ok(n as usize)
            }
            _ => Err(self.error(
                field,
                format!("step `{step}` must be a number from 1 to {}", self.max),
            )),
        }
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
        let (minutes, _) = MINUTE.parse(minute)?;
        let (hours, _) = HOUR.parse(hour)?;
        let (days_of_month, dom_star) = DAY_OF_MONTH.parse(dom)?;
        let (months, _) = MONTH.parse(month)?;
        let (mut days_of_week, dow_star) = DAY_OF_WEEK.parse(dow)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        let schedule = Self {
            text: trimmed.to_owned(),
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            dom_star,
            dow_star,
        };
        if !schedule.has_a_day() {
            return Err(CronError::NeverFires(schedule.text));
        }
        Ok(schedule)
    }

    /// The expression as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether some day ever fires. Every date falls on every day of the
    /// week within 400 years, so only the days of the month can rule all
    /// days out, and only when both day fields must match.
    fn has_a_day(&self) -> bool {
        if !(self.dom_star || self.dow_star) {
            return true;
        }
        (1..=12u32).any(|month| {
            self.months & (1 << month) != 0
                && self.days_of_month & (u64::MAX >> (63 - MAX_DAYS_IN_MONTH[month as usize - 1]))
                    != 0
        })
    }

    /// Whether the schedule fires on the day `days` after 1970-01-01 (UTC).
    fn matches_day(&self, days: i64) -> bool {
        let Some(date) = utc_date(days) else {
            return false;
        };
        let (month, day) = (date.month(), date.day());
        let weekday = date.weekday().to_sunday_zero_offset();
        let dom = self.days_of_month & (1 << day) != 0;
        let dow = self.days_of_week & (1 << weekday) != 0;
        let day_ok = if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        };
        self.months & (1 << month) != 0 && day_ok
    }

    /// The first minute of the day at or after `from` that fires.
    fn first_minute_from(&self, from: i64) -> Option<i64> {
        (from..MINUTES_PER_DAY)
            .find(|m| self.hours & (1 << (m / 60)) != 0 && self.minutes & (1 << (m % 60)) != 0)
    }

    /// The next time the schedule fires strictly after `t` (UTC, whole
    /// minutes); `None` only if that is past the year 9999.
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let nanos = match t.duration_since(UNIX_EPOCH) {
            Ok(since) => i128::try_from(since.as_nanos()).ok()?,
            Err(before) => -i128::try_from(before.duration().as_nanos()).ok()?,
        };
        let first = i64::try_from(nanos.div_euclid(60_000_000_000) + 1).ok()?;
        let mut day = first.div_euclid(MINUTES_PER_DAY);
        let mut from = first.rem_euclid(MINUTES_PER_DAY);
        for _ in 0..=DAYS_IN_400_YEARS {
            let minute = if self.matches_day(day) {
                self.first_minute_from(from)
            } else {
                None
            };
            if let Some(minute) = minute {
                let secs = day
                    .checked_mul(MINUTES_PER_DAY)?
                    .checked_add(minute)?
                    .checked_mul(60)?;
                return if secs >= 0 {
                    UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
                } else {
                    UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
                };
            }
            day = day.checked_add(1)?;
            from = 0;
        }
        None
    }
}

/// The UTC date `days` after 1970-01-01; `None` past the years jiff holds
/// (-9999 to 9999).
fn utc_date(days: i64) -> Option<jiff::civil::Date> {
    let t = jiff::Timestamp::from_second(days.checked_mul(24 * 60 * 60)?).ok()?;
    Some(jiff::tz::Offset::UTC.to_datetime(t).date())
}

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
    use super::*;

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("{text:?} parsed: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_err(text: &str, expected: &str) {
        let message = err(text);
        assert!(
            message.contains(expected),
            "{text:?}: {message:?} lacks {expected:?}"
        );
        assert!(message.starts_with("ol.yaml: "), "{message:?}");
    }

    fn ok(text: &str) -> LambdaConfig {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

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
        let at = jiff::civil::date(year, month, day).at(hour, minute, 0, 0);
        let t = jiff::tz::Offset::UTC
            .to_timestamp(at)
            .expect("a time jiff holds");
        SystemTime::try_from(t).expect("a time SystemTime holds") + Duration::from_secs_f64(second)
    }

    fn next(schedule: &str, after: SystemTime) -> SystemTime {
        cron(schedule)
            .next_after(after)
            .unwrap_or_else(|| panic!("{schedule:?} never fires"))
    }

    // ------------------------------------------------------------ whole file

    #[test]
    fn example_parses_to_exact_values() {
        let config = ok(r#"
triggers:
  http: [{method: GET}, {method: POST}]   # default (no http key): all methods
  cron: [{schedule: "*/5 * * * *"}]
environment: {KEY: value}
limits: {mem_mb: 128, runtime_sec: 10, procs: 16, cpu_percent: 100}
"#);
        assert_eq!(
            config,
            LambdaConfig {
                triggers: Triggers {
                    http: Some(vec![
                        HttpTrigger {
                            method: HttpMethod::Get
                        },
                        HttpTrigger {
                            method: HttpMethod::Post
                        },
                    ]),
                    cron: vec![CronTrigger {
                        schedule: cron("*/5 * * * *")
                    }],
                },
                environment: BTreeMap::from([("KEY".to_owned(), "value".to_owned())]),
                limits: LimitOverrides {
                    procs: Some(16),
                    mem_mb: Some(128),
                    cpu_percent: Some(100),
                    swappiness: None,
                    runtime_sec: Some(10),
                    max_body_mb: None,
                    max_response_mb: None,
                    disk_mb: None,
                    log_kb: None,
                },
            }
        );
        assert_eq!(config.triggers.cron[0].schedule.as_str(), "*/5 * * * *");
        assert_eq!(
            config.env_pairs(),
            vec![("KEY".to_owned(), "value".to_owned())]
        );
    }

    #[test]
    fn empty_comment_only_and_null_documents_are_default() {
        for text in ["", "\n\n", "# nothing here\n", "~", "null", "---\n"] {
            assert_eq!(ok(text), LambdaConfig::default(), "{text:?}");
        }
        let config = ok("triggers: {}\nenvironment: {}\nlimits: {}\n");
        assert_eq!(config, LambdaConfig::default());
        let config = ok("triggers: ~\nenvironment: ~\nlimits: ~\n");
        assert_eq!(config, LambdaConfig::default());
        assert!(config.triggers.allows("DELETE"));
        assert_eq!(config.triggers.allowed_methods(), None);
    }

    #[test]
    fn load_missing_file_is_default_and_present_file_is_parsed() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            load(dir.path()).expect("missing file"),
            LambdaConfig::default()
        );
        std::fs::write(dir.path().join(FILE_NAME), "limits: {mem_mb: 64}\n").expect("write");
        assert_eq!(load(dir.path()).expect("load").limits.mem_mb, Some(64));
        std::fs::write(dir.path().join(FILE_NAME), "limits: {mem: 64}\n").expect("write");
        assert!(
            load(dir.path())
                .expect_err("bad key")
                .to_string()
                .contains("limits.mem")
        );
    }

    #[test]
    fn hostile_texts_are_refused_before_parsing() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), "{a: ".repeat(1 << 18)).expect("write");
        let e = load(dir.path()).expect_err("too large");
        assert_eq!(
            e.to_string(),
            "ol.yaml: 1048576 bytes is over the limit of 65536 bytes"
        );
        assert_err(
            &"[".repeat(100),
            "ol.yaml: line 1: nesting is deeper than 32",
        );
        assert_err(
            &"{a: ".repeat(100),
            "ol.yaml: line 1: nesting is deeper than 32",
        );
    }

    #[test]
    fn load_unreadable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be cannot be read as text.
        std::fs::create_dir(dir.path().join(FILE_NAME)).expect("mkdir");
        let e = load(dir.path()).expect_err("a directory is not a file");
        assert!(matches!(e, OlYamlError::Read { .. }), "{e:?}");
        let message = e.to_string();
        assert!(message.starts_with("ol.yaml: cannot read "), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        assert_err("triggers:\n  http: [\n", "line ");
        assert_err("a: *missing\n", "unknown anchor");
        assert_err("limits: {}\n---\nlimits: {}\n", "more than one document");
        assert_err("limits:\nlimits:\n", "duplicate entry with key \"limits\"");
        assert_err(
            "environment: {A: 1, A: 2}\n",
            "duplicate entry with key \"A\"",
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        for (text, key, expected) in [
            (
                "limit: {mem_mb: 1}",
                "limit",
                "unknown field `limit`, expected one of `triggers`, `environment`, `limits`",
            ),
            ("limits: {mem: 1}", "limits.mem", "unknown field `mem`"),
            (
                "triggers: {kafka: []}",
                "triggers.kafka",
                "unknown field `kafka`",
            ),
            (
                "triggers: {http: [{method: GET, path: /x}]}",
                "triggers.http[0].path",
                "unknown field `path`",
            ),
            (
                "triggers: {cron: [{schedule: '* * * * *', tz: UTC}]}",
                "triggers.cron[0].tz",
                "unknown field `tz`",
            ),
        ] {
            assert_err(text, &format!("ol.yaml: {key}: {expected}"));
            match parse(text) {
                Err(OlYamlError::Invalid { key: found, .. }) => assert_eq!(found, key),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_types_and_missing_fields_are_named() {
        assert_err("[1, 2]", "ol.yaml: invalid type: sequence");
        assert_err("triggers: [1]", "ol.yaml: triggers: invalid type: sequence");
        assert_err(
            "triggers: {http: GET}",
            "ol.yaml: triggers.http: invalid type: string",
        );
        assert_err(
            "triggers: {http: [{}]}",
            "ol.yaml: triggers.http[0]: missing field `method`",
        );
        assert_err(
            "triggers: {http: [GET]}",
            "ol.yaml: triggers.http[0]: invalid type: string",
        );
        assert_err(
            "triggers: {cron: [{schedule: 5}]}",
            "ol.yaml: triggers.cron[0].schedule: invalid type: integer",
        );
        assert_err(
            "limits: {mem_mb: -1}",
            "ol.yaml: limits.mem_mb: invalid value: integer `-1`",
        );
        assert_err(
            "limits: {mem_mb: lots}",
            "ol.yaml: limits.mem_mb: invalid type: string",
        );
        assert_err(
            "limits: {procs: 1.5}",
            "ol.yaml: limits.procs: invalid type: floating point",
        );
        assert_err(
            "limits: {procs: 4294967296}",
            "ol.yaml: limits.procs: invalid value",
        );
        assert_err(
            "environment: [A]",
            "ol.yaml: environment: invalid type: sequence",
        );
    }

    // ------------------------------------------------------------------ http

    #[test]
    fn methods_are_case_insensitive_and_normalized() {
        let config = ok("triggers: {http: [{method: get}, {method: Post}, {method: oPtIoNs}]}");
        assert_eq!(
            config.triggers.allowed_methods(),
            Some(vec![
                "GET".to_owned(),
                "POST".to_owned(),
                "OPTIONS".to_owned()
            ])
        );
        for method in HttpMethod::ALL {
            let text = format!(
                "triggers: {{http: [{{method: {}}}]}}",
                method.as_str().to_lowercase()
            );
            assert_eq!(ok(&text).triggers.http, Some(vec![HttpTrigger { method }]));
            assert_eq!(method.to_string(), method.as_str());
        }
    }

    #[test]
    fn unknown_methods_are_errors_naming_the_entry() {
        assert_err(
            "triggers:\n  http: [{method: GET}, {method: FETCH}]\n",
            "ol.yaml: triggers.http[1].method: unknown HTTP method `FETCH`, expected one of \
             GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS",
        );
        assert_err("triggers: {http: [{method: CONNECT}]}", "`CONNECT`");
        assert_err("triggers: {http: [{method: ''}]}", "unknown HTTP method ``");
        assert_err(
            "triggers: {http: [{method: 1}]}",
            "triggers.http[0].method: invalid type: integer",
        );
    }

    #[test]
    fn allows_follows_the_listed_methods() {
        let all = Triggers::default();
        for method in ["GET", "POST", "PROPFIND", "get"] {
            assert!(all.allows(method), "{method}");
        }
        assert_eq!(all.allowed_methods(), None);

        let some = ok("triggers: {http: [{method: GET}, {method: POST}, {method: get}]}").triggers;
        assert!(some.allows("GET"));
        assert!(some.allows("get"));
        assert!(some.allows("POST"));
        assert!(!some.allows("HEAD"), "HEAD is not implied by GET");
        assert!(!some.allows("DELETE"));
        assert!(!some.allows(""));
        assert_eq!(
            some.allowed_methods(),
            Some(vec!["GET".to_owned(), "POST".to_owned()]),
            "repeats dropped, order kept"
        );

        let none = ok("triggers: {http: [], cron: [{schedule: '@daily'}]}").triggers;
        assert!(!none.allows("GET"));
        assert_eq!(none.allowed_methods(), Some(vec![]));

        let unset = ok("triggers: {http: ~}").triggers;
        assert!(unset.allows("PATCH"));
    }

    // ----------------------------------------------------------- environment

    #[test]
    fn environment_scalars_are_stringified() {
        let config = ok(r#"
environment:
  PORT: 8080
  NEGATIVE: -3
  RATIO: 1.5
  DEBUG: true
  OFF: false
  NAME: "hello world"
  QUOTED_NUMBER: "007"
  EMPTY: ""
  _LEADING: x
  lower_case9: y
  OL_ENTRY_FILE: main.py
  YES_IS_A_STRING: yes
"#);
        let expected: BTreeMap<String, String> = [
            ("PORT", "8080"),
            ("NEGATIVE", "-3"),
            ("RATIO", "1.5"),
            ("DEBUG", "true"),
            ("OFF", "false"),
            ("NAME", "hello world"),
            ("QUOTED_NUMBER", "007"),
            ("EMPTY", ""),
            ("_LEADING", "x"),
            ("lower_case9", "y"),
            ("OL_ENTRY_FILE", "main.py"),
            ("YES_IS_A_STRING", "yes"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(config.environment, expected);
        let names: Vec<String> = config.env_pairs().into_iter().map(|(k, _)| k).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "pairs are ordered by name");
    }

    #[test]
    fn environment_errors_name_the_variable() {
        for name in ["1ABC", "A-B", "A B", "É", "''"] {
            let message = err(&format!("environment: {{{name}: x}}"));
            assert!(message.starts_with("ol.yaml: environment"), "{message}");
            assert!(
                message.contains("invalid environment variable name"),
                "{message}"
            );
            let shown = name.trim_matches('\'');
            assert!(message.contains(&format!("`{shown}`")), "{message}");
        }
        assert_err(
            "environment: {EMPTY: ~}",
            "ol.yaml: environment.EMPTY: invalid type: unit value, expected a string, number or boolean",
        );
        assert_err(
            "environment: {LIST: [1]}",
            "ol.yaml: environment.LIST: invalid type: sequence, expected a string, number or boolean",
        );
        assert_err(
            "environment: {MAP: {a: 1}}",
            "ol.yaml: environment.MAP: invalid type: map",
        );
        assert_err("environment: {1: x}", "ol.yaml: environment");
    }

    // ---------------------------------------------------------------- limits

    fn worker() -> Limits {
        Limits {
            procs: 32,
            mem_mb: 256,
            cpu_percent: 200,
            swappiness: 10,
            runtime_sec: 30,
            max_body_mb: 6,
            max_response_mb: 6,
            disk_mb: 64,
            log_kb: 1024,
        }
    }

    #[test]
    fn limits_lower_the_workers() {
        let config = ok(
            "limits: {mem_mb: 128, runtime_sec: 10, procs: 16, cpu_percent: 100, swappiness: 0, max_body_mb: 1}",
        );
        assert_eq!(
            config.limits.apply(&worker()).expect("apply"),
            Limits {
                procs: 16,
                mem_mb: 128,
                cpu_percent: 100,
                swappiness: 0,
                runtime_sec: 10,
                max_body_mb: 1,
                max_response_mb: 6,
                disk_mb: 64,
                log_kb: 1024,
            }
        );
        assert_eq!(
            LimitOverrides::default().apply(&worker()).expect("apply"),
            worker(),
            "no overrides: the worker's limits"
        );
        let equal = ok("limits: {mem_mb: 256, procs: 32}");
        assert_eq!(
            equal.limits.apply(&worker()).expect("apply"),
            worker(),
            "equal is fine"
        );
    }

    #[test]
    fn limits_above_the_workers_are_errors_naming_key_and_values() {
        for (text, key, asked, max) in [
            ("limits: {mem_mb: 512}", "mem_mb", 512, 256),
            ("limits: {procs: 33}", "procs", 33, 32),
            ("limits: {cpu_percent: 400}", "cpu_percent", 400, 200),
            ("limits: {swappiness: 60}", "swappiness", 60, 10),
            ("limits: {runtime_sec: 31}", "runtime_sec", 31, 30),
            ("limits: {max_body_mb: 100}", "max_body_mb", 100, 6),
        ] {
            let e = ok(text).limits.apply(&worker()).expect_err(text);
            assert_eq!(
                e.to_string(),
                format!(
                    "ol.yaml: limits.{key}: {asked} is above this worker's limit of {max} \
                     (a lambda may only lower its limits)"
                )
            );
            assert!(
                matches!(e, OlYamlError::LimitAboveWorker { key: k, asked: a, max: m } if k == key && a == asked && m == max),
                "{e:?}"
            );
        }
    }

    #[test]
    fn zero_limits_are_errors_except_swappiness() {
        for key in [
            "mem_mb",
            "runtime_sec",
            "procs",
            "cpu_percent",
            "max_body_mb",
            "max_response_mb",
            "disk_mb",
            "log_kb",
        ] {
            let text = format!("limits: {{{key}: 0}}");
            assert_eq!(
                err(&text),
                format!("ol.yaml: limits.{key}: must be at least 1, got 0")
            );
        }
        let built_by_hand = LimitOverrides {
            procs: Some(0),
            ..LimitOverrides::default()
        };
        assert!(matches!(
            built_by_hand.apply(&worker()),
            Err(OlYamlError::LimitZero { key: "procs" })
        ));
        assert_eq!(ok("limits: {swappiness: 0}").limits.swappiness, Some(0));
        assert_eq!(
            err("limits: {swappiness: 101}"),
            "ol.yaml: limits.swappiness: must be at most 100, got 101"
        );
    }

    // ------------------------------------------------------------------ cron

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
    fn cron_sets_hold_the_right_values() {
        let s = cron("0-10/5,30 */6 1-7 JAN,jul * ");
        assert_eq!(s.minutes, (1 << 0) | (1 << 5) | (1 << 10) | (1 << 30));
        assert_eq!(s.hours, (1 << 0) | (1 << 6) | (1 << 12) | (1 << 18));
        assert_eq!(s.days_of_month, 0b1111_1110);
        assert_eq!(s.months, (1 << 1) | (1 << 7));
        assert_eq!(s.days_of_week, 0b111_1111);
        assert!(!s.dom_star && s.dow_star);
        assert_eq!(cron("0 0 * * 7").days_of_week, 1, "7 is Sunday");
        assert_eq!(cron("0 0 * * SUN,7").days_of_week, 1);
        assert_eq!(cron("0 0 * * 5-7").days_of_week, 0b110_0001);
        assert_eq!(cron("0 0 * * */2").days_of_week, 0b101_0101);
        assert_eq!(cron("* * * * *").minutes, u64::MAX >> 4);
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
