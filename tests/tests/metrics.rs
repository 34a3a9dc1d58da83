//! Prometheus metrics of two real `daprd` processes on loopback (sqlite name resolution), each
//! with an `echo-app`: after a known set of invocations, both metrics ports show exact counters
//! under upstream's names and labels, on the caller side and on the callee side.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::sidecar::{HttpClient, Sidecar, SidecarOptions, loopback, scratch_dir, sqlite_config};
use e2e::{EchoApp, spawn_echo_app};
use http::Method;

const ECHO_APP: &str = env!("CARGO_BIN_EXE_echo-app");
const START: Duration = Duration::from_secs(10);
const READY: Duration = Duration::from_secs(20);
/// How long recorded values may take to show up in a scrape (they are recorded when a response
/// body has been sent, which can be a moment after the client has read it).
const SETTLE: Duration = Duration::from_secs(10);

async fn echo_app() -> EchoApp {
    let mut cmd = tokio::process::Command::new(ECHO_APP);
    cmd.args(["--port", "0", "--protocol", "http"]);
    spawn_echo_app(cmd, START).await.expect("echo-app starts")
}

/// A series key: the metric name and its labels in a fixed order.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels = labels.to_vec();
    labels.sort();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// Parses the text exposition into series keys (as [`series`] builds them) and values.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, rest) = head.split_once('{').unwrap_or((head, "}"));
        let mut labels = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let key = key.trim_start_matches(',').to_owned();
            if key.is_empty() || key == "}" || chars.next() != Some('"') {
                break;
            }
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
        }
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        out.insert(series(name, &labels), value);
    }
    out
}

async fn scrape(client: &HttpClient, sidecar: &Sidecar, path: &str) -> (String, String) {
    let reply = client
        .get(&sidecar.metrics_url(path))
        .await
        .expect("metrics port answers");
    assert_eq!(reply.status, 200, "{path}");
    let content_type = reply
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = String::from_utf8(reply.body.to_vec()).expect("UTF-8 exposition");
    (content_type, text)
}

/// Scrapes until every expected series has its value, or fails after [`SETTLE`] with the
/// differences and the last exposition.
async fn expect_samples(
    client: &HttpClient,
    sidecar: &Sidecar,
    expected: &[(String, f64)],
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (_, text) = scrape(client, sidecar, "/metrics").await;
        let samples = parse(&text);
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(key, value)| samples.get(key) != Some(value))
            .map(|(key, value)| format!("{key}: want {value}, got {:?}", samples.get(key)))
            .collect();
        if wrong.is_empty() {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "{} metrics after {SETTLE:?}:\n{}\n--- exposition ---\n{text}",
            sidecar.app_id,
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invocations_show_as_exact_counters_and_histograms_on_caller_and_callee() {
    use dapr_proto::common::v1::{HttpExtension, InvokeRequest, http_extension::Verb};
    use dapr_proto::runtime::v1::{InvokeServiceRequest, dapr_client::DaprClient};

    let dir = scratch_dir("metrics").expect("scratch dir");
    let (orders_app, checkout_app) = (echo_app().await, echo_app().await);
    let config = sqlite_config(&dir, "nr", "").expect("config");
    let options = |app: &EchoApp| SidecarOptions {
        app_port: Some(app.addr.port()),
        config: Some(config.clone()),
        ..Default::default()
    };
    let mut orders = Sidecar::start("orders", &dir, options(&orders_app))
        .await
        .expect("orders starts");
    orders
        .wait_for("/v1.0/healthz", READY)
        .await
        .expect("orders sees its app");
    let mut checkout = Sidecar::start("checkout", &dir, options(&checkout_app))
        .await
        .expect("checkout starts");
    checkout
        .wait_for("/v1.0/healthz", READY)
        .await
        .expect("checkout sees its app");
    let client = HttpClient::new();

    // POST only: the harness's readiness polls are GETs, so POST series count just these calls.
    let post = |path: &str, body: &'static [u8]| {
        let url = checkout.url(path);
        let client = client.clone();
        async move {
            client
                .send(Method::POST, &url, &[], Bytes::from_static(body))
                .await
                .expect("invoke")
        }
    };
    for _ in 0..3 {
        let reply = post("/v1.0/invoke/orders/method/echo", b"hello").await;
        assert_eq!((reply.status, &reply.body[..]), (200, &b"hello"[..]));
    }
    for _ in 0..2 {
        let reply = post("/v1.0/invoke/orders/method/status/404", b"").await;
        assert_eq!((reply.status, &reply.body[..]), (404, &b"status 404"[..]));
    }
    let reply = post("/v1.0/invoke/nowhere/method/echo", b"hello").await;
    assert_eq!(reply.status, 500, "{:?}", reply.body);

    let mut grpc = DaprClient::connect(format!("http://127.0.0.1:{}", checkout.grpc_port))
        .await
        .expect("gRPC API connects");
    let reply = grpc
        .invoke_service(InvokeServiceRequest {
            id: "orders".into(),
            message: Some(InvokeRequest {
                method: "echo".into(),
                data: Some(prost_types::Any {
                    type_url: String::new(),
                    value: b"hello".to_vec(),
                }),
                content_type: "text/plain".into(),
                http_extension: Some(HttpExtension {
                    verb: Verb::Post as i32,
                    querystring: String::new(),
                }),
            }),
        })
        .await
        .expect("gRPC invoke");
    assert_eq!(reply.into_inner().data.expect("data").value, b"hello");

    // The caller: its HTTP and gRPC APIs, and the requests its invoker sent.
    let app = ("app_id", "checkout");
    let http = |status| [app, ("method", "POST"), ("path", ""), ("status", status)];
    let orders_src = ("src_app_id", "orders");
    let api_rpc = [
        app,
        (
            "grpc_server_method",
            "/dapr.proto.runtime.v1.Dapr/InvokeService",
        ),
        ("grpc_server_status", "OK"),
    ];
    let mut expected = Vec::new();
    for (status, count) in [("200", 3.0), ("404", 2.0), ("500", 1.0)] {
        expected.push((
            series("dapr_http_server_request_count", &http(status)),
            count,
        ));
        expected.push((
            series("dapr_http_server_latency_count", &http(status)),
            count,
        ));
    }
    expected.extend([
        (
            series(
                "dapr_runtime_service_invocation_req_sent_total",
                &[app, ("dst_app_id", "orders"), ("type", "unary")],
            ),
            6.0,
        ),
        (series("dapr_grpc_io_server_completed_rpcs", &api_rpc), 1.0),
        (
            series("dapr_grpc_io_server_server_latency_count", &api_rpc),
            1.0,
        ),
    ]);
    for (status, count) in [("200", 4.0), ("404", 2.0)] {
        expected.push((
            series(
                "dapr_runtime_service_invocation_res_recv_total",
                &[app, orders_src, ("status", status), ("type", "unary")],
            ),
            count,
        ));
        expected.push((
            series(
                "dapr_runtime_service_invocation_res_recv_latency_ms_count",
                &[app, orders_src, ("status", status)],
            ),
            count,
        ));
    }
    // The gRPC call went to orders as one unary `CallLocal`: the client side of it.
    let call_local = [
        app,
        (
            "grpc_client_method",
            "/dapr.proto.internals.v1.ServiceInvocation/CallLocal",
        ),
    ];
    let call_local_ok = [call_local[0], call_local[1], ("grpc_client_status", "OK")];
    expected.extend([
        (
            series("dapr_grpc_io_client_completed_rpcs", &call_local_ok),
            1.0,
        ),
        (
            series(
                "dapr_grpc_io_client_roundtrip_latency_count",
                &call_local_ok,
            ),
            1.0,
        ),
        (
            series("dapr_grpc_io_client_sent_bytes_per_rpc_count", &call_local),
            1.0,
        ),
        (
            series(
                "dapr_grpc_io_client_received_bytes_per_rpc_count",
                &call_local,
            ),
            1.0,
        ),
    ]);
    let latency_inf = series(
        "dapr_runtime_service_invocation_res_recv_latency_ms_bucket",
        &[app, orders_src, ("status", "200"), ("le", "+Inf")],
    );
    expected.push((latency_inf, 4.0));
    let caller = expect_samples(&client, &checkout, &expected).await;
    // The unknown target never resolved: no invocation series names it.
    assert!(!caller.keys().any(|k| k.contains("nowhere")), "{caller:#?}");
    assert!(
        !caller
            .keys()
            .any(|k| k.starts_with("dapr_runtime_service_invocation_req_recv_total")),
        "nobody called checkout: {caller:#?}"
    );

    // The callee: its internal server, what it answered, and its calls into the app.
    let app = ("app_id", "orders");
    let checkout_peer = ("src_app_id", "checkout");
    let rpc = |method: &'static str| {
        [
            app,
            ("grpc_server_method", method),
            ("grpc_server_status", "OK"),
        ]
    };
    let stream = "/dapr.proto.internals.v1.ServiceInvocation/CallLocalStream";
    let unary = "/dapr.proto.internals.v1.ServiceInvocation/CallLocal";
    let client_labels = |status| [app, ("method", "POST"), ("path", ""), ("status", status)];
    let mut expected = vec![
        (
            series(
                "dapr_runtime_service_invocation_req_recv_total",
                &[app, checkout_peer],
            ),
            6.0,
        ),
        (
            series("dapr_grpc_io_server_completed_rpcs", &rpc(stream)),
            5.0,
        ),
        (
            series("dapr_grpc_io_server_completed_rpcs", &rpc(unary)),
            1.0,
        ),
        (
            series("dapr_grpc_io_server_server_latency_count", &rpc(stream)),
            5.0,
        ),
        (
            series(
                "dapr_grpc_io_server_received_bytes_per_rpc_count",
                &[app, ("grpc_server_method", stream)],
            ),
            5.0,
        ),
        (
            series("dapr_http_client_sent_bytes_count", &client_labels("")),
            6.0,
        ),
        // 4 echo calls with "hello" in, none for the 404s.
        (
            series("dapr_http_client_sent_bytes_sum", &client_labels("")),
            20.0,
        ),
        (series("dapr_http_client_received_bytes_count", &[app]), 6.0),
        // "hello" echoed 4 times, "status 404" twice.
        (series("dapr_http_client_received_bytes_sum", &[app]), 40.0),
    ];
    for (status, count) in [("200", 4.0), ("404", 2.0)] {
        expected.push((
            series(
                "dapr_runtime_service_invocation_res_sent_total",
                &[app, ("dst_app_id", "checkout"), ("status", status)],
            ),
            count,
        ));
        expected.push((
            series("dapr_http_client_completed_count", &client_labels(status)),
            count,
        ));
        expected.push((
            series(
                "dapr_http_client_roundtrip_latency_count",
                &client_labels(status),
            ),
            count,
        ));
    }
    let callee = expect_samples(&client, &orders, &expected).await;
    assert!(
        !callee
            .keys()
            .any(|k| k.starts_with("dapr_http_server_request_count") && k.contains("POST")),
        "the callee's HTTP API served no POST: {callee:#?}"
    );
    assert!(
        !callee
            .keys()
            .any(|k| k.starts_with("dapr_runtime_service_invocation_req_sent_total")),
        "orders called nobody: {callee:#?}"
    );

    // The same exposition at `/`, as Prometheus text format 0.0.4.
    let (content_type, text) = scrape(&client, &orders, "/").await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(text.contains("# TYPE dapr_runtime_service_invocation_req_recv_total counter"));
    drop((orders_app, checkout_app));
}

/// A gRPC app: the callee's `OnInvoke` calls and health probes are client RPCs; a call the
/// caller's gRPC API proxies by `dapr-app-id` is a server RPC there, by its own method name.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_client_calls_health_probes_and_proxied_calls_are_recorded() {
    use dapr_proto::common::v1::{HttpExtension, InvokeRequest, http_extension::Verb};
    use dapr_proto::runtime::v1::{InvokeServiceRequest, dapr_client::DaprClient};
    use e2e::echo::{Note, echo_client::EchoClient};

    let dir = scratch_dir("metrics-grpc").expect("scratch dir");
    let app = e2e::echo_app("grpc").await.expect("echo-app starts");
    let config = sqlite_config(&dir, "nr", "").expect("config");
    let mut orders = Sidecar::start(
        "orders",
        &dir,
        SidecarOptions {
            app_port: Some(app.addr.port()),
            config: Some(config.clone()),
            extra_args: [
                "--app-protocol",
                "grpc",
                "--enable-app-health-check",
                "--app-health-probe-interval",
                "1",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        },
    )
    .await
    .expect("orders starts");
    orders
        .wait_for("/v1.0/healthz", READY)
        .await
        .expect("orders sees its app");
    let checkout = Sidecar::start(
        "checkout",
        &dir,
        SidecarOptions {
            config: Some(config),
            ..Default::default()
        },
    )
    .await
    .expect("checkout starts");
    let endpoint = format!("http://127.0.0.1:{}", checkout.grpc_port);
    let mut dapr = DaprClient::connect(endpoint.clone())
        .await
        .expect("gRPC API connects");
    for _ in 0..2 {
        let reply = dapr
            .invoke_service(InvokeServiceRequest {
                id: "orders".into(),
                message: Some(InvokeRequest {
                    method: "echo".into(),
                    data: Some(prost_types::Any {
                        type_url: String::new(),
                        value: b"hello".to_vec(),
                    }),
                    content_type: "text/plain".into(),
                    http_extension: Some(HttpExtension {
                        verb: Verb::Post as i32,
                        querystring: String::new(),
                    }),
                }),
            })
            .await
            .expect("gRPC invoke");
        assert_eq!(reply.into_inner().data.expect("data").value, b"hello");
    }
    let mut echo = EchoClient::connect(endpoint).await.expect("connects");
    let mut request = tonic::Request::new(Note {
        text: "ping".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("dapr-app-id", "orders".parse().expect("ascii"));
    let reply = echo.unary(request).await.expect("proxied call");
    assert_eq!(reply.into_inner().text, "ping");

    let client = HttpClient::new();
    let on_invoke = [
        ("app_id", "orders"),
        (
            "grpc_client_method",
            "/dapr.proto.runtime.v1.AppCallback/OnInvoke",
        ),
    ];
    let on_invoke_ok = [on_invoke[0], on_invoke[1], ("grpc_client_status", "OK")];
    let callee = expect_samples(
        &client,
        &orders,
        &[
            (
                series("dapr_grpc_io_client_completed_rpcs", &on_invoke_ok),
                2.0,
            ),
            (
                series("dapr_grpc_io_client_sent_bytes_per_rpc_count", &on_invoke),
                2.0,
            ),
            (
                series(
                    "dapr_grpc_io_client_received_bytes_per_rpc_count",
                    &on_invoke,
                ),
                2.0,
            ),
        ],
    )
    .await;
    // The app was probed at least once (readiness waited for it), and answered OK.
    let probes = series(
        "dapr_grpc_io_healthprobes_completed_count",
        &[("app_id", "orders"), ("grpc_client_status", "OK")],
    );
    assert!(
        callee.get(&probes).is_some_and(|n| *n >= 1.0),
        "{callee:#?}"
    );
    // The echoed data came back: the received size is the OnInvoke response, more than the 5
    // bytes of data.
    let received = series("dapr_grpc_io_client_received_bytes_per_rpc_sum", &on_invoke);
    assert!(
        callee.get(&received).is_some_and(|n| *n > 10.0),
        "{callee:#?}"
    );

    let proxied = [
        ("app_id", "checkout"),
        ("grpc_server_method", "/e2e.echo.v1.Echo/Unary"),
        ("grpc_server_status", "OK"),
    ];
    expect_samples(
        &client,
        &checkout,
        &[
            (series("dapr_grpc_io_server_completed_rpcs", &proxied), 1.0),
            (
                series("dapr_grpc_io_server_server_latency_count", &proxied),
                1.0,
            ),
        ],
    )
    .await;
    drop(app);
}

#[tokio::test(flavor = "multi_thread")]
async fn disabling_metrics_leaves_the_metrics_port_closed() {
    let dir = scratch_dir("metrics-off").expect("scratch dir");
    let options = SidecarOptions {
        config: Some(sqlite_config(&dir, "nr", "").expect("config")),
        extra_args: vec!["--enable-metrics=false".into()],
        ..Default::default()
    };
    let sidecar = Sidecar::start("quiet", &dir, options)
        .await
        .expect("daprd starts");
    // The APIs serve, the metrics port does not listen.
    let reply = HttpClient::new()
        .get(&sidecar.url("/v1.0/metadata"))
        .await
        .expect("metadata");
    assert_eq!(reply.status, 200);
    let connect = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(loopback(sidecar.metrics_port)),
    )
    .await
    .expect("connect answers at once on loopback");
    assert!(connect.is_err(), "something listens on the metrics port");
    assert!(
        !sidecar.log_text().contains("metrics server started"),
        "{}",
        sidecar.log_text()
    );
}
