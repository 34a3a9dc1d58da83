//! Our copy of h2 (vendor/README.md) checks a head's names in one pass instead of one hashed
//! lookup per forbidden name; this holds it to what RFC 9113 §8.2.2 (and h2 as released)
//! refuses: connection-specific fields, and `te` with any value but `trailers`, in requests,
//! responses and trailers alike. h2's real client and server over an in-memory pipe.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The heads a peer must refuse to send, each with the field that makes it malformed.
fn malformed() -> Vec<(&'static str, &'static str)> {
    vec![
        ("connection", "close"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "gzip"),
    ]
}

fn head(fields: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("content-type", HeaderValue::from_static("application/grpc"));
    map.insert("user-agent", HeaderValue::from_static("h2-headers-test"));
    for (name, value) in fields {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

fn request(fields: &[(&'static str, &'static str)]) -> http::Request<()> {
    let mut request = http::Request::post("http://peer/svc/Method")
        .body(())
        .expect("request");
    *request.headers_mut() = head(fields);
    request
}

fn is_malformed(e: &h2::Error) -> bool {
    // h2's `UserError::MalformedHeaders` has no public variant; its text is the contract.
    e.to_string().contains("malformed headers")
}

/// Sends a request with each malformed head, then a well-formed one whose response and
/// trailers the server tries to send with each malformed field, and checks every refusal.
async fn exchange() {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.expect("handshake");
        let (_request, mut respond) = connection
            .accept()
            .await
            .expect("a request")
            .expect("accepted");
        let mut refused = Vec::new();
        for field in malformed() {
            let mut response = http::Response::new(());
            *response.headers_mut() = head(&[field]);
            let sent = respond.send_response(response, false);
            refused.push(sent.err().is_some_and(|e| is_malformed(&e)));
        }
        let mut stream = respond
            .send_response(http::Response::new(()), false)
            .expect("a well-formed response");
        for field in malformed() {
            let sent = stream.send_trailers(head(&[field]));
            refused.push(sent.err().is_some_and(|e| is_malformed(&e)));
        }
        stream
            .send_trailers(head(&[("te", "trailers")]))
            .expect("trailers with `te: trailers`");
        // Serve the connection until the client has read the answer and hung up.
        while connection.accept().await.is_some() {}
        refused
    });
    let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    for field in malformed() {
        let sent = client.send_request(request(&[field]), true);
        let error = sent.err().unwrap_or_else(|| panic!("{field:?} was sent"));
        assert!(is_malformed(&error), "{field:?}: {error}");
    }
    let (response, _) = client
        .send_request(request(&[("te", "trailers")]), true)
        .expect("a request with `te: trailers` is sent");
    let mut body = response.await.expect("response").into_body();
    let trailers = body.trailers().await.expect("trailers").expect("some");
    assert_eq!(trailers["te"], "trailers");
    drop(client);
    drop(body);
    let refused = server.await.expect("server");
    assert_eq!(refused, vec![true; 2 * malformed().len()]);
    driver.abort();
}

#[tokio::test]
async fn connection_specific_fields_are_refused_and_te_trailers_is_sent() {
    tokio::time::timeout(Duration::from_secs(10), exchange())
        .await
        .expect("the exchange ended within 10 s");
}
