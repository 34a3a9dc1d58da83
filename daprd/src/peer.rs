//! Calls whose request is in hand (`CallLocal`, and `CallLocalStream` with the head and the whole
//! body in one message), over one pooled HTTP/2 connection per peer driven by `h2` itself.
//!
//! Why not tonic's channel for these: hyper's client sends a request body only once the peer's
//! stream is open, so a call costs three TLS records and three `writev`s (HEADERS, DATA, an empty
//! END_STREAM) and the peer wakes up for each. Here the message is queued with END_STREAM before
//! the connection task runs, which then writes the whole call at once: one record, one `writev`.
//! On loopback each `writev` also pays for the peer's receive path, about a twelfth of the
//! caller's CPU per call. Calls whose body streams keep tonic's channel and its back-pressure.
//!
//! Both sides use it: [`crate::outbound`] for calls to other sidecars, [`crate::inbound`] for
//! `OnInvoke` to a plaintext gRPC app; so it sits beside them, below both.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use prost::Message;
use tokio::sync::OnceCell;

use crate::identity::transport::Connector;
use crate::resolve::Target;
use crate::wire::{Decoded, MessageStream, Received, ReceivedResponse, ReceivedResponseStream};

/// The methods called here.
const CALL_LOCAL_STREAM: &str = "/dapr.proto.internals.v1.ServiceInvocation/CallLocalStream";
const CALL_LOCAL: &str = "/dapr.proto.internals.v1.ServiceInvocation/CallLocal";
/// A gRPC app's `AppCallback/OnInvoke`, which the callee calls for every invocation of it.
pub const ON_INVOKE: &str = "/dapr.proto.runtime.v1.AppCallback/OnInvoke";
/// How long dialling (TCP, TLS, HTTP/2 preface) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection is pinged this often and dropped if the pong takes longer than
/// [`PING_TIMEOUT`], so a peer that vanished without a FIN fails fast instead of at the
/// response timeout (the same settings as the channel for streamed calls).
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive windows, as hyper's client defaults (the tonic channel's): large enough that a
/// response streams without waiting on WINDOW_UPDATEs.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

type Ready = h2::client::SendRequest<Bytes>;
/// A connection, or why there is none.
type Dialled = Result<Connection, tonic::Status>;

/// An open connection and the `:authority` of its calls, spelt once when it was dialled
/// (formatting the address for every call cost about 1,600 instructions).
#[derive(Clone)]
struct Connection {
    send: Ready,
    authority: http::uri::Authority,
}

/// One connection (or one dial in progress) per peer address.
struct Slot {
    /// The target the connection was opened for: under mTLS the peer proved that identity.
    target: Option<Target>,
    conn: Arc<OnceCell<Dialled>>,
}

/// The pool of peer connections for calls with the request in hand.
pub struct Peers {
    slots: Arc<Mutex<crate::CallMap<SocketAddr, Slot>>>,
    /// Dials with this identity under mTLS; `None` dials in plaintext.
    identity: Option<crate::identity::Current>,
    /// What is at the other end, for error messages: `peer` or `app`.
    what: &'static str,
    /// The largest message read from an answer (`wire::message_limit`).
    message_limit: usize,
}

impl Peers {
    /// Connections to other sidecars, over mTLS with `identity`, whose answers' messages are
    /// at most `message_limit` bytes.
    pub fn new(identity: Option<crate::identity::Current>, message_limit: usize) -> Self {
        Peers {
            slots: Arc::default(),
            identity,
            what: "peer",
            message_limit,
        }
    }

    /// The connection to a local gRPC app (plaintext, h2c).
    pub fn app(message_limit: usize) -> Self {
        Peers {
            what: "app",
            ..Peers::new(None, message_limit)
        }
    }

    /// Sends `message` (a request head with its whole body) to the peer at `addr` and returns
    /// the response stream, or the status the peer answered with. A pooled connection found
    /// closed before the call was sent is replaced once, transparently; a failed connection is
    /// dropped from the pool. Transport failures are `Unavailable`, with their cause as source.
    /// `frame` is the encoded `InternalInvokeRequestStream` (`wire::Stamps::stream_frame`).
    pub async fn call_local_stream(
        &self,
        addr: SocketAddr,
        target: &Target,
        frame: Bytes,
    ) -> Result<PeerMessages, tonic::Status> {
        let (parts, body) = self
            .call(
                addr,
                Some(target),
                CALL_LOCAL_STREAM,
                HeaderMap::new(),
                frame,
            )
            .await?;
        Ok(crate::wire::Messages::response(
            body,
            parts.status,
            self.message_limit,
        ))
    }

    /// `CallLocal` with `frame` (the encoded `InternalInvokeRequest`, `wire::Stamps::frame`):
    /// the request out in one write; the answer, read in place as the streamed answers are
    /// ([`crate::wire::ReceivedResponse`]), and its size ([`Self::unary_answer`]).
    pub async fn call_local(
        &self,
        addr: SocketAddr,
        target: &Target,
        frame: Bytes,
    ) -> Result<(ReceivedResponse, usize), tonic::Status> {
        let (parts, body) = self
            .call(addr, Some(target), CALL_LOCAL, HeaderMap::new(), frame)
            .await?;
        self.unary_answer(CALL_LOCAL, parts.status, body).await
    }

    /// A unary call to `path` at `addr` (an app, or a peer when `target` names it) with
    /// `headers` as its metadata: the response's headers and message, once the trailers say
    /// the call succeeded (as tonic's unary client does).
    pub async fn unary<Req: crate::wire::Sent, Resp: Message + Default + Send + 'static>(
        &self,
        addr: SocketAddr,
        target: Option<&Target>,
        path: &'static str,
        headers: HeaderMap,
        message: &Req,
    ) -> Result<(HeaderMap, Resp), tonic::Status> {
        self.unary_frame(addr, target, path, headers, grpc_frame(message))
            .await
    }

    /// [`Self::unary`] with the message already framed; the answer is read as a peer's is
    /// ([`Self::unary_answer`]).
    async fn unary_frame<Resp: Message + Default + Send + 'static>(
        &self,
        addr: SocketAddr,
        target: Option<&Target>,
        path: &'static str,
        headers: HeaderMap,
        frame: Bytes,
    ) -> Result<(HeaderMap, Resp), tonic::Status> {
        let (parts, body) = self.call(addr, target, path, headers, frame).await?;
        let (Decoded(response), _) = self.unary_answer(path, parts.status, body).await?;
        Ok((parts.headers, response))
    }

    /// The one message of a unary answer (read by [`crate::wire::Messages`]) and its size,
    /// once the trailers say the call succeeded; no message, or a second one, is an error, as
    /// grpc-go's unary client (upstream's) finds it.
    async fn unary_answer<M: Received + Send + 'static>(
        &self,
        path: &str,
        status: http::StatusCode,
        body: RecvBody,
    ) -> Result<(M, usize), tonic::Status> {
        let mut answer = crate::wire::Messages::<_, M>::response(body, status, self.message_limit);
        let message = answer
            .message()
            .await?
            .ok_or_else(|| tonic::Status::internal(format!("{path} answered no message")))?;
        if answer.message().await?.is_some() {
            return Err(tonic::Status::internal(format!(
                "{path} answered more than one message"
            )));
        }
        Ok((message, answer.received()))
    }

    /// The answer's head and its body, unless the head alone says the call failed.
    async fn call(
        &self,
        addr: SocketAddr,
        target: Option<&Target>,
        path: &'static str,
        mut headers: HeaderMap,
        frame: Bytes,
    ) -> Result<(http::response::Parts, RecvBody), tonic::Status> {
        let mut retried = false;
        let (response, conn) = loop {
            let (conn, connection) = self.connection(addr, target).await?;
            match connection.send.ready().await {
                Ok(mut send) => {
                    let uri = uri(&connection.authority, path);
                    // Sent once: the loop ends here, so the headers move into the request.
                    let headers = std::mem::take(&mut headers);
                    break (start(&mut send, uri, headers, frame.clone()), conn);
                }
                Err(e) if !retried => {
                    tracing::debug!(%addr, "pooled peer connection closed ({e}); dialling again");
                    self.forget(addr, &conn);
                    retried = true;
                }
                Err(e) => {
                    self.forget(addr, &conn);
                    return Err(failed(e, self));
                }
            }
        };
        let response = match response {
            Ok(response) => response.await,
            Err(e) => Err(e),
        };
        let response = response.map_err(|e| {
            if e.is_io() || e.is_go_away() {
                self.forget(addr, &conn);
            }
            failed(e, self)
        })?;
        let (parts, body) = response.into_parts();
        // A trailers-only answer: the status is in the head. Looked for before it is parsed:
        // an answer's head has none ([`crate::wire::grpc_status`] compares a few names, where
        // tonic's parse hashes the name first).
        if crate::wire::grpc_status(&parts.headers).is_some_and(|code| code != tonic::Code::Ok)
            && let Some(status) = tonic::Status::from_header_map(&parts.headers)
        {
            return Err(status);
        }
        let body = RecvBody {
            recv: body,
            data_done: false,
            done: false,
        };
        Ok((parts, body))
    }

    /// The connection for `addr`, dialled once however many calls wait for it.
    async fn connection(
        &self,
        addr: SocketAddr,
        target: Option<&Target>,
    ) -> Result<(Arc<OnceCell<Dialled>>, Connection), tonic::Status> {
        let cell = {
            let mut slots = self
                .slots
                .lock()
                .map_err(|_| tonic::Status::internal("peer pool poisoned"))?;
            match slots.get(&addr) {
                Some(slot) if self.identity.is_none() || slot.target.as_ref() == target => {
                    Arc::clone(&slot.conn)
                }
                _ => {
                    let conn = Arc::new(OnceCell::new());
                    slots.insert(
                        addr,
                        Slot {
                            target: target.cloned(),
                            conn: Arc::clone(&conn),
                        },
                    );
                    conn
                }
            }
        };
        // Every call waiting on this dial gets its outcome: a failure is not retried by each of
        // them in turn (the slot is dropped, so the next call dials afresh).
        let dialled = cell
            .get_or_init(|| async {
                // Boxed: a dial's state (TCP, TLS, the HTTP/2 preface) is large and rare;
                // inline it would be copied with the future of every call.
                let dial = Box::pin(self.dial(addr, target));
                let failure = match tokio::time::timeout(CONNECT_TIMEOUT, dial).await {
                    Ok(Ok(send)) => return Ok(send),
                    Ok(Err(status)) => status,
                    Err(_) => tonic::Status::unavailable(format!(
                        "no connection to the peer at {addr} within {CONNECT_TIMEOUT:?}"
                    )),
                };
                self.forget(addr, &cell);
                Err(failure)
            })
            .await;
        let send = dialled.as_ref().map_err(Clone::clone)?.clone();
        Ok((cell, send))
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        target: Option<&Target>,
    ) -> Result<Connection, tonic::Status> {
        let authority = http::uri::Authority::try_from(addr.to_string())
            .map_err(|e| tonic::Status::internal(format!("no authority for {addr}: {e}")))?;
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        let io = match &self.identity {
            None => {
                let tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| unreachable(e, self))?;
                let _ = tcp.set_nodelay(true);
                Box::new(tcp) as Box<dyn PeerIo>
            }
            Some(current) => {
                let target = target.ok_or_else(|| {
                    tonic::Status::internal("an mTLS peer connection needs the target it is for")
                })?;
                // Upstream checks only the path of the peer's id, not its trust domain.
                let expected = dapr_identity::tls::ExpectedId::Path {
                    namespace: target.namespace.clone(),
                    app_id: target.app_id.clone(),
                };
                let tls = Connector::identity(current.clone(), expected)
                    .dial(addr)
                    .await
                    .map_err(|e| unreachable(e, self))?;
                Box::new(tls)
            }
        };
        let (send, conn) = builder
            .handshake(io)
            .await
            .map_err(|e| unreachable(e, self))?;
        tokio::spawn(drive(conn, addr));
        Ok(Connection { send, authority })
    }

    /// Drops the pool's entry for `addr` if it is still `conn` (a newer one stays).
    fn forget(&self, addr: SocketAddr, conn: &Arc<OnceCell<Dialled>>) {
        forget(&self.slots, addr, conn);
    }
}

fn forget(
    slots: &Mutex<crate::CallMap<SocketAddr, Slot>>,
    addr: SocketAddr,
    conn: &Arc<OnceCell<Dialled>>,
) {
    if let Ok(mut slots) = slots.lock()
        && slots.get(&addr).is_some_and(|s| Arc::ptr_eq(&s.conn, conn))
    {
        slots.remove(&addr);
    }
}

/// Starts the call: head and message are queued together, END_STREAM set.
fn start(
    send: &mut Ready,
    uri: http::Uri,
    metadata: HeaderMap,
    frame: Bytes,
) -> Result<h2::client::ResponseFuture, h2::Error> {
    let mut request = http::Request::new(());
    *request.headers_mut() = metadata;
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    let (response, mut body) = send.send_request(request, false)?;
    body.send_data(frame, true)?;
    Ok(response)
}

/// The URI of a call to `path`. The paths of every call, the two a peer serves and a gRPC
/// app's `OnInvoke`, are parsed once (parsing one cost about 600-1,000 instructions per call);
/// another path is parsed here.
fn uri(authority: &http::uri::Authority, path: &'static str) -> http::Uri {
    static PATHS: std::sync::LazyLock<[http::uri::PathAndQuery; 3]> =
        std::sync::LazyLock::new(|| {
            [CALL_LOCAL_STREAM, CALL_LOCAL, ON_INVOKE].map(http::uri::PathAndQuery::from_static)
        });
    let path_and_query = match path {
        CALL_LOCAL_STREAM => PATHS[0].clone(),
        CALL_LOCAL => PATHS[1].clone(),
        ON_INVOKE => PATHS[2].clone(),
        other => http::uri::PathAndQuery::from_static(other),
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path_and_query);
    http::Uri::from_parts(parts).unwrap_or_default()
}

/// The length-prefixed gRPC message (uncompressed).
fn grpc_frame(message: &impl crate::wire::Sent) -> Bytes {
    let mut buf = crate::wire::frame_head(message.encoded_len());
    message.encode(&mut buf);
    buf.freeze()
}

fn failed(e: h2::Error, peers: &Peers) -> tonic::Status {
    let what = peers.what;
    let mut status = match e.reason() {
        Some(h2::Reason::REFUSED_STREAM) => {
            tonic::Status::unavailable(format!("the {what} refused the call: {e}"))
        }
        Some(_) if !e.is_io() => {
            tonic::Status::unavailable(format!("the {what} reset the call: {e}"))
        }
        _ => return unreachable(e, peers),
    };
    status.set_source(Arc::new(e));
    status
}

/// A dial that failed, as `Unavailable` with its cause as source.
fn unreachable(e: impl std::error::Error + Send + Sync + 'static, peers: &Peers) -> tonic::Status {
    let hint = if peers.identity.is_some() {
        " (if the peer refused this sidecar's certificate, its log says why)"
    } else {
        ""
    };
    let mut status = tonic::Status::unavailable(format!(
        "the connection to the {} failed: {e}{hint}",
        peers.what
    ));
    status.set_source(Arc::new(e));
    status
}

/// A connection's byte stream, TCP or TLS: one type, so the HTTP/2 machinery is compiled once.
trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PeerIo for T {}

/// Drives a peer connection until it closes (every handle dropped, GOAWAY, an I/O error) or
/// stops answering pings.
///
/// The connection runs on a task of its own and the pings on this one, so a wake-up of the
/// connection (several per call) does not also poll the ping timer, as one `select!` over both
/// did (bench/notes.md, "per-wake-up costs"). The connection's end stops the pings; a ping
/// without an answer ends the connection.
async fn drive(mut conn: h2::client::Connection<Box<dyn PeerIo>, Bytes>, addr: SocketAddr) {
    let pings = conn.ping_pong();
    let closed = tokio_util::sync::CancellationToken::new();
    let ended = closed.clone().drop_guard();
    let connection = tokio::spawn(async move {
        let _ended = ended;
        if let Err(e) = conn.await {
            tracing::debug!(%addr, "peer connection closed: {e}");
        }
    });
    let Some(pings) = pings else {
        return;
    };
    if let Some(reason) = keepalive(pings, &closed).await {
        tracing::info!(%addr, "dropping the peer connection: {reason}");
        connection.abort();
    }
}

/// Pings every [`PING_INTERVAL`] until `closed`: why the peer is to be dropped when a ping
/// fails or its answer takes longer than [`PING_TIMEOUT`], none once the connection closed.
async fn keepalive(
    mut pings: h2::PingPong,
    closed: &tokio_util::sync::CancellationToken,
) -> Option<String> {
    let pinging = async {
        loop {
            tokio::time::sleep(PING_INTERVAL).await;
            match tokio::time::timeout(PING_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("ping failed: {e}"),
                Err(_) => return format!("no answer to a ping within {PING_TIMEOUT:?}"),
            }
        }
    };
    tokio::select! {
        () = closed.cancelled() => None,
        reason = pinging => Some(reason),
    }
}

/// An h2 response body as an `http_body::Body`, returning receive capacity as data is read.
/// A peer's `CallLocalStream` answer, message by message.
pub type PeerMessages = crate::wire::Messages<RecvBody, ReceivedResponseStream>;

/// An answer's body straight from h2: its DATA frames (their flow-control credit returned as
/// they are read), then its trailers.
pub struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        this.done = true;
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use dapr_proto::internals::v1::InternalInvokeRequestStream;

    use super::*;

    /// A client connection to a peer over an in-memory pipe, driven by [`drive`] on a task
    /// of its own, and the peer's end of the pipe (its h2 handshake done, then never polled,
    /// so it never answers a ping).
    async fn driven_to_a_silent_peer() -> (
        h2::client::SendRequest<Bytes>,
        tokio::task::JoinHandle<()>,
        h2::server::Connection<tokio::io::DuplexStream, Bytes>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (client, server) = tokio::join!(
            h2::client::handshake(Box::new(client) as Box<dyn PeerIo>),
            h2::server::handshake(server)
        );
        let (send, conn) = client.expect("client handshake");
        let peer = server.expect("server handshake");
        let driven = tokio::spawn(drive(conn, SocketAddr::from(([127, 0, 0, 1], 1))));
        (send, driven, peer)
    }

    /// A peer that stops answering pings is dropped after [`PING_INTERVAL`] and
    /// [`PING_TIMEOUT`]: the connection's handle fails from then on. Time is paused, so the
    /// 15 virtual seconds take none.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_answering_pings_is_dropped() {
        let started = tokio::time::Instant::now();
        let (send, driven, _peer) = driven_to_a_silent_peer().await;
        driven.await.expect("drive ends");
        assert!(
            started.elapsed() >= PING_INTERVAL + PING_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        let closed = tokio::time::timeout(Duration::from_secs(1), send.ready()).await;
        assert!(
            matches!(closed, Ok(Err(_))),
            "the connection is gone: {closed:?}"
        );
    }

    /// A connection the peer closes ends the pings with it, before the first one is due.
    #[tokio::test(start_paused = true)]
    async fn the_pings_end_with_the_connection() {
        let started = tokio::time::Instant::now();
        let (_send, driven, peer) = driven_to_a_silent_peer().await;
        drop(peer);
        driven.await.expect("drive ends");
        assert!(started.elapsed() < PING_INTERVAL, "{:?}", started.elapsed());
    }

    #[test]
    fn a_calls_uri_names_the_peer_and_the_method_whichever_path_it_is() {
        let addr: SocketAddr = "[::1]:50002".parse().expect("an address");
        let authority = http::uri::Authority::try_from(addr.to_string()).expect("an authority");
        let app_path = "/dapr.proto.runtime.v1.AppCallback/OnInvoke";
        for path in [CALL_LOCAL_STREAM, CALL_LOCAL, app_path] {
            let uri = uri(&authority, path);
            assert_eq!(uri.to_string(), format!("http://[::1]:50002{path}"));
        }
    }

    #[test]
    fn a_message_is_framed_with_the_uncompressed_flag_and_its_length() {
        let message = InternalInvokeRequestStream {
            request: None,
            payload: Some(dapr_proto::common::v1::StreamPayload {
                data: Bytes::from_static(b"hello"),
                seq: 0,
            }),
        };
        let frame = grpc_frame(&message);
        assert_eq!(frame[0], 0, "not compressed");
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len, frame.len() - 5);
        assert_eq!(
            InternalInvokeRequestStream::decode(&frame[5..]).expect("decodes"),
            message
        );
    }
}
