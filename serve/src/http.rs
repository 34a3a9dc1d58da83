//! Serving an axum router (or any service of the same shape) on guarded connections: HTTP/1
//! with a header deadline, HTTP/2 (h2c or over TLS) with keepalive pings, graceful shutdown of
//! every open connection.

use std::convert::Infallible;
use std::io;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::{Guarded, Limits, Listener, incoming};

/// What [`serve_http`] serves: an axum `Router`, or any cloneable service of the same shape.
pub trait HttpHandler<B>:
    Service<Request<Incoming>, Response = Response<B>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> HttpHandler<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The body of an [`HttpHandler`]'s responses.
pub trait ResponseBody:
    http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

/// Serves `router` on each connection `connections` yields until `stop` is cancelled, then
/// shuts every open connection down gracefully (in-flight requests finish) and returns once
/// all are closed. The caller bounds that wait by its grace period.
pub async fn serve_http<T, S, R, B>(
    server: &'static str,
    connections: S,
    router: R,
    limits: Limits,
    stop: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: tokio_stream::Stream<Item = io::Result<Guarded<T>>> + Unpin,
    R: HttpHandler<B>,
    B: ResponseBody,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    accept_until_stopped(server, connections, &stop, |io| {
        let (builder, router, stop) = (builder.clone(), router.clone(), stop.clone());
        async move {
            let service = TowerToHyperService::new(router);
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            until_stopped(server, connection, &stop, |c| c.graceful_shutdown()).await;
        }
    })
    .await;
}

/// Serves each connection `connections` yields on a task of its own (`serve`) until `stop` is
/// cancelled, then waits for every open one to close.
async fn accept_until_stopped<T, S, F, Fut>(
    server: &'static str,
    mut connections: S,
    stop: &CancellationToken,
    mut serve: F,
) where
    S: tokio_stream::Stream<Item = io::Result<Guarded<T>>> + Unpin,
    F: FnMut(Guarded<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let open = TaskTracker::new();
    loop {
        let io = tokio::select! {
            _ = stop.cancelled() => break,
            next = connections.next() => match next {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!(server, "connection failed before serving: {e}");
                    continue;
                }
                None => break,
            },
        };
        open.spawn(serve(io));
    }
    open.close();
    open.wait().await;
}

/// Drives `connection` to its end; on `stop`, shuts it down gracefully (in-flight requests
/// finish) with `shut_down` and drives it to its end then.
async fn until_stopped<C, E>(
    server: &'static str,
    connection: C,
    stop: &CancellationToken,
    shut_down: impl FnOnce(std::pin::Pin<&mut C>),
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(server, "connection ended with an error: {e}");
            }
        }
        () = stop.cancelled() => {
            shut_down(connection.as_mut());
            let _ = connection.await;
        }
    }
}

/// [`serve_http`] on plaintext connections accepted from `listener` (TCP or Unix-domain)
/// within `limits`.
pub async fn serve_plain_http<L, R, B>(
    server: &'static str,
    listener: L,
    router: R,
    limits: Limits,
    stop: CancellationToken,
) where
    L: Listener<Io: AsyncRead + AsyncWrite + Unpin>,
    R: HttpHandler<B>,
    B: ResponseBody,
{
    let connections = incoming(server, listener, limits, stop.clone(), |io, _| async {
        Ok(io)
    });
    serve_http(server, connections, router, limits, stop).await;
}

/// The HTTP/2 settings of a [`serve_h2`] server beyond its [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    /// The receive window per stream and per connection.
    pub receive_window: u32,
    /// Concurrent streams a client may open on one connection; `None`: no bound.
    pub max_concurrent_streams: Option<u32>,
}

/// Serves HTTP/2 only (a gRPC server) on each connection `connections` yields until `stop` is
/// cancelled, then shuts every open connection down gracefully as [`serve_http`] does.
/// `service` makes each connection's service from what its handshake learned about the peer
/// (its `ConnectInfo`), so a request needs no extension to say who sent it.
///
/// hyper's HTTP/2 server directly, without a router or tower stack around it: keepalive pings
/// within `limits`, no `date` header (gRPC has no use for it), hyper's other defaults
/// (`docs/limits.md`).
pub async fn serve_h2<T, S, M, Svc, B>(
    server: &'static str,
    connections: S,
    limits: Limits,
    settings: H2Settings,
    stop: CancellationToken,
    service: M,
) where
    T: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Send + Unpin + 'static,
    S: tokio_stream::Stream<Item = io::Result<Guarded<T>>> + Unpin,
    M: Fn(T::ConnectInfo) -> Svc,
    Svc: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    Svc::Future: Send + 'static,
    B: ResponseBody,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .initial_stream_window_size(settings.receive_window)
        .initial_connection_window_size(settings.receive_window)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .auto_date_header(false);
    accept_until_stopped(server, connections, &stop, |io| {
        let peer = tonic::transport::server::Connected::connect_info(&io);
        let connection = builder.serve_connection(TokioIo::new(io), service(peer));
        let stop = stop.clone();
        async move {
            until_stopped(server, connection, &stop, |c| c.graceful_shutdown()).await;
        }
    })
    .await;
}
