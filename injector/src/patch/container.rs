//! The `daprd` container: its command line in upstream's flag order, ports, environment,
//! security context, probes and resources.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, TCPSocketAction, Toleration, VolumeMount,
    WindowsSecurityContextOptions,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::env::{field_env, literal_env, parse_env_annotation, parse_env_from_secret, secret_env};
use super::{Ports, Settings};
use crate::names::{annotation, env, sidecar, volume};
use crate::options::{ProbeTiming, SidecarOptions};
use crate::quantity;

/// What the `daprd` container is built from.
pub(super) struct SidecarInputs<'a> {
    pub(super) options: &'a SidecarOptions,
    pub(super) settings: &'a Settings,
    pub(super) app_id: &'a str,
    pub(super) namespace: &'a str,
    pub(super) trust_anchors: &'a str,
    pub(super) mtls_enabled: bool,
    pub(super) ports: &'a Ports,
    pub(super) tolerations: &'a [Toleration],
    pub(super) mounts: Vec<VolumeMount>,
    pub(super) sockets_mount: Option<&'a VolumeMount>,
    pub(super) native: bool,
}

/// The `daprd` container, from its command line, environment, security context, mounts,
/// probes and resources.
pub(super) fn sidecar_container(
    inputs: &SidecarInputs<'_>,
    warnings: &mut Vec<String>,
) -> Container {
    let o = inputs.options;
    let s = inputs.settings;
    let (container_ports, command, args) = command_line(inputs);
    let mut env_vars = sidecar_env(inputs);
    let security = security_context(o, s, &env_vars);

    let mut mounts = inputs.mounts.clone();
    if let Some(sockets) = inputs.sockets_mount {
        mounts.push(sockets.clone());
        env_vars.push(literal_env(
            env::COMPONENT_SOCKETS_FOLDER,
            &sockets.mount_path,
        ));
    }
    if !o.api_token_secret.is_empty() {
        env_vars.push(secret_env(env::API_TOKEN, &o.api_token_secret, "token"));
    }
    if !o.app_token_secret.is_empty() {
        env_vars.push(secret_env(env::APP_API_TOKEN, &o.app_token_secret, "token"));
    }

    Container {
        name: sidecar::CONTAINER_NAME.to_owned(),
        image: Some(
            o.sidecar_image
                .clone()
                .unwrap_or_else(|| s.sidecar_image.clone()),
        ),
        image_pull_policy: Some(s.image_pull_policy.clone()),
        security_context: Some(security),
        ports: Some(container_ports),
        command,
        args: Some(args),
        env: Some(env_vars),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        readiness_probe: Some(probe(
            o.readiness,
            Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(sidecar::HEALTHZ_PATH.to_owned()),
                    port: IntOrString::Int(i32::from(sidecar::PUBLIC_PORT)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
        liveness_probe: Some(probe(
            o.liveness,
            Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(i32::from(sidecar::PUBLIC_PORT)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
        resources: resources(o, warnings),
        restart_policy: inputs.native.then(|| "Always".to_owned()),
        ..Default::default()
    }
}

/// The container's ports, `command` and `args`: daprd's flags, wrapped in the debugger when
/// debugging is on.
fn command_line(
    inputs: &SidecarInputs<'_>,
) -> (Vec<ContainerPort>, Option<Vec<String>>, Vec<String>) {
    let s = inputs.settings;
    let ports = inputs.ports;
    let mut container_ports = vec![
        port(sidecar::HTTP_PORT_NAME, i32::from(sidecar::HTTP_PORT)),
        port(sidecar::GRPC_PORT_NAME, ports.grpc),
        port(sidecar::INTERNAL_GRPC_PORT_NAME, ports.internal),
        port(sidecar::METRICS_PORT_NAME, ports.metrics),
    ];

    let mut args = daprd_args(inputs);
    let mut command = sidecar::COMMAND.to_owned();
    if let Some(debug_port) = ports.debug {
        container_ports.push(port(sidecar::DEBUG_PORT_NAME, debug_port));
        command = sidecar::DEBUGGER_COMMAND.to_owned();
        let mut wrapped: Vec<String> = [
            "--listen",
            &format!(":{debug_port}"),
            "--accept-multiclient",
            "--headless=true",
            "--log",
            "--api-version=2",
            "exec",
            sidecar::COMMAND,
            "--",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        wrapped.append(&mut args);
        args = wrapped;
    }
    // The command goes first in args so the image's ENTRYPOINT runs it, except on nodes whose
    // runtimes ignore ENTRYPOINT (recognised by their tolerations).
    let ignores_entrypoint = inputs
        .tolerations
        .iter()
        .any(|t| s.ignore_entrypoint_tolerations.contains(t));
    let (command, args) = if ignores_entrypoint {
        (Some(vec![command]), args)
    } else {
        let mut all = vec![command];
        all.extend(args);
        (None, all)
    };
    (container_ports, command, args)
}

/// daprd's own environment and the `dapr.io/env` and `dapr.io/env-from-secret` annotations'.
fn sidecar_env(inputs: &SidecarInputs<'_>) -> Vec<EnvVar> {
    let o = inputs.options;
    let s = inputs.settings;
    let mut env_vars = vec![
        literal_env(env::NAMESPACE, inputs.namespace),
        literal_env(env::TRUST_ANCHORS, inputs.trust_anchors),
        field_env(env::POD_NAME, "metadata.name"),
        literal_env(env::CONTROL_PLANE_NAMESPACE, &s.control_plane_namespace),
        literal_env(
            env::CONTROL_PLANE_TRUST_DOMAIN,
            &s.control_plane_trust_domain,
        ),
    ];
    if s.downward_apis {
        env_vars.push(field_env(env::HOST_IP, "status.podIP"));
    }
    let (mut keys, plain) = parse_env_annotation(&o.env);
    env_vars.extend(plain);
    let (secret_keys, from_secret) = parse_env_from_secret(&o.env_from_secret);
    keys.extend(secret_keys);
    env_vars.extend(from_secret);
    if !keys.is_empty() {
        env_vars.push(literal_env(env::ENV_KEYS, &keys.join(" ")));
    }
    env_vars
}

/// The settings' security context, with the annotation's seccomp profile; administrator
/// rights on Windows when `env_vars` set `SSL_CERT_DIR`.
fn security_context(o: &SidecarOptions, s: &Settings, env_vars: &[EnvVar]) -> SecurityContext {
    let mut security = SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(s.run_as_non_root),
        run_as_user: s.run_as_user,
        run_as_group: s.run_as_group,
        read_only_root_filesystem: Some(s.read_only_root_filesystem),
        ..Default::default()
    };
    if !o.seccomp_profile_type.is_empty() {
        security.seccomp_profile = Some(SeccompProfile {
            type_: o.seccomp_profile_type.clone(),
            ..Default::default()
        });
    }
    if s.drop_all_capabilities {
        security.capabilities = Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        });
    }
    // Windows needs administrator rights to install certificates from SSL_CERT_DIR.
    if env_vars.iter().any(|e| e.name == env::SSL_CERT_DIR) {
        security.windows_options = Some(WindowsSecurityContextOptions {
            run_as_user_name: Some("ContainerAdministrator".to_owned()),
            ..Default::default()
        });
        security.run_as_non_root = Some(false);
        security.read_only_root_filesystem = Some(false);
        security.run_as_user = None;
        security.run_as_group = None;
    }
    security
}

/// daprd's command line, built flag by flag.
#[derive(Default)]
struct ArgList(Vec<String>);

impl ArgList {
    fn flag(&mut self, name: &str, value: impl ToString) {
        self.0.push(name.to_owned());
        self.0.push(value.to_string());
    }

    /// The flag with its value, unless the value is absent or empty.
    fn optional(&mut self, name: &str, value: Option<impl ToString>) {
        if let Some(value) = value.map(|v| v.to_string()).filter(|v| !v.is_empty()) {
            self.flag(name, value);
        }
    }

    fn switch(&mut self, name: &str, on: bool) {
        if on {
            self.0.push(name.to_owned());
        }
    }
}

/// daprd's flags in upstream's order: the always-present ones, then the conditional ones.
fn daprd_args(inputs: &SidecarInputs<'_>) -> Vec<String> {
    let o = inputs.options;
    let s = inputs.settings;
    let p = inputs.ports;
    let mut args = ArgList::default();
    args.flag("--dapr-http-port", sidecar::HTTP_PORT);
    args.flag("--dapr-grpc-port", p.grpc);
    args.flag("--dapr-internal-grpc-port", p.internal);
    args.flag("--dapr-listen-addresses", &o.listen_addresses);
    args.flag("--dapr-public-port", sidecar::PUBLIC_PORT);
    args.flag("--app-id", inputs.app_id);
    args.flag("--app-protocol", &o.app_protocol);
    args.flag("--log-level", &o.log_level);
    args.flag(
        "--dapr-graceful-shutdown-seconds",
        o.graceful_shutdown_seconds,
    );
    args.flag("--mode", sidecar::MODE_KUBERNETES);
    args.flag("--control-plane-address", &s.operator_address);
    args.flag("--sentry-address", &s.sentry_address);

    args.optional("--app-port", p.app);
    if o.enable_metrics {
        args.switch("--enable-metrics", true);
        args.flag("--metrics-port", p.metrics);
    }
    args.optional("--config", Some(&o.config));
    args.optional("--app-channel-address", Some(&o.app_channel_address));
    // An explicit placement address wins over an actors service; "" switches both off.
    let placement = o
        .placement_host_address
        .as_ref()
        .or(s.default_placement_address.as_ref());
    if placement.is_some_and(|a| !a.is_empty()) {
        args.optional("--placement-host-address", placement);
    } else {
        args.optional("--actors-service", s.actors_service.as_ref());
    }
    args.optional("--reminders-service", s.reminders_service.as_ref());
    args.optional(
        "--sentry-request-jwt-audiences",
        Some(&o.sentry_request_jwt_audiences),
    );
    if let Some(api_logging) = o.enable_api_logging {
        args.switch(&format!("--enable-api-logging={api_logging}"), true);
    }
    args.switch(
        "--disable-builtin-k8s-secret-store",
        o.disable_builtin_k8s_secret_store,
    );
    if o.enable_app_health_check {
        args.switch("--enable-app-health-check", true);
        args.flag("--app-health-check-path", &o.app_health_check_path);
        args.flag("--app-health-probe-interval", o.app_health_probe_interval);
        args.flag("--app-health-probe-timeout", o.app_health_probe_timeout);
        args.flag("--app-health-threshold", o.app_health_threshold);
    }
    args.optional(
        "--app-binding-options-timeout",
        Some(&o.app_binding_options_timeout),
    );
    args.switch("--log-as-json", o.log_as_json);
    args.switch("--enable-profiling", o.enable_profiling);
    args.switch("--enable-mtls", inputs.mtls_enabled);
    args.switch("--app-ssl", o.app_ssl);
    args.optional("--app-max-concurrency", o.app_max_concurrency);
    args.optional("--dapr-http-max-request-size", o.http_max_request_size);
    args.optional("--max-body-size", Some(&o.max_body_size));
    args.optional("--dapr-http-read-buffer-size", o.http_read_buffer_size);
    args.optional("--read-buffer-size", Some(&o.read_buffer_size));
    // daprd's socket folder is fixed; the annotation says where app containers see it.
    args.optional(
        "--unix-domain-socket",
        (!o.unix_domain_socket_path.is_empty()).then_some(volume::UNIX_DOMAIN_SOCKET_DAPRD_PATH),
    );
    args.optional(
        "--dapr-block-shutdown-duration",
        o.block_shutdown_duration.as_ref(),
    );
    args.optional(
        "--actors-disseminate-timeout",
        Some(&o.actors_disseminate_timeout),
    );
    args.optional(
        "--scheduler-host-address",
        o.scheduler_host_address
            .as_ref()
            .or(s.default_scheduler_address.as_ref()),
    );
    args.optional("--disable-init-endpoints", Some(&o.disable_init_endpoints));
    args.0
}

fn probe(timing: ProbeTiming, handler: Probe) -> Probe {
    Probe {
        initial_delay_seconds: Some(timing.delay_seconds),
        timeout_seconds: Some(timing.timeout_seconds),
        period_seconds: Some(timing.period_seconds),
        failure_threshold: Some(timing.failure_threshold),
        ..handler
    }
}

/// Requests and limits from the four annotations; one bad quantity drops them all (upstream).
fn resources(o: &SidecarOptions, warnings: &mut Vec<String>) -> Option<ResourceRequirements> {
    let entries = [
        (annotation::SIDECAR_CPU_REQUEST, &o.cpu_request, true, "cpu"),
        (annotation::SIDECAR_CPU_LIMIT, &o.cpu_limit, false, "cpu"),
        (
            annotation::SIDECAR_MEMORY_REQUEST,
            &o.memory_request,
            true,
            "memory",
        ),
        (
            annotation::SIDECAR_MEMORY_LIMIT,
            &o.memory_limit,
            false,
            "memory",
        ),
    ];
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (key, value, is_request, resource) in entries {
        if value.is_empty() {
            continue;
        }
        if !quantity::is_valid(value) {
            warnings.push(format!(
                "annotation {key}: {value:?} is not a Kubernetes quantity; daprd gets no \
                 resource requests or limits"
            ));
            return None;
        }
        let target = if is_request {
            &mut requests
        } else {
            &mut limits
        };
        target.insert(resource.to_owned(), Quantity(value.clone()));
    }
    if requests.is_empty() && limits.is_empty() {
        return None;
    }
    Some(ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    })
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        ..Default::default()
    }
}
