//! The small blocking HTTP client the CLI uses to talk to a worker
//! (readiness, stats, benchmarks).

use std::time::Duration;

use anyhow::{Context, Result};

/// A response's status and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// GET `url`, any status.
pub fn get(url: &str, timeout: Duration) -> Result<Answer> {
    request("GET", url, &[], timeout)
}

/// POST `body` to `url`, any status.
pub fn post(url: &str, body: &[u8], timeout: Duration) -> Result<Answer> {
    request("POST", url, body, timeout)
}

/// DELETE `url`, any status.
pub fn delete(url: &str, timeout: Duration) -> Result<Answer> {
    request("DELETE", url, &[], timeout)
}

fn request(method: &str, url: &str, body: &[u8], timeout: Duration) -> Result<Answer> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .body(body.to_vec())
        .with_context(|| format!("{method} {url}"))?;
    let mut resp = agent.run(req).with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {method} {url}"))?;
    Ok(Answer { status, body })
}
