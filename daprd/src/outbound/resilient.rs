//! Calls to other sidecars run through the Resiliency policies of their app, as upstream's
//! policy runner does (pkg/resiliency/policy.go): each attempt is bounded by the timeout and
//! counted by the circuit breaker, and the retry policy runs attempts until one succeeds, the
//! failure is not one it retries, or no retry is left. An open breaker answers at once,
//! without touching the network.
//!
//! A failure is an error before the app answered, or an answer outside 200-399 (an HTTP app)
//! or other than OK (a gRPC app), as upstream's HTTP API treats it
//! (pkg/api/http/directmessaging.go); `matching` narrows which answers are retried. The last
//! answer is handed back as it is, so the caller sees the app's own status and body.
//!
//! Only a request that can be sent again is retried: a body up to [`REPLAY_LIMIT`] is kept for
//! that; a longer one is sent once: the app's answer comes back as it is, and an error says
//! why it was not retried.
//!
//! Apps not named under `targets.apps` also get the built-in service retries within each
//! attempt: calls the peer's sidecar refused as `Unavailable` or `Unauthenticated`
//! (pkg/messaging/direct_messaging.go upstream).
//!
//! Proxied gRPC calls get the timeout and the breaker (keyed `app:/package.Service/Method`, as
//! upstream), judged by their response head; their message stream is not replayed.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dapr_proto::internals::v1::{InternalInvokeRequest, InternalInvokeResponse};
use futures::StreamExt;

use super::invoker::{Invoker, PeerResponse, REPLAY_LIMIT};
use crate::Error;
use crate::metrics::{CIRCUIT_BREAKER, PolicyEvent};
use crate::resiliency::breaker::{Breaker, State};
use crate::resiliency::retry::{Matching, RetryPolicy};
use crate::resiliency::{AppPolicy, Resiliency};
use crate::resolve::Target;
use crate::wire::{self, BoxError, BoxStream, names};

/// The request body, kept for replays when it is small enough.
enum Body {
    Kept(Bytes),
    /// Sent once; `None` once it has been.
    Once(Option<BoxStream<Result<Bytes, BoxError>>>),
}

impl Body {
    /// What one attempt sends, or `None` if the body is spent.
    fn attempt(&mut self) -> Option<BoxStream<Result<Bytes, BoxError>>> {
        match self {
            Body::Kept(data) => Some(Box::pin(futures::stream::iter([Ok(data.clone())]))),
            Body::Once(body) => body.take(),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Body::Kept(_))
    }
}

/// Reads up to [`REPLAY_LIMIT`] bytes of `body`; a body that ends within them is kept.
async fn keep(body: BoxStream<Result<Bytes, BoxError>>) -> Result<Body, Error> {
    let mut body = match wire::ready_part(body) {
        wire::Ready::Complete(data) => return Ok(Body::Kept(data)),
        wire::Ready::Streaming(body) => body,
    };
    let mut kept: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while len <= REPLAY_LIMIT {
        match body.next().await {
            None => {
                let mut data = bytes::BytesMut::with_capacity(len);
                for chunk in kept {
                    data.extend_from_slice(&chunk);
                }
                return Ok(Body::Kept(data.freeze()));
            }
            Some(Ok(chunk)) => {
                len += chunk.len();
                kept.push(chunk);
            }
            Some(Err(e)) => return Err(Error::Malformed(format!("request body: {e}"))),
        }
    }
    let replayed = futures::stream::iter(kept.into_iter().map(Ok)).chain(body);
    Ok(Body::Once(Some(Box::pin(replayed))))
}

/// An answer from a peer, judged by its status.
trait Answer {
    /// The app's status: an HTTP status, or a gRPC code (0-16).
    fn code(&self) -> i32;
    /// Bounds what is still to come of the answer by `deadline`.
    fn bounded(self, deadline: tokio::time::Instant) -> Self;
}

impl Answer for PeerResponse {
    fn code(&self) -> i32 {
        self.head.code()
    }
    fn bounded(self, deadline: tokio::time::Instant) -> Self {
        PeerResponse {
            head: self.head,
            body: until(self.body, deadline),
        }
    }
}

impl Answer for InternalInvokeResponse {
    fn code(&self) -> i32 {
        self.status.as_ref().map_or(200, |s| s.code)
    }
    fn bounded(self, _: tokio::time::Instant) -> Self {
        self
    }
}

impl Answer for wire::ReceivedResponse {
    fn code(&self) -> i32 {
        wire::ReceivedResponse::code(self)
    }
    fn bounded(self, _: tokio::time::Instant) -> Self {
        self
    }
}

/// The response body, failing at `deadline`: dropping the peer's stream resets it, so the
/// callee's app sees the cancellation too.
fn until(
    body: BoxStream<Result<Bytes, BoxError>>,
    deadline: tokio::time::Instant,
) -> BoxStream<Result<Bytes, BoxError>> {
    let sleep = Box::pin(tokio::time::sleep_until(deadline));
    Box::pin(futures::stream::unfold(
        Some((body, sleep)),
        |state| async move {
            let (mut body, mut sleep) = state?;
            tokio::select! {
                item = body.next() => item.map(|item| (item, Some((body, sleep)))),
                _ = &mut sleep => Some((Err(BoxError::from("context deadline exceeded")), None)),
            }
        },
    ))
}

/// How an attempt ended, for the breaker and the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    /// Counted by the breaker; `retry` says whether the retry policy may run it again.
    Failure {
        retry: bool,
    },
}

fn judge<T: Answer>(result: &Result<T, Error>, matching: &Matching) -> Outcome {
    match result {
        Ok(answer) => {
            let code = answer.code();
            match u32::try_from(code) {
                Ok(0) => Outcome::Success,
                Ok(c) if c < 100 => Outcome::Failure {
                    retry: matching.grpc(c),
                },
                Ok(c) if (200..=399).contains(&c) => Outcome::Success,
                Ok(c) => Outcome::Failure {
                    retry: matching.http(c),
                },
                Err(_) => Outcome::Failure { retry: false },
            }
        }
        // The client's own faults, and a breaker's refusal, are not worth another try (upstream
        // makes breaker errors permanent).
        Err(Error::Malformed(_) | Error::BodyTooLarge { .. } | Error::CircuitBreaker { .. }) => {
            Outcome::Failure { retry: false }
        }
        Err(_) => Outcome::Failure { retry: true },
    }
}

/// Whether the built-in service retries take this error: the peer's sidecar refused the call.
fn built_in_retries(result: &Result<impl Answer, Error>) -> bool {
    matches!(
        result,
        Err(Error::Peer {
            code: tonic::Code::Unavailable | tonic::Code::Unauthenticated,
            ..
        })
    )
}

/// Per call: the policy, its breaker and the labels its metrics carry.
struct Call<'a> {
    /// Whether the timeout also bounds the answer's body (not for proxied streams).
    bound_body: bool,
    invoker: &'a Invoker,
    policies: &'a Resiliency,
    policy: &'a AppPolicy,
    breaker: Option<Arc<Breaker>>,
    target: &'a Target,
}

impl Call<'_> {
    fn new<'a>(
        invoker: &'a Invoker,
        policies: &'a Resiliency,
        target: &'a Target,
        method: &str,
    ) -> Call<'a> {
        let policy = policies.for_app(&target.app_id);
        let breaker = policy
            .breakers
            .as_ref()
            .map(|b| b.get(&format!("{}:{method}", target.app_id), Instant::now()));
        let call = Call {
            bound_body: true,
            invoker,
            policies,
            policy,
            breaker,
            target,
        };
        if call.policy.timeout.is_some() {
            call.record(PolicyEvent::Applied, "timeout", "");
        }
        if call.policy.retry.is_some() {
            call.record(PolicyEvent::Applied, "retry", "");
        }
        if let Some(b) = &call.breaker {
            let state = b.state(Instant::now());
            call.record(PolicyEvent::Applied, CIRCUIT_BREAKER, state.label());
            call.invoker.metrics().breaker_state(
                (&call.policy.resiliency, &call.policy.namespace),
                &call.target.app_id,
                state.gauge(),
            );
        }
        call
    }

    fn record(&self, event: PolicyEvent, policy: &str, status: &str) {
        self.invoker.metrics().resiliency_policy(
            event,
            (&self.policy.resiliency, &self.policy.namespace),
            policy,
            &self.target.app_id,
            status,
        );
    }

    fn breaker_changed(&self, state: Option<State>) {
        if let Some(state) = state {
            tracing::info!(
                target_app = %self.target.app_id,
                "circuit breaker is now {}",
                state.label()
            );
            self.record(PolicyEvent::Activated, CIRCUIT_BREAKER, state.label());
            self.invoker.metrics().breaker_state(
                (&self.policy.resiliency, &self.policy.namespace),
                &self.target.app_id,
                state.gauge(),
            );
        }
    }

    /// Runs `once` under the policy. `once` makes one call, or `None` when the request cannot
    /// be sent again; `not_replayable` says why it cannot, if so (asked when a retry is due: a
    /// proxied call knows only then).
    async fn run<T, F, Fut>(
        &self,
        not_replayable: &(dyn Fn() -> Option<String> + Sync),
        mut once: F,
    ) -> Result<T, Error>
    where
        T: Answer,
        F: FnMut() -> Option<Fut>,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let retry = self.policy.retry.as_deref();
        let matching = retry.map_or(ANY, |r| &r.matching);
        let mut schedule = retry.map(RetryPolicy::schedule);
        loop {
            let result = self.attempt(not_replayable, &mut once).await;
            let Outcome::Failure { retry: true } = judge(&result, matching) else {
                return result;
            };
            let Some(wait) = schedule.as_mut().and_then(|s| s.next_wait(fastrand::f64())) else {
                return result;
            };
            if let Some(why) = not_replayable() {
                // The app's own answer goes back as it is (upstream streams it through); an
                // error says why it was not retried.
                return match result {
                    Ok(answer) => Ok(answer),
                    Err(e) => Err(not_retried(self.target, e, &why)),
                };
            }
            drop(result);
            self.record(PolicyEvent::Activated, "retry", "");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: the breaker's permission, the timeout, and the built-in retries within.
    async fn attempt<T, F, Fut>(
        &self,
        not_replayable: &(dyn Fn() -> Option<String> + Sync),
        once: &mut F,
    ) -> Result<T, Error>
    where
        T: Answer,
        F: FnMut() -> Option<Fut>,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut permit = match &self.breaker {
            None => None,
            Some(breaker) => {
                let (ticket, changed) = breaker.before(Instant::now());
                self.breaker_changed(changed);
                match ticket {
                    Ok(ticket) => Some(Permit {
                        call: self,
                        breaker,
                        ticket: Some(ticket),
                    }),
                    Err(rejected) => {
                        return Err(Error::CircuitBreaker {
                            id: self.target.app_id.clone(),
                            rejected,
                        });
                    }
                }
            }
        };
        let calls = async {
            let mut schedule = self
                .policy
                .built_in
                .then(|| self.policies.built_in_retries.schedule());
            loop {
                let Some(call) = once() else {
                    return Err(Error::Invoke {
                        id: self.target.app_id.clone(),
                        reason: "the request body was sent already and cannot be sent again".into(),
                    });
                };
                let result = call.await;
                if !(built_in_retries(&result) && not_replayable().is_none()) {
                    return result;
                }
                let Some(wait) = schedule.as_mut().and_then(|s| s.next_wait(fastrand::f64()))
                else {
                    return result;
                };
                tracing::debug!(target_app = %self.target.app_id, "peer unavailable; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
        };
        let result = match self.policy.timeout {
            None => calls.await,
            Some(timeout) => {
                let deadline = tokio::time::Instant::now() + timeout;
                match tokio::time::timeout_at(deadline, calls).await {
                    Ok(result) if self.bound_body => result.map(|answer| answer.bounded(deadline)),
                    Ok(result) => result,
                    Err(_) => {
                        self.record(PolicyEvent::Activated, "timeout", "");
                        Err(Error::PolicyTimeout {
                            id: self.target.app_id.clone(),
                        })
                    }
                }
            }
        };
        if let Some(permit) = permit.as_mut() {
            permit.report(judge(&result, ANY) == Outcome::Success);
        }
        result
    }
}

/// Every answer counts for `matching` when no retry policy narrows it.
const ANY: &Matching = &Matching {
    http: None,
    grpc: None,
};

/// A call the breaker let through. Dropped unreported (the caller went away mid-call), it
/// counts as a failure: a half-open breaker waiting for its outcome would otherwise refuse
/// every call from then on.
struct Permit<'a> {
    call: &'a Call<'a>,
    breaker: &'a Breaker,
    ticket: Option<crate::resiliency::breaker::Ticket>,
}

impl Permit<'_> {
    fn report(&mut self, success: bool) {
        if let Some(ticket) = self.ticket.take() {
            let changed = self.breaker.after(ticket, success, Instant::now());
            self.call.breaker_changed(changed);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.report(false);
    }
}

/// A failure that the policy would retry, but the request cannot be sent again.
fn not_retried(target: &Target, e: Error, why: &str) -> Error {
    Error::Invoke {
        id: target.app_id.clone(),
        reason: format!("{}; not retried: {why}", reason_of(&e)),
    }
}

/// The part of an invocation error after `err: `.
fn reason_of(e: &Error) -> String {
    let text = e.to_string();
    match text.split_once(", err: ") {
        Some((_, reason)) => reason.to_owned(),
        None => text,
    }
}

/// [`Invoker::invoke_stream`] under the target's policy.
pub async fn invoke_stream(
    invoker: &Invoker,
    policies: &Resiliency,
    target: &Target,
    request: InternalInvokeRequest,
    body: BoxStream<Result<Bytes, BoxError>>,
) -> Result<PeerResponse, Error> {
    let method = request.message.as_ref().map_or("", |m| m.method.as_str());
    let call = Call::new(invoker, policies, target, method);
    let may_retry = call.policy.retry.is_some() || call.policy.built_in;
    let mut body = if may_retry {
        keep(body).await?
    } else {
        Body::Once(Some(body))
    };
    let too_large = (!body.replayable()).then(|| {
        format!("the request body is larger than the {REPLAY_LIMIT} bytes kept for a retry")
    });
    // The first attempt takes the request; each attempt leaves it in `kept` for the next one
    // (moved back after encoding on the one-frame path), so a call that succeeds at once is
    // not copied.
    let kept = super::invoker::Kept::new(None);
    let mut first = Some(request);
    call.run(&|| too_large.clone(), || {
        let body = body.attempt()?;
        let request = match first.take() {
            Some(request) => request,
            None => kept.lock().ok()?.take()?,
        };
        Some(invoker.invoke_stream_inner(
            target,
            request,
            crate::wire::ClientHeaders::default(),
            body,
            Some(&kept),
        ))
    })
    .await
}

/// [`Invoker::invoke_unary`] under the target's policy.
pub async fn invoke_unary(
    invoker: &Invoker,
    policies: &Resiliency,
    target: &Target,
    request: InternalInvokeRequest,
) -> Result<wire::ReceivedResponse, Error> {
    let method = request.message.as_ref().map_or("", |m| m.method.as_str());
    let call = Call::new(invoker, policies, target, method);
    call.run(&|| None, || {
        Some(invoker.invoke_unary_inner(target, request.clone()))
    })
    .await
}

/// [`Invoker::proxy`] under the target's policy, as upstream's proxy handler applies it
/// (`pkg/api/grpc/proxy/handler.go`): a call marked `dapr-stream: true` is a stream, whose
/// timeout covers the answer's head only and which is never replayed; any other call is unary,
/// its timeout covers the whole answer, and its request streams through while its first
/// message is kept, so a client that sent that one message can be served by a retry.
pub async fn proxy(
    invoker: &Invoker,
    policies: &Resiliency,
    target: &Target,
    request: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, Error> {
    let mut call = Call::new(invoker, policies, target, request.uri().path());
    let stream = request
        .headers()
        .get(names::DAPR_STREAM)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_truthy);
    let may_retry = call.policy.retry.is_some() || call.policy.built_in;
    if stream || !may_retry {
        call.bound_body = !stream;
        let why = if stream { STREAM } else { ONCE };
        let mut request = Some(request);
        return call
            .run(&|| Some(why.to_owned()), || {
                let request = request.take()?;
                Some(invoker.proxy_inner(target, request))
            })
            .await;
    }
    let (head, body) = request.into_parts();
    let kept = Arc::new(std::sync::Mutex::new(FirstMessage::default()));
    let mut first = Some(FirstMessage::tee(body, &kept));
    let not_replayable = || {
        let why = kept.lock().map_or(Some(ONCE), |k| k.why_not());
        why.map(str::to_owned)
    };
    call.run(&not_replayable, || {
        let body = match first.take() {
            Some(body) => body,
            None => kept.lock().ok()?.replay()?,
        };
        let mut request = http::Request::new(body);
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = head.uri.clone();
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers.clone();
        Some(invoker.proxy_inner(target, request))
    })
    .await
}

/// Why a proxied stream is not retried.
const STREAM: &str = "the call is a stream (dapr-stream: true)";
/// Why a proxied call without a policy to retry it is sent once.
const ONCE: &str = "the request was streamed through";

/// `dapr-stream` values upstream reads as true (`utils.IsTruthy`).
fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "y" | "yes" | "true" | "t" | "on" | "1"
    )
}

/// What a proxied request's body sent so far, kept for a retry while it is at most one whole
/// gRPC message of up to [`REPLAY_LIMIT`] bytes (upstream's replay buffer holds one message).
#[derive(Default)]
struct FirstMessage {
    chunks: Vec<Bytes>,
    len: usize,
    ended: bool,
    /// Why it cannot be replayed, once known.
    spoiled: Option<&'static str>,
}

impl FirstMessage {
    /// `body` streaming through as it arrives, recorded in `kept`.
    fn tee(
        body: tonic::body::Body,
        kept: &Arc<std::sync::Mutex<FirstMessage>>,
    ) -> tonic::body::Body {
        use http_body_util::BodyExt;
        let recorder = Arc::clone(kept);
        let end = Arc::clone(kept);
        let ended = futures::stream::once(async move {
            if let Ok(mut kept) = end.lock() {
                kept.ended = true;
            }
            None
        })
        .filter_map(futures::future::ready);
        let stream = body
            .into_data_stream()
            .map(move |chunk| {
                if let Ok(mut kept) = recorder.lock() {
                    kept.record(chunk.as_ref().ok());
                }
                chunk
            })
            .chain(ended);
        tonic::body::Body::new(http_body_util::StreamBody::new(
            stream.map(|chunk| chunk.map(http_body::Frame::data)),
        ))
    }

    /// One chunk of the body as it passes, or `None` for a failed one.
    fn record(&mut self, chunk: Option<&Bytes>) {
        let Some(chunk) = chunk else {
            self.spoiled = Some("the request body failed");
            return;
        };
        self.len += chunk.len();
        if self.len > REPLAY_LIMIT {
            self.spoiled = Some("the request is larger than the bytes kept for a retry");
            self.chunks.clear();
        } else if self.spoiled.is_none() {
            self.chunks.push(chunk.clone());
        }
    }

    fn why_not(&self) -> Option<&'static str> {
        if self.spoiled.is_some() {
            return self.spoiled;
        }
        if self.one_message() {
            return None;
        }
        Some(if self.ended {
            "the client sent more than one message (a stream: mark it dapr-stream: true)"
        } else {
            "the client had not sent its whole request"
        })
    }

    /// Whether what was sent is exactly one gRPC message (5-byte prefix, then its length).
    fn one_message(&self) -> bool {
        let mut prefix = [0u8; 5];
        let mut filled = 0;
        for chunk in &self.chunks {
            let take = (5 - filled).min(chunk.len());
            prefix[filled..filled + take].copy_from_slice(&chunk[..take]);
            filled += take;
            if filled == 5 {
                break;
            }
        }
        let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
        filled == 5 && self.len == 5 + declared as usize
    }

    /// The kept message as the body of another attempt.
    fn replay(&self) -> Option<tonic::body::Body> {
        if self.why_not().is_some() {
            return None;
        }
        let frames = self
            .chunks
            .clone()
            .into_iter()
            .map(|chunk| Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk)));
        Some(tonic::body::Body::new(http_body_util::StreamBody::new(
            futures::stream::iter(frames),
        )))
    }
}

/// A proxied call's response head: a trailers-only error carries its `grpc-status` there.
impl Answer for http::Response<tonic::body::Body> {
    fn code(&self) -> i32 {
        self.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    fn bounded(self, deadline: tokio::time::Instant) -> Self {
        self.map(|body| {
            tonic::body::Body::new(Deadline {
                body,
                sleep: tokio::time::sleep_until(deadline),
                done: false,
            })
        })
    }
}

pin_project_lite::pin_project! {
    /// A proxied response body that fails with `DeadlineExceeded` at the policy's deadline.
    struct Deadline {
        #[pin]
        body: tonic::body::Body,
        #[pin]
        sleep: tokio::time::Sleep,
        done: bool,
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        if *this.done {
            return std::task::Poll::Ready(None);
        }
        if this.sleep.poll(cx).is_ready() {
            *this.done = true;
            return std::task::Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(
                "context deadline exceeded",
            ))));
        }
        this.body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }
}

/// An HTTPEndpoint or URL call under the policy of `targets.apps.<name or URL>`, as upstream
/// applies it to endpoints (pkg/messaging/direct_messaging.go).
pub async fn endpoint(
    invoker: &Invoker,
    policies: &Resiliency,
    endpoints: &super::endpoint::Endpoints,
    destination: super::endpoint::Destination<'_>,
    method: &str,
    head: http::request::Parts,
    body: BoxStream<Result<Bytes, BoxError>>,
) -> Result<axum::response::Response, Error> {
    let target = Target {
        app_id: destination.id().to_owned(),
        namespace: String::new(),
    };
    let call = Call::new(invoker, policies, &target, method);
    let mut body = if call.policy.retry.is_some() {
        keep(body).await?
    } else {
        Body::Once(Some(body))
    };
    let too_large = (!body.replayable()).then(|| {
        format!("the request body is larger than the {REPLAY_LIMIT} bytes kept for a retry")
    });
    call.run(&|| too_large.clone(), || {
        let body = body.attempt()?;
        Some(endpoints.call(destination.clone(), method, head.clone(), body))
    })
    .await
}

/// A gRPC `InvokeService` call to an HTTPEndpoint or URL under the same policy as
/// [`endpoint`]; the request is a message in hand, so every attempt can send it.
pub async fn endpoint_unary(
    invoker: &Invoker,
    policies: &Resiliency,
    endpoints: &super::endpoint::Endpoints,
    destination: super::endpoint::Destination<'_>,
    message: dapr_proto::common::v1::InvokeRequest,
    metadata: &wire::Metadata,
) -> Result<InternalInvokeResponse, Error> {
    let target = Target {
        app_id: destination.id().to_owned(),
        namespace: String::new(),
    };
    let call = Call::new(invoker, policies, &target, &message.method);
    call.run(&|| None, || {
        Some(endpoints.call_unary(destination.clone(), message.clone(), metadata))
    })
    .await
}

/// An endpoint's answer: its HTTP status.
impl Answer for axum::response::Response {
    fn code(&self) -> i32 {
        i32::from(self.status().as_u16())
    }
    fn bounded(self, deadline: tokio::time::Instant) -> Self {
        let (parts, body) = self.into_parts();
        let body = body
            .into_data_stream()
            .map(|chunk| chunk.map_err(BoxError::from));
        axum::response::Response::from_parts(
            parts,
            axum::body::Body::from_stream(until(Box::pin(body), deadline)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resiliency::retry::Codes;

    fn answer(code: i32) -> Result<InternalInvokeResponse, Error> {
        Ok(InternalInvokeResponse {
            status: Some(dapr_proto::internals::v1::Status {
                code,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn answers_are_judged_by_the_apps_status_and_matching() {
        let any = Matching::default();
        assert_eq!(judge(&answer(200), &any), Outcome::Success);
        assert_eq!(judge(&answer(302), &any), Outcome::Success);
        assert_eq!(judge(&answer(0), &any), Outcome::Success);
        assert_eq!(judge(&answer(503), &any), Outcome::Failure { retry: true });
        assert_eq!(judge(&answer(14), &any), Outcome::Failure { retry: true });
        let only_5xx = Matching {
            http: Some(Codes::parse("500-599", 100..=599).unwrap()),
            grpc: Some(Codes::parse("14", 0..=16).unwrap()),
        };
        assert_eq!(
            judge(&answer(404), &only_5xx),
            Outcome::Failure { retry: false }
        );
        assert_eq!(
            judge(&answer(5), &only_5xx),
            Outcome::Failure { retry: false }
        );
        assert_eq!(
            judge(&answer(14), &only_5xx),
            Outcome::Failure { retry: true }
        );
        let open: Result<InternalInvokeResponse, _> = Err(Error::CircuitBreaker {
            id: "a".into(),
            rejected: crate::resiliency::breaker::Rejected::Open,
        });
        assert_eq!(judge(&open, &any), Outcome::Failure { retry: false });
        let down: Result<InternalInvokeResponse, _> = Err(Error::Peer {
            id: "a".into(),
            code: tonic::Code::Unavailable,
            reason: "x".into(),
        });
        assert_eq!(judge(&down, &only_5xx), Outcome::Failure { retry: true });
        assert!(built_in_retries(&down));
        assert!(!built_in_retries(&answer(503)));
    }

    fn grpc_message(len: usize) -> Vec<u8> {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        framed.extend(std::iter::repeat_n(7u8, len));
        framed
    }

    #[tokio::test]
    async fn a_proxied_request_is_replayable_when_it_was_one_whole_message() {
        use http_body_util::BodyExt;
        let tee = |chunks: Vec<Vec<u8>>| {
            let kept = Arc::new(std::sync::Mutex::new(FirstMessage::default()));
            let frames = chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c))));
            let body = tonic::body::Body::new(http_body_util::StreamBody::new(
                futures::stream::iter(frames),
            ));
            (FirstMessage::tee(body, &kept), kept)
        };
        // One message split across chunks streams through whole and can be sent again.
        let message = grpc_message(10);
        let (body, kept) = tee(vec![message[..3].to_vec(), message[3..].to_vec()]);
        assert_eq!(body.collect().await.unwrap().to_bytes(), &message[..]);
        assert_eq!(kept.lock().unwrap().why_not(), None);
        let replay = kept.lock().unwrap().replay().expect("replayable");
        assert_eq!(replay.collect().await.unwrap().to_bytes(), &message[..]);

        // Two messages: a stream, not replayed.
        let (body, kept) = tee(vec![grpc_message(2), grpc_message(2)]);
        body.collect().await.unwrap();
        let why = kept.lock().unwrap().why_not().expect("not replayable");
        assert!(why.contains("more than one message"), "{why}");
        assert!(kept.lock().unwrap().replay().is_none());

        // Larger than the replay limit: streams through, not kept.
        let big = grpc_message(REPLAY_LIMIT + 1);
        let (body, kept) = tee(vec![big.clone()]);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), big.len());
        let why = kept.lock().unwrap().why_not().expect("not replayable");
        assert!(why.contains("larger"), "{why}");

        // Half a message, the rest not sent yet: not replayable.
        let (mut body, kept) = tee(vec![message[..8].to_vec()]);
        body.frame().await.unwrap().unwrap();
        let why = kept.lock().unwrap().why_not().expect("not replayable");
        assert!(why.contains("whole request"), "{why}");
    }

    #[test]
    fn dapr_stream_reads_upstreams_truthy_values() {
        for yes in ["true", "TRUE", " 1", "yes", "y", "on", "t"] {
            assert!(is_truthy(yes), "{yes}");
        }
        for no in ["false", "0", "", "no", "streaming"] {
            assert!(!is_truthy(no), "{no}");
        }
    }

    #[tokio::test]
    async fn small_bodies_are_kept_and_large_ones_go_once() {
        let chunks = |n: usize| -> BoxStream<Result<Bytes, BoxError>> {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                for _ in 0..n {
                    let _ = tx.send(Ok(Bytes::from(vec![7u8; 64 * 1024]))).await;
                }
            });
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
        };
        let mut small = keep(chunks(3)).await.unwrap();
        assert!(small.replayable());
        for _ in 0..2 {
            let sent: Vec<_> = small.attempt().unwrap().collect().await;
            assert_eq!(
                sent.iter()
                    .map(|c| c.as_ref().unwrap().len())
                    .sum::<usize>(),
                3 * 65536
            );
        }
        let mut large = keep(chunks(20)).await.unwrap();
        assert!(!large.replayable());
        let sent: Vec<_> = large.attempt().unwrap().collect().await;
        assert_eq!(
            sent.iter()
                .map(|c| c.as_ref().unwrap().len())
                .sum::<usize>(),
            20 * 65536
        );
        assert!(large.attempt().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_fails_a_body_that_is_still_coming() {
        let pending: BoxStream<Result<Bytes, BoxError>> = Box::pin(futures::stream::pending());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut body = until(pending, deadline);
        let e = body.next().await.unwrap().unwrap_err();
        assert_eq!(e.to_string(), "context deadline exceeded");
        assert!(body.next().await.is_none());
    }
}
