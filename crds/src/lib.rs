//! Dapr's custom resources in group `dapr.io`, as daprd and sentry read them (from files in
//! standalone mode, from the API server in kubernetes mode) and as `crdgen` writes their
//! CustomResourceDefinitions.
//!
//! Types come from the `kube` derive with `schemars` schemas. Component, Subscription,
//! Resiliency and HTTPEndpoint keep `scopes` (and `auth`) at the top level of the object, as
//! upstream does, through the derive's `no_spec` mode. Sections the sidecar does not act on yet
//! are free-form objects, so full upstream documents load and round-trip.

pub mod component;
pub mod configuration;
pub mod crd;
pub mod duration;
pub mod http_endpoint;
pub mod resiliency;
mod schema;
pub mod subscription;

pub use component::Component;
pub use configuration::Configuration;
pub use http_endpoint::HttpEndpoint;
pub use resiliency::Resiliency;

/// The API group of every resource here.
pub const GROUP: &str = "dapr.io";
/// The version all kinds but Subscription are served and stored at.
pub const API_VERSION: &str = "dapr.io/v1alpha1";

/// Why a resource document was rejected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid YAML: {0}")]
    Yaml(#[from] yaml_serde::Error),
    #[error("invalid document: {0}")]
    Json(serde_json::Error),
    #[error(
        "expected kind {expected} in group {GROUP}, got kind {kind:?} apiVersion {api_version:?}"
    )]
    WrongKind {
        expected: &'static str,
        kind: String,
        api_version: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot build the CustomResourceDefinition: {0}")]
    Crd(String),
}

/// The apiVersion and kind of a document, read before the document itself.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Parses one YAML document of `kind`, served at any version of [`GROUP`] the type accepts.
fn from_yaml<T: serde::de::DeserializeOwned + kube_core::Resource<DynamicType = ()>>(
    text: &str,
    kind: &'static str,
) -> Result<T, Error> {
    let meta: TypeMeta = yaml_serde::from_str(text)?;
    if meta.kind != kind || meta.api_version != T::api_version(&()) {
        return Err(Error::WrongKind {
            expected: kind,
            kind: meta.kind,
            api_version: meta.api_version,
        });
    }
    // Files written for standalone mode often leave `metadata` out; the API always has it.
    let mut value: serde_json::Value = yaml_serde::from_str(text)?;
    if let Some(object) = value.as_object_mut() {
        object
            .entry("metadata")
            .or_insert_with(|| serde_json::json!({}));
    }
    serde_json::from_value(value).map_err(Error::Json)
}
