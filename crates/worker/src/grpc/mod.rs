//! gRPC `ol.v1.Lambda/Invoke` (proto/ol/v1/lambda.proto, docs/lb.md
//! "gRPC"), served on the worker's HTTP port: a request whose content type
//! is `application/grpc…` comes here (over h2c, which the connection layer
//! tells from HTTP/1.1 by its preface), everything else goes to the HTTP
//! routes.
//!
//! A call is turned into the request `POST /run/<name>` would have made and
//! goes through the same call path ([`crate::routes::run::call`]):
//! admission, request id, request context, counters and metrics are the
//! HTTP call's. Only the answer differs: what the lambda answered is an
//! `InvokeResponse` (its status in `status`); the worker's refusals and
//! the lambda's failures are gRPC statuses
//! ([`crate::invoke_status::grpc_code_of`]) whose message is the JSON
//! error's `error` (and traceback, when config.json `tracebacks` is
//! "client"), with the request id in `x-request-id` metadata.

pub mod client;
pub mod proto;

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ol_obs::request_id;
use tonic::codegen::{BoxFuture, Service};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::conn::{RequestBody, StallLimited};
use crate::response::Body;
use crate::routes::run::{self, FailedCall};
use crate::state::AppState;
use proto::{INVOKE_PATH, InvokeRequest, InvokeResponse, LAMBDA_METADATA};

/// The body of every gRPC response (trailers carry its status).
pub(crate) type GrpcBody = tonic::body::Body;

/// Whether `req` is a gRPC call (by its content type, as gRPC says).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Answers the gRPC call `req`. Its message may be at most the worker's
/// request body limit (`limits.max_body_mb`, name and headers included),
/// and a body that stalls fails like an HTTP one.
pub(crate) async fn serve<B: RequestBody>(
    state: Arc<AppState>,
    req: Request<B>,
) -> Response<GrpcBody> {
    let path = req.uri().path();
    if path != INVOKE_PATH {
        return Status::unimplemented(format!(
            "no gRPC method {path}; the worker serves {INVOKE_PATH}"
        ))
        .into_http();
    }
    let limit = state.max_body_bytes;
    let stall = state.body_stall;
    let req = req.map(|body| StallLimited::new(body, stall));
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<InvokeResponse, InvokeRequest>::default())
        .max_decoding_message_size(limit);
    let response = grpc.unary(Invoke { state }, req).await;
    // tonic refuses a message over the limit with OUT_OF_RANGE before our
    // service runs (which never answers that code itself); gRPC's own
    // implementations say RESOURCE_EXHAUSTED, and so does the worker.
    match Status::from_header_map(response.headers()) {
        Some(status) if status.code() == Code::OutOfRange => Status::resource_exhausted(format!(
            "the request message is over the {limit}-byte limit (limits.max_body_mb): {}",
            status.message()
        ))
        .into_http(),
        _ => response,
    }
}

/// The `Invoke` method, as tonic calls it.
struct Invoke {
    state: Arc<AppState>,
}

impl Service<tonic::Request<InvokeRequest>> for Invoke {
    type Response = tonic::Response<InvokeResponse>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<InvokeRequest>) -> Self::Future {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let (metadata, _, message) = request.into_parts();
            let name = message.name.clone();
            let req = http_request(metadata.into_headers(), message)?;
            let (response, by_lambda) = run::call(&state, req, &name, "/").await;
            answer(response, by_lambda).await
        })
    }
}

/// Metadata that is gRPC's own (framing, deadlines, encodings) or binary,
/// not a header the lambda should see.
fn is_transport_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "content-type" | "content-length" | "te" | "connection"
    ) || name.starts_with("grpc-")
        || name.ends_with("-bin")
}

/// The HTTP request `POST /run/<name>` would have made for the call: the
/// metadata, then the message's `headers` (which win), as headers.
fn http_request(
    metadata: HeaderMap,
    message: InvokeRequest,
) -> Result<Request<Full<Bytes>>, Status> {
    if let Some(named) = metadata.get(LAMBDA_METADATA)
        && named.as_bytes() != message.name.as_bytes()
    {
        return Err(Status::invalid_argument(format!(
            "metadata {LAMBDA_METADATA} is {:?} but the request calls {:?}: a balancer would send the call to the wrong lambda's worker",
            String::from_utf8_lossy(named.as_bytes()),
            message.name
        )));
    }
    let mut headers = HeaderMap::with_capacity(metadata.len() + message.headers.len());
    for (name, value) in &metadata {
        if !is_transport_header(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in message.headers {
        let (Ok(header), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            return Err(Status::invalid_argument(format!(
                "request header {name:?} is not a valid HTTP header name and value"
            )));
        };
        if header != http::header::CONTENT_LENGTH {
            headers.insert(header, value);
        }
    }
    let mut req = Request::new(Full::new(message.body));
    *req.method_mut() = Method::POST;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The gRPC answer to a call the HTTP call path answered with `response`.
async fn answer(
    response: Response<Body>,
    by_lambda: bool,
) -> Result<tonic::Response<InvokeResponse>, Status> {
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let mut metadata = MetadataMap::new();
    if let Some(id) = parts
        .headers
        .get(request_id::HEADER)
        .and_then(|v| MetadataValue::try_from(v.as_bytes()).ok())
    {
        metadata.insert(request_id::HEADER, id);
    }
    if !by_lambda {
        let code = match parts.extensions.get::<FailedCall>() {
            Some(failed) => failed.grpc_code,
            None => code_of_status(parts.status),
        };
        return Err(Status::with_metadata(code, error_message(&body), metadata));
    }
    let mut headers: HashMap<String, String> = HashMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_string())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let mut response = tonic::Response::new(InvokeResponse {
        status: u32::from(parts.status.as_u16()),
        body,
        headers,
    });
    *response.metadata_mut() = metadata;
    Ok(response)
}

/// The code of a refusal made before the lambda layer saw the call (the
/// body could not be read): those carry no [`FailedCall`].
fn code_of_status(status: StatusCode) -> Code {
    match status {
        StatusCode::REQUEST_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        s if s.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

/// The message of a failed call: the JSON error body's `error`, with the
/// traceback on the lines below when the body has one.
fn error_message(body: &[u8]) -> String {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::from_utf8_lossy(body).into_owned();
    };
    let error = json["error"].as_str().unwrap_or("the call failed");
    match json["traceback"].as_str() {
        Some(traceback) => format!("{error}\n{traceback}"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    use crate::state::idle_state;

    /// `message` in gRPC's framing: uncompressed, 4-byte length, message.
    fn framed(message: &impl Message) -> Bytes {
        let encoded = message.encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(encoded.len()).expect("len").to_be_bytes());
        framed.extend_from_slice(&encoded);
        Bytes::from(framed)
    }

    fn grpc_request(path: &str, body: Bytes) -> Request<Full<Bytes>> {
        Request::post(path)
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::new(body))
            .expect("request")
    }

    /// The gRPC status of a response that failed before any message (a
    /// "trailers-only" response: the status is in its headers).
    fn status_of(response: &Response<GrpcBody>) -> Status {
        Status::from_header_map(response.headers()).expect("a grpc-status header")
    }

    fn call_of(name: &str) -> InvokeRequest {
        InvokeRequest {
            name: name.into(),
            body: Bytes::from_static(b"{}"),
            headers: HashMap::new(),
        }
    }

    #[tokio::test]
    async fn refusals_are_grpc_statuses_and_counted_like_http_calls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(idle_state(dir.path()));

        let response = serve(
            Arc::clone(&state),
            grpc_request(INVOKE_PATH, framed(&call_of("nope"))),
        )
        .await;
        let status = status_of(&response);
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains("nope"), "{status:?}");
        assert!(status.metadata().get(request_id::HEADER).is_some());

        let response = serve(
            Arc::clone(&state),
            grpc_request(INVOKE_PATH, framed(&call_of("a.b"))),
        )
        .await;
        assert_eq!(status_of(&response).code(), Code::InvalidArgument);

        // Over the 1024-byte body limit of idle_state: refused from the
        // length prefix, before the lambda layer sees it.
        let mut big = call_of("nope");
        big.body = Bytes::from(vec![b'x'; 2048]);
        let response = serve(Arc::clone(&state), grpc_request(INVOKE_PATH, framed(&big))).await;
        let status = status_of(&response);
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("limits.max_body_mb"),
            "{status:?}"
        );

        let mut req = grpc_request(INVOKE_PATH, framed(&call_of("nope")));
        req.headers_mut()
            .insert(LAMBDA_METADATA, HeaderValue::from_static("other"));
        let status = status_of(&serve(Arc::clone(&state), req).await);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("ol-lambda"), "{status:?}");

        let mut bad_header = call_of("nope");
        bad_header.headers.insert("bad header".into(), "x".into());
        let status = status_of(
            &serve(
                Arc::clone(&state),
                grpc_request(INVOKE_PATH, framed(&bad_header)),
            )
            .await,
        );
        assert_eq!(status.code(), Code::InvalidArgument);

        let response = serve(
            Arc::clone(&state),
            grpc_request("/ol.v1.Lambda/Other", framed(&call_of("nope"))),
        )
        .await;
        assert_eq!(status_of(&response).code(), Code::Unimplemented);

        // The two that reached the call path count as calls, failed by
        // the caller: the same counters as HTTP's.
        let stats = state.stats();
        assert_eq!((stats.invocations, stats.errors_4xx), (2, 2));
    }

    #[test]
    fn the_lambda_sees_metadata_and_headers_but_not_grpc_framing() {
        let mut metadata = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "1S"),
            ("trace-bin", "AAEC"),
            ("x-tenant", "a"),
            ("x-both", "metadata"),
            (LAMBDA_METADATA, "hi"),
        ] {
            metadata.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut message = call_of("hi");
        message.headers = HashMap::from([
            ("X-Both".into(), "message".into()),
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), "99".into()),
        ]);
        let req = http_request(metadata, message).expect("request");
        assert_eq!(req.method(), Method::POST);
        let mut seen: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_string()))
            .collect();
        seen.sort();
        let expected = [
            ("content-type", "application/json"),
            (LAMBDA_METADATA, "hi"),
            ("x-both", "message"),
            ("x-tenant", "a"),
        ];
        assert_eq!(seen, expected.map(|(k, v)| (k.to_string(), v.to_string())));
    }

    #[tokio::test]
    async fn the_lambdas_answer_is_a_response_and_failures_keep_their_message() {
        let mut reply = Response::new(Full::new(Bytes::from_static(b"teapot")));
        *reply.status_mut() = StatusCode::IM_A_TEAPOT;
        reply
            .headers_mut()
            .append("x-a", HeaderValue::from_static("1"));
        reply
            .headers_mut()
            .append("x-a", HeaderValue::from_static("2"));
        reply
            .headers_mut()
            .insert(request_id::HEADER, HeaderValue::from_static("abc"));
        let answered = answer(reply, true).await.expect("a response");
        assert_eq!(
            answered
                .metadata()
                .get(request_id::HEADER)
                .map(|v| v.to_str().ok()),
            Some(Some("abc"))
        );
        let message = answered.into_inner();
        assert_eq!((message.status, &message.body[..]), (418, &b"teapot"[..]));
        assert_eq!(message.headers["x-a"], "1, 2");

        let mut failed = crate::response::error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ZeroDivisionError: division by zero",
            Some("boom"),
            Some("Traceback (most recent call last): ..."),
        );
        failed.extensions_mut().insert(FailedCall {
            grpc_code: Code::Internal,
        });
        let status = answer(failed, false).await.expect_err("a status");
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            status.message(),
            "ZeroDivisionError: division by zero\nTraceback (most recent call last): ..."
        );
        let stalled =
            crate::response::error_response(StatusCode::REQUEST_TIMEOUT, "slow", None, None);
        assert_eq!(
            answer(stalled, false).await.expect_err("a status").code(),
            Code::DeadlineExceeded
        );
    }
}
