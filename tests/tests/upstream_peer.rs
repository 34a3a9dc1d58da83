//! A mixed fleet: our daprd and upstream Dapr's daprd (built by scripts/test.sh from the published
//! Go module pinned in `tests/upstream/go.mod`, into `.cache/upstream/bin/daprd`) invoke each
//! other's apps over the HTTP API: plain text, and with mTLS where our sentry issues both
//! sidecars' certificates.
//!
//! Name resolution: the invocation tests point each sidecar at the other's internal address with
//! the kubernetes resolver's `template` (`127.0.0.1:<port>`, split into host and port by both);
//! the sqlite tests put both resolvers on one database file, in both start orders (with
//! `.cache/upstream/bin/daprd-sqlite`, else skipped); the mdns test runs both on two network
//! namespaces of one bridge (root needed).
//! The harness is `e2e::upstream` (tests/src/upstream.rs); the gRPC API, proxying, large bodies
//! and access control across the two are in `upstream_grpc.rs`.
//! Without the upstream binary each test says so and passes without running.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use e2e::sidecar::{HttpClient, Reply};
use e2e::upstream::{FleetOptions, Naming, fleet, present, upstream_binary};
use http::Method;

/// `(app_id, address, namespace)` of every row of the shared sqlite file.
fn sqlite_rows(db: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    let db = rusqlite::Connection::open(db)?;
    let mut stmt = db.prepare("SELECT app_id, address, namespace FROM hosts ORDER BY app_id")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
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
    let options = FleetOptions {
        mtls,
        ..Default::default()
    };
    let Some(fleet) = fleet(name, options).await.expect("fleet") else {
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
    let options = FleetOptions {
        mtls,
        ..Default::default()
    };
    let Some(fleet) = fleet(name, options).await.expect("fleet") else {
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

/// Both sidecars on one sqlite file: each finds the other through the row the other's resolver
/// wrote (upstream's schema, empty namespace), in both directions.
async fn shared_sqlite(name: &str, upstream_first: bool) {
    let options = FleetOptions {
        naming: Naming::SharedSqlite { upstream_first },
        ..Default::default()
    };
    let Some(fleet) = fleet(name, options).await.expect("fleet") else {
        return;
    };
    let db = fleet.dir.join("nr.db");
    if let Err(e) = async {
        let rows = sqlite_rows(&db)?;
        anyhow::ensure!(
            rows.len() == 2
                && rows[0].0 == "ours"
                && rows[1].0 == "theirs"
                && rows
                    .iter()
                    .all(|r| r.2.is_empty() && r.1.starts_with("127.0.0.1:")),
            "rows {rows:?}"
        );
        invoke_echo(&fleet.ours.url(""), "theirs").await?;
        inspect_header(&fleet.ours.url(""), "theirs", "ours").await?;
        invoke_echo(&fleet.upstream.url(""), "ours").await?;
        inspect_header(&fleet.upstream.url(""), "ours", "theirs").await
    }
    .await
    {
        panic!(
            "shared sqlite file: {e:#}\nours log:\n{}\nupstream log:\n{}",
            fleet.ours.log_text(),
            fleet.upstream.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ours_then_upstream_on_one_sqlite_file_find_each_other() {
    shared_sqlite("sqlite-ours-first", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_then_ours_on_one_sqlite_file_find_each_other() {
    shared_sqlite("sqlite-upstream-first", true).await;
}

/// A sidecar process in a network namespace, killed when dropped; its log in the network's
/// directory.
struct NetnsDaprd {
    child: tokio::process::Child,
    log: PathBuf,
}

impl NetnsDaprd {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `program` (ours or upstream's daprd, with the `mdns` default: no Configuration) for
/// `app_id` in `host` on the default ports, and waits (bounded) for `/v1.0/healthz` 204.
async fn start_in_netns(
    net: &e2e::netns::Network,
    host: &str,
    program: &Path,
    app_id: &str,
    env: &[(&str, String)],
) -> anyhow::Result<NetnsDaprd> {
    let log = net.dir().join(format!("{app_id}.log"));
    let file = std::fs::File::create(&log)?;
    let mut cmd = net.command(host, program);
    cmd.args(["--app-id", app_id, "--app-port", "7000"])
        .args(["--dapr-http-port", "3500", "--dapr-grpc-port", "50001"])
        .args([
            "--dapr-internal-grpc-port",
            "50002",
            "--metrics-port",
            "9090",
        ])
        .args(["--log-level", "debug"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file));
    let mut daprd = NetnsDaprd {
        child: cmd
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = net
            .http(
                host,
                &[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                    "http://127.0.0.1:3500/v1.0/healthz",
                ],
            )
            .await?;
        if out.stdout == b"204" {
            return Ok(daprd);
        }
        if let Ok(Some(status)) = daprd.child.try_wait() {
            bail!("{app_id} exited with {status}:\n{}", daprd.log_text());
        }
        if Instant::now() > deadline {
            bail!("{app_id} not healthy within 60s:\n{}", daprd.log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls `app_id`'s `/inspect/hello` through `host`'s sidecar until it answers 200 (an
/// announcement may take a moment to be heard), bounded; returns what the app saw.
async fn invoke_in_netns(
    net: &e2e::netns::Network,
    host: &str,
    app_id: &str,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("http://127.0.0.1:3500/v1.0/invoke/{app_id}/method/inspect/hello");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = net.http(host, &["-w", "\n%{http_code}", &url]).await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        if status.trim() == "200" {
            return Ok(serde_json::from_str(body)?);
        }
        if Instant::now() > deadline {
            bail!("{host} never reached {app_id}: last answer {status} {body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ours and upstream's daprd on two "machines" (network namespaces on one bridge), both on the
/// standalone default `mdns`: each finds the other's app by multicast, both ways. Needs root.
#[tokio::test(flavor = "multi_thread")]
async fn ours_and_upstream_find_each_other_over_mdns() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let upstream = upstream_binary();
    if !present(&upstream) {
        return;
    }
    let net = e2e::netns::Network::create(&["a", "b"])
        .expect("network (the e2e tier needs root, iproute2)");
    let mut apps = Vec::new();
    for host in ["a", "b"] {
        let mut app = net.command(host, e2e::sidecar::binary("echo-app"));
        app.args(["--port", "7000"]);
        apps.push(
            e2e::spawn_echo_app(app, Duration::from_secs(10))
                .await
                .expect("echo app"),
        );
    }
    let ours = start_in_netns(&net, "a", &e2e::sidecar::binary("daprd"), "ours", &[])
        .await
        .expect("our daprd");
    // Neither is given DAPR_HOST_IP: with no route out of this network, upstream announces its
    // first non-loopback IPv4 address (dapr `utils/host.go`), ours every interface's.
    let theirs = start_in_netns(&net, "b", &upstream, "theirs", &[])
        .await
        .expect("upstream daprd");
    let result = async {
        let seen = invoke_in_netns(&net, "a", "theirs").await?;
        anyhow::ensure!(
            seen["headers"]["dapr-caller-app-id"] == "ours",
            "upstream's app saw {seen}"
        );
        let seen = invoke_in_netns(&net, "b", "ours").await?;
        anyhow::ensure!(
            seen["headers"]["dapr-caller-app-id"] == "theirs",
            "our app saw {seen}"
        );
        let log = theirs.log_text();
        anyhow::ensure!(
            log.contains("Initialized name resolution to mdns"),
            "upstream did not use mdns"
        );
        Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!(
            "mdns mixed fleet: {e:#}\nours log:\n{}\nupstream log:\n{}",
            ours.log_text(),
            theirs.log_text()
        );
    }
    drop(apps);
}
