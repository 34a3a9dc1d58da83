//! The channel to the local app over HTTP: pooled keep-alive connections, streamed bodies, and
//! the `--app-max-concurrency` bound held by a permit that travels with the response body, so
//! it is released when the body ends, fails or is dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Error;
use crate::wire::{BoxError, BoxStream, Metadata, metadata_to_headers, names};

/// How long the app may take to answer with a response head.
const APP_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

type AppBody = UnsyncBoxBody<Bytes, BoxError>;

/// What the app answered.
pub struct AppResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: BoxStream<Result<Bytes, BoxError>>,
}

/// A call for the app: method path, verb, query, metadata (become headers), body stream.
pub struct AppRequest {
    pub method: String,
    pub verb: Method,
    pub query: String,
    pub content_type: String,
    pub metadata: Metadata,
    pub body: BoxStream<Result<Bytes, BoxError>>,
}

pub struct HttpChannel {
    client: Client<HttpConnector, AppBody>,
    base: String,
    app_token: Option<HeaderValue>,
    limit: Option<Arc<Semaphore>>,
}

impl HttpChannel {
    pub fn new(
        address: &str,
        port: u16,
        app_token: Option<&str>,
        max_concurrency: Option<usize>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let host = if address.contains(':') && !address.starts_with('[') {
            format!("[{address}]")
        } else {
            address.to_owned()
        };
        HttpChannel {
            client,
            base: format!("http://{host}:{port}"),
            app_token: app_token.and_then(|t| HeaderValue::from_str(t).ok()),
            limit: max_concurrency.map(|n| Arc::new(Semaphore::new(n))),
        }
    }

    async fn permit(&self) -> Result<Option<OwnedSemaphorePermit>, Error> {
        match &self.limit {
            None => Ok(None),
            Some(limit) => Arc::clone(limit)
                .acquire_owned()
                .await
                .map(Some)
                .map_err(|_| Error::AppChannel("concurrency limiter closed".into())),
        }
    }

    pub async fn invoke(&self, request: AppRequest) -> Result<AppResponse, Error> {
        let permit = self.permit().await?;
        let method = request.method.trim_start_matches('/');
        let uri = if request.query.is_empty() {
            format!("{}/{method}", self.base)
        } else {
            format!("{}/{method}?{}", self.base, request.query)
        };
        let body = StreamBody::new(request.body.map(|chunk| chunk.map(Frame::data)));
        let mut http_request = Request::builder()
            .method(request.verb)
            .uri(&uri)
            .body(BodyExt::boxed_unsync(body))
            .map_err(|e| Error::AppChannel(format!("cannot build request for {uri}: {e}")))?;
        let headers = http_request.headers_mut();
        metadata_to_headers(&request.metadata, headers);
        if !request.content_type.is_empty()
            && let Ok(value) = HeaderValue::from_str(&request.content_type)
        {
            headers.insert(header::CONTENT_TYPE, value);
        }
        headers.remove(names::API_TOKEN);
        if let Some(token) = &self.app_token {
            headers.insert(names::API_TOKEN, token.clone());
        }
        let response =
            tokio::time::timeout(APP_RESPONSE_TIMEOUT, self.client.request(http_request))
                .await
                .map_err(|_| {
                    Error::AppChannel(format!(
                        "app did not answer within {}s",
                        APP_RESPONSE_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| {
                    Error::AppChannel(format!(
                        "cannot reach the app at {}: {}",
                        self.base,
                        error_chain(&e)
                    ))
                })?;
        let (parts, body) = response.into_parts();
        let body = body.into_data_stream().map(move |chunk| {
            // The permit lives as long as the body stream.
            let _held = &permit;
            chunk.map_err(BoxError::from)
        });
        Ok(AppResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Box::pin(body),
        })
    }

    /// Whether the app accepts TCP connections on its port (readiness before the first call).
    pub async fn reachable(address: &str, port: u16) -> bool {
        let connect = tokio::net::TcpStream::connect((address, port));
        matches!(
            tokio::time::timeout(Duration::from_millis(500), connect).await,
            Ok(Ok(_))
        )
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A body stream from a single buffer (unary calls).
pub fn once(data: Bytes) -> BoxStream<Result<Bytes, BoxError>> {
    Box::pin(futures::stream::once(async move { Ok(data) }))
}

/// Collects a body stream into memory (unary responses), bounded by `limit`.
pub async fn collect<S>(mut body: S, limit: usize) -> Result<Bytes, Error>
where
    S: Stream<Item = Result<Bytes, BoxError>> + Unpin,
{
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::AppChannel(format!("app body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(Error::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
