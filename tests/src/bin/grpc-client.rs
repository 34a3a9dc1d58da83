//! `grpc-client`: a gRPC client of daprd's API port for tests that run it inside a network
//! namespace (where the test process itself cannot connect). Prints one JSON object.
//!
//! - `grpc-client --addr A invoke --id ID --method M --data D`: `Dapr/InvokeService`.
//! - `grpc-client --addr A echo --app-id ID`: `e2e.echo.v1.Echo` through daprd's proxy: a unary
//!   call, a 20-item server stream and a 3-note bidirectional exchange.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dapr_proto::common::v1::{HttpExtension, InvokeRequest, http_extension::Verb};
use dapr_proto::runtime::v1::InvokeServiceRequest;
use dapr_proto::runtime::v1::dapr_client::DaprClient;
use e2e::echo::Note;
use e2e::echo::echo_client::EchoClient;
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// daprd's gRPC API address.
    #[arg(long)]
    addr: String,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
enum Call {
    Invoke {
        #[arg(long)]
        id: String,
        #[arg(long)]
        method: String,
        #[arg(long, default_value = "")]
        data: String,
    },
    Echo {
        #[arg(long)]
        app_id: String,
    },
}

fn with_app_id<T>(mut request: tonic::Request<T>, id: &str) -> anyhow::Result<tonic::Request<T>> {
    request.metadata_mut().insert("dapr-app-id", id.parse()?);
    Ok(request)
}

fn note(text: &str) -> Note {
    Note {
        text: text.into(),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = Channel::from_shared(format!("http://{}", args.addr))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .context("connecting to daprd")?;
    let out = match args.call {
        Call::Invoke { id, method, data } => {
            let response = DaprClient::new(channel)
                .invoke_service(InvokeServiceRequest {
                    id,
                    message: Some(InvokeRequest {
                        method,
                        data: Some(prost_types::Any {
                            type_url: String::new(),
                            value: data.into_bytes(),
                        }),
                        content_type: "text/plain".into(),
                        http_extension: Some(HttpExtension {
                            verb: Verb::Post as i32,
                            querystring: String::new(),
                        }),
                    }),
                })
                .await;
            match response {
                Ok(response) => {
                    let method = response
                        .metadata()
                        .get("x-echo-method")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let message = response.into_inner();
                    serde_json::json!({
                        "data": String::from_utf8_lossy(&message.data.unwrap_or_default().value),
                        "method": method,
                    })
                }
                Err(status) => serde_json::json!({
                    "code": status.code() as i32,
                    "message": status.message(),
                }),
            }
        }
        Call::Echo { app_id } => {
            let mut echo = EchoClient::new(channel);
            let unary = echo
                .unary(with_app_id(tonic::Request::new(note("ping")), &app_id)?)
                .await?;
            let caller = unary
                .metadata()
                .get("x-caller")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let mut counted = echo
                .count(with_app_id(tonic::Request::new(note("20")), &app_id)?)
                .await?
                .into_inner();
            let mut count = Vec::new();
            while let Some(n) = counted.message().await? {
                count.push(n.text);
            }
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(note("one")).await?;
            let mut chat = echo
                .chat(with_app_id(
                    tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                    &app_id,
                )?)
                .await?
                .into_inner();
            let mut replies = Vec::new();
            for next in ["two", "three", ""] {
                let reply = chat.message().await?.context("chat ended early")?;
                replies.push(reply.text);
                if !next.is_empty() {
                    tx.send(note(next)).await?;
                }
            }
            drop(tx);
            serde_json::json!({
                "unary": unary.into_inner().text,
                "caller": caller,
                "count": count,
                "chat": replies,
            })
        }
    };
    println!("{out}");
    Ok(())
}
