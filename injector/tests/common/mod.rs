//! Shared setup for the injector's integration tests: the webhook router configured as a
//! default Helm install would configure it, with fixture-controlled env and cluster facts.

#![allow(dead_code)]

pub mod mutated;
pub mod process;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use injector::admission::Admission;
use injector::authz::Authorizer;
use injector::cluster::ClusterView;
use injector::config::{Config, Env, Flags};
use injector::metrics::Metrics;
use injector::patch::Component;
use injector::webhook::{self, Webhook};
use serde_json::Value;
use tower::ServiceExt;

pub const TRUST_ANCHORS: &str = "-----BEGIN CERTIFICATE-----\nMIIBfixtureTrustAnchorsForGoldenTests\n-----END CERTIFICATE-----\n";

/// The chart's env for the injector (upstream
/// charts/dapr/charts/dapr_sidecar_injector/templates/dapr_sidecar_injector_deployment.yaml),
/// which fixtures may extend.
pub const BASE_ENV: &[(&str, &str)] = &[
    ("NAMESPACE", "dapr-system"),
    ("SIDECAR_IMAGE", "ghcr.io/dapr/daprd:1.18.3"),
    ("SIDECAR_IMAGE_PULL_POLICY", "IfNotPresent"),
    ("KUBE_CLUSTER_DOMAIN", "cluster.local"),
    (
        "DAPR_TRUST_ANCHORS_FILE",
        "/var/run/secrets/dapr.io/tls/ca.crt",
    ),
];

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn workspace() -> PathBuf {
    manifest_dir().join("..")
}

/// Cluster facts a fixture can set in `cluster.json`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterFixture {
    pub mtls_enabled: Option<bool>,
    #[serde(default)]
    pub components: Vec<ComponentFixture>,
    /// `null` means "not loaded"; absent means [`TRUST_ANCHORS`].
    #[serde(default = "default_anchors")]
    pub trust_anchors: Option<String>,
}

fn default_anchors() -> Option<String> {
    Some(TRUST_ANCHORS.to_owned())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentFixture {
    pub name: String,
    pub scopes: Vec<String>,
    pub container: Option<String>,
}

/// The webhook router for `extra_env` and `cluster`, plus its metrics.
pub fn router(
    extra_env: &[(String, String)],
    cluster: ClusterFixture,
) -> (axum::Router, Arc<Metrics>) {
    let pairs: Vec<(&str, &str)> = BASE_ENV
        .iter()
        .copied()
        .chain(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    let mut env = Env::from_pairs(pairs);
    env.has_service_account_token = true;
    let flags = <Flags as clap::Parser>::try_parse_from([
        "injector",
        "--tls-cert-file",
        "unused.crt",
        "--tls-key-file",
        "unused.key",
    ])
    .expect("flags");
    let config = Config::from_flags(flags, &env).expect("config");
    let (_tx, anchors) = tokio::sync::watch::channel(cluster.trust_anchors.clone());
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let admission = Admission {
        settings: config.settings,
        authorizer: Authorizer::new(
            config.allowed_service_accounts,
            config.allowed_service_account_prefixes,
        ),
        cluster: ClusterView::Fixed {
            mtls_enabled: cluster.mtls_enabled.unwrap_or(true),
            components: cluster
                .components
                .into_iter()
                .map(|c| Component {
                    name: c.name,
                    scopes: c.scopes,
                    container: c.container,
                })
                .collect(),
        },
        trust_anchors: anchors,
    };
    let hook = Arc::new(Webhook::new(admission, metrics.clone()));
    (webhook::router(hook), metrics)
}

/// POSTs `body` to `/mutate` with `content_type`; returns the status and the body bytes.
pub async fn post(
    router: &axum::Router,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let request = Request::post("/mutate")
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, bytes)
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A unique scratch directory under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = workspace()
        .join("target")
        .join("injector-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
