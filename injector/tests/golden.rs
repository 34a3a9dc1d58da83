//! Golden fixtures: for each directory under `tests/golden/`, an AdmissionReview
//! (`review.json`, with optional injector env in `env.json` and cluster facts in
//! `cluster.json`) goes through the webhook's HTTP router, and the answer (allowed, message,
//! warnings and the decoded JSON patch) must equal `expected.json`. The patched pods are then
//! validated with `kubernetes-validate --strict` for Kubernetes 1.31 and the newest version it
//! ships.
//!
//! Regenerate after an intended change: `UPDATE_GOLDEN=1 cargo test -p injector --test golden`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use common::{ClusterFixture, post, read_json, router};
use serde_json::{Value, json};

const REGENERATE: &str = "UPDATE_GOLDEN=1 cargo test -p injector --test golden";

fn fixture_dirs() -> Vec<PathBuf> {
    let root = common::manifest_dir().join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/golden")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("review.json").exists())
        .collect();
    dirs.sort();
    dirs
}

struct CaseResult {
    summary: Value,
    patched_pod: Option<Value>,
}

async fn run_case(dir: &Path) -> CaseResult {
    let review = read_json(&dir.join("review.json"));
    let env: Vec<(String, String)> = if dir.join("env.json").exists() {
        serde_json::from_value::<std::collections::BTreeMap<String, String>>(read_json(
            &dir.join("env.json"),
        ))
        .expect("env.json is an object of strings")
        .into_iter()
        .collect()
    } else {
        Vec::new()
    };
    let cluster: ClusterFixture = if dir.join("cluster.json").exists() {
        serde_json::from_value(read_json(&dir.join("cluster.json"))).expect("cluster.json")
    } else {
        ClusterFixture {
            trust_anchors: Some(common::TRUST_ANCHORS.to_owned()),
            ..ClusterFixture::default()
        }
    };
    let (router, _) = router(&env, cluster);
    let (status, body) = post(
        &router,
        "application/json",
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{}", dir.display());
    let answer: Value = serde_json::from_slice(&body).expect("answer is JSON");
    assert_eq!(
        answer["apiVersion"],
        review["apiVersion"],
        "{}: answer keeps the version",
        dir.display()
    );
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(
        response["uid"],
        review["request"]["uid"],
        "{}: uid echoed",
        dir.display()
    );

    let mut summary = json!({"allowed": response["allowed"]});
    if let Some(message) = response.pointer("/status/message") {
        summary["message"] = message.clone();
    }
    if let Some(warnings) = response.get("warnings") {
        summary["warnings"] = warnings.clone();
    }
    let mut patched_pod = None;
    if let Some(patch) = response.get("patch").and_then(Value::as_str) {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("base64 patch");
        let ops: Value = serde_json::from_slice(&bytes).expect("patch is JSON");
        let mut pod = review["request"]["object"].clone();
        let parsed: json_patch::Patch = serde_json::from_value(ops.clone()).expect("a JSON patch");
        json_patch::patch(&mut pod, &parsed)
            .unwrap_or_else(|e| panic!("{}: patch does not apply: {e}", dir.display()));
        summary["patch"] = ops;
        patched_pod = Some(pod);
    }
    CaseResult {
        summary,
        patched_pod,
    }
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("json");
    text.push('\n');
    text
}

#[tokio::test]
async fn every_fixture_answers_as_its_golden_file() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for dir in fixture_dirs() {
        let result = run_case(&dir).await;
        let actual = pretty(&result.summary);
        let golden = dir.join("expected.json");
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if actual != expected {
            if update {
                std::fs::write(&golden, &actual).expect("write golden");
            } else {
                mismatches.push(dir.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "answers differ from the golden files in {mismatches:?}; if the change is intended, \
         regenerate them with: {REGENERATE}"
    );
}

#[test]
fn there_are_at_least_25_fixtures() {
    let count = fixture_dirs().len();
    assert!(count >= 25, "only {count} golden fixtures");
}

#[tokio::test]
async fn patched_pods_carry_exactly_one_daprd_with_the_trust_anchors() {
    for dir in fixture_dirs() {
        let Some(pod) = run_case(&dir).await.patched_pod else {
            continue;
        };
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(pod).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let spec = pod.spec.expect("spec");
        let daprds: Vec<_> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter(|c| c.name == "daprd")
            .collect();
        assert_eq!(daprds.len(), 1, "{}", dir.display());
        let anchors = daprds[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "DAPR_TRUST_ANCHORS")
            .and_then(|e| e.value.clone());
        assert_eq!(
            anchors.as_deref(),
            Some(common::TRUST_ANCHORS),
            "{}",
            dir.display()
        );
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(
            labels.get("dapr.io/sidecar-injected").map(String::as_str),
            Some("true")
        );
    }
}

#[tokio::test]
async fn patched_pods_pass_kubernetes_validate_strict_for_1_31_and_the_newest_version() {
    let python = common::workspace().join(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh installs kubernetes-validate (tests/compat/requirements.txt) there",
        python.display()
    );
    let dir = common::scratch("patched-pods");
    let mut files = Vec::new();
    for case in fixture_dirs() {
        if let Some(pod) = run_case(&case).await.patched_pod {
            let file = dir.join(format!(
                "{}.json",
                case.file_name().unwrap().to_string_lossy()
            ));
            std::fs::write(&file, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
            files.push(file);
        }
    }
    assert!(files.len() >= 25, "only {} patched pods", files.len());
    for version in [Some("1.31.0"), None] {
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "kubernetes_validate", "--strict", "--quiet"]);
        if let Some(version) = version {
            cmd.args(["-k", version]);
        }
        cmd.args(&files);
        let output = cmd.output().expect("run kubernetes-validate");
        assert!(
            output.status.success(),
            "kubernetes-validate --strict ({}) rejected patched pods:\n{}{}",
            version.unwrap_or("newest"),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
