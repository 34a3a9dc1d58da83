//! The real `injector` binary over HTTPS on loopback: a client that verifies the serving
//! certificate against its CA sends AdmissionReviews; the certificate is renewed on disk and
//! served without a restart; bad flags and missing env exit 64; SIGTERM stops it cleanly.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::process::{BOUND, command, fixture, https, mutate, new_pki, plain_get, start, stop};
use serde_json::Value;

/// Replaces `path` atomically, as a Secret volume update does.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn the_binary_answers_admission_reviews_over_https_with_a_certificate_the_client_verifies() {
    let pki = new_pki("injector test CA");
    let mut injector = start(common::scratch("binary-https"), &pki).await;

    let (status, body) = https(
        injector.webhook,
        &pki.ca_der,
        mutate(fixture("01-basic-deployment-pod")),
    )
    .await
    .expect("verified HTTPS request");
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    let daprd = ops
        .iter()
        .find(|op| op["path"] == "/spec/containers/-")
        .unwrap();
    let anchors = daprd["value"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DAPR_TRUST_ANCHORS")
        .unwrap();
    assert_eq!(
        anchors["value"],
        pki.ca_pem.as_str(),
        "the trust anchors file is injected"
    );

    let (status, _) = plain_get(injector.healthz, "/healthz").await;
    assert_eq!(status, 200, "ready without a cluster");
    let (status, text) = plain_get(injector.metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("dapr_injector_sidecar_injection_requests_total 1"),
        "{text}"
    );
    assert!(
        text.contains(r#"dapr_injector_sidecar_injection_succeeded_total{app_id="orders"} 1"#),
        "{text}"
    );

    let other = new_pki("some other CA");
    let refused = https(
        injector.webhook,
        &other.ca_der,
        mutate(fixture("01-basic-deployment-pod")),
    )
    .await;
    assert!(
        refused.is_err_and(|e| e.starts_with("TLS")),
        "a client that does not trust our CA is refused"
    );

    stop(&mut injector).await;
}

#[tokio::test]
async fn a_renewed_serving_certificate_is_served_without_a_restart() {
    let first = new_pki("first CA");
    let dir = common::scratch("binary-renewal");
    let mut injector = start(dir.clone(), &first).await;
    https(
        injector.webhook,
        &first.ca_der,
        mutate(fixture("03-not-enabled")),
    )
    .await
    .expect("first certificate served");

    let second = new_pki("second CA");
    write_atomically(&dir.join("tls.key"), &second.key_pem);
    write_atomically(&dir.join("tls.crt"), &second.cert_pem);
    let deadline = Instant::now() + BOUND;
    loop {
        match https(
            injector.webhook,
            &second.ca_der,
            mutate(fixture("03-not-enabled")),
        )
        .await
        {
            Ok((status, _)) => {
                assert_eq!(status, 200);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the renewed certificate was not served within {BOUND:?}: {e}"),
        }
    }
    assert!(
        https(
            injector.webhook,
            &first.ca_der,
            mutate(fixture("03-not-enabled"))
        )
        .await
        .is_err(),
        "the old certificate is no longer served"
    );
    stop(&mut injector).await;
}

#[tokio::test]
async fn bad_flags_and_missing_configuration_exit_64() {
    let dir = common::scratch("binary-exit-codes");
    let bad_flag = command(&dir).arg("--no-such-flag").output().await.unwrap();
    assert_eq!(bad_flag.status.code(), Some(64));

    let no_image = command(&dir)
        .env_remove("SIDECAR_IMAGE")
        .args(["--tls-cert-file", "a", "--tls-key-file", "b"])
        .output()
        .await
        .unwrap();
    assert_eq!(no_image.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&no_image.stderr).contains("SIDECAR_IMAGE"));

    // Without either file the certificate comes from sentry; with only one it is a mistake.
    let half = command(&dir)
        .args(["--tls-cert-file", "a"])
        .output()
        .await
        .unwrap();
    assert_eq!(half.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&half.stderr).contains("together"));
}

#[tokio::test]
async fn an_unreadable_serving_certificate_is_a_runtime_failure() {
    let dir = common::scratch("binary-no-cert");
    let out = command(&dir)
        .args([
            "--port",
            "0",
            "--healthz-port",
            "0",
            "--enable-metrics=false",
        ])
        .arg("--tls-cert-file")
        .arg(dir.join("missing.crt"))
        .arg("--tls-key-file")
        .arg(dir.join("missing.key"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
