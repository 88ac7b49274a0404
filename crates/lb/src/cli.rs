//! The command line of `ol lb` ([`LbCommand`]), shared by the `ol`
//! binary and by `ol cluster workers --lb-port`, which starts a balancer
//! with the same arguments ([`UpArgs::to_args`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::haproxy::EngineSettings;
use crate::policy::{ContentKey, DEFAULT_EPSILON, Policy, PolicyKind};
use crate::{LbError, SourceSpec};

/// The state dir of a balancer when `-p` is not given.
pub const DEFAULT_DIR: &str = "default-ol-lb";
/// How long a call may run before the balancer answers 504, by default:
/// AWS Lambda's longest run.
pub const DEFAULT_CALL_TIMEOUT_S: u64 = 900;

/// The `ol lb` commands.
#[derive(Debug, clap::Subcommand)]
pub enum LbCommand {
    /// Start a balancer in front of workers (foreground, or -d).
    ///
    /// It runs HAProxy, configured for the policy, restarts it if it
    /// dies and follows the workers as they come and go (asked every
    /// second). Calls (/run/NAME, /runLambda/NAME) pass through
    /// unchanged; its own errors are JSON.
    Up(UpArgs),
    /// Stop the balancer: calls in flight finish (at most 5 s), nothing
    /// is left running.
    Down {
        /// The balancer's state dir.
        #[arg(short = 'p', long = "path", default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Each worker's health, load and the lambdas it holds warm.
    ///
    /// Fails (after the report) when a worker is not up.
    Status {
        /// The balancer's state dir.
        #[arg(short = 'p', long = "path", default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// A file holding the workers' admin key, for their /stats (not
        /// needed for workers on loopback with no key).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
}

/// `ol lb up`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// The balancer's state dir: its HAProxy config, admin socket, error
    /// pages, state and (with -d) log.
    #[arg(short = 'p', long = "path", default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Run in the background; the log goes to DIR/lb.log.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The port to listen on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The address to listen on (0.0.0.0 for clients of other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The workers, as http://HOST:PORT (a name with several addresses is
    /// one worker per address, looked up every second).
    #[arg(
        long,
        value_name = "URL,...",
        value_delimiter = ',',
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    pub workers: Vec<String>,
    /// The workers of this cluster directory (`ol cluster workers`),
    /// followed as they are started and killed.
    #[arg(long, value_name = "DIR")]
    pub cluster: Option<PathBuf>,
    /// How calls are spread: name keeps each lambda on one worker (its
    /// sandboxes stay warm) until that worker carries more than
    /// (1+epsilon)x the average load.
    #[arg(long, value_enum, default_value_t = PolicyKind::Name)]
    pub policy: PolicyKind,
    /// How far above the average load a worker may go before calls spill
    /// over (name and content).
    #[arg(long, default_value_t = DEFAULT_EPSILON)]
    pub epsilon: f64,
    /// The content policy's key: header:NAME, query:NAME or json:FIELD (a
    /// top-level field of a JSON body).
    #[arg(long, value_name = "FROM:NAME")]
    pub key: Option<ContentKey>,
    /// HAProxy's threads (1 leaves the other cores to the workers).
    #[arg(long, default_value_t = 1)]
    pub threads: u16,
    /// Seconds a call may run before the balancer answers 504.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_CALL_TIMEOUT_S)]
    pub call_timeout: u64,
}

impl UpArgs {
    /// `ol lb up` for the workers of `cluster`, state in `dir`, on
    /// `port`, with `policy` and every other setting its default.
    pub fn for_cluster(cluster: &Path, dir: &Path, port: u16, policy: PolicyKind) -> Self {
        Self {
            dir: dir.to_path_buf(),
            detach: true,
            port,
            host: "127.0.0.1".into(),
            workers: Vec::new(),
            cluster: Some(cluster.to_path_buf()),
            policy,
            epsilon: DEFAULT_EPSILON,
            key: None,
            threads: 1,
            call_timeout: DEFAULT_CALL_TIMEOUT_S,
        }
    }

    /// The policy, checked.
    pub fn policy(&self) -> Result<Policy, LbError> {
        Policy::new(self.policy, self.epsilon, self.key.clone())
    }

    /// The engine's settings, the state dir being `dir` (absolute).
    pub fn engine_settings(&self, dir: &Path) -> Result<EngineSettings, LbError> {
        if self.threads == 0 || self.threads > 64 {
            return Err(LbError::Usage(format!(
                "--threads {}: between 1 and 64",
                self.threads
            )));
        }
        if self.call_timeout == 0 || self.call_timeout > 86_400 {
            return Err(LbError::Usage(format!(
                "--call-timeout {}: between 1 second and a day",
                self.call_timeout
            )));
        }
        Ok(EngineSettings {
            dir: dir.to_path_buf(),
            host: self.host.clone(),
            port: self.port,
            policy: self.policy()?,
            threads: self.threads,
            call_timeout_s: self.call_timeout,
        })
    }

    /// Where the workers come from.
    pub fn source_spec(&self) -> SourceSpec {
        match &self.cluster {
            Some(dir) => SourceSpec::Cluster(dir.clone()),
            None => SourceSpec::Workers(self.workers.clone()),
        }
    }

    /// The arguments of `ol` that run this balancer in the foreground
    /// with its state in `dir` (what `-d` starts in the background).
    pub fn to_args(&self, dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["lb".into(), "up".into(), "-p".into(), dir.into()];
        let mut push = |k: &str, v: String| {
            args.push(k.into());
            args.push(v.into());
        };
        push("--port", self.port.to_string());
        push("--host", self.host.clone());
        push("--policy", self.policy.to_string());
        push("--epsilon", self.epsilon.to_string());
        if let Some(key) = &self.key {
            push("--key", key.to_string());
        }
        push("--threads", self.threads.to_string());
        push("--call-timeout", self.call_timeout.to_string());
        match &self.cluster {
            Some(c) => {
                args.push("--cluster".into());
                args.push(c.into());
            }
            None => push("--workers", self.workers.join(",")),
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        lb: LbCommand,
    }

    fn up(args: &[&str]) -> Result<UpArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("ol").chain(args.iter().copied()))?;
        match cli.lb {
            LbCommand::Up(a) => Ok(a),
            other => panic!("not up: {other:?}"),
        }
    }

    #[test]
    fn up_needs_workers_or_a_cluster_but_not_both() {
        assert!(up(&["up"]).is_err());
        assert!(up(&["up", "--workers", "http://a:1", "--cluster", "c"]).is_err());
        assert!(up(&["up", "--cluster", "c"]).is_ok());
    }

    #[test]
    fn detaching_runs_the_same_balancer() -> Result<(), Box<dyn std::error::Error>> {
        let a = up(&[
            "up",
            "-d",
            "--port",
            "9000",
            "--workers",
            "http://a:1,http://b:2",
            "--policy",
            "content",
            "--key",
            "json:user",
            "--epsilon",
            "0.5",
        ])?;
        let again: Vec<String> = a
            .to_args(Path::new("/x"))
            .iter()
            .skip(1)
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let b = up(&again.iter().map(String::as_str).collect::<Vec<_>>())?;
        assert!(!b.detach);
        assert_eq!(b.dir, Path::new("/x"));
        assert_eq!(
            (b.port, b.workers.clone()),
            (9000, vec!["http://a:1".into(), "http://b:2".into()])
        );
        assert_eq!(b.policy()?, a.policy()?);
        let c = UpArgs::for_cluster(
            Path::new("/c"),
            Path::new("/c/workers/lb"),
            8000,
            PolicyKind::Name,
        );
        let again: Vec<String> = c
            .to_args(&c.dir)
            .iter()
            .skip(1)
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let d = up(&again.iter().map(String::as_str).collect::<Vec<_>>())?;
        assert_eq!(d.source_spec(), SourceSpec::Cluster("/c".into()));
        Ok(())
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() -> Result<(), clap::Error> {
        let err = |a: UpArgs| {
            a.engine_settings(Path::new("/x"))
                .err()
                .map(|e| e.to_string())
        };
        let a = up(&["up", "--cluster", "c", "--threads", "0"])?;
        assert!(err(a).is_some_and(|e| e.contains("--threads")));
        let a = up(&["up", "--cluster", "c", "--policy", "content"])?;
        assert!(err(a).is_some_and(|e| e.contains("--key")));
        assert!(up(&["up", "--cluster", "c", "--key", "nope"]).is_err());
        Ok(())
    }
}
