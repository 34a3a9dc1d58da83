"""A real Dapr Python SDK client of our daprd, driven by tests/tests/python_sdk.rs.

Connects with the SDK's own settings (DAPR_HTTP_PORT, DAPR_GRPC_PORT, and
DAPR_API_METHOD_INVOCATION_PROTOCOL chosen by the test), calls the target app and prints one JSON
object with what the SDK saw, so the Rust test asserts on it.
"""

import json
import sys

from dapr.clients import DaprClient


def main() -> None:
    target = sys.argv[1]
    out = {}
    with DaprClient() as client:
        resp = client.invoke_method(
            target,
            'items/7',
            data=b'hello from the python sdk',
            content_type='text/plain',
            http_verb='POST',
            http_querystring=(('color', 'red'),),
        )
        out['invoke'] = {
            'text': resp.text(),
            'content_type': resp.content_type,
            'headers': {k.lower(): v for k, v in resp.headers.items()},
        }
        try:
            client.invoke_method(target, 'status/404', data=b'', http_verb='GET')
            out['missing'] = {'raised': None}
        except Exception as e:  # the SDK raises its own error types; the test checks the text
            out['missing'] = {'raised': type(e).__name__, 'text': str(e)}
        meta = client.get_metadata()
        out['metadata'] = {
            'application_id': meta.application_id,
            'runtime_version': meta.extended_metadata.get('daprRuntimeVersion', ''),
        }
    print(json.dumps(out))


if __name__ == '__main__':
    main()
