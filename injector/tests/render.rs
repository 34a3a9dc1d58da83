//! `injector render` through the real binary on a multi-document file: pod templates of every
//! workload kind are injected, other objects pass through, the result equals the committed
//! golden file, passes `kubernetes-validate --strict`, and rendering it again changes nothing.
//!
//! Regenerate after an intended change: `UPDATE_GOLDEN=1 cargo test -p injector --test render`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const REGENERATE: &str = "UPDATE_GOLDEN=1 cargo test -p injector --test render";

fn dir() -> PathBuf {
    common::manifest_dir().join("tests/render")
}

fn injector(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_injector"))
        .arg("render")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("injector render starts");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn render_file(path: &str) -> Output {
    let anchors = dir().join("trust-anchors.pem");
    injector(
        &[
            "-f",
            path,
            "--trust-anchors-file",
            anchors.to_str().unwrap(),
            "--sidecar-image",
            "ghcr.io/dapr/daprd:1.18.3",
        ],
        None,
    )
}

fn rendered() -> String {
    let input = dir().join("input.yaml");
    let out = render_file(input.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn rendering_a_multi_document_file_matches_the_golden_output() {
    let actual = rendered();
    let golden = dir().join("expected.yaml");
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    if actual != expected {
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &actual).unwrap();
            return;
        }
        panic!(
            "render output differs from {}; if intended, regenerate with: {REGENERATE}",
            golden.display()
        );
    }
}

#[test]
fn every_workload_kind_gets_daprd_and_other_objects_pass_through() {
    let docs: Vec<serde_json::Value> = rendered()
        .split("\n---\n")
        .map(|d| yaml_serde::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 7);
    let containers = |doc: &serde_json::Value, pointer: &str| -> Vec<String> {
        doc.pointer(pointer)
            .and_then(|c| c.as_array())
            .map(|c| {
                c.iter()
                    .map(|c| c["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(
        containers(&docs[1], "/spec/template/spec/containers"),
        ["orders", "daprd"]
    );
    assert_eq!(
        docs[1]["spec"]["template"]["metadata"]["labels"]["dapr.io/app-id"],
        "orders"
    );
    assert_eq!(docs[2]["kind"], "Service");
    assert_eq!(
        containers(&docs[3], "/spec/template/spec/initContainers"),
        ["daprd"],
        "native sidecar"
    );
    assert_eq!(
        containers(&docs[4], "/spec/jobTemplate/spec/template/spec/containers"),
        ["report", "daprd"]
    );
    assert_eq!(
        containers(&docs[5], "/spec/template/spec/containers"),
        ["agent"],
        "not enabled"
    );
    assert_eq!(
        containers(&docs[6], "/spec/containers"),
        ["shell", "daprd"],
        "app id from the pod name"
    );
    // The untouched parts keep their key order.
    assert!(rendered().starts_with("apiVersion: v1\nkind: Namespace\n"));
}

#[test]
fn rendering_twice_equals_rendering_once() {
    let once = rendered();
    let anchors = dir().join("trust-anchors.pem");
    let twice = injector(
        &[
            "-f",
            "-",
            "--trust-anchors-file",
            anchors.to_str().unwrap(),
            "--sidecar-image",
            "ghcr.io/dapr/daprd:1.18.3",
        ],
        Some(once.as_bytes()),
    );
    assert!(
        twice.status.success(),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );
    assert_eq!(String::from_utf8(twice.stdout).unwrap(), once);
}

#[test]
fn rendered_objects_pass_kubernetes_validate_strict() {
    let python = common::workspace().join(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh installs kubernetes-validate there",
        python.display()
    );
    let scratch = common::scratch("render-validate");
    let file = scratch.join("rendered.yaml");
    std::fs::write(&file, rendered()).unwrap();
    for version in [Some("1.31.0"), None] {
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "kubernetes_validate", "--strict", "--quiet"]);
        if let Some(version) = version {
            cmd.args(["-k", version]);
        }
        let out = cmd.arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_template_the_webhook_would_reject_fails_the_render_naming_the_document() {
    let input = b"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: broken\nspec:\n  selector:\n    matchLabels: {app: b}\n  template:\n    metadata:\n      annotations:\n        dapr.io/enabled: \"true\"\n    spec:\n      containers: [{name: b, image: b}]\n";
    let out = injector(&["-f", "-"], Some(input));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("document 1 (Deployment broken)"),
        "{stderr}"
    );
    assert!(stderr.contains("dapr.io/app-id"), "{stderr}");
}

#[test]
fn a_missing_input_file_is_a_runtime_failure() {
    let out = injector(&["-f", "/no/such/file.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
}
