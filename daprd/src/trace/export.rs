//! Span export off the request path: a bounded queue that never waits (a full queue drops the
//! span and counts it), drained by one task that sends batches to each configured exporter,
//! every send bounded by a timeout. Zipkin v2 JSON and OTLP (protobuf over HTTP, or gRPC) are
//! encoded here; the stdout exporter logs each span as one JSON line.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use super::Kind;
use super::settings::{Otel, OtelProtocol, Settings, ZIPKIN_TIMEOUT};

/// Spans waiting for export (the OpenTelemetry SDK's default `maxQueueSize`).
pub const QUEUE_CAPACITY: usize = 2048;
/// Spans per export (the SDK's default `maxExportBatchSize`).
pub const MAX_BATCH: usize = 512;
/// How long a span may wait for a batch to fill.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// The counter of spans that never reached a collector.
pub const DROPPED_METRIC: &str = "dapr_trace_spans_dropped_total";
/// The instrumentation scope, upstream's tracer name.
const SCOPE: &str = "dapr-diagnostics";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("TLS for the tracing exporters: {0}")]
    Tls(#[source] rustls::Error),
    #[error("spec.tracing.otel.endpointAddress {uri}: {source}")]
    Endpoint {
        uri: http::Uri,
        #[source]
        source: tonic::transport::Error,
    },
}

/// One ended, sampled span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace: u128,
    pub id: u64,
    pub parent: Option<u64>,
    pub kind: Kind,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
    /// The request's `dapr-*` headers.
    pub user: Vec<(String, String)>,
    pub error: Option<String>,
}

/// What the export task is handed.
enum Message {
    Span(SpanRecord),
    /// Export what is queued now, then answer.
    Flush(oneshot::Sender<()>),
}

/// The request path's end of the queue.
#[derive(Clone)]
pub struct Sink {
    queue: mpsc::Sender<Message>,
    dropped: Dropped,
}

impl Sink {
    /// Queues `span` without waiting; a full queue drops it.
    pub fn send(&self, span: SpanRecord) {
        if self.queue.try_send(Message::Span(span)).is_err() {
            self.dropped.add(1);
        }
    }

    /// Exports the spans queued so far, waiting at most `within` (at shutdown: upstream's
    /// tracer provider flushes too).
    pub async fn flush(&self, within: Duration) {
        let (done, exported) = oneshot::channel();
        let flush = async {
            if self.queue.send(Message::Flush(done)).await.is_ok() {
                let _ = exported.await;
            }
        };
        if tokio::time::timeout(within, flush).await.is_err() {
            tracing::warn!("spans not all exported within {within:?} of shutdown");
        }
    }
}

/// Counts spans lost: queue full, or their export failed.
#[derive(Clone)]
struct Dropped(Option<prometheus::IntCounter>);

impl Dropped {
    fn add(&self, n: usize) {
        if let Some(counter) = &self.0 {
            counter.inc_by(n as u64);
        }
    }
}

/// Starts the export task for the exporters `settings` configure.
pub fn start(
    settings: &Settings,
    app_id: &str,
    metrics: &crate::metrics::Metrics,
) -> Result<Sink, ExportError> {
    let dropped = Dropped(metrics.register_counter(
        DROPPED_METRIC,
        "Sampled spans not exported: the export queue was full, or the collector failed.",
        app_id,
    ));
    let mut exporters = Vec::new();
    if settings.stdout {
        exporters.push(Exporter::Stdout);
    }
    let needs_http = settings.zipkin.is_some()
        || settings
            .otel
            .as_ref()
            .is_some_and(|o| o.protocol == OtelProtocol::Http);
    let http = needs_http.then(http_client).transpose()?;
    if let (Some(uri), Some(client)) = (&settings.zipkin, &http) {
        exporters.push(Exporter::Zipkin {
            uri: uri.clone(),
            client: client.clone(),
        });
    }
    if let Some(otel) = &settings.otel {
        exporters.push(match (otel.protocol, &http) {
            (OtelProtocol::Http, Some(client)) => Exporter::OtlpHttp {
                otel: otel.clone(),
                client: client.clone(),
            },
            _ => Exporter::OtlpGrpc {
                client: grpc_client(otel)?,
                otel: otel.clone(),
            },
        });
    }
    let (queue, incoming) = mpsc::channel(QUEUE_CAPACITY);
    let batcher = Batcher {
        service: Arc::from(app_id),
        exporters,
        dropped: dropped.clone(),
    };
    tokio::spawn(batcher.run(incoming));
    Ok(Sink { queue, dropped })
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One client for Zipkin and OTLP/HTTP: plain or TLS (the system's roots) by the URL's scheme.
fn http_client() -> Result<HttpClient, ExportError> {
    Ok(Client::builder(TokioExecutor::new()).build(connector()?))
}

fn connector() -> Result<hyper_rustls::HttpsConnector<HttpConnector>, ExportError> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(Duration::from_secs(5)));
    tcp.enforce_http(false);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(dapr_identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(ExportError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp))
}

/// A lazily connecting OTLP/gRPC client (a collector that is down fails exports, not start-up).
fn grpc_client(otel: &Otel) -> Result<TraceServiceClient<tonic::transport::Channel>, ExportError> {
    let channel = tonic::transport::Endpoint::from(otel.uri.clone())
        .connect_timeout(Duration::from_secs(5))
        .timeout(otel.timeout)
        .connect_with_connector_lazy(connector()?);
    Ok(TraceServiceClient::new(channel))
}

enum Exporter {
    Stdout,
    Zipkin {
        uri: http::Uri,
        client: HttpClient,
    },
    OtlpHttp {
        otel: Otel,
        client: HttpClient,
    },
    OtlpGrpc {
        otel: Otel,
        client: TraceServiceClient<tonic::transport::Channel>,
    },
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Http(#[from] hyper_util::client::legacy::Error),
    #[error("the collector answered {0}")]
    Status(http::StatusCode),
    #[error(transparent)]
    Grpc(#[from] tonic::Status),
    #[error(transparent)]
    Request(#[from] http::Error),
}

impl Exporter {
    fn name(&self) -> &'static str {
        match self {
            Exporter::Stdout => "stdout",
            Exporter::Zipkin { .. } => "zipkin",
            Exporter::OtlpHttp { .. } => "otel (http)",
            Exporter::OtlpGrpc { .. } => "otel (grpc)",
        }
    }

    async fn export(&self, service: &str, batch: &[SpanRecord]) -> Result<(), SendError> {
        match self {
            Exporter::Stdout => {
                for span in batch {
                    tracing::info!(target: "dapr::trace", "{}", zipkin_span(service, span));
                }
                Ok(())
            }
            Exporter::Zipkin { uri, client } => {
                let body = serde_json::Value::Array(
                    batch.iter().map(|s| zipkin_span(service, s)).collect(),
                );
                let request = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))?;
                post(client, request, ZIPKIN_TIMEOUT).await
            }
            Exporter::OtlpHttp { otel, client } => {
                let body = otlp_request(service, batch).encode_to_vec();
                let mut request = http::Request::post(otel.uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(Bytes::from(body)))?;
                request.headers_mut().extend(otel.headers.iter().cloned());
                post(client, request, otel.timeout).await
            }
            Exporter::OtlpGrpc { otel, client } => {
                let mut request = tonic::Request::new(otlp_request(service, batch));
                let headers = request.metadata_mut().as_mut();
                headers.extend(otel.headers.iter().cloned());
                let mut client = client.clone();
                match tokio::time::timeout(otel.timeout, client.export(request)).await {
                    Err(_) => Err(SendError::Timeout(otel.timeout)),
                    Ok(result) => result.map(drop).map_err(SendError::from),
                }
            }
        }
    }
}

async fn post(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(), SendError> {
    let call = async {
        let response = client.request(request).await?;
        let status = response.status();
        // Read the answer so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::Status(status))
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(SendError::Timeout(timeout)))
}

struct Batcher {
    service: Arc<str>,
    exporters: Vec<Exporter>,
    dropped: Dropped,
}

impl Batcher {
    /// Collects up to [`MAX_BATCH`] spans or for [`BATCH_DELAY`] (or until a flush), then
    /// exports them; ends when every sender is gone.
    async fn run(self, mut incoming: mpsc::Receiver<Message>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = incoming.recv().await {
            let mut flushed = None;
            match first {
                Message::Span(span) => batch.push(span),
                Message::Flush(done) => flushed = Some(done),
            }
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            while flushed.is_none() && batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, incoming.recv()).await {
                    Ok(Some(Message::Span(span))) => batch.push(span),
                    Ok(Some(Message::Flush(done))) => flushed = Some(done),
                    Ok(None) | Err(_) => break,
                }
            }
            self.export(&batch).await;
            batch.clear();
            if let Some(done) = flushed {
                let _ = done.send(());
            }
        }
    }

    async fn export(&self, batch: &[SpanRecord]) {
        if batch.is_empty() {
            return;
        }
        // Side by side, so a collector that hangs holds up no other (each is bounded by its
        // timeout).
        let exports = self.exporters.iter().map(|exporter| async move {
            if let Err(e) = exporter.export(&self.service, batch).await {
                self.dropped.add(batch.len());
                tracing::warn!(
                    exporter = exporter.name(),
                    spans = batch.len(),
                    "span export failed: {e}"
                );
            }
        });
        futures::future::join_all(exports).await;
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A span in Zipkin's v2 JSON model (zipkin.io/zipkin-api), as upstream's Zipkin exporter maps
/// OpenTelemetry spans: the error status in the `error` tag, the service as `localEndpoint`.
pub fn zipkin_span(service: &str, span: &SpanRecord) -> serde_json::Value {
    let start = unix_nanos(span.start);
    let duration = unix_nanos(span.end).saturating_sub(start);
    let mut tags: serde_json::Map<String, serde_json::Value> = span
        .user
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain(span.attributes.iter().map(|(k, v)| (*k, v)))
        .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v.as_str())))
        .collect();
    if let Some(error) = &span.error {
        tags.insert("otel.status_code".into(), "ERROR".into());
        tags.insert("error".into(), error.as_str().into());
    }
    let mut value = serde_json::json!({
        "traceId": format!("{:032x}", span.trace),
        "id": format!("{:016x}", span.id),
        "name": span.name,
        "kind": match span.kind { Kind::Client => "CLIENT", Kind::Server => "SERVER" },
        "timestamp": start / 1000,
        "duration": (duration / 1000).max(1),
        "localEndpoint": { "serviceName": service },
        "tags": tags,
    });
    if let Some(parent) = span.parent {
        value["parentId"] = format!("{parent:016x}").into();
    }
    value
}

/// A batch as one OTLP export request: one resource (`service.name` = the app id) and upstream's
/// instrumentation scope.
pub fn otlp_request(service: &str, batch: &[SpanRecord]) -> ExportTraceServiceRequest {
    let string = |key: &str, value: &str| KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    };
    let spans = batch
        .iter()
        .map(|s| opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: s.trace.to_be_bytes().to_vec(),
            span_id: s.id.to_be_bytes().to_vec(),
            parent_span_id: s
                .parent
                .map(|p| p.to_be_bytes().to_vec())
                .unwrap_or_default(),
            // Sampled; the parent is remote for a server span.
            flags: 0x01 | 0x100 | if s.kind == Kind::Server { 0x200 } else { 0 },
            name: s.name.clone(),
            kind: match s.kind {
                Kind::Client => span::SpanKind::Client,
                Kind::Server => span::SpanKind::Server,
            } as i32,
            start_time_unix_nano: unix_nanos(s.start),
            end_time_unix_nano: unix_nanos(s.end),
            attributes: s
                .user
                .iter()
                .map(|(k, v)| (k.as_str(), v))
                .filter(|(k, _)| !s.attributes.iter().any(|(own, _)| own == k))
                .chain(s.attributes.iter().map(|(k, v)| (*k, v)))
                .map(|(k, v)| string(k, v))
                .collect(),
            status: Some(match &s.error {
                None => Status::default(),
                Some(message) => Status {
                    message: message.clone(),
                    code: status::StatusCode::Error as i32,
                },
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SCOPE.to_owned(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SpanRecord {
        SpanRecord {
            trace: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            id: 0x00f0_67aa_0ba9_02b7,
            parent: Some(0xabc),
            kind: Kind::Server,
            name: "CallLocal/orders/neworder".into(),
            start: UNIX_EPOCH + Duration::from_micros(1_000_000),
            end: UNIX_EPOCH + Duration::from_micros(1_002_500),
            attributes: vec![("rpc.service", "ServiceInvocation".into())],
            user: vec![("dapr-tenant".into(), "t1".into())],
            error: Some("Code(500): Internal Server Error".into()),
        }
    }

    #[test]
    fn zipkin_json_carries_ids_kind_times_and_tags() {
        let v = zipkin_span("orders", &record());
        assert_eq!(v["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["id"], "00f067aa0ba902b7");
        assert_eq!(v["parentId"], "0000000000000abc");
        assert_eq!(v["kind"], "SERVER");
        assert_eq!(v["timestamp"], 1_000_000);
        assert_eq!(v["duration"], 2500);
        assert_eq!(v["localEndpoint"]["serviceName"], "orders");
        assert_eq!(v["tags"]["rpc.service"], "ServiceInvocation");
        assert_eq!(v["tags"]["dapr-tenant"], "t1");
        assert_eq!(v["tags"]["error"], "Code(500): Internal Server Error");
    }

    #[test]
    fn otlp_request_carries_the_resource_scope_and_span() {
        let request = otlp_request("orders", &[record()]);
        let rs = &request.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let scope = &rs.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, SCOPE);
        let s = &scope.spans[0];
        assert_eq!(s.trace_id.len(), 16);
        assert_eq!(s.parent_span_id, 0xabcu64.to_be_bytes().to_vec());
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 2_500_000);
        assert_eq!(
            s.status.as_ref().unwrap().code,
            status::StatusCode::Error as i32
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_without_waiting() {
        let (queue, _incoming) = mpsc::channel(1);
        let sink = Sink {
            queue,
            dropped: Dropped(Some(
                prometheus::IntCounter::new("dropped", "test").unwrap(),
            )),
        };
        sink.send(record());
        sink.send(record());
        sink.send(record());
        assert_eq!(sink.dropped.0.as_ref().unwrap().get(), 2);
    }

    #[tokio::test]
    async fn a_flush_exports_what_is_queued_without_waiting_for_the_batch_delay() {
        let (queue, incoming) = mpsc::channel(QUEUE_CAPACITY);
        let sink = Sink {
            queue,
            dropped: Dropped(Some(prometheus::IntCounter::new("dropped", "t").unwrap())),
        };
        // An exporter that always fails counts every span it was handed as dropped.
        let uri: http::Uri = "http://127.0.0.1:9/".parse().unwrap();
        let batcher = Batcher {
            service: Arc::from("orders"),
            exporters: vec![Exporter::Zipkin {
                uri,
                client: http_client().unwrap(),
            }],
            dropped: sink.dropped.clone(),
        };
        tokio::spawn(batcher.run(incoming));
        sink.send(record());
        sink.send(record());
        let started = tokio::time::Instant::now();
        sink.flush(Duration::from_secs(30)).await;
        assert!(started.elapsed() < BATCH_DELAY * 5);
        assert_eq!(
            sink.dropped.0.as_ref().unwrap().get(),
            2,
            "both spans were exported"
        );
    }
}
