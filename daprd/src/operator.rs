//! Kubernetes mode with `--control-plane-address` and mTLS: the Configuration named by
//! `--config` comes from the operator API (`dapr.proto.operator.v1.Operator/GetConfiguration`),
//! dialled over mTLS accepting only `spiffe://<cp-td>/ns/<cp-ns>/dapr-operator`, as upstream's
//! daprd does (pkg/runtime/config.go, 30 s dial timeout). Without either, the sidecar reads the
//! API server itself ([`crate::configuration`]).
//!
//! Resiliencies and HTTPEndpoints of the sidecar's namespace come from it too
//! ([`list_resources`]), read once at start.
//!
//! Changes arrive on `ConfigurationUpdate`. Upstream restarts its runtime in-process on a
//! change; this sidecar cannot swap a running Configuration (access control, tracing and the
//! API servers are built from it once), so it logs that the pod must be restarted to apply it.

use std::time::{Duration, Instant};

use dapr_crds::Configuration;
use dapr_identity::SpiffeId;
use dapr_identity::tls::ExpectedId;
use dapr_proto::operator::v1 as pb;
use dapr_proto::operator::v1::operator_client::OperatorClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::StartError;
use crate::identity::Current;
use crate::identity::transport::Connector;

/// Upstream's dial timeout for the operator.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the operator may be unavailable at start before the sidecar gives up.
const PATIENCE: Duration = Duration::from_secs(30);
/// The bound on one call.
const ATTEMPT: Duration = Duration::from_secs(10);
/// The operator's id within the control plane's namespace.
const OPERATOR_ID: &str = "dapr-operator";

/// The operator's gRPC client (cheap to clone: one channel).
pub type Client = OperatorClient<Channel>;

/// A client of the operator at `address` (`host:port`), presenting our identity.
pub fn client(
    address: &str,
    current: Current,
    control_plane_trust_domain: &str,
    control_plane_namespace: &str,
) -> Result<OperatorClient<Channel>, StartError> {
    let fail = |reason: String| StartError::Configuration {
        what: format!("operator {address}"),
        reason,
    };
    let expected = SpiffeId::new(
        control_plane_trust_domain,
        control_plane_namespace,
        OPERATOR_ID,
    )?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| fail(e.to_string()))?
        .connect_timeout(DIAL_TIMEOUT);
    let channel = endpoint
        .connect_with_connector_lazy(Connector::identity(current, ExpectedId::Exact(expected)));
    Ok(OperatorClient::new(channel))
}

/// Reads Configuration `namespace/name` from the operator, with its spec as served (what
/// [`follow`] compares changes with). Missing, refused or malformed stops the sidecar (as
/// [`crate::configuration::load`]); an unavailable operator is retried for [`PATIENCE`].
pub async fn load(
    client: &mut OperatorClient<Channel>,
    namespace: &str,
    name: &str,
) -> Result<(Configuration, serde_json::Value), StartError> {
    let what = format!("Configuration {namespace}/{name} (--config) from the operator");
    let fail = |reason: String| StartError::Configuration {
        what: what.clone(),
        reason,
    };
    let deadline = Instant::now() + PATIENCE;
    let mut delay = Duration::from_millis(250);
    loop {
        let request = pb::GetConfigurationRequest {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        };
        let reason = match tokio::time::timeout(ATTEMPT, client.get_configuration(request)).await {
            Ok(Ok(answer)) => return decode(&answer.into_inner().configuration).map_err(fail),
            Ok(Err(status)) if is_final(status.code()) => {
                return Err(fail(format!("{:?}: {}", status.code(), status.message())));
            }
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
            Err(_) => format!("no answer within {}s", ATTEMPT.as_secs()),
        };
        if Instant::now() + delay > deadline {
            return Err(fail(format!(
                "the operator did not answer for {}s: {reason}",
                PATIENCE.as_secs()
            )));
        }
        tracing::warn!("reading {what}: {reason}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(4));
    }
}

/// The Resiliencies and HTTPEndpoints the operator serves for `namespace` (`ListResiliency`,
/// `ListHTTPEndpoints`), read once at start as upstream's daprd does; each call is bounded by
/// [`ATTEMPT`].
pub async fn list_resources(
    client: &mut OperatorClient<Channel>,
    namespace: &str,
) -> Result<(Vec<bytes::Bytes>, Vec<bytes::Bytes>), tonic::Status> {
    let timed_out =
        || tonic::Status::deadline_exceeded(format!("no answer within {}s", ATTEMPT.as_secs()));
    let resiliencies = tokio::time::timeout(
        ATTEMPT,
        client.list_resiliency(pb::ListResiliencyRequest {
            namespace: namespace.to_owned(),
        }),
    )
    .await
    .map_err(|_| timed_out())??
    .into_inner()
    .resiliencies;
    let http_endpoints = tokio::time::timeout(
        ATTEMPT,
        client.list_http_endpoints(pb::ListHttpEndpointsRequest {
            namespace: namespace.to_owned(),
        }),
    )
    .await
    .map_err(|_| timed_out())??
    .into_inner()
    .http_endpoints;
    Ok((resiliencies, http_endpoints))
}

/// Answers that retrying cannot change.
fn is_final(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::NotFound
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::InvalidArgument
    )
}

/// A Configuration from its Kubernetes JSON, validated, and its spec as JSON.
pub fn decode(json: &[u8]) -> Result<(Configuration, serde_json::Value), String> {
    let configuration: Configuration =
        serde_json::from_slice(json).map_err(|e| format!("not a Configuration: {e}"))?;
    configuration.validate().map_err(|e| e.to_string())?;
    let spec = serde_json::from_slice::<serde_json::Value>(json)
        .map(|object| object["spec"].clone())
        .map_err(|e| format!("not JSON: {e}"))?;
    Ok((configuration, spec))
}

/// What a `ConfigurationUpdate` event means for a sidecar running `name` with `spec`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Another Configuration, or ours unchanged.
    Unchanged,
    /// Ours, with a different spec (or deleted).
    Changed,
}

/// Compares the event's object with the spec this sidecar runs.
pub fn judge(name: &str, running_spec: &serde_json::Value, event: &[u8], deleted: bool) -> Verdict {
    let Ok(object) = serde_json::from_slice::<serde_json::Value>(event) else {
        return Verdict::Unchanged;
    };
    if object["metadata"]["name"] != name {
        return Verdict::Unchanged;
    }
    if deleted || &object["spec"] != running_spec {
        Verdict::Changed
    } else {
        Verdict::Unchanged
    }
}

/// Follows `ConfigurationUpdate` for the namespace until `stop`, reconnecting after errors,
/// and logs once per change that the pod must be restarted to apply it.
pub async fn follow(
    mut client: OperatorClient<Channel>,
    namespace: String,
    name: String,
    mut running_spec: serde_json::Value,
    stop: CancellationToken,
) {
    let mut delay = Duration::from_secs(1);
    loop {
        let request = pb::ConfigurationUpdateRequest {
            namespace: namespace.clone(),
        };
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            opened = client.configuration_update(request) => opened,
        };
        match opened {
            Ok(stream) => {
                delay = Duration::from_secs(1);
                let mut stream = stream.into_inner();
                loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        next = stream.message() => next,
                    };
                    match next {
                        Ok(Some(event)) => {
                            let deleted = event.r#type == pb::ResourceEventType::Deleted as i32;
                            if judge(&name, &running_spec, &event.configuration, deleted)
                                == Verdict::Changed
                            {
                                tracing::warn!(
                                    configuration = %format!("{namespace}/{name}"),
                                    deleted,
                                    "the Configuration changed; this sidecar applies a \
                                     Configuration only at start: restart the pod to apply it"
                                );
                                // One warning per change, not one per later event.
                                running_spec = serde_json::from_slice::<serde_json::Value>(
                                    &event.configuration,
                                )
                                .map(|o| o["spec"].clone())
                                .unwrap_or_default();
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::info!("Configuration update stream ended: {status}");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::warn!(retry_in = ?delay, "cannot follow Configuration updates: {status}");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_different_spec_of_our_configuration_is_a_change() {
        let spec = json!({"tracing": {"samplingRate": "1"}});
        let event = |name: &str, spec: serde_json::Value| {
            serde_json::to_vec(&json!({"metadata": {"name": name}, "spec": spec})).expect("json")
        };
        assert_eq!(
            judge("app", &spec, &event("app", spec.clone()), false),
            Verdict::Unchanged
        );
        assert_eq!(
            judge("app", &spec, &event("other", json!({})), false),
            Verdict::Unchanged
        );
        assert_eq!(
            judge(
                "app",
                &spec,
                &event("app", json!({"tracing": {"samplingRate": "0"}})),
                false
            ),
            Verdict::Changed
        );
        assert_eq!(
            judge("app", &spec, &event("app", spec.clone()), true),
            Verdict::Changed
        );
        assert_eq!(judge("app", &spec, b"not json", false), Verdict::Unchanged);
    }

    #[test]
    fn refusals_and_missing_objects_are_not_retried() {
        assert!(is_final(tonic::Code::NotFound));
        assert!(is_final(tonic::Code::PermissionDenied));
        assert!(!is_final(tonic::Code::Unavailable));
        assert!(!is_final(tonic::Code::Unknown));
    }

    #[test]
    fn a_malformed_configuration_is_refused_with_the_reason() {
        assert!(
            decode(b"{")
                .err()
                .is_some_and(|e| e.contains("not a Configuration"))
        );
    }
}
