//! What crosses the sidecar-to-sidecar hop from our caller, seen by a peer that records it, and
//! how our caller reads a peer that answers as upstream's daprd does.
//!
//! The peer is an in-process tonic server (as in legacy_peer.rs) registered in the sqlite
//! name-resolution file like a sidecar, so the test sees the exact `InternalInvokeRequest`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dapr_proto::common::v1::{InvokeRequest, InvokeResponse, StreamPayload};
use dapr_proto::internals::v1::service_invocation_server::{
    ServiceInvocation, ServiceInvocationServer,
};
use dapr_proto::internals::v1::{
    InternalInvokeRequest, InternalInvokeRequestStream, InternalInvokeResponse,
    InternalInvokeResponseStream, ListStringValue, Status,
};
use dapr_proto::runtime::v1::InvokeServiceRequest;
use dapr_proto::runtime::v1::dapr_client::DaprClient;
use e2e::sidecar::{
    HttpClient, Sidecar, SidecarOptions, register_static_peer, scratch_dir, sqlite_config,
};
use http::Method;
use tokio::sync::mpsc;

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// Hands every request head it gets to the test; answers `typed` with typed data as upstream's
/// callee streams it (the `type_url` in the head message, the bytes in the payloads), `http` as
/// upstream's callee answers for an HTTP app (its header names Go-canonical), anything else with
/// an empty 200.
struct RecordingPeer {
    seen: mpsc::UnboundedSender<InternalInvokeRequest>,
}

fn answer(method: &str) -> (InternalInvokeResponse, Bytes) {
    let typed = method == "typed";
    let mut headers = std::collections::BTreeMap::new();
    if method == "http" {
        for (name, value) in [
            ("Content-Type", "text/plain"),
            ("Content-Length", "2"),
            ("X-App-Header", "1"),
        ] {
            headers.insert(
                name.to_owned(),
                ListStringValue {
                    values: vec![value.to_owned()],
                },
            );
        }
    }
    let head = InternalInvokeResponse {
        status: Some(Status {
            code: if typed { 0 } else { 200 },
            message: String::new(),
            details: Vec::new(),
        }),
        headers,
        trailers: Default::default(),
        message: Some(InvokeResponse {
            data: typed.then(|| prost_types::Any {
                type_url: STRING_VALUE.into(),
                value: Vec::new(),
            }),
            content_type: if method == "http" {
                "text/plain".into()
            } else {
                String::new()
            },
        }),
    };
    let body = match method {
        // StringValue "pong".
        "typed" => Bytes::from_static(b"\n\x04pong"),
        "http" => Bytes::from_static(b"ok"),
        _ => Bytes::new(),
    };
    (head, body)
}

type ResponseStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<InternalInvokeResponseStream, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl ServiceInvocation for RecordingPeer {
    async fn call_local(
        &self,
        request: tonic::Request<InternalInvokeRequest>,
    ) -> Result<tonic::Response<InternalInvokeResponse>, tonic::Status> {
        let request = request.into_inner();
        let method = request
            .message
            .as_ref()
            .map(|m| m.method.clone())
            .unwrap_or_default();
        let _ = self.seen.send(request);
        let (mut head, body) = answer(&method);
        if let Some(message) = head.message.as_mut()
            && !body.is_empty()
        {
            message.data.get_or_insert_default().value = body.to_vec();
        }
        Ok(tonic::Response::new(head))
    }

    type CallLocalStreamStream = ResponseStream;

    async fn call_local_stream(
        &self,
        request: tonic::Request<tonic::Streaming<InternalInvokeRequestStream>>,
    ) -> Result<tonic::Response<Self::CallLocalStreamStream>, tonic::Status> {
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .and_then(|m| m.request)
            .ok_or_else(|| tonic::Status::invalid_argument("no request head"))?;
        let drain = async { while let Ok(Some(_)) = incoming.message().await {} };
        tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("the request body did not end"))?;
        let method = first
            .message
            .as_ref()
            .map(|m| m.method.clone())
            .unwrap_or_default();
        let _ = self.seen.send(first);
        let (head, body) = answer(&method);
        let mut messages = vec![Ok(InternalInvokeResponseStream {
            response: Some(head),
            payload: None,
        })];
        if !body.is_empty() {
            messages.push(Ok(InternalInvokeResponseStream {
                response: None,
                payload: Some(StreamPayload { data: body, seq: 0 }),
            }));
        }
        Ok(tonic::Response::new(Box::pin(futures::stream::iter(
            messages,
        ))))
    }
}

/// Serves a recording peer on loopback, registered as `app_id` in the sqlite file of `dir`.
async fn recording_peer(
    dir: &std::path::Path,
    app_id: &str,
) -> mpsc::UnboundedReceiver<InternalInvokeRequest> {
    let (seen, heads) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ServiceInvocationServer::new(RecordingPeer { seen }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    register_static_peer(dir, app_id, addr).expect("register");
    heads
}

async fn caller(dir: &std::path::Path) -> Sidecar {
    Sidecar::start(
        "checkout",
        dir,
        SidecarOptions {
            config: Some(sqlite_config(dir, "caller", "").expect("config")),
            ..Default::default()
        },
    )
    .await
    .expect("caller starts")
}

async fn next_head(
    heads: &mut mpsc::UnboundedReceiver<InternalInvokeRequest>,
) -> InternalInvokeRequest {
    tokio::time::timeout(Duration::from_secs(10), heads.recv())
        .await
        .expect("the peer got a request within 10s")
        .expect("the peer is serving")
}

#[tokio::test(flavor = "multi_thread")]
async fn http_api_headers_reach_the_peer_under_go_canonical_names_and_daprs_own_in_lower_case() {
    let dir = scratch_dir("peer-wire-names").expect("scratch dir");
    let mut heads = recording_peer(&dir, "peer").await;
    let caller = caller(&dir).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = HttpClient::new()
        .send(
            Method::POST,
            &caller.url("/v1.0/invoke/peer/method/names"),
            &[
                ("content-type", "text/plain"),
                ("accept", "*/*"),
                ("x-custom-header", "a"),
                ("X-UPPER-case", "b"),
                ("traceparent", traceparent),
                ("dapr-caller-app-id", "spoofed"),
            ],
            Bytes::from_static(b"hello"),
        )
        .await
        .expect("answers");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let head = next_head(&mut heads).await;
    let names: Vec<&str> = head.metadata.keys().map(String::as_str).collect();
    // As Go's http.Header names them (textproto.CanonicalMIMEHeaderKey).
    for name in [
        "Accept",
        "Content-Length",
        "Content-Type",
        "X-Custom-Header",
        "X-Upper-Case",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    for name in [
        "accept",
        "content-length",
        "content-type",
        "x-custom-header",
        "Traceparent",
        "Dapr-Caller-App-Id",
    ] {
        assert!(!names.contains(&name), "{name} in {names:?}");
    }
    assert_eq!(head.metadata["Content-Length"].values, vec!["5"]);
    assert_eq!(head.metadata["X-Custom-Header"].values, vec!["a"]);
    // Dapr's own entries keep upstream's lower-case names, and the caller's identity is its own.
    assert_eq!(head.metadata["dapr-caller-app-id"].values, vec!["checkout"]);
    for name in [
        "dapr-caller-namespace",
        "dapr-callee-app-id",
        "destination-app-id",
        "traceparent",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let trace = &head.metadata["traceparent"].values;
    assert_eq!(trace.len(), 1, "{trace:?}");
    assert!(
        trace[0].contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{trace:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_data_streamed_by_a_peer_reaches_an_http_caller_as_protobuf() {
    let dir = scratch_dir("peer-wire-typed").expect("scratch dir");
    let mut heads = recording_peer(&dir, "peer").await;
    let caller = caller(&dir).await;
    let reply = HttpClient::new()
        .send(
            Method::POST,
            &caller.url("/v1.0/invoke/peer/method/typed"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("answers");
    let _ = next_head(&mut heads).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/x-protobuf");
    assert_eq!(&reply.body[..], b"\n\x04pong");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peers_go_canonical_response_headers_reach_either_api_under_their_usual_names() {
    let dir = scratch_dir("peer-wire-answer").expect("scratch dir");
    let mut heads = recording_peer(&dir, "peer").await;
    let caller = caller(&dir).await;
    let reply = HttpClient::new()
        .send(
            Method::POST,
            &caller.url("/v1.0/invoke/peer/method/http"),
            &[],
            Bytes::new(),
        )
        .await
        .expect("answers");
    let _ = next_head(&mut heads).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(&reply.body[..], b"ok");
    assert_eq!(reply.headers["x-app-header"], "1");
    assert_eq!(reply.headers["content-type"], "text/plain");
    assert_eq!(reply.headers.get_all("content-length").iter().count(), 1);

    // Through the gRPC API the permanent ones are `dapr-<name>`, as upstream renames them, and
    // never the response's own `content-type` or `content-length`.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", caller.grpc_port))
            .expect("uri")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connects");
    let response = DaprClient::new(channel)
        .invoke_service(InvokeServiceRequest {
            id: "peer".into(),
            message: Some(InvokeRequest {
                method: "http".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("InvokeService");
    let md = response.metadata();
    let get = |name| md.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(get("dapr-content-type"), Some("text/plain"));
    assert_eq!(get("dapr-content-length"), Some("2"));
    assert_eq!(get("x-app-header"), Some("1"));
    let message = response.into_inner();
    assert_eq!(message.data.expect("data").value, b"ok");
    assert_eq!(message.content_type, "text/plain");
}
