//! The app-facing HTTP API (port 3500): invoke, health, metadata, shutdown.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use bytes::Bytes;
use dapr_proto::common::v1::{HttpExtension, InvokeRequest};
use dapr_proto::internals::v1::{ApiVersion, InternalInvokeRequest};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;

use super::invoker::parse_target;
use super::state::Shared;
use crate::Error;
use crate::error::grpc_to_http;
use crate::metrics::{HttpLayer, HttpService};
use crate::trace::{self, attr};
use crate::wire::{self, BoxError, names};

type AppState = State<Arc<Shared>>;

/// Where invocations by path start (`/v1.0/invoke/<id>/method/<method>`).
const INVOKE_PREFIX: &str = "/v1.0/invoke/";

/// The main API port's service: every request metered ([`HttpLayer`]) and checked for the API
/// token, then invocations by path straight to their handler and the rest through the router.
pub fn api(shared: Arc<Shared>) -> HttpService<Api> {
    let routes = Router::new()
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(healthz_outbound))
        .route("/v1.0/metadata", get(metadata))
        .route("/v1.0/metadata/{key}", put(set_metadata))
        .route("/v1.0/shutdown", post(shutdown))
        .fallback(invoke_by_header)
        .with_state(Arc::clone(&shared));
    tower::Layer::layer(&HttpLayer::new(&shared.metrics), Api { shared, routes })
}

/// The API port's dispatch. Invocations by path, nearly every request a sidecar serves, are
/// matched here rather than as an axum route: per request, the router cloned the boxed route and
/// middleware services, boxed their futures and captured the path as a URL parameter
/// (bench/notes.md, "the HTTP API without the router").
#[derive(Clone)]
pub struct Api {
    shared: Arc<Shared>,
    routes: Router,
}

impl Api {
    /// Checks the API token, then sends invocations by path straight to their handler and the
    /// rest through the router. `head` says how an invocation's answer headers are given.
    fn dispatch(
        &self,
        mut request: Request,
        head: AnswerHead,
    ) -> futures::future::BoxFuture<'static, dapr_serve::PlainAnswer<Body>> {
        if let Err(refused) = check_api_token(&self.shared, &mut request) {
            return Box::pin(std::future::ready(refused.into_response().into()));
        }
        if request.uri().path().starts_with(INVOKE_PREFIX) {
            let shared = Arc::clone(&self.shared);
            return wire::boxed_in_place(|| invoke_by_path(shared, request, head));
        }
        let routes = self.routes.clone();
        Box::pin(async move {
            let response = tower::ServiceExt::oneshot(routes, request).await;
            response.unwrap_or_else(|never| match never {}).into()
        })
    }
}

/// The answer of [`Api::dispatch`] as a service's.
type Dispatched = futures::future::Map<
    futures::future::BoxFuture<'static, dapr_serve::PlainAnswer<Body>>,
    fn(dapr_serve::PlainAnswer<Body>) -> Result<Response, std::convert::Infallible>,
>;

/// Any body: hyper's, or one the plain HTTP/1 server read whole (`dapr_serve::Http1Settings`).
/// An invocation's answer headers go in the response's map ([`AnswerHead::Map`]).
impl<B> tower::Service<http::Request<B>> for Api
where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Dispatched;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures::FutureExt;
        let answered = self.dispatch(request.map(Body::new), AnswerHead::Map);
        answered.map(|answer| Ok(answer.response))
    }
}

/// Requests of `dapr-serve`'s plain HTTP/1 server: an invocation by path that needs no span
/// and names no app by header is served from the request's head as it was read
/// ([`invoke_plain`]); any other request becomes an `http::Request` for [`Api::dispatch`]. An
/// invocation's answer headers are written as header lines straight from the peer's metadata
/// ([`AnswerHead::Lines`]), without the header map the hyper path builds for them.
impl dapr_serve::PlainHandler<Body> for Api {
    type Plain = futures::future::BoxFuture<'static, dapr_serve::PlainAnswer<Body>>;

    fn call_plain(&mut self, request: dapr_serve::PlainRequest) -> Self::Plain {
        let path = request.uri().path();
        if path.starts_with(INVOKE_PREFIX) && self.shared.tracer.active().is_none() {
            let [app_id, token, content_type] =
                request.headers_named([names::DAPR_APP_ID, names::API_TOKEN, "content-type"]);
            if app_id.is_none() {
                if let Err(refused) = check_token(&self.shared, request.method(), path, token) {
                    return Box::pin(std::future::ready(refused.into_response().into()));
                }
                let content_type = content_type.and_then(header_text).unwrap_or_default();
                let content_type = content_type.to_owned();
                let shared = Arc::clone(&self.shared);
                return wire::boxed_in_place(|| invoke_plain(shared, request, content_type));
            }
        }
        match request.into_http() {
            Ok(request) => self.dispatch(request, AnswerHead::Lines),
            Err(invalid) => {
                let refused = Error::Malformed(invalid.to_string()).into_response();
                Box::pin(std::future::ready(refused.into()))
            }
        }
    }
}

/// How an invocation's answer headers (the peer's metadata) are given to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerHead {
    /// In the response's header map (hyper's server).
    Map,
    /// As header lines beside the response ([`dapr_serve::PlainAnswer::lines`]).
    Lines,
}

/// Routes of the public port: health and metadata only, without the token check.
pub fn public_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(healthz_outbound))
        .route("/v1.0/metadata", get(metadata))
        .layer(HttpLayer::new(&shared.metrics))
        .with_state(shared)
}

/// Requires `dapr-api-token` when `DAPR_API_TOKEN` is set (GET health checks are exempt) and
/// strips it so it never reaches another app.
fn check_api_token(shared: &Shared, request: &mut Request) -> Result<(), Error> {
    if shared.config.api_token.is_some() {
        let given = request
            .headers()
            .get(names::API_TOKEN)
            .map(HeaderValue::as_bytes);
        check_token(shared, request.method(), request.uri().path(), given)?;
        request.headers_mut().remove(names::API_TOKEN);
    }
    Ok(())
}

/// Whether `given` is the API token a request of `method` on `path` needs, if it needs one.
fn check_token(
    shared: &Shared,
    method: &http::Method,
    path: &str,
    given: Option<&[u8]>,
) -> Result<(), Error> {
    let Some(expected) = shared.config.api_token.as_deref() else {
        return Ok(());
    };
    let exempt = method == http::Method::GET
        && (path == "/v1.0/healthz" || path == "/v1.0/healthz/outbound");
    if !exempt && !given.is_some_and(|g| constant_time_eq(g, expected.as_bytes())) {
        tracing::debug!(path, "request rejected: invalid api token");
        return Err(Error::Unauthorized);
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(serde::Deserialize)]
struct HealthQuery {
    appid: Option<String>,
}

async fn healthz(State(shared): AppState, Query(q): Query<HealthQuery>) -> Response {
    if let Some(requested) = q.appid
        && requested != shared.config.app_id
    {
        return Error::AppIdMismatch {
            requested,
            actual: shared.config.app_id.clone(),
        }
        .into_response();
    }
    if shared.health.app_ready() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        Error::NotReady("[app]".into()).into_response()
    }
}

async fn healthz_outbound(State(shared): AppState) -> Response {
    if shared.health.outbound_ready() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        Error::OutboundNotReady.into_response()
    }
}

async fn metadata(State(shared): AppState) -> Response {
    let c = &shared.config;
    let mut app = json!({
        "protocol": c.app_protocol.as_str(),
        "channelAddress": c.app_channel_address,
    });
    if let Some(port) = c.app_port {
        app["port"] = json!(port);
    }
    if let Some(max) = c.app_max_concurrency {
        app["maxConcurrency"] = json!(max);
    }
    if let Some(h) = &c.app_health_check {
        app["health"] = json!({
            "healthCheckPath": h.path,
            "healthProbeInterval": format!("{}s", h.interval.as_secs()),
            "healthProbeTimeout": format!("{}ms", h.timeout.as_millis()),
            "healthThreshold": h.threshold,
        });
    }
    axum::Json(json!({
        "id": c.app_id,
        "runtimeVersion": crate::VERSION,
        "enabledFeatures": [],
        "extended": shared.extended_metadata(),
        "appConnectionProperties": app,
    }))
    .into_response()
}

async fn set_metadata(State(shared): AppState, Path(key): Path<String>, body: Bytes) -> Response {
    let Ok(value) = String::from_utf8(body.to_vec()) else {
        return Error::Malformed("metadata value must be UTF-8".into()).into_response();
    };
    if let Ok(mut map) = shared.extended.lock() {
        map.insert(key, value);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn shutdown(State(shared): AppState, headers: HeaderMap) -> Response {
    let force = headers
        .get(names::FORCE_SHUTDOWN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    tracing::info!(force, "shutdown requested through the API");
    if force {
        shared.shutdown.force.cancel();
    }
    shared.shutdown.graceful.cancel();
    StatusCode::NO_CONTENT.into_response()
}

/// `/v1.0/invoke/<id>/method/<method>`; the `dapr-app-id` header wins when present.
async fn invoke_by_path(
    shared: Arc<Shared>,
    request: Request,
    head: AnswerHead,
) -> dapr_serve::PlainAnswer<Body> {
    if request.headers().contains_key(&names::header::DAPR_APP_ID) {
        return invoke_by_header(State(shared), request).await.into();
    }
    let Some((id, method)) = id_and_method(request.uri().path()) else {
        return Error::NoAppId.into_response().into();
    };
    invoke(shared, id, method, request, head)
        .await
        .unwrap_or_else(|e| e.into_response().into())
}

/// The app id and method of an invocation by path (`/v1.0/invoke/<id>/method/<method>`).
fn id_and_method(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix(INVOKE_PREFIX).unwrap_or_default();
    let (id, method) = split_method(rest)?;
    Some((id.to_owned(), method.to_owned()))
}

/// `<id>/method/<method>` split at the first `/method/`, as `split_once` would: each `/` is a
/// byte compare, where `split_once`'s substring searcher cost about 650 instructions per call.
fn split_method(rest: &str) -> Option<(&str, &str)> {
    const SEPARATOR: &[u8] = b"/method/";
    let bytes = rest.as_bytes();
    let at = (0..bytes.len()).find(|&i| bytes[i] == b'/' && bytes[i..].starts_with(SEPARATOR))?;
    Some((&rest[..at], &rest[at + SEPARATOR.len()..]))
}

/// Any other path with a `dapr-app-id` header (or Basic auth naming the app): the whole path is
/// the method.
async fn invoke_by_header(State(shared): AppState, request: Request) -> Response {
    let Some(id) = app_id_from_headers(request.headers()) else {
        return Error::NoAppId.into_response();
    };
    let method = request.uri().path().trim_start_matches('/').to_owned();
    match invoke(shared, id, method, request, AnswerHead::Map).await {
        Ok(answer) => answer.response,
        Err(e) => e.into_response(),
    }
}

fn app_id_from_headers(headers: &HeaderMap) -> Option<String> {
    if let Some(id) = headers
        .get(names::DAPR_APP_ID)
        .and_then(|v| v.to_str().ok())
    {
        return Some(id.trim().to_owned());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = auth.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, id) = decoded.split_once(':')?;
    (user == names::DAPR_APP_ID).then(|| id.to_owned())
}

/// Rejects methods that would escape the app's path space or carry control characters.
pub fn check_method(method: &str) -> Result<(), Error> {
    let invalid = |reason| {
        Err(Error::InvalidMethod {
            method: method.to_owned(),
            reason,
        })
    };
    if method.chars().any(|c| c.is_control()) {
        return invalid("control characters are not allowed");
    }
    if !percent_encoding_is_valid(method) {
        return invalid("malformed percent-encoding: every % must start a %XX hex escape");
    }
    // Nearly every method has no escape at all: then it is checked as it is, without a copy.
    let decoded = if method.contains('%') {
        std::borrow::Cow::Owned(method.replace("%2e", ".").replace("%2E", "."))
    } else {
        std::borrow::Cow::Borrowed(method)
    };
    if decoded.split(['/', '\\']).any(|segment| segment == "..") {
        return invalid("path traversal is not allowed");
    }
    Ok(())
}

/// Whether every `%` starts a two-hex-digit escape (RFC 3986 §2.1). Upstream's Go server refuses
/// such paths with 400 before routing; forwarding them would hand the app a path it cannot decode.
fn percent_encoding_is_valid(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let escape = bytes.get(i + 1..i + 3);
            if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

async fn invoke(
    shared: Arc<Shared>,
    id: String,
    method: String,
    request: Request,
    head: AnswerHead,
) -> Result<dapr_serve::PlainAnswer<Body>, Error> {
    if let Some(destination) = shared.endpoints.destination(&id) {
        check_method(&method)?;
        let (parts, body) = request.into_parts();
        let mut span = client_span(&shared, &parts, destination.id(), &method);
        let body = limited(body, shared.config.max_body_size);
        let call = async {
            match shared.invoker.resiliency() {
                None => {
                    let endpoints = &shared.endpoints;
                    endpoints.call(destination, &method, parts, body).await
                }
                Some(policies) => {
                    super::resilient::endpoint(
                        &shared.invoker,
                        policies,
                        &shared.endpoints,
                        destination,
                        &method,
                        parts,
                        body,
                    )
                    .await
                }
            }
        };
        // Boxed: rare next to app ids, and its future would add to every invocation's.
        let response = trace::traced(&mut span, Box::pin(call)).await?;
        if let Some(mut span) = span {
            span.http_status(response.status().as_u16());
            span.end();
        }
        return Ok(response.into());
    }
    let target = parse_target(&id, &shared.config.namespace)?;
    check_method(&method)?;
    let (mut parts, body) = request.into_parts();
    let declared = wire::declared_len(
        parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()),
    );
    check_declared(&shared, declared)?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = client_span(&shared, &parts, &id, &method);
    // The headers are read: they travel on as they are.
    let client = wire::ClientHeaders::new(std::mem::take(&mut parts.headers), &TRAVEL_SKIP);
    let call = AppCall {
        verb: wire::verb_of(&parts.method),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type,
        declared,
        client,
        body,
    };
    invoke_app(shared, target, id, method, call, span, head).await
}

/// Headers of the client's that stay with the caller: read here, never passed on.
const TRAVEL_SKIP: [&str; 2] = [names::DAPR_APP_ID, names::API_TOKEN];

/// An invocation by path from a plain request's head as it was read (`dapr_serve`'s plain
/// HTTP/1 server): the few headers it needs are looked up where they are and the rest travel
/// as they came, without the header map and `http::Request` the router takes (bench/notes.md,
/// "invocations from the request's head as it was read"). Untraced only: a span records the
/// request's headers from a map ([`client_span`]).
async fn invoke_plain(
    shared: Arc<Shared>,
    request: dapr_serve::PlainRequest,
    content_type: String,
) -> dapr_serve::PlainAnswer<Body> {
    let Some((id, method)) = id_and_method(request.uri().path()) else {
        return Error::NoAppId.into_response().into();
    };
    let answered = if shared.endpoints.destination(&id).is_some() {
        // An HTTPEndpoint's call takes the request with its headers in a map. Boxed: rare next
        // to app ids, and its future would add to every invocation's.
        match request.into_http() {
            Ok(mut request) => {
                request.headers_mut().remove(names::API_TOKEN);
                Box::pin(invoke(shared, id, method, request, AnswerHead::Lines)).await
            }
            Err(invalid) => Err(Error::Malformed(invalid.to_string())),
        }
    } else {
        invoke_app_plain(shared, id, method, request, content_type).await
    };
    answered.unwrap_or_else(|e| e.into_response().into())
}

/// [`invoke`]'s call of an app id, from a plain request (`content_type` its header's text).
async fn invoke_app_plain(
    shared: Arc<Shared>,
    id: String,
    method: String,
    request: dapr_serve::PlainRequest,
    content_type: String,
) -> Result<dapr_serve::PlainAnswer<Body>, Error> {
    let target = parse_target(&id, &shared.config.namespace)?;
    check_method(&method)?;
    let declared = request.declared_len().map(|len| len as u64);
    check_declared(&shared, declared)?;
    let client = wire::ClientHeaders::from_fields(request.fields(), &TRAVEL_SKIP)
        .map_err(|invalid| Error::Malformed(invalid.to_string()))?;
    let call = AppCall {
        verb: wire::verb_of(request.method()),
        query: request.uri().query().unwrap_or_default().to_owned(),
        content_type,
        declared,
        client,
        body: request.into_body(),
    };
    invoke_app(shared, target, id, method, call, None, AnswerHead::Lines).await
}

/// A header value as text, as `HeaderValue::to_str` reads it: visible ASCII, space and tab.
fn header_text(value: &[u8]) -> Option<&str> {
    let text = value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
    text.then(|| std::str::from_utf8(value).ok()).flatten()
}

/// Refuses a request whose declared body is over `--max-body-size` before reading it.
fn check_declared(shared: &Shared, declared: Option<u64>) -> Result<(), Error> {
    let limit = shared.config.max_body_size;
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Error::BodyTooLarge { limit });
    }
    Ok(())
}

/// What an invocation of an app id takes from the client's request, however it was read.
struct AppCall {
    verb: dapr_proto::common::v1::http_extension::Verb,
    query: String,
    content_type: String,
    /// The body's declared length (`content-length`).
    declared: Option<u64>,
    client: wire::ClientHeaders,
    body: Body,
}

/// Calls `method` of the app `id` (at `target`) with `call`, and answers with what the app
/// answered: its status, its headers as `head` says, its body as it streams.
async fn invoke_app(
    shared: Arc<Shared>,
    target: crate::resolve::Target,
    id: String,
    method: String,
    call: AppCall,
    mut span: Option<trace::Span>,
    head: AnswerHead,
) -> Result<dapr_serve::PlainAnswer<Body>, Error> {
    let limit = shared.config.max_body_size;
    let internal = InternalInvokeRequest {
        ver: ApiVersion::V1 as i32,
        // The client's headers travel beside it (`client`).
        metadata: Default::default(),
        message: Some(InvokeRequest {
            method,
            data: None,
            content_type: call.content_type,
            http_extension: Some(HttpExtension {
                verb: call.verb as i32,
                querystring: call.query,
            }),
        }),
        actor: None,
    };
    let body = limited(call.body, limit);
    let body = wire::read_small(body, call.declared, super::invoker::RESPONSE_TIMEOUT)
        .await
        .map_err(|e| Error::Malformed(format!("request body: {e}")))?;
    let call = shared
        .invoker
        .invoke_stream(&target, internal, call.client, body);
    let peer = match trace::traced(&mut span, call).await {
        Ok(peer) => peer,
        Err(Error::Malformed(reason)) if reason.contains("larger than the limit") => {
            return Err(Error::BodyTooLarge { limit });
        }
        Err(e) => {
            tracing::debug!(target = %id, error = %e, "invocation failed");
            return Err(e);
        }
    };
    let code = peer.head.code();
    // HTTP apps report an HTTP status; gRPC apps a gRPC code (0-16).
    let status = if (0..100).contains(&code) {
        grpc_to_http(tonic::Code::from(code))
    } else {
        u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    };
    if let Some(mut span) = span {
        span.http_status(status.as_u16());
        span.end();
    }
    let mut response = Response::new(Body::from_stream(peer.body));
    *response.status_mut() = status;
    let content_type = peer.head.message.as_ref().and_then(answer_content_type);
    let mut lines = Vec::new();
    match head {
        AnswerHead::Map => {
            peer.head.headers.into_headers(response.headers_mut());
            if let Some(value) = content_type {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
        }
        AnswerHead::Lines => {
            wire::http1::push_metadata_headers(&peer.head.headers, &mut lines);
            if let Some(value) = content_type {
                wire::http1::push_header_line(&mut lines, "content-type", value.as_bytes());
            }
        }
    }
    Ok(dapr_serve::PlainAnswer { response, lines })
}

/// The caller's span of an HTTP API invocation of `method` on `id`, when tracing is on.
fn client_span(
    shared: &Shared,
    parts: &http::request::Parts,
    id: &str,
    method: &str,
) -> Option<trace::Span> {
    let active = shared.tracer.active()?;
    let incoming = parts
        .headers
        .get(names::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    Some(
        active.client_span(
            incoming,
            (id, method),
            attr::HTTP,
            || format!("{} {}", parts.method, parts.uri.path()),
            parts
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        ),
    )
}

/// The request body as a stream that fails once it exceeds `limit` bytes (`--max-body-size`).
fn limited(body: Body, limit: usize) -> wire::BoxStream<Result<Bytes, BoxError>> {
    let mut seen = 0usize;
    Box::pin(body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(BoxError::from)?;
        seen += chunk.len();
        if seen > limit {
            return Err(BoxError::from(Error::BodyTooLarge { limit }.to_string()));
        }
        Ok(chunk)
    }))
}

/// The content type of an answer: `application/x-protobuf` for typed data (an `Any` with a
/// `type_url`, from a gRPC app), else the app's own, as upstream's `InvokeMethodResponse`
/// `ContentType` (`pkg/messaging/v1/invoke_method_response.go`).
fn answer_content_type(message: &dapr_proto::common::v1::InvokeResponse) -> Option<HeaderValue> {
    let type_url = message.data.as_ref().map_or("", |d| d.type_url.as_str());
    let content_type = wire::data_content_type(type_url, &message.content_type);
    Some(content_type)
        .filter(|c| !c.is_empty())
        .and_then(|c| HeaderValue::from_str(c).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_is_split_off_where_split_once_splits_it() {
        for rest in [
            "orders/method/echo",
            "orders/method/",
            "orders/method",
            "a/b/method/c/method/d",
            "/method/x",
            "orders/methods/x",
            "orders//method//x",
            "",
            "é/method/ü",
        ] {
            assert_eq!(split_method(rest), rest.split_once("/method/"), "{rest}");
        }
    }

    #[test]
    fn path_traversal_and_control_characters_are_rejected() {
        for bad in ["../admin", "a/../../b", "a/%2e%2e/b", "a\\..\\b", "a\u{0}b"] {
            assert!(check_method(bad).is_err(), "{bad}");
        }
        for ok in ["orders", "orders/1", "a/..b/c", "v1/items?x=1", ""] {
            assert!(check_method(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn malformed_percent_encoding_is_rejected_and_valid_escapes_pass() {
        for bad in ["%zz", "%", "a%2", "a%2g/b", "%%41"] {
            let err = check_method(bad).unwrap_err();
            assert!(err.to_string().contains("percent-encoding"), "{bad}: {err}");
        }
        for ok in ["a%20b", "%2Fx", "caf%C3%A9", "100%25"] {
            assert!(check_method(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_app_id_comes_from_the_header_or_basic_auth() {
        let mut headers = HeaderMap::new();
        headers.insert(names::DAPR_APP_ID, HeaderValue::from_static("orders"));
        assert_eq!(app_id_from_headers(&headers).as_deref(), Some("orders"));
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("dapr-app-id:orders.shop");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        assert_eq!(
            app_id_from_headers(&headers).as_deref(),
            Some("orders.shop")
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode("someone:orders");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        assert_eq!(app_id_from_headers(&headers), None);
    }
}
