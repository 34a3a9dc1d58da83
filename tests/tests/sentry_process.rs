//! The real `sentry` binary on loopback: CA generation (ECDSA P-256 files `openssl` reads),
//! signing over TLS with SPIFFE-id verification, errors, user-provided RSA credentials, issuer
//! rotation under load, the JWKS validator, healthz, metrics and exit codes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use dapr_identity::tls::{ExpectedId, SpiffeServerVerifier, root_store};
use dapr_proto::sentry::v1::sign_certificate_request::TokenValidator;
use e2e::sentry::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use tonic::Code;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const SENTRY_ID: &str = "spiffe://localhost/ns/default/dapr-sentry";
const RSA_ROOT: &str = include_str!("../../sentry/tests/fixtures/rsa-root.key");
const RSA_ISSUER: &str = include_str!("../../sentry/tests/fixtures/rsa-issuer.key");
const RSA_ISSUER_PKCS1: &str = include_str!("../../sentry/tests/fixtures/rsa-issuer-pkcs1.key");
const RSA_WORKLOAD: &str = include_str!("../../sentry/tests/fixtures/rsa-workload.key");

/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(30);

/// The sentry of these tests: metrics on, debug logs, no `NAMESPACE`.
fn launch(creds: &Path) -> anyhow::Result<Launch> {
    Ok(Launch::new(creds)?
        .metrics()?
        .args(["--log-level", "debug"]))
}

/// [`launch`], started and healthy.
async fn start(creds: &Path) -> anyhow::Result<Sentry> {
    launch(creds)?.start(DEADLINE).await
}

fn parse(der: &[u8]) -> anyhow::Result<X509Certificate<'_>> {
    Ok(X509Certificate::from_der(der)?.1)
}

fn unix(t: SystemTime) -> anyhow::Result<i64> {
    Ok(i64::try_from(t.duration_since(UNIX_EPOCH)?.as_secs())?)
}

fn uri_sans(cert: &X509Certificate<'_>) -> anyhow::Result<Vec<String>> {
    let san = cert
        .subject_alternative_name()?
        .ok_or_else(|| anyhow::anyhow!("no SAN"))?;
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect())
}

/// A root and its issuers made by the test, as a user would provide them.
struct UserCa {
    root_params: CertificateParams,
    root_key: KeyPair,
    root_pem: String,
}

fn ca_params(org: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(90);
    params
}

impl UserCa {
    fn new(root_key: KeyPair) -> anyhow::Result<Self> {
        let root_params = ca_params("test root");
        let root_pem = root_params.self_signed(&root_key)?.pem();
        Ok(UserCa {
            root_params,
            root_key,
            root_pem,
        })
    }

    /// A new issuer under this root: its certificate PEM.
    fn issuer(&self, name: &str, key: &KeyPair) -> anyhow::Result<String> {
        Ok(ca_params(name)
            .signed_by(key, &Issuer::from_params(&self.root_params, &self.root_key))?
            .pem())
    }

    fn write(&self, dir: &std::path::Path, issuer_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.crt"), &self.root_pem)?;
        std::fs::write(dir.join("issuer.crt"), issuer_pem)?;
        std::fs::write(dir.join("issuer.key"), key_pem)?;
        Ok(())
    }
}

#[tokio::test]
async fn first_start_generates_its_ca_files_with_mode_0600_and_reports_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    let sentry = start(&creds).await.unwrap();
    for name in ["ca.crt", "issuer.crt", "issuer.key"] {
        let mode = std::fs::metadata(creds.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let root = certs(&sentry.anchors_pem().unwrap()).unwrap();
    assert_eq!(
        parse(&root[0]).unwrap().subject().to_string(),
        "O=localhost"
    );
    let issuer = certs(&std::fs::read(creds.join("issuer.crt")).unwrap()).unwrap();
    assert_eq!(
        parse(&issuer[0]).unwrap().subject().to_string(),
        format!("O={SENTRY_ID}")
    );
    assert_eq!(
        http_get(sentry.healthz, "/healthz").await.map(|r| r.0),
        Some(200)
    );
    let logs = sentry.log_text();
    assert!(logs.contains("generated a root and an issuer"), "{logs}");
    let key = std::fs::read_to_string(creds.join("issuer.key")).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(!logs.contains(body), "key material in the logs:\n{logs}");
}

/// Runs `openssl` (OpenSSL 3, Debian's `openssl` package) with `args` and no input, killed at
/// [`DEADLINE`]: (exit success, stdout then stderr).
async fn openssl(args: &[&std::ffi::OsStr]) -> anyhow::Result<(bool, String)> {
    let child = tokio::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "`openssl` is not installed: install Debian's `openssl` package \
             (apt-get install openssl; scripts/test.sh does)"
        ),
        Err(e) => anyhow::bail!("cannot run openssl: {e}"),
    };
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("openssl {args:?} did not finish within {DEADLINE:?}"))??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// `openssl ... -text` output without its hex dumps (no key material in a failure message).
fn without_hex(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim().chars().all(|c| c.is_ascii_hexdigit() || c == ':'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_generated_root_and_issuer_are_ecdsa_p256_files_openssl_reads_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    let sentry = start(&creds).await.unwrap();
    let (ca_crt, issuer_crt, issuer_key) = (
        creds.join("ca.crt"),
        creds.join("issuer.crt"),
        creds.join("issuer.key"),
    );
    let arg = |s: &'static str| std::ffi::OsStr::new(s);

    let pem = std::fs::read_to_string(&issuer_key).unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "PKCS#8 PEM expected, got {:?}",
        pem.lines().next()
    );
    let (ok, out) = openssl(&[
        arg("pkey"),
        arg("-in"),
        issuer_key.as_os_str(),
        arg("-noout"),
    ])
    .await
    .unwrap();
    assert!(ok, "openssl pkey cannot read issuer.key: {out}");
    let (ok, text) = openssl(&[
        arg("pkey"),
        arg("-in"),
        issuer_key.as_os_str(),
        arg("-noout"),
        arg("-text"),
    ])
    .await
    .unwrap();
    let text = without_hex(&text);
    assert!(ok, "{text}");
    assert!(
        text.contains("Private-Key: (256 bit") && text.contains("ASN1 OID: prime256v1"),
        "issuer.key is not an ECDSA P-256 key:\n{text}"
    );

    for cert in [&ca_crt, &issuer_crt] {
        let (ok, out) = openssl(&[arg("x509"), arg("-in"), cert.as_os_str(), arg("-noout")])
            .await
            .unwrap();
        assert!(ok, "openssl x509 cannot read {}: {out}", cert.display());
        let (ok, text) = openssl(&[
            arg("x509"),
            arg("-in"),
            cert.as_os_str(),
            arg("-noout"),
            arg("-text"),
        ])
        .await
        .unwrap();
        let text = without_hex(&text);
        assert!(ok, "{text}");
        assert!(
            text.contains("Public Key Algorithm: id-ecPublicKey")
                && text.contains("ASN1 OID: prime256v1")
                && text.contains("Signature Algorithm: ecdsa-with-SHA256"),
            "{} is not an ECDSA P-256 certificate signed with ECDSA-SHA256:\n{text}",
            cert.display()
        );
    }

    // The chain verifies with standard tools, and the key is the issuer certificate's.
    let (ok, out) = openssl(&[
        arg("verify"),
        arg("-CAfile"),
        ca_crt.as_os_str(),
        issuer_crt.as_os_str(),
    ])
    .await
    .unwrap();
    assert!(ok && out.contains(": OK"), "{out}");
    let (ok, from_key) = openssl(&[
        arg("pkey"),
        arg("-in"),
        issuer_key.as_os_str(),
        arg("-pubout"),
    ])
    .await
    .unwrap();
    assert!(ok, "{from_key}");
    let (ok, from_cert) = openssl(&[
        arg("x509"),
        arg("-in"),
        issuer_crt.as_os_str(),
        arg("-noout"),
        arg("-pubkey"),
    ])
    .await
    .unwrap();
    assert!(ok, "{from_cert}");
    assert_eq!(from_key, from_cert, "issuer.key does not match issuer.crt");
    drop(sentry);
}

#[tokio::test]
async fn a_client_verifying_sentrys_spiffe_id_gets_a_workload_certificate_for_app1() {
    let dir = tempfile::tempdir().unwrap();
    let sentry = start(&dir.path().join("creds")).await.unwrap();
    let mut client = sentry.client(SENTRY_ID).await.unwrap();
    let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let mut req = request("app1", "default", &csr(&key).unwrap());
    req.token_validator = TokenValidator::Insecure as i32;
    let before = SystemTime::now();
    let resp = sign(&mut client, req).await.unwrap();

    let chain = certs(&resp.workload_certificate).unwrap();
    assert_eq!(chain.len(), 2, "leaf + issuer");
    let issuer_file = certs(&std::fs::read(sentry.creds.join("issuer.crt")).unwrap()).unwrap();
    assert_eq!(chain[1], issuer_file[0]);
    let leaf = parse(&chain[0]).unwrap();
    assert_eq!(
        uri_sans(&leaf).unwrap(),
        vec!["spiffe://public/ns/default/app1"]
    );
    assert_eq!(leaf.subject().as_raw(), &[0x30, 0x00], "no subject");
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&key)
    );
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    // 128 random bits: at most 16 bytes plus a sign byte.
    assert!(leaf.raw_serial().len() <= 17);
    let first_serial = leaf.raw_serial().to_vec();

    let (nb, na) = (
        leaf.validity().not_before.timestamp(),
        leaf.validity().not_after.timestamp(),
    );
    assert_eq!(na - nb, 24 * 3600 + 15 * 60, "24h TTL, 15m skew");
    assert!((na - 24 * 3600 - unix(before).unwrap()).abs() <= 5);
    assert_eq!(resp.valid_until.unwrap().seconds, na);
    assert_eq!(resp.trust_chain_certificates.len(), 1);
    assert_eq!(
        resp.trust_chain_certificates[0].as_ref(),
        sentry.anchors_pem().unwrap()
    );

    // The leaf verifies as a SPIFFE SVID against ca.crt, as a peer daprd would check it.
    let verifier = SpiffeServerVerifier::new(
        Arc::new(root_store(&sentry.anchors_pem().unwrap()).unwrap()),
        ExpectedId::Exact("spiffe://public/ns/default/app1".parse().unwrap()),
    );
    use rustls::client::danger::ServerCertVerifier;
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &rustls::pki_types::ServerName::try_from("app1").unwrap(),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .unwrap();

    // A request naming no validator gets the default (insecure), P-256 and RSA keys too.
    for key in [
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
        KeyPair::from_pem(RSA_WORKLOAD).unwrap(),
    ] {
        let resp = sign(&mut client, request("app1", "default", &csr(&key).unwrap()))
            .await
            .unwrap();
        let chain = certs(&resp.workload_certificate).unwrap();
        let leaf = parse(&chain[0]).unwrap();
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            rcgen::PublicKeyData::der_bytes(&key)
        );
        assert_ne!(
            leaf.raw_serial(),
            first_serial.as_slice(),
            "serials are random"
        );
    }
}

#[tokio::test]
async fn a_client_expecting_another_sentry_id_or_root_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let sentry = launch(&dir.path().join("creds"))
        .unwrap()
        .args(["--trust-domain", "cluster.local"])
        .env("NAMESPACE", "dapr-system")
        .start(DEADLINE)
        .await
        .unwrap();
    let right = "spiffe://cluster.local/ns/dapr-system/dapr-sentry";
    let mut client = sentry.client(right).await.unwrap();
    sign(
        &mut client,
        request(
            "app1",
            "default",
            &csr(&KeyPair::generate().unwrap()).unwrap(),
        ),
    )
    .await
    .unwrap();

    let err = sentry
        .client("spiffe://cluster.local/ns/default/dapr-sentry")
        .await
        .unwrap_err();
    let chain = err.to_string();
    assert!(chain.contains("is not the expected"), "{chain}");

    let other = sentry::ca::generate(
        "cluster.local",
        "dapr-system",
        SystemTime::now(),
        Duration::ZERO,
    )
    .unwrap();
    assert!(
        connect(sentry.addr, other.trust_anchors_pem.as_bytes(), right)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_or_permission_denied_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let sentry = start(&dir.path().join("creds")).await.unwrap();
    let mut client = sentry.client(SENTRY_ID).await.unwrap();
    let good_csr = csr(&KeyPair::generate().unwrap()).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(good_csr.as_bytes())
        .map(|d: rustls::pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .unwrap();
    let mut tampered = der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let pem = |label: &str, der: &[u8]| sentry::ca::pem_encode(label, der);

    let mut with_validator = request("app1", "default", &good_csr);
    with_validator.token_validator = TokenValidator::Jwks as i32;
    let mut kubernetes = request("app1", "default", &good_csr);
    kubernetes.token_validator = TokenValidator::Kubernetes as i32;

    let cases = [
        (
            request("", "default", &good_csr),
            Code::PermissionDenied,
            "app id \"\": must not be empty",
        ),
        (
            request("my.app", "default", &good_csr),
            Code::PermissionDenied,
            "must not contain dots",
        ),
        (
            request(&"a".repeat(65), "default", &good_csr),
            Code::PermissionDenied,
            "at most 64 characters",
        ),
        (
            request("app1", "", &good_csr),
            Code::PermissionDenied,
            "namespace is required",
        ),
        (
            request("app1", "default", ""),
            Code::PermissionDenied,
            "CSR is required",
        ),
        (
            request("app1", "default", "not a pem"),
            Code::InvalidArgument,
            "invalid certificate signing request",
        ),
        (
            request("app1", "default", &pem("PUBLIC KEY", &der)),
            Code::InvalidArgument,
            "invalid certificate signing request",
        ),
        (
            request("app1", "default", &pem("CERTIFICATE REQUEST", &tampered)),
            Code::InvalidArgument,
            "invalid signature",
        ),
        (
            request("app1", "default", &pem("CERTIFICATE REQUEST", b"junk")),
            Code::InvalidArgument,
            "failed to parse certificate signing request",
        ),
        (
            request("app1", "default", &good_csr[..good_csr.len() / 2]),
            Code::InvalidArgument,
            "invalid certificate signing request",
        ),
        (
            request(
                "app1",
                "default",
                &pem("CERTIFICATE REQUEST", &der[..der.len() - 10]),
            ),
            Code::InvalidArgument,
            "failed to parse certificate signing request",
        ),
        (
            request(
                "app1",
                "default",
                &pem("CERTIFICATE REQUEST", &vec![0x30; 100 * 1024]),
            ),
            Code::InvalidArgument,
            "more than the 65536 accepted",
        ),
        (
            with_validator,
            Code::InvalidArgument,
            "the requested validator is not enabled",
        ),
        (
            kubernetes,
            Code::InvalidArgument,
            "the requested validator is not enabled",
        ),
    ];
    for (req, code, message) in cases {
        let status = sign(&mut client, req).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "{message}: {status:?}");
    }
    // Beyond gRPC's message limit the request is refused before it is decoded at all.
    let huge = request(
        "app1",
        "default",
        &pem("CERTIFICATE REQUEST", &vec![0x30; 5 * 1024 * 1024]),
    );
    let status = sign(&mut client, huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );
    // And sentry still serves.
    sign(&mut client, request("app1", "default", &good_csr))
        .await
        .unwrap();
    let logs = sentry.log_text();
    assert!(logs.contains("refused to sign a certificate"), "{logs}");
}

#[tokio::test]
async fn metrics_count_sign_requests_successes_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let sentry = start(&dir.path().join("creds")).await.unwrap();
    let mut client = sentry.client(SENTRY_ID).await.unwrap();
    let good = csr(&KeyPair::generate().unwrap()).unwrap();
    for _ in 0..3 {
        sign(&mut client, request("app1", "default", &good))
            .await
            .unwrap();
    }
    sign(&mut client, request("a.b", "default", &good))
        .await
        .unwrap_err();
    sign(&mut client, request("app1", "default", "junk"))
        .await
        .unwrap_err();

    let text = sentry.metrics_text().await.unwrap();
    for line in [
        "dapr_sentry_cert_sign_request_received_total 5",
        "dapr_sentry_cert_sign_success_total 3",
        "dapr_sentry_cert_sign_failure_total{reason=\"req_id_validation\"} 1",
        "dapr_sentry_cert_sign_failure_total{reason=\"cert_parse\"} 1",
        "dapr_sentry_issuercert_changed_total 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(
        text.contains("dapr_sentry_issuercert_expiry_timestamp "),
        "{text}"
    );
    // Upstream's exporter serves on "/" too.
    assert_eq!(
        http_get(sentry.metrics.unwrap(), "/").await.map(|r| r.0),
        Some(200)
    );
}

#[tokio::test]
async fn a_user_provided_rsa_root_and_issuer_are_used_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    let ca = UserCa::new(KeyPair::from_pem(RSA_ROOT).unwrap()).unwrap();
    let issuer_key = KeyPair::from_pem(RSA_ISSUER).unwrap();
    let issuer_pem = ca.issuer("rsa issuer", &issuer_key).unwrap();
    // The key as PKCS#1, as `openssl genrsa` (1.x) writes it.
    ca.write(&creds, &issuer_pem, RSA_ISSUER_PKCS1).unwrap();
    let before: Vec<_> = ["ca.crt", "issuer.crt", "issuer.key"]
        .iter()
        .map(|f| std::fs::read(creds.join(f)).unwrap())
        .collect();

    let sentry = start(&creds).await.unwrap();
    let mut client = sentry.client(SENTRY_ID).await.unwrap();
    let resp = sign(
        &mut client,
        request(
            "app1",
            "default",
            &csr(&KeyPair::generate().unwrap()).unwrap(),
        ),
    )
    .await
    .unwrap();
    let chain = certs(&resp.workload_certificate).unwrap();
    let issuer = certs(issuer_pem.as_bytes()).unwrap();
    assert_eq!(chain[1], issuer[0]);
    parse(&chain[0])
        .unwrap()
        .verify_signature(Some(parse(&issuer[0]).unwrap().public_key()))
        .unwrap();
    assert_eq!(
        parse(&chain[0]).unwrap().issuer().to_string(),
        "O=rsa issuer"
    );

    let after: Vec<_> = ["ca.crt", "issuer.crt", "issuer.key"]
        .iter()
        .map(|f| std::fs::read(creds.join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "user files are never rewritten");
    assert!(sentry.log_text().contains("loaded issuer credentials"));
    assert!(
        sentry.log_text().contains("algorithm=\"RSA\"")
            || sentry.log_text().contains("algorithm=RSA")
    );
}

/// Signs in a loop on `workers` tasks until `stop` (at most 20 000 requests or 60 s each),
/// counting successes; each task returns the failures it saw.
fn load(
    client: &dapr_proto::sentry::v1::ca_client::CaClient<tonic::transport::Channel>,
    workers: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<Vec<String>>>> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (mut client, stop, ok) = (client.clone(), stop.clone(), ok.clone());
        let csr_pem = csr(&KeyPair::generate()?)?;
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                match sign(&mut client, request("app1", "default", &csr_pem)).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => failures.push(format!("{status:?}")),
                }
            }
            failures
        }));
    }
    Ok(tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_issuer_under_load_drops_no_request_and_new_leaves_chain_to_the_new_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    let ca = UserCa::new(KeyPair::generate_for(&PKCS_ED25519).unwrap()).unwrap();
    let old_key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let old_issuer = ca.issuer("issuer one", &old_key).unwrap();
    ca.write(&creds, &old_issuer, &old_key.serialize_pem())
        .unwrap();
    let sentry = start(&creds).await.unwrap();
    let client = sentry.client(SENTRY_ID).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let workers = load(&client, 4, stop.clone(), ok.clone()).unwrap();

    // Wait until the load is really running, then rotate: certificate and key written one
    // after the other, as a person (or `kubectl cp`) would.
    let deadline = Instant::now() + DEADLINE;
    while ok.load(Ordering::SeqCst) < 20 {
        assert!(Instant::now() < deadline, "load never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let new_issuer = ca.issuer("issuer two", &new_key).unwrap();
    std::fs::write(creds.join("issuer.crt"), &new_issuer).unwrap();
    std::fs::write(creds.join("issuer.key"), new_key.serialize_pem()).unwrap();
    let rotated_at = Instant::now();

    let mut probe = client.clone();
    let probe_csr = csr(&KeyPair::generate().unwrap()).unwrap();
    let new_issuer_der = certs(new_issuer.as_bytes()).unwrap().remove(0);
    loop {
        let resp = sign(&mut probe, request("app1", "default", &probe_csr))
            .await
            .unwrap();
        let chain = certs(&resp.workload_certificate).unwrap();
        if chain[1] == new_issuer_der {
            parse(&chain[0])
                .unwrap()
                .verify_signature(Some(parse(&new_issuer_der).unwrap().public_key()))
                .unwrap();
            break;
        }
        assert!(
            rotated_at.elapsed() < Duration::from_secs(15),
            "new issuer not used after 15s:\n{}",
            sentry.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let switched_after = rotated_at.elapsed();

    // Keep the load on a little longer across the switch, then stop it.
    let settled = ok.load(Ordering::SeqCst);
    let deadline = Instant::now() + DEADLINE;
    while ok.load(Ordering::SeqCst) < settled + 50 {
        assert!(Instant::now() < deadline, "load stalled after the switch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut failed = Vec::new();
    for w in workers {
        failed.extend(w.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} failures, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(ok.load(Ordering::SeqCst) > 70);
    assert!(
        switched_after < Duration::from_secs(10),
        "took {switched_after:?}"
    );

    // New handshakes get a serving certificate from the new issuer too.
    let served = served_chain(sentry.addr, ca.root_pem.as_bytes(), SENTRY_ID)
        .await
        .unwrap();
    assert_eq!(served[1], new_issuer_der);
    let text = sentry.metrics_text().await.unwrap();
    assert!(
        text.contains("dapr_sentry_issuercert_changed_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn an_invalid_new_issuer_is_rejected_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    let ca = UserCa::new(KeyPair::generate_for(&PKCS_ED25519).unwrap()).unwrap();
    let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let issuer = ca.issuer("issuer one", &key).unwrap();
    ca.write(&creds, &issuer, &key.serialize_pem()).unwrap();
    let sentry = start(&creds).await.unwrap();
    let mut client = sentry.client(SENTRY_ID).await.unwrap();

    // An issuer from another root does not chain to ca.crt.
    let stranger = UserCa::new(KeyPair::generate_for(&PKCS_ED25519).unwrap()).unwrap();
    let stranger_key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    std::fs::write(
        creds.join("issuer.crt"),
        stranger.issuer("stranger", &stranger_key).unwrap(),
    )
    .unwrap();
    std::fs::write(creds.join("issuer.key"), stranger_key.serialize_pem()).unwrap();
    sentry
        .wait_log("new issuer credentials rejected", DEADLINE)
        .await
        .unwrap();
    assert!(
        sentry.log_text().contains("issuer.crt"),
        "{}",
        sentry.log_text()
    );

    let resp = sign(
        &mut client,
        request(
            "app1",
            "default",
            &csr(&KeyPair::generate().unwrap()).unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        certs(&resp.workload_certificate).unwrap()[1],
        certs(issuer.as_bytes()).unwrap()[0]
    );
    let text = sentry.metrics_text().await.unwrap();
    assert!(
        text.contains("dapr_sentry_issuercert_changed_total 0"),
        "{text}"
    );
    let logs = sentry.log_text();
    assert_eq!(
        logs.matches("new issuer credentials rejected").count(),
        1,
        "logged once:\n{logs}"
    );
}

#[tokio::test]
async fn the_jwks_validator_admits_signed_tokens_and_replaces_insecure() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use ring::signature::KeyPair as _;

    let dir = tempfile::tempdir().unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let public = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
                                            "x": b64.encode(&public)}]});
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: daprsystem\n\
             spec:\n  mtls:\n    workloadCertTTL: 1h\n    allowedClockSkew: 1m\n    tokenValidators:\n\
             \x20   - name: jwks\n      options:\n        source: {}\n",
            jwks_path.display()
        ),
    )
    .unwrap();
    let sentry = launch(&dir.path().join("creds"))
        .unwrap()
        .args(["--config", config.to_str().unwrap()])
        .start(DEADLINE)
        .await
        .unwrap();
    let mut client = sentry.client(SENTRY_ID).await.unwrap();
    let now = unix(SystemTime::now()).unwrap();
    let token = |sub: &str| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        let claims = serde_json::json!({"sub": sub, "aud": SENTRY_ID, "exp": now + 600});
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap()
    };
    let csr_pem = csr(&KeyPair::generate().unwrap()).unwrap();
    let with = |validator: TokenValidator, token: String, td: &str| {
        let mut req = request("app1", "default", &csr_pem);
        req.token_validator = validator as i32;
        req.token = token;
        req.trust_domain = td.into();
        req
    };

    let resp = sign(
        &mut client,
        with(
            TokenValidator::Jwks,
            token("spiffe://example.org/ns/default/app1"),
            "example.org",
        ),
    )
    .await
    .unwrap();
    let leaf_der = certs(&resp.workload_certificate).unwrap().remove(0);
    let leaf = parse(&leaf_der).unwrap();
    assert_eq!(
        uri_sans(&leaf).unwrap(),
        vec!["spiffe://example.org/ns/default/app1"]
    );
    let validity = leaf.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        3600 + 60,
        "workloadCertTTL and allowedClockSkew from the Configuration"
    );

    let denied = sign(
        &mut client,
        with(
            TokenValidator::Jwks,
            token("spiffe://public/ns/default/other"),
            "",
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("sub is not spiffe://public/ns/default/app1"),
        "{denied:?}"
    );

    // Tokens that are signed by the JWKS key but wrong in one claim, and tokens that are not.
    let signed = |claims: serde_json::Value, kid: &str| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap()
    };
    let sub = "spiffe://public/ns/default/app1";
    let cases = [
        (
            "expired",
            signed(
                serde_json::json!({"sub": sub, "aud": SENTRY_ID, "exp": now - 3600}),
                "k1",
            ),
            "ExpiredSignature",
        ),
        (
            "not yet valid",
            signed(
                serde_json::json!({"sub": sub, "aud": SENTRY_ID, "exp": now + 7200, "nbf": now + 3600}),
                "k1",
            ),
            "ImmatureSignature",
        ),
        (
            "another namespace",
            signed(
                serde_json::json!({"sub": "spiffe://public/ns/other/app1", "aud": SENTRY_ID, "exp": now + 600}),
                "k1",
            ),
            "sub is not spiffe://public/ns/default/app1",
        ),
        (
            "another audience",
            signed(
                serde_json::json!({"sub": sub, "aud": "api", "exp": now + 600}),
                "k1",
            ),
            "aud does not include",
        ),
        (
            "unknown key",
            signed(
                serde_json::json!({"sub": sub, "aud": SENTRY_ID, "exp": now + 600}),
                "k9",
            ),
            "no key with id \"k9\" in the JWKS",
        ),
        ("garbage", "not.a.jwt".to_owned(), "malformed token"),
    ];
    for (what, token, reason) in cases {
        let denied = sign(&mut client, with(TokenValidator::Jwks, token, ""))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{what}: {denied:?}");
        assert!(
            denied.message().contains(reason),
            "{what}: {reason}: {denied:?}"
        );
    }

    let unnamed = sign(
        &mut client,
        with(TokenValidator::Unknown, String::new(), ""),
    )
    .await
    .unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    assert_eq!(
        unnamed.message(),
        "a validator name must be specified in this environment"
    );
    let insecure = sign(
        &mut client,
        with(TokenValidator::Insecure, String::new(), ""),
    )
    .await
    .unwrap_err();
    assert_eq!(insecure.message(), "the requested validator is not enabled");
}

#[tokio::test]
async fn healthz_answers_503_until_the_ca_serves_and_a_failed_start_exits_1() {
    // A JWKS URL that accepts connections but never answers holds start-up for requestTimeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nspec:\n  mtls:\n    tokenValidators:\n\
             \x20   - name: jwks\n      options:\n        source: http://{}/jwks.json\n        requestTimeout: 3s\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    let mut sentry = launch(&dir.path().join("creds"))
        .unwrap()
        .args(["--config", config.to_str().unwrap()])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match http_get(sentry.healthz, "/healthz").await {
            Some((status, _)) => {
                assert_eq!(status, 503);
                break;
            }
            None => assert!(Instant::now() < deadline, "healthz never answered"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = sentry.wait_exit(DEADLINE).await.unwrap();
    assert_eq!(status.code(), Some(1), "{}", sentry.log_text());
    assert!(
        sentry.log_text().contains("timed out"),
        "{}",
        sentry.log_text()
    );
}

#[test]
fn bad_flags_and_configuration_exit_64_and_kubernetes_mode_without_an_api_exits_1() {
    let (status, out) = run_to_exit(&["--port", "not-a-port"]).unwrap();
    assert_eq!(status.code(), Some(64), "{out}");

    let (status, out) = run_to_exit(&["--config", "/nonexistent/sentry-config.yaml"]).unwrap();
    assert_eq!(status.code(), Some(64), "{out}");
    assert!(out.contains("/nonexistent/sentry-config.yaml"), "{out}");

    let (status, out) = run_to_exit(&[
        "--mode",
        "kubernetes",
        "--healthz-port",
        "0",
        "--metrics-port",
        "0",
        "--port",
        "0",
    ])
    .unwrap();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("no Kubernetes API access"), "{out}");

    let (status, out) = run_to_exit(&["--help"]).unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("--issuer-credentials"), "{out}");
}

#[tokio::test]
async fn a_partial_credentials_directory_fails_start_naming_the_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("ca.crt"), "user root").unwrap();
    let mut sentry = launch(&creds).unwrap().spawn().unwrap();
    let status = sentry.wait_exit(DEADLINE).await.unwrap();
    assert_eq!(status.code(), Some(1));
    let logs = sentry.log_text();
    assert!(
        logs.contains("issuer.crt") && logs.contains("issuer.key"),
        "{logs}"
    );
    assert_eq!(
        std::fs::read_to_string(creds.join("ca.crt")).unwrap(),
        "user root"
    );
}

/// Reads until the peer closes (`Some(elapsed)`) or `within` passes (`None`).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

#[tokio::test]
async fn connections_that_stall_before_or_after_the_tls_handshake_are_closed_at_the_deadline() {
    // The handshake deadline of docs/limits.md.
    const DEADLINE: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let sentry = start(&dir.path().join("creds")).await.unwrap();
    let anchors = sentry.anchors_pem().unwrap();
    // One never starts its TLS handshake; one completes it and never sends the HTTP/2 preface.
    let mut silent = tokio::net::TcpStream::connect(sentry.addr).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(sentry.addr).await.unwrap();
    let mut idle =
        tokio_rustls::TlsConnector::from(Arc::new(tls_config(&anchors, SENTRY_ID).unwrap()))
            .connect(rustls::pki_types::ServerName::from(sentry.addr.ip()), tcp)
            .await
            .expect("the TLS handshake completes");
    let bound = DEADLINE + Duration::from_secs(10);
    let (silent, idle) = tokio::join!(
        closed_within(&mut silent, bound),
        closed_within(&mut idle, bound),
    );
    for (what, after) in [("no handshake", silent), ("no preface", idle)] {
        let after = after.unwrap_or_else(|| panic!("{what}: still open after {bound:?}"));
        assert!(
            after >= DEADLINE - Duration::from_secs(2),
            "{what}: closed after {after:?}"
        );
    }
    // The CA still serves.
    let key = KeyPair::generate().unwrap();
    let mut client = sentry.client(SENTRY_ID).await.unwrap();
    sign(&mut client, request("app1", "default", &csr(&key).unwrap()))
        .await
        .expect("a normal request is signed");
}
