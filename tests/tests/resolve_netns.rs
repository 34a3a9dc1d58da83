//! Standalone name resolution between "machines": two sidecars, each with its echo app, in their
//! own network namespaces on one bridge. With `mdns` (the standalone default) they find each
//! other by multicast DNS-SD; with `sqlite` through a database file on the host filesystem, which
//! every namespace sees. The same scenario runs for both: invoke both ways by app id, an unknown
//! app id fails promptly, a stopped callee fails cleanly, a restarted one on a new port is found.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use e2e::netns::Network;
use e2e::sidecar::binary;
use e2e::spawn_echo_app;

const APP_PORT: u16 = 7000;
/// Bound on each wait for a sidecar to come up or to become reachable by another.
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);

/// A daprd in a namespace, killed on drop; its log stays in the network's directory.
struct Daprd {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Daprd {
    async fn start(
        net: &Network,
        host: &str,
        app_id: &str,
        resolver: &Resolver,
        extra: &[&str],
    ) -> Daprd {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = net.dir().join(format!("daprd-{host}-{n}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = net.command(host, binary("daprd"));
        cmd.args(["--app-id", app_id, "--app-port", &APP_PORT.to_string()])
            .args(["--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file));
        if let Resolver::Sqlite(config) = resolver {
            // The sqlite resolver registers DAPR_HOST_IP (else loopback) for peers to dial.
            cmd.arg("--config")
                .arg(config)
                .env("DAPR_HOST_IP", net.host(host).ip.to_string());
        }
        let mut daprd = Daprd {
            child: cmd.spawn().expect("spawn daprd"),
            log,
        };
        let deadline = Instant::now() + WAIT;
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
                .await
                .expect("curl runs");
            if out.stdout == b"204" {
                return daprd;
            }
            if let Ok(Some(status)) = daprd.child.try_wait() {
                panic!("daprd {app_id} exited ({status}):\n{}", daprd.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "daprd {app_id} not healthy within {WAIT:?}:\n{}",
                daprd.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then a bounded wait for the exit (graceful shutdown withdraws the registration).
    async fn stop(mut self) {
        let pid = self.child.id().expect("daprd running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("daprd exits after SIGTERM")
            .expect("wait for daprd");
        assert!(exit.success(), "{exit}:\n{}", self.log_text());
    }
}

/// The answer to one invoke call made from inside `host` through its sidecar.
struct Answer {
    status: u16,
    body: serde_json::Value,
    took: Duration,
}

async fn invoke(net: &Network, host: &str, app_id: &str, method: &str) -> Answer {
    let url = format!("http://127.0.0.1:3500/v1.0/invoke/{app_id}/method/{method}");
    let started = Instant::now();
    let out = net
        .http(host, &["-w", "\n%{http_code}", &url])
        .await
        .expect("curl runs");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Answer {
        status: status.trim().parse().unwrap_or(0),
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        took,
    }
}

/// Calls until the callee's app answers (a fresh announcement takes a moment to be heard).
async fn invoke_until_ok(net: &Network, host: &str, app_id: &str, logs: &[&Daprd]) -> Answer {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = invoke(net, host, app_id, "inspect/hello").await;
        if answer.status == 200 {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{host} never reached {app_id} within {WAIT:?}; last answer {} {}\n{}",
            answer.status,
            answer.body,
            logs.iter()
                .map(|d| d.log_text())
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
        tokio::time::sleep(POLL).await;
    }
}

fn assert_direct_invoke_error(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 500, "{what}: {}", answer.body);
    assert_eq!(answer.body["errorCode"], "ERR_DIRECT_INVOKE", "{what}");
    assert!(
        answer.took < Duration::from_secs(5),
        "{what}: took {:?}",
        answer.took
    );
}

enum Resolver {
    /// No Configuration: the standalone default.
    Mdns,
    /// A Configuration selecting sqlite over a database file.
    Sqlite(PathBuf),
}

impl Resolver {
    fn name(&self) -> &'static str {
        match self {
            Resolver::Mdns => "mdns",
            Resolver::Sqlite(_) => "sqlite",
        }
    }
}

/// Both sidecars' apps see calls from the other; unknown ids, a stopped callee and a restarted
/// one behave as they should.
async fn scenario(net: &Network, resolver: Resolver) {
    let mut apps = Vec::new();
    for host in ["a", "b"] {
        let mut app = net.command(host, binary("echo-app"));
        app.args(["--port", &APP_PORT.to_string()]);
        apps.push(
            spawn_echo_app(app, Duration::from_secs(10))
                .await
                .expect("echo app"),
        );
    }
    let checkout = Daprd::start(net, "a", "checkout", &resolver, &[]).await;
    let orders = Daprd::start(net, "b", "orders", &resolver, &[]).await;
    for daprd in [&checkout, &orders] {
        let log = daprd.log_text();
        assert!(
            log.contains(&format!(
                "Initialized name resolution to {}",
                resolver.name()
            )),
            "{log}"
        );
    }

    let answer = invoke_until_ok(net, "a", "orders", &[&checkout, &orders]).await;
    assert_eq!(answer.body["headers"]["dapr-caller-app-id"], "checkout");
    assert_eq!(answer.body["headers"]["dapr-callee-app-id"], "orders");
    let answer = invoke_until_ok(net, "b", "checkout", &[&checkout, &orders]).await;
    assert_eq!(answer.body["headers"]["dapr-caller-app-id"], "orders");
    assert_eq!(answer.body["headers"]["dapr-callee-app-id"], "checkout");

    let unknown = invoke(net, "a", "nobody", "x").await;
    assert_direct_invoke_error(&unknown, "unknown app id");
    assert!(
        unknown.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("nobody")),
        "{}",
        unknown.body
    );

    orders.stop().await;
    let gone = invoke(net, "a", "orders", "inspect/after-stop").await;
    assert_direct_invoke_error(&gone, "stopped callee");

    // A new process on another internal port.
    let orders = Daprd::start(
        net,
        "b",
        "orders",
        &resolver,
        &["--dapr-internal-grpc-port", "50123"],
    )
    .await;
    let answer = invoke_until_ok(net, "a", "orders", &[&checkout, &orders]).await;
    assert_eq!(answer.body["path"], "/inspect/hello");
    drop(apps);
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecars_on_separate_hosts_find_each_other_over_mdns_by_default() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let net = Network::create(&["a", "b"]).expect("network (the e2e tier needs root, iproute2)");
    scenario(&net, Resolver::Mdns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecars_on_separate_hosts_find_each_other_through_a_shared_sqlite_file() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let net = Network::create(&["a", "b"]).expect("network (the e2e tier needs root, iproute2)");
    let config = e2e::sidecar::sqlite_config(net.dir(), "sqlite", "").expect("config");
    scenario(&net, Resolver::Sqlite(config)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_callee_is_forgotten_once_it_fails_to_answer_mdns_queries() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let net = Network::create(&["a", "b"]).expect("network (the e2e tier needs root, iproute2)");
    let mut apps = Vec::new();
    for host in ["a", "b"] {
        let mut app = net.command(host, binary("echo-app"));
        app.args(["--port", &APP_PORT.to_string()]);
        apps.push(
            spawn_echo_app(app, Duration::from_secs(10))
                .await
                .expect("echo app"),
        );
    }
    let checkout = Daprd::start(&net, "a", "checkout", &Resolver::Mdns, &[]).await;
    let mut orders = Daprd::start(&net, "b", "orders", &Resolver::Mdns, &[]).await;
    invoke_until_ok(&net, "a", "orders", &[&checkout, &orders]).await;

    // SIGKILL: no goodbye. The cached address fails on connect; the failure forgets the app's
    // addresses, and the next lookup asks the network, where nothing answers any more.
    orders.child.start_kill().expect("kill daprd");
    orders.child.wait().await.expect("wait for daprd");
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = invoke(&net, "a", "orders", "x").await;
        assert_direct_invoke_error(&answer, "crashed callee");
        if checkout.log_text().contains("mDNS instance gone") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the crashed instance was never dropped:\n{}",
            checkout.log_text()
        );
        tokio::time::sleep(POLL * 5).await;
    }
    let answer = invoke(&net, "a", "orders", "x").await;
    assert_direct_invoke_error(&answer, "forgotten callee");
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("couldn't find service: orders")),
        "{}",
        answer.body
    );
    drop(apps);
}
