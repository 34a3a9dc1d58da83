//! gRPC's length-prefixed messages over an HTTP/2 body, read ([`Messages`]) and written
//! ([`Answer`]) for the internal API's two methods without tonic's codec stack: tonic's server
//! and its `Streaming` cost about 2,600 instructions per call on the callee and 2,900 on the
//! caller around the decoder and encoder they call, and six allocations (bench/notes.md). The framing is gRPC over HTTP/2's
//! (`doc/PROTOCOL-HTTP2.md` in grpc/grpc): a compressed-flag byte, a 4-byte big-endian length,
//! the message; the call's status in the trailers. The errors are the ones tonic gives for the
//! same input.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::HeaderMap;
use http_body::{Body, Frame};
use tonic::Status;

use super::{BoxError, Received, Sent, frame_head};

/// The message prefix: the compressed flag and the length.
const PREFIX: usize = 5;

/// Room for a message's metadata and own fields beside the body it carries: hyper bounds a
/// request's head (whence the metadata) well below this, so a call whose body is at
/// `--max-body-size` still fits.
const METADATA_ROOM: usize = 1 << 20;

/// The largest message the internal API reads, in either direction, for a sidecar whose
/// bodies are bounded by `max_body_size`. Upstream bounds the internal server and its
/// clients at exactly `--max-body-size` (`grpc.MaxRecvMsgSize` in `pkg/api/grpc/server.go`,
/// `MaxCallRecvMsgSize` in `pkg/messaging/direct_messaging.go`), which refuses a unary call
/// whose body is at the limit for its metadata's bytes; ours leaves [`METADATA_ROOM`]
/// (docs/limits.md).
pub fn message_limit(max_body_size: usize) -> usize {
    max_body_size.saturating_add(METADATA_ROOM)
}

/// The caller's `grpc-timeout` (at most eight digits and a unit, per gRPC over HTTP/2):
/// the handler gets that long to answer, as grpc-go's server cancels a call's context at its
/// deadline. A value that does not parse is ignored, as tonic's server ignores it.
/// See [`within_deadline`].
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = dapr_serve::field(headers, &super::names::header::GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = value.split_last().map(|(unit, digits)| (digits, *unit))?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `answer`, or `DeadlineExceeded` "timeout expired" once `deadline` (a call's
/// [`grpc_timeout`]) passes without an answer head: grpc-go's server cancels a call's context
/// at its deadline, and upstream's handlers then answer with the context's error. Only the head
/// is bounded, as grpc-go's deadline ends at the handler's return; a streamed answer's body is
/// bounded by the client's own deadline.
///
/// A plain function over `futures`' combinators, not an `async fn`: an `async fn` keeps its
/// argument and the `Timeout` around it side by side, twice the size of the handler's future,
/// and every box or move of it copied both (5 KiB per call on the callee, bench/notes.md).
pub fn within_deadline<F>(
    deadline: Option<Duration>,
    answer: F,
) -> impl Future<Output = http::Response<tonic::body::Body>>
where
    F: Future<Output = http::Response<tonic::body::Body>>,
{
    use futures::FutureExt;
    use futures::future::Either;
    match deadline {
        None => Either::Left(answer),
        Some(deadline) => Either::Right(tokio::time::timeout(deadline, answer).map(|answered| {
            answered.unwrap_or_else(|_| Status::deadline_exceeded("timeout expired").into_http())
        })),
    }
}

/// What reads a stream's messages one at a time: tonic's `Streaming` (calls that go through a
/// tonic channel) or [`Messages`].
pub trait MessageStream<M>: Send + 'static {
    fn message(&mut self) -> impl Future<Output = Result<Option<M>, Status>> + Send;
}

impl<M: Send + 'static> MessageStream<M> for tonic::Streaming<M> {
    fn message(&mut self) -> impl Future<Output = Result<Option<M>, Status>> + Send {
        tonic::Streaming::message(self)
    }
}

/// A request body a gRPC server hands its routes, read by [`Messages`] where it is: the
/// server's own (`dapr_serve::H2Body`, counted by the metrics layer) or tonic's.
pub trait RequestBody: Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static {}

impl<B> RequestBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static
{}

/// The messages of a request or response body, each decoded by [`Received`] from a slice of
/// what arrived: a message that came in one DATA frame is not copied.
pub struct Messages<B, M> {
    body: B,
    /// The last DATA frame's bytes not yet read, when nothing was left over before it.
    ready: Bytes,
    /// A message that spans DATA frames, gathered.
    partial: BytesMut,
    /// A response's HTTP status: its trailers (or head) carry the call's status. `None` for a
    /// request.
    response: Option<http::StatusCode>,
    /// The largest message read: a longer one is refused at its prefix, before its bytes are
    /// gathered.
    limit: usize,
    /// The bytes of the messages read so far, without their prefixes (what upstream's metrics
    /// count as a message's size).
    received: usize,
    ended: bool,
    _message: PhantomData<fn() -> M>,
}

impl<B, M> Messages<B, M>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    M: Received,
{
    /// A request's messages (the callee's side), each at most `limit` bytes: the body's end
    /// is the stream's.
    pub fn request(body: B, limit: usize) -> Self {
        Self::new(body, None, limit)
    }

    /// A response's messages (the caller's side), each at most `limit` bytes: the stream ends
    /// with the status its trailers carry, as tonic infers it from them and `status`.
    pub fn response(body: B, status: http::StatusCode, limit: usize) -> Self {
        Self::new(body, Some(status), limit)
    }

    fn new(body: B, response: Option<http::StatusCode>, limit: usize) -> Self {
        Messages {
            body,
            ready: Bytes::new(),
            partial: BytesMut::new(),
            response,
            limit,
            received: 0,
            ended: false,
            _message: PhantomData,
        }
    }

    /// The next message, `None` at the stream's end.
    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<M>, Status>> {
        loop {
            if let Some(message) = self.next_complete()? {
                self.received += message.len();
                return Poll::Ready(
                    M::decode(message)
                        .map(Some)
                        .map_err(|e| Status::internal(e.to_string())),
                );
            }
            if self.ended {
                return Poll::Ready(self.end(None));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.push(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.ended = true;
                            return Poll::Ready(self.end(Some(&trailers)));
                        }
                    }
                },
                Some(Err(e)) => {
                    self.ended = true;
                    return Poll::Ready(Err(Status::from_error(e.into())));
                }
                None => self.ended = true,
            }
        }
    }

    /// The bytes of the messages read so far, without their 5-byte prefixes.
    pub fn received(&self) -> usize {
        self.received
    }

    fn push(&mut self, data: Bytes) {
        if self.ready.is_empty() && self.partial.is_empty() {
            self.ready = data;
        } else {
            self.partial.extend_from_slice(&self.ready);
            self.ready.clear();
            self.partial.extend_from_slice(&data);
        }
    }

    /// A whole message, if one has arrived: from the last frame without a copy, or gathered.
    fn next_complete(&mut self) -> Result<Option<Bytes>, Status> {
        if !self.ready.is_empty() {
            match message_len(&self.ready, self.limit)? {
                Some(len) if self.ready.len() >= PREFIX + len => {
                    self.ready.advance(PREFIX);
                    return Ok(Some(self.ready.split_to(len)));
                }
                _ => {
                    self.partial.extend_from_slice(&self.ready);
                    self.ready.clear();
                }
            }
        }
        match message_len(&self.partial, self.limit)? {
            Some(len) if self.partial.len() >= PREFIX + len => {
                self.partial.advance(PREFIX);
                Ok(Some(self.partial.split_to(len).freeze()))
            }
            _ => Ok(None),
        }
    }

    /// The stream's end: a part of a message left over is an error, and a response's end is
    /// its status.
    fn end(&mut self, trailers: Option<&HeaderMap>) -> Result<Option<M>, Status> {
        if !self.ready.is_empty() || !self.partial.is_empty() {
            return Err(Status::internal("Unexpected EOF decoding stream."));
        }
        let Some(http_status) = self.response else {
            return Ok(None);
        };
        match trailers.and_then(|t| dapr_serve::field(t, &super::names::header::GRPC_STATUS)) {
            // The usual end, without parsing the rest of the trailers.
            Some(code) if code == "0" => Ok(None),
            Some(_) => match trailers.and_then(Status::from_header_map) {
                Some(status) if status.code() == tonic::Code::Ok => Ok(None),
                Some(status) => Err(status),
                None => Err(Status::unknown("malformed grpc-status trailer")),
            },
            None => Err(missing_status(http_status)),
        }
    }
}

impl<B, M> MessageStream<M> for Messages<B, M>
where
    B: RequestBody,
    M: Received + Send + 'static,
{
    fn message(&mut self) -> impl Future<Output = Result<Option<M>, Status>> + Send {
        std::future::poll_fn(|cx| self.poll_message(cx))
    }
}

/// The length of the message `buf` starts with, once its prefix is there. A compressed message
/// is an error: nothing here offers an encoding. So is one longer than `limit`, with grpc-go's
/// status and words (`ResourceExhausted`, as upstream's sidecars refuse it).
fn message_len(buf: &[u8], limit: usize) -> Result<Option<usize>, Status> {
    let Some(prefix) = buf.get(..PREFIX) else {
        return Ok(None);
    };
    match prefix[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        flag => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1)"
            )));
        }
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > limit {
        return Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {limit})"
        )));
    }
    Ok(Some(len))
}

/// A response that ended without `grpc-status`: the status its HTTP status maps to, as
/// gRPC's `doc/http-grpc-status-mapping.md` (and tonic) map it.
fn missing_status(http: http::StatusCode) -> Status {
    use http::StatusCode as S;
    let code = match http {
        S::OK => {
            return Status::unknown(
                "protocol error: missing grpc-status trailer, stream was terminated without a final status",
            );
        }
        S::BAD_REQUEST => tonic::Code::Internal,
        S::UNAUTHORIZED => tonic::Code::Unauthenticated,
        S::FORBIDDEN => tonic::Code::PermissionDenied,
        S::NOT_FOUND => tonic::Code::Unimplemented,
        S::TOO_MANY_REQUESTS | S::BAD_GATEWAY | S::SERVICE_UNAVAILABLE | S::GATEWAY_TIMEOUT => {
            tonic::Code::Unavailable
        }
        _ => tonic::Code::Unknown,
    };
    Status::new(
        code,
        format!(
            "grpc-status header missing, mapped from HTTP status code {}",
            http.as_u16()
        ),
    )
}

/// A gRPC answer's body: each message length-prefixed in a DATA frame of its own, then the
/// trailers with the call's status (`0`, or the status the stream failed with).
pub struct Answer<S> {
    messages: S,
    done: bool,
}

impl<S> Answer<S> {
    pub fn new(messages: S) -> Self {
        Answer {
            messages,
            done: false,
        }
    }
}

/// An answer as an HTTP response: `200`, `application/grpc`, the messages and their status.
pub fn answer<S, T>(messages: S) -> http::Response<tonic::body::Body>
where
    S: Stream<Item = Result<T, Status>> + Unpin + Send + 'static,
    T: Sent,
{
    let mut response = http::Response::new(tonic::body::Body::new(Answer::new(messages)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

impl<S, T> Body for Answer<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
    T: Sent,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let status = match ready!(self.messages.poll_next_unpin(cx)) {
            Some(Ok(message)) => {
                let mut buf = frame_head(message.encoded_len());
                message.encode(&mut buf);
                return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
            }
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = HeaderMap::with_capacity(1);
        if status.code() == tonic::Code::Ok {
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        } else {
            status.add_header(&mut trailers)?;
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use dapr_proto::common::v1::StreamPayload;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;
    use crate::wire::{ReceivedResponseStream, SentResponseStream};

    const LIMIT: usize = 4 << 20;

    type Frames =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Status>>>>;

    fn body(frames: Vec<Frame<Bytes>>) -> Frames {
        StreamBody::new(futures::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    fn payload(data: &'static str, seq: u64) -> SentResponseStream {
        SentResponseStream {
            head: None,
            payload: Some(StreamPayload {
                data: Bytes::from_static(data.as_bytes()),
                seq,
            }),
        }
    }

    /// `Answer`'s frames for `messages`, and the bytes of its DATA frames run together.
    async fn written(messages: Vec<Result<SentResponseStream, Status>>) -> (Bytes, HeaderMap) {
        let collected = Answer::new(futures::stream::iter(messages))
            .collect()
            .await
            .expect("an answer body does not fail");
        let trailers = collected.trailers().cloned().expect("trailers");
        (collected.to_bytes(), trailers)
    }

    async fn read_all(
        mut messages: Messages<Frames, ReceivedResponseStream>,
    ) -> (Vec<(Bytes, u64)>, Result<(), Status>) {
        let mut read = Vec::new();
        loop {
            match messages.message().await {
                Ok(Some(message)) => {
                    let p = message.payload.expect("a payload");
                    read.push((p.data, p.seq));
                }
                Ok(None) => return (read, Ok(())),
                Err(status) => return (read, Err(status)),
            }
        }
    }

    #[tokio::test]
    async fn what_answer_writes_messages_reads_back_however_the_bytes_are_split() {
        let (bytes, trailers) =
            written(vec![Ok(payload("hello", 0)), Ok(payload("world!", 1))]).await;
        assert_eq!(trailers["grpc-status"], "0");
        let expected = vec![
            (Bytes::from_static(b"hello"), 0),
            (Bytes::from_static(b"world!"), 1),
        ];
        // In one frame, in frames of every size, and byte by byte.
        for size in [bytes.len(), 1, 2, 3, 5, 7, 11] {
            let mut frames: Vec<Frame<Bytes>> = bytes
                .chunks(size)
                .map(|c| Frame::data(Bytes::copy_from_slice(c)))
                .collect();
            frames.push(Frame::trailers(trailers.clone()));
            let messages = Messages::response(body(frames), http::StatusCode::OK, LIMIT);
            let (read, end) = read_all(messages).await;
            assert_eq!(read, expected, "frames of {size} bytes");
            assert!(end.is_ok(), "{end:?}");
        }
    }

    #[tokio::test]
    async fn a_prost_message_is_read_as_the_received_ones_are() {
        use crate::wire::Decoded;
        use dapr_proto::common::v1::InvokeResponse;
        let answer = InvokeResponse {
            data: Some(prost_types::Any {
                type_url: "t".into(),
                value: b"echo".to_vec(),
            }),
            content_type: "text/plain".into(),
        };
        let mut frame = frame_head(prost::Message::encoded_len(&answer)).to_vec();
        prost::Message::encode(&answer, &mut frame).expect("encodes");
        let mut ok = HeaderMap::new();
        ok.insert("grpc-status", http::HeaderValue::from_static("0"));
        // Split in two DATA frames, then the trailers.
        let (first, second) = frame.split_at(3);
        let frames = vec![
            Frame::data(Bytes::copy_from_slice(first)),
            Frame::data(Bytes::copy_from_slice(second)),
            Frame::trailers(ok.clone()),
        ];
        let mut messages = Messages::<_, Decoded<InvokeResponse>>::response(
            body(frames),
            http::StatusCode::OK,
            LIMIT,
        );
        let read = messages.message().await.expect("read").expect("a message");
        assert_eq!(read.0, answer);
        assert!(messages.message().await.expect("the end").is_none());
        assert_eq!(messages.received(), frame.len() - 5);
        // A failed call's status comes from its trailers, not a message.
        let mut failed = HeaderMap::new();
        failed.insert("grpc-status", http::HeaderValue::from_static("5"));
        failed.insert(
            "grpc-message",
            http::HeaderValue::from_static("no such method"),
        );
        let frames = vec![Frame::trailers(failed)];
        let mut messages = Messages::<_, Decoded<InvokeResponse>>::response(
            body(frames),
            http::StatusCode::OK,
            LIMIT,
        );
        let status = messages.message().await.expect_err("the call failed");
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "no such method");
    }

    #[tokio::test]
    async fn a_failed_stream_ends_with_its_status_in_the_trailers() {
        let failed = Status::aborted("app response body failed: gone");
        let (bytes, trailers) = written(vec![Ok(payload("part", 0)), Err(failed)]).await;
        let mut frames = vec![Frame::data(bytes)];
        frames.push(Frame::trailers(trailers));
        let (read, end) = read_all(Messages::response(
            body(frames),
            http::StatusCode::OK,
            LIMIT,
        ))
        .await;
        assert_eq!(read.len(), 1);
        let status = end.expect_err("the stream failed");
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert_eq!(status.message(), "app response body failed: gone");
    }

    #[tokio::test]
    async fn a_truncated_message_or_missing_status_or_compressed_message_is_an_error() {
        let (bytes, _) = written(vec![Ok(payload("hello", 0))]).await;
        // Cut inside the message: the body ends with part of it.
        let cut = bytes.slice(..bytes.len() - 1);
        let (_, end) = read_all(Messages::request(body(vec![Frame::data(cut)]), LIMIT)).await;
        assert_eq!(end.expect_err("truncated").code(), tonic::Code::Internal);
        // A response without trailers: the status maps from the HTTP status.
        let (_, end) = read_all(Messages::response(
            body(vec![Frame::data(bytes.clone())]),
            http::StatusCode::OK,
            LIMIT,
        ))
        .await;
        assert_eq!(
            end.expect_err("no grpc-status").code(),
            tonic::Code::Unknown
        );
        let (_, end) = read_all(Messages::response(
            body(vec![]),
            http::StatusCode::SERVICE_UNAVAILABLE,
            LIMIT,
        ))
        .await;
        assert_eq!(end.expect_err("503").code(), tonic::Code::Unavailable);
        // A request ends with its body, status or not.
        let (read, end) = read_all(Messages::request(
            body(vec![Frame::data(bytes.clone())]),
            LIMIT,
        ))
        .await;
        assert_eq!((read.len(), end.is_ok()), (1, true));
        // The compressed flag, which nothing here negotiates.
        let mut compressed = BytesMut::from(&bytes[..]);
        compressed[0] = 1;
        let (_, end) = read_all(Messages::request(
            body(vec![Frame::data(compressed.freeze())]),
            LIMIT,
        ))
        .await;
        assert_eq!(end.expect_err("compressed").code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn a_message_that_arrives_whole_is_a_slice_of_its_frame() {
        let (bytes, _) = written(vec![Ok(payload("hello", 0))]).await;
        let mut messages: Messages<_, ReceivedResponseStream> =
            Messages::request(body(vec![Frame::data(bytes.clone())]), LIMIT);
        let message = messages.message().await.expect("read").expect("a message");
        let data = message.payload.expect("a payload").data;
        let frame = bytes.as_ptr_range();
        assert!(frame.contains(&data.as_ptr()), "the payload was copied");
    }

    #[tokio::test]
    async fn a_message_longer_than_the_limit_is_refused_at_its_prefix() {
        let (bytes, _) = written(vec![Ok(payload("hello", 0))]).await;
        let len = bytes.len() - PREFIX;
        // At the limit: read.
        let (read, end) = read_all(Messages::request(
            body(vec![Frame::data(bytes.clone())]),
            len,
        ))
        .await;
        assert_eq!((read.len(), end.is_ok()), (1, true), "{end:?}");
        // One byte over, with only the prefix arrived: refused without waiting for the rest.
        let (_, end) = read_all(Messages::request(
            body(vec![Frame::data(bytes.slice(..PREFIX))]),
            len - 1,
        ))
        .await;
        let status = end.expect_err("too long");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            format!(
                "grpc: received message larger than max ({len} vs. {})",
                len - 1
            )
        );
    }

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("a header value"));
        grpc_timeout(&headers)
    }

    #[test]
    fn a_grpc_timeout_reads_in_each_unit_and_a_malformed_one_is_ignored() {
        assert_eq!(timeout_of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout_of("2M"), Some(Duration::from_secs(120)));
        assert_eq!(
            timeout_of("99999999S"),
            Some(Duration::from_secs(99_999_999))
        );
        assert_eq!(timeout_of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout_of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout_of("9n"), Some(Duration::from_nanos(9)));
        for malformed in ["", "S", "100", "123456789S", "1x", "-1S", "1.5S", " 1S"] {
            assert_eq!(timeout_of(malformed), None, "{malformed:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
