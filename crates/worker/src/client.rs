//! A small blocking client of a worker's HTTP API, for the programs that
//! talk to a running worker: the `ol` command (readiness, `ol worker
//! status`, `ol admin`) and the benchmarks (uploads, `/stats`).

use std::time::Duration;

use crate::access::AdminKey;
use crate::stats::WorkerStats;

/// Why a request to a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request could not be made (a malformed URL, say).
    #[error("{method} {url}")]
    Build {
        /// The HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// What was wrong.
        source: ureq::http::Error,
    },
    /// The request failed on the way (no connection, timeout, ...).
    #[error("{method} {url}")]
    Send {
        /// The HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// What failed (boxed: it is large, and errors are rare).
        source: Box<ureq::Error>,
    },
    /// The answer's body could not be read.
    #[error("reading the answer of {method} {url}")]
    Read {
        /// The HTTP method.
        method: String,
        /// The URL.
        url: String,
        /// What failed (boxed: it is large, and errors are rare).
        source: Box<ureq::Error>,
    },
    /// `/stats` answered something else than [`WorkerStats`].
    #[error("the worker's /stats is not the expected JSON")]
    Stats(#[source] serde_json::Error),
}

/// A response's status, headers and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as text.
    pub body: String,
    /// The response headers (names lower case), in order.
    pub headers: Vec<(String, String)>,
}

impl Answer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET `url`, any status.
pub fn get(url: &str, timeout: Duration) -> Result<Answer, ClientError> {
    request("GET", url, &[], None, timeout)
}

/// POST `body` to `url`, any status.
pub fn post(url: &str, body: &[u8], timeout: Duration) -> Result<Answer, ClientError> {
    request("POST", url, body, None, timeout)
}

/// DELETE `url`, any status.
pub fn delete(url: &str, timeout: Duration) -> Result<Answer, ClientError> {
    request("DELETE", url, &[], None, timeout)
}

/// `GET /stats` of the worker at `base_url` (`http://host:port`).
pub fn stats(base_url: &str, timeout: Duration) -> Result<WorkerStats, ClientError> {
    stats_with_key(base_url, None, timeout)
}

/// `GET /stats` of the worker at `base_url`, presenting `key` (its admin
/// key, [`crate::access`]) when there is one.
pub fn stats_with_key(
    base_url: &str,
    key: Option<&AdminKey>,
    timeout: Duration,
) -> Result<WorkerStats, ClientError> {
    let answer = request("GET", &format!("{base_url}/stats"), &[], key, timeout)?;
    serde_json::from_str(&answer.body).map_err(ClientError::Stats)
}

/// `method` `url` with `body`, presenting `key` as
/// `Authorization: Bearer` when there is one; any status.
pub fn request(
    method: &str,
    url: &str,
    body: &[u8],
    key: Option<&AdminKey>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    request_with_headers(method, url, &[], body, key, timeout)
}

/// [`request`] with extra request `headers`.
pub fn request_with_headers(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    key: Option<&AdminKey>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(key) = key {
        req = req.header(ureq::http::header::AUTHORIZATION, key.bearer());
    }
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req
        .body(body.to_vec())
        .map_err(|source| ClientError::Build {
            method: method.to_string(),
            url: url.to_string(),
            source,
        })?;
    let mut resp = agent.run(req).map_err(|source| ClientError::Send {
        method: method.to_string(),
        url: url.to_string(),
        source: Box::new(source),
    })?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|source| ClientError::Read {
            method: method.to_string(),
            url: url.to_string(),
            source: Box::new(source),
        })?;
    Ok(Answer {
        status,
        body,
        headers,
    })
}
