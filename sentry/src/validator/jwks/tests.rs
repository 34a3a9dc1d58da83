use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{EncodingKey, Header};
use ring::signature::{self, KeyPair};
use rustls::pki_types::PrivatePkcs1KeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;

use super::*;
use crate::config::{DEFAULT_JWKS_MIN_REFRESH_INTERVAL, DEFAULT_JWKS_REQUEST_TIMEOUT};

const SENTRY_ID: &str = "spiffe://localhost/ns/default/dapr-sentry";
const RSA_PKCS1: &str = include_str!("../../../tests/fixtures/rsa-issuer-pkcs1.key");

/// A JWT signing key and its public JWK.
struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn ed25519(kid: &str) -> Signer {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    Signer {
        alg: Algorithm::EdDSA,
        kid: kid.into(),
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
                    "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())}),
    }
}

fn p256(kid: &str) -> Signer {
    let rng = ring::rand::SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    Signer {
        alg: Algorithm::ES256,
        kid: kid.into(),
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65])}),
    }
}

fn rsa(kid: &str) -> Signer {
    let der = PrivatePkcs1KeyDer::from_pem_slice(RSA_PKCS1.as_bytes()).unwrap();
    let pair = signature::RsaKeyPair::from_der(der.secret_pkcs1_der()).unwrap();
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    Signer {
        alg: Algorithm::RS256,
        kid: kid.into(),
        key: EncodingKey::from_rsa_der(der.secret_pkcs1_der()),
        jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256",
                    "n": URL_SAFE_NO_PAD.encode(&public.n),
                    "e": URL_SAFE_NO_PAD.encode(&public.e)}),
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "aud": [SENTRY_ID, "other"], "exp": unix_now() + 600, "iat": unix_now()})
}

fn token(signer: &Signer, claims: &serde_json::Value) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, claims, &signer.key).unwrap()
}

fn options(source: &str) -> JwksOptions {
    JwksOptions {
        source: source.into(),
        ca_certificate: None,
        min_refresh_interval: DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
        request_timeout: DEFAULT_JWKS_REQUEST_TIMEOUT,
    }
}

fn request(token: &str) -> SignCertificateRequest {
    SignCertificateRequest {
        id: "app1".into(),
        namespace: "default".into(),
        token: token.into(),
        certificate_signing_request: b"csr".to_vec().into(),
        ..Default::default()
    }
}

const APP1: &str = "spiffe://public/ns/default/app1";

async fn validator(source: &str) -> Arc<JwksValidator> {
    JwksValidator::start(&options(source), SENTRY_ID.into())
        .await
        .unwrap()
}

async fn denial(v: &JwksValidator, token: &str) -> String {
    match v.validate(&request(token)).await {
        Err(Error::Denied(reason)) => reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn tokens_signed_with_eddsa_es256_and_rs256_keys_of_the_set_are_accepted() {
    let (e, p, r) = (ed25519("e"), p256("p"), rsa("r"));
    let v = validator(&jwks(&[&e, &p, &r])).await;
    for signer in [&e, &p, &r] {
        let validated = v
            .validate(&request(&token(signer, &claims(APP1))))
            .await
            .unwrap_or_else(|err| panic!("{:?}: {err}", signer.alg));
        assert_eq!(validated.trust_domain, "public");
    }
}

#[tokio::test]
async fn the_subject_must_be_the_requesters_spiffe_id() {
    let e = ed25519("e");
    let v = validator(&jwks(&[&e])).await;
    let reason = denial(&v, &token(&e, &claims("spiffe://public/ns/default/other"))).await;
    assert!(
        reason.contains("sub is not spiffe://public/ns/default/app1"),
        "{reason}"
    );

    let mut no_sub = claims(APP1);
    no_sub.as_object_mut().unwrap().remove("sub");
    let reason = denial(&v, &token(&e, &no_sub)).await;
    assert!(reason.contains("sub"), "{reason}");
}

#[tokio::test]
async fn the_audience_must_include_sentrys_spiffe_id() {
    let e = ed25519("e");
    let v = validator(&jwks(&[&e])).await;
    let mut wrong = claims(APP1);
    wrong["aud"] = json!("dapr.io/sentry");
    let reason = denial(&v, &token(&e, &wrong)).await;
    assert!(
        reason.contains(&format!("aud does not include {SENTRY_ID}")),
        "{reason}"
    );

    wrong.as_object_mut().unwrap().remove("aud");
    let reason = denial(&v, &token(&e, &wrong)).await;
    assert!(reason.contains("aud"), "{reason}");
}

#[tokio::test]
async fn expired_tokens_unknown_keys_and_missing_tokens_are_refused() {
    let (e, stranger) = (ed25519("e"), ed25519("stranger"));
    let v = validator(&jwks(&[&e])).await;

    let mut expired = claims(APP1);
    expired["exp"] = json!(unix_now() - 3600);
    assert!(denial(&v, &token(&e, &expired)).await.contains("xpired"));

    let reason = denial(&v, &token(&stranger, &claims(APP1))).await;
    assert!(reason.contains("no key with id \"stranger\""), "{reason}");

    // Same kid, another key: the signature does not verify.
    let impostor = ed25519("e");
    let reason = denial(&v, &token(&impostor, &claims(APP1))).await;
    assert!(reason.contains("token validation failed"), "{reason}");

    assert_eq!(denial(&v, "").await, "the request does not contain a token");
    assert!(denial(&v, "not-a-jwt").await.contains("malformed token"));
}

#[tokio::test]
async fn hmac_tokens_are_refused_whatever_the_set_holds() {
    let e = ed25519("e");
    let v = validator(&jwks(&[&e])).await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("e".into());
    let forged =
        jsonwebtoken::encode(&header, &claims(APP1), &EncodingKey::from_secret(b"x")).unwrap();
    let reason = denial(&v, &forged).await;
    assert!(
        reason.contains("HS256") && reason.contains("not accepted"),
        "{reason}"
    );
}

#[tokio::test]
async fn the_common_checks_apply_before_the_token_is_looked_at() {
    let e = ed25519("e");
    let v = validator(&jwks(&[&e])).await;
    let mut req = request(&token(&e, &claims(APP1)));
    req.namespace.clear();
    let err = v.validate(&req).await.unwrap_err().to_string();
    assert!(err.contains("namespace is required"), "{err}");
}

#[tokio::test]
async fn a_base64_encoded_inline_jwks_is_accepted() {
    let e = ed25519("e");
    let v = validator(&STANDARD.encode(jwks(&[&e]))).await;
    v.validate(&request(&token(&e, &claims(APP1))))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_source_that_is_nothing_usable_fails_start() {
    let err = JwksValidator::start(&options("/no/such/file.json"), SENTRY_ID.into())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a URL, an existing file"),
        "{err}"
    );
}

#[tokio::test]
async fn a_file_source_is_reloaded_when_it_changes() {
    let (old, new) = (ed25519("old"), ed25519("new"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&old])).unwrap();
    let v = validator(path.to_str().unwrap()).await;
    v.validate(&request(&token(&old, &claims(APP1))))
        .await
        .unwrap();

    std::fs::write(&path, jwks(&[&new])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while v
        .validate(&request(&token(&new, &claims(APP1))))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the new key was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        v.validate(&request(&token(&old, &claims(APP1))))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn dropping_the_validator_stops_following_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&ed25519("k")])).unwrap();
    let v = validator(path.to_str().unwrap()).await;
    let follower = v.follower.get().expect("a file source is followed").clone();
    assert!(!follower.is_finished());
    drop(v);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !follower.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the follower outlived its validator"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback HTTP server answering every request with the current body; counts requests.
struct JwksServer {
    url: String,
    body: Arc<std::sync::Mutex<String>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

async fn jwks_server(initial: String) -> JwksServer {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let body = Arc::new(std::sync::Mutex::new(initial));
    let hits = Arc::new(AtomicUsize::new(0));
    let (b, h) = (body.clone(), hits.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (b, h) = (b.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                b.lock().unwrap().clone()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    JwksServer { url, body, hits }
}

#[tokio::test]
async fn a_url_source_is_refetched_for_an_unknown_key_at_most_once_per_interval() {
    use std::sync::atomic::Ordering;
    let (first, second, third) = (ed25519("first"), ed25519("second"), ed25519("third"));
    let server = jwks_server(jwks(&[&first])).await;
    let mut opts = options(&server.url);
    opts.min_refresh_interval = Duration::ZERO;
    let v = JwksValidator::start(&opts, SENTRY_ID.into()).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    v.validate(&request(&token(&first, &claims(APP1))))
        .await
        .unwrap();
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "known keys need no fetch"
    );

    *server.body.lock().unwrap() = jwks(&[&first, &second]);
    v.validate(&request(&token(&second, &claims(APP1))))
        .await
        .unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // With the default interval a burst of unknown keys causes no fetch at all.
    let v = validator(&server.url).await;
    *server.body.lock().unwrap() = jwks(&[&third]);
    let before = server.hits.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert!(
            v.validate(&request(&token(&third, &claims(APP1))))
                .await
                .is_err()
        );
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn an_unreachable_url_fails_start_within_the_request_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let err = JwksValidator::start(&options(&url), SENTRY_ID.into())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fetching"), "{err}");
}

/// A one-shot-per-connection HTTPS server for `body`, with a certificate for 127.0.0.1 from a
/// fresh CA: (url, CA PEM).
async fn https_jwks_server(body: String) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &Issuer::new(ca_params, &ca_key))
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(dapr_identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, ca_cert.pem())
}

#[tokio::test]
async fn an_https_source_is_verified_against_the_configured_ca_certificate() {
    let e = ed25519("e");
    let (url, ca_pem) = https_jwks_server(jwks(&[&e])).await;

    let mut opts = options(&url);
    opts.ca_certificate = Some(ca_pem);
    let v = JwksValidator::start(&opts, SENTRY_ID.into()).await.unwrap();
    v.validate(&request(&token(&e, &claims(APP1))))
        .await
        .unwrap();

    // Without it the server's private CA is not trusted.
    let err = JwksValidator::start(&options(&url), SENTRY_ID.into())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fetching") || err.contains("no CA certificates"),
        "{err}"
    );
}
