//! A mixed fleet: our daprd and upstream Dapr's daprd (built by scripts/test.sh from the published
//! Go module pinned in `tests/upstream/go.mod`, into `.cache/upstream/bin/daprd`) invoke each
//! other's apps over the HTTP API: plain text, and with mTLS where our sentry issues both
//! sidecars' certificates.
//!
//! Name resolution: the two sqlite resolvers keep different schemas and the two mDNS resolvers do
//! not find each other (docs/upstream-differences.md), so each sidecar is pointed at the other's
//! fixed internal address: ours through a row in its sqlite file (as tests/tests/legacy_peer.rs
//! registers its peer), upstream's through the kubernetes resolver with a literal `template`.
//! Without the upstream binary each test says so and passes without running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use e2e::sentry::Sentry;
use e2e::sidecar::{
    HttpClient, Reply, Sidecar, SidecarOptions, free_port, loopback, scratch_dir, sqlite_config,
};
use e2e::{EchoApp, echo_app};
use http::Method;

fn upstream_binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/upstream/bin/daprd")
}

/// Upstream daprd in standalone mode; killed when dropped.
struct Upstream {
    http_port: u16,
    internal_port: u16,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Upstream {
    /// Starts it with `app_port`, resolving every app id to `peer` (the kubernetes resolver's
    /// `template` is used as the address as it is), and waits until `/v1.0/healthz` answers 204.
    async fn start(
        dir: &Path,
        app_id: &str,
        app_port: u16,
        peer: SocketAddr,
        (args, env): (Vec<String>, Vec<(String, String)>),
    ) -> anyhow::Result<Self> {
        let config = dir.join("upstream.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: upstream\nspec:\n  nameResolution:\n    component: kubernetes\n    configuration:\n      template: \"{peer}\"\n"
            ),
        )?;
        let (http_port, grpc_port, internal_port, metrics_port) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        let log = dir.join(format!("upstream-{app_id}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(upstream_binary())
            .args(["--app-id", app_id])
            .args(["--app-port", &app_port.to_string()])
            .args(["--dapr-http-port", &http_port.to_string()])
            .args(["--dapr-grpc-port", &grpc_port.to_string()])
            .args(["--dapr-internal-grpc-port", &internal_port.to_string()])
            .args(["--metrics-port", &metrics_port.to_string()])
            .args(["--dapr-listen-addresses", "127.0.0.1"])
            .args(["--log-level", "debug"])
            .arg("--config")
            .arg(&config)
            .args(&args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .context("spawn upstream daprd")?;
        let mut upstream = Upstream {
            http_port,
            internal_port,
            child,
            log,
        };
        upstream.wait_ready(Duration::from_secs(60)).await?;
        Ok(upstream)
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let client = HttpClient::new();
        loop {
            if let Ok(r) = client.get(&self.url("/v1.0/healthz")).await
                && r.status == 204
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "upstream daprd exited with {status}; log:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "upstream daprd not ready within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Registers `app_id` at `addr` in the sqlite name-resolution file of `dir` (our schema).
fn register(dir: &Path, app_id: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let db = rusqlite::Connection::open(dir.join("nr.db"))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS hosts (registration_id TEXT PRIMARY KEY, app_id TEXT NOT NULL,
         namespace TEXT NOT NULL, address TEXT NOT NULL, updated_at INTEGER NOT NULL);",
    )?;
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
    db.execute(
        "INSERT INTO hosts VALUES (?1, ?2, 'default', ?3, ?4)",
        rusqlite::params![format!("upstream-{app_id}"), app_id, addr.to_string(), now],
    )?;
    Ok(())
}

/// Both sidecars, each with an echo-app behind it: ours is `ours`, upstream's is `theirs`.
struct Fleet {
    _sentry: Option<Sentry>,
    ours: Sidecar,
    upstream: Upstream,
    _apps: (EchoApp, EchoApp),
}

/// `None` (after saying why) when the upstream binary is not built.
/// With `mtls`, our sentry issues both sidecars' certificates (upstream's standalone daprd asks
/// with no token, as ours does; it takes the trust anchors as PEM in `DAPR_TRUST_ANCHORS`).
async fn fleet(name: &str, mtls: bool) -> anyhow::Result<Option<Fleet>> {
    let binary = upstream_binary();
    if !binary.exists() {
        eprintln!(
            "SKIPPED: {} is missing: scripts/test.sh builds it (it needs Go)",
            binary.display()
        );
        return Ok(None);
    }
    let dir = scratch_dir(&format!("upstream-peer-{name}"))?;
    let (our_app, their_app) = (echo_app("http").await?, echo_app("http").await?);
    let sentry = if mtls {
        Some(Sentry::start(&dir, "1h", "15m").await?)
    } else {
        None
    };
    let (args, env) = match &sentry {
        Some(sentry) => sentry.sidecar_options(),
        None => (Vec::new(), Vec::new()),
    };
    let mut upstream_env = env.clone();
    if let Some(sentry) = &sentry {
        upstream_env.push((
            "DAPR_TRUST_ANCHORS".to_owned(),
            std::fs::read_to_string(sentry.trust_anchors())?,
        ));
    }
    let our_internal = free_port()?;
    let ours = Sidecar::start(
        "ours",
        &dir,
        SidecarOptions {
            app_port: Some(our_app.addr.port()),
            config: Some(sqlite_config(&dir, "ours", "")?),
            internal_port: Some(our_internal),
            extra_args: args.clone(),
            env,
            ..Default::default()
        },
    )
    .await?;
    let upstream = Upstream::start(
        &dir,
        "theirs",
        their_app.addr.port(),
        loopback(our_internal),
        (args, upstream_env),
    )
    .await?;
    register(&dir, "theirs", loopback(upstream.internal_port))?;
    Ok(Some(Fleet {
        _sentry: sentry,
        ours,
        upstream,
        _apps: (our_app, their_app),
    }))
}

/// POSTs a body with a header through `base`'s invoke API to `app_id`'s echo-app and checks that
/// the app's answer came back whole: status, body bytes, the echoed method and path headers.
async fn invoke_echo(base: &str, app_id: &str) -> anyhow::Result<Reply> {
    let body: Bytes = (0..=255u8)
        .cycle()
        .take(64 * 1024 + 7)
        .collect::<Vec<u8>>()
        .into();
    let reply = HttpClient::new()
        .send(
            Method::POST,
            &format!("{base}/v1.0/invoke/{app_id}/method/echo/it?q=1"),
            &[
                ("content-type", "application/x-e2e"),
                ("x-e2e", "mixed-fleet"),
            ],
            body.clone(),
        )
        .await?;
    anyhow::ensure!(
        reply.status == 200,
        "status {} body {:?}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    anyhow::ensure!(
        reply.body == body,
        "body differs ({} bytes back)",
        reply.body.len()
    );
    let header = |name: &str| reply.headers.get(name).and_then(|v| v.to_str().ok());
    anyhow::ensure!(
        header("x-echo-method") == Some("POST"),
        "headers {:?}",
        reply.headers
    );
    anyhow::ensure!(
        header("x-echo-path") == Some("/echo/it?q=1"),
        "headers {:?}",
        reply.headers
    );
    anyhow::ensure!(
        header("content-type") == Some("application/x-e2e"),
        "headers {:?}",
        reply.headers
    );
    Ok(reply)
}

/// A request header reaches the other side's app (`/inspect` reports the headers it got), which
/// also sees the caller's app id from the calling sidecar; an app's error status comes back as is.
async fn inspect_header(base: &str, app_id: &str, caller: &str) -> anyhow::Result<()> {
    let reply = HttpClient::new()
        .send(
            Method::GET,
            &format!("{base}/v1.0/invoke/{app_id}/method/inspect/x"),
            &[("x-e2e", "mixed-fleet")],
            Bytes::new(),
        )
        .await?;
    anyhow::ensure!(reply.status == 200, "status {}", reply.status);
    let json = reply.json()?;
    let got = json["headers"]["x-e2e"].clone();
    anyhow::ensure!(
        got == "mixed-fleet" || got == serde_json::json!(["mixed-fleet"]),
        "the app saw headers {}",
        json["headers"]
    );
    anyhow::ensure!(
        json["headers"]["dapr-caller-app-id"] == caller,
        "the app saw headers {}",
        json["headers"]
    );
    let reply = HttpClient::new()
        .get(&format!("{base}/v1.0/invoke/{app_id}/method/status/418"))
        .await?;
    anyhow::ensure!(
        reply.status == 418 && reply.body == "status 418",
        "status {} body {:?}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    Ok(())
}

async fn ours_to_upstream(name: &str, mtls: bool) {
    let Some(fleet) = fleet(name, mtls).await.expect("fleet") else {
        return;
    };
    let base = fleet.ours.url("");
    if let Err(e) = async {
        invoke_echo(&base, "theirs").await?;
        inspect_header(&base, "theirs", "ours").await
    }
    .await
    {
        panic!(
            "ours -> upstream: {e:#}\nours log:\n{}\nupstream log:\n{}",
            fleet.ours.log_text(),
            fleet.upstream.log_text()
        );
    }
}

async fn upstream_to_ours(name: &str, mtls: bool) {
    let Some(fleet) = fleet(name, mtls).await.expect("fleet") else {
        return;
    };
    let base = fleet.upstream.url("");
    if let Err(e) = async {
        invoke_echo(&base, "ours").await?;
        inspect_header(&base, "ours", "theirs").await
    }
    .await
    {
        panic!(
            "upstream -> ours: {e:#}\nours log:\n{}\nupstream log:\n{}",
            fleet.ours.log_text(),
            fleet.upstream.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ours_invokes_an_app_behind_upstream_daprd() {
    ours_to_upstream("ours-to-upstream", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_daprd_invokes_an_app_behind_ours() {
    upstream_to_ours("upstream-to-ours", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mtls_from_our_sentry_ours_invokes_upstream() {
    ours_to_upstream("mtls-ours-to-upstream", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mtls_from_our_sentry_upstream_invokes_ours() {
    upstream_to_ours("mtls-upstream-to-ours", true).await;
}
