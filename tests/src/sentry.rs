//! The real `sentry` binary on loopback, for the mTLS suites: it generates its CA into a
//! directory whose `ca.crt` the sidecars trust.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::sidecar::{HttpClient, binary, free_port};

/// The flags of a sentry serving on `listen:port` with its credentials in `dir/creds`
/// (generated on first start) and workload certificates living `ttl` with `skew` of allowed
/// clock skew; writes its Configuration file into `dir`.
pub fn args(
    dir: &Path,
    listen: &str,
    port: u16,
    healthz_port: u16,
    ttl: &str,
    skew: &str,
) -> anyhow::Result<Vec<std::ffi::OsString>> {
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds)?;
    let config = dir.join("sentry-config.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: daprsystem\nspec:\n  mtls:\n    enabled: true\n    workloadCertTTL: {ttl}\n    allowedClockSkew: {skew}\n"
        ),
    )?;
    let mut args: Vec<std::ffi::OsString> = vec!["--issuer-credentials".into(), creds.into()];
    args.extend(["--config".into(), config.into()]);
    for (flag, value) in [
        ("--listen-address", listen.to_owned()),
        ("--port", port.to_string()),
        ("--healthz-listen-address", listen.to_owned()),
        ("--healthz-port", healthz_port.to_string()),
    ] {
        args.extend([flag.into(), value.into()]);
    }
    args.push("--enable-metrics=false".into());
    Ok(args)
}

/// A running sentry; killed when dropped.
pub struct Sentry {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub healthz: SocketAddr,
    /// The credentials directory (`ca.crt`, `issuer.crt`, `issuer.key`).
    pub creds: PathBuf,
    pub log: PathBuf,
}

impl Sentry {
    /// Starts sentry in `dir` (credentials in `dir/creds`) with workload certificates living
    /// `ttl` with `skew` of allowed clock skew, and waits (bounded) for `/healthz`.
    pub async fn start(dir: &Path, ttl: &str, skew: &str) -> anyhow::Result<Sentry> {
        Self::start_on(dir, free_port()?, ttl, skew).await
    }

    /// Like [`Sentry::start`] on a given port (to start it after its clients).
    pub async fn start_on(dir: &Path, port: u16, ttl: &str, skew: &str) -> anyhow::Result<Sentry> {
        let healthz_port = free_port()?;
        let log = dir.join(format!("sentry-{port}.log"));
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(binary("sentry"))
            .args(args(dir, "127.0.0.1", port, healthz_port, ttl, skew)?)
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .context("spawn sentry")?;
        let creds = dir.join("creds");
        let mut sentry = Sentry {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            healthz: SocketAddr::from(([127, 0, 0, 1], healthz_port)),
            creds,
            log,
        };
        sentry.wait_healthy(Duration::from_secs(20)).await?;
        Ok(sentry)
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
        let first = Self::spawn(binary, dir, free_port()?, ttl, skew).await?;
        drop(first);
        Self::spawn(binary, dir, free_port()?, ttl, skew).await
    }

    async fn spawn(
        binary: &Path,
        dir: &Path,
        port: u16,
        ttl: &str,
        skew: &str,
    ) -> anyhow::Result<Sentry> {
        let healthz_port = free_port()?;
        let log = dir.join(format!("sentry-{port}.log"));
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(binary)
            .args(args(dir, "127.0.0.1", port, healthz_port, ttl, skew)?)
            // Upstream names its own SPIFFE id's namespace from the environment.
            .env("NAMESPACE", "default")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", binary.display()))?;
        let mut sentry = Sentry {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            healthz: SocketAddr::from(([127, 0, 0, 1], healthz_port)),
            creds: dir.join("creds"),
            log,
        };
        sentry.wait_healthy(Duration::from_secs(20)).await?;
        Ok(sentry)
    }

    /// Polls `/healthz` until it answers 200, for at most `within`; fails at once if sentry
    /// exits.
    pub async fn wait_healthy(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let client = HttpClient::new();
        let url = format!("http://{}/healthz", self.healthz);
        loop {
            if let Ok(r) = client.get(&url).await
                && r.status == 200
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("sentry exited with {status}; log:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "sentry not healthy within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn trust_anchors(&self) -> PathBuf {
        self.creds.join("ca.crt")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The flags and env a daprd needs to get its identity from this sentry.
    pub fn sidecar_options(&self) -> (Vec<String>, Vec<(String, String)>) {
        sidecar_options(&self.addr.to_string(), &self.trust_anchors())
    }
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
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    pub anchors: std::sync::Arc<rustls::RootCertStore>,
}

impl Sentry {
    /// Asks this sentry (insecure validator) for a certificate for `app_id` in `default`.
    pub async fn issue(&self, app_id: &str) -> anyhow::Result<ClientIdentity> {
        let anchors = std::sync::Arc::new(dapr_identity::tls::root_store(&std::fs::read(
            self.trust_anchors(),
        )?)?);
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
    config: std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<tonic::transport::Channel> {
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(rustls::pki_types::ServerName::from(addr.ip()), tcp)
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
