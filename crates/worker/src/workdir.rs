//! The worker directory (docs/architecture.md §1.2): its layout, `ol worker init`, and
//! the files that say whether a worker runs in it (`worker/worker.pid`,
//! `worker/worker.port`).

use std::fs;
use std::path::{Path, PathBuf};

use ol_base::debootstrap::{self, Debootstrap};
use ol_base::{BaseKind, build_base};
use ol_sandbox::pids::{pid_record, process_start_time, read_pid_record};

use crate::WorkerError;
use crate::config::{Config, dir_setting};

/// The config file of a worker directory.
const CONFIG_FILE: &str = "config.json";

/// Example lambdas `init` puts in the registry: (lambda, file, source).
const EXAMPLES: &[(&str, &str, &str)] = &[
    (
        "hello",
        "f.py",
        include_str!("../../../examples/lambdas/hello/f.py"),
    ),
    (
        "hello-legacy",
        "lambda_func.py",
        include_str!("../../../examples/lambdas/hello-legacy/lambda_func.py"),
    ),
    (
        "echo",
        "f.py",
        include_str!("../../../examples/lambdas/echo/f.py"),
    ),
];

/// How `init` makes the base root file system.
#[derive(Debug, Clone)]
pub enum BaseSource {
    /// Mount points for the host's system (no download).
    Host,
    /// A Debian root file system made by debootstrap (cached).
    Debootstrap(Debootstrap),
}

impl BaseSource {
    /// The kind of base it makes.
    pub fn kind(&self) -> BaseKind {
        match self {
            Self::Host => BaseKind::Host,
            Self::Debootstrap(_) => BaseKind::Debootstrap,
        }
    }
}

/// Where a worker's files are: its config file, and the dirs the config
/// names (`worker_dir`, `base_dir`, `packages_dir`, `package_cache_dir`),
/// each by default beside the config file, as `ol worker init` lays them
/// out. Workers may share all but the state dir ([`Self::state`]).
#[derive(Debug, Clone)]
pub struct WorkerDir {
    /// The config file's directory: defaults and relative paths are
    /// taken from it.
    root: PathBuf,
    config_file: PathBuf,
    state: PathBuf,
    base: PathBuf,
    packages: PathBuf,
    cache: PathBuf,
}

/// A worker found running in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// Its pid.
    pub pid: u32,
    /// Its HTTP port, once it listens.
    pub port: Option<u16>,
}

impl WorkerDir {
    /// The worker directory at `root` (made absolute) as `ol worker init`
    /// lays it out: `config.json` and every dir inside it.
    pub fn new(root: &Path) -> Self {
        Self::locate(&root.join(CONFIG_FILE), &Config::default())
    }

    /// The worker `config` (read from `config_file`) describes.
    pub fn locate(config_file: &Path, config: &Config) -> Self {
        let config_file =
            std::path::absolute(config_file).unwrap_or_else(|_| config_file.to_path_buf());
        let root = config_file
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        Self {
            state: dir_setting(&root, &config.worker_dir, "worker"),
            base: dir_setting(&root, &config.base_dir, "base"),
            packages: dir_setting(&root, &config.packages_dir, "packages"),
            cache: dir_setting(&root, &config.package_cache_dir, "cache"),
            config_file,
            root,
        }
    }

    /// The worker of the config file `config_file`, read for its paths
    /// only ([`Config::read`]); a missing file gives the default layout
    /// beside it (nothing can run there, and `down` has nothing to do).
    pub fn open(config_file: &Path) -> Result<Self, WorkerError> {
        if !config_file.exists() {
            return Ok(Self::locate(config_file, &Config::default()));
        }
        Ok(Self::locate(config_file, &Config::read(config_file, &[])?))
    }

    /// The worker of the directory `root` (its `config.json`), as
    /// [`Self::open`] reads it.
    pub fn open_dir(root: &Path) -> Result<Self, WorkerError> {
        Self::open(&root.join(CONFIG_FILE))
    }

    /// The config file's directory (`-p DIR`).
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The config file.
    pub fn config_file(&self) -> PathBuf {
        self.config_file.clone()
    }
    /// Default local registry.
    pub fn registry(&self) -> PathBuf {
        self.root.join("registry")
    }
    /// The base root file system of sandboxes.
    pub fn base(&self) -> PathBuf {
        self.base.clone()
    }
    /// Installed packages.
    pub fn packages(&self) -> PathBuf {
        self.packages.clone()
    }
    /// The package installer's download cache.
    pub fn cache(&self) -> PathBuf {
        self.cache.clone()
    }
    /// The worker's own runtime state (never shared).
    pub fn state(&self) -> PathBuf {
        self.state.clone()
    }
    /// Where the worker remembers what its Python interpreter is
    /// (`ol_base::python::resolve_cached`).
    pub fn python_probe(&self) -> PathBuf {
        self.state.join("python-probe")
    }
    /// Per-sandbox scratch dirs.
    pub fn scratch(&self) -> PathBuf {
        self.state.join("scratch")
    }
    /// Where the embedded Python runtime is written.
    pub fn runtime(&self) -> PathBuf {
        self.state.join("runtime")
    }
    /// `worker.pid`: `<pid> <start time>`.
    pub fn pid_file(&self) -> PathBuf {
        self.state.join("worker.pid")
    }
    /// `worker.port`: the port the worker listens on.
    pub fn port_file(&self) -> PathBuf {
        self.state.join("worker.port")
    }
    /// `worker.id`: this worker's identity ([`Self::worker_id`]).
    pub fn id_file(&self) -> PathBuf {
        self.state.join("worker.id")
    }
    /// Log directory of `ol worker up -d`.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// Each lambda's output, kept after its sandboxes (`ol logs`).
    pub fn lambda_logs(&self) -> PathBuf {
        self.logs().join("lambdas")
    }
    /// The log of `ol worker up -d`.
    pub fn log_file(&self) -> PathBuf {
        self.logs().join("worker.log")
    }
    /// Whether `init` has run here.
    pub fn is_initialized(&self) -> bool {
        self.config_file().is_file()
    }

    /// `ol worker init`: creates the layout, builds the base from `base`
    /// (`progress` gets a line per step of a long build), writes
    /// config.json with every default, and puts the example lambdas in the
    /// registry. Refuses a directory that already has a config.
    pub fn init(
        &self,
        base: &BaseSource,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Config, WorkerError> {
        if self.is_initialized() {
            return Err(WorkerError::Usage(format!(
                "{} is already a worker directory (config.json exists); use another -p DIR or delete it first",
                self.root.display()
            )));
        }
        for dir in [
            self.root.clone(),
            self.registry(),
            self.packages(),
            self.state(),
            self.logs(),
        ] {
            create_dir(&dir)?;
        }
        let mut config = Config {
            registry: self.registry().display().to_string(),
            ..Config::default()
        };
        provision_base(&self.base(), base, &mut config, progress)?;
        // Asked now, so `up` reads the answer instead of starting Python
        // (a failure here is the same one `up` reports); for the same
        // reason the runtime is installed and byte-compiled now.
        let python = ol_base::python::resolve_cached(
            config.base,
            &self.base(),
            &config.python,
            &self.python_probe(),
        );
        if let Ok(python) = python
            && ol_sandbox::runtime::install_runtime(&self.runtime()).is_ok()
        {
            ol_sandbox::runtime::compile_runtime(&self.runtime(), &python.executable, config.base);
        }
        write_examples(&self.registry())?;
        write_config(&self.config_file(), &config)?;
        Ok(config)
    }

    /// Fails unless the base is of the kind `config` says (its marker and
    /// config.json `base` agree).
    pub fn check_base(&self, config: &Config) -> Result<(), WorkerError> {
        let found = BaseKind::detect(&self.base())?;
        if found == config.base {
            return Ok(());
        }
        Err(WorkerError::Usage(format!(
            "{} is a {} base but config.json says \"base\": \"{}\"; set \"base\" to \"{}\" in {} or make a new worker directory with `ol worker init --base {}`",
            self.base().display(),
            found.name(),
            config.base.name(),
            found.name(),
            self.config_file().display(),
            config.base.name()
        )))
    }

    /// The worker running in this directory, if its pid file names a live
    /// process (checked with its start time, so a recycled pid never
    /// counts).
    pub fn running(&self) -> Option<Running> {
        let (pid, started) = read_pid_record(&self.pid_file())?;
        if process_start_time(pid) != Some(started) {
            return None;
        }
        let port = fs::read_to_string(self.port_file())
            .ok()
            .and_then(|p| p.trim().parse().ok());
        Some(Running { pid, port })
    }

    /// Records this process as the directory's worker.
    pub fn write_pid(&self) -> Result<(), WorkerError> {
        write_file(&self.pid_file(), &pid_record(std::process::id()))
    }

    /// Records the port the worker listens on.
    pub fn write_port(&self, port: u16) -> Result<(), WorkerError> {
        write_file(&self.port_file(), &format!("{port}\n"))
    }

    /// This worker's identity: 32 hex digits, made at random the first
    /// time and kept in `worker.id` of the state dir, so it is the same
    /// after a restart and differs from any other worker's (each has its
    /// own state dir). Kafka triggers name their static group membership
    /// with it (docs/triggers.md).
    pub fn worker_id(&self) -> Result<String, WorkerError> {
        let path = self.id_file();
        if let Ok(id) = fs::read_to_string(&path) {
            let id = id.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(id.to_owned());
            }
        }
        let mut random = [0u8; 16];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
            .map_err(|source| WorkerError::Io {
                what: "reading",
                path: PathBuf::from("/dev/urandom"),
                source,
            })?;
        let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
        write_file(&path, &format!("{id}\n"))?;
        Ok(id)
    }

    /// Removes the pid and port files.
    pub fn clear_running(&self) {
        let _ = fs::remove_file(self.port_file());
        let _ = fs::remove_file(self.pid_file());
    }
}

/// Makes `base_dir` the sandboxes' base from `source` and records in
/// `config` what it is: its kind, the real Python interpreter, and the
/// `sock` backend for a self-contained base (which needs it). What `ol
/// worker init` does for one worker and `ol cluster new` for all of a
/// cluster's.
pub fn provision_base(
    base_dir: &Path,
    source: &BaseSource,
    config: &mut Config,
    progress: &mut dyn FnMut(&str),
) -> Result<(), WorkerError> {
    create_dir(base_dir)?;
    config.base = source.kind();
    if let BaseSource::Debootstrap(debootstrap) = source {
        debootstrap.build(base_dir, progress)?;
        config.python = debootstrap::PYTHON.into();
        config.sandbox = crate::config::SandboxKind::Sock;
    }
    // Record the real interpreter once so no worker start pays for the
    // pyenv shim (~45 ms per run: docs/benchmarks.md, "Floors"), and finish the sandboxes'
    // root. A host base tolerates a missing Python until `up`; a
    // self-contained one brings its own, so it must be there.
    match ol_base::python::resolve(config.base, base_dir, &config.python) {
        Ok(py) => {
            config.python = py.executable.display().to_string();
            build_base(base_dir, config.base, &py.prefix).map_err(|source| WorkerError::Io {
                what: "cannot build the base root file system in",
                path: base_dir.to_path_buf(),
                source,
            })?;
        }
        Err(e) if config.base.is_self_contained() => return Err(e.into()),
        Err(_) => {}
    }
    Ok(())
}

/// Puts the example lambdas (`hello`, `hello-legacy`, `echo`) into the
/// registry dir `registry`.
pub fn write_examples(registry: &Path) -> Result<(), WorkerError> {
    for (lambda, file, source) in EXAMPLES {
        let dir = registry.join(lambda);
        create_dir(&dir)?;
        write_file(&dir.join(file), source)?;
    }
    Ok(())
}

/// Writes `config` to `path` with every key, atomically, readable by its
/// owner alone (it may hold keys: `admin.key`, `registry_s3.secret_key`).
pub fn write_config(path: &Path, config: &Config) -> Result<(), WorkerError> {
    let mut text = serde_json::to_string_pretty(config)
        .map_err(|e| WorkerError::Usage(format!("cannot encode config: {e}")))?;
    text.push('\n');
    write_file_mode(path, &text, 0o600)
}

fn create_dir(dir: &Path) -> Result<(), WorkerError> {
    fs::create_dir_all(dir).map_err(|source| WorkerError::Io {
        what: "cannot create",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes a file atomically (temp file + rename), so a reader never sees
/// half of it.
fn write_file(path: &Path, text: &str) -> Result<(), WorkerError> {
    write_file_mode(path, text, 0o644)
}

/// [`write_file`] with permissions `mode` (less the umask).
fn write_file_mode(path: &Path, text: &str, mode: u32) -> Result<(), WorkerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| WorkerError::Io {
            what: "cannot write",
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_id_is_made_once_and_differs_between_state_dirs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let (a, b) = (WorkerDir::new(&a), WorkerDir::new(&b));
        for wd in [&a, &b] {
            fs::create_dir_all(wd.state()).expect("state dir");
        }
        let id = a.worker_id().expect("made");
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(a.worker_id().expect("kept"), id, "the same after a restart");
        assert_ne!(b.worker_id().expect("made"), id);
        // A damaged file is replaced rather than handed to the broker.
        fs::write(a.id_file(), "not an id\n").expect("damage");
        assert_ne!(a.worker_id().expect("remade"), "not an id");
    }

    #[test]
    fn init_makes_layout_config_and_examples_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let wd = WorkerDir::new(&tmp.path().join("ol"));
        let config = wd.init(&BaseSource::Host, &mut |_| {}).expect("init");
        for sub in ["registry", "base", "packages", "worker", "logs"] {
            assert!(wd.root().join(sub).is_dir(), "{sub}");
        }
        assert_eq!(
            fs::read_to_string(wd.registry().join("hello/f.py")).expect("hello"),
            EXAMPLES[0].2
        );
        assert!(wd.registry().join("hello-legacy/lambda_func.py").is_file());
        let loaded = Config::load(&wd.config_file(), &[]).expect("load");
        assert_eq!(loaded, config);
        // It may hold keys: its owner alone reads it.
        let mode = fs::metadata(wd.config_file()).expect("stat").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077, 0);
        assert_eq!(config.registry_dir(wd.root()), wd.registry());
        assert_eq!(config.base, BaseKind::Host);
        wd.check_base(&config).expect("host base, host config");
        let other = Config {
            base: BaseKind::Debootstrap,
            ..config.clone()
        };
        let err = wd.check_base(&other).expect_err("mismatch");
        assert!(
            err.to_string()
                .contains("is a host base but config.json says \"base\": \"debootstrap\""),
            "{err}"
        );
        let again = wd
            .init(&BaseSource::Host, &mut |_| {})
            .expect_err("second init");
        assert!(
            again.to_string().contains("already a worker directory"),
            "{again}"
        );
    }

    #[test]
    fn a_worker_is_located_by_its_config_file() {
        let wd = WorkerDir::new(Path::new("/w"));
        assert_eq!(wd.config_file(), Path::new("/w/config.json"));
        assert_eq!(
            (wd.state(), wd.base(), wd.packages(), wd.cache()),
            (
                "/w/worker".into(),
                "/w/base".into(),
                "/w/packages".into(),
                "/w/cache".into()
            )
        );
        let config = Config {
            worker_dir: "/c/workers/worker-0".into(),
            base_dir: "../base".into(),
            package_cache_dir: "/c/workers/package-cache".into(),
            ..Config::default()
        };
        let wd = WorkerDir::locate(Path::new("/c/config/worker-0.json"), &config);
        assert_eq!(wd.root(), Path::new("/c/config"));
        assert_eq!(wd.state(), Path::new("/c/workers/worker-0"));
        assert_eq!(wd.pid_file(), Path::new("/c/workers/worker-0/worker.pid"));
        assert_eq!(
            wd.base(),
            Path::new("/c/config/../base"),
            "relative: from the file's dir"
        );
        assert_eq!(
            wd.packages(),
            Path::new("/c/config/packages"),
            "default: beside it"
        );
        assert_eq!(wd.cache(), Path::new("/c/workers/package-cache"));
    }

    #[test]
    fn open_reads_the_paths_of_a_config_without_checking_its_values() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("w.json");
        let missing = WorkerDir::open(&file).expect("no file: the default layout");
        assert_eq!(missing.state(), tmp.path().join("worker"));
        // A value this machine would refuse at start: still found.
        fs::write(&file, r#"{"worker_dir": "/s/w1", "mem_pool_mb": 0}"#).expect("write");
        assert_eq!(
            WorkerDir::open(&file).expect("open").state(),
            Path::new("/s/w1")
        );
        fs::write(&file, r#"{"wroker_dir": "/s/w1"}"#).expect("write");
        let err = WorkerDir::open(&file).expect_err("unknown key");
        assert!(err.to_string().contains("wroker_dir"), "{err}");
    }

    #[test]
    fn running_needs_a_live_matching_process() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let wd = WorkerDir::new(tmp.path());
        create_dir(&wd.state()).expect("mkdir");
        assert_eq!(wd.running(), None);
        wd.write_pid().expect("pid");
        assert_eq!(
            wd.running(),
            Some(Running {
                pid: std::process::id(),
                port: None
            })
        );
        wd.write_port(5123).expect("port");
        assert_eq!(wd.running().and_then(|r| r.port), Some(5123));
        // Same pid, other start time: a recycled pid is not our worker.
        fs::write(wd.pid_file(), format!("{} 1\n", std::process::id())).expect("write");
        assert_eq!(wd.running(), None);
        wd.clear_running();
        assert!(!wd.pid_file().exists() && !wd.port_file().exists());
    }
}
