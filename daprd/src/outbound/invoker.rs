//! Calls another sidecar's internal API: resolve the target, reuse one HTTP/2 channel per
//! address, stream the request, and hand back the response head and its payload stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dapr_proto::internals::v1::service_invocation_client::ServiceInvocationClient;
use dapr_proto::internals::v1::{
    InternalInvokeRequest, InternalInvokeRequestStream, InternalInvokeResponse,
};
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::resolve::{Resolver, Target};
use crate::wire::{self, BoxError, BoxStream, names};

/// How long dialling a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer may take to answer with a response head.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The caller's own identity, stamped on every outbound call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub app_id: String,
    pub namespace: String,
}

/// A parsed target id: `app` or `app.namespace`.
pub fn parse_target(id: &str, own_namespace: &str) -> Result<Target, Error> {
    let mut parts = id.split('.');
    let target = match (parts.next(), parts.next(), parts.next()) {
        (Some(app), None, _) if !app.is_empty() => Target {
            app_id: app.to_owned(),
            namespace: own_namespace.to_owned(),
        },
        (Some(app), Some(ns), None) if !app.is_empty() && !ns.is_empty() => Target {
            app_id: app.to_owned(),
            namespace: ns.to_owned(),
        },
        _ => return Err(Error::InvalidAppId(id.to_owned())),
    };
    Ok(target)
}

/// The response of a peer: its head and the stream of body bytes after it.
pub struct PeerResponse {
    pub head: InternalInvokeResponse,
    pub body: BoxStream<Result<Bytes, BoxError>>,
}

pub struct Invoker {
    caller: Caller,
    resolver: Arc<Resolver>,
    channels: Mutex<HashMap<SocketAddr, Channel>>,
}

impl Invoker {
    pub fn new(caller: Caller, resolver: Arc<Resolver>) -> Self {
        Invoker {
            caller,
            resolver,
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Adds the caller and callee identities upstream stamps on the remote leg (client-supplied
    /// values are replaced).
    pub fn stamp(&self, request: &mut InternalInvokeRequest, target: &Target) {
        wire::set(
            &mut request.metadata,
            names::CALLER_APP_ID,
            &self.caller.app_id,
        );
        wire::set(
            &mut request.metadata,
            names::CALLER_NAMESPACE,
            &self.caller.namespace,
        );
        wire::set(&mut request.metadata, names::CALLEE_APP_ID, &target.app_id);
        wire::set(
            &mut request.metadata,
            names::DESTINATION_APP_ID,
            &target.app_id,
        );
        let traceparent =
            crate::trace::next_random(wire::first(&request.metadata, names::TRACEPARENT));
        wire::set(&mut request.metadata, names::TRACEPARENT, &traceparent);
    }

    fn channel(&self, addr: SocketAddr) -> Result<Channel, Error> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| Error::Resolver("channel pool poisoned".into()))?;
        if let Some(channel) = channels.get(&addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Resolver(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(false);
        let channel = endpoint.connect_lazy();
        channels.insert(addr, channel.clone());
        Ok(channel)
    }

    /// Drops the pooled connection and the resolver's cache entry after a transport failure.
    fn forget(&self, target: &Target, addr: SocketAddr) {
        if let Ok(mut channels) = self.channels.lock() {
            channels.remove(&addr);
        }
        self.resolver.evict(target);
    }

    fn invoke_error(&self, target: &Target, addr: SocketAddr, status: &tonic::Status) -> Error {
        if status.code() == tonic::Code::PermissionDenied {
            return Error::DeniedByPeer {
                id: target.app_id.to_owned(),
                message: status.message().to_owned(),
            };
        }
        if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unauthenticated | tonic::Code::Unknown
        ) {
            self.forget(target, addr);
        }
        Error::Invoke {
            id: target.app_id.to_owned(),
            reason: format!("{}: {}", status.code().description(), status.message()),
        }
    }

    /// Streams a request with its body to the target's sidecar (`CallLocalStream`).
    ///
    /// Boxed so the future's `Send`-ness is proven here, once, with concrete lifetimes.
    pub fn invoke_stream<'a>(
        &'a self,
        target: &'a Target,
        request: InternalInvokeRequest,
        body: BoxStream<Result<Bytes, BoxError>>,
    ) -> futures::future::BoxFuture<'a, Result<PeerResponse, Error>> {
        Box::pin(self.invoke_stream_inner(target, request, body))
    }

    async fn invoke_stream_inner(
        &self,
        target: &Target,
        mut request: InternalInvokeRequest,
        body: BoxStream<Result<Bytes, BoxError>>,
    ) -> Result<PeerResponse, Error> {
        self.stamp(&mut request, target);
        let addr = self.resolver.resolve(target).await?;
        let mut client = ServiceInvocationClient::new(self.channel(addr)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);

        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        let outgoing = outgoing(request, body, failed_tx);

        let call = tokio::time::timeout(RESPONSE_TIMEOUT, client.call_local_stream(outgoing));
        let response = tokio::select! {
            result = call => match result {
                Err(_) => return Err(Error::Timeout { id: target.app_id.to_owned(), seconds: RESPONSE_TIMEOUT.as_secs() }),
                Ok(Err(status)) => return Err(self.invoke_error(target, addr, &status)),
                Ok(Ok(response)) => response,
            },
            Ok(reason) = failed_rx => return Err(Error::Malformed(format!("request body: {reason}"))),
        };
        let mut incoming = response.into_inner();
        let first = match tokio::time::timeout(RESPONSE_TIMEOUT, incoming.message()).await {
            Err(_) => {
                return Err(Error::Timeout {
                    id: target.app_id.to_owned(),
                    seconds: RESPONSE_TIMEOUT.as_secs(),
                });
            }
            Ok(Err(status)) => return Err(self.invoke_error(target, addr, &status)),
            Ok(Ok(None)) => {
                return Err(Error::Invoke {
                    id: target.app_id.to_owned(),
                    reason: "peer closed the stream without a response".into(),
                });
            }
            Ok(Ok(Some(first))) => first,
        };
        let head = first.response.ok_or_else(|| Error::Invoke {
            id: target.app_id.to_owned(),
            reason: "peer's first message carries no response".into(),
        })?;
        let body = wire::payload_body(first.payload, incoming);
        Ok(PeerResponse {
            head,
            body: Box::pin(body),
        })
    }

    /// Forwards a proxied gRPC call (any service but Dapr's own) to the target's sidecar as it
    /// is: headers, message frames and trailers stream through the pooled channel, with the
    /// caller and callee identities added.
    pub async fn proxy(
        &self,
        target: &Target,
        mut request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Error> {
        let headers = request.headers_mut();
        headers.remove(names::API_TOKEN);
        let traceparent = crate::trace::next_random(
            headers
                .get(names::TRACEPARENT)
                .and_then(|v| v.to_str().ok()),
        );
        headers.insert(
            names::TRACEPARENT,
            http::HeaderValue::from_str(&traceparent)
                .map_err(|_| Error::Malformed("traceparent".into()))?,
        );
        for (name, value) in [
            (names::CALLER_APP_ID, self.caller.app_id.as_str()),
            (names::CALLER_NAMESPACE, self.caller.namespace.as_str()),
            (names::CALLEE_APP_ID, target.app_id.as_str()),
        ] {
            let value = http::HeaderValue::from_str(value)
                .map_err(|_| Error::InvalidAppId(value.to_owned()))?;
            headers.insert(name, value);
        }
        let addr = self.resolver.resolve(target).await?;
        let call = tower::ServiceExt::oneshot(self.channel(addr)?, request);
        match tokio::time::timeout(RESPONSE_TIMEOUT, call).await {
            Err(_) => Err(Error::Timeout {
                id: target.app_id.to_owned(),
                seconds: RESPONSE_TIMEOUT.as_secs(),
            }),
            Ok(Err(e)) => {
                self.forget(target, addr);
                Err(Error::Invoke {
                    id: target.app_id.to_owned(),
                    reason: e.to_string(),
                })
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Sends a request whose body is already in memory (`CallLocal`).
    pub async fn invoke_unary(
        &self,
        target: &Target,
        mut request: InternalInvokeRequest,
    ) -> Result<InternalInvokeResponse, Error> {
        self.stamp(&mut request, target);
        let addr = self.resolver.resolve(target).await?;
        let mut client = ServiceInvocationClient::new(self.channel(addr)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        match tokio::time::timeout(RESPONSE_TIMEOUT, client.call_local(request)).await {
            Err(_) => Err(Error::Timeout {
                id: target.app_id.to_owned(),
                seconds: RESPONSE_TIMEOUT.as_secs(),
            }),
            Ok(Err(status)) => Err(self.invoke_error(target, addr, &status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }
}

/// The request stream: the head, then the body's payloads, pumped through a small bounded
/// channel (back-pressure from the peer reaches the client body). A failing client body must not
/// look like a complete one to the peer: the pump then reports the failure and holds the stream
/// open until the caller abandons the call (the peer sees a reset).
fn outgoing(
    request: InternalInvokeRequest,
    body: BoxStream<Result<Bytes, BoxError>>,
    failed: tokio::sync::oneshot::Sender<String>,
) -> tokio_stream::wrappers::ReceiverStream<InternalInvokeRequestStream> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let head = InternalInvokeRequestStream {
            request: Some(request),
            payload: None,
        };
        if tx.send(head).await.is_err() {
            return;
        }
        let mut payloads = wire::into_payloads(body);
        while let Some(item) = payloads.next().await {
            match item {
                Ok(payload) => {
                    let message = InternalInvokeRequestStream {
                        request: None,
                        payload: Some(payload),
                    };
                    if tx.send(message).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = failed.send(e.to_string());
                    tx.closed().await;
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_app_or_app_dot_namespace() {
        let t = parse_target("orders", "default").unwrap();
        assert_eq!(
            (t.app_id.as_str(), t.namespace.as_str()),
            ("orders", "default")
        );
        let t = parse_target("orders.shop", "default").unwrap();
        assert_eq!(
            (t.app_id.as_str(), t.namespace.as_str()),
            ("orders", "shop")
        );
        for bad in ["a.b.c", "", ".shop", "orders."] {
            assert!(
                matches!(parse_target(bad, "default"), Err(Error::InvalidAppId(_))),
                "{bad}"
            );
        }
    }
}
