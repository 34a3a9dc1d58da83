//! A peer sidecar that does not implement `CallLocalStream` (older runtimes): daprd falls back
//! to unary `CallLocal`, replaying the request body it kept, and remembers the peer.
//!
//! The peer is an in-process tonic server rather than a daprd process, because no build of our
//! daprd lacks streaming; it is registered in the sqlite name-resolution file like a sidecar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dapr_proto::common::v1::InvokeResponse;
use dapr_proto::internals::v1::service_invocation_server::{
    ServiceInvocation, ServiceInvocationServer,
};
use dapr_proto::internals::v1::{
    InternalInvokeRequest, InternalInvokeRequestStream, InternalInvokeResponse,
    InternalInvokeResponseStream, ListStringValue, Status,
};
use e2e::sidecar::{
    HttpClient, Sidecar, SidecarOptions, register_static_peer, scratch_dir, sqlite_config,
};
use http::Method;

/// Counts the calls of each kind it received.
#[derive(Default)]
struct Counts {
    unary: AtomicUsize,
    streams: AtomicUsize,
}

struct LegacyPeer {
    counts: Arc<Counts>,
    /// Read the whole request stream before answering `Unimplemented` (as a proxy in front of
    /// an old runtime might), so the caller has sent every byte before it learns to fall back.
    drain_first: bool,
}

type ResponseStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<InternalInvokeResponseStream, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl ServiceInvocation for LegacyPeer {
    async fn call_local(
        &self,
        request: tonic::Request<InternalInvokeRequest>,
    ) -> Result<tonic::Response<InternalInvokeResponse>, tonic::Status> {
        self.counts.unary.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        let message = request.message.unwrap_or_default();
        let mut headers = std::collections::BTreeMap::new();
        headers.insert(
            "x-legacy-method".to_owned(),
            ListStringValue {
                values: vec![message.method.clone()],
            },
        );
        Ok(tonic::Response::new(InternalInvokeResponse {
            status: Some(Status {
                code: 200,
                message: String::new(),
                details: Vec::new(),
            }),
            headers,
            trailers: Default::default(),
            message: Some(InvokeResponse {
                data: message.data,
                content_type: message.content_type,
            }),
        }))
    }

    type CallLocalStreamStream = ResponseStream;

    async fn call_local_stream(
        &self,
        request: tonic::Request<tonic::Streaming<InternalInvokeRequestStream>>,
    ) -> Result<tonic::Response<Self::CallLocalStreamStream>, tonic::Status> {
        self.counts.streams.fetch_add(1, Ordering::SeqCst);
        if self.drain_first {
            let mut incoming = request.into_inner();
            let drain = async { while let Ok(Some(_)) = incoming.message().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
        }
        Err(tonic::Status::unimplemented(
            "CallLocalStream is not served here",
        ))
    }
}

/// Serves a legacy peer on loopback and registers it as `app_id` in the sqlite file.
async fn legacy_peer(dir: &std::path::Path, app_id: &str, drain_first: bool) -> Arc<Counts> {
    let peer = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let service = ServiceInvocationServer::new(LegacyPeer {
        counts: Arc::clone(&peer),
        drain_first,
    })
    .max_decoding_message_size(usize::MAX)
    .max_encoding_message_size(usize::MAX);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    register_static_peer(dir, app_id, addr).expect("register");
    peer
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_without_streaming_gets_unary_calls_with_the_body_replayed() {
    let dir = scratch_dir("legacy-peer").expect("scratch dir");
    let old = legacy_peer(&dir, "old", false).await;
    let older = legacy_peer(&dir, "older", true).await;
    let caller = Sidecar::start(
        "checkout",
        &dir,
        SidecarOptions {
            config: Some(sqlite_config(&dir, "caller", "").expect("config")),
            ..Default::default()
        },
    )
    .await
    .expect("caller starts");
    let client = HttpClient::new();
    let post = |id: &str, body: Bytes| {
        let url = caller.url(&format!("/v1.0/invoke/{id}/method/echo"));
        let client = client.clone();
        async move {
            client
                .send(
                    Method::POST,
                    &url,
                    &[("content-type", "application/octet-stream")],
                    body,
                )
                .await
                .expect("answers")
        }
    };

    let small = Bytes::from(vec![7u8; 100 * 1024]);
    let reply = post("old", small.clone()).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body, small, "the body was replayed whole");
    assert_eq!(reply.headers["x-legacy-method"], "echo");
    assert_eq!(
        (
            old.streams.load(Ordering::SeqCst),
            old.unary.load(Ordering::SeqCst)
        ),
        (1, 1)
    );

    // Remembered: the next call, even with a body over the replay limit, goes unary at once.
    let big = Bytes::from(vec![9u8; 3 * 1024 * 1024]);
    let reply = post("old", big.clone()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, big);
    assert_eq!(
        (
            old.streams.load(Ordering::SeqCst),
            old.unary.load(Ordering::SeqCst)
        ),
        (1, 2)
    );

    // A first call to an unknown legacy peer that read a body over the replay limit before
    // refusing fails clearly. (Had it refused early, the unread rest would be replayed.)
    let reply = tokio::time::timeout(Duration::from_secs(30), post("older", big))
        .await
        .expect("answers within 30s");
    assert_eq!(reply.status, 500);
    let body = reply.json().expect("error JSON");
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not implement CallLocalStream")),
        "{body}"
    );
    assert_eq!(older.unary.load(Ordering::SeqCst), 0);
}
