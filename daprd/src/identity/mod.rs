//! Workload identity (`--enable-mtls`): this sidecar's SPIFFE certificate from sentry, renewed at
//! half its lifetime by `dapr_identity::renewal`, and the trust anchors (from
//! `DAPR_TRUST_ANCHORS`, or a watched file). The TLS configs built from them are published
//! through a watch channel; new handshakes use the newest, open connections keep the one they
//! started with.

pub mod transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dapr_identity::client::{KeyAlgorithm, SvidRequest, refresh_at};
use dapr_identity::renewal;
use dapr_identity::tls::{ExpectedId, mutual_client_config, mutual_server_config, root_store};
use dapr_identity::{SENTRY_APP_ID, SpiffeId};
use rustls::RootCertStore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{MtlsConfig, TrustAnchors};

pub use dapr_identity::client::Svid;

/// What handshakes use right now: the identity, the trust anchors, and the server config
/// built from both.
pub struct Material {
    pub svid: Arc<Svid>,
    pub roots: Arc<RootCertStore>,
    pub server: Arc<rustls::ServerConfig>,
}

impl Material {
    fn new(svid: Arc<Svid>, roots: Arc<RootCertStore>) -> Result<Self, dapr_identity::Error> {
        let server =
            mutual_server_config(Arc::clone(&roots), svid.chain.clone(), svid.key.clone_key())?;
        Ok(Material {
            svid,
            roots,
            server: Arc::new(server),
        })
    }

    /// A client config presenting our identity and accepting only `expected`.
    pub fn client(
        &self,
        expected: ExpectedId,
    ) -> Result<Arc<rustls::ClientConfig>, dapr_identity::Error> {
        let config = mutual_client_config(
            Arc::clone(&self.roots),
            expected,
            self.svid.chain.clone(),
            self.svid.key.clone_key(),
        )?;
        Ok(Arc::new(config))
    }
}

/// The current TLS material; `None` until the first certificate arrives.
pub type Current = watch::Receiver<Option<Arc<Material>>>;

/// Loads the trust anchors.
fn load_anchors(
    source: &TrustAnchors,
) -> Result<(Vec<u8>, Arc<RootCertStore>), dapr_identity::Error> {
    let pem = match source {
        TrustAnchors::Pem(pem) => pem.clone().into_bytes(),
        TrustAnchors::File(path) => {
            std::fs::read(path).map_err(|source| dapr_identity::Error::Read {
                what: "trust anchors file",
                path: path.clone(),
                source,
            })?
        }
    };
    let roots = root_store(&pem)?;
    Ok((pem, Arc::new(roots)))
}

/// The key this sidecar's certificates are for: upstream's workload key
/// (pkg/security/x509source.go), which every sentry version signs.
const KEY_ALGORITHM: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

/// What this sidecar asks sentry for, with `token` for its validator.
fn svid_request(
    config: &MtlsConfig,
    namespace: &str,
    token: String,
) -> Result<SvidRequest, dapr_identity::Error> {
    Ok(SvidRequest {
        sentry_address: config.sentry_address.clone(),
        sentry_id: SpiffeId::new(
            &config.control_plane_trust_domain,
            &config.control_plane_namespace,
            SENTRY_APP_ID,
        )?,
        id: config.request_id.clone(),
        namespace: namespace.to_owned(),
        token,
        validator: config.token.validator,
    })
}

/// One certificate request for this sidecar, for a fresh key of [`KEY_ALGORITHM`].
async fn request(
    config: &MtlsConfig,
    namespace: &str,
    roots: &Arc<RootCertStore>,
) -> Result<Svid, dapr_identity::Error> {
    let token = match &config.token.path {
        Some(path) => tokio::fs::read_to_string(path)
            .await
            .map_err(|source| dapr_identity::Error::Read {
                what: "token file",
                path: path.clone(),
                source,
            })?
            .trim()
            .to_owned(),
        None => String::new(),
    };
    let request = svid_request(config, namespace, token)?;
    dapr_identity::client::request(&request, roots, KEY_ALGORITHM).await
}

/// This sidecar's certificates, requested with the newest trust anchors.
struct Requests {
    config: MtlsConfig,
    namespace: String,
    roots: watch::Receiver<Arc<RootCertStore>>,
}

impl renewal::Source for Requests {
    type Issued = Arc<Svid>;

    async fn fetch(&mut self) -> Result<(Arc<Svid>, SystemTime), dapr_identity::Error> {
        let roots = self.roots.borrow().clone();
        let svid = request(&self.config, &self.namespace, &roots).await?;
        log_signed(&svid);
        let renew_at = refresh_at(svid.not_before, svid.not_after);
        Ok((Arc::new(svid), renew_at))
    }

    fn failed(
        &mut self,
        e: &dapr_identity::Error,
        attempt: u32,
        retry_in: Duration,
        renewing: bool,
    ) {
        if renewing {
            tracing::warn!(attempt, "failed to renew the certificate: {e}");
        } else {
            tracing::warn!(
                attempt,
                ?retry_in,
                "failed to get a certificate from sentry: {e}"
            );
        }
    }
}

/// Gets the first certificate (retrying while sentry is unreachable, until `stop`), then keeps
/// it fresh in the background: renewal at half-life ([`renewal::keep_fresh`]), new trust anchors
/// when the file changes.
pub async fn start(
    config: MtlsConfig,
    namespace: String,
    stop: CancellationToken,
) -> Result<Current, dapr_identity::Error> {
    let (pem, roots) = load_anchors(&config.trust_anchors)?;
    let (roots_tx, mut roots_rx) = watch::channel(roots);
    // Without a file the sender is dropped here: the anchors never change.
    if let TrustAnchors::File(path) = &config.trust_anchors {
        tokio::spawn(follow_anchors(path.clone(), pem, roots_tx, stop.clone()));
    }
    let mut requests = Requests {
        config,
        namespace,
        roots: roots_rx.clone(),
    };
    let (svid, renew_at) = renewal::first(&mut requests, &stop).await?;
    let material = Material::new(Arc::clone(&svid), roots_rx.borrow_and_update().clone())?;
    let (tx, rx) = watch::channel(Some(Arc::new(material)));
    let (svids_tx, svids_rx) = watch::channel(svid);
    let sink = move |svid| {
        svids_tx.send_replace(svid);
    };
    tokio::spawn(renewal::keep_fresh(requests, sink, renew_at, stop.clone()));
    tokio::spawn(combine(svids_rx, roots_rx, tx, stop));
    Ok(rx)
}

fn log_signed(svid: &Svid) {
    let expiry = dapr_identity::time::rfc3339(svid.not_after);
    tracing::info!(id = %svid.id, "Successfully signed certificate; it expires {expiry}");
}

/// Publishes new TLS material whenever the certificate or the trust anchors change, until
/// `stop` or until the renewal loop is gone.
async fn combine(
    mut svids: watch::Receiver<Arc<Svid>>,
    mut roots: watch::Receiver<Arc<RootCertStore>>,
    tx: watch::Sender<Option<Arc<Material>>>,
    stop: CancellationToken,
) {
    let mut following_anchors = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = svids.changed() => if changed.is_err() {
                return;
            },
            changed = roots.changed(), if following_anchors => if changed.is_err() {
                following_anchors = false;
                continue;
            },
        }
        let svid = Arc::clone(&svids.borrow_and_update());
        let roots = Arc::clone(&roots.borrow_and_update());
        match Material::new(svid, roots) {
            Ok(material) => {
                tx.send_replace(Some(Arc::new(material)));
            }
            Err(e) => tracing::error!("cannot use the new identity: {e}"),
        }
    }
}

/// How often the trust anchors file is read.
const ANCHORS_POLL: Duration = Duration::from_secs(1);

/// Follows the trust anchors file (through `dapr_identity::files`, the one file poller) until
/// `stop`: anchors that changed and parse are published.
async fn follow_anchors(
    path: PathBuf,
    mut pem: Vec<u8>,
    tx: watch::Sender<Arc<RootCertStore>>,
    stop: CancellationToken,
) {
    let mut files = dapr_identity::files::watch(vec![path.clone()], ANCHORS_POLL);
    loop {
        // The first pass also sees a change made between the first read and the watch.
        let read = files
            .borrow_and_update()
            .as_ref()
            .and_then(|contents| contents.first().cloned());
        if let Some((new_pem, roots)) = read.and_then(|read| changed_anchors(&path, &pem, read)) {
            tracing::info!(file = %path.display(), "trust anchors changed; new handshakes use them");
            pem = new_pem;
            tx.send_replace(roots);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = files.changed() => if changed.is_err() { return },
        }
    }
}

/// The anchors `read` from `path` when they differ from `current` and parse; a broken file is
/// logged and ignored (the old anchors stay).
fn changed_anchors(
    path: &Path,
    current: &[u8],
    read: Vec<u8>,
) -> Option<(Vec<u8>, Arc<RootCertStore>)> {
    if read == current {
        return None;
    }
    match root_store(&read) {
        Ok(roots) => Some((read, Arc::new(roots))),
        Err(e) => {
            tracing::warn!(file = %path.display(), "ignoring unreadable trust anchors: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SentryToken;

    #[test]
    fn the_sidecar_asks_sentry_for_its_id_with_a_fresh_ecdsa_p256_key_as_upstreams_daprd_does() {
        let config = MtlsConfig {
            sentry_address: "dapr-sentry.dapr-system.svc.cluster.local:443".into(),
            control_plane_trust_domain: "cluster.local".into(),
            control_plane_namespace: "dapr-system".into(),
            trust_anchors: TrustAnchors::Pem(String::new()),
            token: SentryToken {
                path: None,
                validator: dapr_identity::token::validator::KUBERNETES,
            },
            request_id: "app1".into(),
        };
        let request = svid_request(&config, "default", "token".into()).unwrap();
        assert_eq!(
            request.sentry_id.to_string(),
            "spiffe://cluster.local/ns/dapr-system/dapr-sentry"
        );
        assert_eq!(
            (request.id.as_str(), request.namespace.as_str()),
            ("app1", "default")
        );
        assert_eq!(
            (request.token.as_str(), request.validator),
            ("token", dapr_identity::token::validator::KUBERNETES)
        );
        assert_eq!(request.sentry_address, config.sentry_address);
        // Upstream's workload key (pkg/security/x509source.go), which every sentry signs; the
        // signing itself is sentry/tests/workload_client.rs.
        assert_eq!(KEY_ALGORITHM, KeyAlgorithm::EcdsaP256);
    }
}
