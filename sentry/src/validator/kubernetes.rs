//! The `kubernetes` validator: a projected service-account token checked with a TokenReview,
//! then the pod it names checked against the request (namespace, app id or control-plane
//! service, trust domain from the pod's Configuration). The decisions ([`expected_identity`],
//! [`token_claims`]) are pure; the API calls around them are thin.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use dapr_proto::sentry::v1::SignCertificateRequest;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use super::{Validated, common_checks, is_valid_trust_domain};
use crate::Error;
use crate::kubernetes::configuration;
use dapr_identity::spiffe::DEFAULT_TRUST_DOMAIN;

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

/// Whether a pod whose expected id is `expected` may ask for `requested`: its own id, or, for
/// our injector (which also serves upstream's operator API, docs/upstream-differences.md),
/// `dapr-operator` as well, the id sidecars expect of the operator.
pub fn may_ask_for(expected: &str, requested: &str) -> bool {
    expected == requested || (expected == "dapr-injector" && requested == "dapr-operator")
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
        sentry_id: &dapr_identity::spiffe::SpiffeId,
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
            .map_err(|source| Error::KubeApi {
                what: "TokenReview failed".into(),
                source,
            })?;
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
            .map_err(|source| Error::KubeApi {
                what: format!("reading pod {}", claims.pod),
                source,
            })?
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
        if !may_ask_for(&expected, &req.id) {
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
    fn the_injector_may_also_ask_for_the_operator_id_and_nobody_else_may() {
        assert!(may_ask_for("orders", "orders"));
        assert!(may_ask_for("dapr-injector", "dapr-injector"));
        assert!(may_ask_for("dapr-injector", "dapr-operator"));
        assert!(!may_ask_for("orders", "dapr-operator"));
        assert!(!may_ask_for("dapr-operator", "dapr-injector"));
        assert!(!may_ask_for("dapr-injector", "dapr-sentry"));
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
