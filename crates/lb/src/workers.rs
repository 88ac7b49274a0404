//! Which workers the balancer sends calls to: a [`WorkerSource`] is asked
//! again every second, and the engine's servers are made to match what
//! it says ([`Server`]s added and removed at run time), so a DNS name
//! with a record per worker (a Kubernetes headless Service) or a cluster
//! whose workers change is followed without a restart.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::LbError;

/// Where a worker is: `http://HOST:PORT` as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkerUrl {
    /// A name or an address.
    pub host: String,
    /// Its port.
    pub port: u16,
}

impl WorkerUrl {
    /// Parses `http://HOST:PORT` (a trailing `/` is allowed; no path).
    pub fn parse(url: &str) -> Result<Self, LbError> {
        let bad = |why: &str| {
            LbError::Usage(format!(
                "worker {url:?}: {why}; give each worker as http://HOST:PORT"
            ))
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// workers are supported"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(bad("a worker URL has no path"));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        if host.is_empty() || port == 0 {
            return Err(bad("no host, or port 0"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }

    /// Every address the host resolves to now (one per worker behind a
    /// name with several records).
    pub fn resolve(&self) -> Result<BTreeSet<Server>, LbError> {
        let addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| LbError::Resolve {
                worker: self.to_string(),
                source: e,
            })?;
        Ok(addrs.map(Server).collect())
    }
}

impl fmt::Display for WorkerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

/// One worker as the engine knows it: an address. Its name in the engine
/// is the address itself, so a server is found again after a restart of
/// the balancer and named the same in `ol lb status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Server(pub SocketAddr);

impl Server {
    /// Its name in the engine's config and runtime API: `127.0.0.1:8080`,
    /// or `[::1]:8080` with the brackets left out (`::1_8080`), which
    /// HAProxy's names do not take.
    pub fn name(&self) -> String {
        match self.0 {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("{}_{}", a.ip(), a.port()),
        }
    }

    /// Its base URL, for its own routes (`/stats`).
    pub fn url(&self) -> String {
        format!("http://{}", self.0)
    }

    /// Its id in the engine, from its address alone (FNV-1a of its name,
    /// in 1..2^31). HAProxy places a server on the hash ring by its id,
    /// and would otherwise number servers in the order it learns of them:
    /// with the id of the address, a worker that leaves and comes back
    /// takes its old place, a restarted balancer keeps its ring, and
    /// replicas of the balancer agree on where each lambda goes.
    pub fn engine_id(&self) -> u32 {
        let hash = self.name().bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        (hash & 0x7fff_ffff).max(1)
    }
}

/// Where the workers come from; asked again every second.
pub trait WorkerSource: Send {
    /// What it is, for the log and `status` (`--workers http://...`,
    /// `--cluster DIR`).
    fn describe(&self) -> String;
    /// The workers now.
    fn servers(&self) -> Result<BTreeSet<Server>, LbError>;
}

/// `--workers URL,...`: fixed URLs, each resolved every time.
#[derive(Debug, Clone)]
pub struct UrlWorkers(pub Vec<WorkerUrl>);

impl UrlWorkers {
    /// Parses `URL,URL,...` (a list the command line gave).
    pub fn parse(urls: &[String]) -> Result<Self, LbError> {
        let parsed = urls
            .iter()
            .flat_map(|u| u.split(','))
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(WorkerUrl::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if parsed.is_empty() {
            return Err(LbError::Usage(
                "--workers: give at least one worker, as http://HOST:PORT".into(),
            ));
        }
        Ok(Self(parsed))
    }
}

impl WorkerSource for UrlWorkers {
    fn describe(&self) -> String {
        let urls: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        format!("--workers {}", urls.join(","))
    }

    fn servers(&self) -> Result<BTreeSet<Server>, LbError> {
        let mut all = BTreeSet::new();
        for url in &self.0 {
            all.extend(url.resolve()?);
        }
        Ok(all)
    }
}

/// What to change to go from the servers the engine has to those wanted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Servers to add.
    pub add: Vec<Server>,
    /// Servers to remove.
    pub remove: Vec<Server>,
}

impl Changes {
    /// The changes from `have` to `want`. An empty `want` (a source that
    /// found no worker for a moment, e.g. DNS between two rollouts) keeps
    /// what is there: health checks already take dead workers out, and a
    /// balancer with no server at all could only fail every call.
    pub fn between(have: &BTreeSet<Server>, want: &BTreeSet<Server>) -> Self {
        if want.is_empty() {
            return Self::default();
        }
        Self {
            add: want.difference(have).copied().collect(),
            remove: have.difference(want).copied().collect(),
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(s: &str) -> Server {
        Server(s.parse().expect("address"))
    }

    #[test]
    fn worker_urls_parse() -> Result<(), LbError> {
        let w = WorkerUrl::parse("http://127.0.0.1:8080/")?;
        assert_eq!((w.host.as_str(), w.port), ("127.0.0.1", 8080));
        let w = WorkerUrl::parse("http://ol-workers.ol.svc.cluster.local:5000")?;
        assert_eq!(w.port, 5000);
        let w = WorkerUrl::parse("http://[::1]:5000")?;
        assert_eq!(w.host, "::1");
        assert_eq!(w.to_string(), "http://[::1]:5000");
        for bad in [
            "127.0.0.1:8080",
            "https://a:1",
            "http://a",
            "http://a:0",
            "http://a:x",
            "http://a:1/run",
            "http://:1",
        ] {
            assert!(WorkerUrl::parse(bad).is_err(), "{bad} was accepted");
        }
        Ok(())
    }

    #[test]
    fn lists_split_on_commas() -> Result<(), LbError> {
        let w = UrlWorkers::parse(&["http://a:1,http://b:2".into(), "http://c:3".into()])?;
        assert_eq!(w.0.len(), 3);
        assert!(UrlWorkers::parse(&[",".into()]).is_err());
        Ok(())
    }

    #[test]
    fn loopback_resolves_to_one_server() -> Result<(), LbError> {
        let s = WorkerUrl::parse("http://127.0.0.1:8080")?.resolve()?;
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            [server("127.0.0.1:8080")]
        );
        Ok(())
    }

    #[test]
    fn engine_ids_depend_on_the_address_alone() {
        let a = server("127.0.0.1:8080");
        assert_eq!(a.engine_id(), server("127.0.0.1:8080").engine_id());
        assert!(a.engine_id() >= 1 && a.engine_id() < 1 << 31);
        let ids: BTreeSet<u32> = (8000..8100)
            .map(|p| server(&format!("127.0.0.1:{p}")).engine_id())
            .collect();
        assert_eq!(ids.len(), 100, "ids collide");
    }

    #[test]
    fn names_are_the_address() {
        assert_eq!(server("127.0.0.1:8080").name(), "127.0.0.1:8080");
        assert_eq!(server("[::1]:8080").name(), "::1_8080");
        assert_eq!(server("[::1]:8080").url(), "http://[::1]:8080");
    }

    #[test]
    fn changes_add_and_remove_but_never_empty_the_backend() {
        let have: BTreeSet<_> = [server("127.0.0.1:1"), server("127.0.0.1:2")].into();
        let want: BTreeSet<_> = [server("127.0.0.1:2"), server("127.0.0.1:3")].into();
        let c = Changes::between(&have, &want);
        assert_eq!(c.add, [server("127.0.0.1:3")]);
        assert_eq!(c.remove, [server("127.0.0.1:1")]);
        assert!(Changes::between(&have, &have).is_empty());
        assert!(Changes::between(&have, &BTreeSet::new()).is_empty());
    }
}
