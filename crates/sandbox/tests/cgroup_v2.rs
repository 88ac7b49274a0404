//! Runs the cgroup v2 code path of [`Cgroup`] against the kernel: a fresh
//! cgroup2 mount, `RealFs`, real processes.
//!
//! Mounting must not touch the host's mount table, so the outer test
//! re-executes this binary under `unshare --mount --propagation private`
//! (a new process is single-threaded, which `unshare(CLONE_NEWNS)` needs)
//! and the ignored inner test does the work in that private namespace.
//! Note that a cgroup2 mount shows the one unified hierarchy of the host
//! (e.g. `/sys/fs/cgroup/unified`): the cgroups made here are real, under a
//! unique name, and removed again even if the test fails (the inner test's
//! guard, then the outer test as a last resort).
//!
//! It needs root, so it is ignored unless run with `--include-ignored`.
//! As root on a host with no private mount namespace or where cgroup2
//! cannot be mounted, the test says why and passes.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, getppid};
use ol_sandbox::sock::cgroup::{CgroupLimits, Hierarchy, RealFs};

/// Set by the outer test for the inner one: the name of the cgroup to use.
const INNER_ENV: &str = "OL_CGROUP_V2_INNER_NAME";
/// The inner test's name, for `--exact`.
const INNER_TEST: &str = "inner_v2_in_private_mount_ns";
/// Printed by the inner test when every check passed.
const RAN: &str = "OL-CGROUP-V2: RAN";
/// Printed by the inner test when it could not run here.
const SKIPPED: &str = "OL-CGROUP-V2: SKIPPED";
/// The name of the child cgroup under the test's parent cgroup.
const CHILD: &str = "sb-1";
/// How long the kernel may take to apply what a check waits for.
const SETTLE: Duration = Duration::from_secs(5);

#[test]
#[ignore = "needs root"]
fn cgroup_v2_on_a_private_cgroup2_mount() {
    let private = ["--mount", "--propagation", "private"];
    match Command::new("unshare").args(private).arg("true").output() {
        Err(e) => {
            println!("skipped: cannot run unshare(1): {e}");
            return;
        }
        Ok(out) if !out.status.success() => {
            println!(
                "skipped: no private mount namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Ok(_) => {}
    }

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("ol-v2test-{}-{nanos}", std::process::id());
    let exe = std::env::current_exe().expect("path of the test binary");
    let out = Command::new("unshare")
        .args(private)
        .arg("--")
        .arg(&exe)
        .args(["--exact", INNER_TEST, "--ignored", "--nocapture"])
        .env(INNER_ENV, &name)
        .stdin(Stdio::null())
        .output()
        .expect("run the inner test under unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("--- inner test stdout ---\n{stdout}");
    println!(
        "--- inner test stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let leftovers = remove_leftovers(&name);
    assert!(
        out.status.success(),
        "inner test failed: {}; left behind (now removed): {leftovers:?}",
        out.status
    );
    assert!(
        leftovers.is_empty(),
        "the inner test left these behind (now removed): {leftovers:?}"
    );
    if stdout.contains(SKIPPED) {
        println!("skipped (see the inner test's output)");
        return;
    }
    // libtest exits 0 when the filter matches no test: require the marker.
    assert!(
        stdout.contains(RAN),
        "the inner test did not run (was it renamed?)"
    );
    println!("cgroup v2 checks ran on a private cgroup2 mount");
}

/// Last-resort cleanup if the inner process died without its guard: kills
/// and removes the test's cgroups in the host's cgroup2 hierarchy (if it
/// has one mounted) and the empty mount point (its mount died with the
/// namespace). Returns what it found.
fn remove_leftovers(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mount_point = mount_point(name);
    if mount_point.exists() {
        // Not remove_dir_all: only ever an empty directory here.
        let _ = fs::remove_dir(&mount_point);
        found.push(mount_point);
    }
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return found;
    };
    let cgroup2: String = mountinfo
        .lines()
        .filter(|l| l.contains(" - cgroup2 "))
        .collect::<Vec<_>>()
        .join("\n");
    let Ok(Hierarchy::V2 { root }) = Hierarchy::detect(&cgroup2) else {
        return found;
    };
    for dir in [root.join(name).join(CHILD), root.join(name)] {
        if dir.exists() {
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            let _ = rmdir_retrying(&dir);
            found.push(dir);
        }
    }
    found
}

/// Removes a cgroup directory, retrying briefly while the kernel still
/// counts exiting processes in it. A missing directory is fine.
fn rmdir_retrying(dir: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => sleep(Duration::from_millis(20)),
        }
    }
}

/// Undoes everything the inner test set up, also when it panics: kills
/// its processes, removes its cgroups (deepest first), unmounts cgroup2 and
/// removes the mount point.
struct Guard {
    mount_point: PathBuf,
    mounted: bool,
    cgroups: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Guard {
    /// Cleans up; returns what failed.
    fn cleanup(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        while let Some(dir) = self.cgroups.pop() {
            if dir.exists() {
                let _ = fs::write(dir.join("cgroup.kill"), "1");
            }
            if let Err(e) = rmdir_retrying(&dir) {
                errors.push(format!("rmdir {}: {e}", dir.display()));
            }
        }
        if self.mounted {
            match umount2(&self.mount_point, MntFlags::MNT_DETACH) {
                Ok(()) => self.mounted = false,
                Err(e) => errors.push(format!("umount {}: {e}", self.mount_point.display())),
            }
        }
        // Not remove_dir_all: were the unmount to fail, that would walk the
        // cgroup hierarchy and remove every empty cgroup.
        if !self.mounted {
            match fs::remove_dir(&self.mount_point) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    errors.push(format!("rmdir {}: {e}", self.mount_point.display()));
                }
                _ => {}
            }
        }
        errors
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for e in self.cleanup() {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Where the inner test mounts cgroup2.
fn mount_point(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{name}-mnt"))
}

fn mount_namespace(pid: &str) -> std::io::Result<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt"))
}

/// Whether `path` is a cgroup2 mount point in this mount namespace.
fn is_cgroup2_mount(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let line_for = |l: &&str| {
        l.contains(" - cgroup2 ")
            && l.split_whitespace().nth(4) == Some(path.to_string_lossy().as_ref())
    };
    mountinfo.lines().any(|l| line_for(&l))
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').expect("stat has (comm)").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields[i - 3].parse().expect("numeric stat field") };
    field(14) + field(15)
}

/// Waits until `cond` holds, for up to [`SETTLE`].
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10));
    }
}

fn events(dir: &Path) -> String {
    fs::read_to_string(dir.join("cgroup.events")).expect("read cgroup.events")
}

#[test]
#[ignore = "run by cgroup_v2_on_a_private_cgroup2_mount inside a private mount namespace"]
fn inner_v2_in_private_mount_ns() {
    let Ok(name) = std::env::var(INNER_ENV) else {
        println!("{INNER_TEST} only runs under cgroup_v2_on_a_private_cgroup2_mount");
        return;
    };
    // Never mount in the host's namespace: ours must differ from the
    // outer test's (our parent; unshare exec'd into us).
    let ours = mount_namespace("self").expect("our mount namespace");
    let outer = mount_namespace(&getppid().to_string()).expect("the outer mount namespace");
    assert_ne!(ours, outer, "not in a private mount namespace");
    println!(
        "mount namespace {} (outer: {})",
        ours.display(),
        outer.display()
    );

    let mount_point = mount_point(&name);
    fs::create_dir(&mount_point).expect("create the mount point");
    let mut guard = Guard {
        mount_point: mount_point.clone(),
        mounted: false,
        cgroups: Vec::new(),
        children: Vec::new(),
    };
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = mount(
        Some("none"),
        &mount_point,
        Some("cgroup2"),
        flags,
        None::<&str>,
    ) {
        println!("{SKIPPED}: cannot mount cgroup2: {e}");
        return;
    }
    guard.mounted = true;
    assert!(is_cgroup2_mount(&mount_point), "cgroup2 is not mounted");
    println!("mounted cgroup2 on {}", mount_point.display());

    let hierarchy = Hierarchy::V2 {
        root: mount_point.clone(),
    };
    let cgroups = hierarchy.cgroups(Arc::new(RealFs));
    assert_eq!(cgroups.version(), 2);
    let parent = cgroups.cgroup(&name);
    let child = cgroups.cgroup(&format!("{name}/{CHILD}"));
    let parent_dir = mount_point.join(&name);
    let child_dir = parent_dir.join(CHILD);
    assert!(
        !parent_dir.exists(),
        "{} already exists",
        parent_dir.display()
    );
    assert_eq!(parent.dirs(), vec![parent_dir.clone()]);
    assert_eq!(child.procs_files(), vec![child_dir.join("cgroup.procs")]);

    // create + delegate_controllers
    guard.cgroups.push(parent_dir.clone());
    parent.create().expect("create the parent cgroup");
    assert!(parent_dir.join("cgroup.procs").is_file(), "not a cgroup");
    let available = parent.controllers().expect("parent controllers");
    let enabled = parent.delegate_controllers().expect("enable controllers");
    println!("parent controllers: {available:?}; enabled for children: {enabled:?}");
    let subtree =
        fs::read_to_string(parent_dir.join("cgroup.subtree_control")).expect("subtree_control");
    for c in &enabled {
        assert!(["memory", "pids", "cpu"].contains(&c.as_str()), "{c}");
        assert!(available.contains(c), "{c} is not available");
        assert!(
            subtree.split_whitespace().any(|s| s == c),
            "{c} not enabled"
        );
    }
    guard.cgroups.push(child_dir.clone());
    child.create().expect("create the child cgroup");
    assert!(child_dir.join("cgroup.procs").is_file(), "not a cgroup");
    assert_eq!(parent.children(), vec![CHILD.to_string()]);
    let have = child.controllers().expect("child controllers");
    println!("child controllers: {have:?}");
    for c in &enabled {
        assert!(have.contains(c), "{c} was enabled but the child lacks it");
    }

    // set_limits: writes what the child has, skips the rest.
    child
        .set_limits(&CgroupLimits {
            mem_bytes: 64 << 20,
            pids: 64,
            cpu_percent: 50,
            swappiness: 0,
        })
        .expect("set_limits skips absent controllers");
    for (controller, file, want) in [
        ("memory", "memory.max", "67108864"),
        ("pids", "pids.max", "64"),
        ("cpu", "cpu.max", "50000 100000"),
    ] {
        let path = child_dir.join(file);
        if have.iter().any(|h| h == controller) {
            let got = fs::read_to_string(&path).expect("read limit");
            assert_eq!(got.trim(), want, "{}", path.display());
        } else {
            assert!(!path.exists(), "{} without {controller}", path.display());
        }
    }

    // attach: a sleeper, and a spinner whose CPU time shows freezing.
    let sleeper = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let sleeper_pid = sleeper.id();
    guard.children.push(sleeper);
    let spinner_pid = match Command::new("bash")
        .args(["-c", "while (( SECONDS < 30 )); do :; done"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(spinner) => {
            let pid = spinner.id();
            guard.children.push(spinner);
            Some(pid)
        }
        Err(e) => {
            println!("no bash ({e}): freezing is checked by cgroup.events only");
            None
        }
    };
    let pids: Vec<u32> = std::iter::once(sleeper_pid).chain(spinner_pid).collect();
    for &pid in &pids {
        child.attach(pid).expect("attach");
    }
    let mut listed = child.pids().expect("pids");
    listed.sort_unstable();
    let mut want = pids.clone();
    want.sort_unstable();
    assert_eq!(listed, want, "cgroup.procs of the child");
    assert_eq!(parent.pids().expect("parent pids"), Vec::<u32>::new());
    for &pid in &pids {
        let cg =
            fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/<pid>/cgroup");
        let line = format!("0::/{name}/{CHILD}");
        assert!(
            cg.lines().any(|l| l == line),
            "{pid} is not in {line}:\n{cg}"
        );
    }
    println!("attached {pids:?}");

    // freeze: the kernel reports frozen and the spinner gets no CPU.
    if let Some(pid) = spinner_pid {
        eventually("the spinner to run", || cpu_ticks(pid) > 0);
    }
    child.freeze().expect("freeze");
    assert!(
        events(&child_dir).lines().any(|l| l == "frozen 1"),
        "{}",
        events(&child_dir)
    );
    if let Some(pid) = spinner_pid {
        let before = cpu_ticks(pid);
        sleep(Duration::from_millis(300));
        assert_eq!(cpu_ticks(pid), before, "a frozen process used CPU");
        println!("frozen: spinner stayed at {before} ticks for 300 ms");
    }
    for child in &mut guard.children {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "freezing must not kill"
        );
    }

    // thaw: the kernel reports thawed and the spinner runs again.
    child.thaw().expect("thaw");
    assert!(
        events(&child_dir).lines().any(|l| l == "frozen 0"),
        "{}",
        events(&child_dir)
    );
    if let Some(pid) = spinner_pid {
        let before = cpu_ticks(pid);
        eventually("the thawed spinner to run", || cpu_ticks(pid) > before);
        println!("thawed: spinner runs again");
    }

    // oom_kills: nothing was OOM-killed; without the memory controller
    // there is no memory.events, which means 0 rather than an error.
    assert_eq!(child.oom_kills().expect("oom_kills"), 0);
    if !have.iter().any(|c| c == "memory") {
        assert!(!child_dir.join("memory.events").exists());
    }

    // kill_all: cgroup.kill where the kernel has it, else freeze + SIGKILL.
    let has_cgroup_kill = child_dir.join("cgroup.kill").exists();
    let signalled = Mutex::new(Vec::new());
    child
        .kill_all(&|pid| {
            signalled.lock().expect("lock").push(pid);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        })
        .expect("kill_all");
    let signalled = signalled.into_inner().expect("lock");
    if has_cgroup_kill {
        assert!(
            signalled.is_empty(),
            "cgroup.kill exists, yet {signalled:?}"
        );
    }
    println!(
        "kill_all via {}",
        if signalled.is_empty() {
            "cgroup.kill"
        } else {
            "freeze + SIGKILL"
        }
    );
    for proc in &mut guard.children {
        let deadline = Instant::now() + SETTLE;
        let status = loop {
            if let Some(status) = proc.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "{} survived kill_all", proc.id());
            sleep(Duration::from_millis(10));
        };
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
        println!("{} was reaped: {status}", proc.id());
    }
    eventually("the child cgroup to empty", || {
        child.pids().is_ok_and(|p| p.is_empty())
            && events(&child_dir).lines().any(|l| l == "populated 0")
    });

    // remove: child, then parent.
    child.remove().expect("remove the child cgroup");
    assert!(!child_dir.exists());
    parent.remove().expect("remove the parent cgroup");
    assert!(!parent_dir.exists());
    child.remove().expect("removing twice is fine");

    let errors = guard.cleanup();
    assert!(errors.is_empty(), "cleanup failed: {errors:?}");
    assert!(!is_cgroup2_mount(&mount_point), "cgroup2 is still mounted");
    assert!(!mount_point.exists(), "the mount point is still there");
    println!("unmounted and removed {}", mount_point.display());
    println!("{RAN}");
}
