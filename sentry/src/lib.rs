//! Sentry, the certificate authority of Dapr's control plane. SPIFFE ids, PEM, the rustls
//! verifiers and the client of `CA/SignCertificate` are the `dapr-identity` crate's, shared with
//! daprd and the injector.
//!
//! [`run`] wires the edges: configuration in, credentials from the [`ca::store`], validators,
//! the gRPC [`server`], the issuer [`rotation`] watcher, and the [`probes`] ports. The signing
//! itself ([`ca::sign`]) is pure.

#![deny(clippy::expect_used)]

pub mod ca;
pub mod config;
mod error;
pub mod kubernetes;
pub mod metrics;
pub mod probes;
pub mod rotation;
pub mod server;
pub mod validator;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

pub use config::Config;
pub use error::Error;

use crate::ca::SignPolicy;
use crate::ca::store::{CaStore, Origin};
use crate::config::Mode;
use crate::metrics::Metrics;
use crate::probes::Health;
use crate::server::{Authority, CaService};
use crate::validator::Validators;
use dapr_identity::spiffe::SpiffeId;

/// The app id sentry's own SVID carries.
pub use dapr_identity::SENTRY_APP_ID;

/// Runs sentry until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    run_until(config, async {
        dapr_process::shutdown_signal().await;
        tracing::info!("shutdown signal received");
    })
    .await
}

/// Runs sentry until `shutdown` completes.
pub async fn run_until(
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        mode = config.mode.as_str(),
        "starting sentry certificate authority"
    );
    // Kubernetes mode: the API client, and the mTLS settings of the `daprsystem` Configuration.
    let client = match config.mode {
        Mode::Standalone => None,
        Mode::Kubernetes => {
            let client = kubernetes::client().await?;
            match kubernetes::configuration(&client, &config.namespace, &config.configuration_name)
                .await?
            {
                Some(configuration) => config.apply_configuration(configuration)?,
                None => tracing::warn!(
                    name = %config.configuration_name,
                    "Configuration not found; using the default mTLS settings"
                ),
            }
            Some(client)
        }
    };

    let metrics = Arc::new(Metrics::new()?);
    let health = Health::default();
    probes::serve_healthz(config.healthz, health.clone()).await?;
    if let Some(addr) = config.metrics {
        probes::serve_metrics(addr, metrics.clone()).await?;
    }

    let sentry_id = SpiffeId::new(&config.trust_domain, &config.namespace, SENTRY_APP_ID)?;
    tracing::info!(trust_domain = %config.trust_domain, id = %sentry_id, "identity");

    let store = CaStore::Files(config.credentials.clone());
    let loaded = if let Some(client) = &client {
        // The bundle is read through the API; later changes arrive in the mounted Secret, which
        // the rotation watcher follows like the files of standalone mode.
        let (raw, origin) = kubernetes::load_or_generate_bundle(
            client,
            &config.namespace,
            &config.credentials,
            &config.trust_domain,
            config.allowed_clock_skew,
        )
        .await?;
        ca::store::LoadedCa {
            bundle: raw.to_bundle(&config.credentials, SystemTime::now())?,
            origin,
            digest: raw.digest(),
        }
    } else {
        let (store, td, ns, skew) = (
            store.clone(),
            config.trust_domain.clone(),
            config.namespace.clone(),
            config.allowed_clock_skew,
        );
        tokio::task::spawn_blocking(move || {
            store.load_or_generate(&td, &ns, skew, SystemTime::now())
        })
        .await??
    };
    match loaded.origin {
        Origin::Generated => tracing::info!(
            dir = %config.credentials.dir.display(),
            "no issuer credentials found: generated a root and an issuer (ECDSA P-256, one year) and stored them"
        ),
        Origin::Loaded => tracing::info!(
            dir = %config.credentials.dir.display(),
            "loaded issuer credentials"
        ),
    }
    tracing::info!(
        algorithm = loaded.bundle.key_algorithm(),
        issuer_expiry = %ca::rfc3339(loaded.bundle.issuer_not_after()),
        workload_cert_ttl = ?config.workload_cert_ttl,
        allowed_clock_skew = ?config.allowed_clock_skew,
        "certificate authority ready"
    );

    let kubernetes_validator = client.map(|client| {
        validator::kubernetes::KubernetesValidator::new(client, &sentry_id, &config.namespace)
    });
    let validators = Arc::new(
        Validators::start(
            &config.validators,
            config.mode,
            &sentry_id,
            kubernetes_validator,
        )
        .await?,
    );
    tracing::info!(validators = %validators.describe(), "token validators enabled");

    let policy = SignPolicy {
        ttl: config.workload_cert_ttl,
        allowed_clock_skew: config.allowed_clock_skew,
    };
    let authority = Arc::new(Authority::new(
        loaded.bundle,
        sentry_id,
        policy,
        metrics.clone(),
        SystemTime::now(),
    )?);

    let listener = dapr_serve::bind(config.listen).map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let when_empty = match config.mode {
        Mode::Standalone => rotation::WhenEmpty::Gone,
        Mode::Kubernetes => rotation::WhenEmpty::NotSyncedYet,
    };
    let watcher = tokio::spawn(rotation::watch(
        store,
        when_empty,
        authority.clone(),
        metrics.clone(),
        loaded.digest,
        rotation::POLL_INTERVAL,
    ));
    tracing::info!(
        address = %listener.local_addr().unwrap_or(config.listen),
        "running gRPC server (TLS)"
    );
    health.set_ready(true);
    let result = server::serve(
        listener,
        CaService::new(authority, validators, metrics),
        shutdown,
    )
    .await;
    health.set_ready(false);
    watcher.abort();
    tracing::info!("sentry stopped");
    result
}
