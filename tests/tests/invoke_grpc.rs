//! gRPC apps through two real `daprd` processes on loopback (sqlite name resolution):
//! `AppCallback/OnInvoke` behind the HTTP and gRPC APIs, and transparent proxying of a service
//! that is not Dapr's (`e2e.echo.v1.Echo`, unary, server-streaming and bidirectional) by
//! `dapr-app-id` metadata.

use std::time::Duration;

use bytes::Bytes;
use dapr_proto::common::v1::{HttpExtension, InvokeRequest, http_extension::Verb};
use dapr_proto::runtime::v1::InvokeServiceRequest;
use dapr_proto::runtime::v1::dapr_client::DaprClient;
use e2e::echo::Note;
use e2e::echo::echo_client::EchoClient;
use e2e::sidecar::{
    HttpClient, Sidecar, SidecarOptions, scratch_dir, sqlite_config, start_pair, start_sqlite_pair,
};
use e2e::{EchoApp, echo_app};
use http::Method;
use tonic::transport::Channel;

struct Grpc {
    _app: EchoApp,
    caller: Sidecar,
    callee: Sidecar,
    client: HttpClient,
}

/// `orders` (a gRPC echo-app behind daprd with `--app-protocol grpc`) and `checkout` (a daprd
/// without an app) sharing a sqlite name-resolution file.
async fn start(name: &str, callee_spec: &str) -> Grpc {
    let dir = scratch_dir(name).expect("scratch dir");
    let app = echo_app("grpc").await.expect("echo-app starts");
    let (callee, caller) = start_sqlite_pair(
        &dir,
        app.addr.port(),
        callee_spec,
        &["--app-protocol", "grpc"],
    )
    .await
    .expect("sidecars start");
    Grpc {
        _app: app,
        caller,
        callee,
        client: HttpClient::new(),
    }
}

async fn channel(sidecar: &Sidecar) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{}", sidecar.grpc_port))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connects to the gRPC API")
}

fn to(app: &'static str, mut request: tonic::Request<Note>) -> tonic::Request<Note> {
    request
        .metadata_mut()
        .insert("dapr-app-id", app.parse().expect("ascii"));
    request
}

fn note(text: &str) -> Note {
    Note {
        text: text.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_grpc_apis_reach_a_grpc_app_through_on_invoke() {
    let g = start("grpc-oninvoke", "").await;

    let reply = g
        .client
        .send(
            Method::PUT,
            &g.caller.url("/v1.0/invoke/orders/method/items/7?color=red"),
            &[("content-type", "text/plain")],
            Bytes::from_static(b"hello grpc app"),
        )
        .await
        .expect("invoke");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(&reply.body[..], b"hello grpc app");
    assert_eq!(reply.headers["x-echo-method"], "items/7");
    assert_eq!(reply.headers["x-echo-verb"], "PUT");
    assert_eq!(reply.headers["x-echo-querystring"], "color=red");
    assert_eq!(reply.headers["x-caller"], "checkout");
    assert_eq!(reply.headers["content-type"], "text/plain");

    // The app's gRPC status becomes the HTTP status of the upstream map, with the status as JSON.
    let reply = g
        .client
        .get(&g.caller.url("/v1.0/invoke/orders/method/fail/5"))
        .await
        .expect("invoke");
    assert_eq!(reply.status, 404, "NotFound maps to 404: {:?}", reply.body);
    let body = reply.json().expect("json status");
    assert_eq!(body["code"], 5);
    assert_eq!(body["message"], "echo-app failed fail/5 on purpose");

    let mut dapr = DaprClient::new(channel(&g.caller).await);
    let response = dapr
        .invoke_service(InvokeServiceRequest {
            id: "orders".into(),
            message: Some(InvokeRequest {
                method: "greet".into(),
                data: Some(prost_types::Any {
                    type_url: String::new(),
                    value: b"over grpc".to_vec(),
                }),
                content_type: "text/plain".into(),
                http_extension: Some(HttpExtension {
                    verb: Verb::Post as i32,
                    querystring: String::new(),
                }),
            }),
        })
        .await
        .expect("InvokeService");
    assert_eq!(
        response.metadata().get("x-echo-method").expect("method"),
        "greet"
    );
    let message = response.into_inner();
    assert_eq!(message.data.expect("data").value, b"over grpc");
    assert_eq!(message.content_type, "text/plain");

    let status = dapr
        .invoke_service(InvokeServiceRequest {
            id: "orders".into(),
            message: Some(InvokeRequest {
                method: "fail/7".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("the app fails");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "echo-app failed fail/7 on purpose");
}

/// An `InvokeService` request for `method` with `data` under `content_type`.
fn invoke(id: &str, method: &str, data: &[u8], content_type: &str) -> InvokeServiceRequest {
    InvokeServiceRequest {
        id: id.into(),
        message: Some(InvokeRequest {
            method: method.into(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: data.to_vec(),
            }),
            content_type: content_type.into(),
            http_extension: Some(HttpExtension {
                verb: Verb::Post as i32,
                querystring: String::new(),
            }),
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_apps_reply_without_a_content_type_has_none_through_either_api() {
    let g = start("grpc-no-content-type", "").await;
    // The app's own `content-type: application/grpc` belongs to its transport, not its data.
    // (An empty body: upstream's Go server would sniff a type for a non-empty one.)
    let reply = g
        .client
        .send(
            Method::POST,
            &g.caller.url("/v1.0/invoke/orders/method/plain"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("invoke");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.headers["x-echo-method"], "plain");
    assert!(
        reply.headers.get("content-type").is_none(),
        "{:?}",
        reply.headers
    );

    let mut dapr = DaprClient::new(channel(&g.caller).await);
    let message = dapr
        .invoke_service(invoke("orders", "plain", b"untyped", ""))
        .await
        .expect("InvokeService")
        .into_inner();
    assert_eq!(message.data.expect("data").value, b"untyped");
    assert_eq!(message.content_type, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_caller_and_a_grpc_app_exchange_typed_data_with_its_type_url() {
    let g = start("grpc-typed", "").await;
    let mut dapr = DaprClient::new(channel(&g.caller).await);
    let mut request = invoke("orders", "typed", b"\n\x04ping", "");
    if let Some(data) = request.message.as_mut().and_then(|m| m.data.as_mut()) {
        data.type_url = "type.googleapis.com/google.protobuf.StringValue".into();
    }
    let message = dapr
        .invoke_service(request)
        .await
        .expect("InvokeService")
        .into_inner();
    let data = message.data.expect("data");
    assert_eq!(
        data.type_url,
        "type.googleapis.com/google.protobuf.StringValue"
    );
    // A StringValue (field 1, one length byte) holding the type_url the app was given.
    assert_eq!(
        data.value[..2],
        [0x0a, 47],
        "{:?}",
        String::from_utf8_lossy(&data.value)
    );
    assert_eq!(
        &data.value[2..],
        b"type.googleapis.com/google.protobuf.StringValue"
    );

    // Through the HTTP API typed data is `application/x-protobuf`, as upstream answers it.
    let reply = g
        .client
        .send(
            Method::POST,
            &g.caller.url("/v1.0/invoke/orders/method/typed"),
            &[("content-type", "text/plain")],
            Bytes::from_static(b"raw"),
        )
        .await
        .expect("invoke");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/x-protobuf");
    // The app was given no type_url: an empty StringValue, which encodes to nothing.
    assert!(reply.body.is_empty(), "{:?}", reply.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invoke_service_message_over_max_body_size_is_refused_in_grpc_gos_words() {
    let g = start("grpc-over-limit", "").await;
    let mut dapr = DaprClient::new(channel(&g.caller).await).max_decoding_message_size(8 << 20);
    let within = Duration::from_secs(30);
    // Under the caller's default 4 MiB: the invocation travels in place and comes back whole.
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let answer = tokio::time::timeout(
        within,
        dapr.invoke_service(invoke("orders", "greet", &data, "application/octet-stream")),
    )
    .await
    .expect("answers within 30s")
    .expect("3 MiB is under the limit")
    .into_inner();
    assert!(
        answer.data.expect("data").value == data,
        "echoed byte for byte"
    );
    // Over it: refused at the message's prefix with upstream's (grpc-go's) code and words.
    let status = tokio::time::timeout(
        within,
        dapr.invoke_service(invoke("orders", "greet", &vec![7; 5 << 20], "")),
    )
    .await
    .expect("answers within 30s")
    .expect_err("5 MiB is over the limit");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("grpc: received message larger than max ("),
        "{}",
        status.message()
    );
}

/// A gRPC API call that outlives its `grpc-timeout` ends with `DeadlineExceeded`, as grpc-go's
/// server (upstream's API) ends it at its deadline: `InvokeService`, served ahead of the
/// router, and a call proxied by `dapr-app-id`. Each request's message never comes, so
/// nothing else could end the call (docs/limits.md).
#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_api_call_that_outlives_its_grpc_timeout_ends_with_deadline_exceeded() {
    let g = start("grpc-deadline", "").await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", g.caller.grpc_port))
        .await
        .expect("connect to the gRPC API");
    let mut send = e2e::raw_grpc::handshake(tcp).await;
    let calls = [
        (
            "InvokeService",
            "http://localhost/dapr.proto.runtime.v1.Dapr/InvokeService",
        ),
        ("a proxied call", "http://localhost/e2e.echo.v1.Echo/Unary"),
    ];
    for (what, uri) in calls {
        let (open, rest) = tokio::sync::mpsc::channel(1);
        let started = std::time::Instant::now();
        let headers = [("grpc-timeout", "300m"), ("dapr-app-id", "orders")];
        let status = e2e::raw_grpc::call(&mut send, uri, &headers, Bytes::new(), rest).await;
        assert_eq!(
            status.code(),
            tonic::Code::DeadlineExceeded,
            "{what}: {status:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{what}: ended after {:?}",
            started.elapsed()
        );
        drop(open);
    }
    // The connection still serves a call that keeps to its deadline.
    let mut dapr = DaprClient::new(channel(&g.caller).await);
    let mut request = tonic::Request::new(invoke("orders", "greet", b"in time", ""));
    request.set_timeout(Duration::from_secs(10));
    let answer = dapr
        .invoke_service(request)
        .await
        .expect("answered within its deadline")
        .into_inner();
    assert_eq!(answer.data.expect("data").value, b"in time");
}

/// A gRPC app gets `APP_API_TOKEN` as its `dapr-api-token`, and never the token a client sent
/// as metadata; without `APP_API_TOKEN` it gets none.
#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_app_sees_its_own_api_token_never_the_clients() {
    let dir = scratch_dir("grpc-app-token").expect("scratch dir");
    let app = echo_app("grpc").await.expect("echo-app starts");
    let callee = SidecarOptions {
        app_port: Some(app.addr.port()),
        config: Some(sqlite_config(&dir, "callee", "").expect("config")),
        extra_args: vec!["--app-protocol".into(), "grpc".into()],
        env: vec![("APP_API_TOKEN".into(), "app-secret".into())],
        ..Default::default()
    };
    let caller = SidecarOptions {
        config: Some(sqlite_config(&dir, "caller", "").expect("config")),
        ..Default::default()
    };
    let (_callee, caller) = start_pair(&dir, ("orders", callee), ("checkout", caller))
        .await
        .expect("sidecars start");
    let without_token = start("grpc-no-app-token", "").await;
    for (caller, expected) in [(&caller, Some("app-secret")), (&without_token.caller, None)] {
        let mut dapr = DaprClient::new(channel(caller).await);
        let mut request = tonic::Request::new(invoke("orders", "greet", b"x", ""));
        request
            .metadata_mut()
            .insert("dapr-api-token", "the-clients".parse().expect("ascii"));
        let answer = tokio::time::timeout(Duration::from_secs(20), dapr.invoke_service(request))
            .await
            .expect("answers within 20 s")
            .expect("answered");
        let seen = answer
            .metadata()
            .get("x-echo-token")
            .map(|v| v.to_str().ok());
        assert_eq!(seen, expected.map(Some), "{:?}", answer.metadata());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_service_to_a_target_that_cannot_be_reached_answers_internal_as_upstream() {
    let mut g = start("grpc-unreachable", "").await;
    let mut dapr = DaprClient::new(channel(&g.caller).await);
    let within = Duration::from_secs(20);
    // No sidecar for the id at all.
    let status = tokio::time::timeout(
        within,
        dapr.invoke_service(invoke("ghost", "greet", b"x", "")),
    )
    .await
    .expect("answers within 20s")
    .expect_err("unknown app");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("failed to invoke, id: ghost, err: "),
        "{}",
        status.message()
    );
    // A registered sidecar that is gone.
    g.callee.child.kill().await.expect("kill the callee");
    let status = tokio::time::timeout(
        within,
        dapr.invoke_service(invoke("orders", "greet", b"x", "")),
    )
    .await
    .expect("answers within 20s")
    .expect_err("the callee is gone");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("failed to invoke, id: orders, err: "),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn any_grpc_service_is_proxied_by_dapr_app_id_with_streams_in_both_directions() {
    let g = start("grpc-proxy", "").await;
    let mut echo = EchoClient::new(channel(&g.caller).await);

    let response = echo
        .unary(to("orders", tonic::Request::new(note("ping"))))
        .await
        .expect("proxied unary call");
    assert_eq!(
        response.metadata().get("x-caller").expect("caller"),
        "checkout"
    );
    assert_eq!(
        response.metadata().get("x-callee").expect("callee"),
        "orders"
    );
    assert_eq!(response.into_inner().text, "ping");

    // Namespace-qualified ids work as for invoke.
    let response = echo
        .unary(to("orders.default", tonic::Request::new(note("ns"))))
        .await
        .expect("proxied unary call with app.ns");
    assert_eq!(response.into_inner().text, "ns");

    // The app's own status and message come back untouched.
    let status = echo
        .unary(to(
            "orders",
            tonic::Request::new(Note {
                fail_with: tonic::Code::FailedPrecondition as i32,
                ..note("x")
            }),
        ))
        .await
        .expect_err("the app fails");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "echo-app failed with 9 on purpose");

    // Server streaming.
    let mut counted = echo
        .count(to("orders", tonic::Request::new(note("50"))))
        .await
        .expect("proxied server stream")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(n) = counted.message().await.expect("stream item") {
        seen.push(n.text);
    }
    let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(seen, expected);

    // Bidirectional: each answer arrives before the next note is sent, so nothing is buffered
    // whole on the way.
    let (tx, rx) = tokio::sync::mpsc::channel::<Note>(1);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("dapr-app-id", "orders".parse().expect("ascii"));
    tx.send(note("first")).await.expect("send");
    let response = echo.chat(request).await.expect("proxied bidi stream");
    assert_eq!(
        response.metadata().get("x-caller").expect("caller"),
        "checkout"
    );
    let mut answers = response.into_inner();
    for text in ["first", "second", "third"] {
        if text != "first" {
            tx.send(note(text)).await.expect("send");
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("answer within 10s")
            .expect("stream item")
            .expect("not ended");
        assert_eq!(answer.text, text);
    }
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("stream ends within 10s")
        .expect("clean end");
    assert!(end.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn proxied_calls_without_a_known_target_fail_clearly() {
    let g = start("grpc-proxy-errors", "").await;
    let mut echo = EchoClient::new(channel(&g.caller).await);

    let status = echo
        .unary(tonic::Request::new(note("nobody")))
        .await
        .expect_err("no dapr-app-id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("dapr-app-id"),
        "{}",
        status.message()
    );

    let status = echo
        .unary(to("a.b.c", tonic::Request::new(note("x"))))
        .await
        .expect_err("malformed id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let status = tokio::time::timeout(
        Duration::from_secs(20),
        echo.unary(to("ghost", tonic::Request::new(note("x")))),
    )
    .await
    .expect("an unknown app fails within 20s")
    .expect_err("unknown app");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("ghost"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn access_control_applies_to_proxied_calls_by_full_method_name() {
    let acl = "  accessControl:\n    defaultAction: deny\n    trustDomain: public\n    policies:\n    - appId: checkout\n      defaultAction: deny\n      trustDomain: public\n      namespace: default\n      operations:\n      - name: /e2e.echo.v1.Echo/Unary\n        action: allow\n";
    let g = start("grpc-proxy-acl", acl).await;
    let mut echo = EchoClient::new(channel(&g.caller).await);

    let allowed = echo
        .unary(to("orders", tonic::Request::new(note("allowed"))))
        .await
        .expect("allowed method");
    assert_eq!(allowed.into_inner().text, "allowed");

    let status = echo
        .count(to("orders", tonic::Request::new(note("3"))))
        .await
        .expect_err("denied method");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("/e2e.echo.v1.Echo/Count"),
        "{}",
        status.message()
    );
}
