//! The balancer in front of a cluster: its workers as a
//! [`WorkerSource`] (`ol lb up --cluster DIR`, followed as they are
//! started and killed), and the balancer `ol cluster workers --lb-port`
//! starts and `ol cluster kill` stops (state in `workers/lb/`, log in
//! `logs/lb.out`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use ol_lb::{LbError, LbState, PolicyKind, Server, UpArgs, WorkerSource, WorkerUrl};
use ol_worker::Config;

use crate::{Cluster, ClusterError};

/// The workers of a cluster that run now.
#[derive(Debug, Clone)]
pub struct ClusterWorkers(pub Cluster);

impl WorkerSource for ClusterWorkers {
    fn describe(&self) -> String {
        format!("--cluster {}", self.0.root().display())
    }

    fn servers(&self) -> Result<BTreeSet<Server>, LbError> {
        let cluster_err =
            |e: ClusterError| LbError::Usage(format!("cluster {}: {e}", self.0.root().display()));
        let mut servers = BTreeSet::new();
        for w in self.0.workers().map_err(cluster_err)? {
            if w.dir.running().is_none() {
                continue;
            }
            let config = Config::read(&w.config_file, &[]).map_err(|e| cluster_err(e.into()))?;
            servers.extend(WorkerUrl::parse(&config.local_url(w.port))?.resolve()?);
        }
        Ok(servers)
    }
}

/// The state dir of the cluster's balancer.
pub fn dir(cluster: &Cluster) -> PathBuf {
    cluster.root().join("workers").join("lb")
}

/// Starts the cluster's balancer on `port` with `policy`, in the
/// background, and waits until it serves.
pub fn start(cluster: &Cluster, port: u16, policy: PolicyKind) -> Result<LbState, LbError> {
    let dir = dir(cluster);
    let args = UpArgs::for_cluster(cluster.root(), &dir, port, policy);
    let log = cluster.logs().join("lb.out");
    ol_lb::control::start_detached(&dir, &log, &args.to_args(&dir))
}

/// Stops the cluster's balancer if it runs: a line saying so.
pub fn stop(cluster: &Cluster) -> Result<Option<String>, LbError> {
    let dir = dir(cluster);
    if ol_lb::control::running(&dir).is_none() && ol_lb::control::running_engine(&dir).is_none() {
        return Ok(None);
    }
    Ok(Some(format!("lb: {}", ol_lb::control::stop(&dir)?)))
}
