//! End-to-end tests of the `sock` sandbox (root only): what a lambda cannot
//! do, its limits, and that nothing leaks (mounts, cgroups, processes).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Backend, TestWorker, assert_no_processes, mounts_mentioning, ol, stderr};

const PROBE: &str = r#"
import ctypes, errno, os, socket

def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def libc_call(name, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))

def f(event):
    port = int(event["port"])
    return {
        "uid": os.getuid(),
        "me": os.getpid(),
        "hostname": socket.gethostname(),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "shadow": attempt(lambda: open("/etc/shadow").read()),
        "root": sorted(os.listdir("/root")),
        "write_handler": attempt(lambda: open("/handler/x", "w").write("x")),
        "write_base": attempt(lambda: open("/usr/x", "w").write("x")),
        "write_tmp": attempt(lambda: open("/tmp/x", "w").write("x")),
        "write_host": attempt(lambda: open("/host/x", "w").write("x")),
        "connect_host": attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=2)),
        "interfaces": [name for _, name in socket.if_nameindex()],
        "mount": attempt(lambda: libc_call("mount", b"none", b"/tmp", b"tmpfs", 0, None)),
        "ptrace": attempt(lambda: libc_call("ptrace", 16, 1, None, None)),
        "init_module": attempt(lambda: libc_call("syscall", 175, None, 0, b"")),
        "capabilities": {
            field: open("/proc/self/status").read().split(field + ":")[1].split()[0]
            for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
        },
        "cgroups": [line.split(":")[2] for line in open("/proc/self/cgroup").read().split()],
        "clone_user_net": attempt(lambda: clone(0x10000000 | 0x40000000)),
        "clone3": attempt(lambda: libc_call("syscall", 435, None, 0)),
        "unshare_user": attempt(lambda: libc_call("unshare", 0x10000000)),
        "setns": attempt(lambda: libc_call("setns", 0, 0)),
    }

def clone(flags):
    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.syscall(56, flags | 17, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
"#;

const FORK_BOMB: &str = r#"
import os, time

def f(event):
    children = 0
    try:
        for _ in range(1000):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
    except OSError:
        pass
    return children
"#;

const MEM_HOG: &str = r#"
def f(event):
    mb = int(event)
    chunks = [bytearray(1 << 20) for _ in range(mb)]
    for c in chunks:
        c[::4096] = b"x" * len(c[::4096])
    return len(chunks)
"#;

#[test]
#[ignore = "needs root"]
fn a_lambda_forked_from_the_zygote_cannot_escape_its_sandbox() {
    check_isolation(&[]);
}

#[test]
#[ignore = "needs root"]
fn a_lambda_started_fresh_cannot_escape_its_sandbox() {
    check_isolation(&["features.import_cache="]);
}

fn check_isolation(overrides: &[&str]) {
    let w = TestWorker::start(Backend::Sock, &[("probe", &[("f.py", PROBE)])], overrides);
    let a = w.run("probe", &format!(r#"{{"port": {}}}"#, w.port));
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    assert_eq!(j["uid"], 65534, "runs as nobody");
    assert_eq!(j["hostname"], "ol-sandbox");
    // Only its own pid namespace: itself, and pid 1 (the sandbox init)
    // when it is not pid 1 itself.
    let pids: Vec<u64> = j["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .filter_map(|p| p.as_u64())
        .collect();
    let me = j["me"].as_u64().expect("own pid");
    assert!(pids.contains(&me) && pids.iter().all(|p| *p <= 2), "{j}");
    assert_eq!(j["shadow"], "ENOENT", "no host /etc/shadow in the base");
    assert_eq!(
        j["root"],
        serde_json::json!([".pyenv"]),
        "only the Python install under /root"
    );
    assert_eq!(j["write_handler"], "EROFS");
    assert_eq!(j["write_base"], "EROFS");
    assert_eq!(j["write_tmp"], "allowed");
    assert_eq!(j["write_host"], "allowed");
    assert_eq!(
        j["connect_host"], "ECONNREFUSED",
        "the host's 127.0.0.1 is not reachable"
    );
    assert_eq!(j["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(j["mount"], "EPERM");
    assert_eq!(j["ptrace"], "EPERM");
    assert_eq!(j["init_module"], "EPERM");
    // No capability in any set, the bounding set included.
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(j["capabilities"][set], "0000000000000000", "{set}");
    }
    // A cgroup namespace of its own: its cgroup is the root of every
    // hierarchy it sees, no sibling is named.
    let cgroups = j["cgroups"].as_array().expect("cgroups");
    assert!(
        !cgroups.is_empty() && cgroups.iter().all(|c| c == "/"),
        "{j}"
    );
    // No user namespace (so no capabilities anywhere, no nf_tables): not
    // through clone, clone3 or unshare; no other namespace to join.
    assert_eq!(j["clone_user_net"], "EPERM");
    assert_eq!(j["clone3"], "ENOSYS", "libc falls back to clone");
    assert_eq!(j["unshare_user"], "EPERM");
    assert_eq!(j["setns"], "EPERM");
    // The lambda's /host and /tmp are its own file systems: nothing it
    // wrote is on the host's disk.
    let scratch = w.path().join("worker/scratch");
    let on_disk: Vec<PathBuf> = fs::read_dir(&scratch)
        .expect("scratch")
        .flatten()
        .flat_map(|e| fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n == "x" || n == "host"))
        .collect();
    assert!(on_disk.is_empty(), "{on_disk:?}");
}

/// What a lambda sees of the interpreter it was forked with: the warm-ups
/// (the zygote's, after its first fork, and each blank's) load a stand-in
/// lambda and must leave nothing of it behind.
const VIEW: &str = r#"
import os, sys

def f(event):
    return {
        "path": [p for p in sys.path if "warm" in p or p in ("/ol", "")],
        "module": sys.modules[__name__].__file__,
        "stand_in": sorted(name for name, m in sys.modules.items()
                           if "warm-up" in (getattr(m, "__file__", None) or "")),
        "cwd": os.getcwd(),
        "tmp": sorted(os.listdir("/tmp")),
    }
"#;

#[test]
#[ignore = "needs root"]
fn a_lambda_sees_nothing_of_the_warm_ups() {
    // The first call's blank is forked before the zygote warmed up (and
    // does not warm up itself); later ones after both warm-ups.
    let lambdas: Vec<String> = (0..4).map(|i| format!("view{i}")).collect();
    let files: &[(&str, &str)] = &[("f.py", VIEW)];
    let named: Vec<(&str, &[(&str, &str)])> = lambdas.iter().map(|n| (n.as_str(), files)).collect();
    let w = TestWorker::start(Backend::Sock, &named, &[]);
    for name in &lambdas {
        let a = w.run(name, "null");
        assert_eq!(a.status, 200, "{name}: {}", a.body);
        let view = a.json();
        assert_eq!(view["module"], "/handler/f.py", "{name}: {view}");
        assert_eq!(view["cwd"], "/handler", "{name}: {view}");
        for empty in ["stand_in", "tmp"] {
            assert_eq!(
                view[empty],
                serde_json::json!([]),
                "{name}: {empty} in {view}"
            );
        }
        // The runtime's own dir is on the path (the zygote imported from
        // it); the stand-in's is not.
        assert_eq!(view["path"], serde_json::json!(["/ol"]), "{name}: {view}");
    }
    assert!(
        w.stats()["blank_hits"].as_u64().unwrap_or(0) >= 1,
        "some call took a blank made (and warmed up) ahead: {}",
        w.stats()
    );
}

#[test]
#[ignore = "needs root"]
fn fork_bomb_is_contained_and_the_worker_stays_up() {
    let w = TestWorker::start(
        Backend::Sock,
        &[("bomb", &[("f.py", FORK_BOMB)])],
        &["limits.procs=10"],
    );
    let a = w.run("bomb", "null");
    assert_eq!(a.status, 200, "{}", a.body);
    let children: u64 = a.body.parse().expect("a count");
    // procs counts every process of the sandbox: init, pid 1, the runtime.
    assert!((1..10).contains(&children), "{children} children");
    let a = w.run("hello", r#"{"name": "still here"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, still here!\""));
}

#[test]
#[ignore = "needs root"]
fn memory_limit_is_enforced_with_507_and_honoured_below_it() {
    let w = TestWorker::start(
        Backend::Sock,
        &[("hog", &[("f.py", MEM_HOG)])],
        &["limits.mem_mb=50"],
    );
    // mem_mb - 16 MiB fits (the interpreter itself needs ~10 MiB).
    let a = w.run("hog", "34");
    assert_eq!((a.status, a.body.as_str()), (200, "34"));
    let a = w.run("hog", "200");
    assert_eq!(a.status, 507, "{}", a.body);
    let j = a.json();
    assert_eq!(j["lambda"], "hog");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("memory limit of 50 MiB")),
        "{j}"
    );
    let a = w.run("hog", "1");
    assert_eq!(
        (a.status, a.body.as_str()),
        (200, "1"),
        "a fresh sandbox after the OOM kill"
    );
    let a = w.run("hello", r#"{"name": "x"}"#);
    assert_eq!(a.status, 200);
}

fn worker_cgroups(dir: &Path) -> Vec<PathBuf> {
    common::worker_cgroups(&dir.join("worker"))
}

/// Blank sandboxes a worker keeps ready (`scaling.blanks`, default).
const BLANKS: usize = ol_worker::config::Scaling::DEFAULT_BLANKS;

/// Sandbox cgroups of the worker, blanks included (the zygote's own not
/// counted).
fn child_cgroups(dir: &Path) -> usize {
    worker_cgroups(dir)
        .iter()
        .map(|p| {
            fs::read_dir(p)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().is_dir())
                        .filter(|e| !e.file_name().to_string_lossy().starts_with("zygote-"))
                        .count()
                })
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root"]
fn churn_of_300_sandboxes_leaks_nothing() {
    let crash = "import os\n\ndef f(event):\n    os._exit(0)\n";
    let mut w = TestWorker::start(Backend::Sock, &[("churn", &[("f.py", crash)])], &[]);
    for i in 0..300 {
        let a = w.run("churn", "{}");
        assert_eq!(a.status, 502, "call {i}: {}", a.body);
    }
    let stats = w.stats();
    assert_eq!(stats["sandboxes_created"], 300);
    // Nothing of the 300 is left: only the ready blanks remain.
    assert!(
        common::eventually(std::time::Duration::from_secs(10), || child_cgroups(
            w.path()
        ) <= BLANKS),
        "sandbox cgroups left: {}",
        child_cgroups(w.path())
    );
    assert!(
        mounts_mentioning(w.path()).is_empty(),
        "{:?}",
        mounts_mentioning(w.path())
    );
    assert_eq!(w.run("hello", r#"{"name": "x"}"#).status, 200);
    w.down();
    assert!(
        worker_cgroups(w.path()).is_empty(),
        "{:?}",
        worker_cgroups(w.path())
    );
    assert!(mounts_mentioning(w.path()).is_empty());
}

#[test]
#[ignore = "needs root"]
fn kill_9_then_force_cleanup_leaves_no_cgroup_process_or_mount() {
    let mut w = TestWorker::start(Backend::Sock, &[], &[]);
    for name in ["hello", "hello-legacy"] {
        assert_eq!(w.run(name, r#"{"name": "x"}"#).status, 200);
    }
    assert!((2..=2 + BLANKS).contains(&child_cgroups(w.path())));
    let worker = w.worker_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let out = ol(w.path(), &["worker", "force-cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        worker_cgroups(w.path()).is_empty(),
        "{:?}",
        worker_cgroups(w.path())
    );
    assert_no_processes(w.path());
    assert!(mounts_mentioning(w.path()).is_empty());
    // Nothing left to stop.
    w.down();
}

/// A sandbox that got its lambda runs at a normal CPU share (`cpu.idle`
/// 0), while the blanks made ahead beside it (`sb-*` cgroups other than
/// the sandbox's) warm up idle (1), and the zygote forked them idle,
/// where the kernel has `cpu.idle`.
fn check_cpu_idle(sandbox_dir: &Path) {
    let Ok(idle) = fs::read_to_string(sandbox_dir.join("cpu.idle")) else {
        eprintln!("no cpu.idle on this kernel: checked nothing about it");
        return;
    };
    assert_eq!(
        idle.trim(),
        "0",
        "the sandbox itself runs at a normal share"
    );
    let parent = sandbox_dir.parent().expect("worker cgroup");
    let blanks = || -> Vec<String> {
        fs::read_dir(parent)
            .expect("worker cgroup dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("sb-"))
            .filter(|e| e.path() != sandbox_dir)
            .filter_map(|e| fs::read_to_string(e.path().join("cpu.idle")).ok())
            .map(|v| v.trim().to_string())
            .collect()
    };
    let all_idle = |b: Vec<String>| !b.is_empty() && b.iter().all(|v| v == "1");
    assert!(
        common::eventually(Duration::from_secs(10), || all_idle(blanks())),
        "blanks made ahead should be cpu.idle: {:?}",
        blanks()
    );
    // So is the zygote that forked them, once no cold start waits for it.
    let zygotes = || -> Vec<String> {
        fs::read_dir(parent)
            .expect("worker cgroup dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("zygote-"))
            .filter_map(|e| fs::read_to_string(e.path().join("cpu.idle")).ok())
            .map(|v| v.trim().to_string())
            .collect()
    };
    assert!(
        common::eventually(Duration::from_secs(10), || all_idle(zygotes())),
        "a zygote forking blanks ahead should be cpu.idle: {:?}",
        zygotes()
    );
}

#[test]
#[ignore = "needs root"]
fn every_process_of_a_forked_sandbox_is_in_its_cgroup_in_every_hierarchy() {
    // Blanks join through v1 `tasks` (one thread moved), so check that the
    // whole sandbox, its pid 1 and each of its threads, landed in every one.
    let mut w = TestWorker::start(Backend::Sock, &[], &["pause_after_idle_ms=60000"]);
    assert_eq!(w.run("hello", r#"{"name": "a"}"#).status, 200);
    let stats = w.stats();
    let cgroup = stats["sandboxes"][0]["cgroup"]
        .as_str()
        .expect("sandbox cgroup")
        .to_string();
    let pid = stats["sandboxes"][0]["pid"].as_u64().expect("pid");
    let mut hierarchies = 0;
    for controller in ["memory", "pids", "cpu", "freezer"] {
        let dir = Path::new("/sys/fs/cgroup").join(controller).join(&cgroup);
        let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
            continue;
        };
        hierarchies += 1;
        let procs: Vec<u64> = procs
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        // A forked sandbox is one process, its pid 1 (the runtime): the
        // zygote forks it straight into its namespaces, with no process
        // between them.
        assert_eq!(procs, [pid], "{controller}");
        if controller == "cpu" {
            check_cpu_idle(&dir);
        }
        // Every thread of each of them too: none was left behind.
        let tasks = fs::read_to_string(dir.join("tasks")).expect("tasks");
        let tasks: Vec<&str> = tasks.split_whitespace().collect();
        for p in &procs {
            for thread in fs::read_dir(format!("/proc/{p}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let tid = thread.file_name().to_string_lossy().into_owned();
                assert!(
                    tasks.contains(&tid.as_str()),
                    "{controller}: thread {tid} of {p} is not in {tasks:?}"
                );
            }
        }
    }
    if hierarchies == 0 {
        eprintln!("no v1 hierarchy on this host: checked nothing here");
    }
    w.down();
}

#[test]
#[ignore = "needs root"]
fn idle_sandbox_is_frozen_by_its_cgroup_and_thawed_on_call() {
    let w = TestWorker::start(Backend::Sock, &[], &["pause_after_idle_ms=100"]);
    assert_eq!(w.run("hello", r#"{"name": "a"}"#).status, 200);
    let sandbox = w.stats()["sandboxes"][0]["id"]
        .as_str()
        .expect("sandbox id")
        .to_string();
    let cgroup = w.stats()["sandboxes"][0]["cgroup"]
        .as_str()
        .expect("sandbox cgroup")
        .to_string();
    assert!(
        cgroup.starts_with(&ol_sandbox::sock::worker_id(&w.state_dir())),
        "{cgroup}"
    );
    let state = Path::new("/sys/fs/cgroup/freezer")
        .join(&cgroup)
        .join("freezer.state");
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || {
            fs::read_to_string(&state).is_ok_and(|s| s.trim() == "FROZEN")
        }),
        "{}: {:?}",
        state.display(),
        fs::read_to_string(&state)
    );
    // downsize_paused_mem (on by default): the frozen sandbox's memory
    // limit is down to its usage, far below limits.mem_mb.
    let limit_file = Path::new("/sys/fs/cgroup/memory")
        .join(&cgroup)
        .join("memory.limit_in_bytes");
    let read_limit = || -> u64 {
        fs::read_to_string(&limit_file)
            .expect("memory limit")
            .trim()
            .parse()
            .expect("a number")
    };
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || read_limit()
            < 20 << 20),
        "paused limit {}",
        read_limit()
    );
    let a = w.run("hello", r#"{"name": "b"}"#);
    assert_eq!((a.status, a.body.as_str()), (200, "\"Hello, b!\""));
    assert_eq!(w.stats()["sandboxes"][0]["id"], sandbox.as_str());
    // Thawed: the limit is back (or the sandbox is already paused again,
    // at its usage once more).
    let limit = read_limit();
    let state = fs::read_to_string(&state).expect("freezer state");
    assert!(
        limit == 50 << 20 || state.trim() != "THAWED",
        "limit {limit}, {state}"
    );
}

#[test]
#[ignore = "needs root"]
fn reused_cgroups_keep_no_stale_oom_count() {
    let w = TestWorker::start(
        Backend::Sock,
        &[
            ("hog", &[("f.py", MEM_HOG)]),
            (
                "exits",
                &[("f.py", "import os\ndef f(event):\n    os._exit(3)\n")],
            ),
        ],
        &["limits.mem_mb=50", "features.reuse_cgroups=true"],
    );
    let a = w.run("hog", "200");
    assert_eq!(a.status, 507, "{}", a.body);
    // The OOM-killed sandbox's cgroup goes back to the pool and serves
    // later sandboxes; their deaths must not be blamed on that old OOM.
    for _ in 0..6 {
        let a = w.run("exits", "{}");
        assert_eq!(a.status, 502, "{}", a.body);
        assert!(a.body.contains("exited with status 3"), "{}", a.body);
    }
    let a = w.run("hog", "1");
    assert_eq!((a.status, a.body.as_str()), (200, "1"));
    // The cgroup that saw the OOM kill still exists: it was reused, not
    // removed (without reuse_cgroups it would be gone).
    let memory =
        Path::new("/sys/fs/cgroup/memory").join(ol_sandbox::sock::worker_id(&w.state_dir()));
    let with_oom = fs::read_dir(&memory)
        .expect("worker memory cgroup")
        .flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("memory.oom_control")).is_ok_and(|t| {
                t.lines()
                    .any(|l| l.starts_with("oom_kill ") && l != "oom_kill 0")
            })
        })
        .count();
    assert_eq!(with_oom, 1);
}
