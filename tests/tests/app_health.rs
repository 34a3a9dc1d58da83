//! App health probes (`--enable-app-health-check`) with real processes: an app that fails its
//! probes is short-circuited (calls answered by its sidecar, never reaching it) and comes back
//! once a probe succeeds.

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::echo_app;
use e2e::sidecar::{HttpClient, scratch_dir, start_sqlite_pair};
use http::Method;

/// Polls `call` until `done` holds for its answer, at most `within`.
async fn until<T, F, Fut>(within: Duration, mut call: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: std::fmt::Debug,
{
    let deadline = Instant::now() + within;
    loop {
        let value = call().await;
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not reached within {within:?}; last: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_failing_its_probes_is_short_circuited_until_it_recovers() {
    let dir = scratch_dir("app-health").expect("scratch dir");
    let app = echo_app("http").await.expect("echo-app starts");
    let app_url = |path: &str| format!("http://{}{path}", app.addr);
    let health_flags = [
        "--enable-app-health-check",
        "--app-health-check-path",
        "/healthz",
        "--app-health-probe-interval",
        "1",
        "--app-health-probe-timeout",
        "500",
        "--app-health-threshold",
        "2",
    ];
    let (callee, caller) = start_sqlite_pair(&dir, app.addr.port(), "", &health_flags)
        .await
        .expect("sidecars start");
    let client = HttpClient::new();
    let invoke = || async {
        client
            .get(&caller.url("/v1.0/invoke/orders/method/hold/1"))
            .await
            .expect("answers")
    };

    assert_eq!(invoke().await.status, 200);
    // The probes reach the app on the configured path.
    until(
        Duration::from_secs(10),
        || async { client.get(&app_url("/probes")).await.expect("probes") },
        |r| String::from_utf8_lossy(&r.body).parse::<u32>().unwrap_or(0) >= 1,
    )
    .await;

    client
        .send(Method::PUT, &app_url("/set-health/503"), &[], Bytes::new())
        .await
        .expect("set health");
    let refused = until(Duration::from_secs(15), invoke, |r| r.status == 500).await;
    let body = refused.json().expect("error JSON");
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("app is not in a healthy state")),
        "{body}"
    );
    // While unhealthy, calls never reach the app.
    let before = client
        .get(&app_url("/stats"))
        .await
        .expect("stats")
        .json()
        .expect("json")["total"]
        .clone();
    for _ in 0..3 {
        assert_eq!(invoke().await.status, 500);
    }
    let after = client
        .get(&app_url("/stats"))
        .await
        .expect("stats")
        .json()
        .expect("json")["total"]
        .clone();
    assert_eq!(before, after, "short-circuited calls reached the app");

    client
        .send(Method::PUT, &app_url("/set-health/200"), &[], Bytes::new())
        .await
        .expect("set health");
    until(Duration::from_secs(15), invoke, |r| r.status == 200).await;
    assert!(
        callee.log_text().contains("app is unhealthy"),
        "the transition is logged"
    );
}
