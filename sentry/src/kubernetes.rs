//! Kubernetes mode's storage: the CA lives in the Secret and ConfigMap `dapr-trust-bundle` of
//! sentry's namespace, the mTLS settings in the Configuration `daprsystem`. (Workloads prove who
//! they are with a TokenReview: [`crate::validator::kubernetes`].)
//!
//! The decision ([`bundle_action`]) is pure; the API calls around it are thin.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use dapr_crds::Configuration;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};

use crate::Error;
use crate::ca::generate;
use crate::ca::store::{Origin, RawCredentials};
use crate::config::CredentialPaths;

/// Name of the Secret and the ConfigMap holding the trust bundle.
pub const TRUST_BUNDLE: &str = "dapr-trust-bundle";

fn api_error(what: &str, source: kube::Error) -> Error {
    Error::KubeApi {
        what: what.to_owned(),
        source,
    }
}

/// An API client from the in-cluster environment or `KUBECONFIG`.
pub async fn client() -> Result<kube::Client, Error> {
    kube::Client::try_default()
        .await
        .map_err(|e| api_error("no Kubernetes API access (in-cluster or KUBECONFIG)", e))
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
    let missing = |kind: &'static str| Error::NoTrustBundle {
        kind,
        namespace: namespace.to_owned(),
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
}
