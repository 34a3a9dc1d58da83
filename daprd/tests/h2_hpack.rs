//! Our copy of h2 (vendor/README.md) encodes a head's fields where the head holds them, and
//! copies into the HPACK table only the fields the table takes. This holds the encoder to
//! what matters to a peer: every head decodes to what was sent, over many requests on one
//! connection whose tables fill, evict and shrink (values that change, names that repeat,
//! sensitive values, fields too large to index, every pseudo-header); and a head sent again
//! goes out as table references. h2's real client and server over an in-memory pipe.

mod common;

use std::time::Duration;

use common::Counted;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The head of exchange `i`, request or response: fields that never change, one that changes
/// every time, names with several values, a sensitive value, a field larger than 3/4 of the
/// default table (never indexed), and one of forty names that push older entries out.
fn fields(i: usize, side: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("content-type", HeaderValue::from_static("application/grpc"));
    map.insert("x-const", HeaderValue::from_static("the same every time"));
    map.insert(
        "x-counter",
        HeaderValue::from_str(&format!("{side}-{i}")).expect("value"),
    );
    map.append("x-multi", HeaderValue::from_static("first"));
    map.append(
        "x-multi",
        HeaderValue::from_str(&format!("second-{}", i % 2)).expect("value"),
    );
    map.append("x-multi", HeaderValue::from_static("first"));
    let mut secret = HeaderValue::from_str(&format!("secret-{}", i % 3)).expect("value");
    secret.set_sensitive(true);
    map.insert("x-secret", secret);
    map.insert(
        HeaderName::from_bytes(format!("x-fill-{}", i % 40).as_bytes()).expect("name"),
        HeaderValue::from_str(&format!("{side}-fill-{}", i % 3)).expect("value"),
    );
    if i.is_multiple_of(7) {
        map.insert(
            "x-large",
            HeaderValue::from_str(&"L".repeat(3500)).expect("value"),
        );
    }
    if i.is_multiple_of(5) {
        map.insert("authorization", HeaderValue::from_static("Bearer token"));
    }
    map
}

fn method(i: usize) -> Method {
    match i % 4 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        _ => Method::from_bytes(b"PURGE").expect("method"),
    }
}

fn path(i: usize) -> String {
    match i % 3 {
        0 => "/".to_owned(),
        1 => "/index.html".to_owned(),
        _ => format!("/svc/Method{}", i % 5),
    }
}

fn status(i: usize) -> StatusCode {
    [200, 204, 404, 503, 299][i % 5].try_into().expect("status")
}

fn trailers(i: usize) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(
        "grpc-status",
        HeaderValue::from_str(&(i % 3).to_string()).expect("value"),
    );
    map.insert(
        "x-trailer",
        HeaderValue::from_str(&format!("t-{i}")).expect("value"),
    );
    map
}

/// `requests` exchanges on one connection, each checked on both ends; the server's decoder
/// table is `server_table` bytes (so is the client's encoder's), the client's `client_table`.
async fn exchanges(requests: usize, server_table: u32, client_table: u32) {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let mut connection = h2::server::Builder::new()
            .header_table_size(server_table)
            .handshake::<_, bytes::Bytes>(server_io)
            .await
            .expect("handshake");
        let mut i = 0;
        while let Some(accepted) = connection.accept().await {
            let (request, mut respond) = accepted.expect("a request");
            assert_eq!(request.method(), method(i), "request {i}");
            assert_eq!(request.uri().path(), path(i), "request {i}");
            assert_eq!(
                request.uri().authority().map(|a| a.as_str()),
                Some("peer.test:3500")
            );
            assert_eq!(request.headers(), &fields(i, "request"), "request {i}");
            let mut response = http::Response::new(());
            *response.status_mut() = status(i);
            *response.headers_mut() = fields(i, "response");
            let mut stream = respond.send_response(response, false).expect("response");
            stream.send_trailers(trailers(i)).expect("trailers");
            i += 1;
        }
        i
    });
    let (client, connection) = h2::client::Builder::new()
        .header_table_size(client_table)
        .handshake::<_, bytes::Bytes>(client_io)
        .await
        .expect("handshake");
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    for i in 0..requests {
        let mut request = http::Request::builder()
            .method(method(i))
            .uri(format!("http://peer.test:3500{}", path(i)))
            .body(())
            .expect("request");
        *request.headers_mut() = fields(i, "request");
        let (response, _) = client.send_request(request, true).expect("sent");
        let response = response.await.expect("response");
        assert_eq!(response.status(), status(i), "response {i}");
        assert_eq!(response.headers(), &fields(i, "response"), "response {i}");
        let mut body = response.into_body();
        let got = body.trailers().await.expect("trailers").expect("some");
        assert_eq!(got, trailers(i), "trailers {i}");
        client = client.ready().await.expect("ready");
    }
    drop(client);
    assert_eq!(server.await.expect("server"), requests);
    driver.abort();
}

#[tokio::test]
async fn heads_decode_as_sent_while_the_tables_fill_and_evict() {
    tokio::time::timeout(Duration::from_secs(20), exchanges(300, 4096, 4096))
        .await
        .expect("the exchanges ended within 20 s");
}

#[tokio::test]
async fn heads_decode_as_sent_with_small_and_empty_tables() {
    // 256 bytes: nearly every insertion evicts. 0: nothing is ever inserted.
    for (server_table, client_table) in [(256, 0), (0, 256)] {
        tokio::time::timeout(
            Duration::from_secs(20),
            exchanges(120, server_table, client_table),
        )
        .await
        .expect("the exchanges ended within 20 s");
    }
}

/// A head of ten constant fields and the request pseudo-headers, sent twice: the second time
/// each field is one byte, a reference to the table.
async fn repeated_head() {
    const FIELDS: usize = 10;
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let (client_io, counts) = Counted::new(client_io);
    let server = tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.expect("handshake");
        while let Some(accepted) = connection.accept().await {
            let (_, mut respond) = accepted.expect("a request");
            respond
                .send_response(http::Response::new(()), true)
                .expect("response");
        }
    });
    let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let mut request = http::Request::post("https://peer.test/svc/Method")
            .body(())
            .expect("request");
        for n in 0..FIELDS {
            request.headers_mut().insert(
                HeaderName::from_bytes(format!("x-field-{n}").as_bytes()).expect("name"),
                HeaderValue::from_static("a value that stays the same"),
            );
        }
        let before = counts.bytes();
        let (response, _) = client.send_request(request, true).expect("sent");
        response.await.expect("response");
        sizes.push(counts.bytes() - before);
        client = client.ready().await.expect("ready");
    }
    drop(client);
    server.await.expect("server");
    driver.abort();
    // The first head spells every field out (each name and value, 30-odd bytes).
    assert!(sizes[0] > FIELDS * 30, "first head: {sizes:?}");
    // After it, a 9-byte frame header, the four pseudo-headers (`:path` is never indexed:
    // its literal is 16 bytes) and one byte per field; other frames (a SETTINGS
    // acknowledgement) may come with the second.
    let indexed = 9 + 3 + (2 + "/svc/Method".len()) + FIELDS;
    assert_eq!(sizes[2], indexed, "third head: {sizes:?}");
}

#[tokio::test]
async fn a_head_sent_again_goes_out_as_table_references() {
    tokio::time::timeout(Duration::from_secs(10), repeated_head())
        .await
        .expect("the exchange ended within 10 s");
}
