//! The worker's named counters: process-wide, lock-free, listed once in
//! [`declare_counters!`] below, and reported by `/stats` (under their
//! name) and `/metrics` (as `ol_<name>_total`) without further wiring.
//! Adding one is one line in the list; counting is
//! `ol_obs::counters::NAME.inc()` from any layer.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic counter with its name and help text.
#[derive(Debug)]
pub struct NamedCounter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl NamedCounter {
    /// A counter at zero (usable in a `static`).
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    /// Adds one.
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    /// Its name (`snake_case`, without the `_total` suffix).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One line saying what it counts.
    pub fn help(&self) -> &'static str {
        self.help
    }
}

/// Declares each counter as a `static` and lists it in [`ALL`].
macro_rules! declare_counters {
    ($($(#[$doc:meta])* $ident:ident = ($name:literal, $help:literal);)*) => {
        $(
            $(#[$doc])*
            pub static $ident: NamedCounter = NamedCounter::new($name, $help);
        )*
        /// Every counter, in declaration order.
        pub static ALL: &[&NamedCounter] = &[$(&$ident),*];
    };
}

declare_counters! {
    /// sock: a cold start took a pre-forked blank sandbox (a blank that
    /// then fails is retried once, so a cold start may count twice).
    BLANK_HITS = ("blank_hits", "Pre-forked blank sandboxes taken by cold starts");
    /// sock: a cold start found no blank ready and forked one itself.
    BLANK_MISSES = ("blank_misses", "Blank sandboxes forked on the spot by cold starts (none was ready)");
    /// sock: a cold start fell back to a fresh interpreter.
    FRESH_STARTS = ("fresh_starts", "Sandboxes started as a fresh interpreter (no zygote)");
    /// lambda: a sandbox of a lambda with packages was forked from an
    /// import-cache zygote.
    ZYGOTE_HITS = ("zygote_hits", "Sandboxes of lambdas with packages forked from an import-cache zygote");
    /// lambda: a sandbox of a lambda with packages was not (no node
    /// matched, or its zygote could not start).
    ZYGOTE_MISSES = ("zygote_misses", "Sandboxes of lambdas with packages not forked from an import-cache zygote");
    /// packages: a distribution was installed.
    PACKAGE_INSTALLS = ("package_installs", "Package distributions installed");
    /// packages: a call found its lambda's requirements unresolvable or
    /// uninstallable.
    PACKAGE_FAILURES = ("package_failures", "Calls failed because their lambda's packages could not be installed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_listed_with_distinct_snake_case_names() {
        let mut names: Vec<&str> = ALL.iter().map(|c| c.name()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(ALL.iter().all(|c| !c.help().is_empty()));
    }

    #[test]
    fn counting_adds_up() {
        let c = NamedCounter::new("test_things", "Things counted in a test");
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
    }
}
