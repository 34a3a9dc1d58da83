//! `Configuration` (dapr.io/v1alpha1): the parts the sidecar enforces.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{API_VERSION, Error};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ConfigurationSpec,
}

/// The metadata fields a file-based resource needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control: Option<AccessControlSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_resolution: Option<NameResolutionSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MtlsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_cert_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_clock_skew: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentry_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_trust_domain: Option<String>,
}

/// Callee-side access control, keyed by the caller's identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppOperation {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_verb: Vec<String>,
    pub action: String,
}

/// Which resolver the sidecar uses and its options (`clusterDomain`, `template`, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NameResolutionSpec {
    #[serde(default)]
    pub component: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub configuration: BTreeMap<String, serde_json::Value>,
}

impl Configuration {
    /// Parses one YAML document and checks its kind and apiVersion.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let config: Configuration = yaml_serde::from_str(text)?;
        if config.kind != "Configuration" || config.api_version != API_VERSION {
            return Err(Error::WrongKind {
                expected: "Configuration",
                kind: config.kind,
                api_version: config.api_version,
            });
        }
        if let Some(policies) = config
            .spec
            .access_control
            .as_ref()
            .and_then(|a| a.policies.as_ref())
        {
            for policy in policies {
                if policy.app_id.is_empty() {
                    return Err(Error::Invalid {
                        field: "spec.accessControl.policies[].appId",
                        reason: "must not be empty".into(),
                    });
                }
            }
        }
        Ok(config)
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
    fn a_document_of_another_kind_is_rejected_naming_the_kind() {
        let err = Configuration::from_yaml("apiVersion: dapr.io/v1alpha1\nkind: Component\n")
            .unwrap_err();
        assert!(err.to_string().contains("\"Component\""), "{err}");
    }

    #[test]
    fn invalid_yaml_is_an_error_not_a_panic() {
        assert!(Configuration::from_yaml("kind: [unclosed").is_err());
    }
}
