//! `Component` (dapr.io/v1alpha1): a building-block implementation and its metadata. `auth` and
//! `scopes` sit at the top level of the object, beside `spec`, as upstream.

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::any_value;

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "dapr.io",
    version = "v1alpha1",
    kind = "Component",
    plural = "components",
    namespaced,
    no_spec,
    crates(kube_core = "::kube_core", k8s_openapi = "::k8s_openapi"),
    doc = "Dapr Component: a building-block implementation (state store, pub/sub, binding, ...) and its metadata"
)]
#[serde(rename_all = "camelCase")]
pub struct ComponentFields {
    pub spec: ComponentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// App ids allowed to use the component; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// `<building block>.<name>`, e.g. `state.redis`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1))]
    pub type_: String,
    /// e.g. `v1`.
    #[schemars(length(min = 1))]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_errors: Option<bool>,
    /// Go duration string, e.g. `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<MetadataItem>,
}

/// One metadata entry: a literal value (any JSON), or a reference to a secret or env var.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataItem {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_ref: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default)]
    pub key: String,
}

/// Which secret store resolves `secretKeyRef`s.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    pub secret_store: String,
}

impl Component {
    pub fn from_yaml(text: &str) -> Result<Self, crate::Error> {
        crate::from_yaml(text, "Component")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_auth_stay_at_the_top_level() {
        let c = Component::from_yaml(
            r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.redis
  version: v1
  initTimeout: 5s
  metadata:
  - name: redisHost
    value: localhost:6379
  - name: maxRetries
    value: 3
  - name: redisPassword
    secretKeyRef:
      name: redis
      key: password
auth:
  secretStore: kubernetes
scopes: [orders, checkout]
"#,
        )
        .unwrap();
        assert_eq!(c.spec.spec.type_, "state.redis");
        assert_eq!(c.spec.spec.metadata[1].value, Some(serde_json::json!(3)));
        assert_eq!(c.spec.auth.as_ref().unwrap().secret_store, "kubernetes");
        assert_eq!(c.spec.scopes, vec!["orders", "checkout"]);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["scopes"][0], "orders");
        assert_eq!(json["auth"]["secretStore"], "kubernetes");
        assert!(json["spec"].get("scopes").is_none());
    }
}
