//! Component metadata that names a Kubernetes Secret (`secretKeyRef`) gets the secret's value
//! filled in before it is served, as upstream's operator does (pkg/operator/api/components.go):
//! `value` becomes the JSON string of base64(secret bytes) and `secretKeyRef` is kept, so
//! daprd decodes it instead of asking a secret store. Only for components whose
//! `auth.secretStore` is empty or `kubernetes`; other stores are daprd's business.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::Value;

use super::Error;

/// The secret store name that means "Kubernetes Secrets".
const KUBERNETES_STORE: &str = "kubernetes";
/// Bound on one Secret read.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One metadata item to fill: its index, the Secret and the key in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub item: usize,
    pub secret: String,
    pub key: String,
}

/// The metadata items of `component` that name a Kubernetes Secret (key defaults to the
/// secret's name, as upstream).
pub fn refs(component: &Value) -> Vec<SecretRef> {
    let store = component["auth"]["secretStore"]
        .as_str()
        .unwrap_or_default();
    if !store.is_empty() && store != KUBERNETES_STORE {
        return Vec::new();
    }
    let Some(items) = component["spec"]["metadata"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(item, entry)| {
            let reference = &entry["secretKeyRef"];
            let secret = reference["name"].as_str().filter(|n| !n.is_empty())?;
            let key = reference["key"]
                .as_str()
                .filter(|k| !k.is_empty())
                .unwrap_or(secret);
            Some(SecretRef {
                item,
                secret: secret.to_owned(),
                key: key.to_owned(),
            })
        })
        .collect()
}

/// Sets item `reference.item`'s value to the JSON string of base64(`bytes`).
pub fn fill(component: &mut Value, reference: &SecretRef, bytes: &[u8]) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    if let Some(entry) = component["spec"]["metadata"]
        .as_array_mut()
        .and_then(|items| items.get_mut(reference.item))
        && let Some(entry) = entry.as_object_mut()
    {
        entry.insert("value".to_owned(), Value::String(encoded));
    }
}

/// `component` with its Kubernetes Secret references filled from `namespace`; a missing key
/// leaves the item as it was (upstream does the same), a missing Secret is an error.
pub async fn resolve(
    client: &kube::Client,
    namespace: &str,
    component: &Value,
) -> Result<Value, Error> {
    let references = refs(component);
    if references.is_empty() {
        return Ok(component.clone());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
    let mut resolved = component.clone();
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
        if let Some(value) = value {
            fill(&mut resolved, &reference, &value.0);
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_found_only_for_the_kubernetes_store() {
        let mut component = json!({
            "spec": {"metadata": [
                {"name": "host", "value": "redis:6379"},
                {"name": "password", "secretKeyRef": {"name": "redis", "key": "pw"}},
                {"name": "token", "secretKeyRef": {"name": "token"}},
            ]}
        });
        assert_eq!(
            refs(&component),
            vec![
                SecretRef {
                    item: 1,
                    secret: "redis".into(),
                    key: "pw".into()
                },
                SecretRef {
                    item: 2,
                    secret: "token".into(),
                    key: "token".into()
                },
            ]
        );
        component["auth"] = json!({"secretStore": "kubernetes"});
        assert_eq!(refs(&component).len(), 2);
        component["auth"] = json!({"secretStore": "vault"});
        assert!(refs(&component).is_empty());
    }

    #[test]
    fn a_filled_value_is_the_base64_of_the_secret_as_a_json_string_and_the_ref_stays() {
        let mut component = json!({"spec": {"metadata": [
            {"name": "password", "secretKeyRef": {"name": "redis", "key": "pw"}}
        ]}});
        let reference = refs(&component).remove(0);
        fill(&mut component, &reference, b"s3cret");
        assert_eq!(
            component["spec"]["metadata"][0],
            json!({"name": "password", "value": "czNjcmV0", "secretKeyRef": {"name": "redis", "key": "pw"}})
        );
    }

    #[test]
    fn malformed_metadata_yields_no_references() {
        assert!(refs(&json!({"spec": {"metadata": "x"}})).is_empty());
        assert!(refs(&json!({"spec": {"metadata": [1, {"secretKeyRef": "x"}]}})).is_empty());
        assert!(refs(&json!(null)).is_empty());
    }
}
