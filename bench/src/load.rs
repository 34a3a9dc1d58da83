//! The load generator: open loop at a constant rate (latency from the scheduled send time, so
//! a stalled server is charged for every request it delayed: no coordinated omission) and
//! closed loop (as fast as the connections allow), over a fixed set of connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use dapr_proto::common::v1::InvokeRequest;
use dapr_proto::runtime::v1::InvokeServiceRequest;
use dapr_proto::runtime::v1::app_callback_client::AppCallbackClient;
use dapr_proto::runtime::v1::dapr_client::DaprClient;
use dapr_proto::sentry::v1::SignCertificateRequest;
use dapr_proto::sentry::v1::ca_client::CaClient;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tonic::transport::Channel;

/// Every call's own deadline: a load loop never waits longer than this on one request.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What one connection sends, again and again.
#[derive(Clone)]
pub enum Target {
    /// HTTP/1.1 `POST path` with `body`; the answer must be 200 (and is read whole).
    Http {
        addr: SocketAddr,
        path: String,
        body: Bytes,
        tls: Option<Arc<rustls::ClientConfig>>,
        content_type: &'static str,
    },
    /// `AppCallback/OnInvoke` straight to an app (or through a gRPC proxy).
    AppGrpc { addr: SocketAddr, body: Bytes },
    /// `Dapr/InvokeService` to a sidecar for `app_id`.
    DaprGrpc {
        addr: SocketAddr,
        app_id: String,
        body: Bytes,
    },
    /// `CA/SignCertificate` over TLS; one CSR per connection, signed again and again.
    Sentry {
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        csrs: Arc<Vec<Vec<u8>>>,
    },
}

/// One open connection of a [`Target`].
pub enum Conn {
    Http {
        target: Target,
        sender: Option<SendRequest<Full<Bytes>>>,
    },
    AppGrpc(AppCallbackClient<Channel>, Bytes),
    DaprGrpc(DaprClient<Channel>, String, Bytes),
    Sentry(CaClient<Channel>, Vec<u8>),
}

fn invoke_request(body: &Bytes) -> InvokeRequest {
    InvokeRequest {
        method: "echo".into(),
        data: Some(prost_types::Any {
            type_url: String::new(),
            value: body.to_vec(),
        }),
        content_type: "application/octet-stream".into(),
        http_extension: None,
    }
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .connect()
            .await?,
    )
}

async fn http1(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let sender = match tls {
        None => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        }
        Some(config) => {
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
                .await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    Ok(sender)
}

impl Target {
    /// Opens connection number `index`.
    pub async fn connect(&self, index: usize) -> anyhow::Result<Conn> {
        Ok(match self {
            Target::Http { addr, tls, .. } => Conn::Http {
                target: self.clone(),
                sender: Some(http1(*addr, tls.as_ref()).await?),
            },
            Target::AppGrpc { addr, body } => {
                Conn::AppGrpc(AppCallbackClient::new(channel(*addr).await?), body.clone())
            }
            Target::DaprGrpc { addr, app_id, body } => Conn::DaprGrpc(
                DaprClient::new(channel(*addr).await?),
                app_id.clone(),
                body.clone(),
            ),
            Target::Sentry { addr, tls, csrs } => {
                let channel = e2e::sentry::tls_channel(*addr, tls.clone()).await?;
                let csr = csrs
                    .get(index % csrs.len().max(1))
                    .context("no CSRs")?
                    .clone();
                Conn::Sentry(CaClient::new(channel), csr)
            }
        })
    }

    pub async fn connect_all(&self, n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            conns.push(self.connect(i).await?);
        }
        Ok(conns)
    }
}

impl Conn {
    /// One request, answered in full and checked.
    pub async fn call(&mut self) -> anyhow::Result<()> {
        match self {
            Conn::Http { target, sender } => {
                let Target::Http {
                    addr,
                    path,
                    body,
                    tls,
                    content_type,
                } = target
                else {
                    bail!("not an HTTP target");
                };
                // Reopen a connection the server closed (keep-alive limits, idle timeouts).
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    *sender = Some(http1(*addr, tls.as_ref()).await?);
                }
                let s = sender.as_mut().context("no connection")?;
                s.ready().await?;
                let request = http::Request::post(path.as_str())
                    .header("host", "localhost")
                    .header("content-type", *content_type)
                    .body(Full::new(body.clone()))?;
                let response = match s.send_request(request).await {
                    Ok(r) => r,
                    Err(e) => {
                        *sender = None;
                        return Err(e.into());
                    }
                };
                let status = response.status();
                let got = response.into_body().collect().await?.to_bytes();
                if status != http::StatusCode::OK {
                    bail!("status {status}: {:?}", String::from_utf8_lossy(&got));
                }
                Ok(())
            }
            Conn::AppGrpc(client, body) => {
                let r = client.on_invoke(invoke_request(body)).await?.into_inner();
                if r.data.map(|d| d.value.len()) != Some(body.len()) {
                    bail!("echo of the wrong size");
                }
                Ok(())
            }
            Conn::DaprGrpc(client, app_id, body) => {
                let r = client
                    .invoke_service(InvokeServiceRequest {
                        id: app_id.clone(),
                        message: Some(invoke_request(body)),
                    })
                    .await?
                    .into_inner();
                if r.data.map(|d| d.value.len()) != Some(body.len()) {
                    bail!("echo of the wrong size");
                }
                Ok(())
            }
            Conn::Sentry(client, csr) => {
                let r = client
                    .sign_certificate(SignCertificateRequest {
                        id: "bench".into(),
                        namespace: "default".into(),
                        certificate_signing_request: csr.clone().into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                if r.workload_certificate.is_empty() {
                    bail!("no certificate");
                }
                Ok(())
            }
        }
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // Nanoseconds, 1 ns to 60 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// What a run measured. Latencies in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    /// Scheduled requests never sent because the run hit its time bound.
    pub dropped: u64,
    pub seconds: f64,
    pub rate: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// Open loop: how late the pacer thread handed out send times (its own jitter, part of
    /// every latency above, the same for every chain).
    pub pacer_lag_p99_us: Option<f64>,
    pub first_error: Option<String>,
}

impl Summary {
    fn from(
        h: &Histogram<u64>,
        errors: u64,
        dropped: u64,
        seconds: f64,
        lag: Option<&Histogram<u64>>,
        first_error: Option<String>,
    ) -> Summary {
        let us = |v: u64| v as f64 / 1000.0;
        Summary {
            requests: h.len(),
            errors,
            dropped,
            seconds,
            rate: h.len() as f64 / seconds.max(1e-9),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
            pacer_lag_p99_us: lag.map(|l| us(l.value_at_quantile(0.99))),
            first_error,
        }
    }
}

/// Raw histograms of a run, to merge rounds before summarising.
pub struct Recorded {
    pub latency: Histogram<u64>,
    pub lag: Histogram<u64>,
    pub errors: u64,
    pub dropped: u64,
    pub seconds: f64,
    pub first_error: Option<String>,
}

impl Recorded {
    pub fn empty() -> anyhow::Result<Recorded> {
        Ok(Recorded {
            latency: histogram()?,
            lag: histogram()?,
            errors: 0,
            dropped: 0,
            seconds: 0.0,
            first_error: None,
        })
    }

    pub fn merge(&mut self, other: Recorded) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.lag.add(&other.lag)?;
        self.errors += other.errors;
        self.dropped += other.dropped;
        self.seconds += other.seconds;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }

    pub fn summary(&self, open_loop: bool) -> Summary {
        Summary::from(
            &self.latency,
            self.errors,
            self.dropped,
            self.seconds,
            open_loop.then_some(&self.lag),
            self.first_error.clone(),
        )
    }
}

/// Open loop: `rate` requests per second for `duration`, request `i` scheduled at
/// `start + i / rate` and sent on connection `i % conns.len()` (a busy connection queues it;
/// the wait counts). A dedicated thread paces (tokio's timer has 1 ms granularity).
/// Returns the connections for reuse.
pub async fn open_loop(
    conns: Vec<Conn>,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(Vec<Conn>, Recorded)> {
    let n_conns = conns.len();
    if n_conns == 0 || rate <= 0.0 {
        bail!("open loop needs connections and a rate");
    }
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(5);
    // Past this, scheduled requests are dropped (counted) rather than sent: the bound on time.
    let hard_stop = start + duration + Duration::from_secs(10);
    let mut senders = Vec::with_capacity(n_conns);
    let mut workers = Vec::with_capacity(n_conns);
    for mut conn in conns {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        senders.push(tx);
        workers.push(tokio::spawn(async move {
            let mut rec = Recorded::empty()?;
            while let Some(scheduled) = rx.recv().await {
                let now = Instant::now();
                if now > hard_stop {
                    rec.dropped += 1;
                    continue;
                }
                match tokio::time::timeout(CALL_TIMEOUT, conn.call()).await {
                    Ok(Ok(())) => {
                        rec.latency
                            .record(nanos(Instant::now().saturating_duration_since(scheduled)))?;
                    }
                    Ok(Err(e)) => {
                        rec.errors += 1;
                        rec.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                    Err(_) => {
                        rec.errors += 1;
                        rec.first_error.get_or_insert_with(|| "timeout".into());
                    }
                }
            }
            anyhow::Ok((conn, rec))
        }));
    }
    let pacer = std::thread::spawn(move || {
        // How late the pacer itself hands out each send time (sleep overshoot, scheduling).
        let mut lag = histogram()?;
        for i in 0..total {
            let at = start + period.mul_f64(i as f64);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            lag.record(nanos(Instant::now().saturating_duration_since(at)))?;
            let index = usize::try_from(i).unwrap_or(0) % senders.len();
            if let Some(tx) = senders.get(index) {
                let _ = tx.send(at);
            }
        }
        anyhow::Ok(lag)
    });
    let mut out = Vec::with_capacity(n_conns);
    let mut rec = Recorded::empty()?;
    for w in workers {
        let (conn, r) = w.await??;
        out.push(conn);
        rec.merge(r)?;
    }
    match pacer.join() {
        Ok(lag) => rec.lag.add(&lag?)?,
        Err(_) => bail!("pacer thread panicked"),
    }
    rec.seconds = duration.as_secs_f64();
    Ok((out, rec))
}

/// Closed loop: every connection sends its next request as soon as the last one is answered,
/// for `duration`. Latency is per request; the rate is what the chain sustained.
pub async fn closed_loop(
    conns: Vec<Conn>,
    duration: Duration,
) -> anyhow::Result<(Vec<Conn>, Recorded)> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for mut conn in conns {
        workers.push(tokio::spawn(async move {
            let mut rec = Recorded::empty()?;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match tokio::time::timeout(CALL_TIMEOUT, conn.call()).await {
                    Ok(Ok(())) => rec.latency.record(nanos(sent.elapsed()))?,
                    Ok(Err(e)) => {
                        rec.errors += 1;
                        rec.first_error.get_or_insert_with(|| format!("{e:#}"));
                        // A broken chain must not spin: back off a little.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {
                        rec.errors += 1;
                        rec.first_error.get_or_insert_with(|| "timeout".into());
                    }
                }
            }
            anyhow::Ok((conn, rec))
        }));
    }
    let mut out = Vec::new();
    let mut rec = Recorded::empty()?;
    for w in workers {
        let (conn, r) = w.await??;
        out.push(conn);
        rec.merge(r)?;
    }
    rec.seconds = started.elapsed().as_secs_f64();
    Ok((out, rec))
}
