//! The webhook's serving certificate and the HTTPS listener. The certificate is swapped in
//! place when its files change, so cert-manager renewals need no restart: new handshakes get
//! the new certificate, open connections keep theirs.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use dapr_identity::client::{self, KeyAlgorithm, SvidRequest};
use dapr_identity::renewal;
use dapr_identity::tls::{crypto_provider, root_store};
use dapr_identity::token::validator;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;
use dapr_identity::files;

/// Where the webhook's serving certificate comes from.
#[derive(Debug, Clone)]
pub enum ServingCert {
    /// PEM chain and key on disk (cert-manager, or any user-managed pair), reloaded on change.
    Files { cert: PathBuf, key: PathBuf },
    /// A certificate from sentry for `dapr-injector` (sentry adds the DNS SAN
    /// `dapr-sidecar-injector.<ns>.svc`), renewed at half its lifetime. The request's token is
    /// read from `token_file` when it exists (projected token, kubernetes validator).
    Sentry {
        request: SvidRequest,
        token_file: PathBuf,
        trust_anchors_file: PathBuf,
    },
}

/// Upstream's shutdown grace for open requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Parses a PEM chain and key into a rustls certified key (ring provider), checking that the
/// key belongs to the leaf.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(format!("certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(Error::Tls(
            "certificate PEM holds no certificate".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::Tls(format!("private key PEM: {e}")))?;
    CertifiedKey::from_der(chain, key, &crypto_provider())
        .map_err(|e| Error::Tls(format!("certificate and key: {e}")))
}

/// A certificate resolver whose certificate can be replaced while serving.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: RwLock::new(Arc::new(key)),
        }
    }

    pub fn replace(&self, key: CertifiedKey) {
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(key),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(key),
        }
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Loads the serving certificate and keeps it current until `stop`; fails when the first load
/// fails, or with [`dapr_identity::Error::Stopped`] when `stop` comes before sentry's first
/// certificate.
pub async fn server_config(
    source: &ServingCert,
    reload_interval: Duration,
    stop: &CancellationToken,
) -> Result<Arc<ServerConfig>, Error> {
    let resolver = match source {
        ServingCert::Files { cert, key } => files_resolver(cert, key, reload_interval).await?,
        ServingCert::Sentry {
            request,
            token_file,
            trust_anchors_file,
        } => {
            sentry_resolver(
                request.clone(),
                token_file.clone(),
                trust_anchors_file.clone(),
                stop,
            )
            .await?
        }
    };
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Identity(dapr_identity::Error::Tls(e)))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Certificates from sentry for one id: the token (if mounted) and the anchors are read fresh
/// for every request.
struct FromSentry {
    request: SvidRequest,
    token_file: PathBuf,
    trust_anchors_file: PathBuf,
}

impl renewal::Source for FromSentry {
    type Issued = CertifiedKey;

    async fn fetch(&mut self) -> Result<(CertifiedKey, SystemTime), dapr_identity::Error> {
        let mut request = self.request.clone();
        if let Ok(token) = tokio::fs::read_to_string(&self.token_file).await {
            request.token = token.trim().to_owned();
            request.validator = validator::KUBERNETES;
        }
        let anchors = tokio::fs::read(&self.trust_anchors_file)
            .await
            .map_err(|source| dapr_identity::Error::Read {
                what: "trust anchors",
                path: self.trust_anchors_file.clone(),
                source,
            })?;
        let roots = Arc::new(root_store(&anchors)?);
        // ECDSA P-256: ring (our one crypto library) cannot generate RSA keys; API servers
        // accept ECDSA serving certificates.
        let svid = client::request(&request, &roots, KeyAlgorithm::EcdsaP256).await?;
        let renew_at = client::refresh_at(svid.not_before, svid.not_after);
        let key = CertifiedKey::from_der(svid.chain, svid.key, &crypto_provider())
            .map_err(dapr_identity::Error::OwnCertificate)?;
        Ok((key, renew_at))
    }

    fn failed(
        &mut self,
        e: &dapr_identity::Error,
        attempt: u32,
        retry_in: Duration,
        renewing: bool,
    ) {
        if renewing {
            warn!(attempt, "serving certificate renewal failed: {e}");
        } else {
            warn!(
                attempt,
                ?retry_in,
                "no serving certificate from sentry yet: {e}"
            );
        }
    }
}

/// Gets the first certificate from sentry (retrying while it is unreachable, until `stop`),
/// then renews it in the background at half its lifetime ([`renewal::keep_fresh`]) until `stop`.
pub(crate) async fn sentry_resolver(
    request: SvidRequest,
    token_file: PathBuf,
    trust_anchors_file: PathBuf,
    stop: &CancellationToken,
) -> Result<Arc<ReloadingCert>, Error> {
    let sentry = request.sentry_address.clone();
    let mut source = FromSentry {
        request,
        token_file,
        trust_anchors_file,
    };
    let (first, renew_at) = renewal::first(&mut source, stop)
        .await
        .map_err(Error::Identity)?;
    info!(%sentry, "serving certificate issued by sentry");
    let resolver = Arc::new(ReloadingCert::new(first));
    let updater = resolver.clone();
    let sink = move |key| {
        updater.replace(key);
        info!("serving certificate renewed by sentry");
    };
    tokio::spawn(renewal::keep_fresh(source, sink, renew_at, stop.clone()));
    Ok(resolver)
}

async fn files_resolver(
    cert: &std::path::Path,
    key: &std::path::Path,
    reload_interval: Duration,
) -> Result<Arc<ReloadingCert>, Error> {
    let mut changes = files::watch(vec![cert.to_path_buf(), key.to_path_buf()], reload_interval);
    let first = changes.borrow_and_update().clone().ok_or_else(|| {
        Error::Tls(format!(
            "cannot read {} and {}",
            cert.display(),
            key.display()
        ))
    })?;
    let resolver = Arc::new(ReloadingCert::new(parse_pair(&first)?));
    let updater = resolver.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let Some(contents) = changes.borrow_and_update().clone() else {
                continue;
            };
            match parse_pair(&contents) {
                Ok(key) => {
                    updater.replace(key);
                    info!("serving certificate reloaded");
                }
                Err(e) => {
                    warn!(error = %e, "new serving certificate rejected; keeping the old one")
                }
            }
        }
    });
    Ok(resolver)
}

fn parse_pair(contents: &files::Contents) -> Result<CertifiedKey, Error> {
    match contents.as_slice() {
        [cert, key] => certified_key(cert, key),
        _ => Err(Error::Tls("expected a certificate and a key".to_owned())),
    }
}

/// Serves `router` over TLS on `listener` within [`dapr_serve::Limits::DEFAULT`] (connection
/// cap, 10 s handshake, 10 s header deadline: docs/limits.md) until `shutdown`, then gives open
/// requests [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(config);
    let limits = dapr_serve::Limits::DEFAULT;
    let connections = dapr_serve::incoming(
        "webhook",
        listener,
        limits,
        shutdown.clone(),
        move |tcp, _| acceptor.accept(tcp),
    );
    let serving = dapr_serve::serve_http("webhook", connections, router, limits, shutdown.clone());
    tokio::pin!(serving);
    tokio::select! {
        () = serving.as_mut() => {}
        () = shutdown.cancelled() => {
            if tokio::time::timeout(SHUTDOWN_GRACE, serving).await.is_err() {
                warn!("open webhook connections did not finish within the shutdown grace");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_with_its_own_key_loads() {
        let (cert, key) = pair();
        certified_key(cert.as_bytes(), key.as_bytes()).unwrap();
    }

    #[test]
    fn a_key_that_does_not_belong_to_the_certificate_is_refused() {
        let (cert, _) = pair();
        let (_, other_key) = pair();
        let err = certified_key(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("certificate and key"), "{err}");
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        let (_, key) = pair();
        assert!(certified_key(b"", key.as_bytes()).is_err());
        assert!(certified_key(key.as_bytes(), key.as_bytes()).is_err());
    }
}
