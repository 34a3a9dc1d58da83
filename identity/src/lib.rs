//! Workload identity, the part of Dapr's security that a sidecar and the injector share with
//! sentry: SPIFFE ids ([`spiffe`]), PEM helpers ([`pem`]), the SPIFFE-aware rustls verifiers
//! ([`tls`]), the client of `CA/SignCertificate` ([`client`]), the loop that renews a certificate
//! at half its lifetime ([`renewal`]), the poller of mounted files ([`files`]) and the names
//! every side agrees on ([`token`]). The certificate authority itself (signing, validators, trust-bundle storage)
//! stays in the `sentry` crate, so a sidecar links none of its server dependencies
//! (docs/dependencies.md).
//!
//! Split as linkerd2-proxy splits its identity pieces (linkerd/identity, linkerd/meshtls,
//! linkerd/proxy/identity-client): names and verification here, the CA apart.

#![deny(clippy::expect_used)]

pub mod client;
mod error;
pub mod files;
pub mod pem;
pub mod renewal;
pub mod spiffe;
pub mod time;
pub mod tls;
pub mod token;

pub use error::Error;
pub use spiffe::{SENTRY_APP_ID, SpiffeId};
