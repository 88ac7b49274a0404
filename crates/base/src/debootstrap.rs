//! A self-contained base (`ol worker init --base debootstrap`,
//! docs/architecture.md §1.2): a minimal Debian root file system with its own Python, made by
//! `debootstrap` (installed with apt when missing).
//!
//! The first build for a suite, mirror and architecture downloads the
//! packages (kept in a `.deb` cache, so a failed build does not download
//! them again) and saves the finished root file system as a tarball in the
//! cache dir; every later init unpacks that tarball, with no network and
//! in seconds. Delete the cache dir to rebuild from the mirror (for
//! example to pick up security updates). A file lock keeps two inits from
//! building the same tarball at once.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;

use nix::fcntl::{Flock, FlockArg};

use crate::BaseError;

/// Debian's mirror, reachable from most networks through its CDN.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// Ubuntu's archive (amd64 and i386; other architectures need
/// `--mirror http://ports.ubuntu.com/ubuntu-ports`).
pub const UBUNTU_MIRROR: &str = "http://archive.ubuntu.com/ubuntu";
/// The suite for hosts that are neither Debian nor Ubuntu: Debian stable.
pub const FALLBACK_SUITE: &str = "bookworm";
/// debootstrap's smallest variant: essential packages and apt.
const VARIANT: &str = "minbase";
/// Packages added to the variant: the runtime's interpreter, pip (the
/// package installer's fallback, and how it installs uv), the CA bundle.
pub const INCLUDES: &[&str] = &["python3", "python3-pip", "ca-certificates"];
/// The interpreter of a debootstrap base, as sandboxes see it.
pub const PYTHON: &str = "/usr/bin/python3";
/// Lines of debootstrap's output kept for an error message.
const TAIL_LINES: usize = 20;
/// Where the tools this module runs live, whatever the caller's PATH.
const TOOL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BaseError + use<> {
    let path = path.to_path_buf();
    move |source| BaseError::Io { what, path, source }
}

/// Which Debian (or Ubuntu) release to bootstrap, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Suite or codename (`bookworm`).
    pub suite: String,
    /// Archive URL.
    pub mirror: String,
}

impl Release {
    /// The release matching the host, from the text of its
    /// `/etc/os-release`: its own codename on Debian and Ubuntu (and their
    /// derivatives that name their base), else Debian stable.
    pub fn for_host(os_release: &str) -> Self {
        let field = |key: &str| {
            os_release.lines().find_map(|l| {
                let value = l.trim().strip_prefix(key)?.strip_prefix('=')?;
                let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
                (!value.is_empty()).then(|| value.to_string())
            })
        };
        let id = field("ID").unwrap_or_default();
        let like = field("ID_LIKE").unwrap_or_default();
        let debian = |suite: String| Self {
            suite,
            mirror: DEBIAN_MIRROR.into(),
        };
        let ubuntu = |suite: String| Self {
            suite,
            mirror: UBUNTU_MIRROR.into(),
        };
        if id == "debian" {
            return debian(field("VERSION_CODENAME").unwrap_or_else(|| FALLBACK_SUITE.into()));
        }
        if id == "ubuntu"
            && let Some(code) = field("UBUNTU_CODENAME").or_else(|| field("VERSION_CODENAME"))
        {
            return ubuntu(code);
        }
        if like.split_whitespace().any(|l| l == "ubuntu")
            && let Some(code) = field("UBUNTU_CODENAME")
        {
            return ubuntu(code);
        }
        debian(field("DEBIAN_CODENAME").unwrap_or_else(|| FALLBACK_SUITE.into()))
    }

    /// The release matching this host (`/etc/os-release`).
    pub fn host() -> Self {
        let text = fs::read_to_string("/etc/os-release")
            .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
            .unwrap_or_default();
        Self::for_host(&text)
    }
}

/// The default cache dir: `$XDG_CACHE_HOME/ol`, else `/var/cache/ol`.
pub fn default_cache_dir() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("ol"),
        _ => PathBuf::from("/var/cache/ol"),
    }
}

/// Builds debootstrap bases of one release, cached under a cache dir.
#[derive(Debug, Clone)]
pub struct Debootstrap {
    /// What to bootstrap.
    pub release: Release,
    /// The cache root (`debootstrap/` inside it is ours).
    pub cache_dir: PathBuf,
}

impl Debootstrap {
    /// Our part of the cache dir.
    fn cache(&self) -> PathBuf {
        self.cache_dir.join("debootstrap")
    }

    /// Names a finished root file system: suite, architecture, and a hash
    /// of everything else that changes its contents.
    fn key(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let what = format!("{}|{}|{}", self.release.mirror, VARIANT, INCLUDES.join(","));
        for b in what.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let suite: String = self
            .release
            .suite
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("{suite}-{}-{:08x}", std::env::consts::ARCH, h as u32)
    }

    /// debootstrap's arguments to build into `target`, keeping downloaded
    /// packages in `debs`.
    fn args(&self, target: &Path, debs: &Path) -> Vec<OsString> {
        let mut cache_arg = OsString::from("--cache-dir=");
        cache_arg.push(debs);
        vec![
            format!("--variant={VARIANT}").into(),
            format!("--include={}", INCLUDES.join(",")).into(),
            cache_arg,
            self.release.suite.clone().into(),
            target.into(),
            self.release.mirror.clone().into(),
        ]
    }

    /// Fills the empty directory `base` with the release's root file
    /// system, from the cache or (the first time) from the mirror.
    /// `progress` gets one line per step (debootstrap's own lines while it
    /// runs).
    pub fn build(&self, base: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), BaseError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(BaseError::NotRoot);
        }
        let cache = self.cache();
        fs::create_dir_all(&cache).map_err(io_err("create", &cache))?;
        let _lock = lock(&cache, progress)?;
        let key = self.key();
        let tarball = cache.join(format!("{key}.tar"));
        if tarball.is_file() {
            progress(&format!(
                "using the cached {} root file system {}",
                self.release.suite,
                tarball.display()
            ));
        } else {
            let work = cache.join(format!("{key}.build"));
            self.bootstrap(
                &work,
                &cache.join("debs"),
                &cache.join(format!("{key}.log")),
                progress,
            )?;
            progress(&format!("saving it to the cache: {}", tarball.display()));
            let partial = tarball.with_extension("tar.partial");
            tar(Tar::Pack, &partial, &work)?;
            fs::rename(&partial, &tarball).map_err(io_err("rename", &partial))?;
            // Same file system: move the fresh tree instead of unpacking it.
            if fs::remove_dir(base).is_ok() {
                if fs::rename(&work, base).is_ok() {
                    return Ok(());
                }
                fs::create_dir_all(base).map_err(io_err("create", base))?;
            }
            remove_tree(&work)?;
        }
        progress(&format!("unpacking into {}", base.display()));
        tar(Tar::Unpack, &tarball, base)
    }

    /// Runs debootstrap into `work` (made fresh), streaming its lines.
    fn bootstrap(
        &self,
        work: &Path,
        debs: &Path,
        log: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), BaseError> {
        let program = ensure_debootstrap(progress)?;
        remove_tree(work)?;
        fs::create_dir_all(debs).map_err(io_err("create", debs))?;
        progress(&format!(
            "debootstrap {} from {} (first time only; the result is cached)",
            self.release.suite, self.release.mirror
        ));
        let mut cmd = Command::new(&program);
        cmd.args(self.args(work, debs));
        let (status, tail) =
            run_streaming(cmd, progress).map_err(io_err("run", program.as_path()))?;
        if status.success() {
            let _ = fs::remove_file(log);
            // The packages are in the deb cache already; the root needs none.
            let archives = work.join("var/cache/apt/archives");
            for entry in fs::read_dir(&archives).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "deb") {
                    let _ = fs::remove_file(entry.path());
                }
            }
            return Ok(());
        }
        let mut text: Vec<&str> = tail.iter().map(String::as_str).collect();
        // debootstrap's own log has what failed inside the chroot.
        let inner =
            fs::read_to_string(work.join("debootstrap/debootstrap.log")).unwrap_or_default();
        text.extend(inner.lines());
        let _ = fs::write(log, text.join("\n"));
        remove_tree(work)?;
        Err(BaseError::Debootstrap {
            suite: self.release.suite.clone(),
            mirror: self.release.mirror.clone(),
            status,
            message: error_line(&tail),
            log: log.to_path_buf(),
        })
    }
}

/// The line of debootstrap's output that says what went wrong.
fn error_line(tail: &VecDeque<String>) -> String {
    tail.iter()
        .rev()
        .find(|l| l.starts_with("E:"))
        .or_else(|| tail.iter().rev().find(|l| !l.trim().is_empty()))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "no output".into())
}

/// Takes the cache's lock, saying so when another init holds it.
fn lock(cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<Flock<File>, BaseError> {
    let path = cache.join(".lock");
    let file = File::create(&path).map_err(io_err("create", &path))?;
    let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => return Ok(locked),
        Err((file, _)) => file,
    };
    progress(&format!(
        "waiting for another init that builds into {}",
        cache.display()
    ));
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| BaseError::Io {
        what: "lock",
        path,
        source: e.into(),
    })
}

/// The debootstrap program, installed with apt-get when missing.
fn ensure_debootstrap(progress: &mut dyn FnMut(&str)) -> Result<PathBuf, BaseError> {
    let find = || {
        TOOL_PATH
            .split(':')
            .map(|d| Path::new(d).join("debootstrap"))
            .find(|p| p.is_file())
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    progress("debootstrap is not installed: apt-get install -y debootstrap");
    let apt = |args: &[&str], progress: &mut dyn FnMut(&str)| {
        let mut cmd = Command::new("apt-get");
        // Wait for another apt (or a concurrent init) instead of failing.
        cmd.args(["-o", "DPkg::Lock::Timeout=300"]).args(args);
        run_streaming(cmd, progress)
    };
    let install = ["install", "-y", "--no-install-recommends", "debootstrap"];
    let mut result = apt(&install, progress);
    if !matches!(&result, Ok((status, _)) if status.success()) {
        // A fresh machine may have no package lists yet.
        progress("apt-get update");
        let _ = apt(&["update"], progress);
        result = apt(&install, progress);
    }
    match result {
        Ok((status, _)) if status.success() => find().ok_or_else(|| BaseError::Install {
            message: "apt-get succeeded but no debootstrap program is on the system path".into(),
        }),
        Ok((status, tail)) => Err(BaseError::Install {
            message: format!("{status}: {}", error_line(&tail)),
        }),
        Err(e) => Err(BaseError::Install {
            message: format!("cannot run apt-get: {e}"),
        }),
    }
}

/// Runs `cmd` with a fixed tool PATH, handing each line of its output
/// (stdout and stderr) to `progress`; returns its status and last lines.
fn run_streaming(
    mut cmd: Command,
    progress: &mut dyn FnMut(&str),
) -> io::Result<(ExitStatus, VecDeque<String>)> {
    let mut child = cmd
        .env("PATH", TOOL_PATH)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    for pipe in pipes.into_iter().flatten() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send(text).is_err() {
                    break;
                }
                line.clear();
            }
        }));
    }
    drop(tx);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for line in rx {
        if line.is_empty() {
            continue;
        }
        progress(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for r in readers {
        let _ = r.join();
    }
    Ok((child.wait()?, tail))
}

/// What [`tar`] does.
#[derive(Debug, Clone, Copy)]
enum Tar {
    /// Pack a directory into an archive.
    Pack,
    /// Unpack an archive into a directory.
    Unpack,
}

/// Packs `dir` into `archive` or unpacks `archive` into `dir`, keeping
/// numeric owners, permissions and device nodes.
fn tar(op: Tar, archive: &Path, dir: &Path) -> Result<(), BaseError> {
    let (what, mode) = match op {
        Tar::Pack => ("pack", "-cf"),
        Tar::Unpack => ("unpack", "-xpf"),
    };
    let mut cmd = Command::new("tar");
    cmd.arg("--numeric-owner")
        .arg(mode)
        .arg(archive)
        .arg("-C")
        .arg(dir);
    if let Tar::Pack = op {
        cmd.arg(".");
    }
    let failed = |message: String| BaseError::Tar {
        what,
        path: archive.to_path_buf(),
        message,
    };
    let out = cmd
        .env("PATH", TOOL_PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run tar: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(failed(format!(
        "tar failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
    )))
}

/// Removes `dir` after detaching anything still mounted under it (a
/// debootstrap that was killed leaves its /proc and /sys mounted there).
fn remove_tree(dir: &Path) -> Result<(), BaseError> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounted = mounts_under(&mountinfo, dir);
    // Deepest first.
    mounted.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in &mounted {
        nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            BaseError::Io {
                what: "unmount",
                path: point.clone(),
                source: e.into(),
            }
        })?;
    }
    fs::remove_dir_all(dir).map_err(io_err("remove", dir))
}

/// Mount points in `mountinfo` at or under `dir`.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_and_mirror_follow_the_host() {
        let bookworm = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
                        VERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(
            Release::for_host(bookworm),
            Release {
                suite: "bookworm".into(),
                mirror: DEBIAN_MIRROR.into()
            }
        );
        let trixie = "ID=debian\nVERSION_CODENAME=\"trixie\"\n";
        assert_eq!(Release::for_host(trixie).suite, "trixie");
        let jammy = "ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=jammy\nUBUNTU_CODENAME=jammy\n";
        assert_eq!(
            Release::for_host(jammy),
            Release {
                suite: "jammy".into(),
                mirror: UBUNTU_MIRROR.into()
            }
        );
        let mint = "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_CODENAME=virginia\nUBUNTU_CODENAME=jammy\n";
        assert_eq!(Release::for_host(mint).suite, "jammy");
        assert_eq!(Release::for_host(mint).mirror, UBUNTU_MIRROR);
        let lmde =
            "ID=linuxmint\nID_LIKE=debian\nVERSION_CODENAME=faye\nDEBIAN_CODENAME=bookworm\n";
        assert_eq!(Release::for_host(lmde).suite, "bookworm");
        // VERSION_CODENAME must not match ID= and friends by prefix.
        let fedora = "ID=fedora\nVERSION_CODENAME=\"\"\nVARIANT_ID=workstation\n";
        assert_eq!(
            Release::for_host(fedora),
            Release {
                suite: FALLBACK_SUITE.into(),
                mirror: DEBIAN_MIRROR.into()
            }
        );
        assert_eq!(Release::for_host("").suite, FALLBACK_SUITE);
    }

    #[test]
    fn arguments_ask_for_minbase_python_and_the_deb_cache() {
        let d = Debootstrap {
            release: Release {
                suite: "bookworm".into(),
                mirror: "http://mirror.example/debian".into(),
            },
            cache_dir: "/c".into(),
        };
        let args: Vec<String> = d
            .args(
                Path::new("/c/debootstrap/x.build"),
                Path::new("/c/debootstrap/debs"),
            )
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--variant=minbase",
                "--include=python3,python3-pip,ca-certificates",
                "--cache-dir=/c/debootstrap/debs",
                "bookworm",
                "/c/debootstrap/x.build",
                "http://mirror.example/debian",
            ]
        );
        assert_eq!(d.cache(), PathBuf::from("/c/debootstrap"));
    }

    #[test]
    fn cache_key_changes_with_what_changes_the_root() {
        let d = |suite: &str, mirror: &str| Debootstrap {
            release: Release {
                suite: suite.into(),
                mirror: mirror.into(),
            },
            cache_dir: "/c".into(),
        };
        let a = d("bookworm", DEBIAN_MIRROR).key();
        assert_eq!(a, d("bookworm", DEBIAN_MIRROR).key(), "stable");
        assert!(a.starts_with("bookworm-"), "{a}");
        assert_ne!(a, d("trixie", DEBIAN_MIRROR).key());
        assert_ne!(a, d("bookworm", "http://other/debian").key());
        assert!(!d("../x", DEBIAN_MIRROR).key().contains('/'));
    }

    #[test]
    fn error_line_prefers_debootstrap_errors() {
        let tail: VecDeque<String> = [
            "I: Retrieving InRelease",
            "E: Failed getting release file http://127.0.0.1:9/debian/dists/bookworm/Release",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(error_line(&tail).starts_with("E: Failed getting release file"));
        let tail: VecDeque<String> = ["W: odd", "last words"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(error_line(&tail), "last words");
        assert_eq!(error_line(&VecDeque::new()), "no output");
    }

    #[test]
    fn mounts_under_a_dir_are_found() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    90 30 0:5 / /var/cache/ol/debootstrap/b.build/proc rw - proc proc rw\n\
                    91 30 0:6 / /var/cache/ol/debootstrap/b.build/sys rw - sysfs sysfs rw\n\
                    92 30 0:7 / /var/cache/ol/debootstrap/b.build2 rw - tmpfs tmpfs rw\n\
                    93 30 0:8 / /var/cache/ol/debootstrap/b.build/a\\040b rw - tmpfs tmpfs rw\n";
        let found = mounts_under(info, Path::new("/var/cache/ol/debootstrap/b.build"));
        assert_eq!(
            found,
            [
                PathBuf::from("/var/cache/ol/debootstrap/b.build/proc"),
                PathBuf::from("/var/cache/ol/debootstrap/b.build/sys"),
                PathBuf::from("/var/cache/ol/debootstrap/b.build/a b"),
            ]
        );
    }

    #[test]
    fn streamed_lines_reach_progress_and_the_tail() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two >&2; echo; exit 3"]);
        let mut seen = Vec::new();
        let (status, tail) = run_streaming(cmd, &mut |l| seen.push(l.to_string())).expect("run");
        assert_eq!(status.code(), Some(3));
        seen.sort();
        assert_eq!(seen, ["one", "two"]);
        assert_eq!(tail.len(), 2);
    }

    #[test]
    fn default_cache_dir_is_under_xdg_or_var_cache() {
        let dir = default_cache_dir();
        assert!(dir.ends_with("ol"), "{}", dir.display());
    }
}
