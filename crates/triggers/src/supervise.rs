//! The life of one consumer, whatever the broker: refused when config.json
//! does not allow its brokers, otherwise sessions with the broker, each
//! failed one followed by a doubling wait (1 s to 30 s, starting over
//! after a session that got going), until the trigger stops.

use std::future::Future;
use std::sync::PoisonError;
use std::time::Duration;

use tokio::sync::watch;

use crate::stats::TriggerCounters;

/// Longest wait between two attempts to reach a broker.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(30);

/// One connection to a broker: consume until told to stop (`Ok`) or the
/// broker fails (`Err`, why). It sets the state `running` once it works.
pub(crate) trait Session: Sync {
    /// Runs one session.
    fn session(
        &self,
        stop: &mut watch::Receiver<bool>,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Who is running: for the log.
pub(crate) struct Names<'a> {
    pub(crate) lambda: &'a str,
    pub(crate) trigger: &'a str,
    pub(crate) broker: &'a str,
}

/// Runs `session` again and again until `stop` turns true (or its sender
/// is gone); `refused` (why) when config.json does not allow the broker.
pub(crate) async fn supervise<S: Session>(
    session: &S,
    refused: Option<String>,
    names: Names<'_>,
    counters: &TriggerCounters,
    mut stop: watch::Receiver<bool>,
) {
    let Names {
        lambda,
        trigger,
        broker,
    } = names;
    if let Some(why) = refused {
        tracing::warn!(lambda, trigger, "trigger refused: {why}");
        counters.set_error(&why);
        counters.set_state("refused");
        let _ = stop.wait_for(|stopped| *stopped).await;
        counters.set_state("stopped");
        return;
    }
    let mut wait = Duration::from_secs(1);
    loop {
        match session.session(&mut stop).await {
            Ok(()) => break,
            Err(why) => {
                // A session that got going starts the waits over.
                if *counters
                    .state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    == "running"
                {
                    wait = Duration::from_secs(1);
                }
                tracing::warn!(
                    lambda,
                    trigger,
                    broker,
                    "trigger consumer: {why}; trying again in {wait:?}"
                );
                counters.set_error(&why);
                counters.set_state("reconnecting");
            }
        }
        let stopped = tokio::time::timeout(wait, stop.wait_for(|stopped| *stopped)).await;
        if stopped.is_ok() {
            break;
        }
        wait = (wait * 2).min(MAX_RECONNECT_WAIT);
    }
    counters.set_state("stopped");
}
