//! The peer-facing side: the internal gRPC server other sidecars call, which checks access
//! control and calls the local app.

pub mod acl;
pub mod app_channel;
mod app_pool;
mod grpc;
pub mod health;

use std::sync::Arc;

use bytes::Bytes;
use dapr_proto::common::v1::http_extension::Verb;
use dapr_proto::common::v1::{InvokeResponse, StreamPayload};
use dapr_proto::internals::v1::Status as InvokeStatus;
use futures::StreamExt;
use tonic::Status;

use crate::Error;
use crate::config::Config;
use crate::identity::transport::PeerIdentity;
use crate::metrics::Metrics;
use crate::trace::{Kind, Span, Tracer};
use crate::wire::{
    self, BoxError, BoxStream, MessageStream, ReceivedRequest, ReceivedStreamMessage, SentResponse,
    SentResponseStream, Spelling, names,
};
use acl::{AccessControl, CallerIdentity};
use app_channel::{AppChannel, AppRequest, AppResponse};

/// Trust domain assumed for callers until their identity comes from a certificate.
const DEFAULT_TRUST_DOMAIN: &str = "public";

pub struct Internal {
    app: Option<AppChannel>,
    acl: Option<AccessControl>,
    health: health::AppHealth,
    metrics: Arc<Metrics>,
    tracer: Arc<Tracer>,
    /// The largest message a peer may send (`wire::message_limit`).
    message_limit: usize,
}

impl Internal {
    pub fn new(
        config: &Config,
        metrics: &Arc<Metrics>,
        tracer: &Arc<Tracer>,
    ) -> Result<Self, Error> {
        Ok(Internal {
            app: AppChannel::from_config(config, metrics)?,
            acl: AccessControl::from_spec(config.configuration.spec.access_control.as_ref()),
            health: health::AppHealth::default(),
            metrics: Arc::clone(metrics),
            tracer: Arc::clone(tracer),
            message_limit: crate::wire::message_limit(config.max_body_size),
        })
    }

    /// The app channel, if the app is there and healthy.
    fn app(&self) -> Result<&AppChannel, Error> {
        let app = self
            .app
            .as_ref()
            .ok_or(crate::error::AppChannelError::NoAppPort)?;
        if !self.health.is_healthy() {
            return Err(Error::AppUnhealthy);
        }
        Ok(app)
    }

    /// Probes the app (`--enable-app-health-check`) until `stop`.
    pub async fn probe_app(
        &self,
        check: &crate::config::AppHealthCheck,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        if let Some(app) = &self.app {
            health::probe_loop(app, check, &self.health, stop).await;
        }
    }

    /// Access control on the caller: the SPIFFE id of its certificate under mTLS, else the
    /// identity its metadata names.
    fn check_access(
        &self,
        peer: Option<&PeerIdentity>,
        caller_app: Option<&str>,
        caller_ns: Option<&str>,
        operation: &str,
        verb: &str,
    ) -> Result<(), Error> {
        let Some(acl) = &self.acl else {
            return Ok(());
        };
        let caller = match peer {
            Some(PeerIdentity(id)) => Some(CallerIdentity {
                trust_domain: id.trust_domain(),
                namespace: id.namespace(),
                app_id: id.app_id(),
            }),
            None => caller_app
                .zip(caller_ns)
                .map(|(app_id, namespace)| CallerIdentity {
                    trust_domain: DEFAULT_TRUST_DOMAIN,
                    namespace,
                    app_id,
                }),
        };
        if acl.is_allowed(caller, operation, verb) {
            return Ok(());
        }
        let err = Error::PermissionDenied {
            caller: denied_caller(peer),
            operation: operation.to_owned(),
            verb: verb.to_owned(),
        };
        tracing::info!(reason = %err, "invocation denied");
        Err(err)
    }

    /// A proxied gRPC call (any service other than ours): access control on the full method
    /// name, then forwarded to the app as it is.
    pub async fn proxy(
        &self,
        peer: Option<&PeerIdentity>,
        mut request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Error> {
        let mut span = self.proxy_span(&mut request);
        let result = self.proxy_inner(peer, request).await;
        crate::trace::end_on_error(&mut span, &result);
        Ok(match span {
            None => result?,
            Some(span) => crate::trace::ended_with_stream(span, result?),
        })
    }

    /// The server span of a proxied call, when tracing is on; the app's `traceparent` names it.
    fn proxy_span(&self, request: &mut http::Request<tonic::body::Body>) -> Option<Span> {
        let active = self.tracer.active()?;
        let headers = request.headers_mut();
        let incoming = headers
            .get(names::TRACEPARENT)
            .and_then(|v| v.to_str().ok());
        let mut span = active.start(incoming, Kind::Server);
        if let Ok(value) = wire::traceparent_value(&span.traceparent()) {
            headers.insert(names::TRACEPARENT, value);
        }
        span.proxied(request.uri().path());
        span.dapr_headers(
            request
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        );
        Some(span)
    }

    async fn proxy_inner(
        &self,
        peer: Option<&PeerIdentity>,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Error> {
        {
            // Scoped so no borrow of the (non-`Sync`) request lives across the await below.
            let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
            self.check_access(
                peer,
                header(names::CALLER_APP_ID),
                header(names::CALLER_NAMESPACE),
                request.uri().path(),
                "",
            )?;
        }
        self.app()?.proxy(request).await
    }

    /// Checks the caller against access control and builds the app request head.
    fn admit(
        &self,
        peer: Option<&PeerIdentity>,
        mut request: ReceivedRequest,
        body: BoxStream<Result<Bytes, BoxError>>,
    ) -> Result<(&AppChannel, AppRequest), Error> {
        let app = self.app()?;
        let message = request
            .message
            .ok_or_else(|| Error::Malformed("request carries no message".into()))?;
        wire_check_method(&message.method)?;
        let verb = wire::method_of(Verb::try_from(message.verb).unwrap_or(Verb::None));
        self.check_access(
            peer,
            request.metadata.first(names::CALLER_APP_ID),
            request.metadata.first(names::CALLER_NAMESPACE),
            &message.method,
            verb.as_str(),
        )?;
        // The app learns who called from the certificate, not from what the caller claims.
        // (Usually the caller said the truth: then its entries stay, and nothing is allocated.)
        if let Some(PeerIdentity(id)) = peer {
            for (name, value) in [
                (names::CALLER_APP_ID, id.app_id()),
                (names::CALLER_NAMESPACE, id.namespace()),
            ] {
                if !request.metadata.is_only(name, value) {
                    request.metadata.set(name, value);
                }
            }
        }
        Ok((
            app,
            AppRequest {
                method: message.method,
                verb,
                query: message.querystring,
                content_type: message.content_type,
                type_url: message.type_url,
                metadata: request.metadata,
                body,
            },
        ))
    }
}

fn wire_check_method(method: &str) -> Result<(), Error> {
    crate::outbound::http::check_method(method)
}

/// The response head sent back to the calling sidecar, written straight from the app's
/// headers, which it takes, without a map of them ([`wire::SentResponse`]). An HTTP app's
/// header names travel Go-canonical, a gRPC app's lower-case, as upstream's callee sends them;
/// the content type travels in the message only. A unary answer carries the app's whole body
/// as its `data`. A streamed one sends the bytes after the head, and typed data's `type_url`
/// travels in the head's `data`, as upstream's callee streams it
/// (`pkg/api/grpc/daprinternal.go`).
fn sent_head(app: &mut AppResponse, data: Option<Vec<u8>>) -> SentResponse {
    let (status, mut message) = response_status_and_message(app);
    if let Some(data) = data {
        message.data.get_or_insert_default().value = data;
    }
    let spelling = if app.from_http_app {
        Spelling::Canonical
    } else {
        Spelling::AsIs
    };
    SentResponse::new(status, std::mem::take(&mut app.headers), spelling, message)
}

/// The app's status, and its content type and data's `type_url` (the data's bytes are not
/// here).
fn response_status_and_message(app: &AppResponse) -> (InvokeStatus, InvokeResponse) {
    let content_type = match &app.content_type {
        Some(content_type) => content_type.clone(),
        None => app
            .headers
            .get(&http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    };
    let status = InvokeStatus {
        code: i32::from(app.status),
        message: app.message.clone(),
        details: Vec::new(),
    };
    let message = InvokeResponse {
        data: (!app.type_url.is_empty()).then(|| prost_types::Any {
            type_url: app.type_url.clone(),
            value: Vec::new(),
        }),
        content_type,
    };
    (status, message)
}

/// `ServiceInvocation`'s methods, served by [`grpc::Routes`].
impl Internal {
    async fn call_local(
        &self,
        peer: Option<PeerIdentity>,
        mut request: ReceivedRequest,
    ) -> Result<SentResponse, Status> {
        // The bytes only: the data's `type_url` stays with the message for the app.
        let data = request
            .message
            .as_mut()
            .map(|m| std::mem::take(&mut m.data))
            .unwrap_or_default();
        // The whole body is here, so the app gets it framed by its length (as upstream sends
        // it), not chunked, whatever length the caller's metadata claimed (in whichever case).
        request.metadata.set_as_spelt(
            &wire::CONTENT_LENGTH,
            itoa::Buffer::new().format(data.len()),
        );
        let mut span = self.server_span(&mut request, CALL_LOCAL);
        let admitted = self.admit(peer.as_ref(), request, app_channel::once(data));
        let (app, app_request) = ended_on_error(&mut span, admitted)?;
        let caller = app_request.metadata.first(names::CALLER_APP_ID);
        let received = self.metrics.invocation_received(caller);
        let response = received
            .respond(app.invoke(app_request), |r| r.status)
            .await;
        let response = ended_on_error(&mut span, response)?;
        if let Some(span) = span {
            span.end();
        }
        let mut response = response;
        // An empty stream in its place: a zero-sized box, no allocation.
        let body = std::mem::replace(&mut response.body, Box::pin(futures::stream::empty()));
        let body = app_channel::collect(body, usize::MAX).await?;
        // The app's bytes, not a copy, when nothing else holds them (a gRPC app's data).
        Ok(sent_head(&mut response, Some(Vec::from(body))))
    }

    async fn call_local_stream<B>(
        &self,
        peer: Option<PeerIdentity>,
        mut incoming: wire::Messages<B, ReceivedStreamMessage>,
    ) -> Result<BoxStream<Result<SentResponseStream, Status>>, Status>
    where
        B: wire::RequestBody,
    {
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the request"))?;
        let mut head = first
            .head
            .ok_or_else(|| Status::invalid_argument("the first message carries no request"))?;
        let mut span = self.server_span(&mut head, CALL_LOCAL_STREAM);
        // The caller's --max-body-size bounds what it streams; here only each message is bounded.
        let declared = wire::declared_len(head.metadata.first_of(&wire::CONTENT_LENGTH));
        let body = wire::payload_body(first.payload, incoming, declared).await;
        let admitted = self.admit(peer.as_ref(), head, body);
        let (app, app_request) = ended_on_error(&mut span, admitted)?;
        let caller = app_request.metadata.first(names::CALLER_APP_ID);
        let received = self.metrics.invocation_received(caller);
        let response = received
            .respond(app.invoke(app_request), |r| r.status)
            .await;
        let mut response = ended_on_error(&mut span, response)?;
        if let Some(span) = span {
            span.end();
        }
        // A small answer the app has sent in full rides in the head message.
        let declared = wire::declared_len(
            response
                .headers
                .get(&http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()),
        );
        let mut head = SentResponseStream {
            head: Some(sent_head(&mut response, None)),
            payload: None,
        };
        let body = wire::read_small(response.body, declared, app_channel::APP_RESPONSE_TIMEOUT)
            .await
            .map_err(|e| Status::aborted(format!("app response body failed: {e}")))?;
        let rest: BoxStream<Result<Bytes, wire::BoxError>> = match wire::ready_part(body) {
            wire::Ready::Complete(data) if data.len() <= wire::MAX_CHUNK => {
                head.payload = (!data.is_empty()).then_some(StreamPayload { data, seq: 0 });
                Box::pin(futures::stream::empty())
            }
            wire::Ready::Complete(data) => Box::pin(futures::stream::iter([Ok(data)])),
            wire::Ready::Streaming(body) => body,
        };
        let payloads = wire::into_payloads(rest).map(|p| {
            p.map(|payload| SentResponseStream {
                head: None,
                payload: Some(payload),
            })
            .map_err(|e| Status::aborted(format!("app response body failed: {e}")))
        });
        let stream = futures::stream::once(async move { Ok(head) }).chain(payloads);
        Ok(Box::pin(stream))
    }
}

/// The internal API's methods, as server spans name the API called.
const CALL_LOCAL: &str = "/dapr.proto.internals.v1.ServiceInvocation/CallLocal";
const CALL_LOCAL_STREAM: &str = "/dapr.proto.internals.v1.ServiceInvocation/CallLocalStream";

impl Internal {
    /// The server span of an invocation, when tracing is on: it continues the caller's
    /// `traceparent`, which is replaced by the span's own so the app sees the callee's hop.
    fn server_span(&self, request: &mut ReceivedRequest, rpc: &str) -> Option<Span> {
        let active = self.tracer.active()?;
        let mut span = active.start(request.metadata.first(names::TRACEPARENT), Kind::Server);
        request
            .metadata
            .set(names::TRACEPARENT, &span.traceparent());
        if span.recording() {
            let method = request.message.as_ref().map_or("", |m| &*m.method);
            span.server_invocation(method, rpc);
            span.dapr_headers(
                request
                    .metadata
                    .iter()
                    .filter_map(|(name, values)| Some((name, &**values.first()?))),
            );
        }
        Some(span)
    }
}

/// Ends `span` as failed when `result` is an error. An app's answer, whatever its status, ends
/// it without error, as upstream's interceptor sees only the handler's error.
fn ended_on_error<T>(span: &mut Option<Span>, result: Result<T, Error>) -> Result<T, Error> {
    crate::trace::end_on_error(span, &result);
    result
}

/// Shared handle for the server builder.
pub fn server(
    config: &Config,
    metrics: &Arc<Metrics>,
    tracer: &Arc<Tracer>,
) -> Result<Arc<Internal>, Error> {
    Internal::new(config, metrics, tracer).map(Arc::new)
}

pub use grpc::Routes;

/// The caller as upstream names it in an access-control denial: the SPIFFE id of its
/// certificate, or nothing without one (`pkg/acl/acl.go` prints the id's URL, empty when the
/// call carries no SPIFFE id).
fn denied_caller(peer: Option<&PeerIdentity>) -> String {
    peer.map(|PeerIdentity(id)| id.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use dapr_proto::internals::v1::{InternalInvokeResponse, InternalInvokeResponseStream};
    use http::{HeaderMap, HeaderValue};

    use super::*;

    /// The answer head built as a map of the app's headers, for prost to encode: the reference
    /// [`sent_head`], which writes it without a map, is checked against.
    fn response_head(app: &AppResponse) -> InternalInvokeResponse {
        let skip = [http::header::CONTENT_TYPE.as_str()];
        let map = match &app.headers {
            wire::AppHeaders::Map(map) => map.clone(),
            wire::AppHeaders::Entries(entries) => {
                let mut map = HeaderMap::new();
                for (name, values) in entries {
                    for value in values {
                        map.append(name.clone(), value.clone());
                    }
                }
                map
            }
        };
        let headers = if app.from_http_app {
            wire::app_response_headers_to_metadata(&map, &skip)
        } else {
            wire::headers_to_metadata(&map, &skip)
        };
        let (status, message) = response_status_and_message(app);
        InternalInvokeResponse {
            status: Some(status),
            headers,
            trailers: Default::default(),
            message: Some(message),
        }
    }

    fn answer(from_http_app: bool) -> AppResponse {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("content-length", "17"),
            ("x-custom-header", "1"),
            ("connection", "keep-alive"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        AppResponse {
            status: 200,
            message: String::new(),
            type_url: String::new(),
            content_type: None,
            from_http_app,
            headers: wire::AppHeaders::Map(headers),
            body: app_channel::once(Bytes::new()),
        }
    }

    #[test]
    fn an_http_apps_response_headers_travel_go_canonical_as_upstreams_callee_sends_them() {
        let head = response_head(&answer(true));
        let mut names: Vec<&str> = head.headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        // Upstream's caller renames `Content-Length` (so spelt) for its gRPC API; lower-case it
        // would become the gRPC response's own and break the stream.
        assert_eq!(names, ["Content-Length", "X-Custom-Header"]);
        let message = head.message.expect("message");
        assert_eq!(message.content_type, "application/json");
    }

    #[test]
    fn a_grpc_apps_response_metadata_keeps_its_lower_case_names() {
        let head = response_head(&answer(false));
        let mut names: Vec<&str> = head.headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-custom-header"]);
        assert_eq!(
            head.message.expect("message").content_type,
            "application/json"
        );
    }

    /// A gRPC app's content type is its `InvokeResponse`'s: the transport's `content-type`
    /// header neither replaces it nor travels.
    #[test]
    fn a_grpc_apps_content_type_is_its_messages_not_its_transports() {
        use prost::Message;
        let mut app = answer(false);
        let wire::AppHeaders::Map(headers) = &mut app.headers else {
            unreachable!("answer() builds a map");
        };
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        app.content_type = Some("text/plain; charset=utf-8".into());
        let sent = sent_head(&mut app, Some(b"hi".to_vec()));
        let mut buf = bytes::BytesMut::new();
        wire::Sent::encode(&sent, &mut buf);
        let decoded = InternalInvokeResponse::decode(buf.freeze()).expect("decodes");
        let message = decoded.message.expect("a message");
        assert_eq!(message.content_type, "text/plain; charset=utf-8");
        assert_eq!(message.data.expect("data").value, b"hi");
        let mut names: Vec<&str> = decoded.headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-custom-header"]);
    }

    /// An answer with headers that travel, repeat, do not travel, or are not visible ASCII.
    /// As a map, or as the entries of a parsed HTTP/1.1 head (`entries`).
    fn awkward_answer(from_http_app: bool, entries: bool) -> AppResponse {
        let mut app = answer(from_http_app);
        let wire::AppHeaders::Map(headers) = &mut app.headers else {
            unreachable!("answer() builds a map");
        };
        headers.append("x-custom-header", HeaderValue::from_static("2"));
        headers.insert("www-authenticate", HeaderValue::from_static("basic"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("x-b3--id", HeaderValue::from_static("a"));
        // Not visible ASCII: left out, and a header with no other value with it.
        let opaque = HeaderValue::from_bytes(b"caf\xc3\xa9").expect("a header value");
        headers.insert("x-opaque", opaque.clone());
        headers.append("x-custom-header", opaque);
        if entries {
            let mut grouped: wire::HeaderEntries = Vec::new();
            for name in headers.keys() {
                grouped.push((
                    name.clone(),
                    headers.get_all(name).iter().cloned().collect(),
                ));
            }
            app.headers = wire::AppHeaders::Entries(grouped);
        }
        app.status = 201;
        app.message = "created".into();
        app.type_url = "type.googleapis.com/x".into();
        app
    }

    #[test]
    fn a_streamed_head_reads_as_the_one_prost_would_send() {
        use prost::Message;
        for (from_http_app, entries) in [(true, false), (false, false), (true, true)] {
            let mut app = awkward_answer(from_http_app, entries);
            let expected = InternalInvokeResponseStream {
                response: Some(response_head(&app)),
                payload: Some(StreamPayload {
                    data: Bytes::from_static(b"hello"),
                    seq: 0,
                }),
            };
            let sent = SentResponseStream {
                head: Some(sent_head(&mut app, None)),
                payload: expected.payload.clone(),
            };
            let mut buf = bytes::BytesMut::new();
            wire::Sent::encode(&sent, &mut buf);
            assert_eq!(buf.len(), wire::Sent::encoded_len(&sent));
            let decoded = InternalInvokeResponseStream::decode(buf.freeze()).expect("decodes");
            assert_eq!(
                decoded, expected,
                "from an HTTP app: {from_http_app}, entries: {entries}"
            );
        }
    }

    #[test]
    fn a_unary_answer_reads_as_the_one_prost_would_send_with_the_body_as_its_data() {
        use prost::Message;
        for (from_http_app, entries) in [(true, false), (false, false), (true, true)] {
            let mut app = awkward_answer(from_http_app, entries);
            let mut expected = response_head(&app);
            let message = expected.message.as_mut().expect("a message");
            message.data.get_or_insert_default().value = b"hello".to_vec();
            let sent = sent_head(&mut app, Some(b"hello".to_vec()));
            let mut buf = bytes::BytesMut::new();
            wire::Sent::encode(&sent, &mut buf);
            assert_eq!(buf.len(), wire::Sent::encoded_len(&sent));
            let decoded = InternalInvokeResponse::decode(buf.freeze()).expect("decodes");
            assert_eq!(
                decoded, expected,
                "from an HTTP app: {from_http_app}, entries: {entries}"
            );
        }
    }

    #[test]
    fn a_denial_names_the_caller_by_its_spiffe_id_as_upstream() {
        let id = dapr_identity::spiffe::SpiffeId::new("public", "apps", "checkout").unwrap();
        let peer = PeerIdentity(Arc::new(id));
        let denied = Error::PermissionDenied {
            caller: denied_caller(Some(&peer)),
            operation: "inspect/first".into(),
            verb: "POST".into(),
        };
        assert_eq!(
            denied.to_string(),
            "access control policy has denied access to id: spiffe://public/ns/apps/checkout \
             operation: inspect/first verb: POST"
        );
        assert_eq!(denied_caller(None), "");
    }
}
