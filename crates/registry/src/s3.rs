//! [`S3Registry`]: lambdas as objects `PREFIX/NAME.tar.gz` in an S3 bucket
//! (AWS S3, MinIO, the cluster's [`crate::code_store`], any S3 API), read
//! through object_store; and [`upload`], which checks a bundle and puts it
//! there (`ol cluster upload`).
//!
//! Each fetch is one HEAD: an unchanged ETag answers from the unpacked
//! cache, and only a changed one costs a GET (a conditional GET would do in
//! one request, but s3s-fs, the code store, ignores `If-None-Match`). How
//! often a lambda is fetched is the lambda layer's `registry_cache_ms`.
//! The store's bundles are unpacked with every hostile-input check and
//! limit of [`crate::unpack_lambda`], like the http backend's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::bridge::Bridge;
use crate::remote::VersionCache;
use crate::{LambdaCode, Registry, RegistryError, check_bundle, validate_name};

/// Suffix of a lambda's object.
const SUFFIX: &str = ".tar.gz";
/// Region when neither the config nor the environment names one (what
/// MinIO and most S3 servers use).
const DEFAULT_REGION: &str = "us-east-1";
/// A store that does not accept a connection this fast is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest one request may take (a 64 MiB bundle at ~1 MiB/s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of a failed request: one, quickly, since the lambda layer keeps
/// serving the code it has and asks again `registry_cache_ms` later, and
/// the call that made the check waits for it (object_store's default, ten
/// over three minutes, would hold that call as long; with one, a refused
/// connection fails in ~0.1 s, a store that does not answer in ~6 s).
const RETRIES: usize = 1;
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an S3 registry is and the keys to it. `Debug` never shows the
/// secret key or session token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix of the lambdas' objects, without leading or trailing
    /// `/` ("" for the bucket's top).
    pub prefix: String,
    /// The S3 API's URL (`http://minio:9000`); "" for AWS S3 in `region`.
    /// With an endpoint, requests are path-style (`ENDPOINT/BUCKET/KEY`,
    /// what MinIO and most S3 servers want); on AWS, virtual-hosted
    /// (`https://BUCKET.s3.REGION.amazonaws.com/KEY`).
    pub endpoint: String,
    /// The region ("" for `us-east-1`); part of every signature.
    pub region: String,
    /// The access key id.
    pub access_key: String,
    /// The secret access key.
    pub secret_key: String,
    /// A session token, for temporary credentials ("" for none).
    pub session_token: String,
    /// Whether a plain `http://` endpoint may be used.
    pub allow_http: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &redacted(&self.secret_key))
            .field("session_token", &redacted(&self.session_token))
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// A value of an [`S3Config`] that can never work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("S3 registry {field}: {message}")]
pub struct S3ConfigError {
    /// Which field: `url` (bucket and prefix), `endpoint`, `allow_http`,
    /// `access_key` or `secret_key`.
    pub field: &'static str,
    /// What is wrong and what would work.
    pub message: String,
}

fn config_error(field: &'static str, message: impl Into<String>) -> S3ConfigError {
    S3ConfigError {
        field,
        message: message.into(),
    }
}

impl S3Config {
    /// The bucket and prefix of `s3://BUCKET[/PREFIX]`, everything else
    /// empty.
    pub fn from_url(url: &str) -> Result<Self, S3ConfigError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| config_error("url", format!("{url:?} is not s3://BUCKET[/PREFIX]")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let config = Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            ..Self::default()
        };
        check_bucket_name(&config.bucket)?;
        config.prefix_path()?;
        Ok(config)
    }

    /// This config with what it leaves empty taken from the standard AWS
    /// environment variables, looked up by `env` (`|k|
    /// std::env::var(k).ok()`): `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (then `AWS_SESSION_TOKEN` too), `AWS_REGION`
    /// or `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_S3` or
    /// `AWS_ENDPOINT_URL`. Keys are taken from the environment only as a
    /// pair, so a key of the config is never signed with another's secret.
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| env(n).filter(|v| !v.is_empty()))
                .unwrap_or_default()
        };
        if self.access_key.is_empty() && self.secret_key.is_empty() {
            self.access_key = var(&["AWS_ACCESS_KEY_ID"]);
            self.secret_key = var(&["AWS_SECRET_ACCESS_KEY"]);
            if self.session_token.is_empty() {
                self.session_token = var(&["AWS_SESSION_TOKEN"]);
            }
        }
        if self.region.is_empty() {
            self.region = var(&["AWS_REGION", "AWS_DEFAULT_REGION"]);
        }
        if self.endpoint.is_empty() {
            self.endpoint = var(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]);
        }
        self
    }

    /// Refuses what can never work, naming the field and what would.
    pub fn check(&self) -> Result<(), S3ConfigError> {
        check_bucket_name(&self.bucket)?;
        self.prefix_path()?;
        if !self.endpoint.is_empty() {
            let Some((scheme, host)) = self.endpoint.split_once("://") else {
                return Err(config_error(
                    "endpoint",
                    format!(
                        "{:?} is not a URL: use http://HOST:PORT or https://HOST",
                        self.endpoint
                    ),
                ));
            };
            if host.trim_matches('/').is_empty() || !matches!(scheme, "http" | "https") {
                return Err(config_error(
                    "endpoint",
                    format!(
                        "{:?} is not an http:// or https:// URL with a host",
                        self.endpoint
                    ),
                ));
            }
            if scheme == "http" && !self.allow_http {
                return Err(config_error(
                    "allow_http",
                    format!(
                        "the endpoint {} is plain http: set allow_http to true, or use https",
                        self.endpoint
                    ),
                ));
            }
        }
        for (field, value, var) in [
            ("access_key", &self.access_key, "AWS_ACCESS_KEY_ID"),
            ("secret_key", &self.secret_key, "AWS_SECRET_ACCESS_KEY"),
        ] {
            if value.is_empty() {
                return Err(config_error(
                    field,
                    format!("is empty and {var} is not set: the store needs both keys"),
                ));
            }
        }
        Ok(())
    }

    /// `s3://BUCKET/PREFIX` and the store it is on, for logs and `/stats`
    /// (and, as it tells stores apart, for [`crate::cache_dir_for`]).
    pub fn location(&self) -> String {
        format!("s3://{}/{} {}", self.bucket, self.prefix, self.store())
    }

    /// Which store: `at ENDPOINT` or `on AWS (REGION)`.
    fn store(&self) -> String {
        if self.endpoint.is_empty() {
            format!("on AWS ({})", self.region())
        } else {
            format!("at {}", self.endpoint)
        }
    }

    fn region(&self) -> &str {
        if self.region.is_empty() {
            DEFAULT_REGION
        } else {
            &self.region
        }
    }

    fn prefix_path(&self) -> Result<ObjectPath, S3ConfigError> {
        ObjectPath::parse(&self.prefix).map_err(|e| {
            config_error(
                "url",
                format!(
                    "the prefix {:?} is not a usable key prefix: {e}",
                    self.prefix
                ),
            )
        })
    }
}

/// S3's bucket naming rules (3 to 63 of `a-z 0-9 . -`, starting and ending
/// with a letter or digit), which every S3 server applies.
fn check_bucket_name(bucket: &str) -> Result<(), S3ConfigError> {
    let bytes = bucket.as_bytes();
    let ok = (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(config_error(
            "url",
            format!(
                "{bucket:?} is not a bucket name: 3 to 63 of a-z 0-9 . -, starting and ending with a letter or digit"
            ),
        ))
    }
}

/// The S3 requests both the registry and [`upload`] make.
#[derive(Debug)]
struct S3Client {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: ObjectPath,
    location: String,
    /// [`S3Config::store`], for errors.
    store_label: String,
    /// Where object_store's futures run (the registry API is blocking).
    bridge: Bridge,
}

impl S3Client {
    fn new(config: &S3Config) -> Result<Self, RegistryError> {
        config.check()?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(config.region())
            .with_access_key_id(&config.access_key)
            .with_secret_access_key(&config.secret_key)
            // One ClientOptions for all of these: setting it replaces the
            // builder's own (allow_http included).
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(config.allow_http)
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_timeout(REQUEST_TIMEOUT),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: RETRIES,
                retry_timeout: RETRY_TIMEOUT,
            });
        builder = if config.endpoint.is_empty() {
            builder.with_virtual_hosted_style_request(true)
        } else {
            builder.with_endpoint(config.endpoint.trim_end_matches('/'))
        };
        if !config.session_token.is_empty() {
            builder = builder.with_token(&config.session_token);
        }
        let location = config.location();
        let store = builder.build().map_err(|e| {
            RegistryError::Remote(format!("cannot set up the S3 client for {location}: {e}"))
        })?;
        let bridge = Bridge::new("ol-s3", 1).map_err(|e| {
            RegistryError::Remote(format!("cannot start the S3 client for {location}: {e}"))
        })?;
        Ok(Self {
            store: Arc::new(store),
            bucket: config.bucket.clone(),
            prefix: config.prefix_path()?,
            location,
            store_label: config.store(),
            bridge,
        })
    }

    fn key(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(format!("{name}{SUFFIX}"))
    }

    /// Runs `work` on the store: `None` when the store answered 404. `op`
    /// and `key` say what it was in errors.
    fn run<T, F>(&self, op: &str, key: &ObjectPath, work: F) -> Result<Option<T>, RegistryError>
    where
        F: Future<Output = Result<T, object_store::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let what = || format!("{op} s3://{}/{key} {}", self.bucket, self.store_label);
        match self.bridge.run(work) {
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(object_store::Error::NotFound { .. })) => Ok(None),
            Some(Err(e)) => Err(remote_error(what(), &e)),
            None => Err(RegistryError::Remote(format!(
                "{}: the S3 client stopped",
                what()
            ))),
        }
    }

    /// [`Self::run`] for work on the bucket itself, where a 404 is an
    /// error: no such bucket.
    fn run_on_bucket<T, F>(&self, op: &str, key: &ObjectPath, work: F) -> Result<T, RegistryError>
    where
        F: Future<Output = Result<T, object_store::Error>> + Send + 'static,
        T: Send + 'static,
    {
        self.run(op, key, work)?.ok_or_else(|| {
            RegistryError::Remote(format!(
                "{op} s3://{}/{key} {}: 404 Not Found: is there a bucket {:?}?",
                self.bucket, self.store_label, self.bucket
            ))
        })
    }

    /// The object's metadata, `None` when there is no such object.
    fn head(&self, name: &str) -> Result<Option<ObjectMeta>, RegistryError> {
        let (store, key) = (Arc::clone(&self.store), self.key(name));
        let work = async move { store.head(&key).await };
        self.run("HEAD", &self.key(name), work)
    }

    /// The object's metadata and bytes (at most `limit` of them), `None`
    /// when there is no such object.
    fn get(&self, name: &str, limit: u64) -> Result<Option<(ObjectMeta, Vec<u8>)>, RegistryError> {
        let (store, key) = (Arc::clone(&self.store), self.key(name));
        let work = async move {
            let got = store.get(&key).await?;
            let meta = got.meta.clone();
            let mut body = Vec::new();
            if meta.size <= limit {
                let mut stream = got.into_stream();
                while let Some(chunk) = stream.next().await {
                    body.extend_from_slice(&chunk?);
                    // The server may send more than it announced.
                    if body.len() as u64 > limit {
                        break;
                    }
                }
            }
            Ok((meta, body))
        };
        let got = self.run("GET", &self.key(name), work)?;
        Ok(got.map(|(meta, body)| {
            // Over the limit: report the size; the caller refuses it.
            let size = (body.len() as u64).max(meta.size);
            (ObjectMeta { size, ..meta }, body)
        }))
    }

    /// Puts `body` as lambda `name`; its ETag if the store gave one.
    fn put(&self, name: &str, body: Vec<u8>) -> Result<Option<String>, RegistryError> {
        let (store, key) = (Arc::clone(&self.store), self.key(name));
        let work = async move { store.put(&key, PutPayload::from(body)).await };
        Ok(self.run_on_bucket("PUT", &self.key(name), work)?.e_tag)
    }

    /// Lambda names of the objects directly under the prefix.
    fn list(&self) -> Result<Vec<String>, RegistryError> {
        let (store, prefix) = (Arc::clone(&self.store), self.prefix.clone());
        let work = async move {
            let at = (prefix.as_ref() != "").then_some(&prefix);
            store.list_with_delimiter(at).await
        };
        let listing = self.run_on_bucket("LIST", &self.prefix, work)?;
        let mut names: Vec<String> = listing
            .objects
            .iter()
            .filter_map(|o| o.location.filename()?.strip_suffix(SUFFIX))
            .filter(|n| validate_name(n).is_ok())
            .map(str::to_string)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// What a failed request of `what` tells the caller: refused keys are
/// [`RegistryError::Denied`] (with the status), the rest
/// [`RegistryError::Remote`] with every cause (object_store's own message stops short of "connection
/// refused").
fn remote_error(what: String, e: &object_store::Error) -> RegistryError {
    let mut message = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    match e {
        object_store::Error::PermissionDenied { .. } => RegistryError::Denied {
            what,
            status: FORBIDDEN,
        },
        object_store::Error::Unauthenticated { .. } => RegistryError::Denied {
            what,
            status: UNAUTHORIZED,
        },
        // A listing's refusal comes wrapped in a generic error; only its
        // text (object_store's "non-2xx status code: 403 Forbidden") has
        // the status.
        _ => match [FORBIDDEN, UNAUTHORIZED]
            .into_iter()
            .find(|status| message.contains(&format!("status code: {status}")))
        {
            Some(status) => RegistryError::Denied { what, status },
            None => RegistryError::Remote(message),
        },
    }
}

const FORBIDDEN: &str = "403 Forbidden";
const UNAUTHORIZED: &str = "401 Unauthorized";

/// The version token of an object: its ETag (the content's MD5 on S3 for
/// a single PUT), else its modification time and size.
fn version_of(meta: &ObjectMeta) -> String {
    match &meta.e_tag {
        Some(etag) => format!("s3-etag-{etag}"),
        None => format!("s3-lm-{}-{}", meta.last_modified.to_rfc3339(), meta.size),
    }
}

/// A registry in an S3 bucket: lambda `NAME` is the object
/// `PREFIX/NAME.tar.gz`, a bundle as `POST /registry/NAME` takes it.
///
/// [`Registry::fetch`] is one HEAD; the ETag it returns names the version
/// ([`LambdaCode::version`] is `s3-etag-<ETag>`), and a version not yet
/// unpacked under the cache dir is fetched with one GET and unpacked with
/// every hostile-input check. Versions unpacked by an earlier process are
/// used as they are. [`Registry::list`] lists the objects directly under
/// the prefix. Blocking, callable from any thread, inside an async runtime
/// or not: the requests run on a small runtime of the registry's own.
#[derive(Debug)]
pub struct S3Registry {
    client: S3Client,
    cache: VersionCache,
}

impl S3Registry {
    /// The registry `config` describes (checked with [`S3Config::check`]),
    /// unpacking into `cache` (see [`crate::cache_dir_for`], with
    /// [`S3Config::location`]). Makes no request.
    pub fn new(config: &S3Config, cache: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        Ok(Self {
            client: S3Client::new(config)?,
            cache: VersionCache::new(cache.into()),
        })
    }
}

impl Registry for S3Registry {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn location(&self) -> String {
        self.client.location.clone()
    }

    fn fetch(&self, name: &str) -> Result<Option<LambdaCode>, RegistryError> {
        validate_name(name)?;
        let Some(meta) = self.client.head(name)? else {
            return Ok(None);
        };
        if let Some(code) = self.cache.get(name, &version_of(&meta)) {
            return Ok(Some(code));
        }
        self.cache.check_size(meta.size)?;
        // The object may change between the HEAD and the GET: the version
        // is the one of the bytes the GET returned.
        let limit = self.cache.max_compressed_bytes();
        let Some((meta, body)) = self.client.get(name, limit)? else {
            return Ok(None);
        };
        self.cache.check_size(meta.size)?;
        self.cache.unpack(name, &version_of(&meta), &body).map(Some)
    }

    fn list(&self) -> Result<Vec<String>, RegistryError> {
        self.client.list()
    }
}

/// What [`upload`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The object's URL, `s3://BUCKET/PREFIX/NAME.tar.gz`.
    pub url: String,
    /// The version a registry's fetch will report for it
    /// ([`LambdaCode::version`]), when the store gave an ETag.
    pub version: Option<String>,
}

/// Stores the bundle `tar_gz` as lambda `name` in the S3 registry
/// `config` describes (`ol cluster upload`), after [`check_bundle`] (with
/// `check_config`, i.e. `ol_lambda::ol_yaml::load`) has accepted it
/// exactly as `POST /registry/NAME` would: a refused bundle is never sent.
/// Workers see the new code within their `registry_cache_ms`. Blocks.
pub fn upload<T, E: fmt::Display>(
    config: &S3Config,
    name: &str,
    tar_gz: &[u8],
    check_config: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<Uploaded, RegistryError> {
    check_bundle(name, tar_gz, &std::env::temp_dir(), check_config)?;
    let client = S3Client::new(config)?;
    let etag = client.put(name, tar_gz.to_vec())?;
    let key = client.key(name);
    Ok(Uploaded {
        url: format!("s3://{}/{key}", client.bucket),
        version: etag.map(|e| format!("s3-etag-{e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn urls_give_bucket_and_prefix() {
        let c = S3Config::from_url("s3://code/team/lambdas/").expect("url");
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("code", "team/lambdas")
        );
        let c = S3Config::from_url("s3://code").expect("url");
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("code", ""));
        for bad in [
            "http://x/y",
            "s3://",
            "s3://UPPER/x",
            "s3://a/x",
            "s3://-ab/x",
            "s3://ab/a//b",
        ] {
            let err = S3Config::from_url(bad).expect_err(bad);
            assert_eq!(err.field, "url", "{bad}: {err}");
        }
    }

    #[test]
    fn the_environment_fills_only_what_is_empty_and_keys_only_as_a_pair() {
        let aws = env(&[
            ("AWS_ACCESS_KEY_ID", "envkey"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SESSION_TOKEN", "envtoken"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://store:9000"),
        ]);
        let base = S3Config::from_url("s3://code/x").expect("url");
        let c = base.clone().with_env(&aws);
        assert_eq!(
            (
                c.access_key.as_str(),
                c.secret_key.as_str(),
                c.session_token.as_str()
            ),
            ("envkey", "envsecret", "envtoken")
        );
        assert_eq!(
            (c.region.as_str(), c.endpoint.as_str()),
            ("eu-west-1", "http://store:9000")
        );
        let own = S3Config {
            access_key: "mine".into(),
            region: "us-west-2".into(),
            endpoint: "https://s3.example".into(),
            ..base.clone()
        }
        .with_env(&aws);
        assert_eq!(
            (own.access_key.as_str(), own.secret_key.as_str()),
            ("mine", "")
        );
        assert_eq!(own.session_token, "");
        assert_eq!(
            (own.region.as_str(), own.endpoint.as_str()),
            ("us-west-2", "https://s3.example")
        );
        let err = own.check().expect_err("no secret");
        assert_eq!(err.field, "secret_key", "{err}");
        assert!(err.message.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    }

    #[test]
    fn values_that_can_never_work_are_refused_naming_the_field() {
        let good = S3Config {
            access_key: "k".into(),
            secret_key: "s".into(),
            ..S3Config::from_url("s3://code/x").expect("url")
        };
        good.check().expect("AWS, https");
        let cases = [
            ("http://127.0.0.1:9000", false, "allow_http"),
            ("127.0.0.1:9000", true, "endpoint"),
            ("ftp://store", true, "endpoint"),
            ("http://", true, "endpoint"),
        ];
        for (endpoint, allow_http, field) in cases {
            let c = S3Config {
                endpoint: endpoint.into(),
                allow_http,
                ..good.clone()
            };
            assert_eq!(c.check().expect_err(endpoint).field, field, "{endpoint}");
        }
        let plain = S3Config {
            endpoint: "http://127.0.0.1:9000".into(),
            allow_http: true,
            ..good.clone()
        };
        plain.check().expect("plain http allowed");
        let no_key = S3Config {
            access_key: String::new(),
            ..good
        };
        assert_eq!(no_key.check().expect_err("no key").field, "access_key");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = S3Config {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI".into(),
            session_token: "tok3n".into(),
            ..S3Config::default()
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(
            !shown.contains("wJalrXUtnFEMI") && !shown.contains("tok3n"),
            "{shown}"
        );
    }

    #[test]
    fn locations_tell_stores_apart() {
        let c = S3Config::from_url("s3://code/p").expect("url");
        assert_eq!(c.location(), "s3://code/p on AWS (us-east-1)");
        let minio = S3Config {
            endpoint: "http://minio:9000".into(),
            ..c
        };
        assert_eq!(minio.location(), "s3://code/p at http://minio:9000");
    }
}
