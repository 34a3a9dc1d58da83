//! SPIFFE ids of Dapr workloads: `spiffe://<trust-domain>/ns/<namespace>/<app-id>`.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The trust domain a workload gets when nothing else names one.
pub const DEFAULT_TRUST_DOMAIN: &str = "public";

/// The app id sentry's own SVID carries: `spiffe://<cp-trust-domain>/ns/<cp-namespace>/dapr-sentry`
/// is the id every client of `CA/SignCertificate` requires of it.
pub const SENTRY_APP_ID: &str = "dapr-sentry";

/// Longest app id sentry signs for.
pub const MAX_APP_ID_LEN: usize = 64;

/// A workload identity as carried in the URI SAN of its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    app_id: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, app_id: &str) -> Result<Self, Error> {
        let id = || format!("spiffe://{trust_domain}/ns/{namespace}/{app_id}");
        let invalid = |reason| Error::SpiffeId { id: id(), reason };
        if trust_domain.is_empty() || trust_domain.contains('/') {
            return Err(invalid("trust domain must be non-empty and contain no '/'"));
        }
        if namespace.is_empty() || namespace.contains('/') {
            return Err(invalid("namespace must be non-empty and contain no '/'"));
        }
        if app_id.is_empty() || app_id.contains('/') {
            return Err(invalid("app id must be non-empty and contain no '/'"));
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            app_id: app_id.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The path part, `/ns/<namespace>/<app-id>`: what a caller checks on the peer it dialled
    /// (upstream does not check the trust domain there).
    pub fn path(&self) -> String {
        format!("/ns/{}/{}", self.namespace, self.app_id)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/{}",
            self.trust_domain, self.namespace, self.app_id
        )
    }
}

impl FromStr for SpiffeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::SpiffeId {
            id: s.to_owned(),
            reason,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| invalid("must start with spiffe://"))?;
        let mut parts = rest.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(td), Some("ns"), Some(ns), Some(app), None) => SpiffeId::new(td, ns, app),
            _ => Err(invalid(
                "must have the form spiffe://<trust-domain>/ns/<namespace>/<app-id>",
            )),
        }
    }
}

/// Sentry's rules for the id in a signing request: non-empty, no dots, at most 64 characters.
pub fn validate_app_id(id: &str) -> Result<(), Error> {
    let invalid = |reason| Error::AppId {
        id: id.to_owned(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if id.contains('.') {
        return Err(invalid("must not contain dots"));
    }
    if id.len() > MAX_APP_ID_LEN {
        return Err(invalid("must be at most 64 characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spiffe_id_round_trips_through_its_string_form() {
        let id: SpiffeId = "spiffe://public/ns/default/orders".parse().unwrap();
        assert_eq!(id.trust_domain(), "public");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.app_id(), "orders");
        assert_eq!(id.path(), "/ns/default/orders");
        assert_eq!(id.to_string(), "spiffe://public/ns/default/orders");
    }

    #[test]
    fn malformed_spiffe_ids_are_rejected_with_the_reason() {
        for bad in [
            "http://public/ns/default/orders",
            "spiffe://public/default/orders",
            "spiffe://public/ns/default/orders/extra",
            "spiffe:///ns/default/orders",
            "spiffe://public/ns//orders",
            "spiffe://public/ns/default/",
        ] {
            let err = bad.parse::<SpiffeId>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn app_ids_follow_sentrys_rules() {
        assert!(validate_app_id("orders").is_ok());
        assert!(validate_app_id(&"a".repeat(64)).is_ok());
        assert!(validate_app_id("").is_err());
        assert!(validate_app_id("a.b").is_err());
        assert!(validate_app_id(&"a".repeat(65)).is_err());
    }
}
