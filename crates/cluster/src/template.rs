//! `config/template.json`, the settings every worker of a cluster starts
//! from: made by `new` (the worker's defaults, with the cluster's shared
//! dirs filled in) and changed by `setconf`, which merges JSON into it and
//! keeps it only if the worker's own strict parsing accepts the result
//! ([`Config::from_value`]: unknown keys and bad values are refused,
//! naming the key).

use serde_json::Value;

use ol_worker::{BaseSource, Config, provision_base, write_config, write_examples};

use crate::{Cluster, ClusterError, io_err};

/// Settings each worker gets of its own from `ol cluster workers`, which
/// the template does not set.
const PER_WORKER: [(&str, &str); 2] = [
    ("worker_port", "--port of `ol cluster workers`"),
    ("worker_dir", "workers/worker-<N>/ by `ol cluster workers`"),
];

/// What `"registry"` may be set to for the cluster's own registry dir
/// (OpenLambda's `setconf '{"registry": "local"}'`).
const LOCAL_REGISTRY: &str = "local";

/// Writes the template of a new cluster: the worker's defaults over the
/// cluster's shared dirs, with the base built (once, for every worker)
/// and the example lambdas in the registry.
pub(crate) fn create(cluster: &Cluster) -> Result<(), ClusterError> {
    let mut config = Config::default();
    shared_dirs(cluster, &mut config);
    provision_base(&cluster.base(), &BaseSource::Host, &mut config, &mut |_| {})?;
    write_examples(&cluster.registry())?;
    write_config(&cluster.template(), &config)?;
    Ok(())
}

/// `ol cluster setconf`: merges the JSON object `settings` into the
/// template (objects key by key, `null` resetting a key to its default)
/// and writes it back with every key, if the worker accepts it.
pub fn setconf(cluster: &Cluster, settings: &str) -> Result<Config, ClusterError> {
    let patch: Value = serde_json::from_str(settings).map_err(|e| {
        ClusterError::Usage(format!(
            "the settings are not JSON ({e}); write them as one object: '{{\"sandbox\": \"sock\"}}'"
        ))
    })?;
    let Value::Object(keys) = &patch else {
        return Err(ClusterError::Usage(format!(
            "the settings must be a JSON object of keys and values, not {patch}"
        )));
    };
    if let Some((key, by)) = PER_WORKER.iter().find(|(k, _)| keys.contains_key(*k)) {
        return Err(ClusterError::Usage(format!(
            "config key `{key}` is set for each worker ({by}), not in the template"
        )));
    }
    let path = cluster.template();
    let text = std::fs::read_to_string(&path).map_err(io_err("cannot read", &path))?;
    let mut template: Value = serde_json::from_str(&text)
        .map_err(|e| ClusterError::Usage(format!("{} is not JSON: {e}", path.display())))?;
    merge(&mut template, patch);
    let mut config = Config::from_value(template)?;
    shared_dirs(cluster, &mut config);
    write_config(&path, &config)?;
    Ok(config)
}

/// Points the path settings left at their defaults (`""`, beside the
/// config file) at the cluster's shared dirs, so that every worker uses
/// the same registry, base, packages and download cache.
fn shared_dirs(cluster: &Cluster, config: &mut Config) {
    if config.registry == LOCAL_REGISTRY {
        config.registry.clear();
    }
    for (setting, dir) in [
        (&mut config.registry, cluster.registry()),
        (&mut config.base_dir, cluster.base()),
        (&mut config.packages_dir, cluster.packages()),
        (&mut config.package_cache_dir, cluster.package_cache()),
    ] {
        if setting.is_empty() {
            *setting = dir.display().to_string();
        }
    }
}

/// Merges `patch` into `target` (RFC 7386): an object merges into an
/// object key by key, `null` removes a key, anything else replaces.
fn merge(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(&key);
        } else {
            merge(map.entry(key).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_a_merge_patch() {
        let mut t = json!({"a": 1, "limits": {"mem_mb": 50, "procs": 10}, "s": "x"});
        merge(
            &mut t,
            json!({"limits": {"mem_mb": 128}, "s": null, "n": {"k": true}}),
        );
        assert_eq!(
            t,
            json!({"a": 1, "limits": {"mem_mb": 128, "procs": 10}, "n": {"k": true}})
        );
        merge(&mut t, json!({"limits": 3}));
        assert_eq!(t["limits"], 3);
    }

    /// A cluster dir with a template holding the defaults over its dirs,
    /// made without building a base.
    fn cluster_with_template() -> (tempfile::TempDir, Cluster) {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("config")).expect("mkdir");
        let cluster = Cluster::at(tmp.path());
        let mut config = Config::default();
        shared_dirs(&cluster, &mut config);
        write_config(&cluster.template(), &config).expect("template");
        (tmp, cluster)
    }

    #[test]
    fn setconf_merges_and_keeps_every_key_and_the_shared_dirs() {
        let (_tmp, cluster) = cluster_with_template();
        let c = setconf(
            &cluster,
            r#"{"sandbox": "process", "registry": "local", "limits": {"mem_mb": 64}}"#,
        )
        .expect("setconf");
        assert_eq!(c.sandbox, ol_worker::config::SandboxKind::Process);
        assert_eq!(c.limits.mem_mb, 64);
        assert_eq!(c.limits.procs, Config::default().limits.procs, "merged");
        assert_eq!(c.registry, cluster.registry().display().to_string());
        let written = Config::load(&cluster.template(), &[]).expect("reads back");
        assert_eq!(written, c);
        // null resets to the default: the cluster's shared dir.
        let c = setconf(&cluster, r#"{"packages_dir": "/elsewhere"}"#).expect("set");
        assert_eq!(c.packages_dir, "/elsewhere");
        let c = setconf(&cluster, r#"{"packages_dir": null}"#).expect("reset");
        assert_eq!(c.packages_dir, cluster.packages().display().to_string());
    }

    #[test]
    fn setconf_refuses_what_a_worker_would_naming_the_key_and_keeps_the_template() {
        let (_tmp, cluster) = cluster_with_template();
        let before = std::fs::read(cluster.template()).expect("template");
        for (settings, says) in [
            (r#"{"wroker_port": 1}"#, "config key `wroker_port`"),
            (r#"{"limits": {"mem_gb": 1}}"#, "mem_gb"),
            (
                r#"{"limits": {"mem_mb": "lots"}}"#,
                "config key `limits.mem_mb`",
            ),
            (r#"{"limits": {"runtime_sec": 0}}"#, "limits.runtime_sec"),
            (
                r#"{"worker_port": 9000}"#,
                "config key `worker_port` is set for each worker",
            ),
            (r#"{"worker_dir": "/x"}"#, "config key `worker_dir`"),
            (r#"{"sandbox": "#, "not JSON"),
            (r#"["sandbox"]"#, "must be a JSON object"),
        ] {
            let err = setconf(&cluster, settings).expect_err(settings);
            assert!(err.to_string().contains(says), "{settings}: {err}");
        }
        assert_eq!(std::fs::read(cluster.template()).expect("template"), before);
    }
}
