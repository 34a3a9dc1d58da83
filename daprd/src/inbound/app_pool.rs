//! Keep-alive HTTP/1.1 connections to a plaintext HTTP app, and the exchanges on them.
//!
//! Requests are written and answers read by `wire::http1` on the calling task. hyper's client
//! connection, used before, ran each exchange on a task of its own that the call reached
//! through channels, from a `HeaderMap` of the metadata; hyper_util's pooled client (which
//! `https` and `h2c` apps still use) adds a SipHash-keyed pool and layers of its own on top
//! (bench/notes.md, "HTTP/1 to the app without hyper's client").
//!
//! - A body that is all there when the call starts (nearly every call: a unary call's, or a
//!   small streamed one's) is written with the head in one write, then the answer is read. A
//!   streamed body is written by a task of its own while the answer is read, since an app may
//!   answer while it reads (an echo).
//! - The pool's policy is hyper_util's client's: at most `max_idle` idle connections, the most
//!   recently used first, each closed after `idle_timeout` unused.
//! - A reused connection the app has closed meanwhile is found at checkout (readable, with
//!   nothing to read) and skipped. One found closed by the exchange itself (before any answer)
//!   is replaced and the request sent again when its body was whole and either nothing could
//!   be written or its method is one a client may repeat (`GET`, `HEAD`, `OPTIONS`, `TRACE`),
//!   as Go's transport, upstream's, replays a request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, Stream, StreamExt};
use http::{HeaderValue, Method};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

use crate::wire::http1::{
    self, BodyFraming, ChunkedDecoder, Decoded, Http1Error, RequestFraming, RequestHead,
    ResponseHead,
};
use crate::wire::{BoxError, BoxStream};

/// A request body gathered up to this size, when it is all there at the start, goes out with
/// the head in one write; a longer one, or one still arriving, is streamed.
const WHOLE_BODY: usize = 64 * 1024;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 16 * 1024;

/// How the pool treats connections.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Idle connections kept at most; more are closed as they come back.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
}

/// Why a request got no answer from the app.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {address}: no connection within {seconds} s")]
    ConnectTimeout { address: String, seconds: u64 },
    #[error("request to {address}: {source}")]
    Request {
        address: String,
        #[source]
        source: ExchangeError,
    },
}

/// What failed in an exchange with the app.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Http(#[from] Http1Error),
    #[error("request body: {0}")]
    Body(#[source] BoxError),
}

/// Pooled connections to one app address.
pub struct AppPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Host and port to connect to (an IPv6 address without brackets).
    host: String,
    port: u16,
    /// `host:port` as a `Host` header (an IPv6 address in brackets), and for errors.
    authority: HeaderValue,
    settings: PoolSettings,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Oldest first: connections come back at the end and leave from the end.
    idle: Vec<Idle>,
    /// Whether a task is closing expired idle connections.
    reaping: bool,
}

#[derive(Debug)]
struct Idle {
    conn: Connection,
    since: Instant,
}

/// A connection between exchanges: its socket, and its read buffer (empty, kept for its room).
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    buf: BytesMut,
}

/// A request body as [`gather`] found it.
enum Gathered {
    /// All of it, and its length.
    Whole(Vec<Bytes>, u64),
    /// What was there; the rest is still to come.
    Started(Vec<Bytes>),
}

/// Takes what of `body` is there without waiting: the whole body when it has ended within
/// [`WHOLE_BODY`] bytes.
fn gather(body: &mut BoxStream<Result<Bytes, BoxError>>) -> Result<Gathered, BoxError> {
    let mut chunks = Vec::new();
    let mut len = 0u64;
    while len <= WHOLE_BODY as u64 {
        match body.next().now_or_never() {
            Some(Some(Ok(chunk))) => {
                len += chunk.len() as u64;
                if !chunk.is_empty() {
                    chunks.push(chunk);
                }
            }
            Some(Some(Err(e))) => return Err(e),
            Some(None) => return Ok(Gathered::Whole(chunks, len)),
            None => break,
        }
    }
    Ok(Gathered::Started(chunks))
}

impl AppPool {
    /// A pool for the app at `host` (a name or an IP address, an IPv6 one without brackets)
    /// and `port`.
    pub fn new(host: &str, port: u16, settings: PoolSettings) -> Result<Self, http::Error> {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(AppPool {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                port,
                authority: HeaderValue::try_from(authority)?,
                settings,
                state: Mutex::new(State {
                    idle: Vec::new(),
                    reaping: false,
                }),
            }),
        })
    }

    /// Sends the request `head` (without `host` and framing, which are added here) with `body`
    /// on an idle connection or a new one, and returns the answer's head and its body. The
    /// body is framed by its length when it is whole, else by `declared` (the caller's
    /// `content-length`) or chunked; a body whose length differs from `declared` fails. The
    /// connection goes back to the pool when the answer's body has been read to its end.
    pub async fn send(
        &self,
        verb: &Method,
        head: RequestHead,
        mut body: BoxStream<Result<Bytes, BoxError>>,
        declared: Option<u64>,
    ) -> Result<(ResponseHead, PooledBody), PoolError> {
        let host = self.inner.authority.as_bytes();
        match gather(&mut body).map_err(|e| self.failed(ExchangeError::Body(e)))? {
            Gathered::Whole(chunks, len) => {
                if let Some(declared) = declared
                    && declared != len
                {
                    let short = if len < declared {
                        "shorter than"
                    } else {
                        "longer than"
                    };
                    return Err(self.failed(Http1Error::BodyLength(short)));
                }
                let head = Bytes::from(head.finish(host, RequestFraming::Length(len)));
                let body = match <[Bytes; 1]>::try_from(chunks) {
                    Ok([chunk]) => chunk,
                    Err(chunks) => chunks.concat().into(),
                };
                self.exchange_whole(verb, head, body).await
            }
            Gathered::Started(chunks) => {
                let framing = declared.map_or(RequestFraming::Chunked, RequestFraming::Length);
                let head = head.finish(host, framing);
                self.exchange_streamed(verb, head, chunks, body, framing)
                    .await
            }
        }
    }

    /// An exchange whose request is all here, written in one `writev`: on a reused connection
    /// the app closed, sent again on another when that is safe (see the module's comment).
    async fn exchange_whole(
        &self,
        verb: &Method,
        head: Bytes,
        body: Bytes,
    ) -> Result<(ResponseHead, PooledBody), PoolError> {
        let replayable = matches!(
            *verb,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        // Each pass takes another idle connection or opens one, and a new connection's
        // failure ends the loop: at most `max_idle` + 1 passes.
        loop {
            let (mut conn, reused) = self.connection().await?;
            let mut request = head.clone().chain(body.clone());
            if let Err(e) = conn.stream.write_all_buf(&mut request).await {
                if reused {
                    continue;
                }
                return Err(self.failed(e));
            }
            let Connection { stream, mut buf } = conn;
            let mut reader = Reader::Whole(stream);
            match read_head(&mut reader, &mut buf, verb).await {
                Ok(head) => {
                    let body = PooledBody::new(reader, buf, &head, None, &self.inner);
                    return Ok((head, body));
                }
                Err(Unanswered::Nothing(_)) if reused && replayable => continue,
                Err(Unanswered::Nothing(e) | Unanswered::Partly(e)) => {
                    return Err(self.failed(e));
                }
            }
        }
    }

    /// An exchange whose request body is still arriving: written by a task of its own (which
    /// ends with the call) while the answer is read.
    async fn exchange_streamed(
        &self,
        verb: &Method,
        head: Vec<u8>,
        chunks: Vec<Bytes>,
        body: BoxStream<Result<Bytes, BoxError>>,
        framing: RequestFraming,
    ) -> Result<(ResponseHead, PooledBody), PoolError> {
        let (Connection { stream, mut buf }, _) = self.connection().await?;
        let (read, write) = stream.into_split();
        let mut pump = Pump(tokio::spawn(write_body(write, head, chunks, body, framing)));
        let mut reader = Reader::Split(read);
        let mut written = None;
        let answered = {
            let reading = read_head(&mut reader, &mut buf, verb);
            tokio::pin!(reading);
            loop {
                tokio::select! {
                    head = &mut reading => break head,
                    done = &mut pump, if written.is_none() => match done {
                        Ok(write) => written = Some(write),
                        Err(e) => return Err(self.failed(e)),
                    },
                }
            }
        };
        match answered {
            Ok(head) => {
                let writing = match written {
                    Some(write) => Writing::Done(write),
                    None => Writing::Pumping(pump),
                };
                let body = PooledBody::new(reader, buf, &head, Some(writing), &self.inner);
                Ok((head, body))
            }
            Err(Unanswered::Nothing(e) | Unanswered::Partly(e)) => Err(self.failed(e)),
        }
    }

    /// An idle connection (true: reused) or a new one.
    async fn connection(&self) -> Result<(Connection, bool), PoolError> {
        match self.checkout() {
            Some(conn) => Ok((conn, true)),
            None => Ok((self.connect().await?, false)),
        }
    }

    /// The most recently used idle connection that is still open. One the app has closed is
    /// readable with nothing to read; one with bytes waiting has an answer nobody asked for.
    /// Neither is used.
    fn checkout(&self) -> Option<Connection> {
        loop {
            let idle = self.inner.state.lock().ok()?.idle.pop()?;
            if idle.since.elapsed() >= self.inner.settings.idle_timeout {
                continue;
            }
            match idle.conn.stream.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(idle.conn),
                _ => continue,
            }
        }
    }

    async fn connect(&self) -> Result<Connection, PoolError> {
        let inner = &self.inner;
        let connect = TcpStream::connect((inner.host.as_str(), inner.port));
        let stream = match tokio::time::timeout(inner.settings.connect_timeout, connect).await {
            Err(_) => {
                return Err(PoolError::ConnectTimeout {
                    address: inner.address(),
                    seconds: inner.settings.connect_timeout.as_secs(),
                });
            }
            Ok(Err(source)) => {
                return Err(PoolError::Connect {
                    address: inner.address(),
                    source,
                });
            }
            Ok(Ok(stream)) => stream,
        };
        // Requests and answers are small and come one at a time: no Nagle delay.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "app connection: TCP_NODELAY not set");
        }
        Ok(Connection {
            stream,
            buf: BytesMut::with_capacity(READ_SIZE),
        })
    }

    fn failed(&self, source: impl Into<ExchangeError>) -> PoolError {
        PoolError::Request {
            address: self.inner.address(),
            source: source.into(),
        }
    }
}

/// Why no answer head came: before any byte of it (the app may have closed an idle
/// connection), or after part of it.
enum Unanswered {
    Nothing(ExchangeError),
    Partly(ExchangeError),
}

/// Reads an answer head into `buf` and takes it off.
async fn read_head(
    reader: &mut Reader,
    buf: &mut BytesMut,
    verb: &Method,
) -> Result<ResponseHead, Unanswered> {
    let mut any = false;
    loop {
        if any {
            match http1::parse_response(buf, verb) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(Unanswered::Partly(e.into())),
            }
        }
        buf.reserve(READ_SIZE);
        let read = std::future::poll_fn(|cx| reader.poll_read_buf(cx, buf)).await;
        match read {
            Ok(0) if !any => {
                return Err(Unanswered::Nothing(Http1Error::ClosedBeforeHead.into()));
            }
            Ok(0) => return Err(Unanswered::Partly(Http1Error::ClosedBeforeHead.into())),
            Ok(_) => any = true,
            Err(e) if !any => return Err(Unanswered::Nothing(e.into())),
            Err(e) => return Err(Unanswered::Partly(e.into())),
        }
    }
}

/// Writes a streamed request: the head, what was gathered, the rest as it comes, framed as
/// `framing` says. Hands back the write half once the last byte is out.
async fn write_body(
    mut write: OwnedWriteHalf,
    head: Vec<u8>,
    chunks: Vec<Bytes>,
    mut body: BoxStream<Result<Bytes, BoxError>>,
    framing: RequestFraming,
) -> Result<OwnedWriteHalf, ExchangeError> {
    write.write_all(&head).await?;
    let mut sent = 0u64;
    let mut gathered = chunks.into_iter();
    loop {
        let chunk = match gathered.next() {
            Some(chunk) => chunk,
            None => match body.next().await {
                Some(chunk) => chunk.map_err(ExchangeError::Body)?,
                None => break,
            },
        };
        if chunk.is_empty() {
            continue;
        }
        sent += chunk.len() as u64;
        match framing {
            RequestFraming::Length(declared) if sent > declared => {
                return Err(Http1Error::BodyLength("longer than").into());
            }
            RequestFraming::Length(_) => write.write_all(&chunk).await?,
            RequestFraming::Chunked => {
                let mut framed = Bytes::from(http1::chunk_head(chunk.len()))
                    .chain(chunk)
                    .chain(&b"\r\n"[..]);
                write.write_all_buf(&mut framed).await?;
            }
        }
    }
    match framing {
        RequestFraming::Length(declared) if sent < declared => {
            Err(Http1Error::BodyLength("shorter than").into())
        }
        RequestFraming::Length(_) => Ok(write),
        RequestFraming::Chunked => {
            write.write_all(http1::LAST_CHUNK).await?;
            Ok(write)
        }
    }
}

/// The task writing a streamed request body; aborted if the exchange ends first.
struct Pump(JoinHandle<Result<OwnedWriteHalf, ExchangeError>>);

impl Drop for Pump {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The write half once the body is out, or why it is not (a task that panicked is an IO
/// error).
impl Future for Pump {
    type Output = Result<OwnedWriteHalf, ExchangeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(Pin::new(&mut self.0).poll(cx)) {
            Ok(written) => written,
            Err(e) => Err(std::io::Error::other(e).into()),
        })
    }
}

/// The write side of a streamed exchange.
enum Writing {
    Pumping(Pump),
    Done(OwnedWriteHalf),
}

/// The read side of an exchange: the whole socket, or its read half while a task writes.
#[derive(Debug)]
enum Reader {
    Whole(TcpStream),
    Split(OwnedReadHalf),
}

impl Reader {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<std::io::Result<usize>> {
        match self {
            Reader::Whole(stream) => tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf),
            Reader::Split(read) => tokio_util::io::poll_read_buf(Pin::new(read), cx, buf),
        }
    }
}

impl Inner {
    fn address(&self) -> String {
        String::from_utf8_lossy(self.authority.as_bytes()).into_owned()
    }

    /// Keeps a connection whose exchange is over for the next request, unless the pool is
    /// full; starts the task that closes expired ones.
    fn put(self: &Arc<Self>, conn: Connection) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.idle.len() >= self.settings.max_idle {
            return;
        }
        state.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        if !state.reaping {
            state.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self), self.settings.idle_timeout));
        }
    }
}

/// Closes idle connections as they expire, waking when the oldest one does; ends when none are
/// left (the next one back starts another) or the pool is gone.
async fn reap(pool: Weak<Inner>, idle_timeout: Duration) {
    let mut wait = idle_timeout;
    loop {
        tokio::time::sleep(wait).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let Ok(mut state) = pool.state.lock() else {
            return;
        };
        let now = Instant::now();
        state
            .idle
            .retain(|idle| now.duration_since(idle.since) < idle_timeout);
        match state.idle.first() {
            Some(oldest) => wait = idle_timeout.saturating_sub(now.duration_since(oldest.since)),
            None => {
                state.reaping = false;
                return;
            }
        }
    }
}

/// How much of an answer's body is left.
#[derive(Debug)]
enum Remaining {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    /// Read to its end (or failed): nothing more comes.
    Done,
}

/// An answer's body, read from its connection. At its end the connection goes back to the
/// pool, if the answer allows it and the request was written in full. Dropped before its end
/// (or failed), it takes the connection with it: HTTP/1.1 cannot skip the rest of a body.
pub struct PooledBody {
    reader: Option<Reader>,
    buf: BytesMut,
    remaining: Remaining,
    keep_alive: bool,
    /// A streamed request's writer; `None` for a request written whole.
    writing: Option<Writing>,
    /// Bytes taken at the start, handed out first.
    ready: Option<Bytes>,
    pool: Weak<Inner>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("remaining", &self.remaining)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl PooledBody {
    fn new(
        reader: Reader,
        buf: BytesMut,
        head: &ResponseHead,
        writing: Option<Writing>,
        pool: &Arc<Inner>,
    ) -> Self {
        let remaining = match head.framing {
            BodyFraming::Empty => Remaining::Length(0),
            BodyFraming::Length(len) => Remaining::Length(len),
            BodyFraming::Chunked => Remaining::Chunked(ChunkedDecoder::default()),
            BodyFraming::UntilClose => Remaining::UntilClose,
        };
        let mut body = PooledBody {
            reader: Some(reader),
            buf,
            remaining,
            keep_alive: head.keep_alive,
            writing,
            ready: None,
            pool: Arc::downgrade(pool),
        };
        // A body that came with its head (most do) is taken now, and the connection is free
        // before the body is read.
        if let Remaining::Length(len) = body.remaining
            && body.buf.len() as u64 >= len
        {
            let len = len as usize;
            body.ready = (len > 0).then(|| body.buf.split_to(len).freeze());
            body.remaining = Remaining::Done;
            body.finish();
        }
        body
    }

    /// The body's end: the connection goes back to the pool if it can carry another exchange.
    fn finish(&mut self) {
        self.remaining = Remaining::Done;
        let Some(reader) = self.reader.take() else {
            return;
        };
        if !self.keep_alive || !self.buf.is_empty() {
            return;
        }
        let stream = match (reader, self.writing.take()) {
            (Reader::Whole(stream), None) => stream,
            (Reader::Split(read), Some(Writing::Done(write))) => match read.reunite(write) {
                Ok(stream) => stream,
                Err(_) => return,
            },
            // The request is still being written (the app answered before reading it all).
            _ => return,
        };
        if let Some(pool) = self.pool.upgrade() {
            pool.put(Connection {
                stream,
                buf: std::mem::take(&mut self.buf),
            });
        }
    }

    /// A failure: the connection is dropped.
    fn fail(&mut self, error: impl Into<ExchangeError>) -> Poll<Option<Result<Bytes, BoxError>>> {
        self.remaining = Remaining::Done;
        self.reader = None;
        self.writing = None;
        Poll::Ready(Some(Err(Box::new(error.into()))))
    }

    /// The streamed request's writer, checked: its failure is the body's.
    fn poll_writing(&mut self, cx: &mut Context<'_>) -> Result<(), ExchangeError> {
        if let Some(Writing::Pumping(pump)) = &mut self.writing
            && let Poll::Ready(done) = Pin::new(pump).poll(cx)
        {
            self.writing = Some(Writing::Done(done?));
        }
        Ok(())
    }
}

impl Stream for PooledBody {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(ready) = this.ready.take() {
            return Poll::Ready(Some(Ok(ready)));
        }
        loop {
            if matches!(this.remaining, Remaining::Done) {
                return Poll::Ready(None);
            }
            if let Err(e) = this.poll_writing(cx) {
                return this.fail(e);
            }
            match &mut this.remaining {
                // Never 0 here: `new` finishes a body whose bytes are all there (an empty one
                // among them), and the arm below finishes one when its last bytes are taken.
                Remaining::Length(left) if !this.buf.is_empty() => {
                    let take =
                        usize::try_from(*left).map_or(this.buf.len(), |l| l.min(this.buf.len()));
                    *left -= take as u64;
                    let data = this.buf.split_to(take).freeze();
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Remaining::Chunked(decoder) => match decoder.decode(&mut this.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::Incomplete) => {}
                    Err(e) => return this.fail(e),
                },
                Remaining::UntilClose if !this.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(this.buf.split().freeze())));
                }
                _ => {}
            }
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            this.buf.reserve(READ_SIZE);
            match ready!(reader.poll_read_buf(cx, &mut this.buf)) {
                Ok(0) if matches!(this.remaining, Remaining::UntilClose) => {
                    this.remaining = Remaining::Done;
                    this.reader = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Http1Error::ClosedInBody),
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{Request, Response, header};
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// An app on loopback (hyper's HTTP/1.1 server): `/hold` answers with a first chunk and
    /// ends its body when the test drops the sender kept in `held`; `/echo` streams the
    /// request body back as it reads it; anything else answers with its `Host` header.
    /// `keep_alive: false` closes each connection after its answer. Counts the connections
    /// it accepted, and those that ended.
    struct App {
        port: u16,
        accepted: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
        held: Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>,
    }

    type Answer = http_body_util::combinators::BoxBody<Bytes, Infallible>;

    async fn answer(
        request: Request<Incoming>,
        held: Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>,
    ) -> Result<Response<Answer>, Infallible> {
        let body = match request.uri().path() {
            "/hold" => {
                let (send, receive) = mpsc::channel::<Bytes>(1);
                send.try_send(Bytes::from_static(b"first")).expect("room");
                held.lock().expect("lock").push(send);
                let frames = tokio_stream::wrappers::ReceiverStream::new(receive)
                    .map(|data| Ok::<_, Infallible>(Frame::data(data)));
                BodyExt::boxed(StreamBody::new(frames))
            }
            "/echo" => {
                let frames = request
                    .into_body()
                    .into_data_stream()
                    .filter_map(|chunk| async {
                        chunk
                            .ok()
                            .map(|data| Ok::<_, Infallible>(Frame::data(data)))
                    });
                BodyExt::boxed(StreamBody::new(frames))
            }
            _ => {
                let host = request.headers().get(header::HOST).cloned();
                let host = host.map(|h| Bytes::copy_from_slice(h.as_bytes()));
                BodyExt::boxed(Full::new(host.unwrap_or_default()))
            }
        };
        Ok(Response::new(body))
    }

    async fn app(keep_alive: bool) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (a, e, h) = (Arc::clone(&accepted), Arc::clone(&ended), Arc::clone(&held));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (e, h) = (Arc::clone(&e), Arc::clone(&h));
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| answer(request, Arc::clone(&h)));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        App {
            port,
            accepted,
            ended,
            held,
        }
    }

    fn pool(port: u16, max_idle: usize, idle_timeout: Duration) -> AppPool {
        let settings = PoolSettings {
            max_idle,
            idle_timeout,
            connect_timeout: Duration::from_secs(5),
        };
        AppPool::new("127.0.0.1", port, settings).expect("pool")
    }

    fn empty() -> BoxStream<Result<Bytes, BoxError>> {
        Box::pin(futures::stream::empty())
    }

    async fn send(
        pool: &AppPool,
        verb: Method,
        path: &str,
        body: BoxStream<Result<Bytes, BoxError>>,
    ) -> Result<(ResponseHead, PooledBody), PoolError> {
        let head = RequestHead::new(&verb, path, None).expect("head");
        pool.send(&verb, head, body, None).await
    }

    async fn read_all(mut body: PooledBody) -> Result<Bytes, BoxError> {
        let mut all = BytesMut::new();
        while let Some(chunk) = body.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all.freeze())
    }

    /// Sends a GET and reads the answer to its end.
    async fn call(pool: &AppPool, path: &str) -> Bytes {
        let (head, body) = send(pool, Method::GET, path, empty())
            .await
            .expect("an answer");
        assert!(head.status.is_success());
        read_all(body).await.expect("a body")
    }

    fn idle(pool: &AppPool) -> usize {
        pool.inner.state.lock().expect("lock").idle.len()
    }

    /// Waits, at most 5 s, until `count` reaches `want`.
    async fn until(count: &AtomicUsize, want: usize) {
        let wait = async {
            while count.load(Ordering::SeqCst) < want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap_or_else(|_| {
                panic!("count stayed at {} < {want}", count.load(Ordering::SeqCst))
            });
    }

    #[tokio::test]
    async fn requests_one_after_another_share_one_connection_and_carry_the_host() {
        let app = app(true).await;
        let pool = pool(app.port, 64, Duration::from_secs(90));
        for _ in 0..5 {
            let host = call(&pool, "/host").await;
            assert_eq!(host, format!("127.0.0.1:{}", app.port).as_bytes());
        }
        assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle(&pool), 1);
    }

    #[tokio::test]
    async fn an_app_that_closes_each_connection_is_still_answered() {
        let app = app(false).await;
        let pool = pool(app.port, 64, Duration::from_secs(90));
        for _ in 0..5 {
            call(&pool, "/").await;
        }
        assert_eq!(app.accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_along() {
        let app = app(true).await;
        let pool = pool(app.port, 64, Duration::from_secs(90));
        let (_, mut body) = send(&pool, Method::GET, "/hold", empty())
            .await
            .expect("an answer");
        let first = body.next().await.expect("a chunk").expect("data");
        assert_eq!(first, &b"first"[..]);
        drop(body);
        until(&app.ended, 1).await;
        assert_eq!(idle(&pool), 0);
        call(&pool, "/").await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn no_more_than_max_idle_connections_are_kept() {
        let app = app(true).await;
        let pool = pool(app.port, 2, Duration::from_secs(90));
        // Three answers held at once need three connections.
        let mut bodies = Vec::new();
        for _ in 0..3 {
            bodies.push(
                send(&pool, Method::GET, "/hold", empty())
                    .await
                    .expect("an answer")
                    .1,
            );
        }
        app.held.lock().expect("lock").clear();
        for body in bodies {
            assert_eq!(read_all(body).await.expect("a body"), &b"first"[..]);
        }
        assert_eq!(app.accepted.load(Ordering::SeqCst), 3);
        assert_eq!(idle(&pool), 2);
        until(&app.ended, 1).await;
    }

    #[tokio::test]
    async fn idle_connections_are_closed_when_they_expire() {
        let app = app(true).await;
        let pool = pool(app.port, 64, Duration::from_millis(100));
        call(&pool, "/").await;
        assert_eq!(idle(&pool), 1);
        // The app sees the connection end without another request.
        until(&app.ended, 1).await;
        assert_eq!(idle(&pool), 0);
        // And the next request opens a new one.
        call(&pool, "/").await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_app_that_is_not_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        let pool = pool(port, 64, Duration::from_secs(90));
        let error = send(&pool, Method::GET, "/", empty())
            .await
            .expect_err("no app");
        assert!(matches!(error, PoolError::Connect { .. }), "{error}");
        assert!(
            error.to_string().contains(&format!("127.0.0.1:{port}")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_streamed_body_reaches_an_app_that_answers_while_it_reads() {
        let app = app(true).await;
        let pool = pool(app.port, 64, Duration::from_secs(90));
        let (chunks, receive) = mpsc::channel::<Result<Bytes, BoxError>>(1);
        let body: BoxStream<Result<Bytes, BoxError>> =
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(receive));
        chunks
            .send(Ok(Bytes::from_static(b"one")))
            .await
            .expect("sent");
        let (head, mut answer) = tokio::time::timeout(
            Duration::from_secs(5),
            send(&pool, Method::POST, "/echo", body),
        )
        .await
        .expect("the head comes while the body is still open")
        .expect("an answer");
        assert!(head.status.is_success());
        // Each chunk comes back before the next one is sent: request and answer flow at once.
        for chunk in [&b"one"[..], b"two", b"three"] {
            if chunk != b"one" {
                chunks
                    .send(Ok(Bytes::copy_from_slice(chunk)))
                    .await
                    .expect("sent");
            }
            let echoed = tokio::time::timeout(Duration::from_secs(5), answer.next())
                .await
                .expect("echoed within 5 s")
                .expect("a chunk")
                .expect("data");
            assert_eq!(echoed, chunk);
        }
        drop(chunks);
        assert!(
            answer.next().await.is_none(),
            "the answer ends with the request"
        );
        // Written and read in full: the connection is reused.
        call(&pool, "/").await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_or_mismeasured_request_body_fails_the_call() {
        let app = app(true).await;
        let pool = pool(app.port, 64, Duration::from_secs(90));
        let failing: BoxStream<Result<Bytes, BoxError>> = Box::pin(futures::stream::iter([
            Ok(Bytes::from_static(b"part")),
            Err(BoxError::from("caller went away")),
        ]));
        let error = send(&pool, Method::POST, "/", failing)
            .await
            .expect_err("the body failed");
        assert!(error.to_string().contains("caller went away"), "{error}");
        let head = RequestHead::new(&Method::POST, "/", None).expect("head");
        let short: BoxStream<Result<Bytes, BoxError>> =
            Box::pin(futures::stream::iter([Ok(Bytes::from_static(b"abc"))]));
        let error = pool
            .send(&Method::POST, head, short, Some(10))
            .await
            .expect_err("3 bytes declared as 10");
        assert!(error.to_string().contains("shorter than"), "{error}");
    }

    /// An app that reads one request per connection, answers it with `Content-Length: 2` and
    /// `ok`, and then closes the connection without a word at the next request.
    async fn answers_once_per_connection() -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    // The next request is read and left unanswered.
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        (port, accepted)
    }

    #[tokio::test]
    async fn a_get_on_a_connection_the_app_dropped_goes_out_again_and_a_post_fails() {
        let (port, accepted) = answers_once_per_connection().await;
        let pool = pool(port, 64, Duration::from_secs(90));
        assert_eq!(call(&pool, "/").await, &b"ok"[..]);
        // The idle connection looks alive; the app closes it on the next request.
        assert_eq!(call(&pool, "/").await, &b"ok"[..]);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let error = send(&pool, Method::POST, "/", empty())
            .await
            .expect_err("a POST is not sent twice");
        assert!(
            error.to_string().contains("closed the connection"),
            "{error}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
