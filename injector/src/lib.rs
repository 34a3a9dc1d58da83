//! The sidecar injector: an HTTPS admission webhook that adds a `daprd` container to pods that
//! ask for one (`dapr.io/enabled: "true"`), the `<app-id>-dapr` Service reconciler, upstream's
//! operator API for the sidecars ([`operator`]), and the offline `render` subcommand.
//!
//! Request path: [`webhook`] takes a turn and the body within its limits and decodes the
//! AdmissionReview ([`review`]) → [`admission`] applies upstream's handling order, reading the
//! gate and bounding the cost of the pod before decoding it ([`survey`]), and the allow list
//! ([`authz`]) → [`patch::build`] (pure) turns the pod and its annotations ([`options`]) into
//! JSON-patch ops.

pub mod admission;
pub mod authz;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod names;
pub mod operator;
pub mod options;
pub mod patch;
pub mod quantity;
pub mod reconciler;
pub mod render;
pub mod review;
pub mod survey;
pub mod tls;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;

/// Everything that can stop the injector or a render.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("serving certificate: {0}")]
    Tls(String),
    /// A certificate from sentry, or trust anchors, that could not be had or used.
    #[error("serving certificate: {0}")]
    Identity(#[source] dapr_identity::Error),
    /// An id the flags or environment make that is not a valid SPIFFE id (exit 64, as
    /// [`Error::Config`]).
    #[error("invalid configuration: {0}")]
    InvalidId(#[source] dapr_identity::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("render: {0}")]
    Render(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("operator API server: {0}")]
    OperatorApi(#[source] tonic::transport::Error),
}

/// Flag, environment and id errors exit 64, every other failure 1.
impl dapr_process::ExitStatus for Error {
    fn is_usage(&self) -> bool {
        matches!(self, Error::Config(_) | Error::InvalidId(_))
    }
}

/// How long to wait before retrying a failed caBundle patch, doubling to a minute.
const CA_BUNDLE_RETRY: Duration = Duration::from_secs(1);

/// Runs the injector until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        dapr_process::shutdown_signal().await;
        info!("shutting down");
        signal.cancel();
    });
    serve(config, shutdown).await
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    for warning in &config.warnings {
        warn!("{warning}");
    }
    let metrics = Arc::new(metrics::Metrics::new()?);
    let readiness = Arc::new(webhook::Readiness::default());
    let client = cluster::connect(config.kubeconfig.as_deref()).await?;
    let trust_anchors = watch_trust_anchors(&config);

    let mut authorizer = authz::Authorizer::new(
        config.allowed_service_accounts.clone(),
        config.allowed_service_account_prefixes.clone(),
    );
    let cluster = match &client {
        Some(client) => {
            match cluster::service_account_uids(client, authorizer.accounts_to_resolve()).await {
                Ok(uids) => authorizer = authorizer.with_uids(uids),
                Err(e) => {
                    warn!(error = %e, "cannot resolve allowed ServiceAccount UIDs; matching by name only")
                }
            }
            cluster::ClusterView::Live {
                client: client.clone(),
                control_plane_namespace: config.settings.control_plane_namespace.clone(),
            }
        }
        None => cluster::ClusterView::offline(),
    };

    match &client {
        Some(client) => {
            tokio::spawn(keep_ca_bundle_current(
                client.clone(),
                trust_anchors.clone(),
                readiness.clone(),
                shutdown.clone(),
            ));
        }
        None => readiness
            .webhook_configuration
            .store(true, Ordering::Release),
    }
    if let (Some(client), true) = (&client, config.reconciler_enabled) {
        let mtls_enabled = cluster.mtls_enabled().await;
        let ctx = Arc::new(
            reconciler::Context::new(client.clone(), mtls_enabled)
                .with_configuration_readers(config.configuration_readers),
        );
        tokio::spawn(reconciler::run(ctx, shutdown.clone()));
    }

    if let (Some(client), Some(settings)) = (&client, config.operator_api.clone()) {
        // Bound before the webhook so a taken port fails start-up; served once sentry has
        // issued the `dapr-operator` certificate.
        let listener = bind(settings.addr).await?;
        log_listening("operator-api", &listener);
        let cache = Arc::new(operator::Cache::new());
        tokio::spawn(operator::cache::run(
            client.clone(),
            cache.clone(),
            shutdown.clone(),
        ));
        let (client, anchors, shutdown) = (client.clone(), trust_anchors.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) =
                operator::serve(listener, settings, cache, client, anchors, shutdown).await
            {
                warn!("operator API stopped: {e}");
            }
        });
    }

    let tls_config =
        match tls::server_config(&config.serving_cert, config.reload_interval, &shutdown).await {
            Ok(tls_config) => tls_config,
            // Stopped while waiting for sentry's first certificate: nothing is served yet.
            Err(Error::Identity(dapr_identity::Error::Stopped)) => return Ok(()),
            Err(e) => return Err(e),
        };
    let listener = bind(config.webhook_addr).await?;
    let health_listener = bind(config.healthz_addr).await?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    log_listening("webhook", &listener);
    log_listening("healthz", &health_listener);
    spawn_plain(
        "healthz",
        health_listener,
        webhook::health_router(readiness.clone()),
        shutdown.clone(),
    );
    if let Some(listener) = metrics_listener {
        log_listening("metrics", &listener);
        spawn_plain(
            "metrics",
            listener,
            metrics.clone().router(),
            shutdown.clone(),
        );
    }

    let hook = Arc::new(webhook::Webhook::new(
        admission::Admission {
            settings: config.settings,
            authorizer,
            cluster,
            trust_anchors,
        },
        metrics,
    ));
    readiness.server.store(true, Ordering::Release);
    tls::serve(listener, tls_config, webhook::router(hook), shutdown).await;
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    dapr_serve::bind(addr).map_err(|source| Error::Bind { addr, source })
}

fn log_listening(server: &'static str, listener: &TcpListener) {
    match listener.local_addr() {
        Ok(address) => info!(server, %address, "listening"),
        Err(e) => warn!(server, error = %e, "listening on an unknown address"),
    }
}

fn spawn_plain(
    server: &'static str,
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    let limits = dapr_serve::Limits::DEFAULT;
    tokio::spawn(dapr_serve::serve_plain_http(
        server, listener, router, limits, shutdown,
    ));
}

/// The trust-anchors file as text, kept current; `None` until it could be read.
fn watch_trust_anchors(config: &Config) -> watch::Receiver<Option<String>> {
    let mut files = dapr_identity::files::watch(
        vec![config.trust_anchors_file.clone()],
        config.reload_interval,
    );
    let decode = |contents: &Option<dapr_identity::files::Contents>| {
        contents
            .as_ref()
            .and_then(|c| c.first())
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    };
    let first = decode(&files.borrow_and_update());
    if first.is_none() {
        warn!(
            file = %config.trust_anchors_file.display(),
            "trust anchors not readable yet; pods asking for a sidecar are rejected until they are"
        );
    }
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while files.changed().await.is_ok() {
            let next = decode(&files.borrow_and_update());
            if tx.send(next).is_err() {
                return;
            }
            info!("trust anchors reloaded");
        }
    });
    rx
}

/// Patches the webhook configuration's caBundle at start and on every trust-anchor change,
/// retrying with backoff; readiness follows the first success.
async fn keep_ca_bundle_current(
    client: kube::Client,
    mut anchors: watch::Receiver<Option<String>>,
    readiness: Arc<webhook::Readiness>,
    shutdown: CancellationToken,
) {
    loop {
        let current = anchors.borrow_and_update().clone();
        if let Some(pem) = current {
            let mut delay = CA_BUNDLE_RETRY;
            loop {
                match cluster::patch_ca_bundle(&client, &pem).await {
                    Ok(()) => {
                        info!("webhook configuration caBundle updated");
                        readiness
                            .webhook_configuration
                            .store(true, Ordering::Release);
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?delay, "cannot patch the webhook configuration caBundle")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
        tokio::select! {
            changed = anchors.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}
