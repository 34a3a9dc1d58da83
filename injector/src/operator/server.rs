//! The operator API's listener: accepted through [`dapr_serve::incoming`] (connection cap,
//! handshake deadline), mTLS with a sentry certificate for `dapr-operator` and a client
//! certificate required (chained to the trust anchors, carrying a SPIFFE id), served by tonic.
//! The anchors are re-read when their file changes; new handshakes use them.

use std::io;
use std::sync::Arc;

use dapr_identity::tls;
use dapr_proto::operator::v1::operator_server::OperatorServer;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::service::{Operator, PeerId};
use super::{Cache, Settings};
use crate::tls::ReloadingCert;

/// Streams one HTTP/2 connection may hold open: a daprd opens about six (one per update
/// stream plus its calls), so this leaves room while bounding what one client can pin.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

const LIMITS: dapr_serve::Limits = dapr_serve::Limits::DEFAULT;

/// Gets the `dapr-operator` certificate from sentry (retrying until it answers), then serves
/// the operator API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    cache: Arc<Cache>,
    client: kube::Client,
    anchors: watch::Receiver<Option<String>>,
    shutdown: CancellationToken,
) -> Result<(), crate::Error> {
    let certificate = match crate::tls::sentry_resolver(
        settings.svid.clone(),
        settings.token_file.clone(),
        settings.trust_anchors_file.clone(),
        &shutdown,
    )
    .await
    {
        Ok(resolver) => resolver,
        Err(crate::Error::Identity(dapr_identity::Error::Stopped)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let configs = server_configs(certificate, anchors);
    let incoming = dapr_serve::incoming(
        "operator-api",
        listener,
        LIMITS,
        shutdown.clone(),
        move |tcp, remote| {
            let config = configs.borrow().clone();
            async move {
                let config = config.ok_or_else(|| io::Error::other("no trust anchors yet"))?;
                match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                    Ok(io) => {
                        let peer =
                            tls::peer_spiffe_id(io.get_ref().1.peer_certificates()).map(Arc::new);
                        Ok(TlsConn::new(io, PeerId(peer)))
                    }
                    Err(e) => {
                        info!(%remote, "refused an operator API client: TLS handshake failed: {e}");
                        Err(e)
                    }
                }
            }
        },
    );
    info!(address = %settings.addr, "operator API serving over mTLS");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(LIMITS.keepalive_interval))
        .http2_keepalive_timeout(Some(LIMITS.keepalive_timeout))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(OperatorServer::new(Operator::new(cache, client)))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .map_err(crate::Error::OperatorApi)
}

/// A server config per trust-anchor version: our certificate (renewed in place) and a client
/// verifier for the current anchors.
fn server_configs(
    certificate: Arc<ReloadingCert>,
    mut anchors: watch::Receiver<Option<String>>,
) -> watch::Receiver<Option<Arc<ServerConfig>>> {
    let build = move |pem: &Option<String>| -> Option<Arc<ServerConfig>> {
        let pem = pem.as_ref()?;
        let built = tls::root_store(pem.as_bytes())
            .and_then(|roots| tls::SpiffeClientVerifier::new(Arc::new(roots)))
            .and_then(|verifier| {
                ServerConfig::builder_with_provider(tls::crypto_provider())
                    .with_safe_default_protocol_versions()
                    .map_err(dapr_identity::Error::Tls)
                    .map(|b| {
                        b.with_client_cert_verifier(Arc::new(verifier))
                            .with_cert_resolver(certificate.clone())
                    })
            });
        match built {
            Ok(mut config) => {
                config.alpn_protocols = vec![b"h2".to_vec()];
                Some(Arc::new(config))
            }
            Err(e) => {
                warn!("operator API: trust anchors unusable, keeping the previous ones: {e}");
                None
            }
        }
    };
    let (tx, rx) = watch::channel(build(&anchors.borrow_and_update()));
    tokio::spawn(async move {
        while anchors.changed().await.is_ok() {
            if let Some(config) = build(&anchors.borrow_and_update()) {
                let _ = tx.send(Some(config));
            }
        }
    });
    rx
}

/// A server-side TLS connection with its peer's SPIFFE id, which tonic hands to each request
/// as [`PeerId`].
type TlsConn = dapr_serve::WithPeer<tokio_rustls::server::TlsStream<TcpStream>, PeerId>;
