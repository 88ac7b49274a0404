//! Lambda layer of `ol` (docs/architecture.md §2, seed 001): turns an invocation of a
//! lambda by name into a call on one of its warm sandboxes, creating,
//! reusing and replacing sandboxes as needed.
//!
//! - `manager`: the [`LambdaManager`], which holds one `function` per
//!   lambda called so far (its idle instances kept warm, more started up to
//!   a bound when calls overlap); it runs calls and fails them with an
//!   [`InvokeError`], which the worker maps to HTTP statuses;
//! - `cron`: calls lambdas on their ol.yaml schedules, telling the time by
//!   a [`Clock`];
//! - [`ol_yaml`]: a lambda's optional config file;
//! - [`packages`]: installs lambdas' requirements; [`import_cache`]: the
//!   zygotes lambdas with packages fork from.

mod clock;
mod cron;
mod function;
pub mod import_cache;
mod invoke_error;
mod manager;
mod moving_average;
pub mod ol_yaml;
pub mod packages;

pub use clock::{Clock, SystemClock, TokioClock};
pub use invoke_error::InvokeError;
pub use manager::{
    LambdaManager, LambdaSettings, LambdaStats, PackageLayer, SandboxInfo, SandboxesByState, Stats,
    Trigger,
};
