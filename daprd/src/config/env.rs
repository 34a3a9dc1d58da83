//! The environment variables daprd reads, named as upstream, and [`Env`], their values read
//! once so that building the [`super::Config`] stays pure.

use super::{LEGACY_TOKEN_PATH, SENTRY_TOKEN_PATH};

pub const NAMESPACE: &str = "NAMESPACE";
pub const DAPR_API_TOKEN: &str = "DAPR_API_TOKEN";
pub const APP_API_TOKEN: &str = "APP_API_TOKEN";
pub const DAPR_HOST_IP: &str = "DAPR_HOST_IP";
pub const DAPR_TRUST_ANCHORS: &str = "DAPR_TRUST_ANCHORS";
pub const DAPR_TRUST_ANCHORS_FILE: &str = "DAPR_TRUST_ANCHORS_FILE";
pub const DAPR_SENTRY_TOKEN_FILE: &str = "DAPR_SENTRY_TOKEN_FILE";
pub const SENTRY_LOCAL_IDENTITY: &str = "SENTRY_LOCAL_IDENTITY";
pub const DAPR_CONTROLPLANE_NAMESPACE: &str = "DAPR_CONTROLPLANE_NAMESPACE";
pub const DAPR_CONTROLPLANE_TRUST_DOMAIN: &str = "DAPR_CONTROLPLANE_TRUST_DOMAIN";
pub const KUBECONFIG: &str = "KUBECONFIG";
pub const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
pub const KUBERNETES_SERVICE_PORT: &str = "KUBERNETES_SERVICE_PORT";

/// Values read from the environment, passed in so config building stays pure.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub namespace: Option<String>,
    pub api_token: Option<String>,
    pub app_api_token: Option<String>,
    pub host_ip: Option<String>,
    pub hostname: Option<String>,
    pub trust_anchors: Option<String>,
    pub trust_anchors_file: Option<String>,
    /// `DAPR_SENTRY_TOKEN_FILE`; `Some("")` when set but empty (an error, as upstream).
    pub sentry_token_file: Option<String>,
    pub sentry_local_identity: Option<String>,
    pub control_plane_namespace: Option<String>,
    pub control_plane_trust_domain: Option<String>,
    /// Which of the well-known token paths exist on this machine.
    pub sentry_token_present: bool,
    pub legacy_token_present: bool,
    /// `KUBECONFIG`, and the in-cluster API server address the kubelet sets.
    pub kubeconfig: Option<String>,
    pub kubernetes_service_host: Option<String>,
    pub kubernetes_service_port: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let get = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        Env {
            namespace: get(NAMESPACE),
            api_token: get(DAPR_API_TOKEN),
            app_api_token: get(APP_API_TOKEN),
            host_ip: get(DAPR_HOST_IP),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty()),
            trust_anchors: get(DAPR_TRUST_ANCHORS),
            trust_anchors_file: get(DAPR_TRUST_ANCHORS_FILE),
            sentry_token_file: std::env::var(DAPR_SENTRY_TOKEN_FILE).ok(),
            sentry_local_identity: get(SENTRY_LOCAL_IDENTITY),
            control_plane_namespace: get(DAPR_CONTROLPLANE_NAMESPACE),
            control_plane_trust_domain: get(DAPR_CONTROLPLANE_TRUST_DOMAIN),
            sentry_token_present: std::path::Path::new(SENTRY_TOKEN_PATH).exists(),
            legacy_token_present: std::path::Path::new(LEGACY_TOKEN_PATH).exists(),
            kubeconfig: get(KUBECONFIG),
            kubernetes_service_host: get(KUBERNETES_SERVICE_HOST),
            kubernetes_service_port: get(KUBERNETES_SERVICE_PORT),
        }
    }
}
