//! The responses every route builds: JSON bodies, plain text, and the JSON
//! error body of docs/architecture.md §1.3 (`{"error": ..., "lambda": ...}`), so that
//! every route fails the same way.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::conn::BodyStalled;

/// The body of every response the worker sends.
pub(crate) type Body = Full<Bytes>;

/// `body` with `status` and a plain-text content type.
pub(crate) fn text_response(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `value` as a JSON body with `status`.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The JSON error body of docs/architecture.md §1.3: `{"error": ..., "lambda": ...}`,
/// with the lambda's `traceback` when it raised.
pub(crate) fn error_response(
    status: StatusCode,
    message: &str,
    lambda: Option<&str>,
    traceback: Option<&str>,
) -> Response<Body> {
    let mut body = json!({ "error": message, "lambda": lambda });
    if let Some(tb) = traceback {
        body["traceback"] = json!(tb);
    }
    json_response(status, &body)
}

/// 405 with the methods that would work, in `Allow` too (RFC 9110).
pub(crate) fn method_not_allowed(message: &str, allow: &'static str) -> Response<Body> {
    let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, message, None, None);
    response
        .headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The answer to a request whose body could not be read: 408 when it
/// stalled, else 400.
pub(crate) fn body_error(e: &(dyn std::error::Error + 'static)) -> Response<Body> {
    let status = if e.downcast_ref::<BodyStalled>().is_some() {
        StatusCode::REQUEST_TIMEOUT
    } else {
        StatusCode::BAD_REQUEST
    };
    error_response(
        status,
        &format!("cannot read the request body: {e}"),
        None,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    async fn json_of(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).expect("JSON body")
    }

    #[tokio::test]
    async fn error_bodies_name_the_lambda_and_carry_its_traceback() {
        let resp = error_response(StatusCode::NOT_FOUND, "no such lambda", None, None);
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            json_of(resp).await,
            json!({"error": "no such lambda", "lambda": null})
        );
        let raised = error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ZeroDivisionError",
            Some("boom"),
            Some("Traceback ..."),
        );
        assert_eq!(
            json_of(raised).await,
            json!({"error": "ZeroDivisionError", "lambda": "boom", "traceback": "Traceback ..."})
        );
    }

    #[tokio::test]
    async fn a_stalled_body_is_a_408_and_other_body_errors_are_400s() {
        let stalled = BodyStalled(Duration::from_millis(5));
        assert_eq!(body_error(&stalled).status(), StatusCode::REQUEST_TIMEOUT);
        let broken = std::io::Error::other("connection reset");
        let resp = body_error(&broken);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            json_of(resp).await["error"],
            "cannot read the request body: connection reset"
        );
    }
}
