"""What the Dapr Python SDK and grpcio see of our daprd's invocation wire, driven by
tests/tests/python_sdk.rs. Prints one JSON object for the Rust test to assert on.

- `typed <app>`: the SDK's `invoke_method` sends a `google.protobuf.StringValue` to echo-app's
  gRPC method `typed`, which answers a StringValue holding the `type_url` it was given, and
  `unpack`s the answer (over gRPC or HTTP, as DAPR_API_METHOD_INVOCATION_PROTOCOL says), as the
  SDK's examples/invoke-custom-data does.
- `http-status <app>`: a raw grpcio `InvokeService.with_call` of `status/404` on an HTTP app,
  which fails; prints the call's initial and trailing metadata.
"""

import json
import os
import sys

import grpc  # type: ignore
from google.protobuf.wrappers_pb2 import StringValue

from dapr.clients import DaprClient
from dapr.proto import api_service_v1, api_v1, common_v1


def typed(target: str) -> dict:
    with DaprClient() as client:
        resp = client.invoke_method(target, 'typed', data=StringValue(value='ping'))
        out = {'content_type': resp.content_type}
        answer = StringValue()
        try:
            resp.unpack(answer)
            out['unpacked'] = answer.value
        except Exception as e:  # the SDK's ValueError('invalid type') when type_url is lost
            out['error'] = f'{type(e).__name__}: {e}'
        return out


def http_status(target: str) -> dict:
    address = f"127.0.0.1:{os.environ['DAPR_GRPC_PORT']}"
    with grpc.insecure_channel(address) as channel:
        stub = api_service_v1.DaprStub(channel)
        request = api_v1.InvokeServiceRequest(
            id=target,
            message=common_v1.InvokeRequest(
                method='status/404',
                http_extension=common_v1.HTTPExtension(verb=common_v1.HTTPExtension.Verb.GET),
            ),
        )
        try:
            stub.InvokeService.with_call(request, timeout=30)
            return {'raised': None}
        except grpc.RpcError as e:
            return {
                'code': e.code().name,
                'initial': {k: v for k, v in e.initial_metadata()},
                'trailing': {k: v for k, v in e.trailing_metadata()},
            }


def main() -> None:
    mode, target = sys.argv[1], sys.argv[2]
    out = typed(target) if mode == 'typed' else http_status(target)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
