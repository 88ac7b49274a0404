//! `config.json` (docs/architecture.md §1.5): every setting with its default, strict
//! parsing (an unknown key is an error naming it) and `-o key=value`
//! overrides with dotted keys (`-o limits.mem_mb=128`).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ol_registry::{S3Config, S3ConfigError};
use ol_sandbox::Limits;
use ol_sandbox::sock::rootfs::BaseKind;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::access::{AdminConfig, is_loopback_host, unbracket};

/// Which sandbox backend runs lambdas.
pub use ol_sandbox::Backend as SandboxKind;

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

/// Where the traceback of a lambda that raised or failed to load goes
/// (ours). The worker log gets it either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tracebacks {
    /// In the JSON error body, to the HTTP client (as OpenLambda does).
    #[default]
    Client,
    /// Only in the worker log; the client gets the error line and the
    /// request id to find it by.
    Log,
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
    /// Blank sandboxes (namespaces, cgroup, scratch and a forked
    /// interpreter, no lambda yet) kept ready for cold starts of any
    /// lambda without packages (`sock` only); a cold start with none ready
    /// makes one on the spot. Each idle one holds ~2 MiB and one process.
    pub blanks: usize,
}

/// Most blank sandboxes `scaling.blanks` may ask for.
pub const MAX_BLANKS: usize = 1024;

impl Scaling {
    /// `scaling.blanks` unless set: with 4 (and two refill threads), `ol
    /// bench cold` (200 new lambdas one after another, ~3 ms each) found
    /// one ready every time; 2 with one thread ran out in 7–26% of the
    /// starts, each miss a ~5 ms fork on the call's path.
    pub const DEFAULT_BLANKS: usize = 4;
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            max_instances: 8,
            max_queue: 256,
            idle_timeout_ms: 300_000,
            blanks: Self::DEFAULT_BLANKS,
        }
    }
}

/// How the HTTP server holds connections (ours, not OpenLambda's; see
/// [`crate::conn`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Longest from a request's first byte to the end of its head (request
    /// line and headers), in ms; a slower client is disconnected.
    pub header_timeout_ms: u64,
    /// A connection waiting for a request with nothing received for this
    /// long is closed (keep-alive idle), and a request body that stops
    /// arriving for this long fails with 408; in ms.
    pub idle_timeout_ms: u64,
    /// Most connections served at once; more wait in the kernel's accept
    /// queue until one ends. At most half the worker's descriptor limit
    /// (the other half is for sandboxes and files); the default is 1024, or
    /// that half when it is smaller.
    pub max_connections: usize,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: DEFAULT_MAX_CONNECTIONS.min(max_connections_for(fd_limit())),
        }
    }
}

/// `http.max_connections` unless the descriptor limit is too low for it.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The most connections a worker with `fd_limit` descriptors may serve:
/// half of them, the rest being for sandboxes (sockets, pipes, logs),
/// registry files and the worker's own.
pub fn max_connections_for(fd_limit: u64) -> usize {
    usize::try_from(fd_limit / 2).unwrap_or(usize::MAX)
}

/// The descriptor limit the worker runs with: it raises its soft
/// `RLIMIT_NOFILE` to the hard one at start ([`raise_fd_limit`]), which
/// the kernel caps at `fs.nr_open`.
pub fn fd_limit() -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(_, hard)| hard);
    let nr_open = read_proc_number("/proc/sys/fs/nr_open").unwrap_or(1 << 20);
    hard.min(nr_open)
}

/// Raises the soft descriptor limit to [`fd_limit`] (the usual soft limit
/// of 1024 would leave few descriptors beside `http.max_connections`);
/// returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let target = fd_limit();
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < target => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
                tracing::warn!("cannot raise the descriptor limit from {soft} to {target}: {e}");
                return soft;
            }
            target
        }
        Ok((soft, _)) => soft,
        Err(_) => target,
    }
}

/// Descriptors the worker's table is made to hold at start
/// ([`presize_fd_table`]): a sandbox holds about 4, so room for some 4,000
/// sandboxes before the table grows again.
const PRESIZED_FDS: u64 = 16 * 1024;

/// Grows the worker's descriptor table to hold [`PRESIZED_FDS`] (fewer
/// if `limit`, the descriptor limit in force, is lower), to be called
/// while the worker has one thread; returns the descriptor that made it
/// grow, if it did.
///
/// The kernel doubles a process's table when a descriptor past its end is
/// needed, and when threads share the table each growth first waits for
/// an RCU grace period (`expand_fdtable`): every thread of the worker that
/// asks for a descriptor meanwhile (accepting a connection, a new
/// sandbox's pipes and sockets) waits with it, 10–22 ms on this project's
/// VMs, at 128, 256, 512, 1,024... descriptors, that is after some 30,
/// 60, 120, 250 sandboxes. With one thread there is no wait, and a table
/// never shrinks. It costs the kernel 8 bytes a descriptor (128 KiB).
pub fn presize_fd_table(limit: u64) -> Option<u64> {
    let top = PRESIZED_FDS.min(limit).checked_sub(1)?;
    // The lowest free descriptor at or above `top`: the table grows to
    // hold it, and keeps that size once it is closed.
    let fd = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), i32::try_from(top).ok()?).ok()?;
    Some(u64::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap_or(0))
}

/// A number in a /proc file (`pid_max`, `nr_open`).
fn read_proc_number(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
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

/// Queue triggers (ours; docs/triggers.md): which brokers lambdas' ol.yaml
/// `triggers.nats` and `triggers.kafka` may reach and how far a trigger may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    /// Brokers a trigger may connect to, `HOST:PORT` as ol.yaml writes
    /// them (`"*"`: any). Empty (the default): no queue trigger runs; a
    /// tenant's ol.yaml never makes the worker connect anywhere the
    /// operator did not list.
    pub allowed_brokers: Vec<String>,
    /// Cap on a trigger's `concurrency`.
    pub max_concurrency: u32,
    /// Cap on a trigger's `retries`.
    pub max_retries: u32,
    /// Longest a connection or a request to a broker may take, in ms.
    pub connect_timeout_ms: u64,
    /// How long a broker waits for an acknowledgement before it sends a
    /// message again, in ms: what a message waits after a worker crash.
    pub ack_wait_ms: u64,
}

impl Default for Triggers {
    fn default() -> Self {
        Self {
            allowed_brokers: Vec::new(),
            max_concurrency: ol_lambda::ol_yaml::queue::MAX_CONCURRENCY,
            max_retries: ol_lambda::ol_yaml::queue::MAX_RETRIES,
            connect_timeout_ms: 5000,
            ack_wait_ms: 30_000,
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

/// The store and keys of an S3 registry (ours): used when `registry` is
/// `s3://BUCKET[/PREFIX]`. What it leaves empty comes from the standard
/// AWS environment variables (docs/registry.md). `Debug` never shows the
/// secret key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryS3 {
    /// The S3 API's URL, e.g. `http://minio:9000` ("" = AWS S3, or
    /// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`).
    pub endpoint: String,
    /// The region ("" = `AWS_REGION`, `AWS_DEFAULT_REGION`, else
    /// `us-east-1`).
    pub region: String,
    /// The access key id ("" = `AWS_ACCESS_KEY_ID`).
    pub access_key: String,
    /// The secret access key ("" = `AWS_SECRET_ACCESS_KEY`).
    pub secret_key: String,
    /// Whether a plain `http://` endpoint may be used.
    pub allow_http: bool,
}

impl std::fmt::Debug for RegistryS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryS3")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field(
                "secret_key",
                &if self.secret_key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
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
    /// Where lambda code comes from: a directory (optionally `file://`;
    /// "" = `DIR/registry`), another worker's `http://HOST:PORT/registry`,
    /// or `s3://BUCKET[/PREFIX]` (with `registry_s3`).
    pub registry: String,
    /// How long fetched code is trusted before the registry is asked again.
    pub registry_cache_ms: u64,
    /// The S3 registry's store and keys (ours).
    pub registry_s3: RegistryS3,
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
    /// HTTP connection limits.
    pub http: Http,
    /// Who may use the admin routes (registry, `/stats`, `/metrics`) and
    /// the key they need (ours; [`crate::access`]).
    pub admin: AdminConfig,
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
    /// The worker's own state: its pid and port files, runtime, sandbox
    /// scratch dirs, registry cache and uploads ("" = `DIR/worker`). Never
    /// shared: the worker id, which names its cgroups, is a hash of it
    /// (OpenLambda's `worker_dir`).
    pub worker_dir: String,
    /// The sandboxes' base root file system ("" = `DIR/base`); workers
    /// may share one (ours; OpenLambda's `sock_base_path`).
    pub base_dir: String,
    /// Installed packages ("" = `DIR/packages`); workers may share one,
    /// each distribution is installed once (ours; OpenLambda's `Pkgs_dir`).
    pub packages_dir: String,
    /// Tracing switches.
    pub trace: Trace,
    /// Queue triggers: allowed brokers and caps (ours).
    pub triggers: Triggers,
    /// Where a failing lambda's traceback goes: "client" (the JSON error
    /// body and the worker log) or "log" (the worker log only).
    pub tracebacks: Tracebacks,
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
            registry_s3: RegistryS3::default(),
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
            http: Http::default(),
            admin: AdminConfig::default(),
            features: Features::default(),
            pause_after_idle_ms: 500,
            pip_index_url: String::new(),
            package_cache_dir: String::new(),
            worker_dir: String::new(),
            base_dir: String::new(),
            packages_dir: String::new(),
            trace: Trace::default(),
            triggers: Triggers::default(),
            tracebacks: Tracebacks::Client,
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

/// What config values are checked against: facts of the machine the
/// worker runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `/proc/sys/kernel/pid_max`: no limit on processes can exceed it.
    pub pid_max: u64,
    /// CPUs the worker may use.
    pub cpus: u64,
    /// Descriptors the worker may hold ([`fd_limit`]).
    pub fd_limit: u64,
}

impl Host {
    /// This machine's.
    pub fn read() -> Self {
        Self {
            // The kernel's default when /proc cannot say.
            pid_max: read_proc_number("/proc/sys/kernel/pid_max").unwrap_or(32_768),
            cpus: std::thread::available_parallelism().map_or(1, |n| as_u64(n.get())),
            fd_limit: fd_limit(),
        }
    }
}

/// Most MiB (or KiB, [`MAX_KB`]) of a size limit: its bytes must fit the
/// kernel's signed 64-bit counters (cgroup limits, tmpfs sizes).
const MAX_MB: u64 = (i64::MAX as u64) >> 20;
const MAX_KB: u64 = (i64::MAX as u64) >> 10;
const MAX_MB_WHY: &str = "its size in bytes must fit in 63 bits";
/// Most MiB of a request or response body: a frame of the runtime protocol
/// carries at most 1 GiB of body.
const MAX_FRAME_MB: u64 = (ol_sandbox::protocol::MAX_BODY_BYTES >> 20) as u64;
/// Longest time limit: a day (a call, an install, a request head).
const MAX_SEC: u64 = 86_400;
const MAX_MS: u64 = MAX_SEC * 1000;
const MAX_SEC_WHY: &str = "a day";

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A [`ConfigError::Key`].
fn bad(key: &str, message: String) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message,
    }
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
        let config = Self::read(path, overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Like [`Self::load`] (unknown keys and wrong types are errors), but
    /// values are not checked against this machine: enough to find a
    /// worker's files, even from a shell with other limits than its own.
    pub fn read(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
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
        Self::parse(value)
    }

    /// Parses a JSON value strictly, naming the key of any error.
    pub fn from_value(value: Value) -> Result<Self, ConfigError> {
        let config = Self::parse(value)?;
        config.validate()?;
        Ok(config)
    }

    fn parse(value: Value) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Key {
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: e.into_inner().to_string(),
            }
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_on(&Host::read())
    }

    /// Refuses every value that can never work on `host`, naming the key
    /// and what would work (the worker would start, and every call, or
    /// every connection, would then fail).
    pub fn validate_on(&self, host: &Host) -> Result<(), ConfigError> {
        let l = &self.limits;
        let il = &self.installer_limits;
        let pids = "the kernel's pid_max";
        let cpus = format!("100 per CPU of the {} this machine has", host.cpus);
        let fds = format!(
            "half the worker's descriptor limit of {}; raise `ulimit -Hn` for more",
            host.fd_limit
        );
        let frame = "the largest frame the runtime protocol carries";
        // (key, value, least, most, why the most).
        // A sock sandbox is a supervisor (pid 1 of its namespace, which
        // reports the runtime's exit) and the runtime: one process cannot
        // start (measured: "fork pid 1: Resource temporarily unavailable").
        let least_procs = match self.sandbox {
            SandboxKind::Sock => 2,
            SandboxKind::Process => 1,
        };
        let t = &self.triggers;
        let yaml_cap = "the most ol.yaml accepts";
        let ranges: [(&str, u64, u64, u64, &str); 21] = [
            (
                "triggers.max_concurrency",
                t.max_concurrency.into(),
                1,
                ol_lambda::ol_yaml::queue::MAX_CONCURRENCY.into(),
                yaml_cap,
            ),
            (
                "triggers.max_retries",
                t.max_retries.into(),
                0,
                ol_lambda::ol_yaml::queue::MAX_RETRIES.into(),
                yaml_cap,
            ),
            (
                "triggers.connect_timeout_ms",
                t.connect_timeout_ms,
                1,
                MAX_MS,
                MAX_SEC_WHY,
            ),
            (
                "triggers.ack_wait_ms",
                t.ack_wait_ms,
                1000,
                MAX_MS,
                MAX_SEC_WHY,
            ),
            (
                "limits.procs",
                l.procs.into(),
                least_procs,
                host.pid_max,
                pids,
            ),
            ("limits.mem_mb", l.mem_mb, 1, MAX_MB, MAX_MB_WHY),
            (
                "limits.cpu_percent",
                l.cpu_percent.into(),
                1,
                100 * host.cpus,
                &cpus,
            ),
            (
                "limits.swappiness",
                l.swappiness.into(),
                0,
                100,
                "the kernel's bound",
            ),
            ("limits.runtime_sec", l.runtime_sec, 1, MAX_SEC, MAX_SEC_WHY),
            ("limits.max_body_mb", l.max_body_mb, 1, MAX_FRAME_MB, frame),
            (
                "limits.max_response_mb",
                l.max_response_mb,
                1,
                MAX_FRAME_MB,
                frame,
            ),
            ("limits.disk_mb", l.disk_mb, 1, MAX_MB, MAX_MB_WHY),
            ("limits.log_kb", l.log_kb, 1, MAX_KB, MAX_MB_WHY),
            ("installer_limits.mem_mb", il.mem_mb, 1, MAX_MB, MAX_MB_WHY),
            (
                "installer_limits.runtime_sec",
                il.runtime_sec,
                1,
                MAX_SEC,
                MAX_SEC_WHY,
            ),
            ("mem_pool_mb", self.mem_pool_mb, 1, MAX_MB, MAX_MB_WHY),
            (
                "scaling.max_instances",
                as_u64(self.scaling.max_instances),
                1,
                host.pid_max,
                "one process per instance at least: the kernel's pid_max",
            ),
            (
                "http.header_timeout_ms",
                self.http.header_timeout_ms,
                1,
                MAX_MS,
                MAX_SEC_WHY,
            ),
            (
                "http.idle_timeout_ms",
                self.http.idle_timeout_ms,
                1,
                MAX_MS,
                MAX_SEC_WHY,
            ),
            (
                "http.max_connections",
                as_u64(self.http.max_connections),
                1,
                as_u64(max_connections_for(host.fd_limit)),
                &fds,
            ),
            (
                "scaling.blanks",
                as_u64(self.scaling.blanks),
                0,
                as_u64(MAX_BLANKS),
                "each holds ~2 MiB and one process while it waits",
            ),
        ];
        for (key, value, least, most, why) in ranges {
            if value < least {
                return Err(bad(key, format!("must be at least {least}, got {value}")));
            }
            if value > most {
                return Err(bad(
                    key,
                    format!("must be at most {most} ({why}), got {value}"),
                ));
            }
        }
        // The installer's sandbox does not draw on the pool, so only the
        // lambdas' limit has to fit in it.
        if self.mem_pool_mb < l.mem_mb {
            return Err(bad(
                "mem_pool_mb",
                format!(
                    "{} MiB is less than limits.mem_mb ({} MiB): no lambda sandbox could ever start; raise mem_pool_mb to at least {} or lower limits.mem_mb",
                    self.mem_pool_mb, l.mem_mb, l.mem_mb
                ),
            ));
        }
        for (i, broker) in self.triggers.allowed_brokers.iter().enumerate() {
            let parsed = format!("nats://{broker}")
                .parse::<ol_lambda::ol_yaml::queue::BrokerUrl>()
                .ok()
                .filter(|url| url.address().eq_ignore_ascii_case(broker));
            if broker != "*" && parsed.is_none() {
                return Err(bad(
                    &format!("triggers.allowed_brokers[{i}]"),
                    format!(
                        "`{broker}` is not HOST:PORT (e.g. 127.0.0.1:4222, [::1]:4222) or \"*\""
                    ),
                ));
            }
        }
        if self.worker_host.trim().is_empty() {
            return Err(bad(
                "worker_host",
                "must name an interface to listen on, e.g. 127.0.0.1".into(),
            ));
        }
        self.admin.check(
            &self.worker_host,
            is_loopback_host(&self.worker_host),
            !self.registry_is_http(),
        )?;
        if self.python.is_empty() {
            return Err(bad("python", "must name a Python interpreter".into()));
        }
        if self.features.source_builds && self.sandbox == SandboxKind::Process {
            return Err(bad(
                "features.source_builds",
                "needs sandbox \"sock\": process sandboxes cannot keep build code off the network"
                    .into(),
            ));
        }
        if self.base.is_self_contained() && self.sandbox == SandboxKind::Process {
            return Err(bad(
                "base",
                "a debootstrap base needs sandbox \"sock\" (process sandboxes run the host's Python); use -o sandbox=sock as root".into(),
            ));
        }
        self.registry_s3_config()?;
        Ok(())
    }

    /// The Chrome trace file to write (`trace.file`), if any.
    pub fn trace_file(&self, worker_dir: &Path) -> Option<PathBuf> {
        (!self.trace.file.is_empty()).then(|| worker_dir.join(&self.trace.file))
    }

    /// The S3 registry `registry` names (`s3://BUCKET[/PREFIX]`) with
    /// `registry_s3` and, for what that leaves empty, this process's AWS
    /// environment variables; `None` for other registries. A value that
    /// can never work is an error naming its key.
    pub fn registry_s3_config(&self) -> Result<Option<S3Config>, ConfigError> {
        self.registry_s3_config_with(|k| std::env::var(k).ok())
    }

    /// [`Self::registry_s3_config`] with the environment variables `env`
    /// looks up.
    pub fn registry_s3_config_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<S3Config>, ConfigError> {
        if !self.registry.starts_with("s3://") {
            return Ok(None);
        }
        let named = |e: S3ConfigError| {
            let key = match e.field {
                "url" => "registry".to_string(),
                field => format!("registry_s3.{field}"),
            };
            bad(&key, e.message)
        };
        let s3 = &self.registry_s3;
        let config = S3Config {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            access_key: s3.access_key.clone(),
            secret_key: s3.secret_key.clone(),
            allow_http: s3.allow_http,
            ..S3Config::from_url(&self.registry).map_err(named)?
        }
        .with_env(env);
        config.check().map_err(named)?;
        Ok(Some(config))
    }

    /// Whether `registry` is a directory (not an `http(s)://` or `s3://` URL).
    pub fn registry_is_local(&self) -> bool {
        !self.registry_is_http() && !self.registry.starts_with("s3://")
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
        dir_setting(worker_dir, raw, "registry")
    }

    /// The host part of the address the worker binds: `worker_host`
    /// without the brackets of an IPv6 literal.
    pub fn bind_host(&self) -> &str {
        unbracket(self.worker_host.trim())
    }

    /// The base URL (`http://host:port`) at which a client on this machine
    /// reaches a worker listening on `worker_host` and `port`: loopback
    /// when it listens on every address (0.0.0.0, ::), else the address it
    /// listens on (the `ol` command's own requests: a worker bound to one
    /// address does not answer on 127.0.0.1).
    pub fn local_url(&self, port: u16) -> String {
        let host = match self.bind_host().parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) if ip.is_unspecified() => "127.0.0.1".to_string(),
            Ok(IpAddr::V6(ip)) if ip.is_unspecified() => "[::1]".to_string(),
            Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
            Ok(ip) => ip.to_string(),
            Err(_) => self.bind_host().to_string(),
        };
        format!("http://{host}:{port}")
    }
}

/// The directory a path setting names: `default` in `root` when it is
/// empty, else the setting, relative ones taken from `root` (the
/// directory of the config file).
pub fn dir_setting(root: &Path, setting: &str, default: &str) -> PathBuf {
    root.join(if setting.is_empty() { default } else { setting })
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
    fn the_descriptor_table_is_made_to_hold_its_bound_or_the_limit() {
        let limit = raise_fd_limit();
        let bound = PRESIZED_FDS.min(limit);
        let grew_at = presize_fd_table(limit).expect("a descriptor at the top");
        assert!(grew_at >= bound - 1, "{grew_at}");
        let status = fs::read_to_string("/proc/self/status").expect("status");
        let size: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize");
        assert!(size >= bound, "table of {size}, {bound} wanted");
        assert_eq!(presize_fd_table(0), None);
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
    fn admin_routes_are_keyed_by_default_and_open_only_on_loopback_without_a_key() {
        use crate::access::Access;
        let c = Config::default();
        assert!(c.admin.key.is_empty() && c.admin.key_file.is_empty());
        for access in [
            c.admin.registry_write,
            c.admin.registry_read,
            c.admin.stats,
            c.admin.metrics,
        ] {
            assert_eq!(access, Access::Key);
        }
        for host in ["127.0.0.1", "localhost", "::1"] {
            Config::from_value(json!({"worker_host": host})).expect(host);
        }
        let err = Config::from_value(json!({"worker_host": "0.0.0.0"})).expect_err("no key");
        assert!(
            err.to_string().starts_with("config key `admin.key`"),
            "{err}"
        );
        let c = Config::from_value(json!({
            "worker_host": "0.0.0.0",
            "admin": {"key_file": "/etc/ol/admin-key", "metrics": "off", "stats": "open"}
        }))
        .expect("key file");
        assert_eq!(
            (c.admin.metrics, c.admin.stats),
            (Access::Off, Access::Open)
        );
        // A worker reading a remote registry has no registry routes to guard.
        Config::from_value(json!({
            "worker_host": "0.0.0.0",
            "registry": "http://10.0.0.9:5000/registry",
            "admin": {"stats": "off", "metrics": "off"}
        }))
        .expect("remote registry");
        let err = Config::from_value(json!({"admin": {"stats": "public"}})).expect_err("variant");
        assert!(
            err.to_string().starts_with("config key `admin.stats`"),
            "{err}"
        );
        let err = Config::from_value(json!({"admin": {"keyfile": "x"}})).expect_err("typo");
        assert!(err.to_string().contains("keyfile"), "{err}");
    }

    #[test]
    fn local_url_reaches_the_address_bound() {
        let url = |host: &str| {
            Config {
                worker_host: host.into(),
                ..Config::default()
            }
            .local_url(5000)
        };
        assert_eq!(url("127.0.0.1"), "http://127.0.0.1:5000");
        assert_eq!(url("0.0.0.0"), "http://127.0.0.1:5000");
        assert_eq!(url("::"), "http://[::1]:5000");
        assert_eq!(url("[::1]"), "http://[::1]:5000");
        assert_eq!(url("::1"), "http://[::1]:5000");
        assert_eq!(url("10.1.2.3"), "http://10.1.2.3:5000");
        assert_eq!(url("localhost"), "http://localhost:5000");
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

    /// No AWS environment at all.
    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn an_s3_registry_takes_its_store_and_keys_from_registry_s3() {
        let c = Config::from_value(json!({
            "registry": "s3://code/team/",
            "registry_s3": {
                "endpoint": "http://127.0.0.1:9000",
                "access_key": "AK",
                "secret_key": "SK",
                "allow_http": true
            }
        }))
        .expect("config");
        let s3 = c
            .registry_s3_config_with(no_env)
            .expect("valid")
            .expect("an s3 registry");
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("code", "team"));
        assert_eq!(s3.endpoint, "http://127.0.0.1:9000");
        assert_eq!(
            (s3.access_key.as_str(), s3.secret_key.as_str()),
            ("AK", "SK")
        );
        assert!(s3.allow_http);
        assert_eq!(
            Config::default()
                .registry_s3_config_with(no_env)
                .expect("dir"),
            None
        );
        let shown = format!("{c:?}");
        assert!(shown.contains("AK") && !shown.contains("\"SK\""), "{shown}");
    }

    #[test]
    fn an_s3_registry_takes_what_registry_s3_leaves_empty_from_the_environment() {
        let c = Config {
            registry: "s3://code".into(),
            ..Config::default()
        };
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("envkey".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("envsecret".to_string()),
            "AWS_REGION" => Some("eu-central-1".to_string()),
            _ => None,
        };
        let s3 = c.registry_s3_config_with(env).expect("valid").expect("s3");
        assert_eq!(
            (s3.access_key.as_str(), s3.region.as_str()),
            ("envkey", "eu-central-1")
        );
        assert_eq!(s3.endpoint, "", "AWS itself");
        let err = c
            .registry_s3_config_with(no_env)
            .expect_err("no keys anywhere");
        assert!(
            err.to_string()
                .starts_with("config key `registry_s3.access_key`: "),
            "{err}"
        );
    }

    #[test]
    fn s3_registry_values_that_can_never_work_are_refused_naming_the_key() {
        let keys = json!({"access_key": "AK", "secret_key": "SK"});
        let cases = [
            (
                json!({"registry": "s3://Bad_Bucket/x", "registry_s3": keys}),
                "registry",
                "bucket name",
            ),
            (
                json!({"registry": "s3://code/a//b", "registry_s3": keys}),
                "registry",
                "prefix",
            ),
            (
                json!({"registry": "s3://code", "registry_s3": {"endpoint": "http://m:9000", "access_key": "AK", "secret_key": "SK"}}),
                "registry_s3.allow_http",
                "plain http",
            ),
            (
                json!({"registry": "s3://code", "registry_s3": {"endpoint": "m:9000", "access_key": "AK", "secret_key": "SK"}}),
                "registry_s3.endpoint",
                "not a URL",
            ),
            (
                json!({"registry": "s3://code", "registry_s3": {"access_key": "AK"}}),
                "registry_s3.secret_key",
                "AWS_SECRET_ACCESS_KEY",
            ),
        ];
        for (value, key, says) in cases {
            let parsed: Config = serde_json::from_value(value.clone()).expect("well-typed");
            let err = parsed
                .registry_s3_config_with(no_env)
                .expect_err(&value.to_string());
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("config key `{key}`: ")) && msg.contains(says),
                "{value}: {msg}"
            );
            assert!(!msg.contains("SK"), "no secret in errors: {msg}");
        }
        let err = Config::from_value(json!({"registry_s3": {"secret": "x"}})).expect_err("typo");
        let msg = err.to_string();
        assert!(
            msg.contains("registry_s3") && msg.contains("secret"),
            "{msg}"
        );
        let err =
            Config::from_value(json!({"registry_s3": {"allow_http": "yes"}})).expect_err("type");
        assert!(
            err.to_string()
                .starts_with("config key `registry_s3.allow_http`"),
            "{err}"
        );
    }

    #[test]
    fn trigger_brokers_and_caps_are_checked() {
        let ok = Config::from_value(json!({"triggers": {
            "allowed_brokers": ["127.0.0.1:4222", "nats.example:7422", "[::1]:4222", "*"],
            "max_concurrency": 8, "max_retries": 0, "connect_timeout_ms": 100, "ack_wait_ms": 1000
        }}))
        .expect("valid");
        assert_eq!(ok.triggers.allowed_brokers.len(), 4);
        assert_eq!(
            Config::default().triggers.allowed_brokers,
            Vec::<String>::new()
        );
        for (value, key, why) in [
            (
                json!({"allowed_brokers": ["127.0.0.1"]}),
                "triggers.allowed_brokers[0]",
                "is not HOST:PORT",
            ),
            (
                json!({"allowed_brokers": ["a:1", "nats://b:2"]}),
                "triggers.allowed_brokers[1]",
                "is not HOST:PORT",
            ),
            (
                json!({"allowed_brokers": ["user@h:1"]}),
                "triggers.allowed_brokers[0]",
                "is not HOST:PORT",
            ),
            (
                json!({"max_concurrency": 0}),
                "triggers.max_concurrency",
                "at least 1",
            ),
            (
                json!({"max_concurrency": 65}),
                "triggers.max_concurrency",
                "at most 64",
            ),
            (
                json!({"max_retries": 21}),
                "triggers.max_retries",
                "at most 20",
            ),
            (
                json!({"ack_wait_ms": 999}),
                "triggers.ack_wait_ms",
                "at least 1000",
            ),
            (json!({"allowed": []}), "triggers.allowed", "unknown field"),
        ] {
            let err = Config::from_value(json!({ "triggers": value })).expect_err(key);
            let message = err.to_string();
            assert!(message.contains(key) && message.contains(why), "{message}");
        }
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

    /// A machine for the checks that depend on one.
    fn host() -> Host {
        Host {
            pid_max: 32_768,
            cpus: 2,
            fd_limit: 20_000,
        }
    }

    #[test]
    fn http_block_has_defaults_and_strict_keys() {
        let c = Config::default();
        assert_eq!(
            (c.http.header_timeout_ms, c.http.idle_timeout_ms),
            (10_000, 60_000)
        );
        assert!(c.http.max_connections >= 1 && c.http.max_connections <= 1024);
        let mut v = defaults_value();
        apply_override(&mut v, "http.max_connections=10").expect("override");
        apply_override(&mut v, "http.header_timeout_ms=250").expect("override");
        let c = Config::from_value(v).expect("config");
        assert_eq!(
            (c.http.max_connections, c.http.header_timeout_ms),
            (10, 250)
        );
        let err = Config::from_value(json!({"http": {"header_timeout": 5}})).expect_err("typo");
        let msg = err.to_string();
        assert!(
            msg.contains("http") && msg.contains("header_timeout"),
            "{msg}"
        );
        let err = Config::from_value(json!({"http": {"max_connections": -1}})).expect_err("type");
        assert!(
            err.to_string()
                .starts_with("config key `http.max_connections`"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_valid_on_any_machine_they_are_made_on() {
        let c = Config::default();
        c.validate_on(&Host::read()).expect("defaults");
        c.validate_on(&host()).expect("defaults on a small machine");
    }

    #[test]
    fn values_that_can_never_work_are_refused_naming_the_key() {
        let u32_max = u32::MAX.to_string();
        let u64_max = u64::MAX.to_string();
        let cases: &[(&[&str], &str, &str)] = &[
            (&["mem_pool_mb=0"], "mem_pool_mb", "at least 1"),
            (
                &["mem_pool_mb=40", "limits.mem_mb=50"],
                "mem_pool_mb",
                "limits.mem_mb",
            ),
            (&["limits.mem_mb=0"], "limits.mem_mb", "at least 1"),
            (
                &["limits.mem_mb=17592186044416", "mem_pool_mb=17592186044416"],
                "limits.mem_mb",
                "63 bits",
            ),
            (&["limits.procs=0"], "limits.procs", "at least"),
            (
                &["sandbox=sock", "limits.procs=1"],
                "limits.procs",
                "at least 2",
            ),
            (
                &[&format!("limits.procs={u32_max}")],
                "limits.procs",
                "at most 32768 (the kernel's pid_max)",
            ),
            (&["limits.procs=32769"], "limits.procs", "pid_max"),
            (
                &["limits.cpu_percent=0"],
                "limits.cpu_percent",
                "at least 1",
            ),
            (
                &["limits.cpu_percent=201"],
                "limits.cpu_percent",
                "at most 200",
            ),
            (
                &["limits.swappiness=101"],
                "limits.swappiness",
                "at most 100",
            ),
            (
                &["limits.runtime_sec=0"],
                "limits.runtime_sec",
                "at least 1",
            ),
            (&["limits.runtime_sec=86401"], "limits.runtime_sec", "a day"),
            (
                &[&format!("limits.runtime_sec={u64_max}")],
                "limits.runtime_sec",
                "at most 86400",
            ),
            (
                &["limits.max_body_mb=0"],
                "limits.max_body_mb",
                "at least 1",
            ),
            (
                &[&format!("limits.max_body_mb={u64_max}")],
                "limits.max_body_mb",
                "at most 1024",
            ),
            (
                &["limits.max_response_mb=0"],
                "limits.max_response_mb",
                "at least 1",
            ),
            (
                &["limits.max_response_mb=1025"],
                "limits.max_response_mb",
                "protocol",
            ),
            (&["limits.disk_mb=0"], "limits.disk_mb", "at least 1"),
            (
                &[&format!("limits.disk_mb={u64_max}")],
                "limits.disk_mb",
                "63 bits",
            ),
            (&["limits.log_kb=0"], "limits.log_kb", "at least 1"),
            (
                &[&format!("limits.log_kb={u64_max}")],
                "limits.log_kb",
                "63 bits",
            ),
            (
                &["installer_limits.mem_mb=0"],
                "installer_limits.mem_mb",
                "at least 1",
            ),
            (
                &["installer_limits.runtime_sec=0"],
                "installer_limits.runtime_sec",
                "at least 1",
            ),
            (
                &["installer_limits.runtime_sec=999999"],
                "installer_limits.runtime_sec",
                "a day",
            ),
            (
                &["scaling.max_instances=0"],
                "scaling.max_instances",
                "at least 1",
            ),
            (
                &[&format!("scaling.max_instances={u64_max}")],
                "scaling.max_instances",
                "pid_max",
            ),
            (&["scaling.blanks=1025"], "scaling.blanks", "at most 1024"),
            (
                &["http.header_timeout_ms=0"],
                "http.header_timeout_ms",
                "at least 1",
            ),
            (
                &["http.idle_timeout_ms=0"],
                "http.idle_timeout_ms",
                "at least 1",
            ),
            (
                &["http.idle_timeout_ms=86400001"],
                "http.idle_timeout_ms",
                "a day",
            ),
            (
                &["http.max_connections=0"],
                "http.max_connections",
                "at least 1",
            ),
            (
                &["http.max_connections=10001"],
                "http.max_connections",
                "descriptor limit of 20000",
            ),
            (&["worker_host="], "worker_host", "interface"),
            (&["worker_host=0.0.0.0"], "admin.key", "beyond loopback"),
            (
                &[
                    "worker_host=10.1.2.3",
                    "admin.key=0123456789abcdef",
                    "admin.registry_write=open",
                ],
                "admin.registry_write",
                "beyond loopback",
            ),
            (&["admin.key=tooshort"], "admin.key", "too short"),
        ];
        for (overrides, key, says) in cases {
            let mut v = defaults_value();
            // A pool that fits every sandbox unless the case says otherwise.
            apply_override(&mut v, "mem_pool_mb=1024").expect("pool");
            for o in *overrides {
                apply_override(&mut v, o).expect(o);
            }
            let parsed: Config = serde_json::from_value(v).expect("well-typed");
            let err = parsed
                .validate_on(&host())
                .expect_err(&format!("{overrides:?}"));
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("config key `{key}`: ")) && msg.contains(says),
                "{overrides:?}: {msg}"
            );
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
        // The bounds themselves are fine.
        let mut v = defaults_value();
        for o in [
            "limits.procs=32768",
            "sandbox=process",
            "limits.cpu_percent=200",
            "limits.runtime_sec=86400",
            "limits.max_body_mb=1024",
            "limits.max_response_mb=1024",
            "limits.swappiness=100",
            "http.max_connections=10000",
            "mem_pool_mb=50",
            "installer_limits.mem_mb=250",
            "scaling.max_queue=0",
            "scaling.idle_timeout_ms=0",
            "pause_after_idle_ms=0",
        ] {
            apply_override(&mut v, o).expect(o);
        }
        let parsed: Config = serde_json::from_value(v).expect("well-typed");
        parsed.validate_on(&host()).expect("bounds are valid");
    }
}
