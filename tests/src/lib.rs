//! Harness for tests that run the real binaries: processes, network namespaces, DNS.

pub mod cluster;
pub mod netns;
pub mod raw_grpc;
pub mod sentry;
pub mod sidecar;
pub mod upstream;

/// The test-only gRPC service `e2e.echo.v1.Echo` (see `proto/e2e/echo/v1/echo.proto`).
pub mod echo {
    #![allow(clippy::all)]
    tonic::include_proto!("e2e.echo.v1");
}

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;

/// Start of the line `echo-app` prints once its port is bound:
/// `echo-app listening on <addr> (<protocol>)`.
pub const ECHO_APP_READY_PREFIX: &str = "echo-app listening on ";

/// A running `echo-app`; killed when dropped.
#[derive(Debug)]
pub struct EchoApp {
    pub child: tokio::process::Child,
    /// The address it listens on, as it printed it.
    pub addr: SocketAddr,
}

/// Spawns `cmd`, an `echo-app` command line (run directly, or inside a namespace through
/// [`netns::Network::command`]), and waits up to `timeout` for its listening line, so callers
/// can pass `--port 0` and learn the port. The rest of its stdout is drained in the background.
pub async fn spawn_echo_app(
    mut cmd: tokio::process::Command,
    timeout: Duration,
) -> anyhow::Result<EchoApp> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning echo-app")?;
    let stdout = child.stdout.take().context("echo-app stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(timeout, async {
        while let Some(line) = lines.next_line().await.context("reading echo-app stdout")? {
            if let Some(rest) = line.strip_prefix(ECHO_APP_READY_PREFIX) {
                let addr = rest.split(' ').next().unwrap_or_default();
                return addr
                    .parse::<SocketAddr>()
                    .with_context(|| format!("bad address in {line:?}"));
            }
        }
        bail!("echo-app closed stdout before listening")
    })
    .await;
    let addr = match addr {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => {
            let status = child.try_wait().ok().flatten();
            return Err(e.context(format!("echo-app did not start (exit: {status:?})")));
        }
        Err(_) => bail!("echo-app printed no listening line within {timeout:?}"),
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(EchoApp { child, addr })
}

/// Starts `echo-app --protocol <protocol>` on a free loopback port and waits (10s at most)
/// until it listens.
pub async fn echo_app(protocol: &str) -> anyhow::Result<EchoApp> {
    echo_app_with(protocol, &[]).await
}

/// [`echo_app`] with extra flags (e.g. `--tls`).
pub async fn echo_app_with(protocol: &str, extra: &[&str]) -> anyhow::Result<EchoApp> {
    let mut cmd = tokio::process::Command::new(sidecar::binary("echo-app"));
    cmd.args(["--protocol", protocol, "--port", "0"])
        .args(extra);
    spawn_echo_app(cmd, Duration::from_secs(10)).await
}
