//! The internal API's answers leave in one write: a response's HEADERS, a DATA frame of a few
//! KiB and its trailers (`grpc-status`) reach the socket together. Our copy of h2 (vendor/README.md)
//! copies DATA payloads under 4 KiB into its write buffer; h2 as released writes a payload over
//! 256 bytes from its own buffer and only then the trailers, which cost a second write, a
//! second TLS record and, for a paced caller, a second wake-up (bench/notes.md, "one write per
//! response"). This runs h2's real server and client over an in-memory pipe and counts the
//! server's writes.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Counted;

/// How many writes the server made to answer one request with `payload` bytes and trailers.
async fn writes_for_answer(payload: usize) -> usize {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let (server_io, counts) = Counted::new(server_io);
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (answer_tx, mut answer_rx) = tokio::sync::mpsc::channel::<()>(1);
    let server = tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.expect("handshake");
        // `accept` returns once the connection has read the request and written everything it
        // had to (its SETTINGS, their acknowledgements); it is not polled again until the
        // answer is queued, so the answer's frames are written together or not at all.
        while let Some(Ok((_request, mut respond))) = connection.accept().await {
            accepted_tx.send(()).await.expect("accepted");
            answer_rx.recv().await.expect("go");
            let head = http::Response::builder()
                .header("content-type", "application/grpc")
                .body(())
                .expect("head");
            let mut stream = respond.send_response(head, false).expect("headers");
            stream
                .send_data(Bytes::from(vec![7u8; payload]), false)
                .expect("data");
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            stream.send_trailers(trailers).expect("trailers");
        }
    });
    let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request =
        http::Request::post("http://peer/dapr.proto.internals.v1.ServiceInvocation/CallLocal")
            .body(())
            .expect("request");
    let (response, _) = client.send_request(request, true).expect("send");
    accepted_rx
        .recv()
        .await
        .expect("the server took the request");
    counts.reset();
    answer_tx.send(()).await.expect("answer");
    let mut body = response.await.expect("response").into_body();
    let mut received = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("chunk");
        received += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").expect("some");
    assert_eq!(received, payload);
    assert_eq!(trailers["grpc-status"], "0");
    drop(client);
    server.abort();
    counts.writes()
}

#[tokio::test]
async fn a_response_of_a_few_kib_and_its_trailers_leave_in_one_write() {
    for payload in [1, 1024, 4000] {
        let writes = tokio::time::timeout(Duration::from_secs(10), writes_for_answer(payload))
            .await
            .expect("answered within 10 s");
        assert_eq!(writes, 1, "writes for a {payload}-byte answer");
    }
}

#[tokio::test]
async fn a_larger_payload_is_still_written_from_its_own_buffer() {
    // Over 4 KiB h2 does not copy: the trailers follow in a write of their own.
    let writes = tokio::time::timeout(Duration::from_secs(10), writes_for_answer(16 * 1024))
        .await
        .expect("answered within 10 s");
    assert_eq!(writes, 2);
}
