//! The cluster tier: a real `kube-apiserver` + `etcd` on loopback (see `e2e::cluster`), our chart
//! installed into it with Helm, and the real `injector` binary, running locally as the chart's
//! `dapr-injector` ServiceAccount, called by the API server as its admission webhook.
//!
//! No kubelet, scheduler or controller manager runs: pods are stored, never started, and a
//! Deployment gets no ReplicaSet. The binaries come from `scripts/test.sh` (kube-apiserver and
//! etcd built from `tests/cluster/go.mod` into `.cache/cluster/bin`, kubectl and Helm in
//! `.cache/bin`); without them each test says what is missing and passes without running.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use e2e::cluster::{Cluster, missing_tools};
use e2e::sidecar::{binary, free_port, scratch_dir};
use serde_json::{Value, json};

const NAMESPACE: &str = "dapr-system";
const APPS: &str = "apps";
const SIDECAR_IMAGE: &str = "localhost/dapr-rs/daprd:e2e";
/// Bound on things the API server or our binaries do asynchronously (caBundle patch, Service
/// reconcile).
const ASYNC_BOUND: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `None` (after saying why) when the cluster binaries are not installed.
async fn start(name: &str) -> anyhow::Result<Option<Cluster>> {
    if let Some(why) = missing_tools() {
        eprintln!("SKIPPED: the cluster tier cannot run: {why}");
        return Ok(None);
    }
    let dir = scratch_dir(&format!("cluster-{name}"))?;
    let started = Instant::now();
    let cluster = Cluster::start(&dir).await?;
    eprintln!(
        "kube-apiserver ready at {} after {:?} (logs in {})",
        cluster.server,
        started.elapsed(),
        dir.display()
    );
    Ok(Some(cluster))
}

/// `helm install dapr charts/dapr -n dapr-system --create-namespace` as the admin.
async fn helm_install(cluster: &Cluster) -> anyhow::Result<()> {
    helm_install_with(cluster, &[]).await
}

/// [`helm_install`] with extra arguments (`--set ...`).
async fn helm_install_with(cluster: &Cluster, extra: &[&str]) -> anyhow::Result<()> {
    let chart = repo().join("charts/dapr");
    let chart = chart.display().to_string();
    let mut args = vec![
        "install",
        "dapr",
        &chart,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--timeout=2m",
    ];
    args.extend_from_slice(extra);
    let out = cluster.helm(&args).await?;
    ensure!(
        out.success,
        "helm install failed:\n{}\n{}\napiserver log tail:\n{}",
        out.stdout,
        out.stderr,
        cluster.apiserver_log_tail(30)
    );
    Ok(())
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {within:?} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_api_server_comes_up_answers_and_enforces_rbac_for_service_account_tokens()
-> anyhow::Result<()> {
    let Some(cluster) = start("apiserver").await? else {
        return Ok(());
    };
    // `get --raw` prints the body as it is (JSON).
    let version: Value = serde_json::from_str(
        &cluster
            .kubectl(&["get", "--raw", "/version"])
            .await?
            .ok()?
            .stdout,
    )?;
    let git_version = version["gitVersion"].as_str().unwrap_or_default();
    assert!(
        git_version.starts_with("v1.34."),
        "unexpected version {version}"
    );

    // The admin is in system:masters.
    let can = cluster.kubectl(&["auth", "can-i", "*", "*"]).await?;
    assert_eq!(can.stdout.trim(), "yes", "{}", can.stderr);

    // A ServiceAccount token from the TokenRequest API authenticates as that account, which
    // has no rights until bound.
    cluster.create_namespace("rbac").await?;
    cluster
        .kubectl(&["create", "serviceaccount", "reader", "-n", "rbac"])
        .await?
        .ok()?;
    let reader = cluster.service_account_kubeconfig("rbac", "reader").await?;
    let whoami = cluster
        .kubectl_as(&reader, &["auth", "whoami", "-o", "json"], None)
        .await?
        .json()?;
    assert_eq!(
        whoami["status"]["userInfo"]["username"],
        "system:serviceaccount:rbac:reader"
    );
    let denied = cluster
        .kubectl_as(&reader, &["get", "configmaps", "-n", "rbac"], None)
        .await?;
    assert!(!denied.success);
    assert!(denied.stderr.contains("forbidden"), "{}", denied.stderr);

    // A Role of its own: the aggregated ClusterRoles (view, edit) get their rules from the
    // aggregation controller in kube-controller-manager, which does not run here.
    cluster
        .kubectl(&[
            "create",
            "role",
            "configmap-reader",
            "-n",
            "rbac",
            "--verb=get,list",
            "--resource=configmaps",
        ])
        .await?
        .ok()?;
    cluster
        .kubectl(&[
            "create",
            "rolebinding",
            "reader",
            "-n",
            "rbac",
            "--role=configmap-reader",
            "--serviceaccount=rbac:reader",
        ])
        .await?
        .ok()?;
    let allowed = cluster
        .kubectl_as(
            &reader,
            &["get", "configmaps", "-n", "rbac", "-o", "json"],
            None,
        )
        .await?
        .json()?;
    assert!(allowed["items"].is_array());
    Ok(())
}

#[tokio::test]
async fn helm_install_creates_the_charts_service_accounts_rbac_webhook_trust_bundle_and_configuration()
-> anyhow::Result<()> {
    let Some(cluster) = start("helm").await? else {
        return Ok(());
    };
    helm_install(&cluster).await?;

    for (kind, name) in [
        ("serviceaccount", "dapr-sentry"),
        ("serviceaccount", "dapr-injector"),
        ("secret", "dapr-trust-bundle"),
        ("configmap", "dapr-trust-bundle"),
        ("configurations.dapr.io", "daprsystem"),
        ("deployment", "dapr-sentry"),
        ("deployment", "dapr-sidecar-injector"),
        ("service", "dapr-sentry"),
        ("service", "dapr-sidecar-injector"),
    ] {
        let object = cluster.get_json(&[kind, name, "-n", NAMESPACE]).await?;
        assert_eq!(object["metadata"]["name"], name, "{kind}/{name}");
    }
    let config = cluster
        .get_json(&["configurations.dapr.io", "daprsystem", "-n", NAMESPACE])
        .await?;
    assert_eq!(config["spec"]["mtls"]["enabled"], true, "{config}");

    for crd in [
        "components.dapr.io",
        "configurations.dapr.io",
        "subscriptions.dapr.io",
        "resiliencies.dapr.io",
        "httpendpoints.dapr.io",
    ] {
        let object = cluster.get_json(&["crd", crd]).await?;
        let established = object["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        assert!(established, "CRD {crd} not established: {object}");
    }

    let webhook = cluster
        .get_json(&["mutatingwebhookconfiguration", "dapr-sidecar-injector"])
        .await?;
    let hook = &webhook["webhooks"][0];
    assert_eq!(hook["name"], "sidecar-injector.dapr.io");
    assert_eq!(
        hook["clientConfig"]["service"],
        json!({"namespace": NAMESPACE, "name": "dapr-sidecar-injector", "path": "/mutate", "port": 443})
    );
    assert!(hook["clientConfig"].get("caBundle").is_none(), "{hook}");

    // The chart's RBAC, as the API server evaluates it for the chart's ServiceAccounts.
    let injector = format!("--as=system:serviceaccount:{NAMESPACE}:dapr-injector");
    let sentry = format!("--as=system:serviceaccount:{NAMESPACE}:dapr-sentry");
    for (who, verb, resource, namespace, expected) in [
        (
            &injector,
            "patch",
            "mutatingwebhookconfigurations/dapr-sidecar-injector",
            None,
            "yes",
        ),
        (
            &injector,
            "patch",
            "mutatingwebhookconfigurations/other",
            None,
            "no",
        ),
        (&injector, "watch", "deployments", Some(APPS), "yes"),
        (&injector, "create", "services", Some(APPS), "yes"),
        // The operator API reads the Secrets components name, one by one; it never lists
        // or changes them.
        (&injector, "get", "secrets", Some(APPS), "yes"),
        (&injector, "list", "secrets", Some(APPS), "no"),
        (&injector, "update", "secrets", Some(NAMESPACE), "no"),
        (&injector, "watch", "components.dapr.io", Some(APPS), "yes"),
        (&injector, "create", "components.dapr.io", Some(APPS), "no"),
        (
            &sentry,
            "update",
            "secrets/dapr-trust-bundle",
            Some(NAMESPACE),
            "yes",
        ),
        (&sentry, "get", "secrets/other", Some(NAMESPACE), "no"),
        (&sentry, "create", "tokenreviews", None, "yes"),
        (&sentry, "create", "pods", Some(APPS), "no"),
    ] {
        let mut args = vec!["auth", "can-i", verb, resource, who.as_str()];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        let out = cluster.kubectl(&args).await?;
        assert_eq!(
            out.stdout.trim(),
            expected,
            "kubectl {}: {}",
            args.join(" "),
            out.stderr
        );
    }
    Ok(())
}

/// The real injector binary as a local process.
struct Injector {
    child: tokio::process::Child,
    port: u16,
    log: PathBuf,
}

impl Injector {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `target/debug/injector` serving HTTPS on loopback with a certificate from the
/// cluster's test CA, acting as ServiceAccount `dapr-system/dapr-injector` (token kubeconfig),
/// with that CA plus `extra_anchors` (PEM) as its trust anchors (the caBundle it patches in then
/// verifies its serving certificate; injected sidecars get them as `DAPR_TRUST_ANCHORS`).
async fn start_injector(cluster: &Cluster, extra_anchors: &str) -> anyhow::Result<Injector> {
    start_injector_with(cluster, extra_anchors, &["--disable-operator-api"], &[]).await
}

/// [`start_injector`] with extra flags and environment.
async fn start_injector_with(
    cluster: &Cluster,
    extra_anchors: &str,
    extra_args: &[&str],
    extra_env: &[(&str, &str)],
) -> anyhow::Result<Injector> {
    let dir = cluster.dir.join("injector");
    std::fs::create_dir_all(&dir)?;
    let anchors = dir.join("trust-anchors.pem");
    std::fs::write(&anchors, format!("{}{extra_anchors}", cluster.ca.cert_pem))?;
    let serving = cluster
        .ca
        .server(&["localhost"], &[std::net::IpAddr::from([127, 0, 0, 1])])?;
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, &serving.cert)?;
    std::fs::write(&key, &serving.key)?;
    let kubeconfig = cluster
        .service_account_kubeconfig(NAMESPACE, "dapr-injector")
        .await?;
    let port = free_port()?;
    let healthz_port = free_port()?;
    let log = dir.join("injector.log");
    let out = std::fs::File::create(&log)?;
    let child = tokio::process::Command::new(binary("injector"))
        .args(["--listen-address", "127.0.0.1", "--port", &port.to_string()])
        .args(["--healthz-listen-address", "127.0.0.1"])
        .args(["--healthz-port", &healthz_port.to_string()])
        .args(["--enable-metrics=false", "--scheduler-enabled=false"])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("SIDECAR_IMAGE", SIDECAR_IMAGE)
        .env("NAMESPACE", NAMESPACE)
        .env("DAPR_TRUST_ANCHORS_FILE", &anchors)
        .env("KUBE_CLUSTER_DOMAIN", "cluster.local")
        .env("ACTORS_ENABLED", "false")
        .env("RUST_LOG", "info")
        .env_remove("KUBECONFIG")
        .args(extra_args)
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .context("spawning the injector")?;
    Ok(Injector { child, port, log })
}

/// Waits until the injector has patched the webhook's caBundle with `anchors_pem` (its trust
/// anchors), then points the webhook at the local injector by URL with `failurePolicy: Fail`.
///
/// The chart points the webhook at Service dapr-sidecar-injector, which the API server resolves
/// to the Service's endpoints; with no kube-proxy and no pod behind it that route cannot work
/// here, so the test does what an admin would (the caBundle stays the one the injector set). The
/// chart's default policy is Ignore (as upstream); Fail makes a webhook that cannot be reached
/// fail the test instead of silently storing pods without a sidecar.
async fn route_webhook_to(
    cluster: &Cluster,
    injector: &mut Injector,
    anchors_pem: &str,
) -> anyhow::Result<()> {
    let expected_bundle = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(anchors_pem)
    };
    let deadline = Instant::now() + ASYNC_BOUND;
    let patched = loop {
        if let Ok(Some(status)) = injector.child.try_wait() {
            bail!("injector exited with {status}:\n{}", injector.log_text());
        }
        let webhook = cluster
            .get_json(&["mutatingwebhookconfiguration", "dapr-sidecar-injector"])
            .await?;
        if let Some(bundle) = webhook["webhooks"][0]["clientConfig"]["caBundle"].as_str() {
            break bundle.to_owned();
        }
        ensure!(
            Instant::now() < deadline,
            "the injector did not patch the caBundle within {ASYNC_BOUND:?}; its log:\n{}",
            injector.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(patched == expected_bundle, "caBundle {patched}");
    let url = format!("https://127.0.0.1:{}/mutate", injector.port);
    let patch = json!([
        {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
        {"op": "add", "path": "/webhooks/0/clientConfig/url", "value": url},
        {"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Fail"}
    ])
    .to_string();
    cluster
        .kubectl(&[
            "patch",
            "mutatingwebhookconfiguration",
            "dapr-sidecar-injector",
            "--type=json",
            "-p",
            &patch,
        ])
        .await?
        .ok()?;
    Ok(())
}

/// A pod in `apps` asking for a sidecar.
fn pod(name: &str, app_id: &str) -> String {
    pod_with_config(name, app_id, None)
}

/// [`pod`], naming a Configuration with `dapr.io/config` when `config` is given.
fn pod_with_config(name: &str, app_id: &str, config: Option<&str>) -> String {
    let mut annotations =
        json!({"dapr.io/enabled": "true", "dapr.io/app-id": app_id, "dapr.io/app-port": "8080"});
    if let Some(config) = config {
        annotations["dapr.io/config"] = json!(config);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": APPS,
            "annotations": annotations
        },
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1", "ports": [{"containerPort": 8080}]}]}
    })
    .to_string()
}

fn container_names(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

fn daprd(pod: &Value) -> anyhow::Result<&Value> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "daprd")
        .with_context(|| format!("no daprd container in {pod}"))
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn arg_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1).copied())
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

#[tokio::test]
async fn the_api_server_calls_the_real_injector_which_injects_daprd_rejects_bad_annotations_and_creates_the_app_service()
-> anyhow::Result<()> {
    let Some(cluster) = start("injector").await? else {
        return Ok(());
    };
    ensure!(
        binary("injector").exists(),
        "{} is missing: run `cargo build --workspace --bins`",
        binary("injector").display()
    );
    helm_install(&cluster).await?;
    cluster.create_namespace(APPS).await?;

    let mut injector = start_injector(&cluster, "").await?;
    route_webhook_to(&cluster, &mut injector, &cluster.ca.cert_pem).await?;

    // 1. As the admin (system:masters): injected. The API server may take a moment to see the
    // new webhook configuration, so the first pod is retried (bounded) until it is injected.
    let mut attempt = 0;
    let admin_pod = eventually(ASYNC_BOUND, "the first injected pod", || {
        attempt += 1;
        let name = format!("orders-admin-{attempt}");
        let cluster = &cluster;
        async move {
            let out = cluster
                .kubectl_as(
                    &cluster.admin_kubeconfig,
                    &["create", "-f", "-", "-o", "json"],
                    Some(&pod(&name, "orders")),
                )
                .await?;
            let stored = out.json()?;
            if container_names(&stored).iter().any(|n| n == "daprd") {
                Ok(Some(stored))
            } else {
                Ok(None)
            }
        }
    })
    .await
    .with_context(|| format!("injector log:\n{}", injector.log_text()))?;
    assert_eq!(container_names(&admin_pod), ["app", "daprd"]);
    let sidecar = daprd(&admin_pod)?;
    assert_eq!(sidecar["image"], SIDECAR_IMAGE);
    let sidecar_args = args(sidecar);
    assert_eq!(sidecar_args.first(), Some(&"/daprd"));
    assert_eq!(arg_value(&sidecar_args, "--app-id"), Some("orders"));
    assert_eq!(arg_value(&sidecar_args, "--app-port"), Some("8080"));
    assert_eq!(arg_value(&sidecar_args, "--mode"), Some("kubernetes"));
    assert_eq!(
        arg_value(&sidecar_args, "--sentry-address"),
        Some("dapr-sentry.dapr-system.svc.cluster.local:443")
    );
    // Configuration daprsystem (read through the chart's RBAC) has mTLS on.
    assert!(sidecar_args.contains(&"--enable-mtls"), "{sidecar_args:?}");
    assert_eq!(
        env_value(sidecar, "DAPR_TRUST_ANCHORS"),
        Some(cluster.ca.cert_pem.as_str())
    );
    assert_eq!(env_value(sidecar, "NAMESPACE"), Some(APPS));
    assert_eq!(
        admin_pod["metadata"]["labels"]["dapr.io/sidecar-injected"],
        "true"
    );
    assert_eq!(admin_pod["metadata"]["labels"]["dapr.io/app-id"], "orders");
    let app = &admin_pod["spec"]["containers"][0];
    assert_eq!(env_value(app, "DAPR_HTTP_PORT"), Some("3500"));

    // 2. As the ReplicaSet controller's ServiceAccount (on upstream's built-in allow list; its
    // RBAC is the API server's bootstrap role), with a generated name as controllers create
    // them: injected.
    cluster
        .kubectl(&[
            "create",
            "serviceaccount",
            "replicaset-controller",
            "-n",
            "kube-system",
        ])
        .await?
        .ok()?;
    let controller = cluster
        .service_account_kubeconfig("kube-system", "replicaset-controller")
        .await?;
    let mut generated: Value = serde_json::from_str(&pod("ignored", "orders"))?;
    if let Some(meta) = generated["metadata"].as_object_mut() {
        meta.remove("name");
        meta.insert("generateName".into(), json!("orders-7d9f8-"));
    }
    let stored = cluster
        .kubectl_as(
            &controller,
            &["create", "-f", "-", "-o", "json"],
            Some(&generated.to_string()),
        )
        .await?
        .json()
        .context("creating a pod as the replicaset controller")?;
    assert_eq!(container_names(&stored), ["app", "daprd"]);
    assert_eq!(
        arg_value(&args(daprd(&stored)?), "--app-id"),
        Some("orders")
    );

    // 3. As an ordinary ServiceAccount allowed to create pods (a Role): the pod is
    // admitted without a sidecar (upstream's rule: only controllers and system:masters).
    cluster
        .kubectl(&["create", "serviceaccount", "dev", "-n", APPS])
        .await?
        .ok()?;
    cluster
        .kubectl(&[
            "create",
            "role",
            "pod-creator",
            "-n",
            APPS,
            "--verb=create,get",
            "--resource=pods",
        ])
        .await?
        .ok()?;
    cluster
        .kubectl(&[
            "create",
            "rolebinding",
            "dev",
            "-n",
            APPS,
            "--role=pod-creator",
            "--serviceaccount=apps:dev",
        ])
        .await?
        .ok()?;
    let dev = cluster.service_account_kubeconfig(APPS, "dev").await?;
    let stored = cluster
        .kubectl_as(
            &dev,
            &["create", "-f", "-", "-o", "json"],
            Some(&pod("orders-by-dev", "orders")),
        )
        .await?
        .json()
        .context("creating a pod as an ordinary ServiceAccount")?;
    assert_eq!(container_names(&stored), ["app"]);
    assert!(
        injector
            .log_text()
            .contains("system:serviceaccount:apps:dev"),
        "the injector did not log the refused requester:\n{}",
        injector.log_text()
    );

    // 4. A bad annotation: the API server rejects the pod with our message.
    let rejected = cluster
        .kubectl_as(
            &cluster.admin_kubeconfig,
            &["create", "-f", "-", "-o", "json"],
            Some(&pod("bad-id", "Orders")),
        )
        .await?;
    assert!(!rejected.success, "a pod with app id Orders was admitted");
    assert!(
        rejected.stderr.contains(
            "admission webhook \"sidecar-injector.dapr.io\" denied the request: annotation \
             dapr.io/app-id: invalid app id \"Orders\": \"Orders-dapr\" must be a DNS-1123 label"
        ),
        "{}",
        rejected.stderr
    );
    let missing = cluster
        .kubectl(&["get", "pod", "bad-id", "-n", APPS])
        .await?;
    assert!(!missing.success, "the rejected pod was stored");

    // 5. A Deployment asking for a sidecar: the injector's reconciler (a kube-rs controller
    // acting as dapr-injector) creates the headless `<app-id>-dapr` Service.
    cluster
        .apply(
            &json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "checkout", "namespace": APPS},
                "spec": {
                    "selector": {"matchLabels": {"app": "checkout"}},
                    "template": {
                        "metadata": {
                            "labels": {"app": "checkout"},
                            "annotations": {"dapr.io/enabled": "true", "dapr.io/app-id": "checkout"}
                        },
                        "spec": {"containers": [{"name": "app", "image": "example.invalid/checkout:1"}]}
                    }
                }
            })
            .to_string(),
        )
        .await?;
    let service = created_in_apps(&cluster, "service", "checkout-dapr")
        .await
        .with_context(|| format!("injector log:\n{}", injector.log_text()))?;
    assert_eq!(service["spec"]["clusterIP"], "None", "{service}");
    assert_eq!(
        service["spec"]["selector"],
        json!({"app": "checkout"}),
        "{service}"
    );
    let ports: Vec<(String, i64)> = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["port"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        ports.contains(&("dapr-http".to_owned(), 80)) && ports.iter().any(|(_, p)| *p == 50002),
        "{ports:?}"
    );
    let owner = &service["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment", "{service}");
    assert_eq!(owner["name"], "checkout", "{service}");
    Ok(())
}

/// The control plane's trust domain as the chart passes it to sentry
/// (`global.mtls.controlPlaneTrustDomain`).
const CONTROL_PLANE_TRUST_DOMAIN: &str = "cluster.local";
/// Bound on sentry reading the cluster and serving (`/healthz` 200).
const SENTRY_START: Duration = Duration::from_secs(30);

/// Starts `target/debug/sentry` with the chart's flags in kubernetes mode, serving on loopback,
/// acting as ServiceAccount `dapr-system/dapr-sentry` through `kubeconfig` (read from
/// `KUBECONFIG`, as `kube::Client::try_default` does), and waits until it is healthy. `run`
/// names the log file, so that a restart keeps the first run's log.
async fn start_sentry(
    cluster: &Cluster,
    kubeconfig: &Path,
    run: &str,
) -> anyhow::Result<e2e::sentry::Sentry> {
    let dir = cluster.dir.join("sentry");
    // Where the chart mounts the Secret (no kubelet fills it here): sentry reads and writes the
    // bundle through the API and takes only the key names from these paths.
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds)?;
    e2e::sentry::Launch::new(&creds)?
        .log(&dir.join(format!("sentry-{run}.log")))
        .args(["--mode", "kubernetes", "--config", "daprsystem"])
        .args(["--trust-domain", CONTROL_PLANE_TRUST_DOMAIN])
        .env("KUBECONFIG", kubeconfig)
        .env("NAMESPACE", NAMESPACE)
        .start(SENTRY_START)
        .await
}

/// The trust bundle as stored: the Secret's keys (decoded), the ConfigMap's `ca.crt`, and both
/// objects' resourceVersions (which change on every write).
struct StoredBundle {
    secret: std::collections::BTreeMap<String, String>,
    config_map_ca: Option<String>,
    versions: (String, String),
}

async fn stored_bundle(cluster: &Cluster) -> anyhow::Result<StoredBundle> {
    use base64::Engine;
    let secret = cluster
        .get_json(&["secret", "dapr-trust-bundle", "-n", NAMESPACE])
        .await?;
    let config_map = cluster
        .get_json(&["configmap", "dapr-trust-bundle", "-n", NAMESPACE])
        .await?;
    let mut decoded = std::collections::BTreeMap::new();
    for (key, value) in secret["data"].as_object().into_iter().flatten() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap_or_default())
            .with_context(|| format!("Secret key {key}"))?;
        decoded.insert(key.clone(), String::from_utf8(bytes)?);
    }
    let version = |object: &Value| {
        object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    Ok(StoredBundle {
        secret: decoded,
        config_map_ca: config_map["data"]["ca.crt"].as_str().map(str::to_owned),
        versions: (version(&secret), version(&config_map)),
    })
}

/// `CA/SignCertificate` with a fresh Ed25519 CSR, answering the raw gRPC status (which
/// `dapr_identity::client::request` folds into its error).
async fn sign_certificate(
    client: &mut dapr_proto::sentry::v1::ca_client::CaClient<tonic::transport::Channel>,
    token: &str,
    id: &str,
    namespace: &str,
    validator: dapr_proto::sentry::v1::sign_certificate_request::TokenValidator,
) -> anyhow::Result<Result<(), tonic::Status>> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let answer = client
        .sign_certificate(dapr_proto::sentry::v1::SignCertificateRequest {
            id: id.into(),
            token: token.into(),
            namespace: namespace.into(),
            certificate_signing_request: csr.into_bytes().into(),
            token_validator: validator as i32,
            ..Default::default()
        })
        .await;
    Ok(answer.map(|_| ()))
}

/// The URI and DNS names of a certificate's subjectAltName.
fn subject_alt_names(der: &[u8]) -> anyhow::Result<Vec<String>> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)?;
    let san = cert
        .subject_alternative_name()?
        .context("no subjectAltName")?;
    Ok(san
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::URI(uri) => format!("URI:{uri}"),
            GeneralName::DNSName(dns) => format!("DNS:{dns}"),
            other => format!("{other:?}"),
        })
        .collect())
}

#[tokio::test]
async fn sentry_in_kubernetes_mode_stores_its_ca_with_the_charts_rbac_and_signs_only_for_the_pod_a_projected_token_names()
-> anyhow::Result<()> {
    use dapr_proto::sentry::v1::sign_certificate_request::TokenValidator;
    let Some(cluster) = start("sentry").await? else {
        return Ok(());
    };
    ensure!(
        binary("sentry").exists(),
        "{} is missing: run `cargo build --workspace --bins`",
        binary("sentry").display()
    );
    let began = Instant::now();
    helm_install(&cluster).await?;
    let installed = stored_bundle(&cluster).await?;
    assert!(installed.secret.is_empty(), "{:?}", installed.secret.keys());
    assert_eq!(installed.config_map_ca, None);

    // 1. Sentry, as dapr-sentry with nothing but the chart's RBAC, finds the chart's empty
    // Secret, generates a CA and stores it in the Secret and its roots in the ConfigMap.
    let kubeconfig = cluster
        .service_account_kubeconfig(NAMESPACE, "dapr-sentry")
        .await?;
    let mut first = start_sentry(&cluster, &kubeconfig, "first").await?;
    let stored = stored_bundle(&cluster).await?;
    let keys: Vec<&str> = stored.secret.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["ca.crt", "issuer.crt", "issuer.key"],
        "{}",
        first.log_text()
    );
    let anchors_pem = stored.secret["ca.crt"].clone();
    assert!(
        anchors_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{anchors_pem}"
    );
    assert!(stored.secret["issuer.key"].contains("PRIVATE KEY-----"));
    assert_eq!(stored.config_map_ca.as_deref(), Some(anchors_pem.as_str()));

    // 2. A restart loads the stored CA and writes neither object.
    first.child.kill().await?;
    let sentry_started = Instant::now();
    let sentry = start_sentry(&cluster, &kubeconfig, "second").await?;
    let reloaded = stored_bundle(&cluster).await?;
    assert_eq!(reloaded.secret, stored.secret);
    assert_eq!(
        reloaded.versions, stored.versions,
        "a restart rewrote the trust bundle"
    );
    assert!(
        sentry.log_text().contains("loaded issuer credentials"),
        "{}",
        sentry.log_text()
    );

    // 3. A pod in `apps` running as orders-sa with app id `orders`, stored only: no injector
    // runs here, and the chart's webhook (failurePolicy Ignore, no endpoints behind its
    // Service) lets the API server admit it unchanged.
    cluster.create_namespace(APPS).await?;
    cluster
        .kubectl(&["create", "serviceaccount", "orders-sa", "-n", APPS])
        .await?
        .ok()?;
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orders-1", "namespace": APPS, "annotations": {"dapr.io/app-id": "orders"}},
        "spec": {
            "serviceAccountName": "orders-sa",
            "containers": [{"name": "app", "image": "example.invalid/orders:1"}]
        }
    })
    .to_string();
    let stored_pod = cluster
        .kubectl_as(
            &cluster.admin_kubeconfig,
            &["create", "-f", "-", "-o", "json"],
            Some(&pod),
        )
        .await?
        .json()
        .context("creating pod orders-1")?;
    let uid = stored_pod["metadata"]["uid"]
        .as_str()
        .context("pod uid")?
        .to_owned();
    let bound = ("orders-1", uid.as_str());
    let token = cluster
        .pod_token(APPS, "orders-sa", Some("dapr.io/sentry"), bound)
        .await?;

    // 4. daprd's request: TokenReview, pod, service account and app id check out; the
    // certificate is for the workload trust domain `public` (the pod names no Configuration)
    // and chains to the stored issuer.
    let anchors = std::sync::Arc::new(dapr_identity::tls::root_store(anchors_pem.as_bytes())?);
    let sentry_id =
        dapr_identity::spiffe::SpiffeId::new(CONTROL_PLANE_TRUST_DOMAIN, NAMESPACE, "dapr-sentry")?;
    let request = dapr_identity::client::SvidRequest {
        sentry_address: sentry.addr.to_string(),
        sentry_id: sentry_id.clone(),
        id: "orders".into(),
        namespace: APPS.into(),
        token: token.clone(),
        validator: TokenValidator::Kubernetes as i32,
    };
    let svid = dapr_identity::client::request(
        &request,
        &anchors,
        dapr_identity::client::KeyAlgorithm::Ed25519,
    )
    .await
    .with_context(|| format!("sentry log:\n{}", sentry.log_text()))?;
    assert_eq!(
        subject_alt_names(&svid.chain[0])?,
        ["URI:spiffe://public/ns/apps/orders"]
    );
    let issuer = dapr_identity::pem::certs_from_pem(stored.secret["issuer.crt"].as_bytes())?;
    assert_eq!(svid.chain[1..], issuer[..]);

    // 5. Refusals, with upstream's codes: a validation failure is PermissionDenied with the
    // reason, a validator that is not enabled InvalidArgument.
    let tls = dapr_identity::tls::client_config(
        anchors.clone(),
        dapr_identity::tls::ExpectedId::Exact(sentry_id),
    )?;
    let channel = e2e::sentry::tls_channel(sentry.addr, std::sync::Arc::new(tls)).await?;
    let mut client = dapr_proto::sentry::v1::ca_client::CaClient::new(channel);

    // The API server will not bind a token for `default` to a pod that runs as orders-sa,
    // so a token for another account of the namespace names no pod at all.
    let refused = cluster
        .pod_token(APPS, "default", Some("dapr.io/sentry"), bound)
        .await
        .expect_err("the API server bound a token for default to a pod running as orders-sa");
    assert!(
        format!("{refused:#}").contains("cannot bind token for serviceaccount"),
        "{refused:#}"
    );
    let unbound_default = cluster
        .token(APPS, "default", Some("dapr.io/sentry"))
        .await?;
    let api_server_audience = cluster.pod_token(APPS, "orders-sa", None, bound).await?;

    let kubernetes = TokenValidator::Kubernetes;
    for (what, presented, id, namespace, validator, code, message) in [
        (
            "another app id",
            token.as_str(),
            "payments",
            APPS,
            kubernetes,
            tonic::Code::PermissionDenied,
            "pod orders-1 may ask for the id \"orders\", not \"payments\"",
        ),
        (
            "another namespace",
            token.as_str(),
            "orders",
            "other",
            kubernetes,
            tonic::Code::PermissionDenied,
            "the token is for namespace apps, the request for other",
        ),
        (
            "another service account, not bound to the pod",
            unbound_default.as_str(),
            "orders",
            APPS,
            kubernetes,
            tonic::Code::PermissionDenied,
            "not bound to a pod",
        ),
        (
            "the API server's audience",
            api_server_audience.as_str(),
            "orders",
            APPS,
            kubernetes,
            tonic::Code::PermissionDenied,
            "the token was not authenticated",
        ),
        (
            "a garbage token",
            "not-a-token",
            "orders",
            APPS,
            kubernetes,
            tonic::Code::PermissionDenied,
            "the token was not authenticated",
        ),
        (
            "the insecure validator",
            token.as_str(),
            "orders",
            APPS,
            TokenValidator::Insecure,
            tonic::Code::InvalidArgument,
            "the requested validator is not enabled",
        ),
    ] {
        let status = sign_certificate(&mut client, presented, id, namespace, validator)
            .await?
            .expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(message), "{what}: {status:?}");
    }

    // The credentials directory stands for the Secret's mount, which the kubelet fills only a
    // while after sentry stored its CA: sentry's rotation watcher (one read a second) waits for
    // it instead of reporting the credentials as gone. A negative check, so it needs a window:
    // three reads.
    tokio::time::sleep_until((sentry_started + Duration::from_millis(2500)).into()).await;
    let log = sentry.log_text();
    assert!(
        log.contains("the mounted trust bundle is still empty"),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    eprintln!(
        "sentry flow took {:?} after the API server was ready",
        began.elapsed()
    );
    Ok(())
}

/// A pod's value of `daprd` env entry `entry` as the kubelet would resolve it: a literal, or a
/// field of the pod (`fieldRef`) given its name and address.
fn resolve_env(entry: &Value, pod_name: &str, pod_ip: &str) -> anyhow::Result<Option<String>> {
    if let Some(value) = entry["value"].as_str() {
        return Ok(Some(value.to_owned()));
    }
    let Some(field) = entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() else {
        return Ok(None);
    };
    Ok(Some(match field {
        "metadata.name" => pod_name.to_owned(),
        "metadata.namespace" => APPS.to_owned(),
        "status.podIP" | "status.hostIP" => pod_ip.to_owned(),
        other => bail!("no stand-in for fieldRef {other} in {entry}"),
    }))
}

/// Waits (bounded) until the reconciler has created `kind/name` in `apps`; returns it.
async fn created_in_apps(cluster: &Cluster, kind: &str, name: &str) -> anyhow::Result<Value> {
    eventually(ASYNC_BOUND, &format!("{kind} {name}"), || async {
        let out = cluster
            .kubectl(&["get", kind, name, "-n", APPS, "-o", "json"])
            .await?;
        Ok(if out.success { Some(out.json()?) } else { None })
    })
    .await
}

/// Creates pod `name` (app id `app_id`) in `apps` through the API as the admin, retrying
/// (bounded) until the API server has called the injector, and returns the stored pod.
async fn create_injected_pod(
    cluster: &Cluster,
    name: &str,
    app_id: &str,
    config: Option<&str>,
) -> anyhow::Result<Value> {
    let mut attempt = 0;
    eventually(ASYNC_BOUND, "an injected pod", || {
        attempt += 1;
        let name = format!("{name}-{attempt}");
        async move {
            let stored = cluster
                .kubectl_as(
                    &cluster.admin_kubeconfig,
                    &["create", "-f", "-", "-o", "json"],
                    Some(&pod_with_config(&name, app_id, config)),
                )
                .await?
                .json()?;
            Ok(container_names(&stored)
                .iter()
                .any(|n| n == "daprd")
                .then_some(stored))
        }
    })
    .await
}

/// The Configuration both "pods" name: orders accepts from checkout only `GET` on `/inspect/*`.
const APP_CONFIGURATION: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: appconfig
  namespace: apps
spec:
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
      - appId: checkout
        defaultAction: deny
        trustDomain: public
        namespace: apps
        operations:
          - name: /inspect/*
            httpVerb: ["GET"]
            action: allow
"#;

/// Flow steps 4 and 5. Pods created through the API get their `daprd` from the real injector; each
/// "pod" then runs as a network namespace of its own with the injected container's args and
/// env (fieldRefs resolved as the kubelet would, the projected sentry token minted for that pod
/// by the TokenRequest API), finds sentry and its peers through a DNS server answering the
/// cluster's Service names, gets its certificate from sentry in kubernetes mode (a real
/// TokenReview), and calls the other over mutual TLS; with 6 s certificates (the chart's
/// `global.mtls.workloadCertTTL`), every sidecar renews several times under a load loop with
/// zero failed calls. Each daprd reads the Configuration its pod names (`dapr.io/config`) from
/// the API as its pod's service account, through the RoleBinding the injector's reconciler made
/// for the namespace: orders' access control refuses what the Configuration does not allow. A
/// sidecar whose Configuration does not exist, or lies in a namespace its account may not read,
/// stops with an error naming it.
#[tokio::test(flavor = "multi_thread")]
async fn injected_pods_read_their_configuration_get_identities_through_token_review_and_invoke_each_other_over_mtls_while_certificates_renew()
-> anyhow::Result<()> {
    if e2e::netns::skip_without_root() {
        return Ok(());
    }
    let Some(cluster) = start("pods").await? else {
        return Ok(());
    };
    helm_install_with(
        &cluster,
        &[
            // These sidecars read their Configuration from the API server (no operator API
            // runs here), which needs the opt-in reader RoleBindings.
            "--set",
            "dapr_sidecar_injector.configurationReaderBindings=true",
            "--set",
            "global.mtls.workloadCertTTL=6s",
            "--set",
            "global.mtls.allowedClockSkew=0s",
        ],
    )
    .await?;
    cluster.create_namespace(APPS).await?;
    let kubeconfig = cluster
        .service_account_kubeconfig(NAMESPACE, "dapr-sentry")
        .await?;
    let sentry = start_sentry(&cluster, &kubeconfig, "pods").await?;
    let sentry_root = stored_bundle(&cluster).await?.secret["ca.crt"].clone();
    let mut injector = start_injector(&cluster, &sentry_root).await?;
    route_webhook_to(
        &cluster,
        &mut injector,
        &format!("{}{sentry_root}", cluster.ca.cert_pem),
    )
    .await?;

    // Step 5's setup: the apps' Configuration, and a Deployment in `apps`, for which the
    // reconciler also binds the namespace's service accounts to dapr-configuration-reader.
    cluster.apply(APP_CONFIGURATION).await?;
    cluster
        .apply(
            &json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "orders", "namespace": APPS},
                "spec": {
                    "selector": {"matchLabels": {"app": "orders"}},
                    "template": {
                        "metadata": {
                            "labels": {"app": "orders"},
                            "annotations": {"dapr.io/enabled": "true", "dapr.io/app-id": "orders",
                                            "dapr.io/config": "appconfig"}
                        },
                        "spec": {"containers": [{"name": "app", "image": "example.invalid/orders:1"}]}
                    }
                }
            })
            .to_string(),
        )
        .await?;
    let binding = created_in_apps(&cluster, "rolebinding", "dapr-configuration-reader")
        .await
        .with_context(|| format!("injector log:\n{}", injector.log_text()))?;
    assert_eq!(
        binding["subjects"][0]["name"],
        format!("system:serviceaccounts:{APPS}"),
        "{binding}"
    );

    let orders_pod = create_injected_pod(&cluster, "orders", "orders", Some("appconfig")).await?;
    let checkout_pod =
        create_injected_pod(&cluster, "checkout", "checkout", Some("appconfig")).await?;

    let mut net = e2e::netns::Network::create(&["sentry", "orders", "checkout"])?;
    let ips: std::collections::HashMap<&str, _> = ["sentry", "orders", "checkout"]
        .into_iter()
        .map(|h| (h, net.host(h).ip))
        .collect();
    let ip = |host: &str| ips[host];
    let sentry_address = arg_value(&args(daprd(&orders_pod)?), "--sentry-address")
        .context("injected --sentry-address")?
        .to_owned();
    let (sentry_name, sentry_port) = sentry_address
        .rsplit_once(':')
        .context("sentry address port")?;
    net.start_dns(&[
        (sentry_name, vec![ip("sentry")]),
        ("orders-dapr.apps.svc.cluster.local", vec![ip("orders")]),
        ("checkout-dapr.apps.svc.cluster.local", vec![ip("checkout")]),
    ])?;
    let _to_sentry = net.forward("sentry", sentry_port.parse()?, sentry.addr)?;
    // The API server, where each pod's kubeconfig finds it (its loopback, as on the host).
    let api = cluster.address()?;
    let _to_api = ["orders", "checkout"]
        .into_iter()
        .map(|host| net.forward_from(host, api, api))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut children = Vec::new();
    let mut app = net.command("orders", binary("echo-app"));
    app.args(["--port", "8080"]);
    children.push(
        e2e::spawn_echo_app(app, Duration::from_secs(10))
            .await?
            .child,
    );
    let mut logs = Vec::new();
    for (host, stored) in [("orders", &orders_pod), ("checkout", &checkout_pod)] {
        let pod_name = stored["metadata"]["name"].as_str().context("pod name")?;
        let pod_uid = stored["metadata"]["uid"].as_str().context("pod uid")?;
        let token = cluster
            .pod_token(APPS, "default", Some("dapr.io/sentry"), (pod_name, pod_uid))
            .await?;
        let token_file = net.dir().join(format!("{host}.token"));
        std::fs::write(&token_file, token)?;
        let container = daprd(stored)?;
        let container_args = args(container);
        ensure!(
            container_args.first() == Some(&"/daprd"),
            "{container_args:?}"
        );
        ensure!(
            arg_value(&container_args, "--config") == Some("appconfig"),
            "{container_args:?}"
        );
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        ensure!(
            mounts.contains(&"/var/run/secrets/kubernetes.io/serviceaccount"),
            "daprd does not mount the service account token: {mounts:?}"
        );
        // The service account token the kubelet would mount for this pod, as a kubeconfig.
        let kubeconfig = cluster
            .pod_kubeconfig(APPS, "default", (pod_name, pod_uid))
            .await?;
        let log = net.dir().join(format!("{host}.log"));
        let out = std::fs::File::create(&log)?;
        // Without --control-plane-address the sidecar reads its Configuration from the API
        // server with its pod's token, the path this test covers (no operator API runs here:
        // the operator path is the operator-api test's).
        let mut daprd_args = Vec::new();
        let mut given = container_args[1..].iter();
        while let Some(arg) = given.next() {
            if *arg == "--control-plane-address" {
                given.next();
            } else {
                daprd_args.push(*arg);
            }
        }
        let mut cmd = net.command(host, binary("daprd"));
        cmd.args(&daprd_args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // Where the kubelet would mount the projected token.
            .env("DAPR_SENTRY_TOKEN_FILE", &token_file)
            // Stands in for the service-account mount and KUBERNETES_SERVICE_HOST/PORT.
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true);
        for entry in container["env"].as_array().into_iter().flatten() {
            let name = entry["name"].as_str().context("env name")?;
            if let Some(value) = resolve_env(entry, pod_name, &ip(host).to_string())? {
                cmd.env(name, value);
            }
        }
        children.push(cmd.spawn().context("daprd")?);
        logs.push(log);
    }
    let log_text = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();

    // The test drives checkout's daprd from here, through its loopback API port.
    let (checkout_api, _exposed) = net
        .expose("checkout", ([127, 0, 0, 1], 3500).into())
        .await?;
    let client = e2e::sidecar::HttpClient::new();
    let ready_url = format!("http://{checkout_api}/v1.0/healthz/outbound");
    eventually(Duration::from_secs(30), "checkout's daprd ready", || {
        let client = &client;
        let url = &ready_url;
        async move { Ok((client.get(url).await?.status == 204).then_some(())) }
    })
    .await
    .with_context(|| format!("checkout:\n{}\norders:\n{}", log_text(1), log_text(0)))?;

    let url = format!("http://{checkout_api}/v1.0/invoke/orders/method/inspect/first");
    let reply = eventually(Duration::from_secs(30), "the first call", || {
        let client = &client;
        let url = &url;
        async move {
            let reply = client.get(url).await?;
            Ok((reply.status == 200).then_some(reply))
        }
    })
    .await
    .with_context(|| format!("checkout:\n{}\norders:\n{}", log_text(1), log_text(0)))?;
    let seen = reply.json()?;
    assert_eq!(seen["headers"]["dapr-caller-app-id"], "checkout");
    assert_eq!(seen["headers"]["dapr-caller-namespace"], APPS);

    // Step 5: orders enforces the access control of the Configuration it read from the API.
    for (i, name) in [(0, "orders"), (1, "checkout")] {
        assert!(
            log_text(i).contains("Loaded Configuration apps/appconfig from the API server"),
            "{name}:\n{}",
            log_text(i)
        );
    }
    let denied = client
        .send(http::Method::POST, &url, &[], "not allowed".into())
        .await?;
    assert_eq!(denied.status, 403, "{:?}", denied.body);
    let body = String::from_utf8_lossy(&denied.body).into_owned();
    assert!(
        body.contains(
            "access control policy has denied access to id: spiffe://public/ns/apps/checkout operation: inspect/first verb: POST"
        ),
        "{body}"
    );

    // A bounded load loop (4 workers, at most 12 s and 20 000 calls) across renewals.
    let signed = |i: usize| {
        log_text(i)
            .matches("Successfully signed certificate")
            .count()
    };
    let before = (signed(0), signed(1));
    let deadline = Instant::now() + Duration::from_secs(12);
    let url = format!("http://{checkout_api}/v1.0/invoke/orders/method/inspect/load");
    let load = e2e::sidecar::GetLoad::start(&url, 4, deadline, 5000);
    let (total, failed) = load.finish().await?;
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    assert!(total > 100, "only {total} calls made");
    assert!(
        signed(0) >= before.0 + 3 && signed(1) >= before.1 + 3,
        "renewals during the load: orders {} → {}, checkout {} → {}\n{}",
        before.0,
        signed(0),
        before.1,
        signed(1),
        log_text(0)
    );
    assert!(
        !sentry.log_text().contains("ERROR"),
        "{}",
        sentry.log_text()
    );
    drop(children);

    // A Configuration that does not exist, and one in a namespace the account may not read
    // (no RoleBinding in `default`): the sidecar stops at start and says which and why.
    let kubeconfig = cluster.service_account_kubeconfig(APPS, "default").await?;
    for (namespace, config, expected) in [
        (
            APPS,
            "missing",
            "Configuration apps/missing (--config): does not exist",
        ),
        (
            "default",
            "appconfig",
            "needs `get` on configurations.dapr.io in namespace default",
        ),
    ] {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(binary("daprd"))
                .args([
                    "--mode",
                    "kubernetes",
                    "--app-id",
                    "ghost",
                    "--config",
                    config,
                ])
                .env("NAMESPACE", namespace)
                .env("KUBECONFIG", &kubeconfig)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("daprd did not stop within 60s")??;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    Ok(())
}

/// A client of the operator API with a sentry certificate for `app_id` in `namespace`
/// (insecure validator), accepting only a server whose SPIFFE id ends in
/// `/ns/dapr-system/dapr-operator`.
async fn operator_client(
    sentry: &e2e::sentry::Sentry,
    operator: std::net::SocketAddr,
    app_id: &str,
    namespace: &str,
) -> anyhow::Result<
    dapr_proto::operator::v1::operator_client::OperatorClient<tonic::transport::Channel>,
> {
    let anchors = std::sync::Arc::new(dapr_identity::tls::root_store(&std::fs::read(
        sentry.trust_anchors(),
    )?)?);
    let request = dapr_identity::client::SvidRequest {
        sentry_address: sentry.addr.to_string(),
        sentry_id: dapr_identity::spiffe::SpiffeId::new(
            OPERATOR_TEST_TRUST_DOMAIN,
            NAMESPACE,
            "dapr-sentry",
        )?,
        id: app_id.into(),
        namespace: namespace.into(),
        token: String::new(),
        validator: 0,
    };
    let svid = dapr_identity::client::request(
        &request,
        &anchors,
        dapr_identity::client::KeyAlgorithm::EcdsaP256,
    )
    .await?;
    let config = operator_tls(anchors)?.with_client_auth_cert(svid.chain, svid.key)?;
    operator_channel(operator, config).await
}

fn operator_tls(
    anchors: std::sync::Arc<rustls::RootCertStore>,
) -> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let expected = dapr_identity::tls::ExpectedId::Path {
        namespace: NAMESPACE.into(),
        app_id: "dapr-operator".into(),
    };
    Ok(
        rustls::ClientConfig::builder_with_provider(dapr_identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(
                dapr_identity::tls::SpiffeServerVerifier::new(anchors, expected),
            )),
    )
}

async fn operator_channel(
    operator: std::net::SocketAddr,
    mut config: rustls::ClientConfig,
) -> anyhow::Result<
    dapr_proto::operator::v1::operator_client::OperatorClient<tonic::transport::Channel>,
> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let channel = e2e::sentry::tls_channel(operator, std::sync::Arc::new(config)).await?;
    Ok(dapr_proto::operator::v1::operator_client::OperatorClient::new(channel))
}

/// Resident set (kB) and CPU seconds of a process, from /proc.
fn process_usage(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th
    // fields of the line, i.e. the 12th and 13th after it.
    let after = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok((rss, ticks as f64 / 100.0))
}

const SHOP: &str = "shop";
/// The trust domain of the operator test's sentry: the insecure validator puts every
/// certificate (the operator's included) in `public`, so the control plane's is `public` too.
const OPERATOR_TEST_TRUST_DOMAIN: &str = "public";
/// How many update streams the scale part holds open, and how many share one connection.
const SCALE_STREAMS: usize = 2000;
const STREAMS_PER_CONNECTION: usize = 50;

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_api_serves_each_namespace_its_resources_over_mtls_and_pushes_a_configuration_change_to_two_thousand_streams()
-> anyhow::Result<()> {
    use dapr_proto::operator::v1 as pb;
    let Some(cluster) = start("operator-api").await? else {
        return Ok(());
    };
    helm_install(&cluster).await?;
    // Sentry (insecure validator) issues the operator's certificate and the test clients'.
    let sentry_dir = cluster.dir.join("operator-sentry");
    std::fs::create_dir_all(&sentry_dir)?;
    let sentry = e2e::sentry::Launch::new(&sentry_dir.join("creds"))?
        .log(&sentry_dir.join("sentry.log"))
        .config(&sentry_dir, "1h", "1m")?
        .args(["--trust-domain", OPERATOR_TEST_TRUST_DOMAIN])
        .env("NAMESPACE", NAMESPACE)
        .start(SENTRY_START)
        .await?;
    let sentry_anchors = std::fs::read_to_string(sentry.trust_anchors())?;

    for ns in [SHOP, "billing"] {
        cluster.create_namespace(ns).await?;
    }
    // The service behind HTTPEndpoint `payments` (no sidecar): answers with the authorization
    // header it got, so the test sees the Secret-backed header daprd sends.
    let payments = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let payments_addr = payments.local_addr()?;
    tokio::spawn(async move {
        let echo = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)")
                .to_owned()
        });
        axum::serve(payments, echo).await
    });
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: redis, namespace: {SHOP}}}
stringData: {{password: s3cret}}
---
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {{name: appconfig, namespace: {SHOP}}}
spec:
  tracing: {{samplingRate: "0"}}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: statestore, namespace: {SHOP}}}
scopes: [orders]
spec:
  type: state.redis
  version: v1
  metadata:
    - name: redisHost
      value: redis:6379
    - name: redisPassword
      secretKeyRef: {{name: redis, key: password}}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: billing-only, namespace: {SHOP}}}
scopes: [invoices]
spec: {{type: pubsub.redis, version: v1, metadata: []}}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: shared, namespace: {SHOP}}}
spec: {{type: bindings.cron, version: v1, metadata: [{{name: schedule, value: "@every 1m"}}]}}
---
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata: {{name: payments, namespace: {SHOP}}}
spec:
  baseUrl: http://{payments_addr}
  headers:
    - name: authorization
      secretKeyRef: {{name: redis, key: password}}
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {{name: retries, namespace: {SHOP}}}
spec:
  policies: {{retries: {{three: {{policy: constant, duration: 1s, maxRetries: 3}}}}}}
  targets: {{apps: {{orders: {{retry: three}}}}}}
"#
        ))
        .await?;

    let operator_port = free_port()?;
    let operator = std::net::SocketAddr::from(([127, 0, 0, 1], operator_port));
    let sentry_address = sentry.addr.to_string();
    let mut injector = start_injector_with(
        &cluster,
        &sentry_anchors,
        &[
            "--operator-api-listen-address",
            "127.0.0.1",
            "--operator-api-port",
            &operator_port.to_string(),
        ],
        &[
            ("DAPR_SENTRY_ADDRESS", sentry_address.as_str()),
            (
                "DAPR_CONTROL_PLANE_TRUST_DOMAIN",
                OPERATOR_TEST_TRUST_DOMAIN,
            ),
        ],
    )
    .await?;

    // The operator serves once sentry has issued `dapr-operator` and the cache has listed.
    let mut orders = eventually(ASYNC_BOUND, "the operator API answers", || async {
        let mut client = operator_client(&sentry, operator, "orders", SHOP).await?;
        client
            .get_configuration(pb::GetConfigurationRequest {
                name: "appconfig".into(),
                namespace: SHOP.into(),
            })
            .await?;
        Ok(Some(client))
    })
    .await
    .with_context(|| injector.log_text())?;
    let configuration: Value = serde_json::from_slice(
        &orders
            .get_configuration(pb::GetConfigurationRequest {
                name: "appconfig".into(),
                namespace: SHOP.into(),
            })
            .await?
            .into_inner()
            .configuration,
    )?;
    ensure!(
        configuration["kind"] == "Configuration"
            && configuration["metadata"]["name"] == "appconfig"
            && configuration["spec"]["tracing"]["samplingRate"] == "0",
        "{configuration}"
    );

    // Components: scopes filtered by the caller's app id, the Secret's value filled in.
    let components = orders
        .list_components(pb::ListComponentsRequest {
            namespace: SHOP.into(),
        })
        .await?
        .into_inner()
        .components;
    let components: Vec<Value> = components
        .iter()
        .map(|c| serde_json::from_slice(c))
        .collect::<Result<_, _>>()?;
    let names: Vec<&str> = components
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    ensure!(
        names == ["shared", "statestore"],
        "components for orders: {names:?}"
    );
    let password = &components[1]["spec"]["metadata"][1];
    ensure!(
        password["value"] == "czNjcmV0" && password["secretKeyRef"]["name"] == "redis",
        "secret-backed value: {password}"
    );
    let endpoints = orders
        .list_http_endpoints(pb::ListHttpEndpointsRequest {
            namespace: SHOP.into(),
        })
        .await?
        .into_inner()
        .http_endpoints;
    ensure!(endpoints.len() == 1, "HTTPEndpoints: {}", endpoints.len());
    let endpoint: Value = serde_json::from_slice(&endpoints[0])?;
    ensure!(
        endpoint["spec"]["headers"][0]["value"] == "czNjcmV0",
        "secret-backed header: {endpoint}"
    );
    let resiliencies = orders
        .list_resiliency(pb::ListResiliencyRequest {
            namespace: SHOP.into(),
        })
        .await?
        .into_inner()
        .resiliencies;
    ensure!(
        resiliencies.len() == 1,
        "resiliencies: {}",
        resiliencies.len()
    );
    let missing = orders
        .get_configuration(pb::GetConfigurationRequest {
            name: "nope".into(),
            namespace: SHOP.into(),
        })
        .await
        .expect_err("a missing Configuration");
    ensure!(missing.code() == tonic::Code::NotFound, "{missing:?}");
    let unimplemented = orders
        .list_mcp_servers(pb::ListMcpServersRequest {
            namespace: SHOP.into(),
        })
        .await
        .expect_err("MCP servers are not served");
    ensure!(
        unimplemented.code() == tonic::Code::Unimplemented,
        "{unimplemented:?}"
    );

    // Another namespace's caller is refused; so is one without a certificate.
    let mut billing = operator_client(&sentry, operator, "invoices", "billing").await?;
    let denied = billing
        .get_configuration(pb::GetConfigurationRequest {
            name: "appconfig".into(),
            namespace: SHOP.into(),
        })
        .await
        .expect_err("another namespace's Configuration");
    ensure!(denied.code() == tonic::Code::PermissionDenied, "{denied:?}");
    let denied = billing
        .list_components(pb::ListComponentsRequest {
            namespace: SHOP.into(),
        })
        .await
        .expect_err("another namespace's Components");
    ensure!(denied.code() == tonic::Code::PermissionDenied, "{denied:?}");
    let anchors = std::sync::Arc::new(dapr_identity::tls::root_store(sentry_anchors.as_bytes())?);
    let anonymous = async {
        let mut client =
            operator_channel(operator, operator_tls(anchors)?.with_no_client_auth()).await?;
        client
            .get_configuration(pb::GetConfigurationRequest {
                name: "appconfig".into(),
                namespace: SHOP.into(),
            })
            .await?;
        anyhow::Ok(())
    };
    ensure!(
        tokio::time::timeout(Duration::from_secs(15), anonymous)
            .await
            .context("the anonymous call did not end")?
            .is_err(),
        "a client without a certificate was served"
    );

    // An update through the API server reaches an open ConfigurationUpdate stream.
    let mut updates = orders
        .configuration_update(pb::ConfigurationUpdateRequest {
            namespace: SHOP.into(),
        })
        .await?
        .into_inner();
    cluster
        .kubectl(&[
            "patch",
            "configuration",
            "appconfig",
            "-n",
            SHOP,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"tracing":{"samplingRate":"1"}}}"#,
        ])
        .await?
        .ok()?;
    let event = tokio::time::timeout(Duration::from_secs(10), updates.message())
        .await
        .context("no ConfigurationUpdate within 10 s")??
        .context("the stream ended")?;
    let changed: Value = serde_json::from_slice(&event.configuration)?;
    ensure!(
        event.r#type == pb::ResourceEventType::Updated as i32
            && changed["spec"]["tracing"]["samplingRate"] == "1",
        "event {:?}: {changed}",
        event.r#type
    );

    // A daprd in Kubernetes mode reads its Configuration from the operator and notices a change.
    let sidecar_dir = cluster.dir.join("operator-daprd");
    std::fs::create_dir_all(&sidecar_dir)?;
    let operator_address = operator.to_string();
    let daprd = e2e::sidecar::Sidecar::start(
        "orders",
        &sidecar_dir,
        e2e::sidecar::SidecarOptions {
            config: Some("appconfig".into()),
            extra_args: [
                "--mode",
                "kubernetes",
                "--enable-mtls",
                "--sentry-address",
                sentry_address.as_str(),
                "--control-plane-trust-domain",
                OPERATOR_TEST_TRUST_DOMAIN,
                "--control-plane-namespace",
                NAMESPACE,
                "--control-plane-address",
                operator_address.as_str(),
                "--enable-metrics=false",
            ]
            .map(str::to_owned)
            .to_vec(),
            env: vec![
                ("NAMESPACE".into(), SHOP.into()),
                (
                    "DAPR_TRUST_ANCHORS_FILE".into(),
                    sentry.trust_anchors().display().to_string(),
                ),
            ],
            ..Default::default()
        },
    )
    .await?;
    let daprd_log = || std::fs::read_to_string(&daprd.log).unwrap_or_default();
    ensure!(
        daprd_log().contains("Loaded Configuration shop/appconfig from the operator"),
        "daprd did not read its Configuration from the operator:\n{}",
        daprd_log()
    );
    // Its Resiliency and HTTPEndpoint come from the operator too; the endpoint's header is the
    // Secret's value, decoded from what the operator resolved.
    ensure!(
        daprd_log().contains("Loading Resiliency configuration: retries"),
        "daprd did not load the Resiliency from the operator:\n{}",
        daprd_log()
    );
    let reply = e2e::sidecar::HttpClient::new()
        .get(&daprd.url("/v1.0/invoke/payments/method/charge"))
        .await?;
    ensure!(
        reply.status == 200 && reply.body == "s3cret",
        "HTTPEndpoint payments through daprd: {} {:?}\n{}",
        reply.status,
        reply.body,
        daprd_log()
    );
    cluster
        .kubectl(&[
            "patch",
            "configuration",
            "appconfig",
            "-n",
            SHOP,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"tracing":{"samplingRate":"0.25"}}}"#,
        ])
        .await?
        .ok()?;
    eventually(
        Duration::from_secs(10),
        "daprd notices the change",
        || async {
            Ok(daprd_log()
                .contains("restart the pod to apply it")
                .then_some(()))
        },
    )
    .await
    .with_context(daprd_log)?;

    // Scale: SCALE_STREAMS update streams (STREAMS_PER_CONNECTION per connection) and one
    // change that must reach all of them.
    let pid = injector.child.id().context("injector pid")?;
    let (rss_before, cpu_before) = process_usage(pid)?;
    let mut clients = Vec::new();
    for _ in 0..SCALE_STREAMS.div_ceil(STREAMS_PER_CONNECTION) {
        clients.push(operator_client(&sentry, operator, "orders", SHOP).await?);
    }
    let mut streams = Vec::with_capacity(SCALE_STREAMS);
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..SCALE_STREAMS {
        let mut client = clients[i / STREAMS_PER_CONNECTION].clone();
        opening.spawn(async move {
            client
                .configuration_update(pb::ConfigurationUpdateRequest {
                    namespace: SHOP.into(),
                })
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let opened = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(stream) = opening.join_next().await {
            streams.push(stream??);
        }
        anyhow::Ok(())
    })
    .await;
    opened.context("opening the update streams took over 60 s")??;
    let (rss_open, cpu_open) = process_usage(pid)?;
    let mut receiving = tokio::task::JoinSet::new();
    for mut stream in streams {
        receiving.spawn(async move {
            let event = stream.message().await;
            (Instant::now(), event)
        });
    }
    let changed_at = Instant::now();
    cluster
        .kubectl(&[
            "patch",
            "configuration",
            "appconfig",
            "-n",
            SHOP,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"tracing":{"samplingRate":"0.5"}}}"#,
        ])
        .await?
        .ok()?;
    let patched_at = Instant::now();
    let mut latest = changed_at;
    let mut received = 0;
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(done) = receiving.join_next().await {
            let (at, event) = done?;
            let event = event?.context("a stream ended without the change")?;
            ensure!(event.r#type == pb::ResourceEventType::Updated as i32);
            latest = latest.max(at);
            received += 1;
        }
        anyhow::Ok(())
    })
    .await;
    all.context("not every stream got the change within 30 s")??;
    let (rss_after, cpu_after) = process_usage(pid)?;
    let spread = latest.saturating_duration_since(patched_at);
    eprintln!(
        "operator API scale: {received} streams over {} connections; change reached all {:?} \
         after kubectl patch returned ({:?} after it started); injector RSS {rss_before} kB \
         before, {rss_open} kB with the streams open, {rss_after} kB after the change; CPU \
         {:.2} s to open the streams (TLS handshakes included), {:.2} s to fan the change out",
        clients.len(),
        spread,
        latest.saturating_duration_since(changed_at),
        cpu_open - cpu_before,
        cpu_after - cpu_open,
    );
    ensure!(
        received == SCALE_STREAMS,
        "{received} streams got the change"
    );
    ensure!(
        latest.saturating_duration_since(changed_at) < Duration::from_secs(2),
        "the change took {:?} to reach every stream",
        latest.saturating_duration_since(changed_at)
    );
    ensure!(
        injector.child.try_wait()?.is_none(),
        "the injector exited:\n{}",
        injector.log_text()
    );
    Ok(())
}

/// The user and group upstream's daprd must run as in kubernetes mode (the distroless image's
/// `nonroot`; it refuses any other, `pkg/security/usergroup.go`).
const NON_ROOT: u32 = 65532;

/// Upstream Dapr's daprd 1.16.5 (`scripts/test.sh` builds it from `tests/upstream/go.mod`).
fn upstream_daprd() -> PathBuf {
    repo().join(".cache/upstream/bin/daprd")
}

/// The Configuration of the mixed fleet: `orders` (upstream's sidecar) accepts from `checkout`
/// only `GET` on `/inspect/*`; `checkout` (ours) accepts anything from `orders`.
const MIXED_CONFIGURATION: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: appconfig
  namespace: apps
spec:
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
      - appId: checkout
        defaultAction: deny
        trustDomain: public
        namespace: apps
        operations:
          - name: /inspect/*
            httpVerb: ["GET"]
            action: allow
      - appId: orders
        defaultAction: allow
        trustDomain: public
        namespace: apps
---
apiVersion: v1
kind: Secret
metadata: {name: partner, namespace: apps}
stringData: {token: s3cret}
---
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata: {name: partner, namespace: apps}
spec:
  baseUrl: http://127.0.0.1:8080
  headers:
    - name: x-partner-token
      secretKeyRef: {name: partner, key: token}
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: patience, namespace: apps}
spec:
  policies: {retries: {twice: {policy: constant, duration: 1s, maxRetries: 2}}}
  targets: {apps: {checkout: {retry: twice}}}
"#;

/// The command the kubelet would run for the injected `daprd` container of `stored`, in
/// network-namespace host `host`, with `program` as the binary: exactly the container's args
/// (`--control-plane-address` included) and env (fieldRefs resolved), plus what the kubelet
/// mounts, as files: the projected sentry token (`DAPR_SENTRY_TOKEN_FILE`, which both our daprd
/// and upstream's (`pkg/security/token/token.go`) read before the mount path, and which in
/// kubernetes mode means the kubernetes validator) and the service-account token
/// (`KUBECONFIG`, for upstream's built-in `kubernetes` secret store). With `run_as`, the
/// process runs as that user and group (`setpriv`), as the kubelet runs the image's user.
#[allow(clippy::too_many_arguments)]
fn pod_sidecar(
    net: &e2e::netns::Network,
    host: &str,
    program: &Path,
    run_as: Option<u32>,
    stored: &Value,
    token_file: &Path,
    kubeconfig: &Path,
    log: &Path,
) -> anyhow::Result<tokio::process::Command> {
    let pod_name = stored["metadata"]["name"].as_str().context("pod name")?;
    let container = daprd(stored)?;
    let container_args = args(container);
    ensure!(
        container_args.first() == Some(&"/daprd"),
        "{container_args:?}"
    );
    let out = std::fs::File::create(log)?;
    let mut cmd = match run_as {
        None => net.command(host, program),
        Some(id) => {
            let id = id.to_string();
            let mut cmd = net.command(host, "setpriv");
            cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups"])
                .arg(program);
            cmd
        }
    };
    cmd.args(&container_args[1..])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DAPR_SENTRY_TOKEN_FILE", token_file)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .kill_on_drop(true);
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().context("env name")?;
        if let Some(value) = resolve_env(entry, pod_name, &net.host(host).ip.to_string())? {
            cmd.env(name, value);
        }
    }
    Ok(cmd)
}

/// Waits (bounded) until a sidecar's HTTP API at `api` answers `/v1.0/healthz` with 204.
async fn sidecar_ready(
    client: &e2e::sidecar::HttpClient,
    api: std::net::SocketAddr,
    within: Duration,
) -> anyhow::Result<()> {
    let url = format!("http://{api}/v1.0/healthz");
    eventually(within, "the sidecar ready", || {
        let url = &url;
        async move { Ok((client.get(url).await?.status == 204).then_some(())) }
    })
    .await
}

/// `InvokeService` of `method` on app `target` (a GET) through the gRPC API at `api`; the
/// echo-app's JSON answer.
async fn invoke_over_grpc(
    api: std::net::SocketAddr,
    target: &str,
    method: &str,
) -> anyhow::Result<Value> {
    use dapr_proto::common::v1::{HttpExtension, InvokeRequest, http_extension::Verb};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{api}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await?;
    let reply = dapr_proto::runtime::v1::dapr_client::DaprClient::new(channel)
        .invoke_service(dapr_proto::runtime::v1::InvokeServiceRequest {
            id: target.into(),
            message: Some(InvokeRequest {
                method: method.into(),
                http_extension: Some(HttpExtension {
                    verb: Verb::Get as i32,
                    querystring: String::new(),
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(|status| anyhow::anyhow!("InvokeService: {status:?}"))?
        .into_inner();
    Ok(serde_json::from_slice(
        &reply.data.context("no data in the reply")?.value,
    )?)
}

/// Upstream's daprd as the sidecar of a pod our injector injected, under our control plane:
/// sentry in kubernetes mode (TokenReview) signs its certificate; the injector, itself holding a
/// `dapr-operator` certificate that sentry issued for the injector's control-plane pod's token,
/// serves it its Configuration (access control), Resiliency and HTTPEndpoint over the operator
/// API; it and our daprd invoke each other over mTLS (HTTP and gRPC APIs). A Configuration change reaches ours (which
/// says a restart is needed) and reaches upstream's only through a restart: 1.16.5 has no
/// `ConfigurationUpdate` (`dapr/proto/operator/v1/operator.proto` at v1.16.5), so until then it
/// keeps the access control it started with.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_daprd_in_an_injected_pod_gets_its_certificate_from_our_sentry_its_configuration_from_our_operator_api_and_invokes_ours_over_mtls()
-> anyhow::Result<()> {
    if e2e::netns::skip_without_root() {
        return Ok(());
    }
    let upstream = upstream_daprd();
    if !upstream.exists() {
        eprintln!(
            "SKIPPED: upstream's daprd is not built ({}; scripts/test.sh builds it with Go)",
            upstream.display()
        );
        return Ok(());
    }
    let Some(cluster) = start("upstream-sidecar").await? else {
        return Ok(());
    };
    helm_install(&cluster).await?;
    cluster.create_namespace(APPS).await?;
    let kubeconfig = cluster
        .service_account_kubeconfig(NAMESPACE, "dapr-sentry")
        .await?;
    let sentry = start_sentry(&cluster, &kubeconfig, "upstream").await?;
    let sentry_root = stored_bundle(&cluster).await?.secret["ca.crt"].clone();
    // Before the injector starts, so that its first list holds them: an object created just
    // after a kind's first list can take a second or more to arrive through a watch on a
    // freshly started API server, longer than the sidecars take to start.
    cluster.apply(MIXED_CONFIGURATION).await?;

    // The injector's own pod, for the token the kubelet would project into it: sentry gives a
    // control-plane pod of the injector `dapr-injector`, and `dapr-operator` for the operator API.
    let injector_pod = cluster
        .kubectl_as(
            &cluster.admin_kubeconfig,
            &["create", "-f", "-", "-o", "json"],
            Some(
                &json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": "dapr-sidecar-injector-0",
                        "namespace": NAMESPACE,
                        "annotations": {"dapr.io/control-plane": "injector"}
                    },
                    "spec": {
                        "serviceAccountName": "dapr-injector",
                        "containers": [{"name": "dapr-sidecar-injector", "image": "localhost/dapr-rs/injector:e2e"}]
                    }
                })
                .to_string(),
            ),
        )
        .await?
        .ok()?
        .json()?;
    let injector_pod_uid = injector_pod["metadata"]["uid"]
        .as_str()
        .context("pod uid")?;
    let injector_token = cluster
        .pod_token(
            NAMESPACE,
            "dapr-injector",
            Some("dapr.io/sentry"),
            ("dapr-sidecar-injector-0", injector_pod_uid),
        )
        .await?;
    let injector_token_file = cluster.dir.join("injector-sentry-token");
    std::fs::write(&injector_token_file, injector_token)?;
    let operator_port = free_port()?;
    let sentry_address = sentry.addr.to_string();
    let mut injector = start_injector_with(
        &cluster,
        &sentry_root,
        &[
            "--operator-api-listen-address",
            "127.0.0.1",
            "--operator-api-port",
            &operator_port.to_string(),
        ],
        &[
            ("DAPR_SENTRY_ADDRESS", sentry_address.as_str()),
            (
                "DAPR_SENTRY_TOKEN_FILE",
                &injector_token_file.display().to_string(),
            ),
        ],
    )
    .await?;
    route_webhook_to(
        &cluster,
        &mut injector,
        &format!("{}{sentry_root}", cluster.ca.cert_pem),
    )
    .await?;
    let orders_pod = create_injected_pod(&cluster, "orders", "orders", Some("appconfig")).await?;
    let checkout_pod =
        create_injected_pod(&cluster, "checkout", "checkout", Some("appconfig")).await?;

    let hosts = ["operator", "orders", "checkout"];
    let mut net = e2e::netns::Network::create(&hosts)?;
    let ip = |host: &str| net.host(host).ip;
    let injected = args(daprd(&orders_pod)?);
    // The injector names sentry by the address it uses itself (DAPR_SENTRY_ADDRESS, the host's
    // loopback): each pod's loopback forwards that port to sentry.
    ensure!(
        arg_value(&injected, "--sentry-address") == Some(sentry_address.as_str()),
        "{injected:?}"
    );
    // The operator API by its Service name, as the injector names it.
    let (operator_name, operator_port_in_pods) = ("dapr-api.dapr-system.svc.cluster.local", 443);
    ensure!(
        arg_value(&injected, "--control-plane-address")
            == Some(format!("{operator_name}:{operator_port_in_pods}").as_str()),
        "{injected:?}"
    );
    let records = [
        (operator_name, vec![ip("operator")]),
        ("orders-dapr.apps.svc.cluster.local", vec![ip("orders")]),
        ("checkout-dapr.apps.svc.cluster.local", vec![ip("checkout")]),
    ];
    net.start_dns(&records)?;
    let _to_sentry = ["orders", "checkout"]
        .into_iter()
        .map(|host| net.forward_from(host, sentry.addr, sentry.addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let _to_operator = net.forward(
        "operator",
        operator_port_in_pods,
        ([127, 0, 0, 1], operator_port).into(),
    )?;
    let api = cluster.address()?;
    let _to_api = ["orders", "checkout"]
        .into_iter()
        .map(|host| net.forward_from(host, api, api))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let mut apps = Vec::new();
    for host in ["orders", "checkout"] {
        let mut app = net.command(host, binary("echo-app"));
        app.args(["--port", "8080"]);
        apps.push(
            e2e::spawn_echo_app(app, Duration::from_secs(10))
                .await?
                .child,
        );
    }
    // orders runs upstream's daprd, checkout ours.
    let mut files = std::collections::HashMap::new();
    for (host, stored) in [("orders", &orders_pod), ("checkout", &checkout_pod)] {
        let pod_name = stored["metadata"]["name"].as_str().context("pod name")?;
        let pod_uid = stored["metadata"]["uid"].as_str().context("pod uid")?;
        let token = cluster
            .pod_token(APPS, "default", Some("dapr.io/sentry"), (pod_name, pod_uid))
            .await?;
        let token_file = net.dir().join(format!("{host}.token"));
        std::fs::write(&token_file, token)?;
        let kubeconfig = cluster
            .pod_kubeconfig(APPS, "default", (pod_name, pod_uid))
            .await?;
        files.insert(host, (token_file, kubeconfig));
    }
    // The sidecars' logs stay with the cluster's after the test.
    let pods_dir = cluster.dir.join("pods");
    std::fs::create_dir_all(&pods_dir)?;
    let orders_log = |run: u32| pods_dir.join(format!("orders-upstream-{run}.log"));
    let checkout_log = pods_dir.join("checkout.log");
    let start_orders = |run: u32| {
        let (token, kubeconfig) = &files["orders"];
        pod_sidecar(
            &net,
            "orders",
            &upstream,
            Some(NON_ROOT),
            &orders_pod,
            token,
            kubeconfig,
            &orders_log(run),
        )
    };
    let mut orders = start_orders(1)?.spawn().context("upstream daprd")?;
    let (token, kubeconfig) = &files["checkout"];
    let _checkout = pod_sidecar(
        &net,
        "checkout",
        &binary("daprd"),
        None,
        &checkout_pod,
        token,
        kubeconfig,
        &checkout_log,
    )?
    .spawn()
    .context("daprd")?;
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let logs = |run: u32| {
        format!(
            "upstream orders:\n{}\nour checkout:\n{}\ninjector:\n{}\nsentry:\n{}",
            read(&orders_log(run)),
            read(&checkout_log),
            injector.log_text(),
            sentry.log_text()
        )
    };

    let (orders_api, _orders_exposed) = net.expose("orders", ([127, 0, 0, 1], 3500).into()).await?;
    let (checkout_api, _checkout_exposed) = net
        .expose("checkout", ([127, 0, 0, 1], 3500).into())
        .await?;
    let client = e2e::sidecar::HttpClient::new();
    // 1. Both become ready: upstream's only once it has its certificate from our sentry (a
    // kubernetes-mode sentry has no other validator than TokenReview) and has read its
    // Configuration from the operator API.
    sidecar_ready(&client, orders_api, Duration::from_secs(60))
        .await
        .with_context(|| logs(1))?;
    sidecar_ready(&client, checkout_api, Duration::from_secs(60))
        .await
        .with_context(|| logs(1))?;

    // 4. Each invokes the other over mutual TLS; each callee names the caller by the SPIFFE id
    // our sentry wrote into the caller's certificate.
    let call = |api: std::net::SocketAddr, target: &str, method: http::Method, path: &str| {
        let url = format!("http://{api}/v1.0/invoke/{target}/method/{path}");
        let client = &client;
        async move { client.send(method, &url, &[], "ping".into()).await }
    };
    let first = eventually(
        Duration::from_secs(30),
        "ours calling upstream's",
        || async {
            let reply = call(checkout_api, "orders", http::Method::GET, "inspect/first").await?;
            Ok((reply.status == 200).then_some(reply))
        },
    )
    .await
    .with_context(|| logs(1))?;
    let seen = first.json()?;
    ensure!(
        seen["headers"]["dapr-caller-app-id"] == "checkout" && seen["method"] == "GET",
        "upstream's app saw {seen}"
    );
    let back = eventually(
        Duration::from_secs(30),
        "upstream's calling ours",
        || async {
            let reply = call(
                orders_api,
                "checkout",
                http::Method::POST,
                "inspect/orders/42",
            )
            .await?;
            Ok((reply.status == 200).then_some(reply))
        },
    )
    .await
    .with_context(|| logs(1))?;
    let seen = back.json()?;
    ensure!(
        seen["headers"]["dapr-caller-app-id"] == "orders"
            && seen["headers"]["dapr-caller-namespace"] == APPS
            && seen["method"] == "POST",
        "our app saw {seen}"
    );

    // The same both ways through the gRPC API (`InvokeService`, a GET to the HTTP app).
    let (orders_grpc, _orders_grpc_exposed) =
        net.expose("orders", ([127, 0, 0, 1], 50001).into()).await?;
    let (checkout_grpc, _checkout_grpc_exposed) = net
        .expose("checkout", ([127, 0, 0, 1], 50001).into())
        .await?;
    for (api, target, caller) in [
        (checkout_grpc, "orders", "checkout"),
        (orders_grpc, "checkout", "orders"),
    ] {
        let seen = invoke_over_grpc(api, target, "inspect/over-grpc")
            .await
            .with_context(|| format!("{caller} calling {target} over gRPC\n{}", logs(1)))?;
        ensure!(
            seen["headers"]["dapr-caller-app-id"] == caller
                && seen["method"] == "GET"
                && seen["path"] == "/inspect/over-grpc",
            "{target}'s app saw {seen}"
        );
    }

    // 2. Upstream's sidecar enforces the access control it read from our operator API.
    let denied = call(checkout_api, "orders", http::Method::POST, "inspect/first").await?;
    let denied_body = String::from_utf8_lossy(&denied.body).into_owned();
    ensure!(
        denied.status == 403
            && denied_body.contains(
                "access control policy has denied access to id: spiffe://public/ns/apps/checkout \
                 operation: inspect/first verb: POST"
            ),
        "upstream's access control: {} {denied_body}\n{}",
        denied.status,
        logs(1)
    );
    // Its Resiliency, and its HTTPEndpoint with the header our operator filled from the Secret.
    ensure!(
        read(&orders_log(1)).contains("Loading Resiliency configuration: patience"),
        "upstream did not load the Resiliency:\n{}",
        logs(1)
    );
    let endpoint = call(orders_api, "partner", http::Method::GET, "inspect/hello").await?;
    ensure!(
        endpoint.status == 200 && endpoint.json()?["headers"]["x-partner-token"] == "s3cret",
        "HTTPEndpoint partner through upstream's daprd: {} {:?}\n{}",
        endpoint.status,
        String::from_utf8_lossy(&endpoint.body),
        logs(1)
    );

    // 3. A Configuration change through the API: checkout may now POST to orders.
    cluster
        .kubectl(&[
            "patch",
            "configuration",
            "appconfig",
            "-n",
            APPS,
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/accessControl/policies/0/operations/0/httpVerb","value":["GET","POST"]}]"#,
        ])
        .await?
        .ok()?;
    eventually(
        Duration::from_secs(10),
        "our daprd notices the change",
        || async {
            Ok(read(&checkout_log)
                .contains("restart the pod to apply it")
                .then_some(()))
        },
    )
    .await
    .with_context(|| logs(1))?;
    // The operator has pushed the change (ours got it); upstream's keeps running on the
    // Configuration it started with.
    ensure!(
        orders.try_wait()?.is_none(),
        "upstream's daprd exited on the change:\n{}",
        logs(1)
    );
    let still = call(checkout_api, "orders", http::Method::POST, "inspect/first").await?;
    ensure!(
        still.status == 403,
        "upstream applied the change without a restart: {}\n{}",
        still.status,
        logs(1)
    );
    // A restart (what the pod needs) reads the new Configuration from the operator API.
    orders.start_kill()?;
    tokio::time::timeout(Duration::from_secs(10), orders.wait())
        .await
        .context("upstream's daprd did not stop")??;
    let _orders = start_orders(2)?.spawn().context("upstream daprd again")?;
    sidecar_ready(&client, orders_api, Duration::from_secs(60))
        .await
        .with_context(|| logs(2))?;
    let allowed = eventually(
        Duration::from_secs(30),
        "the POST allowed after the restart",
        || async {
            let reply = call(checkout_api, "orders", http::Method::POST, "inspect/first").await?;
            Ok((reply.status == 200).then_some(reply))
        },
    )
    .await
    .with_context(|| logs(2))?;
    ensure!(allowed.json()?["method"] == "POST", "{:?}", allowed.body);
    ensure!(
        injector.child.try_wait()?.is_none(),
        "the injector exited:\n{}",
        injector.log_text()
    );
    drop(apps);
    Ok(())
}
