//! Tracing export from `Configuration.spec.tracing` through two real `daprd` processes on
//! loopback (sqlite name resolution): app → caller daprd → callee daprd → `echo-app`. The
//! collectors run in this test: a Zipkin v2 receiver (`POST /api/v2/spans`), an OTLP/HTTP
//! receiver (`POST /v1/traces`, protobuf) and an OTLP/gRPC `TraceService`. Every wait is bounded:
//! the receivers wake waiters as spans arrive, and each wait has a deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use dapr_proto::common::v1::http_extension::Verb;
use dapr_proto::common::v1::{HttpExtension, InvokeRequest};
use dapr_proto::runtime::v1::InvokeServiceRequest;
use dapr_proto::runtime::v1::dapr_client::DaprClient;
use e2e::sidecar::{
    HttpClient, Sidecar, SidecarOptions, free_port, scratch_dir, sqlite_config, start_pair,
};
use e2e::{EchoApp, echo_app};
use http::Method;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::watch;

/// How long exported spans may take to reach a receiver (the exporters batch for a second).
const ARRIVAL: Duration = Duration::from_secs(20);

/// A span as a receiver got it, whichever the protocol.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace: String,
    id: String,
    parent: Option<String>,
    name: String,
    kind: String,
    tags: BTreeMap<String, String>,
    /// The request headers of the export that carried it.
    headers: BTreeMap<String, String>,
}

/// What every receiver appends to; waiters watch the count.
#[derive(Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    count: Arc<watch::Sender<usize>>,
}

impl Collector {
    fn new() -> Self {
        Collector {
            spans: Arc::default(),
            count: Arc::new(watch::channel(0).0),
        }
    }

    fn add(&self, spans: impl IntoIterator<Item = Received>) {
        let mut all = self.spans.lock().expect("spans");
        all.extend(spans);
        let n = all.len();
        self.count.send_replace(n);
    }

    fn all(&self) -> Vec<Received> {
        self.spans.lock().expect("spans").clone()
    }

    /// Waits (at most [`ARRIVAL`]) until `n` spans of trace `trace` have arrived.
    async fn trace(&self, trace: &str, n: usize) -> Vec<Received> {
        let mut changes = self.count.subscribe();
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        loop {
            changes.borrow_and_update();
            let found: Vec<Received> = self
                .all()
                .into_iter()
                .filter(|s| s.trace == trace)
                .collect();
            if found.len() >= n {
                return found;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                panic!(
                    "{} of {n} spans of trace {trace} within {ARRIVAL:?}; all: {:#?}",
                    found.len(),
                    self.all()
                );
            }
        }
    }
}

fn header_map(headers: &http::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Zipkin v2 JSON spans.
fn from_zipkin(body: &[u8], headers: &BTreeMap<String, String>) -> Vec<Received> {
    let spans: Vec<serde_json::Value> = serde_json::from_slice(body).expect("zipkin JSON");
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    spans
        .iter()
        .map(|s| Received {
            service: text(&s["localEndpoint"]["serviceName"]).unwrap_or_default(),
            trace: text(&s["traceId"]).unwrap_or_default(),
            id: text(&s["id"]).unwrap_or_default(),
            parent: text(&s["parentId"]),
            name: text(&s["name"]).unwrap_or_default(),
            kind: text(&s["kind"]).unwrap_or_default(),
            tags: s["tags"]
                .as_object()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            headers: headers.clone(),
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// OTLP spans, with the kind as Zipkin spells it.
fn from_otlp(
    request: &ExportTraceServiceRequest,
    headers: &BTreeMap<String, String>,
) -> Vec<Received> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let string = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    };
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| string(&kv.value))
            .unwrap_or_default();
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            out.push(Received {
                service: service.clone(),
                trace: hex(&s.trace_id),
                id: hex(&s.span_id),
                parent: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                name: s.name.clone(),
                kind: match s.kind {
                    2 => "SERVER".into(),
                    3 => "CLIENT".into(),
                    other => format!("kind {other}"),
                },
                tags: s
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), string(&kv.value)))
                    .collect(),
                headers: headers.clone(),
            });
        }
    }
    out
}

/// Serves `router` on a free loopback port; the task ends with the test.
async fn serve(router: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

/// An OTLP/HTTP export: protobuf in, protobuf out.
async fn otlp_http(State(c): State<Collector>, headers: http::HeaderMap, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    c.add(from_otlp(&request, &header_map(&headers)));
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// A Zipkin receiver and an OTLP/HTTP receiver on one port.
async fn http_receiver(collector: &Collector) -> u16 {
    async fn zipkin(
        State(c): State<Collector>,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> http::StatusCode {
        c.add(from_zipkin(&body, &header_map(&headers)));
        http::StatusCode::ACCEPTED
    }
    serve(
        Router::new()
            .route("/api/v2/spans", post(zipkin))
            .route("/v1/traces", post(otlp_http))
            .with_state(collector.clone()),
    )
    .await
}

struct GrpcReceiver(Collector);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = header_map(&request.metadata().clone().into_headers());
        self.0.add(from_otlp(request.get_ref(), &headers));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver.
async fn grpc_receiver(collector: &Collector) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let service = TraceServiceServer::new(GrpcReceiver(collector.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}

/// Serves `service` over TLS (h2 and HTTP/1.1 by ALPN) with a certificate for 127.0.0.1 from
/// `ca`: a collector reached with `isSecure: true`.
async fn serve_tls<S>(ca: &e2e::cluster::TestCa, service: S) -> u16
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = ca
        .server(&["localhost"], &["127.0.0.1".parse().expect("ip")])
        .expect("server certificate");
    let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).expect("key PEM");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server TLS");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(service),
                )
                .await;
            });
        }
    });
    port
}

/// `orders` (the echo app behind it) and `checkout`, each with its `tracing` spec lines.
async fn pair(
    dir: &Path,
    callee_tracing: &str,
    caller_tracing: &str,
) -> (EchoApp, Sidecar, Sidecar) {
    pair_with_env(dir, callee_tracing, caller_tracing, Vec::new()).await
}

/// [`pair`] with environment variables for both sidecars.
async fn pair_with_env(
    dir: &Path,
    callee_tracing: &str,
    caller_tracing: &str,
    env: Vec<(String, String)>,
) -> (EchoApp, Sidecar, Sidecar) {
    let app = echo_app("http").await.expect("echo-app");
    let config = |name: &str, tracing: &str| -> PathBuf {
        sqlite_config(dir, name, &format!("  tracing:\n{tracing}")).expect("config")
    };
    let (callee, caller) = start_pair(
        dir,
        (
            "orders",
            SidecarOptions {
                app_port: Some(app.addr.port()),
                config: Some(config("callee", callee_tracing)),
                env: env.clone(),
                ..Default::default()
            },
        ),
        (
            "checkout",
            SidecarOptions {
                config: Some(config("caller", caller_tracing)),
                env,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("sidecars start");
    (app, callee, caller)
}

/// Invokes `inspect/<what>` on `orders` through `caller` over HTTP with `headers`; the app's
/// view of the request (its headers) comes back.
async fn invoke(
    client: &HttpClient,
    caller: &Sidecar,
    what: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let reply = client
        .send(
            Method::POST,
            &caller.url(&format!("/v1.0/invoke/orders/method/inspect/{what}")),
            headers,
            Bytes::from_static(b"{}"),
        )
        .await
        .expect("invoke");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.json().expect("inspect JSON")
}

/// The trace id, span id and flags of a `traceparent`.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

fn one<'a>(spans: &'a [Received], kind: &str) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| s.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} span: {spans:#?}");
    found[0]
}

#[tokio::test]
async fn zipkin_gets_a_client_and_a_server_span_per_hop_linked_as_upstream() {
    let dir = scratch_dir("tracing-zipkin").expect("dir");
    let collector = Collector::new();
    let port = http_receiver(&collector).await;
    let zipkin = format!(
        "    samplingRate: \"1\"\n    zipkin:\n      endpointAddress: http://127.0.0.1:{port}/api/v2/spans\n"
    );
    let (_app, callee, caller) = pair(&dir, &format!("{zipkin}    stdout: true\n"), &zipkin).await;
    let client = HttpClient::new();

    // A new trace: sampled at rate 1, the app sees the callee's server span.
    let seen = invoke(&client, &caller, "new", &[("dapr-tenant", "t1")]).await;
    let (trace, app_parent, flags) = parts(seen["headers"]["traceparent"].as_str().expect("tp"));
    assert_eq!(flags, "01");
    let spans = collector.trace(&trace, 2).await;
    let client_span = one(&spans, "CLIENT");
    let server_span = one(&spans, "SERVER");
    assert_eq!(client_span.service, "checkout");
    assert_eq!(server_span.service, "orders");
    assert_eq!(client_span.parent, None, "a root span");
    assert_eq!(server_span.parent.as_deref(), Some(client_span.id.as_str()));
    assert_eq!(
        server_span.id, app_parent,
        "the app's traceparent names the server span"
    );
    assert_eq!(client_span.name, "CallLocal/orders/inspect/new");
    assert_eq!(server_span.name, "CallLocal/orders/inspect/new");
    let tags = |s: &Received, pairs: &[(&str, &str)]| {
        for (k, v) in pairs {
            assert_eq!(
                s.tags.get(*k).map(String::as_str),
                Some(*v),
                "{k} of {s:#?}"
            );
        }
    };
    tags(
        client_span,
        &[
            ("rpc.service", "ServiceInvocation"),
            ("net.peer.name", "orders"),
            ("dapr.protocol", "http"),
            ("dapr.api", "POST /v1.0/invoke/orders/method/inspect/new"),
            ("dapr.status_code", "200"),
            ("dapr-tenant", "t1"),
        ],
    );
    tags(
        server_span,
        &[
            ("rpc.service", "ServiceInvocation"),
            ("dapr.invoke_method", "inspect/new"),
            ("dapr.protocol", "grpc"),
            (
                "dapr.api",
                "/dapr.proto.internals.v1.ServiceInvocation/CallLocalStream",
            ),
            ("dapr-tenant", "t1"),
            ("dapr-caller-app-id", "checkout"),
            ("dapr-callee-app-id", "orders"),
        ],
    );
    // stdout: the callee logged its span before exporting the batch to Zipkin.
    assert!(
        callee.log_text().contains("CallLocal/orders/inspect/new"),
        "the callee logs its span"
    );

    // An unsampled parent is followed (nothing exported), a sampled one continued.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let seen = invoke(&client, &caller, "unsampled", &[("traceparent", unsampled)]).await;
    let (trace, _, flags) = parts(seen["headers"]["traceparent"].as_str().expect("tp"));
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        ("0af7651916cd43dd8448eb211c80319c", "00")
    );
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    invoke(&client, &caller, "sampled", &[("traceparent", sampled)]).await;
    let spans = collector.trace("4bf92f3577b34da6a3ce929d0e0e4736", 2).await;
    assert_eq!(
        one(&spans, "CLIENT").parent.as_deref(),
        Some("00f067aa0ba902b7"),
        "the app's span is the client span's parent"
    );
    // Spans leave each sidecar in order: the unsampled call's would have arrived by now.
    assert!(
        collector
            .all()
            .iter()
            .all(|s| s.trace != "0af7651916cd43dd8448eb211c80319c"),
        "an unsampled trace is not exported"
    );
}

#[tokio::test]
async fn otlp_over_http_and_grpc_carry_the_hops_with_the_configured_headers() {
    let dir = scratch_dir("tracing-otlp").expect("dir");
    let collector = Collector::new();
    let http_port = http_receiver(&collector).await;
    let grpc_port = grpc_receiver(&collector).await;
    let otel = |protocol: &str, port: u16| {
        format!(
            "    samplingRate: \"1\"\n    otel:\n      protocol: {protocol}\n      endpointAddress: 127.0.0.1:{port}\n      isSecure: false\n      timeout: 5s\n      headers:\n      - name: x-tenant\n        value: {protocol}-tenant\n"
        )
    };
    let (_app, _callee, caller) =
        pair(&dir, &otel("grpc", grpc_port), &otel("http", http_port)).await;

    // Through the gRPC API: the client span is the InvokeService call, the callee serves CallLocal.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", caller.grpc_port))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
    let mut dapr = DaprClient::new(channel);
    let mut request = tonic::Request::new(InvokeServiceRequest {
        id: "orders".into(),
        message: Some(InvokeRequest {
            method: "greet".into(),
            data: None,
            content_type: String::new(),
            http_extension: Some(HttpExtension {
                verb: Verb::Post as i32,
                querystring: String::new(),
            }),
        }),
    });
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01")
            .parse()
            .expect("ascii"),
    );
    dapr.invoke_service(request).await.expect("InvokeService");

    let spans = collector.trace(trace, 2).await;
    let client_span = one(&spans, "CLIENT");
    let server_span = one(&spans, "SERVER");
    assert_eq!(client_span.service, "checkout");
    assert_eq!(client_span.name, "CallLocal/orders/greet");
    assert_eq!(client_span.parent.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(client_span.tags["dapr.protocol"], "grpc");
    assert_eq!(
        client_span.tags["dapr.api"],
        "/dapr.proto.runtime.v1.Dapr/InvokeService"
    );
    assert_eq!(client_span.tags["net.peer.name"], "orders");
    assert_eq!(client_span.headers["x-tenant"], "http-tenant");
    assert_eq!(
        client_span.headers["content-type"], "application/x-protobuf",
        "OTLP/HTTP protobuf"
    );
    assert_eq!(server_span.service, "orders");
    assert_eq!(server_span.name, "CallLocal/orders/greet");
    assert_eq!(server_span.parent.as_deref(), Some(client_span.id.as_str()));
    assert_eq!(
        server_span.tags["dapr.api"],
        "/dapr.proto.internals.v1.ServiceInvocation/CallLocal"
    );
    assert_eq!(server_span.tags["dapr.invoke_method"], "greet");
    assert_eq!(server_span.tags["dapr-caller-app-id"], "checkout");
    assert_eq!(server_span.headers["x-tenant"], "grpc-tenant");
}

/// A gRPC call proxied by `dapr-app-id`: a client span on the caller's sidecar and a server
/// span on the callee's, both named by the full method, ended with the call's status.
#[tokio::test]
async fn proxied_grpc_calls_are_a_client_and_a_server_span_named_by_their_method() {
    use e2e::echo::{Note, echo_client::EchoClient};

    let dir = scratch_dir("tracing-proxy").expect("dir");
    let collector = Collector::new();
    let port = http_receiver(&collector).await;
    let tracing = format!(
        "    samplingRate: \"1\"\n    zipkin:\n      endpointAddress: http://127.0.0.1:{port}/api/v2/spans\n"
    );
    let app = echo_app("grpc").await.expect("echo-app");
    let config = |name: &str| -> PathBuf {
        sqlite_config(&dir, name, &format!("  tracing:\n{tracing}")).expect("config")
    };
    let (_callee, caller) = start_pair(
        &dir,
        (
            "orders",
            SidecarOptions {
                app_port: Some(app.addr.port()),
                config: Some(config("callee")),
                extra_args: vec!["--app-protocol".into(), "grpc".into()],
                ..Default::default()
            },
        ),
        (
            "checkout",
            SidecarOptions {
                config: Some(config("caller")),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("sidecars start");
    let mut echo = EchoClient::connect(format!("http://127.0.0.1:{}", caller.grpc_port))
        .await
        .expect("connects");
    let call = |trace: &str, fail_with: tonic::Code| {
        let mut request = tonic::Request::new(Note {
            text: "ping".into(),
            fail_with: fail_with as i32,
            ..Default::default()
        });
        let metadata = request.metadata_mut();
        metadata.insert("dapr-app-id", "orders".parse().expect("ascii"));
        metadata.insert("dapr-tenant", "t9".parse().expect("ascii"));
        metadata.insert(
            "traceparent",
            format!("00-{trace}-00f067aa0ba902b7-01")
                .parse()
                .expect("ascii"),
        );
        request
    };

    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let reply = echo
        .unary(call(trace, tonic::Code::Ok))
        .await
        .expect("proxied call");
    let app_saw = reply
        .metadata()
        .get("x-traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("the app got a traceparent")
        .to_owned();
    let spans = collector.trace(trace, 2).await;
    let client_span = one(&spans, "CLIENT");
    let server_span = one(&spans, "SERVER");
    let method = "/e2e.echo.v1.Echo/Unary";
    assert_eq!(
        (client_span.service.as_str(), client_span.name.as_str()),
        ("checkout", method)
    );
    assert_eq!(
        (server_span.service.as_str(), server_span.name.as_str()),
        ("orders", method)
    );
    assert_eq!(client_span.parent.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(server_span.parent.as_deref(), Some(client_span.id.as_str()));
    let (app_trace, app_parent, _) = parts(&app_saw);
    assert_eq!(
        (app_trace.as_str(), app_parent.as_str()),
        (trace, server_span.id.as_str()),
        "the app's traceparent names the callee's span"
    );
    assert_eq!(
        client_span.tags.get("dapr-tenant").map(String::as_str),
        Some("t9")
    );
    assert!(!client_span.tags.contains_key("error"), "{client_span:#?}");

    // The app's error status ends both spans as errors.
    let trace = "7bf92f3577b34da6a3ce929d0e0e4736";
    let status = echo
        .unary(call(trace, tonic::Code::FailedPrecondition))
        .await
        .expect_err("the app fails");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let spans = collector.trace(trace, 2).await;
    for kind in ["CLIENT", "SERVER"] {
        let span = one(&spans, kind);
        assert_eq!(
            span.tags.get("error").map(String::as_str),
            Some("FailedPrecondition"),
            "{span:#?}"
        );
    }
    drop(app);
}

/// A call to a URL target (a service without a sidecar): the caller's client span, named as
/// an invocation of that target, is the parent the service sees in its `traceparent`.
#[tokio::test]
async fn a_url_target_gets_a_client_span_and_the_trace_in_its_traceparent() {
    let dir = scratch_dir("tracing-url").expect("dir");
    let collector = Collector::new();
    let port = http_receiver(&collector).await;
    let zipkin = format!(
        "    samplingRate: \"1\"\n    zipkin:\n      endpointAddress: http://127.0.0.1:{port}/api/v2/spans\n"
    );
    let (app, _callee, caller) = pair(&dir, &zipkin, &zipkin).await;
    let target = format!("http://127.0.0.1:{}", app.addr.port());
    let encoded = target.replace(':', "%3A").replace('/', "%2F");
    let trace = "8bf92f3577b34da6a3ce929d0e0e4736";
    let reply = HttpClient::new()
        .send(
            Method::POST,
            &caller.url(&format!("/v1.0/invoke/{encoded}/method/inspect/plain")),
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
            Bytes::from_static(b"{}"),
        )
        .await
        .expect("invoke");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen: serde_json::Value = reply.json().expect("inspect JSON");
    let (seen_trace, seen_parent, flags) =
        parts(seen["headers"]["traceparent"].as_str().expect("tp"));
    let spans = collector.trace(trace, 1).await;
    let client_span = one(&spans, "CLIENT");
    assert_eq!(client_span.service, "checkout");
    assert_eq!(
        client_span.name,
        format!("CallLocal/{target}/inspect/plain")
    );
    assert_eq!(client_span.parent.as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(client_span.tags["dapr.status_code"], "200");
    assert_eq!(
        (seen_trace.as_str(), seen_parent.as_str(), flags.as_str()),
        (trace, client_span.id.as_str(), "01"),
        "the service's parent is the client span"
    );
}

#[tokio::test]
async fn secure_otlp_collectors_are_reached_over_tls_with_the_systems_roots() {
    let dir = scratch_dir("tracing-tls").expect("dir");
    let ca = e2e::cluster::TestCa::new("collector CA").expect("CA");
    let roots = dir.join("roots.pem");
    std::fs::write(&roots, &ca.cert_pem).expect("write roots");
    let collector = Collector::new();
    let grpc = TraceServiceServer::new(GrpcReceiver(collector.clone()));
    let grpc_port = serve_tls(&ca, grpc).await;
    let http = tower::ServiceExt::map_response(
        tower::ServiceExt::map_request(
            Router::new()
                .route("/v1/traces", post(otlp_http))
                .with_state(collector.clone()),
            |r: http::Request<hyper::body::Incoming>| r.map(axum::body::Body::new),
        ),
        |r: http::Response<axum::body::Body>| r.map(tonic::body::Body::new),
    );
    let http_port = serve_tls(&ca, http).await;
    // isSecure is upstream's default; the collectors' CA is the system's as daprd reads it.
    let otel = |protocol: &str, port: u16| {
        format!(
            "    samplingRate: \"1\"\n    otel:\n      protocol: {protocol}\n      endpointAddress: localhost:{port}\n"
        )
    };
    let env = vec![("SSL_CERT_FILE".to_owned(), roots.display().to_string())];
    let (_app, _callee, caller) = pair_with_env(
        &dir,
        &otel("grpc", grpc_port),
        &otel("http", http_port),
        env,
    )
    .await;
    let seen = invoke(&HttpClient::new(), &caller, "secure", &[]).await;
    let (trace, _, _) = parts(seen["headers"]["traceparent"].as_str().expect("tp"));
    let spans = collector.trace(&trace, 2).await;
    assert_eq!(one(&spans, "CLIENT").service, "checkout");
    assert_eq!(one(&spans, "SERVER").service, "orders");
}

#[tokio::test]
async fn sampling_rate_zero_exports_no_new_trace_but_follows_a_sampled_parent() {
    let dir = scratch_dir("tracing-zero").expect("dir");
    let collector = Collector::new();
    let port = http_receiver(&collector).await;
    let spec = format!(
        "    samplingRate: \"0\"\n    zipkin:\n      endpointAddress: http://127.0.0.1:{port}/api/v2/spans\n"
    );
    let (_app, _callee, caller) = pair(&dir, &spec, &spec).await;
    let client = HttpClient::new();
    let mut roots = Vec::new();
    for i in 0..20 {
        let seen = invoke(&client, &caller, &format!("root/{i}"), &[]).await;
        let (trace, _, flags) = parts(seen["headers"]["traceparent"].as_str().expect("tp"));
        assert_eq!(flags, "00", "a new trace is not sampled at rate 0");
        roots.push(trace);
    }
    // A sampled parent is followed even at rate 0; once its spans are in, the roots' would be.
    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    invoke(
        &client,
        &caller,
        "parent",
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    )
    .await;
    collector.trace(trace, 2).await;
    let exported: Vec<String> = collector.all().into_iter().map(|s| s.trace).collect();
    assert!(
        exported.iter().all(|t| t == trace),
        "only the sampled parent's trace: {exported:?} (roots {roots:?})"
    );
}

#[tokio::test]
async fn spans_still_queued_when_the_sidecars_stop_are_exported_before_they_exit() {
    let dir = scratch_dir("tracing-flush").expect("dir");
    let collector = Collector::new();
    let port = http_receiver(&collector).await;
    let spec = format!(
        "    samplingRate: \"1\"\n    zipkin:\n      endpointAddress: http://127.0.0.1:{port}/api/v2/spans\n"
    );
    let (_app, mut callee, mut caller) = pair(&dir, &spec, &spec).await;
    let seen = invoke(&HttpClient::new(), &caller, "last", &[]).await;
    let (trace, _, _) = parts(seen["headers"]["traceparent"].as_str().expect("tp"));
    // Stopped at once, well inside the batch delay: the spans are still queued.
    for sidecar in [&mut caller, &mut callee] {
        let status = sidecar
            .terminate(Duration::from_secs(20))
            .await
            .expect("daprd stops");
        assert!(status.success(), "{status}");
    }
    let arrived = collector
        .all()
        .into_iter()
        .filter(|s| s.trace == trace)
        .count();
    assert_eq!(
        arrived, 2,
        "both spans were exported before the sidecars exited"
    );
}

/// Accepts connections and never answers: a collector that hangs.
async fn black_hole() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

#[tokio::test]
async fn a_collector_that_is_down_or_hangs_never_slows_a_call() {
    let dir = scratch_dir("tracing-down").expect("dir");
    let hanging = black_hole().await;
    let closed = free_port().expect("port");
    let spec = format!(
        "    samplingRate: \"1\"\n    zipkin:\n      endpointAddress: http://127.0.0.1:{hanging}/api/v2/spans\n    otel:\n      protocol: grpc\n      endpointAddress: 127.0.0.1:{closed}\n      isSecure: false\n      timeout: 1s\n"
    );
    let (_app, callee, caller) = pair(&dir, &spec, &spec).await;
    let client = HttpClient::new();
    let bound = Duration::from_secs(2);
    let started = Instant::now();
    for i in 0..50 {
        let call = Instant::now();
        invoke(&client, &caller, &format!("call/{i}"), &[]).await;
        assert!(call.elapsed() < bound, "call {i} took {:?}", call.elapsed());
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // The failed exports are counted (the gRPC collector refuses within its timeout).
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let text = client
            .get(&format!("http://127.0.0.1:{}/metrics", callee.metrics_port))
            .await
            .expect("metrics");
        let body = String::from_utf8_lossy(&text.body).into_owned();
        let dropped = body
            .lines()
            .find(|l| l.starts_with("dapr_trace_spans_dropped_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no drop counted within {ARRIVAL:?}:\n{body}"
        );
        // Bounded polling of a scrape endpoint: nothing to wake on.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_bad_tracing_value_stops_the_sidecar_naming_the_field() {
    let dir = scratch_dir("tracing-bad").expect("dir");
    for (spec, field) in [
        ("    samplingRate: abc\n", "spec.tracing.samplingRate"),
        (
            "    otel:\n      protocol: grpc\n      endpointAddress: \"not an address\"\n",
            "spec.tracing.otel.endpointAddress",
        ),
    ] {
        let config = sqlite_config(&dir, "bad", &format!("  tracing:\n{spec}")).expect("config");
        let output = tokio::process::Command::new(e2e::sidecar::binary("daprd"))
            .args(["--app-id", "bad", "--dapr-listen-addresses", "127.0.0.1"])
            .args(["--dapr-http-port", &free_port().expect("port").to_string()])
            .args(["--dapr-grpc-port", &free_port().expect("port").to_string()])
            .args(["--metrics-port", &free_port().expect("port").to_string()])
            .args([
                "--dapr-internal-grpc-port",
                &free_port().expect("port").to_string(),
            ])
            .arg("--config")
            .arg(&config)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(20), output)
            .await
            .expect("daprd stops within 20s")
            .expect("daprd runs");
        assert!(!output.status.success());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains(field), "{field} named: {text}");
    }
}
