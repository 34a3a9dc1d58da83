//! The internal gRPC server's routes: `ServiceInvocation`'s two methods, whose requests are read
//! with the callee's own decoder (`wire::ReceivedRequest`: metadata as slices of the received
//! message) and whose streamed answers are written by its own encoder (`wire::SentResponse`:
//! headers straight from the app's), and every other gRPC path proxied to the app.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::routing::any;
use dapr_proto::internals::v1::InternalInvokeResponse;
use tonic::Status;
use tonic::codec::Codec;

use super::{CALL_LOCAL, CALL_LOCAL_STREAM, Internal};
use crate::wire::{
    Received, ReceivedDecoder, ReceivedRequest, ReceivedStreamMessage, Sent, SentEncoder,
    SentResponseStream,
};

/// The service's path prefix: a method of it not served here is unimplemented, not proxied.
const SERVICE_PATHS: &str = "/dapr.proto.internals.v1.ServiceInvocation/{*method}";

/// The routes of [`Internal`]'s server.
pub fn routes(internal: Arc<Internal>) -> tonic::service::Routes {
    let call_local = {
        let internal = Arc::clone(&internal);
        move |request: axum::extract::Request| {
            let internal = Arc::clone(&internal);
            async move {
                let method = tower::service_fn(move |request| {
                    let internal = Arc::clone(&internal);
                    async move { internal.call_local(request).await }
                });
                let response = server::<InternalInvokeResponse, ReceivedRequest>()
                    .unary(method, request)
                    .await;
                response.map(axum::body::Body::new)
            }
        }
    };
    let call_local_stream = {
        let internal = Arc::clone(&internal);
        move |request: axum::extract::Request| {
            let internal = Arc::clone(&internal);
            async move {
                let method = tower::service_fn(move |request| {
                    let internal = Arc::clone(&internal);
                    async move { internal.call_local_stream(request).await }
                });
                let response = server::<SentResponseStream, ReceivedStreamMessage>()
                    .streaming(method, request)
                    .await;
                response.map(axum::body::Body::new)
            }
        }
    };
    let router = axum::Router::new()
        .route(CALL_LOCAL, any(call_local))
        .route(CALL_LOCAL_STREAM, any(call_local_stream))
        .route(
            SERVICE_PATHS,
            any(|| async { Status::unimplemented("").into_http::<axum::body::Body>() }),
        )
        .fallback(move |request: axum::extract::Request| {
            let internal = Arc::clone(&internal);
            async move {
                let request = request.map(tonic::body::Body::new);
                match internal.proxy(request).await {
                    Ok(response) => response.map(axum::body::Body::new),
                    Err(e) => Status::from(e).into_http::<axum::body::Body>(),
                }
            }
        });
    tonic::service::Routes::from(router)
}

/// A method's server: no compression (as the generated servers, by default), and no limit on
/// a message's size (each caller's `--max-body-size` bounds what it sends).
fn server<E, D>() -> tonic::server::Grpc<InternalCodec<E, D>>
where
    E: Sent + Send + 'static,
    D: Received + Send + 'static,
{
    tonic::server::Grpc::new(InternalCodec(PhantomData))
        .apply_max_message_size_config(Some(usize::MAX), Some(usize::MAX))
}

/// [`Sent`]'s encoder for the responses, [`Received`]'s decoder for the requests.
struct InternalCodec<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Codec for InternalCodec<E, D>
where
    E: Sent + Send + 'static,
    D: Received + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = SentEncoder<E>;
    type Decoder = ReceivedDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        SentEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ReceivedDecoder::default()
    }
}
