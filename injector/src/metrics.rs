//! Prometheus metrics under upstream's names and label keys, served as text on
//! `--metrics-port` (`/` and `/metrics`).

use std::collections::HashSet;
use std::sync::Mutex;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{StatusCode, header};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

pub mod name {
    pub const REQUESTS_TOTAL: &str = "dapr_injector_sidecar_injection_requests_total";
    pub const SUCCEEDED_TOTAL: &str = "dapr_injector_sidecar_injection_succeeded_total";
    pub const FAILED_TOTAL: &str = "dapr_injector_sidecar_injection_failed_total";
}

pub mod label {
    pub const APP_ID: &str = "app_id";
    pub const REASON: &str = "reason";
}

/// Why an injection did not happen, as upstream's `reason` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Admitted without a sidecar (not a Pod, requester not allowed).
    PodPatch,
    /// The patch could not be built (bad annotation, trust anchors missing).
    Patch,
    /// The answer could not be encoded.
    Response,
}

impl FailureReason {
    fn as_str(self) -> &'static str {
        match self {
            FailureReason::PodPatch => "pod_patch",
            FailureReason::Patch => "patch",
            FailureReason::Response => "response",
        }
    }
}

/// At most this many distinct app ids become label values; later ones share [`OTHER_APPS`]
/// (the ids come from user annotations).
pub const MAX_APP_IDS: usize = 1024;
pub const OTHER_APPS: &str = "_other";
/// Longer app ids also count under [`OTHER_APPS`]: each label value is kept for the process's
/// life, and an annotation can be megabytes. 253 is the longest name Kubernetes gives an object
/// ("Object Names and IDs"), which a pod name standing in for the app id can reach; a valid app
/// id is at most 58.
pub const MAX_APP_ID_LEN: usize = 253;

pub struct Metrics {
    registry: Registry,
    requests: IntCounter,
    succeeded: IntCounterVec,
    failed: IntCounterVec,
    seen: Mutex<HashSet<String>>,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounter::with_opts(Opts::new(
            name::REQUESTS_TOTAL,
            "The total number of sidecar injection requests.",
        ))?;
        let succeeded = IntCounterVec::new(
            Opts::new(
                name::SUCCEEDED_TOTAL,
                "The total number of successful sidecar injections.",
            ),
            &[label::APP_ID],
        )?;
        let failed = IntCounterVec::new(
            Opts::new(
                name::FAILED_TOTAL,
                "The total number of failed sidecar injections.",
            ),
            &[label::APP_ID, label::REASON],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(succeeded.clone()))?;
        registry.register(Box::new(failed.clone()))?;
        Ok(Self {
            registry,
            requests,
            succeeded,
            failed,
            seen: Mutex::new(HashSet::new()),
        })
    }

    pub fn request(&self) {
        self.requests.inc();
    }

    pub fn succeeded(&self, app_id: &str) {
        let app_id = self.bounded(app_id);
        self.succeeded.with_label_values(&[app_id.as_str()]).inc();
    }

    pub fn failed(&self, app_id: &str, reason: FailureReason) {
        let app_id = self.bounded(app_id);
        self.failed
            .with_label_values(&[app_id.as_str(), reason.as_str()])
            .inc();
    }

    fn bounded(&self, app_id: &str) -> String {
        if app_id.len() > MAX_APP_ID_LEN {
            return OTHER_APPS.to_owned();
        }
        let mut seen = match self.seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.contains(app_id) {
            return app_id.to_owned();
        }
        if seen.len() < MAX_APP_IDS {
            seen.insert(app_id.to_owned());
            return app_id.to_owned();
        }
        OTHER_APPS.to_owned()
    }

    /// The classic text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }

    pub fn router(self: std::sync::Arc<Self>) -> Router {
        Router::new()
            .route("/", get(exposition))
            .route("/metrics", get(exposition))
            .with_state(self)
    }
}

async fn exposition(State(metrics): State<std::sync::Arc<Metrics>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_use_upstreams_names_and_labels() {
        let m = Metrics::new().unwrap();
        m.request();
        m.succeeded("orders");
        m.failed("bad", FailureReason::Patch);
        let text = m.render();
        assert!(
            text.contains("dapr_injector_sidecar_injection_requests_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"dapr_injector_sidecar_injection_succeeded_total{app_id="orders"} 1"#)
        );
        assert!(text.contains(
            r#"dapr_injector_sidecar_injection_failed_total{app_id="bad",reason="patch"} 1"#
        ));
    }

    #[test]
    fn app_ids_beyond_the_bound_share_one_label_value() {
        let m = Metrics::new().unwrap();
        for i in 0..MAX_APP_IDS + 5 {
            m.succeeded(&format!("app-{i}"));
        }
        assert!(m.render().contains(r#"app_id="_other"} 5"#));
    }

    #[test]
    fn an_app_id_longer_than_any_kubernetes_name_counts_as_other() {
        let m = Metrics::new().unwrap();
        m.failed(&"a".repeat(MAX_APP_ID_LEN + 1), FailureReason::Patch);
        m.failed(&"b".repeat(MAX_APP_ID_LEN), FailureReason::Patch);
        let text = m.render();
        assert!(
            text.contains(r#"app_id="_other",reason="patch"} 1"#),
            "{text}"
        );
        assert!(text.contains(&"b".repeat(MAX_APP_ID_LEN)));
    }
}
