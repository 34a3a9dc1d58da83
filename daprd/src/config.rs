//! Flags and environment, named as upstream daprd, turned into a validated [`Config`].
//!
//! This is the only module that reads the environment.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dapr_crds::Configuration;
use dapr_process::{LogArgs, MetricsArgs};

use crate::Error;

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

/// App health probing (`--enable-app-health-check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub threshold: u32,
}

/// The validated settings daprd runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub app_id: String,
    pub namespace: String,
    pub app_port: Option<u16>,
    pub app_protocol: AppProtocol,
    pub app_channel_address: String,
    /// `None` for unlimited.
    pub app_max_concurrency: Option<usize>,
    pub app_health_check: Option<AppHealthCheck>,
    pub http_port: u16,
    pub grpc_port: u16,
    pub internal_grpc_port: u16,
    pub internal_listen_address: IpAddr,
    pub public_port: Option<u16>,
    pub public_listen_address: IpAddr,
    pub api_listen_addresses: Vec<IpAddr>,
    /// `--unix-domain-socket`: the HTTP and gRPC APIs listen on these sockets instead of on
    /// `api_listen_addresses` (as upstream, pkg/api/http/server.go).
    pub api_sockets: Option<ApiSockets>,
    pub metrics: Option<(IpAddr, u16)>,
    pub max_body_size: usize,
    pub graceful_shutdown: Duration,
    pub log: LogArgs,
    pub api_logging: bool,
    /// The Configuration resource from `--config`, or the defaults. In kubernetes mode it is
    /// filled in by [`crate::configuration::load`] when the sidecar starts.
    pub configuration: Configuration,
    /// Kubernetes mode: the Configuration named by `--config`, to be read from the API server.
    pub configuration_name: Option<String>,
    /// `--resources-path` directories (standalone mode).
    pub resources_paths: Vec<PathBuf>,
    /// Where the API server is, for reading that Configuration.
    pub api_server: crate::apiserver::Source,
    /// `--control-plane-address` in Kubernetes mode with mTLS: the operator API, where the
    /// Configuration is read instead of the API server ([`crate::operator`]).
    pub operator_address: Option<String>,
    /// `DAPR_API_TOKEN`: required on the app-facing APIs when set.
    pub api_token: Option<String>,
    /// `APP_API_TOKEN`: sent to the app as `dapr-api-token`.
    pub app_api_token: Option<String>,
    /// `DAPR_HOST_IP`: the address peers reach this sidecar on, when known.
    pub host_ip: Option<IpAddr>,
    /// This machine's host name (upstream's `os.Hostname()`), part of the mDNS instance name.
    pub hostname: String,
    /// Workload identity and mTLS between sidecars (`--enable-mtls`); `None` when off.
    pub mtls: Option<MtlsConfig>,
    /// Upstream flags given that have no effect here (logged at start).
    pub ignored_flags: Vec<&'static str>,
}

/// The Unix-domain sockets of the app-facing APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSockets {
    pub http: PathBuf,
    pub grpc: PathBuf,
}

impl ApiSockets {
    /// The longest path a Unix-domain socket address holds (`sun_path` on Linux, less its NUL).
    const MAX_PATH: usize = 107;

    /// Upstream's names in `dir`: `dapr-<app-id>-http.socket`, `dapr-<app-id>-grpc.socket`.
    fn new(dir: &str, app_id: &str) -> Result<ApiSockets, Error> {
        let dir = Path::new(dir);
        let sockets = ApiSockets {
            http: dir.join(format!("dapr-{app_id}-http.socket")),
            grpc: dir.join(format!("dapr-{app_id}-grpc.socket")),
        };
        for path in [&sockets.http, &sockets.grpc] {
            if path.as_os_str().len() > Self::MAX_PATH {
                return Err(bad(
                    "--unix-domain-socket",
                    format!(
                        "the socket path {} is longer than the {} bytes a Unix-domain socket address holds",
                        path.display(),
                        Self::MAX_PATH
                    ),
                ));
            }
        }
        Ok(sockets)
    }
}

/// Where the trust anchors (root certificates, PEM) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAnchors {
    /// `DAPR_TRUST_ANCHORS`: fixed for the process's life, as upstream.
    Pem(String),
    /// `DAPR_TRUST_ANCHORS_FILE`: watched, so a new root reaches running sidecars.
    File(PathBuf),
}

/// The token sentry's validator checks, in upstream's sourcing order
/// (pkg/security/token/token.go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentryToken {
    /// Read before every request (projected tokens rotate); `None` sends no token.
    pub path: Option<PathBuf>,
    /// `dapr.proto.sentry.v1.SignCertificateRequest.TokenValidator` value.
    pub validator: i32,
}

/// How this sidecar gets and uses its SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsConfig {
    /// `--sentry-address` (`host:port`).
    pub sentry_address: String,
    pub control_plane_trust_domain: String,
    pub control_plane_namespace: String,
    pub trust_anchors: TrustAnchors,
    pub token: SentryToken,
    /// The id asked for: `SENTRY_LOCAL_IDENTITY`, else the app id.
    pub request_id: String,
}

/// Token validator numbers of `dapr.proto.sentry.v1.SignCertificateRequest.TokenValidator`.
pub use dapr_identity::token::validator as token_validator;

/// The projected service-account token the injector mounts for sentry.
pub use dapr_identity::token::SENTRY_TOKEN_PATH;
/// The pod's own service-account token: upstream's fallback, with a warning.
pub const LEGACY_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Environment variables daprd reads, named as upstream.
pub mod env {
    pub const NAMESPACE: &str = "NAMESPACE";
    pub const DAPR_API_TOKEN: &str = "DAPR_API_TOKEN";
    pub const APP_API_TOKEN: &str = "APP_API_TOKEN";
    pub const DAPR_HOST_IP: &str = "DAPR_HOST_IP";
    pub const DAPR_TRUST_ANCHORS: &str = "DAPR_TRUST_ANCHORS";
    pub const DAPR_TRUST_ANCHORS_FILE: &str = "DAPR_TRUST_ANCHORS_FILE";
    pub const DAPR_SENTRY_TOKEN_FILE: &str = "DAPR_SENTRY_TOKEN_FILE";
    pub const SENTRY_LOCAL_IDENTITY: &str = "SENTRY_LOCAL_IDENTITY";
    pub const DAPR_CONTROLPLANE_NAMESPACE: &str = "DAPR_CONTROLPLANE_NAMESPACE";
    pub const DAPR_CONTROLPLANE_TRUST_DOMAIN: &str = "DAPR_CONTROLPLANE_TRUST_DOMAIN";
    pub const KUBECONFIG: &str = "KUBECONFIG";
    pub const KUBERNETES_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
    pub const KUBERNETES_SERVICE_PORT: &str = "KUBERNETES_SERVICE_PORT";
}

/// Values read from the environment, passed in so config building stays pure.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub namespace: Option<String>,
    pub api_token: Option<String>,
    pub app_api_token: Option<String>,
    pub host_ip: Option<String>,
    pub hostname: Option<String>,
    pub trust_anchors: Option<String>,
    pub trust_anchors_file: Option<String>,
    /// `DAPR_SENTRY_TOKEN_FILE`; `Some("")` when set but empty (an error, as upstream).
    pub sentry_token_file: Option<String>,
    pub sentry_local_identity: Option<String>,
    pub control_plane_namespace: Option<String>,
    pub control_plane_trust_domain: Option<String>,
    /// Which of the well-known token paths exist on this machine.
    pub sentry_token_present: bool,
    pub legacy_token_present: bool,
    /// `KUBECONFIG`, and the in-cluster API server address the kubelet sets.
    pub kubeconfig: Option<String>,
    pub kubernetes_service_host: Option<String>,
    pub kubernetes_service_port: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let get = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        Env {
            namespace: get(env::NAMESPACE),
            api_token: get(env::DAPR_API_TOKEN),
            app_api_token: get(env::APP_API_TOKEN),
            host_ip: get(env::DAPR_HOST_IP),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty()),
            trust_anchors: get(env::DAPR_TRUST_ANCHORS),
            trust_anchors_file: get(env::DAPR_TRUST_ANCHORS_FILE),
            sentry_token_file: std::env::var(env::DAPR_SENTRY_TOKEN_FILE).ok(),
            sentry_local_identity: get(env::SENTRY_LOCAL_IDENTITY),
            control_plane_namespace: get(env::DAPR_CONTROLPLANE_NAMESPACE),
            control_plane_trust_domain: get(env::DAPR_CONTROLPLANE_TRUST_DOMAIN),
            sentry_token_present: std::path::Path::new(SENTRY_TOKEN_PATH).exists(),
            legacy_token_present: std::path::Path::new(LEGACY_TOKEN_PATH).exists(),
            kubeconfig: get(env::KUBECONFIG),
            kubernetes_service_host: get(env::KUBERNETES_SERVICE_HOST),
            kubernetes_service_port: get(env::KUBERNETES_SERVICE_PORT),
        }
    }
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn is_object_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn bad(flag: &'static str, reason: impl Into<String>) -> Error {
    Error::Config {
        flag,
        reason: reason.into(),
    }
}

fn parse_port(flag: &'static str, value: &str) -> Result<Option<u16>, Error> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    match value.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(bad(flag, format!("{value:?} is not a port (1-65535)"))),
        Ok(port) => Ok(Some(port)),
    }
}

fn parse_ip(flag: &'static str, value: &str, default: IpAddr) -> Result<IpAddr, Error> {
    let value = value.trim().trim_start_matches('[').trim_end_matches(']');
    if value.is_empty() {
        return Ok(default);
    }
    if value == "localhost" {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    value
        .parse()
        .map_err(|_| bad(flag, format!("{value:?} is not an IP address")))
}

/// Parses a Kubernetes-style quantity (`4Mi`, `16M`, `1Gi`, `1024`) into bytes.
pub fn parse_quantity(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, suffix) = value.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A stable internal port for an app id, so a restarted sidecar comes back on the same port
/// (upstream derives it from the app id too, starting at 47300).
pub fn derived_internal_port(app_id: &str) -> u16 {
    47300 + (fnv1a(app_id.as_bytes()) % 1000) as u16
}

/// FNV-1a: a hash that is stable across builds and platforms, unlike std's hasher, for names
/// derived from app ids.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Config {
    /// Validates flags and environment into a config; reads the `--config` file if given.
    pub fn from_flags(flags: Flags, env: Env) -> Result<Config, Error> {
        let mode = flags.mode;
        let app_id = flags.app_id.trim().to_owned();
        if app_id.is_empty() {
            return Err(bad("--app-id", "must not be empty"));
        }
        if app_id.contains('.') {
            return Err(bad("--app-id", format!("{app_id:?} must not contain dots")));
        }
        let app_protocol = match flags.app_protocol {
            AppProtocol::Http if flags.app_ssl => AppProtocol::Https,
            AppProtocol::Grpc if flags.app_ssl => AppProtocol::Grpcs,
            protocol => protocol,
        };
        let app_port = parse_port("--app-port", &flags.app_port)?;
        if let Some(port) = app_port
            && (port == flags.dapr_http_port || port == flags.dapr_grpc_port)
        {
            return Err(bad(
                "--app-port",
                format!("{port} is also the Dapr HTTP or gRPC port"),
            ));
        }
        let internal_grpc_port =
            parse_port("--dapr-internal-grpc-port", &flags.dapr_internal_grpc_port)?
                .unwrap_or_else(|| derived_internal_port(&app_id));
        let unspecified = IpAddr::from([0, 0, 0, 0]);
        let api_listen_addresses = flags
            .dapr_listen_addresses
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| parse_ip("--dapr-listen-addresses", a, unspecified))
            .collect::<Result<Vec<_>, _>>()?;
        let api_listen_addresses = if api_listen_addresses.is_empty() {
            vec![unspecified]
        } else {
            api_listen_addresses
        };
        let api_sockets = match flags.unix_domain_socket.trim() {
            "" => None,
            dir => Some(ApiSockets::new(dir, &app_id)?),
        };
        let max_body_size = match flags.dapr_http_max_request_size {
            Some(mb) if flags.max_body_size == "4Mi" => mb.saturating_mul(1 << 20),
            _ => parse_quantity(&flags.max_body_size).ok_or_else(|| {
                bad(
                    "--max-body-size",
                    format!("{:?} is not a quantity such as 4Mi", flags.max_body_size),
                )
            })?,
        };
        let max_body_size = usize::try_from(max_body_size)
            .map_err(|_| bad("--max-body-size", "too large for this platform"))?;
        let app_max_concurrency = match flags.app_max_concurrency {
            n if n <= 0 => None,
            n => Some(usize::try_from(n).map_err(|_| bad("--app-max-concurrency", "too large"))?),
        };
        let app_health_check = if flags.enable_app_health_check {
            if flags.app_health_probe_interval == 0 {
                return Err(bad(
                    "--app-health-probe-interval",
                    "must be at least 1 second",
                ));
            }
            if flags.app_health_probe_timeout > flags.app_health_probe_interval * 1000 {
                return Err(bad(
                    "--app-health-probe-timeout",
                    "must not exceed --app-health-probe-interval",
                ));
            }
            Some(AppHealthCheck {
                path: flags.app_health_check_path.clone(),
                interval: Duration::from_secs(flags.app_health_probe_interval),
                timeout: Duration::from_millis(flags.app_health_probe_timeout),
                threshold: flags.app_health_threshold.max(1),
            })
        } else {
            None
        };
        let graceful = if flags.dapr_graceful_shutdown_seconds < 0 {
            5
        } else {
            flags.dapr_graceful_shutdown_seconds.unsigned_abs()
        };
        let configuration = match (mode, flags.config.first()) {
            (Mode::Standalone, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad("--config", format!("cannot read {path}: {e}")))?;
                Configuration::from_yaml(&text)
                    .map_err(|e| bad("--config", format!("{path}: {e}")))?
            }
            // Kubernetes mode reads the named Configuration from the API server at start.
            _ => Configuration::default(),
        };
        let configuration_name = match (mode, flags.config.first()) {
            (Mode::Kubernetes, Some(name)) if !name.is_empty() => {
                if !is_object_name(name) {
                    return Err(bad(
                        "--config",
                        format!(
                            "{name:?} is not a Kubernetes object name (lowercase letters, digits, '-' and '.')"
                        ),
                    ));
                }
                Some(name.clone())
            }
            _ => None,
        };
        let api_logging = flags.enable_api_logging.unwrap_or(false);
        let mtls = if flags.enable_mtls {
            Some(mtls_config(&flags, &env, mode, &app_id)?)
        } else {
            None
        };
        let host_ip = env
            .host_ip
            .as_deref()
            .map(|ip| parse_ip("DAPR_HOST_IP", ip, unspecified))
            .transpose()?;
        // The operator requires mTLS; without it (or without the address) the sidecar reads
        // its Configuration from the API server (docs/upstream-differences.md).
        let operator_address = match (mode, &mtls, &flags.accepted.control_plane_address) {
            (Mode::Kubernetes, Some(_), Some(address)) if !address.trim().is_empty() => {
                Some(address.trim().to_owned())
            }
            _ => None,
        };
        let ignored_flags = flags
            .accepted
            .given()
            .into_iter()
            .filter(|flag| operator_address.is_none() || *flag != "--control-plane-address")
            .collect();
        Ok(Config {
            mode,
            namespace: env.namespace.unwrap_or_else(|| "default".to_owned()),
            app_id,
            app_port,
            app_protocol,
            app_channel_address: flags.app_channel_address,
            app_max_concurrency,
            app_health_check,
            http_port: flags.dapr_http_port,
            grpc_port: flags.dapr_grpc_port,
            internal_grpc_port,
            internal_listen_address: parse_ip(
                "--dapr-internal-grpc-listen-address",
                &flags.dapr_internal_grpc_listen_address,
                unspecified,
            )?,
            public_port: parse_port("--dapr-public-port", &flags.dapr_public_port)?,
            public_listen_address: parse_ip(
                "--dapr-public-listen-address",
                &flags.dapr_public_listen_address,
                unspecified,
            )?,
            api_listen_addresses,
            api_sockets,
            metrics: flags
                .metrics
                .enable_metrics
                .then(|| {
                    parse_ip(
                        "--metrics-listen-address",
                        &flags.metrics.metrics_listen_address,
                        unspecified,
                    )
                    .map(|ip| (ip, flags.metrics.metrics_port))
                })
                .transpose()?,
            max_body_size,
            graceful_shutdown: Duration::from_secs(graceful),
            log: flags.log,
            api_logging,
            configuration,
            configuration_name,
            resources_paths: flags.resources_path,
            api_server: crate::apiserver::Source {
                kubeconfig: env.kubeconfig.map(PathBuf::from),
                in_cluster: env.kubernetes_service_host.zip(env.kubernetes_service_port),
            },
            api_token: env.api_token,
            app_api_token: env.app_api_token,
            host_ip,
            hostname: env.hostname.unwrap_or_else(|| "localhost".to_owned()),
            mtls,
            ignored_flags,
            operator_address,
        })
    }
}

/// Identity settings for `--enable-mtls`: sentry's address, trust anchors and the token, with
/// the flag and env names of upstream.
fn mtls_config(flags: &Flags, env: &Env, mode: Mode, app_id: &str) -> Result<MtlsConfig, Error> {
    let sentry_address = flags.sentry_address.trim();
    if sentry_address.is_empty() {
        return Err(bad(
            "--sentry-address",
            "is required with --enable-mtls (sentry's host:port)",
        ));
    }
    if !sentry_address.contains(':') {
        return Err(bad(
            "--sentry-address",
            format!("{sentry_address:?} has no port (want host:port)"),
        ));
    }
    let trust_anchors = match (&env.trust_anchors, &env.trust_anchors_file) {
        (Some(pem), _) if !pem.contains("BEGIN CERTIFICATE") => {
            return Err(bad(
                "DAPR_TRUST_ANCHORS",
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ));
        }
        (Some(pem), _) => TrustAnchors::Pem(pem.clone()),
        (None, Some(path)) => TrustAnchors::File(PathBuf::from(path)),
        (None, None) => {
            return Err(bad(
                "DAPR_TRUST_ANCHORS",
                "is required with --enable-mtls (or DAPR_TRUST_ANCHORS_FILE)",
            ));
        }
    };
    let token = match (&env.sentry_token_file, mode) {
        (Some(path), _) if path.trim().is_empty() => {
            return Err(bad("DAPR_SENTRY_TOKEN_FILE", "is set but empty"));
        }
        (Some(path), Mode::Kubernetes) => SentryToken {
            path: Some(PathBuf::from(path)),
            validator: token_validator::KUBERNETES,
        },
        (Some(path), Mode::Standalone) => SentryToken {
            path: Some(PathBuf::from(path)),
            validator: token_validator::JWKS,
        },
        (None, Mode::Kubernetes) if env.sentry_token_present => SentryToken {
            path: Some(PathBuf::from(SENTRY_TOKEN_PATH)),
            validator: token_validator::KUBERNETES,
        },
        (None, Mode::Kubernetes) if env.legacy_token_present => {
            tracing::warn!(
                "no projected sentry token at {SENTRY_TOKEN_PATH}; using the service account token at {LEGACY_TOKEN_PATH}"
            );
            SentryToken {
                path: Some(PathBuf::from(LEGACY_TOKEN_PATH)),
                validator: token_validator::KUBERNETES,
            }
        }
        (None, _) => SentryToken {
            path: None,
            validator: token_validator::UNKNOWN,
        },
    };
    Ok(MtlsConfig {
        sentry_address: sentry_address.to_owned(),
        control_plane_trust_domain: flags
            .control_plane_trust_domain
            .clone()
            .or_else(|| env.control_plane_trust_domain.clone())
            .unwrap_or_else(|| "localhost".to_owned()),
        control_plane_namespace: flags
            .control_plane_namespace
            .clone()
            .or_else(|| env.control_plane_namespace.clone())
            .unwrap_or_else(|| "default".to_owned()),
        trust_anchors,
        token,
        request_id: env
            .sentry_local_identity
            .clone()
            .unwrap_or_else(|| app_id.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_definitions_are_consistent() {
        use clap::CommandFactory;
        Flags::command().debug_assert();
    }

    #[test]
    fn upstream_flags_for_parts_we_lack_are_accepted_and_reported() {
        let c = config(&[
            "--app-id",
            "x",
            "--control-plane-address",
            "dapr-api.dapr-system.svc.cluster.local:443",
            "--placement-host-address",
            "",
            "--scheduler-host-address",
            "s:50006",
            "--read-buffer-size",
            "4Ki",
            "--enable-profiling",
        ])
        .unwrap();
        assert_eq!(
            c.ignored_flags,
            vec![
                "--control-plane-address",
                "--placement-host-address",
                "--scheduler-host-address",
                "--enable-profiling",
                "--read-buffer-size"
            ]
        );
    }

    #[test]
    fn unix_domain_sockets_take_upstreams_names_and_must_fit_a_socket_address() {
        let c = config(&[
            "--app-id",
            "orders",
            "--unix-domain-socket",
            "/var/run/dapr-sockets",
        ])
        .unwrap();
        assert_eq!(
            c.api_sockets,
            Some(ApiSockets {
                http: "/var/run/dapr-sockets/dapr-orders-http.socket".into(),
                grpc: "/var/run/dapr-sockets/dapr-orders-grpc.socket".into(),
            })
        );
        assert_eq!(config(&["--app-id", "orders"]).unwrap().api_sockets, None);
        let deep = format!("/{}", "d".repeat(90));
        let e = config(&["--app-id", "orders", "--unix-domain-socket", &deep]).unwrap_err();
        assert!(
            e.to_string().contains("--unix-domain-socket") && e.to_string().contains("107 bytes"),
            "{e}"
        );
    }

    #[test]
    fn the_operator_is_asked_only_in_kubernetes_mode_with_mtls_and_an_address() {
        let address = "dapr-api.dapr-system.svc.cluster.local:443";
        let with = |args: &[&str]| {
            let mut argv = vec!["daprd", "--app-id", "x", "--sentry-address", "s:443"];
            argv.extend_from_slice(args);
            Config::from_flags(
                Flags::try_parse_from(argv).expect("flags parse"),
                Env {
                    trust_anchors: Some("-----BEGIN CERTIFICATE-----\n".into()),
                    ..Env::default()
                },
            )
            .expect("config")
        };
        let c = with(&[
            "--mode",
            "kubernetes",
            "--enable-mtls",
            "--control-plane-address",
            address,
        ]);
        assert_eq!(c.operator_address.as_deref(), Some(address));
        assert!(!c.ignored_flags.contains(&"--control-plane-address"));
        for args in [
            &["--mode", "kubernetes", "--control-plane-address", address][..],
            &["--enable-mtls", "--control-plane-address", address][..],
            &["--mode", "kubernetes", "--enable-mtls"][..],
        ] {
            let c = with(args);
            assert_eq!(c.operator_address, None, "{args:?}");
        }
        let c = with(&["--mode", "kubernetes", "--control-plane-address", address]);
        assert!(c.ignored_flags.contains(&"--control-plane-address"));
    }

    fn config(args: &[&str]) -> Result<Config, Error> {
        let mut argv = vec!["daprd"];
        argv.extend_from_slice(args);
        Config::from_flags(
            Flags::try_parse_from(argv).expect("flags parse"),
            Env::default(),
        )
    }

    #[test]
    fn defaults_match_upstream() {
        let c = config(&["--app-id", "orders"]).unwrap();
        assert_eq!(c.mode, Mode::Standalone);
        assert_eq!((c.http_port, c.grpc_port), (3500, 50001));
        assert_eq!(c.app_protocol, AppProtocol::Http);
        assert_eq!(c.app_channel_address, "127.0.0.1");
        assert_eq!(c.app_port, None);
        assert_eq!(c.app_max_concurrency, None);
        assert_eq!(c.max_body_size, 4 << 20);
        assert_eq!(c.graceful_shutdown, Duration::from_secs(5));
        assert_eq!(c.namespace, "default");
        assert_eq!(c.metrics, Some((IpAddr::from([0, 0, 0, 0]), 9090)));
        assert_eq!(c.internal_grpc_port, derived_internal_port("orders"));
        assert_eq!(c.hostname, "localhost", "no host name known");
    }

    #[test]
    fn kubernetes_mode_names_a_configuration_to_read_and_refuses_names_kubernetes_would() {
        let c = config(&[
            "--app-id",
            "a",
            "--mode",
            "kubernetes",
            "--config",
            "appconfig",
        ])
        .unwrap();
        assert_eq!(c.configuration_name.as_deref(), Some("appconfig"));
        assert_eq!(c.configuration.spec, Configuration::default().spec);
        for none in [vec![], vec!["--config", ""]] {
            let mut args = vec!["--app-id", "a", "--mode", "kubernetes"];
            args.extend(none);
            assert_eq!(config(&args).unwrap().configuration_name, None);
        }
        for bad in ["App_Config", "x-", "a..b", "x/y", &"a".repeat(254)] {
            let err = config(&["--app-id", "a", "--mode", "kubernetes", "--config", bad])
                .expect_err(bad)
                .to_string();
            assert!(
                err.contains("--config") && err.contains("object name"),
                "{err}"
            );
        }
        // Standalone mode reads a file, never the API.
        assert_eq!(config(&["--app-id", "a"]).unwrap().configuration_name, None);
    }

    #[test]
    fn the_derived_internal_port_is_stable_and_in_upstreams_range() {
        let port = derived_internal_port("orders");
        assert_eq!(port, derived_internal_port("orders"));
        assert!((47300..48300).contains(&port));
        assert_ne!(port, derived_internal_port("checkout"));
    }

    #[test]
    fn invalid_values_name_the_flag() {
        for (args, flag) in [
            (vec!["--app-id", "a.b"], "--app-id"),
            (vec!["--app-id", ""], "--app-id"),
            (vec!["--app-id", "a", "--app-port", "70000"], "--app-port"),
            (vec!["--app-id", "a", "--app-port", "3500"], "--app-port"),
            (
                vec!["--app-id", "a", "--max-body-size", "4Xi"],
                "--max-body-size",
            ),
            (
                vec!["--app-id", "a", "--dapr-listen-addresses", "nope"],
                "--dapr-listen-addresses",
            ),
            (
                vec!["--app-id", "a", "--config", "/does/not/exist.yaml"],
                "--config",
            ),
        ] {
            let err = config(&args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn unknown_modes_and_protocols_are_usage_errors_naming_the_flag_and_its_values() {
        for (args, flag, values) in [
            (["--mode", "cloud"], "--mode", "standalone, kubernetes"),
            (
                ["--app-protocol", "ftp"],
                "--app-protocol",
                "http, https, grpc, grpcs, h2c",
            ),
        ] {
            let err = Flags::try_parse_from(["daprd", "--app-id", "a"].into_iter().chain(args))
                .expect_err("not a value");
            assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue, "{args:?}");
            let text = err.to_string();
            assert!(text.contains(flag) && text.contains(values), "{text}");
        }
        assert_eq!(
            config(&["--app-id", "a", "--mode", "kubernetes"])
                .unwrap()
                .mode,
            Mode::Kubernetes
        );
        for protocol in ["http", "https", "grpc", "grpcs", "h2c"] {
            let c = config(&["--app-id", "a", "--app-protocol", protocol]).unwrap();
            assert_eq!(c.app_protocol.as_str(), protocol);
        }
    }

    #[test]
    fn log_as_json_is_a_go_bool_flag() {
        for (args, json) in [
            (&[][..], false),
            (&["--log-as-json"][..], true),
            (&["--log-as-json=true"][..], true),
            (&["--log-as-json=false"][..], false),
        ] {
            let mut argv = vec!["--app-id", "a"];
            argv.extend_from_slice(args);
            assert_eq!(config(&argv).unwrap().log.log_as_json, json, "{args:?}");
        }
    }

    #[test]
    fn protocols_are_case_insensitive_and_app_ssl_upgrades_them() {
        assert_eq!(
            config(&["--app-id", "a", "--app-protocol", "GRPC"])
                .unwrap()
                .app_protocol,
            AppProtocol::Grpc
        );
        assert_eq!(
            config(&["--app-id", "a", "--app-ssl"])
                .unwrap()
                .app_protocol,
            AppProtocol::Https
        );
        assert_eq!(
            config(&["--app-id", "a", "--app-ssl", "--app-protocol", "grpc"])
                .unwrap()
                .app_protocol,
            AppProtocol::Grpcs
        );
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("16Mi"), Some(16 << 20));
        assert_eq!(parse_quantity("2M"), Some(2_000_000));
        assert_eq!(parse_quantity("1024"), Some(1024));
        assert_eq!(parse_quantity("Mi"), None);
        assert_eq!(parse_quantity("-1"), None);
    }

    #[test]
    fn the_legacy_body_size_flag_applies_only_when_the_new_one_is_default() {
        let c = config(&["--app-id", "a", "--dapr-http-max-request-size", "16"]).unwrap();
        assert_eq!(c.max_body_size, 16 << 20);
        let c = config(&[
            "--app-id",
            "a",
            "--dapr-http-max-request-size",
            "16",
            "--max-body-size",
            "1Mi",
        ])
        .unwrap();
        assert_eq!(c.max_body_size, 1 << 20);
    }
}
