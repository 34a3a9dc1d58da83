//! Bodies as streams of numbered payloads (`CallLocalStream`): taking what is ready, reading a
//! small body whole, chunking, and reassembling a body from a stream with its `seq` checked.

use std::pin::Pin;

use bytes::Bytes;
use dapr_proto::common::v1::StreamPayload;
use futures::{Stream, StreamExt};

use super::MAX_CHUNK;

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
        let mut gathered = Gathered::default();
        while let Some(chunk) = body.next().await {
            gathered.push(chunk?, len as usize);
        }
        Ok::<_, BoxError>(gathered.into_bytes())
    };
    match tokio::time::timeout(within, read).await {
        Ok(data) => Ok(Box::pin(futures::stream::iter([Ok(data?)]))),
        Err(_) => Err(BoxError::from(format!(
            "the body of {len} bytes did not arrive within {within:?}"
        ))),
    }
}

/// A body gathered whole from its chunks. A body of one chunk (nearly every small one) is that
/// chunk, not a copy of it; a second chunk starts a buffer that takes the rest.
#[derive(Debug, Default)]
pub struct Gathered {
    first: Bytes,
    joined: Option<bytes::BytesMut>,
}

impl Gathered {
    /// The bytes gathered so far.
    pub fn size(&self) -> usize {
        self.joined
            .as_ref()
            .map_or(self.first.len(), bytes::BytesMut::len)
    }

    /// Adds `chunk`. `capacity`: what the buffer is sized for when one is needed (the body's
    /// declared length, or 0 to size it for the two chunks at hand).
    pub fn push(&mut self, chunk: Bytes, capacity: usize) {
        if chunk.is_empty() {
            return;
        }
        match &mut self.joined {
            Some(joined) => joined.extend_from_slice(&chunk),
            None if self.first.is_empty() => self.first = chunk,
            None => {
                let needed = self.first.len() + chunk.len();
                let mut joined = bytes::BytesMut::with_capacity(capacity.max(needed));
                joined.extend_from_slice(&self.first);
                joined.extend_from_slice(&chunk);
                self.joined = Some(joined);
            }
        }
    }

    pub fn into_bytes(self) -> Bytes {
        self.joined.map_or(self.first, bytes::BytesMut::freeze)
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

/// The future `make` returns, built in its box. `Box::pin(make())` builds a future on the stack
/// and copies it into its box whole, and a request's future is kilobytes (5.4 KB for the
/// internal API's route): with the box allocated first, the future is written straight into it
/// (bench/notes.md, "futures built in their boxes").
#[inline(always)]
pub fn boxed_in_place<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// A stream message that may carry a body chunk (request and response streams alike).
pub trait Chunked: Send + 'static {
    fn take_payload(self) -> Option<StreamPayload>;
}

impl<H: Send + 'static> Chunked for super::StreamMessage<H> {
    fn take_payload(self) -> Option<StreamPayload> {
        self.payload
    }
}

/// How long the end of a stream with an empty declared body may take.
const EMPTY_END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The body carried by a stream after its head message: the head's own payload first, then
/// every later payload, in order (a gap in `seq` ends the body with an error).
///
/// With `declared_len` (the body's `content-length`), the stream's end is read right after the
/// last declared byte, before that byte is handed on: HTTP/1 peers stop polling a body once
/// `content-length` bytes are written, and a gRPC stream dropped before its trailers is reset,
/// which h2 counts against the connection (1024 resets and it is closed).
pub async fn payload_body<M: Chunked, S: super::MessageStream<M>>(
    leading: Option<StreamPayload>,
    mut incoming: S,
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
    Box::pin(futures::stream::unfold(state, next_payload::<M, S>))
}

struct PayloadState<S> {
    /// `None` once the stream has ended.
    incoming: Option<S>,
    seq: SeqCheck,
    leading: Option<StreamPayload>,
    remaining: Option<u64>,
}

async fn next_payload<M: Chunked, S: super::MessageStream<M>>(
    mut state: PayloadState<S>,
) -> Option<(Result<Bytes, BoxError>, PayloadState<S>)> {
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
                    tokio::spawn(read_end::<M, S>(incoming));
                }
            }
        }
    }
    Some((Ok(data), state))
}

/// Reads a stream's end after its declared body was handed on, so the stream closes cleanly
/// instead of being reset; what comes instead of the end is only logged: the body was whole.
async fn read_end<M: Chunked, S: super::MessageStream<M>>(mut incoming: S) {
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
}
