//! AdmissionReview on the wire, `admission.k8s.io/v1` and `v1beta1` (the two differ only in
//! `apiVersion` for what a mutating webhook reads and writes). The answer carries the request's
//! `apiVersion` and `uid`, as the API server requires.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authz::Requester;
use crate::patch::PatchOp;

pub const V1: &str = "admission.k8s.io/v1";
pub const V1BETA1: &str = "admission.k8s.io/v1beta1";
const KIND: &str = "AdmissionReview";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReview {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<WireRequest>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    uid: String,
    kind: WireKind,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    user_info: WireUser,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct WireKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct WireUser {
    #[serde(default)]
    username: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// The parts of an admission request the injector reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub api_version: String,
    pub uid: String,
    /// `request.kind.group` and `.kind` of the object under review.
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub requester: Requester,
    pub object: Option<Value>,
}

/// A body that is not an AdmissionReview; answered with `allowed: false`, as upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The body's `apiVersion` when it named a known one, for the answer.
    pub api_version: Option<String>,
    pub message: String,
}

pub fn decode(body: &[u8]) -> Result<Request, DecodeError> {
    let review: WireReview = serde_json::from_slice(body).map_err(|e| DecodeError {
        api_version: None,
        message: format!("could not decode the AdmissionReview: {e}"),
    })?;
    if review.api_version != V1 && review.api_version != V1BETA1 {
        return Err(DecodeError {
            api_version: None,
            message: format!(
                "unsupported AdmissionReview apiVersion {:?}: expected {V1} or {V1BETA1}",
                review.api_version
            ),
        });
    }
    let fail = |message: String| DecodeError {
        api_version: Some(review.api_version.clone()),
        message,
    };
    if review.kind != KIND {
        return Err(fail(format!(
            "unsupported kind {:?}: expected {KIND}",
            review.kind
        )));
    }
    let Some(request) = review.request else {
        return Err(fail("the AdmissionReview has no request".to_owned()));
    };
    Ok(Request {
        api_version: review.api_version.clone(),
        uid: request.uid,
        group: request.kind.group,
        kind: request.kind.kind,
        namespace: request.namespace,
        name: request.name,
        requester: Requester {
            username: request.user_info.username,
            uid: request.user_info.uid,
            groups: request.user_info.groups,
        },
        object: request.object,
    })
}

/// What the webhook answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub allowed: bool,
    pub patch: Option<Vec<PatchOp>>,
    /// Shown to the user when the pod is rejected.
    pub message: Option<String>,
    pub warnings: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireAnswerReview<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: WireResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<WireStatus<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

#[derive(Serialize)]
struct WireStatus<'a> {
    message: &'a str,
}

/// The AdmissionReview answering request `uid` in `api_version`.
pub fn encode(api_version: &str, uid: &str, answer: &Answer) -> Result<Vec<u8>, serde_json::Error> {
    let patch = match &answer.patch {
        Some(ops) => {
            Some(base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(ops)?))
        }
        None => None,
    };
    serde_json::to_vec(&WireAnswerReview {
        api_version,
        kind: KIND,
        response: WireResponse {
            uid,
            allowed: answer.allowed,
            patch_type: patch.is_some().then_some("JSONPatch"),
            patch,
            status: answer
                .message
                .as_deref()
                .map(|message| WireStatus { message }),
            warnings: &answer.warnings,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_admission_versions_decode_and_keep_their_version() {
        for version in [V1, V1BETA1] {
            let body = json!({
                "apiVersion": version, "kind": "AdmissionReview",
                "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "namespace": "ns", "userInfo": {"username": "x", "groups": ["g"]},
                            "object": {"metadata": {}}}
            });
            let r = decode(&serde_json::to_vec(&body).unwrap()).unwrap();
            assert_eq!(r.api_version, version);
            assert_eq!(r.kind, "Pod");
            assert_eq!(r.requester.groups, ["g"]);
        }
    }

    #[test]
    fn unknown_versions_and_missing_requests_are_decode_errors() {
        let e = decode(br#"{"apiVersion":"admission.k8s.io/v2","kind":"AdmissionReview"}"#)
            .unwrap_err();
        assert!(e.message.contains("apiVersion"));
        let e = decode(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
            .unwrap_err();
        assert_eq!(e.api_version.as_deref(), Some(V1));
        assert!(decode(b"not json").is_err());
    }

    #[test]
    fn the_patch_is_base64_json_with_its_type() {
        let answer = Answer {
            allowed: true,
            patch: Some(vec![]),
            ..Answer::default()
        };
        let out: Value = serde_json::from_slice(&encode(V1BETA1, "u", &answer).unwrap()).unwrap();
        assert_eq!(out["apiVersion"], V1BETA1);
        assert_eq!(out["response"]["uid"], "u");
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert_eq!(out["response"]["patch"], "W10=");
        assert!(out["response"].get("warnings").is_none());
    }
}
