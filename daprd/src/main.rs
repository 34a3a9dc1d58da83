//! `daprd`: parse flags, set up logging, run the sidecar. Exit 64 on bad configuration.

use std::process::ExitCode;

use clap::Parser;
use daprd::config::{Env, Flags};
use daprd::{Config, Error};

fn main() -> ExitCode {
    let flags = match Flags::try_parse() {
        Ok(flags) => flags,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config = match Config::from_flags(flags, Env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("daprd: {e}");
            return ExitCode::from(64);
        }
    };
    init_logging(&config);
    // One thread for every task unless TOKIO_WORKER_THREADS asks for a pool: a sidecar's
    // requests are short hops between sockets, and handing them between threads costs more CPU
    // per request (and latency) than the parallelism gains on a sidecar's share of a node.
    let mut builder = if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("daprd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(daprd::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::Config { .. }) => {
            tracing::error!("{e}");
            ExitCode::from(64)
        }
        Err(e) => {
            tracing::error!("fatal error: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Per-target levels without `EnvFilter`'s regex engine (code every process would page in).
    let filter: tracing_subscriber::filter::Targets =
        format!("{},h2=warn,hyper=warn,tower=warn", config.log_level)
            .parse()
            .unwrap_or_else(|_| {
                tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
            });
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_target(false);
    if config.log_as_json {
        registry.with(layer.json().flatten_event(true)).init();
    } else {
        registry.with(layer).init();
    }
}
