//! The SPIFFE-aware verifiers of `dapr_identity::tls` against certificates this CA issues: the
//! chain, the id in the URI SAN, expiry, and a real mutual handshake.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dapr_identity::tls::{
    ExpectedId, SpiffeClientVerifier, SpiffeServerVerifier, crypto_provider, peer_spiffe_id,
    root_store, spiffe_id,
};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, RootCertStore};
use sentry::ca::{self, CaBundle, IssuerKey, SignPolicy};
use sentry::config::CredentialPaths;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn paths() -> CredentialPaths {
    CredentialPaths {
        dir: PathBuf::from("/t"),
        trust_anchors: PathBuf::from("/t/ca.crt"),
        issuer_cert: PathBuf::from("/t/issuer.crt"),
        issuer_key: PathBuf::from("/t/issuer.key"),
    }
}

/// A generated CA whose validity starts `age` ago.
fn pki(age: Duration) -> CaBundle {
    let at = SystemTime::now() - age;
    let g = ca::generate("cluster.local", "dapr-system", at, Duration::ZERO).unwrap();
    CaBundle::from_pem(
        g.trust_anchors_pem.as_bytes(),
        g.issuer_chain_pem.as_bytes(),
        g.issuer_key.to_pkcs8_pem().as_bytes(),
        &paths(),
        at,
    )
    .unwrap()
}

/// A leaf for `id` issued at `at` for `ttl`: (chain, key).
fn leaf(
    ca: &CaBundle,
    id: &str,
    at: SystemTime,
    ttl: Duration,
) -> (Vec<CertificateDer<'static>>, IssuerKey) {
    let key = IssuerKey::generate_ed25519().unwrap();
    let policy = SignPolicy {
        ttl,
        allowed_clock_skew: Duration::ZERO,
    };
    let issued = ca::issue(ca, &key, &id.parse().unwrap(), &[], policy, at, [7; 16]).unwrap();
    let chain = ca::certs_from_pem(issued.chain_pem.as_bytes()).unwrap();
    (chain, key)
}

fn roots(ca: &CaBundle) -> Arc<RootCertStore> {
    Arc::new(root_store(ca.trust_anchors_pem().as_bytes()).unwrap())
}

fn exact(id: &str) -> ExpectedId {
    ExpectedId::Exact(id.parse().unwrap())
}

fn check_server(
    verifier: &SpiffeServerVerifier,
    chain: &[CertificateDer<'static>],
) -> Result<ServerCertVerified, rustls::Error> {
    verifier.verify_server_cert(
        &chain[0],
        &chain[1..],
        &ServerName::try_from("dapr-sentry.dapr-system.svc").unwrap(),
        &[],
        UnixTime::now(),
    )
}

const SENTRY: &str = "spiffe://cluster.local/ns/dapr-system/dapr-sentry";

#[test]
fn the_spiffe_id_is_read_from_the_uri_san() {
    let ca = pki(Duration::ZERO);
    let (chain, _) = leaf(&ca, SENTRY, SystemTime::now(), DAY);
    assert_eq!(spiffe_id(&chain[0]).unwrap().to_string(), SENTRY);
    assert_eq!(peer_spiffe_id(Some(&chain)).unwrap().to_string(), SENTRY);
    assert!(peer_spiffe_id(None).is_none());
    // The issuer has no URI SAN.
    assert!(spiffe_id(&chain[1]).is_err());
}

#[test]
fn a_server_with_the_expected_id_and_a_chain_to_the_anchors_is_accepted() {
    let ca = pki(Duration::ZERO);
    let (chain, _) = leaf(&ca, SENTRY, SystemTime::now(), DAY);
    let verifier = SpiffeServerVerifier::new(roots(&ca), exact(SENTRY));
    check_server(&verifier, &chain).unwrap();
}

#[test]
fn a_server_with_another_id_is_refused_naming_both_ids() {
    let ca = pki(Duration::ZERO);
    let (chain, _) = leaf(
        &ca,
        "spiffe://cluster.local/ns/dapr-system/dapr-operator",
        SystemTime::now(),
        DAY,
    );
    let verifier = SpiffeServerVerifier::new(roots(&ca), exact(SENTRY));
    let err = check_server(&verifier, &chain).unwrap_err().to_string();
    assert!(
        err.contains("dapr-operator") && err.contains("dapr-sentry"),
        "{err}"
    );
}

#[test]
fn a_server_chaining_to_another_root_is_refused() {
    let (ca, other) = (pki(Duration::ZERO), pki(Duration::ZERO));
    let (chain, _) = leaf(&ca, SENTRY, SystemTime::now(), DAY);
    let verifier = SpiffeServerVerifier::new(roots(&other), exact(SENTRY));
    let err = check_server(&verifier, &chain).unwrap_err();
    assert!(
        // Both roots are named O=cluster.local, so webpki finds a candidate and the signature
        // check refuses it; with different names the error is UnknownIssuer.
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            )
        ),
        "{err}"
    );
}

#[test]
fn an_expired_server_certificate_is_refused() {
    let ca = pki(10 * DAY);
    let (chain, _) = leaf(
        &ca,
        SENTRY,
        SystemTime::now() - 5 * DAY,
        Duration::from_secs(3600),
    );
    let verifier = SpiffeServerVerifier::new(roots(&ca), exact(SENTRY));
    let err = check_server(&verifier, &chain).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err}"
    );
}

#[test]
fn path_mode_accepts_any_trust_domain_but_checks_namespace_and_app() {
    let ca = pki(Duration::ZERO);
    let expected = ExpectedId::path_of(&"spiffe://public/ns/default/orders".parse().unwrap());
    let verifier = SpiffeServerVerifier::new(roots(&ca), expected);
    let (chain, _) = leaf(
        &ca,
        "spiffe://example.org/ns/default/orders",
        SystemTime::now(),
        DAY,
    );
    check_server(&verifier, &chain).unwrap();
    for other in [
        "spiffe://public/ns/prod/orders",
        "spiffe://public/ns/default/checkout",
    ] {
        let (chain, _) = leaf(&ca, other, SystemTime::now(), DAY);
        assert!(check_server(&verifier, &chain).is_err(), "{other}");
    }
}

#[test]
fn the_client_verifier_requires_a_chain_to_the_anchors() {
    let (ca, other) = (pki(Duration::ZERO), pki(Duration::ZERO));
    let verifier = SpiffeClientVerifier::new(roots(&ca)).unwrap();
    assert!(verifier.client_auth_mandatory());
    let (good, _) = leaf(
        &ca,
        "spiffe://public/ns/default/checkout",
        SystemTime::now(),
        DAY,
    );
    verifier
        .verify_client_cert(&good[0], &good[1..], UnixTime::now())
        .unwrap();
    let (stranger, _) = leaf(
        &other,
        "spiffe://public/ns/default/checkout",
        SystemTime::now(),
        DAY,
    );
    assert!(
        verifier
            .verify_client_cert(&stranger[0], &stranger[1..], UnixTime::now())
            .is_err()
    );

    let old = pki(10 * DAY);
    let verifier = SpiffeClientVerifier::new(roots(&old)).unwrap();
    let (expired, _) = leaf(
        &old,
        "spiffe://public/ns/default/checkout",
        SystemTime::now() - 5 * DAY,
        Duration::from_secs(60),
    );
    assert!(
        verifier
            .verify_client_cert(&expired[0], &expired[1..], UnixTime::now())
            .is_err()
    );
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: &IssuerKey,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> rustls::ServerConfig {
    let builder = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_auth {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der())),
        )
        .unwrap()
}

#[tokio::test]
async fn a_real_mutual_handshake_exposes_the_clients_spiffe_id_to_the_server() {
    let ca = pki(Duration::ZERO);
    let (server_chain, server_key) = leaf(
        &ca,
        "spiffe://public/ns/default/orders",
        SystemTime::now(),
        DAY,
    );
    let (client_chain, client_key) = leaf(
        &ca,
        "spiffe://public/ns/default/checkout",
        SystemTime::now(),
        DAY,
    );
    let server = server_config(
        server_chain,
        &server_key,
        Some(Arc::new(SpiffeClientVerifier::new(roots(&ca)).unwrap())),
    );
    let client = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            roots(&ca),
            ExpectedId::Path {
                namespace: "default".into(),
                app_id: "orders".into(),
            },
        )))
        .with_client_auth_cert(
            client_chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.to_pkcs8_der())),
        )
        .unwrap();

    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let mut stream = acceptor.accept(b).await.unwrap();
        let peer = peer_spiffe_id(stream.get_ref().1.peer_certificates()).unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(b"pong").await.unwrap();
        stream.flush().await.unwrap();
        peer
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let mut stream = connector
        .connect(ServerName::try_from("orders").unwrap(), a)
        .await
        .unwrap();
    stream.write_all(b"ping").await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    let peer = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer.to_string(), "spiffe://public/ns/default/checkout");
}
