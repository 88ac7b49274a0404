//! The cluster's code store, as OpenLambda's `admin registry` and `admin
//! upload` (seed 002): [`start`] runs the S3 API (`ol_registry::code_store`:
//! s3s over a directory, every request signed with the store's keys) in
//! the background and points the template at it, so workers started after
//! it read their lambdas there; [`upload`] checks a handler bundle as the
//! worker's own upload route does and stores it.
//!
//! ```text
//! ROOT/logs/registry.out|pid           the store's log and pid
//! ROOT/workers/registry/store/         its buckets (`lambdas/NAME.tar.gz`)
//! ROOT/workers/registry/registry.pid   its pid record (pid and start time)
//! ROOT/workers/registry/endpoint       the URL it was last started at
//! ```

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ol_lambda::ol_yaml;
use ol_registry::code_store::{CodeStore, DEFAULT_BUCKET, StoreConfig};
use ol_registry::{DirRegistry, Registry, S3Config, S3Registry, pack_lambda};
use ol_sandbox::pids::{pid_record, process_start_time, read_pid_record};
use ol_worker::{Config, StopOutcome, launch, stop_process};
use serde_json::json;

use crate::{Cluster, ClusterError, io_err, remove_if_present, template};

/// The environment variables the store's keys may come from (and through
/// which `registry` hands them to the process it starts, never on its
/// command line).
pub const ACCESS_KEY_ENV: &str = "OL_REGISTRY_ACCESS_KEY";
/// See [`ACCESS_KEY_ENV`].
pub const SECRET_KEY_ENV: &str = "OL_REGISTRY_SECRET_KEY";
/// The shortest secret key the store takes.
const MIN_SECRET_LEN: usize = 16;
/// The region the store's clients sign for (the store takes any).
const REGION: &str = "us-east-1";
/// How long the store may take to listen after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the store may take to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The keys of an S3 store. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Keys {
    /// The access key id.
    pub access_key: String,
    /// The secret key.
    pub secret_key: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl Keys {
    /// Refuses keys the store could not use safely; the message never
    /// quotes the secret.
    fn check(&self) -> Result<(), ClusterError> {
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if self.access_key.is_empty() || !printable(&self.access_key) {
            return Err(ClusterError::Usage(
                "--access-key must be printable ASCII without spaces, and not empty".into(),
            ));
        }
        if self.secret_key.len() < MIN_SECRET_LEN || !printable(&self.secret_key) {
            return Err(ClusterError::Usage(format!(
                "--secret-key must be at least {MIN_SECRET_LEN} printable characters without spaces: anyone who guesses it can replace any lambda's code (make one with `openssl rand -hex 20`)"
            )));
        }
        Ok(())
    }
}

/// Where the store listens.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// The address bound.
    pub bind: SocketAddr,
}

impl Listen {
    /// `host` (an IP address, `[v6]`, or `localhost`) and `port`.
    pub fn parse(host: &str, port: u16) -> Result<Self, ClusterError> {
        let trimmed = ol_worker::access::unbracket(host.trim());
        let ip: IpAddr = if trimmed == "localhost" {
            Ipv4Addr::LOCALHOST.into()
        } else {
            trimmed.parse().map_err(|_| {
                ClusterError::Usage(format!(
                    "--host {host:?} is not an IP address: use 127.0.0.1 (this machine only), 0.0.0.0 (every address) or one of the machine's addresses"
                ))
            })?
        };
        Ok(Self {
            bind: SocketAddr::new(ip, port),
        })
    }

    /// The address a client on this machine reaches the store at:
    /// loopback when it listens on every address.
    fn local_ip(&self) -> IpAddr {
        match self.bind.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        }
    }

    /// The store's URL for a client on this machine, once it listens on
    /// `port`.
    pub fn endpoint(&self, port: u16) -> String {
        format!("http://{}", SocketAddr::new(self.local_ip(), port))
    }
}

/// Fails when the store of `cluster` runs already.
fn refuse_if_running(cluster: &Cluster) -> Result<(), ClusterError> {
    let Some(pid) = running(cluster) else {
        return Ok(());
    };
    Err(ClusterError::Usage(format!(
        "the registry of {} already runs (pid {pid}); stop it with `ol cluster kill --cluster {}`",
        cluster.root().display(),
        cluster.root().display()
    )))
}

/// The store of `cluster`, if its process runs: its pid.
pub fn running(cluster: &Cluster) -> Option<u32> {
    let (pid, started) = read_pid_record(&pid_record_file(cluster))?;
    (process_start_time(pid) == Some(started)).then_some(pid)
}

/// What [`start`] did.
#[derive(Debug)]
pub struct Started {
    /// The store's pid.
    pub pid: u32,
    /// Its URL, as the template now names it.
    pub endpoint: String,
    /// Its log.
    pub log: PathBuf,
    /// The lambdas of `registry/` copied into the store (those it lacked).
    pub imported: Vec<String>,
}

/// `ol cluster registry`: starts the code store in the background (`ol
/// cluster registry --foreground`, the keys in its environment), waits
/// until it listens, points the template at it (`registry`
/// `s3://lambdas`, `registry_s3` with its endpoint and keys) and copies
/// the lambdas of the cluster's `registry/` dir it lacks into it, so the
/// workers started next serve what they served before.
pub fn start(cluster: &Cluster, listen: Listen, keys: &Keys) -> Result<Started, ClusterError> {
    keys.check()?;
    refuse_if_running(cluster)?;
    // What a killed store left would pass for the new one's.
    for file in [pid_record_file(cluster), port_file(cluster)] {
        let _ = std::fs::remove_file(file);
    }
    let args: Vec<OsString> = vec![
        "cluster".into(),
        "registry".into(),
        "--cluster".into(),
        cluster.root().into(),
        "--host".into(),
        listen.bind.ip().to_string().into(),
        "--port".into(),
        listen.bind.port().to_string().into(),
        "--foreground".into(),
    ];
    let log = log_file(cluster);
    let starting = launch::spawn_detached_with(
        "the registry",
        &args,
        &[
            (ACCESS_KEY_ENV, &keys.access_key),
            (SECRET_KEY_ENV, &keys.secret_key),
        ],
        &log,
    )?;
    let pid = starting.pid();
    let pid_file = pid_file(cluster);
    std::fs::write(&pid_file, format!("{pid}\n")).map_err(io_err("cannot write", &pid_file))?;
    let waited = starting.wait_until(READY_TIMEOUT, || {
        let port: u16 = std::fs::read_to_string(port_file(cluster))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let addr = SocketAddr::new(listen.local_ip(), port);
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .is_ok()
            .then_some(port)
    });
    let port = match waited {
        Ok(port) => port,
        Err(e) => {
            let _ = std::fs::remove_file(&pid_file);
            return Err(e.into());
        }
    };
    let (endpoint, imported) = adopt(cluster, listen, port, keys)?;
    Ok(Started {
        pid,
        endpoint,
        log,
        imported,
    })
}

/// Points the template at the store listening on `port` (`registry`
/// `s3://lambdas`, `registry_s3` with its endpoint and `keys`), records
/// its endpoint, and copies the lambdas of `registry/` it lacks into it:
/// its endpoint and what was copied.
fn adopt(
    cluster: &Cluster,
    listen: Listen,
    port: u16,
    keys: &Keys,
) -> Result<(String, Vec<String>), ClusterError> {
    let endpoint = listen.endpoint(port);
    let endpoint_file = endpoint_file(cluster);
    std::fs::write(&endpoint_file, format!("{endpoint}\n"))
        .map_err(io_err("cannot write", &endpoint_file))?;
    let config = template::setconf(
        cluster,
        &json!({
            "registry": format!("s3://{DEFAULT_BUCKET}"),
            "registry_s3": {
                "endpoint": endpoint,
                "region": REGION,
                "access_key": keys.access_key,
                "secret_key": keys.secret_key,
                "allow_http": true,
            },
        })
        .to_string(),
    )?;
    let imported = import_local(cluster, &store_config(&config, None)?)?;
    Ok((endpoint, imported))
}

/// `ol cluster registry --foreground`: serves the store in this process
/// until SIGTERM or Ctrl-C, its log on stdout. Run by a user (not by
/// [`start`], which does it itself), it also points the template at the
/// store as [`start`] does.
pub fn serve(cluster: &Cluster, listen: Listen, keys: &Keys) -> Result<(), ClusterError> {
    keys.check()?;
    let detached = launch::leave_session_if_detached();
    if !detached {
        refuse_if_running(cluster)?;
    }
    let state = state_dir(cluster);
    std::fs::create_dir_all(&state).map_err(io_err("cannot create", &state))?;
    let store = CodeStore::start(StoreConfig {
        root: store_dir(cluster),
        bind: listen.bind,
        bucket: DEFAULT_BUCKET.into(),
        access_key: keys.access_key.clone(),
        secret_key: keys.secret_key.clone(),
    })?;
    let addr = store.addr();
    if !detached {
        let (endpoint, imported) = adopt(cluster, listen, addr.port(), keys)?;
        println!(
            "registry: {} now reads lambdas from {endpoint}; copied from registry/: {}",
            cluster.template().display(),
            if imported.is_empty() {
                "nothing".to_string()
            } else {
                imported.join(", ")
            }
        );
    }
    let record = pid_record_file(cluster);
    std::fs::write(&record, pid_record(std::process::id()))
        .map_err(io_err("cannot write", &record))?;
    let port = port_file(cluster);
    std::fs::write(&port, format!("{}\n", addr.port())).map_err(io_err("cannot write", &port))?;
    println!(
        "registry: serving the S3 API on {addr} (bucket {DEFAULT_BUCKET}, objects in {}, access key {})",
        store_dir(cluster).display(),
        keys.access_key
    );
    let served = store.serve_until_signal();
    let _ = std::fs::remove_file(&record);
    let _ = std::fs::remove_file(&port);
    println!("registry: stopped");
    Ok(served?)
}

/// Stops the store of `cluster` if it runs (`ol cluster kill`); a line
/// saying what became of it, or `None` when the cluster never had one.
pub fn stop(cluster: &Cluster) -> Result<Option<String>, ClusterError> {
    let had_one = state_dir(cluster).exists();
    let outcome = match running(cluster) {
        Some(pid) => stop_process(pid, STOP_TIMEOUT)?,
        None => StopOutcome::NotRunning,
    };
    for file in [
        pid_record_file(cluster),
        port_file(cluster),
        pid_file(cluster),
    ] {
        remove_if_present(&file)?;
    }
    Ok(match outcome {
        StopOutcome::NotRunning if !had_one => None,
        StopOutcome::NotRunning => Some("registry: not running".into()),
        StopOutcome::Stopped { pid } => Some(format!("registry: stopped (pid {pid})")),
        StopOutcome::Killed { pid } => Some(format!(
            "registry: killed (pid {pid}) after not stopping within {STOP_TIMEOUT:?}"
        )),
    })
}

/// Fails when the template reads its lambdas from the cluster's store
/// and the store does not run (workers would start with no code).
pub fn check_running_if_used(cluster: &Cluster, template: &Config) -> Result<(), ClusterError> {
    if !uses_own_store(cluster, template) || running(cluster).is_some() {
        return Ok(());
    }
    Err(ClusterError::Usage(format!(
        "the workers would read their lambdas from the cluster's registry at {}, which is not running: start it with `ol cluster registry --cluster {} --port PORT --access-key KEY --secret-key SECRET`, or go back to the registry/ dir with `ol cluster setconf --cluster {} '{{\"registry\": \"local\"}}'`",
        template.registry_s3.endpoint,
        cluster.root().display(),
        cluster.root().display()
    )))
}

/// The line `ol cluster status` prints for the store: `None` when the
/// template does not read from it; `Err` (the line) when it should run and
/// does not.
pub fn status_line(cluster: &Cluster, template: &Config) -> Option<Result<String, String>> {
    let endpoint = own_endpoint(cluster)?;
    let used = uses_own_store(cluster, template);
    let use_note = if used {
        "the template reads lambdas from it"
    } else {
        "the template does not use it"
    };
    Some(match running(cluster) {
        Some(pid) => Ok(format!("{endpoint} => running (pid {pid}; {use_note})")),
        None if used => Err(format!(
            "{endpoint} => not running (log: {})",
            log_file(cluster).display()
        )),
        None => Ok(format!("{endpoint} => not running ({use_note})")),
    })
}

/// What [`upload`] did.
#[derive(Debug)]
pub struct Uploaded {
    /// Where the bundle went (`s3://lambdas/NAME.tar.gz`, or the path).
    pub location: String,
    /// Its size.
    pub bytes: usize,
}

/// `ol cluster upload`: checks the handler bundle `file` (a `.tar.gz`, or
/// a directory, packed) as `POST /registry/NAME` does and stores it as
/// lambda `handler` in the registry the template names: the S3 store,
/// signed with `keys` (default: the template's), or the `registry/` dir.
/// A refused bundle, or keys the store refuses, store nothing.
pub fn upload(
    cluster: &Cluster,
    handler: &str,
    file: &Path,
    keys: Option<&Keys>,
) -> Result<Uploaded, ClusterError> {
    let bundle = read_bundle(file)?;
    let template = Config::load(&cluster.template(), &[])?;
    match store_config(&template, keys)? {
        Some(s3) => {
            let within = ol_worker::upload::ol_yaml_within(&template.limits);
            let stored = ol_registry::upload(&s3, handler, &bundle, within)?;
            Ok(Uploaded {
                location: stored.url,
                bytes: bundle.len(),
            })
        }
        None => {
            let dir = template.registry_dir(&cluster.config_dir());
            // The cache of unpacked archives is the workers' own: none here.
            let registry = DirRegistry::with_cache(dir.clone(), state_dir(cluster).join("cache"));
            let scratch = cluster.workers_dir();
            ol_worker::upload::install_checked(
                &registry,
                &scratch,
                handler,
                &bundle,
                &template.limits,
            )?;
            Ok(Uploaded {
                location: dir.join(handler).display().to_string(),
                bytes: bundle.len(),
            })
        }
    }
}

/// The bundle in `file`: a `.tar.gz` as it is, a directory packed.
fn read_bundle(file: &Path) -> Result<Vec<u8>, ClusterError> {
    if file.is_dir() {
        return Ok(pack_lambda(file)?);
    }
    std::fs::read(file).map_err(io_err("cannot read the handler bundle", file))
}

/// The S3 store `template` reads lambdas from, with `keys` in place of
/// its own when given; `None` for a local registry.
fn store_config(template: &Config, keys: Option<&Keys>) -> Result<Option<S3Config>, ClusterError> {
    let mut template = template.clone();
    if let Some(keys) = keys {
        template.registry_s3.access_key = keys.access_key.clone();
        template.registry_s3.secret_key = keys.secret_key.clone();
    }
    Ok(template.registry_s3_config()?)
}

/// Copies the lambdas of the cluster's `registry/` dir that the store
/// `s3` lacks into it; their names.
fn import_local(cluster: &Cluster, s3: &Option<S3Config>) -> Result<Vec<String>, ClusterError> {
    let Some(s3) = s3 else {
        return Ok(Vec::new());
    };
    let local = DirRegistry::with_cache(cluster.registry(), state_dir(cluster).join("cache"));
    let store = S3Registry::new(s3, state_dir(cluster).join("import-cache"))?;
    let present = store.list()?;
    let mut imported = Vec::new();
    for name in local.list()? {
        if present.contains(&name) {
            continue;
        }
        let dir = cluster.registry().join(&name);
        let bundle = if dir.is_dir() {
            pack_lambda(&dir)?
        } else {
            let file = cluster.registry().join(format!("{name}.tar.gz"));
            std::fs::read(&file).map_err(io_err("cannot read", &file))?
        };
        ol_registry::upload(s3, &name, &bundle, ol_yaml::load)?;
        imported.push(name);
    }
    Ok(imported)
}

/// Whether `template` reads its lambdas from the cluster's own store.
fn uses_own_store(cluster: &Cluster, template: &Config) -> bool {
    template.registry.starts_with("s3://")
        && own_endpoint(cluster).is_some_and(|e| e == template.registry_s3.endpoint)
}

/// The URL the cluster's store was last started at.
fn own_endpoint(cluster: &Cluster) -> Option<String> {
    let text = std::fs::read_to_string(endpoint_file(cluster)).ok()?;
    Some(text.trim().to_string())
}

/// `workers/registry/`: the store's state.
fn state_dir(cluster: &Cluster) -> PathBuf {
    cluster.workers_dir().join("registry")
}
/// `workers/registry/store/`: its buckets.
fn store_dir(cluster: &Cluster) -> PathBuf {
    state_dir(cluster).join("store")
}
/// `workers/registry/registry.pid`: the pid record the store writes.
fn pid_record_file(cluster: &Cluster) -> PathBuf {
    state_dir(cluster).join("registry.pid")
}
/// `workers/registry/registry.port`: the port it listens on.
fn port_file(cluster: &Cluster) -> PathBuf {
    state_dir(cluster).join("registry.port")
}
/// `workers/registry/endpoint`: the URL it was last started at.
fn endpoint_file(cluster: &Cluster) -> PathBuf {
    state_dir(cluster).join("endpoint")
}
/// `logs/registry.out`.
fn log_file(cluster: &Cluster) -> PathBuf {
    cluster.logs().join("registry.out")
}
/// `logs/registry.pid`: its pid, one number (as the workers').
fn pid_file(cluster: &Cluster) -> PathBuf {
    cluster.logs().join("registry.pid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(access: &str, secret: &str) -> Keys {
        Keys {
            access_key: access.into(),
            secret_key: secret.into(),
        }
    }

    #[test]
    fn keys_must_be_printable_and_the_secret_long_and_never_quoted() {
        keys("AK", "0123456789abcdef").check().expect("good keys");
        for (k, why) in [
            (keys("", "0123456789abcdef"), "--access-key"),
            (keys("a k", "0123456789abcdef"), "--access-key"),
            (keys("AK", "short-secret"), "--secret-key"),
            (keys("AK", "0123456789abcde f"), "--secret-key"),
        ] {
            let err = k.check().expect_err(why).to_string();
            assert!(err.starts_with(why), "{err}");
            assert!(!err.contains(&k.secret_key), "{err}");
        }
        assert!(!format!("{:?}", keys("AK", "0123456789abcdef")).contains("0123456789"));
    }

    #[test]
    fn the_endpoint_is_where_this_machine_reaches_the_store() {
        let at = |host: &str| Listen::parse(host, 9000).expect(host).endpoint(9000);
        assert_eq!(at("127.0.0.1"), "http://127.0.0.1:9000");
        assert_eq!(at("localhost"), "http://127.0.0.1:9000");
        assert_eq!(at("0.0.0.0"), "http://127.0.0.1:9000");
        assert_eq!(at("::"), "http://[::1]:9000");
        assert_eq!(at("[::1]"), "http://[::1]:9000");
        assert_eq!(at("10.0.0.5"), "http://10.0.0.5:9000");
        let err = Listen::parse("store.example.com", 9000).expect_err("a name");
        assert!(err.to_string().contains("--host"), "{err}");
    }
}
