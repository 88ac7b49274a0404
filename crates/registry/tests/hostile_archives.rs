//! Hostile archives against `unpack_lambda`: each must fail with its own
//! error kind, name the offending entry, and write nothing anywhere (the
//! whole tree around the destination is compared before and after).

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use common::{MIB, gzip, gzip_bomb, link_header, raw_header, regular, tar_gz, tree};
use ol_registry::{RegistryError, UnpackLimits, unpack_lambda};
use tar::EntryType;

/// A temp tree `outer/registry/` with a marker file, and the destination
/// `outer/registry/hello` (not created).
struct Scene {
    outer: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let outer = tempfile::tempdir().expect("tempdir");
        fs::create_dir(outer.path().join("registry")).expect("mkdir");
        fs::write(outer.path().join("registry/keep.txt"), "k").expect("write");
        Self { outer }
    }

    fn dest(&self) -> PathBuf {
        self.outer.path().join("registry/hello")
    }

    /// Unpacks `archive`, asserting nothing changed anywhere in the scene.
    fn unpack_fails(&self, archive: &[u8], limits: &UnpackLimits) -> RegistryError {
        let before = tree(self.outer.path());
        let result = unpack_lambda(archive, &self.dest(), limits);
        let after = tree(self.outer.path());
        assert_eq!(before, after, "the unpack left something behind");
        assert!(!self.dest().exists());
        match result {
            Ok(()) => panic!("hostile archive was accepted"),
            Err(e) => e,
        }
    }
}

fn expect_entry_named(err: &RegistryError, entry: &str) {
    let msg = err.to_string();
    assert!(msg.contains(entry), "{msg:?} does not name {entry:?}");
}

#[test]
fn dot_dot_components_are_refused() {
    for name in [&b"../x"[..], b"a/../../x", b"ok/../../../registry/keep.txt"] {
        let scene = Scene::new();
        let archive = tar_gz(&[regular(b"f.py", b"ok"), regular(name, b"evil")]);
        let err = scene.unpack_fails(&archive, &UnpackLimits::default());
        assert!(
            matches!(err, RegistryError::PathTraversal { ref entry } if entry.as_bytes() == name),
            "{err:?}"
        );
        expect_entry_named(&err, &String::from_utf8_lossy(name));
    }
}

#[test]
fn absolute_paths_are_refused() {
    let scene = Scene::new();
    // Points into the scene, so a failure to refuse would show there.
    let target = format!("{}/escape", scene.outer.path().display());
    let archive = tar_gz(&[regular(target.as_bytes(), b"evil")]);
    let err = scene.unpack_fails(&archive, &UnpackLimits::default());
    assert!(
        matches!(err, RegistryError::AbsolutePath { ref entry } if *entry == target),
        "{err:?}"
    );
    expect_entry_named(&err, &target);

    let err = scene.unpack_fails(
        &tar_gz(&[regular(b"/etc/x", b"evil")]),
        &UnpackLimits::default(),
    );
    assert!(matches!(err, RegistryError::AbsolutePath { .. }), "{err:?}");
    assert!(!Path::new("/etc/x").exists());
}

#[test]
fn symlinks_are_refused_wherever_they_point() {
    for target in [&b"/etc/passwd"[..], b"../registry", b"f.py"] {
        let scene = Scene::new();
        let archive = tar_gz(&[
            regular(b"f.py", b"ok"),
            (link_header(b"passwd", EntryType::Symlink, target), b""),
            regular(b"passwd", b"overwrite through the link"),
        ]);
        let err = scene.unpack_fails(&archive, &UnpackLimits::default());
        match &err {
            RegistryError::LinkEntry {
                entry,
                kind,
                target: t,
            } => {
                assert_eq!(entry, "passwd");
                assert_eq!(*kind, "symlink");
                assert_eq!(t.as_bytes(), target);
            }
            other => panic!("{other:?}"),
        }
        expect_entry_named(&err, "passwd");
    }
}

#[test]
fn hardlinks_are_refused() {
    let scene = Scene::new();
    let archive = tar_gz(&[
        regular(b"f.py", b"ok"),
        (link_header(b"h", EntryType::Link, b"/etc/passwd"), b""),
    ]);
    let err = scene.unpack_fails(&archive, &UnpackLimits::default());
    assert!(
        matches!(err, RegistryError::LinkEntry { ref entry, kind: "hardlink", ref target }
            if entry == "h" && target == "/etc/passwd"),
        "{err:?}"
    );
}

#[test]
fn devices_fifos_and_sparse_files_are_refused() {
    let cases = [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "fifo"),
        (EntryType::GNUSparse, "sparse file"),
        (EntryType::new(b'V'), "entry of unknown type 'V'"),
    ];
    for (kind, described) in cases {
        let scene = Scene::new();
        let mut header = raw_header(b"dev", kind, 0);
        header.set_device_major(1).expect("major");
        header.set_device_minor(3).expect("minor");
        header.set_cksum();
        let archive = tar_gz(&[regular(b"f.py", b"ok"), (header, b"")]);
        let err = scene.unpack_fails(&archive, &UnpackLimits::default());
        assert!(
            matches!(err, RegistryError::SpecialFile { ref entry, ref kind }
                if entry == "dev" && kind == described),
            "{err:?}"
        );
    }
}

#[test]
fn gzip_bomb_stops_at_the_unpacked_limit() {
    let bomb = gzip_bomb("zero", 300 * MIB);
    let scene = Scene::new();
    let limits = UnpackLimits::default();
    let err = scene.unpack_fails(&bomb, &limits);
    assert!(
        matches!(err, RegistryError::UnpackedTooLarge { ref entry, limit }
            if entry == "zero" && limit == 256 * MIB),
        "{err:?}"
    );
}

#[test]
fn header_spam_stops_at_the_stream_limit() {
    // Thousands of empty PAX global headers: no file, but endless input.
    let mut builder = tar::Builder::new(Vec::new());
    for _ in 0..2000 {
        let h = raw_header(b"g", EntryType::XGlobalHeader, 0);
        builder.append(&h, &b""[..]).expect("append");
    }
    let archive = gzip(&builder.into_inner().expect("tar"));
    let limits = UnpackLimits {
        max_unpacked_bytes: 1024,
        max_entries: 10,
        ..UnpackLimits::default()
    };
    let err = Scene::new().unpack_fails(&archive, &limits);
    assert!(
        matches!(err, RegistryError::UnpackedTooLarge { limit: 1024, .. }),
        "{err:?}"
    );
}

#[test]
fn oversized_long_name_record_is_refused() {
    let size = 2 * MIB;
    let mut builder = tar::Builder::new(Vec::new());
    let h = raw_header(b"././@LongLink", EntryType::GNULongName, size);
    builder
        .append(&h, std::io::repeat(b'a').take(size))
        .expect("append");
    builder
        .append(&raw_header(b"f.py", EntryType::Regular, 0), &b""[..])
        .expect("append");
    let archive = gzip(&builder.into_inner().expect("tar"));
    let err = Scene::new().unpack_fails(&archive, &UnpackLimits::default());
    assert!(matches!(err, RegistryError::BadArchive { .. }), "{err:?}");
}

#[test]
fn long_names_and_pax_paths_are_checked_too() {
    // GNU long name record carrying a traversal; the header name is benign.
    let long = b"../../escape-by-long-name";
    let mut data = long.to_vec();
    data.push(0);
    let archive = tar_gz(&[
        (
            raw_header(b"././@LongLink", EntryType::GNULongName, data.len() as u64),
            &data,
        ),
        regular(b"benign", b"evil"),
    ]);
    let err = Scene::new().unpack_fails(&archive, &UnpackLimits::default());
    assert!(
        matches!(err, RegistryError::PathTraversal { ref entry }
            if entry.as_bytes() == long),
        "{err:?}"
    );

    // PAX header with an absolute path.
    let record = b"22 path=/tmp/pax-evil\n";
    let archive = tar_gz(&[
        (
            raw_header(b"PaxHeader", EntryType::XHeader, record.len() as u64),
            record,
        ),
        regular(b"benign", b"evil"),
    ]);
    let err = Scene::new().unpack_fails(&archive, &UnpackLimits::default());
    assert!(
        matches!(err, RegistryError::AbsolutePath { ref entry } if entry == "/tmp/pax-evil"),
        "{err:?}"
    );
}

#[test]
fn too_many_entries_are_refused() {
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..=10_000u32 {
        let name = format!("f{i}.py");
        builder
            .append(
                &raw_header(name.as_bytes(), EntryType::Regular, 0),
                &b""[..],
            )
            .expect("append");
    }
    let archive = gzip(&builder.into_inner().expect("tar"));
    let err = Scene::new().unpack_fails(&archive, &UnpackLimits::default());
    assert!(
        matches!(err, RegistryError::TooManyEntries { ref entry, limit: 10_000 }
            if entry == "f10000.py"),
        "{err:?}"
    );
}

#[test]
fn compressed_input_over_the_limit_is_refused() {
    // Incompressible data, so the compressed size is what is limited.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append(
            &raw_header(b"noise", EntryType::Regular, noise.len() as u64),
            noise.as_slice(),
        )
        .expect("append");
    let archive = gzip(&builder.into_inner().expect("tar"));
    let limits = UnpackLimits {
        max_compressed_bytes: 16 * 1024,
        ..UnpackLimits::default()
    };
    let err = Scene::new().unpack_fails(&archive, &limits);
    assert!(
        matches!(err, RegistryError::CompressedTooLarge { limit: 16384 }),
        "{err:?}"
    );
}

#[test]
fn garbage_and_nameless_files_are_refused() {
    let err = Scene::new().unpack_fails(b"this is not gzip", &UnpackLimits::default());
    assert!(matches!(err, RegistryError::BadArchive { .. }), "{err:?}");

    let err = Scene::new().unpack_fails(&gzip(&[7u8; 1024]), &UnpackLimits::default());
    assert!(matches!(err, RegistryError::BadArchive { .. }), "{err:?}");

    let archive = tar_gz(&[regular(b".", b"x")]);
    let err = Scene::new().unpack_fails(&archive, &UnpackLimits::default());
    assert!(
        matches!(err, RegistryError::InvalidEntryPath { .. }),
        "{err:?}"
    );
}

#[test]
fn a_benign_archive_unpacks_with_safe_modes() {
    use std::os::unix::fs::PermissionsExt;
    let scene = Scene::new();
    let mut setuid = raw_header(b"./bin/run", EntryType::Regular, 2);
    setuid.set_mode(0o4777);
    setuid.set_cksum();
    let archive = tar_gz(&[
        (raw_header(b"./", EntryType::Directory, 0), b""),
        regular(b"./f.py", b"def f(event):\n    return event\n"),
        (setuid, b"#!"),
        regular(b"pkg/deep/mod.py", b"x = 1\n"),
    ]);
    unpack_lambda(archive.as_slice(), &scene.dest(), &UnpackLimits::default())
        .expect("benign archive");
    let dest = scene.dest();
    assert_eq!(
        tree(&dest),
        [
            "bin/",
            "bin/run",
            "f.py",
            "pkg/",
            "pkg/deep/",
            "pkg/deep/mod.py"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    let mode = |p: &str| {
        fs::metadata(dest.join(p))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("bin/run"), 0o755);
    assert_eq!(mode("f.py"), 0o644);
    assert_eq!(mode("pkg/deep"), 0o755);
    assert_eq!(mode(""), 0o755);
    // Nothing but the destination appeared next to it.
    let mut names: Vec<_> = fs::read_dir(scene.outer.path().join("registry"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["hello", "keep.txt"]);
}
