//! What the h2 tests share: an in-memory pipe end that counts what is written to it.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// A pipe end that counts the writes made to it and the bytes they took.
pub struct Counted {
    inner: DuplexStream,
    counts: Arc<Counts>,
}

/// What a [`Counted`] saw, read while it is in use.
#[derive(Default)]
pub struct Counts {
    writes: AtomicUsize,
    bytes: AtomicUsize,
}

impl Counts {
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Starts counting again from nothing.
    pub fn reset(&self) {
        self.writes.store(0, Ordering::SeqCst);
        self.bytes.store(0, Ordering::SeqCst);
    }
}

impl Counted {
    pub fn new(inner: DuplexStream) -> (Counted, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        let counted = Counted {
            inner,
            counts: Arc::clone(&counts),
        };
        (counted, counts)
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.counts.writes.fetch_add(1, Ordering::SeqCst);
            self.counts.bytes.fetch_add(n, Ordering::SeqCst);
        }
        written
    }

    /// One write per call, as a TLS stream's is (rustls takes the slices into one record).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.poll_write(cx, &joined)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
