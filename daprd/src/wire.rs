//! What crosses the sidecar-to-sidecar hop: header names, metadata conversion, and the chunked
//! body streams of `CallLocalStream` (first message carries the request or response, later ones
//! only payloads with `seq` counting from 0).

use std::collections::BTreeMap;
use std::pin::Pin;

use bytes::Bytes;
use dapr_proto::common::v1::{StreamPayload, http_extension::Verb};
use dapr_proto::internals::v1::{
    InternalInvokeRequest, InternalInvokeRequestStream, ListStringValue,
};
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Header and metadata names, as upstream.
pub mod names {
    pub const DAPR_APP_ID: &str = "dapr-app-id";
    pub const CALLER_APP_ID: &str = "dapr-caller-app-id";
    pub const CALLEE_APP_ID: &str = "dapr-callee-app-id";
    pub const CALLER_NAMESPACE: &str = "dapr-caller-namespace";
    pub const DESTINATION_APP_ID: &str = "destination-app-id";
    pub const API_TOKEN: &str = "dapr-api-token";
    pub const FORCE_SHUTDOWN: &str = "dapr-force-shutdown";
    pub const TRACEPARENT: &str = "traceparent";
    /// Marks a proxied gRPC call as a stream for Resiliency (upstream's `StreamMetadataKey`).
    pub const DAPR_STREAM: &str = "dapr-stream";
    pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
    pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
    pub const FORWARDED: &str = "forwarded";
}

/// The content type of typed data (an `Any` with a `type_url`) for HTTP (upstream's
/// `ProtobufContentType`, `pkg/messaging/v1/util.go`).
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

/// The HTTP content type of invocation data: [`PROTOBUF_CONTENT_TYPE`] for typed data (a
/// `type_url`), else the message's own content type (maybe empty).
pub fn data_content_type<'a>(type_url: &str, content_type: &'a str) -> &'a str {
    if type_url.is_empty() {
        content_type
    } else {
        PROTOBUF_CONTENT_TYPE
    }
}

/// Largest payload chunk sent per stream message: well under gRPC's 4 MiB message limit, large
/// enough that big bodies need few messages.
pub const MAX_CHUNK: usize = 64 * 1024;

pub type Metadata = BTreeMap<String, ListStringValue>;

/// Headers that belong to one connection and never travel on. (`content-length` does travel:
/// apps that cannot read chunked bodies still get a framed one.)
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
    )
}

/// Metadata entries encoded once, as `InternalInvokeRequest.metadata` entries on the wire, for
/// values that are the same on every call (the caller's identity): appended to each encoded
/// request instead of being inserted into, encoded from and dropped with its map every time.
/// A map entry that comes later on the wire replaces an earlier one of the same key (protobuf's
/// rule), but the names are taken out of the map anyway so that nothing says two things.
#[derive(Debug, Clone, Default)]
pub struct Stamps {
    entries: Vec<(&'static str, String)>,
    encoded: Bytes,
}

impl Stamps {
    pub fn new(entries: Vec<(&'static str, String)>) -> Self {
        let mut stamps = Stamps {
            entries,
            encoded: Bytes::new(),
        };
        let mut only = InternalInvokeRequest::default();
        stamps.insert_into(&mut only.metadata);
        stamps.encoded = prost::Message::encode_to_vec(&only).into();
        stamps
    }

    /// Sets every stamp in `metadata` (for requests that are not framed here).
    pub fn insert_into(&self, metadata: &mut Metadata) {
        for (name, value) in &self.entries {
            set(metadata, name, value);
        }
    }

    /// Takes the stamped names out of `metadata`: whatever a client sent under them.
    pub fn remove_from(&self, metadata: &mut Metadata) {
        for (name, _) in &self.entries {
            metadata.remove(*name);
        }
    }

    /// `request` as a gRPC message frame, the stamps appended to its metadata.
    pub fn frame(&self, request: &InternalInvokeRequest) -> Bytes {
        use prost::Message;
        let len = request.encoded_len() + self.encoded.len();
        let mut buf = frame_head(len);
        request.encode_raw(&mut buf);
        buf.extend_from_slice(&self.encoded);
        buf.freeze()
    }

    /// The first message of a `CallLocalStream` as a gRPC message frame, the stamps appended to
    /// its request's metadata.
    pub fn stream_frame(&self, message: &InternalInvokeRequestStream) -> Bytes {
        use prost::Message;
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        let request_len = message
            .request
            .as_ref()
            .map(|r| r.encoded_len() + self.encoded.len());
        let payload_len = message
            .payload
            .as_ref()
            .map_or(0, |p| prost::encoding::message::encoded_len(2, p));
        let len = request_len.map_or(0, |n| key_len(1) + encoded_len_varint(n as u64) + n);
        let mut buf = frame_head(len + payload_len);
        if let (Some(request), Some(request_len)) = (&message.request, request_len) {
            encode_key(1, WireType::LengthDelimited, &mut buf);
            encode_varint(request_len as u64, &mut buf);
            request.encode_raw(&mut buf);
            buf.extend_from_slice(&self.encoded);
        }
        if let Some(payload) = &message.payload {
            prost::encoding::message::encode(2, payload, &mut buf);
        }
        buf.freeze()
    }
}

/// A buffer holding the 5-byte gRPC message prefix (not compressed, `len` bytes follow) with
/// room for the message.
pub fn frame_head(len: usize) -> bytes::BytesMut {
    use bytes::BufMut;
    let mut buf = bytes::BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    buf
}

/// The `grpc-status` of a response head (a trailers-only answer) or of its trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

/// HTTP headers that have a meaning of their own on a gRPC call (framing, content, caching):
/// upstream passes them on in gRPC metadata as `dapr-<name>` (the list of its
/// `isPermanentHTTPHeader`), so that an app's `content-length` does not become the length of a
/// gRPC response.
pub fn is_permanent_http_header(name: &str) -> bool {
    matches!(
        name,
        "accept"
            | "accept-charset"
            | "accept-language"
            | "accept-ranges"
            | "age"
            | "authorization"
            | "cache-control"
            | "content-type"
            | "content-disposition"
            | "content-encoding"
            | "content-length"
            | "content-location"
            | "content-range"
            | "date"
            | "etag"
            | "expect"
            | "expires"
            | "from"
            | "host"
            | "if-match"
            | "if-modified-since"
            | "if-none-match"
            | "if-schedule-tag-match"
            | "if-unmodified-since"
            | "max-forwards"
            | "origin"
            | "pragma"
            | "referer"
            | "user-agent"
            | "via"
            | "warning"
    )
}

/// The gRPC metadata name (lower-case) for a header of an app's response or request, in any
/// case (upstream's callee sends an HTTP app's names Go-canonical, and `Content-Type` must not
/// become the gRPC response's own `content-type`): hop-by-hop headers and gRPC's own `:`-names
/// have none, permanent HTTP headers and `grpc-*` get a `dapr-` prefix.
pub fn grpc_metadata_name(name: &str) -> Option<std::borrow::Cow<'_, str>> {
    let name: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    };
    if is_hop_by_hop(&name) || name.starts_with(':') {
        None
    } else if is_permanent_http_header(&name) || name.starts_with("grpc-") {
        Some(format!("dapr-{name}").into())
    } else {
        Some(name)
    }
}

/// HTTP headers → invocation metadata (lower-case names, all values): a gRPC app's response
/// metadata, and an HTTPEndpoint's answer (which never leaves this sidecar).
pub fn headers_to_metadata(headers: &HeaderMap, skip: &[&str]) -> Metadata {
    collect_headers(headers, skip, str::to_owned)
}

/// An HTTP app's response headers → invocation metadata under Go-canonical names, as upstream's
/// callee sends them (the app response's `http.Header`, `pkg/channel/http/http_channel.go`).
/// Upstream's caller renames permanent HTTP headers `dapr-<name>` for its gRPC API only under
/// those spellings (`InternalMetadataToGrpcMetadata`, `isPermanentHTTPHeader` in
/// `pkg/messaging/v1/util.go`): a lower-case `content-length` would reach its `InvokeService`
/// client as the gRPC response's own, which HTTP/2 rejects as malformed.
pub fn app_response_headers_to_metadata(headers: &HeaderMap, skip: &[&str]) -> Metadata {
    collect_headers(headers, skip, canonical_name)
}

/// An HTTP API request's headers → invocation metadata, named as upstream's caller names them:
/// its `http.Header` keys, Go-canonical (`Content-Type`, `X-Custom-Header`), which is the
/// spelling upstream's callee looks for when it renames permanent HTTP headers `dapr-<name>` for
/// a gRPC app (`pkg/messaging/v1/util.go`, `isPermanentHTTPHeader`). Dapr's own entries
/// (`dapr-*`, `traceparent`) keep their lower-case names: they are read, replaced and stamped
/// under those, here and by upstream. Each name costs the one `String` the map key needs anyway.
pub fn request_headers_to_metadata(headers: &HeaderMap, skip: &[&str]) -> Metadata {
    collect_headers(headers, skip, |name| {
        if name.starts_with("dapr-") || name == names::TRACEPARENT {
            name.to_owned()
        } else {
            canonical_name(name)
        }
    })
}

/// Every header but hop-by-hop ones and `skip`, with all its (text) values, under `key(name)`.
fn collect_headers(headers: &HeaderMap, skip: &[&str], key: impl Fn(&str) -> String) -> Metadata {
    let mut metadata = Metadata::new();
    for (name, value) in headers {
        let name = name.as_str();
        if is_hop_by_hop(name) || skip.contains(&name) {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        metadata
            .entry(key(name))
            .or_default()
            .values
            .push(value.to_owned());
    }
    metadata
}

/// `name` as Go's `textproto.CanonicalMIMEHeaderKey` spells it: the first letter and every letter
/// after a `-` upper-case, the rest lower-case (`name` is a valid header name, as `http` parsed
/// it, so Go's exception for invalid names never applies). One lower-cased copy, then one byte
/// changed per word.
pub fn canonical_name(name: &str) -> String {
    let mut out = name.to_ascii_lowercase();
    let mut word = 0;
    loop {
        if let Some(letter) = out.get_mut(word..word + 1) {
            letter.make_ascii_uppercase();
        }
        match out
            .as_bytes()
            .get(word..)
            .and_then(|rest| rest.iter().position(|&b| b == b'-'))
        {
            Some(dash) => word += dash + 1,
            None => return out,
        }
    }
}

/// Whether `name` is spelled as [`canonical_name`] would spell it.
pub fn is_canonical(name: &str) -> bool {
    let mut upper = true;
    for b in name.bytes() {
        let wrong = if upper {
            b.is_ascii_lowercase()
        } else {
            b.is_ascii_uppercase()
        };
        if wrong {
            return false;
        }
        upper = b == b'-';
    }
    true
}

/// Sets one metadata value, replacing what a client may have sent under that name.
pub fn set(metadata: &mut Metadata, name: &str, value: &str) {
    metadata.insert(
        name.to_owned(),
        ListStringValue {
            values: vec![value.to_owned()],
        },
    );
}

pub fn first<'a>(metadata: &'a Metadata, name: &str) -> Option<&'a str> {
    metadata
        .get(name)
        .and_then(|v| v.values.first())
        .map(String::as_str)
}

/// The spellings of `content-length` in invocation metadata: Go-canonical from upstream's caller
/// (and ours) for HTTP API requests, lower-case from gRPC callers and older callers of ours.
pub const CONTENT_LENGTH: [&str; 2] = ["content-length", "Content-Length"];

/// The first value under the first of `spellings` the map has.
pub fn first_of<'a>(metadata: &'a Metadata, spellings: &[&str]) -> Option<&'a str> {
    spellings.iter().find_map(|name| first(metadata, name))
}

/// Sets one value under the first of `spellings` the map has (else the first one), and removes
/// the others: the map never holds the header twice, and keeps the caller's spelling.
pub fn set_as_spelt(metadata: &mut Metadata, spellings: &[&str], value: &str) {
    let Some(&default) = spellings.first() else {
        return;
    };
    let name = spellings
        .iter()
        .copied()
        .find(|name| metadata.contains_key(*name))
        .unwrap_or(default);
    for other in spellings {
        if *other != name {
            metadata.remove(*other);
        }
    }
    set(metadata, name, value);
}

/// Invocation metadata → headers for the callee's app (or back to the caller's app), names in
/// any case (HTTP header names are case-insensitive). gRPC's reserved names are re-prefixed
/// `dapr-`, and `content-type` is left to the message's own content type, as upstream
/// (`InternalMetadataToHTTPHeader`, `pkg/messaging/v1/util.go`).
pub fn metadata_to_headers(metadata: &Metadata, headers: &mut HeaderMap) {
    for (name, values) in metadata {
        let Some(header) = header_name(name) else {
            continue;
        };
        if header == http::header::CONTENT_TYPE {
            continue;
        }
        append_all(headers, header, values);
    }
}

/// Invocation metadata → gRPC metadata for a gRPC app's `OnInvoke`: as
/// [`metadata_to_headers`], and a permanent HTTP header under its Go-canonical spelling (what
/// upstream's caller sends for HTTP API requests) becomes `dapr-<name>`, as upstream's
/// `InternalMetadataToGrpcMetadata` renames it, so that no HTTP framing header (such as
/// `Content-Length`) reaches a gRPC call as its own. Other spellings keep their name.
pub fn metadata_to_grpc_headers(metadata: &Metadata, headers: &mut HeaderMap) {
    for (name, values) in metadata {
        let Some(header) = header_name(name) else {
            continue;
        };
        let header = if name.as_str() != header.as_str()
            && is_canonical(name)
            && is_permanent_http_header(header.as_str())
        {
            match HeaderName::try_from(format!("dapr-{header}")) {
                Ok(prefixed) => prefixed,
                Err(_) => continue,
            }
        } else {
            header
        };
        append_all(headers, header, values);
    }
}

/// The header name of a metadata entry that travels on to an app, lower-case: none for
/// hop-by-hop headers, `destination-app-id` and `:`-names; `grpc-*` as `dapr-grpc-*`.
fn header_name(name: &str) -> Option<HeaderName> {
    if name.starts_with(':') {
        return None;
    }
    let header = HeaderName::from_bytes(name.as_bytes()).ok()?;
    let lower = header.as_str();
    if is_hop_by_hop(lower) || lower == names::DESTINATION_APP_ID {
        None
    } else if lower.starts_with("grpc-") {
        HeaderName::try_from(format!("dapr-{lower}")).ok()
    } else {
        Some(header)
    }
}

fn append_all(headers: &mut HeaderMap, header: HeaderName, values: &ListStringValue) {
    for value in &values.values {
        if let Ok(value) = HeaderValue::try_from(value.as_str()) {
            headers.append(header.clone(), value);
        }
    }
}

pub fn verb_of(method: &Method) -> Verb {
    match *method {
        Method::GET => Verb::Get,
        Method::HEAD => Verb::Head,
        Method::POST => Verb::Post,
        Method::PUT => Verb::Put,
        Method::DELETE => Verb::Delete,
        Method::CONNECT => Verb::Connect,
        Method::OPTIONS => Verb::Options,
        Method::TRACE => Verb::Trace,
        Method::PATCH => Verb::Patch,
        _ => Verb::None,
    }
}

/// The HTTP method for a verb; `NONE` (gRPC callers that set no verb) becomes POST as upstream.
pub fn method_of(verb: Verb) -> Method {
    match verb {
        Verb::Get => Method::GET,
        Verb::Head => Method::HEAD,
        Verb::Put => Method::PUT,
        Verb::Delete => Method::DELETE,
        Verb::Connect => Method::CONNECT,
        Verb::Options => Method::OPTIONS,
        Verb::Trace => Method::TRACE,
        Verb::Patch => Method::PATCH,
        Verb::Post | Verb::None => Method::POST,
    }
}

/// Why a body stream ended badly.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a body holds right now, without waiting for more.
pub enum Ready {
    /// All of it: the body has ended.
    Complete(Bytes),
    /// The body goes on (or failed): the same body, whatever was taken from it put back.
    Streaming(BoxStream<Result<Bytes, BoxError>>),
}

/// Takes what `body` has ready without waiting. A small body usually arrives with its head,
/// so it can travel in the first message of a stream: one message, one write, no pump task.
pub fn ready_part(mut body: BoxStream<Result<Bytes, BoxError>>) -> Ready {
    use futures::FutureExt;
    let first = match body.next().now_or_never() {
        None => return Ready::Streaming(body),
        Some(None) => return Ready::Complete(Bytes::new()),
        Some(Some(Err(e))) => return Ready::Streaming(put_back(vec![Err(e)], body)),
        Some(Some(Ok(first))) => first,
    };
    match body.next().now_or_never() {
        Some(None) => Ready::Complete(first),
        None => Ready::Streaming(put_back(vec![Ok(first)], body)),
        Some(Some(next)) => Ready::Streaming(put_back(vec![Ok(first), next], body)),
    }
}

/// Reads a body whose declared length is at most [`MAX_CHUNK`] to its end, within `within`,
/// so that it travels in the head message of a stream. Such a body arrives with its head, but
/// HTTP/1 hands it over only once it is asked for, so [`ready_part`] alone would find it pending
/// and stream it: a pump task and three writes to the peer instead of one. Any other body comes
/// back as a stream that fails once no byte has come for `within`, so a client that stops
/// sending cannot hold the call, the peer's stream and the app's connection open.
pub async fn read_small(
    mut body: BoxStream<Result<Bytes, BoxError>>,
    declared_len: Option<u64>,
    within: std::time::Duration,
) -> Result<BoxStream<Result<Bytes, BoxError>>, BoxError> {
    let Some(len) = declared_len.filter(|len| *len <= MAX_CHUNK as u64) else {
        let idle = tokio_stream::StreamExt::timeout(body, within).map(move |chunk| {
            chunk.unwrap_or_else(|_| {
                Err(BoxError::from(format!(
                    "no bytes of the body arrived for {within:?}"
                )))
            })
        });
        return Ok(Box::pin(idle));
    };
    let read = async move {
        let mut first: Option<Bytes> = None;
        let mut more: Option<bytes::BytesMut> = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            match (&mut first, &mut more) {
                (None, _) => first = Some(chunk),
                (Some(first), None) => {
                    let mut joined = bytes::BytesMut::with_capacity(len as usize);
                    joined.extend_from_slice(first);
                    joined.extend_from_slice(&chunk);
                    more = Some(joined);
                }
                (Some(_), Some(joined)) => joined.extend_from_slice(&chunk),
            }
        }
        Ok::<_, BoxError>(
            more.map(bytes::BytesMut::freeze)
                .or(first)
                .unwrap_or_default(),
        )
    };
    match tokio::time::timeout(within, read).await {
        Ok(data) => Ok(Box::pin(futures::stream::iter([Ok(data?)]))),
        Err(_) => Err(BoxError::from(format!(
            "the body of {len} bytes did not arrive within {within:?}"
        ))),
    }
}

fn put_back(
    taken: Vec<Result<Bytes, BoxError>>,
    body: BoxStream<Result<Bytes, BoxError>>,
) -> BoxStream<Result<Bytes, BoxError>> {
    Box::pin(futures::stream::iter(taken).chain(body))
}

/// Splits a stream of body chunks into numbered payloads of at most [`MAX_CHUNK`] bytes.
pub fn into_payloads<S>(body: S) -> BoxStream<Result<StreamPayload, BoxError>>
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
{
    let mut seq = 0u64;
    Box::pin(body.flat_map(move |chunk: Result<Bytes, BoxError>| {
        let items: Vec<Result<StreamPayload, BoxError>> = match chunk {
            Err(e) => vec![Err(e)],
            Ok(mut data) => {
                let mut out = Vec::with_capacity(data.len() / MAX_CHUNK + 1);
                while !data.is_empty() {
                    let piece = data.split_to(data.len().min(MAX_CHUNK));
                    out.push(Ok(StreamPayload { data: piece, seq }));
                    seq += 1;
                }
                out
            }
        };
        futures::stream::iter(items)
    }))
}

/// Checks that payloads arrive in order with no gap and yields their data.
pub struct SeqCheck {
    next: u64,
}

impl SeqCheck {
    pub fn new() -> Self {
        SeqCheck { next: 0 }
    }

    pub fn accept(&mut self, payload: StreamPayload) -> Result<Bytes, String> {
        if payload.seq != self.next {
            return Err(format!(
                "payload out of order: expected seq {}, got {}",
                self.next, payload.seq
            ));
        }
        self.next += 1;
        Ok(payload.data)
    }
}

impl Default for SeqCheck {
    fn default() -> Self {
        Self::new()
    }
}

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

/// A stream message that may carry a body chunk (request and response streams alike).
pub trait Chunked: Send + 'static {
    fn take_payload(self) -> Option<StreamPayload>;
}

impl Chunked for dapr_proto::internals::v1::InternalInvokeRequestStream {
    fn take_payload(self) -> Option<StreamPayload> {
        self.payload
    }
}

impl Chunked for dapr_proto::internals::v1::InternalInvokeResponseStream {
    fn take_payload(self) -> Option<StreamPayload> {
        self.payload
    }
}

/// The body carried by a stream after its head message: the head's own payload first, then
/// every later payload, in order (a gap in `seq` ends the body with an error).
///
/// With `declared_len` (the body's `content-length`), the stream's end is read right after the
/// last declared byte, before that byte is handed on: HTTP/1 peers stop polling a body once
/// `content-length` bytes are written, and a gRPC stream dropped before its trailers is reset,
/// which h2 counts against the connection (1024 resets and it is closed).
/// How long the end of a stream with an empty declared body may take.
const EMPTY_END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn payload_body<M: Chunked>(
    leading: Option<StreamPayload>,
    mut incoming: tonic::Streaming<M>,
    declared_len: Option<u64>,
) -> BoxStream<Result<Bytes, BoxError>> {
    if declared_len == Some(0) && leading.is_none() {
        // An empty body may never be polled at all: take the end now.
        let end = match tokio::time::timeout(EMPTY_END_TIMEOUT, incoming.message()).await {
            Ok(Ok(None)) => Ok(Bytes::new()),
            Ok(Ok(Some(_))) => Err(BoxError::from("body longer than its content-length")),
            Ok(Err(status)) => Err(BoxError::from(status)),
            Err(_) => Err(BoxError::from("the stream did not end after an empty body")),
        };
        return Box::pin(futures::stream::iter(end.err().map(Err)));
    }
    let state = PayloadState {
        incoming: Some(incoming),
        seq: SeqCheck::new(),
        leading,
        remaining: declared_len,
    };
    Box::pin(futures::stream::unfold(state, next_payload::<M>))
}

struct PayloadState<M> {
    /// `None` once the stream has ended.
    incoming: Option<tonic::Streaming<M>>,
    seq: SeqCheck,
    leading: Option<StreamPayload>,
    remaining: Option<u64>,
}

async fn next_payload<M: Chunked>(
    mut state: PayloadState<M>,
) -> Option<(Result<Bytes, BoxError>, PayloadState<M>)> {
    let payload = match state.leading.take() {
        Some(payload) => Some(payload),
        None => match state.incoming.as_mut()?.message().await {
            Ok(Some(message)) => message.take_payload(),
            Ok(None) => {
                state.incoming = None;
                return None;
            }
            Err(status) => {
                state.incoming = None;
                return Some((Err(BoxError::from(status)), state));
            }
        },
    };
    let Some(payload) = payload else {
        return Some((Ok(Bytes::new()), state));
    };
    let data = match state.seq.accept(payload) {
        Ok(data) => data,
        Err(e) => return Some((Err(BoxError::from(e)), state)),
    };
    if let Some(remaining) = state.remaining.as_mut() {
        *remaining = remaining.saturating_sub(data.len() as u64);
        if *remaining == 0
            && let Some(mut incoming) = state.incoming.take()
        {
            // The declared body is complete: take the stream's end (its trailers) now if it is
            // here, else in the background, so the last bytes are not held back for it (the
            // peer's trailers often travel in a packet of their own).
            use futures::FutureExt;
            match incoming.message().now_or_never() {
                Some(Ok(None)) => {}
                Some(Ok(Some(_))) => {
                    return Some((
                        Err(BoxError::from("body longer than its content-length")),
                        state,
                    ));
                }
                Some(Err(status)) => return Some((Err(BoxError::from(status)), state)),
                None => {
                    tokio::spawn(read_end(incoming));
                }
            }
        }
    }
    Some((Ok(data), state))
}

/// Reads a stream's end after its declared body was handed on, so the stream closes cleanly
/// instead of being reset; what comes instead of the end is only logged: the body was whole.
async fn read_end<M: Chunked>(mut incoming: tonic::Streaming<M>) {
    match tokio::time::timeout(EMPTY_END_TIMEOUT, incoming.message()).await {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(_))) => tracing::debug!("a stream went on past its content-length"),
        Ok(Err(status)) => tracing::debug!("a stream failed after its whole body: {status}"),
        Err(_) => tracing::debug!("a stream did not end after its whole body"),
    }
}

/// The `content-length` a header map or metadata declares, if any.
pub fn declared_len(value: Option<&str>) -> Option<u64> {
    value.and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        items: Vec<Result<&'static str, &'static str>>,
    ) -> BoxStream<Result<Bytes, BoxError>> {
        Box::pin(futures::stream::iter(items.into_iter().map(|item| {
            item.map(|s: &str| Bytes::from_static(s.as_bytes()))
                .map_err(|e| BoxError::from(e.to_owned()))
        })))
    }

    async fn drain(body: BoxStream<Result<Bytes, BoxError>>) -> Vec<Result<String, String>> {
        body.map(|item| {
            item.map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| e.to_string())
        })
        .collect()
        .await
    }

    #[tokio::test]
    async fn a_body_read_with_its_head_is_complete_and_anything_else_streams_unchanged() {
        assert!(matches!(ready_part(chunks(vec![])), Ready::Complete(b) if b.is_empty()));
        assert!(matches!(ready_part(chunks(vec![Ok("all")])), Ready::Complete(b) if b == "all"));
        // Several ready chunks, a failure, or a body still arriving: nothing is lost or reordered.
        let Ready::Streaming(body) = ready_part(chunks(vec![Ok("a"), Ok("b"), Ok("c")])) else {
            panic!("two chunks are not one message");
        };
        assert_eq!(
            drain(body).await,
            vec![Ok("a".into()), Ok("b".into()), Ok("c".into())]
        );
        let Ready::Streaming(body) = ready_part(chunks(vec![Ok("a"), Err("broken")])) else {
            panic!("a failed body is not complete");
        };
        assert_eq!(
            drain(body).await,
            vec![Ok("a".into()), Err("broken".into())]
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(2);
        let Ready::Streaming(body) =
            ready_part(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
        else {
            panic!("nothing has arrived yet");
        };
        tx.send(Ok(Bytes::from_static(b"late")))
            .await
            .expect("send");
        drop(tx);
        assert_eq!(drain(body).await, vec![Ok("late".into())]);
    }

    #[tokio::test]
    async fn a_small_declared_body_is_read_whole_and_any_other_streams_as_it_came() {
        let within = std::time::Duration::from_secs(5);
        // Chunks that arrive one by one (as HTTP/1 hands them over) become one complete chunk.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(4);
        let feed = tokio::spawn(async move {
            for part in ["he", "llo"] {
                tx.send(Ok(Bytes::from_static(part.as_bytes())))
                    .await
                    .expect("send");
                tokio::task::yield_now().await;
            }
        });
        let body = read_small(
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
            Some(5),
            within,
        )
        .await
        .expect("read");
        assert!(matches!(ready_part(body), Ready::Complete(b) if b == "hello"));
        feed.await.expect("feeder");
        // A body with no length, or a larger one, is not waited for.
        let body = read_small(chunks(vec![Ok("a"), Ok("b")]), None, within)
            .await
            .expect("unbounded");
        assert!(matches!(ready_part(body), Ready::Streaming(_)));
        let body = read_small(
            chunks(vec![Ok("a"), Ok("b")]),
            Some(MAX_CHUNK as u64 + 1),
            within,
        )
        .await
        .expect("large");
        assert_eq!(drain(body).await, vec![Ok("a".into()), Ok("b".into())]);
        // A failing body reports its error; a body that stops arriving, the bound.
        let err = read_small(chunks(vec![Ok("a"), Err("broken")]), Some(3), within)
            .await
            .err()
            .expect("a failing body fails");
        assert_eq!(err.to_string(), "broken");
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(1);
        let err = read_small(
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
            Some(3),
            std::time::Duration::from_millis(20),
        )
        .await
        .err()
        .expect("a stalled body times out");
        assert_eq!(
            err.to_string(),
            "the body of 3 bytes did not arrive within 20ms"
        );
    }

    #[test]
    fn headers_become_metadata_without_hop_by_hop_ones() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("dapr-app-id", HeaderValue::from_static("b"));
        let md = headers_to_metadata(&headers, &[names::DAPR_APP_ID]);
        assert_eq!(md["x-multi"].values, vec!["a", "b"]);
        assert_eq!(first(&md, "content-type"), Some("text/plain"));
        assert!(!md.contains_key("connection"));
        assert!(!md.contains_key("dapr-app-id"));
    }

    #[test]
    fn names_are_made_canonical_as_go_makes_them() {
        for (name, canonical) in [
            ("content-length", "Content-Length"),
            ("x-custom-header", "X-Custom-Header"),
            ("accept", "Accept"),
            ("x--a", "X--A"),
            ("www-authenticate", "Www-Authenticate"),
            ("x-b3-traceid", "X-B3-Traceid"),
        ] {
            assert_eq!(canonical_name(name), canonical);
            assert!(is_canonical(canonical), "{canonical}");
            assert!(!is_canonical(name), "{name}");
        }
        assert!(is_canonical("-"));
        assert!(!is_canonical("Content-length"));
    }

    #[test]
    fn request_headers_travel_canonical_except_daprs_own() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert("traceparent", HeaderValue::from_static("00-t-s-01"));
        headers.insert("dapr-caller-app-id", HeaderValue::from_static("spoof"));
        headers.insert("dapr-app-id", HeaderValue::from_static("b"));
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        let md = request_headers_to_metadata(&headers, &[names::DAPR_APP_ID]);
        let names: Vec<&str> = md.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "X-Multi",
                "dapr-caller-app-id",
                "traceparent"
            ]
        );
        assert_eq!(md["X-Multi"].values, vec!["a", "b"]);
    }

    #[test]
    fn content_length_is_found_and_set_in_either_spelling() {
        let mut md = Metadata::new();
        set(&mut md, "Content-Length", "5");
        assert_eq!(first_of(&md, &CONTENT_LENGTH), Some("5"));
        set_as_spelt(&mut md, &CONTENT_LENGTH, "7");
        assert_eq!(md.len(), 1);
        assert_eq!(first(&md, "Content-Length"), Some("7"));
        let mut md = Metadata::new();
        set(&mut md, "content-length", "5");
        assert_eq!(first_of(&md, &CONTENT_LENGTH), Some("5"));
        set(&mut md, "Content-Length", "6");
        set_as_spelt(&mut md, &CONTENT_LENGTH, "7");
        assert_eq!(md.len(), 1);
        assert_eq!(first(&md, "content-length"), Some("7"));
        let mut md = Metadata::new();
        assert_eq!(first_of(&md, &CONTENT_LENGTH), None);
        set_as_spelt(&mut md, &CONTENT_LENGTH, "1");
        assert_eq!(first(&md, "content-length"), Some("1"));
    }

    #[test]
    fn metadata_in_either_case_becomes_the_same_headers_for_an_http_app() {
        for (content_length, destination, custom, grpc) in [
            (
                "content-length",
                "destination-app-id",
                "x-custom",
                "grpc-timeout",
            ),
            (
                "Content-Length",
                "Destination-App-Id",
                "X-Custom",
                "Grpc-Timeout",
            ),
        ] {
            let mut md = Metadata::new();
            set(&mut md, content_length, "5");
            set(&mut md, destination, "b");
            set(&mut md, custom, "1");
            set(&mut md, grpc, "1S");
            set(&mut md, "Connection", "close");
            set(&mut md, "Content-Type", "text/plain");
            let mut headers = HeaderMap::new();
            metadata_to_headers(&md, &mut headers);
            assert_eq!(headers["content-length"], "5");
            assert_eq!(headers["x-custom"], "1");
            assert_eq!(headers["dapr-grpc-timeout"], "1S");
            // The content type is the message's own, not the metadata's.
            assert_eq!(headers.len(), 3, "{headers:?}");
        }
    }

    #[test]
    fn canonical_permanent_headers_reach_a_grpc_app_as_dapr_names() {
        let mut md = Metadata::new();
        set(&mut md, "Content-Length", "5");
        set(&mut md, "Accept", "*/*");
        set(&mut md, "X-Custom", "1");
        set(&mut md, "content-type", "text/plain");
        set(&mut md, "ACCEPT-LANGUAGE", "en");
        let mut headers = HeaderMap::new();
        metadata_to_grpc_headers(&md, &mut headers);
        assert_eq!(headers["dapr-content-length"], "5");
        assert_eq!(headers["dapr-accept"], "*/*");
        assert_eq!(headers["x-custom"], "1");
        // Other spellings keep their names, as upstream's exact match leaves them.
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["accept-language"], "en");
        assert!(!headers.contains_key("content-length"));
    }

    #[test]
    fn metadata_becomes_headers_with_reserved_names_prefixed() {
        let mut md = Metadata::new();
        set(&mut md, "grpc-timeout", "1S");
        set(&mut md, "destination-app-id", "b");
        set(&mut md, ":authority", "x");
        set(&mut md, "x-ok", "1");
        let mut headers = HeaderMap::new();
        metadata_to_headers(&md, &mut headers);
        assert_eq!(headers["dapr-grpc-timeout"], "1S");
        assert_eq!(headers["x-ok"], "1");
        assert_eq!(headers.len(), 2);
    }

    #[tokio::test]
    async fn large_chunks_are_split_and_numbered_from_zero() {
        let body = futures::stream::iter(vec![
            Ok::<_, BoxError>(Bytes::from(vec![1u8; MAX_CHUNK * 2 + 1])),
            Ok(Bytes::from_static(b"tail")),
        ]);
        let payloads: Vec<_> = into_payloads(body).collect().await;
        let seqs: Vec<u64> = payloads.iter().map(|p| p.as_ref().unwrap().seq).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3]);
        let mut check = SeqCheck::new();
        let total: usize = payloads
            .into_iter()
            .map(|p| check.accept(p.unwrap()).unwrap().len())
            .sum();
        assert_eq!(total, MAX_CHUNK * 2 + 1 + 4);
    }

    #[test]
    fn a_gap_in_payload_numbers_is_an_error() {
        let mut check = SeqCheck::new();
        assert!(
            check
                .accept(StreamPayload {
                    data: Bytes::new(),
                    seq: 0
                })
                .is_ok()
        );
        assert!(
            check
                .accept(StreamPayload {
                    data: Bytes::new(),
                    seq: 2
                })
                .is_err()
        );
    }

    #[test]
    fn verbs_round_trip_and_none_means_post() {
        for m in [
            Method::GET,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ] {
            assert_eq!(method_of(verb_of(&m)), m);
        }
        assert_eq!(method_of(Verb::None), Method::POST);
    }

    fn stamps() -> Stamps {
        Stamps::new(vec![
            (names::CALLER_APP_ID, "checkout".to_owned()),
            (names::X_FORWARDED_HOST, "node-1".to_owned()),
        ])
    }

    fn request() -> InternalInvokeRequest {
        let mut request = InternalInvokeRequest {
            ver: dapr_proto::internals::v1::ApiVersion::V1 as i32,
            message: Some(dapr_proto::common::v1::InvokeRequest {
                method: "echo".into(),
                content_type: "text/plain".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        set(&mut request.metadata, "content-type", "text/plain");
        request
    }

    fn body_of(frame: &Bytes) -> &[u8] {
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!((frame[0], len), (0, frame.len() - 5), "the gRPC prefix");
        &frame[5..]
    }

    #[test]
    fn framed_requests_decode_with_the_stamps_in_their_metadata() {
        use prost::Message;
        let stamps = stamps();
        let mut expected = request();
        stamps.insert_into(&mut expected.metadata);
        let unary = stamps.frame(&request());
        assert_eq!(
            InternalInvokeRequest::decode(body_of(&unary)).expect("decodes"),
            expected
        );
        let payload = Some(StreamPayload {
            data: Bytes::from_static(b"hello"),
            seq: 0,
        });
        for (request_of, payload) in [
            (Some(request()), payload.clone()),
            (Some(request()), None),
            (None, payload),
        ] {
            let message = InternalInvokeRequestStream {
                request: request_of.clone(),
                payload: payload.clone(),
            };
            let decoded =
                InternalInvokeRequestStream::decode(body_of(&stamps.stream_frame(&message)))
                    .expect("decodes");
            let expected = InternalInvokeRequestStream {
                request: request_of.is_some().then(|| expected.clone()),
                payload,
            };
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn a_stamp_on_the_wire_replaces_what_a_client_sent_under_its_name() {
        use prost::Message;
        let stamps = stamps();
        let mut spoofed = request();
        set(&mut spoofed.metadata, names::CALLER_APP_ID, "admin");
        let decoded =
            InternalInvokeRequest::decode(body_of(&stamps.frame(&spoofed))).expect("decodes");
        assert_eq!(
            first(&decoded.metadata, names::CALLER_APP_ID),
            Some("checkout")
        );
        stamps.remove_from(&mut spoofed.metadata);
        assert_eq!(first(&spoofed.metadata, names::CALLER_APP_ID), None);
        assert_eq!(first(&spoofed.metadata, "content-type"), Some("text/plain"));
    }

    #[test]
    fn response_headers_travel_go_canonical_as_upstreams_callee_sends_them() {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("334"));
        headers.insert(
            "date",
            HeaderValue::from_static("Sat, 05 Dec 2026 05:59:20 GMT"),
        );
        headers.insert("x-custom-header", HeaderValue::from_static("v"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let md = app_response_headers_to_metadata(&headers, &[]);
        let mut names: Vec<&str> = md.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["Content-Length", "Date", "X-Custom-Header"]);
        assert_eq!(first_of(&md, &CONTENT_LENGTH), Some("334"));
    }

    #[test]
    fn app_headers_get_grpc_metadata_names_as_upstream() {
        let named = |name| grpc_metadata_name(name).map(|n| n.into_owned());
        assert_eq!(
            named("content-length").as_deref(),
            Some("dapr-content-length")
        );
        assert_eq!(named("grpc-status").as_deref(), Some("dapr-grpc-status"));
        assert_eq!(named("x-custom").as_deref(), Some("x-custom"));
        assert_eq!(named("transfer-encoding"), None);
        assert_eq!(named(":status"), None);
        // Go-canonical names, as upstream's callee sends them, come out the same.
        assert_eq!(named("Content-Type").as_deref(), Some("dapr-content-type"));
        assert_eq!(named("X-Custom").as_deref(), Some("x-custom"));
        assert_eq!(named("Transfer-Encoding"), None);
    }
}
