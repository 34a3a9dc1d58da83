use std::path::PathBuf;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519};
use x509_parser::extensions::GeneralName;

use super::*;

const RSA_ROOT: &str = include_str!("../../tests/fixtures/rsa-root.key");
const RSA_ISSUER: &str = include_str!("../../tests/fixtures/rsa-issuer.key");
const RSA_ISSUER_PKCS1: &str = include_str!("../../tests/fixtures/rsa-issuer-pkcs1.key");
const RSA_WORKLOAD: &str = include_str!("../../tests/fixtures/rsa-workload.key");
const EC_SEC1: &str = include_str!("../../tests/fixtures/ec-sec1.key");

const DAY: Duration = Duration::from_secs(24 * 3600);

fn paths() -> CredentialPaths {
    CredentialPaths {
        dir: PathBuf::from("/creds"),
        trust_anchors: PathBuf::from("/creds/ca.crt"),
        issuer_cert: PathBuf::from("/creds/issuer.crt"),
        issuer_key: PathBuf::from("/creds/issuer.key"),
    }
}

fn policy() -> SignPolicy {
    SignPolicy {
        ttl: DAY,
        allowed_clock_skew: Duration::from_secs(15 * 60),
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn t(at: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_secs(at)).unwrap()
}

/// A root and an issuer made with rcgen, PEM: (anchors, issuer chain, issuer key).
struct TestPki {
    anchors: String,
    chain: String,
    key: String,
}

fn ca_params(org: &str, not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = t(not_before);
    params.not_after = t(not_after);
    params
}

fn pki_with(root_key: &IssuerKey, issuer_key: &IssuerKey, issuer_not_after: SystemTime) -> TestPki {
    let root_params = ca_params("root", now() - DAY, now() + 365 * DAY);
    let root = root_params.self_signed(root_key).unwrap();
    let issuer = ca_params("issuer", now() - DAY, issuer_not_after)
        .signed_by(issuer_key, &Issuer::new(root_params, root_key))
        .unwrap();
    TestPki {
        anchors: pem_encode("CERTIFICATE", root.der()),
        chain: pem_encode("CERTIFICATE", issuer.der()),
        key: issuer_key.to_pkcs8_pem(),
    }
}

fn ed25519_pki() -> TestPki {
    pki_with(
        &IssuerKey::generate_ed25519().unwrap(),
        &IssuerKey::generate_ed25519().unwrap(),
        now() + 365 * DAY,
    )
}

fn bundle(pki: &TestPki) -> Result<CaBundle, Error> {
    CaBundle::from_pem(
        pki.anchors.as_bytes(),
        pki.chain.as_bytes(),
        pki.key.as_bytes(),
        &paths(),
        now(),
    )
}

fn csr_pem(key: &KeyPair) -> String {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

fn app1() -> SpiffeId {
    SpiffeId::new("public", "default", "app1").unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

fn sign_app1(bundle: &CaBundle, csr: &Csr, at: SystemTime) -> Result<Issued, Error> {
    sign(bundle, csr, &app1(), &[], policy(), at, [0x5a; 16])
}

/// What [`generate`] writes, loaded back as sentry would at its next start.
fn generated_bundle() -> CaBundle {
    let at = now();
    let generated = generate("example.org", "dapr-system", at, Duration::ZERO).unwrap();
    CaBundle::from_pem(
        generated.trust_anchors_pem.as_bytes(),
        generated.issuer_chain_pem.as_bytes(),
        generated.issuer_key.to_pkcs8_pem().as_bytes(),
        &paths(),
        at,
    )
    .unwrap()
}

#[test]
fn csrs_with_ed25519_p256_and_rsa_keys_each_get_a_leaf_carrying_their_public_key() {
    // Both a generated (ECDSA P-256) issuer and an Ed25519 one, as earlier versions wrote, sign
    // all three kinds of request.
    for ca in [generated_bundle(), bundle(&ed25519_pki()).unwrap()] {
        let keys = [
            KeyPair::generate_for(&PKCS_ED25519).unwrap(),
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
            KeyPair::from_pem(RSA_WORKLOAD).unwrap(),
        ];
        for key in keys {
            let csr = Csr::from_pem(csr_pem(&key).as_bytes()).unwrap();
            let issued = sign_app1(&ca, &csr, now()).unwrap();
            let leaf = parse(&issued.leaf);
            assert_eq!(
                leaf.public_key().subject_public_key.data.as_ref(),
                key.der_bytes(),
                "{} issuer, {:?}",
                ca.key_algorithm(),
                key.algorithm()
            );
            leaf.verify_signature(Some(parse(&ca.issuer_chain()[0]).public_key()))
                .unwrap();
        }
    }
}

#[test]
fn the_leaf_has_only_the_spiffe_uri_san_no_subject_and_the_usages_daprd_needs() {
    let ca = bundle(&ed25519_pki()).unwrap();
    let csr = Csr::from_pem(csr_pem(&KeyPair::generate().unwrap()).as_bytes()).unwrap();
    let issued = sign_app1(&ca, &csr, now()).unwrap();
    let leaf = parse(&issued.leaf);

    assert_eq!(leaf.subject().as_raw(), &[0x30, 0x00], "empty subject");
    assert_eq!(uri_sans(&leaf), vec!["spiffe://public/ns/default/app1"]);
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN is critical when the subject is empty");
    assert_eq!(san.value.general_names.len(), 1);

    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!leaf.is_ca());
    assert_eq!(leaf.raw_serial(), &[0x5a; 16]);
}

#[test]
fn control_plane_dns_names_are_added_next_to_the_uri() {
    let ca = bundle(&ed25519_pki()).unwrap();
    let csr = Csr::from_pem(csr_pem(&KeyPair::generate().unwrap()).as_bytes()).unwrap();
    let id = SpiffeId::new("cluster.local", "dapr-system", "dapr-injector").unwrap();
    let dns = vec!["dapr-sidecar-injector.dapr-system.svc".to_owned()];
    let issued = sign(&ca, &csr, &id, &dns, policy(), now(), [1; 16]).unwrap();
    let leaf = parse(&issued.leaf);
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.contains("dapr-sidecar-injector.dapr-system.svc"))
    );
}

#[test]
fn validity_runs_from_now_minus_skew_to_now_plus_ttl() {
    let ca = bundle(&ed25519_pki()).unwrap();
    let csr = Csr::from_pem(csr_pem(&KeyPair::generate().unwrap()).as_bytes()).unwrap();
    let at = now();
    let issued = sign_app1(&ca, &csr, at).unwrap();
    let leaf = parse(&issued.leaf);
    let at = unix_secs(at);
    assert_eq!(leaf.validity().not_before.timestamp(), at - 15 * 60);
    assert_eq!(leaf.validity().not_after.timestamp(), at + 24 * 3600);
    assert_eq!(unix_secs(issued.not_after), at + 24 * 3600);
}

#[test]
fn not_after_is_capped_at_the_issuers_expiry() {
    let issuer_expiry = now() + 3600 * Duration::from_secs(1);
    let pki = pki_with(
        &IssuerKey::generate_ed25519().unwrap(),
        &IssuerKey::generate_ed25519().unwrap(),
        issuer_expiry,
    );
    let ca = bundle(&pki).unwrap();
    let csr = Csr::from_pem(csr_pem(&KeyPair::generate().unwrap()).as_bytes()).unwrap();
    let issued = sign_app1(&ca, &csr, now()).unwrap();
    let leaf = parse(&issued.leaf);
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        unix_secs(issuer_expiry)
    );
    assert_eq!(issued.not_after, system_time(unix_secs(issuer_expiry)));
}

#[test]
fn nothing_is_signed_once_the_issuer_has_expired() {
    let ca = bundle(&ed25519_pki()).unwrap();
    let csr = Csr::from_pem(csr_pem(&KeyPair::generate().unwrap()).as_bytes()).unwrap();
    let err = sign_app1(&ca, &csr, now() + 400 * DAY).unwrap_err();
    assert!(matches!(err, Error::IssuerExpired(_)), "{err}");
}

#[test]
fn the_response_chain_is_the_leaf_then_the_issuer_chain() {
    let pki = ed25519_pki();
    let ca = bundle(&pki).unwrap();
    let csr = Csr::from_pem(csr_pem(&KeyPair::generate().unwrap()).as_bytes()).unwrap();
    let issued = sign_app1(&ca, &csr, now()).unwrap();
    let chain = certs_from_pem(issued.chain_pem.as_bytes()).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], issued.leaf);
    assert_eq!(chain[1], ca.issuer_chain()[0]);
    assert_eq!(ca.trust_anchors_pem(), pki.anchors);
}

#[test]
fn a_csr_with_a_tampered_signature_is_rejected() {
    let pem = csr_pem(&KeyPair::generate_for(&PKCS_ED25519).unwrap());
    let mut der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let err = Csr::from_pem(pem_encode("CERTIFICATE REQUEST", &der).as_bytes()).unwrap_err();
    assert!(
        matches!(err, Error::InvalidCsr(ref m) if m == "invalid signature"),
        "{err}"
    );
}

#[test]
fn a_csr_carrying_another_key_than_the_one_that_signed_it_is_rejected() {
    // The request is signed by `signer`, but its SubjectPublicKeyInfo names `other`: whoever
    // sent it cannot prove they hold the key the certificate would be issued for.
    let signer = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let other = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let pem = csr_pem(&signer);
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let (from, to) = (signer.public_key_raw(), other.public_key_raw());
    let at = der
        .windows(from.len())
        .position(|w| w == from)
        .expect("the signer's public key is in the CSR");
    let mut swapped = der.clone();
    swapped[at..at + to.len()].copy_from_slice(to);
    let err = Csr::from_pem(pem_encode("CERTIFICATE REQUEST", &swapped).as_bytes()).unwrap_err();
    assert!(
        matches!(err, Error::InvalidCsr(ref m) if m == "invalid signature"),
        "{err}"
    );
}

#[test]
fn truncated_and_oversized_csrs_are_rejected_with_what_is_wrong() {
    let pem = csr_pem(&KeyPair::generate().unwrap());
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // Cut in the middle of the PEM text: no complete block.
    let err = Csr::from_pem(&pem.as_bytes()[..pem.len() / 2]).unwrap_err();
    assert!(
        matches!(err, Error::InvalidCsr(ref m) if m == "invalid certificate signing request"),
        "{err}"
    );
    // A complete PEM block around a DER cut short.
    let short = pem_encode("CERTIFICATE REQUEST", &der[..der.len() - 10]);
    let err = Csr::from_pem(short.as_bytes()).unwrap_err();
    assert!(
        matches!(err, Error::InvalidCsr(ref m) if m.starts_with("failed to parse certificate signing request")),
        "{err}"
    );
    // Oversized: refused before parsing, with the size and the bound.
    let mut big = der.clone();
    big.resize(MAX_CSR_BYTES, 0);
    let big = pem_encode("CERTIFICATE REQUEST", &big);
    let err = Csr::from_pem(big.as_bytes()).unwrap_err();
    let expected = format!(
        "certificate signing request is {} bytes, more than the {MAX_CSR_BYTES} accepted",
        big.len()
    );
    assert!(
        matches!(err, Error::InvalidCsr(ref m) if *m == expected),
        "{err}"
    );
}

#[test]
fn a_csr_in_a_pem_block_of_another_type_is_rejected() {
    let key = KeyPair::generate().unwrap();
    let pem = csr_pem(&key);
    let der =
        rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
    for label in ["PUBLIC KEY", "PRIVATE KEY", "X509 CRL"] {
        let err = Csr::from_pem(pem_encode(label, &der).as_bytes()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidCsr(ref m) if m == "invalid certificate signing request"),
            "{label}: {err}"
        );
    }
    // daprd before v1.12 labelled its CSR `CERTIFICATE`; upstream still accepts it.
    Csr::from_pem(pem_encode("CERTIFICATE", &der).as_bytes()).unwrap();
}

#[test]
fn garbage_instead_of_a_csr_is_an_invalid_argument_not_a_panic() {
    for input in [
        &b""[..],
        b"hello",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let err = Csr::from_pem(input).unwrap_err();
        assert!(matches!(err, Error::InvalidCsr(_)), "{err}");
    }
}

#[test]
fn user_provided_rsa_root_and_issuer_load_and_sign() {
    let pki = pki_with(
        &IssuerKey::from_pem(RSA_ROOT.as_bytes()).unwrap(),
        &IssuerKey::from_pem(RSA_ISSUER.as_bytes()).unwrap(),
        now() + 30 * DAY,
    );
    let ca = bundle(&pki).unwrap();
    assert_eq!(ca.key_algorithm(), "RSA");
    let csr = Csr::from_pem(csr_pem(&KeyPair::generate().unwrap()).as_bytes()).unwrap();
    let issued = sign_app1(&ca, &csr, now()).unwrap();
    parse(&issued.leaf)
        .verify_signature(Some(parse(&ca.issuer_chain()[0]).public_key()))
        .unwrap();

    // The same issuer key written as PKCS#1 is accepted too.
    let pkcs1 = TestPki {
        key: RSA_ISSUER_PKCS1.to_owned(),
        ..pki
    };
    bundle(&pkcs1).unwrap();
}

#[test]
fn an_ecdsa_issuer_with_a_sec1_key_as_older_sentries_wrote_loads() {
    let pki = pki_with(
        &IssuerKey::generate_ed25519().unwrap(),
        &IssuerKey::from_pem(EC_SEC1.as_bytes()).unwrap(),
        now() + 30 * DAY,
    );
    let pki = TestPki {
        key: EC_SEC1.to_owned(),
        ..pki
    };
    assert_eq!(bundle(&pki).unwrap().key_algorithm(), "ECDSA P-256");
}

#[test]
fn a_key_that_does_not_match_the_issuer_names_the_key_file() {
    let mut pki = ed25519_pki();
    pki.key = IssuerKey::generate_ed25519().unwrap().to_pkcs8_pem();
    let err = bundle(&pki).unwrap_err().to_string();
    assert!(err.contains("/creds/issuer.key"), "{err}");
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn an_issuer_that_does_not_chain_to_the_anchors_names_the_issuer_file() {
    let mut pki = ed25519_pki();
    pki.anchors = ed25519_pki().anchors;
    let err = bundle(&pki).unwrap_err().to_string();
    assert!(err.contains("/creds/issuer.crt"), "{err}");
    assert!(err.contains("does not lead to any trust anchor"), "{err}");
}

#[test]
fn an_expired_issuer_is_rejected_at_load() {
    let pki = pki_with(
        &IssuerKey::generate_ed25519().unwrap(),
        &IssuerKey::generate_ed25519().unwrap(),
        now() - Duration::from_secs(60),
    );
    let err = bundle(&pki).unwrap_err().to_string();
    assert!(err.contains("/creds/issuer.crt"), "{err}");
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn missing_or_empty_files_are_errors_naming_them() {
    let pki = ed25519_pki();
    let err = CaBundle::from_pem(
        b"",
        pki.chain.as_bytes(),
        pki.key.as_bytes(),
        &paths(),
        now(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("/creds/ca.crt") && err.contains("no PEM CERTIFICATE"),
        "{err}"
    );
}

#[test]
fn a_leaf_certificate_cannot_serve_as_the_issuer() {
    let pki = ed25519_pki();
    let ca = bundle(&pki).unwrap();
    let key = IssuerKey::generate_ed25519().unwrap();
    let leaf = issue(&ca, &key, &app1(), &[], policy(), now(), [2; 16]).unwrap();
    let fake = TestPki {
        anchors: pki.anchors.clone(),
        chain: pem_encode("CERTIFICATE", &leaf.leaf),
        key: key.to_pkcs8_pem(),
    };
    let err = bundle(&fake).unwrap_err().to_string();
    assert!(err.contains("not a CA certificate"), "{err}");
}

#[test]
fn generated_credentials_look_like_upstreams_and_load_cleanly() {
    let at = now();
    let generated = generate("example.org", "dapr-system", at, Duration::from_secs(900)).unwrap();
    let ca = CaBundle::from_pem(
        generated.trust_anchors_pem.as_bytes(),
        generated.issuer_chain_pem.as_bytes(),
        generated.issuer_key.to_pkcs8_pem().as_bytes(),
        &paths(),
        at,
    )
    .unwrap();
    assert_eq!(ca.key_algorithm(), "ECDSA P-256");
    assert_eq!(generated.issuer_key.algorithm_name(), "ECDSA P-256");
    assert!(
        generated
            .issuer_key
            .to_pkcs8_pem()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );

    let root = parse(&ca.trust_anchors()[0]);
    assert_eq!(root.subject().to_string(), "O=example.org");
    // The root's key is P-256 too (upstream pkg/sentry/server/ca/ca.go), and it signed both
    // certificates with ECDSA-SHA256.
    assert_eq!(spki_curve(&root).as_deref(), Some(PRIME256V1));
    assert_eq!(
        root.signature_algorithm.algorithm.to_id_string(),
        ECDSA_WITH_SHA256
    );
    assert!(root.is_ca());
    let ku = root.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.digital_signature());
    assert_eq!(root.validity().not_before.timestamp(), unix_secs(at) - 900);
    assert_eq!(
        root.validity().not_after.timestamp(),
        unix_secs(at) + 365 * 24 * 3600
    );

    let issuer = parse(&ca.issuer_chain()[0]);
    assert_eq!(
        issuer.subject().to_string(),
        "O=spiffe://example.org/ns/dapr-system/dapr-sentry"
    );
    assert!(issuer.is_ca());
    let ku = issuer.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
    assert_eq!(spki_curve(&issuer).as_deref(), Some(PRIME256V1));
    assert_eq!(
        issuer.signature_algorithm.algorithm.to_id_string(),
        ECDSA_WITH_SHA256
    );
    assert!(format!("{ca:?}").contains("<redacted>"));
}

const ID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const PRIME256V1: &str = "1.2.840.10045.3.1.7";
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";

/// The named curve of an EC public key, `None` for any other kind of key.
fn spki_curve(cert: &X509Certificate<'_>) -> Option<String> {
    let alg = &cert.public_key().algorithm;
    if alg.algorithm.to_id_string() != ID_EC_PUBLIC_KEY {
        return None;
    }
    alg.parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string())
}

#[test]
fn an_ed25519_root_and_issuer_written_by_an_earlier_sentry_still_load_and_sign() {
    // The bundle exactly as earlier versions of `generate` wrote it: Ed25519 root and issuer.
    let at = now();
    let old = generate_with(
        "example.org",
        "dapr-system",
        at,
        Duration::from_secs(900),
        IssuerKey::generate_ed25519,
    )
    .unwrap();
    let key_pem = old.issuer_key.to_pkcs8_pem();
    assert_eq!(old.issuer_key.algorithm_name(), "Ed25519");
    assert_eq!(
        parse(&certs_from_pem(old.trust_anchors_pem.as_bytes()).unwrap()[0])
            .public_key()
            .algorithm
            .algorithm
            .to_id_string(),
        ED25519,
        "the root is Ed25519 too"
    );

    let ca = CaBundle::from_pem(
        old.trust_anchors_pem.as_bytes(),
        old.issuer_chain_pem.as_bytes(),
        key_pem.as_bytes(),
        &paths(),
        at,
    )
    .unwrap();
    assert_eq!(ca.key_algorithm(), "Ed25519");

    // daprd's request now carries a P-256 key; the Ed25519 issuer signs it.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = Csr::from_pem(csr_pem(&key).as_bytes()).unwrap();
    let issued = sign_app1(&ca, &csr, at).unwrap();
    let leaf = parse(&issued.leaf);
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.der_bytes()
    );
    assert_eq!(leaf.signature_algorithm.algorithm.to_id_string(), ED25519);
    leaf.verify_signature(Some(parse(&ca.issuer_chain()[0]).public_key()))
        .unwrap();
    assert_eq!(uri_sans(&leaf), vec!["spiffe://public/ns/default/app1"]);
}

const ED25519: &str = "1.3.101.112";
