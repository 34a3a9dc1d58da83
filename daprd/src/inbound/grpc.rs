//! The internal gRPC server's routes: `ServiceInvocation`'s two methods, whose requests are read
//! with the callee's own decoder (`wire::ReceivedRequest`: metadata as slices of the received
//! message) and whose answers are written by its own encoder (`wire::SentResponse`: headers
//! straight from the app's), and every other gRPC path proxied to the app.
//!
//! Routed by a `match` on the path, served by hyper's HTTP/2 server directly
//! (`dapr_serve::serve_h2`), the messages framed by `wire::Messages` and `wire::Answer`: no
//! router, no tonic transport or codec stack (bench/notes.md).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::Status;
use tonic::body::Body;

use super::{CALL_LOCAL, CALL_LOCAL_STREAM, Internal};
use crate::identity::transport::PeerIdentity;
use crate::wire::{self, MessageStream, Messages, ReceivedRequest};

/// The service's path prefix: a method of it not served here is unimplemented, not proxied.
const SERVICE_PREFIX: &str = "/dapr.proto.internals.v1.ServiceInvocation/";

/// One connection's routes: the peer its certificate proved (none on a plaintext port) goes
/// with every request on it.
#[derive(Clone)]
pub struct Routes {
    internal: Arc<Internal>,
    peer: Option<PeerIdentity>,
}

impl Routes {
    pub fn new(internal: Arc<Internal>, peer: Option<PeerIdentity>) -> Routes {
        Routes { internal, peer }
    }
}

impl tower::Service<http::Request<Body>> for Routes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // One box per call: the route's future and the deadline around it are one future.
        let deadline = grpc_timeout(request.headers());
        let routes = self.clone();
        Box::pin(async move {
            let answer = routes.route(request);
            Ok(match deadline {
                None => answer.await,
                Some(deadline) => tokio::time::timeout(deadline, answer)
                    .await
                    .unwrap_or_else(|_| Status::deadline_exceeded("timeout expired").into_http()),
            })
        })
    }
}

impl Routes {
    /// The answer to `request`, by its path.
    async fn route(self, request: http::Request<Body>) -> http::Response<Body> {
        let Routes { internal, peer } = self;
        let limit = internal.message_limit;
        match request.uri().path() {
            CALL_LOCAL => {
                let mut messages =
                    Messages::<_, ReceivedRequest>::request(request.into_body(), limit);
                let answered = async {
                    let message = messages
                        .message()
                        .await?
                        .ok_or_else(|| Status::internal("Missing request message."))?;
                    // The whole request, as a unary call reads it, before the handler runs.
                    while messages.message().await?.is_some() {}
                    internal.call_local(peer, message).await
                };
                match answered.await {
                    Ok(head) => wire::answer(futures::stream::iter([Ok(head)])),
                    Err(status) => status.into_http(),
                }
            }
            CALL_LOCAL_STREAM => {
                let messages = Messages::request(request.into_body(), limit);
                match internal.call_local_stream(peer, messages).await {
                    Ok(answer) => wire::answer(answer),
                    Err(status) => status.into_http(),
                }
            }
            path if path.starts_with(SERVICE_PREFIX) => Status::unimplemented("").into_http(),
            _ => match internal.proxy(peer.as_ref(), request).await {
                Ok(response) => response,
                Err(e) => Status::from(e).into_http(),
            },
        }
    }
}

/// The caller's `grpc-timeout` (at most eight digits and a unit, per gRPC over HTTP/2):
/// the handler gets that long to answer, as grpc-go's server cancels a call's context at its
/// deadline. A value that does not parse is ignored, as tonic's server ignores it.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(&wire::names::header::GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = value.split_last().map(|(unit, digits)| (digits, *unit))?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("a header value"));
        grpc_timeout(&headers)
    }

    #[test]
    fn a_grpc_timeout_reads_in_each_unit_and_a_malformed_one_is_ignored() {
        assert_eq!(timeout_of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout_of("2M"), Some(Duration::from_secs(120)));
        assert_eq!(
            timeout_of("99999999S"),
            Some(Duration::from_secs(99_999_999))
        );
        assert_eq!(timeout_of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout_of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout_of("9n"), Some(Duration::from_nanos(9)));
        for malformed in ["", "S", "100", "123456789S", "1x", "-1S", "1.5S", " 1S"] {
            assert_eq!(timeout_of(malformed), None, "{malformed:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
