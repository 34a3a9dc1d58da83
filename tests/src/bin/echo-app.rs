//! `echo-app`: the application daprd calls in the end-to-end tests.
//!
//! HTTP (`--protocol http`, HTTP/1.1 and h2c):
//! - `/inspect/*rest`: 200 JSON `{"method","path","query","headers","body_len"}`.
//! - `/status/{code}`: that status, body `status {code}`.
//! - `/slow/{ms}`: waits `ms`, then 200 `slow`.
//! - `/hold/{ms}`: like `/slow`, counted in `GET /stats` (`{"max_in_flight","total"}`), so a test
//!   can see how many requests daprd had in flight at once.
//! - `/close-mid-body`: 200, some body bytes, then the connection is cut.
//! - `GET /healthz`: the status last set with `PUT /set-health/{code}` (200 at start), and
//!   `GET /probes` the number of `/healthz` calls so far.
//! - anything else: the request body streamed back (never buffered whole), with headers
//!   `x-echo-method`, `x-echo-path` (path and query) and the request's `content-type`.
//!
//! gRPC (`--protocol grpc`): `AppCallback/OnInvoke` echoes `data` and `content_type`, with the
//! method in response metadata `x-echo-method` (plus `x-echo-verb`, `x-echo-querystring` from
//! the HTTP extension, and `x-caller` from `dapr-caller-app-id`); a request without a content
//! type gets an answer without one. A method `fail/<code>` answers with that gRPC status code;
//! `typed` answers typed data, a `google.protobuf.StringValue` holding the `type_url` of the
//! request's data. `AppCallbackHealthCheck/HealthCheck` answers. `e2e.echo.v1.Echo`
//! (not a Dapr service; reached through daprd's gRPC proxy) echoes unary, server-streaming and
//! bidirectional calls.
//!
//! Prints `echo-app listening on <addr> (<protocol>)` once bound (`--port 0` picks a free port).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use dapr_proto::common::v1::{InvokeRequest, InvokeResponse, http_extension};
use dapr_proto::runtime::v1::HealthCheckResponse;
use dapr_proto::runtime::v1::app_callback_health_check_server::{
    AppCallbackHealthCheck, AppCallbackHealthCheckServer,
};
use dapr_proto::runtime::v1::app_callback_server::{AppCallback, AppCallbackServer};
use e2e::echo::Note;
use e2e::echo::echo_server::{Echo as EchoService, EchoServer};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "Test app for daprd: echoes, inspects, delays and fails requests")]
struct Args {
    /// Port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    listen: IpAddr,
    /// Protocol served on the port.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,
    /// Serve over TLS with a throw-away self-signed certificate (the `https`/`grpcs` app
    /// protocols; daprd does not verify app certificates, as upstream).
    #[arg(long, default_value_t = false)]
    tls: bool,
    /// With `--tls`: write the self-signed certificate (PEM, for `localhost` and 127.0.0.1)
    /// here, so a client can trust it.
    #[arg(long)]
    cert_out: Option<std::path::PathBuf>,
    /// With `--tls`: require a client certificate issued by the CA in this PEM file.
    #[arg(long)]
    client_ca: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(SocketAddr::new(args.listen, args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.listen, args.port))?;
    let addr = listener.local_addr().context("local address")?;
    let acceptor = if args.tls {
        Some(tls_acceptor(&args)?)
    } else {
        None
    };
    // Tests wait for this exact line (see `e2e::spawn_echo_app`); stdout is line-buffered.
    println!(
        "{}{addr} ({})",
        e2e::ECHO_APP_READY_PREFIX,
        args.protocol.name()
    );
    if let Some(acceptor) = acceptor {
        let router = match args.protocol {
            Protocol::Http => http_router(),
            Protocol::Grpc => tonic::service::Routes::new(AppCallbackServer::new(Echo))
                .add_service(AppCallbackHealthCheckServer::new(Echo))
                .add_service(EchoServer::new(Echo))
                .into_axum_router(),
        };
        return serve_tls(listener, router, acceptor).await;
    }
    match args.protocol {
        // TCP_NODELAY on every accepted socket: neither `axum::serve` nor tonic's
        // `serve_with_incoming` sets it, and Nagle plus delayed ACKs add ~40 ms stalls.
        Protocol::Http => axum::serve(
            listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            http_router(),
        )
        .await
        .context("serving HTTP")?,
        Protocol::Grpc => tonic::transport::Server::builder()
            .add_service(AppCallbackServer::new(Echo))
            .add_service(AppCallbackHealthCheckServer::new(Echo))
            .add_service(EchoServer::new(Echo))
            .serve_with_incoming(
                tokio_stream::wrappers::TcpListenerStream::new(listener).map(|tcp| {
                    if let Ok(tcp) = &tcp {
                        let _ = tcp.set_nodelay(true);
                    }
                    tcp
                }),
            )
            .await
            .context("serving gRPC")?,
    }
    Ok(())
}

/// The TLS side of `--tls`: the certificate is written (`--cert-out`) before the ready line.
fn tls_acceptor(args: &Args) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    if let Some(path) = &args.cert_out {
        std::fs::write(path, cert.cert.pem())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match &args.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for ca in rustls::pki_types::CertificateDer::pem_file_iter(path)? {
                roots.add(ca?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(vec![cert.cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` over TLS (HTTP/1.1 and h2 by ALPN).
async fn serve_tls(
    listener: TcpListener,
    router: Router,
    acceptor: tokio_rustls::TlsAcceptor,
) -> anyhow::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

/// Counters for `/hold`: how much concurrency daprd let through.
#[derive(Debug, Default)]
struct Stats {
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    total: AtomicU64,
    /// What `/healthz` answers.
    health: std::sync::atomic::AtomicU16,
    probes: AtomicU64,
}

fn http_router() -> Router {
    Router::new()
        .route("/inspect", any(inspect))
        .route("/inspect/{*rest}", any(inspect))
        .route("/status/{code}", any(status))
        .route("/slow/{ms}", any(slow))
        .route("/hold/{ms}", any(hold))
        .route("/stats", get(stats))
        .route("/close-mid-body", any(close_mid_body))
        .route("/healthz", get(healthz))
        .route("/set-health/{code}", axum::routing::put(set_health))
        .route("/probes", get(probes))
        .fallback(echo)
        .with_state(Arc::new(Stats {
            health: 200.into(),
            ..Stats::default()
        }))
}

async fn inspect(req: Request) -> Response {
    let (parts, mut body) = req.into_parts();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    // Counted frame by frame: the body is never held whole.
    let mut body_len: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_len += data.len() as u64;
                }
            }
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("reading body: {e}")).into_response();
            }
        }
    }
    axum::Json(serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "headers": headers,
        "body_len": body_len,
    }))
    .into_response()
}

async fn status(Path(code): Path<u16>) -> Response {
    match StatusCode::from_u16(code) {
        Ok(status) => (status, format!("status {code}")).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, format!("bad status {code}")).into_response(),
    }
}

async fn slow(Path(ms): Path<u64>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "slow"
}

/// Decrements the in-flight count even when the client goes away mid-wait.
struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn hold(State(stats): State<Arc<Stats>>, Path(ms): Path<u64>) -> &'static str {
    stats.total.fetch_add(1, Ordering::SeqCst);
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(stats);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "held"
}

async fn stats(State(stats): State<Arc<Stats>>) -> Response {
    axum::Json(serde_json::json!({
        "max_in_flight": stats.max_in_flight.load(Ordering::SeqCst),
        "total": stats.total.load(Ordering::SeqCst),
    }))
    .into_response()
}

async fn healthz(State(stats): State<Arc<Stats>>) -> StatusCode {
    stats.probes.fetch_add(1, Ordering::SeqCst);
    StatusCode::from_u16(stats.health.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
}

async fn set_health(State(stats): State<Arc<Stats>>, Path(code): Path<u16>) -> StatusCode {
    stats.health.store(code, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

async fn probes(State(stats): State<Arc<Stats>>) -> String {
    stats.probes.load(Ordering::SeqCst).to_string()
}

async fn close_mid_body() -> Response {
    let chunks = futures::stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok(Bytes::from_static(b"partial body, then the cut")), 1)),
            1 => {
                // One pending poll makes hyper flush the headers and first bytes, so the
                // client sees the cut mid-body rather than before the response.
                tokio::task::yield_now().await;
                Some((Err(std::io::Error::other("cut mid-body on purpose")), 2))
            }
            _ => None,
        }
    });
    (StatusCode::OK, Body::from_stream(chunks)).into_response()
}

async fn echo(req: Request) -> Response {
    let method = req.method().as_str().to_owned();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    // The request body stream becomes the response body: nothing is buffered.
    let mut resp = Response::new(Body::new(req.into_body()));
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&method) {
        headers.insert("x-echo-method", v);
    }
    if let Ok(v) = HeaderValue::from_str(&path) {
        headers.insert("x-echo-path", v);
    }
    if let Some(ct) = content_type {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    resp
}

#[derive(Debug, Clone, Copy)]
struct Echo;

/// The `type_url` of `google.protobuf.StringValue`, as the SDKs pack it.
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// `google.protobuf.StringValue` (prost-types has no wrapper types).
#[derive(Clone, PartialEq, prost::Message)]
struct StringValue {
    #[prost(string, tag = "1")]
    value: String,
}

#[tonic::async_trait]
impl AppCallback for Echo {
    async fn on_invoke(
        &self,
        request: tonic::Request<InvokeRequest>,
    ) -> Result<tonic::Response<InvokeResponse>, tonic::Status> {
        let caller = request.metadata().get("dapr-caller-app-id").cloned();
        let token = request.metadata().get("dapr-api-token").cloned();
        let req = request.into_inner();
        if let Some(code) = req.method.strip_prefix("fail/") {
            let code = code.parse::<i32>().unwrap_or(2);
            return Err(tonic::Status::new(
                tonic::Code::from(code),
                format!("echo-app failed {} on purpose", req.method),
            ));
        }
        let data = if req.method == "typed" {
            let seen = req.data.map(|any| any.type_url).unwrap_or_default();
            Some(prost_types::Any {
                type_url: STRING_VALUE.to_owned(),
                value: prost::Message::encode_to_vec(&StringValue { value: seen }),
            })
        } else {
            req.data
        };
        let mut resp = tonic::Response::new(InvokeResponse {
            data,
            content_type: req.content_type,
        });
        let md = resp.metadata_mut();
        if let Some(caller) = caller {
            md.insert("x-caller", caller);
        }
        // The token the app was given (`APP_API_TOKEN`), as the HTTP echo's `x-echo-token`.
        if let Some(token) = token {
            md.insert("x-echo-token", token);
        }
        // Values that are not valid ASCII metadata are left out rather than failing the call.
        if let Ok(v) = req.method.parse() {
            md.insert("x-echo-method", v);
        }
        if let Some(ext) = req.http_extension {
            let verb = http_extension::Verb::try_from(ext.verb)
                .map_or_else(|_| ext.verb.to_string(), |v| v.as_str_name().to_owned());
            if let Ok(v) = verb.parse() {
                md.insert("x-echo-verb", v);
            }
            if let Ok(v) = ext.querystring.parse() {
                md.insert("x-echo-querystring", v);
            }
        }
        Ok(resp)
    }
}

#[tonic::async_trait]
impl AppCallbackHealthCheck for Echo {
    async fn health_check(
        &self,
        _request: tonic::Request<()>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(HealthCheckResponse {}))
    }
}

/// Copies the identities daprd stamps on proxied calls into response metadata.
fn identities<T>(from: &tonic::metadata::MetadataMap, to: &mut tonic::Response<T>) {
    for (header, echoed) in [
        ("dapr-caller-app-id", "x-caller"),
        ("dapr-callee-app-id", "x-callee"),
        ("traceparent", "x-traceparent"),
    ] {
        if let Some(value) = from.get(header) {
            to.metadata_mut().insert(echoed, value.clone());
        }
    }
}

type NoteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Note, tonic::Status>> + Send + 'static>>;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn unary(
        &self,
        request: tonic::Request<Note>,
    ) -> Result<tonic::Response<Note>, tonic::Status> {
        let metadata = request.metadata().clone();
        let note = request.into_inner();
        let attempt = {
            static CALLS: std::sync::Mutex<Option<std::collections::HashMap<String, u32>>> =
                std::sync::Mutex::new(None);
            let mut calls = CALLS.lock().expect("calls");
            let n = calls
                .get_or_insert_default()
                .entry(note.text.clone())
                .or_default();
            *n += 1;
            *n
        };
        let failing = note.fail_times == 0 || attempt <= note.fail_times.unsigned_abs();
        if note.fail_with != 0 && failing {
            return Err(tonic::Status::new(
                tonic::Code::from(note.fail_with),
                format!("echo-app failed with {} on purpose", note.fail_with),
            ));
        }
        let mut response = tonic::Response::new(note);
        identities(&metadata, &mut response);
        response.metadata_mut().insert("x-attempt", attempt.into());
        Ok(response)
    }

    type CountStream = NoteStream;

    async fn count(
        &self,
        request: tonic::Request<Note>,
    ) -> Result<tonic::Response<Self::CountStream>, tonic::Status> {
        let n: u32 = request
            .into_inner()
            .text
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("text must be a count"))?;
        let notes = futures::stream::iter((0..n).map(|i| {
            Ok(Note {
                text: i.to_string(),
                ..Default::default()
            })
        }));
        Ok(tonic::Response::new(Box::pin(notes)))
    }

    type ChatStream = NoteStream;

    async fn chat(
        &self,
        request: tonic::Request<tonic::Streaming<Note>>,
    ) -> Result<tonic::Response<Self::ChatStream>, tonic::Status> {
        let metadata = request.metadata().clone();
        let notes = request.into_inner();
        let mut response = tonic::Response::new(Box::pin(notes) as NoteStream);
        identities(&metadata, &mut response);
        Ok(response)
    }
}
