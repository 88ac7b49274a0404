//! The small blocking HTTP client the CLI uses to talk to a worker
//! (readiness, stats).

use std::time::Duration;

use anyhow::{Context, Result};

/// A response's status and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// GET `url`, any status.
pub fn get(url: &str, timeout: Duration) -> Result<Answer> {
    let mut resp = agent(timeout)
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of GET {url}"))?;
    Ok(Answer { status, body })
}

/// POST `body` to `url`, any status.
pub fn post(url: &str, body: &[u8], timeout: Duration) -> Result<Answer> {
    let mut resp = agent(timeout)
        .post(url)
        .send(body)
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of POST {url}"))?;
    Ok(Answer { status, body })
}
