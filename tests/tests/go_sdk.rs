//! The official Dapr Go SDK (`github.com/dapr/go-sdk`, pinned in `tests/gosdk/go.mod`; built by
//! scripts/test.sh into `.cache/gosdk/bin/gosdk`) as a real client of our daprd: its gRPC
//! client's `InvokeMethod`, `InvokeMethodWithContent` and `InvokeMethodWithCustomContent` to an
//! HTTP app, an app's error status as the SDK's error, and a gRPC app written with the SDK's
//! `service/grpc` (`AddServiceInvocationHandler`) behind our daprd.
//!
//! Without the Go binary (no Go on the machine) each test says `SKIPPED:` and passes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use e2e::echo_app;
use e2e::sidecar::{Sidecar, scratch_dir, start_sqlite_pair};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

/// `gosdk-service listening on <addr>`: what `gosdk serve` prints once bound.
const SERVICE_READY_PREFIX: &str = "gosdk-service listening on ";

fn gosdk() -> Option<PathBuf> {
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/gosdk/bin/gosdk");
    if binary.exists() {
        return Some(binary);
    }
    eprintln!(
        "SKIPPED: {} is missing: scripts/test.sh builds it from tests/gosdk (it needs Go)",
        binary.display()
    );
    None
}

/// Runs `gosdk client` with `args` against `sidecar`'s gRPC API and returns its JSON report.
async fn client(binary: &PathBuf, sidecar: &Sidecar, args: &[&str]) -> Value {
    let run = tokio::process::Command::new(binary)
        .arg("client")
        .args(args)
        .env("DAPR_GRPC_PORT", sidecar.grpc_port.to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the Go SDK client finishes within 60s")
        .expect("gosdk runs");
    assert!(
        output.status.success(),
        "gosdk client {args:?} failed: {}\ndaprd log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        sidecar.log_text()
    );
    // The SDK logs on stdout too (`dapr client initializing for: ...`); the report is last.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(report).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The JSON the echo-app's `/inspect` answered for the call `name`.
fn inspected<'a>(out: &'a Value, name: &str) -> &'a Value {
    let call = &out[name];
    assert!(call["error"].is_null(), "{name}: {call}");
    &call["json"]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_go_sdk_invokes_an_http_app_over_grpc() {
    let Some(binary) = gosdk() else { return };
    let dir = scratch_dir("gosdk-http-app").expect("scratch dir");
    let app = echo_app("http").await.expect("echo-app starts");
    let (_callee, caller) = start_sqlite_pair(&dir, app.addr.port(), "", &[])
        .await
        .expect("sidecars start");
    let out = client(&binary, &caller, &["-app", "orders"]).await;

    // InvokeMethodWithContent: data, content type, verb and query string at the app.
    let seen = inspected(&out, "inspect_content");
    assert_eq!(seen["method"], "POST", "{seen}");
    assert_eq!(seen["path"], "/inspect/items/7", "{seen}");
    assert_eq!(seen["query"], "color=red&size=2", "{seen}");
    assert_eq!(seen["headers"]["content-type"], "text/plain", "{seen}");
    assert_eq!(seen["headers"]["dapr-caller-app-id"], "checkout", "{seen}");
    assert_eq!(seen["body_len"], "hello from the go sdk".len(), "{seen}");
    // InvokeMethod: the verb and query, no body.
    let seen = inspected(&out, "inspect_method");
    assert_eq!(seen["method"], "GET", "{seen}");
    assert_eq!(seen["path"], "/inspect/list", "{seen}");
    assert_eq!(seen["query"], "page=3", "{seen}");
    assert_eq!(seen["body_len"], 0, "{seen}");
    // InvokeMethodWithCustomContent: the SDK's JSON encoding of the struct.
    let seen = inspected(&out, "inspect_custom");
    assert_eq!(seen["method"], "PUT", "{seen}");
    assert_eq!(seen["path"], "/inspect/orders", "{seen}");
    assert_eq!(
        seen["headers"]["content-type"], "application/json",
        "{seen}"
    );
    assert_eq!(
        seen["body_len"],
        r#"{"id":7,"items":"tea"}"#.len(),
        "{seen}"
    );

    // The data itself, echoed back byte for byte.
    assert_eq!(
        out["echo_content"],
        json!({"body": "hello from the go sdk"}),
        "{out}"
    );
    assert_eq!(
        out["echo_custom"]["json"],
        json!({"id": 7, "items": "tea"}),
        "{out}"
    );

    // An app's error status is the SDK's error, carrying the status.
    let error = &out["status_418"]["error"];
    assert_eq!(error["code"], "Unknown", "{out}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("418")),
        "{out}"
    );
    let error = &out["status_404"]["error"];
    assert_eq!(error["code"], "NotFound", "{out}");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("404")),
        "{out}"
    );
}

/// `gosdk serve`, a gRPC app on the SDK's `service/grpc`; killed when dropped.
struct GoService {
    _child: tokio::process::Child,
    addr: SocketAddr,
}

async fn go_service(binary: &PathBuf) -> anyhow::Result<GoService> {
    let mut child = tokio::process::Command::new(binary)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning gosdk serve")?;
    let stdout = child.stdout.take().context("gosdk serve stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix(SERVICE_READY_PREFIX) {
                return Ok(addr.parse::<SocketAddr>()?);
            }
        }
        bail!("gosdk serve closed stdout before listening")
    })
    .await
    .context("gosdk serve printed no listening line within 10s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(GoService {
        _child: child,
        addr,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_go_sdk_grpc_service_receives_invocations_through_daprd() {
    let Some(binary) = gosdk() else { return };
    let dir = scratch_dir("gosdk-service").expect("scratch dir");
    let service = go_service(&binary).await.expect("gosdk serve starts");
    let (_callee, caller) =
        start_sqlite_pair(&dir, service.addr.port(), "", &["--app-protocol", "grpc"])
            .await
            .expect("sidecars start");
    let out = client(&binary, &caller, &["-app", "", "-service", "orders"]).await;

    // What the handler's InvocationEvent held: data, content type, verb and query string.
    let seen = &out["service_content"]["json"];
    assert_eq!(
        seen,
        &json!({
            "data": "hello from the go sdk",
            "content_type": "text/plain",
            "type_url": "",
            "verb": "POST",
            "query": "k=v",
        }),
        "{out}"
    );
    let seen = &out["service_custom"]["json"];
    assert_eq!(seen["data"], r#"{"id":7,"items":"tea"}"#, "{out}");
    assert_eq!(seen["content_type"], "application/json", "{out}");
    assert_eq!(seen["verb"], "PUT", "{out}");
    let seen = &out["service_method"]["json"];
    assert_eq!(seen["data"], "", "{out}");
    assert_eq!(seen["verb"], "GET", "{out}");
    assert_eq!(seen["query"], "only=query", "{out}");

    // The handler's error, and a method without one, reach the calling SDK as errors.
    let error = &out["service_fail"]["error"];
    assert_eq!(error["code"], "Unknown", "{out}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("the go sdk service refuses")),
        "{out}"
    );
    let error = &out["service_missing"]["error"];
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("method not implemented: nope")),
        "{out}"
    );
}
