//! The `<app-id>-dapr` Service reconciler (upstream's operator job,
//! pkg/operator/handlers/dapr_handler.go): every Deployment and StatefulSet whose pod template
//! has `dapr.io/enabled` gets a headless Service that daprd's `kubernetes` name resolver finds
//! peers through. The Service is owned by the workload (garbage-collected with it) and never
//! deleted when the annotation goes away.
//!
//! With it, each namespace holding such a workload gets the RoleBinding
//! `dapr-configuration-reader`: the chart's ClusterRole of that name (`get` on
//! `configurations.dapr.io`) for the namespace's own service accounts, so that daprd can read the
//! Configuration its `--config` names and nothing in any other namespace (upstream's operator
//! serves Configurations under the same rule).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::names::{annotation, configuration_reader, label, prometheus, service, sidecar};
use crate::options::{SidecarOptions, is_truthy};
use crate::patch::validate_app_id;

/// A workload whose pod template may ask for a sidecar.
pub trait Workload:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>>;
    fn selector_labels(&self) -> Option<&BTreeMap<String, String>>;
}

impl Workload for Deployment {
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.template.metadata.as_ref()?.annotations.as_ref()
    }
    fn selector_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.selector.match_labels.as_ref()
    }
}

impl Workload for StatefulSet {
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.template.metadata.as_ref()?.annotations.as_ref()
    }
    fn selector_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.selector.match_labels.as_ref()
    }
}

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    /// Whether sidecars talk mTLS on the internal port (`appProtocol: tls` rather than `grpc`).
    pub mtls_enabled: bool,
    /// Whether to keep the `dapr-configuration-reader` RoleBinding in workload namespaces.
    configuration_readers: bool,
    /// Namespaces whose RoleBinding is known to exist.
    readers_bound: Mutex<HashSet<String>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, mtls_enabled: bool) -> Self {
        Self {
            client,
            mtls_enabled,
            configuration_readers: false,
            readers_bound: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Also keeps the `dapr-configuration-reader` RoleBinding in every workload namespace.
    pub fn with_configuration_readers(mut self, on: bool) -> Self {
        self.configuration_readers = on;
        self
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        lock(&self.failures)
    }

    fn readers_bound(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        lock(&self.readers_bound)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The Service a workload should have, or why it should have none.
#[derive(Debug, Clone, PartialEq)]
pub enum Desired {
    Service(Box<Service>),
    /// Not annotated, being deleted, or no usable app id (logged, not retried).
    Nothing(String),
}

/// The headless Service for `workload`, with upstream's ports, labels and annotations.
pub fn desired_service<W: Workload>(workload: &W, mtls_enabled: bool) -> Desired {
    let name = workload.name_any();
    if workload.meta().deletion_timestamp.is_some() {
        return Desired::Nothing(format!("{name} is being deleted"));
    }
    let empty = BTreeMap::new();
    let annotations = workload.template_annotations().unwrap_or(&empty);
    if !annotations
        .get(annotation::ENABLED)
        .is_some_and(|v| is_truthy(v))
    {
        return Desired::Nothing(format!("{name} does not enable Dapr"));
    }
    let (options, _) = SidecarOptions::from_annotations(annotations);
    let app_id = options.app_id.clone().unwrap_or_default();
    if let Err(rejection) = validate_app_id(&app_id) {
        return Desired::Nothing(format!("{name}: {rejection}"));
    }
    let Some(owner) = owner_reference(workload) else {
        return Desired::Nothing(format!("{name} has no uid yet"));
    };

    let mut service_annotations = BTreeMap::new();
    for pair in options_pairs(annotations.get(annotation::SIDECAR_SVC_ANNOTATIONS)) {
        service_annotations.insert(pair.0, pair.1);
    }
    // The fixed annotations win over the user's extra ones.
    service_annotations.insert(annotation::APP_ID.to_owned(), app_id.clone());
    if options.enable_metrics {
        service_annotations.insert(prometheus::PROBE.to_owned(), "true".to_owned());
        service_annotations.insert(prometheus::SCRAPE.to_owned(), "true".to_owned());
        service_annotations.insert(
            prometheus::PORT.to_owned(),
            options.metrics_port.to_string(),
        );
        service_annotations.insert(prometheus::PATH.to_owned(), "/".to_owned());
    }

    let port = |name: &str, port: i32, target: i32, protocol: &str| ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".to_owned()),
        app_protocol: Some(protocol.to_owned()),
        ..Default::default()
    };
    let as_port = |n: i64| i32::try_from(n).unwrap_or(0);
    let grpc = as_port(options.grpc_port);
    let internal = as_port(options.internal_grpc_port);
    let metrics = as_port(options.metrics_port);
    Desired::Service(Box::new(Service {
        metadata: ObjectMeta {
            name: Some(format!("{app_id}{}", service::NAME_SUFFIX)),
            namespace: workload.namespace(),
            labels: Some(BTreeMap::from([(
                label::ENABLED.to_owned(),
                "true".to_owned(),
            )])),
            annotations: Some(service_annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: workload.selector_labels().cloned(),
            ports: Some(vec![
                port(
                    sidecar::HTTP_PORT_NAME,
                    service::HTTP_PORT,
                    i32::from(sidecar::HTTP_PORT),
                    "http",
                ),
                port(sidecar::GRPC_PORT_NAME, grpc, grpc, "grpc"),
                port(
                    sidecar::INTERNAL_GRPC_PORT_NAME,
                    internal,
                    internal,
                    if mtls_enabled { "tls" } else { "grpc" },
                ),
                port(sidecar::METRICS_PORT_NAME, metrics, metrics, "http"),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// The RoleBinding that lets the service accounts of `namespace` read its Configurations.
pub fn configuration_reader_binding(namespace: &str) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(configuration_reader::NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                label::ENABLED.to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name: configuration_reader::NAME.to_owned(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Group".to_owned(),
            name: configuration_reader::service_accounts_group(namespace),
            namespace: None,
        }]),
    }
}

/// Creates the namespace's `dapr-configuration-reader` RoleBinding unless it exists (a binding
/// a user changed is left as it is).
async fn ensure_configuration_reader(ctx: &Context, namespace: &str) -> Result<(), Error> {
    if !ctx.configuration_readers || ctx.readers_bound().contains(namespace) {
        return Ok(());
    }
    let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), namespace);
    if api
        .get_opt(configuration_reader::NAME)
        .await
        .map_err(Error::Kube)?
        .is_none()
    {
        let params = PostParams {
            field_manager: Some(service::FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        match api
            .create(&params, &configuration_reader_binding(namespace))
            .await
        {
            Ok(_) => info!(%namespace, "RoleBinding {} created", configuration_reader::NAME),
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(e) => return Err(Error::Kube(e)),
        }
    }
    ctx.readers_bound().insert(namespace.to_owned());
    Ok(())
}

fn owner_reference<W: Workload>(workload: &W) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..workload.controller_owner_ref(&())?
    })
}

/// `k=v,k2=v2` pairs; entries without `=` are ignored.
fn options_pairs(value: Option<&String>) -> Vec<(String, String)> {
    value
        .map(|v| {
            v.split(',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    let k = k.trim();
                    (!k.is_empty()).then(|| (k.to_owned(), v.trim().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True when `existing` differs from `desired` in anything the reconciler owns.
fn needs_update(existing: &Service, desired: &Service) -> bool {
    let (e, d) = (&existing.metadata, &desired.metadata);
    let spec = |s: &Service| {
        s.spec
            .as_ref()
            .map(|s| (s.cluster_ip.clone(), s.selector.clone(), s.ports.clone()))
    };
    e.labels != d.labels
        || e.annotations != d.annotations
        || e.owner_references != d.owner_references
        || spec(existing) != spec(desired)
}

/// Creates or updates the workload's Service.
pub async fn reconcile<W: Workload>(workload: Arc<W>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = object_key(workload.as_ref());
    let mut desired = match desired_service(workload.as_ref(), ctx.mtls_enabled) {
        Desired::Service(service) => *service,
        Desired::Nothing(reason) => {
            debug!(workload = %key, %reason, "no Service to reconcile");
            ctx.failures().remove(&key);
            return Ok(Action::await_change());
        }
    };
    let namespace = workload.namespace().unwrap_or_default();
    let name = desired.name_any();
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PostParams {
        field_manager: Some(service::FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    match api.get_opt(&name).await.map_err(Error::Kube)? {
        None => {
            api.create(&params, &desired).await.map_err(Error::Kube)?;
            info!(service = %name, %namespace, workload = %key, "Service created");
        }
        Some(existing) if needs_update(&existing, &desired) => {
            desired.metadata.resource_version = existing.metadata.resource_version.clone();
            if let (Some(d), Some(e)) = (desired.spec.as_mut(), existing.spec.as_ref()) {
                // Fields the API server filled in and refuses to see cleared.
                d.cluster_ips = e.cluster_ips.clone();
                d.ip_families = e.ip_families.clone();
                d.ip_family_policy = e.ip_family_policy.clone();
            }
            api.replace(&name, &params, &desired)
                .await
                .map_err(Error::Kube)?;
            info!(service = %name, %namespace, workload = %key, "Service updated");
        }
        Some(_) => debug!(service = %name, %namespace, "Service up to date"),
    }
    ensure_configuration_reader(&ctx, &namespace).await?;
    ctx.failures().remove(&key);
    Ok(Action::await_change())
}

/// Requeue with exponential backoff per workload: 1 s doubling to 5 min.
pub fn error_policy<W: Workload>(workload: Arc<W>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = object_key(workload.as_ref());
    let failures = {
        let mut all = ctx.failures();
        let n = all.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(failures);
    warn!(workload = %key, %error, retry_in = ?delay, "Service reconcile failed");
    Action::requeue(delay)
}

/// Delay before retry number `failures` (1-based).
pub fn backoff(failures: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(300);
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX)
}

fn object_key<W: Workload>(workload: &W) -> String {
    format!(
        "{}/{}/{}",
        W::kind(&()),
        workload.namespace().unwrap_or_default(),
        workload.name_any()
    )
}

/// Runs the Deployment and StatefulSet controllers until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let services = || Api::<Service>::all(ctx.client.clone());
    let owned = watcher::Config::default().labels(&format!("{}=true", label::ENABLED));
    let deployments = Controller::new(
        Api::<Deployment>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .owns(services(), owned.clone())
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(reconcile, error_policy, ctx.clone())
    .for_each(|result| async move {
        if let Err(e) = result {
            debug!(error = %e, "Deployment controller event");
        }
    });
    let statefulsets = Controller::new(
        Api::<StatefulSet>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .owns(services(), owned)
    .graceful_shutdown_on(shutdown.cancelled_owned())
    .run(reconcile, error_policy, ctx.clone())
    .for_each(|result| async move {
        if let Err(e) = result {
            debug!(error = %e, "StatefulSet controller event");
        }
    });
    info!("Service reconciler started for Deployments and StatefulSets");
    futures::join!(deployments, statefulsets);
}
