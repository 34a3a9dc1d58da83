//! Upstream's operator API, `dapr.proto.operator.v1.Operator` (Service `dapr-api`, port 6500):
//! daprd in Kubernetes mode reads its Configuration, Resiliencies, HTTPEndpoints, Components and
//! Subscriptions here and follows their changes on update streams.
//!
//! [`cache`] holds one watch per kind for the whole cluster, shared by every stream;
//! [`service`] answers the RPCs from it, after checking that the caller's SPIFFE namespace is
//! the one it asks about (pkg/operator/api/authz/authz.go); [`secrets`] fills Secret-backed
//! values; [`server`] serves it over mTLS with a sentry certificate for
//! `dapr-operator`. Errors reach the wire only through `From<Error> for Status` here.

pub mod cache;
pub mod secrets;
pub mod server;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use cache::Cache;
pub use server::serve;

/// Where and as whom the operator API serves.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    /// The request for the `dapr-operator` certificate (renewed at half its lifetime).
    pub svid: dapr_identity::client::SvidRequest,
    /// The projected token for sentry, used when it exists.
    pub token_file: PathBuf,
    pub trust_anchors_file: PathBuf,
}

/// The id sidecars expect the operator to prove (`spiffe://<cp-td>/ns/<cp-ns>/dapr-operator`).
pub const OPERATOR_ID: &str = "dapr-operator";

/// Why one RPC was refused; mapped to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the caller presented no SPIFFE id")]
    NoIdentity,
    #[error("a caller in namespace {caller:?} may not read namespace {requested:?}")]
    OtherNamespace { caller: String, requested: String },
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{kind} objects are not listed from the API server yet")]
    NotSynced { kind: &'static str },
    #[error("reading Secret {namespace}/{name}: {source}")]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading Secret {namespace}/{name} timed out")]
    SecretTimeout { namespace: String, name: String },
    #[error("{}", match key {
        Some(key) => format!("Secret {secret} has no key {key:?}"),
        None => format!("Secret {secret} is named without a key"),
    })]
    SecretKeyMissing { secret: String, key: Option<String> },
    #[error(
        "the change stream fell {missed} events behind and is closed; reconnect and list again"
    )]
    Lagged { missed: u64 },
    #[error("{0} is not served by this operator (newer than the API it implements)")]
    Unimplemented(&'static str),
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::NoIdentity => tonic::Code::Unauthenticated,
            Error::OtherNamespace { .. } => tonic::Code::PermissionDenied,
            Error::NotFound { .. } => tonic::Code::NotFound,
            Error::NotSynced { .. } | Error::SecretTimeout { .. } => tonic::Code::Unavailable,
            Error::Secret { .. } => tonic::Code::Internal,
            Error::SecretKeyMissing { .. } => tonic::Code::FailedPrecondition,
            Error::Lagged { .. } => tonic::Code::ResourceExhausted,
            Error::Unimplemented(_) => tonic::Code::Unimplemented,
        };
        tonic::Status::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_grpc_code() {
        let kube_error =
            kube::Error::Api(Box::new(kube::core::Status::failure("gone", "NotFound")));
        for (error, code) in [
            (Error::NoIdentity, tonic::Code::Unauthenticated),
            (
                Error::OtherNamespace {
                    caller: "a".into(),
                    requested: "b".into(),
                },
                tonic::Code::PermissionDenied,
            ),
            (
                Error::NotFound {
                    kind: "Configuration",
                    namespace: "a".into(),
                    name: "c".into(),
                },
                tonic::Code::NotFound,
            ),
            (
                Error::NotSynced { kind: "Component" },
                tonic::Code::Unavailable,
            ),
            (
                Error::SecretTimeout {
                    namespace: "a".into(),
                    name: "s".into(),
                },
                tonic::Code::Unavailable,
            ),
            (
                Error::Secret {
                    namespace: "a".into(),
                    name: "s".into(),
                    source: kube_error,
                },
                tonic::Code::Internal,
            ),
            (
                Error::SecretKeyMissing {
                    secret: "otel".into(),
                    key: Some("token".into()),
                },
                tonic::Code::FailedPrecondition,
            ),
            (Error::Lagged { missed: 3 }, tonic::Code::ResourceExhausted),
            (
                Error::Unimplemented("ListMCPServers"),
                tonic::Code::Unimplemented,
            ),
        ] {
            let message = error.to_string();
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }
}
