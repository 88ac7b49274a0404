//! What an installed wheel says of itself, read from its `.dist-info`: the
//! modules it provides at the top level (`top_level.txt`, else its
//! `RECORD`) and the distributions it requires (`Requires-Dist` of its
//! `METADATA`, extras left out). The import cache matches lambdas to
//! zygotes with these.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::{Package, normalize};

/// Reads what was just installed into `dir`: its top-level modules and
/// requirements, from the `.dist-info` of `name`.
pub(super) fn read_installed(dir: &Path, name: &str, version: &str) -> Result<Package, String> {
    let dist_info = fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".dist-info"))
                .and_then(|n| n.rsplit_once('-'))
                .is_some_and(|(n, _)| normalize(n) == name)
        })
        .ok_or_else(|| format!("no {name} .dist-info was installed"))?;
    let read = |file: &str| fs::read_to_string(dist_info.join(file)).unwrap_or_default();
    let top_level = match read("top_level.txt") {
        listed if !listed.trim().is_empty() => {
            let mut names: Vec<String> = listed
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.contains('/'))
                .map(str::to_string)
                .collect();
            names.sort();
            names.dedup();
            names
        }
        _ => top_level_from_record(&read("RECORD")),
    };
    Ok(Package {
        name: name.to_string(),
        version: version.to_string(),
        top_level,
        requires: requires_from_metadata(&read("METADATA")),
    })
}

/// Top-level importable names from a wheel's RECORD: its top directories
/// that are identifiers, and its top-level modules.
pub fn top_level_from_record(record: &str) -> Vec<String> {
    let mut names = BTreeSet::new();
    for line in record.lines() {
        let path = line.split(',').next().unwrap_or("").trim();
        let mut parts = path.split('/');
        let Some(first) = parts.next() else { continue };
        let is_dir = parts.next().is_some();
        let name = if is_dir {
            if first.ends_with(".dist-info") || first.ends_with(".data") {
                continue;
            }
            first
        } else if let Some(stem) = first.strip_suffix(".py") {
            stem
        } else if first.ends_with(".so") || first.ends_with(".pyd") {
            first.split('.').next().unwrap_or("")
        } else {
            continue;
        };
        let identifier = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_alphanumeric() || c == '_')
            && !matches!(name, "__pycache__" | "bin");
        if identifier {
            names.insert(name.to_string());
        }
    }
    names.into_iter().collect()
}

/// Normalized names a METADATA file's `Requires-Dist` lines name, leaving
/// out those only wanted for an extra.
pub fn requires_from_metadata(metadata: &str) -> Vec<String> {
    let mut names = BTreeSet::new();
    for line in metadata.lines() {
        let Some(req) = line.strip_prefix("Requires-Dist:") else {
            if line.is_empty() {
                break; // the headers end at the first blank line
            }
            continue;
        };
        let (spec, marker) = req.split_once(';').unwrap_or((req, ""));
        if marker.contains("extra") {
            continue;
        }
        let name: String = spec
            .trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        if !name.is_empty() {
            names.insert(normalize(&name));
        }
    }
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_names_come_from_record() {
        let record = "numpy/__init__.py,sha256=x,1\nnumpy/core/a.py,,\nnumpy-2.4.6.dist-info/RECORD,,\n\
                      numpy.libs/libopenblas.so,,\nbin/f2py,,\nbin/sub/x,,\nsix.py,,\n_cffi_backend.cpython-311-x86_64-linux-gnu.so,,\n\
                      __pycache__/six.cpython-311.pyc,,\nfoo-1.0.data/scripts/x,,\ndistutils-precedence.pth,,\n";
        assert_eq!(
            top_level_from_record(record),
            vec!["_cffi_backend", "numpy", "six"]
        );
    }

    #[test]
    fn requires_leave_out_extras_and_read_only_headers() {
        let metadata = "Metadata-Version: 2.1\nName: pandas\nRequires-Dist: numpy>=2.0.2; python_version < \"3.14\"\n\
                        Requires-Dist: python-dateutil>=2.9.0\nRequires-Dist: tzdata; sys_platform == \"win32\"\n\
                        Requires-Dist: pytest>=8; extra == \"test\"\nRequires-Dist: Jinja2 (>=3)\n\nRequires-Dist: not-a-header\n";
        assert_eq!(
            requires_from_metadata(metadata),
            vec!["jinja2", "numpy", "python-dateutil", "tzdata"]
        );
    }
}
