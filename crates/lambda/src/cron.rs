//! The cron scheduler: at every minute boundary it calls each lambda whose
//! ol.yaml `triggers.cron` schedule matches that minute. Minutes missed
//! while the worker was down are not replayed.

use std::sync::Weak;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ol_sandbox::Invocation;

use crate::manager::LambdaManager;
use crate::{Trigger, ol_yaml};

/// Starts the scheduler task; it ends with the manager.
pub(crate) fn start(manager: Weak<LambdaManager>) {
    tokio::spawn(async move {
        loop {
            let minute = next_minute(SystemTime::now());
            let wait = minute.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            let Some(m) = manager.upgrade() else { return };
            if m.is_closed() {
                return;
            }
            let registry = m.registry();
            let due = tokio::task::spawn_blocking(move || due_at(&*registry, minute))
                .await
                .unwrap_or_default();
            for (name, schedule) in due {
                let m = std::sync::Arc::clone(&m);
                tokio::spawn(async move {
                    let inv = cron_invocation(&schedule, minute);
                    match m.invoke_by(&name, inv, Trigger::Cron).await {
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
    });
}

/// The first whole minute strictly after `t`.
fn next_minute(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs((secs / 60 + 1) * 60)
}

/// Lambdas (with the matching schedule) due at `minute`. Reads every
/// lambda's ol.yaml; lambdas whose code or ol.yaml cannot be read are
/// skipped (their calls report that).
fn due_at(registry: &dyn ol_registry::Registry, minute: SystemTime) -> Vec<(String, String)> {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_minute_is_strictly_later_and_whole() {
        let t = UNIX_EPOCH + Duration::from_secs(120);
        assert_eq!(next_minute(t), UNIX_EPOCH + Duration::from_secs(180));
        let t = UNIX_EPOCH + Duration::from_millis(120_500);
        assert_eq!(next_minute(t), UNIX_EPOCH + Duration::from_secs(180));
    }

    #[test]
    fn due_lambdas_match_their_minute_only() {
        let root = tempfile::tempdir().expect("tempdir");
        for (name, yaml) in [
            ("every", "triggers: {cron: [{schedule: '* * * * *'}]}\n"),
            (
                "quarter",
                "triggers: {cron: [{schedule: '*/15 * * * *'}]}\n",
            ),
            ("none", ""),
        ] {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir).expect("mkdir");
            std::fs::write(dir.join("f.py"), "def f(e):\n    return 1\n").expect("write");
            std::fs::write(dir.join("ol.yaml"), yaml).expect("write");
        }
        let registry = ol_registry::DirRegistry::new(root.path());
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
}
