//! Resiliency policies through two real `daprd` processes on loopback: the caller's sidecar
//! (`checkout`) loads a Resiliency from `--resources-path` and applies it to its calls to
//! `orders`, whose app (an HTTP server in this test) fails, or is slow, on request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use bytes::Bytes;
use e2e::sidecar::{HttpClient, Sidecar, SidecarOptions, scratch_dir, sqlite_config, start_pair};
use http::Method;

/// What the app saw: calls per key, and slow calls abandoned before they finished.
#[derive(Default)]
struct Seen {
    calls: Mutex<HashMap<String, u32>>,
    cancelled: Mutex<u32>,
}

impl Seen {
    fn calls(&self, key: &str) -> u32 {
        self.calls
            .lock()
            .expect("lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }
    fn count(&self, key: &str) -> u32 {
        let mut calls = self.calls.lock().expect("lock");
        let n = calls.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }
}

/// Counts a slow call that was dropped before it finished (its connection went away).
struct Cancelled(Arc<Seen>, bool);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if !self.1 {
            *self.0.cancelled.lock().expect("lock") += 1;
        }
    }
}

/// The callee app: `/fail/{code}/{n}/{key}` answers `code` to the first `n` calls of `key`,
/// then 200; `/slow/{key}` takes 10 s.
async fn start_app(seen: Arc<Seen>) -> u16 {
    async fn fail(
        State(seen): State<Arc<Seen>>,
        UrlPath((code, n, key)): UrlPath<(u16, u32, String)>,
        // Read whole, so the answer never races the request body.
        _body: Bytes,
    ) -> Response {
        let call = seen.count(&key);
        let status = if call <= n { code } else { 200 };
        Response::builder()
            .status(status)
            .body(Body::from(format!("call {call}")))
            .expect("response")
    }
    async fn slow(State(seen): State<Arc<Seen>>, UrlPath(key): UrlPath<String>) -> &'static str {
        seen.count(&key);
        let mut guard = Cancelled(seen, false);
        // The app is slow on purpose: the sidecar's timeout must cut it short.
        tokio::time::sleep(Duration::from_secs(10)).await;
        guard.1 = true;
        "slow"
    }
    let app = Router::new()
        .route(
            "/fail/{code}/{n}/{key}",
            axum::routing::any(fail).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/slow/{key}", axum::routing::any(slow))
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

struct Pair {
    caller: Sidecar,
    callee: Sidecar,
    seen: Arc<Seen>,
    client: HttpClient,
}

impl Pair {
    async fn call(&self, path: &str) -> e2e::sidecar::Reply {
        self.client
            .get(
                &self
                    .caller
                    .url(&format!("/v1.0/invoke/orders/method/{path}")),
            )
            .await
            .expect("the caller's sidecar answers")
    }
}

/// `orders` (with the app) and `checkout` loading `resources` (file name → YAML) from its
/// `--resources-path`.
async fn pair(name: &str, resources: &[(&str, &str)]) -> Pair {
    let dir = scratch_dir(&format!("resiliency-{name}")).expect("scratch dir");
    let seen = Arc::new(Seen::default());
    let app_port = start_app(Arc::clone(&seen)).await;
    let callee = SidecarOptions {
        app_port: Some(app_port),
        config: Some(sqlite_config(&dir, "callee", "").expect("config")),
        ..Default::default()
    };
    let caller = SidecarOptions {
        config: Some(sqlite_config(&dir, "caller", "").expect("config")),
        extra_args: resources_args(&dir, resources),
        ..Default::default()
    };
    let (callee, caller) = start_pair(&dir, ("orders", callee), ("checkout", caller))
        .await
        .expect("both sidecars start");
    Pair {
        caller,
        callee,
        seen,
        client: HttpClient::new(),
    }
}

fn resources_args(dir: &Path, resources: &[(&str, &str)]) -> Vec<String> {
    let path = dir.join("resources");
    std::fs::create_dir_all(&path).expect("resources dir");
    for (file, text) in resources {
        std::fs::write(path.join(file), text).expect("resource file");
    }
    vec!["--resources-path".into(), path.display().to_string()]
}

fn resiliency(scopes: &str, policies: &str, target: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: res\n{scopes}spec:\n  policies:\n{policies}  targets:\n    apps:\n      orders: {{{target}}}\n"
    )
}

const RETRY: &str = "    retries:\n      three:\n        policy: constant\n        duration: 200ms\n        maxRetries: 3\n        matching:\n          httpStatusCodes: 500-599\n";

fn error_message(reply: &e2e::sidecar::Reply) -> String {
    let json = reply.json().expect("a Dapr error body");
    assert_eq!(json["errorCode"], "ERR_DIRECT_INVOKE", "{json}");
    json["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_replay_the_call_until_the_app_answers_within_the_backoff() {
    let p = pair(
        "retry",
        &[("res.yaml", &resiliency("", RETRY, "retry: three"))],
    )
    .await;

    // Two 503s, then 200: three attempts, two waits of 200 ms.
    let started = Instant::now();
    let reply = p.call("fail/503/2/a").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body, "call 3");
    assert_eq!(p.seen.calls("a"), 3);
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );

    // Always failing: one call and three retries, then the app's last answer as it is.
    let reply = p.call("fail/503/100/b").await;
    assert_eq!((reply.status, &reply.body[..]), (503, &b"call 4"[..]));
    assert_eq!(p.seen.calls("b"), 4);

    // `matching` retries 5xx only: a 404 is answered at once.
    let reply = p.call("fail/404/100/c").await;
    assert_eq!(reply.status, 404);
    assert_eq!(p.seen.calls("c"), 1);

    // A body larger than what is kept for a replay is sent once; the app's answer comes back.
    let reply = p
        .client
        .send(
            Method::POST,
            &p.caller.url("/v1.0/invoke/orders/method/fail/503/100/d"),
            &[],
            Bytes::from(vec![b'x'; 2 << 20]),
        )
        .await
        .expect("answer");
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(p.seen.calls("d"), 1);

    // The metrics count the retries under upstream's names.
    let metrics = p
        .client
        .get(&p.caller.metrics_url("/metrics"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("dapr_resiliency_loaded{app_id=\"checkout\",name=\"res\",namespace=\"\"} 1"),
        "{text}"
    );
    let retries = "dapr_resiliency_activations_total{app_id=\"checkout\",flow_direction=\"outbound\",name=\"res\",namespace=\"\",policy=\"retry\",status=\"\",target=\"app_orders\"} 5";
    assert!(text.contains(retries), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_cancels_the_call_on_both_sidecars() {
    let p = pair(
        "timeout",
        &[(
            "res.yaml",
            &resiliency("", "    timeouts:\n      short: 300ms\n", "timeout: short"),
        )],
    )
    .await;
    let started = Instant::now();
    let reply = p.call("slow/a").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 500);
    assert_eq!(
        error_message(&reply),
        "failed to invoke, id: orders, err: context deadline exceeded"
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(p.seen.calls("a"), 1);
    // The callee's sidecar cancels the app call when the caller's stream is reset.
    let deadline = Instant::now() + Duration::from_secs(5);
    while *p.seen.cancelled.lock().expect("lock") == 0 {
        assert!(
            Instant::now() < deadline,
            "the app never saw its call cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_on_its_trip_and_half_opens_after_its_timeout() {
    let breaker = "    circuitBreakers:\n      cb1:\n        maxRequests: 1\n        timeout: 1s\n        trip: consecutiveFailures >= 2\n";
    let p = pair(
        "breaker",
        &[("res.yaml", &resiliency("", breaker, "circuitBreaker: cb1"))],
    )
    .await;
    assert_eq!(p.call("fail/503/2/a").await.status, 503);
    assert_eq!(p.call("fail/503/2/a").await.status, 503);
    let opened = Instant::now();
    // Open: answered at once, without reaching the app.
    let reply = p.call("fail/503/2/a").await;
    assert_eq!(reply.status, 500);
    assert_eq!(
        error_message(&reply),
        "failed to invoke, id: orders, err: circuit breaker is open"
    );
    assert_eq!(p.seen.calls("a"), 2);
    // Another method of the same app has a breaker of its own.
    assert_eq!(p.call("fail/503/0/b").await.status, 200);

    // The breaker's timeout (1 s) is the behaviour under test: wait it out, then one call goes
    // through (half-open), succeeds and closes the breaker.
    tokio::time::sleep_until((opened + Duration::from_millis(1100)).into()).await;
    let reply = p.call("fail/503/2/a").await;
    assert_eq!((reply.status, &reply.body[..]), (200, &b"call 3"[..]));
    assert_eq!(p.call("fail/503/2/a").await.status, 200);
    assert_eq!(p.seen.calls("a"), 4);

    let metrics = p
        .client
        .get(&p.caller.metrics_url("/metrics"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    for state in ["open", "half-open", "closed"] {
        let activation = format!(
            "dapr_resiliency_activations_total{{app_id=\"checkout\",flow_direction=\"outbound\",name=\"res\",namespace=\"\",policy=\"circuitbreaker\",status=\"{state}\",target=\"app_orders\"}} 1"
        );
        assert!(text.contains(&activation), "{state}:\n{text}");
    }
    assert!(
        text.contains("dapr_resiliency_cb_state{app_id=\"checkout\",flow_direction=\"outbound\",name=\"res\",namespace=\"\",policy=\"circuitbreaker\",target=\"app_orders\"} 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_scoped_to_another_app_is_ignored_and_other_kinds_are_named() {
    let component = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  version: v1\n---\napiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: orders-sub\n";
    let p = pair(
        "scoped",
        &[
            (
                "res.yaml",
                &resiliency("scopes:\n- someone-else\n", RETRY, "retry: three"),
            ),
            ("components.yml", component),
        ],
    )
    .await;
    let reply = p.call("fail/503/1/a").await;
    assert_eq!(reply.status, 503);
    assert_eq!(p.seen.calls("a"), 1);
    let log = p.caller.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("resources this sidecar does not implement"))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(warning.contains("Component/statestore"), "{warning}");
    assert!(warning.contains("Subscription/orders-sub"), "{warning}");
    assert!(log.contains("scoped to other apps"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_trip_expression_stops_start_up_naming_the_field() {
    let dir = scratch_dir("resiliency-bad-trip").unwrap();
    let breaker = "    circuitBreakers:\n      cb1:\n        trip: consecutiveFailures >>> 5\n";
    let options = SidecarOptions {
        config: Some(sqlite_config(&dir, "caller", "").unwrap()),
        extra_args: resources_args(
            &dir,
            &[("res.yaml", &resiliency("", breaker, "circuitBreaker: cb1"))],
        ),
        ..Default::default()
    };
    let error = match Sidecar::start("checkout", &dir, options).await {
        Ok(_) => panic!("daprd started with a bad trip expression"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("res.yaml: spec.policies.circuitBreakers.cb1.trip: "),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_invoke_service_gets_the_same_retries_and_breaker() {
    use dapr_proto::common::v1::{HttpExtension, InvokeRequest, http_extension::Verb};
    use dapr_proto::runtime::v1::{InvokeServiceRequest, dapr_client::DaprClient};

    let policies = format!(
        "{RETRY}    circuitBreakers:\n      cb1:\n        timeout: 30s\n        trip: consecutiveFailures >= 4\n"
    );
    let p = pair(
        "grpc",
        &[(
            "res.yaml",
            &resiliency("", &policies, "retry: three, circuitBreaker: cb1"),
        )],
    )
    .await;
    let mut client = DaprClient::connect(format!("http://127.0.0.1:{}", p.caller.grpc_port))
        .await
        .expect("connects");
    let request = |method: &str| InvokeServiceRequest {
        id: "orders".into(),
        message: Some(InvokeRequest {
            method: method.into(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: b"ping".to_vec(),
            }),
            content_type: "text/plain".into(),
            http_extension: Some(HttpExtension {
                verb: Verb::Post as i32,
                querystring: String::new(),
            }),
        }),
    };
    // Two 503s, then the app's 200.
    let reply = client
        .invoke_service(request("fail/503/2/a"))
        .await
        .expect("the third attempt succeeds");
    assert_eq!(reply.into_inner().data.expect("data").value, b"call 3");
    assert_eq!(p.seen.calls("a"), 3);

    // Four failed attempts trip the breaker (retries count one by one); the app's last answer
    // comes back as a gRPC error, then the open breaker answers without the app.
    let err = client
        .invoke_service(request("fail/503/100/b"))
        .await
        .expect_err("503");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(p.seen.calls("b"), 4);
    let err = client
        .invoke_service(request("fail/503/100/b"))
        .await
        .expect_err("open");
    assert_eq!(err.code(), tonic::Code::Internal);
    assert_eq!(
        err.message(),
        "failed to invoke, id: orders, err: circuit breaker is open"
    );
    assert_eq!(p.seen.calls("b"), 4);
}

/// `orders` (a gRPC echo-app behind it) and `checkout` loading a Resiliency with `policies` for
/// `orders` (`target`), with an `e2e.echo.v1.Echo` client on checkout's gRPC API for proxied
/// calls. The app and the sidecars live as long as the returned values.
async fn grpc_proxy_pair(
    name: &str,
    policies: &str,
    target: &str,
) -> (
    e2e::EchoApp,
    (Sidecar, Sidecar),
    e2e::echo::echo_client::EchoClient<tonic::transport::Channel>,
) {
    let dir = scratch_dir(name).expect("scratch dir");
    let app = e2e::echo_app("grpc").await.expect("echo-app starts");
    let callee = SidecarOptions {
        app_port: Some(app.addr.port()),
        config: Some(sqlite_config(&dir, "callee", "").expect("config")),
        extra_args: vec!["--app-protocol".into(), "grpc".into()],
        ..Default::default()
    };
    let caller = SidecarOptions {
        config: Some(sqlite_config(&dir, "caller", "").expect("config")),
        extra_args: resources_args(&dir, &[("res.yaml", &resiliency("", policies, target))]),
        ..Default::default()
    };
    let (callee, caller) = start_pair(&dir, ("orders", callee), ("checkout", caller))
        .await
        .expect("both sidecars start");
    let echo = e2e::echo::echo_client::EchoClient::connect(format!(
        "http://127.0.0.1:{}",
        caller.grpc_port
    ))
    .await
    .expect("connects");
    (app, (callee, caller), echo)
}

#[tokio::test(flavor = "multi_thread")]
async fn proxied_grpc_calls_get_the_breaker_by_full_method() {
    use e2e::echo::Note;

    let breaker = "    circuitBreakers:\n      cb1:\n        timeout: 30s\n        trip: consecutiveFailures >= 2\n";
    let (_app, _sidecars, mut echo) =
        grpc_proxy_pair("resiliency-proxy", breaker, "circuitBreaker: cb1").await;
    let call = |fail_with: tonic::Code| {
        let mut request = tonic::Request::new(Note {
            text: "x".into(),
            fail_with: fail_with as i32,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("dapr-app-id", "orders".parse().expect("ascii"));
        request
    };
    for _ in 0..2 {
        let status = echo
            .unary(call(tonic::Code::Unavailable))
            .await
            .expect_err("the app fails");
        assert_eq!(status.message(), "echo-app failed with 14 on purpose");
    }
    let status = echo
        .unary(call(tonic::Code::Ok))
        .await
        .expect_err("the breaker is open");
    assert_eq!(
        status.message(),
        "failed to invoke, id: orders, err: circuit breaker is open"
    );
    // Another method has a breaker of its own.
    let mut request = tonic::Request::new(Note {
        text: "3".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("dapr-app-id", "orders".parse().expect("ascii"));
    let mut counted = echo.count(request).await.expect("stream").into_inner();
    let mut n = 0;
    while counted.message().await.expect("message").is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
}

/// Proxied gRPC calls get retries as upstream's proxy gives them: a unary call (one request
/// message) is sent again until the app answers; a call marked `dapr-stream: true` is not.
#[tokio::test(flavor = "multi_thread")]
async fn proxied_unary_grpc_calls_are_retried_and_marked_streams_are_not() {
    use e2e::echo::Note;

    let retry = "    retries:\n      three:\n        policy: constant\n        duration: 100ms\n        maxRetries: 3\n        matching:\n          gRPCStatusCodes: \"14\"\n";
    let (app, _sidecars, mut echo) =
        grpc_proxy_pair("resiliency-proxy-retry", retry, "retry: three").await;
    let call = |text: &str, fail_with: tonic::Code, fail_times: i32, stream: bool| {
        let mut request = tonic::Request::new(Note {
            text: text.into(),
            fail_with: fail_with as i32,
            fail_times,
            ..Default::default()
        });
        let metadata = request.metadata_mut();
        metadata.insert("dapr-app-id", "orders".parse().expect("ascii"));
        if stream {
            metadata.insert("dapr-stream", "true".parse().expect("ascii"));
        }
        request
    };
    let attempt = |response: &tonic::Response<Note>| {
        response
            .metadata()
            .get("x-attempt")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };

    // Unavailable twice, then the answer: the third attempt, after two retries.
    let started = Instant::now();
    let reply = echo
        .unary(call("twice", tonic::Code::Unavailable, 2, false))
        .await
        .expect("retried until the app answers");
    assert_eq!(attempt(&reply).as_deref(), Some("3"));
    assert_eq!(reply.into_inner().text, "twice");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );

    // A code the policy does not match goes back at once.
    let status = echo
        .unary(call("other", tonic::Code::NotFound, 2, false))
        .await
        .expect_err("not retried");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let reply = echo
        .unary(call("other", tonic::Code::NotFound, 2, false))
        .await
        .expect_err("the second call fails too (call 2 of 2)");
    assert_eq!(reply.code(), tonic::Code::NotFound);
    let reply = echo
        .unary(call("other", tonic::Code::NotFound, 2, false))
        .await
        .expect("the third call answers");
    assert_eq!(
        attempt(&reply).as_deref(),
        Some("3"),
        "one attempt per call"
    );

    // Retries run out: the app's own status comes back after 1 + 3 attempts.
    let status = echo
        .unary(call("always", tonic::Code::Unavailable, 0, false))
        .await
        .expect_err("fails every time");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "echo-app failed with 14 on purpose");
    let reply = echo
        .unary(call("always", tonic::Code::Ok, 0, false))
        .await
        .expect("answers");
    assert_eq!(
        attempt(&reply).as_deref(),
        Some("5"),
        "four attempts before"
    );

    // Marked as a stream: sent once, the app's status back as it is.
    let status = echo
        .unary(call("stream", tonic::Code::Unavailable, 1, true))
        .await
        .expect_err("not retried");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let reply = echo
        .unary(call("stream", tonic::Code::Unavailable, 1, true))
        .await
        .expect("the second call answers");
    assert_eq!(attempt(&reply).as_deref(), Some("2"));
    drop(app);
}

#[tokio::test(flavor = "multi_thread")]
async fn apps_without_a_target_get_the_built_in_retries_when_their_sidecar_is_gone() {
    // A Resiliency for another app: `orders` has no target.
    let text =
        resiliency("", RETRY, "retry: three").replace("      orders:", "      someone-else:");
    let mut p = pair("built-in", &[("res.yaml", &text)]).await;
    assert_eq!(
        p.call("fail/503/1/a").await.status,
        503,
        "no retry of answers"
    );
    assert_eq!(p.seen.calls("a"), 1);
    // The callee's sidecar dies without a word; its address stays registered.
    p.callee
        .child
        .kill()
        .await
        .expect("kill the callee's sidecar");
    let started = Instant::now();
    let reply = p.call("fail/503/0/b").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 500);
    let message = error_message(&reply);
    assert!(
        message.starts_with("failed to invoke, id: orders, err: "),
        "{message}"
    );
    // Three retries, 1 s apart (`DaprBuiltInServiceRetries`).
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(6),
        "{elapsed:?}: {message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_endpoint_gets_the_policies_of_its_name_and_a_url_those_of_no_target() {
    let dir = scratch_dir("resiliency-endpoint").expect("scratch dir");
    let seen = Arc::new(Seen::default());
    // The service has no sidecar: daprd calls it as an HTTPEndpoint or by URL.
    let port = start_app(Arc::clone(&seen)).await;
    let endpoint = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: flaky\nspec:\n  baseUrl: http://127.0.0.1:{port}\n"
    );
    let policies = format!("{RETRY}    timeouts:\n      short: 300ms\n");
    let res = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: res\nspec:\n  policies:\n{policies}  targets:\n    apps:\n      flaky: {{retry: three, timeout: short}}\n"
    );
    let caller = Sidecar::start(
        "checkout",
        &dir,
        SidecarOptions {
            config: Some(sqlite_config(&dir, "caller", "").expect("config")),
            extra_args: resources_args(&dir, &[("endpoint.yaml", &endpoint), ("res.yaml", &res)]),
            ..Default::default()
        },
    )
    .await
    .expect("daprd starts");
    let client = HttpClient::new();
    let call = |path: String| {
        let client = client.clone();
        let url = caller.url(&path);
        async move { client.get(&url).await.expect("the sidecar answers") }
    };

    // By name: two 503s, then 200, in three attempts.
    let reply = call("/v1.0/invoke/flaky/method/fail/503/2/named".into()).await;
    assert_eq!((reply.status, &reply.body[..]), (200, &b"call 3"[..]));
    assert_eq!(seen.calls("named"), 3);

    // By URL: no target names it, so no retries.
    let url = format!("http://127.0.0.1:{port}");
    let reply = call(format!("/v1.0/invoke/{url}/method/fail/503/2/url")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(seen.calls("url"), 1);

    // The timeout cuts a slow endpoint short (each of the four attempts), and the service
    // sees its calls go away.
    let started = Instant::now();
    let reply = call("/v1.0/invoke/flaky/method/slow/timed".into()).await;
    assert_eq!(reply.status, 500, "{:?}", reply.body);
    assert!(error_message(&reply).contains("flaky"), "{:?}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(seen.calls("timed"), 4);

    // gRPC InvokeService reaches the endpoint under the same policy: two 503s, then 200.
    let mut dapr = dapr_proto::runtime::v1::dapr_client::DaprClient::connect(format!(
        "http://127.0.0.1:{}",
        caller.grpc_port
    ))
    .await
    .expect("gRPC API connects");
    let invoke = |method: &str| dapr_proto::runtime::v1::InvokeServiceRequest {
        id: "flaky".into(),
        message: Some(dapr_proto::common::v1::InvokeRequest {
            method: method.into(),
            data: None,
            content_type: String::new(),
            http_extension: Some(dapr_proto::common::v1::HttpExtension {
                verb: dapr_proto::common::v1::http_extension::Verb::Get as i32,
                querystring: String::new(),
            }),
        }),
    };
    let reply = dapr
        .invoke_service(invoke("fail/503/2/grpc"))
        .await
        .expect("retried until 200");
    let data = reply.into_inner().data.expect("data").value;
    assert_eq!(data, b"call 3");
    assert_eq!(seen.calls("grpc"), 3);
}
