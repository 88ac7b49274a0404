//! `trace.file` / `ol worker up --trace FILE`: a `tracing` layer writing
//! the phase spans of every call ([`ol_obs::phase`]) as Chrome trace
//! events (JSON array format), which Perfetto and chrome://tracing open.
//!
//! Each span becomes one complete (`"ph": "X"`) event when it closes. A
//! call's spans share one track (`tid`), so the phases of a call nest on
//! one line; a track is free again once its call ends, so sequential calls
//! reuse track 1 and only concurrent calls open more. The file is finished
//! (its array closed, its buffer flushed) by [`TraceWriter::finish`] when
//! the worker stops.
//!
//! Why not the `tracing-chrome` crate (0.7): it writes begin and end
//! events, never complete `X` events, which `ol trace summarize` reads and
//! docs/observability.md promises. Its threaded style puts a `B`/`E` pair
//! on the OS thread's track at every enter and exit; a call's phases are
//! polled by whichever tokio worker thread runs them, so one call would be
//! scattered over several tracks with a pair of events per poll. Its async
//! style keys `b`/`e` events by each call's root span, a track per call
//! rather than a few tracks reused as calls end.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde_json::{Map, Value, json};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::WorkerError;

type Out = Arc<Mutex<Option<BufWriter<File>>>>;

/// The layer writing span events.
#[derive(Debug)]
pub struct ChromeTraceLayer {
    out: Out,
    epoch: Instant,
    pid: u32,
    tracks: Mutex<Tracks>,
}

/// Track numbers: small, reused (span ids are neither).
#[derive(Debug, Default)]
struct Tracks {
    opened: u64,
    free: Vec<u64>,
}

/// Finishes the trace file; dropping it finishes it too.
#[derive(Debug)]
pub struct TraceWriter {
    out: Out,
    path: PathBuf,
}

/// Where a span's event is built up until it closes.
struct SpanTiming {
    start: Instant,
    track: u64,
    /// Outermost span of its track: frees the track when it closes.
    root: bool,
    args: Map<String, Value>,
}

/// Creates `path` and a layer writing the phase spans to it (and nothing
/// else: it has its own filter, independent of `OL_LOG`).
pub fn chrome_trace<S>(
    path: &Path,
) -> Result<(Filtered<ChromeTraceLayer, Targets, S>, TraceWriter), WorkerError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let io_err = |what| {
        move |source| WorkerError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err("cannot create the directory of"))?;
    }
    let mut file = BufWriter::new(File::create(path).map_err(io_err("cannot create"))?);
    let pid = std::process::id();
    let header = json!({
        "name": "process_name", "ph": "M", "pid": pid, "tid": 0,
        "args": {"name": "ol worker"},
    });
    write!(file, "[\n{header}").map_err(io_err("cannot write"))?;
    let out: Out = Arc::new(Mutex::new(Some(file)));
    let layer = ChromeTraceLayer {
        out: Arc::clone(&out),
        epoch: Instant::now(),
        pid,
        tracks: Mutex::new(Tracks::default()),
    };
    let only_phases = Targets::new().with_target(ol_obs::phase::SPAN_TARGET, Level::TRACE);
    Ok((
        layer.with_filter(only_phases),
        TraceWriter {
            out,
            path: path.to_path_buf(),
        },
    ))
}

impl TraceWriter {
    /// Closes the JSON array and flushes; later spans are dropped.
    pub fn finish(&self) -> Result<(), WorkerError> {
        let taken = self
            .out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut file) = taken else {
            return Ok(());
        };
        file.write_all(b"\n]\n")
            .and_then(|()| file.flush())
            .map_err(|source| WorkerError::Io {
                what: "cannot write",
                path: self.path.clone(),
                source,
            })
    }

    /// The trace file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("{e}");
        }
    }
}

impl ChromeTraceLayer {
    /// A free track, naming it in the trace when it is new.
    fn open_track(&self) -> u64 {
        let mut tracks = self.tracks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(track) = tracks.free.pop() {
            return track;
        }
        tracks.opened += 1;
        let track = tracks.opened;
        drop(tracks);
        self.write(&json!({
            "name": "thread_name", "ph": "M", "pid": self.pid, "tid": track,
            "args": {"name": format!("calls {track}")},
        }));
        track
    }

    fn close_track(&self, track: u64) {
        let mut tracks = self.tracks.lock().unwrap_or_else(PoisonError::into_inner);
        tracks.free.push(track);
        // Lowest first, so a quiet worker keeps to track 1.
        tracks.free.sort_unstable_by(|a, b| b.cmp(a));
    }

    fn write(&self, event: &Value) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = out.as_mut() {
            // A failed write loses one event; the worker goes on serving.
            let _ = write!(file, ",\n{event}");
        }
    }
}

/// Microseconds, to the nanosecond.
fn micros(d: std::time::Duration) -> f64 {
    d.as_nanos() as f64 / 1e3
}

impl<S> Layer<S> for ChromeTraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent_track = span
            .parent()
            .and_then(|p| p.extensions().get::<SpanTiming>().map(|t| t.track));
        let root = parent_track.is_none();
        let track = parent_track.unwrap_or_else(|| self.open_track());
        let mut args = Map::new();
        attrs.record(&mut JsonFields(&mut args));
        span.extensions_mut().insert(SpanTiming {
            start: Instant::now(),
            track,
            root,
            args,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(timing) = span.extensions_mut().get_mut::<SpanTiming>() {
            values.record(&mut JsonFields(&mut timing.args));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let extensions = span.extensions();
        let Some(t) = extensions.get::<SpanTiming>() else {
            return;
        };
        let event = json!({
            "name": span.name(),
            "cat": "ol",
            "ph": "X",
            "ts": micros(t.start.duration_since(self.epoch)),
            "dur": micros(t.start.elapsed()),
            "pid": self.pid,
            "tid": t.track,
            "args": t.args,
        });
        self.write(&event);
        if t.root {
            self.close_track(t.track);
        }
    }
}

/// Records span fields as JSON values.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), json!(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), json!(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), json!(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), json!(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), json!(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ol_obs::Phase;
    use tracing_subscriber::layer::SubscriberExt;

    /// Runs `f` with `subscriber` as this thread's default. A second
    /// dispatcher stays registered meanwhile: with only one, tracing asks
    /// only the thread that first hits a callsite whether it is wanted, so
    /// another test's thread with no subscriber could cache "never" for a
    /// phase's span here (the same race made ol-obs's span test fail 3
    /// times in 100).
    fn with_subscriber(subscriber: impl tracing::Subscriber + Send + Sync, f: impl FnOnce()) {
        let _second = tracing::Dispatch::new(tracing_subscriber::registry());
        tracing::subscriber::with_default(subscriber, f);
    }

    #[test]
    fn concurrent_calls_get_tracks_of_their_own_and_free_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trace.json");
        let (layer, writer) = chrome_trace(&path).expect("trace file");
        let subscriber = tracing_subscriber::registry().with(layer);
        with_subscriber(subscriber, || {
            let a = Phase::Request.span();
            let b = Phase::Request.span();
            a.in_scope(|| Phase::Call.run(|| ()));
            b.in_scope(|| Phase::Call.run(|| ()));
            drop(a);
            drop(b);
            drop(Phase::Request.span());
        });
        writer.finish().expect("finish");
        let text = std::fs::read_to_string(&path).expect("read trace");
        let events: Vec<Value> = serde_json::from_str(&text).expect("JSON array");
        let tids: Vec<(&str, u64)> = events
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or(""),
                    e["tid"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            tids,
            [
                ("call", 1),
                ("call", 2),
                ("web-request", 1),
                ("web-request", 2),
                ("web-request", 1)
            ]
        );
    }

    #[test]
    fn phase_spans_become_nested_complete_events_on_one_track() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/trace.json");
        let (layer, writer) = chrome_trace(&path).expect("trace file");
        let subscriber = tracing_subscriber::registry().with(layer);
        with_subscriber(subscriber, || {
            let request = Phase::Request.span();
            request.record("lambda", "hello");
            request.in_scope(|| {
                Phase::QueueWait.run(|| ());
                Phase::SandboxCreate.run(|| Phase::SockAssign.run(|| ()));
                tracing::info_span!("not-a-phase").in_scope(|| ());
            });
            drop(request);
            Phase::Call.run(|| ());
        });
        writer.finish().expect("finish");
        let text = std::fs::read_to_string(&path).expect("read trace");
        let events: Vec<Value> = serde_json::from_str(&text).expect("trace is a JSON array");
        let spans: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
        let names: Vec<&str> = spans.iter().filter_map(|e| e["name"].as_str()).collect();
        // Written as they close: innermost first.
        assert_eq!(
            names,
            [
                "queue-wait",
                "sock-assign",
                "create-sandbox",
                "web-request",
                "call"
            ]
        );
        let by_name = |n: &str| *spans.iter().find(|e| e["name"] == n).expect(n);
        let request = by_name("web-request");
        assert_eq!(request["args"]["lambda"], "hello");
        for inner in ["queue-wait", "sock-assign", "create-sandbox"] {
            let e = by_name(inner);
            assert_eq!(e["tid"], request["tid"], "{inner}");
            let (ts, dur) = (e["ts"].as_f64(), e["dur"].as_f64());
            let (rts, rdur) = (request["ts"].as_f64(), request["dur"].as_f64());
            let (Some(ts), Some(dur), Some(rts), Some(rdur)) = (ts, dur, rts, rdur) else {
                panic!("ts/dur not numbers: {e}");
            };
            assert!(
                ts >= rts && ts + dur <= rts + rdur,
                "{inner} outside web-request"
            );
        }
        assert!(by_name("queue-wait")["ts"].as_f64() < by_name("create-sandbox")["ts"].as_f64());
        // Sequential calls share track 1, named once.
        assert_eq!(request["tid"], 1);
        assert_eq!(by_name("call")["tid"], 1);
        let named: Vec<&Value> = events
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .collect();
        assert_eq!(named.len(), 1, "{named:?}");
        // Finishing twice is harmless; spans after it are not written.
        writer.finish().expect("finish again");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
    }
}
