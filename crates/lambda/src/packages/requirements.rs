//! The requirements filter: what of a lambda's `requirements.txt` reaches
//! the resolver (the file is the tenant's, so untrusted).
//!
//! Only PEP 508 requirements *by name* pass: `name[extras] specifiers;
//! marker`. Everything else is refused with an error naming the line:
//! option lines (`-r`, `-c`, `-i`/`--index-url`, `--extra-index-url`,
//! `-f`/`--find-links`, `--trusted-host`, `-e`, ...), URLs, VCS
//! requirements (`git+https://...`), local paths and archives, `file:`,
//! direct references (`name @ url`) and anything that does not parse.
//!
//! Refusing, rather than dropping, option lines is deliberate: a dropped
//! `--index-url` or `--extra-index-url` would send the resolver to the
//! worker's index for names the tenant meant to come from elsewhere (the
//! dependency-confusion mistake, silently), and a dropped `-r`/`-c` would
//! resolve something other than what the tenant tested. An error at the
//! first call says exactly which line to change.
//!
//! Accepted lines are not passed on verbatim: each is parsed and written
//! again from its parts ([`Requirement::line`]), with the name normalized
//! (PEP 503), so nothing the parser did not understand (an option after a
//! requirement, an environment-variable reference, a path-like name) can
//! reach the resolver, whatever its own requirements-file syntax accepts.

use std::fmt;

/// Longest line quoted in an error.
const QUOTE_MAX: usize = 120;

/// File name endings that make pip and uv read a "name" as a local file.
const ARCHIVE_SUFFIXES: [&str; 12] = [
    ".whl",
    ".zip",
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz",
    ".tar.xz",
    ".txz",
    ".tar.lz",
    ".tlz",
    ".tar.lzma",
];

/// PEP 508's marker variables (and `extra`).
const MARKER_VARIABLES: [&str; 14] = [
    "python_version",
    "python_full_version",
    "os_name",
    "sys_platform",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform_machine",
    "platform_python_implementation",
    "implementation_name",
    "implementation_version",
    "extra",
    // Deprecated spellings pip still reads.
    "os.name",
    "sys.platform",
];

/// Version comparison operators, longest first (so `===` is not read as
/// `==` followed by `=`).
const VERSION_OPS: [&str; 8] = ["===", "==", "!=", "<=", ">=", "~=", "<", ">"];

/// One requirement by name, as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// PEP 503 normalized name.
    pub name: String,
    /// Extras, normalized, in the order given.
    pub extras: Vec<String>,
    /// `(operator, version)` pairs.
    pub specifiers: Vec<(String, String)>,
    /// The environment marker, written again from its tokens.
    pub marker: Option<String>,
}

impl Requirement {
    /// The requirement written from its parts, as the resolver gets it:
    /// `name[a,b]>=1,<2; python_version >= "3.8"`.
    pub fn line(&self) -> String {
        let mut out = self.name.clone();
        if !self.extras.is_empty() {
            out.push('[');
            out.push_str(&self.extras.join(","));
            out.push(']');
        }
        let specs: Vec<String> = self
            .specifiers
            .iter()
            .map(|(op, v)| format!("{op}{v}"))
            .collect();
        out.push_str(&specs.join(","));
        if let Some(marker) = &self.marker {
            out.push_str("; ");
            out.push_str(marker);
        }
        out
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `-r`, `--index-url` and every other option line.
    Option,
    /// `-e` / `--editable`.
    Editable,
    /// `git+`, `hg+`, `svn+`, `bzr+` URLs.
    Vcs,
    /// Any other URL, `file:` included.
    Url,
    /// `name @ url`.
    DirectReference,
    /// A local path, directory or archive.
    Path,
    /// Not a PEP 508 requirement by name; says what is wrong.
    Syntax(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Option => f.write_str(
                "options are not allowed in requirements (the worker's operator sets the index: pip_index_url)",
            ),
            Self::Editable => f.write_str("editable requirements (-e) are not allowed"),
            Self::Vcs => f.write_str(
                "VCS requirements (git+..., hg+..., svn+..., bzr+...) are not allowed; name a package on the index",
            ),
            Self::Url => f.write_str("URL requirements are not allowed; name a package on the index"),
            Self::DirectReference => f.write_str(
                "direct references (name @ url) are not allowed; name a package on the index",
            ),
            Self::Path => f.write_str(
                "local paths and archives are not allowed; name a package on the index",
            ),
            Self::Syntax(what) => write!(f, "not a requirement by name (PEP 508): {what}"),
        }
    }
}

/// A refused line of a requirements file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("requirements line {line} ({text:?}): {refusal}")]
pub struct RequirementError {
    /// Its number, from 1.
    pub line: usize,
    /// The line (shortened if long).
    pub text: String,
    /// Why it was refused.
    pub refusal: Refusal,
}

/// The requirements of a requirements file, every line checked: comments
/// and blank lines are skipped, anything but a requirement by name is an
/// error naming the first such line.
pub fn parse_requirements(text: &str) -> Result<Vec<Requirement>, RequirementError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let requirement = parse_line(line).map_err(|refusal| RequirementError {
            line: i + 1,
            text: quote(line),
            refusal,
        })?;
        out.push(requirement);
    }
    Ok(out)
}

/// Whether a requirements file asks for anything (a refused line counts:
/// its error must reach the caller).
pub fn has_requirements(text: &str) -> bool {
    parse_requirements(text).map_or(true, |r| !r.is_empty())
}

/// The line without its comment: pip's rule, `#` at the start or after
/// whitespace.
fn strip_comment(line: &str) -> &str {
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_space {
            return &line[..i];
        }
        prev_space = c.is_whitespace();
    }
    line
}

fn quote(line: &str) -> String {
    if line.chars().count() <= QUOTE_MAX {
        line.to_string()
    } else {
        let mut s: String = line.chars().take(QUOTE_MAX).collect();
        s.push('…');
        s
    }
}

/// One non-empty, comment-free, trimmed line.
fn parse_line(line: &str) -> Result<Requirement, Refusal> {
    if line.starts_with('-') {
        return Err(
            if line.starts_with("-e") || line.starts_with("--editable") {
                Refusal::Editable
            } else {
                Refusal::Option
            },
        );
    }
    let mut p = Parser::new(line);
    let name = p.name();
    // `name @ url` (with or without extras before the `@`).
    if name.is_some() {
        let mut q = p.clone();
        q.skip_ws();
        if q.peek() == Some('[') {
            let _ = q.extras();
            q.skip_ws();
        }
        if q.peek() == Some('@') {
            return Err(Refusal::DirectReference);
        }
    }
    let lower = line.to_ascii_lowercase();
    if line.contains("://") || lower.starts_with("file:") {
        let scheme = lower.split("://").next().unwrap_or("");
        return Err(
            if ["git+", "hg+", "svn+", "bzr+"]
                .iter()
                .any(|vcs| scheme.starts_with(vcs))
            {
                Refusal::Vcs
            } else {
                Refusal::Url
            },
        );
    }
    if line.ends_with('\\') {
        return Err(Refusal::Syntax(
            "line continuations are not supported (nor per-requirement options such as --hash)"
                .into(),
        ));
    }
    if line.starts_with(['.', '/', '~'])
        || line.contains(['/', '\\'])
        || ARCHIVE_SUFFIXES.iter().any(|s| lower.ends_with(s))
    {
        return Err(Refusal::Path);
    }
    let Some(name) = name else {
        return Err(Refusal::Syntax(
            "it does not start with a package name".into(),
        ));
    };
    p.requirement_rest(name)
}

/// A cursor over one line.
#[derive(Clone)]
struct Parser<'a> {
    rest: &'a str,
}

impl<'a> Parser<'a> {
    fn new(line: &'a str) -> Self {
        Self { rest: line }
    }

    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.rest = &self.rest[c.len_utf8()..];
        Some(c)
    }

    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    fn eat(&mut self, token: &str) -> bool {
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// The longest prefix of `allowed` characters.
    fn take_while(&mut self, allowed: impl Fn(char) -> bool) -> &'a str {
        let end = self
            .rest
            .char_indices()
            .find(|(_, c)| !allowed(*c))
            .map_or(self.rest.len(), |(i, _)| i);
        let (taken, rest) = self.rest.split_at(end);
        self.rest = rest;
        taken
    }

    /// A PEP 508 identifier (a name or an extra): ASCII letters and
    /// digits, with `-`, `_`, `.` inside.
    fn identifier(&mut self) -> Option<&'a str> {
        let mut q = self.clone();
        let word = q.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let ok = word.starts_with(|c: char| c.is_ascii_alphanumeric())
            && word.ends_with(|c: char| c.is_ascii_alphanumeric());
        if ok {
            *self = q;
            Some(word)
        } else {
            None
        }
    }

    fn name(&mut self) -> Option<String> {
        self.identifier().map(normalize)
    }

    /// `[a, b]`.
    fn extras(&mut self) -> Result<Vec<String>, Refusal> {
        let bad = |what: &str| Refusal::Syntax(format!("bad extras: {what}"));
        if !self.eat("[") {
            return Ok(Vec::new());
        }
        let mut extras = Vec::new();
        self.skip_ws();
        if self.eat("]") {
            return Ok(extras);
        }
        loop {
            self.skip_ws();
            let extra = self.identifier().ok_or_else(|| bad("expected a name"))?;
            extras.push(normalize(extra));
            self.skip_ws();
            if self.eat("]") {
                return Ok(extras);
            }
            if !self.eat(",") {
                return Err(bad("expected `,` or `]`"));
            }
        }
    }

    /// `op version` pairs separated by commas, maybe in parentheses.
    fn specifiers(&mut self) -> Result<Vec<(String, String)>, Refusal> {
        let paren = self.eat("(");
        let mut specs = Vec::new();
        loop {
            self.skip_ws();
            let Some(op) = VERSION_OPS.iter().find(|op| self.rest.starts_with(**op)) else {
                if specs.is_empty() && !paren {
                    return Ok(specs);
                }
                return Err(Refusal::Syntax("expected a version operator".into()));
            };
            self.rest = &self.rest[op.len()..];
            self.skip_ws();
            let version = self
                .version()
                .ok_or_else(|| Refusal::Syntax(format!("expected a version after `{op}`")))?;
            specs.push(((*op).to_string(), version.to_string()));
            self.skip_ws();
            if !self.eat(",") {
                break;
            }
        }
        if paren && !self.eat(")") {
            return Err(Refusal::Syntax("expected `)` after the versions".into()));
        }
        Ok(specs)
    }

    /// A version (PEP 440's characters, wildcards and local versions).
    fn version(&mut self) -> Option<&'a str> {
        let v = self.take_while(is_version_char);
        (!v.is_empty()).then_some(v)
    }

    /// Everything after the name.
    fn requirement_rest(&mut self, name: String) -> Result<Requirement, Refusal> {
        self.skip_ws();
        let extras = self.extras()?;
        self.skip_ws();
        let specifiers = self.specifiers()?;
        self.skip_ws();
        let marker = if self.eat(";") {
            let marker = self.marker_or(0)?;
            self.skip_ws();
            Some(marker)
        } else {
            None
        };
        match self.peek() {
            None => Ok(Requirement {
                name,
                extras,
                specifiers,
                marker,
            }),
            Some(c) => Err(Refusal::Syntax(format!(
                "unexpected {c:?} at {:?}",
                quote(self.rest)
            ))),
        }
    }

    /// `marker_and ("or" marker_and)*`; `depth` bounds nesting.
    fn marker_or(&mut self, depth: usize) -> Result<String, Refusal> {
        let mut out = self.marker_and(depth)?;
        while self.keyword("or") {
            out.push_str(" or ");
            out.push_str(&self.marker_and(depth)?);
        }
        Ok(out)
    }

    fn marker_and(&mut self, depth: usize) -> Result<String, Refusal> {
        let mut out = self.marker_expr(depth)?;
        while self.keyword("and") {
            out.push_str(" and ");
            out.push_str(&self.marker_expr(depth)?);
        }
        Ok(out)
    }

    fn marker_expr(&mut self, depth: usize) -> Result<String, Refusal> {
        self.skip_ws();
        if self.eat("(") {
            if depth >= 16 {
                return Err(Refusal::Syntax("marker nested too deeply".into()));
            }
            let inner = self.marker_or(depth + 1)?;
            self.skip_ws();
            if !self.eat(")") {
                return Err(Refusal::Syntax("expected `)` in the marker".into()));
            }
            return Ok(format!("({inner})"));
        }
        let left = self.marker_value()?;
        self.skip_ws();
        let op = if let Some(op) = VERSION_OPS.iter().find(|op| self.rest.starts_with(**op)) {
            self.rest = &self.rest[op.len()..];
            (*op).to_string()
        } else if self.keyword("in") {
            "in".to_string()
        } else if self.keyword("not") && self.keyword("in") {
            "not in".to_string()
        } else {
            return Err(Refusal::Syntax(
                "expected a comparison in the marker".into(),
            ));
        };
        let right = self.marker_value()?;
        Ok(format!("{left} {op} {right}"))
    }

    /// A marker variable or a quoted string (re-quoted with `"`).
    fn marker_value(&mut self) -> Result<String, Refusal> {
        self.skip_ws();
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.bump();
                let s = self.take_while(is_marker_string_char);
                if self.bump() != Some(q) {
                    return Err(Refusal::Syntax(
                        "a marker string may hold letters, digits, spaces and . _ - + * ! ~ only"
                            .into(),
                    ));
                }
                Ok(format!("\"{s}\""))
            }
            _ => {
                let word = self.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'));
                if MARKER_VARIABLES.contains(&word) {
                    Ok(word.to_string())
                } else {
                    Err(Refusal::Syntax(format!(
                        "unknown marker variable {:?}",
                        quote(word)
                    )))
                }
            }
        }
    }

    /// Eats `word` (after whitespace) when it stands alone.
    fn keyword(&mut self, word: &str) -> bool {
        let mut q = self.clone();
        q.skip_ws();
        if q.eat(word)
            && !q
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            *self = q;
            true
        } else {
            false
        }
    }
}

/// PEP 503 normalized name.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Whether `c` may be part of a version (PEP 440's characters).
pub(super) fn is_version_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '-' | '_')
}

/// What a quoted marker value may hold: enough for versions, platform
/// names and extras, and nothing that reads as a URL, a path, a comment
/// or a variable reference.
fn is_marker_string_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '+' | '*' | '!' | '~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_normalize_like_pep_503() {
        assert_eq!(normalize("Flask"), "flask");
        assert_eq!(normalize("typing_extensions"), "typing-extensions");
        assert_eq!(normalize("zope.interface"), "zope-interface");
        assert_eq!(normalize("A__-.B"), "a-b");
    }

    fn lines(text: &str) -> Vec<String> {
        parse_requirements(text)
            .expect("accepted")
            .iter()
            .map(Requirement::line)
            .collect()
    }

    fn refusal(line: &str) -> Refusal {
        parse_requirements(line).expect_err(line).refusal
    }

    #[test]
    fn keeps_requirements_by_name_and_writes_them_again() {
        let text = "# deps\nnumpy==2.1.0  # pinned\n\n   \nFlask[Async] >= 2 ; python_version >= '3.8'\n\
                    zope.interface (>=5,<7)\nsix\nrequests[socks,security]~=2.31;sys_platform=='linux' and (python_version<\"3.13\" or extra == 'x')\n\
                    torch===2.0.0+cpu\nfoo!=1.*\n";
        assert_eq!(
            lines(text),
            vec![
                "numpy==2.1.0",
                "flask[async]>=2; python_version >= \"3.8\"",
                "zope-interface>=5,<7",
                "six",
                "requests[socks,security]~=2.31; sys_platform == \"linux\" and (python_version < \"3.13\" or extra == \"x\")",
                "torch===2.0.0+cpu",
                "foo!=1.*",
            ]
        );
    }

    #[test]
    fn refuses_options_naming_the_line() {
        for line in [
            "-r other.txt",
            "--requirement=other.txt",
            "-c constraints.txt",
            "-i https://evil/simple",
            "--index-url https://evil/simple",
            "--extra-index-url=https://evil/simple",
            "-f /srv/wheels",
            "--find-links https://evil/",
            "--trusted-host evil",
            "--no-binary :all:",
            "--pre",
        ] {
            assert_eq!(refusal(line), Refusal::Option, "{line}");
        }
        for line in ["-e .", "-e git+https://x/y.git#egg=y", "--editable ./src"] {
            assert_eq!(refusal(line), Refusal::Editable, "{line}");
        }
        let err = parse_requirements("six\n\n--index-url https://evil/simple\nflask\n")
            .expect_err("option");
        assert_eq!(err.line, 3);
        assert!(
            err.to_string().contains("line 3") && err.to_string().contains("--index-url"),
            "{err}"
        );
    }

    #[test]
    fn refuses_urls_vcs_paths_and_direct_references() {
        for (line, want) in [
            ("git+https://github.com/x/y.git", Refusal::Vcs),
            ("git+ssh://git@github.com/x/y.git#egg=y", Refusal::Vcs),
            ("hg+https://x/y", Refusal::Vcs),
            ("https://x/y-1.0.tar.gz", Refusal::Url),
            ("http://127.0.0.1:5000/registry/x", Refusal::Url),
            ("file:///srv/y.whl", Refusal::Url),
            ("file:y", Refusal::Url),
            ("y @ https://x/y-1.0.tar.gz", Refusal::DirectReference),
            ("y[extra]@file:///srv/y", Refusal::DirectReference),
            ("y @ git+https://x/y.git", Refusal::DirectReference),
            ("./src", Refusal::Path),
            (".", Refusal::Path),
            ("/srv/pkg", Refusal::Path),
            ("~/pkg", Refusal::Path),
            ("pkg/sub", Refusal::Path),
            ("y-1.0-py3-none-any.whl", Refusal::Path),
            ("y-1.0.tar.gz", Refusal::Path),
            ("C:\\pkg", Refusal::Path),
        ] {
            assert_eq!(refusal(line), want, "{line}");
        }
    }

    #[test]
    fn refuses_what_does_not_parse() {
        for line in [
            "numpy==${VERSION}",
            "numpy==1.0 --hash=sha256:abc",
            "numpy==1.0 \\",
            "numpy; os_name == 'posix' or",
            "numpy; evil == 'x'",
            "numpy; python_version >= '3.8:x'",
            "numpy[",
            "numpy (==1.0",
            "num py",
            "_numpy",
            "numpy==",
            "nümpy",
            "numpy; (((",
        ] {
            assert!(
                matches!(refusal(line), Refusal::Syntax(_)),
                "{line}: {:?}",
                refusal(line)
            );
        }
    }

    #[test]
    fn comments_need_whitespace_before_them_like_pip() {
        assert_eq!(lines("six # a comment\n# whole line\n"), vec!["six"]);
        assert!(matches!(refusal("six#frag"), Refusal::Syntax(_)));
        assert!(!has_requirements("# nothing\n\n"));
        assert!(has_requirements("git+https://x/y\n"));
    }

    /// Valid requirement lines built from parts, with what they must
    /// become.
    fn valid_line() -> impl Strategy<Value = (String, String)> {
        let name = "[A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?";
        let extras = proptest::collection::vec("[a-z][a-z0-9_-]{0,8}[a-z0-9]", 0..3);
        let version = "[0-9]{1,3}(\\.[0-9]{1,3}){0,3}(\\.\\*|(a|b|rc|\\.post|\\.dev)[0-9]{1,2})?";
        let op = proptest::sample::select(vec!["==", ">=", "<=", "!=", "~=", "<", ">"]);
        let marker = proptest::option::of((
            proptest::sample::select(vec!["python_version", "sys_platform", "platform_machine"]),
            proptest::sample::select(vec!["==", "!=", ">=", "<"]),
            "[a-z0-9._]{1,10}",
        ));
        (name, extras, op, version, marker).prop_filter_map(
            "not an archive-like name",
            |(name, extras, op, version, marker)| {
                let lower = name.to_ascii_lowercase();
                if ARCHIVE_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
                    return None;
                }
                let extras_text = if extras.is_empty() {
                    String::new()
                } else {
                    format!("[{}]", extras.join(", "))
                };
                let marker_text = marker
                    .as_ref()
                    .map(|(var, op, value)| format!(" ; {var} {op} '{value}'"))
                    .unwrap_or_default();
                let line = format!("{name} {extras_text} {op} {version}{marker_text}");
                let mut want = normalize(&name);
                if !extras.is_empty() {
                    let normalized: Vec<String> = extras.iter().map(|e| normalize(e)).collect();
                    want.push_str(&format!("[{}]", normalized.join(",")));
                }
                want.push_str(&format!("{op}{version}"));
                if let Some((var, op, value)) = marker {
                    want.push_str(&format!("; {var} {op} \"{value}\""));
                }
                Some((line, want))
            },
        )
    }

    /// Lines that must never pass: options, URLs, VCS, paths, direct
    /// references, each with something arbitrary after it.
    fn hostile_line() -> impl Strategy<Value = String> {
        let prefix = proptest::sample::select(vec![
            "-r ",
            "-c ",
            "-e ",
            "-i ",
            "-f ",
            "--index-url ",
            "--extra-index-url=",
            "--find-links ",
            "--trusted-host ",
            "git+https://",
            "git+ssh://",
            "hg+http://",
            "https://",
            "http://127.0.0.1:5000/",
            "file://",
            "file:",
            "./",
            "../",
            "/",
            "~/",
            "pkg @ ",
            "pkg[x] @ https://",
            "pkg@",
        ]);
        (prefix, "[ -~]{0,40}").prop_map(|(p, rest)| format!("{p}{rest}"))
    }

    /// What an accepted line must never carry.
    fn assert_clean(line: &str) {
        for bad in ["://", "/", "\\", "@", "#", "$", "'", "file:", "\n", "\r"] {
            assert!(!line.contains(bad), "{line:?} carries {bad:?}");
        }
        assert!(!line.starts_with(['-', ' ', '.', '~']), "{line:?}");
        // Names are normalized (no dots), and nothing ends like an archive.
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(line.len());
        assert!(!line[..name_end].contains('.'), "{line:?}");
        let lower = line.to_ascii_lowercase();
        assert!(
            !ARCHIVE_SUFFIXES.iter().any(|s| lower.ends_with(s)),
            "{line:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_text_never_panics_and_accepts_only_clean_lines(text in any::<String>()) {
            if let Ok(reqs) = parse_requirements(&text) {
                for r in reqs {
                    assert_clean(&r.line());
                }
            }
        }

        #[test]
        fn requirement_like_text_accepts_only_clean_lines_that_reparse(
            text in "[A-Za-z0-9 ._\\-\\[\\],;=<>!~*+()'\"@:/#$\\\\]{0,60}"
        ) {
            match parse_requirements(&text) {
                Ok(reqs) => {
                    for r in reqs {
                        let line = r.line();
                        assert_clean(&line);
                        // Written again, it parses to itself.
                        let again = parse_requirements(&line).expect("re-parses");
                        prop_assert_eq!(again, vec![r]);
                    }
                }
                Err(e) => prop_assert!(e.line == 1 && !e.to_string().is_empty()),
            }
        }

        #[test]
        fn valid_lines_are_kept((line, want) in valid_line()) {
            let got = parse_requirements(&line);
            prop_assert!(got.is_ok(), "{line:?}: {got:?}");
            let got: Vec<String> = got.unwrap_or_default().iter().map(Requirement::line).collect();
            prop_assert_eq!(got, vec![want]);
        }

        #[test]
        fn hostile_lines_are_refused(line in hostile_line(), before in "[a-z0-9=]{0,10}") {
            // Whatever came before it, the hostile line is the one named.
            let text = if before.is_empty() || before.starts_with('=') {
                line.clone()
            } else {
                format!("{before}\n{line}")
            };
            let err = parse_requirements(&text);
            prop_assert!(err.is_err(), "{text:?} was accepted: {err:?}");
        }
    }
}
