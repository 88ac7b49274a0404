//! `config.json` (DESIGN.md §1.5): every setting with its default, strict
//! parsing (an unknown key is an error naming it) and `-o key=value`
//! overrides with dotted keys (`-o limits.mem_mb=128`).

use std::fs;
use std::path::{Path, PathBuf};

use ol_sandbox::Limits;
use ol_sandbox::sock::rootfs::BaseKind;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Which sandbox backend runs lambdas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// Namespaces, cgroups, pivot_root, seccomp (needs root).
    Sock,
    /// Plain child processes, no isolation (development without root).
    Process,
}

/// Which import cache the lambda layer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportCache {
    /// One tree of zygotes.
    #[serde(rename = "tree")]
    Tree,
    /// Several copies of hot zygotes.
    #[serde(rename = "multitree")]
    MultiTree,
    /// No zygotes.
    #[serde(rename = "")]
    Off,
}

/// Limits of the sandbox that installs packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstallerLimits {
    /// Memory limit in MiB.
    pub mem_mb: u64,
    /// Longest an install may take.
    pub runtime_sec: u64,
}

impl Default for InstallerLimits {
    fn default() -> Self {
        Self {
            mem_mb: 250,
            runtime_sec: 300,
        }
    }
}

/// How far one lambda scales (ours, not OpenLambda's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scaling {
    /// Most sandboxes one lambda may have at once.
    pub max_instances: usize,
    /// Most calls of one lambda waiting for a sandbox; more get 429.
    pub max_queue: usize,
    /// A sandbox idle this long is destroyed (scale down); 0 never.
    pub idle_timeout_ms: u64,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            max_instances: 8,
            max_queue: 256,
            idle_timeout_ms: 300_000,
        }
    }
}

/// Feature switches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Features {
    /// Import cache kind.
    pub import_cache: ImportCache,
    /// Lower a paused sandbox's memory limit to its usage.
    pub downsize_paused_mem: bool,
    /// Apply the seccomp allow-list in sandboxes.
    pub enable_seccomp: bool,
    /// Reuse cgroups from a pool.
    pub reuse_cgroups: bool,
    /// Build packages that have no usable wheel from their source
    /// distribution (ours). Off by default: then only wheels install and
    /// no package code runs at install time. On, the sdist and its build
    /// requirements are fetched by the worker's own code and the build
    /// runs in a sandbox with no network that writes only its staging dir.
    /// Needs the `sock` backend.
    pub source_builds: bool,
}

impl Default for Features {
    fn default() -> Self {
        Self {
            import_cache: ImportCache::Tree,
            downsize_paused_mem: true,
            enable_seccomp: true,
            reuse_cgroups: false,
            source_builds: false,
        }
    }
}

/// Tracing switches (OpenLambda's `trace` block).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Trace {
    /// Log cgroup operations.
    pub cgroups: bool,
    /// Log memory pool operations.
    pub memory: bool,
    /// Log evictions.
    pub evictor: bool,
    /// Log package installs.
    pub package: bool,
    /// Log the latency of every phase of every call.
    pub latency: bool,
    /// Write a Chrome trace-event file (Perfetto, chrome://tracing) of the
    /// phases of every call here; "" writes none; a relative path is
    /// taken from the worker directory (ours, not OpenLambda's).
    pub file: String,
}

/// Every worker setting. Missing keys take their defaults; unknown keys
/// are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Interface the worker listens on (ours; OpenLambda listens on all).
    pub worker_host: String,
    /// TCP port of the HTTP API; 0 picks a free one (written to
    /// `worker/worker.port`).
    #[serde(deserialize_with = "port_from_number_or_string")]
    pub worker_port: u16,
    /// Where lambda code comes from: a directory (optionally `file://`).
    pub registry: String,
    /// How long fetched code is trusted before the registry is asked again.
    pub registry_cache_ms: u64,
    /// Sandbox backend.
    pub sandbox: SandboxKind,
    /// Memory all sandboxes together may reserve, in MiB.
    pub mem_pool_mb: u64,
    /// The import cache's zygote tree (OpenLambda's JSON format), or "" for
    /// the built-in default.
    pub import_cache_tree: Value,
    /// Default limits of every lambda sandbox.
    pub limits: Limits,
    /// Limits of the package installer sandbox.
    pub installer_limits: InstallerLimits,
    /// Per-lambda scaling bounds.
    pub scaling: Scaling,
    /// Feature switches.
    pub features: Features,
    /// An idle sandbox is paused after this long; 0 never pauses.
    pub pause_after_idle_ms: u64,
    /// Package index to install from ("" = pip's default / host settings);
    /// a local directory of wheels is used with no index.
    pub pip_index_url: String,
    /// The package installer's download cache ("" = `DIR/cache`); share
    /// one between workers so each download happens once (ours).
    pub package_cache_dir: String,
    /// Tracing switches.
    pub trace: Trace,
    /// Python interpreter for the runtime: a name on PATH or a path; `init`
    /// writes the real binary behind it (ours, not OpenLambda's). With a
    /// self-contained base, a path inside the base.
    pub python: String,
    /// What `DIR/base` is made of: "host" (sandboxes bind the host's system
    /// and Python) or "debootstrap" (a self-contained Debian root file
    /// system with its own Python); set by `ol worker init --base` and
    /// checked against the base's marker at start (ours).
    pub base: BaseKind,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            worker_host: "127.0.0.1".into(),
            worker_port: 5000,
            registry: String::new(),
            registry_cache_ms: 5000,
            // SOCK isolation needs root; without it, plain processes.
            sandbox: if nix::unistd::geteuid().is_root() {
                SandboxKind::Sock
            } else {
                SandboxKind::Process
            },
            mem_pool_mb: default_mem_pool_mb(),
            import_cache_tree: Value::String(String::new()),
            limits: Limits::default(),
            installer_limits: InstallerLimits::default(),
            scaling: Scaling::default(),
            features: Features::default(),
            pause_after_idle_ms: 500,
            pip_index_url: String::new(),
            package_cache_dir: String::new(),
            trace: Trace::default(),
            python: "python3".into(),
            base: BaseKind::Host,
        }
    }
}

/// Errors reading or overriding the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The config file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A key is unknown or its value has the wrong type.
    #[error("config key `{key}`: {message}")]
    Key {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `-o` argument is not `key=value`.
    #[error("bad override {0:?}: expected key=value, e.g. -o worker_port=5001")]
    BadOverride(String),
}

/// RAM − 500 MiB, OpenLambda's default memory pool.
fn default_mem_pool_mb() -> u64 {
    let total_kb = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    (total_kb / 1024).saturating_sub(500).max(512)
}

fn port_from_number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    // OpenLambda writes the port as a string ("8080"); accept both forms.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(u16),
        Text(String),
    }
    match Port::deserialize(d)? {
        Port::Number(n) => Ok(n),
        Port::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a port number (0-65535)"))),
    }
}

impl Config {
    /// Reads `path` and applies `overrides` (`key=value`, dotted keys).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut value: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        Self::from_value(value)
    }

    /// Parses a JSON value strictly, naming the key of any error.
    pub fn from_value(value: Value) -> Result<Self, ConfigError> {
        let config: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Key {
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError::Key {
                key: key.into(),
                message: message.into(),
            })
        };
        let l = &self.limits;
        if l.mem_mb == 0 {
            return bad("limits.mem_mb", "must be at least 1");
        }
        if l.procs == 0 {
            return bad("limits.procs", "must be at least 1");
        }
        if l.runtime_sec == 0 {
            return bad("limits.runtime_sec", "must be at least 1");
        }
        if l.cpu_percent == 0 {
            return bad("limits.cpu_percent", "must be at least 1");
        }
        if l.swappiness > 100 {
            return bad("limits.swappiness", "must be between 0 and 100");
        }
        if self.scaling.max_instances == 0 {
            return bad("scaling.max_instances", "must be at least 1");
        }
        if self.python.is_empty() {
            return bad("python", "must name a Python interpreter");
        }
        if self.features.source_builds && self.sandbox == SandboxKind::Process {
            return bad(
                "features.source_builds",
                "needs sandbox \"sock\": process sandboxes cannot keep build code off the network",
            );
        }
        if self.base.is_self_contained() && self.sandbox == SandboxKind::Process {
            return bad(
                "base",
                "a debootstrap base needs sandbox \"sock\" (process sandboxes run the host's Python); use -o sandbox=sock as root",
            );
        }
        Ok(())
    }

    /// The Chrome trace file to write (`trace.file`), if any.
    pub fn trace_file(&self, worker_dir: &Path) -> Option<PathBuf> {
        (!self.trace.file.is_empty()).then(|| worker_dir.join(&self.trace.file))
    }

    /// Whether `registry` is an HTTP registry URL.
    pub fn registry_is_http(&self) -> bool {
        self.registry.starts_with("http://") || self.registry.starts_with("https://")
    }

    /// The registry directory, with any `file://` prefix removed and a
    /// relative path taken from `worker_dir`.
    pub fn registry_dir(&self, worker_dir: &Path) -> PathBuf {
        let raw = self
            .registry
            .strip_prefix("file://")
            .unwrap_or(&self.registry);
        if raw.is_empty() {
            worker_dir.join("registry")
        } else {
            worker_dir.join(raw)
        }
    }
}

/// Sets `key` (dotted) in `root` to `raw`, read as JSON when it parses as
/// JSON and the key does not already hold a string, else as a string.
pub fn apply_override(root: &mut Value, arg: &str) -> Result<(), ConfigError> {
    let (key, raw) = arg
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| ConfigError::BadOverride(arg.to_string()))?;
    let mut node = root;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = node else {
            return Err(ConfigError::Key {
                key: key.to_string(),
                message: format!("`{part}` is inside a value that is not an object"),
            });
        };
        if parts.peek().is_none() {
            let keeps_string = matches!(map.get(part), Some(Value::String(_)));
            let value = match serde_json::from_str::<Value>(raw) {
                Ok(v) if !keeps_string => v,
                _ => Value::String(raw.to_string()),
            };
            map.insert(part.to_string(), value);
            return Ok(());
        }
        node = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    Err(ConfigError::BadOverride(arg.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults_value() -> Value {
        serde_json::to_value(Config::default()).expect("serialize")
    }

    #[test]
    fn defaults_match_design() {
        let c = Config::default();
        assert_eq!(c.worker_port, 5000);
        assert_eq!(c.registry_cache_ms, 5000);
        assert_eq!(
            c.limits,
            Limits {
                procs: 10,
                mem_mb: 50,
                cpu_percent: 100,
                swappiness: 0,
                runtime_sec: 30,
                max_body_mb: 6,
                max_response_mb: 6,
                disk_mb: 32,
                log_kb: 1024,
            }
        );
        assert_eq!(c.installer_limits.mem_mb, 250);
        assert_eq!(c.installer_limits.runtime_sec, 300);
        assert_eq!(c.features.import_cache, ImportCache::Tree);
        assert!(c.features.downsize_paused_mem && c.features.enable_seccomp);
        assert!(!c.features.reuse_cgroups);
        assert!(!c.features.source_builds, "only wheels install by default");
        assert_eq!(c.pause_after_idle_ms, 500);
        assert!(c.mem_pool_mb >= 512);
        assert_eq!(c.base, BaseKind::Host);
    }

    #[test]
    fn base_is_host_or_debootstrap_and_needs_sock_when_self_contained() {
        let c =
            Config::from_value(json!({"base": "debootstrap", "sandbox": "sock"})).expect("parse");
        assert_eq!(c.base, BaseKind::Debootstrap);
        let err = Config::from_value(json!({"base": "docker"})).expect_err("variant");
        assert!(err.to_string().starts_with("config key `base`"), "{err}");
        let err = Config::from_value(json!({"base": "debootstrap", "sandbox": "process"}))
            .expect_err("process");
        assert!(err.to_string().contains("sandbox"), "{err}");
    }

    #[test]
    fn source_builds_are_a_strict_switch_that_needs_sock() {
        let c = Config::from_value(json!({"features": {"source_builds": true}, "sandbox": "sock"}))
            .expect("parse");
        assert!(c.features.source_builds);
        let err =
            Config::from_value(json!({"features": {"source_builds": "yes"}})).expect_err("type");
        assert!(
            err.to_string()
                .starts_with("config key `features.source_builds`"),
            "{err}"
        );
        let err =
            Config::from_value(json!({"features": {"source_builds": true}, "sandbox": "process"}))
                .expect_err("process");
        assert!(err.to_string().contains("features.source_builds"), "{err}");
    }

    #[test]
    fn round_trips_and_fills_missing_keys() {
        let c = Config::from_value(defaults_value()).expect("parse");
        assert_eq!(c, Config::default());
        let partial = Config::from_value(json!({"worker_port": 6000})).expect("parse");
        assert_eq!(partial.worker_port, 6000);
        assert_eq!(partial.limits, Limits::default());
    }

    #[test]
    fn port_may_be_a_string_as_in_openlambda() {
        let c = Config::from_value(json!({"worker_port": "8080"})).expect("parse");
        assert_eq!(c.worker_port, 8080);
        let err = Config::from_value(json!({"worker_port": "http"})).expect_err("bad");
        assert!(err.to_string().contains("worker_port"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_value(json!({"wroker_port": 1})).expect_err("unknown");
        assert!(err.to_string().contains("wroker_port"), "{err}");
        let err = Config::from_value(json!({"limits": {"mem_gb": 1}})).expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("limits") && msg.contains("mem_gb"), "{msg}");
    }

    #[test]
    fn wrong_types_and_values_are_named() {
        let err = Config::from_value(json!({"limits": {"mem_mb": "lots"}})).expect_err("type");
        assert!(
            err.to_string().starts_with("config key `limits.mem_mb`"),
            "{err}"
        );
        let err = Config::from_value(json!({"sandbox": "docker"})).expect_err("variant");
        assert!(err.to_string().contains("sandbox"), "{err}");
        let err = Config::from_value(json!({"limits": {"runtime_sec": 0}})).expect_err("zero");
        assert!(err.to_string().contains("limits.runtime_sec"), "{err}");
    }

    #[test]
    fn overrides_set_typed_values_by_dotted_key() {
        let mut v = defaults_value();
        for o in [
            "worker_port=5001",
            "limits.mem_mb=128",
            "features.enable_seccomp=false",
            "sandbox=process",
            "pip_index_url=123",
            "features.import_cache=",
        ] {
            apply_override(&mut v, o).expect(o);
        }
        let c = Config::from_value(v).expect("parse");
        assert_eq!(c.worker_port, 5001);
        assert_eq!(c.limits.mem_mb, 128);
        assert!(!c.features.enable_seccomp);
        assert_eq!(c.sandbox, SandboxKind::Process);
        assert_eq!(c.pip_index_url, "123", "string keys stay strings");
        assert_eq!(c.features.import_cache, ImportCache::Off);
    }

    #[test]
    fn bad_overrides_are_errors_naming_the_key() {
        let mut v = defaults_value();
        assert!(matches!(
            apply_override(&mut v, "no_equals"),
            Err(ConfigError::BadOverride(_))
        ));
        assert!(matches!(
            apply_override(&mut v, "=5"),
            Err(ConfigError::BadOverride(_))
        ));
        let err = apply_override(&mut v, "worker_port.x=1").expect_err("not an object");
        assert!(err.to_string().contains("worker_port.x"), "{err}");
        apply_override(&mut v, "limits.bogus=1").expect("sets");
        let err = Config::from_value(v).expect_err("unknown");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn load_reads_file_and_reports_bad_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("config.json");
        fs::write(&p, r#"{"worker_port": 7000}"#).expect("write");
        let c = Config::load(&p, &["limits.procs=3".into()]).expect("load");
        assert_eq!((c.worker_port, c.limits.procs), (7000, 3));
        fs::write(&p, "{not json").expect("write");
        assert!(matches!(
            Config::load(&p, &[]),
            Err(ConfigError::Json { .. })
        ));
        assert!(matches!(
            Config::load(&dir.path().join("missing.json"), &[]),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn registry_dir_resolves_forms() {
        let wd = Path::new("/w");
        let mut c = Config::default();
        assert_eq!(c.registry_dir(wd), PathBuf::from("/w/registry"));
        c.registry = "file:///srv/reg".into();
        assert_eq!(c.registry_dir(wd), PathBuf::from("/srv/reg"));
        c.registry = "reg2".into();
        assert_eq!(c.registry_dir(wd), PathBuf::from("/w/reg2"));
    }

    #[test]
    fn trace_takes_openlambda_switches_and_a_file() {
        let c = Config::from_value(json!({
            "trace": {"cgroups": true, "memory": false, "evictor": true, "package": true, "latency": true}
        }))
        .expect("OpenLambda's trace block");
        assert!(c.trace.latency && c.trace.cgroups);
        assert_eq!(c.trace_file(Path::new("/w")), None);
        let mut v = defaults_value();
        apply_override(&mut v, "trace.file=traces/t.json").expect("override");
        let c = Config::from_value(v).expect("config");
        assert_eq!(
            c.trace_file(Path::new("/w")),
            Some(PathBuf::from("/w/traces/t.json"))
        );
        let mut v = defaults_value();
        apply_override(&mut v, "trace.file=/abs/t.json").expect("override");
        let c = Config::from_value(v).expect("config");
        assert_eq!(
            c.trace_file(Path::new("/w")),
            Some(PathBuf::from("/abs/t.json"))
        );
        let err = Config::from_value(json!({"trace": {"flie": "x"}})).expect_err("typo");
        assert!(err.to_string().contains("trace"), "{err}");
    }
}
