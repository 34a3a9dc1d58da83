//! A workload's certificate request, as daprd and the injector make it
//! (`dapr_identity::client::request` with a fresh ECDSA P-256 key), signed by this CA's service
//! on loopback.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dapr_identity::SpiffeId;
use dapr_identity::client::{KeyAlgorithm, SvidRequest};
use dapr_identity::tls::root_store;
use dapr_proto::sentry::v1::sign_certificate_request::TokenValidator;
use rustls::pki_types::PrivateKeyDer;
use sentry::ca::{self, CaBundle, IssuerKey, SignPolicy};
use sentry::config::CredentialPaths;
use sentry::metrics::Metrics;
use sentry::server::{self, Authority, CaService};
use sentry::validator::{Validator, Validators};
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Every wait in this test ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(30);

/// A sentry CA service on loopback with a freshly generated CA and the insecure validator:
/// (address, trust anchors PEM, the token that stops it, its task).
async fn sentry_on_loopback() -> (
    String,
    String,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), sentry::Error>>,
) {
    let now = SystemTime::now();
    let generated = ca::generate("cluster.local", "dapr-system", now, Duration::ZERO).unwrap();
    let paths = CredentialPaths {
        dir: "/t".into(),
        trust_anchors: "/t/ca.crt".into(),
        issuer_cert: "/t/issuer.crt".into(),
        issuer_key: "/t/issuer.key".into(),
    };
    let bundle = CaBundle::from_pem(
        generated.trust_anchors_pem.as_bytes(),
        generated.issuer_chain_pem.as_bytes(),
        generated.issuer_key.to_pkcs8_pem().as_bytes(),
        &paths,
        now,
    )
    .unwrap();
    let anchors = bundle.trust_anchors_pem().to_owned();
    let metrics = Arc::new(Metrics::new().unwrap());
    let policy = SignPolicy {
        ttl: Duration::from_secs(3600),
        allowed_clock_skew: Duration::ZERO,
    };
    let sentry_id = SpiffeId::new("cluster.local", "dapr-system", "dapr-sentry").unwrap();
    let authority =
        Arc::new(Authority::new(bundle, sentry_id, policy, Arc::clone(&metrics), now).unwrap());
    let validators = Arc::new(Validators::new(
        vec![Validator::Insecure],
        Some(TokenValidator::Insecure),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        CaService::new(authority, validators, metrics),
        stop.clone().cancelled_owned(),
    ));
    (address, anchors, stop, server)
}

#[tokio::test]
async fn a_workload_gets_its_certificate_for_a_fresh_ecdsa_p256_key_as_upstreams_daprd_does() {
    let (address, anchors, stop, server) = sentry_on_loopback().await;
    let roots = Arc::new(root_store(anchors.as_bytes()).unwrap());
    let request = SvidRequest {
        sentry_address: address,
        sentry_id: SpiffeId::new("cluster.local", "dapr-system", "dapr-sentry").unwrap(),
        id: "app1".into(),
        namespace: "default".into(),
        token: String::new(),
        validator: dapr_identity::token::validator::UNKNOWN,
    };
    let svid = tokio::time::timeout(
        DEADLINE,
        dapr_identity::client::request(&request, &roots, KeyAlgorithm::EcdsaP256),
    )
    .await
    .expect("sentry answers within the deadline")
    .unwrap();
    assert_eq!(svid.id.to_string(), "spiffe://public/ns/default/app1");

    let PrivateKeyDer::Pkcs8(der) = &svid.key else {
        panic!("the workload's key is not PKCS#8");
    };
    let pem = ca::pem_encode("PRIVATE KEY", der.secret_pkcs8_der());
    let key = IssuerKey::from_pem(pem.as_bytes()).unwrap();
    assert_eq!(key.algorithm_name(), "ECDSA P-256");
    let (_, leaf) = X509Certificate::from_der(&svid.chain[0]).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&key),
        "the leaf carries the workload's key"
    );

    stop.cancel();
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("sentry stops within the deadline")
        .unwrap()
        .unwrap();
}
