//! Environment variables: what the app containers get (the sidecar's ports, the app
//! protocol), the `dapr.io/env` and `dapr.io/env-from-secret` annotations for `daprd`, and the
//! ops that add variables a container does not set already.

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector,
};

use super::{PatchOp, Ports, to_json};
use crate::names::{env, sidecar};
use crate::options::SidecarOptions;

/// What every app container gets: the sidecar's ports and, when known, the app protocol.
pub(super) fn app_env(options: &SidecarOptions, ports: &Ports) -> Vec<EnvVar> {
    let mut app_env = vec![
        literal_env(env::DAPR_HTTP_PORT, &sidecar::HTTP_PORT.to_string()),
        literal_env(env::DAPR_GRPC_PORT, &ports.grpc.to_string()),
    ];
    let protocol = normalized_app_protocol(&options.app_protocol, options.app_ssl);
    if !protocol.is_empty() {
        app_env.push(literal_env(env::APP_PROTOCOL, protocol));
    }
    app_env
}

/// Upstream's normalisation for the app containers' `APP_PROTOCOL`; "" for unknown values.
fn normalized_app_protocol(raw: &str, app_ssl: bool) -> &'static str {
    match raw.to_ascii_lowercase().as_str() {
        "grpcs" => "grpcs",
        "https" => "https",
        "h2c" => "h2c",
        "http" | "" if app_ssl => "https",
        "http" | "" => "http",
        "grpc" if app_ssl => "grpcs",
        "grpc" => "grpc",
        _ => "",
    }
}

/// `dapr.io/env`: `K=V,K2=V2`, split only at commas followed by `NAME=`, so values may contain
/// commas. Returns the names (for `DAPR_ENV_KEYS`) and the vars.
pub(super) fn parse_env_annotation(value: &str) -> (Vec<String>, Vec<EnvVar>) {
    let mut keys = Vec::new();
    let mut vars = Vec::new();
    for (key, val) in split_env_pairs(value) {
        keys.push(key.clone());
        vars.push(literal_env(&key, &val));
    }
    (keys, vars)
}

/// `dapr.io/env-from-secret`: `K=secret` (key named like the secret) or `K=secret:key`.
pub(super) fn parse_env_from_secret(value: &str) -> (Vec<String>, Vec<EnvVar>) {
    let mut keys = Vec::new();
    let mut vars = Vec::new();
    for (key, val) in split_env_pairs(value) {
        let val = val.trim();
        let (secret, secret_key) = match val.split(':').collect::<Vec<_>>().as_slice() {
            [secret] => (*secret, *secret),
            [secret, secret_key] => (secret.trim(), secret_key.trim()),
            _ => continue,
        };
        keys.push(key.clone());
        vars.push(secret_env(&key, secret, secret_key));
    }
    (keys, vars)
}

fn split_env_pairs(value: &str) -> Vec<(String, String)> {
    let bytes = value.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b',' && starts_with_assignment(&value[i + 1..]) {
            parts.push(&value[start..i]);
            start = i + 1;
        }
    }
    parts.push(&value[start..]);
    parts
        .into_iter()
        .filter_map(|part| {
            let (key, val) = part.trim().split_once('=')?;
            (!key.is_empty()).then(|| (key.to_owned(), val.to_owned()))
        })
        .collect()
}

/// True when `s` is optional whitespace, an env name (`[A-Za-z_][A-Za-z0-9_]*`) and `=`.
fn starts_with_assignment(s: &str) -> bool {
    let s = s.trim_start();
    let name_len = s
        .bytes()
        .enumerate()
        .take_while(|(i, b)| {
            b.is_ascii_alphabetic() || *b == b'_' || (*i > 0 && b.is_ascii_digit())
        })
        .count();
    name_len > 0 && s.as_bytes().get(name_len) == Some(&b'=')
}

pub(super) fn env_ops(index: usize, container: &Container, add: &[EnvVar], ops: &mut Vec<PatchOp>) {
    let existing = container.env.as_deref().unwrap_or_default();
    if existing.is_empty() {
        ops.push(PatchOp::add(
            format!("/spec/containers/{index}/env"),
            to_json(&add),
        ));
        return;
    }
    for var in add {
        if !existing.iter().any(|e| e.name == var.name) {
            ops.push(PatchOp::add(
                format!("/spec/containers/{index}/env/-"),
                to_json(var),
            ));
        }
    }
}

pub(super) fn literal_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    }
}

pub(super) fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_annotation_splits_only_before_names() {
        let (keys, vars) = parse_env_annotation("bad,A=1,2,3, B_2=x=y,c,C=");
        assert_eq!(keys, ["A", "B_2", "C"]);
        assert_eq!(vars[0].value.as_deref(), Some("1,2,3"));
        assert_eq!(vars[1].value.as_deref(), Some("x=y,c"));
        assert_eq!(vars[2].value.as_deref(), Some(""));
    }

    #[test]
    fn env_from_secret_takes_the_key_from_the_secret_name_or_after_a_colon() {
        let (keys, vars) = parse_env_from_secret("A=s1,B=s2:k2,C=a:b:c");
        assert_eq!(keys, ["A", "B"]);
        let r = |v: &EnvVar| {
            let s = v.value_from.clone().unwrap().secret_key_ref.unwrap();
            (s.name, s.key)
        };
        assert_eq!(r(&vars[0]), ("s1".into(), "s1".into()));
        assert_eq!(r(&vars[1]), ("s2".into(), "k2".into()));
    }

    #[test]
    fn app_protocol_is_normalised_for_app_containers() {
        assert_eq!(normalized_app_protocol("GRPC", false), "grpc");
        assert_eq!(normalized_app_protocol("grpc", true), "grpcs");
        assert_eq!(normalized_app_protocol("http", true), "https");
        assert_eq!(normalized_app_protocol("", false), "http");
        assert_eq!(normalized_app_protocol("h2c", true), "h2c");
        assert_eq!(normalized_app_protocol("smtp", false), "");
    }
}
