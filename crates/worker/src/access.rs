//! Who may use the worker's admin routes (config.json `admin`,
//! docs/security.md "Admin routes beyond loopback"): registry uploads and
//! removals, registry reads, `/stats` and `/metrics`. `/run` and `/status`
//! are always open: they are the product and the balancer's health check.
//!
//! Each admin route family is `"open"`, `"off"` or `"key"` (the default):
//! a `key` route needs `Authorization: Bearer <admin.key>`. With no key
//! set, `key` routes are open on a worker that listens on loopback only
//! (only this machine reaches it: nothing changes there), and a worker
//! listening anywhere else refuses to start, as Redis's protected mode
//! does, rather than serve an open upload route. Whether the worker
//! listens on loopback is decided from `worker_host` when the config is
//! checked (an address, or `localhost`; any other name counts as beyond
//! loopback, so no DNS is asked) and again from the address actually bound.
//!
//! The key is compared in constant time and never printed: [`AdminKey`]'s
//! `Debug` is redacted, and no error or log line quotes it.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use http::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::ConfigError;
use crate::response::{Body, error_response};

/// Shortest key accepted: 16 characters of at least hex are 64 bits, out of
/// reach of guessing over the network.
pub const MIN_KEY_LEN: usize = 16;

/// How one admin route family is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone who reaches the port.
    Open,
    /// Only requests with `Authorization: Bearer <admin.key>` (open on a
    /// loopback worker with no key).
    Key,
    /// Nobody: 403.
    Off,
}

/// The worker's admin key, or `""` for none. Its `Debug` never shows it,
/// and a value of the wrong type is refused without quoting it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminKey(String);

impl AdminKey {
    /// A key from its text (checked by [`AdminKey::check`] where it is
    /// configured).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `Authorization` header value that presents this key.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Refuses a key that is too short to resist guessing or that no HTTP
    /// client could send in a header; the message never quotes it.
    fn check(&self, key: &str, source: &str) -> Result<(), ConfigError> {
        if self.0.len() < MIN_KEY_LEN {
            return Err(bad(
                key,
                format!(
                    "{source} is too short: use at least {MIN_KEY_LEN} random characters, e.g. `openssl rand -hex 32`"
                ),
            ));
        }
        if !self.0.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                key,
                format!(
                    "{source} must be printable ASCII without spaces (it is sent in an HTTP header), e.g. `openssl rand -hex 32`"
                ),
            ));
        }
        Ok(())
    }

    /// Whether `given` is this key. Takes the same time whatever `given`
    /// holds (it depends only on this key's length), so the key cannot be
    /// found a byte at a time by timing answers.
    fn matches(&self, given: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut diff = u8::from(expected.len() != given.len());
        for (i, e) in expected.iter().enumerate() {
            diff |= e ^ given.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_empty() {
            "AdminKey(none)"
        } else {
            "AdminKey(<redacted>)"
        })
    }
}

impl Serialize for AdminKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AdminKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a JSON value: serde's own type errors quote the value
        // ("invalid type: integer `123...`"), which here is the key.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Self(s)),
            _ => Err(serde::de::Error::custom(
                "must be a string (the value is not shown: it is a secret)",
            )),
        }
    }
}

/// config.json `admin`: the admin key and how each admin route family is
/// served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The key `key` routes need ("" = none). Prefer `key_file`: config.json
    /// is readable by others unless it is made private.
    pub key: AdminKey,
    /// A file holding the key (its surrounding whitespace ignored), read at
    /// start; a relative path is taken from the config file's directory ("" = none).
    /// For secrets mounted as files (a Kubernetes Secret).
    pub key_file: String,
    /// `POST` and `DELETE /registry/NAME`: installing and removing lambdas.
    /// Never `open` beyond loopback.
    pub registry_write: Access,
    /// `GET /registry/...`: the list of lambdas, their code and ol.yaml
    /// (with its environment).
    pub registry_read: Access,
    /// `GET /stats` and `GET /logs/NAME` (what lambdas print).
    pub stats: Access,
    /// `GET /metrics`.
    pub metrics: Access,
}

impl Default for AdminConfig {
    fn default() -> Self {
        // Every family holds something a tenant would not show the world
        // (code, environment, lambda names and traffic): key by default,
        // which is open on loopback until a key is set.
        Self {
            key: AdminKey::default(),
            key_file: String::new(),
            registry_write: Access::Key,
            registry_read: Access::Key,
            stats: Access::Key,
            metrics: Access::Key,
        }
    }
}

/// An admin route family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRoute {
    /// `POST`/`DELETE /registry/NAME`.
    RegistryWrite,
    /// `GET /registry/...`.
    RegistryRead,
    /// `GET /stats`.
    Stats,
    /// `GET /metrics`.
    Metrics,
}

impl AdminRoute {
    /// Every family, in the order of [`AdminGates`]' table.
    pub const ALL: [Self; 4] = [
        Self::RegistryWrite,
        Self::RegistryRead,
        Self::Stats,
        Self::Metrics,
    ];

    /// Its config key.
    pub fn key(self) -> &'static str {
        match self {
            Self::RegistryWrite => "admin.registry_write",
            Self::RegistryRead => "admin.registry_read",
            Self::Stats => "admin.stats",
            Self::Metrics => "admin.metrics",
        }
    }

    /// The routes it covers, for messages.
    pub fn routes(self) -> &'static str {
        match self {
            Self::RegistryWrite => "POST/DELETE /registry/NAME",
            Self::RegistryRead => "GET /registry/...",
            Self::Stats => "GET /stats, GET /logs/NAME",
            Self::Metrics => "GET /metrics",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether the worker serves it at all: a worker whose registry is
    /// remote has no registry routes (they answer 404).
    fn exists(self, local_registry: bool) -> bool {
        local_registry || !matches!(self, Self::RegistryWrite | Self::RegistryRead)
    }
}

impl AdminConfig {
    fn access(&self, route: AdminRoute) -> Access {
        match route {
            AdminRoute::RegistryWrite => self.registry_write,
            AdminRoute::RegistryRead => self.registry_read,
            AdminRoute::Stats => self.stats,
            AdminRoute::Metrics => self.metrics,
        }
    }

    /// Whether a key is configured (inline or in a file).
    pub fn has_key(&self) -> bool {
        !self.key.is_empty() || !self.key_file.is_empty()
    }

    /// Refuses a setting that can never be right: a bad inline key, both a
    /// key and a key file, and, for a worker listening on `host` (beyond
    /// loopback unless `loopback`), an open upload route or `key` routes
    /// with no key. `local_registry`: whether the worker has registry routes.
    pub fn check(
        &self,
        host: &str,
        loopback: bool,
        local_registry: bool,
    ) -> Result<(), ConfigError> {
        if !self.key.is_empty() {
            if !self.key_file.is_empty() {
                return Err(bad(
                    "admin.key_file",
                    "set admin.key or admin.key_file, not both".into(),
                ));
            }
            self.key.check("admin.key", "the key")?;
        }
        if loopback {
            return Ok(());
        }
        let served = |route: &AdminRoute| route.exists(local_registry);
        if served(&AdminRoute::RegistryWrite) && self.registry_write == Access::Open {
            return Err(bad(
                "admin.registry_write",
                format!(
                    "cannot be \"open\" on a worker listening on {host}, beyond loopback: anyone reaching it could replace any lambda's code; use \"key\" (and set admin.key_file) or \"off\""
                ),
            ));
        }
        let keyed: Vec<AdminRoute> = AdminRoute::ALL
            .into_iter()
            .filter(|r| served(r) && self.access(*r) == Access::Key)
            .collect();
        if keyed.is_empty() || self.has_key() {
            return Ok(());
        }
        let routes: Vec<&str> = keyed.iter().map(|r| r.routes()).collect();
        let keys: Vec<&str> = keyed.iter().map(|r| r.key()).collect();
        Err(bad(
            "admin.key",
            format!(
                "the worker listens on {host}, beyond loopback, where {} need a key and none is set: set admin.key_file to a file holding one (at least {MIN_KEY_LEN} characters, e.g. `openssl rand -hex 32`) or admin.key, or set {} to \"off\"",
                routes.join(", "),
                keys.join(", ")
            ),
        ))
    }

    /// The configured key, read from `key_file` (relative to the
    /// directory of `config_file`, the file this config was read from)
    /// when that is set; `None` when there is none. Warns when the file
    /// holding the key is readable by every user.
    pub fn load_key(&self, config_file: &Path) -> Result<Option<AdminKey>, ConfigError> {
        if !self.key.is_empty() {
            warn_if_world_readable(config_file, "admin.key");
            return Ok(Some(self.key.clone()));
        }
        if self.key_file.is_empty() {
            return Ok(None);
        }
        let path = config_file
            .parent()
            .unwrap_or(Path::new("/"))
            .join(&self.key_file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            bad(
                "admin.key_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let key = AdminKey::new(text.trim());
        key.check("admin.key_file", &format!("the key in {}", path.display()))?;
        warn_if_world_readable(&path, "admin.key_file");
        Ok(Some(key))
    }
}

/// Warns that `path`, which holds the admin key, can be read by any user.
fn warn_if_world_readable(path: &Path, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
        tracing::warn!(
            "{} holds the admin key ({key}) and every user can read it: chmod o-r it",
            path.display()
        );
    }
}

/// Whether `host` (config.json `worker_host`) is a loopback address:
/// 127.0.0.0/8, ::1 (bracketed or not, or IPv4-mapped) or `localhost`. Any
/// other name counts as beyond loopback: nothing is resolved.
pub fn is_loopback_host(host: &str) -> bool {
    let host = unbracket(host.trim());
    match host.parse::<IpAddr>() {
        Ok(ip) => is_loopback_ip(ip),
        Err(_) => {
            let name = host.strip_suffix('.').unwrap_or(host);
            name.eq_ignore_ascii_case("localhost")
        }
    }
}

/// Whether `ip` is a loopback address (an IPv4-mapped one too).
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `host` without the brackets of an IPv6 literal (`[::1]`).
pub fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn bad(key: &str, message: String) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message,
    }
}

/// How each admin route family is served, decided once at start.
#[derive(Debug, Clone)]
pub struct AdminGates {
    key: Option<AdminKey>,
    /// By [`AdminRoute::index`]; `Key` only when `key` is set.
    access: [Access; 4],
}

impl AdminGates {
    /// The gates of a worker with `config` and `key` (from
    /// [`AdminConfig::load_key`]) listening on `host` (loopback when
    /// `loopback`, as bound), with registry routes when `local_registry`.
    /// Fails as [`AdminConfig::check`] does.
    pub fn new(
        config: &AdminConfig,
        key: Option<AdminKey>,
        host: &str,
        loopback: bool,
        local_registry: bool,
    ) -> Result<Self, ConfigError> {
        config.check(host, loopback, local_registry)?;
        // A configured key that could not be loaded must not leave its
        // routes open beyond loopback (check saw a key configured).
        if key.is_none() && config.has_key() {
            return Err(bad("admin.key", "is configured but was not loaded".into()));
        }
        let access = AdminRoute::ALL.map(|route| match (config.access(route), &key) {
            // Only on loopback, or for routes this worker does not serve:
            // check refused the rest.
            (Access::Key, None) => Access::Open,
            (access, _) => access,
        });
        Ok(Self { key, access })
    }

    /// A loopback worker's gates with no key: every route open, as before
    /// there were keys.
    pub fn open() -> Self {
        Self {
            key: None,
            access: [Access::Open; 4],
        }
    }

    /// `None` when a request with `headers` may use `route`, else the
    /// answer to send: 401 (no or wrong key, with `WWW-Authenticate`) or
    /// 403 (the route is off).
    pub(crate) fn refusal(&self, route: AdminRoute, headers: &HeaderMap) -> Option<Response<Body>> {
        match (self.access[route.index()], &self.key) {
            (Access::Open, _) | (Access::Key, None) => None,
            (Access::Off, _) => Some(error_response(
                StatusCode::FORBIDDEN,
                &format!(
                    "{} is off on this worker ({} is \"off\")",
                    route.routes(),
                    route.key()
                ),
                None,
                None,
            )),
            (Access::Key, Some(key)) => {
                let message = match bearer_token(headers) {
                    Some(given) if key.matches(given) => return None,
                    Some(_) => "wrong admin key",
                    None => {
                        "this route needs the worker's admin key: send `Authorization: Bearer <admin.key>`"
                    }
                };
                let mut resp = error_response(StatusCode::UNAUTHORIZED, message, None, None);
                resp.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"ol-worker\""),
                );
                Some(resp)
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in
/// any case, RFC 9110 §11.1).
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "0123456789abcdef0123";

    fn key() -> AdminKey {
        AdminKey::new(KEY)
    }

    fn with_key() -> AdminConfig {
        AdminConfig {
            key: key(),
            ..AdminConfig::default()
        }
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = authorization {
            h.insert(AUTHORIZATION, HeaderValue::from_str(a).expect("header"));
        }
        h
    }

    #[test]
    fn loopback_is_127_8_and_1_and_localhost_by_address_never_by_dns() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            " 127.0.0.1 ",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "localhost",
            "LocalHost.",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "0.0.0.0",
            "::",
            "[::]",
            "10.0.0.1",
            "192.168.1.5",
            "::ffff:10.0.0.1",
            "example.com",
            "localhost.example.com",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn nothing_changes_on_loopback_without_a_key() {
        let c = AdminConfig::default();
        c.check("127.0.0.1", true, true).expect("loopback");
        let gates = AdminGates::new(&c, None, "127.0.0.1", true, true).expect("gates");
        for route in AdminRoute::ALL {
            assert!(gates.refusal(route, &headers(None)).is_none(), "{route:?}");
        }
    }

    #[test]
    fn beyond_loopback_without_a_key_is_refused_naming_the_key_and_what_to_set() {
        let err = AdminConfig::default()
            .check("0.0.0.0", false, true)
            .expect_err("no key");
        let msg = err.to_string();
        assert!(msg.starts_with("config key `admin.key`: "), "{msg}");
        for says in [
            "0.0.0.0",
            "admin.key_file",
            "POST/DELETE /registry/NAME",
            "GET /metrics",
            "admin.stats",
            "\"off\"",
        ] {
            assert!(msg.contains(says), "{says}: {msg}");
        }
        assert!(!msg.contains('\n'), "one line: {msg}");
        // A key, inline or in a file, or every key route off, is enough.
        with_key().check("0.0.0.0", false, true).expect("key");
        let in_file = AdminConfig {
            key_file: "admin-key".into(),
            ..AdminConfig::default()
        };
        in_file.check("0.0.0.0", false, true).expect("key file");
        let closed = AdminConfig {
            registry_write: Access::Off,
            registry_read: Access::Off,
            stats: Access::Open,
            metrics: Access::Off,
            ..AdminConfig::default()
        };
        closed.check("0.0.0.0", false, true).expect("nothing keyed");
    }

    #[test]
    fn a_remote_registry_has_no_registry_routes_to_protect() {
        let c = AdminConfig {
            stats: Access::Off,
            metrics: Access::Open,
            ..AdminConfig::default()
        };
        c.check("0.0.0.0", false, false).expect("remote registry");
        let err = c.check("0.0.0.0", false, true).expect_err("local registry");
        let msg = err.to_string();
        assert!(
            msg.contains("/registry") && !msg.contains("/stats"),
            "{msg}"
        );
    }

    #[test]
    fn uploads_are_never_open_beyond_loopback() {
        let c = AdminConfig {
            registry_write: Access::Open,
            ..with_key()
        };
        c.check("127.0.0.1", true, true).expect("loopback");
        let err = c.check("10.0.0.1", false, true).expect_err("open uploads");
        assert!(
            err.to_string()
                .starts_with("config key `admin.registry_write`: "),
            "{err}"
        );
    }

    #[test]
    fn bad_keys_are_refused_without_being_quoted() {
        for (text, says) in [
            ("s3cr3t", "too short"),
            ("0123456789abcdef 0123", "printable ASCII without spaces"),
            ("0123456789abcdef\u{e9}0123", "printable ASCII"),
        ] {
            let c = AdminConfig {
                key: AdminKey::new(text),
                ..AdminConfig::default()
            };
            let err = c.check("127.0.0.1", true, true).expect_err(text);
            let msg = err.to_string();
            assert!(
                msg.starts_with("config key `admin.key`: ") && msg.contains(says),
                "{msg}"
            );
            assert!(!msg.contains(text), "quotes the key: {msg}");
        }
        let both = AdminConfig {
            key_file: "k".into(),
            ..with_key()
        };
        let err = both.check("127.0.0.1", true, true).expect_err("both");
        assert!(err.to_string().contains("not both"), "{err}");
    }

    #[test]
    fn the_key_is_never_printed() {
        let c = with_key();
        assert!(!format!("{c:?}").contains(KEY));
        assert_eq!(format!("{:?}", AdminKey::default()), "AdminKey(none)");
        let gates = AdminGates::new(&c, Some(key()), "0.0.0.0", false, true).expect("gates");
        assert!(!format!("{gates:?}").contains(KEY));
        // A key of the wrong type is refused without its value.
        let err = serde_json::from_value::<AdminConfig>(json!({"key": 98765432109876543u64}))
            .expect_err("number");
        assert!(!err.to_string().contains("98765432109876543"), "{err}");
        // config.json keeps it, though.
        let written = serde_json::to_value(&c).expect("serialize");
        assert_eq!(written["key"], KEY);
    }

    #[test]
    fn key_routes_need_the_bearer_key_in_any_case_of_the_scheme() {
        let gates =
            AdminGates::new(&with_key(), Some(key()), "0.0.0.0", false, true).expect("gates");
        for route in AdminRoute::ALL {
            for good in [format!("Bearer {KEY}"), format!("bearer  {KEY} ")] {
                assert!(
                    gates.refusal(route, &headers(Some(&good))).is_none(),
                    "{good}"
                );
            }
            for bad in [
                None,
                Some(format!("Bearer {KEY}x")),
                Some(format!("Bearer {}", &KEY[1..])),
                Some(format!("Basic {KEY}")),
                Some("Bearer".into()),
                Some(KEY.into()),
            ] {
                let resp = gates
                    .refusal(route, &headers(bad.as_deref()))
                    .unwrap_or_else(|| panic!("{route:?} let {bad:?} in"));
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
                assert_eq!(
                    resp.headers()[WWW_AUTHENTICATE],
                    "Bearer realm=\"ol-worker\""
                );
            }
        }
        // The key also guards a loopback worker once it is set.
        let local =
            AdminGates::new(&with_key(), Some(key()), "127.0.0.1", true, true).expect("gates");
        assert!(local.refusal(AdminRoute::Stats, &headers(None)).is_some());
    }

    #[test]
    fn off_routes_are_403_and_open_ones_need_nothing() {
        let c = AdminConfig {
            metrics: Access::Off,
            stats: Access::Open,
            ..with_key()
        };
        let gates = AdminGates::new(&c, Some(key()), "0.0.0.0", false, true).expect("gates");
        let off = gates
            .refusal(
                AdminRoute::Metrics,
                &headers(Some(&format!("Bearer {KEY}"))),
            )
            .expect("off");
        assert_eq!(off.status(), StatusCode::FORBIDDEN);
        assert!(gates.refusal(AdminRoute::Stats, &headers(None)).is_none());
    }

    #[test]
    fn a_configured_key_that_was_not_loaded_opens_nothing() {
        let c = AdminConfig {
            key_file: "k".into(),
            ..AdminConfig::default()
        };
        assert!(AdminGates::new(&c, None, "0.0.0.0", false, true).is_err());
    }

    #[test]
    fn the_bound_address_decides_too() {
        // `localhost` passed the config check; had it been bound elsewhere,
        // the gates refuse.
        let c = AdminConfig::default();
        c.check("localhost", is_loopback_host("localhost"), true)
            .expect("config");
        let err = AdminGates::new(&c, None, "localhost", false, true).expect_err("bound beyond");
        assert!(err.to_string().contains("admin.key"), "{err}");
    }

    #[test]
    fn keys_load_from_a_file_trimmed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("admin-key"), format!("{KEY}\n")).expect("write");
        let c = AdminConfig {
            key_file: "admin-key".into(),
            ..AdminConfig::default()
        };
        assert_eq!(
            c.load_key(&dir.path().join("config.json")).expect("load"),
            Some(key())
        );
        std::fs::write(dir.path().join("admin-key"), "s3cr3t\n").expect("write");
        let err = c
            .load_key(&dir.path().join("config.json"))
            .expect_err("short");
        assert!(
            err.to_string().starts_with("config key `admin.key_file`: "),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let missing = AdminConfig {
            key_file: "nope".into(),
            ..AdminConfig::default()
        };
        let err = missing
            .load_key(&dir.path().join("config.json"))
            .expect_err("missing");
        assert!(err.to_string().contains("cannot read"), "{err}");
        assert_eq!(
            AdminConfig::default()
                .load_key(&dir.path().join("config.json"))
                .expect("none"),
            None
        );
        assert_eq!(
            with_key()
                .load_key(&dir.path().join("config.json"))
                .expect("inline"),
            Some(key())
        );
    }

    #[test]
    fn the_comparison_is_exact() {
        let k = key();
        assert!(k.matches(KEY.as_bytes()));
        assert!(!k.matches(b""));
        assert!(!k.matches(&KEY.as_bytes()[..KEY.len() - 1]));
        let mut longer = KEY.as_bytes().to_vec();
        longer.push(0);
        assert!(!k.matches(&longer));
        let mut flipped = KEY.as_bytes().to_vec();
        flipped[KEY.len() - 1] ^= 1;
        assert!(!k.matches(&flipped));
    }
}
