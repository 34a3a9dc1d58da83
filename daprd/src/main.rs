//! `daprd`: parse flags, set up logging, run the sidecar. Exit 64 on bad configuration.

use std::process::ExitCode;

use daprd::Config;
use daprd::config::{Env, Flags};

fn main() -> ExitCode {
    let config = match dapr_process::parse_flags::<Flags>().and_then(|flags| {
        Config::from_flags(flags, Env::from_process())
            .map_err(|e| dapr_process::config_error("daprd", &e))
    }) {
        Ok(config) => config,
        Err(code) => return code,
    };
    dapr_process::init_logging(config.log, &["h2", "hyper", "tower"]);
    // One thread for every task unless TOKIO_WORKER_THREADS asks for a pool: a sidecar's
    // requests are short hops between sockets, and handing them between threads costs more CPU
    // per request (and latency) than the parallelism gains on a sidecar's share of a node.
    let pool = std::env::var_os("TOKIO_WORKER_THREADS").is_some();
    match dapr_process::runtime("daprd", pool) {
        Ok(runtime) => dapr_process::exit(runtime.block_on(daprd::run(config))),
        Err(code) => code,
    }
}
