//! Observability shared by every layer of `ol` (docs/architecture.md §3.11): the
//! phases of a call with their latency histograms and `tracing` spans
//! ([`phase`]), the lock-free histogram behind them ([`histogram`]) and
//! the worker's named counters ([`counters`]). The worker turns these into
//! `/stats`, `/metrics` and Chrome traces; lower layers only record.

pub mod counters;
pub mod histogram;
pub mod phase;

pub use histogram::{HistogramSnapshot, LatencyHistogram};
pub use phase::Phase;
