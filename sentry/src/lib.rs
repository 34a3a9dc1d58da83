//! The certificate authority (issue: sentry) and the workload-identity pieces daprd and the
//! injector reuse. Today: SPIFFE ids and the app-id rules sentry enforces.

pub mod spiffe;

/// Why an identity value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid SPIFFE id {id:?}: {reason}")]
    SpiffeId { id: String, reason: &'static str },
    #[error("invalid app id {id:?}: {reason}")]
    AppId { id: String, reason: &'static str },
}
