//! The real `injector` binary on loopback without a cluster: a test CA and serving certificate,
//! start-up that learns the listeners from the JSON logs, HTTPS requests that verify the
//! certificate, and a clean SIGTERM stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long start-up, a stop and a certificate reload may take.
pub const BOUND: Duration = Duration::from_secs(20);

/// Log lines are kept up to this length: enough for a message and its fields.
const KEPT_LOG_LINE: usize = 2048;

/// A CA and a serving certificate for `localhost`/127.0.0.1 signed by it.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn new_pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
    leaf.subject_alt_names.push(rcgen::SanType::IpAddress(
        "127.0.0.1".parse().expect("loopback"),
    ));
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

pub struct Injector {
    pub child: Child,
    pub webhook: SocketAddr,
    pub healthz: SocketAddr,
    pub metrics: SocketAddr,
    /// Every log line after start-up (each cut to [`KEPT_LOG_LINE`]).
    pub logs: Arc<Mutex<Vec<String>>>,
    _dir: PathBuf,
}

impl Injector {
    /// Log lines whose JSON `message` contains `text`.
    pub fn log_lines_with(&self, text: &str) -> Vec<String> {
        let logs = self.logs.lock().expect("log lines");
        logs.iter()
            .filter(|line| {
                serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|log| log["message"].as_str().map(|m| m.contains(text)))
                    .unwrap_or(false)
            })
            .cloned()
            .collect()
    }
}

pub fn command(dir: &Path) -> Command {
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

pub async fn start(dir: PathBuf, pki: &Pki) -> Injector {
    std::fs::write(dir.join("ca.crt"), &pki.ca_pem).expect("ca.crt");
    std::fs::write(dir.join("tls.crt"), &pki.cert_pem).expect("tls.crt");
    std::fs::write(dir.join("tls.key"), &pki.key_pem).expect("tls.key");
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
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let (mut webhook, mut healthz, mut metrics) = (None, None, None);
    let deadline = Instant::now() + BOUND;
    while webhook.is_none() || healthz.is_none() || metrics.is_none() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(remaining, lines.next_line())
            .await
            .expect("the injector logs its listeners in time")
            .expect("readable logs")
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
    let logs = Arc::new(Mutex::new(Vec::new()));
    let kept = logs.clone();
    tokio::spawn(async move {
        while let Ok(Some(mut line)) = lines.next_line().await {
            if line.len() > KEPT_LOG_LINE {
                let mut end = KEPT_LOG_LINE;
                while !line.is_char_boundary(end) {
                    end -= 1;
                }
                line.truncate(end);
            }
            if let Ok(mut kept) = kept.lock() {
                kept.push(line);
            }
        }
    });
    Injector {
        child,
        webhook: webhook.expect("webhook address"),
        healthz: healthz.expect("healthz address"),
        metrics: metrics.expect("metrics address"),
        logs,
        _dir: dir,
    }
}

pub fn client_config(trusted: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("trusted CA");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// One HTTPS request that verifies the server's certificate for `localhost`.
pub async fn https(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Vec<u8>), String> {
    https_with(addr, client_config(trusted), request).await
}

/// [`https`] with a client configuration made once.
pub async fn https_with(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("server name"), tcp)
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

/// `POST /mutate` with `body` as JSON.
pub fn mutate(body: Vec<u8>) -> http::Request<Full<Bytes>> {
    mutate_as("application/json", body)
}

pub fn mutate_as(content_type: &str, body: Vec<u8>) -> http::Request<Full<Bytes>> {
    http::Request::post("/mutate")
        .header("host", "localhost")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

pub async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A golden fixture's AdmissionReview, as committed.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = super::manifest_dir()
        .join("tests/golden")
        .join(name)
        .join("review.json");
    std::fs::read(path).expect("fixture")
}

/// Sends SIGTERM and expects a clean exit within [`BOUND`].
pub async fn stop(injector: &mut Injector) {
    let pid = injector.child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = tokio::time::timeout(BOUND, injector.child.wait())
        .await
        .expect("the injector stops within the bound after SIGTERM")
        .expect("exit status");
    assert!(exit.success(), "{exit:?}");
}
