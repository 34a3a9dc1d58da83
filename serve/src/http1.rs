//! A small HTTP/1.1 server for the plain requests nearly every client sends, in front of hyper's.
//!
//! A plain request is HTTP/1.1 in origin form, with no body or a `content-length` of at most
//! [`Http1Settings::max_body`], and no `transfer-encoding`, `expect`, `upgrade` or `connection`
//! other than `keep-alive`. Such a request is read whole here (its head parsed in place by
//! httparse, its header values slices of the bytes read), passed to the router, and answered with
//! one write when the answer's body is ready with its head. At the first request that is not
//! plain (or the HTTP/2 preface, or a malformed head) the connection goes to hyper's server with
//! the bytes read so far, and stays there: hyper answers everything it answered before, exactly
//! as before. hyper's server cost the calling sidecar about 13k instructions per invocation,
//! nearly a fifth of its work (bench/notes.md, "the HTTP API's plain requests without hyper").
//!
//! The bounds are [`Limits`]'s: the head within `header_read` of the previous answer (or of the
//! connection's start), and the body within [`Http1Settings::body_read`] of its head
//! (`docs/limits.md`).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::http::{
    HttpHandler, ResponseBody, accept_until_stopped, hyper_builder, plain_connections,
    until_stopped,
};
use crate::{Limits, Listener, preface::H2_PREFACE};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What [`serve_connection`] reads whole itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http1Settings {
    /// The largest declared body of a plain request; a larger one streams through hyper.
    pub max_body: usize,
    /// How long the rest of a plain request's body may take after its head. When it runs out,
    /// the router gets the request with a body that fails with [`BodyTimedOut`], and the
    /// connection closes after the answer.
    pub body_read: Duration,
}

/// The most headers a plain request has; hyper's server refuses more (431), and so it answers
/// a head with more.
const MAX_HEADERS: usize = 100;
/// The longest plain request head. A longer one goes to hyper, whose bound is 400 KiB.
const MAX_HEAD: usize = 16 * 1024;
/// Read at least this much at a time.
const READ_SIZE: usize = 8 * 1024;
/// A body frame up to this size is copied after the head, so head and body go in one write.
const COPY_FRAME: usize = 16 * 1024;
/// The most of an answer's body gathered before its head is written: within it, a body that
/// ends is framed by its length.
const MAX_READY: usize = 64 * 1024;

/// The error a plain request's body fails with when it did not arrive in time.
#[derive(Debug)]
pub struct BodyTimedOut {
    pub len: usize,
    pub within: Duration,
}

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the body of {} bytes did not arrive within {:?}",
            self.len, self.within
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// What the bytes read so far start with.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A plain request.
    Plain(Plain),
    /// Anything else: hyper's to serve.
    Hyper,
}

/// Where a plain request's parts are in the bytes read: offsets, so that the request can be
/// built from one frozen buffer once its body has arrived.
#[derive(Debug, PartialEq, Eq)]
struct Plain {
    method: Method,
    target: (usize, usize),
    /// Name and value of each header.
    headers: Vec<((usize, usize), (usize, usize))>,
    head_len: usize,
    /// The `content-length`, when the request has one.
    declared: Option<usize>,
}

impl Plain {
    /// The body's length: the declared one, else none.
    fn body_len(&self) -> usize {
        self.declared.unwrap_or(0)
    }

    /// The whole request's length: head and body.
    fn len(&self) -> usize {
        self.head_len + self.body_len()
    }

    /// The request as the router takes it, its parts slices of `message` (the head, then as
    /// much of the body as arrived). `message` back if the `http` crate refuses the target:
    /// hyper's to answer then.
    fn request(
        self,
        message: Bytes,
        timed_out: Option<BodyTimedOut>,
        kept: &mut KeptTarget,
    ) -> Result<PlainRequest, Bytes> {
        let Some(uri) = kept.parse(&message, self.target) else {
            return Err(message);
        };
        Ok(PlainRequest {
            message,
            plain: self,
            uri,
            timed_out,
        })
    }
}

/// The longest request target a connection keeps parsed ([`KeptTarget`]).
const LONGEST_KEPT_TARGET: usize = 256;

/// The last request target a connection sent, with the `Uri` it parsed to. A client sends the
/// same target again and again (one method invoked on one app), and parsing one checks each of
/// its bytes: about 440 instructions per request for `/v1.0/invoke/<id>/method/<m>`. The kept
/// target is a copy, so no request's buffer is held; one over [`LONGEST_KEPT_TARGET`] bytes, or
/// one that does not parse, is not kept.
#[derive(Default)]
struct KeptTarget(Option<(Bytes, Uri)>);

impl KeptTarget {
    /// The `Uri` of the target at `start..end` of `message`, kept or parsed now; none if the
    /// `http` crate refuses it.
    fn parse(&mut self, message: &Bytes, (start, end): (usize, usize)) -> Option<Uri> {
        let text = &message[start..end];
        if let Some((kept, uri)) = &self.0
            && kept[..] == *text
        {
            return Some(uri.clone());
        }
        if text.len() > LONGEST_KEPT_TARGET {
            return Uri::from_maybe_shared(message.slice(start..end)).ok();
        }
        let own = Bytes::copy_from_slice(text);
        let uri = Uri::from_maybe_shared(own.clone()).ok()?;
        self.0 = Some((own, uri.clone()));
        Some(uri)
    }
}

/// A plain request as it was read: its method and target parsed, its headers still where they
/// are in the bytes read, so that a router that needs only a few of them (daprd's invocations)
/// reads those without building a header map, and any other turns it into an `http::Request`
/// ([`PlainRequest::into_http`]).
#[derive(Debug)]
pub struct PlainRequest {
    message: Bytes,
    plain: Plain,
    uri: Uri,
    /// Set when the body did not arrive within its bound: its end is this error.
    timed_out: Option<BodyTimedOut>,
}

/// A header of a plain request that the `http` crate refuses. httparse checks names and values
/// as the `http` crate does (token characters; visible ASCII, tab, space and obs-text), so this
/// is not expected; it is an error rather than a header left out.
#[derive(Debug)]
pub struct InvalidHeader(http::Error);

impl std::fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid request header: {}", self.0)
    }
}

impl std::error::Error for InvalidHeader {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl PlainRequest {
    pub fn method(&self) -> &Method {
        &self.plain.method
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The `content-length`, when the request has one (checked: digits, within
    /// [`Http1Settings::max_body`]).
    pub fn declared_len(&self) -> Option<usize> {
        self.plain.declared
    }

    /// The value of the first header of each of `names` (lower-case, matched without regard to
    /// case), in one pass over the headers: a name is compared only where the lengths match.
    pub fn headers_named<const N: usize>(&self, names: [&str; N]) -> [Option<&[u8]>; N] {
        let mut found = [None; N];
        for (held, value) in self.raw_headers() {
            for (name, found) in names.iter().zip(found.iter_mut()) {
                if found.is_none()
                    && held.len() == name.len()
                    && held.eq_ignore_ascii_case(name.as_bytes())
                {
                    *found = Some(value);
                }
            }
        }
        found
    }

    /// Each header's name and value as they were read.
    fn raw_headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let message = &self.message[..];
        self.plain
            .headers
            .iter()
            .map(|&(name, value)| (&message[name.0..name.1], &message[value.0..value.1]))
    }

    /// Each header in order as the `http` crate's types, its value a slice of the bytes read.
    pub fn fields(
        &self,
    ) -> impl Iterator<Item = Result<(HeaderName, HeaderValue), InvalidHeader>> + '_ {
        self.plain.headers.iter().map(|&(name, value)| {
            let name = crate::header_name(&self.message[name.0..name.1])
                .map_err(|e| InvalidHeader(e.into()))?;
            let value = HeaderValue::from_maybe_shared(self.message.slice(value.0..value.1))
                .map_err(|e| InvalidHeader(e.into()))?;
            Ok((name, value))
        })
    }

    /// The body: what arrived of it, then the time-out's error if it did not arrive whole.
    pub fn into_body(self) -> Body {
        let body = self
            .message
            .slice(self.plain.head_len.min(self.message.len())..);
        match self.timed_out {
            Some(failed) => {
                let chunks = [Ok(body), Err(BoxError::from(failed))];
                Body::from_stream(tokio_stream::iter(chunks))
            }
            None => Body::from(body),
        }
    }

    /// The request as an `http::Request`, its headers in a map.
    pub fn into_http(self) -> Result<Request<Body>, InvalidHeader> {
        let mut headers = HeaderMap::with_capacity(self.plain.headers.len());
        for field in self.fields() {
            let (name, value) = field?;
            headers.append(name, value);
        }
        let method = self.plain.method.clone();
        let uri = self.uri.clone();
        let mut request = Request::new(self.into_body());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

/// Reads what `read` holds: a plain request's head, not enough yet, or something for hyper.
fn parse(read: &[u8], max_body: usize) -> Parsed {
    if read.starts_with(&H2_PREFACE[..read.len().min(H2_PREFACE.len())]) {
        // Nothing yet, or (the start of) the HTTP/2 preface.
        return if read.len() >= H2_PREFACE.len() {
            Parsed::Hyper
        } else {
            Parsed::Partial
        };
    }
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(read, &mut storage) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if read.len() < MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::Hyper,
    };
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - read.as_ptr() as usize;
        (start, start + part.len())
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Hyper;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    // HEAD answers carry no body and CONNECT tunnels: hyper's. So is any target but a path.
    if method == Method::HEAD || method == Method::CONNECT || !target.starts_with('/') {
        return Parsed::Hyper;
    }
    let mut body_len = None;
    let mut headers = Vec::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match (body_len, content_length(header.value)) {
                (None, Some(len)) if len <= max_body => body_len = Some(len),
                _ => return Parsed::Hyper,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
            || (name.eq_ignore_ascii_case(b"connection")
                && !header
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"keep-alive"))
        {
            return Parsed::Hyper;
        }
        headers.push((at(name), at(header.value)));
    }
    Parsed::Plain(Plain {
        method,
        target: at(target.as_bytes()),
        headers,
        head_len,
        declared: body_len,
    })
}

/// A `content-length` value: decimal digits only (RFC 9110 §8.6), no list, no sign.
fn content_length(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// How an answer's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (204, 304): the head as the router wrote it.
    None,
    Length(u64),
    Chunked,
}

/// What an answer's head is made of.
#[derive(Clone, Copy)]
struct Head<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
    /// [`PlainAnswer::lines`].
    lines: &'a [u8],
}

/// Writes the answer's head into `out`: the status line, the router's headers and lines,
/// `date` unless it set one, and the framing in place of any it set.
fn encode_head(out: &mut Vec<u8>, head: &Head<'_>, framing: Framing) {
    let Head {
        status,
        headers,
        lines,
    } = *head;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        let framing_header =
            name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING;
        if framing_header && framing != Framing::None {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(lines);
    if !headers.contains_key(http::header::DATE) && !has_line(lines, b"date") {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&http_date());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::None => {}
        Framing::Length(len) => {
            out.extend_from_slice(b"content-length: ");
            push_number(out, len, 10);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in `base` (10 or 16, lower-case digits) without the formatting machinery.
fn push_number(out: &mut Vec<u8>, mut n: u64, base: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n % base) as usize];
        n /= base;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Now as an HTTP date (RFC 9110 §5.6.7), formatted once a second per thread.
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let (at, date) = cached.get();
        if at == second {
            return date;
        }
        let mut formatted = [b' '; 29];
        let text = httpdate::fmt_http_date(now);
        let len = text.len().min(29);
        formatted[..len].copy_from_slice(&text.as_bytes()[..len]);
        cached.set((second, formatted));
        formatted
    })
}

/// Whether the header lines `lines` (names lower-case) have one named `name`. The line ends
/// are found by `memchr`, many bytes at a step: split byte by byte, a usual answer's half-dozen
/// lines cost about 400 instructions more when the name was last (bench/notes.md, "the
/// received metadata in the order it came").
fn has_line(lines: &[u8], name: &[u8]) -> bool {
    let named = |start: usize| {
        lines[start..]
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(b":"))
    };
    named(0) || memchr::memchr_iter(b'\n', lines).any(|end| named(end + 1))
}

/// Whether the answer's head asks to close the connection after it.
fn closes(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|value| has_token(value.as_bytes(), b"close"))
}

/// Whether a comma-separated header value holds `token` (any case). daprd's HTTP/1 client to
/// the app reads `connection` with it too.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

/// How a read ended.
enum Read {
    More,
    Closed,
    TimedOut,
    Stopped,
}

/// Reads more into `buf` by `deadline`; with `stopping`, gives up once it is set (an idle
/// connection at a stop). The flag is looked at on each poll: the connection's driver polls
/// it again right after setting the flag (`http::until_stopped`).
async fn read_more<T: AsyncRead + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    mut deadline: Pin<&mut Sleep>,
    stopping: Option<&AtomicBool>,
) -> io::Result<Read> {
    if buf.capacity() - buf.len() < READ_SIZE / 2 {
        buf.reserve(READ_SIZE);
    }
    poll_fn(|cx| {
        if stopping.is_some_and(|s| s.load(Ordering::Acquire)) {
            return Poll::Ready(Ok(Read::Stopped));
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(Read::Closed)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(Read::More)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Ok(Read::TimedOut))
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// [`crate::serve_plain_http`], with plain HTTP/1.1 requests served by this crate's own small server
/// and everything else by hyper's as [`crate::serve_http`] serves it ([`Http1Settings`]).
pub async fn serve_plain_http1_first<L, R, B>(
    server: &'static str,
    listener: L,
    router: R,
    limits: Limits,
    settings: Http1Settings,
    stop: CancellationToken,
) where
    L: Listener<Io: AsyncRead + AsyncWrite + Unpin>,
    R: PlainHandler<B>,
    B: ResponseBody,
{
    let connections = plain_connections(server, listener, limits, &stop);
    let builder = hyper_builder(limits);
    accept_until_stopped(server, connections, &stop, |io| {
        let (builder, router, stop) = (builder.clone(), router.clone(), stop.clone());
        async move {
            let stopping = Arc::new(AtomicBool::new(false));
            let connection =
                serve_connection(io, router, builder, settings, limits, Arc::clone(&stopping));
            until_stopped(server, connection, &stop, |_| {
                stopping.store(true, Ordering::Release);
            })
            .await;
        }
    })
    .await;
}

/// Serves `io` with [`parse`]'s plain requests until it closes, times out, stops or sends
/// something else, which hands it to hyper's server (`hyper`) with the bytes read so far.
/// `stopping` is set by a stop: an idle connection closes, a request being served is answered
/// and the connection closes after it; on hyper's side, its graceful shutdown.
pub(crate) async fn serve_connection<T, R, B>(
    mut io: T,
    router: R,
    hyper: auto::Builder<TokioExecutor>,
    settings: Http1Settings,
    limits: Limits,
    stopping: Arc<AtomicBool>,
) -> Result<(), BoxError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    R: PlainHandler<B>,
    B: ResponseBody,
{
    let mut service = router.clone();
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out = Vec::with_capacity(1024);
    let mut deadline = pin!(tokio::time::sleep(limits.header_read));
    let mut kept = KeptTarget::default();
    loop {
        deadline.as_mut().reset(Instant::now() + limits.header_read);
        let plain = loop {
            match parse(&buf, settings.max_body) {
                Parsed::Plain(plain) => break plain,
                Parsed::Hyper => {
                    return hand_over(io, buf.freeze(), router, hyper, &stopping).await;
                }
                Parsed::Partial => {}
            }
            let idle = buf.is_empty().then_some(&*stopping);
            match read_more(&mut io, &mut buf, deadline.as_mut(), idle).await? {
                Read::More => {}
                // Closed without an answer, as hyper's server closes at its header deadline.
                Read::Closed | Read::TimedOut | Read::Stopped => return Ok(()),
            }
        };
        let mut timed_out = false;
        if buf.len() < plain.len() {
            deadline.as_mut().reset(Instant::now() + settings.body_read);
            while buf.len() < plain.len() {
                match read_more(&mut io, &mut buf, deadline.as_mut(), None).await? {
                    Read::More => {}
                    Read::Closed | Read::Stopped => return Ok(()),
                    Read::TimedOut => {
                        timed_out = true;
                        break;
                    }
                }
            }
        }
        let message = buf.split_to(plain.len().min(buf.len())).freeze();
        let timed_out = timed_out.then(|| BodyTimedOut {
            len: plain.body_len(),
            within: settings.body_read,
        });
        let closes = timed_out.is_some();
        let request = match plain.request(message, timed_out, &mut kept) {
            Ok(request) => request,
            Err(message) => {
                let mut read = BytesMut::from(message);
                read.extend_from_slice(&buf);
                return hand_over(io, read.freeze(), router, hyper, &stopping).await;
            }
        };
        let answered = service.call_plain(request).await;
        let keep = answer(&mut io, answered, &mut out).await?;
        if !keep || closes || stopping.load(Ordering::Acquire) {
            io.shutdown().await?;
            return Ok(());
        }
    }
}

/// A router's answer to a plain request: its response, and header lines already encoded
/// (`name: value\r\n` each, valid names and values, names lower-case) that go after the
/// response's own headers. A router that has its headers as something other than a
/// `HeaderMap` (daprd's answer metadata) writes them here and skips building a map only to
/// have it written out again.
pub struct PlainAnswer<B> {
    pub response: Response<B>,
    pub lines: Vec<u8>,
}

/// An answer whose headers are all in its response.
impl<B> From<Response<B>> for PlainAnswer<B> {
    fn from(response: Response<B>) -> Self {
        PlainAnswer {
            response,
            lines: Vec::new(),
        }
    }
}

/// What the plain server needs of a router beyond [`HttpHandler`]: to take a request whose
/// body was read here ([`PlainRequest`]), and answer it as a [`PlainAnswer`].
pub trait PlainHandler<B>: HttpHandler<B> {
    type Plain: Future<Output = PlainAnswer<B>> + Send + 'static;

    fn call_plain(&mut self, request: PlainRequest) -> Self::Plain;
}

/// An axum router answers a plain request as any other, without lines.
impl PlainHandler<Body> for axum::Router {
    type Plain = Pin<Box<dyn Future<Output = PlainAnswer<Body>> + Send>>;

    fn call_plain(&mut self, request: PlainRequest) -> Self::Plain {
        let request = match request.into_http() {
            Ok(request) => request,
            Err(invalid) => return Box::pin(std::future::ready(bad_request(&invalid).into())),
        };
        let answer = Service::<Request<Body>>::call(self, request);
        Box::pin(async move {
            let response = answer.await.unwrap_or_else(|never| match never {});
            response.into()
        })
    }
}

/// `400 Bad Request` for a request the `http` crate refuses, saying why.
pub fn bad_request(invalid: &InvalidHeader) -> Response<Body> {
    let mut response = Response::new(Body::from(invalid.to_string()));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

/// Writes `answered` to `io`: one write when its body is ready with its head (then framed by
/// its length), else the head at once and the body chunked as it comes. Whether the connection
/// may serve another request after it.
async fn answer<T, B>(
    io: &mut T,
    answered: PlainAnswer<B>,
    out: &mut Vec<u8>,
) -> Result<bool, BoxError>
where
    T: AsyncWrite + Unpin,
    B: ResponseBody,
{
    let (parts, body) = answered.response.into_parts();
    let head = Head {
        status: parts.status,
        headers: &parts.headers,
        lines: &answered.lines,
    };
    let keep = !closes(&parts.headers);
    let mut body = pin!(body);
    out.clear();
    if head.status == StatusCode::NO_CONTENT || head.status == StatusCode::NOT_MODIFIED {
        encode_head(out, &head, Framing::None);
        io.write_all(out).await?;
        return Ok(keep);
    }
    if let Some(len) = body.size_hint().exact() {
        encode_head(out, &head, Framing::Length(len));
        let mut left = len;
        while let Some(data) = poll_fn(|cx| poll_data(body.as_mut(), cx)).await? {
            let Some(rest) = left.checked_sub(data.remaining() as u64) else {
                return Err("the answer's body is longer than its declared length".into());
            };
            left = rest;
            put(io, out, data).await?;
        }
        io.write_all(out).await?;
        return Ok(keep && left == 0);
    }
    // What is ready now (up to `MAX_READY`): nothing, the whole body, or a part of it. Nearly
    // always the whole body, in one frame, so the first is kept apart from any others.
    let (mut first, mut more) = (None, Vec::new());
    let (mut gathered, mut ended) = (0, false);
    while !ended && gathered < MAX_READY {
        match poll_fn(|cx| Poll::Ready(poll_data(body.as_mut(), cx))).await {
            Poll::Pending => break,
            Poll::Ready(data) => match data? {
                Some(data) => {
                    gathered += data.remaining();
                    match first {
                        None => first = Some(data),
                        Some(_) => more.push(data),
                    }
                }
                None => ended = true,
            },
        }
    }
    let ready = first.into_iter().chain(more);
    if ended {
        encode_head(out, &head, Framing::Length(gathered as u64));
        for data in ready {
            put(io, out, data).await?;
        }
        io.write_all(out).await?;
        return Ok(keep);
    }
    encode_head(out, &head, Framing::Chunked);
    for data in ready {
        put_chunk(io, out, data).await?;
    }
    loop {
        let next = match poll_fn(|cx| Poll::Ready(poll_data(body.as_mut(), cx))).await {
            Poll::Ready(next) => next?,
            Poll::Pending => {
                // Nothing more for now: what is gathered goes out while the body waits.
                io.write_all(out).await?;
                out.clear();
                poll_fn(|cx| poll_data(body.as_mut(), cx)).await?
            }
        };
        match next {
            Some(data) => put_chunk(io, out, data).await?,
            None => break,
        }
    }
    out.extend_from_slice(LAST_CHUNK);
    io.write_all(out).await?;
    Ok(keep)
}

/// The next data frame of `body`, its error boxed (trailers are left out: an HTTP/1 client
/// did not ask for them).
fn poll_data<B: ResponseBody>(
    mut body: Pin<&mut B>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Result<Option<B::Data>, BoxError>> {
    loop {
        match body.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(Ok(None)),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Poll::Ready(Ok(Some(data)));
                }
            }
        }
    }
}

/// Appends `data` to `out`, or writes `out` and then `data` when it is large.
async fn put<T: AsyncWrite + Unpin, D: Buf>(
    io: &mut T,
    out: &mut Vec<u8>,
    mut data: D,
) -> io::Result<()> {
    if data.remaining() > COPY_FRAME {
        io.write_all(out).await?;
        out.clear();
        return io.write_all_buf(&mut data).await;
    }
    while data.has_remaining() {
        let chunk = data.chunk();
        out.extend_from_slice(chunk);
        let n = chunk.len();
        data.advance(n);
    }
    if out.len() > COPY_FRAME {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// A chunk's size line (RFC 9112 §7.1): its length in hex, then CRLF. daprd's HTTP/1 client
/// frames a streamed request body to the app with it too.
pub fn push_chunk_head(out: &mut Vec<u8>, len: usize) {
    push_number(out, len as u64, 16);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body, with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// [`put`] as one chunk of a chunked body (RFC 9112 §7.1).
async fn put_chunk<T: AsyncWrite + Unpin, D: Buf>(
    io: &mut T,
    out: &mut Vec<u8>,
    data: D,
) -> io::Result<()> {
    if !data.has_remaining() {
        return Ok(());
    }
    push_chunk_head(out, data.remaining());
    put(io, out, data).await?;
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Serves the rest of the connection with hyper's server, `read` first.
async fn hand_over<T, R, B>(
    io: T,
    read: Bytes,
    router: R,
    hyper: auto::Builder<TokioExecutor>,
    stopping: &AtomicBool,
) -> Result<(), BoxError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    R: HttpHandler<B>,
    B: ResponseBody,
{
    let io = TokioIo::new(Rewound { read, io });
    let connection = hyper.serve_connection_with_upgrades(io, TowerToHyperService::new(router));
    let mut connection = pin!(connection);
    let mut shut = false;
    poll_fn(|cx| {
        if !shut && stopping.load(Ordering::Acquire) {
            shut = true;
            connection.as_mut().graceful_shutdown();
        }
        connection.as_mut().poll(cx)
    })
    .await
}

pin_project_lite::pin_project! {
    /// A connection whose first bytes were already read: they are read again first.
    struct Rewound<T> {
        read: Bytes,
        #[pin]
        io: T,
    }
}

impl<T: AsyncRead> AsyncRead for Rewound<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.read.is_empty() {
            return this.io.poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

write_through_io!(Rewound<T>, [T: AsyncWrite]);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use http_body_util::BodyExt;

    use super::*;

    const MAX_BODY: usize = 64 * 1024;
    const BOUND: Duration = Duration::from_secs(10);

    fn plain(read: &[u8]) -> Plain {
        match parse(read, MAX_BODY) {
            Parsed::Plain(plain) => plain,
            other => panic!("{other:?} for {}", String::from_utf8_lossy(read)),
        }
    }

    #[test]
    fn a_plain_request_is_read_in_place_with_its_body() {
        let read = Bytes::from_static(
            b"POST /v1.0/invoke/b/method/m?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhelloGET /next",
        );
        let plain = plain(&read);
        assert_eq!(plain.declared, Some(5));
        let len = plain.len();
        assert_eq!(len, read.len() - "GET /next".len());
        // A body still on its way: the request waits for it, its length known.
        let head_only = &read[..plain.head_len + 2];
        assert_eq!(self::plain(head_only).len(), len);
        let request = plain
            .request(read.slice(..len), None, &mut KeptTarget::default())
            .expect("a request");
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), "/v1.0/invoke/b/method/m");
        assert_eq!(request.uri().query(), Some("x=1"));
        assert_eq!(request.declared_len(), Some(5));
        // Read in place: names without regard to case, the first of several values.
        assert_eq!(
            request.headers_named(["x-a", "content-length"]),
            [Some(&b"1"[..]), Some(&b"5"[..])]
        );
        assert_eq!(
            request.headers_named(["x-b", "host", "x-a"]),
            [None, Some(&b"a"[..]), Some(&b"1"[..])]
        );
        let fields: Vec<_> = request.fields().map(Result::unwrap).collect();
        assert_eq!(fields.len(), 4);
        assert_eq!(
            (fields[2].0.as_str(), fields[2].1.as_bytes()),
            ("x-a", &b"1"[..])
        );
        // As an `http::Request`: every header in the map, in order, and the body.
        let request = request.into_http().expect("valid headers");
        assert_eq!(request.headers()["host"], "a");
        let both: Vec<_> = request.headers().get_all("x-a").iter().collect();
        assert_eq!(both, ["1", "2"]);
        let body = futures::executor::block_on(request.into_body().collect()).unwrap();
        assert_eq!(body.to_bytes(), "hello");
    }

    #[test]
    fn a_body_that_did_not_arrive_ends_in_its_time_out() {
        let read = Bytes::from_static(b"POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhe");
        let plain = plain(&read);
        let failed = BodyTimedOut {
            len: 5,
            within: Duration::from_secs(1),
        };
        let request = plain
            .request(read, Some(failed), &mut KeptTarget::default())
            .expect("a request");
        let body = futures::executor::block_on(request.into_body().collect());
        let error = body.expect_err("a body cut short fails");
        assert!(error.to_string().contains("did not arrive"), "{error}");
    }

    #[test]
    fn a_target_the_http_crate_refuses_is_handed_back() {
        let read = Bytes::from_static(b"GET /a HTTP/1.1\r\n\r\n");
        let mut plain = plain(&read);
        plain.target = (0, 0);
        assert_eq!(
            plain
                .request(read.clone(), None, &mut KeptTarget::default())
                .unwrap_err(),
            read
        );
    }

    #[test]
    fn a_request_without_a_length_has_no_body() {
        let plain = plain(b"GET /v1.0/healthz HTTP/1.1\r\nconnection: keep-alive\r\n\r\n");
        assert_eq!((plain.declared, plain.body_len()), (None, 0));
    }

    #[test]
    fn an_unfinished_head_or_preface_waits_for_more() {
        for read in [
            &b""[..],
            b"POST /v1.0/invoke/b/method/m HTTP/1.1\r\nhost: a\r\n",
            b"PRI * HTTP/2.0\r\n",
        ] {
            assert_eq!(parse(read, MAX_BODY), Parsed::Partial, "{read:?}");
        }
    }

    #[test]
    fn anything_but_a_plain_request_goes_to_hyper() {
        let too_many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        let too_long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        let over = format!(
            "POST / HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let hyper = [
            &H2_PREFACE[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 3,3\r\n\r\n",
            b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"HEAD / HTTP/1.1\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            too_many.as_bytes(),
            too_long.as_bytes(),
            over.as_bytes(),
        ];
        for read in hyper {
            let shown = String::from_utf8_lossy(&read[..read.len().min(60)]).into_owned();
            assert_eq!(parse(read, MAX_BODY), Parsed::Hyper, "{shown}");
        }
    }

    #[test]
    fn an_answer_head_has_the_routers_headers_and_lines_a_date_and_its_own_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        let encoded = |status, headers: &HeaderMap, lines: &[u8], framing| {
            let mut out = Vec::new();
            let head = Head {
                status,
                headers,
                lines,
            };
            encode_head(&mut out, &head, framing);
            String::from_utf8(out).expect("ascii")
        };
        let head = encoded(StatusCode::OK, &headers, b"x-a: 1\r\n", Framing::Length(5));
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("content-type: text/plain\r\n"), "{head}");
        assert!(head.contains("\r\nx-a: 1\r\n"), "{head}");
        assert!(head.contains("content-length: 5\r\n"), "{head}");
        assert!(!head.contains("999"), "{head}");
        assert!(
            head.contains("date: ") && head.contains(" GMT\r\n"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        // A date among the lines is the answer's only one.
        let dated = b"x-a: 1\r\ndate: Sun, 06 Dec 2026 00:00:00 GMT\r\n";
        let head = encoded(StatusCode::OK, &headers, dated, Framing::Length(5));
        assert_eq!(head.matches("date: ").count(), 1, "{head}");
        assert!(
            head.contains("date: Sun, 06 Dec 2026 00:00:00 GMT\r\n"),
            "{head}"
        );
        let undated = b"x-date: 1\r\nx-a: date:\r\n";
        let head = encoded(StatusCode::OK, &headers, undated, Framing::Length(5));
        assert_eq!(head.matches("\ndate: ").count(), 1, "{head}");
        let head = encoded(
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            b"",
            Framing::None,
        );
        assert!(!head.contains("content-length") && !head.contains("transfer-encoding"));
        let teapot = StatusCode::from_u16(599).expect("status");
        let head = encoded(teapot, &headers, b"", Framing::Chunked);
        assert!(head.starts_with("HTTP/1.1 599 \r\n"), "{head}");
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
    }

    #[test]
    fn a_kept_target_parses_as_a_new_one_would() {
        let long = format!("/{}", "x".repeat(LONGEST_KEPT_TARGET));
        let targets = [
            "/v1.0/invoke/a/method/m1",
            "/v1.0/invoke/a/method/m1",
            "/v1.0/invoke/a/method/m2",
            "/v1.0/invoke/b/method/m2",
            "/v1.0/invoke/b/method/m2?x=1",
            "/v1.0/invoke/b/method/m2?x=2",
            "/v1.0/invoke/b/method/m2?x=2",
            long.as_str(),
            long.as_str(),
            "/v1.0/invoke/a/method/m1",
            "http://host:80/v1.0/healthz",
            "/v1.0/invoke/a/method/m1",
        ];
        let mut kept = KeptTarget::default();
        for target in targets {
            // The target inside a larger message, as a request's head holds it.
            let message = Bytes::from(format!("GET {target} HTTP/1.1\r\n\r\n"));
            let at = (4, 4 + target.len());
            let uri = kept.parse(&message, at).expect("parses");
            assert_eq!(uri, Uri::try_from(target).expect("parses"), "{target}");
            assert_eq!(uri.to_string(), target);
        }
        assert!(
            kept.0
                .as_ref()
                .is_some_and(|(text, _)| text.len() <= LONGEST_KEPT_TARGET)
        );
        // A target the `http` crate refuses is refused every time, and not kept.
        for _ in 0..2 {
            let message = Bytes::from_static(b"/a b");
            assert_eq!(kept.parse(&message, (0, 4)), None);
        }
        assert_eq!(
            kept.0.as_ref().map(|(text, _)| &text[..]),
            Some(&b"/v1.0/invoke/a/method/m1"[..])
        );
    }

    #[test]
    fn a_line_is_found_by_its_name_wherever_it_is_and_nowhere_else() {
        let date = "date: Sun, 06 Dec 2026 00:00:00 GMT\r\n";
        for (lines, found) in [
            (format!("{date}x-a: 1\r\n"), true),
            (format!("x-a: 1\r\n{date}x-b: 2\r\n"), true),
            (format!("x-a: 1\r\nx-b: 2\r\n{date}"), true),
            ("date:\r\n".to_owned(), true),
            ("x-date: 1\r\nx-a: date: 2\r\n".to_owned(), false),
            ("dates: 1\r\nx-a: 1\r\ndat".to_owned(), false),
            ("x-a: 1\r\n".to_owned(), false),
            (String::new(), false),
        ] {
            assert_eq!(has_line(lines.as_bytes(), b"date"), found, "{lines:?}");
        }
    }

    #[test]
    fn numbers_are_written_in_decimal_and_hex_as_format_writes_them() {
        for n in [0, 1, 9, 10, 15, 16, 255, 1024, 65_535, u64::MAX] {
            let (mut decimal, mut hex) = (Vec::new(), Vec::new());
            push_number(&mut decimal, n, 10);
            push_number(&mut hex, n, 16);
            assert_eq!(decimal, n.to_string().into_bytes());
            assert_eq!(hex, format!("{n:x}").into_bytes());
        }
    }

    /// A server on loopback with routes that echo, stream on a signal, and report a body's error.
    struct Server {
        addr: std::net::SocketAddr,
        stop: CancellationToken,
        release: Arc<tokio::sync::Notify>,
        served: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(settings: Http1Settings) -> Server {
            let release = Arc::new(tokio::sync::Notify::new());
            let streamed = {
                let release = Arc::clone(&release);
                move || {
                    let release = Arc::clone(&release);
                    async move {
                        let later = futures_later(release);
                        Body::from_stream(later)
                    }
                }
            };
            let router = axum::Router::new()
                .route("/echo", post(|body: Bytes| async move { body }))
                .route(
                    "/read",
                    post(|body: Body| async move {
                        match axum::body::to_bytes(body, usize::MAX).await {
                            Ok(bytes) => format!("read {}", bytes.len()),
                            Err(e) => format!(
                                "failed: {}",
                                std::error::Error::source(&e)
                                    .map_or(e.to_string(), ToString::to_string)
                            ),
                        }
                    }),
                )
                .route("/stream", get(streamed))
                .route(
                    "/two",
                    get(|| async {
                        let parts = [Ok::<_, BoxError>("ab"), Ok("cd")];
                        Body::from_stream(futures::stream::iter(parts))
                    }),
                );
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let stop = CancellationToken::new();
            let served = tokio::spawn(crate::serve_plain_http1_first(
                "test",
                listener,
                router,
                Limits::DEFAULT,
                settings,
                stop.clone(),
            ));
            Server {
                addr,
                stop,
                release,
                served,
            }
        }

        async fn connect(&self) -> TcpStream {
            TcpStream::connect(self.addr).await.expect("connect")
        }
    }

    /// A body of `now `, then `later` once `release` is notified.
    fn futures_later(
        release: Arc<tokio::sync::Notify>,
    ) -> impl futures::Stream<Item = Result<Bytes, BoxError>> {
        use futures::StreamExt;
        let later = async move {
            release.notified().await;
            Ok(Bytes::from_static(b"later"))
        };
        futures::stream::iter([Ok(Bytes::from_static(b"now "))]).chain(futures::stream::once(later))
    }

    const SETTINGS: Http1Settings = Http1Settings {
        max_body: MAX_BODY,
        body_read: Duration::from_secs(60),
    };

    /// Reads from `client` until `text` has arrived (bounded): everything read.
    async fn read_until(client: &mut TcpStream, text: &str) -> String {
        let mut read = Vec::new();
        let reading = async {
            while !String::from_utf8_lossy(&read).contains(text) {
                let mut buf = [0u8; 4096];
                let n = client.read(&mut buf).await.expect("read");
                assert!(
                    n > 0,
                    "closed before {text:?}: {}",
                    String::from_utf8_lossy(&read)
                );
                read.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(BOUND, reading).await.expect("in time");
        String::from_utf8_lossy(&read).into_owned()
    }

    async fn until_closed(client: &mut TcpStream) -> String {
        let mut read = Vec::new();
        tokio::time::timeout(BOUND, client.read_to_end(&mut read))
            .await
            .expect("closed in time")
            .expect("read");
        String::from_utf8_lossy(&read).into_owned()
    }

    #[tokio::test]
    async fn pipelined_plain_requests_are_answered_in_order_each_with_its_length() {
        let server = Server::start(SETTINGS).await;
        let mut client = server.connect().await;
        client
            .write_all(
                b"POST /echo HTTP/1.1\r\ncontent-length: 3\r\n\r\none\
                POST /echo HTTP/1.1\r\ncontent-length: 3\r\n\r\ntwo",
            )
            .await
            .expect("write");
        let both = read_until(&mut client, "two").await;
        let first = both.find("one").expect("one");
        assert!(first < both.find("two").expect("two"), "{both}");
        assert_eq!(both.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{both}");
        assert_eq!(both.matches("content-length: 3\r\n").count(), 2, "{both}");
    }

    #[tokio::test]
    async fn after_a_request_for_hyper_the_connection_is_hypers_and_still_answers() {
        let server = Server::start(SETTINGS).await;
        let mut client = server.connect().await;
        client
            .write_all(b"POST /echo HTTP/1.1\r\ncontent-length: 5\r\n\r\nplainPOST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n7\r\nchunked\r\n0\r\n\r\nPOST /echo HTTP/1.1\r\ncontent-length: 5\r\n\r\nafter")
            .await
            .expect("write");
        let all = read_until(&mut client, "after").await;
        let order: Vec<_> = ["plain", "chunked", "after"]
            .iter()
            .map(|word| all.find(word).expect(word))
            .collect();
        assert!(order.is_sorted(), "{all}");
    }

    #[tokio::test]
    async fn an_http2_client_with_prior_knowledge_is_served_by_hyper() {
        let server = Server::start(SETTINGS).await;
        let io = TokioIo::new(server.connect().await);
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("handshake");
        tokio::spawn(connection);
        let request = Request::post("http://test/echo")
            .body(http_body_util_full("over h2"))
            .expect("request");
        let response = tokio::time::timeout(BOUND, sender.send_request(request))
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), http::Version::HTTP_2);
    }

    fn http_body_util_full(text: &'static str) -> Body {
        Body::from(text)
    }

    #[tokio::test]
    async fn an_answer_not_yet_ready_has_its_head_at_once_and_its_body_chunked() {
        let server = Server::start(SETTINGS).await;
        let mut client = server.connect().await;
        client
            .write_all(b"GET /stream HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let head = read_until(&mut client, "now ").await;
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(!head.contains("later"), "{head}");
        server.release.notify_one();
        let rest = read_until(&mut client, "0\r\n\r\n").await;
        assert!(rest.contains("5\r\nlater\r\n"), "{rest}");
    }

    #[tokio::test]
    async fn an_answer_whose_frames_are_all_ready_goes_with_its_length() {
        let server = Server::start(SETTINGS).await;
        let mut client = server.connect().await;
        client
            .write_all(b"GET /two HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let answer = read_until(&mut client, "abcd").await;
        assert!(answer.contains("content-length: 4\r\n"), "{answer}");
        assert!(!answer.contains("transfer-encoding"), "{answer}");
    }

    #[tokio::test]
    async fn a_body_that_stops_short_fails_at_its_deadline_and_the_connection_closes() {
        let settings = Http1Settings {
            body_read: Duration::from_millis(200),
            ..SETTINGS
        };
        let server = Server::start(settings).await;
        let mut client = server.connect().await;
        client
            .write_all(b"POST /read HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .expect("write");
        let answer = until_closed(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(
            answer.ends_with("failed: the body of 10 bytes did not arrive within 200ms"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_stop_closes_an_idle_connection_and_the_server_returns() {
        let server = Server::start(SETTINGS).await;
        let mut client = server.connect().await;
        client
            .write_all(b"POST /echo HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi")
            .await
            .expect("write");
        read_until(&mut client, "hi").await;
        server.stop.cancel();
        assert_eq!(until_closed(&mut client).await, "");
        tokio::time::timeout(BOUND, server.served)
            .await
            .expect("returns in time")
            .expect("task");
    }
}
