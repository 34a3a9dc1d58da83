//! Why the sidecar could not start. Kept apart from the per-call [`super::Error`]: none of these
//! reaches a client, and each has an exit code instead of a wire status.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A start-up failure, with its cause as the source where there is one. A bad flag or
/// configuration exits 64 (usage), everything else 1 ([`dapr_process::ExitStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid {flag}: {reason}")]
    Config { flag: &'static str, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on the Unix-domain socket {}: {source}", path.display())]
    BindUnix {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The name resolver could not be set up (its DNS configuration, its sqlite file).
    #[error("name resolution: {0}")]
    NameResolution(#[from] crate::resolve::ResolveError),
    /// The app channel could not be set up (the app's address, TLS to the app).
    #[error("{0}")]
    AppChannel(#[source] super::Error),
    #[error("workload identity: {0}")]
    Identity(#[from] dapr_identity::Error),
    /// The Configuration named by `--config` could not be read (which one, from where, and why).
    #[error("error loading configuration: {what}: {reason}")]
    Configuration { what: String, reason: String },
    /// No way to ask the API server for that Configuration (no kubeconfig or service account,
    /// or one that does not make a client).
    #[error("error loading configuration: {what}: {source}")]
    ConfigurationAccess {
        what: String,
        source: crate::apiserver::ApiServerError,
    },
    #[error("loading resources: {0}")]
    Resources(#[from] crate::resources::ResourcesError),
    #[error(transparent)]
    Endpoint(#[from] crate::resources::EndpointError),
    #[error("invalid Resiliency: {0}")]
    Resiliency(#[from] crate::resiliency::PolicyError),
    #[error("Configuration {0}")]
    TracingSettings(#[from] crate::trace::SettingsError),
    #[error(transparent)]
    TracingExport(#[from] crate::trace::export::ExportError),
}

impl dapr_process::ExitStatus for StartError {
    fn is_usage(&self) -> bool {
        matches!(self, StartError::Config { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dapr_process::ExitStatus;

    #[test]
    fn a_bad_flag_exits_64_and_a_failed_start_1() {
        let flag = StartError::Config {
            flag: "--app-port",
            reason: "not a port".into(),
        };
        assert_eq!(flag.exit_code(), std::process::ExitCode::from(64));
        let bind = StartError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 3500)),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(bind.exit_code(), std::process::ExitCode::from(1));
        assert!(
            std::error::Error::source(&bind).is_some(),
            "keeps its cause"
        );
    }
}
