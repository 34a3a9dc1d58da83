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
pub mod resiliency;
pub mod resolve;
pub mod resources;
pub mod trace;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dapr_proto::runtime::v1::dapr_server::DaprServer;
use dapr_serve::{Guarded, Listener};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// The maps looked up on every call (peer connections, resolved addresses), hashed with
/// foldhash seeded per process instead of SipHash (`docs/dependencies.md`).
pub(crate) type CallMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use config::Config;
pub use error::{Error, StartError};

use inbound::app_channel::AppChannel;
use outbound::invoker::{Caller, Invoker};
use outbound::state::{Health, Shared, Shutdown};

/// The version reported in metadata and logs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The operator's client (Kubernetes mode with `--control-plane-address` and an identity: the
/// operator serves over mTLS only), else `None`: the sidecar then reads the API server itself.
fn operator_client(
    config: &Config,
    identity: Option<&identity::Current>,
) -> Result<Option<operator::Client>, StartError> {
    match (&config.operator_address, identity, &config.mtls) {
        (Some(address), Some(current), Some(mtls)) => Ok(Some(operator::client(
            address,
            current.clone(),
            &mtls.control_plane_trust_domain,
            &mtls.control_plane_namespace,
        )?)),
        _ => Ok(None),
    }
}

/// The Configuration named by `--config` (Kubernetes mode): from the operator when there is one
/// (then changes are followed), else from the API server.
async fn load_configuration(
    config: &mut Config,
    name: &str,
    operator: Option<&operator::Client>,
    shutdown: &Shutdown,
) -> Result<(), StartError> {
    match operator {
        Some(client) => {
            let mut client = client.clone();
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
        None => {
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

/// Binds `addr`; also gives the address bound (the port the kernel chose for port 0), which is
/// what the logs name.
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = dapr_serve::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    Ok((listener, bound))
}

/// Runs the sidecar until SIGTERM/SIGINT or a shutdown request, then drains in-flight calls
/// within the configured grace period. The steps, in order: [`Sidecar::assemble`],
/// [`start_servers`], readiness ([`wait_for_app`]), [`drain`].
pub async fn run(config: Config) -> Result<(), StartError> {
    let started = Instant::now();
    tracing::info!(mode = ?config.mode, app_id = %config.app_id, "starting Dapr Runtime -- version {VERSION}");
    let shutdown = Shutdown::default();
    let stop = shutdown.graceful.clone();
    let sidecar = Sidecar::assemble(config, &shutdown).await?;
    let servers = start_servers(&sidecar, &stop).await?;
    let shared = &sidecar.shared;
    shared.health.set_outbound_ready();

    let registration = {
        let resolver = Arc::clone(&sidecar.resolver);
        let stop = stop.clone();
        tokio::spawn(async move { resolver.register(stop).await })
    };
    wait_for_app(shared, &stop).await;
    if let Some(check) = shared.config.app_health_check.clone() {
        let (internal, stop) = (Arc::clone(&sidecar.internal), stop.clone());
        tokio::spawn(async move { internal.probe_app(&check, &stop).await });
    }
    tracing::info!(
        "dapr initialized. Status: Running. Init Elapsed {}ms",
        started.elapsed().as_millis()
    );

    tokio::select! {
        _ = stop.cancelled() => {}
        () = dapr_process::shutdown_signal() => {
            tracing::info!("received termination signal, shutting down gracefully");
            stop.cancel();
        }
    }
    shared.health.set_app_ready(false);
    drain(servers, shared.config.graceful_shutdown, &shutdown).await;
    if let Some(sockets) = &shared.config.api_sockets {
        // As Go's listeners do on close, so the next start binds them afresh.
        for path in [&sockets.http, &sockets.grpc] {
            let _ = std::fs::remove_file(path);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), registration).await;
    shared.tracer.flush(Duration::from_secs(5)).await;
    tracing::info!("dapr shutdown complete");
    Ok(())
}

/// Everything the servers share, built before any port is bound.
struct Sidecar {
    /// The workload identity, with mTLS.
    identity: Option<identity::Current>,
    resolver: Arc<resolve::Resolver>,
    /// The internal API's handler (peers calling our app).
    internal: Arc<inbound::Internal>,
    /// The app-facing APIs' state (configuration, invoker, metrics, tracer, health).
    shared: Arc<Shared>,
}

impl Sidecar {
    /// Identity first (the operator serves over mTLS only), then the Configuration and the
    /// resources, then what is built from them: policies, name resolution, metrics, tracing.
    async fn assemble(mut config: Config, shutdown: &Shutdown) -> Result<Sidecar, StartError> {
        let identity = start_identity(&config, &shutdown.graceful).await?;
        let operator = operator_client(&config, identity.as_ref())?;
        if let Some(name) = config.configuration_name.clone() {
            load_configuration(&mut config, &name, operator.as_ref(), shutdown).await?;
        }
        let resources = load_resources(&config, operator).await?;
        resources.warn_not_implemented();
        let resiliency = resiliency::Resiliency::compile(&resources.resiliencies)?;
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
        for (name, namespace) in resiliency.iter().flat_map(|r| &r.loaded) {
            tracing::info!("Loading Resiliency configuration: {name}");
            metrics.resiliency_loaded(name, namespace);
        }
        let tracer = Arc::new(start_tracer(&config, &metrics)?);
        let shared = Arc::new(Shared {
            invoker: Invoker::new(
                Caller::new(
                    &config.app_id,
                    &config.namespace,
                    &config.hostname,
                    resolve::known_address(&config),
                ),
                Arc::clone(&resolver),
                wire::message_limit(config.max_body_size),
            )
            .with_metrics(Arc::clone(&metrics))
            .with_identity(identity.clone())
            .with_resiliency(resiliency),
            config: Arc::clone(&config),
            endpoints: outbound::endpoint::Endpoints::new(&resources.http_endpoints)?,
            health: Health::default(),
            resolver_name: resolver.name(),
            extended: Mutex::new(Default::default()),
            shutdown: shutdown.clone(),
            metrics: Arc::clone(&metrics),
            tracer: Arc::clone(&tracer),
        });
        let internal =
            inbound::server(&config, &metrics, &tracer).map_err(StartError::AppChannel)?;
        Ok(Sidecar {
            identity,
            resolver,
            internal,
            shared,
        })
    }
}

/// The workload identity from sentry, kept fresh until `stop`; `None` without mTLS.
async fn start_identity(
    config: &Config,
    stop: &CancellationToken,
) -> Result<Option<identity::Current>, StartError> {
    let Some(mtls) = &config.mtls else {
        tracing::info!("mTLS is disabled. Skipping certificate request and tls validation");
        return Ok(None);
    };
    tracing::info!(sentry = %mtls.sentry_address, "mTLS enabled. Creating sidecar authenticator");
    let current = identity::start(mtls.clone(), config.namespace.clone(), stop.clone()).await?;
    Ok(Some(current))
}

/// The span exporter `Configuration.spec.tracing` asks for (a disabled one records nothing).
fn start_tracer(config: &Config, metrics: &metrics::Metrics) -> Result<trace::Tracer, StartError> {
    let settings = trace::Settings::from_spec(config.configuration.spec.tracing.as_ref())?;
    let tracer = trace::Tracer::start(&settings, &config.app_id, metrics)?;
    if settings.enabled {
        tracing::info!(
            sampling_rate = settings.sampling_rate,
            stdout = settings.stdout,
            zipkin = settings.zipkin.is_some(),
            otel = settings.otel.is_some(),
            "tracing enabled"
        );
    }
    Ok(tracer)
}

/// The sidecar's servers, each until `stop`; what one fails with is logged by [`drain`].
type Servers = JoinSet<Result<(), String>>;

/// Binds and serves every port: metrics, the app-facing HTTP and gRPC APIs (TCP or Unix-domain
/// sockets), the public health port, and the internal API peers call.
async fn start_servers(sidecar: &Sidecar, stop: &CancellationToken) -> Result<Servers, StartError> {
    let shared = &sidecar.shared;
    let (config, metrics) = (&shared.config, &shared.metrics);
    let mut servers = JoinSet::new();
    if let Some((ip, port)) = config.metrics {
        let addr = SocketAddr::new(ip, port);
        let (listener, addr) = bind(addr).await?;
        servers.spawn(serve_http(
            "metrics",
            listener,
            metrics::router(Arc::clone(metrics)),
            stop.clone(),
        ));
        tracing::info!("metrics server started on {addr}/");
    }
    start_api_servers(shared, &mut servers, stop).await?;
    if let Some(port) = config.public_port {
        let addr = SocketAddr::new(config.public_listen_address, port);
        let (listener, addr) = bind(addr).await?;
        let router = outbound::http::public_router(Arc::clone(shared));
        servers.spawn(serve_http("public-http", listener, router, stop.clone()));
        tracing::info!("public HTTP server listening on {addr}");
    }
    start_internal_server(sidecar, &mut servers, stop).await?;
    Ok(servers)
}

/// The app-facing gRPC and HTTP APIs, on `--unix-domain-socket` or on every API listen address.
async fn start_api_servers(
    shared: &Arc<Shared>,
    servers: &mut Servers,
    stop: &CancellationToken,
) -> Result<(), StartError> {
    let (config, metrics) = (&shared.config, &shared.metrics);
    let grpc_api = grpc_api(shared);
    let http_api = outbound::http::api(Arc::clone(shared));
    if let Some(sockets) = &config.api_sockets {
        let listener = bind_unix(&sockets.grpc).await?;
        servers.spawn(serve_grpc_api(
            grpc_api,
            plaintext("grpc-api", listener, stop.clone()),
            metrics,
            stop.clone(),
        ));
        tracing::info!(
            "gRPC API server listening on UNIX socket: {}",
            sockets.grpc.display()
        );
        let listener = bind_unix(&sockets.http).await?;
        servers.spawn(serve_http_api(listener, http_api, stop.clone()));
        tracing::info!(
            "HTTP server listening on UNIX socket: {}",
            sockets.http.display()
        );
        return Ok(());
    }
    for ip in &config.api_listen_addresses {
        let addr = SocketAddr::new(*ip, config.grpc_port);
        let (listener, addr) = bind(addr).await?;
        servers.spawn(serve_grpc_api(
            grpc_api.clone(),
            plaintext("grpc-api", listener, stop.clone()),
            metrics,
            stop.clone(),
        ));
        tracing::info!("gRPC API server listening on {addr}");
    }
    for ip in &config.api_listen_addresses {
        let addr = SocketAddr::new(*ip, config.http_port);
        let (listener, addr) = bind(addr).await?;
        servers.spawn(serve_http_api(listener, http_api.clone(), stop.clone()));
        tracing::info!("HTTP server listening on {addr}");
    }
    Ok(())
}

/// The internal API other sidecars call: mTLS with an identity, else plaintext. Served by
/// `dapr_serve::serve_h2` with [`inbound::Routes`] per connection, which carry the peer's
/// verified identity.
async fn start_internal_server(
    sidecar: &Sidecar,
    servers: &mut Servers,
    stop: &CancellationToken,
) -> Result<(), StartError> {
    let config = &sidecar.shared.config;
    let addr = SocketAddr::new(config.internal_listen_address, config.internal_grpc_port);
    let (listener, addr) = bind(addr).await?;
    let routes = internal_routes(&sidecar.internal, &sidecar.shared.metrics);
    let stop = stop.clone();
    let security = match sidecar.identity.clone() {
        None => {
            let incoming = plaintext("internal", listener, stop.clone());
            servers.spawn(serve_internal(incoming, stop, move |_| routes(None)));
            "plaintext"
        }
        Some(current) => {
            let incoming = identity::transport::incoming(listener, current, LIMITS, stop.clone());
            servers.spawn(serve_internal(incoming, stop, routes));
            "mTLS"
        }
    };
    tracing::info!("internal gRPC server listening on {addr} ({security})");
    Ok(())
}

/// The internal server's service for a connection from `peer`: [`inbound::Routes`] under the
/// `dapr_grpc_io_server_*` metrics.
fn internal_routes(
    internal: &Arc<inbound::Internal>,
    metrics: &Arc<metrics::Metrics>,
) -> impl Fn(Option<identity::transport::PeerIdentity>) -> InternalService + Send + 'static {
    use tower::Layer;
    let (internal, layer) = (Arc::clone(internal), metrics::GrpcLayer::new(metrics));
    move |peer| layer.layer(inbound::Routes::new(Arc::clone(&internal), peer))
}

/// A connection's service on the internal port.
type InternalService = metrics::GrpcService<inbound::Routes>;

/// The internal server's HTTP/2 settings: [`INTERNAL_RECEIVE_WINDOW`], and a peer's streams not
/// bounded per connection, as grpc-go's server (upstream's callee) by default.
const INTERNAL_H2: dapr_serve::H2Settings = dapr_serve::H2Settings {
    receive_window: INTERNAL_RECEIVE_WINDOW,
    max_concurrent_streams: None,
};

/// Serves the internal API on `incoming` until `stop`, with [`INTERNAL_H2`].
async fn serve_internal<IO, M>(
    incoming: ReceiverStream<std::io::Result<Guarded<IO>>>,
    stop: CancellationToken,
    routes: M,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    M: Fn(IO::ConnectInfo) -> InternalService,
{
    dapr_serve::serve_h2("internal", incoming, LIMITS, INTERNAL_H2, stop, routes).await;
    Ok(())
}

/// Waits for the servers to finish their in-flight calls, at most `grace`, or until a forced
/// shutdown.
async fn drain(mut servers: Servers, grace: Duration, shutdown: &Shutdown) {
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
}

/// The resources for this app: `--resources-path` in standalone mode; in kubernetes mode the
/// Resiliencies and HTTPEndpoints of the sidecar's namespace from the operator, or without one
/// the Resiliencies from the API server (a failed read is logged, as upstream, and the sidecar
/// runs without them).
async fn load_resources(
    config: &Config,
    operator: Option<operator::Client>,
) -> Result<resources::Resources, StartError> {
    match (config.mode, operator) {
        (config::Mode::Standalone, _) => Ok(resources::load_dirs(
            &config.resources_paths,
            &config.app_id,
        )?),
        (config::Mode::Kubernetes, Some(mut client)) => {
            ignored_resources_path(config);
            match operator::list_resources(&mut client, &config.namespace).await {
                Ok((resiliencies, http_endpoints)) => Ok(resources::from_operator(
                    &resiliencies,
                    &http_endpoints,
                    &config.namespace,
                    &config.app_id,
                )?),
                // As upstream: logged, and the sidecar runs without them.
                Err(status) => {
                    tracing::error!(
                        "error listing Resiliencies and HTTPEndpoints from the operator: {:?}: {}",
                        status.code(),
                        status.message()
                    );
                    Ok(resources::Resources::default())
                }
            }
        }
        (config::Mode::Kubernetes, None) => {
            ignored_resources_path(config);
            let resiliencies = match resources::list_resiliencies(
                &config.api_server,
                &config.namespace,
                &config.app_id,
            )
            .await
            {
                Ok(found) => found,
                Err(e @ resources::ResourcesError::ApiServer(_)) => {
                    tracing::error!("error listing resiliency policies: {e}");
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            };
            Ok(resources::Resources {
                resiliencies,
                ..Default::default()
            })
        }
    }
}

fn ignored_resources_path(config: &Config) {
    if !config.resources_paths.is_empty() {
        tracing::warn!("--resources-path has no effect in kubernetes mode, as upstream");
    }
}

/// The bounds of every server of the sidecar (`docs/limits.md`).
const LIMITS: dapr_serve::Limits = dapr_serve::Limits::DEFAULT;

async fn serve_http<L, R, B>(
    server: &'static str,
    listener: L,
    router: R,
    stop: CancellationToken,
) -> Result<(), String>
where
    L: Listener<Io: AsyncRead + AsyncWrite + Unpin>,
    R: dapr_serve::HttpHandler<B>,
    B: dapr_serve::ResponseBody,
{
    dapr_serve::serve_plain_http(server, listener, router, LIMITS, stop).await;
    Ok(())
}

/// The app-facing HTTP API: plain HTTP/1.1 requests (nearly every invocation) by
/// `dapr_serve`'s own small server, the rest by hyper's. A small body is read whole within the
/// deadline `wire::read_small` gives it (`docs/limits.md`).
async fn serve_http_api<L>(
    listener: L,
    api: metrics::HttpService<outbound::http::Api>,
    stop: CancellationToken,
) -> Result<(), String>
where
    L: Listener<Io: AsyncRead + AsyncWrite + Unpin>,
{
    let settings = dapr_serve::Http1Settings {
        max_body: wire::MAX_CHUNK,
        body_read: outbound::invoker::RESPONSE_TIMEOUT,
    };
    dapr_serve::serve_plain_http1_first("http-api", listener, api, LIMITS, settings, stop).await;
    Ok(())
}

/// Connections accepted within [`LIMITS`], without TLS.
fn plaintext<L: Listener>(
    server: &'static str,
    listener: L,
    stop: CancellationToken,
) -> ReceiverStream<std::io::Result<Guarded<L::Io>>> {
    dapr_serve::incoming(server, listener, LIMITS, stop, |io, _| async { Ok(io) })
}

/// The app-facing gRPC API: the Dapr service, and every other service proxied to the app
/// named by `dapr-app-id`; `Dapr/InvokeService` ahead of the router
/// ([`outbound::grpc::InvokeFirstLayer`]).
#[derive(Clone)]
struct GrpcApi {
    routes: tonic::service::Routes,
    invoke_first: outbound::grpc::InvokeFirstLayer,
}

fn grpc_api(shared: &Arc<Shared>) -> GrpcApi {
    let service = DaprServer::new(outbound::grpc::DaprApi::new(Arc::clone(shared)))
        .max_decoding_message_size(shared.config.max_body_size)
        .max_encoding_message_size(usize::MAX);
    let invoke_first = outbound::grpc::InvokeFirstLayer::new(Arc::new(
        outbound::grpc::DaprApi::new(Arc::clone(shared)),
    ));
    let routes = tonic::service::Routes::new(service)
        .into_axum_router()
        .route_layer(axum::middleware::map_response(|response| async move {
            outbound::grpc::headers_before_status(response)
        }))
        .fallback({
            let shared = Arc::clone(shared);
            move |request| outbound::proxy::handle(Arc::clone(&shared), request)
        });
    GrpcApi {
        routes: tonic::service::Routes::from(routes),
        invoke_first,
    }
}

/// Serves the gRPC API on `incoming` (TCP or Unix-domain connections) until `stop`, with
/// [`GRPC_API_H2`]: `h2`'s server directly, as the internal port is served
/// (`dapr_serve::serve_h2`), each call bounded by its `grpc-timeout`
/// ([`outbound::grpc::InvokeFirst`]).
fn serve_grpc_api<IO>(
    api: GrpcApi,
    incoming: ReceiverStream<std::io::Result<Guarded<IO>>>,
    metrics: &Arc<metrics::Metrics>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = Result<(), String>> + use<IO>
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    use tower::Layer;
    let layer = metrics::GrpcLayer::api(metrics);
    let service = move |_| layer.layer(api.invoke_first.layer(api.routes.clone()));
    async move {
        dapr_serve::serve_h2("grpc-api", incoming, LIMITS, GRPC_API_H2, stop, service).await;
        Ok(())
    }
}

/// The gRPC API's HTTP/2 settings: hyper's 1 MiB receive windows, and a client's streams not
/// bounded per connection, as grpc-go's server (upstream's API) by default and as tonic's
/// server had them.
const GRPC_API_H2: dapr_serve::H2Settings = dapr_serve::H2Settings {
    receive_window: 1024 * 1024,
    max_concurrent_streams: None,
};

/// Binds one of `--unix-domain-socket`'s sockets.
async fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, StartError> {
    dapr_serve::bind_unix(path)
        .await
        .map_err(|source| StartError::BindUnix {
            path: path.to_owned(),
            source,
        })
}

/// The internal server's HTTP/2 receive window, per stream and per connection: what grpc-go's
/// server grows its windows to (its bandwidth-delay estimate is capped at 16 MiB), and so what
/// upstream's callee buffers of a request (`docs/limits.md`). Upstream's caller sends a whole
/// request before it reads any of the answer (`invokeRemoteStream`,
/// `pkg/messaging/direct_messaging.go`), so with an app that answers while it reads (an echo)
/// the request must fit in what the callee and the sockets buffer; with hyper's 1 MiB default a
/// 10 MiB body from upstream's daprd stalled about one time in four.
pub const INTERNAL_RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    /// A peer that sends a whole request before reading anything (upstream's caller) can put
    /// [`INTERNAL_RECEIVE_WINDOW`] on one stream the handler has not read from yet, not hyper's
    /// default 1 MiB.
    #[tokio::test]
    async fn the_internal_server_takes_16_mib_of_a_request_its_handler_has_not_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The handler holds the request, body unread, and never answers.
        let router = axum::Router::new().fallback(|request: axum::extract::Request| async move {
            let _held = request;
            std::future::pending::<axum::response::Response>().await
        });
        let stop = CancellationToken::new();
        let incoming = plaintext("internal", listener, stop.clone());
        let server = tokio::spawn(dapr_serve::serve_h2(
            "internal",
            incoming,
            LIMITS,
            INTERNAL_H2,
            stop,
            move |_| router.clone(),
        ));

        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(connection);
        let mut client = client.ready().await.expect("ready");
        let request = http::Request::post(format!("http://{addr}/held"))
            .header("content-type", "application/grpc")
            .body(())
            .expect("request");
        let (_response, mut stream) = client.send_request(request, false).expect("send");
        let want = 10 * 1024 * 1024;
        let mut sent = 0;
        let sending = async {
            while sent < want {
                stream.reserve_capacity(want - sent);
                let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                    .await
                    .expect("capacity")
                    .expect("capacity granted");
                stream
                    .send_data(Bytes::from(vec![0u8; granted]), false)
                    .expect("send data");
                sent += granted;
            }
        };
        let finished = tokio::time::timeout(Duration::from_secs(10), sending).await;
        assert!(
            finished.is_ok(),
            "the window closed after {sent} bytes of an unread request"
        );
        server.abort();
    }
}
