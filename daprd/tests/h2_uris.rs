//! Our copy of h2 (vendor/README.md) keeps the `:path` and `:authority` values its server
//! parsed last on a thread and reuses what they parsed to when the same bytes come again, and
//! its client keeps the values it sent last and reuses their copies. This holds every request
//! to the URI it was sent with: more distinct paths and authorities than
//! are kept, repeated and interleaved, with queries, and one too long to be kept, on one
//! connection of h2's real client and server over an in-memory pipe.

use std::time::Duration;

/// The URIs sent, in order: six paths of one length and three authorities of one length
/// (more than the four of each that are kept), each sent twice in a row and again in later
/// rounds, with and without a query, and a path over 256 bytes, twice.
fn uris() -> Vec<String> {
    let paths = [
        "/dapr.proto.internals.v1.ServiceInvocation/CallLocal0",
        "/dapr.proto.internals.v1.ServiceInvocation/CallLocal1",
        "/dapr.proto.internals.v1.ServiceInvocation/CallLocal2",
        "/a/0",
        "/a/1",
        "/a?b",
    ];
    let authorities = ["127.0.0.1:50002", "127.0.0.1:50003", "127.0.0.2:50002"];
    let mut uris = Vec::new();
    for round in 0..4 {
        for (i, path) in paths.iter().enumerate() {
            let authority = authorities[(i + round) % authorities.len()];
            for _ in 0..2 {
                uris.push(format!("http://{authority}{path}"));
            }
            uris.push(format!("http://{authority}{path}?round={round}"));
        }
    }
    uris.push(format!("http://peer:443/{}", "x".repeat(300)));
    uris.push(format!("http://peer:443/{}", "y".repeat(300)));
    uris
}

async fn exchange() {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.expect("handshake");
        let mut received = Vec::new();
        while let Some(accepted) = connection.accept().await {
            let (request, mut respond) = accepted.expect("accepted");
            received.push(request.uri().to_string());
            respond
                .send_response(http::Response::new(()), true)
                .expect("answered");
        }
        received
    });
    let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    for uri in uris() {
        let request = http::Request::post(uri.as_str()).body(()).expect("request");
        let (response, _) = client.send_request(request, true).expect("sent");
        response.await.expect("answered");
        client = client.ready().await.expect("ready");
    }
    drop(client);
    let received = server.await.expect("server");
    assert_eq!(received, uris());
    driver.abort();
}

#[tokio::test]
async fn every_request_has_the_uri_it_was_sent_with_when_paths_and_authorities_repeat() {
    tokio::time::timeout(Duration::from_secs(10), exchange())
        .await
        .expect("the exchange ended within 10 s");
}
