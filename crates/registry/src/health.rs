//! [`Monitored`]: any registry, remembering how its requests went, so a
//! worker can say (in `/stats`) that its code source is down while the
//! lambda layer keeps serving the code it already has.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::{LambdaCode, Registry, RegistryError};

/// How a registry's requests have gone, as of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The backend ([`Registry::kind`]).
    pub kind: &'static str,
    /// Where it is ([`Registry::location`]).
    pub location: String,
    /// Whether the last request succeeded (`true` before any).
    pub ok: bool,
    /// The last failure's message, even after a later success.
    pub last_error: Option<String>,
    /// How long ago a request last succeeded.
    pub since_ok: Option<Duration>,
    /// How long ago a request last failed.
    pub since_error: Option<Duration>,
}

#[derive(Debug, Default)]
struct State {
    last_ok: Option<Instant>,
    last_error: Option<(Instant, String)>,
}

impl State {
    fn ok(&self) -> bool {
        match (&self.last_ok, &self.last_error) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(ok), Some((failed, _))) => ok >= failed,
        }
    }
}

/// A registry whose every fetch and listing is recorded; see
/// [`Monitored::health`]. A refused name (the caller's mistake, not the
/// registry's) is not a failure; a missing lambda is a success.
pub struct Monitored {
    inner: Arc<dyn Registry>,
    state: Mutex<State>,
}

impl Monitored {
    /// Watches `inner`.
    pub fn new(inner: Arc<dyn Registry>) -> Self {
        Self {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    /// How its requests have gone.
    pub fn health(&self) -> Health {
        let state = self.lock();
        Health {
            kind: self.inner.kind(),
            location: self.inner.location(),
            ok: state.ok(),
            last_error: state.last_error.as_ref().map(|(_, e)| e.clone()),
            since_ok: state.last_ok.map(|t| t.elapsed()),
            since_error: state.last_error.as_ref().map(|(t, _)| t.elapsed()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `result`; says so in the log when the registry starts or
    /// stops failing (the lambda layer logs each lambda's own failures).
    fn record<T>(&self, result: Result<T, RegistryError>) -> Result<T, RegistryError> {
        let now = Instant::now();
        let mut state = self.lock();
        let was_ok = state.ok();
        match &result {
            Err(RegistryError::InvalidName(_)) => return result,
            Ok(_) => state.last_ok = Some(now),
            Err(e) => state.last_error = Some((now, e.to_string())),
        }
        match (was_ok, state.ok(), &result) {
            (true, false, Err(e)) => tracing::warn!(
                registry = %self.inner.location(),
                "the registry is failing; lambdas keep the code they have: {e}"
            ),
            (false, true, _) => {
                tracing::info!(registry = %self.inner.location(), "the registry answers again")
            }
            _ => {}
        }
        drop(state);
        result
    }
}

impl Registry for Monitored {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn fetch(&self, name: &str) -> Result<Option<LambdaCode>, RegistryError> {
        self.record(self.inner.fetch(name))
    }

    fn list(&self) -> Result<Vec<String>, RegistryError> {
        self.record(self.inner.list())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A registry that fails while `down` is set.
    struct Flaky {
        down: AtomicBool,
    }

    impl Registry for Flaky {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn location(&self) -> String {
            "flaky://".into()
        }
        fn fetch(&self, name: &str) -> Result<Option<LambdaCode>, RegistryError> {
            crate::validate_name(name)?;
            if self.down.load(Ordering::SeqCst) {
                Err(RegistryError::Remote("connection refused".into()))
            } else {
                Ok(None)
            }
        }
        fn list(&self) -> Result<Vec<String>, RegistryError> {
            self.fetch("x").map(|_| Vec::new())
        }
    }

    #[test]
    fn health_follows_the_last_request_and_keeps_the_last_error() {
        let flaky = Arc::new(Flaky {
            down: AtomicBool::new(false),
        });
        let m = Monitored::new(Arc::clone(&flaky) as Arc<dyn Registry>);
        let h = m.health();
        assert!(h.ok && h.last_error.is_none() && h.since_ok.is_none());
        assert_eq!((h.kind, h.location.as_str()), ("test", "flaky://"));

        m.fetch("a").expect("up");
        assert!(m.health().ok && m.health().since_ok.is_some());

        flaky.down.store(true, Ordering::SeqCst);
        assert!(m.list().is_err());
        let h = m.health();
        assert!(!h.ok, "{h:?}");
        assert_eq!(
            h.last_error.as_deref(),
            Some("registry: connection refused")
        );
        assert!(h.since_error.is_some() && h.since_ok.is_some());

        // A bad name is the caller's mistake, not the registry's.
        flaky.down.store(false, Ordering::SeqCst);
        assert!(m.fetch("../x").is_err());
        assert!(!m.health().ok);

        m.fetch("a").expect("up again");
        let h = m.health();
        assert!(h.ok, "{h:?}");
        assert!(h.last_error.is_some(), "the last error stays visible");
    }
}
