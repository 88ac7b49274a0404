//! The Python programs the package installer runs (with `python -I -c`,
//! standard library only): the trusted fetch of an sdist and the offline
//! build frontend of a source build, and the fetch of uv itself. Kept
//! apart from the Rust so each reads as one program.

/// What both fetch programs share: reading a package's files from the
/// index's simple API (PEP 691 JSON, else PEP 503 HTML) or from a local
/// wheel directory, and downloading one, checking the sha256 the index
/// gives (a file without one is refused).
const INDEX: &str = r#"
import hashlib, html.parser, json, os, re, shutil, sys, urllib.parse, urllib.request
def norm(n): return re.sub(r"[-_.]+", "-", n).lower()
def fail(msg): print(msg, file=sys.stderr); sys.exit(2)
def files_of(name, index, local):
    """[(filename, source, sha256 or None)] of `name`, yanked ones left out."""
    if local:
        return [(e, os.path.join(local, e), None) for e in sorted(os.listdir(local))]
    url = index.rstrip("/") + "/" + norm(name) + "/"
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            kind, body, base = r.headers.get("Content-Type", ""), r.read(), r.geturl()
    except Exception as e:
        fail(f"cannot read the index page {url}: {e}")
    files = []
    if "json" in kind:
        for f in json.loads(body).get("files", []):
            files.append((f.get("filename", ""), f.get("url", ""), (f.get("hashes") or {}).get("sha256"), f.get("yanked")))
    else:
        class Links(html.parser.HTMLParser):
            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                if tag == "a" and a.get("href"):
                    href = a["href"]
                    frag = urllib.parse.urldefrag(href)[1]
                    sha = frag[len("sha256="):] if frag.startswith("sha256=") else None
                    filename = urllib.parse.unquote(urllib.parse.urlsplit(href).path.rsplit("/", 1)[-1])
                    files.append((filename, href, sha, "data-yanked" in a))
        Links().feed(body.decode("utf-8", "replace"))
    return [(filename, urllib.parse.urljoin(base, urllib.parse.urldefrag(href)[0]), sha)
            for filename, href, sha, yanked in files
            if filename and "/" not in filename and not filename.startswith(".") and not yanked]
def download(filename, source, sha, dest, local):
    """Copies or downloads `source` to dest/filename; returns its path."""
    target = os.path.join(dest, filename)
    digest = hashlib.sha256()
    if local:
        with open(source, "rb") as src, open(target, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk); out.write(chunk)
        return target
    if not sha:
        fail(f"the index gives no sha256 for {filename}: refusing to use it")
    try:
        with urllib.request.urlopen(source, timeout=300) as r, open(target, "wb") as out:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                digest.update(chunk); out.write(chunk)
    except Exception as e:
        fail(f"cannot download {source}: {e}")
    if digest.hexdigest() != sha.lower():
        os.remove(target)
        fail(f"{filename}: sha256 {digest.hexdigest()} is not the index's {sha}")
    return target
"#;

/// Fetches one source distribution without running any of its code, in
/// a sandbox with network ([`INDEX`]).
///
/// argv: `DEST NAME VERSION SPECIFIERS INDEX_URL LOCAL_DIR` (VERSION,
/// SPECIFIERS and one of the last two may be empty). Prints one JSON line
/// `{"file": ..., "version": ...}`.
const FETCH_SDIST: &str = r#"
dest, name, version, spec, index, local = sys.argv[1:7]
def packaging():
    try:
        from packaging.version import Version; from packaging.specifiers import SpecifierSet
    except ImportError:
        try:
            from pip._vendor.packaging.version import Version
            from pip._vendor.packaging.specifiers import SpecifierSet
        except ImportError:
            return None
    return Version, SpecifierSet
def sdist_version(filename):
    for suffix in (".tar.gz", ".zip"):
        if filename.endswith(suffix):
            n, sep, v = filename[: -len(suffix)].rpartition("-")
            if sep and norm(n) == norm(name) and v:
                return v
    return None
candidates = []  # (version, filename, source, sha256 or None)
for filename, source, sha in files_of(name, index, local):
    v = sdist_version(filename)
    if v: candidates.append((v, filename, source, sha))
tools = packaging()
def same(a, b):
    if tools:
        try: return tools[0](a) == tools[0](b)
        except Exception: pass
    return a.lower() == b.lower()
if version:
    chosen = [c for c in candidates if same(c[0], version)]
elif tools:
    Version, SpecifierSet = tools
    ok = []
    for c in candidates:
        try:
            if Version(c[0]) in SpecifierSet(spec, prereleases=False): ok.append(c)
        except Exception: pass
    chosen = sorted(ok, key=lambda c: Version(c[0]), reverse=True)
else:
    fail(f"cannot choose a version of {name} without the packaging module: pin it ({name}==VERSION)")
if not chosen:
    fail(f"no source distribution of {name} {version or spec} on the index")
v, filename, source, sha = chosen[0]
download(filename, source, sha, dest, local)
print(json.dumps({"file": filename, "version": v}))
"#;

/// Gets uv without pip (which takes ~1.1 s more, most of it starting pip
/// and reading the index page's links): the newest stable uv wheel for
/// this machine (its architecture, and a manylinux tag no newer than its
/// glibc), checked against the index's sha256 ([`INDEX`]); its `uv`
/// binary is written to `DEST/bin/uv`. Any failure exits non-zero, and
/// the caller falls back to pip.
///
/// argv: `DEST INDEX_URL LOCAL_DIR` (one of the last two may be empty).
/// Prints one JSON line `{"version": ...}`.
const FETCH_UV: &str = r#"
import platform, zipfile
dest, index, local = sys.argv[1:4]
arch = platform.machine()
libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
if not libc.startswith("glibc "):
    fail(f"not a glibc system ({libc!r})")
major, minor = (int(x) for x in libc.split()[1].split(".")[:2])
ours = {f"manylinux_{major}_{m}_{arch}" for m in range(minor + 1)}
ours |= {f"manylinux{tag}_{arch}" for tag, need in (("2014", 17), ("2010", 12), ("1", 5)) if major == 2 and minor >= need}
wheels = []
for filename, source, sha in files_of("uv", index, local):
    m = re.fullmatch(r"uv-([0-9]+(?:\.[0-9]+)*)-py3-none-([A-Za-z0-9_.]+)\.whl", filename)
    if m and set(m.group(2).split(".")) & ours:
        wheels.append((tuple(int(x) for x in m.group(1).split(".")), filename, source, sha))
if not wheels:
    fail(f"no uv wheel for {arch} with {libc} on the index")
version, filename, source, sha = max(wheels)
wheel = download(filename, source, sha, dest, local)
with zipfile.ZipFile(wheel) as z:
    member = next((n for n in z.namelist() if re.fullmatch(r"uv-[^/]+\.data/scripts/uv", n)), None)
    if member is None:
        fail(f"{filename} holds no uv binary")
    os.makedirs(os.path.join(dest, "bin"), exist_ok=True)
    with z.open(member) as src, open(os.path.join(dest, "bin", "uv"), "wb") as out:
        shutil.copyfileobj(src, out)
os.chmod(os.path.join(dest, "bin", "uv"), 0o755)
os.remove(wheel)
print(json.dumps({"version": ".".join(map(str, version))}))
"#;

/// The program that fetches one source distribution ([`FETCH_SDIST`]).
pub fn fetch_sdist() -> String {
    [INDEX, FETCH_SDIST].concat()
}

/// The program that gets uv without pip ([`FETCH_UV`]).
pub fn fetch_uv() -> String {
    [INDEX, FETCH_UV].concat()
}

/// The offline build frontend (PEP 517), run in a sandbox with no network
/// whose only writable dir is `WORK`.
///
/// argv: `prepare SDIST WORK ENV` unpacks the sdist into `WORK/src` and
/// prints `{"requires": [...]}` (its `[build-system] requires`, read, not
/// run); `build SDIST WORK ENV` imports the backend with `ENV` (the build
/// requirements, fetched by the worker) on `sys.path`, refuses a backend
/// that wants more at build time (`get_requires_for_build_wheel` names
/// something `ENV` lacks: it could not be fetched offline) and builds the
/// wheel into `WORK/out`.
pub const BUILD: &str = r#"
import importlib, importlib.metadata, json, os, re, sys, tarfile, zipfile
mode, sdist, work, env = sys.argv[1:5]
src_root = os.path.join(work, "src")
def norm(n): return re.sub(r"[-_.]+", "-", n).lower()
def fail(msg): print(msg, file=sys.stderr); sys.exit(2)
def source():
    entries = os.listdir(src_root)
    if len(entries) != 1 or not os.path.isdir(os.path.join(src_root, entries[0])):
        fail(f"{os.path.basename(sdist)} does not hold exactly one top directory")
    return os.path.join(src_root, entries[0])
def build_system(src):
    path = os.path.join(src, "pyproject.toml")
    if not os.path.exists(path):
        return None
    import tomllib
    with open(path, "rb") as f:
        return tomllib.load(f).get("build-system")
if mode == "prepare":
    os.makedirs(src_root)
    if sdist.endswith(".zip"):
        with zipfile.ZipFile(sdist) as z:
            for member in z.namelist():
                parts = member.replace("\\", "/").split("/")
                if member.startswith("/") or ".." in parts:
                    fail(f"{os.path.basename(sdist)}: unsafe member {member!r}")
            z.extractall(src_root)
    else:
        with tarfile.open(sdist) as t:
            if hasattr(tarfile, "data_filter"):
                t.extractall(src_root, filter="data")
            else:
                for m in t.getmembers():
                    parts = m.name.split("/")
                    link = m.linkname.split("/") if (m.issym() or m.islnk()) else []
                    if m.name.startswith("/") or ".." in parts or m.linkname.startswith("/") or ".." in link or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                        fail(f"{os.path.basename(sdist)}: unsafe member {m.name!r}")
                t.extractall(src_root)
    bs = build_system(source())
    requires = ["setuptools>=40.8.0", "wheel"] if bs is None else bs.get("requires", ["setuptools>=40.8.0"])
    print(json.dumps({"requires": list(requires)}))
elif mode == "build":
    src = source()
    out = os.path.join(work, "out")
    os.makedirs(out, exist_ok=True)
    os.chdir(src)
    bs = build_system(src) or {}
    backend = bs.get("build-backend", "setuptools.build_meta:__legacy__")
    sys.path[:0] = [os.path.join(src, p) for p in bs.get("backend-path", [])] + [env, src]
    module, _, attr = backend.partition(":")
    hooks = importlib.import_module(module)
    for a in filter(None, attr.split(".")):
        hooks = getattr(hooks, a)
    have = {norm(d.metadata["Name"] or "") for d in importlib.metadata.distributions(path=[env])}
    wanted = getattr(hooks, "get_requires_for_build_wheel", lambda config_settings=None: [])({})
    missing = [r for r in wanted if norm(re.match(r"[A-Za-z0-9._-]*", r).group(0)) not in have]
    if missing:
        fail(f"the build backend asks for {missing} at build time, beyond [build-system] requires; an offline build cannot fetch them")
    print(json.dumps({"wheel": hooks.build_wheel(out, {})}))
else:
    fail(f"unknown mode {mode}")
"#;

/// The bytecode compiler of an installed package (`bytecode`), run in a
/// sandbox with no network that reads the package and writes only `OUT`.
///
/// argv: `PACKAGE OUT`. Compiles every `.py` file under `PACKAGE` (links
/// not followed, `__pycache__` dirs skipped) into `OUT/<its dir>/
/// __pycache__/`, named as Python looks for it, as a checked-hash pyc (PEP
/// 552: used only while the source's hash matches the one it records,
/// whatever the files' times). A file this Python cannot compile (Python 2
/// code in a test dir, a template) is counted and left out. Prints
/// `{"tag": ..., "compiled": N, "failed": M}`.
pub const COMPILE: &str = r#"
import importlib.util, json, os, py_compile, sys
package, out = sys.argv[1:3]
compiled = failed = 0
for top, dirs, files in os.walk(package):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not os.path.islink(os.path.join(top, d)))
    rel = os.path.relpath(top, package)
    for name in sorted(files):
        src = os.path.join(top, name)
        if not name.endswith(".py") or os.path.islink(src) or not os.path.isfile(src):
            continue
        pyc = os.path.join(out, rel, "__pycache__", os.path.basename(importlib.util.cache_from_source(src)))
        try:
            py_compile.compile(src, cfile=pyc, dfile=src, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
            compiled += 1
        except Exception:
            failed += 1
print(json.dumps({"tag": sys.implementation.cache_tag, "compiled": compiled, "failed": failed}))
"#;

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::{Command, Output};

    use super::*;

    /// Writes a wheel named `file` into `dir` whose uv binary holds
    /// `content` (with Python's zipfile: the crate has no zip writer).
    fn wheel(dir: &Path, file: &str, content: &str) {
        let version = file.split('-').nth(1).expect("version");
        let make = "import sys, zipfile\n\
            with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
            \x20   z.writestr(f'uv-{sys.argv[2]}.data/scripts/uv', sys.argv[3])\n\
            \x20   z.writestr(f'uv-{sys.argv[2]}.dist-info/METADATA', 'Name: uv\\n')\n";
        let out = Command::new("python3")
            .args(["-I", "-c", make])
            .arg(dir.join(file))
            .args([version, content])
            .output()
            .expect("python3");
        assert!(out.status.success(), "{out:?}");
    }

    fn fetch_uv_from(local: &Path, dest: &Path) -> Output {
        Command::new("python3")
            .args(["-I", "-c", &fetch_uv()])
            .arg(dest)
            .arg("")
            .arg(local)
            .output()
            .expect("python3")
    }

    #[test]
    fn uv_is_the_newest_wheel_for_this_machine() {
        let arch = std::env::consts::ARCH;
        let tmp = tempfile::tempdir().expect("tmp");
        let (local, dest) = (tmp.path().join("index"), tmp.path().join("dest"));
        fs::create_dir_all(&local).expect("index");
        fs::create_dir_all(&dest).expect("dest");
        let ours = format!("py3-none-manylinux_2_17_{arch}.manylinux2014_{arch}.whl");
        wheel(&local, &format!("uv-0.9.10-{ours}"), "newest");
        wheel(&local, &format!("uv-0.9.9-{ours}"), "older");
        // Newer, but for another machine or libc: never taken.
        wheel(
            &local,
            "uv-1.0.0-py3-none-manylinux_2_17_s390x.whl",
            "s390x",
        );
        wheel(
            &local,
            &format!("uv-1.0.0-py3-none-musllinux_1_1_{arch}.whl"),
            "musl",
        );
        wheel(
            &local,
            &format!("uv-1.0.0-py3-none-manylinux_9_99_{arch}.whl"),
            "glibc 9.99",
        );
        let out = fetch_uv_from(&local, &dest);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            r#"{"version": "0.9.10"}"#
        );
        let uv = dest.join("bin/uv");
        assert_eq!(fs::read_to_string(&uv).expect("uv"), "newest");
        assert_eq!(
            fs::metadata(&uv).expect("uv").permissions().mode() & 0o777,
            0o755
        );
        let left: Vec<_> = fs::read_dir(&dest).expect("dest").flatten().collect();
        assert_eq!(left.len(), 1, "only bin/ is left: {left:?}");
    }

    #[test]
    fn no_wheel_for_this_machine_is_a_failure_the_caller_falls_back_from() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (local, dest) = (tmp.path().join("index"), tmp.path().join("dest"));
        fs::create_dir_all(&local).expect("index");
        fs::create_dir_all(&dest).expect("dest");
        wheel(
            &local,
            "uv-1.0.0-py3-none-manylinux_2_17_s390x.whl",
            "s390x",
        );
        let out = fetch_uv_from(&local, &dest);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no uv wheel"),
            "{out:?}"
        );
        assert!(!dest.join("bin/uv").exists());
    }
}
