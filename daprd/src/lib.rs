//! The Dapr sidecar: the app-facing HTTP and gRPC APIs ([`outbound`]), the peer-facing internal
//! API that calls the local app ([`inbound`]), and name resolution ([`resolve`]).

pub mod apiserver;
pub mod config;
pub mod configuration;
pub mod error;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod operator;
pub mod outbound;
pub mod peer;
pub mod resolve;
pub mod trace;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dapr_proto::runtime::v1::dapr_server::DaprServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::Error;

use inbound::app_channel::AppChannel;
use outbound::invoker::{Caller, Invoker};
use outbound::state::{Health, Shared, Shutdown};

/// The version reported in metadata and logs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Configuration named by `--config` (Kubernetes mode): from the operator when the sidecar
/// has its address and an identity (then changes are followed), else from the API server.
async fn load_configuration(
    config: &mut Config,
    name: &str,
    identity: Option<&identity::Current>,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    match (&config.operator_address, identity, &config.mtls) {
        (Some(address), Some(current), Some(mtls)) => {
            let mut client = operator::client(
                address,
                current.clone(),
                &mtls.control_plane_trust_domain,
                &mtls.control_plane_namespace,
            )?;
            let (configuration, spec) =
                operator::load(&mut client, &config.namespace, name).await?;
            config.configuration = configuration;
            tracing::info!(
                "Loaded Configuration {}/{name} from the operator",
                config.namespace
            );
            tokio::spawn(operator::follow(
                client,
                config.namespace.clone(),
                name.to_owned(),
                spec,
                shutdown.graceful.clone(),
            ));
        }
        _ => {
            config.configuration =
                configuration::load(&config.api_server, &config.namespace, name).await?;
            tracing::info!(
                "Loaded Configuration {}/{name} from the API server",
                config.namespace
            );
        }
    }
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    dapr_serve::bind(addr).map_err(|source| Error::Bind { addr, source })
}

/// Runs the sidecar until SIGTERM/SIGINT or a shutdown request, then drains in-flight calls
/// within the configured grace period.
pub async fn run(mut config: Config) -> Result<(), Error> {
    let started = Instant::now();
    tracing::info!(mode = ?config.mode, app_id = %config.app_id, "starting Dapr Runtime -- version {VERSION}");
    let shutdown = Shutdown::default();
    // The identity comes first: the operator serves the Configuration over mTLS only.
    let identity = match &config.mtls {
        None => {
            tracing::info!("mTLS is disabled. Skipping certificate request and tls validation");
            None
        }
        Some(mtls) => {
            tracing::info!(sentry = %mtls.sentry_address, "mTLS enabled. Creating sidecar authenticator");
            Some(
                identity::start(
                    mtls.clone(),
                    config.namespace.clone(),
                    shutdown.graceful.clone(),
                )
                .await?,
            )
        }
    };
    if let Some(name) = config.configuration_name.clone() {
        load_configuration(&mut config, &name, identity.as_ref(), &shutdown).await?;
    }
    let config = Arc::new(config);

    let resolver = Arc::new(resolve::Resolver::from_config(&config)?);
    tracing::info!("Initialized name resolution to {}", resolver.name());

    let ignored = config.ignored_flags.join(" ");
    if !ignored.is_empty() {
        tracing::info!("accepted for compatibility, no effect in this sidecar: {ignored}");
    }
    let metrics = Arc::new(metrics::Metrics::new(
        &config.app_id,
        config.metrics.is_some(),
    ));
    let shared = Arc::new(Shared {
        invoker: Invoker::new(
            Caller::new(
                &config.app_id,
                &config.namespace,
                &config.hostname,
                resolve::known_address(&config),
            ),
            Arc::clone(&resolver),
        )
        .with_metrics(Arc::clone(&metrics))
        .with_identity(identity.clone()),
        config: Arc::clone(&config),
        health: Health::default(),
        resolver_name: resolver.name(),
        extended: Mutex::new(Default::default()),
        shutdown: shutdown.clone(),
        metrics: Arc::clone(&metrics),
    });

    let internal = inbound::server(&config, &metrics)?;
    let mut servers = JoinSet::new();
    let stop = shutdown.graceful.clone();

    if let Some((ip, port)) = config.metrics {
        let addr = SocketAddr::new(ip, port);
        let listener = bind(addr).await?;
        servers.spawn(serve_http(
            "metrics",
            listener,
            metrics::router(Arc::clone(&metrics)),
            stop.clone(),
        ));
        tracing::info!("metrics server started on {addr}/");
    }

    for ip in &config.api_listen_addresses {
        let addr = SocketAddr::new(*ip, config.grpc_port);
        let listener = bind(addr).await?;
        let service = DaprServer::new(outbound::grpc::DaprApi::new(Arc::clone(&shared)))
            .max_decoding_message_size(config.max_body_size)
            .max_encoding_message_size(usize::MAX);
        // Every other service is proxied to the app named by `dapr-app-id`.
        let routes = tonic::service::Routes::new(service)
            .into_axum_router()
            .route_layer(axum::middleware::map_response(|response| async move {
                outbound::grpc::headers_before_status(response)
            }))
            .fallback({
                let shared = Arc::clone(&shared);
                move |request| outbound::proxy::handle(Arc::clone(&shared), request)
            });
        let stop = stop.clone();
        let layer = metrics::GrpcLayer::new(&metrics);
        let incoming = plaintext("grpc-api", listener, stop.clone());
        servers.spawn(async move {
            grpc_server()
                .layer(layer)
                .add_routes(tonic::service::Routes::from(routes))
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
                .map_err(|e| format!("gRPC API server on {addr}: {e}"))
        });
        tracing::info!("gRPC API server listening on {addr}");
    }
    for ip in &config.api_listen_addresses {
        let addr = SocketAddr::new(*ip, config.http_port);
        let listener = bind(addr).await?;
        let router = outbound::http::router(Arc::clone(&shared));
        servers.spawn(serve_http("http-api", listener, router, stop.clone()));
        tracing::info!("HTTP server listening on {addr}");
    }
    if let Some(port) = config.public_port {
        let addr = SocketAddr::new(config.public_listen_address, port);
        let listener = bind(addr).await?;
        let router = outbound::http::public_router(Arc::clone(&shared));
        servers.spawn(serve_http("public-http", listener, router, stop.clone()));
        tracing::info!("public HTTP server listening on {addr}");
    }
    {
        let addr = SocketAddr::new(config.internal_listen_address, config.internal_grpc_port);
        let listener = bind(addr).await?;
        let internal = inbound::routes(Arc::clone(&internal));
        let stop = stop.clone();
        let layer = metrics::GrpcLayer::new(&metrics);
        let mut server = grpc_server().layer(layer);
        let router = server.add_routes(internal);
        match identity.clone() {
            None => servers.spawn(async move {
                let incoming = plaintext("internal", listener, stop.clone());
                router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
                    .map_err(|e| format!("internal gRPC server on {addr}: {e}"))
            }),
            Some(current) => servers.spawn(async move {
                let incoming =
                    identity::transport::incoming(listener, current, LIMITS, stop.clone());
                router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
                    .map_err(|e| format!("internal gRPC server on {addr}: {e}"))
            }),
        };
        let security = if identity.is_some() {
            "mTLS"
        } else {
            "plaintext"
        };
        tracing::info!("internal gRPC server listening on {addr} ({security})");
    }
    shared.health.set_outbound_ready();

    let registration = {
        let resolver = Arc::clone(&resolver);
        let stop = stop.clone();
        tokio::spawn(async move { resolver.register(stop).await })
    };

    wait_for_app(&shared, &stop).await;
    if let Some(check) = config.app_health_check.clone() {
        let (internal, stop) = (Arc::clone(&internal), stop.clone());
        tokio::spawn(async move { internal.probe_app(&check, &stop).await });
    }
    tracing::info!(
        "dapr initialized. Status: Running. Init Elapsed {}ms",
        started.elapsed().as_millis()
    );

    tokio::select! {
        _ = stop.cancelled() => {}
        _ = termination_signal() => {
            tracing::info!("received termination signal, shutting down gracefully");
            stop.cancel();
        }
    }
    shared.health.set_app_ready(false);
    let grace = config.graceful_shutdown;
    let drained = async {
        while let Some(result) = servers.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::warn!("{e}");
            }
        }
    };
    tokio::select! {
        _ = drained => tracing::info!("all in-flight calls finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period of {}s over, stopping with calls in flight", grace.as_secs()),
        _ = shutdown.force.cancelled() => tracing::warn!("forced shutdown"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), registration).await;
    tracing::info!("dapr shutdown complete");
    Ok(())
}

/// The bounds of every server of the sidecar (`docs/limits.md`).
const LIMITS: dapr_serve::Limits = dapr_serve::Limits::DEFAULT;

async fn serve_http(
    server: &'static str,
    listener: TcpListener,
    router: axum::Router,
    stop: CancellationToken,
) -> Result<(), String> {
    dapr_serve::serve_plain_http(server, listener, router, LIMITS, stop).await;
    Ok(())
}

/// Connections accepted within [`LIMITS`], without TLS.
fn plaintext(
    server: &'static str,
    listener: TcpListener,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<dapr_serve::Guarded<tokio::net::TcpStream>>,
> {
    dapr_serve::incoming(server, listener, LIMITS, stop, |tcp, _| async { Ok(tcp) })
}

/// A gRPC server with HTTP/2 keepalive pings within [`LIMITS`] (a peer that stops answering
/// them is dropped).
fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(LIMITS.keepalive_interval))
        .http2_keepalive_timeout(Some(LIMITS.keepalive_timeout))
}

/// Blocks readiness until the app port accepts TCP connections (dial every 100ms), as upstream.
async fn wait_for_app(shared: &Shared, stop: &CancellationToken) {
    let config = &shared.config;
    let Some(port) = config.app_port else {
        shared.health.set_app_ready(true);
        return;
    };
    tracing::info!("waiting for the app on port {port}");
    loop {
        if AppChannel::reachable(&config.app_channel_address, port).await {
            tracing::info!("application discovered on port {port}");
            shared.health.set_app_ready(true);
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
