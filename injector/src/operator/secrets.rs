//! Values that name a Kubernetes Secret (`secretKeyRef`) are filled in before an object is
//! served, as upstream's operator does, so daprd decodes them instead of asking a secret store:
//!
//! - Component `spec.metadata[]` and HTTPEndpoint `spec.headers[]` and
//!   `spec.clientTLS.{certificate,privateKey,rootCA}` (pkg/operator/api/components.go,
//!   httpendpoints.go): `value` becomes the JSON string of base64(secret bytes), the key defaults
//!   to the Secret's name, a key the Secret lacks leaves the item as it is; only when the
//!   object's `auth.secretStore` is empty or `kubernetes` (other stores are daprd's business).
//! - Configuration `spec.tracing.otel.headers[]` (pkg/operator/api/configurations.go): `value`
//!   becomes the secret's text as a JSON string; the key is required and must exist.
//!
//! `secretKeyRef` is kept in every case.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::Value;

use super::Error;
use super::cache::Kind;

/// The secret store name that means "Kubernetes Secrets".
const KUBERNETES_STORE: &str = "kubernetes";
/// Bound on one Secret read.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How a secret's bytes become the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The JSON string of base64(bytes).
    Base64,
    /// The bytes as a JSON string; the key must exist.
    Text,
}

/// One value to fill: the JSON pointer of the object holding `value` and `secretKeyRef`, the
/// Secret and the key in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub pointer: String,
    pub secret: String,
    pub key: String,
    pub encoding: Encoding,
}

/// The values of `object` (of `kind`) that name a Kubernetes Secret. A Configuration header
/// naming a Secret without a key is an error, as upstream.
pub fn refs(kind: Kind, object: &Value) -> Result<Vec<SecretRef>, Error> {
    let kubernetes_store = || {
        let store = object["auth"]["secretStore"].as_str().unwrap_or_default();
        store.is_empty() || store == KUBERNETES_STORE
    };
    let mut found = Vec::new();
    let mut base64_ref = |pointer: String, holder: &Value| {
        let reference = &holder["secretKeyRef"];
        if let Some(secret) = reference["name"].as_str().filter(|n| !n.is_empty()) {
            let key = reference["key"]
                .as_str()
                .filter(|k| !k.is_empty())
                .unwrap_or(secret);
            found.push(SecretRef {
                pointer,
                secret: secret.to_owned(),
                key: key.to_owned(),
                encoding: Encoding::Base64,
            });
        }
    };
    match kind {
        Kind::Component if kubernetes_store() => {
            for (i, item) in items(&object["spec"]["metadata"]) {
                base64_ref(format!("/spec/metadata/{i}"), item);
            }
        }
        Kind::HttpEndpoint if kubernetes_store() => {
            for (i, item) in items(&object["spec"]["headers"]) {
                base64_ref(format!("/spec/headers/{i}"), item);
            }
            for part in ["certificate", "privateKey", "rootCA"] {
                let holder = &object["spec"]["clientTLS"][part];
                if holder.is_object() {
                    base64_ref(format!("/spec/clientTLS/{part}"), holder);
                }
            }
        }
        Kind::Configuration => {
            for (i, header) in items(&object["spec"]["tracing"]["otel"]["headers"]) {
                let reference = &header["secretKeyRef"];
                let Some(secret) = reference["name"].as_str().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let Some(key) = reference["key"].as_str().filter(|k| !k.is_empty()) else {
                    return Err(Error::SecretKeyMissing {
                        secret: secret.to_owned(),
                        key: None,
                    });
                };
                found.push(SecretRef {
                    pointer: format!("/spec/tracing/otel/headers/{i}"),
                    secret: secret.to_owned(),
                    key: key.to_owned(),
                    encoding: Encoding::Text,
                });
            }
        }
        _ => {}
    }
    Ok(found)
}

fn items(list: &Value) -> impl Iterator<Item = (usize, &Value)> {
    list.as_array().into_iter().flatten().enumerate()
}

/// Sets `value` of the object at `reference.pointer` from the secret's `bytes`.
pub fn fill(object: &mut Value, reference: &SecretRef, bytes: &[u8]) {
    let value = match reference.encoding {
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        Encoding::Text => String::from_utf8_lossy(bytes).into_owned(),
    };
    if let Some(holder) = object
        .pointer_mut(&reference.pointer)
        .and_then(Value::as_object_mut)
    {
        holder.insert("value".to_owned(), Value::String(value));
    }
}

/// `object` (of `kind`) with its Kubernetes Secret references filled from `namespace`; `None`
/// when it names none (serve the stored encoding as it is).
pub async fn resolve(
    client: &kube::Client,
    kind: Kind,
    namespace: &str,
    object: &Value,
) -> Result<Option<Value>, Error> {
    let references = refs(kind, object)?;
    if references.is_empty() {
        return Ok(None);
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
    let mut resolved = object.clone();
    for reference in references {
        if !secrets.contains_key(&reference.secret) {
            let secret = tokio::time::timeout(LOOKUP_TIMEOUT, api.get(&reference.secret))
                .await
                .map_err(|_| Error::SecretTimeout {
                    namespace: namespace.to_owned(),
                    name: reference.secret.clone(),
                })?
                .map_err(|source| Error::Secret {
                    namespace: namespace.to_owned(),
                    name: reference.secret.clone(),
                    source,
                })?;
            secrets.insert(reference.secret.clone(), secret);
        }
        let value = secrets
            .get(&reference.secret)
            .and_then(|s| s.data.as_ref())
            .and_then(|data| data.get(&reference.key));
        match (value, reference.encoding) {
            (Some(value), _) => fill(&mut resolved, &reference, &value.0),
            (None, Encoding::Base64) => {}
            (None, Encoding::Text) => {
                return Err(Error::SecretKeyMissing {
                    secret: reference.secret,
                    key: Some(reference.key),
                });
            }
        }
    }
    Ok(Some(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret_ref(pointer: &str, secret: &str, key: &str, encoding: Encoding) -> SecretRef {
        SecretRef {
            pointer: pointer.into(),
            secret: secret.into(),
            key: key.into(),
            encoding,
        }
    }

    #[test]
    fn component_references_are_found_only_for_the_kubernetes_store() {
        let mut component = json!({
            "spec": {"metadata": [
                {"name": "host", "value": "redis:6379"},
                {"name": "password", "secretKeyRef": {"name": "redis", "key": "pw"}},
                {"name": "token", "secretKeyRef": {"name": "token"}},
            ]}
        });
        assert_eq!(
            refs(Kind::Component, &component).expect("refs"),
            vec![
                secret_ref("/spec/metadata/1", "redis", "pw", Encoding::Base64),
                secret_ref("/spec/metadata/2", "token", "token", Encoding::Base64),
            ]
        );
        component["auth"] = json!({"secretStore": "kubernetes"});
        assert_eq!(refs(Kind::Component, &component).expect("refs").len(), 2);
        component["auth"] = json!({"secretStore": "vault"});
        assert!(refs(Kind::Component, &component).expect("refs").is_empty());
    }

    #[test]
    fn http_endpoint_headers_and_client_tls_parts_are_found() {
        let endpoint = json!({"spec": {
            "baseUrl": "https://x",
            "headers": [{"name": "a", "value": "1"}, {"name": "b", "secretKeyRef": {"name": "s", "key": "k"}}],
            "clientTLS": {
                "certificate": {"secretKeyRef": {"name": "tls", "key": "tls.crt"}},
                "privateKey": {"secretKeyRef": {"name": "tls", "key": "tls.key"}},
                "rootCA": {"value": "inline"}
            }
        }});
        assert_eq!(
            refs(Kind::HttpEndpoint, &endpoint).expect("refs"),
            vec![
                secret_ref("/spec/headers/1", "s", "k", Encoding::Base64),
                secret_ref(
                    "/spec/clientTLS/certificate",
                    "tls",
                    "tls.crt",
                    Encoding::Base64
                ),
                secret_ref(
                    "/spec/clientTLS/privateKey",
                    "tls",
                    "tls.key",
                    Encoding::Base64
                ),
            ]
        );
    }

    #[test]
    fn configuration_otel_headers_need_a_key_and_are_filled_as_text() {
        let mut configuration = json!({"spec": {"tracing": {"otel": {"headers": [
            {"name": "authorization", "secretKeyRef": {"name": "otel", "key": "token"}}
        ]}}}});
        let found = refs(Kind::Configuration, &configuration).expect("refs");
        assert_eq!(
            found,
            vec![secret_ref(
                "/spec/tracing/otel/headers/0",
                "otel",
                "token",
                Encoding::Text
            )]
        );
        fill(&mut configuration, &found[0], b"Bearer x");
        assert_eq!(
            configuration["spec"]["tracing"]["otel"]["headers"][0]["value"],
            "Bearer x"
        );
        let keyless = json!({"spec": {"tracing": {"otel": {"headers": [
            {"name": "authorization", "secretKeyRef": {"name": "otel"}}
        ]}}}});
        assert!(matches!(
            refs(Kind::Configuration, &keyless),
            Err(Error::SecretKeyMissing { key: None, .. })
        ));
    }

    #[test]
    fn a_filled_value_is_the_base64_of_the_secret_as_a_json_string_and_the_ref_stays() {
        let mut component = json!({"spec": {"metadata": [
            {"name": "password", "secretKeyRef": {"name": "redis", "key": "pw"}}
        ]}});
        let reference = refs(Kind::Component, &component).expect("refs").remove(0);
        fill(&mut component, &reference, b"s3cret");
        assert_eq!(
            component["spec"]["metadata"][0],
            json!({"name": "password", "value": "czNjcmV0", "secretKeyRef": {"name": "redis", "key": "pw"}})
        );
    }

    #[test]
    fn malformed_objects_yield_no_references() {
        for object in [
            json!({"spec": {"metadata": "x"}}),
            json!({"spec": {"metadata": [1, {"secretKeyRef": "x"}]}}),
            json!(null),
            json!({"spec": {"clientTLS": {"certificate": "x"}, "headers": {}}}),
        ] {
            for kind in Kind::ALL {
                assert!(
                    refs(kind, &object).expect("no error").is_empty(),
                    "{kind:?} {object}"
                );
            }
        }
    }
}
