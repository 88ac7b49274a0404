//! One result row per measurement, and the ways `ol bench` shows rows: a
//! table on stdout, a JSON array, a CSV file.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stats::{Samples, Summary};
use crate::{BenchError, Result};

/// The result of one measurement: one benchmark, one target, one
/// connection count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Benchmark name: `hot`, `cold`, `first-call`, `numpy-cold`,
    /// `py64-seq`, ...
    pub bench: String,
    /// Which server was measured (`ours` for a worker the bench started).
    pub target: String,
    /// Lambda called, or a pattern such as `bench-py-[0,64)`.
    pub lambda: String,
    /// `seq` (one call at a time) or `par` (several connections).
    pub mode: String,
    /// Connections (clients) calling at once.
    pub connections: usize,
    /// Completed calls, failed ones included.
    pub requests: usize,
    /// Calls that failed.
    pub errors: usize,
    /// Wall time of the measurement.
    pub seconds: f64,
    /// `requests` over `seconds`.
    pub req_per_sec: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Slowest call, µs.
    pub max_us: f64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// The first failure's message; empty when every call succeeded.
    pub first_error: String,
    /// Every latency in µs, ascending (for the plot; not written out).
    #[serde(skip)]
    pub latencies_us: Vec<u32>,
}

/// What a row is about, apart from its samples.
pub struct RowKey<'a> {
    /// Benchmark name.
    pub bench: &'a str,
    /// Target name.
    pub target: &'a str,
    /// Lambda or pattern called.
    pub lambda: &'a str,
    /// Connections calling at once.
    pub connections: usize,
}

impl Row {
    /// Summarizes `samples` into a row.
    pub fn new(key: RowKey<'_>, mut samples: Samples) -> Self {
        samples.latencies_us.sort_unstable();
        let s = Summary::of_sorted(&samples.latencies_us);
        let seconds = samples.elapsed.as_secs_f64();
        let requests = samples.latencies_us.len();
        Row {
            bench: key.bench.to_string(),
            target: key.target.to_string(),
            lambda: key.lambda.to_string(),
            mode: if key.connections > 1 { "par" } else { "seq" }.to_string(),
            connections: key.connections,
            requests,
            errors: samples.errors,
            seconds,
            req_per_sec: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            p50_us: s.p50,
            p90_us: s.p90,
            p99_us: s.p99,
            max_us: s.max,
            mean_us: s.mean,
            first_error: samples.first_error.unwrap_or_default(),
            latencies_us: samples.latencies_us,
        }
    }

    /// p50, p90, p99 and max as [`human_us`] writes them: the latency
    /// columns of every table of rows.
    pub fn latency_columns(&self) -> [String; 4] {
        [self.p50_us, self.p90_us, self.p99_us, self.max_us].map(human_us)
    }
}

/// Prints `rows` as an aligned table, then the first error of each row
/// that has errors.
pub fn print_table(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<12} {:<9} {:<20} {:<4} {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "bench",
        "target",
        "lambda",
        "mode",
        "conns",
        "requests",
        "req/s",
        "p50",
        "p90",
        "p99",
        "max",
        "errors"
    )?;
    for r in rows {
        let [p50, p90, p99, max] = r.latency_columns();
        writeln!(
            out,
            "{:<12} {:<9} {:<20} {:<4} {:>5} {:>8} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>6}",
            r.bench,
            r.target,
            r.lambda,
            r.mode,
            r.connections,
            r.requests,
            r.req_per_sec,
            p50,
            p90,
            p99,
            max,
            r.errors
        )?;
    }
    for r in rows.iter().filter(|r| r.errors > 0) {
        writeln!(
            out,
            "first error of {} on {} ({} of {} calls failed): {}",
            r.bench, r.target, r.errors, r.requests, r.first_error
        )?;
    }
    Ok(())
}

/// A latency in µs written with a unit that keeps it short: `251µs`,
/// `5.62ms`, `1.20s`.
pub fn human_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// Writes `rows` as a pretty JSON array.
pub fn write_json(path: &Path, rows: &[Row]) -> Result<()> {
    let text = serde_json::to_string_pretty(rows)?;
    std::fs::write(path, text + "\n").map_err(|source| BenchError::File {
        what: "cannot write",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `rows` as CSV with a header line (the JSON fields, same order).
pub fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|source| BenchError::File {
        what: "cannot write",
        path: path.to_path_buf(),
        source,
    })?;
    write_csv_to(file, rows).map_err(|source| BenchError::Csv {
        path: path.to_path_buf(),
        source,
    })
}

fn write_csv_to(out: impl Write, rows: &[Row]) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(out);
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn row(bench: &str, error: Option<&str>) -> Row {
        let mut s = Samples::default();
        for us in [300, 100, 200] {
            s.record(Duration::from_micros(us), None);
        }
        if let Some(e) = error {
            s.record(Duration::from_micros(400), Some(e.to_string()));
        }
        s.elapsed = Duration::from_millis(500);
        Row::new(
            RowKey {
                bench,
                target: "ours",
                lambda: "hello",
                connections: 4,
            },
            s,
        )
    }

    #[test]
    fn row_summarizes_samples() {
        let r = row("hot", Some("500: boom"));
        assert_eq!((r.requests, r.errors, r.mode.as_str()), (4, 1, "par"));
        assert_eq!(r.req_per_sec, 8.0);
        assert_eq!((r.p50_us, r.max_us, r.mean_us), (200.0, 400.0, 250.0));
        assert_eq!(r.latencies_us, vec![100, 200, 300, 400]);
        assert_eq!(r.first_error, "500: boom");
    }

    #[test]
    fn csv_round_trips_with_quoted_fields() {
        let rows = vec![
            row("hot", None),
            row("cold", Some("500: {\"error\": \"a, b\"}\nline 2")),
        ];
        let mut buf = Vec::new();
        write_csv_to(&mut buf, &rows).expect("csv");
        let text = String::from_utf8(buf).expect("utf8");
        assert!(text.starts_with("bench,target,lambda,mode,connections,requests,errors,"));
        let back: Vec<Row> = csv::Reader::from_reader(text.as_bytes())
            .deserialize()
            .collect::<Result<_, _>>()
            .expect("parse");
        let without_latencies: Vec<Row> = rows
            .into_iter()
            .map(|r| Row {
                latencies_us: Vec::new(),
                ..r
            })
            .collect();
        assert_eq!(back, without_latencies);
    }

    #[test]
    fn json_is_an_array_of_rows_without_latencies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        write_json(&path, &[row("hot", None)]).expect("json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("parse");
        let r = &v.as_array().expect("array")[0];
        assert_eq!(r["bench"], "hot");
        assert_eq!(r["requests"], 3);
        assert_eq!(r["p50_us"], 200.0);
        assert_eq!(r["first_error"], "");
        assert!(r.get("latencies_us").is_none());
    }

    #[test]
    fn table_shows_rows_and_first_errors() {
        let mut out = Vec::new();
        print_table(
            &mut out,
            &[row("hot", None), row("cold", Some("500: boom"))],
        )
        .expect("table");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].starts_with("hot ") && lines[1].contains("200µs"));
        assert_eq!(
            lines[3],
            "first error of cold on ours (1 of 4 calls failed): 500: boom"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(251.4), "251µs");
        assert_eq!(human_us(5_620.0), "5.62ms");
        assert_eq!(human_us(1_200_000.0), "1.20s");
    }
}
