//! The engine: HAProxy, driven. [`render_config`] writes its config from
//! the policy and the workers, [`write_error_pages`] the balancer's own
//! errors as JSON (and, for gRPC calls, as gRPC statuses),
//! [`server_keywords`] the health settings every server gets (in the
//! config and when added at run time), and [`spawn`] starts it in the
//! foreground under the supervisor (docs/lb.md has why HAProxy).
//!
//! HTTP calls go to the [`BACKEND`]; gRPC calls (content type
//! `application/grpc…`, over h2c, which HAProxy detects on the cleartext
//! listener) to the [`GRPC_BACKEND`], whose servers are the same workers
//! spoken to in HTTP/2 (`proto h2`), with the same health settings.
//! (HAProxy 2.6 cannot `track` a server added at run time, so each
//! backend checks its servers itself: two light checks per worker.)

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::LbError;
use crate::policy::Policy;
use crate::workers::Server;

/// The backend every worker is a server of.
pub const BACKEND: &str = "workers";
/// The backend of gRPC calls: every worker again, in HTTP/2.
pub const GRPC_BACKEND: &str = "workers-grpc";
/// The one gRPC method the balancer passes on.
pub const GRPC_METHOD: &str = ol_worker::grpc::proto::INVOKE_PATH;
/// How often a worker's `/status` is checked, in milliseconds.
pub const CHECK_INTERVAL_MS: u32 = 250;
/// Failed checks in a row that take a worker out (a connection error on
/// a call takes it out at once).
pub const CHECKS_TO_FALL: u32 = 2;
/// Passed checks in a row that bring a worker back.
pub const CHECKS_TO_RISE: u32 = 2;

/// What the balancer is asked to be.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The state dir: config, admin socket, error pages.
    pub dir: PathBuf,
    /// The address to listen on.
    pub host: String,
    /// The port to listen on.
    pub port: u16,
    /// How calls are spread.
    pub policy: Policy,
    /// HAProxy's threads.
    pub threads: u16,
    /// How long a call may run on a worker before the balancer gives up
    /// on it (504), in seconds.
    pub call_timeout_s: u64,
}

impl EngineSettings {
    /// The engine's config file.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    /// The engine's runtime API socket.
    pub fn admin_socket(&self) -> PathBuf {
        admin_socket(&self.dir)
    }

    fn errors_dir(&self) -> PathBuf {
        self.dir.join("errors")
    }
}

/// The runtime API socket of the balancer whose state dir is `dir`.
pub fn admin_socket(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

/// The health settings of each server: checked on `/status` every
/// [`CHECK_INTERVAL_MS`] (out after [`CHECKS_TO_FALL`] failures, back
/// after [`CHECKS_TO_RISE`] passes), and taken out at once when a call
/// cannot connect (`observe layer4`), so a dead worker stops getting
/// calls within a second.
pub fn server_keywords() -> String {
    format!(
        "check inter {CHECK_INTERVAL_MS}ms fastinter {fast}ms downinter {CHECK_INTERVAL_MS}ms \
         rise {CHECKS_TO_RISE} fall {CHECKS_TO_FALL} observe layer4 error-limit 1 on-error mark-down",
        fast = CHECK_INTERVAL_MS / 2,
    )
}

/// The balancer's own errors (each a JSON body like the worker's), by
/// status; HAProxy answers with them when no worker does.
const ERROR_PAGES: &[(u16, &str, &str)] = &[
    (
        400,
        "Bad Request",
        "the balancer could not parse this request",
    ),
    (403, "Forbidden", "the balancer refused this request"),
    (408, "Request Timeout", "the request did not arrive in time"),
    (
        500,
        "Internal Server Error",
        "the balancer failed on this request",
    ),
    (
        502,
        "Bad Gateway",
        "the worker closed the connection or sent an invalid response mid-call",
    ),
    (
        503,
        "Service Unavailable",
        "no worker is available: every worker is down, or the call waited too long for one",
    ),
    (504, "Gateway Timeout", "the worker did not answer in time"),
];

/// The balancer's own errors for gRPC calls, by the HTTP status HAProxy
/// would have answered: gRPC statuses (code, message) in a
/// "trailers-only" response, which is how gRPC says a call failed before
/// any message.
const GRPC_ERROR_PAGES: &[(u16, u8, &str)] = &[
    (400, 13, "the balancer could not parse this call"),
    (403, 7, "the balancer refused this call"),
    (408, 4, "the call did not arrive in time"),
    (500, 13, "the balancer failed on this call"),
    (
        502,
        14,
        "the worker closed the connection or sent an invalid response mid-call",
    ),
    (
        503,
        14,
        "no worker is available: every worker is down, or the call waited too long for one",
    ),
    (504, 4, "the worker did not answer in time"),
];

/// The gRPC status of a call through the balancer without the
/// `ol-lambda` metadata (`INVALID_ARGUMENT`).
const GRPC_NO_LAMBDA: (u8, &str) = (
    3,
    "ol lb balances gRPC calls by their ol-lambda metadata: set it to the lambda's name",
);
/// The error page (`errors/grpc-NAME.http`) of [`GRPC_NO_LAMBDA`].
const GRPC_NO_LAMBDA_PAGE: &str = "no-lambda";
/// The error page of [`GRPC_NOT_A_CALL`].
const GRPC_NOT_A_CALL_PAGE: &str = "not-a-call";
/// The gRPC status of a call of another method (`UNIMPLEMENTED`).
const GRPC_NOT_A_CALL: (u8, &str) = (
    12,
    "the balancer passes on gRPC calls of /ol.v1.Lambda/Invoke only",
);

/// What the balancer answers to a path that is not a call: admin routes
/// are each worker's own, never reachable through the balancer (a worker
/// on loopback would take the balancer's connections for its own
/// machine's and open them).
const NOT_A_CALL: &str = "the balancer serves calls only: /run/NAME[/...] and /runLambda/NAME (and its own /status); a worker's other routes are reached on the worker";
/// What the balancer's `/status` answers with no worker up.
const NO_WORKER: &str = "no worker is ready";

fn json_error(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// Writes the error pages and bodies the config names into the state dir.
pub fn write_error_pages(settings: &EngineSettings) -> Result<(), LbError> {
    let dir = settings.errors_dir();
    std::fs::create_dir_all(&dir).map_err(LbError::io("cannot create", &dir))?;
    for (status, reason, message) in ERROR_PAGES {
        let body = json_error(message);
        let page = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let file = dir.join(format!("{status}.http"));
        std::fs::write(&file, page).map_err(LbError::io("cannot write", &file))?;
    }
    for (name, message) in [("not-a-call", NOT_A_CALL), ("no-worker", NO_WORKER)] {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, json_error(message)).map_err(LbError::io("cannot write", &file))?;
    }
    let pages = GRPC_ERROR_PAGES
        .iter()
        .map(|&(status, code, message)| (status.to_string(), code, message))
        .chain([
            (
                GRPC_NO_LAMBDA_PAGE.to_string(),
                GRPC_NO_LAMBDA.0,
                GRPC_NO_LAMBDA.1,
            ),
            (
                GRPC_NOT_A_CALL_PAGE.to_string(),
                GRPC_NOT_A_CALL.0,
                GRPC_NOT_A_CALL.1,
            ),
        ]);
    for (name, code, message) in pages {
        // 200 is right: gRPC carries the call's status in grpc-status.
        let page = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: {code}\r\ngrpc-message: {message}\r\ncontent-length: 0\r\ncache-control: no-cache\r\n\r\n"
        );
        let file = dir.join(format!("grpc-{name}.http"));
        std::fs::write(&file, page).map_err(LbError::io("cannot write", &file))?;
    }
    Ok(())
}

/// The whole HAProxy config for `settings` with `servers`.
pub fn render_config(settings: &EngineSettings, servers: &BTreeSet<Server>) -> String {
    let errors = settings.errors_dir();
    let errors = errors.display();
    let mut c = String::new();
    let _ = writeln!(c, "# Written by `ol lb up` at each start; edits are lost.");
    let _ = writeln!(c, "global");
    let _ = writeln!(c, "    log stdout format raw local0 notice");
    let _ = writeln!(
        c,
        "    stats socket {} mode 600 level admin",
        settings.admin_socket().display()
    );
    let _ = writeln!(c, "    nbthread {}", settings.threads);
    let _ = writeln!(c, "    maxconn 4096");
    let _ = writeln!(c, "    hard-stop-after 5s");
    let _ = writeln!(c);
    let _ = writeln!(c, "http-errors ol-errors");
    for (status, _, _) in ERROR_PAGES {
        let _ = writeln!(c, "    errorfile {status} {errors}/{status}.http");
    }
    let _ = writeln!(c);
    let _ = writeln!(c, "http-errors ol-grpc-errors");
    for (status, _, _) in GRPC_ERROR_PAGES {
        let _ = writeln!(c, "    errorfile {status} {errors}/grpc-{status}.http");
    }
    let _ = writeln!(c);
    let _ = writeln!(c, "defaults");
    let _ = writeln!(c, "    mode http");
    let _ = writeln!(c, "    log global");
    let _ = writeln!(c, "    option dontlognull");
    let _ = writeln!(c, "    errorfiles ol-errors");
    let _ = writeln!(c, "    timeout connect 1s");
    let _ = writeln!(c, "    timeout client 60s");
    let _ = writeln!(c, "    timeout http-request 10s");
    let _ = writeln!(c, "    timeout http-keep-alive 60s");
    let _ = writeln!(c, "    timeout queue 10s");
    let _ = writeln!(c, "    timeout check 1s");
    let _ = writeln!(c, "    timeout server {}s", settings.call_timeout_s);
    // A call whose connection to a worker fails is tried again, on
    // another worker: never a call a worker may have run.
    let _ = writeln!(c, "    retries 3");
    let _ = writeln!(c, "    option redispatch 1");
    let _ = writeln!(c);
    let _ = writeln!(c, "frontend ol-lb");
    let host = if settings.host.contains(':') {
        format!("[{}]", settings.host)
    } else {
        settings.host.clone()
    };
    // h2c (gRPC) is told from HTTP/1.1 by its preface on this listener.
    let _ = writeln!(c, "    bind {host}:{}", settings.port);
    let _ = writeln!(
        c,
        "    acl grpc req.hdr(content-type) -m beg application/grpc"
    );
    // A whole response from a file: HAProxy's own `content-type` and
    // `hdr` of `http-request return` drop a content type without a body.
    let _ = writeln!(
        c,
        "    http-request return errorfile {errors}/grpc-{GRPC_NOT_A_CALL_PAGE}.http if grpc !{{ path {GRPC_METHOD} }}"
    );
    let _ = writeln!(
        c,
        "    http-request return errorfile {errors}/grpc-{GRPC_NO_LAMBDA_PAGE}.http if grpc !{{ req.hdr(ol-lambda) -m found }}"
    );
    let _ = writeln!(
        c,
        "    http-request return status 200 content-type text/plain string ready if {{ path /status }} {{ nbsrv({BACKEND}) gt 0 }}"
    );
    let _ = writeln!(
        c,
        "    http-request return status 503 content-type application/json file {errors}/no-worker.json if {{ path /status }}"
    );
    let _ = writeln!(
        c,
        "    http-request return status 404 content-type application/json file {errors}/not-a-call.json if !grpc !{{ path_beg /run/ /runLambda/ }}"
    );
    let _ = writeln!(c, "    use_backend {GRPC_BACKEND} if grpc");
    let _ = writeln!(c, "    default_backend {BACKEND}");
    let _ = writeln!(c);
    let _ = writeln!(c, "backend {BACKEND}");
    for line in settings.policy.haproxy_directives() {
        let _ = writeln!(c, "    {line}");
    }
    let _ = writeln!(c, "    option httpchk GET /status");
    let _ = writeln!(c, "    http-check expect status 200");
    let keywords = server_keywords();
    for s in servers {
        let _ = writeln!(
            c,
            "    server {} {} id {} {keywords}",
            s.name(),
            s.0,
            s.engine_id()
        );
    }
    let _ = writeln!(c);
    let _ = writeln!(c, "backend {GRPC_BACKEND}");
    for line in settings.policy.haproxy_grpc_directives() {
        let _ = writeln!(c, "    {line}");
    }
    let _ = writeln!(c, "    errorfiles ol-grpc-errors");
    let _ = writeln!(c, "    option httpchk GET /status");
    let _ = writeln!(c, "    http-check expect status 200");
    for s in servers {
        let _ = writeln!(
            c,
            "    server {} {} id {} {}",
            s.name(),
            s.0,
            s.engine_id(),
            grpc_server_keywords()
        );
    }
    c
}

/// The settings of a server in the gRPC backend: HTTP/2 without TLS,
/// and the health settings of every server.
pub fn grpc_server_keywords() -> String {
    format!("proto h2 {}", server_keywords())
}

/// Finds `haproxy`: `$OL_HAPROXY`, else on `PATH`.
pub fn find_binary() -> Result<PathBuf, LbError> {
    if let Some(path) = std::env::var_os("OL_HAPROXY") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .ok_or(LbError::NoHaproxy)
}

/// Checks the config with `haproxy -c`; the error quotes what it said.
pub fn check_config(binary: &Path, config: &Path) -> Result<(), LbError> {
    let out = Command::new(binary)
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(config)
        .output()
        .map_err(LbError::io("cannot run", binary))?;
    if out.status.success() {
        return Ok(());
    }
    Err(LbError::BadConfig {
        config: config.to_path_buf(),
        said: String::from_utf8_lossy(&out.stderr).trim().to_string()
            + String::from_utf8_lossy(&out.stdout).trim(),
    })
}

/// Starts HAProxy on `config` in the foreground (`-db`: not a daemon,
/// so it is this process's child and stops with it); its log goes to
/// this process's output.
pub fn spawn(binary: &Path, config: &Path) -> Result<Child, LbError> {
    Command::new(binary)
        .arg("-db")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .spawn()
        .map_err(LbError::io("cannot start", binary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, PolicyKind};

    fn settings() -> EngineSettings {
        EngineSettings {
            dir: PathBuf::from("/run/ol-lb"),
            host: "127.0.0.1".into(),
            port: 8080,
            policy: Policy::new(PolicyKind::Name, 0.25, None).expect("policy"),
            threads: 1,
            call_timeout_s: 900,
        }
    }

    #[test]
    fn the_config_has_the_policy_health_checks_and_every_server() {
        let servers: BTreeSet<_> = ["127.0.0.1:8081", "127.0.0.1:8082"]
            .iter()
            .map(|a| Server(a.parse().expect("addr")))
            .collect();
        let c = render_config(&settings(), &servers);
        for needed in [
            "bind 127.0.0.1:8080",
            "stats socket /run/ol-lb/admin.sock mode 600 level admin",
            "balance uri path-only depth 2",
            "hash-balance-factor 125",
            "option httpchk GET /status",
            "retries 3",
            "option redispatch 1",
            "errorfile 503 /run/ol-lb/errors/503.http",
            "server 127.0.0.1:8081 127.0.0.1:8081 id ",
            " check inter 250ms",
            "observe layer4 error-limit 1 on-error mark-down",
            "if !grpc !{ path_beg /run/ /runLambda/ }",
            // gRPC: its own backend, the same workers in HTTP/2.
            "acl grpc req.hdr(content-type) -m beg application/grpc",
            "use_backend workers-grpc if grpc",
            "backend workers-grpc",
            "balance hdr(ol-lambda)",
            "errorfiles ol-grpc-errors",
            "server 127.0.0.1:8082 127.0.0.1:8082 id ",
            " proto h2 check inter 250ms",
            "http-request return errorfile /run/ol-lb/errors/grpc-no-lambda.http if grpc !{ req.hdr(ol-lambda) -m found }",
            "http-request return errorfile /run/ol-lb/errors/grpc-not-a-call.http if grpc !{ path /ol.v1.Lambda/Invoke }",
        ] {
            assert!(c.contains(needed), "{needed:?} missing from:\n{c}");
        }
        // HTTP/1.1 to the workers for HTTP calls, HTTP/2 for gRPC's.
        let (http, grpc) = c.split_once("backend workers-grpc").expect("two backends");
        assert!(!http.contains("proto h2"), "{http}");
        assert_eq!(grpc.matches(" proto h2 check ").count(), 2, "{grpc}");
        assert!(grpc.contains("option httpchk GET /status"), "{grpc}");
    }

    #[test]
    fn an_ipv6_listener_is_bracketed() {
        let mut s = settings();
        s.host = "::".into();
        assert!(render_config(&s, &BTreeSet::new()).contains("bind [::]:8080"));
    }

    #[test]
    fn error_pages_are_json_responses() -> Result<(), LbError> {
        let tmp = tempfile::tempdir().map_err(LbError::io("tempdir", Path::new("/tmp")))?;
        let mut s = settings();
        s.dir = tmp.path().to_path_buf();
        write_error_pages(&s)?;
        let page = std::fs::read_to_string(tmp.path().join("errors/503.http"))
            .map_err(LbError::io("read", tmp.path()))?;
        let (head, body) = page.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert!(
            json["error"]
                .as_str()
                .is_some_and(|e| e.contains("no worker"))
        );
        // For gRPC calls: UNAVAILABLE, in a trailers-only response.
        let page = std::fs::read_to_string(tmp.path().join("errors/grpc-503.http"))
            .map_err(LbError::io("read", tmp.path()))?;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("\r\ngrpc-status: 14\r\n"), "{page}");
        assert!(page.contains("\r\ngrpc-message: no worker"), "{page}");
        assert!(page.ends_with("content-length: 0\r\ncache-control: no-cache\r\n\r\n"));
        let page = std::fs::read_to_string(tmp.path().join("errors/grpc-no-lambda.http"))
            .map_err(LbError::io("read", tmp.path()))?;
        assert!(page.contains("\r\ngrpc-status: 3\r\n"), "{page}");
        assert!(
            page.contains("content-type: application/grpc\r\n"),
            "{page}"
        );
        Ok(())
    }
}
