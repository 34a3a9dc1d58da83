//! The channel to the local app: HTTP (pooled keep-alive connections, streamed bodies) or gRPC
//! (`AppCallback/OnInvoke`), plus transparent forwarding of proxied gRPC calls. The
//! `--app-max-concurrency` bound is a permit that travels with the response body, so it is
//! released when the body ends, fails or is dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use dapr_proto::common::v1::{HttpExtension, InvokeRequest, InvokeResponse};
use dapr_proto::runtime::v1::app_callback_client::AppCallbackClient;
use dapr_proto::runtime::v1::app_callback_health_check_client::AppCallbackHealthCheckClient;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::{Channel, Endpoint};

use super::app_pool::{AppPool, PoolSettings, PooledBody};
use crate::Error;
use crate::config::{AppProtocol, Config};
use crate::error::AppChannelError;
use crate::metrics::Metrics;
use crate::peer::ON_INVOKE;
use crate::wire::{self, BoxError, BoxStream, names};

/// How long the app may take to answer with a response head.
pub const APP_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting to the app may take.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle keep-alive connections to an HTTP app at most; more are closed as they come back
/// after a burst. Upstream's app channel keeps 64 (`MaxIdleConnsPerHost`).
pub const APP_POOL_MAX_IDLE: usize = 64;
/// How long an idle connection to an HTTP app is kept.
pub const APP_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A request body for an `https` or `h2c` app.
type AppBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Plain TCP for `http`/`grpc`/`h2c` apps, TLS without verification for `https`/`grpcs`.
type AppConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// What the app answered. `status` is an HTTP status for HTTP apps and a gRPC code (0-16) for
/// gRPC apps, as upstream's internal `Status` carries it.
pub struct AppResponse {
    pub status: u16,
    /// The gRPC status message of a failed gRPC app call; empty otherwise.
    pub message: String,
    /// The `type_url` of a gRPC app's typed data; empty otherwise.
    pub type_url: String,
    /// A gRPC app's content type, from its `InvokeResponse`; `None`: the `content-type`
    /// header says it (an HTTP app's, or an error's).
    pub content_type: Option<String>,
    /// An HTTP app's answer (its headers travel Go-canonical), not a gRPC app's (its metadata
    /// keeps gRPC's lower-case names).
    pub from_http_app: bool,
    pub headers: wire::AppHeaders,
    pub body: BoxStream<Result<Bytes, BoxError>>,
}

/// A call for the app: method path, verb, query, metadata (become headers), body stream.
pub struct AppRequest {
    pub method: ByteString,
    pub verb: Method,
    pub query: ByteString,
    pub content_type: ByteString,
    /// The `type_url` of the caller's data (gRPC callers' typed data); usually empty.
    pub type_url: ByteString,
    pub metadata: wire::ReceivedMetadata,
    pub body: BoxStream<Result<Bytes, BoxError>>,
}

enum Protocol {
    /// A plaintext HTTP/1.1 app: its connections pooled by hand ([`super::app_pool`]).
    Http1(AppPool),
    /// An `https` or `h2c` app: hyper_util's pooled client (TLS with ALPN, HTTP/2).
    Http(Box<Client<AppConnector, AppBody>>),
    Grpc,
}

pub struct AppChannel {
    protocol: Protocol,
    /// h2c connection to the app: `OnInvoke` for gRPC apps and proxied gRPC calls for any app.
    grpc: Channel,
    /// `OnInvoke` to a plaintext gRPC app at an IP address: one write per call
    /// ([`crate::peer`]); other gRPC apps get it through `grpc`.
    direct: Option<(crate::peer::Peers, std::net::SocketAddr)>,
    base: String,
    app_token: Option<HeaderValue>,
    limit: Option<Arc<Semaphore>>,
    /// The largest message read from the app's `OnInvoke` answer (`wire::message_limit`), as
    /// upstream bounds it at `--max-body-size` (`pkg/channel/grpc/grpc_channel.go`).
    message_limit: usize,
    /// The longest body gathered for a gRPC app's `OnInvoke` (`--max-body-size`): a peer may
    /// stream a body of any length, and the call needs it whole (docs/limits.md).
    body_limit: usize,
    metrics: Arc<Metrics>,
}

impl AppChannel {
    /// The channel for `--app-port`, or `None` when the sidecar has no app.
    pub fn from_config(config: &Config, metrics: &Arc<Metrics>) -> Result<Option<Self>, Error> {
        let Some(port) = config.app_port else {
            return Ok(None);
        };
        let address = &config.app_channel_address;
        let host = if address.contains(':') && !address.starts_with('[') {
            format!("[{address}]")
        } else {
            address.to_owned()
        };
        let tls = matches!(config.app_protocol, AppProtocol::Https | AppProtocol::Grpcs);
        let scheme = if tls { "https" } else { "http" };
        let base = format!("{scheme}://{host}:{port}");
        let grpc = Endpoint::from_shared(base.clone())
            .map_err(|source| AppChannelError::Address {
                base: base.clone(),
                source,
            })?
            .connect_timeout(APP_CONNECT_TIMEOUT)
            .connect_with_connector_lazy(app_connector(false)?);
        let protocol = match config.app_protocol {
            AppProtocol::Grpc | AppProtocol::Grpcs => Protocol::Grpc,
            AppProtocol::Http => {
                let settings = PoolSettings {
                    max_idle: APP_POOL_MAX_IDLE,
                    idle_timeout: APP_POOL_IDLE_TIMEOUT,
                    connect_timeout: APP_CONNECT_TIMEOUT,
                };
                let host = address.trim_start_matches('[').trim_end_matches(']');
                let pool = AppPool::new(host, port, settings).map_err(|source| {
                    AppChannelError::Request {
                        uri: base.clone(),
                        source,
                    }
                })?;
                Protocol::Http1(pool)
            }
            AppProtocol::Https | AppProtocol::H2c => {
                // The pool's timer closes connections idle for 90 s; without it expiry is
                // only checked on checkout, and the newest connection is always the one
                // checked out, so a burst's connections would stay open under light traffic.
                let client = Client::builder(TokioExecutor::new())
                    .pool_timer(hyper_util::rt::TokioTimer::new())
                    .pool_idle_timeout(APP_POOL_IDLE_TIMEOUT)
                    .pool_max_idle_per_host(APP_POOL_MAX_IDLE)
                    .http2_only(config.app_protocol == AppProtocol::H2c)
                    .build(app_connector(true)?);
                Protocol::Http(Box::new(client))
            }
        };
        let message_limit = crate::wire::message_limit(config.max_body_size);
        let direct = match (config.app_protocol, address.parse::<std::net::IpAddr>()) {
            (AppProtocol::Grpc, Ok(ip)) => Some((
                crate::peer::Peers::app(message_limit),
                std::net::SocketAddr::new(ip, port),
            )),
            _ => None,
        };
        Ok(Some(AppChannel {
            protocol,
            grpc,
            direct,
            base,
            app_token: config
                .app_api_token
                .as_deref()
                .and_then(|t| HeaderValue::from_str(t).ok()),
            limit: config
                .app_max_concurrency
                .map(|n| Arc::new(Semaphore::new(n))),
            message_limit,
            body_limit: config.max_body_size,
            metrics: Arc::clone(metrics),
        }))
    }

    async fn permit(&self) -> Result<Option<OwnedSemaphorePermit>, Error> {
        match &self.limit {
            None => Ok(None),
            Some(limit) => Arc::clone(limit)
                .acquire_owned()
                .await
                .map(Some)
                .map_err(|_| AppChannelError::LimiterClosed.into()),
        }
    }

    /// Calls the app with an invocation (HTTP request or `OnInvoke`).
    pub async fn invoke(&self, request: AppRequest) -> Result<AppResponse, Error> {
        let permit = self.permit().await?;
        let mut response = match &self.protocol {
            Protocol::Http1(pool) => self.invoke_pooled(pool, request).await?,
            Protocol::Http(client) => self.invoke_http(client, request).await?,
            // Boxed: a gRPC call's future is the larger, and every invocation's future (moved
            // when the server boxes it) would otherwise carry its size (bench/notes.md).
            Protocol::Grpc => Box::pin(self.invoke_grpc(request)).await?,
        };
        let body = response.body;
        response.body = Box::pin(body.map(move |chunk| {
            // The permit lives as long as the body stream.
            let _held = &permit;
            chunk
        }));
        Ok(response)
    }

    /// A plaintext HTTP/1.1 app: the request head written straight from the metadata
    /// ([`wire::http1::RequestHead`]), on a pooled connection.
    async fn invoke_pooled(
        &self,
        pool: &AppPool,
        request: AppRequest,
    ) -> Result<AppResponse, Error> {
        let call = self.metrics.app_call(&request.verb);
        let query = (!request.query.is_empty()).then_some(&*request.query);
        let mut head = wire::http1::RequestHead::new(&request.verb, &request.method, query)
            .map_err(|source| AppChannelError::Target {
                uri: format!("{}/{}", self.base, request.method.trim_start_matches('/')),
                source,
            })?;
        head.metadata(&request.metadata);
        // Typed data reaches an HTTP app as protobuf, as upstream's `InvokeMethodRequest`
        // `ContentType` (`pkg/messaging/v1/invoke_method_request.go`).
        let content_type = wire::data_content_type(&request.type_url, &request.content_type);
        if !content_type.is_empty() && HeaderValue::from_str(content_type).is_ok() {
            head.header("content-type", content_type.as_bytes());
        }
        if let Some(token) = &self.app_token {
            head.header(names::API_TOKEN, token.as_bytes());
        }
        let declared = wire::declared_len(request.metadata.first_of(&wire::CONTENT_LENGTH));
        let mut sent = call.request_body();
        let body = request.body.map(move |chunk| {
            sent.count(&chunk);
            chunk
        });
        let send = pool.send(&request.verb, head, Box::pin(body), declared);
        let (head, body) = tokio::time::timeout(APP_RESPONSE_TIMEOUT, send)
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| self.unreachable(&e))?;
        let mut received = call.answered(head.status);
        let body = body.map(move |chunk| {
            received.count(&chunk);
            chunk
        });
        Ok(AppResponse {
            status: head.status.as_u16(),
            message: String::new(),
            type_url: String::new(),
            content_type: None,
            from_http_app: true,
            headers: wire::AppHeaders::Entries(head.headers),
            body: Box::pin(body),
        })
    }

    /// An `https` or `h2c` app, through hyper_util's client.
    async fn invoke_http(
        &self,
        client: &Client<AppConnector, AppBody>,
        request: AppRequest,
    ) -> Result<AppResponse, Error> {
        let call = self.metrics.app_call(&request.verb);
        let method = request.method.trim_start_matches('/');
        // Concatenated, not `format!`ed: its machinery cost 0.8k instructions per call.
        let query = (!request.query.is_empty()).then_some(&*request.query);
        let base = self.base.as_str();
        let mut uri =
            String::with_capacity(base.len() + method.len() + 2 + query.map_or(0, str::len));
        uri.push_str(base);
        uri.push('/');
        uri.push_str(method);
        if let Some(query) = query {
            uri.push('?');
            uri.push_str(query);
        }
        let mut sent = call.request_body();
        let body = StreamBody::new(request.body.map(move |chunk| {
            sent.count(&chunk);
            chunk.map(Frame::data)
        }));
        let mut http_request = Request::builder()
            .method(request.verb)
            .uri(&uri)
            .body(BodyExt::boxed_unsync(body))
            .map_err(|source| AppChannelError::Request {
                uri: uri.clone(),
                source,
            })?;
        let headers = http_request.headers_mut();
        request.metadata.into_headers(headers);
        let content_type = wire::data_content_type(&request.type_url, &request.content_type);
        if !content_type.is_empty()
            && let Ok(value) = HeaderValue::from_str(content_type)
        {
            headers.insert(header::CONTENT_TYPE, value);
        }
        self.swap_token(headers);
        let response = tokio::time::timeout(APP_RESPONSE_TIMEOUT, client.request(http_request))
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| self.unreachable(&e))?;
        Ok(http_answer(response, call))
    }

    /// `AppCallback/OnInvoke`: the body is collected (the callback is unary); the app's status,
    /// headers and data come back as an [`AppResponse`] with a gRPC code.
    async fn invoke_grpc(&self, request: AppRequest) -> Result<AppResponse, Error> {
        let data = collect(request.body, self.body_limit).await?;
        let mut headers = HeaderMap::new();
        // Without the content type, length and the client's API token.
        request.metadata.into_grpc_headers(&mut headers);
        self.add_token(&mut headers);
        let call = wire::SentInvocation {
            method: &request.method,
            type_url: &request.type_url,
            data: &data,
            content_type: &request.content_type,
            verb: wire::verb_of(&request.verb) as i32,
            querystring: &request.query,
        };
        let rpc = self
            .metrics
            .grpc_client(crate::metrics::client_rpc::ON_INVOKE);
        let sent = wire::Sent::encoded_len(&call);
        let result = match &self.direct {
            Some((app, addr)) => {
                let call = app.unary::<_, InvokeResponse>(*addr, None, ON_INVOKE, headers, &call);
                tokio::time::timeout(APP_RESPONSE_TIMEOUT, call).await
            }
            None => {
                let call = InvokeRequest {
                    method: request.method.to_string(),
                    data: Some(prost_types::Any {
                        type_url: request.type_url.to_string(),
                        value: data.to_vec(),
                    }),
                    content_type: request.content_type.to_string(),
                    http_extension: Some(HttpExtension {
                        verb: call.verb,
                        querystring: request.query.to_string(),
                    }),
                };
                let mut call = tonic::Request::new(call);
                *call.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
                let mut client = AppCallbackClient::new(self.grpc.clone())
                    .max_decoding_message_size(self.message_limit)
                    .max_encoding_message_size(usize::MAX);
                tokio::time::timeout(APP_RESPONSE_TIMEOUT, client.on_invoke(call))
                    .await
                    .map(|answer| {
                        answer.map(|response| {
                            let (metadata, message, _) = response.into_parts();
                            (metadata.into_headers(), message)
                        })
                    })
            }
        };
        let result = match result {
            Err(_) => {
                rpc.finish(tonic::Code::DeadlineExceeded, sent, || 0);
                return Err(self.timed_out());
            }
            Ok(result) => result,
        };
        match &result {
            Ok((_, message)) => {
                rpc.finish(tonic::Code::Ok, sent, || {
                    prost::Message::encoded_len(message)
                });
            }
            Err(status) => rpc.finish(status.code(), sent, || 0),
        }
        match result {
            Ok((mut headers, message)) => {
                // The app's `content-type: application/grpc` describes its transport, not its
                // data, whose content type is the one in its `InvokeResponse`, as upstream's
                // (`pkg/channel/grpc/grpc_channel.go`): that one goes on beside the headers,
                // and the header never travels (`wire::SentResponse`). `grpc-encoding` is the
                // transport's too (grpc-go keeps it out of header metadata).
                headers.remove("grpc-encoding");
                let (type_url, data) = message
                    .data
                    .map(|any| (any.type_url, Bytes::from(any.value)))
                    .unwrap_or_default();
                Ok(AppResponse {
                    status: 0,
                    message: String::new(),
                    type_url,
                    content_type: Some(message.content_type),
                    from_http_app: false,
                    headers: wire::AppHeaders::Map(headers),
                    body: once(data),
                })
            }
            // A transport failure carries its cause; a status the app sent does not.
            Err(status) if std::error::Error::source(&status).is_some() => {
                // The cause, not the status's debug form.
                match std::error::Error::source(&status) {
                    Some(cause) => Err(self.unreachable(cause)),
                    None => Err(self.unreachable(&status)),
                }
            }
            Err(status) => {
                let body = serde_json::json!({
                    "code": status.code() as i32,
                    "message": status.message(),
                    "details": [],
                });
                let mut headers = status.metadata().clone().into_headers();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Ok(AppResponse {
                    status: status.code() as u16,
                    message: status.message().to_owned(),
                    type_url: String::new(),
                    content_type: None,
                    from_http_app: false,
                    headers: wire::AppHeaders::Map(headers),
                    body: once(Bytes::from(body.to_string())),
                })
            }
        }
    }

    /// Forwards a proxied gRPC call to the app as it is (frames and trailers streamed), with the
    /// app token in place of the caller's token.
    pub async fn proxy(
        &self,
        mut request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Error> {
        let permit = self.permit().await?;
        self.swap_token(request.headers_mut());
        let call = tower::ServiceExt::oneshot(self.grpc.clone(), request);
        let response = tokio::time::timeout(APP_RESPONSE_TIMEOUT, call)
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|e| self.unreachable(&e))?;
        Ok(response.map(|body| {
            tonic::body::Body::new(body.map_frame(move |frame| {
                // The permit lives as long as the body.
                let _held = &permit;
                frame
            }))
        }))
    }

    fn swap_token(&self, headers: &mut HeaderMap) {
        headers.remove(names::API_TOKEN);
        self.add_token(headers);
    }

    /// `APP_API_TOKEN`, if set, as the app's `dapr-api-token`.
    fn add_token(&self, headers: &mut HeaderMap) {
        if let Some(token) = &self.app_token {
            headers.insert(names::API_TOKEN, token.clone());
        }
    }

    fn timed_out(&self) -> Error {
        AppChannelError::Timeout {
            seconds: APP_RESPONSE_TIMEOUT.as_secs(),
        }
        .into()
    }

    fn unreachable(&self, e: &dyn std::error::Error) -> Error {
        AppChannelError::Unreachable {
            base: self.base.clone(),
            cause: crate::error::chain(e),
        }
        .into()
    }

    /// One health probe: `GET <path>` answering 2xx for HTTP apps, `HealthCheck` answering OK for
    /// gRPC apps, within `timeout`. Not bounded by `--app-max-concurrency`, so a busy app is not
    /// mistaken for a dead one.
    pub async fn probe(&self, path: &str, timeout: Duration) -> bool {
        let probe = async {
            match &self.protocol {
                Protocol::Http1(pool) => {
                    let Ok(head) = wire::http1::RequestHead::new(&Method::GET, path, None) else {
                        return false;
                    };
                    let empty = Box::pin(futures::stream::empty());
                    match pool.send(&Method::GET, head, empty, None).await {
                        Ok((head, body)) if head.status.is_success() => {
                            // Read (a bounded amount) to the end, so the connection is reused.
                            read_probe_body(body).await;
                            true
                        }
                        _ => false,
                    }
                }
                Protocol::Http(client) => {
                    let Some(request) = probe_request(&self.base, path) else {
                        return false;
                    };
                    client
                        .request(request)
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
                Protocol::Grpc => {
                    let mut client = AppCallbackHealthCheckClient::new(self.grpc.clone());
                    let start = std::time::Instant::now();
                    let code = match tokio::time::timeout(timeout, client.health_check(())).await {
                        Ok(Ok(_)) => tonic::Code::Ok,
                        Ok(Err(status)) => status.code(),
                        Err(_) => tonic::Code::DeadlineExceeded,
                    };
                    self.metrics.health_probe(code, start.elapsed());
                    code == tonic::Code::Ok
                }
            }
        };
        tokio::time::timeout(timeout, probe).await.unwrap_or(false)
    }

    /// Whether the app accepts TCP connections on its port (readiness before the first call).
    pub async fn reachable(address: &str, port: u16) -> bool {
        let connect = tokio::net::TcpStream::connect((address, port));
        matches!(
            tokio::time::timeout(Duration::from_millis(500), connect).await,
            Ok(Ok(_))
        )
    }
}

/// A health probe's body that is read to its end (so its connection is reused); a longer one
/// is dropped with its connection.
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// Reads a probe's answer to its end, so its connection is reused, unless it is longer than
/// [`PROBE_BODY_LIMIT`]: then the body is dropped, with its connection.
async fn read_probe_body(mut body: PooledBody) {
    let mut read = 0;
    while let Some(Ok(chunk)) = body.next().await {
        read += chunk.len();
        if read > PROBE_BODY_LIMIT {
            return;
        }
    }
}

/// `GET <base>/<path>` with no body, for a health probe.
fn probe_request(base: &str, path: &str) -> Option<Request<AppBody>> {
    let uri = format!("{base}/{}", path.trim_start_matches('/'));
    Request::get(&uri)
        .body(BodyExt::boxed_unsync(
            http_body_util::Empty::<Bytes>::new().map_err(BoxError::from),
        ))
        .ok()
}

/// An HTTP app's answer: its status and headers, and its body counted as it streams.
fn http_answer<B>(response: http::Response<B>, call: crate::metrics::AppCall) -> AppResponse
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let mut received = call.answered(parts.status);
    let body = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(Into::into);
        received.count(&chunk);
        chunk
    });
    AppResponse {
        status: parts.status.as_u16(),
        message: String::new(),
        type_url: String::new(),
        content_type: None,
        from_http_app: true,
        headers: wire::AppHeaders::Map(parts.headers),
        body: Box::pin(body),
    }
}

/// A connector to the app: TCP with nodelay and a connect timeout, and for `https` URIs TLS
/// that does not verify the app's certificate (the app is on the pod's own network; upstream
/// skips verification too), offering h2 and, with `http1`, HTTP/1.1 by ALPN.
fn app_connector(http1: bool) -> Result<AppConnector, Error> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(APP_CONNECT_TIMEOUT));
    tcp.enforce_http(false);
    let provider = dapr_identity::tls::crypto_provider();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(AppChannelError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AppCertificate(provider)))
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    Ok(if http1 {
        builder.enable_all_versions().wrap_connector(tcp)
    } else {
        builder.enable_http2().wrap_connector(tcp)
    })
}

/// Accepts the app's certificate without checking it (upstream's `InsecureSkipVerify` for
/// `https`/`grpcs` apps), while still checking that the handshake is signed by its key.
#[derive(Debug)]
struct AppCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AppCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A body stream from a single buffer (unary calls).
pub fn once(data: Bytes) -> BoxStream<Result<Bytes, BoxError>> {
    Box::pin(futures::stream::once(async move { Ok(data) }))
}

/// Collects a body stream into memory (unary calls), bounded by `limit`. A body of one chunk
/// (nearly every unary one) is that chunk, not a copy of it.
pub async fn collect<S>(mut body: S, limit: usize) -> Result<Bytes, Error>
where
    S: Stream<Item = Result<Bytes, BoxError>> + Unpin,
{
    let mut gathered = wire::Gathered::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(AppChannelError::Body)?;
        if gathered.size() + chunk.len() > limit {
            return Err(Error::BodyTooLarge { limit });
        }
        gathered.push(chunk, 0);
    }
    Ok(gathered.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> BoxStream<Result<Bytes, BoxError>> {
        let parts: Vec<Result<Bytes, BoxError>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(parts))
    }

    #[tokio::test]
    async fn a_body_of_one_chunk_is_that_chunk_and_more_are_joined_in_order() {
        let only = Bytes::from(vec![7u8; 1024]);
        let at = only.as_ptr();
        let collected = collect(once(only), usize::MAX).await.expect("collected");
        assert_eq!(collected.as_ptr(), at, "the chunk itself, not a copy");
        let joined = collect(chunks(&[b"ab", b"", b"cd", b"e"]), 5).await;
        assert_eq!(joined.expect("joined"), Bytes::from_static(b"abcde"));
        assert!(collect(chunks(&[]), 0).await.expect("empty").is_empty());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_or_failing_is_an_error() {
        let over = collect(chunks(&[b"ab", b"cd"]), 3).await;
        assert!(
            matches!(over, Err(Error::BodyTooLarge { limit: 3 })),
            "{over:?}"
        );
        let failing: BoxStream<Result<Bytes, BoxError>> = Box::pin(futures::stream::iter([
            Ok(Bytes::from_static(b"ab")),
            Err(BoxError::from("reset")),
        ]));
        assert!(collect(failing, usize::MAX).await.is_err());
    }
}
