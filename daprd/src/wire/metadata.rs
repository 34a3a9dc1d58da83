//! Headers ↔ invocation metadata: which headers travel, under which spelling (Go-canonical or
//! lower-case, `dapr-`-prefixed for a gRPC call), and reading and setting metadata entries.

use dapr_proto::internals::v1::ListStringValue;
use http::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use super::{Metadata, names};

/// Headers that belong to one connection and never travel on. (`content-length` does travel:
/// apps that cannot read chunked bodies still get a framed one.)
pub(super) fn is_hop_by_hop(name: &str) -> bool {
    is_hop_by_hop_bytes(name.as_bytes())
}

fn is_hop_by_hop_bytes(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"transfer-encoding"
            | b"te"
            | b"trailer"
            | b"upgrade"
            | b"host"
    )
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

/// Header names, each once, with their values: a header map's entries as they travel.
pub type HeaderEntries = Vec<(HeaderName, SmallVec<[HeaderValue; 1]>)>;

/// Adds `value` under `name` as a map groups them: after the name's other values, or as a new
/// entry at the end. A head has a handful of names, so they are compared in turn.
pub fn push_grouped(entries: &mut HeaderEntries, name: HeaderName, value: HeaderValue) {
    match entries.iter_mut().find(|(held, _)| *held == name) {
        Some((_, values)) => values.push(value),
        None => entries.push((name, SmallVec::from_buf([value]))),
    }
}

/// An app's response headers: a map (a gRPC app's metadata, an `https` or `h2c` app's
/// headers), or a plaintext HTTP/1.1 app's as its head was parsed (`super::http1`), each name
/// once with its values in the order they came, which is the order a map gives them in.
#[derive(Debug)]
pub enum AppHeaders {
    Map(HeaderMap),
    Entries(HeaderEntries),
}

impl Default for AppHeaders {
    fn default() -> Self {
        AppHeaders::Entries(Vec::new())
    }
}

impl AppHeaders {
    /// The first value of the header `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        match self {
            AppHeaders::Map(map) => map.get(name),
            AppHeaders::Entries(entries) => entries
                .iter()
                .find(|(held, _)| held == name)
                .and_then(|(_, values)| values.first()),
        }
    }

    /// The entries that travel, as [`travelling`] keeps a map's.
    pub(super) fn travelling(self, drop: impl Fn(&HeaderName) -> bool) -> HeaderEntries {
        match self {
            AppHeaders::Map(map) => travelling(map, drop),
            AppHeaders::Entries(mut entries) => {
                entries.retain_mut(|(name, values)| {
                    if !name_travels(name, &drop) {
                        return false;
                    }
                    values.retain(|value| value_travels(value));
                    !values.is_empty()
                });
                entries
            }
        }
    }
}

/// The entries of `headers` that travel, taken from it without a copy: all but hop-by-hop ones
/// and those `drop` names, each with its values that are visible ASCII (a header with none
/// does not travel), as [`collect_headers`] keeps them.
pub(super) fn travelling(headers: HeaderMap, drop: impl Fn(&HeaderName) -> bool) -> HeaderEntries {
    let mut kept: HeaderEntries = Vec::with_capacity(headers.keys_len());
    // The map's own iterator names each header once, before all of its values.
    let mut travels = false;
    for (name, value) in headers {
        if let Some(name) = name {
            travels = name_travels(&name, &drop);
            if travels {
                kept.push((name, SmallVec::new()));
            }
        }
        if travels
            && value_travels(&value)
            && let Some((_, values)) = kept.last_mut()
        {
            values.push(value);
        }
    }
    kept.retain(|(_, values)| !values.is_empty());
    kept
}

/// Whether a header goes on to the other sidecar: not hop-by-hop, and not one `drop` names.
fn name_travels(name: &HeaderName, drop: impl Fn(&HeaderName) -> bool) -> bool {
    !is_hop_by_hop(name.as_str()) && !drop(name)
}

/// Whether a header value goes on: visible ASCII (`to_str`); other values are left out.
fn value_travels(value: &HeaderValue) -> bool {
    value.to_str().is_ok()
}

/// An HTTP API request's headers that travel as invocation metadata, named as upstream's caller
/// names them: its `http.Header` keys, Go-canonical (`Content-Type`, `X-Custom-Header`), which
/// is the spelling upstream's callee looks for when it renames permanent HTTP headers
/// `dapr-<name>` for a gRPC app (`pkg/messaging/v1/util.go`, `isPermanentHTTPHeader`). Dapr's
/// own entries (`dapr-*`, `traceparent`) keep their lower-case names: they are read, replaced
/// and stamped under those, here and by upstream.
///
/// Kept as the client's header names and values instead of a map of owned strings: the caller
/// writes them straight into the request's frame ([`super::Stamps::stream_frame`]) and puts
/// them into a map ([`ClientHeaders::insert_into`]) only on the paths that hand a request to
/// tonic or keep it for another attempt. Names are held lower-case, each once, with its values
/// in order.
///
/// A gRPC API request's metadata travels the same way ([`ClientHeaders::grpc`]), its names as
/// they came.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientHeaders {
    entries: HeaderEntries,
    names: ClientNames,
}

/// How a client's header names are spelt as metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ClientNames {
    /// An HTTP API request's: Go-canonical, but Dapr's own.
    #[default]
    Http,
    /// A gRPC API request's: as they came (lower-case), as upstream's gRPC API passes its
    /// incoming metadata on (`pkg/api/grpc/grpc.go`).
    Grpc,
}

impl ClientNames {
    /// How `name` is spelt as metadata: as it came (a gRPC request's, Dapr's own), else
    /// Go-canonical.
    fn spelling(self, name: &HeaderName) -> super::Spelling {
        let name = name.as_str();
        if self == ClientNames::Grpc || name.starts_with("dapr-") || name == names::TRACEPARENT {
            super::Spelling::AsIs
        } else {
            super::Spelling::Canonical
        }
    }
}

impl ClientHeaders {
    /// Takes every header of `headers` but hop-by-hop ones and `skip`, with its text values.
    pub fn new(headers: HeaderMap, skip: &[&str]) -> Self {
        ClientHeaders {
            entries: travelling(headers, |name| skip.contains(&name.as_str())),
            names: ClientNames::Http,
        }
    }

    /// As [`ClientHeaders::new`], from a request's header fields in the order they came (a
    /// plain HTTP/1.1 request's, read in place: `dapr_serve::PlainRequest::fields`), without a
    /// header map in between: the same entries, each name where its first travelling value
    /// came (a map puts it where its first value came; the peer reads a map either way). The
    /// first field that is not a header ends it with its error.
    pub fn from_fields<E>(
        fields: impl Iterator<Item = Result<(HeaderName, HeaderValue), E>>,
        skip: &[&str],
    ) -> Result<Self, E> {
        let mut entries: HeaderEntries = Vec::with_capacity(fields.size_hint().0);
        let skipped = |name: &HeaderName| skip.contains(&name.as_str());
        for field in fields {
            let (name, value) = field?;
            if value_travels(&value) && name_travels(&name, skipped) {
                push_grouped(&mut entries, name, value);
            }
        }
        Ok(ClientHeaders {
            entries,
            names: ClientNames::Http,
        })
    }

    /// A gRPC API request's metadata: every entry but the API token and the transport's own
    /// (`grpc-*`, `te`, `content-type`), with its text values, named as it came.
    pub fn grpc(headers: HeaderMap) -> Self {
        let transport = |name: &HeaderName| {
            let name = name.as_str();
            name == names::API_TOKEN
                || name.starts_with("grpc-")
                || name == "te"
                || name == "content-type"
        };
        ClientHeaders {
            entries: travelling(headers, transport),
            names: ClientNames::Grpc,
        }
    }

    /// Each header with its spelling and values.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, super::Spelling, &[HeaderValue])> {
        self.entries
            .iter()
            .map(|(name, values)| (name, self.names.spelling(name), values.as_slice()))
    }

    /// The first value of the header `name` (lower-case).
    pub fn first(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(held, _)| held.as_str() == name)
            .and_then(|(_, values)| values.first())
            .and_then(|value| value.to_str().ok())
    }

    /// The headers as map entries, named as they travel, added to `metadata`'s (the values
    /// after any it holds under the same name).
    pub fn insert_into(self, metadata: &mut Metadata) {
        for (name, values) in self.entries {
            let key = match self.names.spelling(&name) {
                super::Spelling::AsIs => name.as_str().to_owned(),
                super::Spelling::Canonical => canonical_name(name.as_str()),
            };
            let list = &mut metadata.entry(key).or_default().values;
            list.extend(
                values
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .map(str::to_owned),
            );
        }
    }
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

/// Invocation metadata → headers for the callee's app (or back to the caller's app), names in
/// any case (HTTP header names are case-insensitive). gRPC's reserved names are re-prefixed
/// `dapr-`, and `content-type` is left to the message's own content type, as upstream
/// (`InternalMetadataToHTTPHeader`, `pkg/messaging/v1/util.go`).
pub fn metadata_to_headers(metadata: &Metadata, headers: &mut HeaderMap) {
    for (name, values) in metadata {
        let Some(header) = app_header_name(name) else {
            continue;
        };
        let values = values.values.iter();
        if !append_all(
            headers,
            header,
            values.map(|v| HeaderValue::try_from(v.as_str())),
        ) {
            return warn_full();
        }
    }
}

/// [`metadata_to_headers`] for entries (a name and its values, in name order) that are not
/// needed afterwards: each value becomes its header value as it is (checked as
/// [`HeaderValue::try_from`] checks a `&str`), without a copy. The same headers, in the same
/// order. The callee's [`super::ReceivedMetadata`] goes through here, its values slices of the
/// received message.
pub fn entries_into_headers<N, V>(
    entries: impl IntoIterator<Item = (N, impl IntoIterator<Item = V>)>,
    headers: &mut HeaderMap,
) where
    N: AsRef<str>,
    V: Into<bytes::Bytes>,
{
    let entries = entries.into_iter();
    // Room for every entry at once: the map would otherwise grow (and rehash) twice for the
    // dozen entries of a usual call. Beyond `http`'s limit, `append_all` refuses.
    let _ = headers.try_reserve(entries.size_hint().0);
    for (name, values) in entries {
        let Some(header) = app_header_name(name.as_ref()) else {
            continue;
        };
        let values = values.into_iter();
        if !append_all(
            headers,
            header,
            values.map(|v| HeaderValue::from_maybe_shared(v.into())),
        ) {
            return warn_full();
        }
    }
}

/// The header name of a metadata entry for an app's HTTP request or response: as
/// [`header_name`], but never `content-type` (the message's own content type is).
fn app_header_name(name: &str) -> Option<HeaderName> {
    header_name(name).filter(|header| *header != http::header::CONTENT_TYPE)
}

/// Invocation metadata → gRPC metadata for a gRPC app's `OnInvoke`: as
/// [`metadata_to_headers`], and a permanent HTTP header under its Go-canonical spelling (what
/// upstream's caller sends for HTTP API requests) becomes `dapr-<name>`, as upstream's
/// `InternalMetadataToGrpcMetadata` renames it, so that no HTTP framing header (such as
/// `Content-Length`) reaches a gRPC call as its own. Other spellings keep their name.
/// `content-type` and `content-length` under any other spelling are left out (the call's
/// transport sets its own), and so is `dapr-api-token` (the app gets its own token, if any, from
/// the caller of this). Left out here rather than removed from the map afterwards: a removal
/// costs a lookup each (bench/notes.md). The entries are names with their values, in name
/// order.
pub fn metadata_to_grpc_headers<N, V>(
    entries: impl IntoIterator<Item = (N, impl IntoIterator<Item = V>)>,
    headers: &mut HeaderMap,
) where
    N: AsRef<str>,
    V: Into<bytes::Bytes>,
{
    let entries = entries.into_iter();
    // Room for every entry at once, as `entries_into_headers` makes it.
    let _ = headers.try_reserve(entries.size_hint().0);
    for (name, values) in entries {
        let name = name.as_ref();
        let Some(header) = header_name(name) else {
            continue;
        };
        let header = if name != header.as_str()
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
        if header == http::header::CONTENT_TYPE
            || header == http::header::CONTENT_LENGTH
            || header == API_TOKEN_NAME
        {
            continue;
        }
        let never_indexed = header == TRACEPARENT_NAME;
        // Each value becomes its header value without a copy.
        let values = values.into_iter().map(|v| {
            HeaderValue::from_maybe_shared(v.into()).map(|mut value| {
                value.set_sensitive(never_indexed);
                value
            })
        });
        if !append_all(headers, header, values) {
            return warn_full();
        }
    }
}

/// A `traceparent` header value for an HTTP/2 request. A call's `traceparent` is new on every
/// call, so it goes out as a never-indexed HPACK literal (RFC 7541 §6.2.3, which
/// `HeaderValue::set_sensitive` asks of h2): indexed, each call's value was compared with every
/// earlier one still in the connection's table, then evicted the fields that are the same on
/// every call, which cost one byte each while they stay (bench/notes.md, "traceparent never
/// indexed").
pub fn traceparent_value(
    traceparent: &str,
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = HeaderValue::from_str(traceparent)?;
    value.set_sensitive(true);
    Ok(value)
}

/// Names that are on (nearly) every invocation and are not among `http`'s standard headers,
/// built once: a clone of one costs no allocation, where [`HeaderName::from_bytes`] copies the
/// name each time.
static KNOWN: [HeaderName; 6] = [
    HeaderName::from_static(names::CALLER_APP_ID),
    HeaderName::from_static(names::CALLER_NAMESPACE),
    HeaderName::from_static(names::CALLEE_APP_ID),
    TRACEPARENT_NAME,
    HeaderName::from_static(names::X_FORWARDED_FOR),
    HeaderName::from_static(names::X_FORWARDED_HOST),
];

const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(names::TRACEPARENT);
const API_TOKEN_NAME: HeaderName = HeaderName::from_static(names::API_TOKEN);

/// Whether a lower-case header name stays on this hop: hop-by-hop names and
/// `destination-app-id` ([`header_name`], [`push_app_header_name`]).
fn stays_behind(lower: &[u8]) -> bool {
    is_hop_by_hop_bytes(lower) || lower == names::DESTINATION_APP_ID.as_bytes()
}

/// The header name of a metadata entry that travels on to an app, lower-case: none for
/// hop-by-hop headers, `destination-app-id` and `:`-names; `grpc-*` as `dapr-grpc-*`.
fn header_name(name: &str) -> Option<HeaderName> {
    if let Some(known) = KNOWN.iter().find(|k| k.as_str().eq_ignore_ascii_case(name)) {
        return Some(known.clone());
    }
    if name.starts_with(':') {
        return None;
    }
    let header = HeaderName::from_bytes(name.as_bytes()).ok()?;
    let lower = header.as_str();
    if stays_behind(lower.as_bytes()) {
        None
    } else if lower.starts_with("grpc-") {
        HeaderName::try_from(format!("dapr-{lower}")).ok()
    } else {
        Some(header)
    }
}

/// [`app_header_name`] written lower-case at the end of `out` instead of built as a
/// `HeaderName` (which copies a name it does not know): false, with nothing written, for a
/// name that does not travel on to the app. The same rules, checked against each other in a
/// test.
pub(super) fn push_app_header_name(name: &str, out: &mut Vec<u8>) -> bool {
    let name = name.as_bytes();
    if name.is_empty() || name.len() > MAX_HEADER_NAME || name[0] == b':' {
        return false;
    }
    let start = out.len();
    out.extend(name.iter().map(|&b| TOKEN_LOWER[usize::from(b)]));
    let lower = &out[start..];
    // A byte no header name can have maps to 0; every byte is looked at, with no branch.
    let invalid = lower.iter().fold(false, |zero, &b| zero | (b == 0));
    if invalid || stays_behind(lower) || lower == b"content-type" {
        out.truncate(start);
        return false;
    }
    if lower.starts_with(b"grpc-") {
        out.splice(start..start, *b"dapr-");
    }
    true
}

/// Each byte of a header name lower-case, or 0 where a header name cannot have it (RFC 9110
/// `tchar`, as `http`'s `HeaderName` takes it).
static TOKEN_LOWER: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            b'a'..=b'z' | b'0'..=b'9' => c,
            b'A'..=b'Z' => c.to_ascii_lowercase(),
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
            | b'`' | b'|' | b'~' => c,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// The longest header name `http` takes.
const MAX_HEADER_NAME: usize = (1 << 16) - 1;

/// Appends every value that is a valid header value, in order, under `header`; the last one
/// takes `header` itself (a clone of a name built at run time allocates once, to share it).
/// False when the map is full: at `http`'s size limit (a table of 32 768 slots) it takes no
/// more (`append` would panic), and the caller stops with [`warn_full`]. A peer's message may
/// carry any number of entries; no server takes that many headers anyway.
#[must_use]
pub fn append_all<E>(
    headers: &mut HeaderMap,
    header: HeaderName,
    values: impl Iterator<Item = Result<HeaderValue, E>>,
) -> bool {
    let mut values = values.filter_map(Result::ok).peekable();
    while let Some(value) = values.next() {
        if values.peek().is_none() {
            return headers.try_append(header, value).is_ok();
        }
        if headers.try_append(header.clone(), value).is_err() {
            return false;
        }
    }
    true
}

/// Says that a map's entries did not all become headers ([`append_all`]).
fn warn_full() {
    tracing::warn!(
        "the metadata has more entries than a header map can hold (http's limit); the rest are \
         left out"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_written_for_an_app_follow_the_header_maps_rules() {
        let names = [
            "X-Custom",
            "traceparent",
            "Dapr-Caller-App-Id",
            "grpc-trace-bin",
            "Grpc-Timeout",
            "content-type",
            "Content-Type",
            "connection",
            "Keep-Alive",
            "Host",
            "te",
            "destination-app-id",
            ":authority",
            "",
            "bad name",
            "bad\u{e9}",
            "a\"b",
            "x!#$%&'*+-.^_`|~9",
            "user-agent",
            "Content-Length",
        ];
        for name in names {
            let mut written = Vec::new();
            let pushed = push_app_header_name(name, &mut written).then_some(written);
            let built = app_header_name(name).map(|h| h.as_str().as_bytes().to_vec());
            assert_eq!(pushed, built, "{name:?}");
        }
        let long = "x".repeat(MAX_HEADER_NAME + 1);
        assert_eq!(
            push_app_header_name(&long, &mut Vec::new()),
            app_header_name(&long).is_some()
        );
    }

    #[test]
    fn a_map_beyond_https_limit_fills_the_header_map_without_a_panic() {
        // A peer's message may hold any number of entries; `HeaderMap::append` panics once the
        // map is full (its table has at most 32 768 slots).
        let entries = (0..40_000).map(|i| (format!("x-{i}"), ["v".to_owned()]));
        let mut headers = HeaderMap::new();
        entries_into_headers(entries, &mut headers);
        assert!(
            (20_000..=32_768).contains(&headers.len()),
            "{}",
            headers.len()
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
        let mut md = Metadata::new();
        ClientHeaders::new(headers, &[names::DAPR_APP_ID]).insert_into(&mut md);
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
    fn fields_read_in_place_travel_as_the_same_headers_in_a_map_would() {
        // Names in any case, a name repeated apart, hop-by-hop and skipped headers, a value
        // that is not visible ASCII, a name whose only value does not travel.
        let fields = [
            ("Content-Type", &b"text/plain"[..]),
            ("X-Multi", b"a"),
            ("traceparent", b"00-t-s-01"),
            ("x-multi", b"b"),
            ("Connection", b"keep-alive"),
            ("dapr-app-id", b"b"),
            ("x-latin", b"caf\xe9"),
            ("X-Latin", b"plain"),
            ("X-Only-Latin", b"\xe9"),
            ("dapr-caller-app-id", b"spoof"),
        ];
        let field = |(name, value): (&str, &[u8])| {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            (name, HeaderValue::from_bytes(value).unwrap())
        };
        let mut headers = HeaderMap::new();
        for (name, value) in fields.iter().copied().map(field) {
            headers.append(name, value);
        }
        let skip = [names::DAPR_APP_ID];
        let from_map = ClientHeaders::new(headers, &skip);
        let read = fields.iter().copied().map(field).map(Ok::<_, ()>);
        let from_fields = ClientHeaders::from_fields(read, &skip).unwrap();
        assert_eq!(from_fields, from_map);
        let mut md = Metadata::new();
        from_fields.insert_into(&mut md);
        let names: Vec<&str> = md.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "X-Latin",
                "X-Multi",
                "dapr-caller-app-id",
                "traceparent"
            ]
        );
        assert_eq!(md["X-Multi"].values, vec!["a", "b"]);
        assert_eq!(md["X-Latin"].values, vec!["plain"]);
        // A field that is not a header ends the headers with its error.
        let broken = [Ok(field(fields[0])), Err("not a header")];
        assert_eq!(
            ClientHeaders::from_fields(broken.into_iter(), &skip),
            Err("not a header")
        );
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
    fn a_traceparent_goes_to_a_grpc_app_never_indexed_and_the_rest_indexed() {
        let mut md = Metadata::new();
        set(
            &mut md,
            names::TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        set(&mut md, names::CALLER_APP_ID, "checkout");
        set(&mut md, "x-custom", "1");
        let mut headers = HeaderMap::new();
        super::super::ReceivedMetadata::from(md).into_grpc_headers(&mut headers);
        assert!(headers[names::TRACEPARENT].is_sensitive());
        assert!(!headers[names::CALLER_APP_ID].is_sensitive());
        assert!(!headers["x-custom"].is_sensitive());
        assert!(
            traceparent_value("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .expect("a valid value")
                .is_sensitive()
        );
    }

    #[test]
    fn canonical_permanent_headers_reach_a_grpc_app_as_dapr_names() {
        let mut md = Metadata::new();
        set(&mut md, "Content-Length", "5");
        set(&mut md, "Accept", "*/*");
        set(&mut md, "X-Custom", "1");
        set(&mut md, "content-type", "text/plain");
        set(&mut md, "ACCEPT-LANGUAGE", "en");
        set(&mut md, "content-length", "7");
        set(&mut md, names::API_TOKEN, "the client's");
        let mut headers = HeaderMap::new();
        super::super::ReceivedMetadata::from(md.clone()).into_grpc_headers(&mut headers);
        assert_eq!(headers["dapr-content-length"], "5");
        assert_eq!(headers["dapr-accept"], "*/*");
        assert_eq!(headers["x-custom"], "1");
        // Other spellings keep their names, as upstream's exact match leaves them,
        assert_eq!(headers["accept-language"], "en");
        // but not the transport's own fields, nor the client's API token.
        for gone in ["content-type", "content-length", names::API_TOKEN] {
            assert!(!headers.contains_key(gone), "{gone}: {headers:?}");
        }
        assert_eq!(headers.len(), 4, "{headers:?}");
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
        let received = super::super::ReceivedMetadata::from(md);
        assert_eq!(received.first_of(&CONTENT_LENGTH), Some("334"));
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

    /// Every (name, value) of `headers`, in the order they would be written.
    fn listed(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn received_metadata_into_headers_gives_what_metadata_to_headers_gives() {
        let mut md = Metadata::new();
        let mut put = |name: &str, values: &[&str]| {
            md.insert(
                name.to_owned(),
                ListStringValue {
                    values: values.iter().map(|v| (*v).to_owned()).collect(),
                },
            );
        };
        put("Content-Length", &["5"]);
        put("content-length", &["6"]);
        put("Accept-Encoding", &["identity"]);
        put("dapr-caller-app-id", &["checkout"]);
        put("Dapr-Caller-Namespace", &["default"]);
        put("DAPR-CALLEE-APP-ID", &["orders"]);
        put(
            "traceparent",
            &["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
        );
        put("X-Forwarded-For", &["127.0.0.1", "10.0.0.1"]);
        put("x-forwarded-host", &["host"]);
        put("Forwarded", &["for=127.0.0.1;by=127.0.0.1;host=host"]);
        put("X-Multi", &["a", "bad\nvalue", "b", "c\u{7f}", "d"]);
        put(
            "x-long-custom-name-of-more-than-sixty-four-bytes-which-is-copied-otherwise",
            &["1"],
        );
        put("X-Bad", &["\r"]);
        put("x-empty", &[]);
        put("x-empty-value", &[""]);
        put("x-tab", &["a\tb"]);
        put("x-utf8", &["caf\u{e9}"]);
        put("grpc-timeout", &["1S"]);
        put("Grpc-Trace-Bin", &["x"]);
        put("Content-Type", &["text/plain"]);
        put("content-type", &["text/html"]);
        put("Connection", &["close"]);
        put("te", &["trailers"]);
        put("destination-app-id", &["orders"]);
        put(":authority", &["x"]);
        put("bad name", &["1"]);
        put("x-caf\u{e9}", &["1"]);
        put("", &["1"]);
        put("dapr-caller-app-idx", &["1"]);
        let mut borrowed = HeaderMap::new();
        borrowed.insert("x-first", HeaderValue::from_static("0"));
        let mut owned = borrowed.clone();
        metadata_to_headers(&md, &mut borrowed);
        super::super::ReceivedMetadata::from(md).into_headers(&mut owned);
        assert_eq!(listed(&owned), listed(&borrowed));
        let names: Vec<&str> = borrowed.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "x-first",
                "accept-encoding",
                "content-length",
                "dapr-callee-app-id",
                "dapr-caller-namespace",
                "forwarded",
                "dapr-grpc-trace-bin",
                "x-forwarded-for",
                "x-multi",
                "dapr-caller-app-id",
                "dapr-caller-app-idx",
                "dapr-grpc-timeout",
                "traceparent",
                "x-empty-value",
                "x-forwarded-host",
                "x-long-custom-name-of-more-than-sixty-four-bytes-which-is-copied-otherwise",
                "x-tab",
                "x-utf8",
            ]
        );
        let values = |name| {
            borrowed
                .get_all(name)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(values("content-length"), [b"5".to_vec(), b"6".to_vec()]);
        assert_eq!(
            values("x-multi"),
            [b"a".to_vec(), b"b".to_vec(), b"d".to_vec()]
        );
        assert_eq!(
            values("x-forwarded-for"),
            [b"127.0.0.1".to_vec(), b"10.0.0.1".to_vec()]
        );
        assert_eq!(values("x-utf8"), ["caf\u{e9}".as_bytes().to_vec()]);
        assert!(!borrowed.contains_key("content-type"));
        assert!(!borrowed.contains_key("x-bad"));
    }
}
