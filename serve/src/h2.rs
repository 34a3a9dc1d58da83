//! Serving HTTP/2 (the gRPC ports) with the `h2` crate directly.
//!
//! hyper's HTTP/2 server is h2 with a layer of its own around it: a task spawned per stream,
//! its `Incoming` body, a keepalive timer polled on every wake-up of the connection, its I/O
//! adapters. That layer cost each sidecar about 3-4k instructions per call (bench/notes.md,
//! "gRPC ports served by h2 directly"). Here a connection's streams are futures of the
//! connection's own task (on the usual one-thread runtime; on a thread pool each stream is a
//! task of its own, as hyper does it), the keepalive pings run on a task of their own, and a
//! request's body is h2's stream itself. What hyper's server did on the wire is done the same:
//! its settings (`H2Connection::builder`), the content length it adds to a response whose body
//! knows its size, the connection-specific fields it takes out of a response head, a stream
//! reset when a body fails, a call dropped when its client resets the stream.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use futures::stream::{FuturesUnordered, StreamExt};
use h2::server::{Connection, Handshake, SendResponse};
use h2::{PingPong, RecvStream, SendStream};
use http::header::{CONTENT_LENGTH, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::http::{ResponseBody, accept_until_stopped, until_stopped};
use crate::{Guarded, Limits};

/// The HTTP/2 settings of a [`serve_h2`] server beyond its [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    /// The receive window per stream and per connection.
    pub receive_window: u32,
    /// Concurrent streams a client may open on one connection; `None`: no bound.
    pub max_concurrent_streams: Option<u32>,
}

/// Serves HTTP/2 only (a gRPC server) on each connection `connections` yields until `stop` is
/// cancelled, then shuts every open connection down gracefully as `serve_http` does.
/// `service` makes each connection's service from what its handshake learned about the peer
/// (its `ConnectInfo`), so a request needs no extension to say who sent it.
///
/// `h2`'s server directly ([`H2Connection`]), without a router or tower stack around it:
/// keepalive pings within `limits`, no `date` header (gRPC has no use for it), hyper's other
/// settings (`docs/limits.md`).
pub async fn serve_h2<T, S, M, Svc>(
    server: &'static str,
    connections: S,
    limits: Limits,
    settings: H2Settings,
    stop: CancellationToken,
    service: M,
) where
    T: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Send + Unpin + 'static,
    S: tokio_stream::Stream<Item = std::io::Result<Guarded<T>>> + Unpin,
    M: Fn(T::ConnectInfo) -> Svc,
    Svc: H2Service,
{
    let builder = H2Connection::<Guarded<T>, Svc>::builder(settings);
    accept_until_stopped(server, connections, &stop, |io| {
        let peer = tonic::transport::server::Connected::connect_info(&io);
        let connection = H2Connection::new(io, &builder, service(peer), limits);
        let stop = stop.clone();
        async move {
            until_stopped(server, connection, &stop, |c| c.graceful_shutdown()).await;
        }
    })
    .await;
}

/// A request's body on a [`crate::serve_h2`] server: the stream's DATA frames, then its
/// trailers. Each frame's bytes are given back to the flow-control window as they are handed
/// on, so what a client can have buffered here is the receive window, as with hyper's body.
pub struct H2Body {
    recv: RecvStream,
    data_done: bool,
    /// What the request's `content-length` says is still to come.
    remaining: Option<u64>,
}

impl H2Body {
    fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let remaining = crate::field(headers, &CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        H2Body {
            recv,
            data_done: false,
            remaining,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // RST_STREAM(NO_ERROR) ends a request early without failing it (RFC 9113
                // §8.1): the server may already have answered.
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|trailers| Ok(Frame::trailers(trailers)))),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// How a served HTTP/2 connection ended badly.
#[derive(Debug)]
pub(crate) enum H2ConnectionError {
    H2(h2::Error),
    /// The client did not answer a keepalive PING in time.
    KeepaliveTimedOut,
}

impl std::fmt::Display for H2ConnectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H2ConnectionError::H2(e) => write!(f, "{e}"),
            H2ConnectionError::KeepaliveTimedOut => f.write_str("keepalive ping not answered"),
        }
    }
}

/// The service a [`serve_h2`] server calls for each request: a tower service, called on the
/// connection's task. One that is not ready when a request arrives has the stream refused
/// (`REFUSED_STREAM`, which a client may retry); daprd's are always ready.
pub trait H2Service:
    tower::Service<
        Request<H2Body>,
        Response = Response<Self::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + Unpin
    + 'static
{
    type Body: ResponseBody;
}

impl<S, B> H2Service for S
where
    S: tower::Service<
            Request<H2Body>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + Unpin
        + 'static,
    B: ResponseBody,
{
    type Body = B;
}

/// One served HTTP/2 connection: a future that ends when the connection does.
pub(crate) struct H2Connection<T, S: H2Service> {
    state: State<T>,
    service: S,
    /// The streams being answered, when they run on this connection's task.
    streams: FuturesUnordered<StreamTask<S::Future, S::Body>>,
    /// Whether streams run on this task (a one-thread runtime) or each on its own.
    local: bool,
    limits: Limits,
    shutdown_pending: bool,
    keepalive: Option<Keepalive>,
}

enum State<T> {
    Handshaking(Handshake<T, Bytes>),
    Serving(Connection<T, Bytes>),
}

/// The keepalive task of a connection: it sets `dead` (and wakes the connection) when a PING
/// goes unanswered, and is aborted when the connection ends.
struct Keepalive {
    dead: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T, S> H2Connection<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: H2Service,
{
    /// hyper's HTTP/2 server settings (hyper 1.x `proto/h2/server.rs`), which applied before:
    /// 16 KiB frames and header lists, 400 KiB queued to send per stream, at most 1,024
    /// streams reset for errors of the client's before the connection is closed; the receive
    /// windows and the stream bound from `settings`.
    pub(crate) fn builder(settings: H2Settings) -> h2::server::Builder {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(settings.receive_window)
            .initial_connection_window_size(settings.receive_window)
            .max_frame_size(16 * 1024)
            .max_header_list_size(16 * 1024)
            .max_local_error_reset_streams(Some(1024))
            .max_send_buffer_size(400 * 1024);
        if let Some(max) = settings.max_concurrent_streams {
            builder.max_concurrent_streams(max);
        }
        builder
    }

    pub(crate) fn new(io: T, builder: &h2::server::Builder, service: S, limits: Limits) -> Self {
        let local = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::CurrentThread;
        H2Connection {
            state: State::Handshaking(builder.handshake(io)),
            service,
            streams: FuturesUnordered::new(),
            local,
            limits,
            shutdown_pending: false,
            keepalive: None,
        }
    }

    /// Sends GOAWAY: streams already open are answered, new ones refused, and the connection
    /// ends when the last is done.
    pub(crate) fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        match &mut this.state {
            State::Serving(connection) => connection.graceful_shutdown(),
            State::Handshaking(_) => this.shutdown_pending = true,
        }
    }

    fn start_keepalive(&mut self, connection: &mut Connection<T, Bytes>, task: &Waker) {
        let Some(pings) = connection.ping_pong() else {
            return;
        };
        let dead = Arc::new(AtomicBool::new(false));
        let handle = tokio::spawn(keepalive(
            pings,
            Arc::clone(&dead),
            task.clone(),
            self.limits,
        ));
        self.keepalive = Some(Keepalive {
            dead,
            task: handle.abort_handle(),
        });
    }
}

impl<T, S> Future for H2Connection<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: H2Service,
{
    type Output = Result<(), H2ConnectionError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let State::Handshaking(handshake) = &mut this.state {
            let mut connection =
                ready!(Pin::new(handshake).poll(cx)).map_err(H2ConnectionError::H2)?;
            if this.shutdown_pending {
                connection.graceful_shutdown();
            }
            this.start_keepalive(&mut connection, cx.waker());
            this.state = State::Serving(connection);
        }
        let State::Serving(connection) = &mut this.state else {
            unreachable!("the handshake is done")
        };
        loop {
            if this
                .keepalive
                .as_ref()
                .is_some_and(|k| k.dead.load(Ordering::Acquire))
            {
                return Poll::Ready(Err(H2ConnectionError::KeepaliveTimedOut));
            }
            // The streams first: what they queue goes out with this poll of the connection.
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            match ready!(connection.poll_accept(cx)) {
                Some(Ok((request, mut respond))) => {
                    if this.service.poll_ready(cx).is_pending() {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let (head, recv) = request.into_parts();
                    let body = H2Body::new(recv, &head.headers);
                    let call = this.service.call(Request::from_parts(head, body));
                    let task = StreamTask::new(call, respond);
                    if this.local {
                        this.streams.push(task);
                    } else {
                        tokio::spawn(task);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(H2ConnectionError::H2(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Pings the client every `keepalive_interval`; when an answer takes longer than
/// `keepalive_timeout`, marks the connection dead and wakes it. Ends when the connection does.
async fn keepalive(mut pings: PingPong, dead: Arc<AtomicBool>, connection: Waker, limits: Limits) {
    loop {
        tokio::time::sleep(limits.keepalive_interval).await;
        match tokio::time::timeout(limits.keepalive_timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_closed)) => return,
            Err(_elapsed) => {
                dead.store(true, Ordering::Release);
                connection.wake();
                return;
            }
        }
    }
}

pin_project! {
    /// One request's answer: the service's call, then its response's body piped onto the
    /// stream.
    struct StreamTask<F, B> {
        #[pin]
        step: Step<F, B>,
    }
}

pin_project! {
    #[project = StepProj]
    enum Step<F, B> {
        Calling { #[pin] call: F, respond: SendResponse<Bytes> },
        Sending {
            #[pin]
            body: B,
            send: SendStream<Bytes>,
            // A frame waiting for send capacity, and whether it ends the stream.
            waiting: Option<(Bytes, bool)>,
        },
        Done,
    }
}

impl<F, B> StreamTask<F, B> {
    fn new(call: F, respond: SendResponse<Bytes>) -> Self {
        StreamTask {
            step: Step::Calling { call, respond },
        }
    }
}

impl<F, B> Future for StreamTask<F, B>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data: Buf, Error: Into<Box<dyn std::error::Error + Send + Sync>>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut step = self.project().step;
        loop {
            match step.as_mut().project() {
                StepProj::Calling { call, respond } => {
                    let response = match call.poll(cx) {
                        Poll::Ready(Ok(response)) => response,
                        Poll::Ready(Err(never)) => match never {},
                        Poll::Pending => {
                            // A client that resets the stream gives up on the call: dropping
                            // it cancels what it waits for.
                            if respond.poll_reset(cx).is_ready() {
                                step.set(Step::Done);
                                return Poll::Ready(());
                            }
                            return Poll::Pending;
                        }
                    };
                    let (mut head, body) = response.into_parts();
                    strip_connection_fields(&mut head.headers);
                    let end = body.is_end_stream();
                    if !end
                        && let Some(len) = body.size_hint().exact()
                        && crate::field(&head.headers, &CONTENT_LENGTH).is_none()
                    {
                        head.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                    }
                    match respond.send_response(Response::from_parts(head, ()), end) {
                        Ok(send) if !end => step.set(Step::Sending {
                            body,
                            send,
                            waiting: None,
                        }),
                        Ok(_) => {
                            step.set(Step::Done);
                            return Poll::Ready(());
                        }
                        Err(e) => {
                            tracing::debug!("response head not sent: {e}");
                            step.set(Step::Done);
                            return Poll::Ready(());
                        }
                    }
                }
                StepProj::Sending {
                    body,
                    send,
                    waiting,
                } => {
                    let piped = ready!(pipe(body, send, waiting, cx));
                    if let Err(e) = piped {
                        tracing::debug!("response body not sent: {e}");
                    }
                    step.set(Step::Done);
                    return Poll::Ready(());
                }
                StepProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Sends `body`'s frames on `send` as the stream's flow control allows, as hyper's server
/// does: a frame is taken from the body only once the previous one is sent, and capacity is
/// claimed only for a frame in hand (hyper#4003).
fn pipe<B>(
    mut body: Pin<&mut B>,
    send: &mut SendStream<Bytes>,
    waiting: &mut Option<(Bytes, bool)>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Box<dyn std::error::Error + Send + Sync>>>
where
    B: Body<Data: Buf, Error: Into<Box<dyn std::error::Error + Send + Sync>>>,
{
    loop {
        // Registered while waiting for the body or for capacity, so a reset wakes the task.
        if let Poll::Ready(reason) = send.poll_reset(cx) {
            let reason = reason?;
            return Poll::Ready(Err(format!("the client reset the stream: {reason}").into()));
        }
        if let Some((data, end)) = waiting.take() {
            while send.capacity() == 0 {
                match send.poll_capacity(cx) {
                    Poll::Pending => {
                        *waiting = Some((data, end));
                        return Poll::Pending;
                    }
                    Poll::Ready(Some(Ok(0))) => {}
                    Poll::Ready(Some(Ok(_))) => break,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(None) => {
                        return Poll::Ready(Err("the stream closed while sending".into()));
                    }
                }
            }
            send.send_data(data, end)?;
            if end {
                return Poll::Ready(Ok(()));
            }
            continue;
        }
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let end = body.is_end_stream();
                    let data = data.copy_to_bytes(data.remaining());
                    if data.is_empty() {
                        send.send_data(data, end)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                    } else {
                        send.reserve_capacity(1);
                        *waiting = Some((data, end));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.reserve_capacity(0);
                        send.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            },
            Some(Err(e)) => {
                let e = e.into();
                let reason = e
                    .downcast_ref::<h2::Error>()
                    .and_then(h2::Error::reason)
                    .unwrap_or(h2::Reason::INTERNAL_ERROR);
                send.send_reset(reason);
                return Poll::Ready(Err(e));
            }
            None => {
                send.send_data(Bytes::new(), true)?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Takes out of a response head the fields HTTP/2 forbids (RFC 9113 §8.2.2), as hyper's server
/// did: h2 refuses to send a head with them. One pass over the names when there are none.
fn strip_connection_fields(headers: &mut HeaderMap) {
    let forbidden = |name: &http::HeaderName, value: &HeaderValue| match name.as_str() {
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" => true,
        "te" => value != "trailers",
        _ => false,
    };
    if !headers.iter().any(|(name, value)| forbidden(name, value)) {
        return;
    }
    tracing::debug!("connection-specific fields taken out of an HTTP/2 response head");
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
    if headers
        .get(http::header::TE)
        .is_some_and(|te| te != "trailers")
    {
        headers.remove(http::header::TE);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use super::*;

    const BOUND: Duration = Duration::from_secs(10);
    const SETTINGS: H2Settings = H2Settings {
        receive_window: 1024 * 1024,
        max_concurrent_streams: None,
    };

    /// A response body: `data` in one frame, then `trailers`; its size known only without
    /// trailers.
    struct Answer {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    }

    impl Body for Answer {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if let Some(data) = self.data.take() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
        }

        fn is_end_stream(&self) -> bool {
            self.data.is_none() && self.trailers.is_none()
        }

        fn size_hint(&self) -> SizeHint {
            match (&self.data, &self.trailers) {
                (Some(data), None) => SizeHint::with_exact(data.len() as u64),
                _ => SizeHint::default(),
            }
        }
    }

    type Call = Pin<Box<dyn Future<Output = Result<Response<Answer>, Infallible>> + Send>>;

    /// Serves `handle` on loopback with `limits` until the returned token is cancelled.
    async fn serve<F>(
        limits: Limits,
        handle: F,
    ) -> (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )
    where
        F: Fn(Request<H2Body>) -> Call + Clone + Send + Sync + Unpin + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let connections = crate::http::plain_connections("test", listener, limits, &stop);
        let served = tokio::spawn(crate::serve_h2(
            "test",
            connections,
            limits,
            SETTINGS,
            stop.clone(),
            move |_| tower::service_fn(handle.clone()),
        ));
        (addr, stop, served)
    }

    async fn client(
        addr: std::net::SocketAddr,
    ) -> (
        h2::client::SendRequest<Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
        (client, tokio::spawn(connection))
    }

    fn request() -> Request<()> {
        Request::post("http://test/echo").body(()).expect("request")
    }

    /// A whole answer of `data`, with no trailers: its size is known.
    fn whole(data: &'static [u8]) -> Response<Answer> {
        Response::new(Answer {
            data: Some(Bytes::from_static(data)),
            trailers: None,
        })
    }

    /// A call that is never answered.
    fn never() -> Call {
        Box::pin(std::future::pending())
    }

    /// What a raw client sends first: the preface and an empty SETTINGS frame.
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

    /// The request's body and trailers reach the service; an answer larger than the client's
    /// 64 KiB window goes out as the client opens it, trailers last, with no length.
    #[tokio::test]
    async fn a_body_and_trailers_go_both_ways_within_flow_control() {
        body_and_trailers_both_ways().await;
    }

    /// The same on a thread pool, where each stream is a task of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_thread_pool_a_body_and_trailers_go_both_ways() {
        body_and_trailers_both_ways().await;
    }

    async fn body_and_trailers_both_ways() {
        let (addr, _stop, _served) = serve(Limits::DEFAULT, |request: Request<H2Body>| {
            Box::pin(async move {
                let got = request.into_body().collect().await.expect("request body");
                let trailers = got.trailers().cloned().expect("request trailers");
                assert_eq!(trailers["x-end"], "yes");
                assert_eq!(got.to_bytes().len(), 100_000);
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                Ok(Response::new(Answer {
                    data: Some(Bytes::from(vec![7u8; 1024 * 1024])),
                    trailers: Some(trailers),
                }))
            }) as Call
        })
        .await;
        let (client, _connection) = client(addr).await;
        let mut client = client.ready().await.expect("ready");
        let (response, mut stream) = client.send_request(request(), false).expect("send");
        stream
            .send_data(Bytes::from(vec![1u8; 100_000]), false)
            .expect("data");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-end", HeaderValue::from_static("yes"));
        stream.send_trailers(trailers).expect("trailers");
        let response = tokio::time::timeout(BOUND, response)
            .await
            .expect("in time")
            .expect("response");
        assert!(response.headers().get(CONTENT_LENGTH).is_none());
        let mut body = response.into_body();
        let mut received = 0;
        while let Some(data) = tokio::time::timeout(BOUND, body.data())
            .await
            .expect("in time")
        {
            let data = data.expect("data");
            received += data.len();
            body.flow_control()
                .release_capacity(data.len())
                .expect("release");
        }
        assert_eq!(received, 1024 * 1024);
        let trailers = body.trailers().await.expect("trailers").expect("some");
        assert_eq!(trailers["grpc-status"], "0");
    }

    /// A body that knows its size is framed by a `content-length`, and a field HTTP/2 forbids
    /// is taken out of the head rather than failing the answer, as hyper's server did.
    #[tokio::test]
    async fn a_sized_answer_has_its_length_and_no_connection_fields() {
        let (addr, _stop, _served) = serve(Limits::DEFAULT, |_| {
            Box::pin(async {
                let mut response = whole(b"hello");
                let headers = response.headers_mut();
                headers.insert("connection", HeaderValue::from_static("close"));
                headers.insert("te", HeaderValue::from_static("gzip"));
                headers.insert("x-kept", HeaderValue::from_static("1"));
                Ok(response)
            }) as Call
        })
        .await;
        let (client, _connection) = client(addr).await;
        let mut client = client.ready().await.expect("ready");
        let (response, _stream) = client.send_request(request(), true).expect("send");
        let response = tokio::time::timeout(BOUND, response)
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(response.headers()[CONTENT_LENGTH], "5");
        assert_eq!(response.headers()["x-kept"], "1");
        assert!(response.headers().get("connection").is_none());
        assert!(response.headers().get("te").is_none());
        let mut body = response.into_body();
        let data = body.data().await.expect("data").expect("ok");
        assert_eq!(&data[..], b"hello");
    }

    /// A client that resets its stream gives up on the call: the call is dropped, which is
    /// how what it waits for (the app) learns of it.
    #[tokio::test]
    async fn a_reset_stream_drops_its_call() {
        reset_drops_the_call().await;
    }

    /// The same on a thread pool, where each stream is a task of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_thread_pool_a_reset_stream_drops_its_call() {
        reset_drops_the_call().await;
    }

    async fn reset_drops_the_call() {
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
        let guard = Arc::new(Mutex::new(Some(dropped_tx)));
        let (addr, _stop, _served) = serve(Limits::DEFAULT, move |_| {
            let held = guard.lock().expect("lock").take();
            Box::pin(async move {
                let _held = held;
                std::future::pending::<Result<Response<Answer>, Infallible>>().await
            }) as Call
        })
        .await;
        let (client, _connection) = client(addr).await;
        let mut client = client.ready().await.expect("ready");
        let (_response, mut stream) = client.send_request(request(), false).expect("send");
        stream
            .send_data(Bytes::from_static(b"x"), false)
            .expect("data");
        stream.send_reset(h2::Reason::CANCEL);
        let ended = tokio::time::timeout(BOUND, dropped)
            .await
            .expect("the call is dropped in time");
        assert!(ended.is_err(), "the call was dropped, not answered");
    }

    /// A request head over the 16 KiB header list bound never reaches the service; one just
    /// under it does.
    #[tokio::test]
    async fn a_head_over_16_kib_of_headers_is_refused() {
        let (addr, _stop, _served) = serve(Limits::DEFAULT, |_| {
            Box::pin(async { Ok(whole(b"ok")) }) as Call
        })
        .await;
        let (client, _connection) = client(addr).await;
        let mut client = client.ready().await.expect("ready");
        let with_header = |len: usize| {
            let mut request = request();
            let value = HeaderValue::from_str(&"v".repeat(len)).expect("value");
            request.headers_mut().insert("x-large", value);
            request
        };
        // RFC 9113 §6.5.2 counts each field as name + value + 32 octets.
        let (under, _stream) = client
            .send_request(with_header(15 * 1024), true)
            .expect("send");
        let under = tokio::time::timeout(BOUND, under).await.expect("in time");
        assert_eq!(under.expect("answered").status(), http::StatusCode::OK);
        let mut client = client.ready().await.expect("ready");
        let (over, _stream) = client
            .send_request(with_header(17 * 1024), true)
            .expect("send");
        let over = tokio::time::timeout(BOUND, over).await.expect("in time");
        match over {
            Ok(response) => assert_eq!(
                response.status(),
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            ),
            Err(e) => assert!(e.is_reset() || e.is_go_away(), "refused: {e}"),
        }
    }

    /// Each request that breaks HTTP/2's rules is reset by the server and counted: 1,024 such
    /// resets leave the connection open, the next one gets the client GOAWAY
    /// (`ENHANCE_YOUR_CALM`) and the connection closes, so a client cannot make the server
    /// reset streams for ever. None reaches the service.
    #[tokio::test]
    async fn a_client_whose_streams_are_reset_1024_times_is_sent_goaway() {
        let called = Arc::new(AtomicBool::new(false));
        let seen = called.clone();
        let (addr, _stop, _served) = serve(Limits::DEFAULT, move |_| {
            seen.store(true, Ordering::SeqCst);
            never()
        })
        .await;
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        // A request with a connection-specific field (RFC 9113 §8.2.2): POST, http, / and
        // `connection: x`, as static-table indexes and an HPACK literal.
        let block = b"\x83\x86\x84\x00\x0aconnection\x01x";
        let bad_requests = |ids: std::ops::Range<u32>| {
            let mut frames = Vec::new();
            for i in ids {
                frames.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5]);
                frames.extend_from_slice(&(2 * i + 1).to_be_bytes());
                frames.extend_from_slice(block);
            }
            frames
        };
        // The preface, an empty SETTINGS frame, 1,024 bad requests, then a PING: its ACK comes
        // after the server has read them all.
        let mut sent = PREFACE.to_vec();
        sent.extend(bad_requests(0..1024));
        sent.extend_from_slice(b"\0\0\x08\x06\0\0\0\0\0pingpong");
        tcp.write_all(&sent).await.expect("requests");
        loop {
            let (kind, flags, payload) = read_frame(&mut tcp).await.expect("a frame");
            assert_ne!(kind, 0x7, "no GOAWAY after 1,024 resets: {payload:02x?}");
            if kind == 0x6 && flags & 0x1 == 1 {
                break;
            }
        }
        tcp.write_all(&bad_requests(1024..1025))
            .await
            .expect("request");
        let goaway = loop {
            match read_frame(&mut tcp).await {
                // GOAWAY: the last stream id, then the error code.
                Some((0x7, _, payload)) => break payload,
                Some(_) => {}
                None => panic!("the connection closed without a GOAWAY"),
            }
        };
        assert_eq!(
            goaway.get(4..8),
            Some(&[0, 0, 0, 0xb][..]),
            "ENHANCE_YOUR_CALM"
        );
        assert!(
            read_frame(&mut tcp).await.is_none(),
            "then the connection closes"
        );
        assert!(
            !called.load(Ordering::SeqCst),
            "no request reached the service"
        );
    }

    /// The next frame from `tcp` (its type, flags and payload), or `None` at the connection's
    /// end, within [`BOUND`].
    async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
        let mut head = [0u8; 9];
        tokio::time::timeout(BOUND, tcp.read_exact(&mut head))
            .await
            .expect("a frame in time")
            .ok()?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; len];
        tokio::time::timeout(BOUND, tcp.read_exact(&mut payload))
            .await
            .expect("a frame in time")
            .ok()?;
        Some((head[3], head[4], payload))
    }

    /// A client that never answers PINGs is disconnected after one interval and one timeout.
    #[tokio::test]
    async fn a_client_that_does_not_answer_pings_is_disconnected() {
        let limits = Limits {
            keepalive_interval: Duration::from_millis(100),
            keepalive_timeout: Duration::from_millis(100),
            ..Limits::DEFAULT
        };
        let (addr, _stop, _served) = serve(limits, |_| never()).await;
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        // Then only reading, never a PING's ACK, until the server closes the connection.
        tcp.write_all(PREFACE).await.expect("preface");
        let mut pings = 0;
        while let Some((kind, flags, _)) = read_frame(&mut tcp).await {
            if kind == 0x6 && flags & 0x1 == 0 {
                pings += 1;
            }
        }
        assert_eq!(pings, 1, "one PING, unanswered, then the connection closed");
    }

    /// At a stop, a call in flight is answered, then the connection closes (GOAWAY).
    #[tokio::test]
    async fn a_stop_lets_a_call_in_flight_finish_then_closes() {
        let release = Arc::new(tokio::sync::Notify::new());
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
        let held = Arc::clone(&release);
        let (addr, stop, served) = serve(Limits::DEFAULT, move |_| {
            let (held, started) = (Arc::clone(&held), started_tx.clone());
            Box::pin(async move {
                let _ = started.send(());
                held.notified().await;
                Ok(whole(b"done"))
            }) as Call
        })
        .await;
        let (client, connection) = client(addr).await;
        let mut client = client.ready().await.expect("ready");
        let (response, _stream) = client.send_request(request(), true).expect("send");
        tokio::time::timeout(BOUND, started.recv())
            .await
            .expect("the call starts in time")
            .expect("started");
        stop.cancel();
        release.notify_one();
        let response = tokio::time::timeout(BOUND, response)
            .await
            .expect("in time")
            .expect("answered");
        let data = response
            .into_body()
            .data()
            .await
            .expect("data")
            .expect("ok");
        assert_eq!(&data[..], b"done");
        tokio::time::timeout(BOUND, connection)
            .await
            .expect("closed in time")
            .expect("join")
            .expect("clean close");
        tokio::time::timeout(BOUND, served)
            .await
            .expect("server ended in time")
            .expect("join");
    }
}
