//! Apps served over TLS (`--app-protocol https` and `grpcs`): daprd reaches them without
//! verifying their certificate, as upstream does, for invocation and for proxied gRPC.

use std::time::Duration;

use bytes::Bytes;
use dapr_proto::common::v1::InvokeRequest;
use dapr_proto::runtime::v1::InvokeServiceRequest;
use dapr_proto::runtime::v1::dapr_client::DaprClient;
use e2e::echo::Note;
use e2e::echo::echo_client::EchoClient;
use e2e::echo_app_with;
use e2e::sidecar::{HttpClient, Sidecar, scratch_dir, start_sqlite_pair};
use http::Method;

async fn pair(name: &str, app_protocol: &str, app_port: u16) -> (Sidecar, Sidecar) {
    let dir = scratch_dir(name).expect("scratch dir");
    start_sqlite_pair(&dir, app_port, "", &["--app-protocol", app_protocol])
        .await
        .expect("sidecars start")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_app_is_invoked_over_tls() {
    let app = echo_app_with("http", &["--tls"]).await.expect("app");
    let (_callee, caller) = pair("app-https", "https", app.addr.port()).await;
    let reply = HttpClient::new()
        .send(
            Method::POST,
            &caller.url("/v1.0/invoke/orders/method/echo/tls"),
            &[("content-type", "text/plain")],
            Bytes::from_static(b"over tls to the app"),
        )
        .await
        .expect("invoke");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(&reply.body[..], b"over tls to the app");
    assert_eq!(reply.headers["x-echo-path"], "/echo/tls");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpcs_app_is_invoked_and_proxied_over_tls() {
    let app = echo_app_with("grpc", &["--tls"]).await.expect("app");
    let (_callee, caller) = pair("app-grpcs", "grpcs", app.addr.port()).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", caller.grpc_port))
            .expect("uri")
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connects");
    let response = DaprClient::new(channel.clone())
        .invoke_service(InvokeServiceRequest {
            id: "orders".into(),
            message: Some(InvokeRequest {
                method: "hello".into(),
                data: Some(prost_types::Any {
                    type_url: String::new(),
                    value: b"grpcs".to_vec(),
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("InvokeService");
    assert_eq!(response.into_inner().data.expect("data").value, b"grpcs");

    let mut request = tonic::Request::new(Note {
        text: "proxied over tls".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("dapr-app-id", "orders".parse().expect("ascii"));
    let note = EchoClient::new(channel)
        .unary(request)
        .await
        .expect("proxied call");
    assert_eq!(note.into_inner().text, "proxied over tls");
}
