//! TLS for the internal gRPC API: an incoming stream of server-side handshakes (peer SPIFFE id
//! attached to every request as a [`PeerIdentity`] extension), and a connector for tonic
//! channels that dials with the current identity and accepts only the expected peer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use dapr_identity::SpiffeId;
use dapr_identity::tls::ExpectedId;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::Current;

/// The verified SPIFFE id of the peer on this connection (a request extension).
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Arc<SpiffeId>);

/// A server-side TLS connection with its peer's identity.
pub type TlsConn =
    dapr_serve::WithPeer<tokio_rustls::server::TlsStream<TcpStream>, Option<PeerIdentity>>;

/// Accepts peers within `limits` ([`dapr_serve::incoming`]) and completes their TLS
/// handshakes with the server config current at that moment.
pub fn incoming(
    listener: TcpListener,
    current: Current,
    limits: dapr_serve::Limits,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<dapr_serve::Guarded<TlsConn>>> {
    dapr_serve::incoming("internal", listener, limits, stop, move |tcp, remote| {
        let material = current.borrow().clone();
        async move {
            let material =
                material.ok_or_else(|| io::Error::other("no certificate to serve yet"))?;
            let acceptor = TlsAcceptor::from(Arc::clone(&material.server));
            match acceptor.accept(tcp).await {
                Ok(io) => {
                    let peer =
                        dapr_identity::tls::peer_spiffe_id(io.get_ref().1.peer_certificates())
                            .map(|id| PeerIdentity(Arc::new(id)));
                    Ok(TlsConn::new(io, peer))
                }
                Err(e) => {
                    tracing::info!(%remote, "refused a peer: TLS handshake failed: {e}");
                    Err(e)
                }
            }
        }
    })
}

/// A tonic connector for calls to other sidecars: TCP, then TLS with our current identity,
/// accepting only `expected`.
#[derive(Clone)]
pub struct Connector {
    current: Current,
    expected: ExpectedId,
}

impl Connector {
    pub fn identity(current: Current, expected: ExpectedId) -> Self {
        Connector { current, expected }
    }

    fn config(&self) -> io::Result<Arc<rustls::ClientConfig>> {
        let material = self
            .current
            .borrow()
            .clone()
            .ok_or_else(|| io::Error::other("no certificate yet"))?;
        material
            .client(self.expected.clone())
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

type Connecting = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config();
        Box::pin(async move {
            let config = config?;
            let host = uri
                .host()
                .ok_or_else(|| io::Error::other(format!("no host in {uri}")))?
                .trim_start_matches('[')
                .trim_end_matches(']');
            let addr = tokio::net::lookup_host((host, uri.port_u16().unwrap_or(443)))
                .await?
                .next()
                .ok_or_else(|| io::Error::other(format!("no address for {uri}")))?;
            Ok(TokioIo::new(dial(config, addr).await?))
        })
    }
}

impl Connector {
    /// Dials `addr` with the current identity, accepting only the expected peer.
    pub async fn dial(
        &self,
        addr: std::net::SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        dial(self.config()?, addr).await
    }
}

async fn dial(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    // The peer is checked by its SPIFFE id; the name only has to be well-formed.
    let name = ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(config).connect(name, tcp).await
}
