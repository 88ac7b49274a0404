//! The cron scheduler: at every minute boundary it calls each lambda whose
//! ol.yaml `triggers.cron` schedule matches that minute. Minutes missed
//! while the worker was down are not replayed.
//!
//! A leaf: it reads the lambdas' schedules from the registry, calls them
//! through a [`CronTarget`] (the lambda manager, in a worker) and tells the
//! time by a [`Clock`], so that a test drives it with a recording target
//! and tokio's paused clock.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ol_registry::Registry;
use ol_sandbox::{Invocation, Reply};

use crate::clock::Clock;
use crate::{InvokeError, ol_yaml};

/// What the scheduler calls lambdas through.
pub trait CronTarget: Send + Sync + 'static {
    /// Whether the scheduler should stop (the worker is shutting down).
    fn is_closed(&self) -> bool;

    /// Calls lambda `name` with `event`, because a schedule said so.
    fn call(
        self: Arc<Self>,
        name: String,
        event: Invocation,
    ) -> impl Future<Output = Result<Reply, InvokeError>> + Send;
}

/// Runs the scheduler until `target` is dropped or closed: at each minute
/// boundary (by `clock`), calls every lambda of `registry` due then.
pub async fn run<T: CronTarget>(
    target: Weak<T>,
    registry: Arc<dyn Registry>,
    clock: Arc<dyn Clock>,
) {
    loop {
        let minute = next_minute(clock.now());
        let wait = minute.duration_since(clock.now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        let Some(target) = target.upgrade() else {
            return;
        };
        if target.is_closed() {
            return;
        }
        let registry = Arc::clone(&registry);
        let due = tokio::task::spawn_blocking(move || due_at(&*registry, minute))
            .await
            .unwrap_or_default();
        for (name, schedule) in due {
            let target = Arc::clone(&target);
            tokio::spawn(async move {
                let event = cron_invocation(&schedule, minute);
                match target.call(name.clone(), event).await {
                    Ok(reply) => {
                        tracing::info!(lambda = %name, %schedule, status = reply.status, "cron call")
                    }
                    Err(e) => {
                        tracing::warn!(lambda = %name, %schedule, "cron call failed: {e}")
                    }
                }
            });
        }
    }
}

/// The first whole minute strictly after `t`.
fn next_minute(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs((secs / 60 + 1) * 60)
}

/// Lambdas (with the matching schedule) due at `minute`. Reads every
/// lambda's ol.yaml; lambdas whose code or ol.yaml cannot be read are
/// skipped (their calls report that).
fn due_at(registry: &dyn Registry, minute: SystemTime) -> Vec<(String, String)> {
    let just_before = minute - Duration::from_secs(1);
    let mut due = Vec::new();
    for name in registry.list().unwrap_or_default() {
        let Ok(Some(code)) = registry.fetch(&name) else {
            continue;
        };
        let Ok(config) = ol_yaml::load(&code.dir) else {
            continue;
        };
        if let Some(c) = config
            .triggers
            .cron
            .iter()
            .find(|c| c.schedule.next_after(just_before) == Some(minute))
        {
            due.push((name, c.schedule.as_str().to_string()));
        }
    }
    due
}

/// The event a cron call gets: `{"trigger": "cron", "schedule": ..., "time": <unix seconds>}`.
fn cron_invocation(schedule: &str, minute: SystemTime) -> Invocation {
    let time = minute.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let body = serde_json::json!({ "trigger": "cron", "schedule": schedule, "time": time });
    Invocation {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(body.to_string()),
        request_id: ol_obs::request_id::next(),
        trigger: None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ol_registry::DirRegistry;

    use super::*;
    use crate::clock::TokioClock;

    /// Writes lambda `name` with `ol_yaml` into the registry dir `root`.
    fn write_lambda(root: &Path, name: &str, ol_yaml: &str) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("f.py"), "def f(e):\n    return 1\n").expect("write");
        std::fs::write(dir.join("ol.yaml"), ol_yaml).expect("write");
    }

    /// A registry dir with lambdas `every` (each minute), `quarter` (each
    /// quarter hour) and `none` (no schedule).
    fn every_quarter_and_none() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        write_lambda(root.path(), "every", every_minute());
        write_lambda(
            root.path(),
            "quarter",
            "triggers: {cron: [{schedule: '*/15 * * * *'}]}\n",
        );
        write_lambda(root.path(), "none", "");
        root
    }

    fn every_minute() -> &'static str {
        "triggers: {cron: [{schedule: '* * * * *'}]}\n"
    }

    /// A UTC time, written as RFC 3339.
    fn utc(rfc3339: &str) -> SystemTime {
        let at: jiff::Timestamp = rfc3339.parse().expect("timestamp");
        at.into()
    }

    /// A target that records each call: the lambda and its event's
    /// `time` (unix seconds) and `schedule`.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(String, u64, String)>>,
        closed: AtomicBool,
    }

    impl Recorder {
        /// The calls so far, by time and then name.
        fn calls(&self) -> Vec<(String, u64, String)> {
            let mut calls = self.calls.lock().expect("lock").clone();
            calls.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
            calls
        }
    }

    impl CronTarget for Recorder {
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Acquire)
        }

        async fn call(
            self: Arc<Self>,
            name: String,
            event: Invocation,
        ) -> Result<Reply, InvokeError> {
            let event: serde_json::Value = serde_json::from_slice(&event.body).expect("json");
            assert_eq!(event["trigger"], "cron");
            let time = event["time"].as_u64().expect("time");
            let schedule = event["schedule"].as_str().expect("schedule").to_string();
            self.calls
                .lock()
                .expect("lock")
                .push((name, time, schedule));
            Ok(Reply {
                status: 200,
                headers: Vec::new(),
                body: Bytes::new(),
            })
        }
    }

    /// Starts the scheduler for `registry_dir` on a clock reading `start`.
    fn start(
        recorder: &Arc<Recorder>,
        registry_dir: &Path,
        start: SystemTime,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(
            Arc::downgrade(recorder),
            Arc::new(DirRegistry::new(registry_dir)),
            Arc::new(TokioClock::starting_at(start)),
        ))
    }

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
    }

    #[test]
    fn next_minute_is_strictly_later_and_whole() {
        let t = UNIX_EPOCH + Duration::from_secs(120);
        assert_eq!(next_minute(t), UNIX_EPOCH + Duration::from_secs(180));
        let t = UNIX_EPOCH + Duration::from_millis(120_500);
        assert_eq!(next_minute(t), UNIX_EPOCH + Duration::from_secs(180));
    }

    #[test]
    fn due_lambdas_match_their_minute_only() {
        let root = every_quarter_and_none();
        let registry = DirRegistry::new(root.path());
        // 00:15 UTC and 00:16 UTC on 1970-01-01.
        let quarter = UNIX_EPOCH + Duration::from_secs(15 * 60);
        let mut due: Vec<String> = due_at(&registry, quarter)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        due.sort();
        assert_eq!(due, vec!["every", "quarter"]);
        let other = UNIX_EPOCH + Duration::from_secs(16 * 60);
        let due: Vec<String> = due_at(&registry, other)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(due, vec!["every"]);
    }

    #[test]
    fn cron_event_is_json_with_schedule_and_time() {
        let inv = cron_invocation("* * * * *", UNIX_EPOCH + Duration::from_secs(60));
        let v: serde_json::Value = serde_json::from_slice(&inv.body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"trigger": "cron", "schedule": "* * * * *", "time": 60})
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lambda_is_called_at_each_matching_minute_with_the_scheduled_time() {
        let root = every_quarter_and_none();
        let recorder = Arc::new(Recorder::default());
        let scheduler = start(&recorder, root.path(), utc("2025-06-10T10:13:30Z"));
        // Half a minute past the third boundary: every call is made by then.
        tokio::time::sleep(Duration::from_secs(3 * 60)).await;
        let at = |minute: &str| unix(utc(&format!("2025-06-10T10:{minute}:00Z")));
        let every = || "* * * * *".to_string();
        assert_eq!(
            recorder.calls(),
            [
                ("every".to_string(), at("14"), every()),
                ("every".to_string(), at("15"), every()),
                ("quarter".to_string(), at("15"), "*/15 * * * *".to_string()),
                ("every".to_string(), at("16"), every()),
            ]
        );
        scheduler.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_or_removed_schedule_stops_firing() {
        let root = tempfile::tempdir().expect("tempdir");
        write_lambda(root.path(), "job", every_minute());
        let recorder = Arc::new(Recorder::default());
        let scheduler = start(&recorder, root.path(), utc("2025-06-10T10:13:30Z"));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(recorder.calls().len(), 1, "10:14");

        // Changed to a schedule that is not due in the next minutes.
        write_lambda(
            root.path(),
            "job",
            "triggers: {cron: [{schedule: '0 0 1 1 *'}]}\n",
        );
        tokio::time::sleep(Duration::from_secs(2 * 60)).await;
        assert_eq!(recorder.calls().len(), 1, "not at 10:15 or 10:16");

        // Back to every minute, then removed: the one call between.
        write_lambda(root.path(), "job", every_minute());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(recorder.calls().len(), 2, "10:17");
        std::fs::remove_dir_all(root.path().join("job")).expect("rm");
        tokio::time::sleep(Duration::from_secs(2 * 60)).await;
        let calls = recorder.calls();
        assert_eq!(calls.len(), 2, "nothing after removal: {calls:?}");
        assert_eq!(calls[1].1, unix(utc("2025-06-10T10:17:00Z")));
        scheduler.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_scheduler_stops_with_its_target() {
        let root = tempfile::tempdir().expect("tempdir");
        write_lambda(root.path(), "job", every_minute());
        let start_at = utc("2025-06-10T10:13:30Z");

        let closed = Arc::new(Recorder::default());
        let scheduler = start(&closed, root.path(), start_at);
        closed.closed.store(true, Ordering::Release);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(scheduler.is_finished(), "closed");
        assert!(closed.calls().is_empty());

        let dropped = Arc::new(Recorder::default());
        let scheduler = start(&dropped, root.path(), start_at);
        drop(dropped);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(scheduler.is_finished(), "dropped");
    }
}
