//! `DirRegistry` end to end on temp dirs: pack → install → fetch round
//! trips, archives served from the registry root, versions, list and remove.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use ol_registry::{DirRegistry, Registry, RegistryError, pack_lambda};

/// Every file under `root`: relative path → (contents, executable).
fn files(root: &Path) -> BTreeMap<String, (Vec<u8>, bool)> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let rel = path.strip_prefix(root).expect("under root");
            let exec = fs::metadata(&path).expect("stat").permissions().mode() & 0o111 != 0;
            out.insert(
                rel.display().to_string(),
                (fs::read(&path).expect("read"), exec),
            );
        }
    }
    out
}

/// A small lambda with a subpackage, an executable and a bytecode cache.
fn make_lambda(dir: &Path) {
    fs::create_dir_all(dir.join("pkg/sub")).expect("mkdir");
    fs::create_dir_all(dir.join("__pycache__")).expect("mkdir");
    fs::write(dir.join("f.py"), "def f(event):\n    return event\n").expect("write");
    fs::write(dir.join("requirements.txt"), "requests==2.32.3\n").expect("write");
    fs::write(dir.join("pkg/__init__.py"), "").expect("write");
    fs::write(dir.join("pkg/sub/data.bin"), [0u8, 1, 2, 255]).expect("write");
    fs::write(dir.join("run.sh"), "#!/bin/sh\n").expect("write");
    fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(dir.join("__pycache__/f.cpython-312.pyc"), "junk").expect("write");
}

fn without_pycache(
    mut map: BTreeMap<String, (Vec<u8>, bool)>,
) -> BTreeMap<String, (Vec<u8>, bool)> {
    map.retain(|k, _| !k.starts_with("__pycache__"));
    map
}

/// A tar.gz of `src` with every path under `top/`, as `tar czf` of a
/// directory makes.
fn tar_gz_under(src: &Path, top: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    builder.append_dir_all(top, src).expect("append");
    builder.into_inner().expect("tar").finish().expect("gzip")
}

struct Fixture {
    _tmp: tempfile::TempDir,
    src: std::path::PathBuf,
    root: std::path::PathBuf,
    reg: DirRegistry,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src/hello");
    make_lambda(&src);
    let root = tmp.path().join("registry");
    fs::create_dir(&root).expect("mkdir");
    let reg = DirRegistry::with_cache(&root, tmp.path().join("cache"));
    Fixture {
        _tmp: tmp,
        src,
        root,
        reg,
    }
}

#[test]
fn pack_install_fetch_round_trip() {
    let fx = fixture();
    let archive = pack_lambda(&fx.src).expect("pack");
    let installed = fx.reg.install("hello", &archive).expect("install");
    assert_eq!(installed.dir, fx.root.join("hello"));

    let fetched = fx.reg.fetch("hello").expect("fetch").expect("present");
    assert_eq!(fetched, installed);
    assert_eq!(files(&fetched.dir), without_pycache(files(&fx.src)));
    assert!(!fetched.dir.join("__pycache__").exists());
    let mode = fs::metadata(&fetched.dir)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755, "code must be readable by the sandbox uid");
    // No staging leftovers next to the lambda.
    assert_eq!(fx.reg.list().expect("list"), vec!["hello"]);
    assert_eq!(fs::read_dir(&fx.root).expect("ls").count(), 1);
}

#[test]
fn install_accepts_a_top_level_directory_named_after_the_lambda() {
    let fx = fixture();
    let code = fx
        .reg
        .install("hello", &tar_gz_under(&fx.src, "hello"))
        .expect("install");
    assert!(code.dir.join("f.py").is_file());
    assert!(!code.dir.join("hello").exists());
}

#[test]
fn install_replaces_old_code_and_shadowed_archive() {
    let fx = fixture();
    fs::write(fx.root.join("hello.tar.gz"), tar_gz_under(&fx.src, "hello")).expect("write");
    let old = fx.reg.fetch("hello").expect("fetch").expect("archive");

    let first = fx
        .reg
        .install("hello", &pack_lambda(&fx.src).expect("pack"))
        .expect("install");
    assert_ne!(first.version, old.version);
    assert!(!fx.root.join("hello.tar.gz").exists());
    assert!(!old.dir.exists(), "stale cache of the archive is gone");

    let v2 = fx.src.parent().expect("parent").join("v2");
    fs::create_dir(&v2).expect("mkdir");
    fs::write(v2.join("app.py"), "app = None\n").expect("write");
    let second = fx
        .reg
        .install("hello", &pack_lambda(&v2).expect("pack"))
        .expect("reinstall");
    assert_eq!(second.dir, first.dir);
    assert_ne!(second.version, first.version);
    assert_eq!(files(&second.dir), files(&v2));
    assert_eq!(
        fs::read_dir(&fx.root).expect("ls").count(),
        1,
        "the old code is deleted"
    );
}

#[test]
fn install_refuses_lambdas_without_python_and_bad_names() {
    let fx = fixture();
    let no_py = fx.src.parent().expect("parent").join("nopy");
    fs::create_dir_all(no_py.join("pkg")).expect("mkdir");
    fs::write(no_py.join("README"), "hi").expect("write");
    fs::write(no_py.join("pkg/mod.py"), "").expect("write");
    let err = fx
        .reg
        .install("nopy", &pack_lambda(&no_py).expect("pack"))
        .expect_err("no entry file");
    assert!(
        matches!(err, RegistryError::NoEntryFile(ref n) if n == "nopy"),
        "{err:?}"
    );

    let err = fx
        .reg
        .install("../evil", &pack_lambda(&fx.src).expect("pack"))
        .expect_err("bad name");
    assert!(matches!(err, RegistryError::InvalidName(_)), "{err:?}");

    let err = fx.reg.install("hello", b"garbage").expect_err("garbage");
    assert!(matches!(err, RegistryError::BadArchive { .. }), "{err:?}");
    assert_eq!(
        fs::read_dir(&fx.root).expect("ls").count(),
        0,
        "nothing left"
    );
}

#[test]
fn archives_in_the_root_are_served_and_unpacked_once_per_version() {
    let fx = fixture();
    let archive_path = fx.root.join("hello.tar.gz");
    fs::write(&archive_path, tar_gz_under(&fx.src, "hello")).expect("write");

    let first = fx.reg.fetch("hello").expect("fetch").expect("present");
    assert!(first.version.starts_with("tgz-"), "{}", first.version);
    assert!(first.dir.starts_with(fx.reg.cache_dir()));
    // Made by the tar crate, not pack_lambda: `__pycache__` comes along.
    assert_eq!(files(&first.dir), files(&fx.src));

    // Same version: same dir, not unpacked again (a marker survives).
    fs::write(first.dir.join("marker"), "").expect("marker");
    let again = fx.reg.fetch("hello").expect("fetch").expect("present");
    assert_eq!(again, first);
    assert!(again.dir.join("marker").exists());

    // Rewritten archive: new version in a new dir, the old one pruned.
    fs::write(fx.src.join("f.py"), "def f(event):\n    return 2\n").expect("write");
    fs::write(&archive_path, tar_gz_under(&fx.src, "hello")).expect("rewrite");
    let newer = SystemTime::now() + Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&archive_path)
        .and_then(|f| f.set_modified(newer))
        .expect("touch");
    let second = fx.reg.fetch("hello").expect("fetch").expect("present");
    assert_ne!(second.version, first.version);
    assert_ne!(second.dir, first.dir);
    assert_eq!(
        fs::read_to_string(second.dir.join("f.py")).expect("read"),
        "def f(event):\n    return 2\n"
    );
    assert!(!first.dir.exists(), "old version pruned");
    assert!(second.dir.exists(), "current version kept");
}

#[test]
fn archive_at_the_root_of_the_tarball_is_served_too() {
    let fx = fixture();
    fs::write(
        fx.root.join("flat.tar.gz"),
        pack_lambda(&fx.src).expect("pack"),
    )
    .expect("write");
    let code = fx.reg.fetch("flat").expect("fetch").expect("present");
    assert_eq!(files(&code.dir), without_pycache(files(&fx.src)));
}

#[test]
fn concurrent_fetches_of_a_new_archive_agree() {
    let fx = fixture();
    fs::write(
        fx.root.join("hello.tar.gz"),
        pack_lambda(&fx.src).expect("pack"),
    )
    .expect("write");
    let codes: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| fx.reg.fetch("hello"))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("fetch").expect("present"))
            .collect()
    });
    assert!(codes.windows(2).all(|w| w[0] == w[1]));
    assert!(codes[0].dir.join("f.py").is_file());
}

#[test]
fn a_directory_wins_over_an_archive() {
    let fx = fixture();
    fs::write(
        fx.root.join("hello.tar.gz"),
        pack_lambda(&fx.src).expect("pack"),
    )
    .expect("write");
    fs::create_dir(fx.root.join("hello")).expect("mkdir");
    fs::write(fx.root.join("hello/f.py"), "# dir\n").expect("write");
    let code = fx.reg.fetch("hello").expect("fetch").expect("present");
    assert_eq!(code.dir, fx.root.join("hello"));
    assert!(code.version.starts_with("dir-"));
}

#[test]
fn directory_version_follows_changes() {
    let fx = fixture();
    let dir = fx.root.join("hello");
    fs::create_dir_all(dir.join("pkg")).expect("mkdir");
    fs::write(dir.join("f.py"), "a").expect("write");
    fs::write(dir.join("pkg/m.py"), "b").expect("write");
    let version = || {
        fx.reg
            .fetch("hello")
            .expect("fetch")
            .expect("present")
            .version
    };
    let v1 = version();
    assert_eq!(version(), v1, "stable while nothing changes");

    // A nested file touched with a newer mtime (same size, same count).
    let newer = SystemTime::now() + Duration::from_secs(10);
    fs::File::options()
        .write(true)
        .open(dir.join("pkg/m.py"))
        .and_then(|f| f.set_modified(newer))
        .expect("touch");
    let v2 = version();
    assert_ne!(v2, v1);

    // A file added with an old mtime still changes the count.
    fs::write(dir.join("pkg/old.py"), "c").expect("write");
    fs::File::options()
        .write(true)
        .open(dir.join("pkg/old.py"))
        .and_then(|f| f.set_modified(SystemTime::UNIX_EPOCH))
        .expect("touch");
    assert_ne!(version(), v2);
}

#[test]
fn list_and_remove_cover_directories_and_archives() {
    let fx = fixture();
    let packed = pack_lambda(&fx.src).expect("pack");
    fs::write(fx.root.join("arch.tar.gz"), &packed).expect("write");
    fs::write(fx.root.join("both.tar.gz"), &packed).expect("write");
    fs::create_dir(fx.root.join("both")).expect("mkdir");
    fs::create_dir(fx.root.join("dir")).expect("mkdir");
    fs::write(fx.root.join("bad.name.tar.gz"), &packed).expect("write");
    fs::create_dir(fx.root.join("notanarchive.tar.gz")).expect("mkdir");
    fs::write(fx.root.join("notes.txt"), "x").expect("write");
    assert_eq!(fx.reg.list().expect("list"), vec!["arch", "both", "dir"]);

    fx.reg.fetch("arch").expect("fetch").expect("present");
    fx.reg.remove("arch").expect("remove archive");
    assert!(!fx.root.join("arch.tar.gz").exists());
    assert!(
        !fx.reg.cache_dir().join("arch").exists(),
        "cache removed too"
    );
    fx.reg.remove("both").expect("remove both");
    assert!(!fx.root.join("both").exists() && !fx.root.join("both.tar.gz").exists());
    fx.reg.remove("dir").expect("remove dir");
    assert_eq!(fx.reg.list().expect("list"), Vec::<String>::new());

    let err = fx.reg.remove("dir").expect_err("gone");
    assert!(
        matches!(err, RegistryError::NotFound(ref n) if n == "dir"),
        "{err:?}"
    );
    let err = fx.reg.remove("..").expect_err("bad name");
    assert!(matches!(err, RegistryError::InvalidName(_)), "{err:?}");
    assert_eq!(fx.reg.fetch("arch").expect("fetch"), None);
}

#[test]
fn hostile_archive_in_the_root_is_an_error_not_a_lambda() {
    let fx = fixture();
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().expect("gnu").name[..4].copy_from_slice(b"../x");
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    builder.append(&h, &b"x"[..]).expect("append");
    let archive = builder.into_inner().expect("tar").finish().expect("gzip");
    fs::write(fx.root.join("evil.tar.gz"), archive).expect("write");
    let err = fx.reg.fetch("evil").expect_err("hostile");
    assert!(
        matches!(err, RegistryError::PathTraversal { .. }),
        "{err:?}"
    );
    assert!(!fx.reg.cache_dir().join("x").exists());
    assert!(!fx.root.join("x").exists());
}

#[test]
fn pack_refuses_symlinks() {
    let fx = fixture();
    std::os::unix::fs::symlink("/etc/passwd", fx.src.join("passwd")).expect("symlink");
    let err = pack_lambda(&fx.src).expect_err("symlink");
    assert!(
        matches!(err, RegistryError::CannotPack { ref path, .. } if path.ends_with("passwd")),
        "{err:?}"
    );
}

#[test]
fn default_cache_is_hidden_inside_the_root() {
    let fx = fixture();
    let reg = DirRegistry::new(&fx.root);
    fs::write(
        fx.root.join("hello.tar.gz"),
        pack_lambda(&fx.src).expect("pack"),
    )
    .expect("write");
    let code = reg.fetch("hello").expect("fetch").expect("present");
    assert!(code.dir.starts_with(fx.root.join(".cache")));
    assert_eq!(reg.list().expect("list"), vec!["hello"]);
}

#[test]
fn removing_a_symlinked_lambda_removes_the_link_only() {
    let fx = fixture();
    std::os::unix::fs::symlink(&fx.src, fx.root.join("linked")).expect("symlink");
    assert_eq!(fx.reg.list().expect("list"), vec!["linked"]);
    fx.reg.remove("linked").expect("remove");
    assert!(fx.src.join("f.py").is_file(), "the target is untouched");
    assert_eq!(fx.reg.list().expect("list"), Vec::<String>::new());
}

/// Archives made by GNU tar itself (gnu, pax and ustar formats, with paths
/// past the 100-byte header field) unpack to the same files.
#[test]
fn gnu_tar_archives_are_served() {
    let fx = fixture();
    let deep = fx.src.join("d".repeat(60)).join("e".repeat(60));
    fs::create_dir_all(&deep).expect("mkdir");
    fs::write(deep.join(format!("{}.py", "f".repeat(80))), "x = 1\n").expect("write");
    let parent = fx.src.parent().expect("parent");
    for format in ["gnu", "pax", "ustar"] {
        let archive = fx.root.join(format!("{format}.tar.gz"));
        let status = std::process::Command::new("tar")
            .arg(format!("--format={format}"))
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(parent)
            .arg("hello")
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => {
                eprintln!("skipping the {format} case: GNU tar unavailable ({other:?})");
                continue;
            }
        }
        let code = fx.reg.fetch(format).expect("fetch").expect("present");
        assert_eq!(files(&code.dir), files(&fx.src), "{format}");
        let installed = fx
            .reg
            .install(
                &format!("{format}-installed"),
                &fs::read(&archive).expect("read"),
            )
            .expect("install");
        assert_eq!(files(&installed.dir), files(&fx.src), "{format}");
    }
}
