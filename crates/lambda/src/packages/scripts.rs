//! The two Python programs of a source build (run with `python -I -c`,
//! standard library only): the trusted fetch of an sdist, and the offline
//! build frontend. Kept apart from the Rust so each reads as one program.

/// Fetches one source distribution without running any of its code, in
/// a sandbox with network: from a local wheel directory, or from the
/// index's simple API (PEP 691 JSON, else PEP 503 HTML), checking the
/// sha256 the index gives (a file without one is refused).
///
/// argv: `DEST NAME VERSION SPECIFIERS INDEX_URL LOCAL_DIR` (VERSION,
/// SPECIFIERS and one of the last two may be empty). Prints one JSON line
/// `{"file": ..., "version": ...}`.
pub const FETCH: &str = r#"
import hashlib, html.parser, json, os, re, shutil, sys, urllib.parse, urllib.request
dest, name, version, spec, index, local = sys.argv[1:7]
def norm(n): return re.sub(r"[-_.]+", "-", n).lower()
def fail(msg): print(msg, file=sys.stderr); sys.exit(2)
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
if local:
    for entry in sorted(os.listdir(local)):
        v = sdist_version(entry)
        if v: candidates.append((v, entry, os.path.join(local, entry), None))
else:
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
    for filename, href, sha, yanked in files:
        v = sdist_version(filename)
        if v and "/" not in filename and not filename.startswith(".") and not yanked:
            candidates.append((v, filename, urllib.parse.urljoin(base, urllib.parse.urldefrag(href)[0]), sha))
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
target = os.path.join(dest, filename)
digest = hashlib.sha256()
if local:
    with open(source, "rb") as src, open(target, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk); out.write(chunk)
else:
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
print(json.dumps({"file": filename, "version": v}))
"#;

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
