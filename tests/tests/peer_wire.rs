//! What crosses the sidecar-to-sidecar hop from our caller, seen by a peer that records it, and
//! how our caller reads a peer that answers as upstream's daprd does.
//!
//! The peer is an in-process tonic server (as in legacy_peer.rs) registered in the sqlite
//! name-resolution file like a sidecar, so the test sees the exact `InternalInvokeRequest`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dapr_proto::common::v1::{InvokeResponse, StreamPayload};
use dapr_proto::internals::v1::service_invocation_server::{
    ServiceInvocation, ServiceInvocationServer,
};
use dapr_proto::internals::v1::{
    InternalInvokeRequest, InternalInvokeRequestStream, InternalInvokeResponse,
    InternalInvokeResponseStream, Status,
};
use e2e::sidecar::{HttpClient, Sidecar, SidecarOptions, scratch_dir, sqlite_config};
use http::Method;
use tokio::sync::mpsc;

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// Hands every request head it gets to the test; answers `typed` with typed data as upstream's
/// callee streams it (the `type_url` in the head message, the bytes in the payloads), anything
/// else with an empty 200.
struct RecordingPeer {
    seen: mpsc::UnboundedSender<InternalInvokeRequest>,
}

fn answer(method: &str) -> (InternalInvokeResponse, Bytes) {
    let typed = method == "typed";
    let head = InternalInvokeResponse {
        status: Some(Status {
            code: if typed { 0 } else { 200 },
            message: String::new(),
            details: Vec::new(),
        }),
        headers: Default::default(),
        trailers: Default::default(),
        message: Some(InvokeResponse {
            data: typed.then(|| prost_types::Any {
                type_url: STRING_VALUE.into(),
                value: Vec::new(),
            }),
            content_type: String::new(),
        }),
    };
    // StringValue "pong".
    let body = if typed {
        Bytes::from_static(b"\n\x04pong")
    } else {
        Bytes::new()
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
    let db = rusqlite::Connection::open(dir.join("nr.db")).expect("open sqlite");
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS hosts (registration_id TEXT PRIMARY KEY, app_id TEXT NOT NULL,
         namespace TEXT NOT NULL, address TEXT NOT NULL, updated_at INTEGER NOT NULL);",
    )
    .expect("schema");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    db.execute(
        "INSERT INTO hosts VALUES (?1, ?2, 'default', ?3, ?4)",
        rusqlite::params![format!("recording-{app_id}"), app_id, addr.to_string(), now],
    )
    .expect("register");
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
