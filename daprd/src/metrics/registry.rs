//! The registry: every family registered under its upstream name, labels and buckets, and the
//! helpers that record into a family without failing on a label mismatch.

use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};

use super::family::Labelled;
use super::labels::PeerIds;
use super::{LATENCY_MS_BUCKETS, MAX_PEER_IDS, MAX_PROXIED_METHODS, SIZE_BUCKETS, label, name};

/// The registered families of one sidecar, shared by [`super::Metrics`] and the layers.
pub(super) struct Families {
    pub(super) registry: Registry,
    pub(super) http_server_request_count: Labelled<IntCounter>,
    pub(super) http_server_latency: Labelled<Histogram>,
    pub(super) http_server_request_bytes: Histogram,
    pub(super) http_server_response_bytes: Histogram,
    pub(super) http_client_sent_bytes: Labelled<Histogram>,
    pub(super) http_client_received_bytes: Histogram,
    pub(super) http_client_roundtrip_latency: Labelled<Histogram>,
    pub(super) http_client_completed_count: Labelled<IntCounter>,
    pub(super) grpc_server_completed_rpcs: Labelled<IntCounter>,
    pub(super) grpc_server_latency: Labelled<Histogram>,
    pub(super) grpc_server_received_bytes: Labelled<Histogram>,
    pub(super) grpc_server_sent_bytes: Labelled<Histogram>,
    pub(super) grpc_client_completed_rpcs: Labelled<IntCounter>,
    pub(super) grpc_client_latency: Labelled<Histogram>,
    pub(super) grpc_client_sent_bytes: Labelled<Histogram>,
    pub(super) grpc_client_received_bytes: Labelled<Histogram>,
    pub(super) health_probes_completed: Labelled<IntCounter>,
    pub(super) health_probes_latency: Labelled<Histogram>,
    pub(super) invocation_req_sent: Labelled<IntCounter>,
    pub(super) invocation_req_recv: Labelled<IntCounter>,
    pub(super) invocation_res_sent: Labelled<IntCounter>,
    pub(super) invocation_res_recv: Labelled<IntCounter>,
    pub(super) invocation_res_recv_latency: Labelled<Histogram>,
    pub(super) resiliency_loaded: Labelled<IntCounter>,
    pub(super) resiliency_count: Labelled<IntCounter>,
    pub(super) resiliency_activations: Labelled<IntCounter>,
    pub(super) resiliency_cb_state: Labelled<IntGauge>,
    pub(super) peers: PeerIds,
    pub(super) proxied_methods: PeerIds,
}

impl Families {
    pub(super) fn new(app_id: &str) -> prometheus::Result<Families> {
        let registry = Registry::new();
        let http = [label::METHOD, label::PATH, label::STATUS];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let opts = Opts::new(name, help).const_label(label::APP_ID, app_id);
            let family = Labelled::<IntCounter>::new(opts, labels)?;
            registry.register(Box::new(family.clone()))?;
            Ok::<_, prometheus::Error>(family)
        };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let opts = HistogramOpts::new(name, help)
                .const_label(label::APP_ID, app_id)
                .buckets(buckets.to_vec());
            let family = Labelled::<Histogram>::new(opts, labels)?;
            registry.register(Box::new(family.clone()))?;
            Ok::<_, prometheus::Error>(family)
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
            .child(no_labels)?,
            http_server_response_bytes: histogram(
                name::HTTP_SERVER_RESPONSE_BYTES,
                "HTTP response body size (uncompressed) in server.",
                &SIZE_BUCKETS,
                no_labels,
            )?
            .child(no_labels)?,
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
            .child(no_labels)?,
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
                let opts = Opts::new(
                    name::RESILIENCY_CB_STATE,
                    "A resiliency policy's current CircuitBreakerState state. 0 is closed, 1 is half-open, 2 is open, and -1 is unknown.",
                )
                .const_label(label::APP_ID, app_id);
                let family = Labelled::<IntGauge>::new(opts, &resiliency[..5])?;
                registry.register(Box::new(family.clone()))?;
                family
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

pub(super) fn inc(family: &Labelled<IntCounter>, values: &[&str]) {
    family.with(values, |counter| counter.inc());
}

pub(super) fn observe(family: &Labelled<Histogram>, values: &[&str], value: f64) {
    family.with(values, |histogram| histogram.observe(value));
}

pub(super) fn millis_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
