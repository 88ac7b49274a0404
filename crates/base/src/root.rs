//! Making a directory a sandbox base ([`build_base`]) of a [`BaseKind`]:
//! what the sandbox layer's mount plans expect in it
//! (`ol_sandbox::sock::rootfs`). A host base gets mount points for the
//! host's system directories and Python, with no download; a
//! self-contained one (see [`crate::debootstrap`]) keeps its own system.
//! Both get the mount points of a sandbox's parts, empty files to bind
//! device nodes onto, a minimal synthesized `/etc` and, last, the marker
//! naming their kind.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU64, Ordering};

use ol_sandbox::sock::rootfs::{
    BASE_MARKER, DEVICES, SANDBOX_UID, SYSTEM_DIRS, inside, is_covered_by_system_dirs, under,
};

use crate::BaseKind;

/// CA bundles tried, in order, for the sandbox's `/etc/ssl/certs`.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Makes `base` a sandbox base of `kind`. For a host base: mount points for
/// the system directories and the Python installation at `python_prefix`;
/// a self-contained base (already holding its system) keeps its own. Both
/// get the sandbox mount points, a synthesized `/etc`, `/dev` stubs and
/// the marker. Idempotent: running it again refreshes the synthesized
/// files. Workers sharing a base (a cluster's) build it as they start,
/// maybe at once, while others run sandboxes over it: every file is
/// replaced whole (written beside it, then renamed over it), so no build
/// fails on another's work and no sandbox sees a file missing or half
/// written.
pub fn build_base(base: &Path, kind: BaseKind, python_prefix: &Path) -> io::Result<()> {
    fs::create_dir_all(base)?;
    if !kind.is_self_contained() {
        host_mount_points(base, python_prefix)?;
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
    fs::set_permissions(
        under(base, Path::new(inside::TMP)),
        fs::Permissions::from_mode(0o1777),
    )?;
    for dev in DEVICES {
        let stub = base.join("dev").join(dev);
        if fs::symlink_metadata(&stub).is_err() {
            fs::write(&stub, "")?;
        }
    }
    // Bases made before sandboxes lost their terminal have a stub for it.
    match fs::remove_file(base.join("dev/tty")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = base.join("dev").join(link);
        if fs::symlink_metadata(&path).is_err() {
            make_symlink(Path::new(target), &path)?;
        }
    }
    write_etc(base)?;
    replace_file(
        &base.join(BASE_MARKER),
        format!("{}\n", kind.name()).as_bytes(),
    )
}

/// Makes `link` a symlink to `target`; another build making the same link
/// at the same time is no error.
fn make_symlink(target: &Path, link: &Path) -> io::Result<()> {
    match symlink(target, link) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::read_link(link).ok().as_deref() == Some(target) {
                Ok(())
            } else {
                Err(e)
            }
        }
        done => done,
    }
}

/// Replaces `path` with a file holding `bytes`: written beside it, then
/// renamed over it. A reader sees the old file or the new one, never a
/// missing or partial one; a symlink at `path` is replaced, never written
/// through (in a self-contained base it could point anywhere on the host).
/// A regular file that already holds `bytes` is left alone: every `worker
/// up` builds the base again, and rewriting its files (a 200 KiB CA
/// bundle among them) cost each start new inodes on the worker's disk.
fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if holds(path, bytes) {
        return Ok(());
    }
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_os_string());
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

/// Whether `path` is a regular file (never through a symlink) holding
/// exactly `bytes`.
fn holds(path: &Path, bytes: &[u8]) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut file) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
    else {
        return false;
    };
    if !file
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64)
    {
        return false;
    }
    let mut old = Vec::with_capacity(bytes.len());
    file.read_to_end(&mut old).is_ok() && old == bytes
}

/// Mount points for the host's system directories (symlinks copied as
/// links) and its Python installation.
fn host_mount_points(base: &Path, python_prefix: &Path) -> io::Result<()> {
    for dir in SYSTEM_DIRS {
        let host = Path::new(dir);
        let inner = under(base, host);
        match fs::symlink_metadata(host) {
            // A merged-/usr host has /lib -> usr/lib: copy the link itself.
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(host)?;
                if fs::read_link(&inner).ok().as_deref() != Some(target.as_path()) {
                    let _ = fs::remove_file(&inner);
                    make_symlink(&target, &inner)?;
                }
            }
            Ok(m) if m.is_dir() => fs::create_dir_all(&inner)?,
            _ => {}
        }
    }
    fs::create_dir_all(base.join("root"))?;
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
    Ok(())
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
        replace_file(&etc.join(name), text.as_bytes())?;
    }
    if let Some(bundle) = CA_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
        replace_file(
            &etc.join("ssl/certs/ca-certificates.crt"),
            &fs::read(bundle)?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn builds_at_once_all_succeed_and_no_reader_misses_a_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("base");
        let prefix = Path::new("/opt/py");
        // From nothing, several at once (workers of a new cluster).
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| build_base(&base, BaseKind::Host, prefix).expect("first builds"));
            }
        });
        let passwd = fs::read(base.join("etc/passwd")).expect("passwd");
        let marker = fs::read(base.join(BASE_MARKER)).expect("marker");
        // Rebuilt again and again (workers starting) while sandboxes read.
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) || reads == 0 {
                    assert_eq!(fs::read(base.join("etc/passwd")).ok(), Some(passwd.clone()));
                    assert_eq!(fs::read(base.join(BASE_MARKER)).ok(), Some(marker.clone()));
                    reads += 1;
                }
            });
            let builders: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        for _ in 0..200 {
                            build_base(&base, BaseKind::Host, prefix).expect("rebuild");
                        }
                    })
                })
                .collect();
            for b in builders {
                b.join().expect("builder");
            }
            done.store(true, Ordering::Relaxed);
            reader.join().expect("reader");
        });
        let leftovers: Vec<_> = fs::read_dir(base.join("etc"))
            .expect("etc")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_file_already_right_is_kept_and_a_wrong_one_or_a_symlink_replaced() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("hosts");
        replace_file(&path, b"127.0.0.1 localhost\n").expect("first");
        let inode = fs::metadata(&path).expect("meta").ino();
        replace_file(&path, b"127.0.0.1 localhost\n").expect("same");
        assert_eq!(fs::metadata(&path).expect("meta").ino(), inode, "kept");
        replace_file(&path, b"::1 localhost\n").expect("other");
        assert_eq!(fs::read(&path).expect("read"), b"::1 localhost\n");
        assert_ne!(fs::metadata(&path).expect("meta").ino(), inode, "replaced");
        // A symlink to a file with the same bytes is replaced, not kept.
        let elsewhere = tmp.path().join("elsewhere");
        fs::write(&elsewhere, b"x\n").expect("write");
        let link = tmp.path().join("link");
        symlink(&elsewhere, &link).expect("symlink");
        replace_file(&link, b"x\n").expect("replace the link");
        assert!(fs::symlink_metadata(&link).expect("meta").is_file());
        assert_eq!(fs::read(&elsewhere).expect("read"), b"x\n");
    }

    #[test]
    fn base_has_mount_points_etc_and_device_stubs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("base");
        let prefix = Path::new("/root/.pyenv/versions/3.11.7");
        build_base(&base, BaseKind::Host, prefix).expect("build");
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
        // A terminal stub left by an older base goes at the next build.
        fs::write(base.join("dev/tty"), "").expect("stale stub");
        build_base(&base, BaseKind::Host, prefix).expect("second build is fine");
        assert!(!base.join("dev/tty").exists());
        assert_eq!(BaseKind::detect(&base).expect("detect"), BaseKind::Host);
    }

    #[test]
    fn self_contained_base_keeps_its_system_and_gets_etc_and_marker() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("base");
        // What debootstrap leaves: merged /usr, its own /etc files.
        fs::create_dir_all(base.join("usr/bin")).expect("usr");
        fs::create_dir_all(base.join("etc/ssl/certs")).expect("etc");
        symlink("usr/bin", base.join("bin")).expect("bin link");
        fs::write(base.join("etc/passwd"), "root:x:0:0::/root:/bin/bash\n").expect("passwd");
        // A link in the base must be replaced, never written through.
        let outside = tmp.path().join("outside");
        fs::write(&outside, "host file").expect("outside");
        symlink(&outside, base.join("etc/hosts")).expect("hosts link");
        assert_eq!(BaseKind::detect(&base).expect("detect"), BaseKind::Host);
        let prefix = Path::new("/opt/hostpy");
        build_base(&base, BaseKind::Debootstrap, prefix).expect("build");
        assert_eq!(
            BaseKind::detect(&base).expect("detect"),
            BaseKind::Debootstrap
        );
        assert_eq!(
            fs::read_link(base.join("bin")).expect("bin"),
            PathBuf::from("usr/bin")
        );
        assert!(!base.join("opt").exists(), "no mount point for host Python");
        let passwd = fs::read_to_string(base.join("etc/passwd")).expect("passwd");
        assert!(passwd.contains("nobody:x:65534:65534"), "{passwd}");
        assert_eq!(fs::read_to_string(&outside).expect("outside"), "host file");
        assert!(base.join("etc/hosts").is_file());
        for d in ["handler", "host", "packages", "ol", "tmp", "proc"] {
            assert!(base.join(d).is_dir(), "{d}");
        }
        for dev in DEVICES {
            assert!(base.join("dev").join(dev).exists(), "{dev}");
        }
    }
}
