//! Invoking services that have no sidecar: an `HTTPEndpoint` resource by name, or a URL with
//! an `http://` / `https://` scheme in place of the app id, in upstream's order of precedence
//! (named HTTPEndpoint, then URL, then app id; docs.dapr.io "How-To: Invoke Non-Dapr Endpoints
//! using HTTP", upstream `pkg/messaging/direct_messaging.go`). The request goes straight to
//! `<baseUrl>/<method>?<query>` with the caller's headers plus the endpoint's `spec.headers`,
//! over TLS checked against `spec.clientTLS.rootCA` (else the system's roots), presenting
//! `clientTLS.certificate` when given; the answer streams back as it comes.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use dapr_crds::HttpEndpoint;
use dapr_crds::http_endpoint::{ClientTls, TlsDocument};
use futures::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request};
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;
use crate::resources::{EndpointError, Loaded};
use crate::wire::{self, BoxError, BoxStream, Metadata, names};
use dapr_proto::common::v1::{InvokeRequest, InvokeResponse, http_extension::Verb};
use dapr_proto::internals::v1::InternalInvokeResponse;

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an endpoint may take to answer with a response head (as for a peer sidecar).
const RESPONSE_TIMEOUT: Duration = super::invoker::RESPONSE_TIMEOUT;
/// Idle keep-alive connections per endpoint host, and how long they are kept (as the app
/// channel's pool).
const POOL_MAX_IDLE: usize = 64;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type EndpointBody = UnsyncBoxBody<Bytes, BoxError>;
type EndpointClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, EndpointBody>;

/// A named endpoint, ready to call.
#[derive(Clone)]
pub struct Endpoint {
    /// `spec.baseUrl` without a trailing `/`.
    base: String,
    /// `spec.headers`, set on every request (replacing the caller's of the same name).
    headers: Vec<(HeaderName, HeaderValue)>,
    client: EndpointClient,
}

/// Where a call goes when its target is not a Dapr app.
#[derive(Clone)]
pub enum Destination<'a> {
    Named {
        name: &'a str,
        endpoint: &'a Endpoint,
    },
    Url(String),
}

/// The HTTPEndpoints that apply to this app, and the client for URL targets.
#[derive(Default)]
pub struct Endpoints {
    named: HashMap<String, Endpoint>,
    /// URL targets: the system's roots, loaded on first use.
    urls: OnceLock<Result<EndpointClient, String>>,
}

impl Destination<'_> {
    /// The name Resiliency `targets.apps` and errors know it by: the HTTPEndpoint's name, or
    /// the URL.
    pub fn id(&self) -> &str {
        match self {
            Destination::Named { name, .. } => name,
            Destination::Url(url) => url,
        }
    }
}

impl Endpoints {
    /// Checks and prepares each endpoint: its URL, headers and TLS material.
    pub fn new(resources: &[Loaded<HttpEndpoint>]) -> Result<Endpoints, EndpointError> {
        let mut named = HashMap::new();
        for loaded in resources {
            let name = loaded.resource.metadata.name.clone().unwrap_or_default();
            let fail = |field: &'static str, reason: String| EndpointError {
                name: name.clone(),
                origin: loaded.origin.to_string(),
                field,
                reason,
            };
            let spec = &loaded.resource.spec.spec;
            let base = spec.base_url.trim().trim_end_matches('/').to_owned();
            if !has_scheme(&base) {
                return Err(fail(
                    "spec.baseUrl",
                    format!("{:?} must start with http:// or https://", spec.base_url),
                ));
            }
            base.parse::<http::Uri>()
                .map_err(|e| fail("spec.baseUrl", format!("{:?}: {e}", spec.base_url)))?;
            let mut headers = Vec::new();
            for pair in &spec.headers {
                let value = match (&pair.value, &pair.secret_key_ref) {
                    (Some(value), None) => value.clone(),
                    (Some(value), Some(_)) => resolved_secret(value).map_err(|reason| {
                        fail(
                            "spec.headers[].value",
                            format!("header {:?}: {reason}", pair.name),
                        )
                    })?,
                    (None, Some(_)) => {
                        return Err(fail(
                            "spec.headers[].secretKeyRef",
                            format!(
                                "header {:?} names a secret; this sidecar has no secret store, \
                                 so give it as `value`",
                                pair.name
                            ),
                        ));
                    }
                    (None, None) => {
                        return Err(fail(
                            "spec.headers[].value",
                            format!("header {:?} has no value", pair.name),
                        ));
                    }
                };
                let header_name = HeaderName::try_from(pair.name.as_str())
                    .map_err(|e| fail("spec.headers[].name", format!("{:?}: {e}", pair.name)))?;
                let header_value = HeaderValue::try_from(value.as_str()).map_err(|e| {
                    fail(
                        "spec.headers[].value",
                        format!("header {:?}: {e}", pair.name),
                    )
                })?;
                headers.push((header_name, header_value));
            }
            let tls = tls_config(spec.client_tls.as_ref())
                .map_err(|(field, reason)| fail(field, reason))?;
            named.insert(
                name.clone(),
                Endpoint {
                    base,
                    headers,
                    client: client(tls),
                },
            );
        }
        Ok(Endpoints {
            named,
            urls: OnceLock::new(),
        })
    }

    /// Where `id` goes if it is not a Dapr app: a named endpoint first, then a URL (also
    /// percent-encoded, as `http%3A%2F%2Fhost%3A80`).
    pub fn destination(&self, id: &str) -> Option<Destination<'_>> {
        // Asked on every invocation, so without an allocation or a hash when there is none to
        // find (two allocations per call before; bench/notes.md, "peer ids, statuses and app
        // headers looked up without hashing").
        if !self.named.is_empty()
            && let Some((name, endpoint)) = self.named.get_key_value(id)
        {
            return Some(Destination::Named { name, endpoint });
        }
        if has_scheme(id) {
            return Some(Destination::Url(id.trim_end_matches('/').to_owned()));
        }
        if starts_with_ignoring_case(id, "http%3a") || starts_with_ignoring_case(id, "https%3a") {
            let decoded = percent_decode(id)?;
            return has_scheme(&decoded)
                .then(|| Destination::Url(decoded.trim_end_matches('/').to_owned()));
        }
        None
    }

    /// Sends the caller's request to `destination` and streams the answer back.
    pub async fn call(
        &self,
        destination: Destination<'_>,
        method: &str,
        request: http::request::Parts,
        body: BoxStream<Result<Bytes, BoxError>>,
    ) -> Result<Response, Error> {
        let (id, base, extra, client) = match &destination {
            Destination::Named { name, endpoint } => (
                *name,
                endpoint.base.as_str(),
                endpoint.headers.as_slice(),
                &endpoint.client,
            ),
            Destination::Url(url) => {
                let client = self
                    .urls
                    .get_or_init(|| tls_config(None).map(client).map_err(|(_, reason)| reason))
                    .as_ref()
                    .map_err(|reason| Error::Invoke {
                        id: url.clone(),
                        reason: reason.clone(),
                    })?;
                (url.as_str(), url.as_str(), &[][..], client)
            }
        };
        let fail = |reason: String| Error::Invoke {
            id: id.to_owned(),
            reason,
        };
        let method = method.trim_start_matches('/');
        let uri = match request.uri.query() {
            Some(query) if !query.is_empty() => format!("{base}/{method}?{query}"),
            _ => format!("{base}/{method}"),
        };
        let body = StreamBody::new(body.map(|chunk| chunk.map(Frame::data)));
        let mut outgoing = Request::builder()
            .method(request.method.clone())
            .uri(&uri)
            .body(BodyExt::boxed_unsync(body))
            .map_err(|e| fail(format!("cannot build a request for {uri}: {e}")))?;
        *outgoing.headers_mut() = forwarded(request.headers);
        // The trace goes on to the endpoint: the caller's client span is its parent.
        let traceparent = {
            let incoming = outgoing.headers().get(names::TRACEPARENT);
            crate::trace::next_hop(incoming.and_then(|v| v.to_str().ok()))
        };
        if let Ok(value) = HeaderValue::from_str(&traceparent) {
            outgoing.headers_mut().insert(names::TRACEPARENT, value);
        }
        for (name, value) in extra {
            outgoing.headers_mut().insert(name.clone(), value.clone());
        }
        if request.method == Method::CONNECT {
            return Err(fail("CONNECT is not forwarded".into()));
        }
        let answer = tokio::time::timeout(RESPONSE_TIMEOUT, client.request(outgoing))
            .await
            .map_err(|_| Error::Timeout {
                id: id.to_owned(),
                seconds: RESPONSE_TIMEOUT.as_secs(),
            })?
            .map_err(|e| fail(crate::error::chain(&e)))?;
        let (mut parts, body) = answer.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let mut response = Response::new(Body::new(body.map_err(BoxError::from)));
        *response.status_mut() = parts.status;
        *response.headers_mut() = parts.headers;
        Ok(response)
    }
}

impl Endpoints {
    /// A gRPC `InvokeService` call to an endpoint: the HTTP request made from the
    /// `InvokeRequest` (verb and query from its HTTP extension, POST without one, as upstream),
    /// the answer collected into the response head a peer sidecar with an HTTP app sends, so the
    /// gRPC API maps it the same way.
    pub async fn call_unary(
        &self,
        destination: Destination<'_>,
        message: InvokeRequest,
        metadata: &Metadata,
    ) -> Result<InternalInvokeResponse, Error> {
        let ext = message.http_extension.unwrap_or_default();
        let verb = wire::method_of(Verb::try_from(ext.verb).unwrap_or(Verb::None));
        let uri = if ext.querystring.is_empty() {
            "/".to_owned()
        } else {
            format!("/?{}", ext.querystring)
        };
        let mut head = Request::builder()
            .method(verb)
            .uri(uri)
            .body(())
            .map_err(|e| Error::Malformed(format!("HTTP extension: {e}")))?;
        wire::metadata_to_headers(metadata, head.headers_mut());
        let content_type = message.data.as_ref().map_or("", |d| d.type_url.as_str());
        let content_type = wire::data_content_type(content_type, &message.content_type);
        if let Ok(value) = HeaderValue::from_str(content_type)
            && !content_type.is_empty()
        {
            head.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        let data = Bytes::from(message.data.map(|d| d.value).unwrap_or_default());
        let body: BoxStream<Result<Bytes, BoxError>> =
            Box::pin(futures::stream::once(async move { Ok(data) }));
        let (head, ()) = head.into_parts();
        let answer = self.call(destination, &message.method, head, body).await?;
        let (parts, body) = answer.into_parts();
        let data = body
            .collect()
            .await
            .map_err(|e| crate::error::AppChannelError::EndpointAnswer(e.into()))?
            .to_bytes();
        let headers = wire::headers_to_metadata(&parts.headers, &[]);
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(InternalInvokeResponse {
            status: Some(dapr_proto::internals::v1::Status {
                code: i32::from(parts.status.as_u16()),
                ..Default::default()
            }),
            headers,
            trailers: Default::default(),
            message: Some(InvokeResponse {
                data: Some(prost_types::Any {
                    type_url: String::new(),
                    value: data.to_vec(),
                }),
                content_type,
            }),
        })
    }
}

/// The caller's headers as the endpoint gets them: without hop-by-hop headers, `Host` (the
/// client sets the endpoint's) and Dapr's own routing and token headers.
fn forwarded(mut headers: HeaderMap) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(names::DAPR_APP_ID);
    headers.remove(names::API_TOKEN);
    headers
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

fn has_scheme(url: &str) -> bool {
    starts_with_ignoring_case(url, "http://") || starts_with_ignoring_case(url, "https://")
}

/// Whether `text` starts with `prefix` (ASCII) in any case.
fn starts_with_ignoring_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// `%XX` escapes decoded; `None` when one is malformed or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// TLS for an endpoint: `rootCA` alone, else the system's roots; a client certificate when
/// both `certificate` and `privateKey` are given. Errors name the field.
fn tls_config(tls: Option<&ClientTls>) -> Result<rustls::ClientConfig, (&'static str, String)> {
    let mut roots = rustls::RootCertStore::empty();
    match tls.and_then(|t| t.root_ca.as_ref()) {
        Some(doc) => {
            let pem = inline(doc, "spec.clientTLS.rootCA")?;
            let field = "spec.clientTLS.rootCA";
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| (field, format!("not PEM certificates: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| (field, format!("not a usable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err((field, "holds no certificate".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(dapr_identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("spec.clientTLS", e.to_string()))?
            .with_root_certificates(roots);
    let certificate = tls.and_then(|t| t.certificate.as_ref());
    let key = tls.and_then(|t| t.private_key.as_ref());
    // ALPN (h2, http/1.1) is set by the connector.
    let config = match (certificate, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(certificate), Some(key)) => {
            let field = "spec.clientTLS.certificate";
            let chain = CertificateDer::pem_slice_iter(inline(certificate, field)?.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| (field, format!("not PEM certificates: {e}")))?;
            if chain.is_empty() {
                return Err((field, "holds no certificate".into()));
            }
            let field = "spec.clientTLS.privateKey";
            let key = PrivateKeyDer::from_pem_slice(inline(key, field)?.as_bytes())
                .map_err(|e| (field, format!("not a PEM private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ("spec.clientTLS", format!("certificate and key: {e}")))?
        }
        (Some(_), None) => {
            return Err((
                "spec.clientTLS.privateKey",
                "missing: the certificate needs its key".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "spec.clientTLS.certificate",
                "missing: the key needs its certificate".into(),
            ));
        }
    };
    Ok(config)
}

/// A `secretKeyRef` value the operator resolved: it puts the Secret's bytes base64-encoded into
/// `value` and keeps the reference, and upstream's daprd decodes them (pkg/operator/api for the
/// encoding, its kubernetes secret store for the decoding).
fn resolved_secret(value: &str) -> Result<String, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|e| format!("the resolved secret is not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "the resolved secret is not UTF-8".to_owned())
}

/// The PEM text of a TLS document given as `value` (or resolved from its secret).
fn inline(doc: &TlsDocument, field: &'static str) -> Result<String, (&'static str, String)> {
    match (&doc.value, &doc.secret_key_ref) {
        (Some(value), None) => Ok(value.clone()),
        (Some(value), Some(_)) => resolved_secret(value).map_err(|reason| (field, reason)),
        (None, Some(_)) => Err((
            field,
            "names a secret; this sidecar has no secret store, so give the PEM as `value`".into(),
        )),
        (None, None) => Err((field, "has no value".into())),
    }
}

/// A pooled client over `tls` for `https` URLs and plain TCP for `http` ones.
fn client(tls: rustls::ClientConfig) -> EndpointClient {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(connector)
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("named", &self.named.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(yaml: &str) -> Result<Endpoints, EndpointError> {
        let resource = HttpEndpoint::from_yaml(yaml).expect("parses");
        Endpoints::new(&[Loaded {
            origin: crate::resources::Origin::File {
                path: "e.yaml".into(),
                index: 1,
            },
            resource,
        }])
    }

    #[test]
    fn names_win_over_urls_and_urls_over_app_ids() {
        let e = endpoint(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: github}\nspec:\n  baseUrl: https://api.github.com/\n",
        )
        .unwrap();
        assert!(matches!(
            e.destination("github"),
            Some(Destination::Named { name: "github", .. })
        ));
        assert!(
            matches!(e.destination("http://localhost:3001"), Some(Destination::Url(u)) if u == "http://localhost:3001")
        );
        assert!(
            matches!(e.destination("HTTPS%3A%2F%2Fexample.com%3A8443"), Some(Destination::Url(u)) if u == "HTTPS://example.com:8443")
        );
        assert!(e.destination("orders").is_none());
        assert!(e.destination("orders.prod").is_none());
        assert!(e.destination("http%3A%2F%2Fbad%zz").is_none());
        // Without any HTTPEndpoint: URLs in any case, and nothing else, whatever its length or
        // characters.
        let none = Endpoints::default();
        assert!(
            matches!(none.destination("HtTp://a:1/"), Some(Destination::Url(u)) if u == "HtTp://a:1")
        );
        assert!(
            matches!(none.destination("hTTpS%3a%2f%2fb"), Some(Destination::Url(u)) if u == "hTTpS://b")
        );
        for id in [
            "",
            "h",
            "http:/",
            "https:",
            "ftp://a",
            "http%3",
            "éééééééé",
            "http\u{e9}://",
        ] {
            assert!(none.destination(id).is_none(), "{id:?}");
        }
    }

    #[test]
    fn a_base_url_without_a_scheme_or_a_secret_header_is_refused_with_its_field() {
        let e = endpoint(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: x}\nspec:\n  baseUrl: api.github.com\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.baseUrl"), "{e}");
        let e = endpoint(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: x}\nspec:\n  baseUrl: http://a\n  headers:\n  - name: Authorization\n    secretKeyRef: {name: s, key: k}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.headers[].secretKeyRef"), "{e}");
        let e = endpoint(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: x}\nspec:\n  baseUrl: https://a\n  clientTLS:\n    rootCA: {value: not a pem}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.clientTLS.rootCA"), "{e}");
    }

    #[test]
    fn a_secret_the_operator_resolved_is_decoded_from_base64() {
        let e = endpoint(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: pay}\nspec:\n  baseUrl: http://a\n  headers:\n  - name: authorization\n    value: czNjcmV0\n    secretKeyRef: {name: s, key: k}\n",
        )
        .unwrap();
        let Some(Destination::Named { endpoint, .. }) = e.destination("pay") else {
            panic!("named endpoint");
        };
        assert_eq!(endpoint.headers[0].1, "s3cret");
        let e = endpoint_error(
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: pay}\nspec:\n  baseUrl: http://a\n  headers:\n  - name: authorization\n    value: '%%%'\n    secretKeyRef: {name: s, key: k}\n",
        );
        assert!(e.contains("not base64"), "{e}");
    }

    fn endpoint_error(yaml: &str) -> String {
        endpoint(yaml).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn hop_by_hop_and_dapr_routing_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(header::HOST, HeaderValue::from_static("localhost:3500"));
        headers.insert(names::DAPR_APP_ID, HeaderValue::from_static("github"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        let out = forwarded(headers);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out["x-kept"], "yes");
    }
}
