//! [`HttpRegistry`]: lambdas served over HTTP as `BASE/NAME.tar.gz` (seed
//! 003: "a generic HTTP server as code store"). Each fetch is a conditional
//! GET (`If-None-Match` / `If-Modified-Since`): an unchanged lambda costs a
//! 304, a changed one is unpacked (with every hostile-input check) into
//! the cache under its new version.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::remote::{VersionCache, content_hash, without_userinfo};
use crate::{LambdaCode, Registry, RegistryError, validate_name};

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
    cache: VersionCache,
    agent: ureq::Agent,
    known: Mutex<HashMap<String, Cached>>,
}

impl HttpRegistry {
    /// A registry at `base` (`http://host:port[/prefix]`) unpacking into
    /// `cache` (see [`crate::cache_dir_for`]).
    pub fn new(base: &str, cache: impl Into<PathBuf>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_string(),
            cache: VersionCache::new(cache.into()),
            agent,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn http_err(&self, url: &str, what: impl std::fmt::Display) -> RegistryError {
        RegistryError::Remote(format!("GET {}: {what}", without_userinfo(url)))
    }
}

impl Registry for HttpRegistry {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn location(&self) -> String {
        without_userinfo(&self.base)
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
                    .take(self.cache.max_compressed_bytes() + 1)
                    .read_to_end(&mut body)
                    .map_err(|e| self.http_err(&url, e))?;
                self.cache.check_size(body.len() as u64)?;
                // Without validators, the content itself is the version.
                let version = match (&etag, &last_modified) {
                    (Some(e), _) => format!("etag-{e}"),
                    (None, Some(lm)) => format!("lm-{lm}"),
                    (None, None) => format!("body-{}", content_hash(&body)),
                };
                let code = self.cache.unpack(name, &version, &body)?;
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
}
