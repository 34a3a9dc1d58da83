//! Sentry's kubernetes mode against a mocked Kubernetes API (`dapr-kube-mock`, shared with
//! the injector's reconciler tests): the trust bundle in the Secret and ConfigMap
//! `dapr-trust-bundle`, and the `kubernetes` token validator (TokenReview, pod, Configuration).
//!
//! Why a mock: the decisions themselves (`bundle_action`, `expected_identity`, `token_claims`)
//! are unit-tested in `kubernetes.rs`, and the cluster tier runs all of this against a real API
//! server. Neither pins what lies between: exactly which API calls are made in which order (a
//! complete Secret must never be written, a cached review must not cost another TokenReview),
//! what the written objects contain, and how each API answer maps onto sentry's errors
//! (`Denied`, which callers see as PermissionDenied, versus internal failures). Each scenario
//! answers exactly the calls it expects, in order, and fails on any other call or on one left
//! unanswered; every wait is bounded.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine;
use dapr_identity::SpiffeId;
use dapr_kube_mock::{self as kube_mock, Call, Handle, Reply, call, exchange, no_more_calls};
use dapr_proto::sentry::v1::SignCertificateRequest;
use dapr_proto::sentry::v1::sign_certificate_request::TokenValidator;
use http::{Method, StatusCode};
use kube::Client;
use sentry::Error;
use sentry::ca::store::{Origin, RawCredentials};
use sentry::config::CredentialPaths;
use sentry::kubernetes::load_or_generate_bundle;
use sentry::validator::kubernetes::KubernetesValidator;
use serde_json::{Value, json};

const SKEW: Duration = Duration::from_secs(15 * 60);

const CP_NAMESPACE: &str = "dapr-system";
const SECRET_PATH: &str = "/api/v1/namespaces/dapr-system/secrets/dapr-trust-bundle";
const CONFIG_MAP_PATH: &str = "/api/v1/namespaces/dapr-system/configmaps/dapr-trust-bundle";
const TOKEN_REVIEWS_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

fn ok(body: Value) -> Reply {
    Reply::Json(StatusCode::OK, body)
}

fn api_status(code: StatusCode, reason: &str, message: &str) -> Reply {
    Reply::Json(code, kube_mock::status(code, reason, message))
}

fn not_found(kind: &str, name: &str) -> Reply {
    Reply::Json(StatusCode::NOT_FOUND, kube_mock::not_found(kind, name))
}

fn denied_reason(result: Result<sentry::validator::Validated, Error>) -> String {
    match result {
        Err(Error::Denied(reason)) => reason,
        other => panic!("expected Error::Denied, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The trust bundle: Secret and ConfigMap `dapr-trust-bundle`.

fn paths(ca: &str, cert: &str, key: &str) -> CredentialPaths {
    let dir = PathBuf::from("/var/run/secrets/dapr.io/credentials");
    CredentialPaths {
        trust_anchors: dir.join(ca),
        issuer_cert: dir.join(cert),
        issuer_key: dir.join(key),
        dir,
    }
}

fn default_paths() -> CredentialPaths {
    paths("ca.crt", "issuer.crt", "issuer.key")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(value: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap())
        .unwrap()
}

/// A real CA as sentry generates it: (root PEM, issuer chain PEM, issuer key PEM).
fn real_ca() -> (String, String, String) {
    let generated =
        sentry::ca::generate("cluster.local", CP_NAMESPACE, SystemTime::now(), SKEW).unwrap();
    (
        generated.trust_anchors_pem,
        generated.issuer_chain_pem,
        generated.issuer_key.to_pkcs8_pem(),
    )
}

fn secret(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": "dapr-trust-bundle", "namespace": CP_NAMESPACE,
                        "resourceVersion": "11", "labels": {"app": "dapr-sentry"}},
           "data": data})
}

fn empty_secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": "dapr-trust-bundle", "namespace": CP_NAMESPACE,
                        "resourceVersion": "11", "labels": {"app": "dapr-sentry"}}})
}

fn complete_secret(ca: &(String, String, String)) -> Value {
    secret(
        json!({"ca.crt": b64(ca.0.as_bytes()), "issuer.crt": b64(ca.1.as_bytes()),
                  "issuer.key": b64(ca.2.as_bytes())}),
    )
}

fn config_map(data: Option<Value>) -> Value {
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "dapr-trust-bundle", "namespace": CP_NAMESPACE,
                                     "resourceVersion": "12", "labels": {"app": "dapr-sentry"}}});
    if let Some(data) = data {
        cm["data"] = data;
    }
    cm
}

async fn load(
    handle: &mut Handle,
    client: &Client,
    paths: &CredentialPaths,
    calls: Vec<Call>,
) -> (Result<(RawCredentials, Origin), Error>, Vec<Value>) {
    exchange(
        handle,
        calls,
        load_or_generate_bundle(client, CP_NAMESPACE, paths, "cluster.local", SKEW),
    )
    .await
}

#[tokio::test]
async fn an_empty_secret_and_config_map_get_a_generated_ca_written_to_both() {
    let (client, mut handle) = kube_mock::client();
    let paths = default_paths();
    let (result, bodies) = load(
        &mut handle,
        &client,
        &paths,
        vec![
            call(Method::GET, SECRET_PATH, ok(empty_secret())),
            call(Method::GET, CONFIG_MAP_PATH, ok(config_map(None))),
            call(Method::PUT, SECRET_PATH, Reply::Echo),
            call(Method::PUT, CONFIG_MAP_PATH, Reply::Echo),
        ],
    )
    .await;
    drop(client);
    no_more_calls(handle).await;

    let (raw, origin) = result.unwrap();
    assert_eq!(origin, Origin::Generated);
    // What was returned is a usable CA: root, issuer signed by it, matching key.
    let bundle = raw.to_bundle(&paths, SystemTime::now()).unwrap();
    assert_eq!(bundle.trust_anchors_pem().as_bytes(), raw.trust_anchors);

    let stored = &bodies[2];
    assert_eq!(stored["kind"], "Secret");
    assert_eq!(stored["metadata"]["name"], "dapr-trust-bundle");
    assert_eq!(
        stored["metadata"]["resourceVersion"], "11",
        "the update is conditional on the version read"
    );
    assert_eq!(stored["metadata"]["labels"], json!({"app": "dapr-sentry"}));
    let data = stored["data"].as_object().unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["ca.crt", "issuer.crt", "issuer.key"]
    );
    assert_eq!(unb64(&data["ca.crt"]), raw.trust_anchors);
    assert_eq!(unb64(&data["issuer.crt"]), raw.issuer_chain);
    assert_eq!(unb64(&data["issuer.key"]), raw.issuer_key);
    assert!(
        String::from_utf8(raw.issuer_key.clone())
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );

    let published = &bodies[3];
    assert_eq!(published["kind"], "ConfigMap");
    assert_eq!(published["metadata"]["resourceVersion"], "12");
    assert_eq!(
        published["data"],
        json!({"ca.crt": String::from_utf8(raw.trust_anchors.clone()).unwrap()}),
        "the ConfigMap carries the same roots and nothing secret"
    );
}

#[tokio::test]
async fn a_complete_secret_and_matching_config_map_cause_no_write() {
    let ca = real_ca();
    let (client, mut handle) = kube_mock::client();
    let (result, _) = load(
        &mut handle,
        &client,
        &default_paths(),
        vec![
            call(Method::GET, SECRET_PATH, ok(complete_secret(&ca))),
            call(
                Method::GET,
                CONFIG_MAP_PATH,
                ok(config_map(Some(json!({"ca.crt": ca.0})))),
            ),
        ],
    )
    .await;
    drop(client);
    no_more_calls(handle).await;

    let (raw, origin) = result.unwrap();
    assert_eq!(origin, Origin::Loaded);
    assert_eq!(raw.trust_anchors, ca.0.as_bytes());
    assert_eq!(raw.issuer_chain, ca.1.as_bytes());
    assert_eq!(raw.issuer_key, ca.2.as_bytes());
    raw.to_bundle(&default_paths(), SystemTime::now()).unwrap();
}

#[tokio::test]
async fn a_complete_secret_wins_and_only_a_stale_or_missing_config_map_is_rewritten() {
    let ca = real_ca();
    let (other_root, _, _) = real_ca();
    for (what, current) in [
        (
            "differing",
            config_map(Some(
                json!({"ca.crt": other_root, "jwks.json": "{\"keys\":[]}"}),
            )),
        ),
        ("missing", config_map(None)),
        (
            "empty",
            config_map(Some(json!({"jwks.json": "{\"keys\":[]}"}))),
        ),
    ] {
        let (client, mut handle) = kube_mock::client();
        let (result, bodies) = load(
            &mut handle,
            &client,
            &default_paths(),
            vec![
                call(Method::GET, SECRET_PATH, ok(complete_secret(&ca))),
                call(Method::GET, CONFIG_MAP_PATH, ok(current.clone())),
                call(Method::PUT, CONFIG_MAP_PATH, Reply::Echo),
            ],
        )
        .await;
        drop(client);
        no_more_calls(handle).await;

        let (raw, origin) = result.unwrap();
        assert_eq!(origin, Origin::Loaded, "{what}");
        assert_eq!(raw.trust_anchors, ca.0.as_bytes(), "{what}");
        let mut expected = current["data"].clone();
        if expected.is_null() {
            expected = json!({});
        }
        expected["ca.crt"] = json!(ca.0);
        assert_eq!(
            bodies[2]["data"], expected,
            "{what}: ca.crt comes from the Secret, other keys are kept"
        );
        assert_eq!(bodies[2]["metadata"]["resourceVersion"], "12", "{what}");
    }
}

#[tokio::test]
async fn the_keys_are_the_basenames_of_the_configured_credential_files() {
    let ca = real_ca();
    let paths = paths("root.pem", "chain.pem", "signing.key");
    let (client, mut handle) = kube_mock::client();
    let stored = secret(json!({
        "root.pem": b64(ca.0.as_bytes()), "chain.pem": b64(ca.1.as_bytes()),
        "signing.key": b64(ca.2.as_bytes()),
        // Upstream's default names mean nothing here.
        "ca.crt": b64(b"not the root")
    }));
    let (result, bodies) = load(
        &mut handle,
        &client,
        &paths,
        vec![
            call(Method::GET, SECRET_PATH, ok(stored)),
            call(
                Method::GET,
                CONFIG_MAP_PATH,
                ok(config_map(Some(json!({"ca.crt": ca.0})))),
            ),
            call(Method::PUT, CONFIG_MAP_PATH, Reply::Echo),
        ],
    )
    .await;
    drop(client);
    no_more_calls(handle).await;
    let (raw, origin) = result.unwrap();
    assert_eq!(origin, Origin::Loaded);
    assert_eq!(raw.trust_anchors, ca.0.as_bytes());
    assert_eq!(raw.issuer_key, ca.2.as_bytes());
    assert_eq!(
        bodies[2]["data"],
        json!({"ca.crt": ca.0, "root.pem": ca.0}),
        "the roots are published under the configured name"
    );
}

#[tokio::test]
async fn a_partial_secret_is_refused_naming_the_missing_keys_and_nothing_is_written() {
    let ca = real_ca();
    let (client, mut handle) = kube_mock::client();
    let (result, _) = load(
        &mut handle,
        &client,
        &default_paths(),
        vec![
            call(
                Method::GET,
                SECRET_PATH,
                ok(secret(
                    json!({"ca.crt": b64(ca.0.as_bytes()), "issuer.key": ""}),
                )),
            ),
            call(Method::GET, CONFIG_MAP_PATH, ok(config_map(None))),
        ],
    )
    .await;
    drop(client);
    no_more_calls(handle).await;
    match result {
        Err(Error::Credentials { path, reason }) => {
            assert_eq!(path, PathBuf::from("Secret dapr-system/dapr-trust-bundle"));
            assert!(
                reason.contains("missing issuer.crt, issuer.key"),
                "{reason}"
            );
        }
        other => panic!("expected Error::Credentials, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_secret_or_config_map_is_a_clear_error() {
    let (client, mut handle) = kube_mock::client();
    let (result, _) = load(
        &mut handle,
        &client,
        &default_paths(),
        vec![call(
            Method::GET,
            SECRET_PATH,
            not_found("secrets", "dapr-trust-bundle"),
        )],
    )
    .await;
    match result {
        Err(e @ Error::NoTrustBundle { kind: "Secret", .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("dapr-system/dapr-trust-bundle")
                    && message.contains("the chart creates it"),
                "{message}"
            );
        }
        other => panic!("expected Error::NoTrustBundle for the Secret, got {other:?}"),
    }

    let (result, _) = load(
        &mut handle,
        &client,
        &default_paths(),
        vec![
            call(Method::GET, SECRET_PATH, ok(empty_secret())),
            call(
                Method::GET,
                CONFIG_MAP_PATH,
                not_found("configmaps", "dapr-trust-bundle"),
            ),
        ],
    )
    .await;
    match result {
        Err(Error::NoTrustBundle {
            kind: "ConfigMap",
            namespace,
        }) => assert_eq!(namespace, "dapr-system"),
        other => panic!("expected Error::NoTrustBundle for the ConfigMap, got {other:?}"),
    }
    drop(client);
    no_more_calls(handle).await;
}

#[tokio::test]
async fn a_forbidden_secret_read_is_reported_with_the_api_servers_reason() {
    let (client, mut handle) = kube_mock::client();
    let (result, _) = load(
        &mut handle,
        &client,
        &default_paths(),
        vec![call(
            Method::GET,
            SECRET_PATH,
            api_status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "secrets \"dapr-trust-bundle\" is forbidden: User \
                 \"system:serviceaccount:dapr-system:dapr-sentry\" cannot get resource \"secrets\"",
            ),
        )],
    )
    .await;
    drop(client);
    no_more_calls(handle).await;
    match result {
        Err(Error::KubeApi { what, source }) => {
            assert_eq!(what, "reading the trust bundle Secret");
            let message = source.to_string();
            assert!(
                message.contains("is forbidden")
                    && message.contains("cannot get resource \"secrets\""),
                "{message}"
            );
        }
        other => panic!("expected Error::KubeApi, got {other:?}"),
    }
}

#[tokio::test]
async fn a_conflicting_secret_update_fails_and_leaves_the_config_map_alone() {
    // Another sentry replica stored its CA first: this one must not publish its own roots.
    let (client, mut handle) = kube_mock::client();
    let (result, _) = load(
        &mut handle,
        &client,
        &default_paths(),
        vec![
            call(Method::GET, SECRET_PATH, ok(empty_secret())),
            call(Method::GET, CONFIG_MAP_PATH, ok(config_map(None))),
            call(
                Method::PUT,
                SECRET_PATH,
                api_status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "Operation cannot be fulfilled on secrets \"dapr-trust-bundle\": the object \
                     has been modified; please apply your changes to the latest version and try again",
                ),
            ),
        ],
    )
    .await;
    drop(client);
    no_more_calls(handle).await;
    match result {
        Err(Error::KubeApi { what, source }) => {
            assert_eq!(what, "storing the generated CA in the Secret");
            let message = source.to_string();
            assert!(
                message.contains("the object has been modified"),
                "{message}"
            );
        }
        other => panic!("expected Error::KubeApi, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The `kubernetes` validator: TokenReview, pod, Configuration.

const SENTRY_SPIFFE_ID: &str = "spiffe://cluster.local/ns/dapr-system/dapr-sentry";

fn validator(client: Client) -> KubernetesValidator {
    let sentry_id = SpiffeId::new("cluster.local", CP_NAMESPACE, "dapr-sentry").unwrap();
    KubernetesValidator::new(client, &sentry_id, CP_NAMESPACE)
}

/// A projected service-account token as the kubelet mounts it (the signature is never checked
/// by sentry: the TokenReview vouches for the token).
fn token(namespace: &str, pod: &str, service_account: &str) -> String {
    token_expiring(namespace, pod, service_account, 4_102_444_800)
}

/// [`token`] with `exp` at `exp` (seconds since the epoch).
fn token_expiring(namespace: &str, pod: &str, service_account: &str, exp: u64) -> String {
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let claims = json!({
        "aud": ["dapr.io/sentry", SENTRY_SPIFFE_ID],
        "exp": exp, "iat": 1_767_225_600_u64,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": pod, "uid": POD_UID},
            "serviceaccount": {"name": service_account, "uid": "8c1f6d0e-2a7b-4d39-a0a5-5b2e1d9c3f20"}
        },
        "nbf": 1_767_225_600_u64,
        "sub": format!("system:serviceaccount:{namespace}:{service_account}")
    });
    format!(
        "{}.{}.{}",
        enc(br#"{"alg":"RS256","kid":"k8s-signing-key"}"#),
        enc(claims.to_string().as_bytes()),
        enc(b"signature")
    )
}

/// A real CSR, as daprd sends it: fresh Ed25519 key, empty subject.
fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    sentry::ca::Csr::from_pem(pem.as_bytes()).unwrap();
    pem.into_bytes()
}

fn sign_request(id: &str, namespace: &str, token: &str) -> SignCertificateRequest {
    SignCertificateRequest {
        id: id.to_owned(),
        token: token.to_owned(),
        namespace: namespace.to_owned(),
        certificate_signing_request: csr().into(),
        token_validator: TokenValidator::Kubernetes as i32,
        ..Default::default()
    }
}

fn review_ok(username: &str) -> Reply {
    Reply::Json(
        StatusCode::CREATED,
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "metadata": {"creationTimestamp": null}, "spec": {},
               "status": {"authenticated": true, "audiences": ["dapr.io/sentry"],
                          "user": {"username": username, "uid": "8c1f6d0e",
                                   "groups": ["system:serviceaccounts",
                                              "system:serviceaccounts:apps",
                                              "system:authenticated"]}}}),
    )
}

fn review_refused(error: &str) -> Reply {
    Reply::Json(
        StatusCode::CREATED,
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "metadata": {"creationTimestamp": null}, "spec": {},
               "status": {"user": {}, "error": error}}),
    )
}

fn pod(namespace: &str, name: &str, service_account: &str, annotations: Value) -> Reply {
    ok(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": POD_UID,
                     "annotations": annotations},
        "spec": {"serviceAccountName": service_account,
                 "containers": [{"name": "app", "image": "orders:1"}]}
    }))
}

fn configuration(namespace: &str, name: &str, spec: Value) -> Reply {
    ok(
        json!({"apiVersion": "dapr.io/v1alpha1", "kind": "Configuration",
              "metadata": {"name": name, "namespace": namespace}, "spec": spec}),
    )
}

fn pod_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

fn configuration_path(namespace: &str, name: &str) -> String {
    format!("/apis/dapr.io/v1alpha1/namespaces/{namespace}/configurations/{name}")
}

const ORDERS_POD: &str = "orders-7d9f8b6c5-x2x4q";
/// The UID of every mocked pod, and of the pod every mocked token is bound to.
const POD_UID: &str = "0d4e9a42-6f0e-4c5e-9b53-1b1f4a2f7c11";

fn orders_token() -> String {
    token("apps", ORDERS_POD, "orders-sa")
}

fn review_call(reply: Reply) -> Call {
    call(Method::POST, TOKEN_REVIEWS_PATH, reply)
}

fn orders_review() -> Call {
    review_call(review_ok("system:serviceaccount:apps:orders-sa"))
}

fn orders_pod_call(annotations: Value) -> Call {
    call(
        Method::GET,
        &pod_path("apps", ORDERS_POD),
        pod("apps", ORDERS_POD, "orders-sa", annotations),
    )
}

/// Runs one validation of `req` against `calls` on a fresh mock, and checks nothing else was
/// asked of the API.
async fn validate_once(
    req: &SignCertificateRequest,
    calls: Vec<Call>,
) -> (Result<sentry::validator::Validated, Error>, Vec<Value>) {
    let (client, mut handle) = kube_mock::client();
    let validator = validator(client);
    let outcome = exchange(&mut handle, calls, validator.validate(req)).await;
    drop(validator);
    no_more_calls(handle).await;
    outcome
}

#[tokio::test]
async fn a_pod_asking_for_its_own_app_id_gets_the_public_trust_domain() {
    let token = orders_token();
    let (result, bodies) = validate_once(
        &sign_request("orders", "apps", &token),
        vec![
            orders_review(),
            orders_pod_call(json!({"dapr.io/app-id": "orders", "dapr.io/enabled": "true"})),
        ],
    )
    .await;
    assert_eq!(result.unwrap().trust_domain, "public");

    let review = &bodies[0];
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(review["kind"], "TokenReview");
    assert_eq!(review["spec"]["token"], token);
    assert_eq!(
        review["spec"]["audiences"],
        json!(["dapr.io/sentry", SENTRY_SPIFFE_ID])
    );
    assert_eq!(bodies[1], Value::Null, "a GET has no body");
}

#[tokio::test]
async fn a_pod_without_an_app_id_annotation_may_ask_for_its_name() {
    let (result, _) = validate_once(
        &sign_request(ORDERS_POD, "apps", &orders_token()),
        vec![orders_review(), orders_pod_call(json!({}))],
    )
    .await;
    assert_eq!(result.unwrap().trust_domain, "public");
}

#[tokio::test]
async fn the_trust_domain_comes_from_the_pods_configuration() {
    let annotations = json!({"dapr.io/app-id": "orders", "dapr.io/config": "appconfig"});
    let (result, _) = validate_once(
        &sign_request("orders", "apps", &orders_token()),
        vec![
            orders_review(),
            orders_pod_call(annotations.clone()),
            call(
                Method::GET,
                &configuration_path("apps", "appconfig"),
                configuration(
                    "apps",
                    "appconfig",
                    json!({"accessControl": {"defaultAction": "deny", "trustDomain": "shop.example"}}),
                ),
            ),
        ],
    )
    .await;
    assert_eq!(result.unwrap().trust_domain, "shop.example");

    // A Configuration without a trust domain, or none at all (upstream denies the latter; here
    // the workload keeps the default), means `public`.
    for (what, reply) in [
        (
            "no accessControl",
            configuration(
                "apps",
                "appconfig",
                json!({"tracing": {"samplingRate": "1"}}),
            ),
        ),
        (
            "empty trustDomain",
            configuration(
                "apps",
                "appconfig",
                json!({"accessControl": {"trustDomain": ""}}),
            ),
        ),
        ("missing", not_found("configurations.dapr.io", "appconfig")),
    ] {
        let (result, _) = validate_once(
            &sign_request("orders", "apps", &orders_token()),
            vec![
                orders_review(),
                orders_pod_call(annotations.clone()),
                call(Method::GET, &configuration_path("apps", "appconfig"), reply),
            ],
        )
        .await;
        assert_eq!(result.unwrap().trust_domain, "public", "{what}");
    }
}

#[tokio::test]
async fn an_empty_config_annotation_means_no_configuration() {
    // The injector passes no --config for an empty annotation; sentry must not look one up
    // (an empty name cannot even be requested).
    let (result, _) = validate_once(
        &sign_request("orders", "apps", &orders_token()),
        vec![
            orders_review(),
            orders_pod_call(json!({"dapr.io/app-id": "orders", "dapr.io/config": ""})),
        ],
    )
    .await;
    assert_eq!(result.unwrap().trust_domain, "public");
}

#[tokio::test]
async fn a_configuration_trust_domain_that_is_no_spiffe_trust_domain_is_refused() {
    let (result, _) = validate_once(
        &sign_request("orders", "apps", &orders_token()),
        vec![
            orders_review(),
            orders_pod_call(json!({"dapr.io/app-id": "orders", "dapr.io/config": "appconfig"})),
            call(
                Method::GET,
                &configuration_path("apps", "appconfig"),
                configuration(
                    "apps",
                    "appconfig",
                    json!({"accessControl": {"trustDomain": "Shop.Example"}}),
                ),
            ),
        ],
    )
    .await;
    let reason = denied_reason(result);
    assert!(
        reason.contains("apps/appconfig") && reason.contains("\"Shop.Example\""),
        "{reason}"
    );
}

#[tokio::test]
async fn an_unauthenticated_token_is_denied_with_the_reviews_error_and_not_cached() {
    let error = "[invalid bearer token, service account token has been invalidated]";
    let (client, mut handle) = kube_mock::client();
    let validator = validator(client);
    let req = sign_request("orders", "apps", &orders_token());
    // A refusal is not remembered: the same token is reviewed again.
    for _ in 0..2 {
        let (result, _) = exchange(
            &mut handle,
            vec![review_call(review_refused(error))],
            validator.validate(&req),
        )
        .await;
        let reason = denied_reason(result);
        assert!(
            reason.contains("not authenticated") && reason.contains(error),
            "{reason}"
        );
    }
    drop(validator);
    no_more_calls(handle).await;
}

#[tokio::test]
async fn a_token_of_another_namespace_is_denied_without_reading_a_pod() {
    let (result, _) = validate_once(
        &sign_request("orders", "apps", &token("billing", ORDERS_POD, "orders-sa")),
        vec![review_call(review_ok(
            "system:serviceaccount:billing:orders-sa",
        ))],
    )
    .await;
    let reason = denied_reason(result);
    assert!(
        reason.contains("namespace billing") && reason.contains("the request for apps"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_pod_running_as_another_service_account_is_denied() {
    let (result, _) = validate_once(
        &sign_request("orders", "apps", &orders_token()),
        vec![
            orders_review(),
            call(
                Method::GET,
                &pod_path("apps", ORDERS_POD),
                pod(
                    "apps",
                    ORDERS_POD,
                    "checkout-sa",
                    json!({"dapr.io/app-id": "orders"}),
                ),
            ),
        ],
    )
    .await;
    let reason = denied_reason(result);
    assert!(
        reason.contains("runs as service account checkout-sa")
            && reason.contains("the token is for orders-sa"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_pod_asking_for_another_app_id_is_denied() {
    let (result, _) = validate_once(
        &sign_request("orders", "apps", &orders_token()),
        vec![
            orders_review(),
            orders_pod_call(json!({"dapr.io/app-id": "checkout"})),
        ],
    )
    .await;
    let reason = denied_reason(result);
    assert!(
        reason.contains(r#"may ask for the id "checkout", not "orders""#),
        "{reason}"
    );
}

#[tokio::test]
async fn a_token_whose_pod_is_gone_is_denied_naming_the_pod() {
    let (result, _) = validate_once(
        &sign_request("orders", "apps", &orders_token()),
        vec![
            orders_review(),
            call(
                Method::GET,
                &pod_path("apps", ORDERS_POD),
                not_found("pods", ORDERS_POD),
            ),
        ],
    )
    .await;
    let reason = denied_reason(result);
    assert!(
        reason.contains(&format!("pod apps/{ORDERS_POD} not found")),
        "{reason}"
    );
}

#[tokio::test]
async fn a_token_that_is_not_a_service_accounts_is_denied() {
    for username in ["system:node:worker-1", "alice@example.com", ""] {
        let (result, _) = validate_once(
            &sign_request("orders", "apps", &orders_token()),
            vec![review_call(review_ok(username))],
        )
        .await;
        let reason = denied_reason(result);
        assert!(
            reason.contains("not a service account") && reason.contains(username),
            "{username}: {reason}"
        );
    }
}

#[tokio::test]
async fn a_token_not_bound_to_a_pod_is_denied_after_the_review() {
    let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    // A legacy (Secret-based) service-account token: authenticated, but names no pod.
    let legacy = format!(
        "{}.{}.sig",
        enc(br#"{"alg":"RS256"}"#),
        enc(json!({"kubernetes.io": {"namespace": "apps"}})
            .to_string()
            .as_bytes())
    );
    let (result, _) = validate_once(
        &sign_request("orders", "apps", &legacy),
        vec![orders_review()],
    )
    .await;
    let reason = denied_reason(result);
    assert!(reason.contains("not bound to a pod"), "{reason}");
}

#[tokio::test]
async fn a_control_plane_pod_gets_sentrys_trust_domain() {
    let injector_pod = "dapr-sidecar-injector-5f7c9d8b4-kq2vn";
    let (result, _) = validate_once(
        &sign_request(
            "dapr-injector",
            CP_NAMESPACE,
            &token(CP_NAMESPACE, injector_pod, "dapr-injector"),
        ),
        vec![
            review_call(review_ok("system:serviceaccount:dapr-system:dapr-injector")),
            call(
                Method::GET,
                &pod_path(CP_NAMESPACE, injector_pod),
                // The Configuration annotation is not consulted for the control plane.
                pod(
                    CP_NAMESPACE,
                    injector_pod,
                    "dapr-injector",
                    json!({"dapr.io/control-plane": "injector", "dapr.io/config": "daprsystem"}),
                ),
            ),
        ],
    )
    .await;
    assert_eq!(result.unwrap().trust_domain, "cluster.local");
}

#[tokio::test]
async fn a_control_plane_annotation_outside_the_control_plane_namespace_is_denied() {
    let (result, _) = validate_once(
        &sign_request("dapr-injector", "apps", &orders_token()),
        vec![
            orders_review(),
            orders_pod_call(json!({"dapr.io/control-plane": "injector"})),
        ],
    )
    .await;
    let reason = denied_reason(result);
    assert!(
        reason.contains("control-plane pods must run in dapr-system, not apps"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_reviewed_token_is_not_reviewed_again_within_the_cache_ttl() {
    let (client, mut handle) = kube_mock::client();
    let validator = validator(client);
    let req = sign_request("orders", "apps", &orders_token());
    let annotations = json!({"dapr.io/app-id": "orders"});

    let (first, _) = exchange(
        &mut handle,
        vec![orders_review(), orders_pod_call(annotations.clone())],
        validator.validate(&req),
    )
    .await;
    assert_eq!(first.unwrap().trust_domain, "public");

    // Same token: the pod is still read (it may be gone), the TokenReview is not repeated.
    let (second, _) = exchange(
        &mut handle,
        vec![orders_pod_call(annotations.clone())],
        validator.validate(&req),
    )
    .await;
    assert_eq!(second.unwrap().trust_domain, "public");

    // The cache is per token: a renewed token is reviewed.
    let mut renewed = req.clone();
    renewed.token = token("apps", "orders-7d9f8b6c5-r8m2p", "orders-sa");
    let (third, _) = exchange(
        &mut handle,
        vec![
            orders_review(),
            call(
                Method::GET,
                &pod_path("apps", "orders-7d9f8b6c5-r8m2p"),
                pod("apps", "orders-7d9f8b6c5-r8m2p", "orders-sa", annotations),
            ),
        ],
        validator.validate(&renewed),
    )
    .await;
    assert_eq!(third.unwrap().trust_domain, "public");

    drop(validator);
    no_more_calls(handle).await;
}

#[tokio::test]
async fn a_failing_token_review_is_an_internal_error_not_a_denial() {
    let (result, _) = validate_once(
        &sign_request("orders", "apps", &orders_token()),
        vec![review_call(api_status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "tokenreviews.authentication.k8s.io is forbidden: User \
             \"system:serviceaccount:dapr-system:dapr-sentry\" cannot create resource \"tokenreviews\"",
        ))],
    )
    .await;
    match result {
        Err(Error::KubeApi { what, source }) => {
            assert_eq!(what, "TokenReview failed");
            let message = source.to_string();
            assert!(message.contains("cannot create resource"), "{message}");
        }
        other => panic!("expected Error::KubeApi, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_requests_are_denied_before_the_api_is_asked() {
    for (req, reason) in [
        (
            sign_request("orders.v1", "apps", &orders_token()),
            "must not contain dots",
        ),
        (sign_request("orders", "apps", ""), "token is required"),
        (
            sign_request("orders", "", &orders_token()),
            "namespace is required",
        ),
    ] {
        let (result, _) = validate_once(&req, vec![]).await;
        let denied = denied_reason(result);
        assert!(denied.contains(reason), "{reason}: {denied}");
    }
}

#[tokio::test]
async fn a_pod_recreated_under_the_token_pods_name_is_denied() {
    // Same name, service account and app id; another UID: the token's pod is gone.
    let replaced = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": ORDERS_POD, "namespace": "apps",
                     "uid": "5e0c1f2a-0000-4000-8000-000000000001",
                     "annotations": {"dapr.io/app-id": "orders"}},
        "spec": {"serviceAccountName": "orders-sa",
                 "containers": [{"name": "app", "image": "orders:1"}]}
    });
    let (result, _) = validate_once(
        &sign_request("orders", "apps", &orders_token()),
        vec![
            orders_review(),
            call(Method::GET, &pod_path("apps", ORDERS_POD), ok(replaced)),
        ],
    )
    .await;
    let reason = denied_reason(result);
    assert!(
        reason.contains("is not the pod the token was issued for"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_review_is_not_reused_past_the_tokens_expiry() {
    let (client, mut handle) = kube_mock::client();
    let validator = validator(client);
    // Already expired by its own claim (the mocked API server vouches for it anyway): the
    // answer may not be reused, so each validation asks again.
    let expired = token_expiring("apps", ORDERS_POD, "orders-sa", 1_767_225_700);
    let req = sign_request("orders", "apps", &expired);
    let annotations = json!({"dapr.io/app-id": "orders"});
    for _ in 0..2 {
        let (result, _) = exchange(
            &mut handle,
            vec![orders_review(), orders_pod_call(annotations.clone())],
            validator.validate(&req),
        )
        .await;
        assert_eq!(result.unwrap().trust_domain, "public");
    }
    drop(validator);
    no_more_calls(handle).await;
}
