//! The injector without certificate files gets its serving certificate from sentry, as
//! upstream: id `dapr-injector` with the DNS name the API server calls,
//! `dapr-sidecar-injector.<ns>.svc`, which a client trusting only sentry's root verifies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::sentry::Sentry;
use e2e::sidecar::{binary, free_port, scratch_dir};

#[tokio::test(flavor = "multi_thread")]
async fn the_injector_serves_with_a_certificate_from_sentry_for_its_service_name() {
    let dir = scratch_dir("injector-sentry").expect("dir");
    let sentry = Sentry::start(&dir, "1h", "15m").await.expect("sentry");
    let (port, healthz) = (free_port().expect("port"), free_port().expect("port"));
    let log = dir.join("injector.log");
    let out = std::fs::File::create(&log).expect("log");
    let _injector = tokio::process::Command::new(binary("injector"))
        .args([
            "--port",
            &port.to_string(),
            "--healthz-port",
            &healthz.to_string(),
        ])
        .args([
            "--listen-address",
            "127.0.0.1",
            "--healthz-listen-address",
            "127.0.0.1",
        ])
        .arg("--enable-metrics=false")
        .env("SIDECAR_IMAGE", "localhost/daprd:test")
        .env("NAMESPACE", "default")
        .env("DAPR_TRUST_ANCHORS_FILE", sentry.trust_anchors())
        .env("DAPR_SENTRY_ADDRESS", sentry.addr.to_string())
        .env("DAPR_CONTROL_PLANE_TRUST_DOMAIN", "localhost")
        // Outside a cluster: no API server to find.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::from(out.try_clone().expect("log")))
        .stderr(std::process::Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .expect("injector starts");

    // A client that trusts only sentry's root and checks the service's DNS name.
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        dapr_identity::pem::certs_from_pem(&std::fs::read(sentry.trust_anchors()).expect("ca"))
            .expect("pem")
    {
        roots.add(cert).expect("root");
    }
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(dapr_identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let name =
        rustls::pki_types::ServerName::try_from("dapr-sidecar-injector.default.svc").expect("name");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            tokio_rustls::TlsConnector::from(config.clone())
                .connect(name.clone(), tcp)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(tls)) => {
                let (_, session) = tls.get_ref();
                let leaf = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .expect("a certificate");
                let id = dapr_identity::tls::spiffe_id(leaf).expect("spiffe id");
                // The trust domain is the validator's to give (`public` from the standalone
                // insecure validator; the control plane's under the kubernetes validator).
                assert_eq!((id.namespace(), id.app_id()), ("default", "dapr-injector"));
                break;
            }
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!(
                "no verified TLS handshake within 30s ({other:?}); injector log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("serving certificate issued by sentry"),
        "{text}"
    );
}
