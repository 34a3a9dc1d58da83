//! The HTTP side of the webhook: `POST /mutate` decodes an AdmissionReview, asks
//! [`Admission`] and encodes the answer; `/healthz` reports readiness. No decisions here.
//!
//! What reviews may cost is bounded here: a body of at most [`MAX_BODY`] (413 above it), at
//! most [`MAX_IN_FLIGHT`] reviews read and decoded at once, and [`DEADLINE`] to get a turn and
//! the body. `admission` bounds the rest: what decoding one pod may take.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, error, info, warn};

use crate::admission::{Admission, Decision};
use crate::metrics::{FailureReason, Metrics};
use crate::review::{self, Answer, clipped};

const JSON: &str = "application/json";

/// Largest body taken. kube-apiserver refuses request bodies over 3 MiB (`MaxRequestBodyBytes`
/// in k8s.io/apiserver/pkg/server/config.go), so no pod it admits is larger; the review adds
/// under a KiB of request fields, and `oldObject` is null on CREATE, the only operation the
/// chart registers. The third on top covers a pod grown by earlier mutating webhooks and JSON
/// longer than the protobuf a controller sent.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Reviews read, decoded and answered at once; later ones wait for a turn. Each holds at most
/// a body of [`MAX_BODY`] and a decoded pod of [`crate::admission::MAX_DECODED`], so four stay
/// near 80 MiB at worst, within the chart's 256 Mi limit. Decoding is CPU-bound, so more at
/// once would not answer sooner on the one or two cores the injector gets; a review takes well
/// under a millisecond (BENCHMARKS.md: 16 000 reviews/s), so a queue of thousands drains within
/// the API server's timeout.
pub const MAX_IN_FLIGHT: usize = 4;

/// How long a review may wait for its turn and for its body: Kubernetes' default webhook
/// `timeoutSeconds` (the chart sets 5). The API server has given up on the review by then
/// and applied the failure policy, so answering it would be wasted work.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Over-limit bodies up to this size are read to their end and dropped before the 413, so the
/// client reads the answer on a connection left in order (a server that closes with unread
/// data resets the connection, and the client may lose the answer). Larger ones, which no API
/// server sends, get the 413 at once and the connection is closed.
const DRAIN_UP_TO: usize = 2 * MAX_BODY;

pub struct Webhook {
    pub admission: Admission,
    pub metrics: Arc<Metrics>,
    /// Turns to read, decode and answer a review: [`MAX_IN_FLIGHT`].
    turns: Semaphore,
}

impl Webhook {
    pub fn new(admission: Admission, metrics: Arc<Metrics>) -> Self {
        Self {
            admission,
            metrics,
            turns: Semaphore::new(MAX_IN_FLIGHT),
        }
    }
}

pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/mutate", any(mutate))
        .with_state(webhook)
}

async fn mutate(State(webhook): State<Arc<Webhook>>, request: Request) -> Response {
    webhook.metrics.request();
    let deadline = Instant::now() + DEADLINE;
    let (parts, body) = request.into_parts();
    let declared = declared_length(&parts.headers);
    if declared.is_some_and(|n| n > MAX_BODY) {
        return too_large(body, declared, 0, deadline).await;
    }
    // Held until the answer is encoded: the body, the decoded pod and the answer all count.
    let Ok(Ok(turn)) = timeout_at(deadline, webhook.turns.acquire()).await else {
        warn!(
            in_flight = MAX_IN_FLIGHT,
            "admission review waited {DEADLINE:?} for a turn; answered 503"
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the injector is busy with {MAX_IN_FLIGHT} admission reviews; retry"),
        )
            .into_response();
    };
    let body = match timeout_at(deadline, read_limited(body, declared)).await {
        Ok(Ok(Read::Complete(body))) => body,
        Ok(Ok(Read::OverLimit { rest, received })) => {
            drop(turn);
            return too_large(rest, declared, received, deadline).await;
        }
        Ok(Err(e)) => {
            error!(error = %e, "cannot read the admission request body");
            return (StatusCode::BAD_REQUEST, "cannot read the body").into_response();
        }
        Err(_) => {
            warn!("admission request body not received within {DEADLINE:?}; answered 408");
            return (
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {DEADLINE:?}"),
            )
                .into_response();
        }
    };
    if body.is_empty() {
        error!("admission request with an empty body");
        return (StatusCode::BAD_REQUEST, "empty body").into_response();
    }
    let content_type = parts
        .headers
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
            (request.api_version, request.uid, decision.into_answer())
        }
        Err(e) => {
            error!(reason = %clipped(&e.message), "cannot decode the admission request");
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

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

enum Read {
    Complete(Vec<u8>),
    /// The body passed [`MAX_BODY`] after `received` bytes; `rest` is still unread.
    OverLimit {
        rest: Body,
        received: usize,
    },
}

/// Reads the body up to [`MAX_BODY`], growing the buffer no further than that.
async fn read_limited(mut body: Body, declared: Option<usize>) -> Result<Read, axum::Error> {
    let mut bytes: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let needed = bytes.len() + data.len();
        if needed > MAX_BODY {
            return Ok(Read::OverLimit {
                rest: body,
                received: needed,
            });
        }
        if needed > bytes.capacity() {
            // The declared length once data arrives, else doubling capped at the limit.
            let target = declared
                .unwrap_or(0)
                .max(needed)
                .max(bytes.capacity() * 2)
                .min(MAX_BODY);
            bytes.reserve_exact(target - bytes.len());
        }
        bytes.extend_from_slice(&data);
    }
    Ok(Read::Complete(bytes))
}

/// Answers 413, first reading what is left of a body up to [`DRAIN_UP_TO`] in all (dropping
/// it) so the client is not reset before it reads the answer. Logged once, with the reason.
async fn too_large(
    mut rest: Body,
    declared: Option<usize>,
    received: usize,
    deadline: Instant,
) -> Response {
    let mut total = received;
    if declared.is_none_or(|n| n <= DRAIN_UP_TO) {
        let drain = async {
            while let Some(Ok(frame)) = rest.frame().await {
                if let Ok(data) = frame.into_data() {
                    total += data.len();
                }
                if total > DRAIN_UP_TO {
                    break;
                }
            }
        };
        let _ = timeout_at(deadline, drain).await;
    }
    warn!(
        limit = MAX_BODY,
        declared, "admission request body over the limit; answered 413"
    );
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is over the injector's limit of {MAX_BODY} bytes"),
    )
        .into_response()
}

/// Logs the reason of every skip and rejection once, and counts it under upstream's metrics.
/// Every logged text comes from the client and is [`clipped`].
fn record(metrics: &Metrics, request: &review::Request<'_>, decision: &Decision) {
    let app_id = decision.app_id();
    let logged_id = clipped(app_id);
    let namespace = clipped(&request.namespace);
    match decision {
        Decision::NotAPod { kind } => {
            warn!(
                kind = %clipped(kind),
                uid = %clipped(&request.uid),
                "admission review for a kind other than Pod; allowed"
            );
            metrics.failed(app_id, FailureReason::PodPatch);
        }
        Decision::NotEnabled => {}
        Decision::Unauthorized { username, .. } => {
            error!(
                app_id = %logged_id,
                %namespace,
                "service account '{}' not on the list of allowed controller accounts; \
                 pod admitted without a sidecar",
                clipped(username)
            );
            metrics.failed(app_id, FailureReason::PodPatch);
        }
        Decision::Unchanged { .. } => {
            debug!(app_id = %logged_id, "pod already has daprd; nothing to inject");
        }
        Decision::Patched(patch) => {
            for warning in &patch.warnings {
                warn!(app_id = %logged_id, "{}", clipped(warning));
            }
            info!(app_id = %logged_id, %namespace, ops = patch.ops.len(), "sidecar injected");
            metrics.succeeded(app_id);
        }
        Decision::Rejected { reason, .. } => {
            error!(
                app_id = %logged_id,
                %namespace,
                reason = %clipped(reason),
                "sidecar injection failed; pod rejected"
            );
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
