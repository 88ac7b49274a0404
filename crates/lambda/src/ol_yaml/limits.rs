//! `limits`: values that lower the worker's limits for one lambda.
//!
//! A lambda may only lower its limits ([`LimitOverrides::apply`]): asking
//! for more than the worker gives is an error naming the key and both
//! values. Zero is an error, except for `swappiness` (0..=100).

use ol_sandbox::Limits;
use serde::Deserialize;

use super::OlYamlError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ol_yaml::tests::{err, ok};

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
}
