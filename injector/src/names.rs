//! Every name the injector shares with Kubernetes, daprd or operators' tooling, spelled as
//! upstream Dapr spells it, in one place so a typo cannot split one contract into two.

/// Pod annotations (`dapr.io/*`) that configure the injected sidecar.
pub mod annotation {
    pub const ENABLED: &str = "dapr.io/enabled";
    pub const APP_ID: &str = "dapr.io/app-id";
    pub const APP_PORT: &str = "dapr.io/app-port";
    pub const APP_PROTOCOL: &str = "dapr.io/app-protocol";
    pub const APP_SSL: &str = "dapr.io/app-ssl";
    pub const APP_CHANNEL_ADDRESS: &str = "dapr.io/app-channel-address";
    pub const APP_MAX_CONCURRENCY: &str = "dapr.io/app-max-concurrency";
    pub const CONFIG: &str = "dapr.io/config";
    pub const LOG_LEVEL: &str = "dapr.io/log-level";
    pub const LOG_AS_JSON: &str = "dapr.io/log-as-json";
    pub const ENABLE_PROFILING: &str = "dapr.io/enable-profiling";
    pub const API_TOKEN_SECRET: &str = "dapr.io/api-token-secret";
    pub const APP_TOKEN_SECRET: &str = "dapr.io/app-token-secret";
    pub const ENABLE_METRICS: &str = "dapr.io/enable-metrics";
    pub const METRICS_PORT: &str = "dapr.io/metrics-port";
    pub const ENABLE_DEBUG: &str = "dapr.io/enable-debug";
    pub const DEBUG_PORT: &str = "dapr.io/debug-port";
    pub const ENV: &str = "dapr.io/env";
    pub const ENV_FROM_SECRET: &str = "dapr.io/env-from-secret";
    pub const GRPC_PORT: &str = "dapr.io/grpc-port";
    pub const INTERNAL_GRPC_PORT: &str = "dapr.io/internal-grpc-port";
    pub const SIDECAR_CPU_REQUEST: &str = "dapr.io/sidecar-cpu-request";
    pub const SIDECAR_CPU_LIMIT: &str = "dapr.io/sidecar-cpu-limit";
    pub const SIDECAR_MEMORY_REQUEST: &str = "dapr.io/sidecar-memory-request";
    pub const SIDECAR_MEMORY_LIMIT: &str = "dapr.io/sidecar-memory-limit";
    pub const SIDECAR_LISTEN_ADDRESSES: &str = "dapr.io/sidecar-listen-addresses";
    pub const LIVENESS_PROBE_DELAY_SECONDS: &str = "dapr.io/sidecar-liveness-probe-delay-seconds";
    pub const LIVENESS_PROBE_TIMEOUT_SECONDS: &str =
        "dapr.io/sidecar-liveness-probe-timeout-seconds";
    pub const LIVENESS_PROBE_PERIOD_SECONDS: &str = "dapr.io/sidecar-liveness-probe-period-seconds";
    pub const LIVENESS_PROBE_THRESHOLD: &str = "dapr.io/sidecar-liveness-probe-threshold";
    pub const READINESS_PROBE_DELAY_SECONDS: &str = "dapr.io/sidecar-readiness-probe-delay-seconds";
    pub const READINESS_PROBE_TIMEOUT_SECONDS: &str =
        "dapr.io/sidecar-readiness-probe-timeout-seconds";
    pub const READINESS_PROBE_PERIOD_SECONDS: &str =
        "dapr.io/sidecar-readiness-probe-period-seconds";
    pub const READINESS_PROBE_THRESHOLD: &str = "dapr.io/sidecar-readiness-probe-threshold";
    pub const SIDECAR_IMAGE: &str = "dapr.io/sidecar-image";
    pub const SIDECAR_SECCOMP_PROFILE_TYPE: &str = "dapr.io/sidecar-seccomp-profile-type";
    pub const HTTP_MAX_REQUEST_SIZE: &str = "dapr.io/http-max-request-size";
    pub const MAX_BODY_SIZE: &str = "dapr.io/max-body-size";
    pub const HTTP_READ_BUFFER_SIZE: &str = "dapr.io/http-read-buffer-size";
    pub const READ_BUFFER_SIZE: &str = "dapr.io/read-buffer-size";
    pub const GRACEFUL_SHUTDOWN_SECONDS: &str = "dapr.io/graceful-shutdown-seconds";
    pub const BLOCK_SHUTDOWN_DURATION: &str = "dapr.io/block-shutdown-duration";
    pub const ENABLE_API_LOGGING: &str = "dapr.io/enable-api-logging";
    pub const UNIX_DOMAIN_SOCKET_PATH: &str = "dapr.io/unix-domain-socket-path";
    pub const VOLUME_MOUNTS: &str = "dapr.io/volume-mounts";
    pub const VOLUME_MOUNTS_RW: &str = "dapr.io/volume-mounts-rw";
    pub const DISABLE_BUILTIN_K8S_SECRET_STORE: &str = "dapr.io/disable-builtin-k8s-secret-store";
    pub const ENABLE_APP_HEALTH_CHECK: &str = "dapr.io/enable-app-health-check";
    pub const APP_HEALTH_CHECK_PATH: &str = "dapr.io/app-health-check-path";
    pub const APP_HEALTH_PROBE_INTERVAL: &str = "dapr.io/app-health-probe-interval";
    pub const APP_HEALTH_PROBE_TIMEOUT: &str = "dapr.io/app-health-probe-timeout";
    pub const APP_HEALTH_THRESHOLD: &str = "dapr.io/app-health-threshold";
    pub const APP_BINDING_OPTIONS_TIMEOUT: &str = "dapr.io/app-binding-options-timeout";
    pub const PLACEMENT_HOST_ADDRESS: &str = "dapr.io/placement-host-address";
    pub const ACTORS_DISSEMINATE_TIMEOUT: &str = "dapr.io/actors-disseminate-timeout";
    pub const SCHEDULER_HOST_ADDRESS: &str = "dapr.io/scheduler-host-address";
    pub const PLUGGABLE_COMPONENTS: &str = "dapr.io/pluggable-components";
    pub const PLUGGABLE_COMPONENTS_SOCKETS_FOLDER: &str =
        "dapr.io/pluggable-components-sockets-folder";
    pub const INJECT_PLUGGABLE_COMPONENTS: &str = "dapr.io/inject-pluggable-components";
    /// On a Component (not a pod): the JSON container to inject next to daprd.
    pub const COMPONENT_CONTAINER: &str = "dapr.io/component-container";
    pub const SENTRY_REQUEST_JWT_AUDIENCES: &str = "dapr.io/sentry-request-jwt-audiences";
    /// Read by the Service reconciler: extra `k=v,k2=v2` annotations for `<app-id>-dapr`.
    pub const SIDECAR_SVC_ANNOTATIONS: &str = "dapr.io/sidecar-svc-annotations";
    pub const DISABLE_INIT_ENDPOINTS: &str = "dapr.io/disable-init-endpoints";
    pub const ENABLE_NATIVE_SIDECAR: &str = "dapr.io/enable-native-sidecar";
    /// On control-plane pods: which Dapr service the pod is.
    pub const CONTROL_PLANE: &str = "dapr.io/control-plane";
}

/// Labels the injector and the reconciler write.
pub mod label {
    pub const SIDECAR_INJECTED: &str = "dapr.io/sidecar-injected";
    pub const APP_ID: &str = "dapr.io/app-id";
    pub const METRICS_ENABLED: &str = "dapr.io/metrics-enabled";
    /// On the `<app-id>-dapr` Service.
    pub const ENABLED: &str = "dapr.io/enabled";
}

/// Prometheus scrape annotations on the `<app-id>-dapr` Service.
pub mod prometheus {
    pub const PROBE: &str = "prometheus.io/probe";
    pub const SCRAPE: &str = "prometheus.io/scrape";
    pub const PORT: &str = "prometheus.io/port";
    pub const PATH: &str = "prometheus.io/path";
}

/// Environment variables set in the injected `daprd` container and in app containers.
pub mod env {
    pub const NAMESPACE: &str = "NAMESPACE";
    pub const POD_NAME: &str = "POD_NAME";
    pub const TRUST_ANCHORS: &str = "DAPR_TRUST_ANCHORS";
    pub const CONTROL_PLANE_NAMESPACE: &str = "DAPR_CONTROLPLANE_NAMESPACE";
    pub const CONTROL_PLANE_TRUST_DOMAIN: &str = "DAPR_CONTROLPLANE_TRUST_DOMAIN";
    pub const HOST_IP: &str = "DAPR_HOST_IP";
    /// Names of the env vars that came from annotations: daprd honours `envRef` only for these.
    pub const ENV_KEYS: &str = "DAPR_ENV_KEYS";
    pub const COMPONENT_SOCKETS_FOLDER: &str = "DAPR_COMPONENT_SOCKETS_FOLDER";
    pub const API_TOKEN: &str = "DAPR_API_TOKEN";
    pub const APP_API_TOKEN: &str = "APP_API_TOKEN";
    /// When present among daprd's env, Windows needs daprd to run as administrator.
    pub const SSL_CERT_DIR: &str = "SSL_CERT_DIR";
    /// In app containers.
    pub const DAPR_HTTP_PORT: &str = "DAPR_HTTP_PORT";
    pub const DAPR_GRPC_PORT: &str = "DAPR_GRPC_PORT";
    pub const APP_PROTOCOL: &str = "APP_PROTOCOL";
}

/// Environment the injector process reads (upstream's envconfig names), see `config`.
pub mod process_env {
    pub const SIDECAR_IMAGE: &str = "SIDECAR_IMAGE";
    pub const SIDECAR_IMAGE_PULL_POLICY: &str = "SIDECAR_IMAGE_PULL_POLICY";
    pub const NAMESPACE: &str = "NAMESPACE";
    pub const KUBE_CLUSTER_DOMAIN: &str = "KUBE_CLUSTER_DOMAIN";
    pub const ALLOWED_SERVICE_ACCOUNTS: &str = "ALLOWED_SERVICE_ACCOUNTS";
    pub const ALLOWED_SERVICE_ACCOUNTS_PREFIX_NAMES: &str = "ALLOWED_SERVICE_ACCOUNTS_PREFIX_NAMES";
    pub const IGNORE_ENTRYPOINT_TOLERATIONS: &str = "IGNORE_ENTRYPOINT_TOLERATIONS";
    pub const ACTORS_ENABLED: &str = "ACTORS_ENABLED";
    pub const ACTORS_SERVICE_NAME: &str = "ACTORS_SERVICE_NAME";
    pub const ACTORS_SERVICE_ADDRESS: &str = "ACTORS_SERVICE_ADDRESS";
    pub const REMINDERS_SERVICE_NAME: &str = "REMINDERS_SERVICE_NAME";
    pub const REMINDERS_SERVICE_ADDRESS: &str = "REMINDERS_SERVICE_ADDRESS";
    pub const SIDECAR_RUN_AS_NON_ROOT: &str = "SIDECAR_RUN_AS_NON_ROOT";
    pub const SIDECAR_RUN_AS_USER: &str = "SIDECAR_RUN_AS_USER";
    pub const SIDECAR_RUN_AS_GROUP: &str = "SIDECAR_RUN_AS_GROUP";
    pub const SIDECAR_READ_ONLY_ROOT_FILESYSTEM: &str = "SIDECAR_READ_ONLY_ROOT_FILESYSTEM";
    pub const ENABLE_K8S_DOWNWARD_APIS: &str = "ENABLE_K8S_DOWNWARD_APIS";
    pub const SIDECAR_DROP_ALL_CAPABILITIES: &str = "SIDECAR_DROP_ALL_CAPABILITIES";
    pub const NATIVE_SIDECAR_ENABLED: &str = "NATIVE_SIDECAR_ENABLED";
    pub const TRUST_ANCHORS_FILE: &str = "DAPR_TRUST_ANCHORS_FILE";
    pub const CONTROL_PLANE_TRUST_DOMAIN: &str = "DAPR_CONTROL_PLANE_TRUST_DOMAIN";
    pub const SENTRY_ADDRESS: &str = "DAPR_SENTRY_ADDRESS";
    /// The token sent to sentry, when not at the projected token's path (upstream's
    /// `pkg/security/token/token.go` reads it in every binary that asks sentry).
    pub const SENTRY_TOKEN_FILE: &str = "DAPR_SENTRY_TOKEN_FILE";
    /// Default folder for pluggable-component sockets (same name as the env daprd gets).
    pub const COMPONENT_SOCKETS_FOLDER: &str = "DAPR_COMPONENT_SOCKETS_FOLDER";
}

/// Volumes and mount paths the patch adds.
pub mod volume {
    pub const TOKEN: &str = "dapr-identity-token";
    pub const TOKEN_MOUNT_PATH: &str = dapr_identity::token::SENTRY_TOKEN_DIR;
    pub const TOKEN_PATH: &str = "token";
    /// 0644, as upstream.
    pub const TOKEN_DEFAULT_MODE: i32 = 420;
    pub const TOKEN_EXPIRATION_SECONDS: i64 = 7200;
    pub const UNIX_DOMAIN_SOCKET: &str = "dapr-unix-domain-socket";
    pub const UNIX_DOMAIN_SOCKET_DAPRD_PATH: &str = "/var/run/dapr-sockets";
    pub const COMPONENTS_SOCKETS: &str = "dapr-components-unix-domain-socket";
    pub const COMPONENTS_SOCKETS_DEFAULT_FOLDER: &str = "/tmp/dapr-components-sockets";
}

/// The injected container, its ports and probes.
pub mod sidecar {
    pub const CONTAINER_NAME: &str = "daprd";
    pub const COMMAND: &str = "/daprd";
    pub const DEBUGGER_COMMAND: &str = "/dlv";
    pub const HTTP_PORT_NAME: &str = "dapr-http";
    pub const GRPC_PORT_NAME: &str = "dapr-grpc";
    pub const INTERNAL_GRPC_PORT_NAME: &str = "dapr-internal";
    pub const METRICS_PORT_NAME: &str = "dapr-metrics";
    pub const DEBUG_PORT_NAME: &str = "dapr-debug";
    pub const HTTP_PORT: u16 = 3500;
    /// Serves healthz without API token; probed, never declared as a container port.
    pub const PUBLIC_PORT: u16 = 3501;
    pub const HEALTHZ_PATH: &str = "/v1.0/healthz";
    pub const MODE_KUBERNETES: &str = "kubernetes";
}

/// Control-plane Services daprd dials, `<name>.<ns>.svc.<cluster-domain>:<port>`.
pub mod control_plane {
    pub const API_SERVICE: (&str, u16) = ("dapr-api", 443);
    pub const SENTRY_SERVICE: (&str, u16) = ("dapr-sentry", 443);
    pub const PLACEMENT_SERVICE: (&str, u16) = ("dapr-placement-server", 50005);
    pub const SCHEDULER_SERVICE: (&str, u16) = ("dapr-scheduler-server-a", 443);
    pub const SENTRY_APP_ID: &str = dapr_identity::SENTRY_APP_ID;
    /// The Configuration whose `spec.mtls.enabled` decides `--enable-mtls`.
    pub const SYSTEM_CONFIGURATION: &str = "daprsystem";
    /// The webhook configuration whose `caBundle` the injector keeps current.
    pub const WEBHOOK_CONFIGURATION: &str = "dapr-sidecar-injector";
    pub const ACTORS_SERVICE_PLACEMENT: &str = "placement";
}

/// Dapr's custom resources, read through the dynamic API.
pub mod crd {
    pub const GROUP: &str = "dapr.io";
    pub const VERSION: &str = "v1alpha1";
    pub const CONFIGURATION: &str = "Configuration";
    pub const COMPONENT: &str = "Component";
}

/// The `<app-id>-dapr` Service's ports.
/// The binding that lets the sidecars of a namespace read its Configurations (daprd reads the
/// one named by `--config` at start).
pub mod configuration_reader {
    /// Name of the chart's ClusterRole and of the RoleBinding in each namespace.
    pub const NAME: &str = "dapr-configuration-reader";
    /// The group of every service account of `namespace`.
    pub fn service_accounts_group(namespace: &str) -> String {
        format!("system:serviceaccounts:{namespace}")
    }
}

pub mod service {
    pub const NAME_SUFFIX: &str = "-dapr";
    pub const HTTP_PORT: i32 = 80;
    pub const FIELD_MANAGER: &str = "dapr-injector";
}
