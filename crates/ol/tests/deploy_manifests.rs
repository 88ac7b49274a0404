//! The Kubernetes manifests in `deploy/` (docs/cluster.md, "Beyond one
//! machine") agree with the worker and with each other: the workers'
//! config.json is a config the worker accepts, the admin key file it names
//! is where the Secret is mounted, the ports, probes and memory request
//! match the config, and the example Secret's placeholder key is one a
//! worker refuses. (`.ci/run` checks each manifest against Kubernetes'
//! schemas with kubernetes-validate.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ol_worker::Config;
use ol_worker::access::AdminConfig;
use serde_json::{Value, json};

/// The repository's `deploy/`.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every document of every `.yaml` file in `dir`, as JSON.
fn documents(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("deploy dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("manifest");
        // Documents are separated by `---` lines (the files start with none).
        for doc in text.split("\n---\n") {
            let value: Value = serde_yaml_ng::from_str(doc)
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", file.display()));
            docs.push(value);
        }
    }
    docs
}

/// The manifests `kubectl apply -f deploy/` applies, and the examples.
struct Manifests {
    applied: Vec<Value>,
    examples: Vec<Value>,
}

impl Manifests {
    fn load() -> Self {
        Self {
            applied: documents(&deploy_dir()),
            examples: documents(&deploy_dir().join("examples")),
        }
    }

    /// The resource of `kind` named `name`, among `docs`.
    fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        Self::find(&self.applied, kind, name)
    }
}

/// `value[key]` as a string.
fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {value}"))
}

/// The workers' config.json from the ConfigMap, as JSON.
fn worker_config_json(m: &Manifests) -> Value {
    let data = &m.get("ConfigMap", "ol-worker")["data"];
    serde_json::from_str(text(data, "config.json")).expect("config.json is JSON")
}

/// The workers' config.json parsed as the worker parses it, with the S3
/// keys that it leaves empty filled in as the DaemonSet's environment
/// fills them (from the Secret, as
/// `the_admin_key_file_is_where_the_secret_is_mounted_and_root_alone_reads_it`
/// checks).
fn worker_config(m: &Manifests) -> Config {
    let mut config = worker_config_json(m);
    let s3 = &mut config["registry_s3"];
    for key in ["access_key", "secret_key"] {
        assert!(
            s3[key].is_null() || s3[key] == "",
            "{key} is left to the environment, not {}",
            s3[key]
        );
        s3[key] = Value::from(format!("{key} from the environment"));
    }
    Config::from_value(config).unwrap_or_else(|e| panic!("the worker refuses config.json: {e}"))
}

/// The worker container of the DaemonSet, and its pod spec.
fn worker_pod(m: &Manifests) -> (&Value, &Value) {
    let spec = &m.get("DaemonSet", "ol-worker")["spec"]["template"]["spec"];
    let container = spec["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "worker"))
        .expect("a worker container");
    (spec, container)
}

/// The mount path of the pod volume whose source is `source` (its kind,
/// e.g. `secret`, and what it holds), and the volume.
fn mount_of<'a>(
    spec: &'a Value,
    container: &'a Value,
    source: (&str, &str, &str),
) -> (&'a str, &'a Value) {
    let (kind, field, name) = source;
    let volume = spec["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v[kind][field] == name))
        .unwrap_or_else(|| panic!("no {kind} volume of {name}"));
    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == volume["name"]))
        .unwrap_or_else(|| panic!("{} is not mounted", volume["name"]));
    (text(mount, "mountPath"), volume)
}

#[test]
fn every_resource_is_named_in_the_ol_namespace() {
    let m = Manifests::load();
    for doc in m.applied.iter().chain(&m.examples) {
        assert!(
            doc["apiVersion"].is_string() && doc["kind"].is_string(),
            "{doc}"
        );
        if doc["kind"] != "Namespace" {
            assert_eq!(doc["metadata"]["namespace"], "ol", "{}", doc["metadata"]);
        }
    }
    // The example Secret is not applied with the directory: it would
    // overwrite the real one.
    assert!(!m.applied.iter().any(|d| d["kind"] == "Secret"));
    m.get("Namespace", "ol");
}

#[test]
fn the_workers_config_is_one_the_worker_accepts_beyond_loopback() {
    let m = Manifests::load();
    let config = worker_config(&m);
    assert_eq!(config.worker_host, "0.0.0.0");
    // Beyond loopback with a key: every admin route keyed.
    assert!(
        config.admin.has_key() && config.admin.key.is_empty(),
        "the key is in a file"
    );
    assert_eq!(
        serde_json::to_value(&config.admin).expect("admin"),
        json!({
            "key": "",
            "key_file": config.admin.key_file,
            "registry_write": "key",
            "registry_read": "key",
            "stats": "key",
            "metrics": "key",
        })
    );
}

#[test]
fn the_admin_key_file_is_where_the_secret_is_mounted_and_root_alone_reads_it() {
    let m = Manifests::load();
    let config = worker_config(&m);
    let (spec, container) = worker_pod(&m);
    let (dir, volume) = mount_of(spec, container, ("secret", "secretName", "ol-secrets"));
    let items = volume["secret"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "only the admin key is a file: {items:?}");
    let key_file = Path::new(dir).join(text(&items[0], "path"));
    assert_eq!(key_file, Path::new(&config.admin.key_file));
    assert_eq!(volume["secret"]["defaultMode"], 0o400);
    let secret = Manifests::find(&m.examples, "Secret", "ol-secrets");
    let secret_keys = &secret["stringData"];
    assert!(secret_keys[text(&items[0], "key")].is_string());
    // The rest of the Secret arrives in the environment, by keys it has:
    // the S3 keys config.json leaves empty.
    let mut from_secret = Vec::new();
    for env in container["env"].as_array().expect("env") {
        if let Some(from) = env["valueFrom"]["secretKeyRef"].as_object() {
            assert_eq!(from["name"], "ol-secrets");
            assert!(secret_keys[text(&env["valueFrom"]["secretKeyRef"], "key")].is_string());
            from_secret.push(text(env, "name"));
        }
    }
    from_secret.sort_unstable();
    assert_eq!(from_secret, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
    assert_eq!(
        (
            config.registry_s3.access_key.as_str(),
            config.registry_s3.secret_key.as_str()
        ),
        (
            "access_key from the environment",
            "secret_key from the environment"
        )
    );
}

#[test]
fn the_example_secrets_placeholder_key_is_refused() {
    let m = Manifests::load();
    let secret = Manifests::find(&m.examples, "Secret", "ol-secrets");
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("admin-key"),
        text(&secret["stringData"], "admin-key"),
    )
    .expect("key file");
    let admin = AdminConfig {
        key_file: "admin-key".into(),
        ..AdminConfig::default()
    };
    let err = admin
        .load_key(&dir.path().join("config.json"))
        .expect_err("a placeholder key");
    assert!(
        err.to_string().starts_with("config key `admin.key_file`"),
        "{err}"
    );
}

#[test]
fn ports_probes_and_memory_match_the_config() {
    let m = Manifests::load();
    let config = worker_config(&m);
    let (_, container) = worker_pod(&m);
    let port = container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "http"))
        .expect("http port");
    assert_eq!(port["containerPort"], config.worker_port);
    let service = m.get("Service", "ol-workers");
    assert_eq!(
        service["spec"]["clusterIP"], "None",
        "headless: one address per worker"
    );
    assert_eq!(service["spec"]["ports"][0]["port"], config.worker_port);
    let policy = m.get("NetworkPolicy", "ol-worker-ingress");
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"][0]["port"],
        config.worker_port
    );
    // Probes use the one route that never needs the admin key.
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/status", "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }
    // The request reserves the sandboxes' pool, outside the pod's cgroup.
    let request = text(&container["resources"]["requests"], "memory");
    let mib: u64 = request
        .strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("memory request {request} is not in Mi"));
    assert!(
        mib > config.mem_pool_mb,
        "{mib} Mi for a pool of {} MiB",
        config.mem_pool_mb
    );
}

#[test]
fn the_entrypoint_is_run_from_the_config_mount_and_parses() {
    let m = Manifests::load();
    let config = worker_config(&m);
    let (spec, container) = worker_pod(&m);
    let (config_dir, _) = mount_of(spec, container, ("configMap", "name", "ol-worker"));
    let script_path = format!("{config_dir}/worker-entrypoint.sh");
    assert_eq!(container["command"], json!(["/bin/sh", script_path]));
    let data = &m.get("ConfigMap", "ol-worker")["data"];
    let script = text(data, "worker-entrypoint.sh");
    assert!(
        script.contains(&format!("cp {config_dir}/config.json ")),
        "{script}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("worker-entrypoint.sh");
    fs::write(&file, script).expect("script");
    let out = Command::new("sh")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The worker dir and the package cache are on the node.
    let (cache, _) = mount_of(spec, container, ("hostPath", "path", "/var/cache/ol"));
    assert!(
        config.package_cache_dir.starts_with(cache),
        "{}",
        config.package_cache_dir
    );
    let (worker_dir, _) = mount_of(spec, container, ("hostPath", "path", "/var/lib/ol"));
    assert!(
        script.contains(&format!("dir={worker_dir}/worker")),
        "{script}"
    );
    mount_of(spec, container, ("hostPath", "path", "/sys/fs/cgroup"));
    assert_eq!(container["securityContext"]["privileged"], true);
}

/// `ol lb`'s command line, as the `ol` binary parses it.
#[derive(Debug, clap::Parser)]
struct LbCli {
    #[command(subcommand)]
    lb: ol_lb::LbCommand,
}

#[test]
fn the_balancers_command_is_one_ol_lb_up_accepts_in_front_of_the_workers() {
    use clap::Parser;
    let m = Manifests::load();
    let worker_port = worker_config_json(&m)["worker_port"].clone();
    let spec = &m.get("Deployment", "ol-lb")["spec"]["template"]["spec"];
    let container = spec["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "lb"))
        .expect("an lb container");
    let command: Vec<&str> = container["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|a| a.as_str().expect("a string argument"))
        .collect();
    assert_eq!(command[..2], ["ol", "lb"], "{command:?}");
    let cli = LbCli::try_parse_from(&command[1..])
        .unwrap_or_else(|e| panic!("`ol lb up` refuses {command:?}: {e}"));
    let ol_lb::LbCommand::Up(up) = cli.lb else {
        panic!("not `ol lb up`: {command:?}");
    };
    let settings = up
        .engine_settings(&up.dir)
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    // Reachable from other pods, on the port the Service targets.
    assert_eq!(settings.host, "0.0.0.0");
    let port = container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "http"))
        .expect("http port");
    assert_eq!(port["containerPort"], settings.port);
    // Every worker of the headless Service, on the workers' port.
    let workers = ol_lb::UrlWorkers::parse(&up.workers).expect("worker URLs");
    assert_eq!(workers.0.len(), 1);
    assert_eq!(workers.0[0].host, "ol-workers.ol.svc.cluster.local");
    assert_eq!(json!(workers.0[0].port), worker_port);
    assert_eq!(m.get("Service", "ol-workers")["spec"]["clusterIP"], "None");
    // Its state dir is writable: an emptyDir, the root being read-only.
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let (state, _) = mount_of(spec, container, ("emptyDir", "medium", "Memory"));
    assert_eq!(Path::new(state), up.dir);
    // Ready while a worker is (the balancer's own /status).
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/status");
    // The image has the engine.
    let dockerfile = fs::read_to_string(deploy_dir().join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains(" haproxy"), "the image lacks haproxy");
}
