//! The compiled descriptor set of our `.proto` files, and the wire-drift check that compares it
//! with upstream's descriptors.
//!
//! The rule: every message, enum and method we declare must exist upstream with the same full
//! name, and every field we declare must have upstream's number, name, type and label. Upstream
//! may have more fields and methods than we serve; that is not drift.

use std::collections::BTreeMap;
use std::fmt;

use prost::Message;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto,
};

/// The encoded `FileDescriptorSet` of every `.proto` file in this crate (for gRPC reflection and
/// the compatibility test).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Packages whose definitions we own and therefore check.
const CHECKED_PACKAGE_PREFIX: &str = "dapr.proto.";

/// Why a descriptor set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("descriptor set is not valid protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Decodes [`FILE_DESCRIPTOR_SET`].
pub fn ours() -> Result<FileDescriptorSet, Error> {
    Ok(FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)?)
}

/// One difference between our definitions and upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// Full name of the message, enum, field or method, e.g. `.dapr.proto.common.v1.InvokeRequest.method`.
    pub item: String,
    pub problem: String,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.item, self.problem)
    }
}

/// Every definition of a descriptor set, by full name (`.pkg.Outer.Inner`).
#[derive(Default)]
struct Index<'a> {
    messages: BTreeMap<String, &'a DescriptorProto>,
    enums: BTreeMap<String, &'a EnumDescriptorProto>,
    services: BTreeMap<String, &'a ServiceDescriptorProto>,
}

impl<'a> Index<'a> {
    fn of(set: &'a FileDescriptorSet) -> Self {
        let mut index = Index::default();
        for file in &set.file {
            let scope = format!(".{}", file.package());
            for message in &file.message_type {
                index.add_message(&scope, message);
            }
            for en in &file.enum_type {
                index.enums.insert(format!("{scope}.{}", en.name()), en);
            }
            for service in &file.service {
                index
                    .services
                    .insert(format!("{scope}.{}", service.name()), service);
            }
        }
        index
    }

    fn add_message(&mut self, scope: &str, message: &'a DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested);
        }
        for en in &message.enum_type {
            self.enums.insert(format!("{name}.{}", en.name()), en);
        }
        self.messages.insert(name, message);
    }
}

fn checked(name: &str) -> bool {
    name.trim_start_matches('.')
        .starts_with(CHECKED_PACKAGE_PREFIX)
}

/// Lists every way `ours` differs on the wire from `upstream` (empty when compatible).
pub fn compare(ours: &FileDescriptorSet, upstream: &FileDescriptorSet) -> Vec<Drift> {
    let ours = Index::of(ours);
    let upstream = Index::of(upstream);
    let mut drift = Vec::new();
    let mut push = |item: &str, problem: String| {
        drift.push(Drift {
            item: item.to_owned(),
            problem,
        })
    };

    for (name, message) in ours.messages.iter().filter(|(n, _)| checked(n)) {
        let Some(theirs) = upstream.messages.get(name) else {
            push(name, "message does not exist upstream".into());
            continue;
        };
        for field in &message.field {
            let item = format!("{name}.{}", field.name());
            match theirs.field.iter().find(|f| f.number() == field.number()) {
                None => push(
                    &item,
                    format!("upstream has no field number {}", field.number()),
                ),
                Some(up) => {
                    for problem in field_differences(message, field, theirs, up) {
                        push(&item, problem);
                    }
                }
            }
        }
    }

    for (name, en) in ours.enums.iter().filter(|(n, _)| checked(n)) {
        let Some(theirs) = upstream.enums.get(name) else {
            push(name, "enum does not exist upstream".into());
            continue;
        };
        for value in &en.value {
            let item = format!("{name}.{}", value.name());
            match theirs.value.iter().find(|v| v.name() == value.name()) {
                None => push(&item, "upstream has no such enum value".into()),
                Some(up) if up.number() != value.number() => push(
                    &item,
                    format!("number {} but upstream {}", value.number(), up.number()),
                ),
                Some(_) => {}
            }
        }
    }

    for (name, service) in ours.services.iter().filter(|(n, _)| checked(n)) {
        let Some(theirs) = upstream.services.get(name) else {
            push(name, "service does not exist upstream".into());
            continue;
        };
        for method in &service.method {
            let item = format!("{name}/{}", method.name());
            let Some(up) = theirs.method.iter().find(|m| m.name() == method.name()) else {
                push(&item, "upstream has no such method".into());
                continue;
            };
            let ours_sig = (
                method.input_type(),
                method.output_type(),
                method.client_streaming(),
                method.server_streaming(),
            );
            let up_sig = (
                up.input_type(),
                up.output_type(),
                up.client_streaming(),
                up.server_streaming(),
            );
            if ours_sig != up_sig {
                push(
                    &item,
                    format!(
                        "signature {ours_sig:?} but upstream {up_sig:?} (input, output, client streaming, server streaming)"
                    ),
                );
            }
        }
    }
    drift
}

/// Differences between two fields with the same number.
fn field_differences(
    ours_msg: &DescriptorProto,
    ours: &FieldDescriptorProto,
    up_msg: &DescriptorProto,
    up: &FieldDescriptorProto,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |what: &str, a: String, b: String| {
        if a != b {
            problems.push(format!("{what} {a} but upstream {b}"));
        }
    };
    check("name", ours.name().into(), up.name().into());
    check(
        "type",
        format!("{:?}", ours.r#type()),
        format!("{:?}", up.r#type()),
    );
    check("type name", ours.type_name().into(), up.type_name().into());
    check(
        "label",
        format!("{:?}", ours.label()),
        format!("{:?}", up.label()),
    );
    check(
        "proto3 optional",
        ours.proto3_optional().to_string(),
        up.proto3_optional().to_string(),
    );
    // Descriptors embedded by some SDKs carry only explicit JSON names.
    if up.json_name.is_some() {
        check("json name", ours.json_name().into(), up.json_name().into());
    }
    // A field inside a real oneof must be in the oneof of the same name (synthetic oneofs of
    // proto3 `optional` are covered by the check above).
    if !ours.proto3_optional() {
        check("oneof", oneof_name(ours_msg, ours), oneof_name(up_msg, up));
    }
    problems
}

fn oneof_name(message: &DescriptorProto, field: &FieldDescriptorProto) -> String {
    field
        .oneof_index
        .and_then(|i| usize::try_from(i).ok())
        .and_then(|i| message.oneof_decl.get(i))
        .map(|o| o.name().to_owned())
        .unwrap_or_else(|| "(none)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_mut<'a>(
        set: &'a mut FileDescriptorSet,
        message: &str,
        field: &str,
    ) -> &'a mut FieldDescriptorProto {
        set.file
            .iter_mut()
            .flat_map(|f| f.message_type.iter_mut())
            .find(|m| m.name() == message)
            .and_then(|m| m.field.iter_mut().find(|f| f.name() == field))
            .expect("fixture field exists")
    }

    #[test]
    fn our_descriptor_set_decodes_and_covers_every_package() {
        let set = ours().expect("decodes");
        let packages: Vec<_> = set.file.iter().map(|f| f.package().to_owned()).collect();
        for package in [
            "dapr.proto.common.v1",
            "dapr.proto.runtime.v1",
            "dapr.proto.internals.v1",
            "dapr.proto.sentry.v1",
            "dapr.proto.operator.v1",
        ] {
            assert!(packages.iter().any(|p| p == package), "missing {package}");
        }
    }

    #[test]
    fn a_set_compared_with_itself_has_no_drift() {
        let set = ours().expect("decodes");
        assert_eq!(compare(&set, &set), vec![]);
    }

    #[test]
    fn a_changed_field_number_is_drift() {
        let upstream = ours().expect("decodes");
        let mut altered = upstream.clone();
        field_mut(&mut altered, "InvokeRequest", "content_type").number = Some(7);
        let drift = compare(&altered, &upstream);
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert_eq!(
            drift[0].item,
            ".dapr.proto.common.v1.InvokeRequest.content_type"
        );
        assert!(drift[0].problem.contains("no field number 7"));
    }

    #[test]
    fn a_changed_field_type_or_label_is_drift() {
        let upstream = ours().expect("decodes");
        let mut altered = upstream.clone();
        let seq = field_mut(&mut altered, "StreamPayload", "seq");
        seq.set_type(prost_types::field_descriptor_proto::Type::Uint32);
        let values = field_mut(&mut altered, "ListStringValue", "values");
        values.set_label(prost_types::field_descriptor_proto::Label::Optional);
        let drift: Vec<String> = compare(&altered, &upstream)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(drift.len(), 2, "{drift:?}");
        assert!(
            drift
                .iter()
                .any(|d| d.contains("StreamPayload.seq: type Uint32 but upstream Uint64"))
        );
        assert!(
            drift
                .iter()
                .any(|d| d.contains("ListStringValue.values: label Optional"))
        );
    }

    #[test]
    fn a_renamed_field_and_a_missing_message_are_drift() {
        let upstream = ours().expect("decodes");
        let mut altered = upstream.clone();
        field_mut(&mut altered, "SignCertificateRequest", "namespace").name = Some("ns".into());
        let common = altered
            .file
            .iter_mut()
            .find(|f| f.package() == "dapr.proto.common.v1")
            .expect("common package exists");
        let mut extra = common.message_type[0].clone();
        extra.name = Some("NotUpstream".into());
        common.message_type.push(extra);
        let drift: Vec<String> = compare(&altered, &upstream)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert!(
            drift
                .iter()
                .any(|d| d.contains("SignCertificateRequest.ns: name ns but upstream namespace")),
            "{drift:?}"
        );
        assert!(
            drift
                .iter()
                .any(|d| d.contains("NotUpstream: message does not exist upstream")),
            "{drift:?}"
        );
    }

    #[test]
    fn a_changed_method_signature_is_drift() {
        let upstream = ours().expect("decodes");
        let mut altered = upstream.clone();
        let method = altered
            .file
            .iter_mut()
            .flat_map(|f| f.service.iter_mut())
            .flat_map(|s| s.method.iter_mut())
            .find(|m| m.name() == "CallLocal")
            .expect("CallLocal exists");
        method.server_streaming = Some(true);
        let drift = compare(&altered, &upstream);
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert_eq!(
            drift[0].item,
            ".dapr.proto.internals.v1.ServiceInvocation/CallLocal"
        );
    }

    #[test]
    fn extra_upstream_fields_are_not_drift() {
        let ours_set = ours().expect("decodes");
        let mut upstream = ours_set.clone();
        let mut extra = field_mut(&mut upstream, "StreamPayload", "seq").clone();
        extra.name = Some("future".into());
        extra.number = Some(99);
        upstream
            .file
            .iter_mut()
            .flat_map(|f| f.message_type.iter_mut())
            .find(|m| m.name() == "StreamPayload")
            .expect("exists")
            .field
            .push(extra);
        assert_eq!(compare(&ours_set, &upstream), vec![]);
    }
}
