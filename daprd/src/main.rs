//! `daprd`: parse flags, set up logging, run the sidecar. Exit 64 on bad configuration.

use std::process::ExitCode;

use daprd::Config;
use daprd::config::{Env, Flags};

/// mimalloc rather than glibc's malloc: a request allocates about a hundred times, and glibc
/// spent 2.5 times the instructions on it. Built without transparent huge pages
/// (vendor/README.md): 2 MiB pages would back an arena of which an idle sidecar touches a few
/// hundred KiB (bench/notes.md, "the allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
