//! Kubernetes mode without the operator: the Configuration named by `--config`, read from the
//! API server when the sidecar starts. This is the fallback; with `--control-plane-address` and
//! mTLS the sidecar asks the operator instead, as upstream's daprd does ([`crate::operator`]).
//! Here the sidecar reads it itself with its pod's service account, which the chart lets read
//! Configurations of its own namespace only (the `dapr-configuration-reader` RoleBinding the
//! injector's reconciler keeps in every namespace with a Dapr workload), the same scope the
//! operator enforces.

use std::time::{Duration, Instant};

use dapr_crds::Configuration;

use crate::StartError;

/// How long the API server may be unreachable before the sidecar gives up.
const PATIENCE: Duration = Duration::from_secs(30);
/// The bound on one request.
const ATTEMPT: Duration = Duration::from_secs(10);

/// Reads Configuration `namespace/name`. A missing or unreadable Configuration stops the sidecar
/// (as upstream: running with defaults would silently drop its access control); an unreachable
/// API server is retried for [`PATIENCE`].
pub async fn load(
    source: &crate::apiserver::Source,
    namespace: &str,
    name: &str,
) -> Result<Configuration, StartError> {
    let what = format!("Configuration {namespace}/{name} (--config)");
    let fail = |reason: String| StartError::Configuration {
        what: what.clone(),
        reason,
    };
    if !is_dns_label(namespace) {
        return Err(fail(format!(
            "namespace {namespace:?} is not a Kubernetes namespace name"
        )));
    }
    let api = crate::apiserver::ApiServer::from_source(source).map_err(|source| {
        StartError::ConfigurationAccess {
            what: what.clone(),
            source,
        }
    })?;
    let path = format!("/apis/dapr.io/v1alpha1/namespaces/{namespace}/configurations/{name}");
    let deadline = Instant::now() + PATIENCE;
    let mut delay = Duration::from_millis(250);
    loop {
        let reason = match tokio::time::timeout(ATTEMPT, api.get(&path)).await {
            Ok(Ok(answer)) if answer.status.is_success() => {
                let configuration: Configuration = serde_json::from_slice(&answer.body)
                    .map_err(|e| fail(format!("not a Configuration: {e}")))?;
                configuration.validate().map_err(|e| fail(e.to_string()))?;
                return Ok(configuration);
            }
            Ok(Ok(answer)) if answer.status == http::StatusCode::NOT_FOUND => {
                return Err(fail("does not exist".into()));
            }
            Ok(Ok(answer))
                if answer.status == http::StatusCode::FORBIDDEN
                    || answer.status == http::StatusCode::UNAUTHORIZED =>
            {
                return Err(fail(format!(
                    "the API server refused the pod's service account ({}); it needs `get` on \
                     configurations.dapr.io in namespace {namespace}, which the RoleBinding \
                     dapr-configuration-reader grants",
                    answer.message()
                )));
            }
            Ok(Ok(answer)) => format!("{}: {}", answer.status, answer.message()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", ATTEMPT.as_secs()),
        };
        if Instant::now() + delay > deadline {
            return Err(fail(format!(
                "the API server did not answer for {}s: {reason}",
                PATIENCE.as_secs()
            )));
        }
        tracing::warn!("reading {what}: {reason}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(4));
    }
}

/// A Kubernetes namespace name (RFC 1123 label).
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
