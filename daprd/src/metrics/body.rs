//! A response or request body that counts its data bytes and reports to a [`Recorder`] once, and
//! the response future that wraps a service's body in it: what the server layers build on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// What a server-side [`Metered`] body reports once it ends or is dropped.
pub trait Recorder: Send + 'static {
    /// The response head, before its body streams.
    fn head(&mut self, _status: StatusCode, _headers: &HeaderMap) {}
    /// Trailers at the end of the body.
    fn trailers(&mut self, _trailers: &HeaderMap) {}
    /// The body ended (`complete`) or was dropped early, after `bytes` data bytes.
    fn finish(self, bytes: u64, complete: bool);
}

pin_project! {
    /// A body that counts its data bytes and reports to its recorder exactly once.
    pub struct Metered<B, R: Recorder> {
        #[pin]
        inner: B,
        bytes: u64,
        recorder: Option<R>,
    }

    impl<B, R: Recorder> PinnedDrop for Metered<B, R> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(recorder) = this.recorder.take() {
                recorder.finish(*this.bytes, false);
            }
        }
    }
}

impl<B, R: Recorder> Metered<B, R> {
    pub(super) fn new(inner: B, recorder: Option<R>) -> Self {
        Metered {
            inner,
            bytes: 0,
            recorder,
        }
    }
}

impl<B: Body, R: Recorder> Body for Metered<B, R> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = ready!(this.inner.poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.remaining() as u64;
                } else if let (Some(trailers), Some(recorder)) =
                    (frame.trailers_ref(), this.recorder.as_mut())
                {
                    recorder.trailers(trailers);
                }
            }
            None => {
                if let Some(recorder) = this.recorder.take() {
                    recorder.finish(*this.bytes, true);
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A service's response future whose body gets metered.
    pub struct MeteredFuture<F, R> {
        #[pin]
        pub(super) inner: F,
        pub(super) recorder: Option<R>,
    }
}

impl<F, B, E, R> Future for MeteredFuture<F, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    R: Recorder,
{
    type Output = Result<Response<Metered<B, R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx));
        let mut recorder = this.recorder.take();
        Poll::Ready(response.map(|response| {
            if let Some(recorder) = recorder.as_mut() {
                recorder.head(response.status(), response.headers());
            }
            response.map(|body| Metered::new(body, recorder))
        }))
    }
}

pin_project! {
    /// [`MeteredFuture`] for an answer of `dapr-serve`'s plain HTTP/1 server, whose head may
    /// be partly encoded already ([`dapr_serve::PlainAnswer::lines`]): the status is what
    /// the recorder reads of a head.
    pub struct MeteredPlain<F, R> {
        #[pin]
        pub(super) inner: F,
        pub(super) recorder: Option<R>,
    }
}

impl<F, B, R> Future for MeteredPlain<F, R>
where
    F: Future<Output = dapr_serve::PlainAnswer<B>>,
    R: Recorder,
{
    type Output = dapr_serve::PlainAnswer<Metered<B, R>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.inner.poll(cx));
        let mut recorder = this.recorder.take();
        if let Some(recorder) = recorder.as_mut() {
            recorder.head(answer.response.status(), answer.response.headers());
        }
        Poll::Ready(dapr_serve::PlainAnswer {
            response: answer.response.map(|body| Metered::new(body, recorder)),
            lines: answer.lines,
        })
    }
}
