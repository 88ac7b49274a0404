//! Latency samples of one measurement and their summary (percentiles,
//! mean, throughput), shared by every benchmark.

use std::time::Duration;

/// What one measurement collected: every call's latency, how many calls
/// failed and the first failure's message.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Latency of every completed call, failed ones included, in µs.
    pub latencies_us: Vec<u32>,
    /// Calls that did not answer 200 (or lost their connection).
    pub errors: usize,
    /// The first failure, as "status: body" or the transport error.
    pub first_error: Option<String>,
    /// Wall time the measurement took.
    pub elapsed: Duration,
}

impl Samples {
    /// Records one call.
    pub fn record(&mut self, latency: Duration, error: Option<String>) {
        self.latencies_us.push(micros(latency));
        if let Some(e) = error {
            self.record_error(e);
        }
    }

    /// Records a failure that has no latency (a lost connection).
    pub fn record_error(&mut self, error: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }

    /// Adds `other`'s calls and time to these (measurements split into
    /// interleaved slices add up to one).
    pub fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
    }
}

/// Latency in whole µs, saturating.
pub fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Percentiles and mean of a set of latencies, in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Summary {
    /// Summarizes `sorted` (ascending); all zero when empty.
    pub fn of_sorted(sorted: &[u32]) -> Self {
        let mean = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().map(|&v| v as f64).sum::<f64>() / sorted.len() as f64
        };
        Self {
            p50: percentile(sorted, 50.0),
            p90: percentile(sorted, 90.0),
            p99: percentile(sorted, 99.0),
            max: percentile(sorted, 100.0),
            mean,
        }
    }
}

/// Nearest-rank percentile `p` (0–100) of `sorted` (ascending); 0 for none.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        // Nearest rank never interpolates: p50 of 4 values is the 2nd.
        assert_eq!(percentile(&[10, 20, 30, 40], 50.0), 20.0);
        assert_eq!(percentile(&[10, 20, 30, 40], 51.0), 30.0);
    }

    #[test]
    fn summary_of_values() {
        let s = Summary::of_sorted(&[10, 20, 30, 40]);
        assert_eq!((s.p50, s.p90, s.p99, s.max), (20.0, 40.0, 40.0, 40.0));
        assert_eq!(s.mean, 25.0);
        assert_eq!(Summary::of_sorted(&[]).mean, 0.0);
    }

    #[test]
    fn merged_samples_add_up_and_keep_the_first_error() {
        let mut a = Samples::default();
        a.record(Duration::from_micros(5), None);
        a.elapsed = Duration::from_secs(1);
        let mut b = Samples::default();
        b.record(Duration::from_micros(7), Some("500: first".into()));
        b.record_error("second".into());
        b.elapsed = Duration::from_secs(2);
        a.merge(b);
        assert_eq!(a.latencies_us, vec![5, 7]);
        assert_eq!(a.errors, 2);
        assert_eq!(a.first_error.as_deref(), Some("500: first"));
        assert_eq!(a.elapsed, Duration::from_secs(3));
    }
}
