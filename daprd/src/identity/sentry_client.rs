//! One certificate request to sentry: a fresh Ed25519 key and an empty-subject CSR, sent over
//! TLS to a server that must prove sentry's exact SPIFFE id.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dapr_proto::sentry::v1::SignCertificateRequest;
use dapr_proto::sentry::v1::ca_client::CaClient;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sentry::spiffe::SpiffeId;
use sentry::tls::ExpectedId;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Svid;
use super::transport::Connector;
use crate::Error;
use crate::config::MtlsConfig;

/// The app id of sentry's own certificate.
const SENTRY_APP_ID: &str = "dapr-sentry";
/// Per attempt: connecting and answering (upstream: 3s per try).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

fn identity_error(what: impl std::fmt::Display) -> Error {
    Error::Identity(what.to_string())
}

/// Asks sentry for a certificate for this sidecar.
pub async fn request(
    config: &MtlsConfig,
    namespace: &str,
    roots: &Arc<RootCertStore>,
) -> Result<Svid, Error> {
    let sentry_id = SpiffeId::new(
        &config.control_plane_trust_domain,
        &config.control_plane_namespace,
        SENTRY_APP_ID,
    )
    .map_err(identity_error)?;
    let tls = sentry::tls::client_config(Arc::clone(roots), ExpectedId::Exact(sentry_id))
        .map_err(identity_error)?;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(identity_error)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(identity_error)?;
    let token = match &config.token.path {
        Some(path) => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| identity_error(format!("token file {}: {e}", path.display())))?
            .trim()
            .to_owned(),
        None => String::new(),
    };
    let request = SignCertificateRequest {
        id: config.request_id.clone(),
        token,
        trust_domain: String::new(),
        namespace: namespace.to_owned(),
        certificate_signing_request: csr.into_bytes().into(),
        token_validator: config.token.validator,
        jwt_audiences: Vec::new(),
    };

    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://{}", config.sentry_address))
            .map_err(|e| identity_error(format!("--sentry-address: {e}")))?
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .connect_with_connector_lazy(Connector::fixed(Arc::new(tls)));
    let response = CaClient::new(channel)
        .sign_certificate(request)
        .await
        .map_err(|status| {
            identity_error(format!(
                "sentry at {} answered {:?}: {}",
                config.sentry_address,
                status.code(),
                status.message()
            ))
        })?
        .into_inner();

    let chain = sentry::ca::certs_from_pem(&response.workload_certificate)
        .map_err(|e| identity_error(format!("sentry's certificate chain: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| identity_error("sentry returned an empty certificate chain"))?;
    let (not_before, not_after) = validity(leaf)?;
    let id = sentry::tls::spiffe_id(leaf).map_err(identity_error)?;
    if id.app_id() != config.request_id || id.namespace() != namespace {
        return Err(identity_error(format!(
            "sentry issued {id}, not an identity for {}/{}",
            namespace, config.request_id
        )));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(Svid {
        id,
        chain,
        key,
        not_before,
        not_after,
    })
}

/// A certificate's NotBefore and NotAfter.
fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), Error> {
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|e| identity_error(format!("sentry's certificate does not parse: {e}")))?;
    let at = |t: i64| {
        u64::try_from(t)
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .map_err(|_| identity_error("certificate validity before 1970"))
    };
    Ok((
        at(parsed.validity().not_before.timestamp())?,
        at(parsed.validity().not_after.timestamp())?,
    ))
}
