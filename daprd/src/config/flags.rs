//! daprd's command line: upstream's flags, with clap.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use dapr_process::{LogArgs, MetricsArgs};

/// Upstream daprd's flags: the subset this sidecar acts on, plus flags for parts it lacks, which
/// are accepted without effect (docs/upstream-differences.md).
#[derive(Debug, Clone, Parser)]
#[command(name = "daprd", version, about = "Dapr-compatible sidecar")]
pub struct Flags {
    /// Runtime mode.
    #[arg(long, value_enum, default_value_t = Mode::Standalone)]
    pub mode: Mode,
    /// The id of the app this sidecar serves.
    #[arg(long = "app-id", default_value = "")]
    pub app_id: String,
    /// The port the app listens on; empty for apps that only call out.
    #[arg(long = "app-port", default_value = "")]
    pub app_port: String,
    /// How daprd calls the app (any case).
    #[arg(long = "app-protocol", value_enum, ignore_case = true, default_value_t = AppProtocol::Http)]
    pub app_protocol: AppProtocol,
    /// The address the app listens on.
    #[arg(long = "app-channel-address", default_value = "127.0.0.1")]
    pub app_channel_address: String,
    /// Maximum concurrent calls into the app; -1 for unlimited.
    #[arg(long = "app-max-concurrency", default_value_t = -1, allow_negative_numbers = true)]
    pub app_max_concurrency: i64,
    /// Deprecated: use --app-protocol https or grpcs.
    #[arg(long = "app-ssl", default_value_t = false)]
    pub app_ssl: bool,
    #[arg(long = "dapr-http-port", default_value_t = 3500)]
    pub dapr_http_port: u16,
    #[arg(long = "dapr-grpc-port", default_value_t = 50001)]
    pub dapr_grpc_port: u16,
    /// Sidecar-to-sidecar port; empty picks a stable port derived from the app id.
    #[arg(long = "dapr-internal-grpc-port", default_value = "")]
    pub dapr_internal_grpc_port: String,
    #[arg(long = "dapr-internal-grpc-listen-address", default_value = "")]
    pub dapr_internal_grpc_listen_address: String,
    /// Port serving only healthz and metadata, without API token; empty disables it.
    #[arg(long = "dapr-public-port", default_value = "")]
    pub dapr_public_port: String,
    #[arg(long = "dapr-public-listen-address", default_value = "")]
    pub dapr_public_listen_address: String,
    /// A directory: serve the HTTP and gRPC APIs on the Unix-domain sockets
    /// `dapr-<app-id>-http.socket` and `dapr-<app-id>-grpc.socket` in it instead of TCP.
    #[arg(long = "unix-domain-socket", default_value = "")]
    pub unix_domain_socket: String,
    /// Comma-separated addresses for the HTTP and gRPC APIs; empty means all interfaces.
    #[arg(long = "dapr-listen-addresses", default_value = "")]
    pub dapr_listen_addresses: String,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Configuration file (standalone) or name (kubernetes); repeatable, the first is used.
    #[arg(long = "config")]
    pub config: Vec<String>,
    /// Directory of resource YAML files (Resiliency, HTTPEndpoint); repeatable.
    #[arg(long = "resources-path", alias = "components-path")]
    pub resources_path: Vec<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
    #[arg(long = "enable-api-logging", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_api_logging: Option<bool>,
    /// Largest request body accepted, as a quantity (4Mi, 16M, 1Gi).
    #[arg(long = "max-body-size", default_value = "4Mi")]
    pub max_body_size: String,
    /// Deprecated: body limit in MB; --max-body-size wins when both are set.
    #[arg(long = "dapr-http-max-request-size")]
    pub dapr_http_max_request_size: Option<u64>,
    #[arg(
        long = "dapr-graceful-shutdown-seconds",
        default_value_t = 5,
        allow_negative_numbers = true
    )]
    pub dapr_graceful_shutdown_seconds: i64,
    #[arg(long = "enable-app-health-check", default_value_t = false)]
    pub enable_app_health_check: bool,
    #[arg(long = "app-health-check-path", default_value = "/healthz")]
    pub app_health_check_path: String,
    /// Seconds between app health probes.
    #[arg(long = "app-health-probe-interval", default_value_t = 5)]
    pub app_health_probe_interval: u64,
    /// Milliseconds before a probe counts as failed.
    #[arg(long = "app-health-probe-timeout", default_value_t = 500)]
    pub app_health_probe_timeout: u64,
    #[arg(long = "app-health-threshold", default_value_t = 3)]
    pub app_health_threshold: u32,
    #[arg(long = "enable-mtls", default_value_t = false)]
    pub enable_mtls: bool,
    #[arg(long = "sentry-address", default_value = "")]
    pub sentry_address: String,
    #[arg(long = "control-plane-namespace")]
    pub control_plane_namespace: Option<String>,
    #[arg(long = "control-plane-trust-domain")]
    pub control_plane_trust_domain: Option<String>,
    #[command(flatten)]
    pub accepted: AcceptedFlags,
}

/// Upstream flags for parts this sidecar does not have (actors, scheduler, profiling, ...):
/// accepted so command lines written for upstream (and the pods the injector renders) start,
/// and reported once at start-up as having no effect.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AcceptedFlags {
    #[arg(long = "control-plane-address")]
    pub control_plane_address: Option<String>,
    #[arg(long = "placement-host-address")]
    pub placement_host_address: Option<String>,
    #[arg(long = "scheduler-host-address")]
    pub scheduler_host_address: Option<String>,
    #[arg(long = "scheduler-job-streams")]
    pub scheduler_job_streams: Option<u32>,
    #[arg(long = "actors-service", hide = true)]
    pub actors_service: Option<String>,
    #[arg(long = "reminders-service", hide = true)]
    pub reminders_service: Option<String>,
    #[arg(long = "actors-disseminate-timeout")]
    pub actors_disseminate_timeout: Option<String>,
    #[arg(long = "enable-profiling", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_profiling: Option<bool>,
    #[arg(long = "profile-port")]
    pub profile_port: Option<u16>,
    #[arg(long = "read-buffer-size")]
    pub read_buffer_size: Option<String>,
    #[arg(long = "dapr-http-read-buffer-size")]
    pub dapr_http_read_buffer_size: Option<String>,
    #[arg(long = "allowed-origins")]
    pub allowed_origins: Option<String>,
    #[arg(long = "dapr-block-shutdown-duration")]
    pub dapr_block_shutdown_duration: Option<String>,
    #[arg(long = "disable-builtin-k8s-secret-store", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_builtin_k8s_secret_store: Option<bool>,
    #[arg(long = "app-binding-options-timeout")]
    pub app_binding_options_timeout: Option<String>,
    #[arg(long = "disable-init-endpoints")]
    pub disable_init_endpoints: Option<String>,
    #[arg(long = "hot-reload-reconcile-interval")]
    pub hot_reload_reconcile_interval: Option<String>,
    #[arg(long = "sentry-request-jwt-audiences")]
    pub sentry_request_jwt_audiences: Option<String>,
    #[arg(long = "log-file")]
    pub log_file: Option<String>,
}

impl AcceptedFlags {
    /// The flags given that have no effect here.
    pub fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let mut note = |set: bool, name: &'static str| {
            if set {
                given.push(name);
            }
        };
        note(
            self.control_plane_address.is_some(),
            "--control-plane-address",
        );
        note(
            self.placement_host_address.is_some(),
            "--placement-host-address",
        );
        note(
            self.scheduler_host_address.is_some(),
            "--scheduler-host-address",
        );
        note(
            self.scheduler_job_streams.is_some(),
            "--scheduler-job-streams",
        );
        note(self.actors_service.is_some(), "--actors-service");
        note(self.reminders_service.is_some(), "--reminders-service");
        note(
            self.actors_disseminate_timeout.is_some(),
            "--actors-disseminate-timeout",
        );
        note(self.enable_profiling.is_some(), "--enable-profiling");
        note(self.profile_port.is_some(), "--profile-port");
        note(self.read_buffer_size.is_some(), "--read-buffer-size");
        note(
            self.dapr_http_read_buffer_size.is_some(),
            "--dapr-http-read-buffer-size",
        );
        note(self.allowed_origins.is_some(), "--allowed-origins");
        note(
            self.dapr_block_shutdown_duration.is_some(),
            "--dapr-block-shutdown-duration",
        );
        note(
            self.disable_builtin_k8s_secret_store.is_some(),
            "--disable-builtin-k8s-secret-store",
        );
        note(
            self.app_binding_options_timeout.is_some(),
            "--app-binding-options-timeout",
        );
        note(
            self.disable_init_endpoints.is_some(),
            "--disable-init-endpoints",
        );
        note(
            self.hot_reload_reconcile_interval.is_some(),
            "--hot-reload-reconcile-interval",
        );
        note(
            self.sentry_request_jwt_audiences.is_some(),
            "--sentry-request-jwt-audiences",
        );
        note(self.log_file.is_some(), "--log-file");
        given
    }
}

/// How daprd reaches its app (`--app-protocol`, any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppProtocol {
    Http,
    Https,
    Grpc,
    Grpcs,
    H2c,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::Https => "https",
            AppProtocol::Grpc => "grpc",
            AppProtocol::Grpcs => "grpcs",
            AppProtocol::H2c => "h2c",
        }
    }

    pub fn is_grpc(self) -> bool {
        matches!(self, AppProtocol::Grpc | AppProtocol::Grpcs)
    }
}

/// `--mode`: standalone, or kubernetes (Configuration, operator and sentry token from the
/// cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Standalone,
    Kubernetes,
}
