//! W3C trace context (`traceparent`): each hop through the sidecar continues the caller's trace
//! with a span id of its own, or starts a trace when the caller sent none (or a malformed one).
//!
//! With `Configuration.spec.tracing` the hops are also spans, as upstream records them
//! (`pkg/diagnostics/http_tracing.go`, `pkg/diagnostics/grpc_tracing.go`): a client span on the
//! caller's sidecar around the call to the peer (`CallLocal/<target>/<method>`), a server span
//! on the callee's internal API whose parent is that client span, and the `traceparent` the
//! callee's app gets names the server span. Sampling is parent-based: a parent's decision is
//! kept, a new trace is sampled at `samplingRate`. Sampled spans go to [`export`] through a
//! bounded queue; nothing on the request path waits for a collector.
//!
//! Without tracing, [`Tracer::active`] is `None`: one branch, no allocation, no lock.

pub mod export;
pub mod settings;
mod stream;

use std::sync::Arc;
use std::time::SystemTime;

pub use stream::ended_with_stream;

pub use settings::{Settings, SettingsError};

/// The `traceparent` for the next hop: same trace id and flags as `incoming` when it is valid,
/// with `span` as the new parent id; otherwise a new trace `trace` (not sampled).
/// Written digit by digit: `format!`'s padded hex of a `u128` cost 1.5k instructions on every
/// call (bench/notes.md, "the traceparent without format!").
pub fn next(incoming: Option<&str>, trace: u128, span: u64) -> String {
    let span = u128::from(span.max(1));
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    match incoming.and_then(parse) {
        Some((trace_id, flags)) => {
            out.push_str(trace_id);
            out.push('-');
            push_hex(&mut out, span, 16);
            out.push('-');
            out.push_str(flags);
        }
        None => {
            push_hex(&mut out, trace.max(1), 32);
            out.push('-');
            push_hex(&mut out, span, 16);
            out.push_str("-00");
        }
    }
    out
}

/// The lowest `digits` (at most 32) hex digits of `value`, lower-case and zero-padded, as
/// `{:0digits$x}`: written into a stack buffer and pushed once, since `String::push` checks
/// for room and encodes a `char` on every digit.
fn push_hex(out: &mut String, value: u128, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    let digits = digits.min(text.len());
    for (i, slot) in text[..digits].iter_mut().enumerate() {
        let nibble = (value >> (4 * (digits - 1 - i))) & 0xf;
        *slot = HEX[nibble as usize];
    }
    // Hex digits are ASCII, so this never falls back to the empty string.
    out.push_str(std::str::from_utf8(&text[..digits]).unwrap_or_default());
}

/// A fresh `traceparent` for the next hop (random ids).
pub fn next_random(incoming: Option<&str>) -> String {
    next(incoming, fastrand::u128(1..), fastrand::u64(1..))
}

/// The trace id and flags of a valid version-00 `traceparent`.
fn parse(value: &str) -> Option<(&str, &str)> {
    parse_parts(value).map(|(trace, _, flags)| (trace, flags))
}

/// The trace id, parent id and flags of a valid version-00 `traceparent`, as numbers.
fn parse_context(value: &str) -> Option<(u128, u64, u8)> {
    let (trace, parent, flags) = parse_parts(value)?;
    Some((
        u128::from_str_radix(trace, 16).ok()?,
        u64::from_str_radix(parent, 16).ok()?,
        u8::from_str_radix(flags, 16).ok()?,
    ))
}

/// The trace id, parent id and flags of a valid version-00 `traceparent`.
fn parse_parts(value: &str) -> Option<(&str, &str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = parts.next().is_none()
        && version == "00"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some((trace, parent, flags))
}

tokio::task_local! {
    /// The `traceparent` an open client span sends to the peer (see [`with_hop`]).
    static CLIENT_HOP: String;
}

/// The `traceparent` for the next hop: the open client span's when the call runs inside
/// [`with_hop`], else a fresh span id on the incoming trace ([`next_random`]).
pub fn next_hop(incoming: Option<&str>) -> String {
    CLIENT_HOP
        .try_with(|hop| (!hop.is_empty()).then(|| hop.clone()))
        .ok()
        .flatten()
        .unwrap_or_else(|| next_random(incoming))
}

/// `call` with `traceparent` as what [`next_hop`] stamps on the peer request, so the callee's
/// server span has the client span as its parent (an empty one: no span, [`next_hop`] makes
/// one up). A plain function, not an `async fn`, so the call's future is held once, not twice.
pub fn with_hop<F: std::future::Future>(
    traceparent: String,
    call: F,
) -> tokio::task::futures::TaskLocalFuture<String, F> {
    CLIENT_HOP.scope(traceparent, call)
}

/// Span kinds, as OpenTelemetry names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
}

/// Upstream's span attribute keys and values (`pkg/diagnostics/consts`).
pub mod attr {
    pub const RPC_SERVICE: &str = "rpc.service";
    pub const NET_PEER_NAME: &str = "net.peer.name";
    pub const DAPR_API: &str = "dapr.api";
    pub const DAPR_PROTOCOL: &str = "dapr.protocol";
    pub const DAPR_STATUS_CODE: &str = "dapr.status_code";
    pub const DAPR_INVOKE_METHOD: &str = "dapr.invoke_method";
    pub const SERVICE_INVOCATION: &str = "ServiceInvocation";
    pub const HTTP: &str = "http";
    pub const GRPC: &str = "grpc";
}

/// The sidecar's tracer: `None` inside when tracing is off.
pub struct Tracer {
    active: Option<Active>,
}

/// Tracing as configured: the sampler and, when an exporter is configured, the queue to it.
pub struct Active {
    app_id: Arc<str>,
    /// New traces whose id's low 63 bits fall below this are sampled (upstream's
    /// `TraceIDRatioBased`, so every sidecar decides the same for one trace id).
    threshold: u64,
    sink: Option<export::Sink>,
}

impl Tracer {
    pub fn off() -> Tracer {
        Tracer { active: None }
    }

    /// Tracing for `app_id` as `settings` ask; the exporters run on a task of their own.
    pub fn start(
        settings: &Settings,
        app_id: &str,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Tracer, export::ExportError> {
        if !settings.enabled {
            return Ok(Tracer::off());
        }
        let sink = if settings.has_exporter() {
            Some(export::start(settings, app_id, metrics)?)
        } else {
            None
        };
        Ok(Tracer {
            active: Some(Active {
                app_id: Arc::from(app_id),
                threshold: ratio_threshold(settings.sampling_rate),
                sink,
            }),
        })
    }

    /// Exports what is queued (at shutdown), waiting at most `within`.
    pub async fn flush(&self, within: std::time::Duration) {
        if let Some(sink) = self.active.as_ref().and_then(|a| a.sink.as_ref()) {
            sink.flush(within).await;
        }
    }

    /// Tracing, when configured; `None` keeps today's `traceparent` continuation only.
    #[inline]
    pub fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }
}

fn ratio_threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else {
        // Truncation intended: the rate's share of the 63-bit range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let threshold = (rate * (1u64 << 63) as f64) as u64;
        threshold
    }
}

impl Active {
    /// A span continuing `incoming` (a `traceparent`), or starting a trace.
    pub fn start(&self, incoming: Option<&str>, kind: Kind) -> Span {
        let (trace, parent, sampled) = match incoming.and_then(parse_context) {
            Some((trace, parent, flags)) => (trace, Some(parent), flags & 1 == 1),
            None => {
                let trace = fastrand::u128(1..);
                // The low 8 bytes, as upstream's sampler reads them.
                #[allow(clippy::cast_possible_truncation)]
                let low = trace as u64;
                (trace, None, (low >> 1) < self.threshold)
            }
        };
        let recording = self.sink.as_ref().filter(|_| sampled);
        Span {
            sink: recording.cloned(),
            app_id: recording.map(|_| Arc::clone(&self.app_id)),
            trace,
            id: fastrand::u64(1..),
            parent,
            sampled,
            kind,
            name: String::new(),
            start: SystemTime::now(),
            attributes: Vec::new(),
            user: Vec::new(),
            error: None,
        }
    }

    /// The caller's side of an invocation of `method` on `target` (an app id, an HTTPEndpoint's
    /// name or a URL), with the request's `dapr-*` headers as attributes.
    pub fn client_span<'h>(
        &self,
        incoming: Option<&str>,
        (target, method): (&str, &str),
        protocol: &'static str,
        api: impl FnOnce() -> String,
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) -> Span {
        let mut span = self.start(incoming, Kind::Client);
        span.client_invocation(target, method, protocol, api);
        span.dapr_headers(headers);
        span
    }
}

/// `call` as the hop of `span`, when there is one: the peer's request names the span as its
/// parent ([`with_hop`]), and a failed call ends the span with its error. Not an `async fn`:
/// the call's future (the request path's largest) is held once, inside the returned one.
pub fn traced<'s, T, E, F>(
    span: &'s mut Option<Span>,
    call: F,
) -> impl std::future::Future<Output = Result<T, E>> + 's
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>> + 's,
{
    use futures::FutureExt;
    let hop = span.as_ref().map(Span::traceparent).unwrap_or_default();
    with_hop(hop, call).map(move |result| {
        end_on_error(span, &result);
        result
    })
}

/// Ends `span` as failed when `result` is an error; a success leaves it open for the answer's
/// status.
pub fn end_on_error<T, E: std::fmt::Display>(span: &mut Option<Span>, result: &Result<T, E>) {
    if let Err(e) = result
        && let Some(mut span) = span.take()
    {
        span.fail(e);
        span.end();
    }
}

/// One hop. Recorded only when sampled and exported; [`Span::end`] hands it to the exporters.
pub struct Span {
    /// The exporters' queue, and this sidecar's app id, when the span is recorded.
    sink: Option<export::Sink>,
    app_id: Option<Arc<str>>,
    trace: u128,
    id: u64,
    parent: Option<u64>,
    sampled: bool,
    kind: Kind,
    name: String,
    start: SystemTime,
    attributes: Vec<(&'static str, String)>,
    /// `dapr-*` request headers; upstream's own attributes win over these.
    user: Vec<(String, String)>,
    error: Option<String>,
}

impl Span {
    /// The `traceparent` naming this span, for the next hop.
    pub fn traceparent(&self) -> String {
        let flags = u8::from(self.sampled);
        format!("00-{:032x}-{:016x}-{flags:02x}", self.trace, self.id)
    }

    /// Whether anything set on the span is kept (sampled, with an exporter).
    pub fn recording(&self) -> bool {
        self.sink.is_some()
    }

    /// The caller's side of an invocation of `method` on `target`, as upstream's API servers
    /// name it; `api` is the API call as the app made it (`POST /v1.0/invoke/...`, or the gRPC
    /// method).
    pub fn client_invocation(
        &mut self,
        target: &str,
        method: &str,
        protocol: &'static str,
        api: impl FnOnce() -> String,
    ) {
        if !self.recording() {
            return;
        }
        self.name = format!("CallLocal/{target}/{method}");
        self.attributes.extend([
            (attr::RPC_SERVICE, attr::SERVICE_INVOCATION.to_owned()),
            (attr::NET_PEER_NAME, target.to_owned()),
            (attr::DAPR_PROTOCOL, protocol.to_owned()),
            (attr::DAPR_API, api()),
        ]);
    }

    /// The callee's side: the internal API's `CallLocal` of `method` on this sidecar's app.
    pub fn server_invocation(&mut self, method: &str, rpc: &str) {
        if !self.recording() {
            return;
        }
        let app_id = self.app_id.as_deref().unwrap_or_default();
        self.name = format!("CallLocal/{app_id}/{method}");
        self.attributes.extend([
            (attr::RPC_SERVICE, attr::SERVICE_INVOCATION.to_owned()),
            (attr::DAPR_INVOKE_METHOD, method.to_owned()),
            (attr::DAPR_PROTOCOL, attr::GRPC.to_owned()),
            (attr::DAPR_API, rpc.to_owned()),
        ]);
    }

    /// A gRPC call proxied by `dapr-app-id`, named by its full method as upstream's stream
    /// interceptor names it: a client span on the caller's sidecar, a server span on the
    /// callee's.
    pub fn proxied(&mut self, method: &str) {
        if self.recording() {
            self.name = method.to_owned();
        }
    }

    /// A gRPC status: an error status unless it is `OK`.
    pub fn grpc_status(&mut self, code: tonic::Code) {
        if code != tonic::Code::Ok {
            self.fail(format!("{code:?}"));
        }
    }

    /// The request's `dapr-*` headers as attributes (not `-bin` ones): upstream's way of letting
    /// users see values in spans (`userDefinedHTTPHeaders`, `userDefinedMetadata`).
    pub fn dapr_headers<'h>(&mut self, headers: impl IntoIterator<Item = (&'h str, &'h str)>) {
        if !self.recording() {
            return;
        }
        for (name, value) in headers {
            if name.starts_with("dapr-") && !name.ends_with("-bin") {
                self.user
                    .push((name.to_ascii_lowercase(), value.to_owned()));
            }
        }
    }

    /// An HTTP answer: `dapr.status_code`, and an error status from 400 on, as upstream.
    pub fn http_status(&mut self, code: u16) {
        if !self.recording() {
            return;
        }
        self.attributes
            .push((attr::DAPR_STATUS_CODE, code.to_string()));
        if code >= 400 {
            let text = http::StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Unknown");
            self.error = Some(format!("Code({code}): {text}"));
        }
    }

    /// A failed call: an error status with its message.
    pub fn fail(&mut self, message: impl std::fmt::Display) {
        if self.recording() {
            self.error = Some(message.to_string());
        }
    }

    /// Ends the span; a recorded one is queued for export (or counted as dropped).
    pub fn end(self) {
        let Some(sink) = self.sink else {
            return;
        };
        sink.send(export::SpanRecord {
            trace: self.trace,
            id: self.id,
            parent: self.parent,
            kind: self.kind,
            name: self.name,
            start: self.start,
            end: SystemTime::now(),
            attributes: self.attributes,
            user: self.user,
            error: self.error,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_keeps_its_trace_id_and_flags_with_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            next(Some(incoming), 7, 0xabc),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_unsampled_trace() {
        let fresh = "00-0000000000000000000000000000002a-0000000000000007-00";
        for bad in [
            None,
            Some(""),
            Some("garbage"),
            Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"),
        ] {
            assert_eq!(next(bad, 42, 7), fresh, "{bad:?}");
        }
        // Every digit, at full width, as `format!` writes them.
        let (trace, span) = (0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128, u64::MAX);
        assert_eq!(
            next(None, trace, span),
            format!("00-{trace:032x}-{span:016x}-00")
        );
    }

    fn active(rate: f64) -> Active {
        Active {
            app_id: "orders".into(),
            threshold: ratio_threshold(rate),
            sink: None,
        }
    }

    #[test]
    fn a_parents_decision_is_followed_and_a_new_trace_sampled_at_the_rate() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (never, always) = (active(0.0), active(1.0));
        let span = never.start(Some(parent), Kind::Server);
        let tp = span.traceparent();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(
            tp.ends_with("-01") && !tp.contains("00f067aa0ba902b7"),
            "{tp}"
        );
        assert_eq!(span.parent, Some(0x00f0_67aa_0ba9_02b7));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(
            active(1.0)
                .start(Some(unsampled), Kind::Client)
                .traceparent()
                .ends_with("-00")
        );
        for _ in 0..100 {
            let root = always.start(None, Kind::Client);
            assert!(root.traceparent().ends_with("-01") && root.parent.is_none());
            assert!(
                active(0.0)
                    .start(None, Kind::Client)
                    .traceparent()
                    .ends_with("-00")
            );
        }
        // No exporter: the decision travels, nothing is recorded.
        assert!(!active(1.0).start(None, Kind::Client).recording());
        assert!(Tracer::off().active().is_none());
    }

    #[tokio::test]
    async fn the_next_hop_is_the_open_client_spans_traceparent() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mine = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01";
        let inside = with_hop(mine.to_owned(), async { next_hop(Some(incoming)) }).await;
        assert_eq!(inside, mine);
        let outside = next_hop(Some(incoming));
        assert!(outside.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && outside != mine);
        // A call traced without a span makes up its hop on the incoming trace, as outside.
        let call = async { Ok::<_, String>(next_hop(Some(incoming))) };
        let untraced = traced(&mut None, call).await.expect("the call");
        assert!(untraced.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(untraced, mine);
        assert_ne!(untraced, outside);
    }

    #[test]
    fn hex_digits_are_zero_padded_lower_case_as_format_writes_them() {
        for value in [
            0,
            1,
            0xabc,
            u128::from(u64::MAX),
            u128::MAX,
            0x0123_4567_89ab_cdef << 60,
        ] {
            let (mut long, mut short) = (String::new(), String::new());
            push_hex(&mut long, value, 32);
            push_hex(&mut short, value, 16);
            assert_eq!(long, format!("{value:032x}"));
            assert_eq!(short, format!("{:016x}", value & u128::from(u64::MAX)));
        }
    }

    #[test]
    fn random_ids_are_well_formed_and_differ() {
        let a = next_random(None);
        let b = next_random(None);
        assert_ne!(a, b);
        assert!(parse(&a).is_some(), "{a}");
    }
}
