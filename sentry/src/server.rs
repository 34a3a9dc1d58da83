//! The gRPC `dapr.proto.sentry.v1.CA` service over TLS, and the [`Authority`]: the CA bundle
//! and sentry's own serving certificate, swapped together when the issuer changes.
//!
//! Requests read the current state once, through an `Arc`, so a swap never disturbs a
//! request in flight; new TLS handshakes pick up the new serving certificate at once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use dapr_proto::sentry::v1::ca_server::{Ca, CaServer};
use dapr_proto::sentry::v1::{SignCertificateRequest, SignCertificateResponse};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::Error;
use crate::ca::{self, CaBundle, Csr, IssuerKey, SignPolicy};
use crate::metrics::Metrics;
use crate::validator::Validators;
use dapr_identity::spiffe::SpiffeId;
use dapr_identity::tls::crypto_provider;

/// The bounds of the CA's listener (`docs/limits.md`): connections, the TLS handshake and
/// HTTP/2 preface deadline, keepalive pings.
const LIMITS: dapr_serve::Limits = dapr_serve::Limits::DEFAULT;

/// What the CA signs with right now.
pub struct Active {
    pub bundle: Arc<CaBundle>,
    server_cert: Arc<CertifiedKey>,
    /// Half-way through the serving certificate's life, as daprd renews its own.
    server_cert_renew_at: SystemTime,
}

/// The swappable signing state shared by the service, the TLS acceptor and the rotation loop.
pub struct Authority {
    current: RwLock<Arc<Active>>,
    sentry_id: SpiffeId,
    policy: SignPolicy,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("sentry_id", &self.sentry_id.to_string())
            .field("bundle", &self.current().bundle)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Takes `bundle` into service, with a serving certificate issued from it.
    pub fn new(
        bundle: CaBundle,
        sentry_id: SpiffeId,
        policy: SignPolicy,
        metrics: Arc<Metrics>,
        now: SystemTime,
    ) -> Result<Self, Error> {
        let active = activate(Arc::new(bundle), &sentry_id, policy, now)
            .inspect_err(|_| metrics.server_cert_issue_failed("issue"))?;
        metrics.set_issuer_expiry(active.bundle.issuer_not_after());
        Ok(Authority {
            current: RwLock::new(Arc::new(active)),
            sentry_id,
            policy,
            metrics,
        })
    }

    pub fn current(&self) -> Arc<Active> {
        match self.current.read() {
            Ok(active) => active.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, active: Active) {
        let active = Arc::new(active);
        match self.current.write() {
            Ok(mut slot) => *slot = active,
            Err(poisoned) => *poisoned.into_inner() = active,
        }
    }

    pub fn sentry_id(&self) -> &SpiffeId {
        &self.sentry_id
    }

    pub fn policy(&self) -> SignPolicy {
        self.policy
    }

    /// Replaces the CA, and the serving certificate with one from the new issuer.
    pub fn install(&self, bundle: CaBundle, now: SystemTime) -> Result<(), Error> {
        let active = activate(Arc::new(bundle), &self.sentry_id, self.policy, now)
            .inspect_err(|_| self.metrics.server_cert_issue_failed("issue"))?;
        self.metrics
            .set_issuer_expiry(active.bundle.issuer_not_after());
        self.set(active);
        Ok(())
    }

    /// Reissues the serving certificate once it is half-way through its life.
    pub fn renew_server_cert_if_due(&self, now: SystemTime) {
        let current = self.current();
        if now < current.server_cert_renew_at {
            return;
        }
        match activate(current.bundle.clone(), &self.sentry_id, self.policy, now) {
            Ok(active) => {
                tracing::info!(id = %self.sentry_id, "renewed sentry's serving certificate");
                self.set(active);
            }
            Err(e) => {
                self.metrics.server_cert_issue_failed("renew");
                tracing::error!("cannot renew sentry's serving certificate: {e}");
            }
        }
    }
}

impl ResolvesServerCert for Authority {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().server_cert.clone())
    }
}

/// Issues sentry's own SVID from `bundle`, in memory with a fresh ECDSA P-256 key: upstream's
/// sentry requests its serving certificate from its own CA through the workload code
/// (pkg/sentry/sentry.go), whose pkg/security/x509source.go generates P-256 keys.
fn activate(
    bundle: Arc<CaBundle>,
    sentry_id: &SpiffeId,
    policy: SignPolicy,
    now: SystemTime,
) -> Result<Active, Error> {
    let key = IssuerKey::generate_ecdsa_p256()?;
    let issued = ca::issue(
        &bundle,
        &key,
        sentry_id,
        &[],
        policy,
        now,
        ca::random_serial()?,
    )?;
    let mut chain = vec![issued.leaf.clone()];
    chain.extend(bundle.issuer_chain().iter().cloned());
    let signing_key = crypto_provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.to_pkcs8_der(),
        )))
        .map_err(Error::ServingKey)?;
    let lifetime = issued
        .not_after
        .duration_since(issued.not_before)
        .unwrap_or_default();
    Ok(Active {
        bundle,
        server_cert: Arc::new(CertifiedKey::new(chain, signing_key)),
        server_cert_renew_at: issued.not_before + lifetime / 2,
    })
}

/// Extra DNS SANs upstream gives control-plane services in sentry's own namespace.
pub fn control_plane_dns_names(id: &str, namespace: &str, sentry_namespace: &str) -> Vec<String> {
    if namespace != sentry_namespace {
        return Vec::new();
    }
    match id {
        "dapr-injector" => vec![format!("dapr-sidecar-injector.{namespace}.svc")],
        "dapr-operator" => vec![format!("dapr-webhook.{namespace}.svc")],
        "dapr-scheduler" => (0..3)
            .map(|i| {
                format!(
                    "dapr-scheduler-server-{i}.dapr-scheduler-server.{namespace}.svc.cluster.local"
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The `CA` gRPC service.
pub struct CaService {
    authority: Arc<Authority>,
    validators: Arc<Validators>,
    metrics: Arc<Metrics>,
}

impl CaService {
    pub fn new(
        authority: Arc<Authority>,
        validators: Arc<Validators>,
        metrics: Arc<Metrics>,
    ) -> Self {
        CaService {
            authority,
            validators,
            metrics,
        }
    }

    /// Upstream's order: pick the validator, validate, then parse the CSR, then sign.
    async fn sign(&self, req: &SignCertificateRequest) -> Result<SignCertificateResponse, Error> {
        let validator = self.validators.select(req.token_validator)?;
        let validated = validator.validate(req).await?;
        let csr = Csr::from_pem(&req.certificate_signing_request)?;
        let id = SpiffeId::new(&validated.trust_domain, &req.namespace, &req.id)?;
        let dns = control_plane_dns_names(
            &req.id,
            &req.namespace,
            self.authority.sentry_id.namespace(),
        );
        let active = self.authority.current();
        let issued = ca::sign(
            &active.bundle,
            &csr,
            &id,
            &dns,
            self.authority.policy(),
            SystemTime::now(),
            ca::random_serial()?,
        )?;
        tracing::debug!(%id, valid_until = %ca::rfc3339(issued.not_after), "signed workload certificate");
        Ok(SignCertificateResponse {
            workload_certificate: issued.chain_pem.into_bytes().into(),
            trust_chain_certificates: vec![
                active.bundle.trust_anchors_pem().as_bytes().to_vec().into(),
            ],
            valid_until: Some(timestamp(issued.not_after)),
            jwt: None,
        })
    }
}

#[tonic::async_trait]
impl Ca for CaService {
    async fn sign_certificate(
        &self,
        request: tonic::Request<SignCertificateRequest>,
    ) -> Result<tonic::Response<SignCertificateResponse>, tonic::Status> {
        self.metrics.sign_request_received();
        let req = request.into_inner();
        match self.sign(&req).await {
            Ok(response) => {
                self.metrics.sign_succeeded();
                Ok(tonic::Response::new(response))
            }
            Err(e) => {
                let reason = e.sign_failure_reason();
                self.metrics.sign_failed(reason);
                tracing::warn!(
                    id = %req.id,
                    namespace = %req.namespace,
                    reason,
                    "refused to sign a certificate: {e}"
                );
                Err(e.into())
            }
        }
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

/// Serves the `CA` service on `listener` over TLS until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: CaService,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(service.authority.clone());
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_accepting = stop.clone().drop_guard();
    let incoming = dapr_serve::incoming("sentry", listener, LIMITS, stop.clone(), move |tcp, _| {
        let accepting = acceptor.accept(tcp);
        async move { accepting.await.map(TlsConn) }
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(LIMITS.keepalive_interval))
        .http2_keepalive_timeout(Some(LIMITS.keepalive_timeout))
        .add_service(CaServer::new(service))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            stop.cancel();
        })
        .await
        .map_err(Error::from)
}

/// A server-side TLS connection tonic can serve (tonic's own impl needs its TLS features,
/// which would bring a second crypto provider).
struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bundle(now: SystemTime) -> CaBundle {
        let generated = ca::generate("cluster.local", "dapr-system", now, Duration::ZERO).unwrap();
        let paths = crate::config::CredentialPaths {
            dir: "/t".into(),
            trust_anchors: "/t/ca.crt".into(),
            issuer_cert: "/t/issuer.crt".into(),
            issuer_key: "/t/issuer.key".into(),
        };
        CaBundle::from_pem(
            generated.trust_anchors_pem.as_bytes(),
            generated.issuer_chain_pem.as_bytes(),
            generated.issuer_key.to_pkcs8_pem().as_bytes(),
            &paths,
            now,
        )
        .unwrap()
    }

    fn authority(now: SystemTime) -> Authority {
        let policy = SignPolicy {
            ttl: Duration::from_secs(600),
            allowed_clock_skew: Duration::ZERO,
        };
        let id = SpiffeId::new("cluster.local", "dapr-system", "dapr-sentry").unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        Authority::new(bundle(now), id, policy, metrics, now).unwrap()
    }

    #[test]
    fn the_serving_certificate_carries_sentrys_id_and_is_renewed_half_way_through_its_life() {
        let now = SystemTime::now();
        let auth = authority(now);
        let first = auth.current().server_cert.cert.clone();
        assert_eq!(first.len(), 2, "leaf + issuer");
        assert_eq!(
            dapr_identity::tls::spiffe_id(&first[0])
                .unwrap()
                .to_string(),
            "spiffe://cluster.local/ns/dapr-system/dapr-sentry"
        );
        auth.renew_server_cert_if_due(now + Duration::from_secs(200));
        assert_eq!(auth.current().server_cert.cert, first);
        auth.renew_server_cert_if_due(now + Duration::from_secs(301));
        assert_ne!(auth.current().server_cert.cert[0], first[0]);
        assert_eq!(auth.current().server_cert.cert[1], first[1]);
    }

    #[test]
    fn installing_a_new_bundle_replaces_the_serving_certificate_too() {
        let now = SystemTime::now();
        let auth = authority(now);
        let before = auth.current();
        let replacement = bundle(now);
        let new_issuer = replacement.issuer_chain()[0].clone();
        auth.install(replacement, now).unwrap();
        let after = auth.current();
        assert_eq!(after.bundle.issuer_chain()[0], new_issuer);
        assert_eq!(after.server_cert.cert[1], new_issuer);
        // A request that took the old state before the swap still holds all of it.
        assert_ne!(before.server_cert.cert[1], new_issuer);
    }

    #[test]
    fn control_plane_services_in_sentrys_namespace_get_their_dns_names() {
        assert_eq!(
            control_plane_dns_names("dapr-injector", "dapr-system", "dapr-system"),
            vec!["dapr-sidecar-injector.dapr-system.svc"]
        );
        assert_eq!(
            control_plane_dns_names("dapr-operator", "dapr-system", "dapr-system"),
            vec!["dapr-webhook.dapr-system.svc"]
        );
        assert_eq!(
            control_plane_dns_names("dapr-scheduler", "dapr-system", "dapr-system").len(),
            3
        );
        assert!(control_plane_dns_names("dapr-injector", "default", "dapr-system").is_empty());
        assert!(control_plane_dns_names("orders", "dapr-system", "dapr-system").is_empty());
    }
}
