//! Kubernetes mode: the CA lives in the Secret and ConfigMap `dapr-trust-bundle` of sentry's
//! namespace, the mTLS settings in the Configuration `daprsystem`, and workloads prove who they
//! are with projected service-account tokens checked by a TokenReview.
//!
//! The decisions ([`bundle_action`], [`expected_identity`], [`token_claims`]) are pure; the API
//! calls around them are thin.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use dapr_crds::Configuration;
use dapr_proto::sentry::v1::SignCertificateRequest;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, PostParams};

use crate::Error;
use crate::ca::generate;
use crate::ca::store::{Origin, RawCredentials};
use crate::config::CredentialPaths;
use crate::spiffe::DEFAULT_TRUST_DOMAIN;
use crate::validator::{Validated, common_checks, is_valid_trust_domain};

/// Name of the Secret and the ConfigMap holding the trust bundle.
pub const TRUST_BUNDLE: &str = "dapr-trust-bundle";
/// The audience daprd requests its projected token for.
pub const SENTRY_AUDIENCE: &str = "dapr.io/sentry";
/// Control-plane pods carry this annotation with their service name.
const CONTROL_PLANE_ANNOTATION: &str = "dapr.io/control-plane";
const APP_ID_ANNOTATION: &str = "dapr.io/app-id";
const CONFIG_ANNOTATION: &str = "dapr.io/config";
/// Control-plane services that may ask for an identity.
const CONTROL_PLANE_SERVICES: &[&str] =
    &["operator", "placement", "injector", "sentry", "scheduler"];
/// How long a TokenReview answer is reused for the same token: a burst of sidecars retrying,
/// or one renewing, does not cost the API server a review each time (dapr/dapr#4371).
const REVIEW_CACHE_TTL: Duration = Duration::from_secs(60);

fn api_error(what: &str, e: kube::Error) -> Error {
    Error::Serve(format!("{what}: {e}"))
}

/// An API client from the in-cluster environment or `KUBECONFIG`.
pub async fn client() -> Result<kube::Client, Error> {
    kube::Client::try_default().await.map_err(|e| {
        Error::Serve(format!(
            "no Kubernetes API access (in-cluster or KUBECONFIG): {e}"
        ))
    })
}

/// The Configuration sentry reads its mTLS settings from; `None` (defaults) when missing, as
/// upstream.
pub async fn configuration(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Configuration>, Error> {
    Api::<Configuration>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| api_error(&format!("reading Configuration {namespace}/{name}"), e))
}

/// What to do with the trust bundle objects as found.
#[derive(Debug, PartialEq, Eq)]
pub enum BundleAction {
    /// The Secret holds a complete set: use it; `fix_config_map` when the ConfigMap's `ca.crt`
    /// is missing or differs (it is rewritten from the Secret, never the other way round).
    Use { fix_config_map: bool },
    /// The Secret holds nothing yet (as the chart creates it): generate and store a CA.
    Generate,
    /// Some keys are there and some are not: refuse rather than replace what a user put there.
    Incomplete { missing: Vec<String> },
}

/// Upstream regenerates the whole CA whenever the Secret and ConfigMap disagree, which has
/// replaced users' roots and forced restarts (dapr/dapr#9563); here a complete Secret always
/// wins and only the public ConfigMap is brought in line.
pub fn bundle_action(
    secret: &BTreeMap<String, Vec<u8>>,
    config_map_ca: Option<&str>,
    keys: &[String; 3],
) -> BundleAction {
    let present: Vec<bool> = keys
        .iter()
        .map(|k| secret.get(k).is_some_and(|v| !v.is_empty()))
        .collect();
    if present.iter().all(|p| !p) {
        return BundleAction::Generate;
    }
    if present.iter().any(|p| !p) {
        return BundleAction::Incomplete {
            missing: keys
                .iter()
                .zip(&present)
                .filter(|(_, p)| !**p)
                .map(|(k, _)| k.clone())
                .collect(),
        };
    }
    let anchors = secret.get(&keys[0]).map(Vec::as_slice);
    BundleAction::Use {
        fix_config_map: config_map_ca.map(str::as_bytes) != anchors,
    }
}

/// The Secret/ConfigMap keys: the basenames of the configured credential files.
fn keys(paths: &CredentialPaths) -> [String; 3] {
    let name = |p: &std::path::Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    [
        name(&paths.trust_anchors),
        name(&paths.issuer_cert),
        name(&paths.issuer_key),
    ]
}

/// Reads the trust bundle through the API, generating and storing a CA when the Secret is
/// empty and rewriting the ConfigMap from the Secret when they disagree.
pub async fn load_or_generate_bundle(
    client: &kube::Client,
    namespace: &str,
    paths: &CredentialPaths,
    trust_domain: &str,
    allowed_clock_skew: Duration,
) -> Result<(RawCredentials, Origin), Error> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let missing = |kind: &str| {
        Error::Serve(format!(
            "{kind} {namespace}/{TRUST_BUNDLE} does not exist; the chart creates it (empty) before sentry starts"
        ))
    };
    let mut secret = secrets
        .get_opt(TRUST_BUNDLE)
        .await
        .map_err(|e| api_error("reading the trust bundle Secret", e))?
        .ok_or_else(|| missing("Secret"))?;
    let mut config_map = config_maps
        .get_opt(TRUST_BUNDLE)
        .await
        .map_err(|e| api_error("reading the trust bundle ConfigMap", e))?
        .ok_or_else(|| missing("ConfigMap"))?;
    let keys = keys(paths);
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let config_map_ca = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(&keys[0]))
        .map(String::as_str);
    let (raw, origin, fix) = match bundle_action(&data, config_map_ca, &keys) {
        BundleAction::Incomplete { missing } => {
            return Err(Error::Credentials {
                path: format!("Secret {namespace}/{TRUST_BUNDLE}").into(),
                reason: format!(
                    "missing {} while other keys exist; provide all three or none (sentry then generates them), it never overwrites them",
                    missing.join(", ")
                ),
            });
        }
        BundleAction::Use { fix_config_map } => {
            let get = |k: &String| data.get(k).cloned().unwrap_or_default();
            (
                RawCredentials {
                    trust_anchors: get(&keys[0]),
                    issuer_chain: get(&keys[1]),
                    issuer_key: get(&keys[2]),
                },
                Origin::Loaded,
                fix_config_map,
            )
        }
        BundleAction::Generate => {
            let generated = generate(
                trust_domain,
                namespace,
                SystemTime::now(),
                allowed_clock_skew,
            )?;
            let raw = RawCredentials {
                trust_anchors: generated.trust_anchors_pem.into_bytes(),
                issuer_chain: generated.issuer_chain_pem.into_bytes(),
                issuer_key: generated.issuer_key.to_pkcs8_pem().into_bytes(),
            };
            let mut stored = secret.data.take().unwrap_or_default();
            for (key, value) in
                keys.iter()
                    .zip([&raw.trust_anchors, &raw.issuer_chain, &raw.issuer_key])
            {
                stored.insert(key.clone(), ByteString(value.clone()));
            }
            secret.data = Some(stored);
            secrets
                .replace(TRUST_BUNDLE, &PostParams::default(), &secret)
                .await
                .map_err(|e| api_error("storing the generated CA in the Secret", e))?;
            (raw, Origin::Generated, true)
        }
    };
    if fix {
        let anchors = String::from_utf8_lossy(&raw.trust_anchors).into_owned();
        config_map
            .data
            .get_or_insert_with(Default::default)
            .insert(keys[0].clone(), anchors);
        config_maps
            .replace(TRUST_BUNDLE, &PostParams::default(), &config_map)
            .await
            .map_err(|e| api_error("writing the trust anchors to the ConfigMap", e))?;
        tracing::info!("wrote the trust anchors to ConfigMap {namespace}/{TRUST_BUNDLE}");
    }
    Ok((raw, origin))
}

/// What a projected service-account token says about its pod (read without verifying: the
/// TokenReview has vouched for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub namespace: String,
    pub pod: String,
    /// The pod's UID, when the token names it (bound tokens do): a pod of the same name created
    /// later is another pod.
    pub pod_uid: Option<String>,
}

fn claims_json(token: &str) -> Result<serde_json::Value, String> {
    let payload = token.split('.').nth(1).ok_or("the token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("the token's claims are not base64url: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the token's claims are not JSON: {e}"))
}

/// The token's `exp` (seconds since the epoch), if it is readable.
fn token_expiry(token: &str) -> Option<u64> {
    claims_json(token).ok()?["exp"].as_u64()
}

/// The namespace and pod of a bound service-account token (claim `kubernetes.io`).
pub fn token_claims(token: &str) -> Result<TokenClaims, String> {
    let claims = claims_json(token)?;
    let k8s = &claims["kubernetes.io"];
    let namespace = k8s["namespace"]
        .as_str()
        .ok_or("the token names no namespace")?;
    let pod = k8s["pod"]["name"]
        .as_str()
        .ok_or("the token is not bound to a pod (use a projected service-account token)")?;
    Ok(TokenClaims {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        pod_uid: k8s["pod"]["uid"].as_str().map(str::to_owned),
    })
}

/// The id a pod may ask for and whether it is a control-plane service: `dapr-<service>` for a
/// control-plane pod in sentry's namespace, else its `dapr.io/app-id`, else its name.
pub fn expected_identity(
    pod_name: &str,
    pod_namespace: &str,
    annotations: &BTreeMap<String, String>,
    control_plane_namespace: &str,
) -> Result<(String, bool), String> {
    if let Some(service) = annotations.get(CONTROL_PLANE_ANNOTATION) {
        if !CONTROL_PLANE_SERVICES.contains(&service.as_str()) {
            return Err(format!("unknown control-plane service {service:?}"));
        }
        if pod_namespace != control_plane_namespace {
            return Err(format!(
                "control-plane pods must run in {control_plane_namespace}, not {pod_namespace}"
            ));
        }
        if annotations.contains_key(APP_ID_ANNOTATION) {
            return Err("a control-plane pod may not carry dapr.io/app-id".into());
        }
        return Ok((format!("dapr-{service}"), true));
    }
    Ok((
        annotations
            .get(APP_ID_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| pod_name.to_owned()),
        false,
    ))
}

/// The (namespace, service account) a TokenReview vouched for.
type Reviewed = (String, String);

/// The `kubernetes` validator: TokenReview, then the pod, service account and app id checks.
pub struct KubernetesValidator {
    client: kube::Client,
    audiences: Vec<String>,
    control_plane_namespace: String,
    control_plane_trust_domain: String,
    /// SHA-256 of a token → who it was reviewed to be, and until when that answer is reused.
    reviews: Mutex<HashMap<[u8; 32], (Reviewed, Instant)>>,
}

impl std::fmt::Debug for KubernetesValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesValidator")
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl KubernetesValidator {
    pub fn new(
        client: kube::Client,
        sentry_id: &crate::spiffe::SpiffeId,
        control_plane_namespace: &str,
    ) -> Self {
        KubernetesValidator {
            client,
            audiences: vec![SENTRY_AUDIENCE.to_owned(), sentry_id.to_string()],
            control_plane_namespace: control_plane_namespace.to_owned(),
            control_plane_trust_domain: sentry_id.trust_domain().to_owned(),
            reviews: Mutex::new(HashMap::new()),
        }
    }

    /// The reviewed (namespace, service account) of `token`, from the cache or a TokenReview.
    async fn review(&self, token: &str) -> Result<Reviewed, Error> {
        let digest: [u8; 32] = {
            let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        };
        if let Ok(mut reviews) = self.reviews.lock() {
            let now = Instant::now();
            reviews.retain(|_, (_, until)| *until > now);
            if let Some((who, _)) = reviews.get(&digest) {
                return Ok(who.clone());
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(self.audiences.clone()),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Error::Serve(format!("TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Error::Denied(format!(
                "the token was not authenticated: {}",
                status.error.unwrap_or_default()
            )));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let parts: Vec<&str> = username.split(':').collect();
        let who = match parts.as_slice() {
            ["system", "serviceaccount", ns, sa] => ((*ns).to_owned(), (*sa).to_owned()),
            _ => {
                return Err(Error::Denied(format!(
                    "the token belongs to {username:?}, not a service account"
                )));
            }
        };
        // Reused for at most REVIEW_CACHE_TTL, and never past the token's own expiry.
        let lifetime = token_expiry(token).map_or(REVIEW_CACHE_TTL, |exp| {
            (SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .min(REVIEW_CACHE_TTL)
        });
        if let Ok(mut reviews) = self.reviews.lock() {
            reviews.insert(digest, (who.clone(), Instant::now() + lifetime));
        }
        Ok(who)
    }

    pub async fn validate(&self, req: &SignCertificateRequest) -> Result<Validated, Error> {
        common_checks(req)?;
        if req.token.is_empty() {
            return Err(Error::Denied("token is required for TokenReview".into()));
        }
        let (token_namespace, service_account) = self.review(&req.token).await?;
        if token_namespace != req.namespace {
            return Err(Error::Denied(format!(
                "the token is for namespace {token_namespace}, the request for {}",
                req.namespace
            )));
        }
        let claims = token_claims(&req.token).map_err(Error::Denied)?;
        let pod = Api::<Pod>::namespaced(self.client.clone(), &req.namespace)
            .get_opt(&claims.pod)
            .await
            .map_err(|e| Error::Serve(format!("reading pod {}: {e}", claims.pod)))?
            .ok_or_else(|| {
                Error::Denied(format!("pod {}/{} not found", req.namespace, claims.pod))
            })?;
        if let Some(uid) = &claims.pod_uid
            && pod.metadata.uid.as_ref() != Some(uid)
        {
            return Err(Error::Denied(format!(
                "pod {}/{} is not the pod the token was issued for (uid {uid})",
                req.namespace, claims.pod
            )));
        }
        let pod_sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        if pod_sa != service_account {
            return Err(Error::Denied(format!(
                "pod {} runs as service account {pod_sa}, the token is for {service_account}",
                claims.pod
            )));
        }
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let (expected, control_plane) = expected_identity(
            &claims.pod,
            &req.namespace,
            &annotations,
            &self.control_plane_namespace,
        )
        .map_err(Error::Denied)?;
        if expected != req.id {
            return Err(Error::Denied(format!(
                "pod {} may ask for the id {expected:?}, not {:?}",
                claims.pod, req.id
            )));
        }
        let trust_domain = if control_plane {
            self.control_plane_trust_domain.clone()
        } else {
            self.workload_trust_domain(&req.namespace, annotations.get(CONFIG_ANNOTATION))
                .await?
        };
        Ok(Validated { trust_domain })
    }

    /// `spec.accessControl.trustDomain` of the pod's Configuration, else `public`. An empty
    /// `dapr.io/config` names no Configuration (the injector then passes no `--config`); a
    /// trust domain that is not a valid SPIFFE one is refused, as upstream does.
    async fn workload_trust_domain(
        &self,
        namespace: &str,
        config: Option<&String>,
    ) -> Result<String, Error> {
        let Some(name) = config.filter(|name| !name.is_empty()) else {
            return Ok(DEFAULT_TRUST_DOMAIN.to_owned());
        };
        let configuration = configuration(&self.client, namespace, name).await?;
        let trust_domain = configuration
            .and_then(|c| c.spec.access_control)
            .and_then(|a| a.trust_domain)
            .filter(|td| !td.is_empty())
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
        if !is_valid_trust_domain(&trust_domain) {
            return Err(Error::Denied(format!(
                "Configuration {namespace}/{name}: trust domain {trust_domain:?} may contain only \
                 lowercase letters, digits, '.', '-' and '_'"
            )));
        }
        Ok(trust_domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> [String; 3] {
        ["ca.crt".into(), "issuer.crt".into(), "issuer.key".into()]
    }

    fn secret(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn an_empty_secret_gets_a_generated_ca() {
        assert_eq!(
            bundle_action(&secret(&[]), None, &keys()),
            BundleAction::Generate
        );
        assert_eq!(
            bundle_action(&secret(&[("ca.crt", "")]), Some("x"), &keys()),
            BundleAction::Generate
        );
    }

    #[test]
    fn a_complete_secret_wins_and_only_a_differing_config_map_is_rewritten() {
        let full = secret(&[("ca.crt", "ROOT"), ("issuer.crt", "I"), ("issuer.key", "K")]);
        assert_eq!(
            bundle_action(&full, Some("ROOT"), &keys()),
            BundleAction::Use {
                fix_config_map: false
            }
        );
        assert_eq!(
            bundle_action(&full, Some("OTHER ROOT"), &keys()),
            BundleAction::Use {
                fix_config_map: true
            }
        );
        assert_eq!(
            bundle_action(&full, None, &keys()),
            BundleAction::Use {
                fix_config_map: true
            }
        );
    }

    #[test]
    fn a_partial_secret_is_refused_naming_what_is_missing() {
        assert_eq!(
            bundle_action(&secret(&[("ca.crt", "ROOT")]), None, &keys()),
            BundleAction::Incomplete {
                missing: vec!["issuer.crt".into(), "issuer.key".into()]
            }
        );
    }

    fn jwt(claims: &serde_json::Value) -> String {
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            enc(br#"{"alg":"RS256"}"#),
            enc(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn a_bound_token_names_its_namespace_and_pod() {
        let token = jwt(&serde_json::json!({
            "kubernetes.io": {"namespace": "shop", "pod": {"name": "orders-1", "uid": "u"},
                              "serviceaccount": {"name": "orders", "uid": "v"}}
        }));
        assert_eq!(
            token_claims(&token),
            Ok(TokenClaims {
                namespace: "shop".into(),
                pod: "orders-1".into(),
                pod_uid: Some("u".into()),
            })
        );
        let unbound = jwt(&serde_json::json!({"kubernetes.io": {"namespace": "shop"}}));
        assert!(
            token_claims(&unbound)
                .unwrap_err()
                .contains("not bound to a pod")
        );
        assert!(token_claims("garbage").is_err());
    }

    #[test]
    fn the_expected_id_follows_upstreams_rules() {
        let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            expected_identity(
                "p",
                "shop",
                &ann(&[("dapr.io/app-id", "orders")]),
                "dapr-system"
            ),
            Ok(("orders".into(), false))
        );
        assert_eq!(
            expected_identity("orders-7d9f", "shop", &ann(&[]), "dapr-system"),
            Ok(("orders-7d9f".into(), false))
        );
        assert_eq!(
            expected_identity(
                "inj",
                "dapr-system",
                &ann(&[("dapr.io/control-plane", "injector")]),
                "dapr-system"
            ),
            Ok(("dapr-injector".into(), true))
        );
        for (pod_ns, annotations) in [
            ("shop", ann(&[("dapr.io/control-plane", "injector")])),
            (
                "dapr-system",
                ann(&[
                    ("dapr.io/control-plane", "injector"),
                    ("dapr.io/app-id", "x"),
                ]),
            ),
            (
                "dapr-system",
                ann(&[("dapr.io/control-plane", "dashboard")]),
            ),
        ] {
            assert!(
                expected_identity("p", pod_ns, &annotations, "dapr-system").is_err(),
                "{pod_ns} {annotations:?}"
            );
        }
    }
}
