//! Dapr's custom resources in group `dapr.io`, as daprd and sentry read them: from files in
//! standalone mode, from the API server in kubernetes mode.
//!
//! Today this holds the `Configuration` fields the sidecar acts on (mTLS, access control, name
//! resolution); unknown fields are ignored so full upstream documents load.

pub mod configuration;

pub use configuration::Configuration;

/// The API group and version of every resource here.
pub const API_VERSION: &str = "dapr.io/v1alpha1";

/// Why a resource document was rejected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid YAML: {0}")]
    Yaml(#[from] yaml_serde::Error),
    #[error(
        "expected kind {expected} with apiVersion {API_VERSION}, got kind {kind:?} apiVersion {api_version:?}"
    )]
    WrongKind {
        expected: &'static str,
        kind: String,
        api_version: String,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}
