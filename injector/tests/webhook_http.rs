//! The webhook's HTTP contract for bodies that are not a usable AdmissionReview (upstream's
//! answers: 400, 415, or `allowed: false` with the decode error) and its metrics.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ClusterFixture, post, read_json, router};
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = common::manifest_dir()
        .join("tests/golden")
        .join(name)
        .join("review.json");
    serde_json::to_vec(&read_json(&path)).unwrap()
}

fn fixed_cluster() -> ClusterFixture {
    ClusterFixture {
        trust_anchors: Some(common::TRUST_ANCHORS.to_owned()),
        ..ClusterFixture::default()
    }
}

#[tokio::test]
async fn an_empty_body_is_a_plain_400() {
    let (router, _) = router(&[], fixed_cluster());
    let (status, body) = post(&router, "application/json", Vec::new()).await;
    assert_eq!(status, 400);
    assert_eq!(body, b"empty body");
}

#[tokio::test]
async fn a_content_type_other_than_exactly_application_json_is_a_415() {
    let (router, _) = router(&[], fixed_cluster());
    for content_type in ["text/plain", "application/json; charset=utf-8", ""] {
        let (status, body) = post(&router, content_type, fixture("01-basic-deployment-pod")).await;
        assert_eq!(status, 415, "{content_type}");
        assert!(String::from_utf8_lossy(&body).contains("application/json"));
    }
}

#[tokio::test]
async fn a_body_that_is_not_an_admission_review_is_answered_not_allowed() {
    let (router, _) = router(&[], fixed_cluster());
    for body in [
        &b"{not json"[..],
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        let (status, answer) = post(&router, "application/json", body.to_vec()).await;
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["response"]["allowed"], false);
        assert!(
            answer["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("AdmissionReview")
        );
    }
}

#[tokio::test]
async fn injections_rejections_and_skips_are_counted_under_upstreams_metric_names() {
    let (router, metrics) = router(&[], fixed_cluster());
    for case in [
        "01-basic-deployment-pod",
        "12-invalid-app-id-uppercase",
        "07-requester-not-allowed",
        "03-not-enabled",
    ] {
        let (status, _) = post(&router, "application/json", fixture(case)).await;
        assert_eq!(status, 200);
    }
    let text = metrics.render();
    assert!(
        text.contains("dapr_injector_sidecar_injection_requests_total 4"),
        "{text}"
    );
    assert!(
        text.contains(r#"dapr_injector_sidecar_injection_succeeded_total{app_id="orders"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"dapr_injector_sidecar_injection_failed_total{app_id="Orders",reason="patch"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"dapr_injector_sidecar_injection_failed_total{app_id="orders",reason="pod_patch"} 1"#
        ),
        "{text}"
    );
}
