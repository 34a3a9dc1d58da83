//! Sidecars as "pods": each daprd and its app in its own network namespace with its own
//! address, found through the `kubernetes` resolver via a DNS server (dnsmasq) that answers
//! `<app-id>-dapr.default.svc.cluster.local` with the pods' addresses, as kube DNS does for the
//! headless Service.
//!
//! The loopback suites (invoke_loopback, invoke_grpc, app_health, ...) cover the same binaries'
//! concurrency bound, shutdown drain and health semantics in depth; here the point is that the
//! calls cross real network boundaries by DNS name.

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
    if e2e::netns::skip_without_root() {
        return;
    }
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
    let a = net.host("a").ip;
    let mut checkout = daprd(&net, "a", "checkout", None);
    checkout.env("DAPR_HOST_IP", a.to_string());
    children.push(checkout.spawn().expect("daprd checkout"));
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
        assert_eq!(json["headers"]["x-forwarded-for"], a.to_string());
        let forwarded = json["headers"]["forwarded"].as_str().unwrap_or_default();
        assert!(
            forwarded.starts_with(&format!("for={a};by={a};host=")),
            "{forwarded}"
        );
        assert!(json["headers"]["x-forwarded-host"].is_string());
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

/// Runs `program args` inside `host` and parses the JSON it prints (bounded).
async fn json_from(net: &Network, host: &str, program: &str, args: &[&str]) -> serde_json::Value {
    let run = net
        .command(host, binary(program))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("finishes within 60s")
        .expect("runs");
    assert!(out.status.success(), "{}", e2e::netns::describe(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_apps_in_another_namespace_and_large_bodies_cross_pods_by_dns_name() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let mut net = Network::create(&["a", "g", "h"])
        .expect("network (the e2e tier needs root, iproute2, dnsmasq)");
    let (g, h) = (net.host("g").ip, net.host("h").ip);
    net.start_dns(&[
        ("inventory-dapr.shop.svc.cluster.local", vec![g]),
        ("orders-dapr.default.svc.cluster.local", vec![h]),
    ])
    .expect("dns");

    let mut children = Vec::new();
    let mut grpc_app = net.command("g", binary("echo-app"));
    grpc_app.args(["--port", "7000", "--protocol", "grpc"]);
    let grpc_app = spawn_echo_app(grpc_app, Duration::from_secs(10))
        .await
        .expect("grpc echo app");
    children.push(grpc_app.child);
    let mut inventory = daprd(&net, "g", "inventory", Some(7000));
    inventory
        .args(["--app-protocol", "grpc"])
        .env("NAMESPACE", "shop");
    children.push(inventory.spawn().expect("daprd inventory"));

    let mut http_app = net.command("h", binary("echo-app"));
    http_app.args(["--port", "7000"]);
    let http_app = spawn_echo_app(http_app, Duration::from_secs(10))
        .await
        .expect("http echo app");
    children.push(http_app.child);
    children.push(
        daprd(&net, "h", "orders", Some(7000))
            .spawn()
            .expect("daprd orders"),
    );
    // Above the default --max-body-size of 4Mi, so the 10 MiB body below is allowed.
    let mut checkout = daprd(&net, "a", "checkout", None);
    checkout.args(["--max-body-size", "16Mi"]);
    children.push(checkout.spawn().expect("daprd checkout"));
    for ip in [g, h] {
        net.wait_for_tcp("a", (ip, 50002).into(), Duration::from_secs(20))
            .await
            .expect("callee up");
    }
    net.wait_for_tcp(
        "a",
        "127.0.0.1:50001".parse().expect("addr"),
        Duration::from_secs(20),
    )
    .await
    .expect("caller up");

    // InvokeService to a gRPC app in namespace `shop` (`app.ns` target).
    let out = json_from(
        &net,
        "a",
        "grpc-client",
        &[
            "--addr",
            "127.0.0.1:50001",
            "invoke",
            "--id",
            "inventory.shop",
            "--method",
            "greet",
            "--data",
            "hi",
        ],
    )
    .await;
    assert_eq!(out["data"], "hi", "{out}");
    assert_eq!(out["method"], "greet");

    // A non-Dapr gRPC service proxied by dapr-app-id: unary, server stream, bidi.
    let out = json_from(
        &net,
        "a",
        "grpc-client",
        &[
            "--addr",
            "127.0.0.1:50001",
            "echo",
            "--app-id",
            "inventory.shop",
        ],
    )
    .await;
    assert_eq!(out["unary"], "ping", "{out}");
    assert_eq!(out["caller"], "checkout");
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(out["count"], serde_json::json!(expected));
    assert_eq!(out["chat"], serde_json::json!(["one", "two", "three"]));

    // A 10 MiB body to the HTTP app and back, byte for byte.
    let body = net.dir().join("big.bin");
    let pattern: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(&body, &pattern).expect("write body");
    let echoed = net.dir().join("echoed.bin");
    let out = net
        .http(
            "a",
            &[
                "--fail-with-body",
                "-X",
                "PUT",
                "-H",
                "content-type: application/octet-stream",
                "--data-binary",
                &format!("@{}", body.display()),
                "-o",
                &echoed.display().to_string(),
                "http://127.0.0.1:3500/v1.0/invoke/orders/method/echo/big",
            ],
        )
        .await
        .expect("curl runs");
    assert!(out.status.success(), "{}", e2e::netns::describe(&out));
    let back = std::fs::read(&echoed).expect("echoed body");
    assert_eq!(back.len(), pattern.len());
    assert!(back == pattern, "10 MiB body changed on the way");
    drop(children);
}
