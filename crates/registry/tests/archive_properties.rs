//! `unpack_lambda` under random input (proptest): arbitrary bytes, and
//! valid archives with random bytes of their tar stream changed, never make
//! it panic, and nothing is ever written outside the destination (or, on
//! failure, anywhere).

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use ol_registry::{UnpackLimits, unpack_lambda};
use proptest::prelude::*;

/// Cases per property; each unpacks into a fresh directory, so these are
/// the slowest properties (about a second each).
const CASES: u32 = 1000;

/// Every path under `root`, relative to it; symlinks are listed, not
/// followed.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            out.push(
                path.strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string(),
            );
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            }
        }
    }
    out.sort();
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// An uncompressed tar of a small lambda: a file, a directory, a nested
/// file.
fn valid_tar() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("f.py", &b"def f(event):\n    return event\n"[..]),
        ("lib/util.py", b"X = 1\n"),
        ("ol.yaml", b"limits: {mem_mb: 32}\n"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, data)
            .expect("append");
    }
    builder.into_inner().expect("tar")
}

/// Unpacks `tar_gz` into `dest` inside a fresh directory and checks that
/// whatever happened, only `dest` (and what is in it) appeared.
fn unpack_and_check(tar_gz: &[u8]) -> Result<(), TestCaseError> {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dest = scratch.path().join("lambda");
    let limits = UnpackLimits {
        max_compressed_bytes: 1 << 20,
        max_unpacked_bytes: 1 << 20,
        max_entries: 100,
    };
    let result = unpack_lambda(tar_gz, &dest, &limits);
    let found = tree(scratch.path());
    match result {
        Ok(()) => {
            for path in &found {
                prop_assert!(path == "lambda" || path.starts_with("lambda/"), "{path}");
            }
            // Only files and directories, no links of any kind.
            for path in &found {
                let kind = fs::symlink_metadata(scratch.path().join(path))
                    .expect("stat")
                    .file_type();
                prop_assert!(kind.is_file() || kind.is_dir(), "{path}: {kind:?}");
            }
        }
        Err(_) => prop_assert!(found.is_empty(), "a failure left {found:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_escape(
        data in prop::collection::vec(any::<u8>(), 0..2048),
        gzipped in any::<bool>(),
    ) {
        let input = if gzipped { gzip(&data) } else { data };
        unpack_and_check(&input)?;
    }

    #[test]
    fn mutated_archives_never_panic_nor_escape(
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut tar = valid_tar();
        for (at, byte) in changes {
            let i = at.index(tar.len());
            tar[i] = byte;
        }
        if let Some(cut) = cut {
            tar.truncate(cut.index(tar.len()));
        }
        unpack_and_check(&gzip(&tar))?;
    }

    #[test]
    fn mutated_names_never_escape(
        name in "(\\.\\./|/|[a-z]{1,3}/|\\./){0,4}[a-z.]{1,6}",
        kind in prop::sample::select(vec![b'0', b'1', b'2', b'5', b'3', b'6', b'x']),
        link in "(\\.\\./|/|[a-z]{1,3}/){0,3}[a-z]{0,4}",
    ) {
        // A header with any name, type and link target, written raw so the
        // tar crate's own path checks are bypassed.
        let mut header = tar::Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().expect("gnu header");
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            gnu.typeflag = [kind];
        }
        header.set_size(if kind == b'0' { 4 } else { 0 });
        header.set_mode(0o644);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        if kind == b'0' {
            tar.extend_from_slice(b"x=1\n");
            tar.resize(1024, 0);
        }
        let mut tail = valid_tar();
        tar.append(&mut tail);
        unpack_and_check(&gzip(&tar))?;
    }
}
