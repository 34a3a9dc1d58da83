//! The real `injector` binary over HTTPS on loopback: a client that verifies the serving
//! certificate against its CA sends AdmissionReviews; the certificate is renewed on disk and
//! served without a restart; bad flags and missing env exit 64; SIGTERM stops it cleanly.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BOUND: Duration = Duration::from_secs(20);

/// A CA and a serving certificate for `localhost`/127.0.0.1 signed by it.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn new_pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// Replaces `path` atomically, as a Secret volume update does.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Injector {
    child: Child,
    webhook: SocketAddr,
    healthz: SocketAddr,
    metrics: SocketAddr,
    _dir: PathBuf,
}

fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_injector"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NAMESPACE", "dapr-system")
        .env("SIDECAR_IMAGE", "ghcr.io/dapr/daprd:1.18.3")
        .env("DAPR_TRUST_ANCHORS_FILE", dir.join("ca.crt"))
        // No cluster: the webhook serves with its offline defaults.
        .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
        .env("HOME", dir)
        .kill_on_drop(true);
    cmd
}

async fn start(dir: PathBuf, pki: &Pki) -> Injector {
    std::fs::write(dir.join("ca.crt"), &pki.ca_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &pki.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &pki.key_pem).unwrap();
    let mut child = command(&dir)
        .args(["--port", "0", "--listen-address", "127.0.0.1"])
        .args([
            "--healthz-port",
            "0",
            "--healthz-listen-address",
            "127.0.0.1",
        ])
        .args([
            "--metrics-port",
            "0",
            "--metrics-listen-address",
            "127.0.0.1",
        ])
        .arg("--log-as-json")
        .arg("--tls-cert-file")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.join("tls.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("injector starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut webhook, mut healthz, mut metrics) = (None, None, None);
    let deadline = Instant::now() + BOUND;
    while webhook.is_none() || healthz.is_none() || metrics.is_none() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(remaining, lines.next_line())
            .await
            .expect("the injector logs its listeners in time")
            .unwrap()
            .expect("the injector is still running");
        let Ok(log) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let address = log["address"]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok());
        match log["server"].as_str() {
            Some("webhook") => webhook = address,
            Some("healthz") => healthz = address,
            Some("metrics") => metrics = address,
            _ => {}
        }
    }
    // Keep draining the logs so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Injector {
        child,
        webhook: webhook.unwrap(),
        healthz: healthz.unwrap(),
        metrics: metrics.unwrap(),
        _dir: dir,
    }
}

fn client_config(trusted: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// One HTTPS request that verifies the server's certificate for `localhost`.
async fn https(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(client_config(trusted));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body.to_vec()))
}

fn mutate(body: Vec<u8>) -> http::Request<Full<Bytes>> {
    http::Request::post("/mutate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn fixture(name: &str) -> Vec<u8> {
    let path = common::manifest_dir()
        .join("tests/golden")
        .join(name)
        .join("review.json");
    std::fs::read(path).unwrap()
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

async fn stop(injector: &mut Injector) {
    let pid = injector.child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(BOUND, injector.child.wait())
        .await
        .expect("the injector stops within the bound after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
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
