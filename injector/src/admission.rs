//! One admission request, decided in upstream's order (pkg/injector/service/handler.go): not a
//! Pod → allowed; `dapr.io/enabled` not "true" → allowed, silently; requester not allowed →
//! allowed without a sidecar; otherwise the patch, or a rejection naming the annotation at fault.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tokio::sync::watch;

use crate::authz::Authorizer;
use crate::cluster::ClusterView;
use crate::names::annotation;
use crate::patch::{self, Facts, Patch, Settings};
use crate::review::{Answer, Request};

/// What the webhook needs to decide: settings, who may inject, and the cluster facts.
pub struct Admission {
    pub settings: Settings,
    pub authorizer: Authorizer,
    pub cluster: ClusterView,
    /// PEM of the current trust anchors, kept current by the file watcher.
    pub trust_anchors: watch::Receiver<Option<String>>,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    NotAPod {
        kind: String,
    },
    NotEnabled,
    Unauthorized {
        app_id: String,
        username: String,
    },
    /// Nothing to add (daprd is already there).
    Unchanged {
        app_id: String,
        warnings: Vec<String>,
    },
    Patched(Patch),
    Rejected {
        app_id: String,
        reason: String,
    },
}

impl Decision {
    /// The app id for logs and metrics: the annotation, else the pod name.
    pub fn app_id(&self) -> &str {
        match self {
            Decision::NotAPod { .. } | Decision::NotEnabled => "",
            Decision::Unauthorized { app_id, .. }
            | Decision::Unchanged { app_id, .. }
            | Decision::Rejected { app_id, .. } => app_id,
            Decision::Patched(patch) => &patch.app_id,
        }
    }

    pub fn answer(&self) -> Answer {
        match self {
            Decision::NotAPod { .. } | Decision::NotEnabled | Decision::Unauthorized { .. } => {
                Answer {
                    allowed: true,
                    ..Answer::default()
                }
            }
            Decision::Unchanged { warnings, .. } => Answer {
                allowed: true,
                warnings: warnings.clone(),
                ..Answer::default()
            },
            Decision::Patched(patch) => Answer {
                allowed: true,
                patch: Some(patch.ops.clone()),
                warnings: patch.warnings.clone(),
                ..Answer::default()
            },
            Decision::Rejected { reason, .. } => Answer {
                allowed: false,
                message: Some(reason.clone()),
                ..Answer::default()
            },
        }
    }
}

impl Admission {
    pub async fn decide(&self, request: &Request) -> Decision {
        if !request.group.is_empty() || request.kind != "Pod" {
            return Decision::NotAPod {
                kind: request.kind.clone(),
            };
        }
        let raw = request.object.clone().unwrap_or(Value::Null);
        let diag_app_id = diagnostic_app_id(&raw);
        let pod: Pod = match serde_json::from_value(raw.clone()) {
            Ok(pod) => pod,
            // Only a pod that asked for a sidecar is rejected for being unreadable.
            Err(e) if raw_wants_injection(&raw) => {
                return Decision::Rejected {
                    app_id: diag_app_id,
                    reason: format!("could not decode the pod: {e}"),
                };
            }
            Err(_) => return Decision::NotEnabled,
        };
        if !patch::wants_injection(&pod) {
            return Decision::NotEnabled;
        }
        if !self.authorizer.allows(&request.requester) {
            return Decision::Unauthorized {
                app_id: diag_app_id,
                username: request.requester.username.clone(),
            };
        }
        let namespace = if request.namespace.is_empty() {
            pod.metadata.namespace.clone().unwrap_or_default()
        } else {
            request.namespace.clone()
        };
        let wants_components = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotation::INJECT_PLUGGABLE_COMPONENTS))
            .is_some_and(|v| crate::options::is_truthy(v))
            && !patch::already_injected(&pod);
        let components = if wants_components {
            match self.cluster.components(&namespace).await {
                Ok(components) => components,
                Err(reason) => {
                    return Decision::Rejected {
                        app_id: diag_app_id,
                        reason,
                    };
                }
            }
        } else {
            Vec::new()
        };
        let mtls_enabled = self.cluster.mtls_enabled().await;
        let trust_anchors = self.trust_anchors.borrow().clone();
        let facts = Facts {
            trust_anchors,
            mtls_enabled,
            components,
        };
        match patch::build(&pod, &namespace, &self.settings, &facts) {
            Ok(patch) if patch.ops.is_empty() => Decision::Unchanged {
                app_id: diag_app_id,
                warnings: patch.warnings,
            },
            Ok(patch) => Decision::Patched(patch),
            Err(rejection) => Decision::Rejected {
                app_id: diag_app_id,
                reason: rejection.0,
            },
        }
    }
}

fn raw_annotation<'a>(raw: &'a Value, key: &str) -> Option<&'a str> {
    raw.get("metadata")?.get("annotations")?.get(key)?.as_str()
}

fn raw_wants_injection(raw: &Value) -> bool {
    raw_annotation(raw, annotation::ENABLED).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn diagnostic_app_id(raw: &Value) -> String {
    raw_annotation(raw, annotation::APP_ID)
        .filter(|id| !id.is_empty())
        .or_else(|| raw.get("metadata")?.get("name")?.as_str())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::PatchOp;

    #[test]
    fn every_decision_maps_to_one_answer() {
        let op = PatchOp {
            op: "add".into(),
            path: "/x".into(),
            value: Value::Null,
        };
        let patched = Decision::Patched(Patch {
            ops: vec![op.clone()],
            warnings: vec!["w".into()],
            app_id: "a".into(),
        });
        let table = [
            (
                Decision::NotAPod {
                    kind: "ConfigMap".into(),
                },
                true,
                false,
                None,
            ),
            (Decision::NotEnabled, true, false, None),
            (
                Decision::Unauthorized {
                    app_id: "a".into(),
                    username: "alice".into(),
                },
                true,
                false,
                None,
            ),
            (
                Decision::Unchanged {
                    app_id: "a".into(),
                    warnings: vec![],
                },
                true,
                false,
                None,
            ),
            (patched, true, true, None),
            (
                Decision::Rejected {
                    app_id: "a".into(),
                    reason: "bad".into(),
                },
                false,
                false,
                Some("bad"),
            ),
        ];
        for (decision, allowed, has_patch, message) in table {
            let answer = decision.answer();
            assert_eq!(answer.allowed, allowed, "{decision:?}");
            assert_eq!(answer.patch.is_some(), has_patch, "{decision:?}");
            assert_eq!(answer.message.as_deref(), message, "{decision:?}");
        }
    }
}
