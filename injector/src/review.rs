//! AdmissionReview on the wire, `admission.k8s.io/v1` and `v1beta1` (the two differ only in
//! `apiVersion` for what a mutating webhook reads and writes). The answer carries the request's
//! `apiVersion` and `uid`, as the API server requires.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::authz::Requester;
use crate::patch::PatchOp;

pub const V1: &str = "admission.k8s.io/v1";
pub const V1BETA1: &str = "admission.k8s.io/v1beta1";
const KIND: &str = "AdmissionReview";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow)]
    request: Option<WireRequest<'a>>,
}

/// `userInfo` and `object` stay as the text the body holds: most reviews are answered from a
/// glance at the object's annotations, and decoding either into owned values can take many
/// times its size (see [`crate::survey`]), so that waits until the cost is known.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    uid: String,
    kind: WireKind,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
    #[serde(default, borrow)]
    user_info: Option<&'a RawValue>,
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
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

/// The parts of an admission request the injector reads, borrowing the body.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub api_version: String,
    pub uid: String,
    /// `request.kind.group` and `.kind` of the object under review.
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `request.userInfo` as sent; see [`Request::requester`].
    pub user_info: Option<&'a RawValue>,
    /// `request.object` as sent; `None` when absent or `null`.
    pub object: Option<&'a RawValue>,
}

impl Request<'_> {
    /// The requester from `userInfo` (empty when absent).
    pub fn requester(&self) -> Result<Requester, String> {
        let Some(raw) = self.user_info else {
            return Ok(Requester::default());
        };
        let user: WireUser = serde_json::from_str(raw.get()).map_err(|e| {
            format!(
                "could not decode the requester (userInfo): {}",
                without_position(&e)
            )
        })?;
        Ok(Requester {
            username: user.username,
            uid: user.uid,
            groups: user.groups,
        })
    }
}

/// A body that is not an AdmissionReview; answered with `allowed: false`, as upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The body's `apiVersion` when it named a known one, for the answer.
    pub api_version: Option<String>,
    pub message: String,
}

pub fn decode(body: &[u8]) -> Result<Request<'_>, DecodeError> {
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
        api_version: review.api_version,
        uid: request.uid,
        group: request.kind.group,
        kind: request.kind.kind,
        namespace: request.namespace,
        name: request.name,
        user_info: request.user_info,
        object: request.object,
    })
}

/// A serde_json error without its " at line L column C" suffix: positions in text the API
/// server wrote mean nothing to the user, and messages read the same as when decoded from a
/// value.
pub fn without_position(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&suffix) {
        Some(message) => message.to_owned(),
        None => full,
    }
}

/// Longest message or warning passed on or logged, in bytes. Decode errors quote the input and
/// warnings quote annotation values, which a client controls; the API server itself truncates
/// warnings over 256 characters ("Dynamic Admission Control", Kubernetes documentation), and
/// nobody reads a megabyte of them.
pub const MAX_MESSAGE: usize = 1024;

/// `text` cut to [`MAX_MESSAGE`] bytes at a character boundary, marked with "…" when cut.
pub fn clipped(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_MESSAGE {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<Cow<'a, str>>,
}

#[derive(Serialize)]
struct WireStatus<'a> {
    message: Cow<'a, str>,
}

/// The AdmissionReview answering request `uid` in `api_version`; the message and warnings are
/// [`clipped`].
pub fn encode(api_version: &str, uid: &str, answer: &Answer) -> Result<Vec<u8>, serde_json::Error> {
    let patch = match &answer.patch {
        // The ops are written straight into their base64 form: no copy of the patch as text.
        Some(ops) => {
            let mut base64 =
                base64::write::EncoderStringWriter::new(&base64::engine::general_purpose::STANDARD);
            serde_json::to_writer(&mut base64, ops)?;
            Some(base64.into_inner())
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
            status: answer.message.as_deref().map(|message| WireStatus {
                message: clipped(message),
            }),
            warnings: answer.warnings.iter().map(|w| clipped(w)).collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn both_admission_versions_decode_and_keep_their_version() {
        for version in [V1, V1BETA1] {
            let body = json!({
                "apiVersion": version, "kind": "AdmissionReview",
                "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "namespace": "ns", "userInfo": {"username": "x", "groups": ["g"]},
                            "object": {"metadata": {}}}
            });
            let bytes = serde_json::to_vec(&body).unwrap();
            let r = decode(&bytes).unwrap();
            assert_eq!(r.api_version, version);
            assert_eq!(r.kind, "Pod");
            assert_eq!(r.requester().unwrap().groups, ["g"]);
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

    #[test]
    fn the_object_and_the_requester_are_borrowed_from_the_body_until_needed() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"userInfo":{"groups":"not-a-list"},"object":{"a":[1, 2]}}}"#;
        let r = decode(body).unwrap();
        assert_eq!(r.object.map(RawValue::get), Some(r#"{"a":[1, 2]}"#));
        let e = r.requester().unwrap_err();
        assert!(
            e.ends_with("expected a sequence"),
            "no position in the message: {e}"
        );
        let null = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"object":null}}"#;
        let r = decode(null).unwrap();
        assert!(r.object.is_none());
        assert_eq!(r.requester().unwrap(), Requester::default());
    }

    #[test]
    fn long_messages_and_warnings_are_clipped_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let answer = Answer {
            allowed: false,
            message: Some(long.clone()),
            warnings: vec![long.clone(), "short".to_owned()],
            ..Answer::default()
        };
        let out: Value = serde_json::from_slice(&encode(V1, "u", &answer).unwrap()).unwrap();
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.len() <= MAX_MESSAGE + "…".len(),
            "{}",
            message.len()
        );
        assert!(message.ends_with('…'));
        assert_eq!(out["response"]["warnings"][0], message);
        assert_eq!(out["response"]["warnings"][1], "short");
    }
}
