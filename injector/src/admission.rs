//! One admission request, decided in upstream's order (pkg/injector/service/handler.go): not a
//! Pod → allowed; `dapr.io/enabled` not "true" → allowed, silently; requester not allowed →
//! allowed without a sidecar; otherwise the patch, or a rejection naming the annotation at fault.

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use crate::authz::Authorizer;
use crate::cluster::ClusterView;
use crate::names::annotation;
use crate::patch::{self, Facts, Patch, Settings};
use crate::review::{self, Answer, Request};
use crate::survey::{self, Survey};

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

    /// The answer, moving the patch and messages into it rather than copying them.
    pub fn into_answer(self) -> Answer {
        match self {
            Decision::NotAPod { .. } | Decision::NotEnabled | Decision::Unauthorized { .. } => {
                Answer {
                    allowed: true,
                    ..Answer::default()
                }
            }
            Decision::Unchanged { warnings, .. } => Answer {
                allowed: true,
                warnings,
                ..Answer::default()
            },
            Decision::Patched(patch) => Answer {
                allowed: true,
                patch: Some(patch.ops),
                warnings: patch.warnings,
                ..Answer::default()
            },
            Decision::Rejected { reason, .. } => Answer {
                allowed: false,
                message: Some(reason),
                ..Answer::default()
            },
        }
    }
}

/// Most that decoding and patching one pod may take, by [`Survey`]'s bound; a pod asking for a
/// sidecar above it is rejected before it is decoded. Real pods stay well below: the large pod
/// in `survey`'s tests (twenty containers with a hundred secret env vars each, and the managed
/// fields for them) is estimated at 6.2 MiB, and it takes about 1,100 containers to reach the
/// limit. With `webhook::MAX_IN_FLIGHT` reviews at once it keeps the injector within its memory
/// limit whatever the bodies hold.
pub const MAX_DECODED: usize = 16 * 1024 * 1024;

impl Admission {
    pub async fn decide(&self, request: &Request<'_>) -> Decision {
        if !request.group.is_empty() || request.kind != "Pod" {
            return Decision::NotAPod {
                kind: request.kind.clone(),
            };
        }
        // Upstream decodes every pod (`podHasDaprEnabled`, pkg/injector/service/handler.go); the
        // gate is read from the text instead, so pods that do not ask for a sidecar (most of
        // them) are answered without decoding anything.
        let Some(object) = request.object else {
            return Decision::NotEnabled;
        };
        let survey = Survey::of_pod(object);
        if !survey.enabled {
            return Decision::NotEnabled;
        }
        let diag_app_id = survey.diagnostic_app_id();
        if survey.too_deep {
            return Decision::Rejected {
                app_id: diag_app_id,
                reason: format!(
                    "could not decode the pod: it nests deeper than {} levels",
                    survey::MAX_DEPTH
                ),
            };
        }
        let requester_bytes = request
            .user_info
            .map_or(0, |raw| Survey::of_value(raw).bytes);
        let cost = survey.bytes.saturating_add(requester_bytes);
        if cost > MAX_DECODED {
            return Decision::Rejected {
                app_id: diag_app_id,
                reason: format!(
                    "the pod is too large for the sidecar injector: decoding and patching it \
                     could take {} MiB, over the injector's limit of {} MiB (thousands of \
                     containers, volumes or list entries)",
                    cost.div_ceil(1024 * 1024),
                    MAX_DECODED / (1024 * 1024)
                ),
            };
        }
        let pod: Pod = match serde_json::from_str(object.get()) {
            Ok(pod) => pod,
            // Only a pod that asked for a sidecar is rejected for being unreadable.
            Err(e) => {
                return Decision::Rejected {
                    app_id: diag_app_id,
                    reason: format!("could not decode the pod: {}", review::without_position(&e)),
                };
            }
        };
        if !patch::wants_injection(&pod) {
            return Decision::NotEnabled;
        }
        let requester = match request.requester() {
            Ok(requester) => requester,
            Err(reason) => {
                return Decision::Rejected {
                    app_id: diag_app_id,
                    reason,
                };
            }
        };
        if !self.authorizer.allows(&requester) {
            return Decision::Unauthorized {
                app_id: diag_app_id,
                username: requester.username,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::PatchOp;
    use serde_json::Value;

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
            let answer = decision.clone().into_answer();
            assert_eq!(answer.allowed, allowed, "{decision:?}");
            assert_eq!(answer.patch.is_some(), has_patch, "{decision:?}");
            assert_eq!(answer.message.as_deref(), message, "{decision:?}");
        }
    }
}
