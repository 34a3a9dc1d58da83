//! `injector`: serve the admission webhook, or `injector render -f FILE|-`. Exit 64 on bad
//! flags or configuration, 1 on a runtime failure.

use std::io::Write;
use std::process::ExitCode;

use dapr_process::ExitStatus;
use injector::Config;
use injector::config::{Command, Env, Flags};

fn main() -> ExitCode {
    let flags = match dapr_process::parse_flags::<Flags>() {
        Ok(flags) => flags,
        Err(code) => return code,
    };
    if let Some(Command::Render(args)) = &flags.command {
        return render(args);
    }
    let config = match Config::from_flags(flags, &Env::from_process()) {
        Ok(config) => config,
        Err(e) => return dapr_process::config_error("injector", &e),
    };
    dapr_process::init_logging(config.log, &["h2", "hyper", "tower", "kube"]);
    match dapr_process::runtime("injector", true) {
        Ok(runtime) => dapr_process::exit(runtime.block_on(injector::run(config))),
        Err(code) => code,
    }
}

/// `injector render`: the patched YAML on stdout, warnings and errors on stderr; no logging.
fn render(args: &injector::config::RenderArgs) -> ExitCode {
    match injector::render::run(args) {
        Ok(rendered) => {
            for warning in &rendered.warnings {
                eprintln!("warning: {warning}");
            }
            match std::io::stdout().lock().write_all(rendered.yaml.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("injector render: {e}");
                    ExitCode::from(dapr_process::EXIT_FAILURE)
                }
            }
        }
        Err(e) => {
            eprintln!("injector render: {e}");
            e.exit_code()
        }
    }
}
