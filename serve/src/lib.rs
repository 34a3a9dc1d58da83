//! Accepting and serving connections so that no client can hold a resource without bound:
//! a cap on open connections per listener, a deadline for a new connection to show which
//! protocol it speaks (TLS handshake included), a header-read deadline for HTTP/1, keepalive
//! pings for HTTP/2. Every server of daprd, sentry and the injector accepts through here; the
//! values and what a client sees at each limit are in `docs/limits.md`.

/// `AsyncWrite` for a pin-projected wrapper whose `io` field does all the writing (the
/// connection wrappers here only watch reads, or carry data beside the stream).
macro_rules! write_through_io {
    ($wrapper:ty, [$($generics:tt)*]) => {
        impl<$($generics)*> tokio::io::AsyncWrite for $wrapper {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.project().io.poll_write(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.project().io.poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.project().io.poll_shutdown(cx)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.project().io.poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
        }
    };
}

mod accept;
mod h2;
mod http;
mod http1;
mod peer;
mod preface;

use std::net::SocketAddr;
use std::time::Duration;

pub use accept::{Guarded, Listener, bind_unix, incoming};
pub use h2::{H2Body, H2Service, H2Settings, serve_h2};
pub use http::{HttpHandler, ResponseBody, serve_http, serve_plain_http};
pub use http1::{
    BodyTimedOut, Http1Settings, InvalidHeader, LAST_CHUNK, PlainAnswer, PlainHandler,
    PlainRequest, bad_request, has_token, push_chunk_head, serve_plain_http1_first,
};
pub use peer::WithPeer;
pub use preface::Preface;

/// How many connections the kernel may queue for `accept` (capped by
/// `net.core.somaxconn`). The standard library's 128 overflows under a burst of connects, and
/// each dropped SYN costs its client a one-second retransmit; Go's listeners use somaxconn.
pub const ACCEPT_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`ACCEPT_BACKLOG`] (and `SO_REUSEADDR`, as the standard
/// library sets it, so a restarted server can bind while old connections linger).
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; further clients wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// From accept until the connection has completed its TLS handshake (if any) and shown
    /// its protocol: the HTTP/2 preface, or the first bytes of an HTTP/1 request.
    pub handshake: Duration,
    /// HTTP/1: from the first byte of a request head (or from the end of the previous
    /// response, on an idle keep-alive connection) until the head is complete.
    pub header_read: Duration,
    /// HTTP/2: a PING after this much silence from the client, and the connection closed if
    /// its answer takes longer than `keepalive_timeout`.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Limits {
    /// What every server here uses unless it says otherwise. The header deadline is upstream
    /// daprd's `ReadHeaderTimeout` (pkg/api/http/server.go); the handshake deadline is shorter
    /// than grpc-go's 120 s `ConnectionTimeout`, since an honest client sends its preface at once.
    pub const DEFAULT: Limits = Limits {
        max_connections: 4096,
        handshake: Duration::from_secs(10),
        header_read: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(5),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
