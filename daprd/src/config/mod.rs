//! Flags ([`Flags`]) and environment ([`Env`], read in one place), named as upstream daprd,
//! turned into a validated [`Config`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dapr_crds::Configuration;
use dapr_process::LogArgs;

use crate::StartError;

pub mod env;
mod flags;

pub use env::Env;
pub use flags::{AcceptedFlags, AppProtocol, Flags, Mode};

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
    fn new(dir: &str, app_id: &str) -> Result<ApiSockets, StartError> {
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

fn bad(flag: &'static str, reason: impl Into<String>) -> StartError {
    StartError::Config {
        flag,
        reason: reason.into(),
    }
}

fn parse_port(flag: &'static str, value: &str) -> Result<Option<u16>, StartError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    match value.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(bad(flag, format!("{value:?} is not a port (1-65535)"))),
        Ok(port) => Ok(Some(port)),
    }
}

fn parse_ip(flag: &'static str, value: &str, default: IpAddr) -> Result<IpAddr, StartError> {
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
    pub fn from_flags(flags: Flags, env: Env) -> Result<Config, StartError> {
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
fn mtls_config(
    flags: &Flags,
    env: &Env,
    mode: Mode,
    app_id: &str,
) -> Result<MtlsConfig, StartError> {
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
mod tests;
