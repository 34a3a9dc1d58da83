//! `floor-relay`: the two hops of our sidecars' HTTP chain built from the same libraries and
//! nothing else, to measure what those libraries cost per request at least
//! (`bench/per-request.sh` with `PER_REQUEST_CHAIN=floor`; bench/notes.md, "the floor").
//!
//! - `caller`: hyper's HTTP/1 server takes a POST and sends its body to the callee as a gRPC
//!   call (one message, `application/grpc`, `te: trailers`) on one h2 connection over TLS 1.3
//!   with a client certificate, as daprd's caller sends `CallLocalStream`; it answers with the
//!   callee's message.
//! - `callee`: hyper's HTTP/2 server over TLS 1.3, client certificates required, POSTs each
//!   message to the app on a pooled HTTP/1.1 keep-alive connection (hyper's client), and answers
//!   with the app's body as one message and `grpc-status: 0` in the trailers.
//!
//! With `--grpc`, the gRPC chain's two hops as nginx's `grpc_pass` does them: the caller takes
//! h2c (hyper's HTTP/2 server) and sends each call on, path, message and trailers unchanged, on
//! the h2 connection over TLS; the callee sends it on to the app on one h2c connection (h2's
//! client) and the answer back the same way.
//!
//! What daprd does beside this is left out: metadata in a protobuf envelope, name resolution,
//! access control, stamps, tracing, metrics, limits and timeouts. Both run on one thread, with
//! daprd's allocator (mimalloc) and its release profile. Each body is gathered as a plain
//! client of these libraries gathers it (one copy per answer, which daprd avoids for a message
//! that arrives in one frame: a few hundred instructions). Not a proxy for use: the peer is the
//! one `--peer`, errors end the request, and an answer without trailers passes on without a
//! status.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the caller calls, as daprd's caller calls a peer.
const CALL_LOCAL_STREAM: &str =
    "https://localhost/dapr.proto.internals.v1.ServiceInvocation/CallLocalStream";

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Caller,
    Callee,
}

#[derive(Parser)]
struct Args {
    role: Role,
    /// Where to listen (the caller: HTTP/1; the callee: HTTP/2 over TLS).
    #[arg(long)]
    listen: SocketAddr,
    /// The caller's callee.
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// The callee's app (HTTP/1.1).
    #[arg(long)]
    app: Option<SocketAddr>,
    /// The CA both certificates chain to (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// This side's certificate (PEM): the caller's client certificate, the callee's server one.
    #[arg(long)]
    cert: PathBuf,
    /// Its key (PEM, PKCS#8).
    #[arg(long)]
    key: PathBuf,
    /// Carry gRPC calls unchanged (the caller listens for h2c) instead of HTTP/1 requests.
    #[arg(long)]
    grpc: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.role {
            Role::Caller => caller(&args).await,
            Role::Callee => callee(&args).await,
        }
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA, this side's chain and key.
fn credentials(
    args: &Args,
) -> anyhow::Result<(
    Arc<rustls::RootCertStore>,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
)> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&args.ca).context("--ca")? {
        roots.add(ca.context("--ca")?)?;
    }
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .context("--cert")?
        .collect::<Result<Vec<_>, _>>()
        .context("--cert")?;
    let key = PrivateKeyDer::from_pem_file(&args.key).context("--key")?;
    Ok((Arc::new(roots), chain, key))
}

async fn caller(args: &Args) -> anyhow::Result<()> {
    let peer = args.peer.context("the caller needs --peer")?;
    let (roots, chain, key) = credentials(args)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(peer).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (send, connection) = h2::client::handshake(tls).await?;
    tokio::spawn(connection);
    let listener = TcpListener::bind(args.listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let send = send.clone();
        if args.grpc {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let uri = on(
                    request.uri(),
                    Scheme::HTTPS,
                    &Authority::from_static("localhost"),
                );
                pass_on(send.clone(), uri, request)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
            continue;
        }
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| relay(send.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// A gRPC call, on `send` at `uri` with its message and back with its answer's message and
/// trailers, as `grpc_pass` passes one on.
async fn pass_on(
    send: h2::client::SendRequest<Bytes>,
    uri: http::Uri,
    request: Request<Incoming>,
) -> Result<Response<Answer>, Infallible> {
    let passed = async {
        let body = request.into_body().collect().await?.to_bytes();
        exchange(send, uri, body).await
    };
    let (data, trailers) = match passed.await {
        Ok(answer) => answer,
        Err(_) => (Bytes::new(), status_trailers("13")),
    };
    Ok(grpc_answer(data, trailers))
}

/// One h2 call at `uri` whose body is `body`: the answer's data and its trailers.
async fn exchange(
    send: h2::client::SendRequest<Bytes>,
    uri: http::Uri,
    body: Bytes,
) -> anyhow::Result<(Bytes, HeaderMap)> {
    let mut send = send.ready().await?;
    let call = Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(())?;
    let (answer, mut stream) = send.send_request(call, false)?;
    stream.send_data(body, true)?;
    let mut body = answer.await?.into_body();
    let mut received = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok((received.freeze(), trailers))
}

/// `received`'s path (shared, not copied) at `scheme://authority`.
fn on(received: &http::Uri, scheme: Scheme, authority: &Authority) -> http::Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority.clone());
    parts.path_and_query = received.path_and_query().cloned();
    http::Uri::from_parts(parts).expect("a URI")
}

fn status_trailers(status: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    trailers
}

fn grpc_answer(data: Bytes, trailers: HeaderMap) -> Response<Answer> {
    let body = Full::new(data).with_trailers(std::future::ready(Some(Ok(trailers))));
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .expect("a response")
}

/// One request: its body to the callee as a gRPC message, the answer's message back.
async fn relay(
    send: h2::client::SendRequest<Bytes>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = async {
        let body = request.into_body().collect().await?.to_bytes();
        let uri = http::Uri::from_static(CALL_LOCAL_STREAM);
        let (received, _) = exchange(send, uri, message(&body)).await?;
        anyhow::Ok(received.slice(5.min(received.len())..))
    };
    Ok(match answer.await {
        Ok(data) => Response::builder()
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(data))
            .expect("a response"),
        Err(e) => Response::builder()
            .status(500)
            .body(Full::new(Bytes::from(e.to_string())))
            .expect("a response"),
    })
}

/// `data` as one gRPC message: the uncompressed flag, the length, the bytes.
fn message(data: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + data.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(data.len()).expect("a message under 4 GiB"));
    framed.put_slice(data);
    framed.freeze()
}

/// The callee's idle connections to the app.
type Pool = Arc<Mutex<Vec<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>>;

async fn callee(args: &Args) -> anyhow::Result<()> {
    let app = args.app.context("the callee needs --app")?;
    let (roots, chain, key) = credentials(args)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(args.listen).await?;
    if args.grpc {
        let tcp = TcpStream::connect(app).await?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::handshake(tcp).await?;
        tokio::spawn(connection);
        let authority = Authority::try_from(app.to_string())?;
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let (acceptor, send, authority) = (acceptor.clone(), send.clone(), authority.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let uri = on(request.uri(), Scheme::HTTP, &authority);
                    pass_on(send.clone(), uri, request)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }
    let pool = Pool::default();
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let (acceptor, pool) = (acceptor.clone(), Arc::clone(&pool));
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let pool = Arc::clone(&pool);
                async move { Ok::<_, Infallible>(answer(app, &pool, request).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// The answer's body: one message, then the status in the trailers.
type Answer = http_body_util::combinators::WithTrailers<
    Full<Bytes>,
    std::future::Ready<Option<Result<HeaderMap, Infallible>>>,
>;

/// One call: its message to the app, the app's body back as the answer's message.
async fn answer(app: SocketAddr, pool: &Pool, request: Request<Incoming>) -> Response<Answer> {
    let exchanged = async {
        let body = request.into_body().collect().await?.to_bytes();
        let data = body.slice(5.min(body.len())..);
        let idle = pool.lock().expect("the pool's lock").pop();
        let mut send = match idle {
            Some(send) => send,
            None => {
                let tcp = TcpStream::connect(app).await?;
                tcp.set_nodelay(true)?;
                let (send, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(connection);
                send
            }
        };
        send.ready().await?;
        let call = Request::post("/echo")
            .header(http::header::HOST, "127.0.0.1")
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(data))?;
        let answered = send.send_request(call).await?;
        let received = answered.into_body().collect().await?.to_bytes();
        pool.lock().expect("the pool's lock").push(send);
        anyhow::Ok(received)
    };
    let (data, status) = match exchanged.await {
        Ok(data) => (message(&data), "0"),
        // Internal, as daprd answers a failed app call.
        Err(_) => (Bytes::new(), "13"),
    };
    grpc_answer(data, status_trailers(status))
}
