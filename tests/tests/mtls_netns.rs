//! Workload identity across real network boundaries: sentry (standalone, generated root) and
//! daprd "pods", each in its own network namespace with its own address, found through a DNS
//! server answering the `<app-id>-dapr` names as kube DNS does. Sidecars with certificates from
//! that sentry call each other over mutual TLS; a sidecar whose certificate comes from another
//! root can neither call them nor be called; a name that leads to a sidecar with another
//! identity is refused on dial.
//!
//! The loopback suite (`mtls.rs`) covers renewal, root rotation and sentry outages in depth;
//! here the point is that the same identities hold between hosts.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use e2e::netns::{Network, describe};
use e2e::sentry::{args as sentry_args, sidecar_options};
use e2e::sidecar::binary;
use e2e::spawn_echo_app;

const SENTRY_PORT: u16 = 50001;
const INTERNAL_PORT: u16 = 50002;

/// Starts sentry in `host`, its state under `dir`, and waits (bounded) until its root exists
/// and it accepts connections.
async fn start_sentry(net: &Network, host: &str, dir: &Path) -> tokio::process::Child {
    std::fs::create_dir_all(dir).expect("sentry dir");
    let log = std::fs::File::create(dir.join("sentry.log")).expect("log");
    let child = net
        .command(host, binary("sentry"))
        .args(sentry_args(dir, "0.0.0.0", SENTRY_PORT, 8080, "1h", "15m").expect("sentry args"))
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("sentry");
    let ip = net.host(host).ip;
    net.wait_for_tcp(host, (ip, SENTRY_PORT).into(), Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{host}: {e}\n{}", log_of(&dir.join("sentry.log"))));
    assert!(dir.join("creds/ca.crt").exists(), "sentry wrote its root");
    child
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A daprd "pod" in `host` with identity from the sentry in `sentry_host`, trusting `anchors`;
/// its log goes to `<net dir>/<host>.log`.
fn daprd(
    net: &Network,
    host: &str,
    app_id: &str,
    app_port: Option<u16>,
    sentry_host: &str,
    anchors: &Path,
) -> tokio::process::Child {
    let sentry = format!("{}:{SENTRY_PORT}", net.host(sentry_host).ip);
    let (args, env) = sidecar_options(&sentry, anchors);
    let log = std::fs::File::create(net.dir().join(format!("{host}.log"))).expect("log");
    let mut cmd = net.command(host, binary("daprd"));
    cmd.args(["--mode", "kubernetes", "--app-id", app_id])
        .args(["--dapr-internal-grpc-port", &INTERNAL_PORT.to_string()])
        .args(args)
        .envs(env)
        .env("DAPR_HOST_IP", net.host(host).ip.to_string())
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    if let Some(port) = app_port {
        cmd.args(["--app-port", &port.to_string()]);
    }
    cmd.spawn().expect("daprd")
}

/// `curl` in `host` against its daprd's invoke API: (HTTP status, body).
async fn invoke(net: &Network, host: &str, app_id: &str, method: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:3500/v1.0/invoke/{app_id}/method/{method}");
    let out = net
        .http(host, &["-w", "\n%{http_code}", &url])
        .await
        .expect("curl runs");
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.parse().expect("status"), body.to_owned())
}

/// Polls until `host`'s daprd answers `/v1.0/healthz` with 204 (it is ready only once it holds
/// a certificate), at most 30 s.
async fn wait_ready(net: &Network, host: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
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
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{host} not ready within 30s:\n{}",
            log_of(&net.dir().join(format!("{host}.log")))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sidecars_in_their_own_namespaces_use_mtls_and_refuse_another_roots_identities() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let mut net = Network::create(&["sentry", "rogue-sentry", "orders", "checkout", "rogue"])
        .expect("network (the e2e tier needs root, iproute2, dnsmasq)");
    let ip = |host: &str| net.host(host).ip;
    let (orders, checkout, rogue) = (ip("orders"), ip("checkout"), ip("rogue"));
    net.start_dns(&[
        ("orders-dapr.default.svc.cluster.local", vec![orders]),
        ("checkout-dapr.default.svc.cluster.local", vec![checkout]),
        ("rogue-dapr.default.svc.cluster.local", vec![rogue]),
        // A name that leads to orders' pod: whoever answers there is not `imposter`.
        ("imposter-dapr.default.svc.cluster.local", vec![orders]),
    ])
    .expect("dns");

    let dir = net.dir().to_path_buf();
    let _sentry = start_sentry(&net, "sentry", &dir.join("sentry")).await;
    let _rogue_sentry = start_sentry(&net, "rogue-sentry", &dir.join("rogue-sentry")).await;
    let anchors = dir.join("sentry/creds/ca.crt");
    // The rogue trusts both roots, so what stops it is the others' trust, not its own.
    let both = dir.join("both-roots.pem");
    std::fs::write(
        &both,
        format!(
            "{}{}",
            log_of(&anchors),
            log_of(&dir.join("rogue-sentry/creds/ca.crt"))
        ),
    )
    .expect("both roots");

    let mut children = Vec::new();
    for host in ["orders", "rogue"] {
        let mut app = net.command(host, binary("echo-app"));
        app.args(["--port", "7000"]);
        let app = spawn_echo_app(app, Duration::from_secs(10))
            .await
            .expect("echo app");
        children.push(app.child);
    }
    children.push(daprd(
        &net,
        "orders",
        "orders",
        Some(7000),
        "sentry",
        &anchors,
    ));
    children.push(daprd(
        &net, "checkout", "checkout", None, "sentry", &anchors,
    ));
    children.push(daprd(
        &net,
        "rogue",
        "rogue",
        Some(7000),
        "rogue-sentry",
        &both,
    ));
    for host in ["orders", "checkout", "rogue"] {
        wait_ready(&net, host).await;
    }

    let (status, body) = invoke(&net, "checkout", "orders", "inspect/first").await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(seen["headers"]["dapr-caller-app-id"], "checkout");
    assert_eq!(seen["headers"]["x-forwarded-for"], checkout.to_string());

    // The rogue's certificate chains to a root orders does not trust: orders refuses it.
    let (status, body) = invoke(&net, "rogue", "orders", "inspect/sneaky").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("ERR_DIRECT_INVOKE"), "{body}");
    assert!(body.contains("the connection to the peer failed"), "{body}");
    let orders_log = log_of(&dir.join("orders.log"));
    assert!(
        orders_log.contains("refused a peer: TLS handshake failed"),
        "{orders_log}"
    );
    // Checkout does not trust the rogue's root: it refuses to call it.
    let (status, body) = invoke(&net, "checkout", "rogue", "inspect/x").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("ERR_DIRECT_INVOKE"), "{body}");
    assert!(body.contains("invalid peer certificate"), "{body}");
    // The name resolves, TLS verifies, but the peer is orders, not imposter.
    let (status, body) = invoke(&net, "checkout", "imposter", "inspect/x").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("spiffe://public/ns/default/orders is not the expected"),
        "names who answered: {body}"
    );

    // The refused attempts left nothing behind: the good path still works.
    let (status, body) = invoke(&net, "checkout", "orders", "inspect/again").await;
    assert_eq!(status, 200, "{body}");
    drop(children);
}
