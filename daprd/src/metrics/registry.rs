//! The registry: every family registered under its upstream name, labels and buckets, and the
//! helpers that record into a family without failing on a label mismatch.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::labels::PeerIds;
use super::{LATENCY_MS_BUCKETS, MAX_PEER_IDS, MAX_PROXIED_METHODS, SIZE_BUCKETS, label, name};

/// The registered families of one sidecar, shared by [`super::Metrics`] and the layers.
pub(super) struct Families {
    pub(super) registry: Registry,
    pub(super) http_server_request_count: Labelled<IntCounterVec>,
    pub(super) http_server_latency: Labelled<HistogramVec>,
    pub(super) http_server_request_bytes: Histogram,
    pub(super) http_server_response_bytes: Histogram,
    pub(super) http_client_sent_bytes: Labelled<HistogramVec>,
    pub(super) http_client_received_bytes: Histogram,
    pub(super) http_client_roundtrip_latency: Labelled<HistogramVec>,
    pub(super) http_client_completed_count: Labelled<IntCounterVec>,
    pub(super) grpc_server_completed_rpcs: Labelled<IntCounterVec>,
    pub(super) grpc_server_latency: Labelled<HistogramVec>,
    pub(super) grpc_server_received_bytes: Labelled<HistogramVec>,
    pub(super) grpc_server_sent_bytes: Labelled<HistogramVec>,
    pub(super) grpc_client_completed_rpcs: Labelled<IntCounterVec>,
    pub(super) grpc_client_latency: Labelled<HistogramVec>,
    pub(super) grpc_client_sent_bytes: Labelled<HistogramVec>,
    pub(super) grpc_client_received_bytes: Labelled<HistogramVec>,
    pub(super) health_probes_completed: Labelled<IntCounterVec>,
    pub(super) health_probes_latency: Labelled<HistogramVec>,
    pub(super) invocation_req_sent: Labelled<IntCounterVec>,
    pub(super) invocation_req_recv: Labelled<IntCounterVec>,
    pub(super) invocation_res_sent: Labelled<IntCounterVec>,
    pub(super) invocation_res_recv: Labelled<IntCounterVec>,
    pub(super) invocation_res_recv_latency: Labelled<HistogramVec>,
    pub(super) resiliency_loaded: Labelled<IntCounterVec>,
    pub(super) resiliency_count: Labelled<IntCounterVec>,
    pub(super) resiliency_activations: Labelled<IntCounterVec>,
    pub(super) resiliency_cb_state: prometheus::IntGaugeVec,
    pub(super) peers: PeerIds,
    pub(super) proxied_methods: PeerIds,
}

impl Families {
    pub(super) fn new(app_id: &str) -> prometheus::Result<Families> {
        let registry = Registry::new();
        let http = [label::METHOD, label::PATH, label::STATUS];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(
                Opts::new(name, help).const_label(label::APP_ID, app_id),
                labels,
            )?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(Labelled::new(vec))
        };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let opts = HistogramOpts::new(name, help)
                .const_label(label::APP_ID, app_id)
                .buckets(buckets.to_vec());
            let vec = HistogramVec::new(opts, labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(Labelled::new(vec))
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

pub(super) fn inc(family: &Labelled<IntCounterVec>, values: &[&str]) {
    family.with(values, |counter| counter.inc());
}

pub(super) fn observe(family: &Labelled<HistogramVec>, values: &[&str], value: f64) {
    family.with(values, |histogram| histogram.observe(value));
}

/// How many label sets of a family [`Labelled`] keeps at hand: a sidecar records the same few
/// (its peers, its verbs, status 200) nearly every time.
const AT_HAND: usize = 8;

/// A labelled family, with the children of the first [`AT_HAND`] label sets it recorded kept
/// at hand. A record of one of those finds its child by comparing the values; `prometheus`
/// hashes every value's bytes (FNV), hashes that again (SipHash) under a lock and clones the
/// child, about 250 instructions a record and nine records a call on the called sidecar
/// (bench/notes.md, "metrics recorded without hashing their labels, and smaller HTTP/2
/// frames"). Any other label set is looked up as before, so a family with more still records
/// them all.
pub(super) struct Labelled<V: Children> {
    vec: V,
    at_hand: Mutex<Vec<(LabelValues, V::Child)>>,
}

/// A label set kept at hand, as it was recorded.
type LabelValues = Box<[Box<str>]>;

/// What a family hands out for a set of label values.
pub(super) trait Children {
    type Child;

    fn child(&self, values: &[&str]) -> prometheus::Result<Self::Child>;
}

impl<T: MetricVecBuilder> Children for MetricVec<T> {
    type Child = T::M;

    fn child(&self, values: &[&str]) -> prometheus::Result<T::M> {
        self.get_metric_with_label_values(values)
    }
}

impl<V: Children> Labelled<V> {
    fn new(vec: V) -> Self {
        Labelled {
            vec,
            at_hand: Mutex::new(Vec::new()),
        }
    }

    /// The child for `values`, looked up in the family (not kept at hand).
    pub(super) fn child(&self, values: &[&str]) -> prometheus::Result<V::Child> {
        self.vec.child(values)
    }

    /// Records into the child for `values` with `record`; a label set the family does not
    /// have (a wrong count of values) records nothing.
    fn with(&self, values: &[&str], record: impl FnOnce(&V::Child)) {
        let mut at_hand = self.at_hand.lock().unwrap_or_else(PoisonError::into_inner);
        let same = |held: &[Box<str>]| {
            held.len() == values.len() && held.iter().zip(values).all(|(h, v)| **h == **v)
        };
        if let Some((_, child)) = at_hand.iter().find(|(held, _)| same(held)) {
            record(child);
            return;
        }
        let Ok(child) = self.vec.child(values) else {
            return;
        };
        record(&child);
        if at_hand.len() < AT_HAND {
            at_hand.push((values.iter().map(|&v| Box::from(v)).collect(), child));
        }
    }
}

pub(super) fn millis_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> Labelled<IntCounterVec> {
        let vec = IntCounterVec::new(Opts::new("calls", "calls"), &["peer", "status"]);
        Labelled::new(vec.expect("a family"))
    }

    fn count(family: &Labelled<IntCounterVec>, values: &[&str]) -> u64 {
        family.child(values).expect("a child").get()
    }

    #[test]
    fn records_reach_the_child_of_their_labels_however_many_label_sets_there_are() {
        let family = counters();
        // Twice the label sets kept at hand, each recorded a different number of times, in
        // turn, so that sets kept at hand and sets looked up alternate.
        let peers: Vec<String> = (0..2 * AT_HAND).map(|i| format!("app-{i}")).collect();
        for round in 0..2 * AT_HAND {
            for (i, peer) in peers.iter().enumerate() {
                if round <= i {
                    inc(&family, &[peer, "200"]);
                }
            }
        }
        inc(&family, &["app-0", "500"]);
        for (i, peer) in peers.iter().enumerate() {
            assert_eq!(count(&family, &[peer, "200"]), i as u64 + 1, "{peer}");
        }
        assert_eq!(count(&family, &["app-0", "500"]), 1);
        assert_eq!(count(&family, &["app-1", "500"]), 0);
        assert_eq!(family.at_hand.lock().unwrap().len(), AT_HAND);
    }

    #[test]
    fn a_record_with_the_wrong_count_of_labels_records_nothing() {
        let family = counters();
        inc(&family, &["app-0"]);
        inc(&family, &["app-0", "200", "extra"]);
        assert!(family.at_hand.lock().unwrap().is_empty());
        inc(&family, &["app-0", "200"]);
        assert_eq!(count(&family, &["app-0", "200"]), 1);
    }
}
