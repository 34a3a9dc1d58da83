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
//!
//! Here: the names, label keys, buckets and caps, and [`Metrics`], the recording API the rest of
//! the sidecar calls. `registry` registers the families; `family` is a labelled family that
//! finds each child by its label values; `labels` bounds label values; `calls` holds the
//! per-call recorders [`Metrics`] hands out; `body` the metered body the server layers in
//! `http_server` and `grpc_server` wrap responses in.

mod body;
mod calls;
mod family;
mod grpc_server;
mod http_server;
mod labels;
mod registry;

use std::sync::Arc;
use std::time::Instant;

use axum::response::IntoResponse;
use axum::routing::get;
use http::{HeaderValue, Method, header};
use prometheus::{Opts, TextEncoder};

pub use body::{Metered, MeteredFuture, Recorder};
pub use calls::{AppCall, BodyBytes, ClientRpc, ReceivedInvocation, SentInvocation};
pub use grpc_server::{GrpcCall, GrpcLayer, GrpcReceived, GrpcService};
pub use http_server::{HttpCall, HttpLayer, HttpService};
pub use labels::{grpc_code_label, grpc_method_label, verb_label};

use registry::{Families, inc, observe};

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

/// The unary RPCs this sidecar makes per request, the `grpc_client_method` values.
pub mod client_rpc {
    pub const CALL_LOCAL: &str = "/dapr.proto.internals.v1.ServiceInvocation/CallLocal";
    pub const ON_INVOKE: &str = "/dapr.proto.runtime.v1.AppCallback/OnInvoke";
}

/// The sidecar's metrics; every recording is a no-op when metrics are disabled.
pub struct Metrics {
    families: Option<Arc<Families>>,
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

    /// Counts a request from another sidecar that access control let through, from the app id
    /// its metadata names (`dapr-caller-app-id`); the app's answer is recorded by
    /// [`ReceivedInvocation::respond`].
    pub fn invocation_received(&self, caller: Option<&str>) -> ReceivedInvocation<'_> {
        let Some(f) = self.families.as_deref() else {
            return ReceivedInvocation { call: None };
        };
        let caller = caller.unwrap_or(UNKNOWN_CALLER);
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
        let labels = [name, namespace, CIRCUIT_BREAKER, OUTBOUND, &target];
        f.resiliency_cb_state
            .with(&labels, |gauge| gauge.set(state));
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
    use super::labels::GRPC_METHODS;
    use super::*;
    use crate::Error;
    use crate::inbound::app_channel::AppResponse;
    use bytes::Bytes;
    use dapr_proto::internals::v1::Status as InvokeStatus;

    pub(super) fn metrics() -> Metrics {
        let m = Metrics::new("orders", true);
        assert!(m.enabled());
        m
    }

    /// The exposition line of one sample (labels in any order), if present.
    pub(super) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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
        sent.received(None);
        let failed = m
            .invocation_received(None)
            .respond(
                async { Err(Error::AppChannel(crate::error::AppChannelError::NoAppPort)) },
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
        sent.received(Some(&InvokeStatus {
            code: 200,
            ..Default::default()
        }));
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
            m.invocation_sent("checkout").received(Some(&InvokeStatus {
                code,
                ..Default::default()
            }));
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
        let ok = AppResponse {
            message: String::new(),
            type_url: String::new(),
            content_type: None,
            from_http_app: true,
            status: 404,
            headers: crate::wire::AppHeaders::default(),
            body: crate::inbound::app_channel::once(Bytes::new()),
        };
        let answered = m
            .invocation_received(Some("checkout"))
            .respond(async { Ok(ok) }, |r: &AppResponse| r.status)
            .await;
        assert!(answered.is_ok());
        let failed = m
            .invocation_received(None)
            .respond(
                async { Err(Error::AppChannel(crate::error::AppChannelError::NoAppPort)) },
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
        m.invocation_sent("checkout").received(None);
        drop(m.app_call(&Method::GET));
        assert_eq!(m.render(), "");
    }
}
