//! The pod's `dapr.io/*` annotations read into typed [`SidecarOptions`], with upstream's
//! parsing rules: booleans from the truthy set, base-10 integers (a value that does not parse
//! keeps the default and yields a warning), and an annotation present with `""` overriding the
//! default with `""` (which is how users switch placement or the scheduler off).

use std::collections::BTreeMap;

use crate::names::annotation as a;

/// Upstream's truthy set for boolean annotations: trimmed, case-insensitive.
pub fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "y" | "yes" | "true" | "t" | "on" | "1"
    )
}

/// Timing of one of daprd's probes, in seconds (threshold in attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    pub delay_seconds: i32,
    pub timeout_seconds: i32,
    pub period_seconds: i32,
    pub failure_threshold: i32,
}

/// Everything the annotations say about the sidecar, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarOptions {
    pub enabled: bool,
    pub app_id: Option<String>,
    pub app_port: Option<i64>,
    pub app_protocol: String,
    pub app_ssl: bool,
    pub config: String,
    pub log_level: String,
    pub log_as_json: bool,
    pub enable_profiling: bool,
    pub api_token_secret: String,
    pub app_token_secret: String,
    pub app_max_concurrency: Option<i64>,
    pub enable_metrics: bool,
    pub metrics_port: i64,
    pub enable_debug: bool,
    pub debug_port: i64,
    pub env: String,
    pub env_from_secret: String,
    pub grpc_port: i64,
    pub internal_grpc_port: i64,
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub listen_addresses: String,
    pub liveness: ProbeTiming,
    pub readiness: ProbeTiming,
    pub sidecar_image: Option<String>,
    pub seccomp_profile_type: String,
    pub http_max_request_size: Option<i64>,
    pub max_body_size: String,
    pub http_read_buffer_size: Option<i64>,
    pub read_buffer_size: String,
    pub graceful_shutdown_seconds: i64,
    pub block_shutdown_duration: Option<String>,
    pub enable_api_logging: Option<bool>,
    pub unix_domain_socket_path: String,
    pub volume_mounts: String,
    pub volume_mounts_rw: String,
    pub disable_builtin_k8s_secret_store: bool,
    pub enable_app_health_check: bool,
    pub app_health_check_path: String,
    pub app_health_probe_interval: i64,
    pub app_health_probe_timeout: i64,
    pub app_health_threshold: i64,
    pub app_binding_options_timeout: String,
    /// `Some("")` switches placement off; `None` takes the injector's default.
    pub placement_host_address: Option<String>,
    pub actors_disseminate_timeout: String,
    /// `Some("")` switches the scheduler off; `None` takes the injector's default.
    pub scheduler_host_address: Option<String>,
    pub pluggable_components: String,
    pub pluggable_components_sockets_folder: String,
    pub inject_pluggable_components: bool,
    pub app_channel_address: String,
    pub sentry_request_jwt_audiences: String,
    pub disable_init_endpoints: String,
    /// `None` takes the injector's `NATIVE_SIDECAR_ENABLED`.
    pub enable_native_sidecar: Option<bool>,
}

/// Default probe timings (upstream's annotation defaults).
pub const LIVENESS_DEFAULT: ProbeTiming = ProbeTiming {
    delay_seconds: 180,
    timeout_seconds: 3,
    period_seconds: 10,
    failure_threshold: 5,
};
pub const READINESS_DEFAULT: ProbeTiming = ProbeTiming {
    delay_seconds: 1,
    timeout_seconds: 1,
    period_seconds: 1,
    failure_threshold: 5,
};

impl SidecarOptions {
    /// Reads the annotations; values that do not parse are reported in the returned warnings
    /// and leave the default in place, as upstream.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> (Self, Vec<String>) {
        let mut r = Reader {
            annotations,
            warnings: Vec::new(),
        };
        let liveness = ProbeTiming {
            delay_seconds: r.int32(
                a::LIVENESS_PROBE_DELAY_SECONDS,
                LIVENESS_DEFAULT.delay_seconds,
            ),
            timeout_seconds: r.int32(
                a::LIVENESS_PROBE_TIMEOUT_SECONDS,
                LIVENESS_DEFAULT.timeout_seconds,
            ),
            period_seconds: r.int32(
                a::LIVENESS_PROBE_PERIOD_SECONDS,
                LIVENESS_DEFAULT.period_seconds,
            ),
            failure_threshold: r.int32(
                a::LIVENESS_PROBE_THRESHOLD,
                LIVENESS_DEFAULT.failure_threshold,
            ),
        };
        let readiness = ProbeTiming {
            delay_seconds: r.int32(
                a::READINESS_PROBE_DELAY_SECONDS,
                READINESS_DEFAULT.delay_seconds,
            ),
            timeout_seconds: r.int32(
                a::READINESS_PROBE_TIMEOUT_SECONDS,
                READINESS_DEFAULT.timeout_seconds,
            ),
            period_seconds: r.int32(
                a::READINESS_PROBE_PERIOD_SECONDS,
                READINESS_DEFAULT.period_seconds,
            ),
            failure_threshold: r.int32(
                a::READINESS_PROBE_THRESHOLD,
                READINESS_DEFAULT.failure_threshold,
            ),
        };
        let options = SidecarOptions {
            enabled: r.bool(a::ENABLED, false),
            app_id: r.get(a::APP_ID).filter(|v| !v.is_empty()),
            app_port: r.opt_int(a::APP_PORT),
            app_protocol: r.string(a::APP_PROTOCOL, "http"),
            app_ssl: r.bool(a::APP_SSL, false),
            config: r.string(a::CONFIG, ""),
            log_level: r.string(a::LOG_LEVEL, "info"),
            log_as_json: r.bool(a::LOG_AS_JSON, false),
            enable_profiling: r.bool(a::ENABLE_PROFILING, false),
            api_token_secret: r.string(a::API_TOKEN_SECRET, ""),
            app_token_secret: r.string(a::APP_TOKEN_SECRET, ""),
            app_max_concurrency: r.opt_int(a::APP_MAX_CONCURRENCY),
            enable_metrics: r.bool(a::ENABLE_METRICS, true),
            metrics_port: r.int(a::METRICS_PORT, 9090),
            enable_debug: r.bool(a::ENABLE_DEBUG, false),
            debug_port: r.int(a::DEBUG_PORT, 40000),
            env: r.string(a::ENV, ""),
            env_from_secret: r.string(a::ENV_FROM_SECRET, ""),
            grpc_port: r.int(a::GRPC_PORT, 50001),
            internal_grpc_port: r.int(a::INTERNAL_GRPC_PORT, 50002),
            cpu_request: r.string(a::SIDECAR_CPU_REQUEST, ""),
            cpu_limit: r.string(a::SIDECAR_CPU_LIMIT, ""),
            memory_request: r.string(a::SIDECAR_MEMORY_REQUEST, ""),
            memory_limit: r.string(a::SIDECAR_MEMORY_LIMIT, ""),
            listen_addresses: r.string(a::SIDECAR_LISTEN_ADDRESSES, "[::1],127.0.0.1"),
            liveness,
            readiness,
            sidecar_image: r.get(a::SIDECAR_IMAGE).filter(|v| !v.is_empty()),
            seccomp_profile_type: r.string(a::SIDECAR_SECCOMP_PROFILE_TYPE, ""),
            http_max_request_size: r.opt_int(a::HTTP_MAX_REQUEST_SIZE),
            max_body_size: r.string(a::MAX_BODY_SIZE, ""),
            http_read_buffer_size: r.opt_int(a::HTTP_READ_BUFFER_SIZE),
            read_buffer_size: r.string(a::READ_BUFFER_SIZE, ""),
            graceful_shutdown_seconds: r.int(a::GRACEFUL_SHUTDOWN_SECONDS, -1),
            block_shutdown_duration: r.get(a::BLOCK_SHUTDOWN_DURATION),
            enable_api_logging: r.get(a::ENABLE_API_LOGGING).map(|v| is_truthy(&v)),
            unix_domain_socket_path: r.string(a::UNIX_DOMAIN_SOCKET_PATH, ""),
            volume_mounts: r.string(a::VOLUME_MOUNTS, ""),
            volume_mounts_rw: r.string(a::VOLUME_MOUNTS_RW, ""),
            disable_builtin_k8s_secret_store: r.bool(a::DISABLE_BUILTIN_K8S_SECRET_STORE, false),
            enable_app_health_check: r.bool(a::ENABLE_APP_HEALTH_CHECK, false),
            app_health_check_path: r.string(a::APP_HEALTH_CHECK_PATH, "/healthz"),
            app_health_probe_interval: r.int(a::APP_HEALTH_PROBE_INTERVAL, 5),
            app_health_probe_timeout: r.int(a::APP_HEALTH_PROBE_TIMEOUT, 500),
            app_health_threshold: r.int(a::APP_HEALTH_THRESHOLD, 3),
            app_binding_options_timeout: r.string(a::APP_BINDING_OPTIONS_TIMEOUT, ""),
            placement_host_address: r.get(a::PLACEMENT_HOST_ADDRESS).map(|v| trim_address(&v)),
            actors_disseminate_timeout: r.string(a::ACTORS_DISSEMINATE_TIMEOUT, ""),
            scheduler_host_address: r.get(a::SCHEDULER_HOST_ADDRESS).map(|v| trim_address(&v)),
            pluggable_components: r.string(a::PLUGGABLE_COMPONENTS, ""),
            pluggable_components_sockets_folder: r
                .string(a::PLUGGABLE_COMPONENTS_SOCKETS_FOLDER, ""),
            inject_pluggable_components: r.bool(a::INJECT_PLUGGABLE_COMPONENTS, false),
            app_channel_address: r.string(a::APP_CHANNEL_ADDRESS, ""),
            sentry_request_jwt_audiences: r.string(a::SENTRY_REQUEST_JWT_AUDIENCES, ""),
            disable_init_endpoints: r.string(a::DISABLE_INIT_ENDPOINTS, ""),
            enable_native_sidecar: r.get(a::ENABLE_NATIVE_SIDECAR).map(|v| is_truthy(&v)),
        };
        (options, r.warnings)
    }
}

/// Placement and scheduler addresses: users write `'""'` or `" "` in YAML to mean "off".
fn trim_address(value: &str) -> String {
    value
        .trim()
        .trim_matches(|c| c == '"' || c == '\'')
        .trim()
        .to_owned()
}

struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
    warnings: Vec<String>,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.annotations.get(key).cloned()
    }

    fn string(&self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or_else(|| default.to_owned())
    }

    fn bool(&self, key: &str, default: bool) -> bool {
        self.get(key).map_or(default, |v| is_truthy(&v))
    }

    fn opt_int(&mut self, key: &str) -> Option<i64> {
        let value = self.get(key)?;
        match value.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.warnings.push(format!(
                    "annotation {key}: {value:?} is not a base-10 integer; ignored"
                ));
                None
            }
        }
    }

    fn int(&mut self, key: &str, default: i64) -> i64 {
        self.opt_int(key).unwrap_or(default)
    }

    fn int32(&mut self, key: &str, default: i32) -> i32 {
        match self.opt_int(key) {
            None => default,
            Some(n) => i32::try_from(n).unwrap_or_else(|_| {
                self.warnings
                    .push(format!("annotation {key}: {n} is out of range; ignored"));
                default
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> (SidecarOptions, Vec<String>) {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SidecarOptions::from_annotations(&map)
    }

    #[test]
    fn truthy_values_follow_upstreams_set() {
        for yes in ["y", "YES", " true ", "T", "on", "1"] {
            assert!(is_truthy(yes), "{yes}");
        }
        for no in ["", "no", "false", "0", "enabled", "truee"] {
            assert!(!is_truthy(no), "{no}");
        }
    }

    #[test]
    fn defaults_apply_when_no_annotation_is_set() {
        let (o, warnings) = read(&[]);
        assert!(warnings.is_empty());
        assert!(!o.enabled);
        assert_eq!(o.app_protocol, "http");
        assert_eq!(o.log_level, "info");
        assert!(o.enable_metrics);
        assert_eq!(o.metrics_port, 9090);
        assert_eq!(o.grpc_port, 50001);
        assert_eq!(o.internal_grpc_port, 50002);
        assert_eq!(o.listen_addresses, "[::1],127.0.0.1");
        assert_eq!(o.graceful_shutdown_seconds, -1);
        assert_eq!(o.liveness, LIVENESS_DEFAULT);
        assert_eq!(o.readiness, READINESS_DEFAULT);
        assert_eq!(o.enable_api_logging, None);
        assert_eq!(o.placement_host_address, None);
    }

    #[test]
    fn an_integer_that_does_not_parse_keeps_the_default_and_warns() {
        let (o, warnings) = read(&[(a::GRPC_PORT, "fifty"), (a::APP_PORT, "8o80")]);
        assert_eq!(o.grpc_port, 50001);
        assert_eq!(o.app_port, None);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains(a::APP_PORT), "{warnings:?}");
    }

    #[test]
    fn an_empty_placement_annotation_switches_placement_off() {
        let (o, _) = read(&[
            (a::PLACEMENT_HOST_ADDRESS, " \"\" "),
            (a::SCHEDULER_HOST_ADDRESS, "'x:1'"),
        ]);
        assert_eq!(o.placement_host_address.as_deref(), Some(""));
        assert_eq!(o.scheduler_host_address.as_deref(), Some("x:1"));
    }

    #[test]
    fn api_logging_is_tri_state() {
        assert_eq!(
            read(&[(a::ENABLE_API_LOGGING, "false")])
                .0
                .enable_api_logging,
            Some(false)
        );
        assert_eq!(
            read(&[(a::ENABLE_API_LOGGING, "on")]).0.enable_api_logging,
            Some(true)
        );
    }
}
