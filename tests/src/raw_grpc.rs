//! gRPC calls written by hand on an HTTP/2 connection, without tonic's client: tonic's channel
//! would itself end a call at its `grpc-timeout`, and could not hold a request's body open,
//! so a server's own bounds could not be seen.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;

/// An HTTP/2 connection's sender.
pub type Sender = SendRequest<tonic::body::Body>;

/// An HTTP/2 handshake on `io` (plaintext TCP, or a TLS stream); the connection is driven by
/// a task of its own.
pub async fn handshake<IO>(io: IO) -> Sender
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    send
}

/// A call to `uri` on `send` whose body is `first` and then whatever `rest` sends, with
/// `headers` added: the call's status (from a trailers-only answer, or from the trailers),
/// within 20 s.
pub async fn call(
    send: &mut Sender,
    uri: &str,
    headers: &[(&'static str, &'static str)],
    first: Bytes,
    rest: tokio::sync::mpsc::Receiver<Bytes>,
) -> tonic::Status {
    let frames = futures::stream::once(async move { first })
        .chain(tokio_stream::wrappers::ReceiverStream::new(rest))
        .map(|data| Ok::<_, tonic::Status>(hyper::body::Frame::data(data)));
    let mut request = http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::StreamBody::new(
            frames,
        )))
        .expect("a request");
    tokio::time::timeout(Duration::from_secs(20), async {
        send.ready().await.expect("the connection is open");
        let response = send.send_request(request).await.expect("an answer");
        if let Some(status) = tonic::Status::from_header_map(response.headers()) {
            return status;
        }
        let trailers = response
            .into_body()
            .collect()
            .await
            .expect("the answer's body")
            .trailers()
            .cloned()
            .expect("trailers");
        tonic::Status::from_header_map(&trailers).expect("grpc-status")
    })
    .await
    .expect("the call ends within 20 s")
}
