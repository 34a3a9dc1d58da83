//! The identity crate's one error type. Each variant that has a cause carries it as a typed
//! `#[source]`; the texts keep the wording the `sentry` crate used for the same failures, so logs
//! read as before.

use std::path::PathBuf;

use x509_parser::error::X509Error;

use crate::spiffe::SpiffeId;

/// A certificate that did not parse (x509-parser's nom error).
pub type ParseError = x509_parser::nom::Err<X509Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid SPIFFE id {id:?}: {reason}")]
    SpiffeId { id: String, reason: &'static str },
    #[error("invalid app id {id:?}: {reason}")]
    AppId { id: String, reason: &'static str },

    #[error("malformed PEM: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("no PEM CERTIFICATE block found")]
    NoCertificate,
    /// Trust anchors whose PEM does not hold certificates.
    #[error("trust anchors: {0}")]
    TrustAnchorsPem(#[source] Box<Error>),
    /// A trust anchor rustls cannot use.
    #[error("trust anchors: {0}")]
    TrustAnchor(#[source] rustls::Error),

    /// A peer certificate that carries no usable SPIFFE id.
    #[error("peer certificate: does not parse: {0}")]
    CertificateParse(#[source] ParseError),
    #[error("peer certificate: bad subject alternative names: {0}")]
    SubjectAltNames(#[source] X509Error),
    #[error("peer certificate: has no subject alternative names")]
    NoSubjectAltNames,
    #[error("peer certificate: has no spiffe:// URI SAN")]
    NoSpiffeUri,
    #[error("peer certificate: has more than one spiffe:// URI SAN")]
    ManySpiffeUris,
    #[error("peer certificate: client verifier: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// A rustls config that cannot be built (protocol versions of the provider).
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    /// Our own certificate chain and key, refused by rustls.
    #[error("our certificate and key: {0}")]
    OwnCertificate(#[source] rustls::Error),

    /// The key or CSR of a certificate request could not be made.
    #[error("certificate request: {0}")]
    Csr(#[source] rcgen::Error),
    #[error("certificate request: sentry address {address:?}: {source}")]
    SentryAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Sentry (or the connection to it) failed the request.
    #[error("certificate request: sentry at {address} answered {:?}: {}", .status.code(), .status.message())]
    Sentry {
        address: String,
        #[source]
        status: tonic::Status,
    },
    #[error("certificate request: sentry's certificate chain: {0}")]
    IssuedChain(#[source] Box<Error>),
    #[error("certificate request: sentry returned an empty certificate chain")]
    EmptyChain,
    #[error("certificate request: sentry's certificate does not parse: {0}")]
    IssuedCertificate(#[source] ParseError),
    #[error("certificate request: certificate validity before 1970")]
    ValidityBefore1970,
    #[error("certificate request: sentry issued {issued}, not an identity for {namespace}/{id}")]
    WrongIdentity {
        issued: SpiffeId,
        namespace: String,
        id: String,
    },

    /// A file the identity is made from (token, trust anchors).
    #[error("{what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Shutdown came before the first certificate.
    #[error("stopped before the first certificate")]
    Stopped,
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn causes_stay_reachable_as_sources() {
        let err = Error::Read {
            what: "token file",
            path: "/t/token".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(
            err.to_string().starts_with("token file /t/token: "),
            "{err}"
        );
        let source = err
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            source.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );

        let err = Error::Sentry {
            address: "127.0.0.1:1".into(),
            status: tonic::Status::unavailable("down"),
        };
        assert_eq!(
            err.to_string(),
            "certificate request: sentry at 127.0.0.1:1 answered Unavailable: down"
        );
        assert!(err.source().is_some_and(|s| s.is::<tonic::Status>()));
    }
}
