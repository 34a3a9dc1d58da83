//! The official Dapr Python SDK (PyPI `dapr`, installed by scripts/test.sh into `.cache/venv`)
//! as a real client of our daprd: `invoke_method` over HTTP and over gRPC
//! (`DAPR_API_METHOD_INVOCATION_PROTOCOL=grpc`) and `get_metadata`, typed (`Any`) data from a gRPC
//! app, what grpcio sees of a failed `InvokeService`, and the SDK reaching daprd over its
//! Unix-domain socket (`--unix-domain-socket`).

use std::path::PathBuf;
use std::time::Duration;

use e2e::sidecar::{
    Sidecar, SidecarOptions, scratch_dir, sqlite_config, start_pair, start_sqlite_pair,
};
use e2e::{EchoApp, echo_app};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let python = workspace().join(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh installs the Dapr Python SDK there",
        python.display()
    );
    python
}

struct Setup {
    _app: EchoApp,
    _callee: Sidecar,
    caller: Sidecar,
}

async fn setup(name: &str) -> Setup {
    setup_with(name, "http").await
}

/// `orders` (echo-app speaking `protocol` behind its daprd) and `checkout` (a daprd without an
/// app), the caller the SDK talks to.
async fn setup_with(name: &str, protocol: &str) -> Setup {
    let dir = scratch_dir(name).expect("scratch dir");
    let app = echo_app(protocol).await.expect("echo-app starts");
    let callee_args: &[&str] = if protocol == "grpc" {
        &["--app-protocol", "grpc"]
    } else {
        &[]
    };
    let (callee, caller) = start_sqlite_pair(&dir, app.addr.port(), "", callee_args)
        .await
        .expect("sidecars start");
    Setup {
        _app: app,
        _callee: callee,
        caller,
    }
}

/// Runs tests/compat/sdk_client.py against `sidecar` and returns what it printed.
async fn sdk(sidecar: &Sidecar, protocol: &str) -> serde_json::Value {
    run_script(sidecar, protocol, "sdk_client.py", &["orders"], &[]).await
}

/// Runs the Python script `script` of tests/compat with `args` against `sidecar` (the SDK's
/// invocation protocol set to `protocol`) and returns the JSON it printed.
async fn run_script(
    sidecar: &Sidecar,
    protocol: &str,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let script = workspace().join("tests/compat").join(script);
    let run = tokio::process::Command::new(python())
        .arg(&script)
        .args(args)
        .env("DAPR_HTTP_PORT", sidecar.http_port.to_string())
        .env("DAPR_GRPC_PORT", sidecar.grpc_port.to_string())
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env("DAPR_HEALTH_TIMEOUT", "20")
        .env("DAPR_API_METHOD_INVOCATION_PROTOCOL", protocol)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the SDK client finishes within 60s")
        .expect("python runs");
    assert!(
        output.status.success(),
        "{} ({protocol}) failed: {}\ndaprd log:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr),
        sidecar.log_text()
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_invokes_over_http_and_reads_metadata() {
    let s = setup("sdk-http").await;
    let out = sdk(&s.caller, "http").await;
    let invoke = &out["invoke"];
    assert_eq!(invoke["text"], "hello from the python sdk");
    assert_eq!(invoke["content_type"], "text/plain");
    // The SDK exposes every header as a list of values.
    assert_eq!(
        invoke["headers"]["x-echo-method"],
        serde_json::json!(["POST"])
    );
    assert_eq!(
        invoke["headers"]["x-echo-path"],
        serde_json::json!(["/items/7?color=red"])
    );
    let missing = &out["missing"];
    assert_eq!(missing["raised"], "DaprHttpError", "{missing}");
    assert_eq!(out["metadata"]["application_id"], "checkout");
    assert_eq!(out["metadata"]["runtime_version"], daprd_version());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_invokes_over_grpc_and_reads_metadata() {
    let s = setup("sdk-grpc").await;
    let out = sdk(&s.caller, "grpc").await;
    let invoke = &out["invoke"];
    assert_eq!(invoke["text"], "hello from the python sdk");
    assert_eq!(invoke["content_type"], "text/plain");
    // Response headers come back as gRPC metadata, which the SDK exposes as headers.
    assert_eq!(
        invoke["headers"]["x-echo-method"],
        serde_json::json!(["POST"])
    );
    assert_eq!(
        invoke["headers"]["x-echo-path"],
        serde_json::json!(["/items/7?color=red"])
    );
    // A 404 from the app becomes gRPC NotFound, which the SDK raises.
    let missing = &out["missing"];
    assert!(
        missing["text"]
            .as_str()
            .is_some_and(|t| t.contains("NOT_FOUND") || t.contains("status 404")),
        "{missing}"
    );
    assert_eq!(out["metadata"]["application_id"], "checkout");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_unpacks_typed_data_from_a_grpc_app_over_grpc_and_http() {
    let s = setup_with("sdk-typed", "grpc").await;
    // Over gRPC the `Any` travels whole both ways: the app saw the SDK's `type_url`, and the
    // SDK checks the answer's `type_url` before it unpacks (ValueError: invalid type without).
    let out = run_script(&s.caller, "grpc", "sdk_wire.py", &["typed", "orders"], &[]).await;
    assert_eq!(
        out["unpacked"], "type.googleapis.com/google.protobuf.StringValue",
        "{out}"
    );
    // Over HTTP, typed data comes back as `application/x-protobuf`, which the SDK parses as the
    // message asked for (the HTTP API carries no `type_url` to the app).
    let out = run_script(&s.caller, "http", "sdk_wire.py", &["typed", "orders"], &[]).await;
    assert_eq!(out["content_type"], "application/x-protobuf", "{out}");
    assert_eq!(out["unpacked"], "", "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcio_sees_dapr_http_status_in_the_initial_metadata_of_a_failed_invoke_service() {
    let s = setup("sdk-http-status").await;
    let out = run_script(
        &s.caller,
        "grpc",
        "sdk_wire.py",
        &["http-status", "orders"],
        &[],
    )
    .await;
    assert_eq!(out["code"], "NOT_FOUND", "{out}");
    assert_eq!(out["initial"]["dapr-http-status"], "404", "{out}");
    assert!(out["trailing"].get("dapr-http-status").is_none(), "{out}");
}

/// Sends one HTTP/1.1 request over the Unix-domain socket at `path`.
async fn http_over_unix(
    path: &std::path::Path,
    uri: &str,
    body: &'static [u8],
) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1 handshake");
    tokio::spawn(connection);
    let request = http::Request::post(uri)
        .header(http::header::HOST, "localhost")
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(bytes::Bytes::from_static(body)))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer within 10s")
        .expect("an answer");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_and_an_http_client_reach_daprd_over_its_unix_sockets() {
    let dir = scratch_dir("sdk-uds").expect("scratch dir");
    let sockets = dir.join("sockets");
    std::fs::create_dir_all(&sockets).expect("socket dir");
    let app = echo_app("http").await.expect("echo-app starts");
    let callee = SidecarOptions {
        app_port: Some(app.addr.port()),
        config: Some(sqlite_config(&dir, "callee", "").expect("config")),
        ..Default::default()
    };
    let caller = SidecarOptions {
        config: Some(sqlite_config(&dir, "caller", "").expect("config")),
        unix_domain_socket: Some(sockets.clone()),
        ..Default::default()
    };
    let (_callee, mut caller) = start_pair(&dir, ("orders", callee), ("checkout", caller))
        .await
        .expect("sidecars start");
    // Upstream's names (pkg/api/http/server.go, pkg/api/grpc/server.go), and no TCP listener
    // for those APIs.
    let grpc_socket = sockets.join("dapr-checkout-grpc.socket");
    let http_socket = sockets.join("dapr-checkout-http.socket");
    let log = caller.log_text();
    assert!(
        log.contains(&format!(
            "HTTP server listening on UNIX socket: {}",
            http_socket.display()
        )) && !log.lines().any(|line| {
            line.contains("HTTP server listening on 127.0.0.1") && !line.contains("public")
        }),
        "{log}"
    );

    // The SDK's gRPC client on the socket (its health check goes to the public port).
    let endpoint = format!("unix://{}", grpc_socket.display());
    let health = caller.health_port.to_string();
    let env = [
        ("DAPR_GRPC_ENDPOINT", endpoint.as_str()),
        ("DAPR_HTTP_PORT", health.as_str()),
    ];
    let out = run_script(&caller, "grpc", "sdk_client.py", &["orders"], &env).await;
    assert_eq!(out["invoke"]["text"], "hello from the python sdk", "{out}");
    assert_eq!(
        out["invoke"]["headers"]["x-echo-path"],
        serde_json::json!(["/items/7?color=red"])
    );
    assert_eq!(out["metadata"]["application_id"], "checkout", "{out}");

    // The HTTP API on the other socket.
    let (status, headers, body) = http_over_unix(
        &http_socket,
        "/v1.0/invoke/orders/method/items/9",
        b"over the socket",
    )
    .await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(&body[..], b"over the socket");
    assert_eq!(headers["x-echo-path"], "/items/9");

    // The sockets go with the sidecar, so a restart can bind them again.
    let exit = caller
        .terminate(Duration::from_secs(10))
        .await
        .expect("daprd stops");
    assert!(exit.success(), "{exit}");
    assert!(!grpc_socket.exists() && !http_socket.exists());
}

fn daprd_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
