//! The app-facing gRPC API (port 50001): `dapr.proto.runtime.v1.Dapr`.

use std::sync::Arc;

use dapr_proto::common::v1::{InvokeRequest, InvokeResponse};
use dapr_proto::internals::v1::{ApiVersion, InternalInvokeRequest};
use dapr_proto::runtime::v1::dapr_server::Dapr;
use dapr_proto::runtime::v1::{
    AppConnectionHealthProperties, AppConnectionProperties, GetMetadataRequest,
    GetMetadataResponse, InvokeServiceRequest, SetMetadataRequest, ShutdownRequest,
};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use super::invoker::parse_target;
use super::state::Shared;
use crate::Error;
use crate::error::{DAPR_HTTP_STATUS, http_to_grpc};
use crate::trace::{self, attr};
use crate::wire::{self, MessageStream, Metadata, ReceivedInvokeService, names};

/// The gRPC API's invocation method, as client spans name the API called.
const INVOKE_SERVICE: &str = "/dapr.proto.runtime.v1.Dapr/InvokeService";

pub struct DaprApi {
    shared: Arc<Shared>,
}

impl DaprApi {
    pub fn new(shared: Arc<Shared>) -> Self {
        DaprApi { shared }
    }

    /// Checks `dapr-api-token` when `DAPR_API_TOKEN` is set.
    fn authorize(&self, metadata: &MetadataMap) -> Result<(), Status> {
        self.authorize_token(metadata.get(names::API_TOKEN).map(|v| v.as_bytes()))
    }

    /// Checks the `dapr-api-token` a call `given` when `DAPR_API_TOKEN` is set.
    fn authorize_token(&self, given: Option<&[u8]>) -> Result<(), Status> {
        match self.shared.config.api_token.as_deref() {
            None => Ok(()),
            Some(expected) => match given {
                Some(given) if given == expected.as_bytes() => Ok(()),
                _ => Err(Error::Unauthorized.into()),
            },
        }
    }

    /// `Dapr/InvokeService`, read and answered here instead of by tonic's codec: the request
    /// is read in place ([`wire::ReceivedInvokeService`]). A call to an app id with no
    /// Resiliency policies loaded, nearly every call, goes to the peer framed in place: the
    /// invocation's bytes and the client's metadata written into the `CallLocal` frame as they
    /// came ([`super::Invoker::invoke_received`]; bench/notes.md, "InvokeService read and framed
    /// in place"). An HTTPEndpoint, a URL, or a call under policies is decoded and goes through
    /// [`Dapr::invoke_service`], as tonic called it. Either way the answer is what tonic's
    /// unary service wrote, with [`headers_before_status`].
    async fn serve_invoke<B: wire::RequestBody>(
        &self,
        request: http::Request<B>,
    ) -> http::Response<tonic::body::Body> {
        let (parts, body) = request.into_parts();
        let answer = async {
            self.authorize_token(parts.headers.get(names::API_TOKEN).map(|v| v.as_bytes()))?;
            let limit = self.shared.config.max_body_size;
            let mut messages = wire::Messages::<_, ReceivedInvokeService>::request(body, limit);
            let read = messages
                .message()
                .await?
                .ok_or_else(|| Status::internal("Missing request message."))?;
            // The whole request, as tonic's unary service reads it, before the call.
            while messages.message().await?.is_some() {}
            let framed_in_place = self.shared.invoker.resiliency().is_none()
                && self.shared.endpoints.destination(&read.id).is_none();
            if !framed_in_place {
                return self
                    .invoke_decoded(parts.headers, read)
                    .await
                    .map(typed_answer);
            }
            let target = parse_target(&read.id, &self.shared.config.namespace)?;
            let invocation = read.message.ok_or_else(|| {
                Status::invalid_argument("InvokeServiceRequest.message is required")
            })?;
            super::http::check_method(&read.method)?;
            let client = wire::ClientHeaders::grpc(parts.headers);
            let mut span = self.invoke_span(
                client.first(names::TRACEPARENT),
                (&read.id, &read.method),
                client.iter().filter_map(|(name, _, values)| {
                    Some((name.as_str(), values.first()?.to_str().ok()?))
                }),
            );
            let call = self
                .shared
                .invoker
                .invoke_received(&target, Some(&invocation), &client);
            let response = trace::traced(&mut span, call)
                .await
                .map_err(invoke_status)?;
            if answer_code(&response).1 != tonic::Code::Ok {
                return invoke_answer(response, span).map(typed_answer);
            }
            if let Some(mut span) = span {
                span.grpc_status(tonic::Code::Ok);
                span.end();
            }
            // A successful answer's head straight from the peer's headers.
            let wire::ReceivedResponse {
                headers, message, ..
            } = response;
            let mut answer = wire::answer(futures::stream::iter([Ok::<_, Status>(
                message.unwrap_or_default(),
            )]));
            metadata_into_head(headers, answer.headers_mut());
            Ok(answer)
        };
        match answer.await {
            Ok(answer) => answer,
            Err(status) => grpc_headers_before_status(status.into_http()),
        }
    }

    /// The client span of an `InvokeService` call to `(target, method)`, when tracing is on:
    /// it continues the client's `traceparent` and records its metadata.
    fn invoke_span<'h>(
        &self,
        traceparent: Option<&str>,
        call: (&str, &str),
        metadata: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) -> Option<trace::Span> {
        let active = self.shared.tracer.active()?;
        Some(active.client_span(
            traceparent,
            call,
            attr::GRPC,
            || INVOKE_SERVICE.to_owned(),
            metadata,
        ))
    }

    /// An `InvokeService` request read in place, decoded by prost for [`Dapr::invoke_service`].
    async fn invoke_decoded(
        &self,
        headers: http::HeaderMap,
        read: ReceivedInvokeService,
    ) -> Result<Response<InvokeResponse>, Status> {
        use prost::Message;
        let message = read
            .message
            .map(InvokeRequest::decode)
            .transpose()
            .map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")))?;
        let request = InvokeServiceRequest {
            id: read.id.to_string(),
            message,
        };
        self.invoke_service(Request::from_parts(
            MetadataMap::from_headers(headers),
            tonic::Extensions::default(),
            request,
        ))
        .await
    }
}

/// The status of an invocation that failed before an app answered. A target that cannot be
/// reached (unknown, or its sidecar gone) is `Internal`, as upstream's `ERR_DIRECT_INVOKE`
/// (`pkg/messages/predefined.go`), where the proxy says `Unavailable`.
fn invoke_status(e: Error) -> Status {
    match e {
        Error::Invoke { .. }
        | Error::Peer { .. }
        | Error::CircuitBreaker { .. }
        | Error::PolicyTimeout { .. } => Status::internal(e.to_string()),
        other => other.into(),
    }
}

/// Sends the metadata of an error status as a response head of its own, before the status in
/// the trailers, as grpc-go does once a handler has set header metadata
/// (`writeStatus`, `internal/transport/http2_server.go`). tonic answers every error
/// trailers-only (one HEADERS frame with the status), whose metadata clients read as trailers:
/// grpc-go's `grpc.Header()` and grpcio's `initial_metadata()` would not see
/// `dapr-http-status`. Only responses carrying metadata change; a bare status stays
/// trailers-only, as grpc-go sends it.
pub fn headers_before_status(
    mut response: http::Response<axum::body::Body>,
) -> http::Response<axum::body::Body> {
    if let Some(trailers) = status_trailers(response.headers_mut()) {
        *response.body_mut() = axum::body::Body::new(only_trailers(trailers));
    }
    response
}

/// [`headers_before_status`] for a response of the Dapr service called ahead of the router
/// ([`InvokeFirst`]).
fn grpc_headers_before_status(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    if let Some(trailers) = status_trailers(response.headers_mut()) {
        *response.body_mut() = tonic::body::Body::new(only_trailers(trailers));
    }
    response
}

/// The status of a trailers-only answer that carries metadata, taken out of `headers` to be
/// sent as trailers ([`headers_before_status`]); `None` leaves the answer as it is.
fn status_trailers(headers: &mut http::HeaderMap) -> Option<http::HeaderMap> {
    const STATUS_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
    let trailers_only = headers.contains_key(&names::header::GRPC_STATUS);
    let has_metadata = headers
        .keys()
        .any(|name| name != http::header::CONTENT_TYPE && !STATUS_HEADERS.contains(&name.as_str()));
    if !trailers_only || !has_metadata {
        return None;
    }
    let mut trailers = http::HeaderMap::new();
    for name in STATUS_HEADERS {
        if let Some(value) = headers.remove(name) {
            trailers.insert(name, value);
        }
    }
    Some(trailers)
}

/// A body of no data that ends with `trailers`.
fn only_trailers(
    trailers: http::HeaderMap,
) -> impl http_body::Body<Data = bytes::Bytes, Error = std::convert::Infallible> + Send + 'static {
    use http_body_util::BodyExt;
    http_body_util::Empty::<bytes::Bytes>::new().with_trailers(async move { Some(Ok(trailers)) })
}

/// The path of `Dapr/InvokeService`.
const INVOKE_SERVICE_PATH: &str = "/dapr.proto.runtime.v1.Dapr/InvokeService";

/// The layer that sends `Dapr/InvokeService`, nearly every call the gRPC API serves, to the
/// Dapr service ahead of the router: per call, axum's router matched the path, captured it as
/// a URL parameter, cloned the boxed route and the route layer's services and boxed their
/// futures (bench/notes.md, "InvokeService ahead of the router"). Every other call goes
/// through the router as before. Answers get what the route layer gives the others:
/// [`headers_before_status`]. Every call is bounded by its `grpc-timeout`
/// ([`wire::within_deadline`]), as grpc-go's server bounds upstream's.
#[derive(Clone)]
pub struct InvokeFirstLayer {
    dapr: Arc<DaprApi>,
}

impl InvokeFirstLayer {
    pub fn new(dapr: Arc<DaprApi>) -> Self {
        InvokeFirstLayer { dapr }
    }
}

impl<S> tower::Layer<S> for InvokeFirstLayer {
    type Service = InvokeFirst<S>;

    fn layer(&self, inner: S) -> InvokeFirst<S> {
        InvokeFirst {
            inner,
            dapr: Arc::clone(&self.dapr),
        }
    }
}

/// [`InvokeFirstLayer`]'s service.
#[derive(Clone)]
pub struct InvokeFirst<S> {
    inner: S,
    dapr: Arc<DaprApi>,
}

/// `InvokeService` reads the server's own body in place; any other method goes to tonic's
/// routes with the body boxed as tonic takes it.
impl<S, B> tower::Service<http::Request<B>> for InvokeFirst<S>
where
    B: wire::RequestBody,
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<
        futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>,
        S::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // `InvokeService` is always ready.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures::future::Either;
        let deadline = wire::grpc_timeout(request.headers());
        if request.uri().path() == INVOKE_SERVICE_PATH {
            let dapr = Arc::clone(&self.dapr);
            return Either::Left(Box::pin(async move {
                Ok(wire::within_deadline(deadline, dapr.serve_invoke(request)).await)
            }));
        }
        let answer = self.inner.call(request.map(tonic::body::Body::new));
        match deadline {
            None => Either::Right(answer),
            Some(_) => {
                use futures::FutureExt;
                let answer = answer.map(|answered| answered.unwrap_or_else(|never| match never {}));
                Either::Left(Box::pin(wire::within_deadline(deadline, answer).map(Ok)))
            }
        }
    }
}

/// At most this many values of a peer's answer become the gRPC response's metadata: tonic's
/// map panics when it is full (a table of 32 768 slots), and a peer's answer may carry any
/// number of headers. No gRPC client takes a header block of this size anyway.
const MAX_RESPONSE_METADATA: usize = 16_384;

/// A peer's answer headers → the gRPC API response's metadata, named as
/// [`wire::grpc_metadata_name`] names them; at most [`MAX_RESPONSE_METADATA`] values.
fn response_metadata(headers: &wire::ReceivedMetadata) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for (name, values) in headers.iter() {
        let Some(name) = wire::grpc_metadata_name(name) else {
            continue;
        };
        let Ok(key) = name.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>() else {
            continue;
        };
        let mut values = values.iter().peekable();
        while let Some(value) = values.next() {
            if metadata.len() >= MAX_RESPONSE_METADATA {
                tracing::warn!(
                    kept = MAX_RESPONSE_METADATA,
                    "the peer's answer has more header values than a gRPC response can carry; \
                     the rest are left out"
                );
                return metadata;
            }
            if let Ok(value) = MetadataValue::try_from(&**value) {
                // The key is moved into the map with its last value, not copied.
                if values.peek().is_some() {
                    metadata.append(key.clone(), value);
                } else {
                    metadata.append(key, value);
                    break;
                }
            }
        }
    }
    metadata
}

/// Incoming gRPC metadata → invocation metadata, as [`wire::ClientHeaders::grpc`] keeps it
/// (the token never travels on).
fn grpc_metadata(metadata: MetadataMap) -> Metadata {
    let mut out = Metadata::new();
    wire::ClientHeaders::grpc(metadata.into_headers()).insert_into(&mut out);
    out
}

/// The app's status in a peer's answer, and the gRPC code it is to the client: a gRPC app's
/// own, or an HTTP app's status mapped (a non-2xx one is an error), as upstream.
fn answer_code(response: &wire::ReceivedResponse) -> (i32, tonic::Code) {
    let code = response.status.as_ref().map_or(200, |s| s.code);
    let grpc_code = if (0..100).contains(&code) {
        tonic::Code::from(code)
    } else {
        http_to_grpc(u16::try_from(code).unwrap_or(500))
    };
    (code, grpc_code)
}

/// A typed answer as tonic's unary service wrote it: its metadata, then the message.
fn typed_answer(reply: Response<InvokeResponse>) -> http::Response<tonic::body::Body> {
    let (metadata, message, _) = reply.into_parts();
    let mut answer = wire::answer(futures::stream::iter([Ok::<_, Status>(message)]));
    answer.headers_mut().extend(metadata.into_headers());
    answer
}

/// A peer's answer headers → the gRPC API response's head, as [`response_metadata`] makes
/// them metadata (the same names and values; no entry starts past [`MAX_RESPONSE_METADATA`]
/// values) but without a metadata map between: each value becomes its header value without a
/// copy.
fn metadata_into_head(headers: wire::ReceivedMetadata, head: &mut http::HeaderMap) {
    let _ = head.try_reserve(headers.len());
    for (name, values) in headers.into_entries() {
        let Some(name) = wire::grpc_metadata_name(&name) else {
            continue;
        };
        // An ASCII metadata key, as tonic's `MetadataKey<Ascii>` takes one: binary (`-bin`)
        // entries are left out.
        if name.ends_with("-bin") {
            continue;
        }
        let Ok(key) = http::HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        // `MetadataValue<Ascii>`'s check is `HeaderValue`'s.
        let values = values
            .into_iter()
            .map(|value| http::HeaderValue::from_maybe_shared(value.into_bytes()));
        if head.len() >= MAX_RESPONSE_METADATA || !wire::append_all(head, key, values) {
            tracing::warn!(
                kept = head.len(),
                "the peer's answer has more header values than a gRPC response can carry; the \
                 rest are left out"
            );
            return;
        }
    }
}

/// The gRPC answer to an invocation the peer (or an endpoint) answered: its headers as
/// metadata, and an HTTP app's non-2xx status or a gRPC app's error as an error status, as
/// upstream's `InvokeService` (`pkg/api/grpc/grpc.go`).
fn invoke_answer(
    response: wire::ReceivedResponse,
    span: Option<trace::Span>,
) -> Result<Response<InvokeResponse>, Status> {
    let (code, grpc_code) = answer_code(&response);
    let mut headers = response_metadata(&response.headers);
    if let Some(mut span) = span {
        span.grpc_status(grpc_code);
        span.end();
    }
    if grpc_code != tonic::Code::Ok {
        // A gRPC app's own status message, or an HTTP app's body, as upstream.
        let body = if code < 100 {
            response
                .status
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_default()
        } else {
            response
                .message
                .as_ref()
                .and_then(|m| m.data.as_ref())
                .map(|d| String::from_utf8_lossy(&d.value).into_owned())
                .unwrap_or_default()
        };
        // An HTTP app's headers and its status are header metadata, sent before the error
        // status as upstream's `grpc.SetHeader` has them (`pkg/api/grpc/grpc.go`): see
        // [`headers_before_status`].
        let mut status = Status::new(grpc_code, body);
        if code >= 100
            && let Ok(value) = MetadataValue::try_from(code.to_string())
        {
            headers.insert(DAPR_HTTP_STATUS, value);
            *status.metadata_mut() = headers;
        }
        return Err(status);
    }
    let mut reply = Response::new(response.message.unwrap_or_default());
    *reply.metadata_mut() = headers;
    Ok(reply)
}

/// Where an `InvokeService` call goes.
enum Route<'a> {
    Endpoint(super::endpoint::Destination<'a>),
    App(crate::resolve::Target),
}

#[tonic::async_trait]
impl Dapr for DaprApi {
    async fn invoke_service(
        &self,
        request: Request<InvokeServiceRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        self.authorize(request.metadata())?;
        let (metadata, _, request) = request.into_parts();
        let metadata = grpc_metadata(metadata);
        // A named HTTPEndpoint or a URL first, then an app id, as upstream.
        let route = match self.shared.endpoints.destination(&request.id) {
            Some(endpoint) => Route::Endpoint(endpoint),
            None => Route::App(parse_target(&request.id, &self.shared.config.namespace)?),
        };
        let message = request
            .message
            .ok_or_else(|| Status::invalid_argument("InvokeServiceRequest.message is required"))?;
        super::http::check_method(&message.method)?;
        let mut span = self.invoke_span(
            wire::first(&metadata, names::TRACEPARENT),
            (&request.id, &message.method),
            metadata
                .iter()
                .filter_map(|(k, list)| Some((k.as_str(), list.values.first()?.as_str()))),
        );
        let call = async {
            match route {
                // Boxed: rare next to app ids, and its future would add to every call's.
                Route::Endpoint(endpoint) => {
                    Box::pin(async {
                        match self.shared.invoker.resiliency() {
                            None => {
                                let endpoints = &self.shared.endpoints;
                                endpoints.call_unary(endpoint, message, &metadata).await
                            }
                            Some(policies) => {
                                super::resilient::endpoint_unary(
                                    &self.shared.invoker,
                                    policies,
                                    &self.shared.endpoints,
                                    endpoint,
                                    message,
                                    &metadata,
                                )
                                .await
                            }
                        }
                        .map(wire::ReceivedResponse::from)
                    })
                    .await
                }
                Route::App(target) => {
                    let internal = InternalInvokeRequest {
                        ver: ApiVersion::V1 as i32,
                        metadata,
                        message: Some(message),
                        actor: None,
                    };
                    self.shared.invoker.invoke_unary(&target, internal).await
                }
            }
        };
        let response = trace::traced(&mut span, call)
            .await
            .map_err(invoke_status)?;
        invoke_answer(response, span)
    }

    async fn get_metadata(
        &self,
        request: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        self.authorize(request.metadata())?;
        let c = &self.shared.config;
        let health = c
            .app_health_check
            .as_ref()
            .map(|h| AppConnectionHealthProperties {
                health_check_path: h.path.clone(),
                health_probe_interval: format!("{}s", h.interval.as_secs()),
                health_probe_timeout: format!("{}ms", h.timeout.as_millis()),
                health_threshold: i32::try_from(h.threshold).unwrap_or(i32::MAX),
            });
        Ok(Response::new(GetMetadataResponse {
            id: c.app_id.clone(),
            runtime_version: crate::VERSION.to_owned(),
            extended_metadata: self.shared.extended_metadata().into_iter().collect(),
            app_connection_properties: Some(AppConnectionProperties {
                port: c.app_port.map_or(0, i32::from),
                protocol: c.app_protocol.as_str().to_owned(),
                channel_address: c.app_channel_address.clone(),
                max_concurrency: c
                    .app_max_concurrency
                    .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX)),
                health,
            }),
            ..Default::default()
        }))
    }

    async fn set_metadata(
        &self,
        request: Request<SetMetadataRequest>,
    ) -> Result<Response<()>, Status> {
        self.authorize(request.metadata())?;
        let request = request.into_inner();
        if let Ok(mut map) = self.shared.extended.lock() {
            map.insert(request.key, request.value);
        }
        Ok(Response::new(()))
    }

    async fn shutdown(&self, request: Request<ShutdownRequest>) -> Result<Response<()>, Status> {
        self.authorize(request.metadata())?;
        let force = request
            .metadata()
            .get(names::FORCE_SHUTDOWN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        tracing::info!(force, "shutdown requested through the gRPC API");
        if force {
            self.shared.shutdown.force.cancel();
        }
        self.shared.shutdown.graceful.cancel();
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_answer_with_too_many_headers_is_cut_short_without_a_panic() {
        let mut headers = Metadata::new();
        // `MetadataMap::append` would panic at about 24 000 entries.
        for i in 0..40_000 {
            wire::set(&mut headers, &format!("x-{i}"), "v");
        }
        let few: Metadata = headers
            .iter()
            .take(3)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let headers = wire::ReceivedMetadata::from(headers);
        assert_eq!(response_metadata(&headers).len(), MAX_RESPONSE_METADATA);
        let few = wire::ReceivedMetadata::from(few);
        assert_eq!(response_metadata(&few).len(), 3, "a usual answer is whole");
    }

    #[test]
    fn a_peers_answer_head_is_the_metadata_tonic_would_have_sent() {
        let mut headers = Metadata::new();
        for (name, value) in [
            ("X-Multi", "a"),
            ("X-Multi", "b\n"),
            ("X-Multi", "c"),
            ("Content-Type", "text/plain"),
            ("grpc-status", "0"),
            ("trace-bin", "AAEC"),
            ("x-obs", "caf\u{e9}"),
            ("Connection", "close"),
            ("dapr-http-status", "200"),
        ] {
            headers
                .entry(name.into())
                .or_default()
                .values
                .push(value.into());
        }
        let received = wire::ReceivedMetadata::from(headers);
        let by_tonic = response_metadata(&received).into_headers();
        let mut head = http::HeaderMap::new();
        metadata_into_head(received, &mut head);
        assert_eq!(head, by_tonic);
        assert_eq!(head.get_all("x-multi").iter().count(), 2);
        assert_eq!(head["dapr-content-type"], "text/plain");
        assert_eq!(head["dapr-grpc-status"], "0");
        assert!(!head.contains_key("trace-bin") && !head.contains_key("connection"));

        let mut many = Metadata::new();
        for i in 0..20_000 {
            wire::set(&mut many, &format!("x-{i}"), "v");
        }
        let mut head = http::HeaderMap::new();
        metadata_into_head(wire::ReceivedMetadata::from(many), &mut head);
        assert_eq!(head.len(), MAX_RESPONSE_METADATA);
    }

    #[test]
    fn every_valid_value_of_a_peers_answer_header_is_kept_in_order() {
        let mut headers = Metadata::new();
        for value in ["a", "b\n", "c"] {
            headers
                .entry("x-multi".into())
                .or_default()
                .values
                .push(value.into());
        }
        for value in ["d\n", "e"] {
            headers
                .entry("x-last".into())
                .or_default()
                .values
                .push(value.into());
        }
        let metadata = response_metadata(&wire::ReceivedMetadata::from(headers));
        let values = |name| {
            metadata
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(values("x-multi"), ["a", "c"]);
        assert_eq!(values("x-last"), ["e"]);
    }

    #[tokio::test]
    async fn an_error_with_metadata_sends_it_as_headers_before_the_status_trailers() {
        use http_body_util::BodyExt;
        let mut status = Status::not_found("Not Found");
        status
            .metadata_mut()
            .insert(DAPR_HTTP_STATUS, MetadataValue::from_static("404"));
        let response = headers_before_status(status.into_http());
        assert_eq!(response.headers()[DAPR_HTTP_STATUS], "404");
        assert!(!response.headers().contains_key("grpc-status"));
        let trailers = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .trailers()
            .cloned()
            .expect("trailers");
        assert_eq!(trailers["grpc-status"], "5");
        assert_eq!(trailers["grpc-message"], "Not%20Found");
        assert!(!trailers.contains_key(DAPR_HTTP_STATUS));

        // A bare status stays trailers-only, as grpc-go sends it.
        let response = headers_before_status(Status::internal("x").into_http());
        assert_eq!(response.headers()["grpc-status"], "13");
        let ok = http::Response::new(axum::body::Body::empty());
        assert!(
            headers_before_status(ok)
                .headers()
                .get("grpc-status")
                .is_none()
        );
    }

    #[test]
    fn grpc_metadata_drops_the_token_and_transport_entries() {
        let mut md = MetadataMap::new();
        md.insert("dapr-api-token", MetadataValue::from_static("secret"));
        md.insert("grpc-timeout", MetadataValue::from_static("1S"));
        md.insert("x-user", MetadataValue::from_static("a"));
        let out = grpc_metadata(md);
        assert_eq!(wire::first(&out, "x-user"), Some("a"));
        assert!(!out.contains_key("dapr-api-token"));
        assert!(!out.contains_key("grpc-timeout"));
    }
}
