//! `GET /logs/<name>`: a lambda's kept output and failed calls
//! ([`ol_sandbox::lambda_logs`]) as JSON, oldest first:
//! `{"lambda": ..., "entries": [{time, sandbox, request_id, stream, line}]}`.
//! `?since=<RFC 3339 time>` keeps the entries from then on, `?stream=`
//! one stream (`stdout`, `stderr`, `error`), `?tail=N` the last N. Served
//! under `admin.stats` (the output of lambdas is as private as their
//! traffic).

use http::{Response, StatusCode};
use ol_sandbox::lambda_logs::{LambdaLogs, LogEntry};
use serde_json::json;

use crate::response::{Body, error_response, json_response};
use crate::state::AppState;

/// Answers `GET /logs/<name>`; `query` is the raw query string.
pub(crate) async fn logs(state: &AppState, name: &str, query: &str) -> Response<Body> {
    if let Err(e) = ol_registry::validate_name(name) {
        return error_response(StatusCode::BAD_REQUEST, &e.to_string(), None, None);
    }
    let Some(logs) = &state.lambda_logs else {
        return error_response(
            StatusCode::NOT_FOUND,
            "this worker keeps no lambda logs",
            None,
            None,
        );
    };
    let filter = match Filter::parse(query) {
        Ok(filter) => filter,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message, Some(name), None),
    };
    let dir = logs.dir().to_path_buf();
    let lambda = name.to_string();
    let read = tokio::task::spawn_blocking(move || LambdaLogs::read(&dir, &lambda)).await;
    match read {
        Ok(Ok(entries)) => json_response(
            StatusCode::OK,
            &json!({ "lambda": name, "entries": filter.apply(entries) }),
        ),
        Ok(Err(e)) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read the log: {e}"),
            Some(name),
            None,
        ),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("log task failed: {e}"),
            Some(name),
            None,
        ),
    }
}

/// Which entries a request wants.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Entries at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Only this stream.
    pub stream: Option<String>,
    /// Only the last this many.
    pub tail: Option<usize>,
}

impl Filter {
    /// From a query string (`since=...&stream=...&tail=N`).
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut filter = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "since" => {
                    let value = value.replace("%3A", ":").replace("%3a", ":");
                    filter.since = Some(value.parse().map_err(|e| {
                        format!("since={value}: not an RFC 3339 time (2026-01-02T03:04:05Z): {e}")
                    })?)
                }
                "stream" => filter.stream = Some(value.to_string()),
                "tail" => {
                    filter.tail = Some(
                        value
                            .parse()
                            .map_err(|_| format!("tail={value}: not a number"))?,
                    )
                }
                _ => return Err(format!("unknown parameter {key:?} (since, stream, tail)")),
            }
        }
        Ok(filter)
    }

    /// The entries it keeps, in order.
    pub fn apply(&self, entries: Vec<LogEntry>) -> Vec<LogEntry> {
        let mut kept: Vec<LogEntry> = entries
            .into_iter()
            .filter(|e| self.stream.as_ref().is_none_or(|s| &e.stream == s))
            .filter(|e| match (&self.since, e.time.parse::<jiff::Timestamp>()) {
                (Some(since), Ok(time)) => time >= *since,
                _ => true,
            })
            .collect();
        if let Some(n) = self.tail {
            kept.drain(..kept.len().saturating_sub(n));
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time: &str, stream: &str, line: &str) -> LogEntry {
        LogEntry {
            time: time.into(),
            sandbox: "s".into(),
            request_id: "r".into(),
            stream: stream.into(),
            line: line.into(),
        }
    }

    #[test]
    fn filters_by_time_stream_and_count() {
        let entries = vec![
            entry("2026-01-01T00:00:00.000Z", "stdout", "a"),
            entry("2026-01-01T00:01:00.000Z", "error", "b"),
            entry("2026-01-01T00:02:00.000Z", "stdout", "c"),
        ];
        let lines = |q: &str| -> Vec<String> {
            Filter::parse(q)
                .expect("filter")
                .apply(entries.clone())
                .into_iter()
                .map(|e| e.line)
                .collect()
        };
        assert_eq!(lines(""), ["a", "b", "c"]);
        assert_eq!(lines("since=2026-01-01T00%3A01%3A00Z"), ["b", "c"]);
        assert_eq!(lines("stream=stdout&tail=1"), ["c"]);
        assert_eq!(lines("stream=error"), ["b"]);
        assert!(Filter::parse("since=yesterday").is_err());
        assert!(Filter::parse("color=red").is_err());
    }
}
