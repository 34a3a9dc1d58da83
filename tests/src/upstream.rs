//! A mixed fleet: our daprd beside upstream Dapr's daprd (built by scripts/test.sh from the
//! published Go module pinned in `tests/upstream/go.mod`, into `.cache/upstream/bin/daprd`),
//! each with an `echo-app` behind it, plain text or with mTLS where our sentry issues both
//! sidecars' certificates. Used by `tests/upstream_peer.rs` (HTTP API, name resolution) and
//! `tests/upstream_grpc.rs` (gRPC API, proxying, large bodies, access control).
//!
//! Without the upstream binary [`fleet`] says so and returns `None`, and the test passes
//! without running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use crate::sentry::Sentry;
use crate::sidecar::{
    HttpClient, Sidecar, SidecarOptions, free_port, free_ports, loopback, scratch_dir,
    sqlite_config, wait_ready, with_fresh_ports,
};
use crate::{EchoApp, echo_app};

/// Upstream's daprd (`stablecomponents` build).
pub fn upstream_binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/upstream/bin/daprd")
}

/// Upstream's daprd with the `sqlite` name resolver registered (tests/upstream/sqlitenr: the
/// `stablecomponents` build leaves it out).
pub fn upstream_binary_with_sqlite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/upstream/bin/daprd-sqlite")
}

/// `false` (after saying why) when `binary` is not built.
pub fn present(binary: &Path) -> bool {
    if binary.exists() {
        return true;
    }
    eprintln!(
        "SKIPPED: {} is missing: scripts/test.sh builds it (it needs Go)",
        binary.display()
    );
    false
}

/// Upstream daprd in standalone mode; killed when dropped.
pub struct Upstream {
    pub app_id: String,
    pub http_port: u16,
    pub grpc_port: u16,
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

/// What [`Upstream::start`] runs.
pub struct UpstreamOptions<'a> {
    pub binary: &'a Path,
    pub app_port: Option<u16>,
    pub internal_port: u16,
    /// The Configuration file.
    pub config: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Upstream {
    /// Starts it (log in `dir`) and waits until `/v1.0/healthz` answers 204.
    ///
    /// A port picked by [`free_port`] can be taken before upstream binds it; it then exits with
    /// "address already in use", and the start is retried (at most three times) with fresh API
    /// and metrics ports.
    pub async fn start(
        dir: &Path,
        app_id: &str,
        options: UpstreamOptions<'_>,
    ) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(dir, app_id, &options).await {
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(
        dir: &Path,
        app_id: &str,
        options: &UpstreamOptions<'_>,
    ) -> anyhow::Result<Self> {
        let [http_port, grpc_port, metrics_port] = free_ports()?;
        let log = dir.join(format!("upstream-{app_id}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = tokio::process::Command::new(options.binary);
        cmd.args(["--app-id", app_id]);
        if let Some(port) = options.app_port {
            cmd.args(["--app-port", &port.to_string()]);
        }
        let child = cmd
            .args(["--dapr-http-port", &http_port.to_string()])
            .args(["--dapr-grpc-port", &grpc_port.to_string()])
            .args([
                "--dapr-internal-grpc-port",
                &options.internal_port.to_string(),
            ])
            .args(["--metrics-port", &metrics_port.to_string()])
            .args(["--dapr-listen-addresses", "127.0.0.1"])
            .args(["--log-level", "debug"])
            .arg("--config")
            .arg(options.config)
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .context("spawn upstream daprd")?;
        let mut upstream = Upstream {
            app_id: app_id.to_owned(),
            http_port,
            grpc_port,
            child,
            log,
        };
        upstream.wait_ready(Duration::from_secs(60)).await?;
        Ok(upstream)
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let client = HttpClient::new();
        let url = self.url("/v1.0/healthz");
        let what = format!("upstream daprd {}", self.app_id);
        wait_ready(
            &mut self.child,
            &what,
            &self.log,
            within,
            Duration::from_millis(100),
            || async { client.get(&url).await.is_ok_and(|r| r.status == 204) },
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// How the two sidecars find each other.
#[derive(Clone, Copy)]
pub enum Naming {
    /// Each uses the kubernetes resolver with the literal `template` `127.0.0.1:<the other's
    /// internal port>`, which both split into host and port.
    Template,
    /// Both use the sqlite resolver over one database file; `upstream_first` says whose sidecar
    /// starts (and creates the tables) first. Ours first finds a table of our previous schema in
    /// the file and replaces it.
    SharedSqlite { upstream_first: bool },
}

/// What [`fleet`] starts.
#[derive(Clone)]
pub struct FleetOptions {
    /// Our sentry issues both sidecars' certificates.
    pub mtls: bool,
    pub naming: Naming,
    /// Both echo-apps' protocol, and both sidecars' `--app-protocol`: `http` or `grpc`.
    pub app_protocol: &'static str,
    /// Configuration `spec` lines (indented two spaces) for our sidecar and for upstream's.
    pub our_spec: String,
    pub their_spec: String,
    /// Flags for both sidecars (both take upstream's, e.g. `--max-body-size`).
    pub extra_args: Vec<String>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            mtls: false,
            naming: Naming::Template,
            app_protocol: "http",
            our_spec: String::new(),
            their_spec: String::new(),
            extra_args: Vec::new(),
        }
    }
}

/// Both sidecars, each with an echo-app behind it: ours is `ours`, upstream's is `theirs`.
pub struct Fleet {
    pub dir: PathBuf,
    pub sentry: Option<Sentry>,
    pub ours: Sidecar,
    pub upstream: Upstream,
    pub apps: (EchoApp, EchoApp),
    /// Internal gRPC ports: ours, upstream's.
    pub internal_ports: (u16, u16),
    /// The sentry flags and env for our sidecars (empty without mTLS).
    pub our_identity: (Vec<String>, Vec<(String, String)>),
    /// The same for upstream's (trust anchors as PEM in `DAPR_TRUST_ANCHORS`).
    pub their_identity: (Vec<String>, Vec<(String, String)>),
}

impl Fleet {
    /// Another of our sidecars, without an app, whose resolver sends every call to upstream's.
    pub async fn our_caller(&self, app_id: &str) -> anyhow::Result<Sidecar> {
        let config = template_config(&self.dir, app_id, loopback(self.internal_ports.1), "")?;
        Sidecar::start(
            app_id,
            &self.dir,
            SidecarOptions {
                config: Some(config),
                extra_args: self.our_identity.0.clone(),
                env: self.our_identity.1.clone(),
                ..Default::default()
            },
        )
        .await
    }

    /// Another upstream sidecar, without an app, whose resolver sends every call to ours.
    pub async fn their_caller(&self, app_id: &str) -> anyhow::Result<Upstream> {
        let config = template_config(&self.dir, app_id, loopback(self.internal_ports.0), "")?;
        Upstream::start(
            &self.dir,
            app_id,
            UpstreamOptions {
                binary: &upstream_binary(),
                app_port: None,
                internal_port: free_port()?,
                config: &config,
                args: self.their_identity.0.clone(),
                env: self.their_identity.1.clone(),
            },
        )
        .await
    }

    /// Both sidecars' logs, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "ours log:\n{}\nupstream log:\n{}",
            self.ours.log_text(),
            self.upstream.log_text()
        )
    }
}

/// A Configuration selecting the kubernetes resolver with a literal `template`, plus `extra`
/// spec lines (indented two spaces).
pub fn template_config(
    dir: &Path,
    name: &str,
    peer: SocketAddr,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: {name}\nspec:\n  nameResolution:\n    component: kubernetes\n    configuration:\n      template: \"{peer}\"\n{extra}"
        ),
    )?;
    Ok(path)
}

/// The `hosts` table our previous sqlite resolver created, with one row.
fn write_previous_schema(db: &Path) -> anyhow::Result<()> {
    let db = rusqlite::Connection::open(db)?;
    db.execute_batch(
        "CREATE TABLE hosts (registration_id TEXT PRIMARY KEY, app_id TEXT NOT NULL,
         namespace TEXT NOT NULL, address TEXT NOT NULL, updated_at INTEGER NOT NULL);
         CREATE INDEX hosts_app ON hosts (namespace, app_id);
         INSERT INTO hosts VALUES ('old', 'ours', 'default', '127.0.0.1:1', 0);",
    )?;
    Ok(())
}

/// `None` (after saying why) when the upstream binary is not built.
/// With `mtls`, our sentry issues both sidecars' certificates (upstream's standalone daprd asks
/// with no token, as ours does; it takes the trust anchors as PEM in `DAPR_TRUST_ANCHORS`).
///
/// Upstream's daprd exits with "address already in use" when a port picked for it was taken
/// first; the fleet is then started again with fresh ports ([`with_fresh_ports`]).
pub async fn fleet(name: &str, options: FleetOptions) -> anyhow::Result<Option<Fleet>> {
    with_fresh_ports("address already in use", || {
        fleet_once(name, options.clone())
    })
    .await
}

async fn fleet_once(name: &str, options: FleetOptions) -> anyhow::Result<Option<Fleet>> {
    let binary = match options.naming {
        Naming::Template => upstream_binary(),
        Naming::SharedSqlite { .. } => upstream_binary_with_sqlite(),
    };
    if !present(&binary) {
        return Ok(None);
    }
    let dir = scratch_dir(&format!("upstream-peer-{name}"))?;
    let protocol = options.app_protocol;
    let (our_app, their_app) = (echo_app(protocol).await?, echo_app(protocol).await?);
    let sentry = if options.mtls {
        Some(Sentry::start(&dir, "1h", "15m").await?)
    } else {
        None
    };
    let (mut args, env) = match &sentry {
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
    let identity = (args.clone(), env.clone());
    let their_identity = (args.clone(), upstream_env.clone());
    args.extend(["--app-protocol".to_owned(), protocol.to_owned()]);
    args.extend(options.extra_args.iter().cloned());
    let [our_internal, their_internal] = free_ports()?;
    let (our_config, their_config, upstream_first) = match options.naming {
        Naming::Template => (
            template_config(&dir, "ours", loopback(their_internal), &options.our_spec)?,
            template_config(
                &dir,
                "upstream",
                loopback(our_internal),
                &options.their_spec,
            )?,
            false,
        ),
        Naming::SharedSqlite { upstream_first } => {
            if !upstream_first {
                write_previous_schema(&dir.join("nr.db"))?;
            }
            // Upstream registers its host address: loopback here, as ours without one.
            upstream_env.push(("DAPR_HOST_IP".to_owned(), "127.0.0.1".to_owned()));
            (
                sqlite_config(&dir, "ours", &options.our_spec)?,
                sqlite_config(&dir, "upstream", &options.their_spec)?,
                upstream_first,
            )
        }
    };
    let start_upstream = || {
        Upstream::start(
            &dir,
            "theirs",
            UpstreamOptions {
                binary: &binary,
                app_port: Some(their_app.addr.port()),
                internal_port: their_internal,
                config: &their_config,
                args: args.clone(),
                env: upstream_env.clone(),
            },
        )
    };
    let start_ours = || {
        Sidecar::start(
            "ours",
            &dir,
            SidecarOptions {
                app_port: Some(our_app.addr.port()),
                config: Some(our_config.clone()),
                internal_port: Some(our_internal),
                extra_args: args.clone(),
                env: env.clone(),
                ..Default::default()
            },
        )
    };
    let (mut ours, upstream) = if upstream_first {
        let upstream = start_upstream().await?;
        (start_ours().await?, upstream)
    } else {
        let ours = start_ours().await?;
        (ours, start_upstream().await?)
    };
    // Ours answers outbound health before it has seen its app; upstream's only after.
    ours.wait_for("/v1.0/healthz", Duration::from_secs(20))
        .await
        .context("ours sees its app")?;
    Ok(Some(Fleet {
        dir,
        sentry,
        ours,
        upstream,
        apps: (our_app, their_app),
        internal_ports: (our_internal, their_internal),
        our_identity: identity,
        their_identity,
    }))
}
