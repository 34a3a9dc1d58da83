//! A connection that carries what its handshake learned about the peer (a verified SPIFFE id),
//! handed by tonic to every request on it as `ConnectInfo`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project_lite::pin_project! {
    /// `io` with `peer`; reads and writes go straight to `io`.
    pub struct WithPeer<IO, P> {
        #[pin]
        io: IO,
        peer: P,
    }
}

impl<IO, P> WithPeer<IO, P> {
    pub fn new(io: IO, peer: P) -> Self {
        WithPeer { io, peer }
    }
}

impl<IO, P> tonic::transport::server::Connected for WithPeer<IO, P>
where
    P: Clone + Send + Sync + 'static,
{
    type ConnectInfo = P;

    fn connect_info(&self) -> P {
        self.peer.clone()
    }
}

impl<IO: AsyncRead, P> AsyncRead for WithPeer<IO, P> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

write_through_io!(WithPeer<IO, P>, [IO: AsyncWrite, P]);
