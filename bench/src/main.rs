//! `bench`: the numbers of issue 8, measured side by side in one run on this machine.
//!
//! ```text
//! bash scripts/build-release.sh
//! cargo build --release --locked -p e2e --bins
//! cargo run --release --locked -p bench -- [--quick]
//! ```
//!
//! The sidecars are built as the images build them (`Dockerfile`, `scripts/build-release.sh`):
//! a `--workspace` build unifies other features into daprd's dependencies, which changes their
//! symbol names, and `daprd/symbol-order.txt` then places few of daprd's functions (idle RSS
//! reads about 4 MiB high) while `daprd/pgo.profdata` matches few of them. The bench warns when
//! that happens.
//!
//! ```text
//! ```
//!
//! Starts sentry, two echo apps (HTTP and gRPC), three daprd sidecars with mTLS (a caller and
//! one callee per app protocol), the same three of upstream Dapr's daprd when scripts/test.sh
//! has built it, two nginx instances (the TLS 1.3 mutual-TLS comparison chain) and the
//! injector, all on loopback, then measures latency at a constant rate, CPU, memory, sidecar
//! start, sentry and injector throughput, and the maximum throughput of each chain.
//! Writes `BENCHMARKS.md`, `bench/results.json` and `bench/latency.png`.

mod load;
mod nginx;
mod procfs;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use e2e::sentry::Sentry;
use e2e::sidecar::{HttpClient, binary, free_ports, scratch_dir, sqlite_config};
use e2e::spawn_echo_app;
use load::{Recorded, Target};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Service invocation, memory, start, sentry and injector benchmarks")]
struct Args {
    /// About one minute in all: short runs, fewer starts.
    #[arg(long)]
    quick: bool,
    /// Where BENCHMARKS.md and bench/ go (default: the repository root).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the PNG chart (which needs matplotlib from PyPI in .cache/bench-venv).
    #[arg(long)]
    no_chart: bool,
    /// Measure nothing: rewrite BENCHMARKS.md and the chart from this results.json (after
    /// editing bench/notes.md).
    #[arg(long, value_name = "RESULTS_JSON")]
    report_only: Option<PathBuf>,
    /// Measure nothing: send N gRPC calls of 1 KiB to `--calls-to` over four connections (N/4
    /// each, back to back unless `--calls-pace-ms`) and fail if any does; the load of
    /// bench/per-request.sh's gRPC chains.
    #[arg(long, value_name = "N", requires = "calls_to")]
    calls: Option<usize>,
    /// Where `--calls` go: `dapr=ADDR` (`Dapr/InvokeService` for app id `orders`) or `app=ADDR`
    /// (`AppCallback/OnInvoke`, as through nginx's `grpc_pass`).
    #[arg(long, value_name = "dapr=ADDR|app=ADDR")]
    calls_to: Option<String>,
    /// With `--calls`: one call every this many ms across the four connections.
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    calls_pace_ms: f64,
}

/// `--calls`: `n` calls to `to` on four connections, each connection's calls in turn (paced
/// from one start when `pace` is not zero); every call is checked and bounded by
/// [`load::CALL_TIMEOUT`].
async fn calls(n: usize, to: &str, pace: Duration) -> anyhow::Result<()> {
    const CONNECTIONS: usize = 4;
    let body = Bytes::from(vec![b'x'; 1024]);
    let target = match to.split_once('=') {
        Some(("dapr", addr)) => Target::DaprGrpc {
            addr: addr.parse()?,
            app_id: "orders".into(),
            body,
        },
        Some(("app", addr)) => Target::AppGrpc {
            addr: addr.parse()?,
            body,
        },
        _ => bail!("--calls-to is dapr=ADDR or app=ADDR, not {to:?}"),
    };
    let conns = target.connect_all(CONNECTIONS).await?;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let workers = conns.into_iter().enumerate().map(|(j, mut conn)| {
        tokio::spawn(async move {
            for k in 0..n / CONNECTIONS {
                if !pace.is_zero() {
                    let slot = u32::try_from(CONNECTIONS * k + j).unwrap_or(u32::MAX);
                    tokio::time::sleep_until(start + pace * slot).await;
                }
                tokio::time::timeout(load::CALL_TIMEOUT, conn.call())
                    .await
                    .context("a call timed out")??;
            }
            anyhow::Ok(())
        })
    });
    for worker in workers.collect::<Vec<_>>() {
        worker.await??;
    }
    Ok(())
}

/// Writes the chart and BENCHMARKS.md for `results` (already saved at `json_path`).
fn write_report(
    args: &Args,
    repo: &Path,
    out: &Path,
    json_path: &Path,
    results: &Value,
) -> anyhow::Result<String> {
    let chart = if args.no_chart {
        None
    } else {
        match report::chart(repo, json_path, &out.join("bench/latency.png")) {
            Ok(()) => Some("bench/latency.png"),
            Err(e) => {
                eprintln!("bench: no chart: {e:#}");
                None
            }
        }
    };
    let notes = std::fs::read_to_string(repo.join("bench/notes.md")).unwrap_or_default();
    let markdown = report::markdown(results, chart, &notes)?;
    std::fs::write(out.join("BENCHMARKS.md"), &markdown)?;
    Ok(markdown)
}

/// Durations and counts of one mode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    pub mode: &'static str,
    pub rate: f64,
    pub connections: usize,
    pub body_bytes: usize,
    /// Measured seconds per chain per round; rounds interleave the chains.
    pub seconds_per_round: f64,
    pub rounds: usize,
    pub warmup_seconds: f64,
    pub max_throughput_seconds: f64,
    pub starts: usize,
    pub sentry_clients: usize,
    pub sentry_seconds: f64,
    pub sentry_rate: f64,
    pub injector_connections: usize,
    pub injector_seconds: f64,
    pub injector_rate: f64,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        let base = Settings {
            mode: "full",
            rate: 1000.0,
            connections: 16,
            body_bytes: 1024,
            seconds_per_round: 20.0,
            rounds: 3,
            warmup_seconds: 2.0,
            max_throughput_seconds: 10.0,
            starts: 21,
            sentry_clients: 64,
            sentry_seconds: 10.0,
            sentry_rate: 500.0,
            injector_connections: 8,
            injector_seconds: 10.0,
            injector_rate: 500.0,
        };
        if quick {
            Settings {
                mode: "quick",
                seconds_per_round: 4.0,
                rounds: 1,
                warmup_seconds: 0.5,
                max_throughput_seconds: 2.0,
                starts: 5,
                sentry_seconds: 2.0,
                injector_seconds: 2.0,
                ..base
            }
        } else {
            base
        }
    }
}

/// Which implementation a bench sidecar runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Implementation {
    Ours,
    /// Upstream Dapr's daprd, built by scripts/test.sh from its published Go module
    /// (`e2e::upstream::upstream_binary`).
    Upstream,
}

/// How many times [`Daprd::start_with`] starts a daprd that exits while starting.
const START_ATTEMPTS: u32 = 3;

/// A daprd that exited before it was ready, with its log.
#[derive(Debug)]
struct ExitedAtStart(String);

impl std::fmt::Display for ExitedAtStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExitedAtStart {}

/// One `daprd` process started by the bench (info logs, metrics on, mTLS through sentry).
struct Daprd {
    child: tokio::process::Child,
    http_port: u16,
    grpc_port: u16,
    internal_port: u16,
    log: PathBuf,
    /// Process start to `/v1.0/healthz/outbound` 204.
    ready_after: Duration,
}

impl Daprd {
    /// Ours, with the sqlite resolver over `dir/nr.db`.
    async fn start(
        app_id: &str,
        dir: &Path,
        sentry: &Sentry,
        app: Option<(u16, &str)>,
    ) -> anyhow::Result<Daprd> {
        let config = sqlite_config(dir, &format!("config-{app_id}"), "")?;
        Self::start_with(Implementation::Ours, app_id, dir, sentry, app, &config).await
    }

    /// `implementation`'s daprd with the Configuration file `config`. Both take the same flags;
    /// upstream's takes the trust anchors as PEM in `DAPR_TRUST_ANCHORS`.
    ///
    /// Its four ports are all different ([`free_ports`]), but a port found free can be taken
    /// before the child binds it (by any other process on the machine; a run once lost its
    /// report to upstream's "could not listen on any endpoint", bench/notes.md): a child that
    /// exits while starting is started again on other ports, at most [`START_ATTEMPTS`] times.
    /// Its start time is its last attempt's.
    async fn start_with(
        implementation: Implementation,
        app_id: &str,
        dir: &Path,
        sentry: &Sentry,
        app: Option<(u16, &str)>,
        config: &Path,
    ) -> anyhow::Result<Daprd> {
        let mut attempt = 1;
        loop {
            match Self::start_once(implementation, app_id, dir, sentry, app, config).await {
                Err(e) if attempt < START_ATTEMPTS && e.is::<ExitedAtStart>() => {
                    eprintln!("bench: {e:#}; starting it again on other ports");
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    /// One attempt of [`Self::start_with`].
    async fn start_once(
        implementation: Implementation,
        app_id: &str,
        dir: &Path,
        sentry: &Sentry,
        app: Option<(u16, &str)>,
        config: &Path,
    ) -> anyhow::Result<Daprd> {
        let [http_port, grpc_port, internal_port, metrics_port] = free_ports()?;
        let log = dir.join(format!("daprd-{app_id}.log"));
        let out = std::fs::File::create(&log)?;
        let (args, mut env) = sentry.sidecar_options();
        let program = match implementation {
            Implementation::Ours => binary("daprd"),
            Implementation::Upstream => {
                env.push((
                    "DAPR_TRUST_ANCHORS".to_owned(),
                    std::fs::read_to_string(sentry.trust_anchors())?,
                ));
                e2e::upstream::upstream_binary()
            }
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(["--app-id", app_id])
            .args(["--dapr-http-port", &http_port.to_string()])
            .args(["--dapr-grpc-port", &grpc_port.to_string()])
            .args(["--dapr-internal-grpc-port", &internal_port.to_string()])
            .args(["--metrics-port", &metrics_port.to_string()])
            .args(["--dapr-listen-addresses", "127.0.0.1"])
            .arg("--config")
            .arg(config)
            .args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true);
        if let Some((port, protocol)) = app {
            cmd.args(["--app-port", &port.to_string()])
                .args(["--app-protocol", protocol]);
        }
        let started = Instant::now();
        let mut child = cmd.spawn().context("spawn daprd")?;
        let client = HttpClient::new();
        let url = format!("http://127.0.0.1:{http_port}/v1.0/healthz/outbound");
        let ready_after = loop {
            if let Ok(r) = client.get(&url).await
                && r.status == 204
            {
                break started.elapsed();
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ExitedAtStart(format!(
                    "daprd {app_id} exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ))
                .into());
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("daprd {app_id} not ready within 20s; see {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        Ok(Daprd {
            child,
            http_port,
            grpc_port,
            internal_port,
            log,
            ready_after,
        })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("daprd exited")
    }

    /// Waits (bounded) until `/v1.0/healthz` answers 204: the app channel is up too.
    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let client = HttpClient::new();
        let url = format!("http://127.0.0.1:{}/v1.0/healthz", self.http_port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(&url).await
                && r.status == 204
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("daprd not healthy; see {}", self.log.display())
    }
}

/// The upstream chain's callees' app ids.
const UPSTREAM_HTTP_ID: &str = "upstream-orders";
const UPSTREAM_GRPC_ID: &str = "upstream-orders-grpc";

/// Upstream daprd as the fourth chain: a caller and a callee per app protocol, with
/// certificates from the same sentry as ours.
struct UpstreamSidecars {
    caller: Daprd,
    callee_http: Daprd,
    callee_grpc: Daprd,
}

impl UpstreamSidecars {
    /// `None` (after saying why) when upstream's daprd is not built.
    async fn start(
        dir: &Path,
        sentry: &Sentry,
        app_http: u16,
        app_grpc: u16,
    ) -> anyhow::Result<Option<Self>> {
        let program = e2e::upstream::upstream_binary();
        if !program.exists() {
            eprintln!(
                "bench: no upstream chain: {} is missing (scripts/test.sh builds it with Go)",
                program.display()
            );
            return Ok(None);
        }
        let callee_config = upstream_config(dir, "upstream-callee", &[])?;
        let callee = |id, port, protocol| {
            Daprd::start_with(
                Implementation::Upstream,
                id,
                dir,
                sentry,
                Some((port, protocol)),
                &callee_config,
            )
        };
        let callee_http = callee(UPSTREAM_HTTP_ID, app_http, "http").await?;
        let callee_grpc = callee(UPSTREAM_GRPC_ID, app_grpc, "grpc").await?;
        let caller_config = upstream_config(
            dir,
            "upstream-caller",
            &[
                (UPSTREAM_HTTP_ID, callee_http.internal_port),
                (UPSTREAM_GRPC_ID, callee_grpc.internal_port),
            ],
        )?;
        let caller = Daprd::start_with(
            Implementation::Upstream,
            "upstream-checkout",
            dir,
            sentry,
            None,
            &caller_config,
        )
        .await?;
        callee_http.wait_healthy().await?;
        callee_grpc.wait_healthy().await?;
        Ok(Some(UpstreamSidecars {
            caller,
            callee_http,
            callee_grpc,
        }))
    }
}

/// A Configuration for upstream's daprd: its kubernetes resolver with a `template` that maps
/// each of `routes`' app ids to its internal port on loopback (a Go template, evaluated per
/// call without a lookup, as a cluster's DNS name would be). Ours uses the sqlite resolver.
fn upstream_config(dir: &Path, name: &str, routes: &[(&str, u16)]) -> anyhow::Result<PathBuf> {
    let mut template = String::new();
    for (id, port) in routes {
        template.push_str(&format!(
            "{{{{if eq .ID \"{id}\"}}}}127.0.0.1:{port}{{{{end}}}}"
        ));
    }
    if template.is_empty() {
        template.push_str("127.0.0.1:1");
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: {name}\nspec:\n  nameResolution:\n    component: kubernetes\n    configuration:\n      template: '{template}'\n"
        ),
    )?;
    Ok(path)
}

/// The upstream Dapr release tests/upstream/go.mod pins (what scripts/test.sh builds).
fn upstream_version(repo: &Path) -> String {
    std::fs::read_to_string(repo.join("tests/upstream/go.mod"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("github.com/dapr/dapr "))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_owned)
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Median, min and max of start times (ms).
fn starts_summary(starts: &[f64]) -> Value {
    let mut sorted = starts.to_vec();
    sorted.sort_by(f64::total_cmp);
    json!({
        "runs_ms": starts,
        "median_ms": percentile_sorted(&sorted, 0.5),
        "min_ms": sorted.first().copied().unwrap_or(0.0),
        "max_ms": sorted.last().copied().unwrap_or(0.0),
    })
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A chain under test, with the processes that carry it (for CPU and memory).
struct Chain {
    protocol: &'static str,
    name: &'static str,
    target: Target,
    /// (label, pid) of each proxy in the chain.
    proxies: Vec<(String, u32)>,
}

#[derive(Default)]
struct ChainResult {
    recorded: Option<Recorded>,
    cpu: Vec<f64>,
    /// Each round's CPU seconds per 1000 requests, per proxy: how far one round's figure
    /// strays from another's on a shared machine.
    cpu_by_round: Vec<Vec<f64>>,
    peak_rss: Vec<u64>,
}

async fn measure_open(chain: &Chain, s: &Settings, result: &mut ChainResult) -> anyhow::Result<()> {
    let conns = chain.target.connect_all(s.connections).await?;
    let (conns, _) =
        load::open_loop(conns, s.rate, Duration::from_secs_f64(s.warmup_seconds)).await?;
    let pids: Vec<u32> = chain.proxies.iter().map(|(_, p)| *p).collect();
    let before: Vec<f64> = pids
        .iter()
        .map(|p| procfs::family_cpu_seconds(*p))
        .collect::<anyhow::Result<_>>()?;
    let sampler = procfs::RssSampler::start(pids.clone());
    let (conns, rec) =
        load::open_loop(conns, s.rate, Duration::from_secs_f64(s.seconds_per_round)).await?;
    let peaks = sampler.finish().await?;
    drop(conns);
    let after: Vec<f64> = pids
        .iter()
        .map(|p| procfs::family_cpu_seconds(*p))
        .collect::<anyhow::Result<_>>()?;
    if result.cpu.is_empty() {
        result.cpu = vec![0.0; pids.len()];
        result.cpu_by_round = vec![Vec::new(); pids.len()];
        result.peak_rss = vec![0; pids.len()];
    }
    let requests = rec.summary(true).requests.max(1) as f64;
    for i in 0..pids.len() {
        if let (Some(c), Some(round), Some(a), Some(b)) = (
            result.cpu.get_mut(i),
            result.cpu_by_round.get_mut(i),
            after.get(i),
            before.get(i),
        ) {
            *c += a - b;
            round.push((a - b) / requests * 1000.0);
        }
        if let (Some(r), Some(p)) = (result.peak_rss.get_mut(i), peaks.get(i)) {
            *r = (*r).max(*p);
        }
    }
    match &mut result.recorded {
        Some(r) => r.merge(rec)?,
        None => result.recorded = Some(rec),
    }
    Ok(())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "kernel": kernel,
        "memory_gib": (mem * 10.0).round() / 10.0,
        "loadavg_at_start": loadavg,
    })
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The injector binary over HTTPS with a fresh serving certificate; killed when dropped.
struct Injector {
    child: tokio::process::Child,
    webhook: SocketAddr,
    client_tls: Arc<rustls::ClientConfig>,
}

async fn start_injector(dir: &Path) -> anyhow::Result<Injector> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use tokio::io::AsyncBufReadExt;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "injector CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf =
        CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&leaf_key, &issuer)?;
    std::fs::write(dir.join("injector-ca.crt"), ca_cert.pem())?;
    std::fs::write(dir.join("injector-tls.crt"), leaf.pem())?;
    std::fs::write(dir.join("injector-tls.key"), leaf_key.serialize_pem())?;
    let mut child = tokio::process::Command::new(binary("injector"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NAMESPACE", "dapr-system")
        .env("SIDECAR_IMAGE", "ghcr.io/dapr/daprd:1.18.3")
        .env("DAPR_TRUST_ANCHORS_FILE", dir.join("injector-ca.crt"))
        .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
        .env("HOME", dir)
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
        .arg(dir.join("injector-tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.join("injector-tls.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn injector")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let webhook = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            let Ok(log) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if log["server"].as_str() == Some("webhook")
                && let Some(addr) = log["address"].as_str().and_then(|a| a.parse().ok())
            {
                return Ok(addr);
            }
        }
        bail!("injector closed stdout before listening")
    })
    .await
    .context("injector did not log its webhook address within 20s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone())?;
    let client_tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    Ok(Injector {
        child,
        webhook,
        client_tls,
    })
}

/// Warns when the daprd being measured places under 90% of `daprd/symbol-order.txt` (built with
/// other features than the images, or a stale file): its idle RSS and CPU are then not the
/// images'. The count is `bench/symbol-order.sh --check`'s; the warning also goes into the
/// report, so such a run cannot pass for one of the images' build.
fn warn_if_unordered(repo: &Path, daprd: &Path) -> Option<String> {
    let dir = daprd.parent().unwrap_or(Path::new("."));
    let warning = match std::process::Command::new("bash")
        .arg(repo.join("bench/symbol-order.sh"))
        .arg("--check")
        .arg(dir)
        .output()
    {
        Ok(check) if check.status.success() => return None,
        Ok(check) => format!(
            "{}build daprd with `bash scripts/build-release.sh`, \
             and the bench on its own (bench/notes.md)",
            String::from_utf8_lossy(&[check.stdout, check.stderr].concat())
                .trim_start_matches("symbol-order.sh: ")
                .replace('\n', "; "),
        ),
        Err(e) => format!("cannot check daprd's function placement: {e}"),
    };
    eprintln!("bench: WARNING: {warning}");
    Some(warning)
}

fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let s = Settings::new(args.quick);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let out = args.out.clone().unwrap_or_else(|| repo.clone());
    if let (Some(n), Some(to)) = (args.calls, &args.calls_to) {
        return calls(n, to, Duration::from_secs_f64(args.calls_pace_ms / 1000.0)).await;
    }
    if let Some(json_path) = &args.report_only {
        let results: Value = serde_json::from_slice(
            &std::fs::read(json_path)
                .with_context(|| format!("reading {}", json_path.display()))?,
        )?;
        std::fs::create_dir_all(out.join("bench"))?;
        write_report(&args, &repo, &out, json_path, &results)?;
        eprintln!("bench: wrote {}", out.join("BENCHMARKS.md").display());
        return Ok(());
    }
    // Only measuring needs a release build; --report-only just renders.
    if cfg!(debug_assertions) {
        bail!("benchmarks need release builds: cargo run --release -p bench");
    }
    for bin in ["daprd", "sentry", "injector", "echo-app"] {
        if !binary(bin).exists() {
            bail!(
                "{} is missing: build as this file's first lines say",
                binary(bin).display()
            );
        }
    }
    let placement_warning = warn_if_unordered(&repo, &binary("daprd"));
    let nginx_bin = nginx::ensure_installed()?;
    let began = Instant::now();
    let machine = machine();
    eprintln!("bench: {} mode on {machine}", s.mode);
    let dir = scratch_dir("bench")?;
    let body = Bytes::from(vec![b'x'; s.body_bytes]);

    // --- processes -----------------------------------------------------------------------
    let sentry = Sentry::start(&dir, "24h", "15m").await?;
    let mut cmd = tokio::process::Command::new(binary("echo-app"));
    cmd.args(["--protocol", "http", "--port", "0"]);
    let app_http = spawn_echo_app(cmd, Duration::from_secs(10)).await?;
    let mut cmd = tokio::process::Command::new(binary("echo-app"));
    cmd.args(["--protocol", "grpc", "--port", "0"]);
    let app_grpc = spawn_echo_app(cmd, Duration::from_secs(10)).await?;

    let callee_http = Daprd::start(
        "orders",
        &dir,
        &sentry,
        Some((app_http.addr.port(), "http")),
    )
    .await?;
    let callee_grpc = Daprd::start(
        "orders-grpc",
        &dir,
        &sentry,
        Some((app_grpc.addr.port(), "grpc")),
    )
    .await?;
    let caller = Daprd::start("checkout", &dir, &sentry, None).await?;
    callee_http.wait_healthy().await?;
    callee_grpc.wait_healthy().await?;
    let upstream =
        UpstreamSidecars::start(&dir, &sentry, app_http.addr.port(), app_grpc.addr.port()).await?;
    // Idle: certificate loaded, no traffic yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut idle_rss = json!({
        "caller": procfs::rss(caller.pid()?)?,
        "callee_http": procfs::rss(callee_http.pid()?)?,
        "callee_grpc": procfs::rss(callee_grpc.pid()?)?,
    });
    if let Some(up) = &upstream {
        idle_rss["upstream_caller"] = json!(procfs::rss(up.caller.pid()?)?);
        idle_rss["upstream_callee_http"] = json!(procfs::rss(up.callee_http.pid()?)?);
        idle_rss["upstream_callee_grpc"] = json!(procfs::rss(up.callee_grpc.pid()?)?);
    }

    let [a_http, a_grpc, b_http, b_grpc, a_h2, b_h2] = free_ports()?;
    let ports = nginx::Ports {
        a_http,
        a_grpc,
        b_http,
        b_grpc,
        a_h2,
        b_h2,
    };
    nginx::write_certs(&dir)?;
    let nginx_b = nginx::Nginx::start(
        &nginx_bin,
        &dir,
        "nginx-b",
        &nginx::config_b(&dir, ports, app_http.addr.port(), app_grpc.addr.port()),
        &[ports.b_http, ports.b_grpc, ports.b_h2],
    )
    .await?;
    let nginx_a = nginx::Nginx::start(
        &nginx_bin,
        &dir,
        "nginx-a",
        &nginx::config_a(&dir, ports),
        &[ports.a_http, ports.a_grpc, ports.a_h2],
    )
    .await?;
    let nginx_idle_rss = json!({
        "nginx_a": procfs::rss(nginx_a.pid()?)?,
        "nginx_b": procfs::rss(nginx_b.pid()?)?,
    });

    // Every nginx chain runs through the same two processes.
    let nginx_proxies: Vec<(String, u32)> = vec![
        ("nginx-a".into(), nginx_a.pid()?),
        ("nginx-b".into(), nginx_b.pid()?),
    ];
    let http = |addr: SocketAddr, path: &str| Target::Http {
        addr,
        path: path.to_owned(),
        body: body.clone(),
        tls: None,
        content_type: "application/octet-stream",
    };
    let mut chains = vec![
        Chain {
            protocol: "http",
            name: "direct",
            target: http(app_http.addr, "/echo"),
            proxies: vec![],
        },
        Chain {
            protocol: "http",
            name: "nginx",
            target: http(loopback(ports.a_http), "/echo"),
            proxies: nginx_proxies.clone(),
        },
        Chain {
            protocol: "http",
            name: "nginx-h2",
            target: http(loopback(ports.a_h2), "/echo"),
            proxies: nginx_proxies.clone(),
        },
        Chain {
            protocol: "http",
            name: "daprd",
            target: http(
                loopback(caller.http_port),
                "/v1.0/invoke/orders/method/echo",
            ),
            proxies: vec![
                ("daprd-caller".into(), caller.pid()?),
                ("daprd-callee".into(), callee_http.pid()?),
            ],
        },
    ];
    if let Some(up) = &upstream {
        chains.push(Chain {
            protocol: "http",
            name: "upstream",
            target: http(
                loopback(up.caller.http_port),
                &format!("/v1.0/invoke/{UPSTREAM_HTTP_ID}/method/echo"),
            ),
            proxies: vec![
                ("upstream-caller".into(), up.caller.pid()?),
                ("upstream-callee".into(), up.callee_http.pid()?),
            ],
        });
    }
    chains.extend([
        Chain {
            protocol: "grpc",
            name: "direct",
            target: Target::AppGrpc {
                addr: app_grpc.addr,
                body: body.clone(),
            },
            proxies: vec![],
        },
        Chain {
            protocol: "grpc",
            name: "nginx",
            target: Target::AppGrpc {
                addr: loopback(ports.a_grpc),
                body: body.clone(),
            },
            proxies: nginx_proxies.clone(),
        },
        Chain {
            protocol: "grpc",
            name: "daprd",
            target: Target::DaprGrpc {
                addr: loopback(caller.grpc_port),
                app_id: "orders-grpc".into(),
                body: body.clone(),
            },
            proxies: vec![
                ("daprd-caller".into(), caller.pid()?),
                ("daprd-callee".into(), callee_grpc.pid()?),
            ],
        },
    ]);
    if let Some(up) = &upstream {
        chains.push(Chain {
            protocol: "grpc",
            name: "upstream",
            target: Target::DaprGrpc {
                addr: loopback(up.caller.grpc_port),
                app_id: UPSTREAM_GRPC_ID.into(),
                body: body.clone(),
            },
            proxies: vec![
                ("upstream-caller".into(), up.caller.pid()?),
                ("upstream-callee".into(), up.callee_grpc.pid()?),
            ],
        });
    }
    // Every chain answers before anything is measured.
    for c in &chains {
        let mut conn = c.target.connect(0).await?;
        conn.call()
            .await
            .with_context(|| format!("{} {} chain does not answer", c.protocol, c.name))?;
    }

    // --- 1 + 2: latency at a constant rate, CPU, memory under load ---------------------------
    let mut results: Vec<ChainResult> = chains.iter().map(|_| ChainResult::default()).collect();
    for round in 0..s.rounds {
        for (chain, result) in chains.iter().zip(results.iter_mut()) {
            eprintln!(
                "bench: latency round {}/{}: {} {}",
                round + 1,
                s.rounds,
                chain.protocol,
                chain.name
            );
            measure_open(chain, &s, result).await?;
        }
    }
    let mut latency = Vec::new();
    for (chain, result) in chains.iter().zip(&results) {
        let summary = result
            .recorded
            .as_ref()
            .map(|r| r.summary(true))
            .context("no recording")?;
        let requests = summary.requests.max(1) as f64;
        let proxies: Vec<Value> = chain
            .proxies
            .iter()
            .enumerate()
            .map(|(i, (label, _))| {
                let cpu = result.cpu.get(i).copied().unwrap_or(0.0);
                json!({
                    "process": label,
                    "cpu_seconds": cpu,
                    "cpu_seconds_per_1000_requests": cpu / requests * 1000.0,
                    "cpu_seconds_per_1000_requests_by_round": result.cpu_by_round.get(i),
                    "vcpu_at_rate": cpu / summary.seconds.max(1e-9),
                    "peak_rss_bytes": result.peak_rss.get(i).copied().unwrap_or(0),
                })
            })
            .collect();
        latency.push(json!({
            "protocol": chain.protocol,
            "chain": chain.name,
            "summary": summary,
            "proxies": proxies,
        }));
    }
    let mut hwm = json!({
        "caller": procfs::hwm(caller.pid()?)?,
        "callee_http": procfs::hwm(callee_http.pid()?)?,
        "callee_grpc": procfs::hwm(callee_grpc.pid()?)?,
        "nginx_a": procfs::hwm(nginx_a.pid()?)?,
        "nginx_b": procfs::hwm(nginx_b.pid()?)?,
    });
    if let Some(up) = &upstream {
        hwm["upstream_caller"] = json!(procfs::hwm(up.caller.pid()?)?);
        hwm["upstream_callee_http"] = json!(procfs::hwm(up.callee_http.pid()?)?);
        hwm["upstream_callee_grpc"] = json!(procfs::hwm(up.callee_grpc.pid()?)?);
    }

    // --- 6: maximum throughput, closed loop ------------------------------------------------
    let mut max_throughput = Vec::new();
    for chain in &chains {
        eprintln!("bench: max throughput: {} {}", chain.protocol, chain.name);
        let conns = chain.target.connect_all(s.connections).await?;
        let (conns, rec) =
            load::closed_loop(conns, Duration::from_secs_f64(s.max_throughput_seconds)).await?;
        drop(conns);
        max_throughput.push(json!({
            "protocol": chain.protocol,
            "chain": chain.name,
            "summary": rec.summary(false),
        }));
    }
    drop(nginx_a);
    drop(nginx_b);
    let upstream_present = upstream.is_some();
    drop(upstream);

    // --- 3: sidecar start ------------------------------------------------------------------
    let mut starts = Vec::new();
    for i in 0..s.starts {
        let start_dir = dir.join(format!("start-{i}"));
        std::fs::create_dir_all(&start_dir)?;
        let d = Daprd::start(&format!("start-{i}"), &start_dir, &sentry, None).await?;
        starts.push(d.ready_after.as_secs_f64() * 1000.0);
        drop(d);
    }
    let mut start_json = starts_summary(&starts);
    if upstream_present {
        let mut starts = Vec::new();
        let config = upstream_config(&dir, "upstream-start", &[])?;
        for i in 0..s.starts {
            let start_dir = dir.join(format!("upstream-start-{i}"));
            std::fs::create_dir_all(&start_dir)?;
            let d = Daprd::start_with(
                Implementation::Upstream,
                &format!("start-{i}"),
                &start_dir,
                &sentry,
                None,
                &config,
            )
            .await?;
            starts.push(d.ready_after.as_secs_f64() * 1000.0);
            drop(d);
        }
        start_json["upstream"] = starts_summary(&starts);
    }

    // --- 4: sentry -------------------------------------------------------------------------
    let anchors = Arc::new(dapr_identity::tls::root_store(&std::fs::read(
        sentry.trust_anchors(),
    )?)?);
    let sentry_id = dapr_identity::spiffe::SpiffeId::new("localhost", "default", "dapr-sentry")?;
    let sentry_tls = Arc::new(dapr_identity::tls::client_config(
        anchors,
        dapr_identity::tls::ExpectedId::Exact(sentry_id),
    )?);
    let mut csrs = Vec::new();
    for _ in 0..s.sentry_clients {
        // The key type our daprd and upstream's ask with.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        csrs.push(params.serialize_request(&key)?.pem()?.into_bytes());
    }
    let sentry_target = Target::Sentry {
        addr: sentry.addr,
        tls: sentry_tls,
        csrs: Arc::new(csrs),
    };
    let sentry_pid = sentry.child.id().context("sentry exited")?;
    // One core for sentry, so CSR/s reads as "on one core".
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &sentry_pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    eprintln!("bench: sentry, {} clients", s.sentry_clients);
    let conns = sentry_target.connect_all(s.sentry_clients).await?;
    let (conns, _) = load::closed_loop(conns, Duration::from_millis(500)).await?;
    let cpu0 = procfs::cpu_seconds(sentry_pid)?;
    let (conns, rec) = load::closed_loop(conns, Duration::from_secs_f64(s.sentry_seconds)).await?;
    let sentry_cpu = procfs::cpu_seconds(sentry_pid)? - cpu0;
    let sentry_closed = rec.summary(false);
    let (conns, rec) = load::open_loop(
        conns,
        s.sentry_rate,
        Duration::from_secs_f64(s.sentry_seconds),
    )
    .await?;
    drop(conns);
    let sentry_open = rec.summary(true);
    let sentry_json = json!({
        "pinned_to_one_cpu": pinned,
        "closed_loop": sentry_closed,
        "cpu_seconds": sentry_cpu,
        "csr_per_cpu_second": sentry_closed.requests as f64 / sentry_cpu.max(1e-9),
        "open_loop": sentry_open,
    });
    drop(sentry);

    // --- 5: injector -----------------------------------------------------------------------
    eprintln!("bench: injector");
    let injector = start_injector(&dir).await?;
    let review =
        std::fs::read(repo.join("injector/tests/golden/01-basic-deployment-pod/review.json"))
            .context("reading the AdmissionReview fixture")?;
    let injector_target = Target::Http {
        addr: injector.webhook,
        path: "/mutate".into(),
        body: Bytes::from(review),
        tls: Some(injector.client_tls.clone()),
        content_type: "application/json",
    };
    let conns = injector_target.connect_all(s.injector_connections).await?;
    let (conns, _) = load::closed_loop(conns, Duration::from_millis(500)).await?;
    let (conns, rec) =
        load::closed_loop(conns, Duration::from_secs_f64(s.injector_seconds)).await?;
    let injector_closed = rec.summary(false);
    let (conns, rec) = load::open_loop(
        conns,
        s.injector_rate,
        Duration::from_secs_f64(s.injector_seconds),
    )
    .await?;
    drop(conns);
    let injector_open = rec.summary(true);
    let injector_pid = injector.child.id().context("injector exited")?;
    let injector_json = json!({
        "closed_loop": injector_closed,
        "open_loop": injector_open,
        "rss_bytes": procfs::rss(injector_pid)?,
    });
    drop(injector);

    let results = json!({
        "generated_at": now_utc(),
        "machine": machine,
        "settings": s,
        "load_generator": "e2e bench (this repository): Rust, hyper 1 HTTP/1.1 and tonic 0.14 clients, one connection per worker, open loop paced by a dedicated thread (std::thread::sleep), latency from the scheduled send time (coordinated-omission corrected), hdrhistogram 7 (ns, 3 significant digits)",
        "nginx_version": nginx::version(&nginx_bin),
        "daprd_placement_warning": placement_warning,
        "upstream_version": upstream_present.then(|| upstream_version(&repo)),
        "latency": latency,
        "rss": {"idle": idle_rss, "nginx_idle": nginx_idle_rss, "hwm_after_load": hwm},
        "max_throughput": max_throughput,
        "start": start_json,
        "sentry": sentry_json,
        "injector": injector_json,
        "wall_seconds": began.elapsed().as_secs_f64(),
    });
    let bench_dir = out.join("bench");
    std::fs::create_dir_all(&bench_dir)?;
    let json_path = bench_dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    let markdown = write_report(&args, &repo, &out, &json_path, &results)?;
    println!("{markdown}");
    eprintln!(
        "bench: wrote {}, {} in {:.0}s",
        out.join("BENCHMARKS.md").display(),
        json_path.display(),
        began.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
