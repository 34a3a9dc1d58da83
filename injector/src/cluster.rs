//! What the injector asks the Kubernetes API: the `daprsystem` Configuration (for
//! `--enable-mtls`), Components (for pluggable-component injection), ServiceAccount UIDs (for
//! the allow list) and the webhook configuration's `caBundle`. Without a cluster the webhook
//! still serves, with upstream's defaults for the first two.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, ListParams, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::Value;
use tracing::{info, warn};

use crate::Error;
use crate::authz::AccountPattern;
use crate::names::{annotation, control_plane, crd};
use crate::patch::Component;

/// How long one lookup on the request path may take before the default applies.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Upstream's budget for resolving allowed ServiceAccount UIDs at start-up.
const UID_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The Kubernetes client from `--kubeconfig`, else in-cluster or the default kubeconfig;
/// `None` when there is no cluster to talk to.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Option<Client>, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| Error::Config(format!("--kubeconfig {}: {e}", path.display())))?
        }
        None => match Config::infer().await {
            Ok(config) => config,
            Err(e) => {
                info!(
                    reason = %e,
                    "no Kubernetes API configured: the Service reconciler, ServiceAccount UID \
                     lookup and caBundle patching are off"
                );
                return Ok(None);
            }
        },
    };
    Ok(Some(Client::try_from(config).map_err(Error::Kube)?))
}

fn dapr_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(crd::GROUP, crd::VERSION, kind))
}

/// The cluster facts the webhook reads per request.
#[derive(Clone)]
pub enum ClusterView {
    /// Fixed answers: outside a cluster (mTLS on, no Components) or in tests.
    Fixed {
        mtls_enabled: bool,
        components: Vec<Component>,
    },
    Live {
        client: Client,
        control_plane_namespace: String,
    },
}

impl ClusterView {
    pub fn offline() -> Self {
        ClusterView::Fixed {
            mtls_enabled: true,
            components: Vec::new(),
        }
    }

    /// `spec.mtls.enabled` of Configuration `daprsystem`; true when it is missing or unreadable.
    pub async fn mtls_enabled(&self) -> bool {
        let (client, namespace) = match self {
            ClusterView::Fixed { mtls_enabled, .. } => return *mtls_enabled,
            ClusterView::Live {
                client,
                control_plane_namespace,
            } => (client, control_plane_namespace),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            namespace,
            &dapr_resource(crd::CONFIGURATION),
        );
        let lookup = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            api.get_opt(control_plane::SYSTEM_CONFIGURATION),
        )
        .await;
        match lookup {
            Ok(Ok(Some(config))) => config
                .data
                .pointer("/spec/mtls/enabled")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            Ok(Ok(None)) => true,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read Configuration {}; mTLS stays on", control_plane::SYSTEM_CONFIGURATION);
                true
            }
            Err(_) => {
                warn!(
                    "reading Configuration {} timed out; mTLS stays on",
                    control_plane::SYSTEM_CONFIGURATION
                );
                true
            }
        }
    }

    /// Components in `namespace`; an error fails the injection (the pod asked for them).
    pub async fn components(&self, namespace: &str) -> Result<Vec<Component>, String> {
        let client = match self {
            ClusterView::Fixed { components, .. } => return Ok(components.clone()),
            ClusterView::Live { client, .. } => client,
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &dapr_resource(crd::COMPONENT));
        let list = tokio::time::timeout(LOOKUP_TIMEOUT, api.list(&ListParams::default()))
            .await
            .map_err(|_| "listing Components timed out".to_owned())?
            .map_err(|e| {
                format!(
                    "cannot list Components for {}: {e}",
                    annotation::INJECT_PLUGGABLE_COMPONENTS
                )
            })?;
        Ok(list
            .items
            .into_iter()
            .map(|c| Component {
                name: c.metadata.name.clone().unwrap_or_default(),
                scopes: c
                    .data
                    .get("scopes")
                    .and_then(Value::as_array)
                    .map(|s| {
                        s.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                container: c
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(annotation::COMPONENT_CONTAINER))
                    .cloned(),
            })
            .collect())
    }
}

/// UIDs of the allowed ServiceAccounts that exist (one cluster-wide list, as upstream).
pub async fn service_account_uids(
    client: &Client,
    accounts: &[AccountPattern],
) -> Result<Vec<String>, Error> {
    let api: Api<ServiceAccount> = Api::all(client.clone());
    let list = tokio::time::timeout(UID_LOOKUP_TIMEOUT, api.list(&ListParams::default()))
        .await
        .map_err(|_| Error::Timeout("listing ServiceAccounts"))?
        .map_err(Error::Kube)?;
    Ok(list
        .items
        .into_iter()
        .filter(|sa| {
            accounts.iter().any(|a| {
                sa.metadata.namespace.as_deref() == Some(a.namespace.as_str())
                    && sa.metadata.name.as_deref() == Some(a.name.as_str())
            })
        })
        .filter_map(|sa| sa.metadata.uid)
        .collect())
}

/// Sets `caBundle` of the first webhook of `dapr-sidecar-injector` to the trust anchors, with
/// the one JSON-patch op upstream uses (its RBAC allows `patch` on that object only).
pub async fn patch_ca_bundle(client: &Client, trust_anchors_pem: &str) -> Result<(), Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let bundle = base64::engine::general_purpose::STANDARD.encode(trust_anchors_pem);
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}
    ]))
    .map_err(|e| Error::Config(format!("caBundle patch: {e}")))?;
    api.patch(
        control_plane::WEBHOOK_CONFIGURATION,
        &PatchParams::default(),
        &kube::api::Patch::Json::<()>(patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}
