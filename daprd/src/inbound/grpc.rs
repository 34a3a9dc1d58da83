//! The internal gRPC server's routes: `ServiceInvocation`'s two methods, whose requests are read
//! with the callee's own decoder (`wire::ReceivedRequest`: metadata as slices of the received
//! message) and whose answers are written by its own encoder (`wire::SentResponse`: headers
//! straight from the app's), and every other gRPC path proxied to the app.
//!
//! Routed by a `match` on the path, served by `h2`'s server directly
//! (`dapr_serve::serve_h2`), the messages framed by `wire::Messages` and `wire::Answer`: no
//! router, no tonic transport or codec stack (bench/notes.md).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

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

/// Any request body the server hands over: the internal port's own (`dapr_serve::H2Body`,
/// counted by the metrics layer), read in place; boxed only for a call proxied to the app.
impl<B: wire::RequestBody> tower::Service<http::Request<B>> for Routes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures::FutureExt;
        // The route's future is the call's future, boxed as it is: an async block around it
        // cost about 280 instructions per call to poll (bench/notes.md, "timers, futures and
        // copies per call").
        let deadline = wire::grpc_timeout(request.headers());
        let routes = self.clone();
        match deadline {
            None => wire::boxed_in_place(|| routes.route(request)),
            Some(_) => wire::boxed_in_place(|| {
                let answer = routes.route(request).map(|Ok(answer)| answer);
                wire::within_deadline(deadline, answer).map(Ok)
            }),
        }
    }
}

impl Routes {
    /// The answer to `request`, by its path; never an error (as the service's), so that this
    /// future is the service's own, without a wrapper around it.
    async fn route<B: wire::RequestBody>(
        self,
        request: http::Request<B>,
    ) -> Result<http::Response<Body>, Infallible> {
        let Routes { internal, peer } = self;
        let limit = internal.message_limit;
        Ok(match request.uri().path() {
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
            _ => match internal.proxy(peer.as_ref(), request.map(Body::new)).await {
                Ok(response) => response,
                Err(e) => Status::from(e).into_http(),
            },
        })
    }
}
