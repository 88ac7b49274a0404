//! Hand-made archives for the registry's tests: tar headers written byte
//! by byte (so a test can make what the tar crate refuses to), gzip, and a
//! gzip bomb; and a listing of a directory tree to compare before and
//! after.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

pub const MIB: u64 = 1 << 20;

/// A GNU header whose name (and link name) bytes are written as given,
/// bypassing the tar crate's own path checks.
pub fn raw_header(name: &[u8], kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.name[..name.len()].copy_from_slice(name);
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    h
}

pub fn link_header(name: &[u8], kind: EntryType, target: &[u8]) -> Header {
    let mut h = raw_header(name, kind, 0);
    {
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.linkname[..target.len()].copy_from_slice(target);
    }
    h.set_cksum();
    h
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

/// A tar.gz of the given headers, each followed by its data.
pub fn tar_gz(entries: &[(Header, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (header, data) in entries {
        builder.append(header, *data).expect("append");
    }
    gzip(&builder.into_inner().expect("finish tar"))
}

pub fn regular(name: &[u8], data: &'static [u8]) -> (Header, &'static [u8]) {
    (
        raw_header(name, EntryType::Regular, data.len() as u64),
        data,
    )
}

/// One file `name` of `size` zeros, about a thousandth of that
/// compressed. Built from concatenated gzip members (one per MiB,
/// compressed once) because compressing hundreds of MiB in a debug build
/// is slow; gzip readers must accept concatenated members anyway.
pub fn gzip_bomb(name: &str, size: u64) -> Vec<u8> {
    let zeros_member = gzip(&vec![0u8; MIB as usize]);
    let mut bomb = gzip(raw_header(name.as_bytes(), EntryType::Regular, size).as_bytes());
    for _ in 0..size / MIB {
        bomb.extend_from_slice(&zeros_member);
    }
    bomb.extend_from_slice(&gzip(&[0u8; 1024]));
    assert!(
        bomb.len() as u64 <= size / 128 + MIB,
        "bomb is {} bytes",
        bomb.len()
    );
    bomb
}

/// Every path under `root`, relative, with a marker for directories.
pub fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path.strip_prefix(root).expect("under root").display();
            if path.is_dir() {
                out.insert(format!("{rel}/"));
                pending.push(path);
            } else {
                out.insert(rel.to_string());
            }
        }
    }
    out
}
