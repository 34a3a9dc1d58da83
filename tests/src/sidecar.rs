//! Runs the real `daprd` binary as a process on loopback, and a small HTTP client to talk to it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The workspace's `target/<profile>` directory, where `cargo build --workspace --bins` put the
/// binaries. Panics naming the binary when it is older than a source file of the workspace's
/// crates, so a test never runs the previous build of what it tests.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target.join(profile).join(name);
    if let Some(stale) = newer_source_than(&path) {
        panic!(
            "{} is older than {}: run `cargo build --workspace --bins` first (scripts/test.sh does)",
            path.display(),
            stale.display()
        );
    }
    path
}

/// The newest source file of the crates binary `binary` is built from, if it is newer than the
/// binary (a missing binary is left to the caller, which names the build command).
fn newer_source_than(binary: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    // What every binary links, then what its own crate links: the products also link the
    // serving and CRD crates, the test peers (this crate's binaries) do not.
    let mut dirs = vec!["proto", "identity/src"];
    let product = ["crds/src", "serve/src"];
    match binary.file_name().and_then(|n| n.to_str()) {
        Some("sentry") => dirs.extend(product.iter().chain(&["sentry/src"])),
        Some("daprd") => dirs.extend(product.iter().chain(&["daprd/src"])),
        Some("injector") => dirs.extend(product.iter().chain(&["injector/src"])),
        _ => dirs.push("tests/src"),
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest = None;
    for dir in dirs {
        newest_in(&root.join(dir), &mut newest);
    }
    newest
        .filter(|(modified, _)| *modified > built)
        .map(|(_, path)| path)
}

fn newest_in(dir: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            newest_in(&path, newest);
        } else if let Ok(modified) = meta.modified()
            && newest.as_ref().is_none_or(|(m, _)| modified > *m)
        {
            *newest = Some((modified, path));
        }
    }
}

/// Polls `ready` every `every` until it holds. Fails at once, with the process's log, if the
/// process (`what`) exits first, and after `within` if it never becomes ready.
pub async fn wait_ready<F, Fut>(
    child: &mut tokio::process::Child,
    what: &str,
    log: &Path,
    within: Duration,
    every: Duration,
    mut ready: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if ready().await {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited with {status}; log:\n{}", log_text());
        }
        if Instant::now() > deadline {
            bail!("{what} not ready within {within:?}; log:\n{}", log_text());
        }
        tokio::time::sleep(every).await;
    }
}

/// Whether daprd's `log` says a server of its own listens on loopback `port` (its
/// "... listening on 127.0.0.1:<port>" lines, written once the port is bound).
fn logs_listening(log: &str, port: u16) -> bool {
    let needle = format!("listening on 127.0.0.1:{port}");
    log.match_indices(&needle).any(|(at, _)| {
        !log[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// A port that was free a moment ago (the test's processes bind it right after).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `N` ports that were free a moment ago, all different: each is held until all are chosen,
/// where [`free_port`] called `N` times can hand out one port twice.
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let held = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&held) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// One `daprd` process; killed when dropped.
pub struct Sidecar {
    pub app_id: String,
    pub http_port: u16,
    pub grpc_port: u16,
    pub internal_port: u16,
    /// `--metrics-port` (nothing listens there with `--enable-metrics=false`).
    pub metrics_port: u16,
    /// Where the harness polls health: `http_port`, or with a Unix-domain socket (where nothing
    /// listens on `http_port`) the public port.
    pub health_port: u16,
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

/// Options for [`Sidecar::start`].
#[derive(Default, Clone)]
pub struct SidecarOptions {
    pub app_port: Option<u16>,
    /// The Configuration file; `None` gets one selecting sqlite in the sidecar's directory, so a
    /// sidecar in the root namespace never multicasts (mDNS) on the machine's real interfaces.
    pub config: Option<PathBuf>,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `--dapr-internal-grpc-port`; `None` picks a free one (a restarted sidecar keeps its own).
    pub internal_port: Option<u16>,
    /// `--unix-domain-socket`: the APIs listen on sockets in this directory, and the sidecar
    /// gets a public port for its health checks.
    pub unix_domain_socket: Option<PathBuf>,
}

impl Sidecar {
    /// Starts daprd and waits (bounded) until `/v1.0/healthz/outbound` answers 204.
    ///
    /// daprd exits with "cannot listen on" when a port picked for it was taken first; the
    /// start is then retried with fresh ports ([`with_fresh_ports`]).
    pub async fn start(
        app_id: &str,
        dir: &Path,
        options: SidecarOptions,
    ) -> anyhow::Result<Sidecar> {
        with_fresh_ports("cannot listen on", || {
            Self::start_once(app_id, dir, options.clone())
        })
        .await
    }

    async fn start_once(
        app_id: &str,
        dir: &Path,
        options: SidecarOptions,
    ) -> anyhow::Result<Sidecar> {
        let daprd = binary("daprd");
        if !daprd.exists() {
            bail!(
                "{} is missing: run `cargo build --workspace --bins` (scripts/test.sh does)",
                daprd.display()
            );
        }
        let [
            http_port,
            grpc_port,
            metrics_port,
            own_internal,
            public_port,
        ] = free_ports()?;
        let internal_port = options.internal_port.unwrap_or(own_internal);
        let mut health_port = http_port;
        let log = dir.join(format!("daprd-{app_id}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = tokio::process::Command::new(daprd);
        cmd.args(["--app-id", app_id])
            .args(["--dapr-http-port", &http_port.to_string()])
            .args(["--dapr-grpc-port", &grpc_port.to_string()])
            .args(["--dapr-internal-grpc-port", &internal_port.to_string()])
            .args(["--metrics-port", &metrics_port.to_string()])
            .args(["--dapr-listen-addresses", "127.0.0.1"])
            .args(["--log-level", "debug"]);
        if let Some(port) = options.app_port {
            cmd.args(["--app-port", &port.to_string()]);
        }
        let config = match &options.config {
            Some(config) => config.clone(),
            None => sqlite_config(dir, &format!("{app_id}-default"), "")?,
        };
        cmd.arg("--config").arg(config);
        if let Some(dir) = &options.unix_domain_socket {
            health_port = public_port;
            cmd.arg("--unix-domain-socket")
                .arg(dir)
                .args(["--dapr-public-port", &health_port.to_string()])
                .args(["--dapr-public-listen-address", "127.0.0.1"]);
        }
        cmd.args(&options.extra_args)
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd.spawn().context("spawn daprd")?;
        let mut sidecar = Sidecar {
            app_id: app_id.to_owned(),
            http_port,
            grpc_port,
            internal_port,
            metrics_port,
            health_port,
            child,
            log,
        };
        sidecar
            .wait_for("/v1.0/healthz/outbound", Duration::from_secs(20))
            .await?;
        Ok(sidecar)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.metrics_port)
    }

    /// Polls `path` until it answers 204 or the deadline passes.
    ///
    /// The answer counts only once this sidecar's log says it listens on the port polled: a
    /// port [`free_port`] handed out may be bound by another test's sidecar first, whose 204
    /// would otherwise pass for this one's readiness while this one exits ("cannot listen on").
    pub async fn wait_for(&mut self, path: &str, within: Duration) -> anyhow::Result<()> {
        let client = HttpClient::new();
        let url = format!("http://127.0.0.1:{}{path}", self.health_port);
        let what = format!("daprd {} (at {path})", self.app_id);
        let (log, port) = (self.log.clone(), self.health_port);
        wait_ready(
            &mut self.child,
            &what,
            &self.log,
            within,
            Duration::from_millis(50),
            || async {
                logs_listening(&std::fs::read_to_string(&log).unwrap_or_default(), port)
                    && client.get(&url).await.is_ok_and(|r| r.status == 204)
            },
        )
        .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub async fn terminate(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("daprd already exited")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        tokio::time::timeout(within, self.child.wait())
            .await
            .context("daprd did not exit after SIGTERM")?
            .context("wait for daprd")
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A keep-alive HTTP/1.1 client with a deadline on every call.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        self.send(http::Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn send(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut request = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(body))?;
        let call = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .with_context(|| format!("{url} did not answer within 30s"))?
    }
}

/// A bounded load loop: `workers` tasks, each with its own client, `GET` `url` until `deadline`
/// or `max_per_worker` answers of 200 each. Every other answer or error is a failure.
pub struct GetLoad(Vec<tokio::task::JoinHandle<(u32, Vec<String>)>>);

impl GetLoad {
    pub fn start(url: &str, workers: usize, deadline: Instant, max_per_worker: u32) -> Self {
        GetLoad(
            (0..workers)
                .map(|_| {
                    let url = url.to_owned();
                    tokio::spawn(async move {
                        let client = HttpClient::new();
                        let (mut ok, mut failed) = (0u32, Vec::new());
                        while Instant::now() < deadline && ok < max_per_worker {
                            match client.get(&url).await {
                                Ok(r) if r.status == 200 => ok += 1,
                                Ok(r) => failed.push(format!("{} {:?}", r.status, r.body)),
                                Err(e) => failed.push(e.to_string()),
                            }
                        }
                        (ok, failed)
                    })
                })
                .collect(),
        )
    }

    /// Waits for every worker: the number of successful calls and every failure.
    pub async fn finish(self) -> anyhow::Result<(u32, Vec<String>)> {
        let (mut total, mut failures) = (0, Vec::new());
        for worker in self.0 {
            let (ok, failed) = worker.await?;
            total += ok;
            failures.extend(failed);
        }
        Ok((total, failures))
    }
}

/// Runs `start` again, at most three times in all, while it fails with `taken` in its error:
/// a port picked by [`free_port`] can be taken by someone else's connection before the
/// process binds it, and each attempt picks fresh ones.
pub async fn with_fresh_ports<T, F>(taken: &str, mut start: impl FnMut() -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match start().await {
            Err(e) if attempt < 3 && format!("{e:#}").contains(taken) => attempt += 1,
            result => return result,
        }
    }
}

/// A fresh scratch directory under the system temp dir, `dapr-e2e-<name>-<pid>`. A test's
/// directory stays when it ends (its logs are what a failure is read from); the first call in
/// each test process removes those left by test processes that have exited.
pub fn scratch_dir(name: &str) -> anyhow::Result<PathBuf> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| remove_exited_scratch_dirs(&std::env::temp_dir()));
    let dir = std::env::temp_dir().join(format!("dapr-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Removes the `dapr-e2e-*-<pid>` directories under `temp` whose process has exited (no
/// `/proc/<pid>`): a run's directories are cleared by the next run, and a live run's never.
fn remove_exited_scratch_dirs(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let pid = name
            .strip_prefix("dapr-e2e-")
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A Configuration file selecting the sqlite resolver over a database in `dir`, plus `extra`
/// spec YAML (indented two spaces).
pub fn sqlite_config(dir: &Path, name: &str, extra: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: e2e\nspec:\n  nameResolution:\n    component: sqlite\n    configuration:\n      connectionString: {}\n{extra}",
        dir.join("nr.db").display()
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Registers a peer that is not a sidecar (a test's own gRPC server) as `app_id` at `addr` in the
/// sqlite name-resolution file of `dir`, in upstream's schema (which our resolver uses): tables
/// created if missing, migration level 1, and `last_update` a day ahead, so the row stays live
/// (`now - last_update < updateInterval`) however long the test runs and is never collected.
pub fn register_static_peer(dir: &Path, app_id: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let db = rusqlite::Connection::open(dir.join("nr.db"))?;
    db.busy_timeout(Duration::from_secs(5))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS metadata (key text NOT NULL PRIMARY KEY, value text NOT NULL);
         INSERT OR IGNORE INTO metadata (key, value) VALUES ('nr-migrations', '1');
         CREATE TABLE IF NOT EXISTS hosts (registration_id TEXT NOT NULL PRIMARY KEY,
             address TEXT NOT NULL, app_id TEXT NOT NULL, namespace TEXT NOT NULL,
             last_update INTEGER NOT NULL);
         CREATE UNIQUE INDEX IF NOT EXISTS hosts_address_idx ON hosts (address);
         CREATE INDEX IF NOT EXISTS hosts_last_update_idx ON hosts (last_update);",
    )?;
    db.execute(
        "REPLACE INTO hosts (registration_id, address, app_id, namespace, last_update)
         VALUES (?1, ?2, ?3, '', unixepoch(CURRENT_TIMESTAMP) + 86400)",
        rusqlite::params![format!("static-{app_id}-{addr}"), addr.to_string(), app_id],
    )?;
    Ok(())
}

/// The address string for a loopback port.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The two-sidecar setup most suites use: `callee` (whose options carry its app port) in
/// `dir/callee`, waited until `/v1.0/healthz` answers 204 (it sees its app), then `caller` in
/// `dir`.
pub async fn start_pair(
    dir: &Path,
    callee: (&str, SidecarOptions),
    caller: (&str, SidecarOptions),
) -> anyhow::Result<(Sidecar, Sidecar)> {
    let callee_dir = dir.join("callee");
    std::fs::create_dir_all(&callee_dir)?;
    let mut callee = Sidecar::start(callee.0, &callee_dir, callee.1)
        .await
        .context("callee starts")?;
    callee
        .wait_for("/v1.0/healthz", Duration::from_secs(20))
        .await
        .context("callee sees its app")?;
    let caller = Sidecar::start(caller.0, dir, caller.1)
        .await
        .context("caller starts")?;
    Ok((callee, caller))
}

/// [`start_pair`] as most suites use it: `orders` (its app on `app_port`, Configuration `spec`
/// lines, `args`) and `checkout` (no app), both on the sqlite resolver file in `dir`.
pub async fn start_sqlite_pair(
    dir: &Path,
    app_port: u16,
    spec: &str,
    args: &[&str],
) -> anyhow::Result<(Sidecar, Sidecar)> {
    let callee = SidecarOptions {
        app_port: Some(app_port),
        config: Some(sqlite_config(dir, "callee", spec)?),
        extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    };
    let caller = SidecarOptions {
        config: Some(sqlite_config(dir, "caller", "")?),
        ..Default::default()
    };
    start_pair(dir, ("orders", callee), ("checkout", caller)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scratch_dirs_of_exited_processes_are_removed() {
        let temp = std::env::temp_dir().join(format!("dapr-sweep-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&temp);
        // No process has a pid above the kernel's 2^22 limit.
        let exited = temp.join("dapr-e2e-old-run-4000000000");
        let live = temp.join(format!("dapr-e2e-this-run-{}", std::process::id()));
        let others = [temp.join("dapr-e2e-no-pid"), temp.join("other-4000000000")];
        for dir in [&exited, &live].into_iter().chain(&others) {
            std::fs::create_dir_all(dir.join("inner")).expect("create");
        }
        remove_exited_scratch_dirs(&temp);
        assert!(!exited.exists(), "an exited run's directory is removed");
        assert!(live.exists(), "a live run's directory stays");
        for dir in &others {
            assert!(dir.exists(), "{} is not a scratch directory", dir.display());
        }
        std::fs::remove_dir_all(&temp).expect("clean up");
    }

    #[test]
    fn only_a_listening_line_for_the_very_port_counts() {
        let log = "INFO daprd: HTTP server listening on 127.0.0.1:35001\n\
                   INFO daprd: public HTTP server listening on 127.0.0.1:4100 (public)\n";
        assert!(logs_listening(log, 35001));
        assert!(logs_listening(log, 4100));
        assert!(!logs_listening(log, 3500), "a prefix of another port");
        assert!(!logs_listening(log, 410));
        assert!(!logs_listening("", 35001));
    }
}
