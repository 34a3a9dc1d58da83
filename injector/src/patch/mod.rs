//! The JSON patch that adds a `daprd` sidecar to a pod: a pure function of the pod, its
//! annotations, the injector's settings and the few cluster facts the handler looked up.
//!
//! Op order, names and values follow upstream (pkg/injector/patcher/sidecar_patcher.go and
//! sidecar_container.go) so an injected pod looks the same as one injected by Dapr: the `daprd`
//! container is appended after the app containers, labels `dapr.io/sidecar-injected`,
//! `dapr.io/app-id`, `dapr.io/metrics-enabled` are added, and app containers get
//! `DAPR_HTTP_PORT`, `DAPR_GRPC_PORT` and `APP_PROTOCOL` unless they set them.
//!
//! [`build`] runs named steps: the app id, the containers by role (`components`), the volumes
//! and mounts (`volumes`), the `daprd` container (`container`), then the ops in upstream's
//! order; `env` holds the environment variables for app and sidecar containers.

mod components;
mod container;
mod env;
mod volumes;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, Toleration, VolumeMount};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::names::{annotation, label, sidecar};
use crate::options::SidecarOptions;
use components::{Components, PodContainers};
use container::{SidecarInputs, sidecar_container};
use volumes::{PodShape, SidecarVolumes, mount_ops};

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
    pub(super) fn add(path: impl Into<String>, value: Value) -> Self {
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

    let app_id = app_id_of(pod, &options, &mut warnings);
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
    let containers = PodContainers::of(spec, &options);
    let volumes = SidecarVolumes::plan(&options, settings, &shape, &mut warnings);
    let components = Components::plan(
        &app_id,
        &options,
        settings,
        facts,
        &containers,
        &mut warnings,
    );
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
            mounts: volumes.daprd,
            sockets_mount: components.sockets_mount(),
            native,
        },
        &mut warnings,
    );

    let mut ops = Vec::new();
    add_missing_lists(pod, spec, &mut ops);
    shape.add_volumes(volumes.new, &mut ops);
    add_sidecar(spec, native, &daprd, &mut ops);
    add_labels(&app_id, &options, &mut ops);
    patch_app_containers(
        &containers.app,
        &env::app_env(&options, &ports),
        &volumes.app,
        &mut ops,
    );
    components.add(&mut shape, &containers.components, &mut ops);

    Ok(Patch {
        ops,
        warnings,
        app_id,
    })
}

/// The app id: the annotation's, else the pod's name (with a warning).
fn app_id_of(pod: &Pod, options: &SidecarOptions, warnings: &mut Vec<String>) -> String {
    match &options.app_id {
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
    }
}

/// Empty container and label lists for later ops to add into, where the pod has none.
fn add_missing_lists(pod: &Pod, spec: &PodSpec, ops: &mut Vec<PatchOp>) {
    if spec.containers.is_empty() {
        ops.push(PatchOp::add("/spec/containers", json!([])));
    }
    if pod.metadata.labels.as_ref().is_none_or(BTreeMap::is_empty) {
        ops.push(PatchOp::add("/metadata/labels", json!({})));
    }
}

/// The `daprd` container: after the app containers, or as a native sidecar (an init container
/// that keeps running).
fn add_sidecar(spec: &PodSpec, native: bool, daprd: &Container, ops: &mut Vec<PatchOp>) {
    let containers_path = if native {
        if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
            ops.push(PatchOp::add("/spec/initContainers", json!([])));
        }
        "/spec/initContainers/-"
    } else {
        "/spec/containers/-"
    };
    ops.push(PatchOp::add(containers_path, to_json(daprd)));
}

/// The labels upstream puts on an injected pod.
fn add_labels(app_id: &str, options: &SidecarOptions, ops: &mut Vec<PatchOp>) {
    for (key, value) in [
        (label::SIDECAR_INJECTED, "true".to_owned()),
        (label::APP_ID, app_id.to_owned()),
        (label::METRICS_ENABLED, options.enable_metrics.to_string()),
    ] {
        ops.push(PatchOp::add(
            format!("/metadata/labels/{}", escape_pointer(key)),
            Value::String(value),
        ));
    }
}

/// The app containers get the sidecar's ports (and the app protocol) in their environment,
/// and the sidecar's socket folder when it listens on one.
fn patch_app_containers(
    app: &[(usize, &Container)],
    vars: &[EnvVar],
    mounts: &[VolumeMount],
    ops: &mut Vec<PatchOp>,
) {
    for (index, container) in app {
        env::env_ops(*index, container, vars, ops);
    }
    for app_mount in mounts {
        for (index, container) in app {
            mount_ops(*index, container, std::slice::from_ref(app_mount), ops);
        }
    }
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
