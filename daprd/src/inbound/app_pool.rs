//! Keep-alive HTTP/1.1 connections to a plaintext HTTP app, pooled over hyper's connection API.
//!
//! hyper_util's pooled client (which `https` and `h2c` apps still use) keys its pool by scheme
//! and authority in a SipHash map, wraps each connection and request in layers of its own and
//! parses each request's absolute URI: about 10k instructions per call (bench/notes.md, "the
//! app's connections pooled by hand"). A sidecar has one app at one address, so a stack of idle
//! connections does. The policy is that client's: at most `max_idle` idle connections, the
//! most recent used first, each closed after `idle_timeout` unused; a request that a reused
//! connection refused before sending anything (the app closed it meanwhile) goes out again on
//! another.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// A request body for the app.
pub type AppBody = UnsyncBoxBody<Bytes, crate::wire::BoxError>;

/// How the pool treats connections.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Idle connections kept at most; more are closed as they come back.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
}

/// Why a request got no response from the app.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {address}: no connection within {seconds} s")]
    ConnectTimeout { address: String, seconds: u64 },
    #[error("HTTP/1.1 handshake with {address}: {source}")]
    Handshake {
        address: String,
        #[source]
        source: hyper::Error,
    },
    #[error("request to {address}: {source}")]
    Request {
        address: String,
        #[source]
        source: hyper::Error,
    },
}

/// Pooled connections to one app address.
pub struct AppPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Host and port to connect to (an IPv6 address without brackets).
    host: String,
    port: u16,
    /// `host:port` as a `Host` header (an IPv6 address in brackets), and for errors.
    authority: HeaderValue,
    settings: PoolSettings,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Oldest first: connections come back at the end and leave from the end.
    idle: Vec<Idle>,
    /// Whether a task is closing expired idle connections.
    reaping: bool,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<AppBody>,
    since: Instant,
}

impl AppPool {
    /// A pool for the app at `host` (a name or an IP address, an IPv6 one without brackets)
    /// and `port`.
    pub fn new(host: &str, port: u16, settings: PoolSettings) -> Result<Self, http::Error> {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(AppPool {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                port,
                authority: HeaderValue::try_from(authority)?,
                settings,
                state: Mutex::new(State {
                    idle: Vec::new(),
                    reaping: false,
                }),
            }),
        })
    }

    /// Sends `request` (its URI in origin form, `/path?query`) on an idle connection or a new
    /// one, with a `Host` header unless it has one. The connection goes back to the pool when
    /// the response's body has been read to its end.
    pub async fn send(
        &self,
        mut request: Request<AppBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        if !request.headers().contains_key(header::HOST) {
            let host = self.inner.authority.clone();
            request.headers_mut().insert(header::HOST, host);
        }
        // Each pass takes another idle connection or opens one, and a new connection's
        // failure ends the loop: at most `max_idle` + 1 passes.
        loop {
            let (mut sender, reused) = match self.checkout().await {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let back = Some((sender, Arc::downgrade(&self.inner)));
                    return Ok(response.map(|body| PooledBody { body, back }));
                }
                Err(mut failed) => match failed.take_message() {
                    // Not sent at all: the app closed this idle connection meanwhile.
                    Some(again) if reused => request = again,
                    _ => {
                        return Err(PoolError::Request {
                            address: self.inner.address(),
                            source: failed.into_error(),
                        });
                    }
                },
            }
        }
    }

    /// The most recently used idle connection that is still open, ready for a request.
    async fn checkout(&self) -> Option<SendRequest<AppBody>> {
        loop {
            let idle = self.inner.state.lock().ok()?.idle.pop()?;
            if idle.since.elapsed() >= self.inner.settings.idle_timeout {
                continue;
            }
            let mut sender = idle.sender;
            // Ready as soon as the connection has finished its previous exchange; an error
            // means the app closed it.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<AppBody>, PoolError> {
        let inner = &self.inner;
        let connect = tokio::net::TcpStream::connect((inner.host.as_str(), inner.port));
        let stream = match tokio::time::timeout(inner.settings.connect_timeout, connect).await {
            Err(_) => {
                return Err(PoolError::ConnectTimeout {
                    address: inner.address(),
                    seconds: inner.settings.connect_timeout.as_secs(),
                });
            }
            Ok(Err(source)) => {
                return Err(PoolError::Connect {
                    address: inner.address(),
                    source,
                });
            }
            Ok(Ok(stream)) => stream,
        };
        // Requests and answers are small and come one at a time: no Nagle delay.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "app connection: TCP_NODELAY not set");
        }
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|source| PoolError::Handshake {
                    address: inner.address(),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "app connection closed");
            }
        });
        Ok(sender)
    }
}

impl Inner {
    fn address(&self) -> String {
        String::from_utf8_lossy(self.authority.as_bytes()).into_owned()
    }

    /// Keeps a connection whose exchange is over for the next request, unless the app closed
    /// it or the pool is full; starts the task that closes expired ones.
    fn put(self: &Arc<Self>, sender: SendRequest<AppBody>) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.idle.len() >= self.settings.max_idle {
            return;
        }
        state.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        if !state.reaping {
            state.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self), self.settings.idle_timeout));
        }
    }
}

/// Closes idle connections as they expire, waking when the oldest one does; ends when none are
/// left (the next one back starts another) or the pool is gone.
async fn reap(pool: Weak<Inner>, idle_timeout: Duration) {
    let mut wait = idle_timeout;
    loop {
        tokio::time::sleep(wait).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let Ok(mut state) = pool.state.lock() else {
            return;
        };
        let now = Instant::now();
        state
            .idle
            .retain(|idle| now.duration_since(idle.since) < idle_timeout);
        match state.idle.first() {
            Some(oldest) => wait = idle_timeout.saturating_sub(now.duration_since(oldest.since)),
            None => {
                state.reaping = false;
                return;
            }
        }
    }
}

/// A response body from a pooled connection: at its end the connection goes back to the pool.
/// Dropped before its end (or failed), it takes the connection with it: HTTP/1.1 cannot skip
/// the rest of a body.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    back: Option<(SendRequest<AppBody>, Weak<Inner>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((sender, pool)) = self.back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.put(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            // The last frame: the connection is free before the reader asks for the end.
            Some(Ok(_)) if this.body.is_end_stream() => this.give_back(),
            Some(Ok(_)) => {}
            None => this.give_back(),
            Some(Err(_)) => this.back = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full};
    use tokio::net::TcpListener;

    use super::*;

    /// An app on loopback (hyper's HTTP/1.1 server) that answers each request with its `Host`
    /// header; `keep_alive: false` closes each connection after its answer. Counts the
    /// connections it accepted, and those that ended.
    struct App {
        port: u16,
        accepted: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
    }

    async fn app(keep_alive: bool) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (a, e) = (Arc::clone(&accepted), Arc::clone(&ended));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let e = Arc::clone(&e);
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|request: Request<Incoming>| async move {
                            let host = request.headers().get(header::HOST).cloned();
                            let host = host.map(|h| Bytes::copy_from_slice(h.as_bytes()));
                            Ok::<_, Infallible>(Response::new(Full::new(host.unwrap_or_default())))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        App {
            port,
            accepted,
            ended,
        }
    }

    fn pool(port: u16, max_idle: usize, idle_timeout: Duration) -> AppPool {
        let settings = PoolSettings {
            max_idle,
            idle_timeout,
            connect_timeout: Duration::from_secs(5),
        };
        AppPool::new("127.0.0.1", port, settings).expect("pool")
    }

    fn get(path: &str) -> Request<AppBody> {
        let body = Empty::<Bytes>::new().map_err(crate::wire::BoxError::from);
        Request::get(path)
            .body(body.boxed_unsync())
            .expect("request")
    }

    /// Sends a GET and reads the answer to its end.
    async fn call(pool: &AppPool, request: Request<AppBody>) -> Bytes {
        let response = pool.send(request).await.expect("an answer");
        assert!(response.status().is_success());
        let body = response.into_body().collect().await.expect("a body");
        body.to_bytes()
    }

    fn idle(pool: &AppPool) -> usize {
        pool.inner.state.lock().expect("lock").idle.len()
    }

    /// Waits, at most 5 s, until `count` reaches `want`.
    async fn until(count: &AtomicUsize, want: usize) {
        let wait = async {
            while count.load(Ordering::SeqCst) < want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| {
                panic!("count stayed at {} < {want}", count.load(Ordering::SeqCst))
            });
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection_and_carry_the_host() {
        let app = app(true).await;
        let pool = pool(app.port, 64, Duration::from_secs(90));
        for _ in 0..5 {
            let host = call(&pool, get("/echo")).await;
            assert_eq!(host, format!("127.0.0.1:{}", app.port).as_bytes());
        }
        assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle(&pool), 1);
        // A Host the request already has is kept.
        let mut request = get("/echo");
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_static("orders.local"));
        assert_eq!(call(&pool, request).await, &b"orders.local"[..]);
    }

    #[tokio::test]
    async fn an_app_that_closes_each_connection_is_still_answered() {
        let app = app(false).await;
        let pool = pool(app.port, 64, Duration::from_secs(90));
        for _ in 0..5 {
            call(&pool, get("/")).await;
        }
        assert_eq!(app.accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_along() {
        let app = app(true).await;
        let pool = pool(app.port, 64, Duration::from_secs(90));
        let response = pool.send(get("/")).await.expect("an answer");
        drop(response);
        until(&app.ended, 1).await;
        assert_eq!(idle(&pool), 0);
        call(&pool, get("/")).await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_more_than_max_idle_connections_are_kept() {
        let app = app(true).await;
        let pool = pool(app.port, 2, Duration::from_secs(90));
        // Three answers held at once need three connections.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(pool.send(get("/")).await.expect("an answer"));
        }
        for response in held {
            response.into_body().collect().await.expect("a body");
        }
        assert_eq!(app.accepted.load(Ordering::SeqCst), 3);
        assert_eq!(idle(&pool), 2);
        until(&app.ended, 1).await;
    }

    #[tokio::test]
    async fn idle_connections_are_closed_when_they_expire() {
        let app = app(true).await;
        let pool = pool(app.port, 64, Duration::from_millis(100));
        call(&pool, get("/")).await;
        assert_eq!(idle(&pool), 1);
        // The app sees the connection end without another request.
        until(&app.ended, 1).await;
        assert_eq!(idle(&pool), 0);
        // And the next request opens a new one.
        call(&pool, get("/")).await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_app_that_is_not_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        let pool = pool(port, 64, Duration::from_secs(90));
        let error = pool.send(get("/")).await.expect_err("no app");
        assert!(matches!(error, PoolError::Connect { .. }), "{error}");
        assert!(
            error.to_string().contains(&format!("127.0.0.1:{port}")),
            "{error}"
        );
    }
}
