//! Tests of the harness itself: network namespaces, dnsmasq, and the echo app.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::netns::{Network, describe};
use e2e::{EchoApp, spawn_echo_app};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

const ECHO_APP: &str = env!("CARGO_BIN_EXE_echo-app");
const START: Duration = Duration::from_secs(10);

async fn echo_app_on_loopback(protocol: &str) -> EchoApp {
    let mut cmd = tokio::process::Command::new(ECHO_APP);
    cmd.args(["--port", "0", "--protocol", protocol]);
    spawn_echo_app(cmd, START).await.expect("echo-app starts")
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn url(addr: SocketAddr, path_and_query: &str) -> String {
    format!("http://{addr}{path_and_query}")
}

#[tokio::test]
async fn two_hosts_reach_each_other_by_ip() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let net = Network::create(&["a", "b"]).expect("network");
    let a = net.host("a").clone();
    assert_eq!(a.ip, Ipv4Addr::new(198, 18, 0, 11));
    assert_eq!(net.host("b").ip, Ipv4Addr::new(198, 18, 0, 12));

    let mut cmd = net.command("a", ECHO_APP);
    cmd.args(["--port", "0", "--listen", &a.ip.to_string()]);
    let app = spawn_echo_app(cmd, START).await.expect("echo-app in a");
    assert_eq!(app.addr.ip(), a.ip);
    net.wait_for_tcp("b", app.addr, START)
        .await
        .expect("a's port reachable from b");

    let out = net
        .http(
            "b",
            &[
                "-X",
                "POST",
                "--data-binary",
                "hello",
                &url(app.addr, "/inspect/x?from=b"),
            ],
        )
        .await
        .expect("curl");
    assert!(out.status.success(), "{}", describe(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/inspect/x");
    assert_eq!(json["query"], "from=b");
    assert_eq!(json["body_len"], 5);
}

#[tokio::test]
async fn loopback_is_up_inside_a_host() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let net = Network::create(&["solo"]).expect("network");
    let mut cmd = net.command("solo", ECHO_APP);
    cmd.args(["--port", "0"]);
    let app = spawn_echo_app(cmd, START)
        .await
        .expect("echo-app on 127.0.0.1");
    let out = net
        .http("solo", &["-i", &url(app.addr, "/status/204")])
        .await
        .expect("curl");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 204"),
        "{}",
        describe(&out)
    );
}

#[tokio::test]
async fn hosts_have_no_route_out_of_the_network() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let net = Network::create(&["a"]).expect("network");
    // `ip route get` only asks the routing table: nothing is sent.
    let out = net
        .command("a", "ip")
        .args(["route", "get", "192.0.2.1"])
        .output()
        .await
        .expect("ip route get");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unreachable"),
        "{}",
        describe(&out)
    );
}

#[tokio::test]
async fn wait_for_tcp_gives_up_at_its_deadline() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let net = Network::create(&["a"]).expect("network");
    let started = Instant::now();
    let err = net
        .wait_for_tcp(
            "a",
            SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
            Duration::from_millis(300),
        )
        .await
        .expect_err("nothing listens on port 9");
    assert!(started.elapsed() < Duration::from_secs(5), "{err:#}");
    assert!(format!("{err:#}").contains("not accepting"), "{err:#}");
}

#[tokio::test]
async fn dnsmasq_answers_a_name_with_two_a_records() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let mut net = Network::create(&["a", "b"]).expect("network");
    let (a, b) = (net.host("a").ip, net.host("b").ip);
    let name = "app-dapr.default.svc.cluster.local";
    net.start_dns(&[(name, vec![a, b])]).expect("dnsmasq");

    let out = net
        .command("a", "getent")
        .args(["ahostsv4", name])
        .output()
        .await
        .expect("getent");
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        net.dns_log()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ips: Vec<Ipv4Addr> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips, vec![a, b], "{text}");

    // Exact names only, and no upstream: anything else is NXDOMAIN (getent exit code 2).
    for other in [
        "x.app-dapr.default.svc.cluster.local",
        "example.com",
        "cluster.local",
    ] {
        let out = net
            .command("b", "getent")
            .args(["ahostsv4", other])
            .output()
            .await
            .expect("getent");
        assert_eq!(out.status.code(), Some(2), "{other}: {}", describe(&out));
    }
    assert!(
        net.dns_log().contains(&format!("query[A] {name}")),
        "{}",
        net.dns_log()
    );
}

#[tokio::test]
async fn dropping_the_network_removes_its_namespaces() {
    if e2e::netns::skip_without_root() {
        return;
    }
    let mut net = Network::create(&["a", "b"]).expect("network");
    net.start_dns(&[]).expect("dnsmasq");
    let mut namespaces: Vec<String> = net.hosts().iter().map(|h| h.netns.clone()).collect();
    namespaces.push(net.bridge_netns().to_owned());
    let dir = net.dir().to_owned();
    // A server the test "forgot": dropping the network must end it too.
    let mut leftover = net
        .std_command("a", ECHO_APP)
        .args(["--port", "0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("echo-app");

    let listed = list_netns();
    for ns in &namespaces {
        assert!(listed.contains(ns), "{ns} missing from {listed:?}");
    }
    drop(net);

    let listed = list_netns();
    for ns in &namespaces {
        assert!(!listed.contains(ns), "{ns} still in {listed:?}");
        let etc = std::path::Path::new("/etc/netns").join(ns);
        assert!(!etc.exists(), "{} still exists", etc.display());
    }
    assert!(!dir.exists(), "{} still exists", dir.display());
    let deadline = Instant::now() + START;
    loop {
        if leftover.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "process in a survived the drop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn list_netns() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn echo_returns_a_1_mib_body_unchanged() {
    let app = echo_app_on_loopback("http").await;
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = http::Request::post(url(app.addr, "/some/where?q=1"))
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let resp = client().request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["x-echo-method"], "POST");
    assert_eq!(h["x-echo-path"], "/some/where?q=1");
    assert_eq!(h["content-type"], "application/octet-stream");
    let got = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "echoed bytes differ");
}

#[tokio::test]
async fn status_route_returns_the_requested_code() {
    let app = echo_app_on_loopback("http").await;
    let req = http::Request::get(url(app.addr, "/status/418"))
        .body(Full::default())
        .expect("request");
    let resp = client().request(req).await.expect("response");
    assert_eq!(resp.status(), 418);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"status 418");
}

#[tokio::test]
async fn inspect_reports_method_path_query_and_headers() {
    let app = echo_app_on_loopback("http").await;
    let req = http::Request::put(url(app.addr, "/inspect/a/b?x=1&y=two"))
        .header("x-custom", "v1")
        .body(Full::new(Bytes::from_static(b"abc")))
        .expect("request");
    let resp = client().request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["path"], "/inspect/a/b");
    assert_eq!(json["query"], "x=1&y=two");
    assert_eq!(json["headers"]["x-custom"], "v1");
    assert_eq!(json["body_len"], 3);
}

#[tokio::test]
async fn hold_records_the_most_requests_in_flight() {
    let app = echo_app_on_loopback("http").await;
    let c = client();
    let holds = (0..3).map(|_| {
        let req = http::Request::get(url(app.addr, "/hold/300"))
            .body(Full::default())
            .expect("request");
        c.request(req)
    });
    for resp in futures::future::join_all(holds).await {
        assert_eq!(resp.expect("response").status(), 200);
    }
    let req = http::Request::get(url(app.addr, "/stats"))
        .body(Full::default())
        .expect("request");
    let body = c
        .request(req)
        .await
        .expect("response")
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["total"], 3);
    // Three concurrent connections, each held 300 ms: they overlap.
    assert!(json["max_in_flight"].as_u64() >= Some(2), "{json}");
}

#[tokio::test]
async fn close_mid_body_cuts_the_response_after_some_bytes() {
    let app = echo_app_on_loopback("http").await;
    let req = http::Request::get(url(app.addr, "/close-mid-body"))
        .body(Full::default())
        .expect("request");
    let resp = client().request(req).await.expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0;
    let err = loop {
        match body.frame().await {
            Some(Ok(frame)) => received += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(e)) => break e,
            None => panic!("body ended cleanly after {received} bytes"),
        }
    };
    assert!(received > 0, "cut before any body byte: {err}");
}

#[tokio::test]
async fn grpc_on_invoke_echoes_data_and_method() {
    use dapr_proto::common::v1::{HttpExtension, InvokeRequest, http_extension::Verb};
    use dapr_proto::runtime::v1::app_callback_client::AppCallbackClient;
    use dapr_proto::runtime::v1::app_callback_health_check_client::AppCallbackHealthCheckClient;

    let app = echo_app_on_loopback("grpc").await;
    let endpoint = format!("http://{}", app.addr);
    let mut callback = AppCallbackClient::connect(endpoint.clone())
        .await
        .expect("connect");
    let data = prost_types::Any {
        type_url: String::new(),
        value: b"payload".to_vec(),
    };
    let resp = callback
        .on_invoke(InvokeRequest {
            method: "orders/new".into(),
            data: Some(data.clone()),
            content_type: "text/plain".into(),
            http_extension: Some(HttpExtension {
                verb: Verb::Post as i32,
                querystring: "a=1".into(),
            }),
        })
        .await
        .expect("on_invoke");
    assert_eq!(
        resp.metadata().get("x-echo-method").expect("method"),
        "orders/new"
    );
    assert_eq!(resp.metadata().get("x-echo-verb").expect("verb"), "POST");
    assert_eq!(
        resp.metadata().get("x-echo-querystring").expect("query"),
        "a=1"
    );
    let resp = resp.into_inner();
    assert_eq!(resp.data, Some(data));
    assert_eq!(resp.content_type, "text/plain");

    let mut health = AppCallbackHealthCheckClient::connect(endpoint)
        .await
        .expect("connect");
    health.health_check(()).await.expect("healthy");
}
