//! The sandbox root file system at run time (docs/architecture.md §1.2, §3.2): what a
//! base must hold and how a sandbox is mounted over it.
//!
//! A base is of one [`BaseKind`], recorded in its [`BASE_MARKER`] file. A
//! host base holds mount points for the host's read-only system
//! directories ([`SYSTEM_DIRS`]) and Python, which every sandbox binds
//! from the host. A self-contained base (a Debian root file system) has
//! its own system and Python, so sandboxes bind nothing of the host's.
//! Both hold the mount points of [`inside`] and empty files to bind the
//! [`DEVICES`] onto. Making a directory such a base is `ol-base`'s job
//! (`ol_base::build_base`); this module is the contract it fulfils.
//! [`MountPlan`] lists, as data, every mount a new sandbox makes in its
//! private mount namespace before it pivots into the base; the data is
//! unit-tested here and carried out by the jail (`ol_jail::mounts`).

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::SandboxError;

/// Host directories a sandbox over a host base sees read-only, at the same
/// path.
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin",
];
/// Device nodes bound into the sandbox's `/dev`. No terminal: a sandbox
/// never reaches the terminal of whoever started the worker.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// Where, inside a sandbox, its parts live.
pub mod inside {
    /// The lambda's code (read-only).
    pub const HANDLER: &str = "/handler";
    /// Writable scratch of the lambda (a size-bounded tmpfs).
    pub const HOST: &str = "/host";
    /// Installed packages (read-only).
    pub const PACKAGES: &str = "/packages";
    /// The ol runtime (read-only).
    pub const RUNTIME: &str = "/ol";
    /// Private temporary files.
    pub const TMP: &str = "/tmp";
}
/// The uid and gid lambdas run as (`nobody`).
pub const SANDBOX_UID: u32 = ol_jail::SANDBOX_ID;

/// A sandbox's private `/tmp`: world-writable and sticky.
pub fn tmp_scratch(disk_mb: u64) -> ol_jail::outside::Scratch {
    ol_jail::outside::Scratch {
        size_mb: disk_mb,
        mode: 0o1777,
        owner: 0,
    }
}

/// A lambda's `/host`: the sandbox user's.
pub fn host_scratch(disk_mb: u64) -> ol_jail::outside::Scratch {
    ol_jail::outside::Scratch {
        size_mb: disk_mb,
        mode: 0o755,
        owner: SANDBOX_UID,
    }
}

/// A scratch file system as a tmpfs mount of the sandbox init's plan.
fn scratch_op(root: &Path, target: &str, s: ol_jail::outside::Scratch) -> MountOp {
    MountOp::Tmpfs {
        target: under(root, Path::new(target)),
        options: format!(
            "size={}m,nr_inodes={},mode={:o},uid={owner},gid={owner}",
            s.size_mb,
            ol_jail::outside::inodes_for(s.size_mb),
            s.mode,
            owner = s.owner
        ),
    }
}

/// File at the top of a base naming its [`BaseKind`]; written last, so a
/// base that has it is complete. A base without it (made before the file
/// existed) is a host base.
pub const BASE_MARKER: &str = ".ol-base";

/// What a base root file system is made of (config.json `base`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseKind {
    /// Mount points only: every sandbox binds the host's /usr, /lib*,
    /// /bin, /sbin and Python installation read-only (no download).
    #[default]
    Host,
    /// A Debian root file system made by `debootstrap`, with its own
    /// system and Python: sandboxes bind nothing of the host's system.
    Debootstrap,
}

impl BaseKind {
    /// Its name in config.json, on the command line and in the marker.
    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Debootstrap => "debootstrap",
        }
    }

    /// Whether the base has its own system directories and Python.
    pub fn is_self_contained(self) -> bool {
        self == Self::Debootstrap
    }

    /// The kind `base` was built as, from its marker (none: a host base).
    pub fn detect(base: &Path) -> Result<Self, SandboxError> {
        let marker = base.join(BASE_MARKER);
        match fs::read_to_string(&marker) {
            Ok(text) => Self::from_marker(&text).ok_or_else(|| {
                SandboxError::Base(format!(
                    "{} names an unknown base kind {:?}; make a new worker directory with `ol worker init`",
                    marker.display(),
                    text.trim()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::Host),
            Err(source) => Err(SandboxError::Io {
                what: "cannot read",
                path: marker,
                source,
            }),
        }
    }

    fn from_marker(text: &str) -> Option<Self> {
        [Self::Host, Self::Debootstrap]
            .into_iter()
            .find(|k| k.name() == text.trim())
    }
}

/// `path` (absolute, on the host or in the sandbox) re-rooted under `root`.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    root.join(rel)
}

/// A read-only bind of host `source` onto `target` inside `root`.
fn read_only(root: &Path, source: &Path, target: &Path) -> MountOp {
    MountOp::Bind {
        source: source.to_path_buf(),
        target: under(root, target),
        writable: false,
    }
}

/// Whether host `path` is inside one of the [`SYSTEM_DIRS`] (so it needs
/// no mount of its own).
pub fn is_covered_by_system_dirs(path: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| path.starts_with(d))
}

pub use ol_jail::mounts::{MountOp, MountPlan};

/// Host paths a sandbox is built from.
#[derive(Debug, Clone)]
pub struct RootSources<'a> {
    /// The base directory.
    pub base: &'a Path,
    /// What the base is made of.
    pub base_kind: BaseKind,
    /// The Python installation prefix.
    pub python_prefix: &'a Path,
    /// The lambda's code; none for a zygote (its children mount their own,
    /// and their `/host`).
    pub code: Option<&'a Path>,
    /// Size of `/host` and `/tmp` in MiB (`limits.disk_mb`).
    pub disk_mb: u64,
    /// The installed packages (may not exist yet).
    pub packages: &'a Path,
    /// Directory holding the ol runtime.
    pub runtime: &'a Path,
}

/// Host paths a command sandbox (the package installer) is built from.
#[derive(Debug, Clone)]
pub struct CommandSources<'a> {
    /// The base directory.
    pub base: &'a Path,
    /// What the base is made of.
    pub base_kind: BaseKind,
    /// The Python installation prefix.
    pub python_prefix: &'a Path,
    /// Host directories bound writable at the same path.
    pub writable: &'a [PathBuf],
    /// Host directories bound read-only at the same path.
    pub readable: &'a [PathBuf],
    /// Bind the host's /etc/resolv.conf and /etc/hosts (for a command that
    /// keeps the host's network).
    pub host_dns: bool,
    /// Size of its `/tmp` in MiB.
    pub disk_mb: u64,
}

/// Host files a networked command needs for name lookups.
const DNS_FILES: &[&str] = &["/etc/resolv.conf", "/etc/hosts"];

/// The mounts every sandbox starts with: the host's system directories
/// and Python installation (unless the base has its own), device nodes.
fn system_plan(base: &Path, kind: BaseKind, python_prefix: &Path) -> MountPlan {
    let root = base.to_path_buf();
    let mut ops = Vec::new();
    if !kind.is_self_contained() {
        for dir in SYSTEM_DIRS {
            let host = Path::new(dir);
            // Symlinks (merged /usr) are already in the base as links.
            if fs::symlink_metadata(host).is_ok_and(|m| m.is_dir()) {
                ops.push(read_only(&root, host, host));
            }
        }
        if !is_covered_by_system_dirs(python_prefix) {
            ops.push(read_only(&root, python_prefix, python_prefix));
        }
    }
    for dev in DEVICES {
        let node = Path::new("/dev").join(dev);
        ops.push(MountOp::Bind {
            source: node.clone(),
            target: under(&root, &node),
            // Device nodes must stay writable (/dev/null).
            writable: true,
        });
    }
    MountPlan { root, ops }
}

/// The mounts of a command sandbox: the system, a private /tmp and
/// /proc, then the `writable` and `readable` dirs at their host paths
/// (after /tmp, so a worker dir under /tmp is not hidden by it; the
/// init makes missing mount points).
pub fn command_plan(src: &CommandSources<'_>) -> MountPlan {
    let MountPlan { root, mut ops } = system_plan(src.base, src.base_kind, src.python_prefix);
    ops.push(scratch_op(&root, inside::TMP, tmp_scratch(src.disk_mb)));
    ops.push(MountOp::Proc {
        target: under(&root, Path::new("/proc")),
    });
    for (dirs, writable) in [(src.readable, false), (src.writable, true)] {
        for dir in dirs {
            ops.push(MountOp::Bind {
                source: dir.clone(),
                target: under(&root, dir),
                writable,
            });
        }
    }
    if src.host_dns {
        for file in DNS_FILES.iter().map(Path::new) {
            if file.is_file() && under(&root, file).is_file() {
                ops.push(read_only(&root, file, file));
            }
        }
    }
    ops.push(MountOp::ReadOnlyRoot);
    MountPlan { root, ops }
}

/// The mounts of a lambda sandbox.
pub fn lambda_plan(src: &RootSources<'_>) -> MountPlan {
    let MountPlan { root, mut ops } = system_plan(src.base, src.base_kind, src.python_prefix);
    let ro = |source: &Path, target: &Path| read_only(&root, source, target);
    if let Some(code) = src.code {
        ops.push(ro(code, Path::new(inside::HANDLER)));
    }
    ops.push(ro(src.runtime, Path::new(inside::RUNTIME)));
    if src.packages.is_dir() {
        ops.push(ro(src.packages, Path::new(inside::PACKAGES)));
    }
    if src.code.is_some() {
        ops.push(scratch_op(&root, inside::HOST, host_scratch(src.disk_mb)));
    }
    ops.push(scratch_op(&root, inside::TMP, tmp_scratch(src.disk_mb)));
    ops.push(MountOp::Proc {
        target: under(&root, Path::new("/proc")),
    });
    ops.push(MountOp::ReadOnlyRoot);
    MountPlan { root, ops }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_reroots_absolute_paths() {
        assert_eq!(
            under(Path::new("/b"), Path::new("/usr/lib")),
            PathBuf::from("/b/usr/lib")
        );
        assert_eq!(
            under(Path::new("/b"), Path::new("/../etc")),
            PathBuf::from("/b/etc")
        );
    }

    #[test]
    fn marker_is_detected_and_unknown_kinds_are_errors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(BaseKind::detect(tmp.path()).expect("none"), BaseKind::Host);
        for (text, kind) in [
            ("host\n", BaseKind::Host),
            ("debootstrap\n", BaseKind::Debootstrap),
            ("debootstrap", BaseKind::Debootstrap),
        ] {
            fs::write(tmp.path().join(BASE_MARKER), text).expect("marker");
            assert_eq!(BaseKind::detect(tmp.path()).expect(text), kind);
        }
        fs::write(tmp.path().join(BASE_MARKER), "docker\n").expect("marker");
        let err = BaseKind::detect(tmp.path()).expect_err("unknown");
        assert!(err.to_string().contains("unknown base kind"), "{err}");
        assert_eq!(
            serde_json::to_value(BaseKind::Debootstrap).expect("json"),
            serde_json::json!("debootstrap")
        );
    }

    /// Host-side sources of every bind in `plan`.
    fn bind_sources(plan: &MountPlan) -> Vec<&Path> {
        plan.ops
            .iter()
            .filter_map(|op| match op {
                MountOp::Bind { source, .. } => Some(source.as_path()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn self_contained_plans_bind_nothing_of_the_host_system() {
        let prefix = Path::new("/opt/py");
        let lambda = |base_kind| {
            lambda_plan(&RootSources {
                base: Path::new("/w/base"),
                base_kind,
                python_prefix: prefix,
                code: Some(Path::new("/w/registry/hello")),
                disk_mb: 64,
                packages: Path::new("/nonexistent/packages"),
                runtime: Path::new("/w/runtime"),
            })
        };
        let command = |base_kind| {
            command_plan(&CommandSources {
                base: Path::new("/w/base"),
                base_kind,
                python_prefix: prefix,
                writable: &[PathBuf::from("/w/cache")],
                readable: &[PathBuf::from("/w/tools")],
                host_dns: false,
                disk_mb: 64,
            })
        };
        let is_host_system =
            |p: &&Path| *p == prefix || SYSTEM_DIRS.iter().any(|d| p.starts_with(d));
        for plan in [lambda(BaseKind::Host), command(BaseKind::Host)] {
            assert!(
                bind_sources(&plan).iter().any(is_host_system),
                "a host base binds the host's system: {plan:?}"
            );
        }
        for plan in [
            lambda(BaseKind::Debootstrap),
            command(BaseKind::Debootstrap),
        ] {
            let sources = bind_sources(&plan);
            assert!(!sources.iter().any(is_host_system), "{plan:?}");
            // Device nodes, /tmp, /proc and the read-only root stay.
            for dev in DEVICES {
                assert!(sources.contains(&Path::new("/dev").join(dev).as_path()));
            }
            assert!(plan.ops.contains(&MountOp::Proc {
                target: "/w/base/proc".into()
            }));
            assert!(
                plan.ops
                    .iter()
                    .any(|op| matches!(op, MountOp::Tmpfs { .. }))
            );
            assert_eq!(plan.ops.last(), Some(&MountOp::ReadOnlyRoot));
        }
        let sources = bind_sources(&lambda(BaseKind::Debootstrap)).len();
        // Code and runtime besides the device nodes.
        assert_eq!(sources, DEVICES.len() + 2);
        let cmd = command(BaseKind::Debootstrap);
        assert!(bind_sources(&cmd).contains(&Path::new("/w/tools")));
        assert!(bind_sources(&cmd).contains(&Path::new("/w/cache")));
    }

    #[test]
    fn lambda_plan_binds_code_ro_bounds_scratch_and_ends_read_only() {
        let src = RootSources {
            base: Path::new("/w/base"),
            base_kind: BaseKind::Host,
            python_prefix: Path::new("/opt/py"),
            code: Some(Path::new("/w/registry/hello")),
            disk_mb: 32,
            packages: Path::new("/nonexistent/packages"),
            runtime: Path::new("/w/worker/runtime"),
        };
        let plan = lambda_plan(&src);
        assert_eq!(plan.root, PathBuf::from("/w/base"));
        assert!(plan.ops.contains(&MountOp::Bind {
            source: "/w/registry/hello".into(),
            target: "/w/base/handler".into(),
            writable: false
        }));
        assert!(plan.ops.contains(&MountOp::Bind {
            source: "/opt/py".into(),
            target: "/w/base/opt/py".into(),
            writable: false
        }));
        // /host and /tmp are tmpfs of the lambda's disk size: the host's
        // disk is never written by a lambda.
        let tmpfs = |target: &str| {
            plan.ops.iter().find_map(|op| match op {
                MountOp::Tmpfs { target: t, options } if t == Path::new(target) => {
                    Some(options.clone())
                }
                _ => None,
            })
        };
        let host = tmpfs("/w/base/host").expect("/host tmpfs");
        assert!(
            host.starts_with("size=32m,") && host.contains("uid=65534"),
            "{host}"
        );
        let tmp = tmpfs("/w/base/tmp").expect("/tmp tmpfs");
        assert!(
            tmp.starts_with("size=32m,") && tmp.contains("mode=1777"),
            "{tmp}"
        );
        assert!(plan.ops.contains(&MountOp::Bind {
            source: "/usr".into(),
            target: "/w/base/usr".into(),
            writable: false
        }));
        // Missing package dir: no bind; /tmp and /proc are fresh.
        assert!(
            !plan.ops.iter().any(
                |op| matches!(op, MountOp::Bind { target, .. } if target.ends_with("packages"))
            )
        );
        assert!(plan.ops.contains(&MountOp::Proc {
            target: "/w/base/proc".into()
        }));
        assert_eq!(plan.ops.last(), Some(&MountOp::ReadOnlyRoot));
        // Only device nodes are writable binds.
        let writable: Vec<&PathBuf> = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                MountOp::Bind {
                    target,
                    writable: true,
                    ..
                } => Some(target),
                _ => None,
            })
            .collect();
        assert_eq!(writable.len(), DEVICES.len());
    }
}
