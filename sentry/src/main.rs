//! `sentry`: parse flags, set up logging, run the CA. Exit 64 on bad flags or configuration,
//! 1 on a runtime failure.

#![deny(clippy::expect_used)]

use std::process::ExitCode;

use sentry::Config;
use sentry::config::{Env, Flags};

fn main() -> ExitCode {
    let config = match dapr_process::parse_flags::<Flags>().and_then(|flags| {
        Config::from_flags(flags, Env::from_process())
            .map_err(|e| dapr_process::config_error("sentry", &e))
    }) {
        Ok(config) => config,
        Err(code) => return code,
    };
    dapr_process::init_logging(config.log, &["h2", "hyper", "tower", "rustls"]);
    match dapr_process::runtime("sentry", true) {
        Ok(runtime) => dapr_process::exit(runtime.block_on(sentry::run(config))),
        Err(code) => code,
    }
}
