//! The one harness for the real `sentry` binary on loopback (the mTLS, injector and cluster
//! suites, and `sentry_process.rs`): start it with [`Launch`] (free ports, its log next to the
//! credentials directory), wait until `/healthz` answers, read its addresses, credentials, log
//! and metrics, kill it on drop; run it to exit for exit codes; and talk to it as daprd does
//! (gRPC over rustls, sentry's SPIFFE id checked against the trust anchors).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use dapr_identity::tls::{ExpectedId, client_config, root_store};
use dapr_proto::sentry::v1::ca_client::CaClient;
use dapr_proto::sentry::v1::{SignCertificateRequest, SignCertificateResponse};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tonic::transport::Channel;

use crate::sidecar::{HttpClient, binary, free_port, wait_ready};

/// How long [`Sentry::start`] waits for `/healthz`.
const START: Duration = Duration::from_secs(20);

/// Writes sentry's Configuration (`sentry-config.yaml`) into `dir`: mTLS on, workload
/// certificates living `ttl` with `skew` of allowed clock skew. Returns its path.
pub fn config_file(dir: &Path, ttl: &str, skew: &str) -> anyhow::Result<PathBuf> {
    let config = dir.join("sentry-config.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: daprsystem\nspec:\n  mtls:\n    enabled: true\n    workloadCertTTL: {ttl}\n    allowedClockSkew: {skew}\n"
        ),
    )?;
    Ok(config)
}

/// The serving flags: credentials in `creds`, gRPC on `listen:port`, healthz on
/// `listen:healthz_port`, metrics on `listen:port` or disabled.
fn serving_flags(
    creds: &Path,
    listen: &str,
    port: u16,
    healthz_port: u16,
    metrics_port: Option<u16>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--issuer-credentials".into(), creds.into()];
    let mut flags = vec![
        ("--listen-address", listen.to_owned()),
        ("--port", port.to_string()),
        ("--healthz-listen-address", listen.to_owned()),
        ("--healthz-port", healthz_port.to_string()),
    ];
    if let Some(metrics) = metrics_port {
        flags.push(("--metrics-listen-address", listen.to_owned()));
        flags.push(("--metrics-port", metrics.to_string()));
    }
    for (flag, value) in flags {
        args.extend([flag.into(), value.into()]);
    }
    if metrics_port.is_none() {
        args.push("--enable-metrics=false".into());
    }
    args
}

/// The flags of a sentry serving on `listen:port` with its credentials in `dir/creds`
/// (generated on first start), its Configuration from [`config_file`] and no metrics (for a
/// sentry started some other way, e.g. in a network namespace).
pub fn args(
    dir: &Path,
    listen: &str,
    port: u16,
    healthz_port: u16,
    ttl: &str,
    skew: &str,
) -> anyhow::Result<Vec<OsString>> {
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds)?;
    let config = config_file(dir, ttl, skew)?;
    let mut args = serving_flags(&creds, listen, port, healthz_port, None);
    args.extend(["--config".into(), config.into()]);
    Ok(args)
}

/// How to start a sentry on 127.0.0.1: the binary, its credentials directory, ports, log file,
/// extra flags and environment. `NAMESPACE` is unset unless [`Launch::env`] sets it.
pub struct Launch {
    program: PathBuf,
    creds: PathBuf,
    log: PathBuf,
    port: u16,
    healthz_port: u16,
    metrics_port: Option<u16>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Launch {
    /// `target/debug/sentry` with its credentials in `creds` (generated there on first start
    /// when absent), gRPC and healthz on free ports, metrics disabled, the log
    /// `sentry-<port>.log` next to `creds`.
    pub fn new(creds: &Path) -> anyhow::Result<Launch> {
        let port = free_port()?;
        let log = creds
            .parent()
            .context("the credentials directory has no parent")?
            .join(format!("sentry-{port}.log"));
        Ok(Launch {
            program: binary("sentry"),
            creds: creds.to_path_buf(),
            log,
            port,
            healthz_port: free_port()?,
            metrics_port: None,
            args: Vec::new(),
            env: Vec::new(),
        })
    }

    /// Another binary with the same flags (upstream's sentry).
    pub fn program(mut self, program: &Path) -> Self {
        self.program = program.to_path_buf();
        self
    }

    /// The gRPC port (to start sentry after its clients); the log is named after it.
    pub fn port(mut self, port: u16) -> Self {
        if let Some(dir) = self.log.parent() {
            self.log = dir.join(format!("sentry-{port}.log"));
        }
        self.port = port;
        self
    }

    pub fn log(mut self, log: &Path) -> Self {
        self.log = log.to_path_buf();
        self
    }

    /// Metrics served on a free port.
    pub fn metrics(mut self) -> anyhow::Result<Self> {
        self.metrics_port = Some(free_port()?);
        Ok(self)
    }

    /// The Configuration of [`config_file`] written into `dir`, and the credentials directory
    /// created.
    pub fn config(self, dir: &Path, ttl: &str, skew: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&self.creds)?;
        let config = config_file(dir, ttl, skew)?;
        Ok(self.args([OsString::from("--config"), config.into()]))
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the process without waiting for it.
    pub fn spawn(self) -> anyhow::Result<Sentry> {
        let out = std::fs::File::create(&self.log)
            .with_context(|| format!("create {}", self.log.display()))?;
        let child = tokio::process::Command::new(&self.program)
            .args(serving_flags(
                &self.creds,
                "127.0.0.1",
                self.port,
                self.healthz_port,
                self.metrics_port,
            ))
            .args(&self.args)
            .env_remove("NAMESPACE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", self.program.display()))?;
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Ok(Sentry {
            child,
            addr: local(self.port),
            healthz: local(self.healthz_port),
            metrics: self.metrics_port.map(local),
            creds: self.creds,
            log: self.log,
        })
    }

    /// [`Launch::spawn`], then [`Sentry::wait_healthy`] for at most `within`.
    pub async fn start(self, within: Duration) -> anyhow::Result<Sentry> {
        let mut sentry = self.spawn()?;
        sentry.wait_healthy(within).await?;
        Ok(sentry)
    }
}

/// A running sentry; killed when dropped.
pub struct Sentry {
    pub child: tokio::process::Child,
    /// The gRPC (CA service) address.
    pub addr: SocketAddr,
    pub healthz: SocketAddr,
    /// `None` when started with metrics disabled.
    pub metrics: Option<SocketAddr>,
    /// The credentials directory (`ca.crt`, `issuer.crt`, `issuer.key`).
    pub creds: PathBuf,
    pub log: PathBuf,
}

impl Sentry {
    /// Starts sentry in `dir` (credentials in `dir/creds`) with workload certificates living
    /// `ttl` with `skew` of allowed clock skew, and waits (bounded) for `/healthz`.
    pub async fn start(dir: &Path, ttl: &str, skew: &str) -> anyhow::Result<Sentry> {
        Launch::new(&dir.join("creds"))?
            .config(dir, ttl, skew)?
            .start(START)
            .await
    }

    /// Like [`Sentry::start`] on a given port (to start it after its clients).
    pub async fn start_on(dir: &Path, port: u16, ttl: &str, skew: &str) -> anyhow::Result<Sentry> {
        Launch::new(&dir.join("creds"))?
            .port(port)
            .config(dir, ttl, skew)?
            .start(START)
            .await
    }

    /// Upstream Dapr's sentry (`binary`, built by scripts/test.sh) in standalone mode with the
    /// same flags, Configuration and credentials layout: it generates its own CA (ECDSA P-256)
    /// into `dir/creds`. Upstream reloads (restarting its servers) when it sees the files it has
    /// just written, so the first run only generates them; the second serves.
    pub async fn start_upstream(
        binary: &Path,
        dir: &Path,
        ttl: &str,
        skew: &str,
    ) -> anyhow::Result<Sentry> {
        let launch = || -> anyhow::Result<Launch> {
            Ok(Launch::new(&dir.join("creds"))?
                .program(binary)
                .config(dir, ttl, skew)?
                // Upstream names its own SPIFFE id's namespace from the environment.
                .env("NAMESPACE", "default"))
        };
        let first = launch()?.start(START).await?;
        drop(first);
        launch()?.start(START).await
    }

    /// Polls `/healthz` until it answers 200, for at most `within`; fails at once, with the
    /// log, if sentry exits.
    pub async fn wait_healthy(&mut self, within: Duration) -> anyhow::Result<()> {
        let healthz = self.healthz;
        wait_ready(
            &mut self.child,
            "sentry",
            &self.log,
            within,
            Duration::from_millis(50),
            || async move { matches!(http_get(healthz, "/healthz").await, Some((200, _))) },
        )
        .await
    }

    /// Waits (at most `within`) for the process to exit on its own.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "sentry did not exit within {within:?}:\n{}",
                self.log_text()
            ),
        }
    }

    /// Waits (at most `within`) until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !self.log_text().contains(needle) {
            if Instant::now() > deadline {
                bail!("{needle:?} never logged:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The trust anchors file, `ca.crt`.
    pub fn trust_anchors(&self) -> PathBuf {
        self.creds.join("ca.crt")
    }

    /// The trust anchors (PEM).
    pub fn anchors_pem(&self) -> anyhow::Result<Vec<u8>> {
        Ok(std::fs::read(self.trust_anchors())?)
    }

    /// A CA client that verifies sentry's id is `expected`, against `ca.crt`.
    pub async fn client(&self, expected: &str) -> anyhow::Result<CaClient<Channel>> {
        connect(self.addr, &self.anchors_pem()?, expected).await
    }

    /// The metrics page (sentry started with [`Launch::metrics`]).
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let metrics = self.metrics.context("sentry serves no metrics")?;
        match http_get(metrics, "/metrics").await {
            Some((200, body)) => Ok(body),
            other => Err(anyhow!("metrics: {other:?}")),
        }
    }

    /// The flags and env a daprd needs to get its identity from this sentry.
    pub fn sidecar_options(&self) -> (Vec<String>, Vec<(String, String)>) {
        sidecar_options(&self.addr.to_string(), &self.trust_anchors())
    }
}

/// Runs `target/debug/sentry` with `args` to completion: (status, stdout + stderr). No
/// `NAMESPACE`, and no Kubernetes API for kubernetes mode to find.
pub fn run_to_exit(args: &[&str]) -> anyhow::Result<(ExitStatus, String)> {
    let out = std::process::Command::new(binary("sentry"))
        .args(args)
        .env_remove("NAMESPACE")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status, text))
}

/// The flags and env of a daprd that gets its identity from the sentry at `address`, trusting
/// the roots in the file `anchors`.
pub fn sidecar_options(address: &str, anchors: &Path) -> (Vec<String>, Vec<(String, String)>) {
    (
        vec![
            "--enable-mtls".into(),
            "--sentry-address".into(),
            address.to_owned(),
            "--control-plane-trust-domain".into(),
            "localhost".into(),
        ],
        vec![(
            "DAPR_TRUST_ANCHORS_FILE".into(),
            anchors.display().to_string(),
        )],
    )
}

/// A certificate for a test client that is not a daprd (to act as a peer with a real identity).
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    pub anchors: Arc<rustls::RootCertStore>,
}

impl Sentry {
    /// Asks this sentry (insecure validator) for a certificate for `app_id` in `default`.
    pub async fn issue(&self, app_id: &str) -> anyhow::Result<ClientIdentity> {
        let anchors = Arc::new(root_store(&self.anchors_pem()?)?);
        let request = dapr_identity::client::SvidRequest {
            sentry_address: self.addr.to_string(),
            sentry_id: dapr_identity::spiffe::SpiffeId::new("localhost", "default", "dapr-sentry")?,
            id: app_id.into(),
            namespace: "default".into(),
            token: String::new(),
            validator: 0,
        };
        let svid = dapr_identity::client::request(
            &request,
            &anchors,
            dapr_identity::client::KeyAlgorithm::Ed25519,
        )
        .await?;
        Ok(ClientIdentity {
            chain: svid.chain,
            key: svid.key,
            anchors,
        })
    }
}

/// A gRPC channel to `addr` over TLS with `config` (no name check: the config's verifier
/// checks SPIFFE ids).
pub async fn tls_channel(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Channel> {
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::from(addr.ip()), tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .connect_with_connector(connector)
            .await?,
    )
}

/// A client config that trusts `anchors_pem` and accepts only the server id `expected`.
pub fn tls_config(anchors_pem: &[u8], expected: &str) -> anyhow::Result<rustls::ClientConfig> {
    Ok(client_config(
        Arc::new(root_store(anchors_pem)?),
        ExpectedId::Exact(expected.parse()?),
    )?)
}

/// A CA client over rustls that accepts only the server id `expected`; the error of a refused
/// handshake names both ids (every cause, with its details).
pub async fn connect(
    addr: SocketAddr,
    anchors_pem: &[u8],
    expected: &str,
) -> anyhow::Result<CaClient<Channel>> {
    let channel = tls_channel(addr, Arc::new(tls_config(anchors_pem, expected)?))
        .await
        .map_err(|e| {
            let causes: Vec<String> = e.chain().map(|c| format!("{c} ({c:?})")).collect();
            anyhow!("{}", causes.join(": "))
        })?;
    Ok(CaClient::new(channel))
}

/// The certificate chain sentry presents in a fresh TLS handshake.
pub async fn served_chain(
    addr: SocketAddr,
    anchors_pem: &[u8],
    expected: &str,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
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

/// A sign request for `id` in `namespace` with the CSR `csr_pem` (no validator named).
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

/// The `CERTIFICATE` blocks of `pem`; at least one.
pub fn certs(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(dapr_identity::pem::certs_from_pem(pem)?)
}

/// A GET of `http://addr/path`: (status, body), or None if nothing answers within 5 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let (client, url) = (HttpClient::new(), format!("http://{addr}{path}"));
    let reply = tokio::time::timeout(Duration::from_secs(5), client.get(&url))
        .await
        .ok()?
        .ok()?;
    Some((
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    ))
}
