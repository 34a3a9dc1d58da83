//! Prometheus metrics under upstream daprd's names, label keys, units and buckets, served as
//! text on `--metrics-port` (`/` and `/metrics`).
//!
//! Families and where they are recorded:
//! - `dapr_http_server_*`: a tower layer on the HTTP API routers ([`HttpLayer`]).
//! - `dapr_grpc_io_server_*`: a tower layer on the gRPC API and internal servers ([`GrpcLayer`]).
//! - `dapr_http_client_*`: the HTTP app channel ([`Metrics::app_call`]).
//! - `dapr_grpc_io_client_*`: the unary RPCs this sidecar makes per request, `CallLocal` to a
//!   peer and `AppCallback/OnInvoke` to a gRPC app ([`Metrics::grpc_client`]), as upstream's
//!   unary client interceptor (`pkg/diagnostics/grpc_monitoring.go`) records them; a gRPC app's
//!   health probes are `dapr_grpc_io_healthprobes_*` instead ([`Metrics::health_probe`]).
//! - `dapr_runtime_service_invocation_*`: the invoker (request sent, response received with its
//!   latency) and the internal server (request received, response sent).
//! - `dapr_resiliency_*`: Resiliency policies loaded, applied to calls and activated (a timeout
//!   fired, a retry, a breaker changing state), and each breaker's state
//!   ([`Metrics::resiliency_policy`], pkg/diagnostics/resiliency_monitoring.go upstream).
//!
//! Every label value comes from a bounded set, so a client cannot grow the series without end:
//! - HTTP: upstream's default low-cardinality mode. `method` is the HTTP verb (anything but the
//!   nine standard verbs is `UNKNOWN`), `path` is always empty, `status` the response code.
//!   Upstream puts the app's path in `path` on the app-channel side; it stays empty here too.
//! - gRPC: `grpc_server_method` is the full name of an RPC this sidecar serves, or of a call the
//!   gRPC API proxies by `dapr-app-id` (upstream's stream interceptor records those too); at most
//!   [`MAX_PROXIED_METHODS`] distinct proxied names become label values, later ones share
//!   [`OTHER_PEERS`]. Calls to other names are not recorded. `grpc_client_method` is one of the
//!   few RPCs the sidecar makes. `grpc_server_status` and `grpc_client_status` are the code's Go
//!   name (`OK`, `NotFound`, ...).
//! - Service invocation: only app ids (`src_app_id`, `dst_app_id`), as upstream, which dropped the
//!   `method` label. A caller names itself in metadata that nothing authenticates without mTLS, so
//!   at most [`MAX_PEER_IDS`] distinct peer ids become label values; later ones share
//!   [`OTHER_PEERS`].
//!
//! The registry lives in the runtime's shared state, one per sidecar; `app_id` is a constant
//! label on every family.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::response::IntoResponse;
use axum::routing::get;
use bytes::{Buf, Bytes};
use dapr_proto::internals::v1::InternalInvokeResponse;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use tower::{Layer, Service};

use crate::Error;
use crate::wire::{Metadata, names};

/// Metric names, as upstream's Prometheus exporter writes them.
pub mod name {
    pub const HTTP_SERVER_REQUEST_COUNT: &str = "dapr_http_server_request_count";
    pub const HTTP_SERVER_LATENCY: &str = "dapr_http_server_latency";
    pub const HTTP_SERVER_REQUEST_BYTES: &str = "dapr_http_server_request_bytes";
    pub const HTTP_SERVER_RESPONSE_BYTES: &str = "dapr_http_server_response_bytes";
    pub const HTTP_CLIENT_SENT_BYTES: &str = "dapr_http_client_sent_bytes";
    pub const HTTP_CLIENT_RECEIVED_BYTES: &str = "dapr_http_client_received_bytes";
    pub const HTTP_CLIENT_ROUNDTRIP_LATENCY: &str = "dapr_http_client_roundtrip_latency";
    pub const HTTP_CLIENT_COMPLETED_COUNT: &str = "dapr_http_client_completed_count";
    pub const GRPC_SERVER_COMPLETED_RPCS: &str = "dapr_grpc_io_server_completed_rpcs";
    pub const GRPC_SERVER_LATENCY: &str = "dapr_grpc_io_server_server_latency";
    pub const GRPC_SERVER_RECEIVED_BYTES: &str = "dapr_grpc_io_server_received_bytes_per_rpc";
    pub const GRPC_SERVER_SENT_BYTES: &str = "dapr_grpc_io_server_sent_bytes_per_rpc";
    pub const GRPC_CLIENT_COMPLETED_RPCS: &str = "dapr_grpc_io_client_completed_rpcs";
    pub const GRPC_CLIENT_LATENCY: &str = "dapr_grpc_io_client_roundtrip_latency";
    pub const GRPC_CLIENT_SENT_BYTES: &str = "dapr_grpc_io_client_sent_bytes_per_rpc";
    pub const GRPC_CLIENT_RECEIVED_BYTES: &str = "dapr_grpc_io_client_received_bytes_per_rpc";
    pub const HEALTH_PROBES_COMPLETED: &str = "dapr_grpc_io_healthprobes_completed_count";
    pub const HEALTH_PROBES_LATENCY: &str = "dapr_grpc_io_healthprobes_roundtrip_latency";
    pub const INVOCATION_REQ_SENT: &str = "dapr_runtime_service_invocation_req_sent_total";
    pub const INVOCATION_REQ_RECV: &str = "dapr_runtime_service_invocation_req_recv_total";
    pub const INVOCATION_RES_SENT: &str = "dapr_runtime_service_invocation_res_sent_total";
    pub const INVOCATION_RES_RECV: &str = "dapr_runtime_service_invocation_res_recv_total";
    pub const INVOCATION_RES_RECV_LATENCY: &str =
        "dapr_runtime_service_invocation_res_recv_latency_ms";
    pub const RESILIENCY_LOADED: &str = "dapr_resiliency_loaded";
    pub const RESILIENCY_COUNT: &str = "dapr_resiliency_count";
    pub const RESILIENCY_ACTIVATIONS: &str = "dapr_resiliency_activations_total";
    pub const RESILIENCY_CB_STATE: &str = "dapr_resiliency_cb_state";
}

/// Label keys, as upstream.
pub mod label {
    pub const APP_ID: &str = "app_id";
    pub const METHOD: &str = "method";
    pub const PATH: &str = "path";
    pub const STATUS: &str = "status";
    pub const GRPC_SERVER_METHOD: &str = "grpc_server_method";
    pub const GRPC_SERVER_STATUS: &str = "grpc_server_status";
    pub const GRPC_CLIENT_METHOD: &str = "grpc_client_method";
    pub const GRPC_CLIENT_STATUS: &str = "grpc_client_status";
    pub const SRC_APP_ID: &str = "src_app_id";
    pub const DST_APP_ID: &str = "dst_app_id";
    pub const TYPE: &str = "type";
    pub const NAME: &str = "name";
    pub const NAMESPACE: &str = "namespace";
    pub const POLICY: &str = "policy";
    pub const FLOW_DIRECTION: &str = "flow_direction";
    pub const TARGET: &str = "target";
}

/// What happened to a Resiliency policy on a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyEvent {
    /// The policy applies to a call (`dapr_resiliency_count`).
    Applied,
    /// It acted: a timeout fired, a retry, a breaker changed state
    /// (`dapr_resiliency_activations_total`).
    Activated,
}

/// `type` of a sidecar-to-sidecar call; upstream keeps `streaming` for proxied gRPC streams.
pub const UNARY: &str = "unary";

/// Upstream's latency buckets, in milliseconds.
pub const LATENCY_MS_BUCKETS: [f64; 34] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 30.0, 40.0, 50.0, 65.0, 80.0,
    100.0, 130.0, 160.0, 200.0, 250.0, 300.0, 400.0, 500.0, 650.0, 800.0, 1_000.0, 2_000.0,
    5_000.0, 10_000.0, 20_000.0, 50_000.0, 100_000.0,
];

/// Upstream's size buckets, in bytes (1 KiB to 4 GiB).
pub const SIZE_BUCKETS: [f64; 13] = [
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// `flow_direction` of calls to other apps.
const OUTBOUND: &str = "outbound";
/// `policy` of a circuit breaker.
pub const CIRCUIT_BREAKER: &str = "circuitbreaker";

/// Distinct peer app ids kept as label values.
pub const MAX_PEER_IDS: usize = 1024;
/// The label value shared by peer ids beyond [`MAX_PEER_IDS`] (app ids cannot start with `_`).
pub const OTHER_PEERS: &str = "_other";
/// Distinct proxied gRPC method names kept as `grpc_server_method` values.
pub const MAX_PROXIED_METHODS: usize = 256;
/// The caller id upstream records when a request names none.
const UNKNOWN_CALLER: &str = "unknown";

/// The RPCs this sidecar serves, the only `grpc_server_method` values.
const GRPC_METHODS: [&str; 6] = [
    "/dapr.proto.runtime.v1.Dapr/InvokeService",
    "/dapr.proto.runtime.v1.Dapr/GetMetadata",
    "/dapr.proto.runtime.v1.Dapr/SetMetadata",
    "/dapr.proto.runtime.v1.Dapr/Shutdown",
    "/dapr.proto.internals.v1.ServiceInvocation/CallLocal",
    "/dapr.proto.internals.v1.ServiceInvocation/CallLocalStream",
];

/// The unary RPCs this sidecar makes per request, the `grpc_client_method` values.
pub mod client_rpc {
    pub const CALL_LOCAL: &str = "/dapr.proto.internals.v1.ServiceInvocation/CallLocal";
    pub const ON_INVOKE: &str = "/dapr.proto.runtime.v1.AppCallback/OnInvoke";
}

/// The sidecar's metrics; every recording is a no-op when metrics are disabled.
pub struct Metrics {
    families: Option<Arc<Families>>,
}

struct Families {
    registry: Registry,
    http_server_request_count: IntCounterVec,
    http_server_latency: HistogramVec,
    http_server_request_bytes: Histogram,
    http_server_response_bytes: Histogram,
    http_client_sent_bytes: HistogramVec,
    http_client_received_bytes: Histogram,
    http_client_roundtrip_latency: HistogramVec,
    http_client_completed_count: IntCounterVec,
    grpc_server_completed_rpcs: IntCounterVec,
    grpc_server_latency: HistogramVec,
    grpc_server_received_bytes: HistogramVec,
    grpc_server_sent_bytes: HistogramVec,
    grpc_client_completed_rpcs: IntCounterVec,
    grpc_client_latency: HistogramVec,
    grpc_client_sent_bytes: HistogramVec,
    grpc_client_received_bytes: HistogramVec,
    health_probes_completed: IntCounterVec,
    health_probes_latency: HistogramVec,
    invocation_req_sent: IntCounterVec,
    invocation_req_recv: IntCounterVec,
    invocation_res_sent: IntCounterVec,
    invocation_res_recv: IntCounterVec,
    invocation_res_recv_latency: HistogramVec,
    resiliency_loaded: IntCounterVec,
    resiliency_count: IntCounterVec,
    resiliency_activations: IntCounterVec,
    resiliency_cb_state: prometheus::IntGaugeVec,
    peers: PeerIds,
    proxied_methods: PeerIds,
}

impl Metrics {
    /// Registers every family for `app_id`; `enabled: false` (`--enable-metrics=false`) records
    /// nothing.
    pub fn new(app_id: &str, enabled: bool) -> Metrics {
        if !enabled {
            return Metrics::disabled();
        }
        match Families::new(app_id) {
            Ok(families) => Metrics {
                families: Some(Arc::new(families)),
            },
            // Only a programming error (a bad or duplicate name) gets here; the sidecar runs on.
            Err(e) => {
                tracing::error!("metrics disabled: cannot register them: {e}");
                Metrics::disabled()
            }
        }
    }

    pub fn disabled() -> Metrics {
        Metrics { families: None }
    }

    pub fn enabled(&self) -> bool {
        self.families.is_some()
    }

    /// The text exposition of every family (Prometheus format 0.0.4).
    pub fn render(&self) -> String {
        let Some(f) = &self.families else {
            return String::new();
        };
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&f.registry.gather(), &mut out) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        out
    }

    /// Counts a request about to go to another sidecar (`target` resolved, as upstream counts
    /// only calls that found their peer); the response head is recorded on the returned value.
    pub fn invocation_sent(&self, target: &str) -> SentInvocation<'_> {
        let Some(f) = self.families.as_deref() else {
            return SentInvocation { call: None };
        };
        let peer = f.peers.label(target);
        inc(&f.invocation_req_sent, &[&peer, UNARY]);
        SentInvocation {
            call: Some((f, peer, Instant::now())),
        }
    }

    /// Counts a request from another sidecar that access control let through; the app's answer
    /// is recorded by [`ReceivedInvocation::respond`].
    pub fn invocation_received(&self, metadata: &Metadata) -> ReceivedInvocation<'_> {
        let Some(f) = self.families.as_deref() else {
            return ReceivedInvocation { call: None };
        };
        let caller = crate::wire::first(metadata, names::CALLER_APP_ID).unwrap_or(UNKNOWN_CALLER);
        let peer = f.peers.label(caller);
        inc(&f.invocation_req_recv, &[&peer]);
        ReceivedInvocation {
            call: Some((f, peer)),
        }
    }

    /// Counts a Resiliency loaded at start.
    pub fn resiliency_loaded(&self, name: &str, namespace: &str) {
        if let Some(f) = self.families.as_deref() {
            inc(&f.resiliency_loaded, &[name, namespace]);
        }
    }

    /// Records `policy` (`timeout`, `retry` or `circuitbreaker`) of Resiliency `name` on a call
    /// to `app`; `status` is a breaker's state, else empty, as upstream labels them.
    pub fn resiliency_policy(
        &self,
        event: PolicyEvent,
        (name, namespace): (&str, &str),
        policy: &str,
        app: &str,
        status: &str,
    ) {
        let Some(f) = self.families.as_deref() else {
            return;
        };
        let target = format!("app_{}", f.peers.label(app));
        let vec = match event {
            PolicyEvent::Applied => &f.resiliency_count,
            PolicyEvent::Activated => &f.resiliency_activations,
        };
        inc(vec, &[name, namespace, policy, OUTBOUND, &target, status]);
    }

    /// Sets `dapr_resiliency_cb_state` of the breaker for calls to `app` (0 closed, 1 half-open,
    /// 2 open).
    pub fn breaker_state(&self, (name, namespace): (&str, &str), app: &str, state: i64) {
        let Some(f) = self.families.as_deref() else {
            return;
        };
        let target = format!("app_{}", f.peers.label(app));
        if let Ok(gauge) = f.resiliency_cb_state.get_metric_with_label_values(&[
            name,
            namespace,
            CIRCUIT_BREAKER,
            OUTBOUND,
            &target,
        ]) {
            gauge.set(state);
        }
    }

    /// A counter of another part of the sidecar (the tracing exporters' drops), registered with
    /// the families above; `None` when metrics are disabled or the name is taken.
    pub fn register_counter(
        &self,
        name: &str,
        help: &str,
        app_id: &str,
    ) -> Option<prometheus::IntCounter> {
        let f = self.families.as_deref()?;
        let opts = Opts::new(name, help).const_label(label::APP_ID, app_id);
        let counter = prometheus::IntCounter::with_opts(opts).ok()?;
        match f.registry.register(Box::new(counter.clone())) {
            Ok(()) => Some(counter),
            Err(e) => {
                tracing::error!("cannot register {name}: {e}");
                None
            }
        }
    }

    /// Starts timing a unary RPC the sidecar makes ([`client_rpc`]); recorded by
    /// [`ClientRpc::finish`], or as `Canceled` when dropped before.
    pub fn grpc_client(&self, method: &'static str) -> ClientRpc<'_> {
        ClientRpc {
            call: self.families.as_deref().map(|f| (f, Instant::now())),
            method,
        }
    }

    /// Records one gRPC health probe of the app that ended with `code` after `elapsed`.
    pub fn health_probe(&self, code: tonic::Code, elapsed: std::time::Duration) {
        if let Some(f) = self.families.as_deref() {
            let status = [grpc_code_label(code)];
            inc(&f.health_probes_completed, &status);
            observe(
                &f.health_probes_latency,
                &status,
                elapsed.as_secs_f64() * 1000.0,
            );
        }
    }

    /// Starts timing a call into the app over HTTP.
    pub fn app_call(&self, verb: &Method) -> AppCall {
        AppCall {
            families: self.families.clone(),
            method: verb_label(verb),
            start: Instant::now(),
            answered: false,
        }
    }
}

impl Families {
    fn new(app_id: &str) -> prometheus::Result<Families> {
        let registry = Registry::new();
        let http = [label::METHOD, label::PATH, label::STATUS];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(
                Opts::new(name, help).const_label(label::APP_ID, app_id),
                labels,
            )?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let opts = HistogramOpts::new(name, help)
                .const_label(label::APP_ID, app_id)
                .buckets(buckets.to_vec());
            let vec = HistogramVec::new(opts, labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let no_labels: &[&str] = &[];
        let resiliency = [
            label::NAME,
            label::NAMESPACE,
            label::POLICY,
            label::FLOW_DIRECTION,
            label::TARGET,
            label::STATUS,
        ];
        Ok(Families {
            http_server_request_count: counter(
                name::HTTP_SERVER_REQUEST_COUNT,
                "Count of HTTP requests processed by the server.",
                &http,
            )?,
            http_server_latency: histogram(
                name::HTTP_SERVER_LATENCY,
                "HTTP request end-to-end latency in server.",
                &LATENCY_MS_BUCKETS,
                &http,
            )?,
            http_server_request_bytes: histogram(
                name::HTTP_SERVER_REQUEST_BYTES,
                "HTTP request body size if set as ContentLength (uncompressed) in server.",
                &SIZE_BUCKETS,
                no_labels,
            )?
            .get_metric_with_label_values(no_labels)?,
            http_server_response_bytes: histogram(
                name::HTTP_SERVER_RESPONSE_BYTES,
                "HTTP response body size (uncompressed) in server.",
                &SIZE_BUCKETS,
                no_labels,
            )?
            .get_metric_with_label_values(no_labels)?,
            http_client_sent_bytes: histogram(
                name::HTTP_CLIENT_SENT_BYTES,
                "Total bytes sent in request body (not including headers)",
                &SIZE_BUCKETS,
                &http,
            )?,
            http_client_received_bytes: histogram(
                name::HTTP_CLIENT_RECEIVED_BYTES,
                "Total bytes received in response bodies (not including headers but including error responses with bodies)",
                &SIZE_BUCKETS,
                no_labels,
            )?
            .get_metric_with_label_values(no_labels)?,
            http_client_roundtrip_latency: histogram(
                name::HTTP_CLIENT_ROUNDTRIP_LATENCY,
                "Time between first byte of request headers sent to last byte of response received, or terminal error",
                &LATENCY_MS_BUCKETS,
                &http,
            )?,
            http_client_completed_count: counter(
                name::HTTP_CLIENT_COMPLETED_COUNT,
                "Count of completed requests",
                &http,
            )?,
            grpc_server_completed_rpcs: counter(
                name::GRPC_SERVER_COMPLETED_RPCS,
                "Count of RPCs by method and status.",
                &[label::GRPC_SERVER_METHOD, label::GRPC_SERVER_STATUS],
            )?,
            grpc_server_latency: histogram(
                name::GRPC_SERVER_LATENCY,
                "Time between first byte of request received to last byte of response sent, or terminal error.",
                &LATENCY_MS_BUCKETS,
                &[label::GRPC_SERVER_METHOD, label::GRPC_SERVER_STATUS],
            )?,
            grpc_server_received_bytes: histogram(
                name::GRPC_SERVER_RECEIVED_BYTES,
                "Total bytes received across all messages per RPC.",
                &SIZE_BUCKETS,
                &[label::GRPC_SERVER_METHOD],
            )?,
            grpc_server_sent_bytes: histogram(
                name::GRPC_SERVER_SENT_BYTES,
                "Total bytes sent in across all response messages per RPC.",
                &SIZE_BUCKETS,
                &[label::GRPC_SERVER_METHOD],
            )?,
            invocation_req_sent: counter(
                name::INVOCATION_REQ_SENT,
                "The number of requests sent via service invocation.",
                &[label::DST_APP_ID, label::TYPE],
            )?,
            invocation_req_recv: counter(
                name::INVOCATION_REQ_RECV,
                "The number of requests received via service invocation.",
                &[label::SRC_APP_ID],
            )?,
            invocation_res_sent: counter(
                name::INVOCATION_RES_SENT,
                "The number of responses sent via service invocation.",
                &[label::DST_APP_ID, label::STATUS],
            )?,
            invocation_res_recv: counter(
                name::INVOCATION_RES_RECV,
                "The number of responses received via service invocation.",
                &[label::SRC_APP_ID, label::STATUS, label::TYPE],
            )?,
            invocation_res_recv_latency: histogram(
                name::INVOCATION_RES_RECV_LATENCY,
                "The latency of service invocation response.",
                &LATENCY_MS_BUCKETS,
                &[label::SRC_APP_ID, label::STATUS],
            )?,
            resiliency_loaded: counter(
                name::RESILIENCY_LOADED,
                "Number of resiliency policies loaded.",
                &[label::NAME, label::NAMESPACE],
            )?,
            resiliency_count: counter(
                name::RESILIENCY_COUNT,
                "Number of times a resiliency policyKey has been applied to a building block.",
                &resiliency,
            )?,
            resiliency_activations: counter(
                name::RESILIENCY_ACTIVATIONS,
                "Number of times a resiliency policyKey has been activated in a building block after a failure or after a state change.",
                &resiliency,
            )?,
            resiliency_cb_state: {
                let vec = prometheus::IntGaugeVec::new(
                    Opts::new(
                        name::RESILIENCY_CB_STATE,
                        "A resiliency policy's current CircuitBreakerState state. 0 is closed, 1 is half-open, 2 is open, and -1 is unknown.",
                    )
                    .const_label(label::APP_ID, app_id),
                    &resiliency[..5],
                )?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            grpc_client_completed_rpcs: counter(
                name::GRPC_CLIENT_COMPLETED_RPCS,
                "Count of RPCs by method and status.",
                &[label::GRPC_CLIENT_METHOD, label::GRPC_CLIENT_STATUS],
            )?,
            grpc_client_latency: histogram(
                name::GRPC_CLIENT_LATENCY,
                "Time between first byte of request sent to last byte of response received, or terminal error.",
                &LATENCY_MS_BUCKETS,
                &[label::GRPC_CLIENT_METHOD, label::GRPC_CLIENT_STATUS],
            )?,
            grpc_client_sent_bytes: histogram(
                name::GRPC_CLIENT_SENT_BYTES,
                "Total bytes sent across all request messages per RPC.",
                &SIZE_BUCKETS,
                &[label::GRPC_CLIENT_METHOD],
            )?,
            grpc_client_received_bytes: histogram(
                name::GRPC_CLIENT_RECEIVED_BYTES,
                "Total bytes received across all response messages per RPC.",
                &SIZE_BUCKETS,
                &[label::GRPC_CLIENT_METHOD],
            )?,
            health_probes_completed: counter(
                name::HEALTH_PROBES_COMPLETED,
                "Count of completed health probes",
                &[label::GRPC_CLIENT_STATUS],
            )?,
            health_probes_latency: histogram(
                name::HEALTH_PROBES_LATENCY,
                "Time between first byte of health probes sent to last byte of response received, or terminal error",
                &LATENCY_MS_BUCKETS,
                &[label::GRPC_CLIENT_STATUS],
            )?,
            peers: PeerIds::new(MAX_PEER_IDS),
            proxied_methods: PeerIds::new(MAX_PROXIED_METHODS),
            registry,
        })
    }
}

fn inc(vec: &IntCounterVec, values: &[&str]) {
    if let Ok(counter) = vec.get_metric_with_label_values(values) {
        counter.inc();
    }
}

fn observe(vec: &HistogramVec, values: &[&str], value: f64) {
    if let Ok(histogram) = vec.get_metric_with_label_values(values) {
        histogram.observe(value);
    }
}

fn millis_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Label values (peer app ids, proxied method names) seen so far, capped: the interned value is
/// handed out without allocating.
struct PeerIds {
    seen: RwLock<HashSet<Arc<str>>>,
    other: Arc<str>,
    cap: usize,
}

impl PeerIds {
    fn new(cap: usize) -> PeerIds {
        PeerIds {
            seen: RwLock::new(HashSet::new()),
            other: Arc::from(OTHER_PEERS),
            cap,
        }
    }

    fn label(&self, id: &str) -> Arc<str> {
        if let Ok(seen) = self.seen.read()
            && let Some(known) = seen.get(id)
        {
            return Arc::clone(known);
        }
        let Ok(mut seen) = self.seen.write() else {
            return Arc::clone(&self.other);
        };
        if let Some(known) = seen.get(id) {
            return Arc::clone(known);
        }
        if seen.len() >= self.cap {
            return Arc::clone(&self.other);
        }
        let id: Arc<str> = Arc::from(id);
        seen.insert(Arc::clone(&id));
        id
    }
}

/// A status number as a label value, formatted on the stack.
struct StatusLabel {
    buf: [u8; 11],
    len: usize,
}

impl StatusLabel {
    fn new(code: i32) -> StatusLabel {
        let mut buf = [0u8; 11];
        let mut digits = [0u8; 10];
        let mut n = code.unsigned_abs();
        let mut count = 0;
        loop {
            digits[count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut len = 0;
        if code < 0 {
            buf[0] = b'-';
            len = 1;
        }
        for digit in digits[..count].iter().rev() {
            buf[len] = *digit;
            len += 1;
        }
        StatusLabel { buf, len }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// The `method` label of HTTP metrics: the verb, or `UNKNOWN` for extension methods.
pub fn verb_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "UNKNOWN",
    }
}

/// A gRPC code's name as Go's `codes.Code.String()` writes it (upstream's label values).
pub fn grpc_code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The `grpc_server_method` label for a request path, if it is an RPC this sidecar serves.
pub fn grpc_method_label(path: &str) -> Option<&'static str> {
    GRPC_METHODS.iter().copied().find(|method| *method == path)
}

/// A unary RPC the sidecar makes, waiting for its outcome.
pub struct ClientRpc<'a> {
    call: Option<(&'a Families, Instant)>,
    method: &'static str,
}

impl ClientRpc<'_> {
    /// Records the outcome: the status `code`, and the request and response messages' sizes
    /// (the protobuf encoding, as upstream's `proto.Size`; 0 for a response that never came),
    /// `received` measured only when metrics are on.
    pub fn finish(mut self, code: tonic::Code, sent: usize, received: impl FnOnce() -> usize) {
        if self.call.is_some() {
            let received = received();
            self.record(code, Some((sent, received)));
        }
    }

    fn record(&mut self, code: tonic::Code, sizes: Option<(usize, usize)>) {
        let Some((f, start)) = self.call.take() else {
            return;
        };
        let labels = [self.method, grpc_code_label(code)];
        inc(&f.grpc_client_completed_rpcs, &labels);
        observe(&f.grpc_client_latency, &labels, millis_since(start));
        if let Some((sent, received)) = sizes {
            observe(&f.grpc_client_sent_bytes, &[self.method], sent as f64);
            observe(
                &f.grpc_client_received_bytes,
                &[self.method],
                received as f64,
            );
        }
    }
}

impl Drop for ClientRpc<'_> {
    fn drop(&mut self) {
        // The caller gave up (its own caller went away): a cancelled RPC, as grpc-go reports it.
        self.record(tonic::Code::Cancelled, None);
    }
}

/// A request sent to another sidecar, waiting for its response head.
pub struct SentInvocation<'a> {
    call: Option<(&'a Families, Arc<str>, Instant)>,
}

impl SentInvocation<'_> {
    /// Records the response head (its status: the app's HTTP status, or a gRPC code) and hands
    /// it back. A call that ends without a head is not a received response, as upstream.
    pub fn received(self, head: InternalInvokeResponse) -> InternalInvokeResponse {
        if let Some((f, peer, start)) = self.call {
            let code = head.status.as_ref().map_or(0, |s| s.code);
            let status = StatusLabel::new(code);
            inc(&f.invocation_res_recv, &[&peer, status.as_str(), UNARY]);
            observe(
                &f.invocation_res_recv_latency,
                &[&peer, status.as_str()],
                millis_since(start),
            );
        }
        head
    }
}

/// A request from another sidecar, waiting for the app's answer.
pub struct ReceivedInvocation<'a> {
    call: Option<(&'a Families, Arc<str>)>,
}

impl ReceivedInvocation<'_> {
    /// Awaits the app and records the response sent back: the app's status (`status` reads it
    /// from the answer), or `13` (gRPC `Internal`) when the app could not be called, as
    /// upstream.
    pub async fn respond<F, R>(self, app: F, status: impl Fn(&R) -> u16) -> Result<R, Error>
    where
        F: Future<Output = Result<R, Error>>,
    {
        let response = app.await;
        if let Some((f, peer)) = self.call {
            let code = response
                .as_ref()
                .map_or(tonic::Code::Internal as i32, |r| i32::from(status(r)));
            inc(
                &f.invocation_res_sent,
                &[&peer, StatusLabel::new(code).as_str()],
            );
        }
        response
    }
}

/// A call into the app over HTTP; recorded as completed when the response head arrives, or as
/// a 500 when the call fails or is abandoned first (upstream records transport errors as 500).
pub struct AppCall {
    families: Option<Arc<Families>>,
    method: &'static str,
    start: Instant,
    answered: bool,
}

impl AppCall {
    /// Counts the request body's bytes as it streams; recorded when the body ends or is dropped.
    pub fn request_body(&self) -> BodyBytes {
        BodyBytes {
            families: self.families.clone(),
            method: self.method,
            sent: true,
            bytes: 0,
        }
    }

    /// Records the response head; the returned counter measures the response body.
    pub fn answered(mut self, status: StatusCode) -> BodyBytes {
        self.answered = true;
        self.record(status.as_str());
        BodyBytes {
            families: self.families.take(),
            method: self.method,
            sent: false,
            bytes: 0,
        }
    }

    fn record(&self, status: &str) {
        if let Some(f) = &self.families {
            let labels = [self.method, "", status];
            inc(&f.http_client_completed_count, &labels);
            observe(
                &f.http_client_roundtrip_latency,
                &labels,
                millis_since(self.start),
            );
        }
    }
}

impl Drop for AppCall {
    fn drop(&mut self) {
        if !self.answered {
            self.record(StatusCode::INTERNAL_SERVER_ERROR.as_str());
        }
    }
}

/// Bytes of an app-channel body, recorded once when the counter is dropped with its stream.
pub struct BodyBytes {
    families: Option<Arc<Families>>,
    method: &'static str,
    sent: bool,
    bytes: u64,
}

impl BodyBytes {
    pub fn count<E>(&mut self, chunk: &Result<Bytes, E>) {
        if let Ok(chunk) = chunk {
            self.bytes += chunk.len() as u64;
        }
    }
}

impl Drop for BodyBytes {
    fn drop(&mut self) {
        let Some(f) = &self.families else { return };
        let bytes = self.bytes as f64;
        if self.sent {
            // Upstream records this when the request starts, before any status is known.
            observe(&f.http_client_sent_bytes, &[self.method, "", ""], bytes);
        } else {
            f.http_client_received_bytes.observe(bytes);
        }
    }
}

/// What a server-side [`Metered`] body reports once it ends or is dropped.
pub trait Recorder: Send + 'static {
    /// The response head, before its body streams.
    fn head(&mut self, _status: StatusCode, _headers: &HeaderMap) {}
    /// Trailers at the end of the body.
    fn trailers(&mut self, _trailers: &HeaderMap) {}
    /// The body ended (`complete`) or was dropped early, after `bytes` data bytes.
    fn finish(self, bytes: u64, complete: bool);
}

pin_project! {
    /// A body that counts its data bytes and reports to its recorder exactly once.
    pub struct Metered<B, R: Recorder> {
        #[pin]
        inner: B,
        bytes: u64,
        recorder: Option<R>,
    }

    impl<B, R: Recorder> PinnedDrop for Metered<B, R> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(recorder) = this.recorder.take() {
                recorder.finish(*this.bytes, false);
            }
        }
    }
}

impl<B, R: Recorder> Metered<B, R> {
    fn new(inner: B, recorder: Option<R>) -> Self {
        Metered {
            inner,
            bytes: 0,
            recorder,
        }
    }
}

impl<B: Body, R: Recorder> Body for Metered<B, R> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = ready!(this.inner.poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.remaining() as u64;
                } else if let (Some(trailers), Some(recorder)) =
                    (frame.trailers_ref(), this.recorder.as_mut())
                {
                    recorder.trailers(trailers);
                }
            }
            None => {
                if let Some(recorder) = this.recorder.take() {
                    recorder.finish(*this.bytes, true);
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A service's response future whose body gets metered.
    pub struct MeteredFuture<F, R> {
        #[pin]
        inner: F,
        recorder: Option<R>,
    }
}

impl<F, B, E, R> Future for MeteredFuture<F, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    R: Recorder,
{
    type Output = Result<Response<Metered<B, R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx));
        let mut recorder = this.recorder.take();
        Poll::Ready(response.map(|response| {
            if let Some(recorder) = recorder.as_mut() {
                recorder.head(response.status(), response.headers());
            }
            response.map(|body| Metered::new(body, recorder))
        }))
    }
}

/// Records `dapr_http_server_*` for every request through the wrapped router.
#[derive(Clone)]
pub struct HttpLayer {
    families: Option<Arc<Families>>,
}

impl HttpLayer {
    pub fn new(metrics: &Metrics) -> HttpLayer {
        HttpLayer {
            families: metrics.families.clone(),
        }
    }
}

impl<S> Layer<S> for HttpLayer {
    type Service = HttpService<S>;

    fn layer(&self, inner: S) -> HttpService<S> {
        HttpService {
            inner,
            families: self.families.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HttpService<S> {
    inner: S,
    families: Option<Arc<Families>>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<Metered<ResBody, HttpCall>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future, HttpCall>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let recorder = self.families.as_ref().map(|f| HttpCall {
            families: Arc::clone(f),
            method: verb_label(request.method()),
            request_bytes: content_length(request.headers()),
            status: StatusCode::OK,
            start: Instant::now(),
        });
        MeteredFuture {
            inner: self.inner.call(request),
            recorder,
        }
    }
}

/// Upstream's request size: the declared `Content-Length`, 0 without one.
fn content_length(headers: &HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub struct HttpCall {
    families: Arc<Families>,
    method: &'static str,
    request_bytes: u64,
    status: StatusCode,
    start: Instant,
}

impl Recorder for HttpCall {
    fn head(&mut self, status: StatusCode, _headers: &HeaderMap) {
        self.status = status;
    }

    fn finish(self, bytes: u64, _complete: bool) {
        let f = &self.families;
        let labels = [self.method, "", self.status.as_str()];
        inc(&f.http_server_request_count, &labels);
        observe(&f.http_server_latency, &labels, millis_since(self.start));
        f.http_server_request_bytes
            .observe(self.request_bytes as f64);
        f.http_server_response_bytes.observe(bytes as f64);
    }
}

/// Records `dapr_grpc_io_server_*` for the RPCs this sidecar serves, and on the gRPC API for the
/// calls it proxies by `dapr-app-id` ([`GrpcLayer::api`]).
#[derive(Clone)]
pub struct GrpcLayer {
    families: Option<Arc<Families>>,
    proxied: bool,
}

impl GrpcLayer {
    /// The internal server's layer: its own RPCs only.
    pub fn new(metrics: &Metrics) -> GrpcLayer {
        GrpcLayer {
            families: metrics.families.clone(),
            proxied: false,
        }
    }

    /// The gRPC API's layer: also the calls proxied by `dapr-app-id`, by method name, status and
    /// latency (no sizes), as upstream's `StreamingServerInterceptor` records them.
    pub fn api(metrics: &Metrics) -> GrpcLayer {
        GrpcLayer {
            proxied: true,
            ..GrpcLayer::new(metrics)
        }
    }
}

impl<S> Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> GrpcService<S> {
        GrpcService {
            inner,
            families: self.families.clone(),
            proxied: self.proxied,
        }
    }
}

#[derive(Clone)]
pub struct GrpcService<S> {
    inner: S,
    families: Option<Arc<Families>>,
    proxied: bool,
}

impl<S> GrpcService<S> {
    /// A proxied call's method label: the request names a target app (`dapr-app-id`).
    fn proxied_method(
        &self,
        families: &Families,
        request: &Request<tonic::body::Body>,
    ) -> Option<Arc<str>> {
        let proxied = self.proxied && request.headers().contains_key(names::DAPR_APP_ID);
        proxied.then(|| families.proxied_methods.label(request.uri().path()))
    }
}

impl<S, ResBody> Service<Request<tonic::body::Body>> for GrpcService<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>>,
{
    type Response = Response<Metered<ResBody, GrpcCall>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future, GrpcCall>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let Some(families) = self.families.clone() else {
            return MeteredFuture {
                inner: self.inner.call(request),
                recorder: None,
            };
        };
        let Some(method) = grpc_method_label(request.uri().path()) else {
            let recorder = self
                .proxied_method(&families, &request)
                .map(|method| GrpcCall {
                    families,
                    method: MethodLabel::Proxied(method),
                    status: None,
                    start: Instant::now(),
                });
            return MeteredFuture {
                inner: self.inner.call(request),
                recorder,
            };
        };
        // tonic hands the router a boxed body; counting the request means boxing once more.
        let received = GrpcReceived {
            families: Arc::clone(&families),
            method,
        };
        let request =
            request.map(|body| tonic::body::Body::new(Metered::new(body, Some(received))));
        MeteredFuture {
            inner: self.inner.call(request),
            recorder: Some(GrpcCall {
                families,
                method: MethodLabel::Served(method),
                status: None,
                start: Instant::now(),
            }),
        }
    }
}

/// A `grpc_server_method` value: an RPC of ours (sizes recorded too), or a proxied call's.
enum MethodLabel {
    Served(&'static str),
    Proxied(Arc<str>),
}

pub struct GrpcCall {
    families: Arc<Families>,
    method: MethodLabel,
    status: Option<tonic::Code>,
    start: Instant,
}

impl Recorder for GrpcCall {
    fn head(&mut self, _status: StatusCode, headers: &HeaderMap) {
        // A trailers-only response (most errors) carries the status in its head.
        self.status = crate::wire::grpc_status(headers);
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(code) = crate::wire::grpc_status(trailers) {
            self.status = Some(code);
        }
    }

    fn finish(self, bytes: u64, complete: bool) {
        let f = &self.families;
        let code = self.status.unwrap_or(if complete {
            tonic::Code::Unknown
        } else {
            tonic::Code::Cancelled
        });
        let method = match &self.method {
            MethodLabel::Served(method) => method,
            MethodLabel::Proxied(method) => &**method,
        };
        let labels = [method, grpc_code_label(code)];
        inc(&f.grpc_server_completed_rpcs, &labels);
        observe(&f.grpc_server_latency, &labels, millis_since(self.start));
        if let MethodLabel::Served(method) = self.method {
            observe(&f.grpc_server_sent_bytes, &[method], bytes as f64);
        }
    }
}

pub struct GrpcReceived {
    families: Arc<Families>,
    method: &'static str,
}

impl Recorder for GrpcReceived {
    fn finish(self, bytes: u64, _complete: bool) {
        observe(
            &self.families.grpc_server_received_bytes,
            &[self.method],
            bytes as f64,
        );
    }
}

/// The metrics port's routes: the exposition at `/` and `/metrics`.
pub fn router(metrics: Arc<Metrics>) -> axum::Router {
    async fn expose(
        axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    ) -> axum::response::Response {
        let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
        ([(header::CONTENT_TYPE, content_type)], metrics.render()).into_response()
    }
    axum::Router::new()
        .route("/", get(expose))
        .route("/metrics", get(expose))
        .with_state(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::app_channel::AppResponse;
    use dapr_proto::internals::v1::Status as InvokeStatus;
    use http_body_util::BodyExt;

    fn metrics() -> Metrics {
        let m = Metrics::new("orders", true);
        assert!(m.enabled());
        m
    }

    /// The exposition line of one sample (labels in any order), if present.
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
                if series_name != name {
                    return None;
                }
                let mut found: Vec<(&str, &str)> = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k, v.trim_matches('"')))
                    .collect();
                let mut wanted = labels.to_vec();
                found.sort();
                wanted.sort();
                (found == wanted).then(|| value.parse().ok()).flatten()
            })
    }

    #[tokio::test]
    async fn every_family_registers_under_its_upstream_name() {
        let m = metrics();
        // Touch one series per family so the exposition lists them all.
        let sent = m.invocation_sent("checkout");
        sent.received(InternalInvokeResponse::default());
        let failed = m
            .invocation_received(&Metadata::new())
            .respond(
                async { Err(Error::AppChannel("down".into())) },
                |r: &AppResponse| r.status,
            )
            .await;
        assert!(failed.is_err());
        drop(m.app_call(&Method::GET).request_body());
        let f = m.families.as_deref().expect("enabled");
        inc(&f.grpc_server_completed_rpcs, &[GRPC_METHODS[0], "OK"]);
        observe(&f.grpc_server_latency, &[GRPC_METHODS[0], "OK"], 1.0);
        observe(&f.grpc_server_received_bytes, &[GRPC_METHODS[0]], 1.0);
        observe(&f.grpc_server_sent_bytes, &[GRPC_METHODS[0]], 1.0);
        inc(&f.http_server_request_count, &["GET", "", "200"]);
        observe(&f.http_server_latency, &["GET", "", "200"], 1.0);
        f.http_server_request_bytes.observe(1.0);
        f.http_server_response_bytes.observe(1.0);
        m.resiliency_loaded("res", "default");
        m.resiliency_policy(PolicyEvent::Applied, ("res", ""), "retry", "b", "");
        m.resiliency_policy(PolicyEvent::Activated, ("res", ""), "retry", "b", "");
        m.breaker_state(("res", ""), "b", 2);
        m.grpc_client(client_rpc::CALL_LOCAL)
            .finish(tonic::Code::Ok, 1, || 1);
        m.health_probe(tonic::Code::Ok, std::time::Duration::from_millis(1));
        let text = m.render();
        for (name, kind) in [
            (name::HTTP_SERVER_REQUEST_COUNT, "counter"),
            (name::HTTP_SERVER_LATENCY, "histogram"),
            (name::HTTP_SERVER_REQUEST_BYTES, "histogram"),
            (name::HTTP_SERVER_RESPONSE_BYTES, "histogram"),
            (name::HTTP_CLIENT_SENT_BYTES, "histogram"),
            (name::HTTP_CLIENT_RECEIVED_BYTES, "histogram"),
            (name::HTTP_CLIENT_ROUNDTRIP_LATENCY, "histogram"),
            (name::HTTP_CLIENT_COMPLETED_COUNT, "counter"),
            (name::GRPC_SERVER_COMPLETED_RPCS, "counter"),
            (name::GRPC_SERVER_LATENCY, "histogram"),
            (name::GRPC_SERVER_RECEIVED_BYTES, "histogram"),
            (name::GRPC_SERVER_SENT_BYTES, "histogram"),
            (name::INVOCATION_REQ_SENT, "counter"),
            (name::INVOCATION_REQ_RECV, "counter"),
            (name::INVOCATION_RES_SENT, "counter"),
            (name::INVOCATION_RES_RECV, "counter"),
            (name::RESILIENCY_LOADED, "counter"),
            (name::RESILIENCY_COUNT, "counter"),
            (name::RESILIENCY_ACTIVATIONS, "counter"),
            (name::RESILIENCY_CB_STATE, "gauge"),
            (name::INVOCATION_RES_RECV_LATENCY, "histogram"),
            (name::GRPC_CLIENT_COMPLETED_RPCS, "counter"),
            (name::GRPC_CLIENT_LATENCY, "histogram"),
            (name::GRPC_CLIENT_SENT_BYTES, "histogram"),
            (name::GRPC_CLIENT_RECEIVED_BYTES, "histogram"),
            (name::HEALTH_PROBES_COMPLETED, "counter"),
            (name::HEALTH_PROBES_LATENCY, "histogram"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn latency_histograms_use_upstreams_millisecond_buckets() {
        let m = metrics();
        let sent = m.invocation_sent("checkout");
        sent.received(InternalInvokeResponse {
            status: Some(InvokeStatus {
                code: 200,
                ..Default::default()
            }),
            ..Default::default()
        });
        let text = m.render();
        let labels = |le| {
            vec![
                (label::APP_ID, "orders"),
                (label::SRC_APP_ID, "checkout"),
                (label::STATUS, "200"),
                ("le", le),
            ]
        };
        let bucket = format!("{}_bucket", name::INVOCATION_RES_RECV_LATENCY);
        assert_eq!(sample(&text, &bucket, &labels("100000")), Some(1.0));
        assert_eq!(sample(&text, &bucket, &labels("+Inf")), Some(1.0));
        let buckets = text.lines().filter(|l| l.starts_with(&bucket)).count();
        assert_eq!(buckets, LATENCY_MS_BUCKETS.len() + 1);
    }

    #[test]
    fn invocation_counters_carry_peer_ids_and_status_but_no_method() {
        let m = metrics();
        for code in [200, 200, 404] {
            m.invocation_sent("checkout")
                .received(InternalInvokeResponse {
                    status: Some(InvokeStatus {
                        code,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
        }
        // Sent but never answered: counted as sent only.
        drop(m.invocation_sent("checkout"));
        let text = m.render();
        let app = (label::APP_ID, "orders");
        let peer = (label::DST_APP_ID, "checkout");
        assert_eq!(
            sample(
                &text,
                name::INVOCATION_REQ_SENT,
                &[app, peer, (label::TYPE, UNARY)]
            ),
            Some(4.0)
        );
        let src = (label::SRC_APP_ID, "checkout");
        for (status, count) in [("200", 2.0), ("404", 1.0)] {
            assert_eq!(
                sample(
                    &text,
                    name::INVOCATION_RES_RECV,
                    &[app, src, (label::STATUS, status), (label::TYPE, UNARY)]
                ),
                Some(count)
            );
        }
    }

    #[tokio::test]
    async fn the_callee_records_the_callers_id_and_the_apps_status_or_internal() {
        let m = metrics();
        let mut metadata = Metadata::new();
        crate::wire::set(&mut metadata, names::CALLER_APP_ID, "checkout");
        let ok = AppResponse {
            message: String::new(),
            type_url: String::new(),
            from_http_app: true,
            status: 404,
            headers: HeaderMap::new(),
            body: crate::inbound::app_channel::once(Bytes::new()),
        };
        let answered = m
            .invocation_received(&metadata)
            .respond(async { Ok(ok) }, |r: &AppResponse| r.status)
            .await;
        assert!(answered.is_ok());
        let failed = m
            .invocation_received(&Metadata::new())
            .respond(
                async { Err(Error::AppChannel("down".into())) },
                |r: &AppResponse| r.status,
            )
            .await;
        assert!(failed.is_err());
        let text = m.render();
        let app = (label::APP_ID, "orders");
        assert_eq!(
            sample(
                &text,
                name::INVOCATION_REQ_RECV,
                &[app, (label::SRC_APP_ID, "checkout")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                name::INVOCATION_REQ_RECV,
                &[app, (label::SRC_APP_ID, "unknown")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                name::INVOCATION_RES_SENT,
                &[app, (label::DST_APP_ID, "checkout"), (label::STATUS, "404")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                name::INVOCATION_RES_SENT,
                &[app, (label::DST_APP_ID, "unknown"), (label::STATUS, "13")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn peer_ids_beyond_the_cap_share_one_label() {
        let peers = PeerIds::new(2);
        assert_eq!(&*peers.label("a"), "a");
        assert_eq!(&*peers.label("b"), "b");
        assert_eq!(&*peers.label("c"), OTHER_PEERS);
        assert_eq!(&*peers.label("a"), "a");
    }

    #[test]
    fn labels_come_from_bounded_sets() {
        assert_eq!(verb_label(&Method::POST), "POST");
        assert_eq!(
            verb_label(&Method::from_bytes(b"PURGE").expect("method")),
            "UNKNOWN"
        );
        assert_eq!(grpc_code_label(tonic::Code::Cancelled), "Canceled");
        assert_eq!(grpc_code_label(tonic::Code::NotFound), "NotFound");
        assert_eq!(
            grpc_method_label("/dapr.proto.runtime.v1.Dapr/InvokeService"),
            Some("/dapr.proto.runtime.v1.Dapr/InvokeService")
        );
        assert_eq!(
            grpc_method_label("/dapr.proto.runtime.v1.Dapr/Made/Up"),
            None
        );
        for (code, text) in [(0, "0"), (13, "13"), (200, "200"), (-1, "-1")] {
            assert_eq!(StatusLabel::new(code).as_str(), text);
        }
        assert_eq!(StatusLabel::new(i32::MIN).as_str(), i32::MIN.to_string());
    }

    #[test]
    fn every_rpc_we_serve_has_a_method_label() {
        let set = dapr_proto::descriptor::ours().expect("descriptors");
        let served = [
            "dapr.proto.runtime.v1.Dapr",
            "dapr.proto.internals.v1.ServiceInvocation",
        ];
        let mut count = 0;
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                if !served.contains(&full.as_str()) {
                    continue;
                }
                for method in &service.method {
                    let path = format!("/{full}/{}", method.name());
                    assert_eq!(grpc_method_label(&path), Some(path.as_str()), "{path}");
                    count += 1;
                }
            }
        }
        assert_eq!(count, GRPC_METHODS.len());
    }

    #[tokio::test]
    async fn the_http_layer_records_verb_status_and_body_sizes_once() {
        let m = Arc::new(metrics());
        let service = tower::service_fn(|_req: Request<String>| async {
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(http_body_util::Full::new(Bytes::from_static(b"nope")))
                    .expect("response"),
            )
        });
        let mut service = HttpLayer::new(&m).layer(service);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1.0/invoke/a/method/b/c?d=e")
            .header(header::CONTENT_LENGTH, "5")
            .body("hello".to_owned())
            .expect("request");
        let response = service.call(request).await.expect("infallible");
        // Nothing is recorded until the body is done.
        assert!(!m.render().contains(name::HTTP_SERVER_REQUEST_COUNT));
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), Bytes::from_static(b"nope"));
        let text = m.render();
        let labels = [
            (label::APP_ID, "orders"),
            (label::METHOD, "POST"),
            (label::PATH, ""),
            (label::STATUS, "404"),
        ];
        assert_eq!(
            sample(&text, name::HTTP_SERVER_REQUEST_COUNT, &labels),
            Some(1.0)
        );
        let count = format!("{}_count", name::HTTP_SERVER_LATENCY);
        assert_eq!(sample(&text, &count, &labels), Some(1.0));
        let app = [(label::APP_ID, "orders")];
        let sum = |n: &str| sample(&text, &format!("{n}_sum"), &app);
        assert_eq!(sum(name::HTTP_SERVER_REQUEST_BYTES), Some(5.0));
        assert_eq!(sum(name::HTTP_SERVER_RESPONSE_BYTES), Some(4.0));
    }

    #[tokio::test]
    async fn the_grpc_layer_reads_the_status_from_trailers_or_the_head() {
        let m = Arc::new(metrics());
        let service = tower::service_fn(|req: Request<tonic::body::Body>| async move {
            let ok = req.uri().path().ends_with("CallLocal");
            let response = if ok {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let frames = futures::stream::iter([
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"12345"))),
                    Ok(Frame::trailers(trailers)),
                ]);
                Response::new(tonic::body::Body::new(http_body_util::StreamBody::new(
                    frames,
                )))
            } else {
                tonic::Status::not_found("no").into_http()
            };
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = GrpcLayer::new(&m).layer(service);
        for path in [
            "/dapr.proto.internals.v1.ServiceInvocation/CallLocal",
            "/dapr.proto.runtime.v1.Dapr/InvokeService",
            "/unknown.Service/Method",
        ] {
            let request = Request::builder()
                .uri(path)
                .body(tonic::body::Body::new(http_body_util::Full::new(
                    Bytes::from_static(b"abc"),
                )))
                .expect("request");
            let response = service.call(request).await.expect("infallible");
            response.into_body().collect().await.expect("body");
        }
        let text = m.render();
        let app = (label::APP_ID, "orders");
        let rpc = |method, status| {
            [
                app,
                (label::GRPC_SERVER_METHOD, method),
                (label::GRPC_SERVER_STATUS, status),
            ]
        };
        let call_local = "/dapr.proto.internals.v1.ServiceInvocation/CallLocal";
        assert_eq!(
            sample(
                &text,
                name::GRPC_SERVER_COMPLETED_RPCS,
                &rpc(call_local, "OK")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                name::GRPC_SERVER_COMPLETED_RPCS,
                &rpc("/dapr.proto.runtime.v1.Dapr/InvokeService", "NotFound")
            ),
            Some(1.0)
        );
        assert!(!text.contains("unknown.Service"));
        let sent = format!("{}_sum", name::GRPC_SERVER_SENT_BYTES);
        let method = [app, (label::GRPC_SERVER_METHOD, call_local)];
        assert_eq!(sample(&text, &sent, &method), Some(5.0));
        // The handler here never reads the request; the dropped body still reports.
        let received = format!("{}_count", name::GRPC_SERVER_RECEIVED_BYTES);
        assert_eq!(sample(&text, &received, &method), Some(1.0));
    }

    #[tokio::test]
    async fn the_api_layer_records_proxied_calls_by_method_up_to_the_cap() {
        let m = Arc::new(metrics());
        let service = tower::service_fn(|_: Request<tonic::body::Body>| async move {
            Ok::<_, std::convert::Infallible>(
                tonic::Status::unavailable("down").into_http::<tonic::body::Body>(),
            )
        });
        let request = |path: &str, app: Option<&str>| {
            let mut builder = Request::builder().uri(path);
            if let Some(app) = app {
                builder = builder.header(names::DAPR_APP_ID, app);
            }
            builder.body(tonic::body::Body::empty()).expect("request")
        };
        let mut api = GrpcLayer::api(&m).layer(service);
        let mut internal = GrpcLayer::new(&m).layer(service);
        for (on_api, path, app) in [
            (true, "/shop.Cart/Add", Some("cart")),
            (true, "/shop.Cart/Add", Some("cart")),
            // Not proxied: no target named.
            (true, "/shop.Cart/Remove", None),
            // The internal server does not record what it forwards to its app.
            (false, "/shop.Cart/List", Some("cart")),
        ] {
            let service = if on_api { &mut api } else { &mut internal };
            let response = service.call(request(path, app)).await.expect("infallible");
            response.into_body().collect().await.expect("body");
        }
        for i in 0..MAX_PROXIED_METHODS + 5 {
            let path = format!("/flood.S/M{i}");
            let response = api
                .call(request(&path, Some("x")))
                .await
                .expect("infallible");
            drop(response);
        }
        let text = m.render();
        let app = (label::APP_ID, "orders");
        let rpc = |method, status| {
            [
                app,
                (label::GRPC_SERVER_METHOD, method),
                (label::GRPC_SERVER_STATUS, status),
            ]
        };
        let completed = name::GRPC_SERVER_COMPLETED_RPCS;
        assert_eq!(
            sample(&text, completed, &rpc("/shop.Cart/Add", "Unavailable")),
            Some(2.0)
        );
        let latency = format!("{}_count", name::GRPC_SERVER_LATENCY);
        assert_eq!(
            sample(&text, &latency, &rpc("/shop.Cart/Add", "Unavailable")),
            Some(2.0)
        );
        assert!(!text.contains("Remove") && !text.contains("List"), "{text}");
        // No sizes for proxied calls, as upstream's stream interceptor.
        let sized = |l: &&str| {
            (l.starts_with(name::GRPC_SERVER_SENT_BYTES)
                || l.starts_with(name::GRPC_SERVER_RECEIVED_BYTES))
                && l.contains("shop.Cart")
        };
        assert!(!text.lines().any(|l| sized(&l)), "{text}");
        // The flood: the cap's worth of names, then one shared label.
        let flood = text
            .lines()
            .filter(|l| l.starts_with(completed) && l.contains("/flood.S/"))
            .count();
        assert_eq!(
            flood,
            MAX_PROXIED_METHODS - 1,
            "one slot went to /shop.Cart/Add"
        );
        assert_eq!(
            sample(&text, completed, &rpc(OTHER_PEERS, "Unavailable")),
            Some(6.0)
        );
    }

    #[test]
    fn client_rpcs_record_status_latency_and_sizes_or_a_cancellation() {
        let m = metrics();
        m.grpc_client(client_rpc::CALL_LOCAL)
            .finish(tonic::Code::Ok, 100, || 2000);
        m.grpc_client(client_rpc::ON_INVOKE)
            .finish(tonic::Code::NotFound, 7, || 0);
        // Abandoned before an outcome: counted as cancelled, without sizes.
        drop(m.grpc_client(client_rpc::ON_INVOKE));
        m.health_probe(
            tonic::Code::Unavailable,
            std::time::Duration::from_millis(3),
        );
        let text = m.render();
        let app = (label::APP_ID, "orders");
        let rpc = |method, status| {
            [
                app,
                (label::GRPC_CLIENT_METHOD, method),
                (label::GRPC_CLIENT_STATUS, status),
            ]
        };
        let completed = name::GRPC_CLIENT_COMPLETED_RPCS;
        for (method, status) in [
            (client_rpc::CALL_LOCAL, "OK"),
            (client_rpc::ON_INVOKE, "NotFound"),
            (client_rpc::ON_INVOKE, "Canceled"),
        ] {
            assert_eq!(
                sample(&text, completed, &rpc(method, status)),
                Some(1.0),
                "{method} {status}"
            );
            let latency = format!("{}_count", name::GRPC_CLIENT_LATENCY);
            assert_eq!(sample(&text, &latency, &rpc(method, status)), Some(1.0));
        }
        let sizes = |family: &str, method| {
            let sum = format!("{family}_sum");
            sample(&text, &sum, &[app, (label::GRPC_CLIENT_METHOD, method)])
        };
        assert_eq!(
            sizes(name::GRPC_CLIENT_SENT_BYTES, client_rpc::CALL_LOCAL),
            Some(100.0)
        );
        assert_eq!(
            sizes(name::GRPC_CLIENT_RECEIVED_BYTES, client_rpc::CALL_LOCAL),
            Some(2000.0)
        );
        assert_eq!(
            sizes(name::GRPC_CLIENT_SENT_BYTES, client_rpc::ON_INVOKE),
            Some(7.0)
        );
        let probes = [app, (label::GRPC_CLIENT_STATUS, "Unavailable")];
        assert_eq!(
            sample(&text, name::HEALTH_PROBES_COMPLETED, &probes),
            Some(1.0)
        );
        let latency = format!("{}_sum", name::HEALTH_PROBES_LATENCY);
        assert_eq!(sample(&text, &latency, &probes), Some(3.0));
    }

    #[test]
    fn disabled_metrics_record_and_render_nothing() {
        let m = Metrics::new("orders", false);
        assert!(!m.enabled());
        m.invocation_sent("checkout")
            .received(InternalInvokeResponse::default());
        drop(m.app_call(&Method::GET));
        assert_eq!(m.render(), "");
    }
}
