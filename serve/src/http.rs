//! Serving an axum router (or any service of the same shape) on guarded connections: HTTP/1
//! with a header deadline, HTTP/2 (h2c or over TLS) with keepalive pings, graceful shutdown of
//! every open connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

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
    let builder = hyper_builder(limits);
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

/// hyper's server for HTTP/1 and HTTP/2 within `limits`.
pub(crate) fn hyper_builder(
    limits: Limits,
) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
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
    builder
}

/// Serves each connection `connections` yields on a task of its own (`serve`) until `stop` is
/// cancelled, then waits for every open one to close.
pub(crate) async fn accept_until_stopped<T, S, F, Fut>(
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
///
/// The stop token is polled only after its own wake-up ([`StopWake`]), not on every wake-up
/// of the connection: a `select!` over both polled it each time, about 160 instructions per
/// wake-up and several wake-ups per request (bench/notes.md, "per-wake-up costs").
pub(crate) async fn until_stopped<C, E>(
    server: &'static str,
    connection: C,
    stop: &CancellationToken,
    shut_down: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let signal = Arc::new(StopWake::new());
    let stop_waker = Waker::from(Arc::clone(&signal));
    let mut task: Option<Waker> = None;
    let ended = std::future::poll_fn(|cx| {
        if !task
            .as_ref()
            .is_some_and(|known| known.will_wake(cx.waker()))
        {
            signal.wakes(cx.waker());
            task = Some(cx.waker().clone());
        }
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        if signal.take()
            && stopped
                .as_mut()
                .poll(&mut Context::from_waker(&stop_waker))
                .is_ready()
        {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    match ended {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::debug!(server, "connection ended with an error: {e}"),
        None => {
            shut_down(connection.as_mut());
            if let Err(e) = connection.await {
                tracing::debug!(server, "connection ended with an error: {e}");
            }
        }
    }
}

/// The waker [`until_stopped`] gives the stop token: it records that the token woke the task,
/// then wakes the task.
struct StopWake {
    /// Set by a wake-up, taken by the next poll; set at first, so the token is polled (and
    /// its waker registered) once before anything woke it.
    woke: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl StopWake {
    fn new() -> Self {
        StopWake {
            woke: AtomicBool::new(true),
            task: Mutex::new(None),
        }
    }

    /// Wake-ups go to `task` from now on.
    fn wakes(&self, task: &Waker) {
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
    }

    /// Whether the token woke the task since the last call.
    fn take(&self) -> bool {
        self.woke.load(Ordering::Relaxed) && self.woke.swap(false, Ordering::AcqRel)
    }
}

impl Wake for StopWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woke.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

/// The connections `listener` accepts within `limits`, without TLS.
pub(crate) fn plain_connections<L: Listener>(
    server: &'static str,
    listener: L,
    limits: Limits,
    stop: &CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Guarded<L::Io>>> {
    incoming(server, listener, limits, stop.clone(), |io, _| async {
        Ok(io)
    })
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
    let connections = plain_connections(server, listener, limits, &stop);
    serve_http(server, connections, router, limits, stop).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n";
    const BOUND: Duration = Duration::from_secs(10);

    /// Reads until the server closes the connection (bounded): what it sent.
    async fn until_closed(client: &mut TcpStream) -> String {
        let mut received = Vec::new();
        tokio::time::timeout(BOUND, client.read_to_end(&mut received))
            .await
            .expect("the server closes the connection in time")
            .expect("read");
        String::from_utf8_lossy(&received).into_owned()
    }

    /// A request held by an HTTP/1 server on loopback until [`Held::release`].
    struct Held {
        stop: CancellationToken,
        release: Arc<tokio::sync::Notify>,
        client: TcpStream,
        served: tokio::task::JoinHandle<()>,
    }

    impl Held {
        /// A server whose only route waits to be released and then answers 200 `done`, and a
        /// client whose request has reached that route.
        async fn start() -> Held {
            let stop = CancellationToken::new();
            let (entered, mut entries) = tokio::sync::mpsc::channel(1);
            let release = Arc::new(tokio::sync::Notify::new());
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let route = {
                let release = Arc::clone(&release);
                move || {
                    let (entered, release) = (entered.clone(), Arc::clone(&release));
                    async move {
                        let _ = entered.send(()).await;
                        release.notified().await;
                        "done"
                    }
                }
            };
            let router = axum::Router::new().route("/", axum::routing::get(route));
            let served = serve_plain_http("test", listener, router, Limits::DEFAULT, stop.clone());
            let served = tokio::spawn(served);
            let mut client = TcpStream::connect(addr).await.expect("connect");
            client.write_all(REQUEST).await.expect("write");
            entries.recv().await.expect("the request reached the route");
            Held {
                stop,
                release,
                client,
                served,
            }
        }

        fn release(&self) {
            self.release.notify_one();
        }

        /// Waits (bounded) for the server to return.
        async fn served(self) {
            tokio::time::timeout(BOUND, self.served)
                .await
                .expect("the server returns in time")
                .expect("the server task");
        }
    }

    /// A stop closes an idle keep-alive connection, and the server returns, although the
    /// connection's task is asleep when the stop comes (only the stop's own wake-up can
    /// reach it).
    #[tokio::test]
    async fn a_stop_closes_an_idle_keep_alive_connection() {
        let mut held = Held::start().await;
        held.release();
        let mut head = [0u8; 12];
        tokio::time::timeout(BOUND, held.client.read_exact(&mut head))
            .await
            .expect("an answer in time")
            .expect("read");
        assert_eq!(&head, b"HTTP/1.1 200");
        // Idle now, kept alive; then the stop.
        held.stop.cancel();
        let rest = until_closed(&mut held.client).await;
        assert!(rest.ends_with("done"), "{rest:?}");
        held.served().await;
    }

    /// A request in flight when the stop comes is answered, and the connection then closes.
    #[tokio::test]
    async fn a_request_in_flight_at_a_stop_is_answered_then_the_connection_closes() {
        let mut held = Held::start().await;
        held.stop.cancel();
        held.release();
        let answer = until_closed(&mut held.client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(answer.ends_with("done"), "{answer:?}");
        held.served().await;
    }
}
