//! Observability shared by every layer of `ol` (docs/architecture.md §3.11): the
//! phases of a call with their latency histograms and `tracing` spans
//! ([`phase`]), the lock-free histogram behind them ([`histogram`]) and
//! the worker's named counters ([`counters`]), and the id of each call
//! ([`request_id`]). The worker turns these into
//! `/stats`, `/metrics` and Chrome traces; lower layers only record.

pub mod counters;
pub mod histogram;
pub mod phase;
pub mod request_id;

pub use histogram::{HistogramSnapshot, LatencyHistogram};
pub use phase::Phase;
