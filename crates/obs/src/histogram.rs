//! [`LatencyHistogram`]: a fixed log-linear histogram of durations in
//! microseconds, recorded with a few relaxed atomic adds (no lock, no
//! allocation), so the hot path (~200 µs per call) can afford one per
//! phase. Each power of two is split into 8 linear buckets: a quantile is
//! known to within ±6.25%. Powers of two are bucket bounds, so counts at
//! `le = 2^k µs` (Prometheus buckets) are exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Linear buckets per power of two (a power of two itself).
const SUB_BUCKETS: usize = 8;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Largest recorded value: 2^40 µs (about 12 days); longer ones count here.
const MAX_EXPONENT: u32 = 40;
/// Buckets: 0..8 µs one each, then 8 per power of two up to 2^MAX_EXPONENT.
const BUCKETS: usize = SUB_BUCKETS * (MAX_EXPONENT - SUB_BITS + 1) as usize;
const MAX_US: u64 = (1 << MAX_EXPONENT) - 1;

/// Durations recorded concurrently from any thread.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket holding `us`.
fn bucket_of(us: u64) -> usize {
    let us = us.min(MAX_US);
    if us < SUB_BUCKETS as u64 {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (us >> shift) as usize - SUB_BUCKETS;
    (shift as usize + 1) * SUB_BUCKETS + sub
}

/// `[low, high)` in µs of bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < SUB_BUCKETS {
        return (i as u64, i as u64 + 1);
    }
    let shift = (i / SUB_BUCKETS - 1) as u32;
    let m = (SUB_BUCKETS + i % SUB_BUCKETS) as u64;
    (m << shift, (m + 1) << shift)
}

impl LatencyHistogram {
    /// An empty histogram (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.record_us(us);
    }

    /// Records one duration given in µs.
    pub fn record_us(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// A copy of the counts now (recording goes on meanwhile; the copy may
    /// be a few records apart between fields, never torn within one).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().sum(),
            buckets,
            sum_us: self.sum_us.load(Ordering::Relaxed),
            max_us: self.max_us.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    buckets: Vec<u64>,
    /// Durations recorded.
    pub count: u64,
    /// Their sum in µs.
    pub sum_us: u64,
    /// The longest, in µs.
    pub max_us: u64,
}

impl HistogramSnapshot {
    /// Mean in µs (0 when empty).
    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.sum_us as f64 / self.count as f64
    }

    /// The `q` quantile (0 < q ≤ 1) in µs: the middle of the bucket holding
    /// it, never above the maximum; `q = 1` is the maximum (0 when empty).
    pub fn quantile_us(&self, q: f64) -> f64 {
        let total = self.count;
        if total == 0 {
            return 0.0;
        }
        if q >= 1.0 {
            return self.max_us as f64;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, high) = bucket_range(i);
                let mid = (low + high - 1) as f64 / 2.0;
                return mid.min(self.max_us as f64);
            }
        }
        self.max_us as f64
    }

    /// How many recorded durations were below `2^exponent` µs; exact, as
    /// powers of two are bucket bounds.
    pub fn count_below_pow2(&self, exponent: u32) -> u64 {
        let bound = 1u64 << exponent.min(MAX_EXPONENT);
        self.buckets
            .iter()
            .enumerate()
            .take_while(|(i, _)| bucket_range(*i).1 <= bound)
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut expected_low = 0;
        for i in 0..BUCKETS {
            let (low, high) = bucket_range(i);
            assert_eq!(low, expected_low, "bucket {i}");
            assert!(high > low);
            assert_eq!(bucket_of(low), i);
            assert_eq!(bucket_of(high - 1), i);
            expected_low = high;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn buckets_are_within_one_eighth_of_their_values() {
        for i in SUB_BUCKETS..BUCKETS {
            let (low, high) = bucket_range(i);
            assert!((high - low) * 8 <= low, "bucket {i}: {low}..{high}");
        }
    }

    #[test]
    fn quantiles_mean_and_max_of_a_known_distribution() {
        let h = LatencyHistogram::new();
        // 1..=1000 µs, once each.
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 1000);
        assert_eq!(s.sum_us, 500_500);
        assert_eq!(s.max_us, 1000);
        assert!((s.mean_us() - 500.5).abs() < 1e-9);
        for (q, exact) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = s.quantile_us(q);
            assert!(
                (got - exact).abs() <= exact / 16.0,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(s.quantile_us(1.0), 1000.0);
    }

    #[test]
    fn small_values_are_exact_and_empty_is_zero() {
        let h = LatencyHistogram::new();
        assert_eq!(h.snapshot().quantile_us(0.5), 0.0);
        assert_eq!(h.snapshot().mean_us(), 0.0);
        for _ in 0..3 {
            h.record(Duration::from_micros(5));
        }
        h.record(Duration::from_nanos(300));
        let s = h.snapshot();
        assert_eq!(s.quantile_us(0.5), 5.0);
        assert_eq!(s.quantile_us(0.01), 0.0);
    }

    #[test]
    fn counts_below_powers_of_two_are_exact() {
        let h = LatencyHistogram::new();
        for us in [1, 63, 64, 65, 127, 128, 1_000_000] {
            h.record_us(us);
        }
        let s = h.snapshot();
        assert_eq!(s.count_below_pow2(6), 2); // < 64
        assert_eq!(s.count_below_pow2(7), 5); // < 128
        assert_eq!(s.count_below_pow2(8), 6);
        assert_eq!(s.count_below_pow2(20), 7);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let h = std::sync::Arc::new(LatencyHistogram::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = std::sync::Arc::clone(&h);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.record_us(i % 500 + t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        let s = h.snapshot();
        assert_eq!(s.count, 40_000);
        assert_eq!(s.buckets.iter().sum::<u64>(), 40_000);
    }
}
