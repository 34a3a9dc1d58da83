//! Pod annotations (`dapr.io/*`) that configure the injected sidecar, named as upstream.

pub const ENABLED: &str = "dapr.io/enabled";
pub const APP_ID: &str = "dapr.io/app-id";
pub const APP_PORT: &str = "dapr.io/app-port";
pub const APP_PROTOCOL: &str = "dapr.io/app-protocol";
pub const APP_CHANNEL_ADDRESS: &str = "dapr.io/app-channel-address";
pub const APP_MAX_CONCURRENCY: &str = "dapr.io/app-max-concurrency";
pub const CONFIG: &str = "dapr.io/config";
pub const LOG_LEVEL: &str = "dapr.io/log-level";
pub const LOG_AS_JSON: &str = "dapr.io/log-as-json";
pub const ENABLE_METRICS: &str = "dapr.io/enable-metrics";
pub const METRICS_PORT: &str = "dapr.io/metrics-port";
pub const GRPC_PORT: &str = "dapr.io/grpc-port";
pub const INTERNAL_GRPC_PORT: &str = "dapr.io/internal-grpc-port";
pub const SIDECAR_LISTEN_ADDRESSES: &str = "dapr.io/sidecar-listen-addresses";
pub const API_TOKEN_SECRET: &str = "dapr.io/api-token-secret";
pub const APP_TOKEN_SECRET: &str = "dapr.io/app-token-secret";
pub const MAX_BODY_SIZE: &str = "dapr.io/max-body-size";
pub const GRACEFUL_SHUTDOWN_SECONDS: &str = "dapr.io/graceful-shutdown-seconds";
pub const ENABLE_API_LOGGING: &str = "dapr.io/enable-api-logging";
pub const SIDECAR_IMAGE: &str = "dapr.io/sidecar-image";
pub const CONTROL_PLANE: &str = "dapr.io/control-plane";

/// Upstream's truthy set for boolean annotations: trimmed, case-insensitive.
pub fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "y" | "yes" | "true" | "t" | "on" | "1"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthy_values_follow_upstreams_set() {
        for yes in ["y", "YES", " true ", "T", "on", "1"] {
            assert!(is_truthy(yes), "{yes}");
        }
        for no in ["", "no", "false", "0", "enabled", "truee"] {
            assert!(!is_truthy(no), "{no}");
        }
    }
}
