//! A mixed fleet beyond the HTTP API: our daprd and upstream Dapr's daprd (the harness is
//! `e2e::upstream`, tests/src/upstream.rs) call each other's apps, in both directions,
//! - over the gRPC API `InvokeService`, to HTTP apps and to gRPC apps (`AppCallback/OnInvoke`),
//!   typed `Any` data keeping its `type_url`;
//! - through gRPC proxying by `dapr-app-id` (`e2e.echo.v1.Echo`: unary, server-streaming,
//!   bidirectional);
//! - with 10 MiB bodies over the HTTP API, byte for byte;
//! - under the callee's `accessControl`, evaluated on the other implementation's certificate.
//!
//! With mTLS our sentry issues every sidecar's certificate; the gRPC API and proxying tests also
//! run in plain text. Without the upstream binary each test says so and passes without running.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use dapr_proto::common::v1::{HttpExtension, InvokeRequest, http_extension::Verb};
use dapr_proto::runtime::v1::InvokeServiceRequest;
use dapr_proto::runtime::v1::dapr_client::DaprClient;
use e2e::echo::Note;
use e2e::echo::echo_client::EchoClient;
use e2e::sidecar::HttpClient;
use e2e::upstream::{Fleet, FleetOptions, fleet};
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::transport::Channel;

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// One direction of calls: from the sidecar with these API ports, as `caller`, to `callee`.
struct Direction {
    name: &'static str,
    http_port: u16,
    grpc_port: u16,
    caller: &'static str,
    callee: &'static str,
}

impl Direction {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }
}

/// Ours calling upstream's app, then upstream's calling ours.
fn both_ways(fleet: &Fleet) -> [Direction; 2] {
    [
        Direction {
            name: "ours -> upstream",
            http_port: fleet.ours.http_port,
            grpc_port: fleet.ours.grpc_port,
            caller: "ours",
            callee: "theirs",
        },
        Direction {
            name: "upstream -> ours",
            http_port: fleet.upstream.http_port,
            grpc_port: fleet.upstream.grpc_port,
            caller: "theirs",
            callee: "ours",
        },
    ]
}

/// Runs `check` for each direction; a failure panics with the direction and both logs.
async fn each_way<F, Fut>(fleet: &Fleet, check: F)
where
    F: Fn(Direction) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for direction in both_ways(fleet) {
        let name = direction.name;
        if let Err(e) = check(direction).await {
            panic!("{name}: {e:#}\n{}", fleet.logs());
        }
    }
}

async fn channel(grpc_port: u16) -> anyhow::Result<Channel> {
    Ok(
        Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await?,
    )
}

/// An `InvokeService` request: `verb` on `method` with `data` (of `type_url`) under
/// `content_type`.
fn invoke(
    id: &str,
    verb: Verb,
    method: &str,
    (type_url, data): (&str, &[u8]),
    content_type: &str,
) -> InvokeServiceRequest {
    InvokeServiceRequest {
        id: id.into(),
        message: Some(InvokeRequest {
            method: method.into(),
            data: Some(prost_types::Any {
                type_url: type_url.into(),
                value: data.to_vec(),
            }),
            content_type: content_type.into(),
            http_extension: Some(HttpExtension {
                verb: verb as i32,
                querystring: if verb == Verb::Post {
                    "q=1".into()
                } else {
                    String::new()
                },
            }),
        }),
    }
}

fn metadata<'a>(md: &'a tonic::metadata::MetadataMap, key: &str) -> Option<&'a str> {
    md.get(key).and_then(|v| v.to_str().ok())
}

async fn start(name: &str, mtls: bool, app_protocol: &'static str) -> Option<Fleet> {
    let options = FleetOptions {
        mtls,
        app_protocol,
        ..Default::default()
    };
    fleet(name, options).await.expect("fleet")
}

/// `InvokeService` to an HTTP app: body, content type, verb, path and query reach the app, its
/// headers come back as metadata, it sees the caller's id; its error status becomes `Unknown`
/// with `dapr-http-status`.
async fn invoke_service_reaches_http_apps(name: &str, mtls: bool) {
    let Some(fleet) = start(name, mtls, "http").await else {
        return;
    };
    each_way(&fleet, |way| async move {
        let mut dapr = DaprClient::new(channel(way.grpc_port).await?);
        let response = dapr
            .invoke_service(invoke(
                way.callee,
                Verb::Post,
                "echo/grpc",
                ("", b"over the grpc api"),
                "text/plain",
            ))
            .await
            .context("POST echo/grpc")?;
        let md = response.metadata().clone();
        anyhow::ensure!(metadata(&md, "x-echo-method") == Some("POST"), "{md:?}");
        anyhow::ensure!(
            metadata(&md, "x-echo-path") == Some("/echo/grpc?q=1"),
            "{md:?}"
        );
        let message = response.into_inner();
        anyhow::ensure!(message.content_type == "text/plain", "{message:?}");
        let data = message.data.unwrap_or_default();
        anyhow::ensure!(data.value == b"over the grpc api", "{data:?}");

        let seen = dapr
            .invoke_service(invoke(way.callee, Verb::Get, "inspect/x", ("", b""), ""))
            .await
            .context("GET inspect/x")?
            .into_inner();
        let seen: serde_json::Value = serde_json::from_slice(&seen.data.unwrap_or_default().value)?;
        anyhow::ensure!(
            seen["method"] == "GET" && seen["headers"]["dapr-caller-app-id"] == way.caller,
            "the app saw {seen}"
        );

        let status = dapr
            .invoke_service(invoke(way.callee, Verb::Get, "status/418", ("", b""), ""))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("418 answered OK"))?;
        anyhow::ensure!(status.code() == tonic::Code::Unknown, "{status:?}");
        anyhow::ensure!(
            metadata(status.metadata(), "dapr-http-status") == Some("418"),
            "{status:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_service_reaches_http_apps_both_ways() {
    invoke_service_reaches_http_apps("grpc-api-http-app", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mtls_from_our_sentry_invoke_service_reaches_http_apps_both_ways() {
    invoke_service_reaches_http_apps("mtls-grpc-api-http-app", true).await;
}

/// `InvokeService` to a gRPC app (`OnInvoke`): data with its `type_url`, content type, method and
/// caller id reach the app; typed data comes back typed; the app's status comes back as is.
async fn invoke_service_reaches_grpc_apps(name: &str, mtls: bool) {
    let Some(fleet) = start(name, mtls, "grpc").await else {
        return;
    };
    each_way(&fleet, |way| async move {
        let mut dapr = DaprClient::new(channel(way.grpc_port).await?);
        let response = dapr
            .invoke_service(invoke(
                way.callee,
                Verb::Post,
                "greet",
                ("", b"over grpc"),
                "text/plain",
            ))
            .await?;
        let md = response.metadata().clone();
        anyhow::ensure!(metadata(&md, "x-echo-method") == Some("greet"), "{md:?}");
        anyhow::ensure!(metadata(&md, "x-echo-verb") == Some("POST"), "{md:?}");
        anyhow::ensure!(metadata(&md, "x-echo-querystring") == Some("q=1"), "{md:?}");
        anyhow::ensure!(metadata(&md, "x-caller") == Some(way.caller), "{md:?}");
        let message = response.into_inner();
        anyhow::ensure!(message.content_type == "text/plain", "{message:?}");
        let data = message.data.unwrap_or_default();
        anyhow::ensure!(
            data.value == b"over grpc" && data.type_url.is_empty(),
            "{data:?}"
        );

        // Typed data keeps its type_url to the app and back.
        let data = dapr
            .invoke_service(invoke(
                way.callee,
                Verb::Post,
                "greet",
                (STRING_VALUE, b"\n\x04ping"),
                "",
            ))
            .await?
            .into_inner()
            .data
            .unwrap_or_default();
        anyhow::ensure!(
            data.type_url == STRING_VALUE && data.value == b"\n\x04ping",
            "{data:?}"
        );
        // The app answers a StringValue holding the type_url it was given.
        let data = dapr
            .invoke_service(invoke(
                way.callee,
                Verb::Post,
                "typed",
                (STRING_VALUE, b"\n\x04ping"),
                "",
            ))
            .await?
            .into_inner()
            .data
            .unwrap_or_default();
        anyhow::ensure!(data.type_url == STRING_VALUE, "{data:?}");
        let mut expected = vec![0x0a, STRING_VALUE.len() as u8];
        expected.extend_from_slice(STRING_VALUE.as_bytes());
        anyhow::ensure!(data.value == expected, "{data:?}");

        let status = dapr
            .invoke_service(invoke(way.callee, Verb::Post, "fail/7", ("", b""), ""))
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("fail/7 answered OK"))?;
        anyhow::ensure!(
            status.code() == tonic::Code::PermissionDenied
                && status.message() == "echo-app failed fail/7 on purpose",
            "{status:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_service_reaches_grpc_apps_with_typed_data_both_ways() {
    invoke_service_reaches_grpc_apps("grpc-api-grpc-app", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mtls_from_our_sentry_invoke_service_reaches_grpc_apps_both_ways() {
    invoke_service_reaches_grpc_apps("mtls-grpc-api-grpc-app", true).await;
}

fn note(text: &str) -> Note {
    Note {
        text: text.into(),
        ..Default::default()
    }
}

fn to<T>(app: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("dapr-app-id", app.parse()?);
    Ok(request)
}

/// `e2e.echo.v1.Echo` through the caller's gRPC API port, proxied by `dapr-app-id` to the other
/// implementation: unary (with the identities both stamp, and an app status passing through),
/// a 50-item server stream, and a bidirectional ping-pong where each answer arrives before the
/// next note is sent.
async fn grpc_proxying(name: &str, mtls: bool) {
    let Some(fleet) = start(name, mtls, "grpc").await else {
        return;
    };
    each_way(&fleet, |way| async move {
        let mut echo = EchoClient::new(channel(way.grpc_port).await?);
        let response = echo.unary(to(way.callee, note("ping"))?).await?;
        let md = response.metadata().clone();
        anyhow::ensure!(metadata(&md, "x-caller") == Some(way.caller), "{md:?}");
        anyhow::ensure!(metadata(&md, "x-callee") == Some(way.callee), "{md:?}");
        anyhow::ensure!(response.into_inner().text == "ping");

        let status = echo
            .unary(to(
                way.callee,
                Note {
                    fail_with: tonic::Code::FailedPrecondition as i32,
                    ..note("x")
                },
            )?)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("the failing call answered OK"))?;
        anyhow::ensure!(
            status.code() == tonic::Code::FailedPrecondition
                && status.message() == "echo-app failed with 9 on purpose",
            "{status:?}"
        );

        let mut counted = echo.count(to(way.callee, note("50"))?).await?.into_inner();
        let mut seen = Vec::new();
        while let Some(n) = counted.message().await? {
            seen.push(n.text);
        }
        let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        anyhow::ensure!(seen == expected, "the stream gave {seen:?}");

        let (tx, rx) = tokio::sync::mpsc::channel::<Note>(1);
        tx.send(note("first")).await?;
        let response = echo
            .chat(to(
                way.callee,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )?)
            .await?;
        let md = response.metadata().clone();
        anyhow::ensure!(metadata(&md, "x-caller") == Some(way.caller), "{md:?}");
        let mut answers = response.into_inner();
        for text in ["first", "second", "third"] {
            if text != "first" {
                tx.send(note(text)).await?;
            }
            let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
                .await??
                .ok_or_else(|| anyhow::anyhow!("the chat ended before {text:?}"))?;
            anyhow::ensure!(answer.text == text, "{answer:?} for {text:?}");
        }
        drop(tx);
        let end = tokio::time::timeout(Duration::from_secs(10), answers.message()).await??;
        anyhow::ensure!(end.is_none(), "{end:?} after the last note");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_are_proxied_by_app_id_both_ways_with_streams() {
    grpc_proxying("grpc-proxy", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mtls_from_our_sentry_grpc_calls_are_proxied_by_app_id_both_ways() {
    grpc_proxying("mtls-grpc-proxy", true).await;
}

/// Sends `body` to `url` with `method` in 64 KiB chunks and no length (chunked on the wire), and
/// reads the whole answer; bounded to 60 s.
async fn send_streamed(method: Method, url: &str, body: &Bytes) -> anyhow::Result<(u16, Bytes)> {
    type Chunks = futures::stream::Iter<
        std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
    >;
    let client: Client<HttpConnector, StreamBody<Chunks>> =
        Client::builder(TokioExecutor::new()).build_http();
    let chunks: Vec<_> = (0..body.len())
        .step_by(64 * 1024)
        .map(|at| {
            Ok(hyper::body::Frame::data(
                body.slice(at..(at + 64 * 1024).min(body.len())),
            ))
        })
        .collect();
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/octet-stream")
        .body(StreamBody::new(futures::stream::iter(chunks)))?;
    tokio::time::timeout(Duration::from_secs(60), async {
        let (parts, answer) = client.request(request).await?.into_parts();
        anyhow::Ok((parts.status.as_u16(), answer.collect().await?.to_bytes()))
    })
    .await
    .with_context(|| format!("{url} did not answer within 60s"))?
}

/// 10 MiB (not a multiple of any chunk size), streamed in with no length, echoed by the other
/// side's HTTP app byte for byte, both ways; the app sees the whole body and the caller's id.
async fn ten_mib_both_ways(name: &str, mtls: bool) {
    // Both default to 4 MiB.
    let options = FleetOptions {
        mtls,
        extra_args: vec!["--max-body-size".into(), "16Mi".into()],
        ..Default::default()
    };
    let Some(fleet) = fleet(name, options).await.expect("fleet") else {
        return;
    };
    let body: Bytes = (0..10 * 1024 * 1024 + 13)
        .map(|i: u32| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let body = &body;
    each_way(&fleet, |way| async move {
        let url = way.url(&format!("/v1.0/invoke/{}/method/big", way.callee));
        let (status, answer) = send_streamed(Method::PUT, &url, body).await?;
        anyhow::ensure!(status == 200, "status {status}");
        anyhow::ensure!(
            answer == *body,
            "{} bytes back, first difference at {:?}",
            answer.len(),
            answer.iter().zip(body.iter()).position(|(a, b)| a != b)
        );
        let url = way.url(&format!("/v1.0/invoke/{}/method/inspect/big", way.callee));
        let (status, answer) = send_streamed(Method::POST, &url, body).await?;
        anyhow::ensure!(status == 200, "status {status}");
        let seen: serde_json::Value = serde_json::from_slice(&answer)?;
        anyhow::ensure!(
            seen["body_len"] == body.len() && seen["headers"]["dapr-caller-app-id"] == way.caller,
            "the app saw {seen}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_10_mib_body_crosses_both_ways_byte_for_byte() {
    ten_mib_both_ways("10mib", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mtls_a_streamed_10_mib_body_crosses_both_ways_byte_for_byte() {
    ten_mib_both_ways("mtls-10mib", true).await;
}

/// The callee's `accessControl`: deny by default, allow `allowed` (trust domain `public`,
/// namespace `default`), with no operations listed.
fn access_control(allowed: &str) -> String {
    format!(
        "  accessControl:\n    defaultAction: deny\n    trustDomain: public\n    policies:\n    - appId: {allowed}\n      defaultAction: allow\n      trustDomain: public\n      namespace: default\n"
    )
}

/// What one caller gets from the callee over each path.
#[derive(Debug)]
struct Outcomes {
    /// The HTTP API's status.
    http: u16,
    /// `InvokeService`'s code and message.
    invoked: (tonic::Code, String),
    /// A proxied unary call's code.
    proxied: tonic::Code,
}

async fn outcomes(http_port: u16, grpc_port: u16, callee: &str) -> anyhow::Result<Outcomes> {
    let reply = HttpClient::new()
        .send(
            Method::POST,
            &format!("http://127.0.0.1:{http_port}/v1.0/invoke/{callee}/method/greet"),
            &[("content-type", "text/plain")],
            Bytes::from_static(b"hello"),
        )
        .await?;
    let channel = channel(grpc_port).await?;
    let invoked = DaprClient::new(channel.clone())
        .invoke_service(invoke(
            callee,
            Verb::Post,
            "greet",
            ("", b"hi"),
            "text/plain",
        ))
        .await
        .err()
        .map_or((tonic::Code::Ok, String::new()), |s| {
            (s.code(), s.message().to_owned())
        });
    let proxied = EchoClient::new(channel)
        .unary(to(callee, note("hi"))?)
        .await
        .err()
        .map_or(tonic::Code::Ok, |s| s.code());
    Ok(Outcomes {
        http: reply.status,
        invoked,
        proxied,
    })
}

fn all_allowed(o: &Outcomes) -> bool {
    o.http == 200 && o.invoked.0 == tonic::Code::Ok && o.proxied == tonic::Code::Ok
}

/// Ours with `accessControl` allowing `theirs`: upstream's `theirs` passes on every path, and
/// upstream's `intruder` (a certificate from the same sentry) is denied. Upstream's
/// `InvokeService` wraps the denial as `Internal` (docs/upstream-differences.md).
#[tokio::test(flavor = "multi_thread")]
async fn access_control_on_ours_is_evaluated_on_upstreams_certificate() {
    let options = FleetOptions {
        mtls: true,
        app_protocol: "grpc",
        our_spec: access_control("theirs"),
        ..Default::default()
    };
    let Some(fleet) = fleet("mtls-acl-on-ours", options).await.expect("fleet") else {
        return;
    };
    let intruder = fleet.their_caller("intruder").await.expect("intruder");
    let result = async {
        let allowed = outcomes(fleet.upstream.http_port, fleet.upstream.grpc_port, "ours").await?;
        anyhow::ensure!(all_allowed(&allowed), "theirs got {allowed:?}");
        let denied = outcomes(intruder.http_port, intruder.grpc_port, "ours").await?;
        anyhow::ensure!(
            denied.http == 403
                && denied.invoked.0 == tonic::Code::Internal
                && denied
                    .invoked
                    .1
                    .starts_with("failed to invoke, id: ours, err: ")
                && denied.invoked.1.contains("PermissionDenied")
                && denied.proxied == tonic::Code::PermissionDenied,
            "intruder got {denied:?}"
        );
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!(
            "{e:#}\n{}\nintruder log:\n{}",
            fleet.logs(),
            intruder.log_text()
        );
    }
}

/// Upstream's with `accessControl` allowing `ours`: our `ours` passes on every path, and our
/// `intruder` (a certificate from the same sentry) is denied.
#[tokio::test(flavor = "multi_thread")]
async fn access_control_on_upstream_is_evaluated_on_our_certificate() {
    let options = FleetOptions {
        mtls: true,
        app_protocol: "grpc",
        their_spec: access_control("ours"),
        ..Default::default()
    };
    let Some(fleet) = fleet("mtls-acl-on-upstream", options).await.expect("fleet") else {
        return;
    };
    let intruder = fleet.our_caller("intruder").await.expect("intruder");
    let result = async {
        let allowed = outcomes(fleet.ours.http_port, fleet.ours.grpc_port, "theirs").await?;
        anyhow::ensure!(all_allowed(&allowed), "ours got {allowed:?}");
        let denied = outcomes(intruder.http_port, intruder.grpc_port, "theirs").await?;
        anyhow::ensure!(
            denied.http == 403
                && denied.invoked.0 == tonic::Code::PermissionDenied
                && denied
                    .invoked
                    .1
                    .contains("access control policy has denied access")
                && denied.proxied == tonic::Code::PermissionDenied,
            "intruder got {denied:?}"
        );
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!(
            "{e:#}\n{}\nintruder log:\n{}",
            fleet.logs(),
            intruder.log_text()
        );
    }
}
