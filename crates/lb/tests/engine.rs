//! The policies on the real engine (HAProxy, which must be installed:
//! `.ci/run` installs it): the config `ol lb` writes is accepted for
//! every policy; `name` is a consistent-hash ring (adding a worker moves
//! about 1/N of the lambdas, all to the new worker; removing one moves
//! only its own); `content` keeps a key on one worker whether it comes
//! in a header, a query parameter or a JSON body. The workers are small
//! HTTP servers of this test that answer with their own number.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use ol_lb::haproxy::{self, EngineSettings};
use ol_lb::supervisor::Engine;
use ol_lb::{ContentKey, Policy, PolicyKind, Server};

/// A worker stand-in: answers every request with its number (and
/// `/status` with `ready`), one request per connection.
struct Backend {
    server: Server,
}

impl Backend {
    fn start(id: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || serve(conn, id));
            }
        });
        Self {
            server: Server(addr),
        }
    }
}

fn serve(conn: TcpStream, id: usize) {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    let mut length = 0usize;
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let is_status = line.contains(" /status ");
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let answer = if is_status {
        "ready".to_string()
    } else {
        id.to_string()
    };
    let _ = reader.get_mut().write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .as_bytes(),
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn settings(dir: &Path, policy: Policy) -> EngineSettings {
    EngineSettings {
        dir: dir.to_path_buf(),
        host: "127.0.0.1".into(),
        port: free_port(),
        policy,
        threads: 1,
        call_timeout_s: 30,
    }
}

/// Calls the balancer; which backend answered.
fn call(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> usize {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = agent
        .run(req.body(body.as_bytes().to_vec()).expect("request"))
        .expect("call through the balancer");
    let text = resp.body_mut().read_to_string().expect("body");
    text.parse()
        .unwrap_or_else(|_| panic!("{path}: {} {text}", resp.status()))
}

/// Waits until the engine sees exactly `up` servers up.
fn wait_up(engine: &Engine, up: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let servers = engine.api().servers().expect("show stat");
        if servers.iter().filter(|s| s.is_up()).count() == up && servers.len() == up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "servers never {up} up: {servers:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes `backend` from the engine, waits until `left` are up.
fn remove(engine: &Engine, backend: &Backend, left: usize) {
    engine
        .api()
        .remove_server(&backend.server)
        .expect("del server");
    wait_up(engine, left);
}

const NAMES: usize = 400;

/// Which backend each of [`NAMES`] lambdas goes to.
fn placement(port: u16) -> BTreeMap<String, usize> {
    (0..NAMES)
        .map(|i| {
            let name = format!("fn{i}");
            let path = format!("/run/{name}/some/path?q={i}");
            (name, call(port, "POST", &path, &[], "{}"))
        })
        .collect()
}

fn start(policy: Policy, backends: &[Backend]) -> (tempfile::TempDir, EngineSettings, Engine) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = settings(tmp.path(), policy);
    let binary = haproxy::find_binary().expect("haproxy is installed (apt-get install haproxy)");
    let servers: BTreeSet<Server> = backends.iter().map(|b| b.server).collect();
    let engine = Engine::start(&s, &binary, &servers).expect("engine starts");
    wait_up(&engine, backends.len());
    (tmp, s, engine)
}

#[test]
fn every_policy_gives_a_config_haproxy_accepts() {
    let binary = haproxy::find_binary().expect("haproxy is installed (apt-get install haproxy)");
    let tmp = tempfile::tempdir().expect("tempdir");
    let servers: BTreeSet<Server> = [Server("127.0.0.1:1".parse().expect("addr"))].into();
    let keys = [
        ContentKey::Header("X-Session".into()),
        ContentKey::Query("db".into()),
        ContentKey::Json("user".into()),
    ];
    let policies = [
        PolicyKind::RoundRobin,
        PolicyKind::LeastLoaded,
        PolicyKind::Name,
    ]
    .map(|kind| Policy::new(kind, 0.25, None))
    .into_iter()
    .chain(keys.map(|k| Policy::new(PolicyKind::Content, 0.25, Some(k))));
    for policy in policies {
        let s = settings(tmp.path(), policy.expect("policy"));
        haproxy::write_error_pages(&s).expect("error pages");
        std::fs::write(s.config_file(), haproxy::render_config(&s, &servers)).expect("write");
        haproxy::check_config(&binary, &s.config_file())
            .unwrap_or_else(|e| panic!("{}: {e}", s.policy));
    }
}

#[test]
fn name_is_a_ring_adding_or_removing_a_worker_moves_about_one_nth() {
    let backends: Vec<Backend> = (0..4).map(Backend::start).collect();
    let policy = Policy::new(PolicyKind::Name, 0.25, None).expect("policy");
    let (_tmp, _s, engine) = start(policy, &backends[..3]);
    let port = _s.port;
    let before = placement(port);
    // Sticky: the same lambda, the same worker.
    assert_eq!(
        placement(port),
        before,
        "a lambda changed workers with nothing changed"
    );
    let used: BTreeSet<usize> = before.values().copied().collect();
    assert_eq!(used, BTreeSet::from([0, 1, 2]), "lambdas on every worker");

    // Add worker 3: only lambdas that move to it move, about 1/4 of them.
    engine
        .api()
        .add_server(&backends[3].server)
        .expect("add server");
    wait_up(&engine, 4);
    let added = placement(port);
    let moved: Vec<&String> = before.keys().filter(|n| before[*n] != added[*n]).collect();
    assert!(
        moved.iter().all(|n| added[*n] == 3),
        "a lambda moved between old workers"
    );
    let share = moved.len() as f64 / NAMES as f64;
    eprintln!("adding a 4th worker to 3 moved {share:.3} of {NAMES} lambdas");
    assert!(
        (0.10..=0.40).contains(&share),
        "adding 1 worker to 3 moved {share:.2} of the lambdas (about 0.25 expected)"
    );

    // Remove it again: every lambda is back where it was.
    remove(&engine, &backends[3], 3);
    assert_eq!(
        placement(port),
        before,
        "removing the new worker did not restore the ring"
    );

    // Back again (new to the engine, same address): the same ring as
    // with it before.
    engine
        .api()
        .add_server(&backends[3].server)
        .expect("add server");
    wait_up(&engine, 4);
    assert_eq!(
        placement(port),
        added,
        "the worker that came back is elsewhere on the ring"
    );
    remove(&engine, &backends[3], 3);

    // Remove worker 0: only its lambdas move.
    remove(&engine, &backends[0], 2);
    let removed = placement(port);
    for (name, was) in &before {
        if *was != 0 {
            assert_eq!(removed[name], *was, "{name} moved though its worker stayed");
        } else {
            assert_ne!(removed[name], 0);
        }
    }
    engine.stop();

    // A new engine on the same workers, learnt in another order (from
    // its config this time): the same ring.
    let policy = Policy::new(PolicyKind::Name, 0.25, None).expect("policy");
    let (_tmp2, s2, engine2) = start(policy, &backends[1..4]);
    engine2
        .api()
        .add_server(&backends[0].server)
        .expect("add server");
    wait_up(&engine2, 4);
    assert_eq!(placement(s2.port), added, "another engine, another ring");
    engine2.stop();
}

#[test]
fn content_keeps_a_key_on_one_worker_wherever_the_key_is() {
    let backends: Vec<Backend> = (0..3).map(Backend::start).collect();
    let cases = [
        ContentKey::Json("user".into()),
        ContentKey::Header("X-Session".into()),
        ContentKey::Query("db".into()),
    ];
    for key in cases {
        let policy = Policy::new(PolicyKind::Content, 0.25, Some(key.clone())).expect("policy");
        let (_tmp, s, engine) = start(policy, &backends);
        let send = |user: usize, lambda: &str| {
            let u = format!("u{user}");
            let path = format!("/run/{lambda}?db={u}");
            match &key {
                ContentKey::Json(_) => call(
                    s.port,
                    "POST",
                    &format!("/run/{lambda}"),
                    &[("content-type", "application/json")],
                    &format!(r#"{{"other": [1, 2], "user": "{u}", "n": {user}}}"#),
                ),
                ContentKey::Header(_) => call(s.port, "POST", &path, &[("X-Session", &u)], "{}"),
                ContentKey::Query(_) => call(s.port, "GET", &path, &[], ""),
            }
        };
        let mut used = BTreeSet::new();
        for user in 0..30 {
            // Whatever the lambda, a user's calls land on one worker.
            let first = send(user, "a");
            used.insert(first);
            for lambda in ["b", "c", "a"] {
                assert_eq!(send(user, lambda), first, "{key}: user {user} moved");
            }
        }
        assert!(
            used.len() >= 2,
            "{key}: 30 users all on one worker: {used:?}"
        );
        engine.stop();
    }
}
