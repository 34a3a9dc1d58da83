//! The JSON patch that adds a `daprd` sidecar to a pod: a pure function of the pod, its
//! annotations, the injector's settings and the few cluster facts the handler looked up.
//!
//! Op order, names and values follow upstream (pkg/injector/patcher/sidecar_patcher.go and
//! sidecar_container.go) so an injected pod looks the same as one injected by Dapr: the `daprd`
//! container is appended after the app containers, labels `dapr.io/sidecar-injected`,
//! `dapr.io/app-id`, `dapr.io/metrics-enabled` are added, and app containers get
//! `DAPR_HTTP_PORT`, `DAPR_GRPC_PORT` and `APP_PROTOCOL` unless they set them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, PodSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext,
    ServiceAccountTokenProjection, TCPSocketAction, Toleration, Volume, VolumeMount,
    VolumeProjection, WindowsSecurityContextOptions,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::names::{annotation, env, label, sidecar, volume};
use crate::options::{ProbeTiming, SidecarOptions};
use crate::quantity;

/// Injector-wide settings that shape every sidecar (from flags and env, see `config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub sidecar_image: String,
    pub image_pull_policy: String,
    pub control_plane_namespace: String,
    pub control_plane_trust_domain: String,
    /// `--control-plane-address`, the operator's `dapr-api` Service.
    pub operator_address: String,
    pub sentry_address: String,
    /// Audience of the projected token: sentry's SPIFFE id.
    pub sentry_audience: String,
    /// `--placement-host-address` when the pod does not say (None: actors off or not placement).
    pub default_placement_address: Option<String>,
    /// `--actors-service name:address` when actors are served by something else than placement.
    pub actors_service: Option<String>,
    pub reminders_service: Option<String>,
    /// `--scheduler-host-address` when the pod does not say (None: scheduler off).
    pub default_scheduler_address: Option<String>,
    pub run_as_non_root: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub read_only_root_filesystem: bool,
    pub drop_all_capabilities: bool,
    pub downward_apis: bool,
    pub native_sidecar: bool,
    pub ignore_entrypoint_tolerations: Vec<Toleration>,
    /// Whether to project a service-account token for sentry (upstream: when the injector
    /// itself runs with a Kubernetes token, i.e. in a cluster).
    pub token_volume: bool,
    pub components_sockets_folder: String,
}

/// What the handler looked up for this request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// PEM of the current trust anchors; `None` while they could not be read.
    pub trust_anchors: Option<String>,
    /// `spec.mtls.enabled` of Configuration `daprsystem` (true when missing or unreadable).
    pub mtls_enabled: bool,
    /// Components in the pod's namespace, for `dapr.io/inject-pluggable-components`.
    pub components: Vec<Component>,
}

/// The parts of a Dapr Component that pluggable-component injection reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub scopes: Vec<String>,
    /// The `dapr.io/component-container` annotation: a JSON container.
    pub container: Option<String>,
}

/// One JSON patch operation; the injector only ever adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchOp {
    pub op: String,
    pub path: String,
    pub value: Value,
}

impl PatchOp {
    fn add(path: impl Into<String>, value: Value) -> Self {
        Self {
            op: "add".to_owned(),
            path: path.into(),
            value,
        }
    }
}

/// The result of a successful build: no ops means there is nothing to do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch {
    pub ops: Vec<PatchOp>,
    /// Annotations that were ignored or fell back to defaults, for the user.
    pub warnings: Vec<String>,
    pub app_id: String,
}

/// Why a pod that asked for a sidecar cannot be admitted; the message names the annotation
/// and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(pub String);

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The webhook's gate: `dapr.io/enabled` exactly "true" in any case (stricter than other
/// boolean annotations, as upstream).
pub fn wants_injection(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotation::ENABLED))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// True when the pod already has a container or init container named `daprd`.
pub fn already_injected(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == sidecar::CONTAINER_NAME)
    })
}

/// Checks the rule upstream applies to app ids in Kubernetes: `<id>-dapr` is a DNS-1123 label.
pub fn validate_app_id(id: &str) -> Result<(), Rejection> {
    if id.is_empty() {
        return Err(Rejection(format!(
            "annotation {}: the pod has no app id and no name to default it to (pods created by \
             a controller are named after admission); set {}",
            annotation::APP_ID,
            annotation::APP_ID
        )));
    }
    let service = format!("{id}{}", crate::names::service::NAME_SUFFIX);
    let bytes = service.as_bytes();
    let valid_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if service.len() > 63 || !valid_chars || !alnum(bytes[0]) {
        return Err(Rejection(format!(
            "annotation {}: invalid app id {id:?}: {service:?} must be a DNS-1123 label (lowercase \
             letters, digits and '-', starting with a letter or digit, at most 63 characters, so \
             the app id is at most 58)",
            annotation::APP_ID
        )));
    }
    dapr_identity::spiffe::validate_app_id(id)
        .map_err(|e| Rejection(format!("annotation {}: {e}", annotation::APP_ID)))
}

/// Builds the patch for `pod`, created in `namespace`.
pub fn build(
    pod: &Pod,
    namespace: &str,
    settings: &Settings,
    facts: &Facts,
) -> Result<Patch, Rejection> {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let (options, mut warnings) = SidecarOptions::from_annotations(annotations);
    if !options.enabled || already_injected(pod) {
        return Ok(Patch {
            warnings,
            ..Patch::default()
        });
    }

    let app_id = match &options.app_id {
        Some(id) => id.clone(),
        None => {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if !name.is_empty() {
                warnings.push(format!(
                    "annotation {} not set: using the pod name {name:?}",
                    annotation::APP_ID
                ));
            }
            name
        }
    };
    validate_app_id(&app_id)?;
    let ports = Ports::check(&options)?;
    let Some(trust_anchors) = facts.trust_anchors.as_deref() else {
        return Err(Rejection(
            "trust anchors are not loaded yet; the injector cannot configure daprd".to_owned(),
        ));
    };

    // Borrowed: the spec is most of the pod, and a copy would double what a review costs.
    let no_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&no_spec);
    let mut shape = PodShape::of(spec);
    let component_names: BTreeSet<&str> = options
        .pluggable_components
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let (app_containers, component_containers): (Vec<_>, Vec<_>) = spec
        .containers
        .iter()
        .enumerate()
        .partition(|(_, c)| !component_names.contains(c.name.as_str()));

    // Volumes the sidecar mounts: annotation mounts, the UDS folder, the sentry token.
    let mut daprd_mounts = annotation_mounts(&options, &shape, &mut warnings);
    let mut new_volumes = Vec::new();
    let mut app_mounts = Vec::new();
    if !options.unix_domain_socket_path.is_empty() {
        new_volumes.push(Volume {
            name: volume::UNIX_DOMAIN_SOCKET.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        });
        daprd_mounts.push(mount(
            volume::UNIX_DOMAIN_SOCKET,
            volume::UNIX_DOMAIN_SOCKET_DAPRD_PATH,
            false,
        ));
        app_mounts.push(mount(
            volume::UNIX_DOMAIN_SOCKET,
            &options.unix_domain_socket_path,
            false,
        ));
    }
    if settings.token_volume {
        new_volumes.push(token_volume(&settings.sentry_audience));
        daprd_mounts.push(mount(volume::TOKEN, volume::TOKEN_MOUNT_PATH, true));
    }

    let injected = if options.inject_pluggable_components {
        injectable_containers(&app_id, &facts.components, &mut warnings)
    } else {
        Vec::new()
    };
    let uses_components = !component_containers.is_empty() || !injected.is_empty();
    let sockets_mount = uses_components.then(|| {
        let folder = if options.pluggable_components_sockets_folder.is_empty() {
            settings.components_sockets_folder.clone()
        } else {
            options.pluggable_components_sockets_folder.clone()
        };
        mount(volume::COMPONENTS_SOCKETS, &folder, false)
    });

    let native = options
        .enable_native_sidecar
        .unwrap_or(settings.native_sidecar);
    let daprd = sidecar_container(
        &SidecarInputs {
            options: &options,
            settings,
            app_id: &app_id,
            namespace,
            trust_anchors,
            mtls_enabled: facts.mtls_enabled,
            ports: &ports,
            tolerations: spec.tolerations.as_deref().unwrap_or_default(),
            mounts: daprd_mounts,
            sockets_mount: sockets_mount.as_ref(),
            native,
        },
        &mut warnings,
    );

    let mut ops = Vec::new();
    if spec.containers.is_empty() {
        ops.push(PatchOp::add("/spec/containers", json!([])));
    }
    if pod.metadata.labels.as_ref().is_none_or(BTreeMap::is_empty) {
        ops.push(PatchOp::add("/metadata/labels", json!({})));
    }
    shape.add_volumes(new_volumes, &mut ops);
    let containers_path = if native {
        if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
            ops.push(PatchOp::add("/spec/initContainers", json!([])));
        }
        "/spec/initContainers/-"
    } else {
        "/spec/containers/-"
    };
    ops.push(PatchOp::add(containers_path, to_json(&daprd)));
    for (key, value) in [
        (label::SIDECAR_INJECTED, "true".to_owned()),
        (label::APP_ID, app_id.clone()),
        (label::METRICS_ENABLED, options.enable_metrics.to_string()),
    ] {
        ops.push(PatchOp::add(
            format!("/metadata/labels/{}", escape_pointer(key)),
            Value::String(value),
        ));
    }

    let mut app_env = vec![
        literal_env(env::DAPR_HTTP_PORT, &sidecar::HTTP_PORT.to_string()),
        literal_env(env::DAPR_GRPC_PORT, &ports.grpc.to_string()),
    ];
    let protocol = normalized_app_protocol(&options.app_protocol, options.app_ssl);
    if !protocol.is_empty() {
        app_env.push(literal_env(env::APP_PROTOCOL, protocol));
    }
    for (index, container) in &app_containers {
        env_ops(*index, container, &app_env, &mut ops);
    }
    for app_mount in &app_mounts {
        for (index, container) in &app_containers {
            mount_ops(*index, container, std::slice::from_ref(app_mount), &mut ops);
        }
    }

    if let Some(sockets_mount) = &sockets_mount {
        shape.add_volumes(
            vec![Volume {
                name: volume::COMPONENTS_SOCKETS.to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }],
            &mut ops,
        );
        let sockets_env = vec![literal_env(
            env::COMPONENT_SOCKETS_FOLDER,
            &sockets_mount.mount_path,
        )];
        for (index, container) in &component_containers {
            env_ops(*index, container, &sockets_env, &mut ops);
            mount_ops(
                *index,
                container,
                std::slice::from_ref(sockets_mount),
                &mut ops,
            );
        }
        for mut container in injected {
            container
                .env
                .get_or_insert_with(Vec::new)
                .extend(sockets_env.iter().cloned());
            let scratch: Vec<Volume> = container
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| Volume {
                    name: m.name.clone(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                })
                .collect();
            shape.add_volumes(scratch, &mut ops);
            container
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(sockets_mount.clone());
            ops.push(PatchOp::add("/spec/containers/-", to_json(&container)));
        }
    }

    Ok(Patch {
        ops,
        warnings,
        app_id,
    })
}

/// Ports the sidecar declares, checked to be valid port numbers.
#[derive(Debug, Clone, Copy)]
struct Ports {
    grpc: i32,
    internal: i32,
    metrics: i32,
    debug: Option<i32>,
    app: Option<i32>,
}

impl Ports {
    fn check(options: &SidecarOptions) -> Result<Self, Rejection> {
        fn port(key: &str, value: i64) -> Result<i32, Rejection> {
            match i32::try_from(value) {
                Ok(p) if (1..=65535).contains(&p) => Ok(p),
                _ => Err(Rejection(format!(
                    "annotation {key}: {value} is not a port number (1-65535)"
                ))),
            }
        }
        let app = match options.app_port {
            Some(p) if p > 0 => Some(port(annotation::APP_PORT, p)?),
            _ => None,
        };
        Ok(Self {
            grpc: port(annotation::GRPC_PORT, options.grpc_port)?,
            internal: port(annotation::INTERNAL_GRPC_PORT, options.internal_grpc_port)?,
            metrics: port(annotation::METRICS_PORT, options.metrics_port)?,
            debug: if options.enable_debug {
                Some(port(annotation::DEBUG_PORT, options.debug_port)?)
            } else {
                None
            },
            app,
        })
    }
}

/// Which volumes the pod has, updated as ops add more, so each add uses the right path.
struct PodShape {
    has_volume_list: bool,
    volume_names: BTreeSet<String>,
}

impl PodShape {
    fn of(spec: &PodSpec) -> Self {
        let volumes = spec.volumes.as_deref().unwrap_or_default();
        Self {
            has_volume_list: !volumes.is_empty(),
            volume_names: volumes.iter().map(|v| v.name.clone()).collect(),
        }
    }

    /// One `add /spec/volumes [..]` while the pod has none, else one `add .../-` per volume;
    /// volumes whose name exists are skipped.
    fn add_volumes(&mut self, volumes: Vec<Volume>, ops: &mut Vec<PatchOp>) {
        let fresh: Vec<Volume> = volumes
            .into_iter()
            .filter(|v| self.volume_names.insert(v.name.clone()))
            .collect();
        if fresh.is_empty() {
            return;
        }
        if self.has_volume_list {
            ops.extend(
                fresh
                    .iter()
                    .map(|v| PatchOp::add("/spec/volumes/-", to_json(v))),
            );
        } else {
            ops.push(PatchOp::add("/spec/volumes", to_json(&fresh)));
            self.has_volume_list = true;
        }
    }
}

fn annotation_mounts(
    options: &SidecarOptions,
    shape: &PodShape,
    warnings: &mut Vec<String>,
) -> Vec<VolumeMount> {
    let parse = |list: &str, read_only: bool| -> Vec<VolumeMount> {
        list.split(',')
            .filter_map(|entry| {
                let mut parts = entry.trim().split(':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(name), Some(path), None) => Some(mount(name, path, read_only)),
                    _ => None,
                }
            })
            .collect()
    };
    let mut mounts = parse(&options.volume_mounts, true);
    mounts.extend(parse(&options.volume_mounts_rw, false));
    mounts
        .into_iter()
        .filter(|m| {
            let present = shape.volume_names.contains(&m.name);
            if !present {
                warnings.push(format!(
                    "annotation {}: volume {:?} is not in the pod; not mounted into daprd",
                    if m.read_only == Some(true) {
                        annotation::VOLUME_MOUNTS
                    } else {
                        annotation::VOLUME_MOUNTS_RW
                    },
                    m.name
                ));
            }
            present
        })
        .collect()
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn token_volume(audience: &str) -> Volume {
    Volume {
        name: volume::TOKEN.to_owned(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(volume::TOKEN_DEFAULT_MODE),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(audience.to_owned()),
                    expiration_seconds: Some(volume::TOKEN_EXPIRATION_SECONDS),
                    path: volume::TOKEN_PATH.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Containers declared by Components in scope for `app_id`, one per image, as upstream.
fn injectable_containers(
    app_id: &str,
    components: &[Component],
    warnings: &mut Vec<String>,
) -> Vec<Container> {
    let mut images = BTreeSet::new();
    let mut containers = Vec::new();
    for component in components {
        let Some(raw) = component.container.as_deref().filter(|c| !c.is_empty()) else {
            continue;
        };
        let mut container: Container = match serde_json::from_str(raw) {
            Ok(c) => c,
            Err(e) => {
                warnings.push(format!(
                    "component {:?}: annotation {} is not a JSON container ({e}); not injected",
                    component.name,
                    annotation::COMPONENT_CONTAINER
                ));
                continue;
            }
        };
        let image = container.image.clone().unwrap_or_default();
        if images.contains(&image) {
            continue;
        }
        let in_scope = component.scopes.is_empty() || component.scopes.iter().any(|s| s == app_id);
        if in_scope {
            images.insert(image);
            if container.name.is_empty() {
                container.name = component.name.clone();
            }
            containers.push(container);
        }
    }
    containers
}

/// Upstream's normalisation for the app containers' `APP_PROTOCOL`; "" for unknown values.
fn normalized_app_protocol(raw: &str, app_ssl: bool) -> &'static str {
    match raw.to_ascii_lowercase().as_str() {
        "grpcs" => "grpcs",
        "https" => "https",
        "h2c" => "h2c",
        "http" | "" if app_ssl => "https",
        "http" | "" => "http",
        "grpc" if app_ssl => "grpcs",
        "grpc" => "grpc",
        _ => "",
    }
}

struct SidecarInputs<'a> {
    options: &'a SidecarOptions,
    settings: &'a Settings,
    app_id: &'a str,
    namespace: &'a str,
    trust_anchors: &'a str,
    mtls_enabled: bool,
    ports: &'a Ports,
    tolerations: &'a [Toleration],
    mounts: Vec<VolumeMount>,
    sockets_mount: Option<&'a VolumeMount>,
    native: bool,
}

fn sidecar_container(inputs: &SidecarInputs<'_>, warnings: &mut Vec<String>) -> Container {
    let o = inputs.options;
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

/// `dapr.io/env`: `K=V,K2=V2`, split only at commas followed by `NAME=`, so values may contain
/// commas. Returns the names (for `DAPR_ENV_KEYS`) and the vars.
fn parse_env_annotation(value: &str) -> (Vec<String>, Vec<EnvVar>) {
    let mut keys = Vec::new();
    let mut vars = Vec::new();
    for (key, val) in split_env_pairs(value) {
        keys.push(key.clone());
        vars.push(literal_env(&key, &val));
    }
    (keys, vars)
}

/// `dapr.io/env-from-secret`: `K=secret` (key named like the secret) or `K=secret:key`.
fn parse_env_from_secret(value: &str) -> (Vec<String>, Vec<EnvVar>) {
    let mut keys = Vec::new();
    let mut vars = Vec::new();
    for (key, val) in split_env_pairs(value) {
        let val = val.trim();
        let (secret, secret_key) = match val.split(':').collect::<Vec<_>>().as_slice() {
            [secret] => (*secret, *secret),
            [secret, secret_key] => (secret.trim(), secret_key.trim()),
            _ => continue,
        };
        keys.push(key.clone());
        vars.push(secret_env(&key, secret, secret_key));
    }
    (keys, vars)
}

fn split_env_pairs(value: &str) -> Vec<(String, String)> {
    let bytes = value.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b',' && starts_with_assignment(&value[i + 1..]) {
            parts.push(&value[start..i]);
            start = i + 1;
        }
    }
    parts.push(&value[start..]);
    parts
        .into_iter()
        .filter_map(|part| {
            let (key, val) = part.trim().split_once('=')?;
            (!key.is_empty()).then(|| (key.to_owned(), val.to_owned()))
        })
        .collect()
}

/// True when `s` is optional whitespace, an env name (`[A-Za-z_][A-Za-z0-9_]*`) and `=`.
fn starts_with_assignment(s: &str) -> bool {
    let s = s.trim_start();
    let name_len = s
        .bytes()
        .enumerate()
        .take_while(|(i, b)| {
            b.is_ascii_alphabetic() || *b == b'_' || (*i > 0 && b.is_ascii_digit())
        })
        .count();
    name_len > 0 && s.as_bytes().get(name_len) == Some(&b'=')
}

fn env_ops(index: usize, container: &Container, add: &[EnvVar], ops: &mut Vec<PatchOp>) {
    let existing = container.env.as_deref().unwrap_or_default();
    if existing.is_empty() {
        ops.push(PatchOp::add(
            format!("/spec/containers/{index}/env"),
            to_json(&add),
        ));
        return;
    }
    for var in add {
        if !existing.iter().any(|e| e.name == var.name) {
            ops.push(PatchOp::add(
                format!("/spec/containers/{index}/env/-"),
                to_json(var),
            ));
        }
    }
}

fn mount_ops(index: usize, container: &Container, add: &[VolumeMount], ops: &mut Vec<PatchOp>) {
    let existing = container.volume_mounts.as_deref().unwrap_or_default();
    if existing.is_empty() {
        ops.push(PatchOp::add(
            format!("/spec/containers/{index}/volumeMounts"),
            to_json(&add),
        ));
        return;
    }
    for m in add {
        let clash = existing
            .iter()
            .any(|e| e.mount_path == m.mount_path || e.name == m.name);
        if !clash {
            ops.push(PatchOp::add(
                format!("/spec/containers/{index}/volumeMounts/-"),
                to_json(m),
            ));
        }
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        ..Default::default()
    }
}

fn literal_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// JSON pointer escaping of one path segment (`/` in label keys becomes `~1`).
fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Kubernetes types always serialise; `Null` would only show a bug in k8s-openapi.
fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn settings() -> Settings {
        Settings {
            sidecar_image: "ghcr.io/dapr/daprd:1.18.3".into(),
            image_pull_policy: "IfNotPresent".into(),
            control_plane_namespace: "dapr-system".into(),
            control_plane_trust_domain: "cluster.local".into(),
            operator_address: "dapr-api.dapr-system.svc.cluster.local:443".into(),
            sentry_address: "dapr-sentry.dapr-system.svc.cluster.local:443".into(),
            sentry_audience: "spiffe://cluster.local/ns/dapr-system/dapr-sentry".into(),
            default_placement_address: Some(
                "dapr-placement-server.dapr-system.svc.cluster.local:50005".into(),
            ),
            actors_service: None,
            reminders_service: None,
            default_scheduler_address: Some(
                "dapr-scheduler-server-a.dapr-system.svc.cluster.local:443".into(),
            ),
            run_as_non_root: true,
            run_as_user: None,
            run_as_group: None,
            read_only_root_filesystem: true,
            drop_all_capabilities: false,
            downward_apis: false,
            native_sidecar: false,
            ignore_entrypoint_tolerations: vec![],
            token_volume: true,
            components_sockets_folder: "/tmp/dapr-components-sockets".into(),
        }
    }

    fn facts() -> Facts {
        Facts {
            trust_anchors: Some("-----BEGIN CERTIFICATE-----\n...\n".into()),
            mtls_enabled: true,
            components: vec![],
        }
    }

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "orders-1",
                "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            },
            "spec": {"containers": [{"name": "app", "image": "orders:1"}]}
        }))
        .unwrap()
    }

    fn daprd(patch: &Patch) -> Container {
        let op = patch
            .ops
            .iter()
            .find(|op| op.path.ends_with("ontainers/-") && op.value["name"] == "daprd")
            .expect("daprd op");
        serde_json::from_value(op.value.clone()).unwrap()
    }

    fn args(patch: &Patch) -> Vec<String> {
        daprd(patch).args.unwrap()
    }

    #[test]
    fn a_pod_without_the_enabled_annotation_gets_no_patch() {
        let patch = build(&pod(&[]), "default", &settings(), &facts()).unwrap();
        assert!(patch.ops.is_empty());
    }

    #[test]
    fn a_pod_that_already_has_daprd_gets_no_patch() {
        let mut p = pod(&[(annotation::ENABLED, "true")]);
        p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: "daprd".into(),
            ..Default::default()
        }]);
        assert!(
            build(&p, "default", &settings(), &facts())
                .unwrap()
                .ops
                .is_empty()
        );
    }

    #[test]
    fn always_present_args_come_first_in_upstreams_order() {
        let patch = build(
            &pod(&[
                (annotation::ENABLED, "true"),
                (annotation::APP_ID, "orders"),
            ]),
            "default",
            &settings(),
            &facts(),
        )
        .unwrap();
        let args = args(&patch);
        assert_eq!(
            args[..25],
            [
                "/daprd",
                "--dapr-http-port",
                "3500",
                "--dapr-grpc-port",
                "50001",
                "--dapr-internal-grpc-port",
                "50002",
                "--dapr-listen-addresses",
                "[::1],127.0.0.1",
                "--dapr-public-port",
                "3501",
                "--app-id",
                "orders",
                "--app-protocol",
                "http",
                "--log-level",
                "info",
                "--dapr-graceful-shutdown-seconds",
                "-1",
                "--mode",
                "kubernetes",
                "--control-plane-address",
                "dapr-api.dapr-system.svc.cluster.local:443",
                "--sentry-address",
                "dapr-sentry.dapr-system.svc.cluster.local:443",
            ]
        );
        assert!(args.contains(&"--enable-mtls".to_owned()));
    }

    #[test]
    fn the_app_id_defaults_to_the_pod_name_with_a_warning() {
        let patch = build(
            &pod(&[(annotation::ENABLED, "true")]),
            "default",
            &settings(),
            &facts(),
        )
        .unwrap();
        assert_eq!(patch.app_id, "orders-1");
        assert!(
            patch
                .warnings
                .iter()
                .any(|w| w.contains(annotation::APP_ID))
        );
    }

    #[test]
    fn app_ids_that_cannot_name_a_service_are_rejected() {
        for bad in ["Orders", "orders_1", "-orders", &"a".repeat(59), "a.b"] {
            let err = validate_app_id(bad).unwrap_err();
            assert!(err.0.contains(annotation::APP_ID), "{err}");
        }
        validate_app_id(&"a".repeat(58)).unwrap();
        validate_app_id("orders-v2").unwrap();
    }

    #[test]
    fn a_port_out_of_range_is_rejected_naming_the_annotation() {
        let err = build(
            &pod(&[
                (annotation::ENABLED, "true"),
                (annotation::GRPC_PORT, "70000"),
            ]),
            "default",
            &settings(),
            &facts(),
        )
        .unwrap_err();
        assert!(err.0.contains(annotation::GRPC_PORT), "{err}");
    }

    #[test]
    fn missing_trust_anchors_reject_the_pod() {
        let err = build(
            &pod(&[(annotation::ENABLED, "true")]),
            "default",
            &settings(),
            &Facts::default(),
        )
        .unwrap_err();
        assert!(err.0.contains("trust anchors"), "{err}");
    }

    #[test]
    fn env_annotation_splits_only_before_names() {
        let (keys, vars) = parse_env_annotation("bad,A=1,2,3, B_2=x=y,c,C=");
        assert_eq!(keys, ["A", "B_2", "C"]);
        assert_eq!(vars[0].value.as_deref(), Some("1,2,3"));
        assert_eq!(vars[1].value.as_deref(), Some("x=y,c"));
        assert_eq!(vars[2].value.as_deref(), Some(""));
    }

    #[test]
    fn env_from_secret_takes_the_key_from_the_secret_name_or_after_a_colon() {
        let (keys, vars) = parse_env_from_secret("A=s1,B=s2:k2,C=a:b:c");
        assert_eq!(keys, ["A", "B"]);
        let r = |v: &EnvVar| {
            let s = v.value_from.clone().unwrap().secret_key_ref.unwrap();
            (s.name, s.key)
        };
        assert_eq!(r(&vars[0]), ("s1".into(), "s1".into()));
        assert_eq!(r(&vars[1]), ("s2".into(), "k2".into()));
    }

    #[test]
    fn one_bad_quantity_drops_all_resources_with_a_warning() {
        let patch = build(
            &pod(&[
                (annotation::ENABLED, "true"),
                (annotation::SIDECAR_CPU_REQUEST, "100m"),
                (annotation::SIDECAR_MEMORY_LIMIT, "lots"),
            ]),
            "default",
            &settings(),
            &facts(),
        )
        .unwrap();
        assert!(daprd(&patch).resources.is_none());
        assert!(
            patch
                .warnings
                .iter()
                .any(|w| w.contains(annotation::SIDECAR_MEMORY_LIMIT))
        );
    }

    #[test]
    fn app_protocol_is_normalised_for_app_containers() {
        assert_eq!(normalized_app_protocol("GRPC", false), "grpc");
        assert_eq!(normalized_app_protocol("grpc", true), "grpcs");
        assert_eq!(normalized_app_protocol("http", true), "https");
        assert_eq!(normalized_app_protocol("", false), "http");
        assert_eq!(normalized_app_protocol("h2c", true), "h2c");
        assert_eq!(normalized_app_protocol("smtp", false), "");
    }

    #[test]
    fn an_empty_placement_annotation_leaves_placement_and_actors_service_out() {
        let mut s = settings();
        s.actors_service = Some("other:svc:1".into());
        let patch = build(
            &pod(&[
                (annotation::ENABLED, "true"),
                (annotation::PLACEMENT_HOST_ADDRESS, ""),
            ]),
            "default",
            &s,
            &facts(),
        )
        .unwrap();
        let args = args(&patch);
        assert!(!args.iter().any(|a| a == "--placement-host-address"));
        assert!(
            args.windows(2)
                .any(|w| w == ["--actors-service", "other:svc:1"])
        );
    }

    #[test]
    fn pluggable_component_containers_are_injected_once_per_image_and_scope() {
        let mut f = facts();
        let container = r#"{"name":"","image":"redis-comp:1"}"#;
        f.components = vec![
            Component {
                name: "a".into(),
                scopes: vec![],
                container: Some(container.into()),
            },
            Component {
                name: "b".into(),
                scopes: vec![],
                container: Some(container.into()),
            },
            Component {
                name: "c".into(),
                scopes: vec!["other".into()],
                container: Some(r#"{"name":"c","image":"c:1"}"#.into()),
            },
            Component {
                name: "d".into(),
                scopes: vec![],
                container: Some("not json".into()),
            },
        ];
        let patch = build(
            &pod(&[
                (annotation::ENABLED, "true"),
                (annotation::APP_ID, "orders"),
                (annotation::INJECT_PLUGGABLE_COMPONENTS, "true"),
            ]),
            "default",
            &settings(),
            &f,
        )
        .unwrap();
        let injected: Vec<_> = patch
            .ops
            .iter()
            .filter(|op| op.path == "/spec/containers/-" && op.value["name"] != "daprd")
            .collect();
        assert_eq!(injected.len(), 1);
        assert_eq!(injected[0].value["name"], "a");
        assert!(patch.warnings.iter().any(|w| w.contains("\"d\"")));
    }
}
