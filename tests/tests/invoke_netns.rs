//! Sidecars as "pods": each daprd and its app in its own network namespace with its own
//! address, found through the `kubernetes` resolver via a DNS server (dnsmasq) that answers
//! `<app-id>-dapr.default.svc.cluster.local` with the pods' addresses, as kube DNS does for the
//! headless Service.

use std::time::Duration;

use e2e::netns::Network;
use e2e::sidecar::binary;
use e2e::spawn_echo_app;

const INTERNAL_PORT: &str = "50002";

fn daprd(
    net: &Network,
    host: &str,
    app_id: &str,
    app_port: Option<u16>,
) -> tokio::process::Command {
    let mut cmd = net.command(host, binary("daprd"));
    cmd.args(["--mode", "kubernetes", "--app-id", app_id])
        .args(["--dapr-internal-grpc-port", INTERNAL_PORT])
        .args(["--log-level", "debug"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(port) = app_port {
        cmd.args(["--app-port", &port.to_string()]);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_in_their_own_namespaces_invoke_each_other_through_kube_dns_names() {
    let mut net = Network::create(&["a", "b1", "b2"])
        .expect("network (the e2e tier needs root, iproute2, dnsmasq)");
    let (b1, b2) = (net.host("b1").ip, net.host("b2").ip);
    net.start_dns(&[("orders-dapr.default.svc.cluster.local", vec![b1, b2])])
        .expect("dns");

    let mut children = Vec::new();
    for host in ["b1", "b2"] {
        let mut app = net.command(host, binary("echo-app"));
        app.args(["--port", "7000"]);
        let app = spawn_echo_app(app, Duration::from_secs(10))
            .await
            .expect("echo app");
        children.push(app.child);
        children.push(
            daprd(&net, host, "orders", Some(7000))
                .spawn()
                .expect("daprd orders"),
        );
    }
    children.push(
        daprd(&net, "a", "checkout", None)
            .spawn()
            .expect("daprd checkout"),
    );
    for (host, ip) in [("b1", b1), ("b2", b2)] {
        net.wait_for_tcp("a", (ip, 50002).into(), Duration::from_secs(20))
            .await
            .expect(host);
    }
    net.wait_for_tcp(
        "a",
        "127.0.0.1:3500".parse().expect("addr"),
        Duration::from_secs(20),
    )
    .await
    .expect("caller up");

    for i in 0..6 {
        let url = format!("http://127.0.0.1:3500/v1.0/invoke/orders/method/inspect/call/{i}?q={i}");
        let out = net
            .http(
                "a",
                &["-X", "POST", "-H", "x-custom: netns", "--data", "hi", &url],
            )
            .await
            .expect("curl runs");
        assert!(out.status.success(), "{}", e2e::netns::describe(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], format!("/inspect/call/{i}"));
        assert_eq!(json["query"], format!("q={i}"));
        assert_eq!(json["headers"]["dapr-caller-app-id"], "checkout");
        assert_eq!(json["headers"]["dapr-callee-app-id"], "orders");
        assert_eq!(json["headers"]["x-custom"], "netns");
    }
    assert!(
        net.dns_log()
            .contains("orders-dapr.default.svc.cluster.local"),
        "resolved through dnsmasq"
    );

    // An app id with no Service: the DNS answer is NXDOMAIN and the caller gets Dapr's error.
    let out = net
        .http("a", &["http://127.0.0.1:3500/v1.0/invoke/nobody/method/x"])
        .await
        .expect("curl runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(json["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(
        json["message"]
            .as_str()
            .unwrap_or("")
            .contains("nobody-dapr.default.svc.cluster.local"),
        "{json}"
    );
    drop(children);
}
