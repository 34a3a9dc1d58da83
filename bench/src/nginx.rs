//! The comparison chain: client → nginx A → TLS 1.3 with client certificates → nginx B → app,
//! for HTTP/1.1 (`proxy_pass`) and gRPC (`grpc_pass`), from Debian's `nginx`; and the HTTP
//! chain again with HTTP/2 between the hops (`nginx-h2`), the protocol between two sidecars.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Installs Debian's nginx when it is missing.
pub fn ensure_installed() -> anyhow::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join("nginx");
        if p.exists() {
            return Ok(p);
        }
    }
    eprintln!("bench: nginx is missing; installing Debian's nginx with apt-get");
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "nginx"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install nginx failed ({status}); run `apt-get update` first?");
    }
    let p = PathBuf::from("/usr/sbin/nginx");
    if !p.exists() {
        bail!("nginx still missing after apt-get");
    }
    Ok(p)
}

pub fn version(nginx: &Path) -> String {
    std::process::Command::new(nginx)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default()
}

/// A CA, nginx B's serving certificate (`localhost`, 127.0.0.1) and nginx A's client
/// certificate, all ECDSA P-256, written to `dir`.
pub fn write_certs(dir: &Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    for (name, sans) in [
        (
            "server",
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        ),
        ("client", vec!["nginx-a".to_owned()]),
    ] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The common head of both configs: one worker process, as a sidecar proxy is usually run
/// (the daprd sidecars are not pinned either; both may use every core).
fn head(dir: &Path, name: &str) -> String {
    let user = if is_root() { "user root;\n" } else { "" };
    let d = dir.display();
    format!(
        "{user}worker_processes 1;\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/{name}-body;\n  proxy_temp_path {d}/{name}-proxy;\n  fastcgi_temp_path {d}/{name}-fastcgi;\n  uwsgi_temp_path {d}/{name}-uwsgi;\n  scgi_temp_path {d}/{name}-scgi;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  client_body_buffer_size 64k;\n  proxy_buffering off;\n  proxy_request_buffering off;\n"
    )
}

/// Ports of the two nginx instances.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub a_http: u16,
    pub a_grpc: u16,
    pub b_http: u16,
    pub b_grpc: u16,
    /// The HTTP chain with HTTP/2 between the hops: A's HTTP/1.1 port, B's HTTP/2 port.
    pub a_h2: u16,
    pub b_h2: u16,
}

/// TLS 1.3's suites in the order daprd offers them (`dapr_identity::tls::crypto_provider`):
/// OpenSSL, as rustls, would otherwise put AES-256-GCM first, and the chains are compared
/// doing the same work.
const SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/// nginx A: plain HTTP/1.1 and h2c in from the client, TLS 1.3 with a client certificate out
/// to B, keep-alive upstreams. On `a_h2`, HTTP/1.1 requests go on to B over HTTP/2:
/// `grpc_pass` sends any request as an HTTP/2 stream, as a sidecar sends an invocation to
/// another (Dapr's internal API is gRPC).
pub fn config_a(dir: &Path, ports: Ports) -> String {
    let d = dir.display();
    let tls = |p: &str| {
        format!(
            "    {p}_ssl_protocols TLSv1.3;\n    {p}_ssl_certificate {d}/client.crt;\n    {p}_ssl_certificate_key {d}/client.key;\n    {p}_ssl_trusted_certificate {d}/ca.crt;\n    {p}_ssl_verify on;\n    {p}_ssl_name localhost;\n    {p}_ssl_session_reuse on;\n    {p}_ssl_conf_command Ciphersuites {SUITES};\n"
        )
    };
    format!(
        "{head}  upstream b_http {{ server 127.0.0.1:{b_http}; keepalive 64; keepalive_requests 1000000; }}\n  upstream b_grpc {{ server 127.0.0.1:{b_grpc}; keepalive 64; keepalive_requests 1000000; }}\n  server {{\n    listen 127.0.0.1:{a_http};\n    location / {{\n      proxy_pass https://b_http;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n  {proxy_tls}    }}\n  }}\n  server {{\n    listen 127.0.0.1:{a_grpc} http2;\n    location / {{\n      grpc_pass grpcs://b_grpc;\n  {grpc_tls}    }}\n  }}\n  upstream b_h2 {{ server 127.0.0.1:{b_h2}; keepalive 64; keepalive_requests 1000000; }}\n  server {{\n    listen 127.0.0.1:{a_h2};\n    location / {{\n      grpc_pass grpcs://b_h2;\n  {grpc_tls}    }}\n  }}\n}}\n",
        head = head(dir, "nginx-a"),
        b_http = ports.b_http,
        b_grpc = ports.b_grpc,
        a_http = ports.a_http,
        a_grpc = ports.a_grpc,
        a_h2 = ports.a_h2,
        b_h2 = ports.b_h2,
        proxy_tls = tls("proxy"),
        grpc_tls = tls("grpc"),
    )
}

/// nginx B: TLS 1.3 requiring a client certificate from the bench CA, plain to the apps; on
/// `b_h2`, HTTP/2 in and HTTP/1.1 to the app.
pub fn config_b(dir: &Path, ports: Ports, app_http: u16, app_grpc: u16) -> String {
    let d = dir.display();
    let tls = format!(
        "    ssl_protocols TLSv1.3;\n    ssl_certificate {d}/server.crt;\n    ssl_certificate_key {d}/server.key;\n    ssl_client_certificate {d}/ca.crt;\n    ssl_verify_client on;\n    ssl_conf_command Ciphersuites {SUITES};\n"
    );
    format!(
        "{head}  upstream app_http {{ server 127.0.0.1:{app_http}; keepalive 64; keepalive_requests 1000000; }}\n  upstream app_grpc {{ server 127.0.0.1:{app_grpc}; keepalive 64; keepalive_requests 1000000; }}\n  server {{\n    listen 127.0.0.1:{b_http} ssl;\n{tls}    location / {{\n      proxy_pass http://app_http;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n  server {{\n    listen 127.0.0.1:{b_grpc} ssl http2;\n{tls}    location / {{\n      grpc_pass grpc://app_grpc;\n    }}\n  }}\n  server {{\n    listen 127.0.0.1:{b_h2} ssl http2;\n{tls}    location / {{\n      proxy_pass http://app_http;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        head = head(dir, "nginx-b"),
        b_http = ports.b_http,
        b_grpc = ports.b_grpc,
        b_h2 = ports.b_h2,
    )
}

/// One nginx master process (and its worker); killed when dropped.
pub struct Nginx {
    pub child: tokio::process::Child,
    pub name: String,
}

impl Nginx {
    /// Writes `config` and starts nginx with it; waits (bounded) for `port` to accept.
    pub async fn start(
        nginx: &Path,
        dir: &Path,
        name: &str,
        config: &str,
        ports: &[u16],
    ) -> anyhow::Result<Nginx> {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.join(format!("{name}.out")))?;
        let mut child = tokio::process::Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("spawn nginx")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in ports {
            while tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_err()
            {
                if let Ok(Some(status)) = child.try_wait() {
                    let out = std::fs::read_to_string(dir.join(format!("{name}.out")))
                        .unwrap_or_default();
                    let err = std::fs::read_to_string(dir.join(format!("{name}-error.log")))
                        .unwrap_or_default();
                    bail!("{name} exited with {status}:\n{out}\n{err}");
                }
                if Instant::now() > deadline {
                    bail!("{name} did not listen on {port} within 10s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(Nginx {
            child,
            name: name.to_owned(),
        })
    }

    pub fn pid_or_none(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} exited", self.name))
    }
}

impl Drop for Nginx {
    /// The master dies by SIGKILL (`kill_on_drop`), which would orphan its worker: kill the
    /// worker first.
    fn drop(&mut self) {
        if let Some(master) = self.pid_or_none() {
            for pid in crate::procfs::family(master).into_iter().skip(1) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}
