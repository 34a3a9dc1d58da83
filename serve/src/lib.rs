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

/// Up to this many fields, [`field`] compares names instead of hashing.
const SCANNED_FIELDS: usize = 8;

/// The first value of `name` in `headers`, as `HeaderMap::get` finds it. An HTTP/2 head or
/// trailers block between sidecars has a handful of fields, where comparing each name is
/// cheaper than hashing the one looked for (about 150 instructions a lookup; bench/notes.md,
/// "peer ids, statuses and app headers looked up without hashing"); a larger map is looked up
/// by its hash.
pub fn field<'a>(
    headers: &'a ::http::HeaderMap,
    name: &::http::HeaderName,
) -> Option<&'a ::http::HeaderValue> {
    if headers.len() <= SCANNED_FIELDS {
        return headers
            .iter()
            .find(|(held, _)| *held == name)
            .map(|(_, value)| value);
    }
    headers.get(name)
}

/// How many header names [`header_name`] keeps read on a thread.
const KEPT_NAMES: usize = 16;
/// The longest header name kept read.
const LONGEST_KEPT_NAME: usize = 64;

/// Header names read last on this thread, as they were spelt, each with its `HeaderName`, the
/// oldest replaced first.
struct KeptNames {
    names: Vec<(Box<[u8]>, ::http::HeaderName)>,
    next: usize,
}

thread_local! {
    static KEPT: std::cell::RefCell<KeptNames> = const {
        std::cell::RefCell::new(KeptNames { names: Vec::new(), next: 0 })
    };
}

/// A header name read from an HTTP/1 head, as `HeaderName::from_bytes` reads it. A client and
/// an app send the same few names again and again, and reading one lower-cases and checks each
/// of its bytes and, for a name outside `http`'s standard set, copies it into an allocation of
/// its own: about 130-180 instructions a name (bench/notes.md, "peer ids, statuses and app
/// headers looked up without hashing"). The same bytes again get a clone of the name read
/// before. A name that is not valid is never kept, and is refused as `from_bytes` refuses it.
pub fn header_name(raw: &[u8]) -> Result<::http::HeaderName, ::http::header::InvalidHeaderName> {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        if let Some((_, name)) = kept
            .names
            .iter()
            .find(|(spelt, _)| spelt.len() == raw.len() && **spelt == *raw)
        {
            return Ok(name.clone());
        }
        let name = ::http::HeaderName::from_bytes(raw)?;
        if raw.len() <= LONGEST_KEPT_NAME {
            let entry = (Box::from(raw), name.clone());
            if kept.names.len() < KEPT_NAMES {
                kept.names.push(entry);
            } else {
                let next = kept.next;
                kept.names[next] = entry;
                kept.next = (next + 1) % KEPT_NAMES;
            }
        }
        Ok(name)
    })
}

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

#[cfg(test)]
mod tests {
    use ::http::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn a_header_name_reads_as_from_bytes_reads_it_kept_or_not() {
        use super::{KEPT, KEPT_NAMES, LONGEST_KEPT_NAME, header_name};
        let long = format!("x-{}", "l".repeat(LONGEST_KEPT_NAME));
        let mut spellings: Vec<String> = (0..KEPT_NAMES + 4)
            .map(|i| format!("X-Name-{i:02}"))
            .collect();
        spellings.extend(["x-name-00", "Content-Type", "content-type", "date"].map(String::from));
        spellings.push(long);
        for _ in 0..3 {
            for spelt in &spellings {
                let read = header_name(spelt.as_bytes()).expect("valid");
                let fresh = HeaderName::from_bytes(spelt.as_bytes()).expect("valid");
                assert_eq!(read, fresh, "{spelt}");
            }
        }
        for invalid in [&b""[..], b"a b", b"x:y", b"\xff"] {
            assert!(header_name(invalid).is_err(), "{invalid:?}");
            assert!(header_name(invalid).is_err(), "{invalid:?} again");
        }
        KEPT.with(|kept| {
            let kept = kept.borrow();
            assert_eq!(kept.names.len(), KEPT_NAMES);
            assert!(
                kept.names
                    .iter()
                    .all(|(spelt, _)| spelt.len() <= LONGEST_KEPT_NAME)
            );
        });
    }

    #[test]
    fn a_field_is_found_as_a_map_lookup_finds_it_in_small_and_large_maps() {
        let names: Vec<HeaderName> = [
            "content-length",
            "te",
            "grpc-status",
            "grpc-timeout",
            "grpc-statux",
            "x-a",
        ]
        .iter()
        .map(|n| HeaderName::from_static(n))
        .collect();
        for size in 0..3 * super::SCANNED_FIELDS {
            let mut headers = HeaderMap::new();
            for i in 0..size {
                // Repeated names, so a name can have several values; the first one counts.
                let name = names[(i * 5) % names.len()].clone();
                let value = HeaderValue::from_str(&i.to_string()).expect("value");
                headers.append(name, value);
            }
            for name in &names {
                assert_eq!(
                    super::field(&headers, name),
                    headers.get(name),
                    "{size} {name}"
                );
            }
        }
    }
}
