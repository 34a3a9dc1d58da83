//! The volumes `daprd` and the app containers need (annotation mounts, the Unix socket
//! folder, the sentry token), and the ops that add volumes and mounts without clashing with the
//! pod's own.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PodSpec, ProjectedVolumeSource, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};

use super::{PatchOp, Settings, to_json};
use crate::names::{annotation, volume};
use crate::options::SidecarOptions;

/// Volumes and mounts of the sidecar's own: what `daprd` mounts, what the app containers mount,
/// and the volumes to add for them.
pub(super) struct SidecarVolumes {
    pub(super) daprd: Vec<VolumeMount>,
    pub(super) app: Vec<VolumeMount>,
    pub(super) new: Vec<Volume>,
}

impl SidecarVolumes {
    /// Annotation mounts of the pod's volumes, the Unix socket folder, the sentry token.
    pub(super) fn plan(
        options: &SidecarOptions,
        settings: &Settings,
        shape: &PodShape,
        warnings: &mut Vec<String>,
    ) -> Self {
        let mut daprd_mounts = annotation_mounts(options, shape, warnings);
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
        SidecarVolumes {
            daprd: daprd_mounts,
            app: app_mounts,
            new: new_volumes,
        }
    }
}

/// Which volumes the pod has, updated as ops add more, so each add uses the right path.
pub(super) struct PodShape {
    has_volume_list: bool,
    volume_names: BTreeSet<String>,
}

impl PodShape {
    pub(super) fn of(spec: &PodSpec) -> Self {
        let volumes = spec.volumes.as_deref().unwrap_or_default();
        Self {
            has_volume_list: !volumes.is_empty(),
            volume_names: volumes.iter().map(|v| v.name.clone()).collect(),
        }
    }

    /// One `add /spec/volumes [..]` while the pod has none, else one `add .../-` per volume;
    /// volumes whose name exists are skipped.
    pub(super) fn add_volumes(&mut self, volumes: Vec<Volume>, ops: &mut Vec<PatchOp>) {
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

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
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

pub(super) fn mount_ops(
    index: usize,
    container: &Container,
    add: &[VolumeMount],
    ops: &mut Vec<PatchOp>,
) {
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
