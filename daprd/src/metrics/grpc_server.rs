//! `dapr_grpc_io_server_*`: the tower layer on the gRPC API and internal servers, with the
//! status read from the head or trailers and proxied calls labelled up to a cap.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::Metrics;
use super::body::{Metered, MeteredFuture, Recorder};
use super::labels::{grpc_code_label, grpc_method_label};
use super::registry::{Families, inc, millis_since, observe};
use crate::wire::names;

/// calls it proxies by `dapr-app-id` ([`GrpcLayer::api`]).
#[derive(Clone)]
pub struct GrpcLayer {
    families: Option<Arc<Families>>,
    proxied: bool,
}

impl GrpcLayer {
    /// The internal server's layer: its own RPCs only.
    pub fn new(metrics: &Metrics) -> GrpcLayer {
        GrpcLayer {
            families: metrics.families.clone(),
            proxied: false,
        }
    }

    /// The gRPC API's layer: also the calls proxied by `dapr-app-id`, by method name, status and
    /// latency (no sizes), as upstream's `StreamingServerInterceptor` records them.
    pub fn api(metrics: &Metrics) -> GrpcLayer {
        GrpcLayer {
            proxied: true,
            ..GrpcLayer::new(metrics)
        }
    }
}

impl<S> Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> GrpcService<S> {
        GrpcService {
            inner,
            families: self.families.clone(),
            proxied: self.proxied,
        }
    }
}

#[derive(Clone)]
pub struct GrpcService<S> {
    inner: S,
    families: Option<Arc<Families>>,
    proxied: bool,
}

impl<S> GrpcService<S> {
    /// A proxied call's method label: the request names a target app (`dapr-app-id`).
    fn proxied_method<B>(&self, families: &Families, request: &Request<B>) -> Option<Arc<str>> {
        let proxied = self.proxied && request.headers().contains_key(names::DAPR_APP_ID);
        proxied.then(|| families.proxied_methods.label(request.uri().path()))
    }
}

/// The request's body goes on counted (`Metered`, without a recorder when nothing is counted),
/// whatever its type: the server's own, not boxed.
impl<S, B, ResBody> Service<Request<B>> for GrpcService<S>
where
    S: Service<Request<Metered<B, GrpcReceived>>, Response = Response<ResBody>>,
{
    type Response = Response<Metered<ResBody, GrpcCall>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future, GrpcCall>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let unmetered = |request: Request<B>| request.map(|body| Metered::new(body, None));
        let Some(families) = self.families.clone() else {
            return MeteredFuture {
                inner: self.inner.call(unmetered(request)),
                recorder: None,
            };
        };
        let Some(method) = grpc_method_label(request.uri().path()) else {
            let recorder = self
                .proxied_method(&families, &request)
                .map(|method| GrpcCall {
                    families,
                    method: MethodLabel::Proxied(method),
                    status: None,
                    start: Instant::now(),
                });
            return MeteredFuture {
                inner: self.inner.call(unmetered(request)),
                recorder,
            };
        };
        let received = GrpcReceived {
            families: Arc::clone(&families),
            method,
        };
        let request = request.map(|body| Metered::new(body, Some(received)));
        MeteredFuture {
            inner: self.inner.call(request),
            recorder: Some(GrpcCall {
                families,
                method: MethodLabel::Served(method),
                status: None,
                start: Instant::now(),
            }),
        }
    }
}

/// A `grpc_server_method` value: an RPC of ours (sizes recorded too), or a proxied call's.
enum MethodLabel {
    Served(&'static str),
    Proxied(Arc<str>),
}

pub struct GrpcCall {
    families: Arc<Families>,
    method: MethodLabel,
    status: Option<tonic::Code>,
    start: Instant,
}

impl Recorder for GrpcCall {
    fn head(&mut self, _status: StatusCode, headers: &HeaderMap) {
        // A trailers-only response (most errors) carries the status in its head.
        self.status = crate::wire::grpc_status(headers);
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(code) = crate::wire::grpc_status(trailers) {
            self.status = Some(code);
        }
    }

    fn finish(self, bytes: u64, complete: bool) {
        let f = &self.families;
        let code = self.status.unwrap_or(if complete {
            tonic::Code::Unknown
        } else {
            tonic::Code::Cancelled
        });
        let method = match &self.method {
            MethodLabel::Served(method) => method,
            MethodLabel::Proxied(method) => &**method,
        };
        let labels = [method, grpc_code_label(code)];
        inc(&f.grpc_server_completed_rpcs, &labels);
        observe(&f.grpc_server_latency, &labels, millis_since(self.start));
        if let MethodLabel::Served(method) = self.method {
            observe(&f.grpc_server_sent_bytes, &[method], bytes as f64);
        }
    }
}

pub struct GrpcReceived {
    families: Arc<Families>,
    method: &'static str,
}

impl Recorder for GrpcReceived {
    fn finish(self, bytes: u64, _complete: bool) {
        observe(
            &self.families.grpc_server_received_bytes,
            &[self.method],
            bytes as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{metrics, sample};
    use crate::metrics::{MAX_PROXIED_METHODS, OTHER_PEERS, label, name};
    use bytes::Bytes;
    use http::HeaderValue;
    use http_body::Frame;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_grpc_layer_reads_the_status_from_trailers_or_the_head() {
        let m = Arc::new(metrics());
        let service = tower::service_fn(|req: Request<Metered<_, GrpcReceived>>| async move {
            let _: &Metered<tonic::body::Body, _> = req.body();
            let ok = req.uri().path().ends_with("CallLocal");
            let response = if ok {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let frames = futures::stream::iter([
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"12345"))),
                    Ok(Frame::trailers(trailers)),
                ]);
                Response::new(tonic::body::Body::new(http_body_util::StreamBody::new(
                    frames,
                )))
            } else {
                tonic::Status::not_found("no").into_http()
            };
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = GrpcLayer::new(&m).layer(service);
        for path in [
            "/dapr.proto.internals.v1.ServiceInvocation/CallLocal",
            "/dapr.proto.runtime.v1.Dapr/InvokeService",
            "/unknown.Service/Method",
        ] {
            let request = Request::builder()
                .uri(path)
                .body(tonic::body::Body::new(http_body_util::Full::new(
                    Bytes::from_static(b"abc"),
                )))
                .expect("request");
            let response = service.call(request).await.expect("infallible");
            response.into_body().collect().await.expect("body");
        }
        let text = m.render();
        let app = (label::APP_ID, "orders");
        let rpc = |method, status| {
            [
                app,
                (label::GRPC_SERVER_METHOD, method),
                (label::GRPC_SERVER_STATUS, status),
            ]
        };
        let call_local = "/dapr.proto.internals.v1.ServiceInvocation/CallLocal";
        assert_eq!(
            sample(
                &text,
                name::GRPC_SERVER_COMPLETED_RPCS,
                &rpc(call_local, "OK")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                name::GRPC_SERVER_COMPLETED_RPCS,
                &rpc("/dapr.proto.runtime.v1.Dapr/InvokeService", "NotFound")
            ),
            Some(1.0)
        );
        assert!(!text.contains("unknown.Service"));
        let sent = format!("{}_sum", name::GRPC_SERVER_SENT_BYTES);
        let method = [app, (label::GRPC_SERVER_METHOD, call_local)];
        assert_eq!(sample(&text, &sent, &method), Some(5.0));
        // The handler here never reads the request; the dropped body still reports.
        let received = format!("{}_count", name::GRPC_SERVER_RECEIVED_BYTES);
        assert_eq!(sample(&text, &received, &method), Some(1.0));
    }

    #[tokio::test]
    async fn the_api_layer_records_proxied_calls_by_method_up_to_the_cap() {
        let m = Arc::new(metrics());
        let service = tower::service_fn(
            |_: Request<Metered<tonic::body::Body, GrpcReceived>>| async move {
                Ok::<_, std::convert::Infallible>(
                    tonic::Status::unavailable("down").into_http::<tonic::body::Body>(),
                )
            },
        );
        let request = |path: &str, app: Option<&str>| {
            let mut builder = Request::builder().uri(path);
            if let Some(app) = app {
                builder = builder.header(names::DAPR_APP_ID, app);
            }
            builder.body(tonic::body::Body::empty()).expect("request")
        };
        let mut api = GrpcLayer::api(&m).layer(service);
        let mut internal = GrpcLayer::new(&m).layer(service);
        for (on_api, path, app) in [
            (true, "/shop.Cart/Add", Some("cart")),
            (true, "/shop.Cart/Add", Some("cart")),
            // Not proxied: no target named.
            (true, "/shop.Cart/Remove", None),
            // The internal server does not record what it forwards to its app.
            (false, "/shop.Cart/List", Some("cart")),
        ] {
            let service = if on_api { &mut api } else { &mut internal };
            let response = service.call(request(path, app)).await.expect("infallible");
            response.into_body().collect().await.expect("body");
        }
        for i in 0..MAX_PROXIED_METHODS + 5 {
            let path = format!("/flood.S/M{i}");
            let response = api
                .call(request(&path, Some("x")))
                .await
                .expect("infallible");
            drop(response);
        }
        let text = m.render();
        let app = (label::APP_ID, "orders");
        let rpc = |method, status| {
            [
                app,
                (label::GRPC_SERVER_METHOD, method),
                (label::GRPC_SERVER_STATUS, status),
            ]
        };
        let completed = name::GRPC_SERVER_COMPLETED_RPCS;
        assert_eq!(
            sample(&text, completed, &rpc("/shop.Cart/Add", "Unavailable")),
            Some(2.0)
        );
        let latency = format!("{}_count", name::GRPC_SERVER_LATENCY);
        assert_eq!(
            sample(&text, &latency, &rpc("/shop.Cart/Add", "Unavailable")),
            Some(2.0)
        );
        assert!(!text.contains("Remove") && !text.contains("List"), "{text}");
        // No sizes for proxied calls, as upstream's stream interceptor.
        let sized = |l: &&str| {
            (l.starts_with(name::GRPC_SERVER_SENT_BYTES)
                || l.starts_with(name::GRPC_SERVER_RECEIVED_BYTES))
                && l.contains("shop.Cart")
        };
        assert!(!text.lines().any(|l| sized(&l)), "{text}");
        // The flood: the cap's worth of names, then one shared label.
        let flood = text
            .lines()
            .filter(|l| l.starts_with(completed) && l.contains("/flood.S/"))
            .count();
        assert_eq!(
            flood,
            MAX_PROXIED_METHODS - 1,
            "one slot went to /shop.Cart/Add"
        );
        assert_eq!(
            sample(&text, completed, &rpc(OTHER_PEERS, "Unavailable")),
            Some(6.0)
        );
    }
}
