//! SPIFFE-aware TLS pieces that sentry, daprd and the injector share: the one crypto provider: the SPIFFE id of a
//! certificate, a server verifier that checks the chain and then the peer's id (exactly, or
//! only its `/ns/<ns>/<id>` path as daprd→daprd does), and a client verifier that requires a
//! client chain to the anchors and a SPIFFE id on the leaf.
//!
//! Certificates carry no DNS names a client could check, so the usual hostname verification
//! is replaced by the id check.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Error;
use crate::spiffe::SpiffeId;

/// The one crypto provider of the project: ring, with TLS 1.3's `TLS13_AES_128_GCM_SHA256`
/// offered first and the other suites in ring's order after it.
///
/// Why: rustls offers AES-256-GCM first, and a rustls server follows the client's order, so
/// two of our sidecars would encrypt with 14 AES rounds per block where 10 do. Go's crypto/tls
/// (upstream's daprd, sentry and operator; `crypto/tls/cipher_suites.go`) and BoringSSL put
/// AES-128-GCM first on machines with AES instructions, so this is also what a sidecar pair
/// with an upstream peer already negotiates. AES-128-GCM is TLS 1.3's mandatory suite (RFC 8446
/// §9.1). What it saves per call: bench/notes.md, "AES-128-GCM between the sidecars".
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Trust anchors from PEM (`ca.crt`, `DAPR_TRUST_ANCHORS`).
pub fn root_store(anchors_pem: &[u8]) -> Result<RootCertStore, Error> {
    let certs =
        crate::pem::certs_from_pem(anchors_pem).map_err(|e| Error::TrustAnchorsPem(Box::new(e)))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(Error::TrustAnchor)?;
    }
    Ok(roots)
}

/// The SPIFFE id in a certificate's URI SAN (exactly one `spiffe://` URI is allowed).
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, Error> {
    let (_, cert) = X509Certificate::from_der(cert).map_err(Error::CertificateParse)?;
    let san = cert
        .subject_alternative_name()
        .map_err(Error::SubjectAltNames)?
        .ok_or(Error::NoSubjectAltNames)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => uri.parse(),
        [] => Err(Error::NoSpiffeUri),
        _ => Err(Error::ManySpiffeUris),
    }
}

/// The peer's SPIFFE id after a handshake with a [`SpiffeClientVerifier`] (or any verifier):
/// from the first certificate the peer presented.
pub fn peer_spiffe_id(peer_certificates: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    peer_certificates
        .and_then(|certs| certs.first())
        .and_then(|leaf| spiffe_id(leaf).ok())
}

/// Which server identity a client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedId {
    /// The whole id, trust domain included (daprd → sentry, operator, ...).
    Exact(SpiffeId),
    /// Only `/ns/<namespace>/<app-id>`, any trust domain (daprd → daprd, as upstream).
    Path { namespace: String, app_id: String },
}

impl ExpectedId {
    pub fn path_of(id: &SpiffeId) -> Self {
        ExpectedId::Path {
            namespace: id.namespace().to_owned(),
            app_id: id.app_id().to_owned(),
        }
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            ExpectedId::Exact(expected) => expected == id,
            ExpectedId::Path { namespace, app_id } => {
                id.namespace() == namespace && id.app_id() == app_id
            }
        }
    }
}

impl fmt::Display for ExpectedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedId::Exact(id) => write!(f, "{id}"),
            ExpectedId::Path { namespace, app_id } => {
                write!(f, "spiffe://*/ns/{namespace}/{app_id}")
            }
        }
    }
}

/// Why a peer certificate was refused beyond what webpki checks.
#[derive(Debug)]
struct IdRefused(String);

impl fmt::Display for IdRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdRefused {}

fn refused(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        IdRefused(reason),
    ))))
}

/// Verifies a server's chain against trust anchors, then its SPIFFE id; the TLS server name
/// is ignored.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: ExpectedId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, expected: ExpectedId) -> Self {
        SpiffeServerVerifier {
            roots,
            expected,
            algorithms: crypto_provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let id = spiffe_id(end_entity).map_err(|e| refused(e.to_string()))?;
        if !self.expected.matches(&id) {
            return Err(refused(format!(
                "server SPIFFE id {id} is not the expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Requires a client certificate chaining to the anchors whose leaf carries a SPIFFE id; read
/// the id afterwards with [`peer_spiffe_id`]. Any id is admitted: authorisation is the caller's.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl SpiffeClientVerifier {
    pub fn new(roots: Arc<RootCertStore>) -> Result<Self, Error> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, crypto_provider())
            .build()
            .map_err(Error::ClientVerifier)?;
        Ok(SpiffeClientVerifier { inner })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        spiffe_id(end_entity).map_err(|e| refused(e.to_string()))?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server config (ALPN h2) presenting `chain` and `key` and requiring a client certificate
/// that chains to `roots` and carries a SPIFFE id ([`SpiffeClientVerifier`]).
pub fn mutual_server_config(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, Error> {
    let verifier = SpiffeClientVerifier::new(roots)?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)
        .map_err(Error::OwnCertificate)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client config (ALPN h2) presenting `chain` and `key` that trusts `roots` and accepts only
/// the server `expected`.
pub fn mutual_client_config(
    roots: Arc<RootCertStore>,
    expected: ExpectedId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig, Error> {
    let mut config = spiffe_client_builder(roots, expected)?
        .with_client_auth_cert(chain, key)
        .map_err(Error::OwnCertificate)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client config builder trusting `roots` and accepting only the server `expected`, before
/// the client's own certificate (or none) is chosen.
fn spiffe_client_builder(
    roots: Arc<RootCertStore>,
    expected: ExpectedId,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, Error> {
    Ok(
        rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(roots, expected))),
    )
}

/// A client config (ALPN h2, for gRPC) that trusts `roots` and accepts only `expected`.
pub fn client_config(
    roots: Arc<RootCertStore>,
    expected: ExpectedId,
) -> Result<rustls::ClientConfig, Error> {
    let mut config = spiffe_client_builder(roots, expected)?.with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };
    use rustls::{CipherSuite, ClientConnection, ConnectionCommon, ServerConnection};

    /// A root and two workload chains under it, as sentry issues them (ECDSA P-256).
    struct Ca {
        roots: Arc<RootCertStore>,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        fn new() -> Ca {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("root key");
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let root = params.self_signed(&key).expect("root");
            let mut roots = RootCertStore::empty();
            roots.add(root.der().clone()).expect("anchor");
            Ca {
                roots: Arc::new(roots),
                issuer: Issuer::new(params, key),
            }
        }

        fn workload(&self, app_id: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(
                format!("spiffe://public/ns/default/{app_id}")
                    .try_into()
                    .expect("uri"),
            )];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &self.issuer).expect("leaf");
            let key = PrivateKeyDer::try_from(key.serialize_der()).expect("key DER");
            (vec![cert.der().clone()], key)
        }
    }

    /// Runs a handshake between the two ends in memory, at most 8 flights each way.
    fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) {
        for _ in 0..8 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return;
            }
            fly(&mut **client, &mut **server);
            fly(&mut **server, &mut **client);
        }
        panic!("the handshake did not finish in 8 flights each way");
    }

    /// Everything `from` has to send, read and processed by `to`.
    fn fly<A, B>(from: &mut ConnectionCommon<A>, to: &mut ConnectionCommon<B>) {
        let mut flight = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut flight).expect("one end writes");
        }
        to.read_tls(&mut flight.as_slice())
            .expect("the other reads");
        to.process_new_packets().expect("the other accepts");
    }

    /// Two sidecars agree on AES-128-GCM (as Go's crypto/tls does), not rustls's first choice,
    /// AES-256-GCM: the provider offers it first and a rustls server follows the client.
    #[test]
    fn sidecars_negotiate_aes_128_gcm() {
        let ca = Ca::new();
        let (chain, key) = ca.workload("orders");
        let server = mutual_server_config(Arc::clone(&ca.roots), chain, key).expect("server");
        let (chain, key) = ca.workload("checkout");
        let expected = ExpectedId::Path {
            namespace: "default".into(),
            app_id: "orders".into(),
        };
        let client =
            mutual_client_config(Arc::clone(&ca.roots), expected, chain, key).expect("client");
        let name = ServerName::try_from("orders").expect("name");
        let mut client = ClientConnection::new(Arc::new(client), name).expect("client");
        let mut server = ServerConnection::new(Arc::new(server)).expect("server");
        handshake(&mut client, &mut server);
        for suite in [
            client.negotiated_cipher_suite(),
            server.negotiated_cipher_suite(),
        ] {
            assert_eq!(
                suite.map(|s| s.suite()),
                Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
            );
        }
        assert_eq!(
            server
                .peer_certificates()
                .map(|chain| spiffe_id(&chain[0]).expect("id").app_id().to_owned()),
            Some("checkout".to_owned())
        );
    }

    /// The provider still has every suite ring has, only in another order.
    #[test]
    fn provider_keeps_every_suite() {
        let mut ours: Vec<_> = crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(ours[0], CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut ring: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        ours.sort_by_key(|s| u16::from(*s));
        ring.sort_by_key(|s| u16::from(*s));
        assert_eq!(ours, ring);
    }
}
