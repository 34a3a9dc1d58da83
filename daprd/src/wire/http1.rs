//! HTTP/1.1 with a plaintext app, written and read here instead of by hyper's client: the
//! request head straight from the received metadata (no header map), the response head parsed
//! in place by httparse, the body framed by its `content-length` or chunked
//! (RFC 9112 §6-7). hyper's client connection wrote and read each call on a task of its own,
//! reached through channels, after the metadata had been turned into a `HeaderMap`: about
//! 15k instructions of the callee's 98k per call (bench/notes.md, "HTTP/1 to the app
//! without hyper's client"). The IO is `inbound::app_pool`'s; this module does no IO.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode};
use smallvec::SmallVec;

use dapr_serve::has_token;

use super::metadata::push_app_header_name;
use super::names;
use super::{HeaderEntries, ReceivedMetadata};

/// Headers an app's response head may carry: hyper's client default, which applied before.
pub const MAX_HEADERS: usize = 100;
/// The largest response head, and the largest trailer section of a chunked body: hyper's
/// client read-buffer ceiling, which applied before.
pub const MAX_HEAD: usize = 400 * 1024;
/// The longest request target (`/path?query`), as `http`'s URI type takes it.
const MAX_TARGET: usize = u16::MAX as usize - 1;
/// The longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// What is wrong with a request for the app or with the app's answer.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error(
        "the method path has a character HTTP/1.1 does not allow in a request target (byte 0x{0:02x})"
    )]
    TargetChar(u8),
    #[error("the method path and query are longer than {MAX_TARGET} bytes")]
    TargetTooLong,
    #[error("the app's response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the app's response has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("the app's response head is malformed: {0}")]
    MalformedHead(httparse::Error),
    #[error("the app answered 101 Switching Protocols, which an invocation cannot take")]
    SwitchingProtocols,
    #[error("the app's response has an invalid content-length")]
    InvalidContentLength,
    #[error("the app's chunked body is malformed: {0}")]
    MalformedChunk(&'static str),
    #[error("the app closed the connection before answering")]
    ClosedBeforeHead,
    #[error("the app closed the connection before the end of its body")]
    ClosedInBody,
    #[error("the request body is {0} its content-length")]
    BodyLength(&'static str),
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// `content-length`: the body is whole, or its length was declared.
    Length(u64),
    /// `transfer-encoding: chunked`: a streamed body of unknown length.
    Chunked,
}

/// `name: value` and CRLF at the end of `out`; the name and value are known to be valid.
pub fn push_header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `metadata` as header lines (`name: value\r\n`) at the end of `out`, by the rules of
/// [`RequestHead::metadata`]: the app's request head, and the answer head of an HTTP API
/// invocation served by `dapr-serve`'s plain server (`dapr_serve::PlainAnswer`), which would
/// otherwise build a header map only to have it written out again.
pub fn push_metadata_headers(metadata: &ReceivedMetadata, out: &mut Vec<u8>) {
    // Room for every line at once (`dapr-` and the values left out aside) and a line the
    // caller adds (an answer's `content-type`): growing the buffer as lines came cost three
    // reallocations per answer.
    let lines: usize = metadata
        .iter()
        .map(|(name, values)| {
            let line = |value: &bytestring::ByteString| name.len() + value.len() + 4;
            values.iter().map(line).sum::<usize>()
        })
        .sum();
    out.reserve(64 + lines);
    for (name, values) in metadata.iter() {
        let start = out.len();
        if !push_app_header_name(name, out) {
            continue;
        }
        let end = out.len();
        let header = &out[start..end];
        if header == b"content-length" || header == names::API_TOKEN.as_bytes() {
            out.truncate(start);
            continue;
        }
        // The name is written once; a second valid value writes it again.
        let mut named = true;
        for value in values.iter().map(|v| v.as_bytes()) {
            if !is_header_value(value) {
                continue;
            }
            if !named {
                out.extend_from_within(start..end);
            }
            named = false;
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if named {
            out.truncate(start);
        }
    }
}

/// A request head for the app, written as it is built.
pub struct RequestHead {
    buf: Vec<u8>,
}

impl RequestHead {
    /// `<verb> /<method>[?<query>] HTTP/1.1`. The method path keeps the bytes the caller sent
    /// (percent-encoded as it sent them); a fragment (`#...`) is left out, as a URI parser
    /// leaves it out. A space or control byte would split the request line: refused.
    pub fn new(verb: &Method, method: &str, query: Option<&str>) -> Result<Self, Http1Error> {
        let method = method.trim_start_matches('/');
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(verb.as_str().as_bytes());
        buf.extend_from_slice(b" /");
        let start = buf.len() - 1;
        let fragment = push_target_part(&mut buf, method.as_bytes())?;
        if let (false, Some(query)) = (fragment, query) {
            buf.push(b'?');
            push_target_part(&mut buf, query.as_bytes())?;
        }
        if buf.len() - start > MAX_TARGET {
            return Err(Http1Error::TargetTooLong);
        }
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        Ok(RequestHead { buf })
    }

    /// A header whose name and value are known to be valid.
    pub fn header(&mut self, name: &str, value: &[u8]) {
        push_header_line(&mut self.buf, name, value);
    }

    /// The invocation's metadata as headers, as `entries_into_headers` turns it into a map:
    /// names lower-case, hop-by-hop ones and `:`-names left out, `grpc-*` as `dapr-grpc-*`,
    /// values that are not valid header values left out. Left out as well, because the request
    /// sets them itself: `content-type`, `content-length` and `dapr-api-token`.
    pub fn metadata(&mut self, metadata: &ReceivedMetadata) {
        push_metadata_headers(metadata, &mut self.buf);
    }

    /// The head's end: `host`, the framing header and the blank line.
    pub fn finish(mut self, host: &[u8], framing: RequestFraming) -> Vec<u8> {
        self.header("host", host);
        match framing {
            RequestFraming::Length(len) => {
                self.header("content-length", itoa::Buffer::new().format(len).as_bytes())
            }
            RequestFraming::Chunked => self.header("transfer-encoding", b"chunked"),
        }
        self.buf.extend_from_slice(b"\r\n");
        self.buf
    }
}

/// Appends a part of the request target; true if it ended at a fragment.
fn push_target_part(buf: &mut Vec<u8>, part: &[u8]) -> Result<bool, Http1Error> {
    let (part, fragment) = match part.iter().position(|&b| b == b'#') {
        Some(at) => (&part[..at], true),
        None => (part, false),
    };
    if let Some(&bad) = part.iter().find(|&&b| b <= b' ' || b == 0x7f) {
        return Err(Http1Error::TargetChar(bad));
    }
    buf.extend_from_slice(part);
    Ok(fragment)
}

/// What `HeaderValue` accepts: visible ASCII, space, tab and bytes above 0x7f. Every byte is
/// looked at, without a branch to leave early, so the compiler checks many at a time.
fn is_header_value(value: &[u8]) -> bool {
    value.iter().fold(true, |ok, &b| {
        ok & (((b >= b' ') & (b != 0x7f)) | (b == b'\t'))
    })
}

/// How a response's body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: a `HEAD` request's answer, 204 and 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the app closes the connection.
    UntilClose,
}

/// An app's response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// Each name once (lower-case), with its values in the order they came.
    pub headers: HeaderEntries,
    pub framing: BodyFraming,
    /// Whether the connection may carry another request once the body has been read.
    pub keep_alive: bool,
}

/// Parses a response head from the start of `buf` and takes it off: `None` while it is
/// incomplete. Interim answers (1xx but 101) are taken off and skipped. Header values are
/// slices of the received bytes.
pub fn parse_response(
    buf: &mut BytesMut,
    request: &Method,
) -> Result<Option<ResponseHead>, Http1Error> {
    loop {
        // Uninitialised: filling 100 empty headers first cost about 500 instructions a call.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(Http1Error::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Http1Error::TooManyHeaders),
            Err(e) => return Err(Http1Error::MalformedHead(e)),
        };
        if len > MAX_HEAD {
            return Err(Http1Error::HeadTooLarge);
        }
        let code = response.code.unwrap_or_default();
        let http11 = response.version == Some(1);
        // Where each header's name and value are, to take them from the head once it is
        // split off the buffer.
        let base = buf.as_ptr() as usize;
        let spans: SmallVec<[(usize, usize, usize, usize); 16]> = response
            .headers
            .iter()
            .map(|h| {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                (name, h.name.len(), value, h.value.len())
            })
            .collect();
        let status = StatusCode::from_u16(code)
            .map_err(|_| Http1Error::MalformedHead(httparse::Error::Status))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Http1Error::SwitchingProtocols);
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let mut entries: HeaderEntries = Vec::with_capacity(spans.len());
        let mut content_length: Option<u64> = None;
        let mut length_valid = true;
        let mut chunked = None;
        let mut close = !http11;
        let head = buf.split_to(len).freeze();
        for (name_at, name_len, value_at, value_len) in spans {
            let name = dapr_serve::header_name(&head[name_at..name_at + name_len])
                .map_err(|_| Http1Error::MalformedHead(httparse::Error::HeaderName))?;
            let value = head.slice(value_at..value_at + value_len);
            if name == http::header::CONTENT_LENGTH {
                length_valid &= merge_content_length(&mut content_length, &value);
            } else if name == http::header::TRANSFER_ENCODING {
                chunked = Some(last_coding_is_chunked(&value));
            } else if name == http::header::CONNECTION {
                if has_token(&value, b"close") {
                    close = true;
                } else if !http11 && has_token(&value, b"keep-alive") {
                    close = false;
                }
            }
            // httparse has checked the value's bytes, as `HeaderValue` would.
            let value = HeaderValue::from_maybe_shared(value)
                .map_err(|_| Http1Error::MalformedHead(httparse::Error::HeaderValue))?;
            super::push_grouped(&mut entries, name, value);
        }
        let framing = if *request == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            BodyFraming::Empty
        } else if let Some(chunked) = chunked {
            // Transfer-Encoding wins over Content-Length; a body that is not chunked last
            // runs until the connection closes (RFC 9112 §6.3).
            if content_length.is_some() {
                close = true;
            }
            if chunked {
                BodyFraming::Chunked
            } else {
                BodyFraming::UntilClose
            }
        } else if !length_valid {
            return Err(Http1Error::InvalidContentLength);
        } else if let Some(len) = content_length {
            BodyFraming::Length(len)
        } else {
            BodyFraming::UntilClose
        };
        let keep_alive = !close && framing != BodyFraming::UntilClose;
        return Ok(Some(ResponseHead {
            status,
            headers: entries,
            framing,
            keep_alive,
        }));
    }
}

/// Folds one `content-length` value (a number, or a list of the same number) into `held`:
/// false if it is not a number or differs from one seen before.
fn merge_content_length(held: &mut Option<u64>, value: &[u8]) -> bool {
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return false;
        }
        let len = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        match held {
            Some(seen) if *seen != len => return false,
            _ => *held = Some(len),
        }
    }
    true
}

/// Whether a `transfer-encoding` value ends with `chunked`.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Reads a chunked body (RFC 9112 §7.1) out of a buffer as its bytes arrive: each call takes
/// what it can and hands back data as slices of the buffer. Chunk extensions and trailers are
/// read and dropped.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk: this many bytes to go.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines, until a blank one; the bytes of them read so far.
    Trailers(usize),
    Done,
}

/// What [`ChunkedDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// More bytes are needed.
    Incomplete,
    End,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
        }
    }
}

impl ChunkedDecoder {
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Http1Error> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = line_end(buf) else {
                        // A line at the bound may have its CR here and its LF still to come.
                        if buf.len() > MAX_CHUNK_LINE + 1 {
                            return Err(Http1Error::MalformedChunk("chunk-size line too long"));
                        }
                        return Ok(Decoded::Incomplete);
                    };
                    if end > MAX_CHUNK_LINE {
                        return Err(Http1Error::MalformedChunk("chunk-size line too long"));
                    }
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailers(0)
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::Incomplete);
                    }
                    let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::Incomplete);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Http1Error::MalformedChunk("no CRLF after a chunk's data"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers(read) => {
                    let Some(end) = line_end(buf) else {
                        if read + buf.len() > MAX_HEAD {
                            return Err(Http1Error::MalformedChunk("trailers too large"));
                        }
                        return Ok(Decoded::Incomplete);
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        self.state = ChunkState::Done;
                    } else if read + end + 2 > MAX_HEAD {
                        return Err(Http1Error::MalformedChunk("trailers too large"));
                    } else {
                        self.state = ChunkState::Trailers(read + end + 2);
                    }
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// Where the CRLF that ends the first line of `buf` starts.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A chunk-size line's size: hex digits, then optional whitespace and `;extensions`.
fn chunk_size(line: &[u8]) -> Result<u64, Http1Error> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 {
        return Err(Http1Error::MalformedChunk("no chunk size"));
    }
    if digits > 16 {
        return Err(Http1Error::MalformedChunk("chunk size too large"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(Http1Error::MalformedChunk("invalid chunk size"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(v)
    });
    Ok(size)
}

/// The size line of a chunk of a streamed request body ([`dapr_serve::push_chunk_head`], the
/// server's own framing).
pub fn chunk_head(len: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(18);
    dapr_serve::push_chunk_head(&mut head, len);
    head
}

/// The last chunk of a streamed request body, with no trailers.
pub use dapr_serve::LAST_CHUNK;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_checked_as_header_value_checks_them() {
        for b in 0..=255u8 {
            let value = [b'a'; 40].iter().copied().chain([b]).collect::<Vec<u8>>();
            for at in [0, 17, 40] {
                let mut value = value.clone();
                value.swap(at, 40);
                assert_eq!(
                    is_header_value(&value),
                    HeaderValue::from_bytes(&value).is_ok(),
                    "{b:#x} at {at}"
                );
            }
        }
    }

    fn metadata(entries: &[(&str, &[&str])]) -> ReceivedMetadata {
        let mut map = super::super::Metadata::new();
        for (name, values) in entries {
            map.insert(
                (*name).to_owned(),
                dapr_proto::internals::v1::ListStringValue {
                    values: values.iter().map(|v| (*v).to_owned()).collect(),
                },
            );
        }
        ReceivedMetadata::from(map)
    }

    #[test]
    fn a_request_head_carries_the_metadata_as_a_header_map_would_and_its_own_framing() {
        let mut head =
            RequestHead::new(&Method::POST, "/orders/new", Some("a=1&b=2")).expect("head");
        head.metadata(&metadata(&[
            ("Content-Length", &["999"]),
            ("Content-Type", &["text/plain"]),
            ("Connection", &["close"]),
            ("dapr-api-token", &["caller's"]),
            ("X-Two", &["one", "two"]),
            ("grpc-trace-bin", &["abc"]),
            ("bad-value", &["line\r\nbreak"]),
            (":authority", &["x"]),
            ("destination-app-id", &["orders"]),
            ("traceparent", &["00-abc-def-01"]),
        ]));
        head.header("content-type", b"application/json");
        let written = head.finish(b"127.0.0.1:3000", RequestFraming::Length(5));
        assert_eq!(
            String::from_utf8(written).expect("ASCII"),
            "POST /orders/new?a=1&b=2 HTTP/1.1\r\n\
             x-two: one\r\nx-two: two\r\n\
             dapr-grpc-trace-bin: abc\r\n\
             traceparent: 00-abc-def-01\r\n\
             content-type: application/json\r\n\
             host: 127.0.0.1:3000\r\ncontent-length: 5\r\n\r\n"
        );
        let chunked = RequestHead::new(&Method::GET, "a", None)
            .expect("head")
            .finish(b"h", RequestFraming::Chunked);
        assert_eq!(
            chunked,
            b"GET /a HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn a_target_that_would_split_the_request_line_is_refused_and_a_fragment_left_out() {
        for bad in ["a b", "a\r\nHost: evil", "a\tb", "a\x7f"] {
            assert!(
                matches!(
                    RequestHead::new(&Method::GET, bad, None),
                    Err(Http1Error::TargetChar(_))
                ),
                "{bad:?}"
            );
        }
        assert!(RequestHead::new(&Method::GET, "a", Some("q=1 2")).is_err());
        let head = RequestHead::new(&Method::GET, "a#frag ment", Some("q=1"))
            .expect("head")
            .finish(b"h", RequestFraming::Length(0));
        assert!(head.starts_with(b"GET /a HTTP/1.1\r\n"), "{head:?}");
        let long = "x".repeat(MAX_TARGET);
        assert!(matches!(
            RequestHead::new(&Method::GET, &long, None),
            Err(Http1Error::TargetTooLong)
        ));
    }

    fn parse(
        bytes: &[u8],
        request: &Method,
    ) -> (Result<Option<ResponseHead>, Http1Error>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let head = parse_response(&mut buf, request);
        (head, buf)
    }

    #[test]
    fn a_response_head_is_parsed_with_its_framing_and_leaves_the_body() {
        let (head, rest) = parse(
            b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 5\r\n\r\nhello",
            &Method::POST,
        );
        let head = head.expect("parses").expect("complete");
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert!(head.keep_alive);
        let names: Vec<&str> = head.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-a", "content-length"]);
        assert_eq!(head.headers[0].1.as_slice(), ["text/plain"]);
        // Two spellings of a name are one header, its values in order.
        assert_eq!(head.headers[1].1.as_slice(), ["1", "2"]);
        assert_eq!(&rest[..], b"hello");

        // Partial heads wait for more; interim answers are skipped.
        let (head, _) = parse(b"HTTP/1.1 200 OK\r\nContent-Len", &Method::GET);
        assert!(head.expect("partial").is_none());
        let (head, rest) = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            &Method::POST,
        );
        let head = head.expect("parses").expect("complete");
        assert_eq!(
            (head.status, head.framing),
            (StatusCode::OK, BodyFraming::Chunked)
        );
        assert_eq!(&rest[..], b"0\r\n\r\n");
    }

    #[test]
    fn framing_and_reuse_follow_rfc_9112() {
        use BodyFraming::{Chunked, Empty, Length, UntilClose};
        let cases: [(&[u8], Method, BodyFraming, bool); 10] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                Method::HEAD,
                Empty,
                true,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Method::GET, Empty, true),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET,
                Empty,
                true,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", Method::GET, UntilClose, false),
            (
                b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                Length(1),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                Method::GET,
                Length(3),
                true,
            ),
            // Both: chunked wins, and the connection is not reused.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                Chunked,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::GET,
                UntilClose,
                false,
            ),
        ];
        for (bytes, method, framing, keep_alive) in cases {
            let head = parse(bytes, &method).0.expect("parses").expect("complete");
            assert_eq!(
                (head.framing, head.keep_alive),
                (framing, keep_alive),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_malformed_or_oversized_head_is_an_error() {
        let error = |bytes: &[u8]| parse(bytes, &Method::GET).0.expect_err("refused");
        assert!(matches!(
            error(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Http1Error::InvalidContentLength
        ));
        assert!(matches!(
            error(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Http1Error::InvalidContentLength
        ));
        assert!(matches!(
            error(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Http1Error::SwitchingProtocols
        ));
        assert!(matches!(
            error(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Http1Error::MalformedHead(_)
        ));
        assert!(matches!(
            error(b"SMTP ready\r\n\r\n"),
            Http1Error::MalformedHead(_)
        ));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(error(&many), Http1Error::TooManyHeaders));
        let mut huge = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert!(matches!(error(&huge), Http1Error::HeadTooLarge));
    }

    /// Decodes `encoded` fed `step` bytes at a time.
    fn decode_in_steps(encoded: &[u8], step: usize) -> Result<Vec<u8>, Http1Error> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => out.extend_from_slice(&data),
                Decoded::End => return Ok(out),
                Decoded::Incomplete if fed < encoded.len() => {
                    let next = (fed + step).min(encoded.len());
                    buf.extend_from_slice(&encoded[fed..next]);
                    fed = next;
                }
                Decoded::Incomplete => return Err(Http1Error::ClosedInBody),
            }
        }
    }

    #[test]
    fn a_chunk_size_line_is_bounded_however_its_bytes_arrive() {
        // `1;xxx...`: a size with an extension padding the line to `len` bytes.
        let line = |len: usize| {
            let mut line = b"1;".to_vec();
            line.resize(len, b'x');
            line
        };
        let body = |len: usize| [line(len), b"\r\na\r\n0\r\n\r\n".to_vec()].concat();
        // At the bound: whole, or cut between the line's CR and LF.
        for step in [usize::MAX, MAX_CHUNK_LINE + 1, 1000] {
            let decoded = decode_in_steps(&body(MAX_CHUNK_LINE), step);
            assert_eq!(decoded.expect("a line at the bound"), b"a", "{step}");
        }
        for step in [usize::MAX, MAX_CHUNK_LINE + 1, 1000] {
            let decoded = decode_in_steps(&body(MAX_CHUNK_LINE + 1), step);
            assert!(
                matches!(decoded, Err(Http1Error::MalformedChunk(_))),
                "{step}"
            );
        }
        // A line that never ends is refused once the bound is passed, not waited for.
        let endless = line(MAX_CHUNK_LINE + 2);
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::from(&endless[..MAX_CHUNK_LINE + 1]);
        assert_eq!(
            decoder.decode(&mut buf).expect("within"),
            Decoded::Incomplete
        );
        buf.extend_from_slice(&endless[MAX_CHUNK_LINE + 1..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(Http1Error::MalformedChunk(_))
        ));
    }

    #[test]
    fn trailers_are_bounded_as_a_head_is() {
        // One trailer whose line and CRLF take `len` bytes, after a one-byte body.
        let body = |len: usize| {
            let mut trailer = b"x-t: ".to_vec();
            trailer.resize(len - 2, b'v');
            [b"1\r\na\r\n0\r\n".to_vec(), trailer, b"\r\n\r\n".to_vec()].concat()
        };
        for step in [usize::MAX, 64 * 1024] {
            let decoded = decode_in_steps(&body(MAX_HEAD), step);
            assert_eq!(decoded.expect("trailers at the bound"), b"a", "{step}");
            let decoded = decode_in_steps(&body(MAX_HEAD + 1), step);
            assert!(
                matches!(decoded, Err(Http1Error::MalformedChunk(_))),
                "{step}"
            );
        }
        // Trailers that never end are refused once the bound is passed.
        let mut endless = body(MAX_HEAD + 3);
        endless.truncate(endless.len() - 4);
        let decoded = decode_in_steps(&endless, 64 * 1024);
        assert!(matches!(decoded, Err(Http1Error::MalformedChunk(_))));
    }

    #[test]
    fn a_chunked_body_decodes_however_its_bytes_arrive() {
        let encoded =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n";
        let expected = b"helloabcdefghijklmnopqrstuvwxyz";
        for step in 1..=encoded.len() {
            assert_eq!(
                decode_in_steps(encoded, step).expect("decodes"),
                expected,
                "{step}"
            );
        }
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 junk\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                matches!(decode_in_steps(bad, 3), Err(Http1Error::MalformedChunk(_))),
                "{bad:?}"
            );
        }
        // Cut short: more is needed, never an end.
        assert!(matches!(
            decode_in_steps(b"5\r\nhel", 2),
            Err(Http1Error::ClosedInBody)
        ));
    }
}
