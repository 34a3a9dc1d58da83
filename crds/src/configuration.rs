//! `Configuration` (dapr.io/v1alpha1): what daprd and sentry read from it is typed; the
//! sections they do not act on yet are kept as free-form objects so full upstream documents load
//! and round-trip.

use std::collections::BTreeMap;

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::free_object;

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "dapr.io",
    version = "v1alpha1",
    kind = "Configuration",
    plural = "configurations",
    namespaced,
    crates(kube_core = "::kube_core", k8s_openapi = "::k8s_openapi"),
    doc = "Dapr Configuration: mTLS, access control, name resolution, tracing, metrics and features of the sidecars that use it"
)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control: Option<AccessControlSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_resolution: Option<NameResolutionSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<FeatureSpec>,
    /// `metric` and its newer alias `metrics`: kept as given until the sidecar acts on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub metric: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub metrics: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub http_pipeline: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub app_http_pipeline: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub secrets: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub api: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub components: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub logging: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub wasm: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub workflow: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Go duration string; the key is `workloadCertTTL`, not serde's camelCase spelling.
    #[serde(
        default,
        rename = "workloadCertTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub workload_cert_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_clock_skew: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentry_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_trust_domain: Option<String>,
    /// Extra ways sentry accepts to authenticate a signing request (`jwks` today).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_validators: Vec<TokenValidatorSpec>,
}

/// One entry of `spec.mtls.tokenValidators`: a validator name and its free-form options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenValidatorSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_object")]
    pub options: BTreeMap<String, serde_json::Value>,
}

/// Callee-side access control, keyed by the caller's identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessControlSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// `None` when the key is absent, which upstream treats differently from an empty list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<AppPolicySpec>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppPolicySpec {
    pub app_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<String>,
    #[serde(default)]
    pub trust_domain: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<AppOperation>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppOperation {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_verb: Vec<String>,
    pub action: String,
}

/// Which resolver the sidecar uses and its options (`clusterDomain`, `template`, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameResolutionSpec {
    #[serde(default)]
    pub component: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    #[schemars(schema_with = "free_object")]
    pub configuration: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub zipkin: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_object")]
    pub otel: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureSpec {
    pub name: String,
    pub enabled: bool,
}

impl Configuration {
    /// Parses one YAML document, checks its kind and apiVersion, and the rules the API server
    /// cannot express (non-empty policy app ids).
    pub fn from_yaml(text: &str) -> Result<Self, crate::Error> {
        let config: Configuration = crate::from_yaml(text, "Configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// The checks the schema cannot express, for a Configuration however it was read.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if let Some(policies) = self
            .spec
            .access_control
            .as_ref()
            .and_then(|a| a.policies.as_ref())
        {
            for policy in policies {
                if policy.app_id.is_empty() {
                    return Err(crate::Error::Invalid {
                        field: "spec.accessControl.policies[].appId",
                        reason: "must not be empty".into(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Default for Configuration {
    fn default() -> Self {
        Configuration::new("default", ConfigurationSpec::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: appconfig
spec:
  tracing:
    samplingRate: "1"
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
    - appId: checkout
      defaultAction: allow
      trustDomain: public
      namespace: default
      operations:
      - name: /orders/*
        httpVerb: ["POST", "GET"]
        action: deny
  nameResolution:
    component: kubernetes
    configuration:
      clusterDomain: example.local
"#;

    #[test]
    fn an_upstream_configuration_document_loads_and_unknown_fields_are_ignored() {
        let config = Configuration::from_yaml(SAMPLE).unwrap();
        assert_eq!(config.metadata.name.as_deref(), Some("appconfig"));
        assert_eq!(
            config
                .spec
                .tracing
                .as_ref()
                .unwrap()
                .sampling_rate
                .as_deref(),
            Some("1")
        );
        let acl = config.spec.access_control.unwrap();
        assert_eq!(acl.default_action.as_deref(), Some("deny"));
        let policy = &acl.policies.unwrap()[0];
        assert_eq!(policy.app_id, "checkout");
        assert_eq!(policy.operations[0].http_verb, vec!["POST", "GET"]);
        let nr = config.spec.name_resolution.unwrap();
        assert_eq!(nr.component, "kubernetes");
        assert_eq!(nr.configuration["clusterDomain"], "example.local");
    }

    #[test]
    fn the_mtls_section_carries_durations_trust_domain_and_token_validators() {
        let config = Configuration::from_yaml(
            r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprsystem
spec:
  mtls:
    enabled: true
    workloadCertTTL: 1h30m
    allowedClockSkew: 5m
    controlPlaneTrustDomain: example.org
    tokenValidators:
    - name: jwks
      options:
        source: /etc/jwks.json
        minRefreshInterval: 1m
"#,
        )
        .unwrap();
        let mtls = config.spec.mtls.unwrap();
        assert_eq!(mtls.workload_cert_ttl.as_deref(), Some("1h30m"));
        assert_eq!(mtls.allowed_clock_skew.as_deref(), Some("5m"));
        assert_eq!(
            mtls.control_plane_trust_domain.as_deref(),
            Some("example.org")
        );
        assert_eq!(mtls.token_validators.len(), 1);
        assert_eq!(mtls.token_validators[0].name, "jwks");
        assert_eq!(mtls.token_validators[0].options["source"], "/etc/jwks.json");
    }

    #[test]
    fn a_document_of_another_kind_is_rejected_naming_the_kind() {
        let err = Configuration::from_yaml("apiVersion: dapr.io/v1alpha1\nkind: Component\n")
            .unwrap_err();
        assert!(err.to_string().contains("\"Component\""), "{err}");
    }

    #[test]
    fn invalid_yaml_is_an_error_not_a_panic() {
        assert!(Configuration::from_yaml("kind: [unclosed").is_err());
    }

    #[test]
    fn a_policy_without_an_app_id_is_rejected_naming_the_field() {
        let err = Configuration::from_yaml(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: x\nspec:\n  accessControl:\n    policies:\n    - appId: ''\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("appId"), "{err}");
    }
}
