//! A lambda's optional `ol.yaml` (docs/architecture.md §1.4): which HTTP methods and
//! cron schedules trigger it, extra environment variables for its sandbox,
//! and limits that lower the worker's defaults.
//!
//! ```yaml
//! triggers:
//!   http: [{method: GET}, {method: POST}]   # no `http` key: every method
//!   cron: [{schedule: "*/5 * * * *"}]
//!   nats: [{url: "nats://127.0.0.1:4222", stream: S, subject: s.>, durable: d}]
//!   kafka: [{brokers: ["127.0.0.1:9092"], topic: t, group: g}]
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
//! One module per part of the schema, each saying the choices it makes:
//! [`triggers`] (`http` methods, and `cron` schedules, whose crontab(5)
//! expressions [`cron_schedule`] reads), `environment` (variables for the
//! sandbox) and [`limits`] (which may only lower the worker's). [`shape`] is
//! the size, nesting and alias check every text passes before the YAML
//! parser sees it.

pub mod cron_schedule;
mod environment;
pub mod kafka;
pub mod limits;
pub mod queue;
pub mod shape;
pub mod triggers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use cron_schedule::{CronError, CronSchedule};
pub use kafka::KafkaTrigger;
pub use limits::LimitOverrides;
pub use queue::{DeliveryPolicy, NatsTrigger};
use shape::ShapeError;
pub use triggers::{CronTrigger, HttpMethod, HttpTrigger, Triggers};

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
    /// refused before it is parsed (see [`shape`]).
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
    #[serde(deserialize_with = "environment::deserialize")]
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
/// [`shape::MAX_BYTES`], nested deeper than [`shape::MAX_DEPTH`]
/// or with more than [`shape::MAX_ALIASES`] aliases is refused before
/// it is parsed: the YAML parser's time grows with the square of the depth.
pub fn parse(text: &str) -> Result<LambdaConfig, OlYamlError> {
    shape::check(text)?;
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
    queue::check_nats(&config.triggers.nats)
        .and_then(|()| kafka::check_kafka(&config.triggers.kafka))
        .map_err(|(key, message)| OlYamlError::Invalid { key, message })?;
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
    if size > shape::MAX_BYTES as u64 {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        return Err(ShapeError::TooLarge { size }.into());
    }
    let mut text = String::new();
    file.take(shape::MAX_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|source| OlYamlError::Read {
            path: path.clone(),
            source,
        })?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error message `text` is refused with.
    pub(super) fn err(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("{text:?} parsed: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts that `text` is refused with a message containing `expected`.
    pub(super) fn assert_err(text: &str, expected: &str) {
        let message = err(text);
        assert!(
            message.contains(expected),
            "{text:?}: {message:?} lacks {expected:?}"
        );
        assert!(message.starts_with("ol.yaml: "), "{message:?}");
    }

    /// The config `text` parses to.
    pub(super) fn ok(text: &str) -> LambdaConfig {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

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
                        schedule: "*/5 * * * *".parse().expect("schedule")
                    }],
                    nats: vec![],
                    kafka: vec![],
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
                "triggers: {kafka: [{brokers: [h], topic: t, group: g, key: k}]}",
                "triggers.kafka[0].key",
                "unknown field `key`",
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
}
