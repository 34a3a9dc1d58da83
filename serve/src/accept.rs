//! The accept loop: a permit per open connection, the handshake off the loop, and a deadline
//! that stays on the connection until it has shown its protocol.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{Limits, Preface};

pin_project_lite::pin_project! {
    /// An accepted connection: it holds its listener's connection permit for as long as it
    /// lives, and fails its reads with `TimedOut` if it has not shown its protocol
    /// ([`Preface`]) by the handshake deadline.
    pub struct Guarded<IO> {
        #[pin]
        io: IO,
        // `None` once the protocol is shown.
        deadline: Option<Pin<Box<Sleep>>>,
        preface: Preface,
        permit: OwnedSemaphorePermit,
    }
}

impl<IO> Guarded<IO> {
    /// `io` must show its protocol by `deadline`.
    pub fn new(io: IO, deadline: Instant, permit: OwnedSemaphorePermit) -> Self {
        Guarded {
            io,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            preface: Preface::default(),
            permit,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() {
                    this.preface.feed(&buf.filled()[before..]);
                    if this.preface.is_shown() {
                        *this.deadline = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not show its protocol within the handshake deadline",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

write_through_io!(Guarded<IO>, [IO: AsyncWrite]);

/// What the accept loop takes connections from: a TCP listener, or a Unix-domain socket
/// (daprd's `--unix-domain-socket`).
pub trait Listener: Send + 'static {
    type Io: Send + 'static;
    /// The peer's address, for logs.
    type Addr: fmt::Debug + Clone + Send + 'static;

    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send;

    /// Socket options for a connection just accepted.
    fn prepare(_io: &Self::Io) {}
}

impl Listener for TcpListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }

    fn prepare(tcp: &TcpStream) {
        // Small answers must not wait for Nagle's algorithm (a 40 ms stall each).
        let _ = tcp.set_nodelay(true);
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn accept(
        &self,
    ) -> impl Future<Output = io::Result<(UnixStream, tokio::net::unix::SocketAddr)>> + Send {
        UnixListener::accept(self)
    }
}

/// Binds a Unix-domain socket at `path`. A socket file left behind by a process that is gone
/// is replaced; one that still accepts connections is not (`AddrInUse`), nor is any other
/// kind of file.
pub async fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another process", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Accepts connections on `listener` while fewer than `limits.max_connections` are open, runs
/// `handshake` on each off the accept loop (TLS, or `Ok(tcp)` for plaintext), and yields the
/// connections that completed it within `limits.handshake`, still [`Guarded`] until they show
/// their protocol. A handshake that fails or runs out of time is logged at debug level with
/// `server` and the peer's address, and dropped. Stops accepting when `stop` is cancelled.
pub fn incoming<L, T, F, Fut>(
    server: &'static str,
    listener: L,
    limits: Limits,
    stop: CancellationToken,
    handshake: F,
) -> ReceiverStream<io::Result<Guarded<T>>>
where
    L: Listener,
    F: Fn(L::Io, L::Addr) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => return,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (io, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(server, "accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            L::prepare(&io);
            let deadline = Instant::now() + limits.handshake;
            let handshaking = handshake(io, peer.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout_at(deadline, handshaking).await {
                    Ok(Ok(io)) => {
                        let _ = tx.send(Ok(Guarded::new(io, deadline, permit))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(server, ?peer, "handshake failed: {e}"),
                    Err(_) => {
                        tracing::debug!(server, ?peer, "no handshake within {:?}", limits.handshake)
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("dapr-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[tokio::test]
    async fn a_socket_left_behind_is_replaced_and_a_live_one_is_not() {
        let path = scratch("unix").join("api.socket");
        // Left behind: bound, then the listener dropped (tokio does not unlink it).
        drop(UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        let live = bind_unix(&path).await.expect("a stale socket is replaced");
        let again = bind_unix(&path).await.expect_err("a live socket is kept");
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse, "{again}");
        // The first listener still has its socket.
        let (client, accepted) = tokio::join!(UnixStream::connect(&path), live.accept());
        client.expect("connect");
        accepted.expect("accept");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_removed() {
        let path = scratch("file").join("api.socket");
        std::fs::write(&path, b"data").expect("write");
        let refused = bind_unix(&path).await.expect_err("not a socket");
        assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists, "{refused}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"data");
    }
}
