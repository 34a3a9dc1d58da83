//! Our daprd under upstream Dapr's sentry: the sentry binary built by scripts/test.sh from the
//! published Go module pinned in `tests/upstream/go.mod` (into `.cache/upstream/bin/sentry`)
//! generates its CA and signs our sidecars' CSRs (ECDSA P-256, as upstream's own sidecars ask);
//! the sidecars then call each other over mutual TLS trusting only upstream's root, and access
//! control reads the SPIFFE ids upstream wrote into the certificates. Without the upstream
//! binary the test says so and passes without running.

use std::path::{Path, PathBuf};

use e2e::echo_app;
use e2e::sentry::Sentry;
use e2e::sidecar::{HttpClient, Sidecar, SidecarOptions, scratch_dir, sqlite_config, start_pair};

fn upstream_sentry() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/upstream/bin/sentry")
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_sentry_signs_our_sidecars_which_call_each_other_over_mtls() {
    let binary = upstream_sentry();
    if !binary.exists() {
        eprintln!(
            "SKIPPED: {} is missing: scripts/test.sh builds it (it needs Go)",
            binary.display()
        );
        return;
    }
    let dir = scratch_dir("upstream-sentry").expect("scratch dir");
    let sentry = Sentry::start_upstream(&binary, &dir, "1h", "15m")
        .await
        .expect("upstream sentry starts");
    let anchors = std::fs::read_to_string(sentry.trust_anchors()).expect("upstream's root");
    assert!(
        anchors.contains("BEGIN CERTIFICATE"),
        "upstream wrote its root: {anchors}"
    );
    let (args, env) = sentry.sidecar_options();
    let app = echo_app("http").await.expect("echo-app starts");
    // `checkout` may call; any other app id is denied.
    let acl = "  accessControl:\n    defaultAction: deny\n    trustDomain: public\n    policies:\n    - appId: checkout\n      defaultAction: allow\n      trustDomain: public\n      namespace: default\n";
    let options = |config: PathBuf, app_port: Option<u16>| SidecarOptions {
        app_port,
        config: Some(config),
        extra_args: args.clone(),
        env: env.clone(),
        ..Default::default()
    };
    let (orders, checkout) = start_pair(
        &dir,
        (
            "orders",
            options(
                sqlite_config(&dir, "callee", acl).expect("config"),
                Some(app.addr.port()),
            ),
        ),
        (
            "checkout",
            options(sqlite_config(&dir, "caller", "").expect("config"), None),
        ),
    )
    .await
    .expect("both sidecars get a certificate from upstream's sentry and start");
    let intruder = Sidecar::start(
        "intruder",
        &dir.join("callee"),
        options(sqlite_config(&dir, "intruder", "").expect("config"), None),
    )
    .await
    .expect("a third sidecar starts");

    let client = HttpClient::new();
    let reply = client
        .get(&checkout.url("/v1.0/invoke/orders/method/inspect/signed"))
        .await
        .expect("invoke");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen: serde_json::Value = reply.json().expect("inspect JSON");
    assert_eq!(seen["headers"]["dapr-caller-app-id"], "checkout", "{seen}");

    // The same root vouches for `intruder`, whose certificate says who it is: denied.
    let reply = client
        .get(&intruder.url("/v1.0/invoke/orders/method/inspect/denied"))
        .await
        .expect("invoke");
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    assert!(
        orders.log_text().contains("intruder"),
        "the callee names the denied caller: {}",
        orders.log_text()
    );
    drop(sentry);
}
