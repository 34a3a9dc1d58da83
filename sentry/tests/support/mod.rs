//! Runs the real `sentry` binary on loopback and talks to it as daprd would: gRPC over rustls,
//! verifying sentry's SPIFFE id against the trust anchors.

#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use dapr_identity::tls::{ExpectedId, client_config, root_store};
use dapr_proto::sentry::v1::ca_client::CaClient;
use dapr_proto::sentry::v1::{SignCertificateRequest, SignCertificateResponse};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// Every wait in these tests ends by this deadline.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running sentry process; killed on drop.
pub struct Sentry {
    child: Child,
    pub grpc: SocketAddr,
    pub healthz: SocketAddr,
    pub metrics: SocketAddr,
    pub creds: PathBuf,
    log: PathBuf,
}

#[derive(Default)]
pub struct Options<'a> {
    pub args: Vec<String>,
    pub namespace: Option<&'a str>,
}

impl Sentry {
    /// Starts sentry with its credentials in `creds` and its log next to that directory.
    pub fn start(creds: &Path, options: Options<'_>) -> anyhow::Result<Sentry> {
        let (grpc, healthz, metrics) = (free_port()?, free_port()?, free_port()?);
        let log = creds
            .parent()
            .context("the credentials directory has no parent")?
            .join(format!("sentry-{grpc}.log"));
        let out = File::create(&log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sentry"));
        cmd.arg("--issuer-credentials")
            .arg(creds)
            .args(["--listen-address", "127.0.0.1", "--port", &grpc.to_string()])
            .args(["--healthz-listen-address", "127.0.0.1"])
            .args(["--healthz-port", &healthz.to_string()])
            .args(["--metrics-listen-address", "127.0.0.1"])
            .args(["--metrics-port", &metrics.to_string()])
            .args(["--log-level", "debug"])
            .args(&options.args)
            .env_remove("NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out));
        if let Some(ns) = options.namespace {
            cmd.env("NAMESPACE", ns);
        }
        let child = cmd.spawn()?;
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Ok(Sentry {
            child,
            grpc: local(grpc),
            healthz: local(healthz),
            metrics: local(metrics),
            creds: creds.to_path_buf(),
            log,
        })
    }

    /// [`Sentry::start`], then [`Sentry::wait_ready`].
    pub async fn start_ready(creds: &Path, options: Options<'_>) -> anyhow::Result<Sentry> {
        let mut sentry = Sentry::start(creds, options)?;
        sentry.wait_ready().await?;
        Ok(sentry)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls /healthz until it answers 200; fails with the logs if sentry exits first or the
    /// deadline passes.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(anyhow!(
                    "sentry exited with {status} before serving:\n{}",
                    self.logs()
                ));
            }
            if let Some((200, _)) = http_get(self.healthz, "/healthz").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(anyhow!("sentry not ready in time:\n{}", self.logs()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(anyhow!("sentry did not exit:\n{}", self.logs()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + DEADLINE;
        while !self.logs().contains(needle) {
            if Instant::now() > deadline {
                return Err(anyhow!("{needle:?} never logged:\n{}", self.logs()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn trust_anchors(&self) -> anyhow::Result<Vec<u8>> {
        Ok(std::fs::read(self.creds.join("ca.crt"))?)
    }

    /// A client that verifies sentry's id against `ca.crt`.
    pub async fn client(&self, expected: &str) -> anyhow::Result<CaClient<Channel>> {
        connect(self.grpc, &self.trust_anchors()?, expected).await
    }

    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        match http_get(self.metrics, "/metrics").await {
            Some((200, body)) => Ok(body),
            other => Err(anyhow!("metrics: {other:?}")),
        }
    }
}

impl Drop for Sentry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with `args`: (status, stdout + stderr).
pub fn run_to_exit(args: &[&str]) -> anyhow::Result<(ExitStatus, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_sentry"))
        .args(args)
        .env_remove("NAMESPACE")
        // No API server for kubernetes mode to find.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status, text))
}

/// A gRPC client over rustls that accepts only the server id `expected`; the error chain of a
/// refused handshake names both ids.
pub async fn connect(
    addr: SocketAddr,
    anchors_pem: &[u8],
    expected: &str,
) -> anyhow::Result<CaClient<Channel>> {
    let config = Arc::new(tls_config(anchors_pem, expected)?);
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = config.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::from(addr.ip()), tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let channel = Endpoint::from_static("http://dapr-sentry.invalid")
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
        .map_err(|e| anyhow!("{e}: {:?}", std::error::Error::source(&e)))?;
    Ok(CaClient::new(channel))
}

pub fn tls_config(anchors_pem: &[u8], expected: &str) -> anyhow::Result<rustls::ClientConfig> {
    Ok(client_config(
        Arc::new(root_store(anchors_pem)?),
        ExpectedId::Exact(expected.parse()?),
    )?)
}

/// The certificate chain sentry presents in a fresh TLS handshake.
pub async fn served_chain(
    addr: SocketAddr,
    anchors_pem: &[u8],
    expected: &str,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(anchors_pem, expected)?))
        .connect(ServerName::from(addr.ip()), tcp)
        .await?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .context("no server certificate")?;
    Ok(certs.to_vec())
}

/// A daprd-like CSR: empty subject, the given key.
pub fn csr(key: &KeyPair) -> anyhow::Result<String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    Ok(params.serialize_request(key)?.pem()?)
}

pub fn request(id: &str, namespace: &str, csr_pem: &str) -> SignCertificateRequest {
    SignCertificateRequest {
        id: id.into(),
        namespace: namespace.into(),
        certificate_signing_request: csr_pem.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

pub async fn sign(
    client: &mut CaClient<Channel>,
    req: SignCertificateRequest,
) -> Result<SignCertificateResponse, tonic::Status> {
    client.sign_certificate(req).await.map(|r| r.into_inner())
}

/// A bare HTTP/1.0 GET: (status, body), or None if nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

pub fn certs(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    sentry::ca::certs_from_pem(pem).map_err(|e| anyhow!(e))
}
