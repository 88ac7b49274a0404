//! config.json under random input (proptest): arbitrary JSON and `-o`
//! overrides never panic (they are accepted or refused with an error), and
//! valid configs round-trip through JSON.

use ol_worker::Config;
use ol_worker::config::apply_override;
use proptest::prelude::*;
use serde_json::Value;

const CASES: u32 = 2000;

/// Every key config.json has, dotted, and a few it has not.
const KEYS: &[&str] = &[
    "worker_host",
    "worker_port",
    "registry",
    "registry_cache_ms",
    "sandbox",
    "mem_pool_mb",
    "import_cache_tree",
    "limits.procs",
    "limits.mem_mb",
    "limits.cpu_percent",
    "limits.swappiness",
    "limits.runtime_sec",
    "limits.max_body_mb",
    "limits.max_response_mb",
    "limits.disk_mb",
    "limits.log_kb",
    "installer_limits.mem_mb",
    "installer_limits.runtime_sec",
    "scaling.max_instances",
    "scaling.max_queue",
    "scaling.idle_timeout_ms",
    "http.header_timeout_ms",
    "http.idle_timeout_ms",
    "http.max_connections",
    "admin.key",
    "admin.key_file",
    "admin.registry_write",
    "admin.registry_read",
    "admin.stats",
    "admin.metrics",
    "features.import_cache",
    "features.enable_seccomp",
    "pause_after_idle_ms",
    "pip_index_url",
    "trace.file",
    "python",
    "base",
    "limits",
    "http",
    "admin",
    "nope",
    "limits.nope.deeper",
];

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(KEYS).prop_map(|k| k
                        .split('.')
                        .next()
                        .unwrap_or(k)
                        .to_string()),
                    "[a-z_]{1,10}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn defaults() -> Value {
    serde_json::to_value(Config::default()).expect("serialize")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_json_never_panics(value in json()) {
        let _ = Config::from_value(value);
    }

    #[test]
    fn arbitrary_overrides_never_panic(
        overrides in prop::collection::vec(
            (
                prop_oneof![prop::sample::select(KEYS).prop_map(str::to_string), "[a-z_.=]{0,16}"],
                prop_oneof![
                    any::<i64>().prop_map(|n| n.to_string()),
                    any::<u64>().prop_map(|n| n.to_string()),
                    "\\PC{0,12}",
                    Just("{\"a\": [1, 2]}".to_string()),
                    Just("1e400".to_string()),
                ],
            ),
            1..6,
        ),
    ) {
        let mut value = defaults();
        let mut applied = true;
        for (key, raw) in &overrides {
            applied &= apply_override(&mut value, &format!("{key}={raw}")).is_ok();
        }
        if applied
            && let Err(e) = Config::from_value(value) {
                // Every refusal names a key (or the override).
                let msg = e.to_string();
                prop_assert!(msg.starts_with("config key `") || msg.contains("override"), "{msg}");
            }
    }

    #[test]
    fn valid_configs_round_trip(
        procs in 2u32..1000,
        mem_mb in 1u64..512,
        pool_extra in 0u64..4096,
        runtime_sec in 1u64..86_400,
        max_body_mb in 1u64..1024,
        max_response_mb in 1u64..1024,
        header_timeout_ms in 1u64..600_000,
        idle_timeout_ms in 1u64..600_000,
        max_connections in 1usize..256,
        port in any::<u16>(),
        seccomp in any::<bool>(),
    ) {
        let mut value = defaults();
        for o in [
            format!("limits.procs={procs}"),
            format!("limits.mem_mb={mem_mb}"),
            format!("installer_limits.mem_mb={mem_mb}"),
            format!("mem_pool_mb={}", mem_mb + pool_extra),
            format!("limits.runtime_sec={runtime_sec}"),
            format!("limits.max_body_mb={max_body_mb}"),
            format!("limits.max_response_mb={max_response_mb}"),
            format!("http.header_timeout_ms={header_timeout_ms}"),
            format!("http.idle_timeout_ms={idle_timeout_ms}"),
            format!("http.max_connections={max_connections}"),
            format!("worker_port={port}"),
            format!("features.enable_seccomp={seccomp}"),
        ] {
            apply_override(&mut value, &o).expect("override");
        }
        let config = Config::from_value(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(config.limits.procs, procs);
        prop_assert_eq!(config.http.max_connections, max_connections);
        let again = Config::from_value(serde_json::to_value(&config).expect("serialize"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again, config);
    }
}
