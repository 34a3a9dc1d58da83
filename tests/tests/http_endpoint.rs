//! Invoking services without a sidecar through daprd (HTTP API and gRPC `InvokeService`): an
//! HTTPEndpoint resource by name (base URL, `spec.headers`, `spec.clientTLS` root CA and client
//! certificate), and a URL in place of the app id (in the path, percent-encoded, or in `dapr-app-id`). The services are echo-apps
//! with no daprd in front; the resources come from `--resources-path`.

use std::path::{Path, PathBuf};

use e2e::sidecar::{HttpClient, Sidecar, SidecarOptions, scratch_dir};
use e2e::{EchoApp, echo_app, echo_app_with};

/// Writes `yaml` as the only file of `dir/resources` and starts `checkout` with it.
async fn sidecar(dir: &Path, yaml: &str) -> anyhow::Result<Sidecar> {
    let resources = dir.join("resources");
    std::fs::create_dir_all(&resources)?;
    std::fs::write(resources.join("endpoints.yaml"), yaml)?;
    let options = SidecarOptions {
        extra_args: vec![
            "--resources-path".into(),
            resources.to_string_lossy().into_owned(),
        ],
        ..Default::default()
    };
    Sidecar::start("checkout", dir, options).await
}

fn endpoint(name: &str, base_url: &str, extra: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: {name}\nspec:\n  baseUrl: {base_url}\n{extra}---\n"
    )
}

fn indent(pem: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    pem.lines().map(|l| format!("{pad}{l}\n")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_endpoint_gets_the_method_query_headers_and_body() {
    let dir = scratch_dir("endpoint-named").expect("scratch dir");
    let service: EchoApp = echo_app("http").await.expect("echo-app starts");
    let base = format!("http://{}/inspect/", service.addr);
    let headers = "  headers:\n  - name: x-api-key\n    value: from-the-resource\n  - name: x-overridden\n    value: resource-wins\n";
    let root = format!("http://{}", service.addr);
    let yaml = endpoint("inventory", &base, headers) + &endpoint("statuses", &root, "");
    let caller = sidecar(&dir, &yaml).await.expect("daprd starts");
    let client = HttpClient::new();
    let reply = client
        .send(
            http::Method::PUT,
            &caller.url("/v1.0/invoke/inventory/method/items/7?color=red"),
            &[("x-client", "kept"), ("x-overridden", "client")],
            bytes::Bytes::from_static(b"twelve bytes"),
        )
        .await
        .expect("answer");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = reply.json().expect("inspect JSON");
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/inspect/items/7");
    assert_eq!(seen["query"], "color=red");
    assert_eq!(seen["body_len"], 12);
    let headers = &seen["headers"];
    assert_eq!(headers["x-api-key"], "from-the-resource", "{headers}");
    assert_eq!(headers["x-overridden"], "resource-wins", "{headers}");
    assert_eq!(headers["x-client"], "kept", "{headers}");
    assert!(headers.get("dapr-app-id").is_none(), "{headers}");

    let reply = client
        .get(&caller.url("/v1.0/invoke/inventory/method/../status/404"))
        .await
        .expect("answer");
    assert_eq!(
        reply.status, 400,
        "path traversal is refused before any call"
    );
    // The service's status and body pass through as they are.
    let reply = client
        .get(&caller.url("/v1.0/invoke/statuses/method/status/404"))
        .await
        .expect("answer");
    assert_eq!(reply.status, 404);
    assert_eq!(&reply.body[..], b"status 404");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_url_in_place_of_the_app_id_is_called_directly() {
    let dir = scratch_dir("endpoint-url").expect("scratch dir");
    let service = echo_app("http").await.expect("echo-app starts");
    let caller = sidecar(&dir, "").await.expect("daprd starts");
    let client = HttpClient::new();
    let url = format!("http://{}", service.addr);
    let encoded = url.replace(':', "%3A").replace('/', "%2F");
    for path in [
        format!("/v1.0/invoke/{url}/method/inspect/plain"),
        format!("/v1.0/invoke/{encoded}/method/inspect/plain"),
    ] {
        let reply = client.get(&caller.url(&path)).await.expect("answer");
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
        assert_eq!(
            reply.json().expect("JSON")["path"],
            "/inspect/plain",
            "{path}"
        );
    }
    // The `dapr-app-id` header form: the whole path is the method; the body streams through.
    let reply = client
        .send(
            http::Method::POST,
            &caller.url("/echo/this"),
            &[
                ("dapr-app-id", url.as_str()),
                ("content-type", "text/plain"),
            ],
            bytes::Bytes::from_static(b"round trip"),
        )
        .await
        .expect("answer");
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"round trip");
    assert_eq!(reply.headers["x-echo-path"], "/echo/this");

    // Nothing listens: Dapr's error, naming the target.
    let closed = e2e::sidecar::free_port().expect("port");
    let reply = client
        .get(&caller.url(&format!("/v1.0/invoke/http://127.0.0.1:{closed}/method/x")))
        .await
        .expect("answer");
    assert_eq!(reply.status, 500);
    let error = reply.json().expect("error JSON");
    assert_eq!(error["errorCode"], "ERR_DIRECT_INVOKE", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("127.0.0.1:{closed}"))),
        "{error}"
    );
}

/// A CA and a client certificate it issued, as PEM: (ca, certificate, key).
fn client_identity() -> (String, String, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["checkout".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("client certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn client_tls_trusts_the_given_root_and_presents_the_client_certificate() {
    let dir = scratch_dir("endpoint-tls").expect("scratch dir");
    let (ca, cert, key) = client_identity();
    let ca_file: PathBuf = dir.join("client-ca.pem");
    std::fs::write(&ca_file, &ca).expect("write CA");
    let server_cert = dir.join("server.pem");
    let service = echo_app_with(
        "http",
        &[
            "--tls",
            "--cert-out",
            &server_cert.to_string_lossy(),
            "--client-ca",
            &ca_file.to_string_lossy(),
        ],
    )
    .await
    .expect("echo-app starts");
    let root = std::fs::read_to_string(&server_cert).expect("server certificate");
    let base = format!("https://localhost:{}", service.addr.port());
    let with_identity = format!(
        "  clientTLS:\n    rootCA:\n      value: |\n{}    certificate:\n      value: |\n{}    privateKey:\n      value: |\n{}",
        indent(&root, 8),
        indent(&cert, 8),
        indent(&key, 8)
    );
    let root_only = format!(
        "  clientTLS:\n    rootCA:\n      value: |\n{}",
        indent(&root, 8)
    );
    let yaml =
        endpoint("secure", &base, &with_identity) + &endpoint("anonymous", &base, &root_only);
    let caller = sidecar(&dir, &yaml).await.expect("daprd starts");
    let client = HttpClient::new();

    let reply = client
        .get(&caller.url("/v1.0/invoke/secure/method/inspect/tls"))
        .await
        .expect("answer");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json().expect("JSON")["path"], "/inspect/tls");

    // Without the client certificate the service refuses the handshake.
    let reply = client
        .get(&caller.url("/v1.0/invoke/anonymous/method/inspect/tls"))
        .await
        .expect("answer");
    assert_eq!(reply.status, 500, "{:?}", reply.body);
    // A URL target trusts only the system's roots, which do not hold the test certificate.
    let reply = client
        .get(&caller.url(&format!("/v1.0/invoke/{base}/method/inspect/tls")))
        .await
        .expect("answer");
    assert_eq!(reply.status, 500, "{:?}", reply.body);
    let message = reply.json().expect("error JSON")["message"].to_string();
    assert!(message.contains("certificate"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_cannot_be_used_stops_the_start_naming_its_field() {
    let dir = scratch_dir("endpoint-bad").expect("scratch dir");
    let error = sidecar(&dir, &endpoint("github", "api.github.com", ""))
        .await
        .map(|_| ())
        .expect_err("daprd refuses to start");
    let text = error.to_string();
    assert!(
        text.contains("HTTPEndpoint github") && text.contains("spec.baseUrl"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_invoke_service_reaches_an_endpoint_and_maps_its_status() {
    use dapr_proto::common::v1::{HttpExtension, InvokeRequest, http_extension::Verb};
    use dapr_proto::runtime::v1::InvokeServiceRequest;
    use dapr_proto::runtime::v1::dapr_client::DaprClient;

    let dir = scratch_dir("endpoint-grpc").expect("scratch dir");
    let service = echo_app("http").await.expect("echo-app starts");
    let base = format!("http://{}", service.addr);
    let caller = sidecar(&dir, &endpoint("inventory", &base, ""))
        .await
        .expect("daprd starts");
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", caller.grpc_port))
            .expect("uri")
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .connect()
            .await
            .expect("connects to the gRPC API");
    let mut dapr = DaprClient::new(channel);
    let request = |method: &str, verb: Verb, data: &[u8]| InvokeServiceRequest {
        id: "inventory".into(),
        message: Some(InvokeRequest {
            method: method.into(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: data.to_vec(),
            }),
            content_type: "text/plain".into(),
            http_extension: Some(HttpExtension {
                verb: verb as i32,
                querystring: "color=red".into(),
            }),
        }),
    };
    let reply = dapr
        .invoke_service(request("echo/grpc", Verb::Put, b"by grpc"))
        .await
        .expect("InvokeService succeeds")
        .into_parts();
    assert_eq!(reply.0.get("x-echo-method").expect("header"), "PUT");
    assert_eq!(
        reply.0.get("x-echo-path").expect("header"),
        "/echo/grpc?color=red"
    );
    let answer = reply.1;
    assert_eq!(answer.content_type, "text/plain");
    assert_eq!(answer.data.expect("data").value, b"by grpc");

    // A non-2xx answer becomes a gRPC error with the HTTP status as metadata, as for apps.
    let status = dapr
        .invoke_service(request("status/404", Verb::Get, b""))
        .await
        .expect_err("404 is an error");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(
        status.metadata().get("dapr-http-status").expect("status"),
        "404"
    );
}
