//! `ol trace summarize FILE`: a per-phase table (count, mean, p50, p99,
//! max) of the complete events (`"ph": "X"`) of a Chrome trace file, such
//! as one written by `ol worker up --trace FILE`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::Value;

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Print count, mean, p50, p99 and max duration of each span name.
    Summarize {
        /// A Chrome trace-event file (JSON array or {"traceEvents": [...]}).
        file: PathBuf,
    },
}

pub fn run(cmd: TraceCommand) -> Result<()> {
    match cmd {
        TraceCommand::Summarize { file } => {
            let rows = summarize(&read_events(&file)?);
            if rows.is_empty() {
                bail!(
                    "{} holds no complete (\"ph\": \"X\") events; was a lambda called while the worker traced?",
                    file.display()
                );
            }
            print!("{}", table(&rows));
            Ok(())
        }
    }
}

/// The events of a trace file. A file cut short (a worker killed before
/// it finished the file) is read up to its last complete event.
fn read_events(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_events(&text).with_context(|| {
        format!(
            "{} is not a Chrome trace-event file (a JSON array of events)",
            path.display()
        )
    })
}

fn parse_events(text: &str) -> Result<Vec<Value>> {
    let whole = serde_json::from_str::<Value>(text).or_else(|e| {
        // Unfinished array (one event per line): keep the lines up to the
        // last complete event, close it.
        let mut lines: Vec<&str> = text.lines().collect();
        while lines
            .last()
            .is_some_and(|l| !l.trim_end().trim_end_matches(',').ends_with('}'))
        {
            lines.pop();
        }
        let kept = lines.join("\n");
        let kept = kept.trim_end().trim_end_matches(',');
        serde_json::from_str::<Value>(&format!("{kept}\n]")).map_err(|_| e)
    })?;
    match whole {
        Value::Array(events) => Ok(events),
        Value::Object(mut top) => match top.remove("traceEvents") {
            Some(Value::Array(events)) => Ok(events),
            _ => bail!("no traceEvents array"),
        },
        _ => bail!("neither an array nor an object"),
    }
}

/// One span name's durations, in ms.
#[derive(Debug, PartialEq)]
struct Row {
    name: String,
    count: usize,
    mean: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

/// One row per span name, in the order the names first start.
fn summarize(events: &[Value]) -> Vec<Row> {
    let mut by_name: HashMap<&str, (f64, Vec<f64>)> = HashMap::new();
    for e in events.iter().filter(|e| e["ph"] == "X") {
        let (Some(name), Some(ts), Some(dur)) =
            (e["name"].as_str(), e["ts"].as_f64(), e["dur"].as_f64())
        else {
            continue;
        };
        let entry = by_name.entry(name).or_insert((ts, Vec::new()));
        entry.0 = entry.0.min(ts);
        entry.1.push(dur / 1e3);
    }
    let mut rows: Vec<(f64, Row)> = by_name
        .into_iter()
        .map(|(name, (first, mut ms))| {
            ms.sort_by(f64::total_cmp);
            let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
            let row = Row {
                name: name.to_string(),
                count: ms.len(),
                mean: ms.iter().sum::<f64>() / ms.len() as f64,
                p50: rank(0.5),
                p99: rank(0.99),
                max: ms[ms.len() - 1],
            };
            (first, row)
        })
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    rows.into_iter().map(|(_, row)| row).collect()
}

fn table(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(5);
    let mut out = format!(
        "{:<width$} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
        "phase", "count", "mean ms", "p50 ms", "p99 ms", "max ms"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<width$} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            r.name, r.count, r.mean, r.p50, r.p99, r.max
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn x(name: &str, ts: f64, dur_us: f64) -> Value {
        json!({"name": name, "ph": "X", "ts": ts, "dur": dur_us, "pid": 1, "tid": 1})
    }

    #[test]
    fn rows_follow_first_start_with_exact_statistics() {
        let mut events = vec![json!({"name": "process_name", "ph": "M", "pid": 1})];
        // 100 calls of 1..=100 ms, one create of 5 ms before them.
        for i in 1..=100 {
            events.push(x("call", 1000.0 * f64::from(i), 1000.0 * f64::from(i)));
        }
        events.push(x("create-sandbox", 10.0, 5000.0));
        let rows = summarize(&events);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            Row {
                name: "create-sandbox".into(),
                count: 1,
                mean: 5.0,
                p50: 5.0,
                p99: 5.0,
                max: 5.0
            }
        );
        let call = &rows[1];
        assert_eq!(
            (call.count, call.p50, call.p99, call.max),
            (100, 50.0, 99.0, 100.0)
        );
        assert!((call.mean - 50.5).abs() < 1e-9);
        let text = table(&rows);
        assert!(text.lines().next().is_some_and(|h| h.starts_with("phase")));
        assert!(text.contains("create-sandbox       1      5.000"), "{text}");
    }

    #[test]
    fn unfinished_and_object_forms_are_read() {
        let unfinished = "[\n{\"name\":\"a\",\"ph\":\"X\",\"ts\":1,\"dur\":2},\n{\"name\":\"b\",\"ph\":\"X\",\"ts\":3,\"dur\":4},\n{\"name\":\"c\",\"ph";
        let events = parse_events(unfinished).expect("cut file");
        assert_eq!(events.len(), 2);
        let object = r#"{"traceEvents": [{"name":"a","ph":"X","ts":1,"dur":2}]}"#;
        assert_eq!(parse_events(object).expect("object form").len(), 1);
        assert!(parse_events("not json").is_err());
    }
}
