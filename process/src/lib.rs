//! Process scaffolding shared by `daprd`, `sentry` and the injector: the flags every upstream
//! Dapr binary has (`--log-level`, `--log-as-json`, the metrics flags), logging set-up, the
//! shutdown signal, the async runtime and the exit codes.
//!
//! It exists so that the three `main.rs` cannot drift apart: each used to carry its own copy,
//! and the copies came to accept different flag spellings and to handle signals differently.

use std::fmt;
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, ValueEnum};

/// Exit code for bad flags or configuration (sysexits' `EX_USAGE`), as the binaries always used.
pub const EXIT_USAGE: u8 = 64;
/// Exit code for a failure after start-up.
pub const EXIT_FAILURE: u8 = 1;

/// Upstream's log levels (dapr/kit logger), case-insensitive as there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
#[value(rename_all = "lower")]
pub enum LogLevel {
    /// Not one of upstream's levels; kept because the binaries always accepted it.
    #[value(hide = true)]
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
    /// Upstream logs fatal errors and exits; here they are errors.
    Fatal,
}

impl LogLevel {
    fn filter(self) -> tracing::Level {
        match self {
            LogLevel::Trace => tracing::Level::TRACE,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error | LogLevel::Fatal => tracing::Level::ERROR,
        }
    }
}

/// `--log-level` and `--log-as-json`, named and defaulted as upstream's binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Args)]
pub struct LogArgs {
    /// Log level: debug, info, warn, error or fatal.
    #[arg(long = "log-level", value_enum, ignore_case = true, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Log as JSON, one object per line. A Go bool flag: `--log-as-json`, `--log-as-json=true`
    /// or `--log-as-json=false`.
    #[arg(long = "log-as-json", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub log_as_json: bool,
}

/// `--enable-metrics`, `--metrics-port` and `--metrics-listen-address`, as upstream's binaries.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct MetricsArgs {
    #[arg(long = "enable-metrics", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_metrics: bool,
    #[arg(long = "metrics-port", default_value_t = 9090)]
    pub metrics_port: u16,
    #[arg(long = "metrics-listen-address", default_value = "0.0.0.0")]
    pub metrics_listen_address: String,
}

/// Parses the command line: `--help` and `--version` print and exit 0, a usage error prints
/// clap's message and exits [`EXIT_USAGE`].
pub fn parse_flags<F: Parser>() -> Result<F, ExitCode> {
    F::try_parse().map_err(|e| {
        let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
        let _ = e.print();
        ExitCode::from(code)
    })
}

/// Reports a configuration error found before start-up (logging is not set up yet) and gives
/// the exit code for it.
pub fn config_error(program: &str, error: &dyn fmt::Display) -> ExitCode {
    eprintln!("{program}: {error}");
    ExitCode::from(EXIT_USAGE)
}

/// Sets up the global subscriber: `log.log_level` for everything but `quiet_targets` (chatty
/// dependencies such as `h2`), which log warnings and errors only; text or JSON; ANSI colours
/// only on a terminal.
pub fn init_logging(log: LogArgs, quiet_targets: &[&str]) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let registry = tracing_subscriber::registry().with(targets(log.log_level, quiet_targets));
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if log.log_as_json {
        registry.with(layer.json().flatten_event(true)).init();
    } else {
        registry.with(layer).init();
    }
}

/// Per-target levels without `EnvFilter`'s regex engine (code every process would page in).
fn targets(level: LogLevel, quiet_targets: &[&str]) -> tracing_subscriber::filter::Targets {
    quiet_targets.iter().fold(
        tracing_subscriber::filter::Targets::new().with_default(level.filter()),
        |filter, target| filter.with_target(*target, tracing::Level::WARN),
    )
}

/// Builds the async runtime: one thread, or a pool of `TOKIO_WORKER_THREADS` (tokio's default:
/// one per core).
pub fn runtime(program: &str, multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("{program}: cannot start the async runtime: {e}");
        ExitCode::from(EXIT_FAILURE)
    })
}

/// An error a binary can end with: bad configuration found at start-up exits [`EXIT_USAGE`],
/// anything else [`EXIT_FAILURE`].
pub trait ExitStatus: fmt::Display {
    /// Whether the error is in the flags, environment or configuration the process was given.
    fn is_usage(&self) -> bool;

    fn exit_code(&self) -> ExitCode {
        ExitCode::from(if self.is_usage() {
            EXIT_USAGE
        } else {
            EXIT_FAILURE
        })
    }
}

/// Logs how the server ended and gives the exit code for it.
pub fn exit<E: ExitStatus>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_usage() => {
            tracing::error!("{e}");
            e.exit_code()
        }
        Err(e) => {
            tracing::error!("fatal error: {e}");
            e.exit_code()
        }
    }
}

/// Completes on the first SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C). If a
/// handler cannot be installed, that signal is not waited for; with none it never completes,
/// rather than shutting down at once.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    () = interrupt() => {}
                }
            }
            Err(_) => interrupt().await,
        }
    }
    #[cfg(not(unix))]
    interrupt().await;
}

async fn interrupt() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    }

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("bin").chain(args.iter().copied()))
    }

    #[test]
    fn log_as_json_is_a_go_bool_flag() {
        for (args, json) in [
            (&[][..], false),
            (&["--log-as-json"][..], true),
            (&["--log-as-json=true"][..], true),
            (&["--log-as-json=false"][..], false),
        ] {
            assert_eq!(
                parse(args).expect("parses").log.log_as_json,
                json,
                "{args:?}"
            );
        }
        assert!(parse(&["--log-as-json=yes"]).is_err());
        // As a Go bool flag, the value needs `=`: the next word is never taken as one (the
        // injector's `render` subcommand follows its flags).
        assert!(parse(&["--log-as-json", "false"]).is_err());
    }

    #[test]
    fn log_levels_are_upstreams_in_any_case() {
        assert_eq!(parse(&[]).expect("parses").log, LogArgs::default());
        for (text, level) in [
            ("debug", LogLevel::Debug),
            ("INFO", LogLevel::Info),
            ("Warn", LogLevel::Warn),
            ("error", LogLevel::Error),
            ("fatal", LogLevel::Fatal),
            ("trace", LogLevel::Trace),
        ] {
            let flags = parse(&["--log-level", text]).expect(text);
            assert_eq!(flags.log.log_level, level, "{text}");
        }
        let err = parse(&["--log-level", "loud"]).expect_err("not a level");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        let text = err.to_string();
        assert!(
            text.contains("--log-level") && text.contains("debug"),
            "{text}"
        );
        assert!(
            !text.contains("trace"),
            "the hidden level is not offered: {text}"
        );
    }

    #[test]
    fn metrics_flags_default_as_upstream() {
        let m = parse(&[]).expect("parses").metrics;
        assert!(m.enable_metrics);
        assert_eq!(
            (m.metrics_port, m.metrics_listen_address.as_str()),
            (9090, "0.0.0.0")
        );
        let m = parse(&["--enable-metrics=false", "--metrics-port", "1"])
            .expect("parses")
            .metrics;
        assert!(!m.enable_metrics);
        assert_eq!(m.metrics_port, 1);
    }

    struct Failure(bool);
    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("failed")
        }
    }
    impl ExitStatus for Failure {
        fn is_usage(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn quiet_targets_log_warnings_only() {
        use tracing::Level;
        let filter = targets(LogLevel::Debug, &["h2", "hyper"]);
        assert!(filter.would_enable("daprd::config", &Level::DEBUG));
        assert!(!filter.would_enable("daprd::config", &Level::TRACE));
        assert!(!filter.would_enable("h2::codec", &Level::INFO));
        assert!(filter.would_enable("hyper", &Level::WARN));
        let filter = targets(LogLevel::Fatal, &[]);
        assert!(filter.would_enable("sentry", &Level::ERROR));
        assert!(!filter.would_enable("sentry", &Level::WARN));
    }

    #[test]
    fn configuration_errors_exit_64_and_others_1() {
        assert_eq!(exit(Ok::<(), Failure>(())), ExitCode::SUCCESS);
        assert_eq!(exit(Err(Failure(true))), ExitCode::from(64));
        assert_eq!(exit(Err(Failure(false))), ExitCode::from(1));
    }
}
