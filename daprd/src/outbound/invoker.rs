//! Calls another sidecar's internal API: resolve the target, reuse one HTTP/2 channel per
//! address, stream the request, and hand back the response head and its payload stream.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use dapr_proto::internals::v1::{InternalInvokeRequest, InternalInvokeRequestStream};
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};

use super::request_stream::{Outbound, OutboundCodec};
use crate::Error;
use crate::metrics::Metrics;
use crate::resolve::{Resolver, Target};
use crate::wire::{self, BoxError, BoxStream, names};

/// The streaming method of the internal API.
const CALL_LOCAL_STREAM: &str = "/dapr.proto.internals.v1.ServiceInvocation/CallLocalStream";
/// How long dialling a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer may take to answer with a response head.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The caller's own identity, stamped on every outbound call.
#[derive(Debug, Clone)]
pub struct Caller {
    pub app_id: String,
    pub namespace: String,
    /// What every call carries the same: `dapr-caller-app-id`, `dapr-caller-namespace`, and
    /// `X-Forwarded-For`, `X-Forwarded-Host` and `Forwarded` as upstream adds them on the
    /// remote leg; encoded once.
    pub stamps: wire::Stamps,
}

impl Caller {
    /// The caller for `app_id` in `namespace` on the host `hostname` with address `host_ip`
    /// (when known).
    pub fn new(
        app_id: &str,
        namespace: &str,
        hostname: &str,
        host_ip: Option<std::net::IpAddr>,
    ) -> Self {
        let mut stamps = vec![
            (names::CALLER_APP_ID, app_id.to_owned()),
            (names::CALLER_NAMESPACE, namespace.to_owned()),
        ];
        if let Some(ip) = host_ip {
            stamps.push((names::X_FORWARDED_FOR, ip.to_string()));
            stamps.push((
                names::FORWARDED,
                format!("for={ip};by={ip};host={hostname}"),
            ));
        }
        stamps.push((names::X_FORWARDED_HOST, hostname.to_owned()));
        Caller {
            app_id: app_id.to_owned(),
            namespace: namespace.to_owned(),
            stamps: wire::Stamps::new(stamps),
        }
    }
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

/// Where a call leaves its request for another attempt ([`Invoker::invoke_stream_inner`]).
pub(super) type Kept = std::sync::Mutex<Option<InternalInvokeRequest>>;

/// The request of one attempt. It goes back to `kept` (when given) however the attempt ends,
/// dropped by a timeout included, so the next attempt can send it again.
struct Lent<'a> {
    request: Option<InternalInvokeRequest>,
    kept: Option<&'a Kept>,
}

impl Lent<'_> {
    fn request(&mut self) -> &mut InternalInvokeRequest {
        self.request.get_or_insert_with(Default::default)
    }

    /// The request, to be encoded and then put back with [`Lent::put_back`].
    fn take(&mut self) -> InternalInvokeRequest {
        self.request.take().unwrap_or_default()
    }

    fn put_back(&mut self, request: Option<InternalInvokeRequest>) {
        self.request = request;
    }

    /// The request for a path that hands it over for good; a copy stays for the next attempt.
    fn give(&mut self) -> InternalInvokeRequest {
        let request = self.take();
        if self.kept.is_some() {
            self.request = Some(request.clone());
        }
        request
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let (Some(kept), Some(request)) = (self.kept, self.request.take())
            && let Ok(mut slot) = kept.lock()
        {
            *slot = Some(request);
        }
    }
}

/// The response of a peer: its head and the stream of body bytes after it.
pub struct PeerResponse {
    pub head: wire::ReceivedResponse,
    pub body: BoxStream<Result<Bytes, BoxError>>,
}

pub struct Invoker {
    caller: Caller,
    resolver: Arc<Resolver>,
    /// One channel per peer address, with the target it was opened for (under mTLS the peer
    /// must prove that target's identity).
    channels: Mutex<crate::CallMap<SocketAddr, (Target, Channel)>>,
    /// This sidecar's identity under mTLS; `None` dials in plaintext.
    identity: Option<crate::identity::Current>,
    /// What each peer is known to implement (learned from its first call).
    peers: Mutex<crate::CallMap<SocketAddr, PeerKind>>,
    /// Connections for calls whose request is in hand (see [`crate::peer`]).
    direct: crate::peer::Peers,
    /// The largest message read from a peer's answer (`wire::message_limit`).
    message_limit: usize,
    metrics: Arc<Metrics>,
    /// Resiliency policies; `None` (no Resiliency loaded) keeps calls on the plain path.
    resiliency: Option<Arc<crate::resiliency::Resiliency>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKind {
    /// Answered a `CallLocalStream`.
    Streaming,
    /// Answered `CallLocalStream` with `Unimplemented`.
    UnaryOnly,
}

impl Invoker {
    /// Calls as `caller`, finding peers through `resolver`; a peer's answer may carry messages
    /// of up to `message_limit` bytes.
    pub fn new(caller: Caller, resolver: Arc<Resolver>, message_limit: usize) -> Self {
        Invoker {
            caller,
            resolver,
            channels: Mutex::default(),
            identity: None,
            peers: Mutex::default(),
            direct: crate::peer::Peers::new(None, message_limit),
            message_limit,
            metrics: Arc::new(Metrics::disabled()),
            resiliency: None,
        }
    }

    /// Dials peers over mTLS with this identity, accepting only the target's SPIFFE id.
    pub fn with_identity(self, identity: Option<crate::identity::Current>) -> Self {
        Invoker {
            direct: crate::peer::Peers::new(identity.clone(), self.message_limit),
            identity,
            ..self
        }
    }

    /// Records requests sent and responses received in `metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Invoker { metrics, ..self }
    }

    /// Runs calls through these Resiliency policies.
    pub fn with_resiliency(self, resiliency: Option<crate::resiliency::Resiliency>) -> Self {
        Invoker {
            resiliency: resiliency.map(Arc::new),
            ..self
        }
    }

    /// The Resiliency policies calls run through, if any are loaded.
    pub(super) fn resiliency(&self) -> Option<&crate::resiliency::Resiliency> {
        self.resiliency.as_deref()
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// What this call stamps on `request`: the callee's identity and the next `traceparent`,
    /// as upstream stamps them on the remote leg. The request's map is not changed, so another
    /// attempt stamps it anew; the stamps are written into the frame ([`wire::Stamps::frame`]),
    /// or into the map of a request that streams through tonic.
    fn call_stamps<'a>(
        &self,
        request: &InternalInvokeRequest,
        client: &wire::ClientHeaders,
        target: &'a Target,
    ) -> wire::CallStamps<'a> {
        let incoming = wire::first(&request.metadata, names::TRACEPARENT)
            .or_else(|| client.first(names::TRACEPARENT));
        wire::CallStamps {
            callee: &target.app_id,
            traceparent: crate::trace::next_hop(incoming),
        }
    }

    /// A target no resolver knows is one that cannot be invoked, and says so as upstream's
    /// `ERR_DIRECT_INVOKE` does (`failed to invoke, id: <id>, err: ...`).
    fn unresolved(target: &Target, e: crate::resolve::ResolveError) -> Error {
        Error::Invoke {
            id: target.app_id.to_owned(),
            reason: format!("name resolution: {e}"),
        }
    }

    fn channel(&self, addr: SocketAddr, target: &Target) -> Result<Channel, Error> {
        let mut channels = self.channels.lock().map_err(|_| Error::Invoke {
            id: target.app_id.to_owned(),
            reason: "channel pool poisoned".into(),
        })?;
        if let Some((opened_for, channel)) = channels.get(&addr)
            && (self.identity.is_none() || opened_for == target)
        {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Invoke {
                id: target.app_id.to_owned(),
                reason: format!("bad peer address {addr}: {e}"),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(false);
        let channel = match &self.identity {
            None => endpoint.connect_lazy(),
            Some(current) => {
                // Upstream checks only the path of the peer's id, not its trust domain.
                let expected = dapr_identity::tls::ExpectedId::Path {
                    namespace: target.namespace.clone(),
                    app_id: target.app_id.clone(),
                };
                endpoint.connect_with_connector_lazy(
                    crate::identity::transport::Connector::identity(current.clone(), expected),
                )
            }
        };
        channels.insert(addr, (target.clone(), channel.clone()));
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
        // A transport error as the source: the connection failed under the call (a status the
        // peer sent has no source). A TLS 1.3 server refuses a client certificate after the
        // client's side of the handshake is done, so a closed connection is all the caller
        // sees of it.
        let transport = std::error::Error::source(status)
            .filter(|e| e.is::<tonic::transport::Error>())
            .map(crate::error::chain);
        if transport.is_some()
            || matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unauthenticated | tonic::Code::Unknown
            )
        {
            self.forget(target, addr);
        }
        let reason = match transport {
            Some(chain) if status.code() != tonic::Code::Unavailable => format!(
                "{}: {chain} (the connection to the peer failed; if the peer refused this sidecar's certificate, its log says why)",
                status.code().description()
            ),
            _ => format!("{}: {}", status.code().description(), status.message()),
        };
        Error::Peer {
            id: target.app_id.to_owned(),
            code: status.code(),
            reason,
        }
    }

    /// Streams a request with its body to the target's sidecar (`CallLocalStream`). A peer
    /// that does not implement streaming (`Unimplemented`) gets the request again as a unary
    /// `CallLocal`, when the body is small enough to have been kept ([`REPLAY_LIMIT`]); such
    /// peers are remembered and get unary calls from then on.
    ///
    /// Boxed so the future's `Send`-ness is proven here, once, with concrete lifetimes.
    ///
    /// `client` are the client's headers that travel as metadata besides the request's own
    /// ([`wire::ClientHeaders`]): written straight into the frame on the usual path, put into
    /// the request's map where it is handed to tonic or kept for another attempt.
    pub fn invoke_stream<'a>(
        &'a self,
        target: &'a Target,
        mut request: InternalInvokeRequest,
        client: wire::ClientHeaders,
        body: BoxStream<Result<Bytes, BoxError>>,
    ) -> futures::future::BoxFuture<'a, Result<PeerResponse, Error>> {
        match &self.resiliency {
            None => wire::boxed_in_place(|| {
                self.invoke_stream_inner(target, request, client, body, None)
            }),
            Some(policies) => {
                // Attempts after the first send the request again: its map holds everything.
                client.insert_into(&mut request.metadata);
                Box::pin(super::resilient::invoke_stream(
                    self, policies, target, request, body,
                ))
            }
        }
    }

    /// One call, without policies. With `kept`, the request (as the client sent it, unstamped)
    /// is left there for another attempt: moved back once the call's single frame is encoded,
    /// so a call that succeeds costs no copy; copied on the paths that hand it to tonic.
    pub(super) async fn invoke_stream_inner(
        &self,
        target: &Target,
        request: InternalInvokeRequest,
        client: wire::ClientHeaders,
        body: BoxStream<Result<Bytes, BoxError>>,
        kept: Option<&Kept>,
    ) -> Result<PeerResponse, Error> {
        let mut lent = Lent {
            request: Some(request),
            kept,
        };
        let stamps = self.call_stamps(lent.request(), &client, target);
        let addr = self
            .resolver
            .resolve(target)
            .await
            .map_err(|e| Self::unresolved(target, e))?;
        let known = self.peer_kind(addr);
        if known == Some(PeerKind::UnaryOnly) {
            let data = collect_body(body).await?;
            let mut request = lent.give();
            client.insert_into(&mut request.metadata);
            return Box::pin(self.unary_at(target, addr, request, &stamps, data)).await;
        }
        // Only a peer not yet known to stream may need the request again for a unary retry.
        let retry = (known != Some(PeerKind::Streaming)).then(|| {
            let mut request = lent.request().clone();
            client.clone().insert_into(&mut request.metadata);
            request
        });
        let sent = self.metrics.invocation_sent(&target.app_id);
        // One deadline from the call to the peer's response head (its first message), for
        // both waits below: a timer each cost a second registration with the runtime's timer.
        let answer_deadline = tokio::time::sleep(RESPONSE_TIMEOUT);
        tokio::pin!(answer_deadline);
        let mut incoming = match wire::ready_part(body) {
            // The whole request is in hand: one message, one write (`crate::peer`).
            wire::Ready::Complete(data) if data.len() <= wire::MAX_CHUNK => {
                let mut message = InternalInvokeRequestStream {
                    request: Some(lent.take()),
                    payload: (!data.is_empty()).then(|| dapr_proto::common::v1::StreamPayload {
                        data: data.clone(),
                        seq: 0,
                    }),
                };
                let frame = self
                    .caller
                    .stamps
                    .stream_frame(&mut message, &client, &stamps);
                lent.put_back(message.request.take());
                let call = self.direct.call_local_stream(addr, target, frame);
                match before(answer_deadline.as_mut(), call).await {
                    None => return Err(self.timed_out(target)),
                    Some(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                        return match retry {
                            Some(request) => {
                                self.set_peer_kind(addr, Some(PeerKind::UnaryOnly));
                                Box::pin(self.unary_at(target, addr, request, &stamps, data)).await
                            }
                            None => {
                                self.set_peer_kind(addr, None);
                                Err(self.invoke_error(target, addr, &status))
                            }
                        };
                    }
                    Some(Err(status)) => return Err(self.invoke_error(target, addr, &status)),
                    Some(Ok(incoming)) => Incoming::Direct(incoming),
                }
            }
            ready => {
                let mut request = lent.give();
                client.insert_into(&mut request.metadata);
                let body = match ready {
                    wire::Ready::Complete(data) => Box::pin(futures::stream::iter([Ok(data)])),
                    wire::Ready::Streaming(body) => body,
                };
                // Boxed: its state (tonic's client, the pump) would otherwise grow the future of
                // every call, which is moved whole into its box per call.
                match Box::pin(self.stream_to(target, addr, request, &stamps, body, retry)).await? {
                    Streamed::Stream(incoming) => Incoming::Channel(Box::new(incoming)),
                    Streamed::Unary(answer) => return Ok(answer),
                }
            }
        };
        let first = match before(answer_deadline, wire::MessageStream::message(&mut incoming)).await
        {
            None => return Err(self.timed_out(target)),
            Some(Err(status)) => return Err(self.invoke_error(target, addr, &status)),
            Some(Ok(None)) => {
                return Err(Error::Invoke {
                    id: target.app_id.to_owned(),
                    reason: "peer closed the stream without a response".into(),
                });
            }
            Some(Ok(Some(first))) => first,
        };
        if known.is_none() {
            self.set_peer_kind(addr, Some(PeerKind::Streaming));
        }
        let head = first.head.ok_or_else(|| Error::Invoke {
            id: target.app_id.to_owned(),
            reason: "peer's first message carries no response".into(),
        })?;
        sent.received(head.status.as_ref());
        let declared = wire::declared_len(head.headers.first_of(&wire::CONTENT_LENGTH));
        let body = wire::payload_body(first.payload, incoming, declared).await;
        Ok(PeerResponse {
            head,
            body: Box::pin(body),
        })
    }

    fn timed_out(&self, target: &Target) -> Error {
        Error::Timeout {
            id: target.app_id.to_owned(),
            seconds: RESPONSE_TIMEOUT.as_secs(),
        }
    }

    /// `CallLocalStream` through the channel, with a body that streams: payloads follow the head
    /// as they come, and a peer without streaming gets what was kept as a unary retry.
    async fn stream_to(
        &self,
        target: &Target,
        addr: SocketAddr,
        mut request: InternalInvokeRequest,
        stamps: &wire::CallStamps<'_>,
        body: BoxStream<Result<Bytes, BoxError>>,
        retry: Option<InternalInvokeRequest>,
    ) -> Result<Streamed, Error> {
        let mut client = tonic::client::Grpc::new(self.channel(addr, target)?)
            .max_decoding_message_size(self.message_limit)
            .max_encoding_message_size(usize::MAX);
        // tonic encodes this one: the stamps go into its map.
        self.caller.stamps.insert_into(&mut request.metadata);
        stamps.insert_into(&mut request.metadata);
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
        let (outgoing, pump) = outgoing(request, body, retry.is_some(), failed_tx);
        let call = tokio::time::timeout(RESPONSE_TIMEOUT, async move {
            client
                .ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("peer channel not ready: {e}")))?;
            client
                .streaming(
                    tonic::Request::new(outgoing),
                    http::uri::PathAndQuery::from_static(CALL_LOCAL_STREAM),
                    OutboundCodec,
                )
                .await
        });
        tokio::select! {
            result = call => match result {
                Err(_) => Err(self.timed_out(target)),
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    match retry {
                        Some(request) => self
                            .fall_back_to_unary(target, addr, request, stamps, pump)
                            .await
                            .map(Streamed::Unary),
                        None => {
                            // A streaming peer was replaced by one that is not: learn again.
                            self.set_peer_kind(addr, None);
                            Err(self.invoke_error(target, addr, &status))
                        }
                    }
                }
                Ok(Err(status)) => Err(self.invoke_error(target, addr, &status)),
                Ok(Ok(response)) => Ok(Streamed::Stream(response.into_inner())),
            },
            Ok(reason) = failed_rx => Err(Error::Malformed(format!("request body: {reason}"))),
        }
    }

    fn peer_kind(&self, addr: SocketAddr) -> Option<PeerKind> {
        self.peers
            .lock()
            .ok()
            .and_then(|peers| peers.get(&addr).copied())
    }

    fn set_peer_kind(&self, addr: SocketAddr, kind: Option<PeerKind>) {
        if let Ok(mut peers) = self.peers.lock() {
            match kind {
                Some(kind) => peers.insert(addr, kind),
                None => peers.remove(&addr),
            };
        }
    }

    /// The peer answered `CallLocalStream` with `Unimplemented`: replay the body as `CallLocal`.
    async fn fall_back_to_unary(
        &self,
        target: &Target,
        addr: SocketAddr,
        request: InternalInvokeRequest,
        stamps: &wire::CallStamps<'_>,
        pump: futures::future::BoxFuture<'static, Option<Replay>>,
    ) -> Result<PeerResponse, Error> {
        tracing::info!(%addr, "peer does not implement CallLocalStream; using CallLocal");
        self.set_peer_kind(addr, Some(PeerKind::UnaryOnly));
        let replay = tokio::time::timeout(CONNECT_TIMEOUT, pump)
            .await
            .ok()
            .flatten()
            .ok_or_else(|| Error::Invoke {
                id: target.app_id.to_owned(),
                reason: "peer does not implement CallLocalStream and the request body could not be recovered".into(),
            })?;
        let data = match replay {
            Replay::Kept { sent, rest } => {
                let mut data = bytes::BytesMut::new();
                for chunk in sent {
                    data.extend_from_slice(&chunk);
                }
                if let Some(rest) = rest {
                    data.extend_from_slice(&collect_body(rest).await?);
                }
                data.freeze()
            }
            Replay::TooLarge => {
                return Err(Error::Invoke {
                    id: target.app_id.to_owned(),
                    reason: format!(
                        "peer does not implement CallLocalStream and the request body is larger than the {REPLAY_LIMIT} bytes kept for a unary retry"
                    ),
                });
            }
        };
        self.unary_at(target, addr, request, stamps, data).await
    }

    /// `CallLocal` with the body in `data`, answered as a [`PeerResponse`].
    async fn unary_at(
        &self,
        target: &Target,
        addr: SocketAddr,
        mut request: InternalInvokeRequest,
        stamps: &wire::CallStamps<'_>,
        data: Bytes,
    ) -> Result<PeerResponse, Error> {
        if let Some(message) = request.message.as_mut() {
            message.data = Some(prost_types::Any {
                type_url: String::new(),
                value: data.to_vec(),
            });
        }
        let mut head = self.call_local(target, addr, request, stamps).await?;
        // The bytes only: the data's `type_url` stays in the head, as a streamed head has it.
        let data = head
            .message
            .as_mut()
            .and_then(|m| m.data.as_mut())
            .map(|any| Bytes::from(std::mem::take(&mut any.value)))
            .unwrap_or_default();
        Ok(PeerResponse {
            head,
            body: Box::pin(futures::stream::once(async move { Ok(data) })),
        })
    }

    async fn call_local(
        &self,
        target: &Target,
        addr: SocketAddr,
        mut request: InternalInvokeRequest,
        stamps: &wire::CallStamps<'_>,
    ) -> Result<wire::ReceivedResponse, Error> {
        let frame = self.caller.stamps.frame(&mut request, stamps);
        self.send_call_local(target, addr, frame).await
    }

    /// Sends `frame`, a `CallLocal` request framed with its stamps, and reads the answer.
    async fn send_call_local(
        &self,
        target: &Target,
        addr: SocketAddr,
        frame: bytes::Bytes,
    ) -> Result<wire::ReceivedResponse, Error> {
        let sent = self.metrics.invocation_sent(&target.app_id);
        let rpc = self
            .metrics
            .grpc_client(crate::metrics::client_rpc::CALL_LOCAL);
        // The message without its 5-byte gRPC prefix, as upstream's `proto.Size`.
        let size = frame.len().saturating_sub(5);
        let call = self.direct.call_local(addr, target, frame);
        match tokio::time::timeout(RESPONSE_TIMEOUT, call).await {
            Err(_) => {
                rpc.finish(tonic::Code::DeadlineExceeded, size, || 0);
                Err(self.timed_out(target))
            }
            Ok(Err(status)) => {
                rpc.finish(status.code(), size, || 0);
                Err(self.invoke_error(target, addr, &status))
            }
            Ok(Ok((response, received))) => {
                rpc.finish(tonic::Code::Ok, size, || received);
                sent.received(response.status.as_ref());
                Ok(response)
            }
        }
    }

    /// Forwards a proxied gRPC call (any service but Dapr's own) to the target's sidecar as it
    /// is: headers, message frames and trailers stream through the pooled channel, with the
    /// caller and callee identities added.
    pub async fn proxy(
        &self,
        target: &Target,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Error> {
        match &self.resiliency {
            None => self.proxy_inner(target, request).await,
            Some(policies) => {
                Box::pin(super::resilient::proxy(self, policies, target, request)).await
            }
        }
    }

    /// One proxied call, without policies.
    pub(super) async fn proxy_inner(
        &self,
        target: &Target,
        mut request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Error> {
        let headers = request.headers_mut();
        headers.remove(names::API_TOKEN);
        let traceparent = crate::trace::next_hop(
            headers
                .get(names::TRACEPARENT)
                .and_then(|v| v.to_str().ok()),
        );
        headers.insert(
            names::TRACEPARENT,
            wire::traceparent_value(&traceparent)
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
        let call = tower::ServiceExt::oneshot(self.channel(addr, target)?, request);
        match tokio::time::timeout(RESPONSE_TIMEOUT, call).await {
            Err(_) => Err(Error::Timeout {
                id: target.app_id.to_owned(),
                seconds: RESPONSE_TIMEOUT.as_secs(),
            }),
            // tonic's channel ends a call at its `grpc-timeout`; the connection is sound.
            Ok(Err(e)) if deadline_passed(&e) => Err(Error::CallDeadline {
                id: target.app_id.to_owned(),
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
        request: InternalInvokeRequest,
    ) -> Result<wire::ReceivedResponse, Error> {
        match &self.resiliency {
            None => self.invoke_unary_inner(target, request).await,
            Some(policies) => {
                Box::pin(super::resilient::invoke_unary(
                    self, policies, target, request,
                ))
                .await
            }
        }
    }

    /// One unary call, without policies, of a gRPC API request as it came: the invocation's
    /// bytes and the client's metadata are written into the `CallLocal` frame as they are
    /// ([`wire::Stamps::invoke_frame`]).
    pub async fn invoke_received(
        &self,
        target: &Target,
        invocation: Option<&[u8]>,
        client: &wire::ClientHeaders,
    ) -> Result<wire::ReceivedResponse, Error> {
        let stamps = wire::CallStamps {
            callee: &target.app_id,
            traceparent: crate::trace::next_hop(client.first(names::TRACEPARENT)),
        };
        let addr = self
            .resolver
            .resolve(target)
            .await
            .map_err(|e| Self::unresolved(target, e))?;
        let frame = self.caller.stamps.invoke_frame(invocation, client, &stamps);
        self.send_call_local(target, addr, frame).await
    }

    /// One unary call, without policies.
    pub(super) async fn invoke_unary_inner(
        &self,
        target: &Target,
        request: InternalInvokeRequest,
    ) -> Result<wire::ReceivedResponse, Error> {
        let stamps = self.call_stamps(&request, &wire::ClientHeaders::default(), target);
        let addr = self
            .resolver
            .resolve(target)
            .await
            .map_err(|e| Self::unresolved(target, e))?;
        self.call_local(target, addr, request, &stamps).await
    }
}

pin_project_lite::pin_project! {
    /// [`before`]'s future.
    struct Before<'d, F> {
        #[pin]
        future: F,
        deadline: Pin<&'d mut tokio::time::Sleep>,
    }
}

/// `future`'s output, or `None` once `deadline` has passed. The deadline is polled (and so
/// registered with the runtime's timer) only while `future` is pending, so one deadline can
/// bound several waits in turn. A struct, not an `async fn`, which would hold `future` twice.
fn before<F: Future>(deadline: Pin<&mut tokio::time::Sleep>, future: F) -> Before<'_, F> {
    Before { future, deadline }
}

impl<F: Future> Future for Before<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Some(output));
        }
        this.deadline.as_mut().poll(cx).map(|()| None)
    }
}

/// A peer's `CallLocalStream` answer: read from h2 by [`wire::Messages`] when the request went
/// out whole (`crate::peer`), or by tonic when it streamed through the channel. tonic's
/// stream is boxed: twice the size of ours, it would grow every answer's body stream, which is
/// moved whole at each of its steps (bench/notes.md, "invocations from the request's head as
/// it was read").
enum Incoming {
    Direct(crate::peer::PeerMessages),
    Channel(Box<tonic::Streaming<wire::ReceivedResponseStream>>),
}

impl wire::MessageStream<wire::ReceivedResponseStream> for Incoming {
    async fn message(&mut self) -> Result<Option<wire::ReceivedResponseStream>, tonic::Status> {
        match self {
            Incoming::Direct(messages) => messages.message().await,
            Incoming::Channel(streaming) => streaming.message().await,
        }
    }
}

/// What a streamed call got back: the peer's response stream, or the answer of the unary retry
/// a peer without streaming needed.
enum Streamed {
    Stream(tonic::Streaming<wire::ReceivedResponseStream>),
    Unary(PeerResponse),
}

/// How much of a request body is kept for a unary retry, should the peer not implement
/// `CallLocalStream`. The kept chunks are reference-counted views of the ones sent, not copies.
pub const REPLAY_LIMIT: usize = 1024 * 1024;

/// What the pump kept of the request body, for a unary retry.
enum Replay {
    /// The chunks pulled from the body so far, and the rest of the body if the pump stopped
    /// early (the peer stopped reading).
    Kept {
        sent: Vec<Bytes>,
        rest: Option<BoxStream<Result<Bytes, BoxError>>>,
    },
    TooLarge,
}

/// The request stream and, once it is done with the body, what it kept of it for
/// [`Invoker::fall_back_to_unary`] (`None` if that is lost).
type Outgoing = (
    futures::future::Either<
        futures::stream::Iter<std::array::IntoIter<Outbound, 1>>,
        tokio_stream::wrappers::ReceiverStream<Outbound>,
    >,
    futures::future::BoxFuture<'static, Option<Replay>>,
);

/// The request stream. A body that is complete already and fits one message travels in the
/// head message. Any other body follows the head as payloads, pumped through a small bounded
/// channel (back-pressure from the peer reaches the client body). A failing client body must not
/// look like a complete one to the peer: the pump reports the failure to the caller and ends the
/// stream with [`Outbound::Failed`], which resets it (the peer cancels its app call, and the
/// response stream fails, so every party lets go).
fn outgoing(
    request: InternalInvokeRequest,
    body: BoxStream<Result<Bytes, BoxError>>,
    keep_for_replay: bool,
    failed: tokio::sync::oneshot::Sender<String>,
) -> Outgoing {
    use futures::FutureExt;
    let mut body = match wire::ready_part(body) {
        wire::Ready::Complete(data) if data.len() <= wire::MAX_CHUNK => {
            let head = InternalInvokeRequestStream {
                request: Some(request),
                payload: (!data.is_empty()).then(|| dapr_proto::common::v1::StreamPayload {
                    data: data.clone(),
                    seq: 0,
                }),
            };
            let replay = Replay::Kept {
                sent: vec![data],
                rest: None,
            };
            return (
                futures::future::Either::Left(futures::stream::iter([Outbound::Message(head)])),
                futures::future::ready(Some(replay)).boxed(),
            );
        }
        wire::Ready::Complete(data) => Box::pin(futures::stream::iter([Ok(data)])),
        wire::Ready::Streaming(body) => body,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let pump = tokio::spawn(async move {
        let mut kept = keep_for_replay.then(Vec::new);
        let mut kept_len = 0usize;
        let stopped = |kept: Option<Vec<Bytes>>, rest| match kept {
            Some(sent) => Replay::Kept { sent, rest },
            None => Replay::TooLarge,
        };
        let head = InternalInvokeRequestStream {
            request: Some(request),
            payload: None,
        };
        if tx.send(Outbound::Message(head)).await.is_err() {
            return stopped(kept, Some(body));
        }
        let mut seq = 0u64;
        while let Some(chunk) = body.next().await {
            let mut data = match chunk {
                Ok(data) => data,
                Err(e) => {
                    let reason = e.to_string();
                    let _ = failed.send(reason.clone());
                    let _ = tx.send(Outbound::Failed(reason)).await;
                    return Replay::TooLarge;
                }
            };
            kept_len += data.len();
            kept = kept.filter(|_| kept_len <= REPLAY_LIMIT);
            if let Some(kept) = kept.as_mut() {
                kept.push(data.clone());
            }
            while !data.is_empty() {
                let piece = data.split_to(data.len().min(wire::MAX_CHUNK));
                let message = InternalInvokeRequestStream {
                    request: None,
                    payload: Some(dapr_proto::common::v1::StreamPayload { data: piece, seq }),
                };
                seq += 1;
                if tx.send(Outbound::Message(message)).await.is_err() {
                    return stopped(kept, Some(body));
                }
            }
        }
        stopped(kept, None)
    });
    (
        futures::future::Either::Right(tokio_stream::wrappers::ReceiverStream::new(rx)),
        async move { pump.await.ok() }.boxed(),
    )
}

/// Collects a request body for a unary call (the API layer bounds it by `--max-body-size`).
async fn collect_body(mut body: BoxStream<Result<Bytes, BoxError>>) -> Result<Bytes, Error> {
    let mut data = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::Malformed(format!("request body: {e}")))?;
        data.extend_from_slice(&chunk);
    }
    Ok(data.freeze())
}

/// Whether `error` (or one of its sources) is tonic's `TimeoutExpired`: the channel ended the
/// call at the deadline its `grpc-timeout` set, not because the connection failed.
fn deadline_passed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One deadline bounds two waits in turn: the second ends when the first's time and its
    /// own reach the deadline together, not a whole deadline after it began (paused time).
    #[tokio::test(start_paused = true)]
    async fn one_deadline_bounds_successive_waits_together() {
        let start = tokio::time::Instant::now();
        let deadline = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(deadline);
        let first = before(
            deadline.as_mut(),
            tokio::time::sleep(Duration::from_secs(40)),
        );
        assert_eq!(first.await, Some(()));
        let second = before(deadline.as_mut(), std::future::pending::<()>());
        assert_eq!(second.await, None);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    /// A future that is ready at once is answered even past the deadline: the deadline is
    /// looked at only while the future waits.
    #[tokio::test(start_paused = true)]
    async fn a_ready_answer_wins_over_a_passed_deadline() {
        let deadline = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(deadline);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            before(deadline.as_mut(), std::future::ready(7)).await,
            Some(7)
        );
        assert_eq!(before(deadline, std::future::pending::<u8>()).await, None);
    }

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
