//! The messages of `ol.v1.Lambda` (crates/worker/proto/ol/v1/lambda.proto),
//! derived by hand so that building needs no protoc. Field numbers and
//! types are the .proto's; the Python client of crates/ol/tests/grpc_e2e.rs
//! is generated from that file, so a drift fails there.

use std::collections::HashMap;

/// The gRPC method's path (`/package.Service/Method`).
pub const INVOKE_PATH: &str = "/ol.v1.Lambda/Invoke";

/// The metadata key (an HTTP/2 header) naming the lambda of a call, for
/// balancers that cannot read the message (`ol lb` hashes on it).
pub const LAMBDA_METADATA: &str = "ol-lambda";

/// `ol.v1.InvokeRequest`: a call of lambda `name`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InvokeRequest {
    /// The lambda's name, as in /run/<name>.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The request body (the event, usually JSON).
    #[prost(bytes = "bytes", tag = "2")]
    pub body: bytes::Bytes,
    /// Request headers the lambda sees, besides the call's metadata.
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
}

/// `ol.v1.InvokeResponse`: what the lambda answered.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InvokeResponse {
    /// The HTTP status the lambda answered with.
    #[prost(uint32, tag = "1")]
    pub status: u32,
    /// The response body.
    #[prost(bytes = "bytes", tag = "2")]
    pub body: bytes::Bytes,
    /// The response headers (the lambda's, and x-request-id).
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_wire_format_is_the_protos() {
        let req = InvokeRequest {
            name: "hi".into(),
            body: bytes::Bytes::from_static(b"{}"),
            headers: HashMap::from([("a".into(), "b".into())]),
        };
        // Field 1 string "hi", field 2 bytes "{}", field 3 one map entry
        // {1: "a", 2: "b"}: as protoc's encoder writes them.
        assert_eq!(
            req.encode_to_vec(),
            b"\x0a\x02hi\x12\x02{}\x1a\x06\x0a\x01a\x12\x01b".to_vec()
        );
        let resp = InvokeResponse::decode(&b"\x08\xc8\x01\x12\x02ok"[..]).expect("decode");
        assert_eq!((resp.status, &resp.body[..]), (200, &b"ok"[..]));
    }
}
