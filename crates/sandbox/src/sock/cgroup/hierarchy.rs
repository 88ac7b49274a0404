//! Which cgroup layout the host has, and where: read from a mountinfo text
//! (the builder of Firecracker's jailer reads /proc/mounts the same way),
//! and the one place that picks the v1 or v2 implementation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::v1::{self, V1};
use super::v2::V2;
use super::{CgroupError, CgroupFs, Cgroups, Files};

/// Which cgroup layout the host has, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One mount per controller (memory, pids, cpu, freezer).
    V1 {
        /// Mount point of each controller.
        mounts: BTreeMap<String, PathBuf>,
    },
    /// The unified hierarchy.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
}

impl Hierarchy {
    /// Picks the hierarchy from `/proc/self/mountinfo` text: v1 when every
    /// controller we need is a v1 mount (a hybrid host), else a cgroup2
    /// mount.
    pub fn detect(mountinfo: &str) -> Result<Self, CgroupError> {
        let mut v1 = BTreeMap::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            // mountinfo: ... mount_point ... - fstype source super_options
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mut right = right.split_whitespace();
            let (fstype, _source, options) =
                (right.next(), right.next(), right.next().unwrap_or(""));
            match fstype {
                Some("cgroup") => {
                    for opt in options.split(',') {
                        if v1::CONTROLLERS.contains(&opt) {
                            v1.entry(opt.to_string())
                                .or_insert_with(|| PathBuf::from(unescape_mount_path(mount_point)));
                        }
                    }
                }
                Some("cgroup2") if v2.is_none() => {
                    v2 = Some(PathBuf::from(unescape_mount_path(mount_point)));
                }
                _ => {}
            }
        }
        if v1::CONTROLLERS.iter().all(|c| v1.contains_key(*c)) {
            return Ok(Self::V1 { mounts: v1 });
        }
        match v2 {
            Some(root) => Ok(Self::V2 { root }),
            None => Err(CgroupError::NoHierarchy(format!(
                "need v1 mounts of {} or a cgroup2 mount",
                v1::CONTROLLERS.join(", ")
            ))),
        }
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        match self {
            Self::V1 { .. } => 1,
            Self::V2 { .. } => 2,
        }
    }

    /// The cgroups of this hierarchy, whose files are read and written
    /// through `fs`.
    pub fn cgroups(&self, fs: Arc<dyn CgroupFs>) -> Cgroups {
        let files = Files(fs);
        let version: Arc<dyn super::Version> = match self {
            Self::V1 { mounts } => Arc::new(V1::new(files, mounts.clone())),
            Self::V2 { root } => Arc::new(V2::new(files, root.clone())),
        };
        Cgroups { version }
    }
}

/// Mount points in mountinfo escape space, tab, newline and backslash as
/// octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sock::cgroup::fake::{HYBRID, PURE_V2};

    #[test]
    fn detects_hybrid_as_v1_and_unified_as_v2() {
        let Hierarchy::V1 { mounts } = Hierarchy::detect(HYBRID).expect("v1") else {
            panic!("hybrid must be v1");
        };
        assert_eq!(mounts["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(mounts["cpu"], PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(
            Hierarchy::detect(PURE_V2).expect("v2"),
            Hierarchy::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        // v1 without a freezer falls back to the unified mount.
        let partial: String = HYBRID
            .lines()
            .filter(|l| !l.contains("freezer"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(Hierarchy::detect(&partial).expect("v2").version(), 2);
        assert!(Hierarchy::detect("1 2 0:1 / / rw - ext4 /dev/vda rw").is_err());
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
