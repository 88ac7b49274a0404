//! Why a benchmark failed: [`BenchError`], and [`chain`] to write an error
//! with its causes on one line (as results and reports show them).

use std::path::PathBuf;
use std::time::Duration;

/// Why a benchmark could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An option that cannot work as given; the message says what would.
    #[error("{0}")]
    Usage(String),
    /// The worker held more after a churn than before it.
    #[error("leaks after the churn: {0}")]
    Leaks(String),
    /// Calls failed: the table and its first errors say which.
    #[error("{failed} of {calls} calls failed; see the errors column and the first errors above")]
    CallsFailed {
        /// Calls that failed.
        failed: usize,
        /// Calls made.
        calls: usize,
    },
    /// A file could not be read or written.
    #[error("{what} {}", path.display())]
    File {
        /// What was being done (`cannot write`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A step of setting a benchmark up failed.
    #[error("{what}")]
    Step {
        /// The step (`cannot start ...`).
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// An `ol` command the benchmark ran (to start or stop a worker)
    /// failed.
    #[error("`ol {command}` failed: {stderr}")]
    Ol {
        /// Its arguments.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// A started worker's port file does not hold a port.
    #[error("bad port file")]
    PortFile(#[source] std::num::ParseIntError),
    /// The target does not accept connections.
    #[error("cannot connect to {addr}; is the worker running?")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A gRPC connection could not be opened.
    #[error("cannot open a gRPC connection to {addr}; is the worker running?")]
    GrpcConnect {
        /// `host:port`.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A gRPC call failed on its connection (not a status the server
    /// answered with).
    #[error("gRPC: {0}")]
    Grpc(String),
    /// A call got no answer in time.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration, #[source] tokio::time::error::Elapsed),
    /// A task of the load generator panicked.
    #[error("{what} panicked")]
    Panicked {
        /// Which task (`a benchmark call`).
        what: &'static str,
        /// How it ended.
        source: tokio::task::JoinError,
    },
    /// A new lambda could not be uploaded to a target.
    #[error("cannot upload {lambda} to {target}")]
    Upload {
        /// The lambda.
        lambda: String,
        /// The target's name.
        target: String,
        /// Why.
        source: ol_worker::client::ClientError,
    },
    /// A target answered an upload with an error.
    #[error("{target} refused the upload of {lambda} ({status}): {body}")]
    UploadRefused {
        /// The target's name.
        target: String,
        /// The lambda.
        lambda: String,
        /// The HTTP status.
        status: u16,
        /// The answer.
        body: String,
    },
    /// The plot could not be drawn.
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    /// The plot could not be written.
    #[error("cannot write {}", path.display())]
    Png {
        /// The PNG file.
        path: PathBuf,
        /// Why.
        source: png::EncodingError,
    },
    /// The CSV file could not be written.
    #[error("cannot write {}", path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// Why.
        source: csv::Error,
    },
    /// An OS call failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A request to a worker's API failed.
    #[error(transparent)]
    Client(#[from] ol_worker::client::ClientError),
    /// A lambda could not be packed.
    #[error(transparent)]
    Registry(#[from] ol_registry::RegistryError),
    /// The HTTP connection failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// A request could not be built.
    #[error(transparent)]
    Request(#[from] http::Error),
    /// Results could not be encoded.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// `e` and its causes on one line: `outer: cause: root cause`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_every_cause() {
        let e = BenchError::Connect {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::other("connection refused"),
        };
        assert_eq!(
            chain(&e),
            "cannot connect to 127.0.0.1:1; is the worker running?: connection refused"
        );
        let usage = BenchError::Usage("--runs must be at least 1".into());
        assert_eq!(chain(&usage), "--runs must be at least 1");
    }
}
