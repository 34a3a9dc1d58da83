//! The one Kubernetes API call daprd makes: a `GET` of one object (the Configuration `--config`
//! names, once at start), as the pod's service account or as a kubeconfig's user.
//!
//! Hand-written on hyper and rustls rather than kube-rs, which sentry and the injector use: for
//! this single read its client stack (config loading, auth plugins, YAML, JSONPath, middleware)
//! was 4.4 MB of daprd's 18 MB binary and 1.4 MB of every sidecar's idle memory
//! (bench/notes.md). What it reads, as kube-rs and client-go do: `KUBECONFIG` when set (its
//! current context: server, `certificate-authority[-data]`, `token`, `tokenFile`,
//! `client-certificate[-data]` + `client-key[-data]`), else the in-cluster service account
//! (`KUBERNETES_SERVICE_HOST`/`_PORT`, the token and CA under
//! `/var/run/secrets/kubernetes.io/serviceaccount`, the token re-read on every request since
//! the kubelet rotates it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

/// The service account files the kubelet mounts into every pod that asks for them.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The largest answer read (a Configuration is a few KiB).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Where the API server is, as found in the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    pub kubeconfig: Option<PathBuf>,
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.
    pub in_cluster: Option<(String, String)>,
}

/// How requests authenticate, besides a client certificate in the TLS config.
#[derive(Clone)]
enum Credential {
    None,
    Token(String),
    /// Re-read for every request.
    TokenFile(PathBuf),
}

/// Why the API server could not be reached or asked. Each message is what a start-up error or
/// log line shows, so the texts stay stable; the cause is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error("no Kubernetes API access: neither KUBECONFIG nor KUBERNETES_SERVICE_HOST/PORT is set")]
    NoAccess,
    #[error("KUBERNETES_SERVICE_PORT {port:?} is not a port")]
    BadPort {
        port: String,
        source: std::num::ParseIntError,
    },
    /// The service account's CA, or a token file (re-read for every request).
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("KUBECONFIG {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    #[error("{0}")]
    TlsConfig(#[from] TlsConfigError),
    #[error("{host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
    #[error("{host}: no address")]
    NoAddress { host: String },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server name {host:?}: {source}")]
    ServerName {
        host: String,
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP with {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: hyper::Error,
    },
    #[error("request {path}: {source}")]
    Request { path: String, source: http::Error },
    #[error("GET {path}: {source}")]
    Get { path: String, source: hyper::Error },
    /// The body failed or exceeded [`MAX_ANSWER`].
    #[error("GET {path}: reading the answer: {source}")]
    Answer {
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What is wrong with the kubeconfig or what it names; shown after `KUBECONFIG <path>: `.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("{0}")]
    Read(#[source] std::io::Error),
    #[error("{0}")]
    Parse(#[source] yaml_serde::Error),
    #[error("no context {0:?} (current-context)")]
    NoContext(String),
    #[error("no cluster {0:?}")]
    NoCluster(String),
    #[error("insecure-skip-tls-verify is not supported: give the cluster's CA")]
    InsecureSkipTlsVerify,
    #[error("server {server:?}: {source}")]
    Server {
        server: String,
        source: http::uri::InvalidUri,
    },
    #[error("server {0:?}: only https is supported")]
    NotHttps(String),
    #[error("server {0:?} has no host")]
    NoHost(String),
    /// A `*-data` field that is not base64.
    #[error("{field}: {source}")]
    Data {
        field: &'static str,
        source: base64::DecodeError,
    },
    #[error("the cluster names no certificate-authority[-data]")]
    NoCertificateAuthority,
    #[error("exec and auth-provider credentials are not supported")]
    UnsupportedCredential,
    #[error("a client certificate needs its key and the key its certificate")]
    UnpairedClientCertificate,
    /// A file the kubeconfig names (CA, client certificate or key).
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    TlsConfig(#[from] TlsConfigError),
}

/// Why the CA or client credentials do not make a TLS client config. The larger causes are
/// boxed to keep every `Result` that carries this small.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("certificate authority: {0}")]
    CertificateAuthority(#[source] Box<dapr_identity::Error>),
    #[error("{0}")]
    ProtocolVersions(#[source] Box<rustls::Error>),
    #[error("client certificate: {0}")]
    ClientCertificate(#[source] rustls::pki_types::pem::Error),
    #[error("client key: {0}")]
    ClientKey(#[source] rustls::pki_types::pem::Error),
    #[error("client certificate and key: {0}")]
    ClientAuth(#[source] Box<rustls::Error>),
}

/// A connection recipe for the API server.
#[derive(Clone)]
pub struct ApiServer {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    credential: Credential,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// An answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The `message` of a Kubernetes `Status` body, or the body as text.
    pub fn message(&self) -> String {
        #[derive(Deserialize)]
        struct Status {
            message: String,
        }
        serde_json::from_slice::<Status>(&self.body)
            .map(|s| s.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned())
    }
}

impl ApiServer {
    /// From `KUBECONFIG` when set, else the in-cluster service account.
    pub fn from_source(source: &Source) -> Result<Self, ApiServerError> {
        if let Some(path) = &source.kubeconfig {
            return Self::from_kubeconfig(path);
        }
        let Some((host, port)) = &source.in_cluster else {
            return Err(ApiServerError::NoAccess);
        };
        let port = port.parse().map_err(|source| ApiServerError::BadPort {
            port: port.clone(),
            source,
        })?;
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let ca = read(&dir.join("ca.crt"))?;
        Ok(ApiServer {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            tls: tls_config(&ca, None)?,
            credential: Credential::TokenFile(dir.join("token")),
        })
    }

    fn from_kubeconfig(path: &Path) -> Result<Self, ApiServerError> {
        let load = || {
            let text = std::fs::read_to_string(path).map_err(KubeconfigError::Read)?;
            let config: Kubeconfig = yaml_serde::from_str(&text).map_err(KubeconfigError::Parse)?;
            config.resolve(path.parent().unwrap_or(Path::new(".")))
        };
        load().map_err(|source| ApiServerError::Kubeconfig {
            path: path.to_owned(),
            source,
        })
    }

    /// `GET path`, bounded by the caller's deadline.
    pub async fn get(&self, path: &str) -> Result<Answer, ApiServerError> {
        let authorization = match &self.credential {
            Credential::None => None,
            Credential::Token(token) => Some(token.clone()),
            Credential::TokenFile(file) => {
                Some(String::from_utf8_lossy(&read(file)?).trim().to_owned())
            }
        };
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|source| ApiServerError::Lookup {
                host: self.host.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| ApiServerError::NoAddress {
                host: self.host.clone(),
            })?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ApiServerError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.host.clone()).map_err(|source| {
            ApiServerError::ServerName {
                host: self.host.clone(),
                source,
            }
        })?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|source| ApiServerError::Tls { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| ApiServerError::Http { addr, source })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = http::Request::get(path)
            .header(http::header::HOST, format!("{}:{}", self.host, self.port))
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("daprd/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = authorization {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request =
            request
                .body(Empty::<Bytes>::new())
                .map_err(|source| ApiServerError::Request {
                    path: path.to_owned(),
                    source,
                })?;
        let response =
            sender
                .send_request(request)
                .await
                .map_err(|source| ApiServerError::Get {
                    path: path.to_owned(),
                    source,
                })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|source| ApiServerError::Answer {
                path: path.to_owned(),
                source,
            })?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

/// A file the service account or a credential names, read whole.
fn read(path: &Path) -> Result<Vec<u8>, ApiServerError> {
    std::fs::read(path).map_err(|source| ApiServerError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Trusts `ca` (PEM) and presents `client` (certificate chain and key, PEM) when given.
fn tls_config(
    ca: &[u8],
    client: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let roots = dapr_identity::tls::root_store(ca)
        .map_err(|e| TlsConfigError::CertificateAuthority(Box::new(e)))?;
    let builder =
        rustls::ClientConfig::builder_with_provider(dapr_identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::ProtocolVersions(Box::new(e)))?
            .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(&chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(TlsConfigError::ClientCertificate)?;
            let key = PrivateKeyDer::from_pem_slice(&key).map_err(TlsConfigError::ClientKey)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsConfigError::ClientAuth(Box::new(e)))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug, Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    exec: Option<serde_json::Value>,
    auth_provider: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

impl Kubeconfig {
    /// The current context's server and credentials; relative paths are relative to `base`
    /// (the kubeconfig's directory), as kubectl reads them.
    fn resolve(self, base: &Path) -> Result<ApiServer, KubeconfigError> {
        let context = self
            .contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .ok_or_else(|| KubeconfigError::NoContext(self.current_context.clone()))?;
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == context.context.cluster)
            .map(|c| &c.cluster)
            .ok_or_else(|| KubeconfigError::NoCluster(context.context.cluster.clone()))?;
        let user = self
            .users
            .iter()
            .find(|u| u.name == context.context.user)
            .map(|u| &u.user);
        if cluster.insecure_skip_tls_verify {
            return Err(KubeconfigError::InsecureSkipTlsVerify);
        }
        let uri: http::Uri = cluster
            .server
            .parse()
            .map_err(|source| KubeconfigError::Server {
                server: cluster.server.clone(),
                source,
            })?;
        if uri.scheme_str() != Some("https") {
            return Err(KubeconfigError::NotHttps(cluster.server.clone()));
        }
        let host = uri
            .host()
            .ok_or_else(|| KubeconfigError::NoHost(cluster.server.clone()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let path = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        let data = |field: &'static str, b64: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|source| KubeconfigError::Data { field, source })
        };
        let read_file = |file: &PathBuf| {
            let file = path(file);
            std::fs::read(&file).map_err(|source| KubeconfigError::File { path: file, source })
        };
        let ca = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(b64), _) => data("certificate-authority-data", b64)?,
            (None, Some(file)) => read_file(file)?,
            (None, None) => {
                return Err(KubeconfigError::NoCertificateAuthority);
            }
        };
        let mut credential = Credential::None;
        let mut client = None;
        if let Some(user) = user {
            if user.exec.is_some() || user.auth_provider.is_some() {
                return Err(KubeconfigError::UnsupportedCredential);
            }
            credential = match (&user.token, &user.token_file) {
                (Some(token), _) => Credential::Token(token.clone()),
                (None, Some(file)) => Credential::TokenFile(path(file)),
                (None, None) => Credential::None,
            };
            let cert = match (&user.client_certificate_data, &user.client_certificate) {
                (Some(b64), _) => Some(data("client-certificate-data", b64)?),
                (None, Some(file)) => Some(read_file(file)?),
                (None, None) => None,
            };
            let key = match (&user.client_key_data, &user.client_key) {
                (Some(b64), _) => Some(data("client-key-data", b64)?),
                (None, Some(file)) => Some(read_file(file)?),
                (None, None) => None,
            };
            client = match (cert, key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => {
                    return Err(KubeconfigError::UnpairedClientCertificate);
                }
            };
        }
        Ok(ApiServer {
            host,
            port: uri.port_u16().unwrap_or(443),
            tls: tls_config(&ca, client)?,
            credential,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("ca").pem()
    }

    fn kubeconfig(dir: &Path, cluster: &str, user: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n{cluster}\nusers:\n- name: u\n  user:\n{user}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
            ),
        )
        .expect("write");
        path
    }

    #[test]
    fn a_kubeconfig_gives_the_current_contexts_server_ca_and_token() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("ca.pem"), ca_pem()).expect("ca");
        let path = kubeconfig(
            dir.path(),
            "    server: https://127.0.0.1:6443\n    certificate-authority: ca.pem",
            "    token: abc",
        );
        let api = ApiServer::from_source(&Source {
            kubeconfig: Some(path),
            in_cluster: Some(("10.0.0.1".into(), "443".into())),
        })
        .expect("kubeconfig wins over in-cluster");
        assert_eq!((api.host.as_str(), api.port), ("127.0.0.1", 6443));
        assert!(matches!(api.credential, Credential::Token(ref t) if t == "abc"));
        assert!(!format!("{api:?}").contains("abc"), "no token in Debug");

        let b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem());
        let path = kubeconfig(
            dir.path(),
            &format!("    server: https://api.example:8443\n    certificate-authority-data: {b64}"),
            "    tokenFile: token",
        );
        let api = ApiServer::from_source(&Source {
            kubeconfig: Some(path),
            in_cluster: None,
        })
        .expect("data and token file");
        assert_eq!((api.host.as_str(), api.port), ("api.example", 8443));
        assert!(
            matches!(api.credential, Credential::TokenFile(ref p) if *p == dir.path().join("token"))
        );
    }

    #[test]
    fn what_a_kubeconfig_lacks_or_cannot_do_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("ca.pem"), ca_pem()).expect("ca");
        let ca = "    certificate-authority: ca.pem";
        for (cluster, user, expected) in [
            (
                "    server: https://h:1",
                "    token: t",
                "names no certificate-authority",
            ),
            (
                &*format!("    server: http://h:1\n{ca}"),
                "    token: t",
                "only https",
            ),
            (
                &*format!("    server: https://h:1\n{ca}\n    insecure-skip-tls-verify: true"),
                "    token: t",
                "insecure-skip-tls-verify is not supported",
            ),
            (
                &*format!("    server: https://h:1\n{ca}"),
                "    exec: {command: aws}",
                "exec and auth-provider credentials are not supported",
            ),
            (
                &*format!("    server: https://h:1\n{ca}"),
                "    client-certificate: ca.pem",
                "needs its key",
            ),
            (
                "    server: https://h:1\n    certificate-authority: missing.pem",
                "    token: t",
                "missing.pem",
            ),
        ] {
            let path = kubeconfig(dir.path(), cluster, user);
            let err = ApiServer::from_source(&Source {
                kubeconfig: Some(path),
                in_cluster: None,
            })
            .expect_err(expected)
            .to_string();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(err.starts_with("KUBECONFIG "), "names the file: {err}");
        }
        let path = kubeconfig(
            dir.path(),
            "    server: https://h:1\n    certificate-authority: missing.pem",
            "    token: t",
        );
        let err = ApiServer::from_source(&Source {
            kubeconfig: Some(path),
            in_cluster: None,
        })
        .expect_err("missing CA file");
        assert!(
            matches!(
                err,
                ApiServerError::Kubeconfig {
                    source: KubeconfigError::File { ref source, .. },
                    ..
                } if source.kind() == std::io::ErrorKind::NotFound
            ),
            "keeps the I/O error as its cause: {err:?}"
        );
        let err = ApiServer::from_source(&Source::default())
            .expect_err("nothing set")
            .to_string();
        assert!(
            err.contains("neither KUBECONFIG nor KUBERNETES_SERVICE_HOST"),
            "{err}"
        );
    }

    #[test]
    fn a_kubernetes_status_body_gives_its_message() {
        let answer = Answer {
            status: http::StatusCode::FORBIDDEN,
            body: Bytes::from_static(
                br#"{"kind":"Status","message":"configurations.dapr.io \"a\" is forbidden","code":403}"#,
            ),
        };
        assert_eq!(
            answer.message(),
            "configurations.dapr.io \"a\" is forbidden"
        );
        let answer = Answer {
            status: http::StatusCode::BAD_GATEWAY,
            body: Bytes::from_static(b"bad gateway"),
        };
        assert_eq!(answer.message(), "bad gateway");
    }
}
