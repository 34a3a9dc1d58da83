//! `injector render`: the webhook's patch applied offline to the pod templates of a YAML
//! stream (like `linkerd inject`), so users can see or commit what would be injected.
//!
//! Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs are patched when
//! their pod template asks for a sidecar; everything else passes through. Rendering is
//! idempotent: a template that already has `daprd` is left as it is.

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::json;

use crate::Error;
use crate::patch::{self, Facts, Settings};

/// The rendered YAML and the warnings the patches produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub yaml: String,
    pub warnings: Vec<String>,
}

/// Where a kind keeps its pod template; `None` for kinds that have none.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Renders every document of `input`; `namespace` applies to objects that name none.
pub fn render(
    input: &str,
    namespace: &str,
    settings: &Settings,
    facts: &Facts,
) -> Result<Rendered, Error> {
    let mut docs = Vec::new();
    let mut warnings = Vec::new();
    for (index, document) in yaml_serde::Deserializer::from_str(input).enumerate() {
        let mut doc = yaml_serde::Value::deserialize(document)
            .map_err(|e| Error::Render(format!("document {}: {e}", index + 1)))?;
        if doc.is_null() {
            continue;
        }
        render_document(&mut doc, namespace, settings, facts, &mut warnings).map_err(|reason| {
            Error::Render(format!(
                "document {} ({}): {reason}",
                index + 1,
                describe(&doc)
            ))
        })?;
        docs.push(doc);
    }
    let mut yaml = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            yaml.push_str("---\n");
        }
        yaml.push_str(&yaml_serde::to_string(doc).map_err(|e| Error::Render(e.to_string()))?);
    }
    Ok(Rendered { yaml, warnings })
}

fn describe(doc: &yaml_serde::Value) -> String {
    let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("?");
    let name = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("?");
    format!("{kind} {name}")
}

fn render_document(
    doc: &mut yaml_serde::Value,
    default_namespace: &str,
    settings: &Settings,
    facts: &Facts,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let Some(path) = doc
        .get("kind")
        .and_then(|k| k.as_str())
        .and_then(template_path)
    else {
        return Ok(());
    };
    let namespace = doc
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or(default_namespace)
        .to_owned();
    let mut template = &mut *doc;
    for key in path {
        match template.get_mut(*key) {
            Some(next) => template = next,
            None => return Ok(()),
        }
    }
    let as_json = serde_json::to_value(&*template).map_err(|e| e.to_string())?;
    let mut pod_json = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": as_json.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "spec": as_json.get("spec").cloned().unwrap_or_else(|| json!({})),
    });
    let pod: Pod =
        serde_json::from_value(pod_json.clone()).map_err(|e| format!("not a pod template: {e}"))?;
    if !patch::wants_injection(&pod) {
        return Ok(());
    }
    let built = patch::build(&pod, &namespace, settings, facts).map_err(|r| r.0)?;
    warnings.extend(
        built
            .warnings
            .iter()
            .map(|w| format!("{}: {w}", built.app_id)),
    );
    if built.ops.is_empty() {
        return Ok(());
    }
    let ops: json_patch::Patch =
        serde_json::from_value(serde_json::to_value(&built.ops).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    json_patch::patch(&mut pod_json, &ops).map_err(|e| e.to_string())?;

    let mut patched = as_json;
    if let (Some(object), Some(pod)) = (patched.as_object_mut(), pod_json.as_object()) {
        for key in ["metadata", "spec"] {
            if let Some(value) = pod.get(key) {
                object.insert(key.to_owned(), value.clone());
            }
        }
    }
    *template = yaml_serde::to_value(&patched).map_err(|e| e.to_string())?;
    Ok(())
}

/// `injector render`: reads the input (`-` for stdin) and the trust anchors, then renders.
pub fn run(args: &crate::config::RenderArgs) -> Result<Rendered, Error> {
    use std::io::Read;
    let input = if args.filename == "-" {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|source| Error::Io {
                path: "standard input".to_owned(),
                source,
            })?;
        input
    } else {
        std::fs::read_to_string(&args.filename).map_err(|source| Error::Io {
            path: args.filename.clone(),
            source,
        })?
    };
    let trust_anchors = match &args.trust_anchors_file {
        Some(path) => std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?,
        None => String::new(),
    };
    let facts = Facts {
        trust_anchors: Some(trust_anchors),
        mtls_enabled: true,
        components: Vec::new(),
    };
    render(&input, &args.namespace, &args.settings()?, &facts)
}
