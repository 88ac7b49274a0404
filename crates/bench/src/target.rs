//! What a benchmark measures: servers given with `--target [NAME=]URL`, or
//! a worker the benchmark starts in a temporary directory and stops when
//! done.

use std::path::Path;
use std::process::Command;

use crate::error::chain;
use crate::{BenchError, Result};

/// A server that serves `/run/<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Its name in the results.
    pub name: String,
    /// `host:port` to connect to.
    pub addr: String,
}

impl Target {
    /// Parses `NAME=http://host:port` or `http://host:port` (named after
    /// its address).
    pub fn parse(spec: &str) -> Result<Self> {
        let (name, url) = match spec.split_once('=') {
            Some((n, u)) if !n.contains('/') => (Some(n), u),
            _ => (None, spec),
        };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            BenchError::Usage(format!(
                "--target {spec}: give an http:// URL, e.g. ours=http://127.0.0.1:5000"
            ))
        })?;
        let hostport = rest.split('/').next().unwrap_or_default();
        if hostport.is_empty() {
            return Err(BenchError::Usage(format!(
                "--target {spec}: the URL has no host"
            )));
        }
        let addr = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        let name = match name {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => addr.clone(),
        };
        Ok(Self { name, addr })
    }

    /// `http://host:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Parses every `--target` and checks the names are distinct.
pub fn parse_all(specs: &[String]) -> Result<Vec<Target>> {
    let targets = specs
        .iter()
        .map(|s| Target::parse(s))
        .collect::<Result<Vec<_>>>()?;
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.name == t.name) {
            return Err(BenchError::Usage(format!(
                "two targets are named {}; name them: --target a=URL --target b=URL",
                t.name
            )));
        }
    }
    Ok(targets)
}

/// A worker the benchmark starts in a temporary directory and stops when
/// dropped.
pub struct OwnWorker {
    /// Its worker directory, removed when dropped.
    pub dir: tempfile::TempDir,
    /// The port it serves on.
    pub port: u16,
}

impl OwnWorker {
    /// `ol worker up -d` in a new temporary directory, with `options`
    /// (`key=value`) overriding its config.
    pub fn start(options: &[String]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ol-bench-").tempdir()?;
        let mut args = vec!["worker", "up", "-d", "-o", "worker_port=0"];
        for o in options {
            args.extend(["-o", o.as_str()]);
        }
        ol(dir.path(), &args)?;
        let port_file = dir.path().join("worker/worker.port");
        let port = std::fs::read_to_string(&port_file)
            .map_err(|source| BenchError::File {
                what: "cannot read",
                path: port_file.clone(),
                source,
            })?
            .trim()
            .parse()
            .map_err(BenchError::PortFile)?;
        Ok(Self { dir, port })
    }

    /// This worker as a target named `ours`.
    pub fn target(&self) -> Target {
        Target {
            name: "ours".to_string(),
            addr: format!("127.0.0.1:{}", self.port),
        }
    }

    /// Writes lambda `name` (files: name → content) into the registry.
    pub fn add_lambda(&self, name: &str, files: &[(&str, &str)]) -> Result<()> {
        write_lambda(&self.dir.path().join("registry"), name, files)
    }
}

impl Drop for OwnWorker {
    fn drop(&mut self) {
        if let Err(e) = ol(self.dir.path(), &["worker", "down"]) {
            eprintln!("ol bench: stopping its worker failed: {}", chain(&e));
        }
    }
}

/// A balancer (`ol lb`, policy `name`) the benchmark starts in front of
/// its targets, measured as one more target named `lb` (`--lb`); stopped
/// when dropped.
pub struct OwnBalancer {
    /// Its state dir, removed when dropped.
    pub dir: tempfile::TempDir,
}

impl OwnBalancer {
    /// `ol lb up -d` on a free port in front of `targets`, which gain a
    /// target `lb`.
    pub fn start(targets: &mut Vec<Target>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ol-bench-lb-").tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let workers: Vec<String> = targets.iter().map(|t| t.url("")).collect();
        let port_arg = port.to_string();
        let workers = workers.join(",");
        let args = ["lb", "up", "-d", "--port", &port_arg, "--workers", &workers];
        ol(dir.path(), &args)?;
        targets.push(Target {
            name: "lb".to_string(),
            addr: format!("127.0.0.1:{port}"),
        });
        Ok(Self { dir })
    }

    /// With `wanted`, a balancer in front of `targets` (see [`Self::start`]).
    pub fn start_if(wanted: bool, targets: &mut Vec<Target>) -> Result<Option<Self>> {
        wanted.then(|| Self::start(targets)).transpose()
    }
}

impl Drop for OwnBalancer {
    fn drop(&mut self) {
        if let Err(e) = ol(self.dir.path(), &["lb", "down"]) {
            eprintln!("ol bench: stopping its balancer failed: {}", chain(&e));
        }
    }
}

/// Writes lambda `name` as a directory of `files` under `registry`.
pub fn write_lambda(registry: &Path, name: &str, files: &[(&str, &str)]) -> Result<()> {
    let dir = registry.join(name);
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::File {
        what: "cannot create",
        path: dir.clone(),
        source,
    })?;
    for (file, content) in files {
        let path = dir.join(file);
        std::fs::write(&path, content).map_err(|source| BenchError::File {
            what: "cannot write",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Runs this same binary with `args` and `-p dir`.
pub fn ol(dir: &Path, args: &[&str]) -> Result<()> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).args(args).arg("-p").arg(dir).output()?;
    if !out.status.success() {
        return Err(BenchError::Ol {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_and_unnamed_targets() {
        let t = Target::parse("ours=http://127.0.0.1:5000/").expect("named");
        assert_eq!(
            (t.name.as_str(), t.addr.as_str()),
            ("ours", "127.0.0.1:5000")
        );
        let t = Target::parse("http://localhost:5001").expect("unnamed");
        assert_eq!(
            (t.name.as_str(), t.addr.as_str()),
            ("localhost:5001", "localhost:5001")
        );
        assert_eq!(Target::parse("http://h").expect("no port").addr, "h:80");
        assert_eq!(t.url("/run/x"), "http://localhost:5001/run/x");
        assert!(Target::parse("127.0.0.1:5000").is_err());
        assert!(Target::parse("x=https://h:1").is_err());
    }

    #[test]
    fn target_names_must_differ() {
        let same = [
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:1".to_string(),
        ];
        assert!(parse_all(&same).is_err());
        let named = [
            "a=http://127.0.0.1:1".to_string(),
            "b=http://127.0.0.1:1".to_string(),
        ];
        assert_eq!(parse_all(&named).expect("named").len(), 2);
    }
}
