//! Sentry's one error type and its mapping to gRPC, in exactly one place ([`From<Error>`] for
//! [`tonic::Status`]), with the codes and messages upstream clients expect.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid SPIFFE or app id (refused on the wire), or a certificate or PEM problem.
    #[error(transparent)]
    Identity(#[from] dapr_identity::Error),

    /// A flag, environment variable or Configuration field that cannot be used.
    #[error("invalid {field}: {reason}")]
    Config { field: String, reason: String },
    /// Issuer credentials that are missing, unreadable or inconsistent; names the file.
    #[error("issuer credentials: {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The CA's gRPC server failed.
    #[error("server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The server's TLS settings were refused by rustls.
    #[error("server TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A call to the Kubernetes API server failed (`what`: a TokenReview, reading a pod).
    #[error("{what}: {source}")]
    KubeApi { what: String, source: kube::Error },
    /// The trust bundle's Secret or ConfigMap, which the chart creates, is missing.
    #[error(
        "{kind} {namespace}/dapr-trust-bundle does not exist; the chart creates it (empty) before sentry starts"
    )]
    NoTrustBundle {
        kind: &'static str,
        namespace: String,
    },
    /// Kubernetes mode without a client for the API server (the TokenReview validator needs one).
    #[error("kubernetes mode needs API access for the validator")]
    NoApiAccess,
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The task that loads or generates the issuer credentials did not finish.
    #[error("credential loader failed: {0}")]
    CredentialLoader(#[from] tokio::task::JoinError),
    /// The JWKS validator could not load its keys at start-up.
    #[error("JWKS validator: {0}")]
    Jwks(#[from] crate::validator::jwks::JwksError),

    /// The request names no validator and this sentry has no default one.
    #[error("a validator name must be specified in this environment")]
    NoValidator,
    #[error("the requested validator is not enabled")]
    ValidatorNotEnabled,
    /// The validator refused the caller; the message is the reason.
    #[error("{0}")]
    Denied(String),
    /// The CSR is missing, malformed or not signed by its own key.
    #[error("{0}")]
    InvalidCsr(String),
    /// The issuer (or a certificate above it) has expired: nothing valid can be issued.
    #[error("failed to sign certificate: the issuer certificate expired at {0}")]
    IssuerExpired(String),
    /// rcgen refused to sign the leaf.
    #[error("failed to sign certificate: {0}")]
    Sign(#[source] rcgen::Error),
    /// A SAN (`what`: the SPIFFE id or a DNS name) that is not ASCII.
    #[error("failed to sign certificate: {what} is not an IA5 string: {source}")]
    SignIa5 { what: String, source: rcgen::Error },
    /// A key for the generated root or issuer (`what`), at first start without credentials.
    #[error("failed to sign certificate: cannot generate the {what}: {source}")]
    GenerateKey {
        what: &'static str,
        source: crate::ca::GenerateKeyError,
    },
    /// The generated root or issuer certificate (`what`) could not be signed.
    #[error("failed to sign certificate: cannot generate the {what}: {source}")]
    GenerateCertificate {
        what: &'static str,
        source: rcgen::Error,
    },
    /// The key of sentry's own serving certificate.
    #[error("failed to sign certificate: {0}")]
    KeyGeneration(#[from] crate::ca::GenerateKeyError),
    /// ring's error says nothing more (and, built without its `std` feature, is no `Error`).
    #[error("failed to sign certificate: no randomness for a serial number")]
    NoRandomness,
    /// A validity bound `time` cannot represent.
    #[error("failed to sign certificate: time out of range: {0}")]
    TimeOutOfRange(#[source] time::error::ComponentRange),
    /// rustls refused the key of sentry's own serving certificate.
    #[error("failed to sign certificate: serving key: {0}")]
    ServingKey(#[source] rustls::Error),
}

/// Start-up configuration errors exit 64, every other failure 1.
impl dapr_process::ExitStatus for Error {
    fn is_usage(&self) -> bool {
        matches!(self, Error::Config { .. })
    }
}

impl Error {
    /// Whether this is a SPIFFE or app id that sentry refuses to sign for.
    fn is_invalid_id(&self) -> bool {
        matches!(
            self,
            Error::Identity(
                dapr_identity::Error::SpiffeId { .. } | dapr_identity::Error::AppId { .. }
            )
        )
    }

    /// The `dapr_sentry_cert_sign_failure_total` reason label for a failed signing request.
    pub fn sign_failure_reason(&self) -> &'static str {
        match self {
            Error::NoValidator | Error::ValidatorNotEnabled => "validator",
            Error::Denied(_) => "req_id_validation",
            e if e.is_invalid_id() => "req_id_validation",
            Error::InvalidCsr(_) => "cert_parse",
            _ => "cert_sign",
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic::Code;
        let code = match &err {
            Error::NoValidator | Error::ValidatorNotEnabled | Error::InvalidCsr(_) => {
                Code::InvalidArgument
            }
            Error::Denied(_) => Code::PermissionDenied,
            e if e.is_invalid_id() => Code::PermissionDenied,
            Error::Identity(_)
            | Error::Config { .. }
            | Error::Credentials { .. }
            | Error::Bind { .. }
            | Error::Serve(_)
            | Error::Tls(_)
            | Error::KubeApi { .. }
            | Error::NoApiAccess
            | Error::NoTrustBundle { .. }
            | Error::Metrics(_)
            | Error::CredentialLoader(_)
            | Error::Jwks(_)
            | Error::IssuerExpired(_)
            | Error::Sign(_)
            | Error::SignIa5 { .. }
            | Error::GenerateKey { .. }
            | Error::GenerateCertificate { .. }
            | Error::KeyGeneration(_)
            | Error::NoRandomness
            | Error::TimeOutOfRange(_)
            | Error::ServingKey(_) => Code::Internal,
        };
        tonic::Status::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_error_maps_to_the_grpc_code_upstream_clients_expect() {
        let table: Vec<(Error, Code, &str)> = vec![
            (
                Error::NoValidator,
                Code::InvalidArgument,
                "a validator name must be specified in this environment",
            ),
            (
                Error::ValidatorNotEnabled,
                Code::InvalidArgument,
                "the requested validator is not enabled",
            ),
            (
                Error::InvalidCsr("invalid signature".into()),
                Code::InvalidArgument,
                "invalid signature",
            ),
            (
                Error::Denied("invalid request: namespace is required".into()),
                Code::PermissionDenied,
                "invalid request: namespace is required",
            ),
            (
                Error::Identity(dapr_identity::Error::AppId {
                    id: "a.b".into(),
                    reason: "must not contain dots",
                }),
                Code::PermissionDenied,
                "must not contain dots",
            ),
            (
                Error::Identity(dapr_identity::Error::SpiffeId {
                    id: "spiffe://x/y".into(),
                    reason: "bad",
                }),
                Code::PermissionDenied,
                "bad",
            ),
            (
                Error::IssuerExpired("2020-01-01T00:00:00Z".into()),
                Code::Internal,
                "issuer certificate expired",
            ),
            (
                Error::Sign(rcgen::Error::RingUnspecified),
                Code::Internal,
                "failed to sign certificate",
            ),
            (
                Error::Config {
                    field: "--port".into(),
                    reason: "x".into(),
                },
                Code::Internal,
                "--port",
            ),
            (
                Error::Credentials {
                    path: "/tmp/issuer.crt".into(),
                    reason: "expired".into(),
                },
                Code::Internal,
                "/tmp/issuer.crt",
            ),
            (
                Error::Bind {
                    addr: "127.0.0.1:1".parse().unwrap(),
                    source: std::io::Error::other("in use"),
                },
                Code::Internal,
                "cannot listen",
            ),
            (Error::NoApiAccess, Code::Internal, "needs API access"),
            (
                Error::Jwks(crate::validator::jwks::JwksError::NoCaCertificates {
                    url: "https://idp.example/jwks".into(),
                }),
                Code::Internal,
                "JWKS",
            ),
            (
                Error::Identity(dapr_identity::Error::NoSpiffeUri),
                Code::Internal,
                "peer certificate",
            ),
        ];
        for (err, code, message) in table {
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(message), "{status:?}");
        }
    }

    #[test]
    fn failure_reasons_name_the_stage_that_refused_the_request() {
        assert_eq!(Error::NoValidator.sign_failure_reason(), "validator");
        assert_eq!(
            Error::Denied("x".into()).sign_failure_reason(),
            "req_id_validation"
        );
        assert_eq!(
            Error::InvalidCsr("x".into()).sign_failure_reason(),
            "cert_parse"
        );
        assert_eq!(
            Error::Sign(rcgen::Error::RingUnspecified).sign_failure_reason(),
            "cert_sign"
        );
    }
}
