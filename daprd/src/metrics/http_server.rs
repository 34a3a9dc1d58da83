//! `dapr_http_server_*`: the tower layer on the HTTP API routers.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response, StatusCode, header};
use tower::{Layer, Service};

use super::Metrics;
use super::body::{Metered, MeteredFuture, MeteredPlain, Recorder};
use super::labels::verb_label;
use super::registry::{Families, inc, millis_since, observe};

#[derive(Clone)]
pub struct HttpLayer {
    families: Option<Arc<Families>>,
}

impl HttpLayer {
    pub fn new(metrics: &Metrics) -> HttpLayer {
        HttpLayer {
            families: metrics.families.clone(),
        }
    }
}

impl<S> Layer<S> for HttpLayer {
    type Service = HttpService<S>;

    fn layer(&self, inner: S) -> HttpService<S> {
        HttpService {
            inner,
            families: self.families.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HttpService<S> {
    inner: S,
    families: Option<Arc<Families>>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<Metered<ResBody, HttpCall>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future, HttpCall>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let recorder = self.recorder(&request);
        MeteredFuture {
            inner: self.inner.call(request),
            recorder,
        }
    }
}

impl<S> HttpService<S> {
    /// What a request is recorded by, once metrics are on.
    fn recorder<B>(&self, request: &Request<B>) -> Option<HttpCall> {
        self.recorder_of(request.method(), content_length(request.headers()))
    }

    /// What a request of `method` declaring `request_bytes` is recorded by.
    fn recorder_of(&self, method: &http::Method, request_bytes: u64) -> Option<HttpCall> {
        self.families.as_ref().map(|f| HttpCall {
            families: Arc::clone(f),
            method: verb_label(method),
            request_bytes,
            status: StatusCode::OK,
            start: Instant::now(),
        })
    }
}

/// Requests of `dapr-serve`'s plain HTTP/1 server, metered as any other.
impl<S, B> dapr_serve::PlainHandler<Metered<B, HttpCall>> for HttpService<S>
where
    S: dapr_serve::PlainHandler<B>,
    HttpService<S>: dapr_serve::HttpHandler<Metered<B, HttpCall>>,
    B: Send + 'static,
{
    type Plain = MeteredPlain<S::Plain, HttpCall>;

    fn call_plain(&mut self, request: dapr_serve::PlainRequest) -> Self::Plain {
        let declared = request.declared_len().unwrap_or(0) as u64;
        let recorder = self.recorder_of(request.method(), declared);
        MeteredPlain {
            inner: self.inner.call_plain(request),
            recorder,
        }
    }
}

/// Upstream's request size: the declared `Content-Length`, 0 without one.
fn content_length(headers: &HeaderMap) -> u64 {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub struct HttpCall {
    families: Arc<Families>,
    method: &'static str,
    request_bytes: u64,
    status: StatusCode,
    start: Instant,
}

impl Recorder for HttpCall {
    fn head(&mut self, status: StatusCode, _headers: &HeaderMap) {
        self.status = status;
    }

    fn finish(self, bytes: u64, _complete: bool) {
        let f = &self.families;
        let labels = [self.method, "", self.status.as_str()];
        inc(&f.http_server_request_count, &labels);
        observe(&f.http_server_latency, &labels, millis_since(self.start));
        f.http_server_request_bytes
            .observe(self.request_bytes as f64);
        f.http_server_response_bytes.observe(bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{metrics, sample};
    use crate::metrics::{label, name};
    use bytes::Bytes;
    use http::Method;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_http_layer_records_verb_status_and_body_sizes_once() {
        let m = Arc::new(metrics());
        let service = tower::service_fn(|_req: Request<String>| async {
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(http_body_util::Full::new(Bytes::from_static(b"nope")))
                    .expect("response"),
            )
        });
        let mut service = HttpLayer::new(&m).layer(service);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1.0/invoke/a/method/b/c?d=e")
            .header(header::CONTENT_LENGTH, "5")
            .body("hello".to_owned())
            .expect("request");
        let response = service.call(request).await.expect("infallible");
        // Nothing is recorded until the body is done.
        assert!(!m.render().contains(name::HTTP_SERVER_REQUEST_COUNT));
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), Bytes::from_static(b"nope"));
        let text = m.render();
        let labels = [
            (label::APP_ID, "orders"),
            (label::METHOD, "POST"),
            (label::PATH, ""),
            (label::STATUS, "404"),
        ];
        assert_eq!(
            sample(&text, name::HTTP_SERVER_REQUEST_COUNT, &labels),
            Some(1.0)
        );
        let count = format!("{}_count", name::HTTP_SERVER_LATENCY);
        assert_eq!(sample(&text, &count, &labels), Some(1.0));
        let app = [(label::APP_ID, "orders")];
        let sum = |n: &str| sample(&text, &format!("{n}_sum"), &app);
        assert_eq!(sum(name::HTTP_SERVER_REQUEST_BYTES), Some(5.0));
        assert_eq!(sum(name::HTTP_SERVER_RESPONSE_BYTES), Some(4.0));
    }
}
