//! A balancer started with `ol lb up -d` for a test (lb_e2e.rs,
//! grpc_e2e.rs), stopped when dropped even when the test failed.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::{Answer, TestWorker, assert_no_processes, free_ports, ol_bin, request, stderr};

/// What `out` printed on stdout.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ol lb ARGS...`.
pub fn ol_lb(args: &[&str]) -> Output {
    Command::new(ol_bin())
        .arg("lb")
        .args(args)
        .output()
        .expect("run ol")
}

/// A balancer started with `ol lb up -d` in a temp dir; stopped when
/// dropped, even when the test failed.
pub struct TestLb {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub port: u16,
    stopped: bool,
}

impl TestLb {
    /// `ol lb up -d` in front of `workers` with `args` (the policy).
    pub fn up(workers: &[&TestWorker], args: &[&str]) -> Self {
        let urls: Vec<String> = workers.iter().map(|w| w.url("")).collect();
        let urls = urls.join(",");
        let mut all = vec!["--workers", urls.as_str()];
        all.extend(args);
        Self::up_with(&all)
    }

    /// `ol lb up -d` with `args` (the workers and the policy).
    pub fn up_with(args: &[&str]) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("ol-lb-e2e-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().join("lb");
        let port = free_ports(1);
        let port_arg = port.to_string();
        let dir_arg = dir.to_string_lossy().into_owned();
        let mut all = vec![
            "up",
            "-d",
            "-p",
            dir_arg.as_str(),
            "--port",
            port_arg.as_str(),
        ];
        all.extend(args);
        let out = ol_lb(&all);
        assert!(
            out.status.success(),
            "ol lb {all:?}: {}\n{}",
            stderr(&out),
            stdout(&out)
        );
        assert!(
            stdout(&out).contains("balancer started"),
            "{}",
            stdout(&out)
        );
        Self {
            _tmp: tmp,
            dir,
            port,
            stopped: false,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// POSTs `body` to `/run/<lambda>` through the balancer.
    pub fn run(&self, lambda: &str, body: &str) -> Answer {
        request(
            "POST",
            &self.url(&format!("/run/{lambda}")),
            body.as_bytes(),
        )
    }

    /// `ol lb status`: whether it succeeded, and what it printed.
    pub fn status(&self) -> (bool, String) {
        let out = ol_lb(&["status", "-p", &self.dir.to_string_lossy()]);
        (
            out.status.success(),
            format!("{}{}", stdout(&out), stderr(&out)),
        )
    }

    /// The pid of the balancer's HAProxy.
    pub fn engine_pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("haproxy.pid"))
            .expect("haproxy.pid")
            .trim()
            .parse()
            .expect("pid")
    }

    /// `ol lb down`, then: nothing of it runs, its state is gone, its
    /// port is closed.
    pub fn down(&mut self) {
        self.stopped = true;
        let out = ol_lb(&["down", "-p", &self.dir.to_string_lossy()]);
        assert!(out.status.success(), "down: {}", stderr(&out));
        assert_no_processes(&self.dir);
        assert!(!self.dir.join("lb.json").exists());
        assert!(!self.dir.join("haproxy.pid").exists());
        assert!(std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }
}

impl Drop for TestLb {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = ol_lb(&["down", "-p", &self.dir.to_string_lossy()]);
        }
    }
}
