//! The webhook's HTTP contract for bodies that are not a usable AdmissionReview (upstream's
//! answers: 400, 415, or `allowed: false` with the decode error), its own limits (413 over the
//! body limit, a rejection for a pod too large to decode, a turn for each review in flight) and
//! its metrics.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use common::{ClusterFixture, post, read_json, router};
use futures::StreamExt;
use futures::channel::mpsc;
use http_body_util::BodyExt;
use injector::webhook::{MAX_BODY, MAX_IN_FLIGHT};
use serde_json::Value;
use tower::ServiceExt;

/// Bound on every wait in these tests.
const BOUND: Duration = Duration::from_secs(10);

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

/// A valid review padded with whitespace to exactly `len` bytes.
fn review_of_length(len: usize) -> Vec<u8> {
    let mut body = fixture("01-basic-deployment-pod");
    assert!(body.len() <= len);
    body.resize(len, b' ');
    body
}

type Chunks = mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

/// A body fed by the returned sender, and a signal sent when the webhook first reads it.
fn fed_body() -> (Body, Chunks, tokio::sync::oneshot::Receiver<()>) {
    let (chunks, mut rx) = mpsc::unbounded();
    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let mut read_tx = Some(read_tx);
    let stream = futures::stream::poll_fn(move |cx| {
        if let Some(signal) = read_tx.take() {
            let _ = signal.send(());
        }
        rx.poll_next_unpin(cx)
    });
    (Body::from_stream(stream), chunks, read_rx)
}

fn mutate_request(body: Body) -> http::Request<Body> {
    http::Request::post("/mutate")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

async fn status_and_body(router: &axum::Router, request: http::Request<Body>) -> (u16, Vec<u8>) {
    let response = tokio::time::timeout(BOUND, router.clone().oneshot(request))
        .await
        .expect("answered within the bound")
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_a_413_naming_the_limit() {
    let (router, _) = router(&[], fixed_cluster());
    let (status, _) = post(&router, "application/json", review_of_length(MAX_BODY)).await;
    assert_eq!(status, 200);

    let over = review_of_length(MAX_BODY + 1);
    let declared = http::Request::post("/mutate")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, over.len())
        .body(Body::from(over.clone()))
        .unwrap();
    let (status, body) = status_and_body(&router, declared).await;
    assert_eq!(status, 413);
    assert!(
        String::from_utf8_lossy(&body).contains(&MAX_BODY.to_string()),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // Without a declared length the limit is found while reading.
    let (body, chunks, _) = fed_body();
    for chunk in over.chunks(64 * 1024) {
        chunks
            .unbounded_send(Ok(Bytes::copy_from_slice(chunk)))
            .unwrap();
    }
    drop(chunks);
    let (status, _) = status_and_body(&router, mutate_request(body)).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn a_pod_too_large_to_decode_is_rejected_before_decoding_and_names_the_limit() {
    let (router, _) = router(&[], fixed_cluster());
    let mut review =
        read_json(&common::manifest_dir().join("tests/golden/01-basic-deployment-pod/review.json"));
    let containers: Vec<Value> = (0..5000)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "image": "i"}))
        .collect();
    review["request"]["object"]["spec"]["containers"] = Value::Array(containers);
    let (status, body) = post(
        &router,
        "application/json",
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("too large") && message.contains("16 MiB"),
        "{message}"
    );
}

#[tokio::test]
async fn junk_nested_too_deep_does_not_stop_a_pod_that_does_not_ask_for_a_sidecar() {
    let (router, _) = router(&[], fixed_cluster());
    let deep = format!("{}0{}", "[".repeat(10_000), "]".repeat(10_000));
    for (case, allowed) in [("03-not-enabled", true), ("01-basic-deployment-pod", false)] {
        let text = String::from_utf8(fixture(case)).unwrap();
        let body = text.replacen(r#""spec":{"#, &format!(r#""spec":{{"junk":{deep},"#), 1);
        assert_ne!(body, text);
        let (status, answer) = post(&router, "application/json", body.into_bytes()).await;
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], allowed, "{case}: {answer}");
    }
}

#[tokio::test]
async fn reviews_beyond_the_in_flight_limit_wait_for_a_turn_and_are_then_answered() {
    let (router, _) = router(&[], fixed_cluster());
    let router = Arc::new(router);
    let review = fixture("01-basic-deployment-pod");
    let mut holders = Vec::new();
    for _ in 0..MAX_IN_FLIGHT {
        let (body, chunks, read) = fed_body();
        let router = router.clone();
        let answer =
            tokio::spawn(async move { status_and_body(&router, mutate_request(body)).await });
        tokio::time::timeout(BOUND, read)
            .await
            .expect("a review within the limit is read at once")
            .unwrap();
        holders.push((chunks, answer));
    }

    let (body, chunks, mut read) = fed_body();
    let waiting = {
        let router = router.clone();
        tokio::spawn(async move { status_and_body(&router, mutate_request(body)).await })
    };
    // On this single-threaded runtime the waiting review runs at each yield; with a turn free
    // it would reach its body in a few.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        read.try_recv().is_err(),
        "the review over the limit waits for a turn"
    );

    let (first, answer) = holders.remove(0);
    first
        .unbounded_send(Ok(Bytes::from(review.clone())))
        .unwrap();
    drop(first);
    assert_eq!(answer.await.unwrap().0, 200);
    tokio::time::timeout(BOUND, read)
        .await
        .expect("the waiting review is read once a turn frees")
        .unwrap();
    chunks
        .unbounded_send(Ok(Bytes::from(review.clone())))
        .unwrap();
    drop(chunks);
    assert_eq!(waiting.await.unwrap().0, 200);
    for (chunks, answer) in holders {
        chunks
            .unbounded_send(Ok(Bytes::from(review.clone())))
            .unwrap();
        drop(chunks);
        assert_eq!(answer.await.unwrap().0, 200);
    }
}
