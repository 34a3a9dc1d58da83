//! The client side of `CA/SignCertificate`, shared by daprd (its workload identity) and the
//! injector (its serving certificate): a fresh key and an empty-subject CSR, sent over TLS to a
//! server that must prove sentry's exact SPIFFE id.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dapr_proto::sentry::v1::SignCertificateRequest;
use dapr_proto::sentry::v1::ca_client::CaClient;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Error;
use crate::spiffe::SpiffeId;
use crate::tls::ExpectedId;

/// Per attempt: connecting and answering (upstream: 3 s per try).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What to ask sentry for.
#[derive(Debug, Clone)]
pub struct SvidRequest {
    /// `host:port`.
    pub sentry_address: String,
    /// The id sentry must prove (`spiffe://<cp-td>/ns/<cp-ns>/dapr-sentry`).
    pub sentry_id: SpiffeId,
    /// The app id (or `dapr-<service>`) and namespace asked for.
    pub id: String,
    pub namespace: String,
    /// The token for sentry's validator (empty: none) and the validator's number.
    pub token: String,
    pub validator: i32,
}

/// A certificate sentry signed, with its key.
pub struct Svid {
    pub id: SpiffeId,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id.to_string())
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The key a certificate is requested for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// daprd and the injector: upstream's workload key (pkg/security/x509source.go generates
    /// ECDSA P-256), which any sentry signs and any peer (an upstream daprd, the API server
    /// calling the injector's webhook) verifies.
    EcdsaP256,
    /// Signed by this sentry, but not what upstream's daprd sends: upstream sentries whose
    /// pkg/sentry/server/ca/cert.go copies the CSR's signature algorithm onto the leaf cannot
    /// sign an Ed25519 request with their P-256 issuer.
    Ed25519,
}

/// Asks sentry for a certificate with a fresh key of `algorithm`.
pub async fn request(
    request: &SvidRequest,
    roots: &Arc<RootCertStore>,
    algorithm: KeyAlgorithm,
) -> Result<Svid, Error> {
    let algorithm = match algorithm {
        KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
    };
    let tls = Arc::new(crate::tls::client_config(
        Arc::clone(roots),
        ExpectedId::Exact(request.sentry_id.clone()),
    )?);
    let key = rcgen::KeyPair::generate_for(algorithm).map_err(Error::Csr)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(Error::Csr)?;

    let address = request.sentry_address.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let (tls, address) = (Arc::clone(&tls), address.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(address.as_str()).await?;
            tcp.set_nodelay(true)?;
            let host = address
                .rsplit_once(':')
                .map_or(address.as_str(), |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            // The server is checked by its SPIFFE id; the name only has to be well-formed.
            let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", request.sentry_address))
            .map_err(|source| Error::SentryAddress {
                address: request.sentry_address.clone(),
                source,
            })?
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .connect_with_connector_lazy(connector);
    let response = CaClient::new(channel)
        .sign_certificate(SignCertificateRequest {
            id: request.id.clone(),
            token: request.token.clone(),
            trust_domain: String::new(),
            namespace: request.namespace.clone(),
            certificate_signing_request: csr.into_bytes().into(),
            token_validator: request.validator,
            jwt_audiences: Vec::new(),
        })
        .await
        .map_err(|status| Error::Sentry {
            address: request.sentry_address.clone(),
            status,
        })?
        .into_inner();

    let chain = crate::pem::certs_from_pem(&response.workload_certificate)
        .map_err(|e| Error::IssuedChain(Box::new(e)))?;
    let leaf = chain.first().ok_or(Error::EmptyChain)?;
    let (not_before, not_after) = validity(leaf)?;
    let id = crate::tls::spiffe_id(leaf)?;
    if id.app_id() != request.id || id.namespace() != request.namespace {
        return Err(Error::WrongIdentity {
            issued: id,
            namespace: request.namespace.clone(),
            id: request.id.clone(),
        });
    }
    Ok(Svid {
        id,
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        not_before,
        not_after,
    })
}

/// When to renew: half-way through the certificate's lifetime, as upstream.
pub fn refresh_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + lifetime / 2
}

/// How long to wait after the `attempt`-th failed request (1-based): 1 s doubling to 10 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(4)).min(Duration::from_secs(10))
}

/// A certificate's NotBefore and NotAfter.
fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), Error> {
    let (_, parsed) = X509Certificate::from_der(cert).map_err(Error::IssuedCertificate)?;
    let at = |t: i64| {
        u64::try_from(t)
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .map_err(|_| Error::ValidityBefore1970)
    };
    Ok((
        at(parsed.validity().not_before.timestamp())?,
        at(parsed.validity().not_after.timestamp())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_half_way_through_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(24 * 3600 + 15 * 60);
        assert_eq!(
            refresh_at(start, end),
            start + Duration::from_secs(12 * 3600 + 450)
        );
        assert_eq!(
            refresh_at(end, start),
            end,
            "a backwards lifetime renews now"
        );
    }

    #[test]
    fn retries_back_off_from_one_to_ten_seconds() {
        let delays: Vec<u64> = (1..=7).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10, 10]);
    }
}
