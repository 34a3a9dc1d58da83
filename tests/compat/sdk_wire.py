"""What the Dapr Python SDK sees of our daprd's invocation wire, driven by
tests/tests/python_sdk.rs. Prints one JSON object for the Rust test to assert on.

- `typed <app>`: the SDK's `invoke_method` sends a `google.protobuf.StringValue` to echo-app's
  gRPC method `typed`, which answers a StringValue holding the `type_url` it was given, and
  `unpack`s the answer (over gRPC or HTTP, as DAPR_API_METHOD_INVOCATION_PROTOCOL says), as the
  SDK's examples/invoke-custom-data does.
"""

import json
import sys

from google.protobuf.wrappers_pb2 import StringValue

from dapr.clients import DaprClient


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


def main() -> None:
    mode, target = sys.argv[1], sys.argv[2]
    if mode != 'typed':
        sys.exit(f'unknown mode {mode}')
    out = typed(target)
    print(json.dumps(out))


if __name__ == '__main__':
    main()
