//! Who may get a certificate: the token validators. `insecure` trusts the request (standalone,
//! on a trusted host); `jwks` wants a JWT signed by a key of a configured JWKS. The
//! `kubernetes` validator (kubernetes mode) checks a projected token with a TokenReview.

pub mod jwks;
pub mod kubernetes;

use std::sync::Arc;

use dapr_proto::sentry::v1::SignCertificateRequest;
use dapr_proto::sentry::v1::sign_certificate_request::TokenValidator;

use crate::Error;
use crate::config::{Mode, ValidatorConfig};
use dapr_identity::spiffe::{DEFAULT_TRUST_DOMAIN, SpiffeId, validate_app_id};

/// What a validator vouches for: the trust domain the certificate is issued in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub trust_domain: String,
}

#[derive(Debug)]
pub enum Validator {
    Insecure,
    Jwks(Arc<jwks::JwksValidator>),
    Kubernetes(Arc<kubernetes::KubernetesValidator>),
}

impl Validator {
    pub fn kind(&self) -> TokenValidator {
        match self {
            Validator::Insecure => TokenValidator::Insecure,
            Validator::Jwks(_) => TokenValidator::Jwks,
            Validator::Kubernetes(_) => TokenValidator::Kubernetes,
        }
    }

    /// Checks the request; a refusal is [`Error::Denied`] with the reason.
    pub async fn validate(&self, req: &SignCertificateRequest) -> Result<Validated, Error> {
        match self {
            Validator::Insecure => common_checks(req),
            Validator::Jwks(jwks) => jwks.validate(req).await,
            Validator::Kubernetes(k8s) => k8s.validate(req).await,
        }
    }
}

/// The enabled validators and the one used when a request names none.
#[derive(Debug)]
pub struct Validators {
    enabled: Vec<Validator>,
    default: Option<TokenValidator>,
}

impl Validators {
    pub fn new(enabled: Vec<Validator>, default: Option<TokenValidator>) -> Self {
        Validators { enabled, default }
    }

    /// Builds the configured validators (loading JWKS sources). Standalone mode enables
    /// `insecure`, as the default, only when nothing else is configured (upstream's rule).
    pub async fn start(
        configs: &[ValidatorConfig],
        mode: Mode,
        sentry_id: &SpiffeId,
        kubernetes: Option<kubernetes::KubernetesValidator>,
    ) -> Result<Self, Error> {
        let mut enabled = Vec::new();
        for config in configs {
            match config {
                ValidatorConfig::Jwks(options) => enabled.push(Validator::Jwks(
                    jwks::JwksValidator::start(options, sentry_id.to_string()).await?,
                )),
            }
        }
        let default = match mode {
            Mode::Standalone if enabled.is_empty() => {
                enabled.push(Validator::Insecure);
                Some(TokenValidator::Insecure)
            }
            Mode::Standalone => None,
            // Kubernetes mode: TokenReview, always enabled and the default (upstream's rule).
            Mode::Kubernetes => {
                let validator = kubernetes.ok_or(Error::NoApiAccess)?;
                enabled.push(Validator::Kubernetes(Arc::new(validator)));
                Some(TokenValidator::Kubernetes)
            }
        };
        Ok(Validators { enabled, default })
    }

    /// The validator for a request's `token_validator` field.
    pub fn select(&self, requested: i32) -> Result<&Validator, Error> {
        let kind = match TokenValidator::try_from(requested) {
            Ok(TokenValidator::Unknown) => self.default.ok_or(Error::NoValidator)?,
            Ok(kind) => kind,
            Err(_) => return Err(Error::ValidatorNotEnabled),
        };
        self.enabled
            .iter()
            .find(|v| v.kind() == kind)
            .ok_or(Error::ValidatorNotEnabled)
    }

    /// Names of the enabled validators, the default marked, for the start-up log.
    pub fn describe(&self) -> String {
        self.enabled
            .iter()
            .map(|v| {
                let name = v.kind().as_str_name().to_ascii_lowercase();
                if Some(v.kind()) == self.default {
                    format!("{name} (default)")
                } else {
                    name
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The checks every validator makes: id non-empty, without dots, at most 64 characters; CSR
/// present; namespace present. Returns the trust domain of the request (`public` if unset).
pub fn common_checks(req: &SignCertificateRequest) -> Result<Validated, Error> {
    let mut problems = Vec::new();
    if let Err(e) = validate_app_id(&req.id) {
        problems.push(e.to_string());
    }
    if req.certificate_signing_request.is_empty() {
        problems.push("CSR is required".to_owned());
    }
    if req.namespace.is_empty() {
        problems.push("namespace is required".to_owned());
    }
    if !problems.is_empty() {
        return Err(Error::Denied(format!(
            "invalid request: {}",
            problems.join("; ")
        )));
    }
    let trust_domain = if req.trust_domain.is_empty() {
        DEFAULT_TRUST_DOMAIN.to_owned()
    } else {
        req.trust_domain.clone()
    };
    if !is_valid_trust_domain(&trust_domain) {
        return Err(Error::Denied(format!(
            "invalid request: trust domain {trust_domain:?} may contain only lowercase letters, \
             digits, '.', '-' and '_'"
        )));
    }
    Ok(Validated { trust_domain })
}

/// Whether `trust_domain` is a SPIFFE trust domain name as upstream accepts it: non-empty,
/// only lowercase letters, digits, '.', '-' and '_'.
pub fn is_valid_trust_domain(trust_domain: &str) -> bool {
    !trust_domain.is_empty()
        && trust_domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, namespace: &str) -> SignCertificateRequest {
        SignCertificateRequest {
            id: id.into(),
            namespace: namespace.into(),
            certificate_signing_request: b"csr".to_vec().into(),
            ..Default::default()
        }
    }

    fn insecure_only() -> Validators {
        Validators::new(vec![Validator::Insecure], Some(TokenValidator::Insecure))
    }

    #[tokio::test]
    async fn insecure_takes_the_trust_domain_from_the_request_defaulting_to_public() {
        let v = Validator::Insecure;
        assert_eq!(
            v.validate(&request("app1", "default"))
                .await
                .unwrap()
                .trust_domain,
            "public"
        );
        let mut req = request("app1", "default");
        req.trust_domain = "example.org".into();
        assert_eq!(v.validate(&req).await.unwrap().trust_domain, "example.org");
    }

    #[tokio::test]
    async fn common_checks_refuse_bad_ids_and_missing_fields_with_every_reason() {
        let cases = [
            (request("", "default"), "must not be empty"),
            (request("a.b", "default"), "must not contain dots"),
            (request(&"a".repeat(65), "default"), "at most 64"),
            (request("app1", ""), "namespace is required"),
        ];
        for (req, reason) in cases {
            let err = Validator::Insecure.validate(&req).await.unwrap_err();
            assert!(matches!(err, Error::Denied(_)), "{err}");
            assert!(err.to_string().starts_with("invalid request: "), "{err}");
            assert!(err.to_string().contains(reason), "{reason}: {err}");
        }
        let mut req = request("", "");
        req.certificate_signing_request = Default::default();
        let err = common_checks(&req).unwrap_err().to_string();
        assert!(
            err.contains("must not be empty")
                && err.contains("CSR is required")
                && err.contains("namespace is required"),
            "{err}"
        );
        let mut req = request("app1", "default");
        req.trust_domain = "Bad/Domain".into();
        assert!(common_checks(&req).is_err());
    }

    #[test]
    fn a_request_without_a_validator_gets_the_default() {
        let v = insecure_only();
        assert_eq!(v.select(0).unwrap().kind(), TokenValidator::Insecure);
        assert_eq!(v.select(1).unwrap().kind(), TokenValidator::Insecure);
    }

    #[test]
    fn validators_that_are_not_enabled_are_refused() {
        let v = insecure_only();
        for requested in [2, 3, 42] {
            assert!(
                matches!(v.select(requested), Err(Error::ValidatorNotEnabled)),
                "{requested}"
            );
        }
    }

    #[test]
    fn without_a_default_a_request_must_name_its_validator() {
        let v = Validators::new(vec![], None);
        assert!(matches!(v.select(0), Err(Error::NoValidator)));
    }

    #[tokio::test]
    async fn standalone_enables_insecure_only_when_nothing_else_is_configured() {
        let id = SpiffeId::new("localhost", "default", "dapr-sentry").unwrap();
        let v = Validators::start(&[], Mode::Standalone, &id, None)
            .await
            .unwrap();
        assert_eq!(v.describe(), "insecure (default)");

        let jwks = ValidatorConfig::Jwks(crate::config::JwksOptions {
            source: r#"{"keys":[]}"#.into(),
            ca_certificate: None,
            min_refresh_interval: crate::config::DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
            request_timeout: crate::config::DEFAULT_JWKS_REQUEST_TIMEOUT,
        });
        let v = Validators::start(&[jwks], Mode::Standalone, &id, None)
            .await
            .unwrap();
        assert_eq!(v.describe(), "jwks");
        assert!(matches!(v.select(0), Err(Error::NoValidator)));
        assert!(matches!(v.select(1), Err(Error::ValidatorNotEnabled)));
        assert_eq!(v.select(3).unwrap().kind(), TokenValidator::Jwks);
    }
}
