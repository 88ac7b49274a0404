//! The sandbox root file system (DESIGN.md §1.2, §3.2).
//!
//! [`build_base`] assembles `DIR/base` once, at `ol worker init`, from the
//! host without any download: mount points for the host's read-only system
//! directories, a minimal synthesized `/etc`, empty files to bind device
//! nodes onto. [`MountPlan`] lists, as data, every mount a new sandbox makes
//! in its private mount namespace before it pivots into the base; the data
//! is unit-tested here and carried out by the sandbox init (`sys`).

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

/// Host directories a sandbox sees read-only, at the same path.
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin",
];
/// Device nodes bound into the sandbox's `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// CA bundles tried, in order, for the sandbox's `/etc/ssl/certs`.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];
/// Where, inside a sandbox, its parts live.
pub mod inside {
    /// The lambda's code (read-only).
    pub const HANDLER: &str = "/handler";
    /// Writable scratch, shared with the worker (logs, files for the user).
    pub const HOST: &str = "/host";
    /// Installed packages (read-only).
    pub const PACKAGES: &str = "/packages";
    /// The ol runtime (read-only).
    pub const RUNTIME: &str = "/ol";
    /// Private temporary files.
    pub const TMP: &str = "/tmp";
}
/// The uid and gid lambdas run as (`nobody`).
pub const SANDBOX_UID: u32 = 65534;
/// Size of each sandbox's private `/tmp` (a tmpfs; pages count against the
/// sandbox's memory limit).
pub const TMP_SIZE: &str = "size=64m,mode=1777";

/// Builds `base` from the host: mount points for the system directories
/// and the Python installation at `python_prefix`, a synthesized `/etc`,
/// `/dev` stubs. Idempotent: running it again refreshes the synthesized
/// files.
pub fn build_base(base: &Path, python_prefix: &Path) -> io::Result<()> {
    fs::create_dir_all(base)?;
    for dir in SYSTEM_DIRS {
        let host = Path::new(dir);
        let inner = under(base, host);
        match fs::symlink_metadata(host) {
            // A merged-/usr host has /lib -> usr/lib: copy the link itself.
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(host)?;
                if fs::read_link(&inner).ok().as_deref() != Some(target.as_path()) {
                    let _ = fs::remove_file(&inner);
                    symlink(&target, &inner)?;
                }
            }
            Ok(m) if m.is_dir() => fs::create_dir_all(&inner)?,
            _ => {}
        }
    }
    for dir in [
        inside::HANDLER,
        inside::HOST,
        inside::PACKAGES,
        inside::RUNTIME,
        inside::TMP,
        "/proc",
        "/dev",
        "/etc/ssl/certs",
        "/root",
    ] {
        fs::create_dir_all(under(base, Path::new(dir)))?;
    }
    if !is_covered_by_system_dirs(python_prefix) {
        fs::create_dir_all(under(base, python_prefix))?;
    }
    // Let the sandbox user traverse the directories leading to the Python
    // installation (/root is 0700 on the host, not in the base).
    let mut p = base.to_path_buf();
    for c in python_prefix
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
    {
        p.push(c);
        if p.is_dir() && !fs::symlink_metadata(&p)?.file_type().is_symlink() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        }
    }
    fs::set_permissions(
        under(base, Path::new(inside::TMP)),
        fs::Permissions::from_mode(0o1777),
    )?;
    for dev in DEVICES {
        let stub = base.join("dev").join(dev);
        if !stub.exists() {
            fs::write(&stub, "")?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = base.join("dev").join(link);
        if fs::symlink_metadata(&path).is_err() {
            symlink(target, &path)?;
        }
    }
    write_etc(base)
}

fn write_etc(base: &Path) -> io::Result<()> {
    let etc = base.join("etc");
    let uid = SANDBOX_UID;
    let files = [
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:{uid}:{uid}:nobody:/tmp:/usr/sbin/nologin\n"
            ),
        ),
        ("group", format!("root:x:0:\nnogroup:x:{uid}:\n")),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n".to_string()),
        ("hostname", "ol-sandbox\n".to_string()),
        // No network by default; an empty resolv.conf fails lookups fast.
        ("resolv.conf", String::new()),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n".to_string(),
        ),
    ];
    for (name, text) in files {
        fs::write(etc.join(name), text)?;
    }
    if let Some(bundle) = CA_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
        fs::copy(bundle, etc.join("ssl/certs/ca-certificates.crt"))?;
    }
    Ok(())
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

fn is_covered_by_system_dirs(path: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| path.starts_with(d))
}

/// One mount a sandbox makes, in order, inside its own mount namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MountOp {
    /// Bind `source` onto `target` (recursively), read-only unless
    /// `writable`.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path under the new root.
        target: PathBuf,
        /// Leave it writable.
        writable: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Path under the new root.
        target: PathBuf,
        /// Mount options (`size=...,mode=...`).
        options: String,
    },
    /// A proc file system for the sandbox's pid namespace.
    Proc {
        /// Path under the new root.
        target: PathBuf,
    },
    /// Make the root itself read-only once everything is mounted.
    ReadOnlyRoot,
}

/// Everything a sandbox mounts before it pivots into `root`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountPlan {
    /// The new root (the base directory, bound onto itself first).
    pub root: PathBuf,
    /// Mounts in order.
    pub ops: Vec<MountOp>,
}

/// Host paths a sandbox is built from.
#[derive(Debug, Clone)]
pub struct RootSources<'a> {
    /// The base directory.
    pub base: &'a Path,
    /// The Python installation prefix.
    pub python_prefix: &'a Path,
    /// The lambda's code; none for a zygote (its children mount their own).
    pub code: Option<&'a Path>,
    /// The sandbox's writable scratch directory.
    pub scratch: &'a Path,
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
    /// The Python installation prefix.
    pub python_prefix: &'a Path,
    /// Host directories bound writable at the same path.
    pub writable: &'a [PathBuf],
    /// Host directories bound read-only at the same path.
    pub readable: &'a [PathBuf],
    /// Bind the host's /etc/resolv.conf and /etc/hosts (for a command that
    /// keeps the host's network).
    pub host_dns: bool,
}

/// Host files a networked command needs for name lookups.
const DNS_FILES: &[&str] = &["/etc/resolv.conf", "/etc/hosts"];

impl MountPlan {
    /// The mounts every sandbox starts with: the system directories, the
    /// Python installation, device nodes.
    fn system(base: &Path, python_prefix: &Path) -> Self {
        let root = base.to_path_buf();
        let mut ops = Vec::new();
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
        for dev in DEVICES {
            let node = Path::new("/dev").join(dev);
            ops.push(MountOp::Bind {
                source: node.clone(),
                target: under(&root, &node),
                // Device nodes must stay writable (/dev/null).
                writable: true,
            });
        }
        Self { root, ops }
    }

    /// The mounts of a command sandbox: the system, a private /tmp and
    /// /proc, then the `writable` and `readable` dirs at their host paths
    /// (after /tmp, so a worker dir under /tmp is not hidden by it; the
    /// init makes missing mount points).
    pub fn for_command(src: &CommandSources<'_>) -> Self {
        let Self { root, mut ops } = Self::system(src.base, src.python_prefix);
        ops.push(MountOp::Tmpfs {
            target: under(&root, Path::new(inside::TMP)),
            options: TMP_SIZE.to_string(),
        });
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
        Self { root, ops }
    }

    /// The mounts of a lambda sandbox.
    pub fn for_lambda(src: &RootSources<'_>) -> Self {
        let Self { root, mut ops } = Self::system(src.base, src.python_prefix);
        let ro = |source: &Path, target: &Path| read_only(&root, source, target);
        if let Some(code) = src.code {
            ops.push(ro(code, Path::new(inside::HANDLER)));
        }
        ops.push(ro(src.runtime, Path::new(inside::RUNTIME)));
        if src.packages.is_dir() {
            ops.push(ro(src.packages, Path::new(inside::PACKAGES)));
        }
        ops.push(MountOp::Bind {
            source: src.scratch.to_path_buf(),
            target: under(&root, Path::new(inside::HOST)),
            writable: true,
        });
        ops.push(MountOp::Tmpfs {
            target: under(&root, Path::new(inside::TMP)),
            options: TMP_SIZE.to_string(),
        });
        ops.push(MountOp::Proc {
            target: under(&root, Path::new("/proc")),
        });
        ops.push(MountOp::ReadOnlyRoot);
        Self { root, ops }
    }
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
    fn base_has_mount_points_etc_and_device_stubs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("base");
        let prefix = Path::new("/root/.pyenv/versions/3.11.7");
        build_base(&base, prefix).expect("build");
        for d in [
            "handler",
            "host",
            "packages",
            "ol",
            "tmp",
            "proc",
            "dev",
            "root/.pyenv/versions/3.11.7",
        ] {
            assert!(base.join(d).is_dir(), "{d}");
        }
        let mode = fs::metadata(base.join("root"))
            .expect("root")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755);
        let tmp_mode = fs::metadata(base.join("tmp"))
            .expect("tmp")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(tmp_mode, 0o1777);
        let passwd = fs::read_to_string(base.join("etc/passwd")).expect("passwd");
        assert!(passwd.contains("nobody:x:65534:65534"), "{passwd}");
        assert_eq!(
            fs::read_to_string(base.join("etc/resolv.conf")).expect("resolv"),
            ""
        );
        for dev in DEVICES {
            assert!(base.join("dev").join(dev).is_file(), "{dev}");
        }
        assert_eq!(
            fs::read_link(base.join("dev/fd")).expect("fd link"),
            PathBuf::from("/proc/self/fd")
        );
        // Host symlinks (merged /usr) are copied as links, directories made.
        for dir in SYSTEM_DIRS {
            let host = Path::new(dir);
            let inner = under(&base, host);
            match fs::symlink_metadata(host) {
                Ok(m) if m.file_type().is_symlink() => {
                    assert_eq!(
                        fs::read_link(&inner).ok(),
                        fs::read_link(host).ok(),
                        "{dir}"
                    )
                }
                Ok(m) if m.is_dir() => assert!(inner.is_dir(), "{dir}"),
                _ => assert!(fs::symlink_metadata(&inner).is_err(), "{dir}"),
            }
        }
        build_base(&base, prefix).expect("second build is fine");
    }

    #[test]
    fn lambda_plan_binds_code_ro_scratch_rw_and_ends_read_only() {
        let src = RootSources {
            base: Path::new("/w/base"),
            python_prefix: Path::new("/opt/py"),
            code: Some(Path::new("/w/registry/hello")),
            scratch: Path::new("/w/worker/scratch/hello-1/host"),
            packages: Path::new("/nonexistent/packages"),
            runtime: Path::new("/w/worker/runtime"),
        };
        let plan = MountPlan::for_lambda(&src);
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
        assert!(plan.ops.contains(&MountOp::Bind {
            source: "/w/worker/scratch/hello-1/host".into(),
            target: "/w/base/host".into(),
            writable: true
        }));
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
        // Only device nodes and the scratch dir are writable binds.
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
        assert_eq!(writable.len(), DEVICES.len() + 1);
    }
}
