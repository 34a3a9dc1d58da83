//! Spans of proxied gRPC calls, which end with the response stream: the status is in the
//! trailers (or in the head of a trailers-only answer), and a stream can outlive the handler.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::Span;
use crate::wire::grpc_status;

/// `response` with `span` ended when its body ends: with the `grpc-status` of the head or the
/// trailers, or as cancelled when the body is dropped before its end.
pub fn ended_with_stream(
    mut span: Span,
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    if let Some(code) = grpc_status(response.headers()) {
        // Trailers-only: the whole answer is in the head.
        span.grpc_status(code);
        span.end();
        return response;
    }
    response.map(|body| {
        tonic::body::Body::new(SpanBody {
            body,
            span: Some(span),
        })
    })
}

pin_project_lite::pin_project! {
    struct SpanBody {
        #[pin]
        body: tonic::body::Body,
        span: Option<Span>,
    }

    impl PinnedDrop for SpanBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(mut span) = this.project().span.take() {
                span.grpc_status(tonic::Code::Cancelled);
                span.end();
            }
        }
    }
}

impl Body for SpanBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let polled = ready!(this.body.poll_frame(cx));
        let code = match &polled {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|t| grpc_status(t).unwrap_or(tonic::Code::Unknown)),
            Some(Err(e)) => Some(e.code()),
            // Ended without trailers: no status, which gRPC clients report as `Unknown`.
            None => Some(tonic::Code::Unknown),
        };
        if let Some(code) = code
            && let Some(mut span) = this.span.take()
        {
            span.grpc_status(code);
            span.end();
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
