//! `injector`: serve the admission webhook, or `injector render -f FILE|-`. Exit 64 on bad
//! flags or configuration, 1 on a runtime failure.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use injector::config::{Command, Env, Flags};
use injector::{Config, Error};

fn main() -> ExitCode {
    let flags = match Flags::try_parse() {
        Ok(flags) => flags,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Some(Command::Render(args)) = &flags.command {
        return match injector::render::run(args) {
            Ok(rendered) => {
                for warning in &rendered.warnings {
                    eprintln!("warning: {warning}");
                }
                let mut out = std::io::stdout().lock();
                match out.write_all(rendered.yaml.as_bytes()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("injector render: {e}");
                        ExitCode::from(1)
                    }
                }
            }
            Err(e @ (Error::Config(_) | Error::InvalidId(_))) => {
                eprintln!("injector render: {e}");
                ExitCode::from(64)
            }
            Err(e) => {
                eprintln!("injector render: {e}");
                ExitCode::from(1)
            }
        };
    }
    let config = match Config::from_flags(flags, &Env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("injector: {e}");
            return ExitCode::from(64);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("injector: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(injector::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (Error::Config(_) | Error::InvalidId(_))) => {
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
    let filter: tracing_subscriber::filter::Targets = format!(
        "{},h2=warn,hyper=warn,tower=warn,kube=warn",
        config.log_level
    )
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
