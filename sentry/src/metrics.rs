//! Sentry's Prometheus metrics under upstream's names (`dapr_sentry_*`), in the classic text
//! format, with the same crate daprd uses.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Metric names, as upstream's Prometheus exporter writes them.
pub mod name {
    pub const SIGN_REQUEST_RECEIVED: &str = "dapr_sentry_cert_sign_request_received_total";
    pub const SIGN_SUCCESS: &str = "dapr_sentry_cert_sign_success_total";
    pub const SIGN_FAILURE: &str = "dapr_sentry_cert_sign_failure_total";
    pub const SERVERCERT_ISSUE_FAILED: &str = "dapr_sentry_servercert_issue_failed_total";
    pub const ISSUERCERT_CHANGED: &str = "dapr_sentry_issuercert_changed_total";
    pub const ISSUERCERT_EXPIRY: &str = "dapr_sentry_issuercert_expiry_timestamp";
}

/// The one label key, as upstream.
pub const REASON: &str = "reason";

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    sign_requests: IntCounter,
    sign_success: IntCounter,
    sign_failure: IntCounterVec,
    servercert_issue_failed: IntCounterVec,
    issuercert_changed: IntCounter,
    issuercert_expiry: IntGauge,
}

impl Metrics {
    /// Builds the registry; fails only on a duplicate or malformed name, a programming error.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let by_reason = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), &[REASON])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let issuercert_expiry = IntGauge::new(
            name::ISSUERCERT_EXPIRY,
            "The issuer certificate's NotAfter, in seconds since the Unix epoch",
        )?;
        registry.register(Box::new(issuercert_expiry.clone()))?;
        Ok(Metrics {
            sign_requests: counter(
                name::SIGN_REQUEST_RECEIVED,
                "The number of certificate signing requests received",
            )?,
            sign_success: counter(name::SIGN_SUCCESS, "The number of certificates signed")?,
            sign_failure: by_reason(
                name::SIGN_FAILURE,
                "The number of failed certificate signing requests, by reason",
            )?,
            servercert_issue_failed: by_reason(
                name::SERVERCERT_ISSUE_FAILED,
                "The number of failures to issue sentry's own serving certificate",
            )?,
            issuercert_changed: counter(
                name::ISSUERCERT_CHANGED,
                "The number of issuer credential changes picked up",
            )?,
            issuercert_expiry,
            registry,
        })
    }

    pub fn sign_request_received(&self) {
        self.sign_requests.inc();
    }

    pub fn sign_succeeded(&self) {
        self.sign_success.inc();
    }

    pub fn sign_failed(&self, reason: &'static str) {
        self.sign_failure.with_label_values(&[reason]).inc();
    }

    pub fn server_cert_issue_failed(&self, reason: &'static str) {
        self.servercert_issue_failed
            .with_label_values(&[reason])
            .inc();
    }

    pub fn issuer_changed(&self) {
        self.issuercert_changed.inc();
    }

    pub fn set_issuer_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.issuercert_expiry.set(secs);
    }

    /// The exposition text served on the metrics port.
    pub fn encode(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| {
                tracing::warn!("cannot encode metrics: {e}");
                String::new()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_upstreams_names() {
        let m = Metrics::new().unwrap();
        m.sign_request_received();
        m.sign_succeeded();
        m.sign_failed("cert_parse");
        m.server_cert_issue_failed("issue");
        m.issuer_changed();
        m.set_issuer_expiry(UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000));
        let text = m.encode();
        for line in [
            "dapr_sentry_cert_sign_request_received_total 1",
            "dapr_sentry_cert_sign_success_total 1",
            "dapr_sentry_cert_sign_failure_total{reason=\"cert_parse\"} 1",
            "dapr_sentry_servercert_issue_failed_total{reason=\"issue\"} 1",
            "dapr_sentry_issuercert_changed_total 1",
            "dapr_sentry_issuercert_expiry_timestamp 1900000000",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
