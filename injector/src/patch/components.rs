//! Pluggable components: the pod's containers that are components (named by annotation), the
//! containers Components ask to be injected, and the shared socket folder they and `daprd` mount.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, PodSpec, Volume, VolumeMount};

use super::env::{env_ops, literal_env};
use super::volumes::{PodShape, mount, mount_ops};
use super::{Component, Facts, PatchOp, Settings, to_json};
use crate::names::{annotation, env, volume};
use crate::options::SidecarOptions;

/// The pod's containers with their index: the app's, and those named as pluggable components.
pub(super) struct PodContainers<'a> {
    pub(super) app: Vec<(usize, &'a Container)>,
    pub(super) components: Vec<(usize, &'a Container)>,
}

impl<'a> PodContainers<'a> {
    pub(super) fn of(spec: &'a PodSpec, options: &SidecarOptions) -> Self {
        let component_names: BTreeSet<&str> = options
            .pluggable_components
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        let (app, components) = spec
            .containers
            .iter()
            .enumerate()
            .partition(|(_, c)| !component_names.contains(c.name.as_str()));
        PodContainers { app, components }
    }
}

/// The containers to inject for Components, and the sockets folder mount when any component
/// container runs in the pod.
pub(super) struct Components {
    injected: Vec<Container>,
    sockets_mount: Option<VolumeMount>,
}

impl Components {
    pub(super) fn plan(
        app_id: &str,
        options: &SidecarOptions,
        settings: &Settings,
        facts: &Facts,
        containers: &PodContainers<'_>,
        warnings: &mut Vec<String>,
    ) -> Self {
        let injected = if options.inject_pluggable_components {
            injectable_containers(app_id, &facts.components, warnings)
        } else {
            Vec::new()
        };
        let uses_components = !containers.components.is_empty() || !injected.is_empty();
        let sockets_mount = uses_components.then(|| {
            let folder = if options.pluggable_components_sockets_folder.is_empty() {
                settings.components_sockets_folder.clone()
            } else {
                options.pluggable_components_sockets_folder.clone()
            };
            mount(volume::COMPONENTS_SOCKETS, &folder, false)
        });
        Components {
            injected,
            sockets_mount,
        }
    }

    /// The sockets folder as `daprd` mounts it, if any component needs it.
    pub(super) fn sockets_mount(&self) -> Option<&VolumeMount> {
        self.sockets_mount.as_ref()
    }

    /// The sockets volume, the folder's mount and env in the pod's component containers, and
    /// the injected containers (with scratch volumes for their own mounts).
    pub(super) fn add(
        self,
        shape: &mut PodShape,
        component_containers: &[(usize, &Container)],
        ops: &mut Vec<PatchOp>,
    ) {
        let Some(sockets_mount) = &self.sockets_mount else {
            return;
        };
        shape.add_volumes(
            vec![Volume {
                name: volume::COMPONENTS_SOCKETS.to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }],
            ops,
        );
        let sockets_env = vec![literal_env(
            env::COMPONENT_SOCKETS_FOLDER,
            &sockets_mount.mount_path,
        )];
        for (index, container) in component_containers {
            env_ops(*index, container, &sockets_env, ops);
            mount_ops(*index, container, std::slice::from_ref(sockets_mount), ops);
        }
        for mut container in self.injected {
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
            shape.add_volumes(scratch, ops);
            container
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(sockets_mount.clone());
            ops.push(PatchOp::add("/spec/containers/-", to_json(&container)));
        }
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
