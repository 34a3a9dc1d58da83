//! What a workload sends sentry besides its CSR: the projected token and the number of the
//! validator that checks it (`dapr.proto.sentry.v1.SignCertificateRequest.TokenValidator`).

use dapr_proto::sentry::v1::sign_certificate_request::TokenValidator;

/// Where the injector mounts the projected service-account token for sentry
/// (upstream: pkg/injector/patcher/sidecar_container.go).
pub const SENTRY_TOKEN_DIR: &str = "/var/run/secrets/dapr.io/sentrytoken";
/// The token file in [`SENTRY_TOKEN_DIR`].
pub const SENTRY_TOKEN_PATH: &str = "/var/run/secrets/dapr.io/sentrytoken/token";

/// Token validator numbers of `SignCertificateRequest.TokenValidator`.
pub mod validator {
    use super::TokenValidator;

    /// No validator named: sentry uses its default.
    pub const UNKNOWN: i32 = TokenValidator::Unknown as i32;
    pub const INSECURE: i32 = TokenValidator::Insecure as i32;
    pub const KUBERNETES: i32 = TokenValidator::Kubernetes as i32;
    pub const JWKS: i32 = TokenValidator::Jwks as i32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validator_numbers_are_upstreams() {
        assert_eq!(
            [
                validator::UNKNOWN,
                validator::INSECURE,
                validator::KUBERNETES,
                validator::JWKS
            ],
            [0, 1, 2, 3]
        );
        assert_eq!(
            SENTRY_TOKEN_PATH,
            format!("{SENTRY_TOKEN_DIR}/token"),
            "the token file is in the mounted directory"
        );
    }
}
