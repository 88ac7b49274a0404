//! A blocking client of `ol.v1.Lambda/Invoke` (the other side of
//! [`crate::grpc`]) for `ol invoke --grpc`: one HTTP/2 connection to a
//! worker or a balancer, calls made one at a time on it.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use super::proto::{INVOKE_PATH, InvokeRequest, InvokeResponse, LAMBDA_METADATA};

/// A connection to the gRPC API of a worker or balancer.
pub struct GrpcClient {
    runtime: tokio::runtime::Runtime,
    grpc: tonic::client::Grpc<Channel>,
}

/// What a call answered: the lambda's response and the call's metadata
/// (its `x-request-id`).
#[derive(Debug)]
pub struct GrpcAnswer {
    /// The lambda's status, body and headers.
    pub response: InvokeResponse,
    /// The response's metadata.
    pub metadata: MetadataMap,
}

impl GrpcClient {
    /// Connects to `url` (`http://HOST:PORT`, h2c); each call may take up
    /// to `timeout`.
    pub fn connect(url: &str, timeout: Duration) -> Result<Self, Status> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Status::internal(format!("cannot start a runtime: {e}")))?;
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| Status::invalid_argument(format!("bad URL {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout);
        let channel = runtime
            .block_on(endpoint.connect())
            .map_err(|e| Status::unavailable(format!("cannot connect to {url}: {e}")))?;
        Ok(Self {
            runtime,
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// Calls lambda `name` with `body` and `headers`, naming it in the
    /// `ol-lambda` metadata too (which a balancer routes by).
    pub fn invoke(
        &mut self,
        name: &str,
        body: Bytes,
        headers: HashMap<String, String>,
    ) -> Result<GrpcAnswer, Status> {
        let mut request = tonic::Request::new(InvokeRequest {
            name: name.to_string(),
            body,
            headers,
        });
        let named = MetadataValue::try_from(name)
            .map_err(|_| Status::invalid_argument(format!("{name:?} cannot be a lambda's name")))?;
        request.metadata_mut().insert(LAMBDA_METADATA, named);
        let grpc = &mut self.grpc;
        let answer = self.runtime.block_on(async {
            grpc.ready()
                .await
                .map_err(|e| Status::new(Code::Unavailable, format!("not ready: {e}")))?;
            grpc.unary(
                request,
                http::uri::PathAndQuery::from_static(INVOKE_PATH),
                ProstCodec::<InvokeRequest, InvokeResponse>::default(),
            )
            .await
        })?;
        let (metadata, response, _) = answer.into_parts();
        Ok(GrpcAnswer { response, metadata })
    }
}
