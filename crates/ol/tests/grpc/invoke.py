"""A gRPC client of ol.v1.Lambda/Invoke for crates/ol/tests/grpc_e2e.rs,
on grpcio and the stubs grpcio-tools generated from
crates/worker/proto/ol/v1/lambda.proto (the directory holding ol/v1/ is
on sys.path).

Reads {"target": "HOST:PORT", "calls": [CALL, ...]} on stdin, where a CALL
is {"name": ..., "body": TEXT, "headers": {...}, "metadata": [[K, V], ...]},
makes the calls in order on one channel, and prints one JSON list: for each
call {"code": "OK"|status name, "details": ..., "status": ..., "body": ...,
"headers": {...}, "metadata": {...}}.
"""

import json
import sys

import grpc
from ol.v1 import lambda_pb2, lambda_pb2_grpc


def call(stub, spec):
    request = lambda_pb2.InvokeRequest(
        name=spec["name"],
        body=spec.get("body", "").encode(),
        headers=spec.get("headers", {}),
    )
    metadata = [tuple(kv) for kv in spec.get("metadata", [])]
    try:
        response, rpc = stub.Invoke.with_call(request, metadata=metadata, timeout=60)
    except grpc.RpcError as e:
        return {
            "code": e.code().name,
            "details": e.details(),
            "metadata": dict(e.trailing_metadata() or ()),
        }
    return {
        "code": "OK",
        "status": response.status,
        "body": response.body.decode(errors="replace"),
        "headers": dict(response.headers),
        "metadata": dict(rpc.initial_metadata() or ()),
    }


def main():
    job = json.load(sys.stdin)
    with grpc.insecure_channel(job["target"]) as channel:
        stub = lambda_pb2_grpc.LambdaStub(channel)
        print(json.dumps([call(stub, spec) for spec in job["calls"]]))


if __name__ == "__main__":
    main()
