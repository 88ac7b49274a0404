//! [`HttpRegistry`]: lambdas served over HTTP as `BASE/NAME.tar.gz` (seed
//! 003: "a generic HTTP server as code store"). Each fetch is a conditional
//! GET (`If-None-Match` / `If-Modified-Since`): an unchanged lambda costs a
//! 304, a changed one is unpacked (with every hostile-input check) into
//! the cache under its new version.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::{LambdaCode, Registry, RegistryError, UnpackLimits, unpack_lambda, validate_name};

/// How long one registry request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What the last successful fetch of a lambda returned.
#[derive(Debug, Clone)]
struct Cached {
    etag: Option<String>,
    last_modified: Option<String>,
    code: LambdaCode,
}

/// A registry reached over HTTP.
#[derive(Debug)]
pub struct HttpRegistry {
    base: String,
    cache: PathBuf,
    limits: UnpackLimits,
    agent: ureq::Agent,
    known: Mutex<HashMap<String, Cached>>,
}

impl HttpRegistry {
    /// A registry at `base` (`http://host:port[/prefix]`) unpacking into
    /// `cache`.
    pub fn new(base: &str, cache: impl Into<PathBuf>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_string(),
            cache: cache.into(),
            limits: UnpackLimits::default(),
            agent,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn http_err(&self, url: &str, what: impl std::fmt::Display) -> RegistryError {
        RegistryError::Remote(format!("GET {url}: {what}"))
    }

    fn unpack_version(
        &self,
        name: &str,
        version: &str,
        body: &[u8],
    ) -> Result<PathBuf, RegistryError> {
        // The version comes from the server: hash it into a safe dir name.
        let dir = self
            .cache
            .join(name)
            .join(format!("{:016x}", fnv1a(version.as_bytes())));
        if !dir.is_dir() {
            unpack_lambda(body, &dir, &self.limits)?;
        }
        Ok(dir)
    }
}

/// FNV-1a, to turn a server's version string into a file name.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Registry for HttpRegistry {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn fetch(&self, name: &str) -> Result<Option<LambdaCode>, RegistryError> {
        validate_name(name)?;
        let url = format!("{}/{name}.tar.gz", self.base);
        let cached = self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        let mut req = self.agent.get(&url);
        if let Some(c) = &cached {
            if let Some(etag) = &c.etag {
                req = req.header("If-None-Match", etag);
            }
            if let Some(lm) = &c.last_modified {
                req = req.header("If-Modified-Since", lm);
            }
        }
        let mut resp = req.call().map_err(|e| self.http_err(&url, e))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (etag, last_modified) = (header("etag"), header("last-modified"));
        match resp.status().as_u16() {
            304 => match cached {
                Some(c) => Ok(Some(c.code)),
                None => Err(self.http_err(&url, "304 Not Modified for a lambda never fetched")),
            },
            404 => {
                self.known
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(name);
                Ok(None)
            }
            200 => {
                let mut body = Vec::new();
                resp.body_mut()
                    .as_reader()
                    .take(self.limits.max_compressed_bytes + 1)
                    .read_to_end(&mut body)
                    .map_err(|e| self.http_err(&url, e))?;
                if body.len() as u64 > self.limits.max_compressed_bytes {
                    return Err(RegistryError::CompressedTooLarge {
                        limit: self.limits.max_compressed_bytes,
                    });
                }
                // Without validators, the content itself is the version.
                let version = match (&etag, &last_modified) {
                    (Some(e), _) => format!("etag-{e}"),
                    (None, Some(lm)) => format!("lm-{lm}"),
                    (None, None) => format!("body-{:016x}-{}", fnv1a(&body), body.len()),
                };
                let dir = self.unpack_version(name, &version, &body)?;
                let code = LambdaCode { dir, version };
                self.known
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(
                        name.to_string(),
                        Cached {
                            etag,
                            last_modified,
                            code: code.clone(),
                        },
                    );
                Ok(Some(code))
            }
            other => Err(self.http_err(&url, format!("status {other}"))),
        }
    }

    fn list(&self) -> Result<Vec<String>, RegistryError> {
        // Our own registry server and workers answer `GET BASE/` with
        // `{"lambdas": [...]}`; a plain file server cannot list.
        let url = format!("{}/", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| self.http_err(&url, e))?;
        if resp.status().as_u16() != 200 {
            return Err(self.http_err(&url, format!("status {}", resp.status())));
        }
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.http_err(&url, e))?;
        let names = parse_listing(&text)
            .ok_or_else(|| self.http_err(&url, "not a {\"lambdas\": [...]} listing"))?;
        Ok(names)
    }
}

/// `{"lambdas": ["a", "b"]}` → `["a", "b"]` (valid names only, sorted).
fn parse_listing(text: &str) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut names: Vec<String> = v
        .get("lambdas")?
        .as_array()?
        .iter()
        .filter_map(|n| n.as_str())
        .filter(|n| validate_name(n).is_ok())
        .map(str::to_string)
        .collect();
    names.sort();
    Some(names)
}

/// Where an [`HttpRegistry`] for `base` keeps its unpacked code under
/// `root` (one dir per registry URL).
pub fn cache_dir_for(root: &Path, base: &str) -> PathBuf {
    root.join(format!("http-{:016x}", fnv1a(base.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_is_parsed_and_filtered() {
        assert_eq!(
            parse_listing(r#"{"lambdas": ["b", "a", "../x", 3]}"#),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(parse_listing("<html>"), None);
    }

    #[test]
    fn version_dirs_are_safe_names() {
        let a = fnv1a(b"\"etag/../x\"");
        assert_ne!(a, fnv1a(b"other"));
        let dir = cache_dir_for(Path::new("/c"), "http://h:1");
        assert!(
            dir.to_string_lossy().starts_with("/c/http-"),
            "{}",
            dir.display()
        );
        assert_ne!(dir, cache_dir_for(Path::new("/c"), "http://h:2"));
    }
}
