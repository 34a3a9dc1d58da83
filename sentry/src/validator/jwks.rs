//! The `jwks` validator: the request's token must be a JWT signed by a key of a JWKS, with
//! `aud` including sentry's SPIFFE id and `sub` = `spiffe://<td>/ns/<ns>/<id>`.
//!
//! The JWKS comes from a URL (re-fetched when a token names an unknown key, at most once per
//! `minRefreshInterval`), a file (re-read when its content changes, polled every second), or
//! the option value itself (JSON, optionally base64). Upstream's sources and defaults.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use dapr_identity::files;
use dapr_proto::sentry::v1::SignCertificateRequest;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::pki_types::ServerName;

use super::{Validated, common_checks};
use crate::Error;
use crate::config::JwksOptions;

/// Signature algorithms accepted; all asymmetric, so a public JWKS can never act as an HMAC key.
const ACCEPTED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Clock skew tolerated on `exp`/`nbf` (upstream: 5 minutes).
const LEEWAY: Duration = Duration::from_secs(300);
/// How often a file source is re-read.
const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Why the JWKS could not be loaded at start-up (sentry then does not start).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("{}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    ParseFile { path: PathBuf, source: NotAJwks },
    #[error("source is not a URL, an existing file, or a JWKS (JSON, optionally base64)")]
    UnknownSource,
    #[error("invalid source URL {url:?}: {source}")]
    Url {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("caCertificate: {0}")]
    CaCertificate(#[source] dapr_identity::Error),
    #[error("no CA certificates to verify {url} (set caCertificate)")]
    NoCaCertificates { url: String },
    #[error("{0}")]
    Tls(#[source] rustls::Error),
    #[error("{0}")]
    Fetch(#[from] FetchError),
}

/// A document that does not parse as a JWKS.
#[derive(Debug, thiserror::Error)]
#[error("not a JWKS: {0}")]
pub struct NotAJwks(#[source] serde_json::Error);

/// Why fetching the JWKS from its URL failed: at start-up an error, later a logged refresh.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("fetching {url}: {source}")]
    Failed { url: String, source: FetchFailure },
}

/// What went wrong within one fetch; [`FetchError`] names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailure {
    #[error("the URL has no host")]
    NoHost,
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    #[error("{0}")]
    Request(#[source] http::Error),
    #[error("{0}")]
    ServerName(#[source] rustls::pki_types::InvalidDnsNameError),
    #[error("{0}")]
    Tls(#[source] std::io::Error),
    #[error("{0}")]
    Http(#[source] hyper::Error),
    #[error("HTTP status {0}")]
    Status(http::StatusCode),
    /// The body failed or exceeded [`MAX_JWKS_BYTES`].
    #[error("{0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    NotAJwks(#[from] NotAJwks),
}

#[derive(Debug)]
enum Source {
    Url(Fetcher),
    File {
        path: PathBuf,
        /// The content the keys were parsed from, so the watcher sees any later change.
        loaded: Vec<u8>,
    },
    Inline,
}

#[derive(Debug)]
pub struct JwksValidator {
    source: Source,
    /// Sentry's SPIFFE id: the audience tokens must name.
    audience: String,
    min_refresh_interval: Duration,
    keys: RwLock<Arc<JwkSet>>,
    /// When a URL source was last fetched; the lock also serialises refreshes.
    last_fetch: tokio::sync::Mutex<Instant>,
    /// The task following a file source; stopped with the validator.
    follower: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for JwksValidator {
    fn drop(&mut self) {
        if let Some(follower) = self.follower.get() {
            follower.abort();
        }
    }
}

enum Refusal {
    UnknownKey(String),
    Invalid(String),
}

impl JwksValidator {
    /// Loads the JWKS once (start-up fails if it cannot) and, for a file, starts watching it.
    pub async fn start(options: &JwksOptions, audience: String) -> Result<Arc<Self>, Error> {
        let location = options.source.trim();
        let (source, keys) = if location.starts_with("https://") || location.starts_with("http://")
        {
            if location.starts_with("http://") {
                tracing::warn!(source = location, "JWKS is fetched without TLS");
            }
            let fetcher = Fetcher::new(location, options)?;
            let keys = fetcher.fetch().await.map_err(JwksError::Fetch)?;
            (Source::Url(fetcher), keys)
        } else if std::path::Path::new(location).is_file() {
            let path = PathBuf::from(location);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(source) => return Err(JwksError::ReadFile { path, source }.into()),
            };
            let keys = match parse_json(&bytes) {
                Ok(keys) => keys,
                Err(source) => return Err(JwksError::ParseFile { path, source }.into()),
            };
            (
                Source::File {
                    path,
                    loaded: bytes,
                },
                keys,
            )
        } else {
            let keys = parse_inline(location).ok_or(JwksError::UnknownSource)?;
            (Source::Inline, keys)
        };
        tracing::info!(keys = keys.keys.len(), source = %describe(&source), "JWKS loaded");
        let validator = Arc::new(JwksValidator {
            source,
            audience,
            min_refresh_interval: options.min_refresh_interval,
            keys: RwLock::new(Arc::new(keys)),
            last_fetch: tokio::sync::Mutex::new(Instant::now()),
            follower: OnceLock::new(),
        });
        if let Source::File { path, loaded } = &validator.source {
            let changes = files::watch(vec![path.clone()], FILE_POLL_INTERVAL);
            let task = tokio::spawn(follow_file(
                Arc::downgrade(&validator),
                path.clone(),
                loaded.clone(),
                changes,
            ));
            let _ = validator.follower.set(task.abort_handle());
        }
        Ok(validator)
    }

    pub async fn validate(&self, req: &SignCertificateRequest) -> Result<Validated, Error> {
        if req.token.is_empty() {
            return Err(Error::Denied("the request does not contain a token".into()));
        }
        let validated = common_checks(req)?;
        let subject = format!(
            "spiffe://{}/ns/{}/{}",
            validated.trust_domain, req.namespace, req.id
        );
        let refusal = match self.verify(&req.token, &subject) {
            Ok(()) => return Ok(validated),
            Err(refusal) => refusal,
        };
        let reason = match refusal {
            Refusal::UnknownKey(kid) if matches!(self.source, Source::Url(_)) => {
                self.refresh().await;
                match self.verify(&req.token, &subject) {
                    Ok(()) => return Ok(validated),
                    Err(Refusal::UnknownKey(_)) => format!("no key with id {kid:?} in the JWKS"),
                    Err(Refusal::Invalid(reason)) => reason,
                }
            }
            Refusal::UnknownKey(kid) => format!("no key with id {kid:?} in the JWKS"),
            Refusal::Invalid(reason) => reason,
        };
        Err(Error::Denied(format!("token validation failed: {reason}")))
    }

    fn current_keys(&self) -> Arc<JwkSet> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace_keys(&self, keys: JwkSet) {
        let keys = Arc::new(keys);
        match self.keys.write() {
            Ok(mut slot) => *slot = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }

    fn verify(&self, token: &str, subject: &str) -> Result<(), Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refusal::Invalid(format!("malformed token: {e}")))?;
        if !ACCEPTED_ALGORITHMS.contains(&header.alg) {
            return Err(Refusal::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| Refusal::Invalid("the token header has no key id (kid)".into()))?;
        let keys = self.current_keys();
        let jwk = keys
            .find(&kid)
            .ok_or_else(|| Refusal::UnknownKey(kid.clone()))?;
        if let Some(alg) = jwk.common.key_algorithm
            && alg.to_string() != format!("{:?}", header.alg)
        {
            return Err(Refusal::Invalid(format!(
                "key {kid:?} is for {alg}, the token uses {:?}",
                header.alg
            )));
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| Refusal::Invalid(format!("key {kid:?} is unusable: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.required_spec_claims = HashSet::from(["aud".to_owned(), "sub".to_owned()]);
        validation.set_audience(&[&self.audience]);
        validation.sub = Some(subject.to_owned());
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map(|_| ())
            .map_err(|e| {
                Refusal::Invalid(match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                        format!("aud does not include {}", self.audience)
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidSubject => {
                        format!("sub is not {subject}")
                    }
                    _ => e.to_string(),
                })
            })
    }

    /// Re-fetches a URL source unless it was fetched less than `minRefreshInterval` ago.
    async fn refresh(&self) {
        let Source::Url(fetcher) = &self.source else {
            return;
        };
        let mut last = self.last_fetch.lock().await;
        if last.elapsed() < self.min_refresh_interval {
            return;
        }
        *last = Instant::now();
        match fetcher.fetch().await {
            Ok(keys) => {
                tracing::info!(keys = keys.keys.len(), url = %fetcher.url, "JWKS refreshed");
                self.replace_keys(keys);
            }
            Err(e) => {
                tracing::warn!(url = %fetcher.url, "JWKS refresh failed, keeping the old keys: {e}")
            }
        }
    }
}

fn describe(source: &Source) -> String {
    match source {
        Source::Url(f) => f.url.clone(),
        Source::File { path, .. } => path.display().to_string(),
        Source::Inline => "inline".into(),
    }
}

/// Reloads the keys whenever the file's content changes (dapr_identity::files polls it), until
/// the validator is dropped. A file that cannot be read keeps the last keys.
async fn follow_file(
    validator: Weak<JwksValidator>,
    path: PathBuf,
    mut last: Vec<u8>,
    mut changes: tokio::sync::watch::Receiver<Option<files::Contents>>,
) {
    loop {
        let now = changes
            .borrow_and_update()
            .as_ref()
            .and_then(|contents| contents.first().cloned());
        if let Some(now) = now
            && now != last
        {
            let Some(validator) = validator.upgrade() else {
                return;
            };
            match parse_json(&now) {
                Ok(keys) => {
                    tracing::info!(keys = keys.keys.len(), path = %path.display(), "JWKS file reloaded");
                    validator.replace_keys(keys);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), "JWKS file not reloaded, keeping the old keys: {e}")
                }
            }
            last = now;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn parse_json(bytes: &[u8]) -> Result<JwkSet, NotAJwks> {
    serde_json::from_slice(bytes).map_err(NotAJwks)
}

/// The option value itself: base64 (padding optional) of a JWKS, or the JWKS JSON.
fn parse_inline(value: &str) -> Option<JwkSet> {
    let unpadded = value.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(unpadded)
        .ok()
        .and_then(|json| parse_json(&json).ok())
        .or_else(|| parse_json(value.as_bytes()).ok())
}

/// One-request-at-a-time HTTP(S) GET of the JWKS, with a deadline.
#[derive(Debug)]
struct Fetcher {
    url: String,
    uri: http::Uri,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl Fetcher {
    fn new(url: &str, options: &JwksOptions) -> Result<Self, Error> {
        let uri: http::Uri = url.parse().map_err(|source| JwksError::Url {
            url: url.to_owned(),
            source,
        })?;
        let tls = if uri.scheme_str() == Some("https") {
            let mut roots = rustls::RootCertStore::empty();
            match &options.ca_certificate {
                Some(pem) => {
                    let certs = crate::ca::certs_from_pem(pem.as_bytes())
                        .map_err(JwksError::CaCertificate)?;
                    roots.add_parsable_certificates(certs);
                }
                None => {
                    let native = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(native.certs);
                }
            }
            if roots.is_empty() {
                return Err(JwksError::NoCaCertificates {
                    url: url.to_owned(),
                }
                .into());
            }
            let config =
                rustls::ClientConfig::builder_with_provider(dapr_identity::tls::crypto_provider())
                    .with_safe_default_protocol_versions()
                    .map_err(JwksError::Tls)?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Fetcher {
            url: url.to_owned(),
            uri,
            tls,
            timeout: options.request_timeout,
        })
    }

    async fn fetch(&self) -> Result<JwkSet, FetchError> {
        tokio::time::timeout(self.timeout, self.fetch_once())
            .await
            .map_err(|_| FetchError::Timeout {
                url: self.url.clone(),
                timeout: self.timeout,
            })?
            .map_err(|source| FetchError::Failed {
                url: self.url.clone(),
                source,
            })
    }

    async fn fetch_once(&self) -> Result<JwkSet, FetchFailure> {
        let host = self.uri.host().ok_or(FetchFailure::NoHost)?.to_owned();
        let port = self
            .uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(FetchFailure::Connect)?;
        let request = http::Request::get(self.uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                http::header::HOST,
                self.uri.authority().map_or(host.as_str(), |a| a.as_str()),
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(FetchFailure::Request)?;
        let response = match &self.tls {
            Some(config) => {
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(FetchFailure::ServerName)?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(FetchFailure::Tls)?;
                send(TokioIo::new(stream), request).await?
            }
            None => send(TokioIo::new(tcp), request).await?,
        };
        if !response.status().is_success() {
            return Err(FetchFailure::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(FetchFailure::Body)?
            .to_bytes();
        Ok(parse_json(&body)?)
    }
}

async fn send<T>(
    io: T,
    request: http::Request<Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, FetchFailure>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(FetchFailure::Http)?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(FetchFailure::Http)
}

#[cfg(test)]
mod tests;
