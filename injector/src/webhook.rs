//! The HTTP side of the webhook: `POST /mutate` decodes an AdmissionReview, asks
//! [`Admission`] and encodes the answer; `/healthz` reports readiness. No decisions here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderMap, StatusCode, header};
use tracing::{debug, error, info, warn};

use crate::admission::{Admission, Decision};
use crate::metrics::{FailureReason, Metrics};
use crate::review::{self, Answer};

const JSON: &str = "application/json";
/// Room for the largest pods the API server stores (objects are capped near 1.5 MiB).
const MAX_BODY: usize = 8 * 1024 * 1024;

pub struct Webhook {
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
}

pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/mutate", any(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(webhook)
}

async fn mutate(State(webhook): State<Arc<Webhook>>, headers: HeaderMap, body: Bytes) -> Response {
    webhook.metrics.request();
    if body.is_empty() {
        error!("admission request with an empty body");
        return (StatusCode::BAD_REQUEST, "empty body").into_response();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type != JSON {
        error!(
            content_type,
            "admission request with the wrong content type"
        );
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("invalid Content-Type, expected `{JSON}`"),
        )
            .into_response();
    }
    let (api_version, uid, answer) = match review::decode(&body) {
        Ok(request) => {
            let decision = webhook.admission.decide(&request).await;
            record(&webhook.metrics, &request, &decision);
            (request.api_version, request.uid, decision.answer())
        }
        Err(e) => {
            error!(reason = %e.message, "cannot decode the admission request");
            let answer = Answer {
                allowed: false,
                message: Some(e.message),
                ..Answer::default()
            };
            let version = e.api_version.unwrap_or_else(|| review::V1.to_owned());
            (version, String::new(), answer)
        }
    };
    match review::encode(&api_version, &uid, &answer) {
        Ok(bytes) => ([(header::CONTENT_TYPE, JSON)], bytes).into_response(),
        Err(e) => {
            error!(error = %e, "cannot encode the admission response");
            webhook.metrics.failed("", FailureReason::Response);
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

/// Logs the reason of every skip and rejection once, and counts it under upstream's metrics.
fn record(metrics: &Metrics, request: &review::Request, decision: &Decision) {
    let app_id = decision.app_id();
    match decision {
        Decision::NotAPod { kind } => {
            warn!(kind, uid = %request.uid, "admission review for a kind other than Pod; allowed");
            metrics.failed(app_id, FailureReason::PodPatch);
        }
        Decision::NotEnabled => {}
        Decision::Unauthorized { username, .. } => {
            error!(
                app_id,
                namespace = %request.namespace,
                "service account '{username}' not on the list of allowed controller accounts; \
                 pod admitted without a sidecar"
            );
            metrics.failed(app_id, FailureReason::PodPatch);
        }
        Decision::Unchanged { .. } => {
            debug!(app_id, "pod already has daprd; nothing to inject");
        }
        Decision::Patched(patch) => {
            for warning in &patch.warnings {
                warn!(app_id, "{warning}");
            }
            info!(app_id, namespace = %request.namespace, ops = patch.ops.len(), "sidecar injected");
            metrics.succeeded(app_id);
        }
        Decision::Rejected { reason, .. } => {
            error!(app_id, namespace = %request.namespace, %reason, "sidecar injection failed; pod rejected");
            metrics.failed(app_id, FailureReason::Patch);
        }
    }
}

/// Readiness targets, all of which must be up for `/healthz` to answer 200.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The HTTPS listener is serving.
    pub server: AtomicBool,
    /// The webhook configuration carries our trust anchors (always true without a cluster).
    pub webhook_configuration: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.server.load(Ordering::Acquire) && self.webhook_configuration.load(Ordering::Acquire)
    }
}

pub fn health_router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(readiness)
}

async fn healthz(State(readiness): State<Arc<Readiness>>) -> StatusCode {
    if readiness.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
