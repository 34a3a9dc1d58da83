//! Wire compatibility: our descriptors against the official SDKs' descriptors.
//!
//! The upstream descriptors are installed by the test command (`scripts/test.sh`): the Python
//! SDK's embedded descriptors (runtime + common) are dumped to `.cache/upstream/python-sdk.fds`,
//! and the JS SDK's bundled `.proto` files (internals, sentry, operator) are compiled here with
//! protox.

use std::path::{Path, PathBuf};

use prost::Message;
use prost_types::FileDescriptorSet;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `bash scripts/test.sh` (it installs the official SDKs into .cache/)",
        path.display()
    );
    path
}

/// Our descriptor set restricted to the given packages.
fn ours_in(packages: &[&str]) -> FileDescriptorSet {
    let mut set = dapr_proto::descriptor::ours().expect("our descriptors decode");
    set.file.retain(|f| packages.contains(&f.package()));
    assert!(!set.file.is_empty(), "we define none of {packages:?}");
    set
}

fn assert_no_drift(ours: &FileDescriptorSet, upstream: &FileDescriptorSet, source: &str) {
    let drift = dapr_proto::descriptor::compare(ours, upstream);
    let report: Vec<String> = drift.iter().map(|d| format!("  {d}")).collect();
    assert!(
        drift.is_empty(),
        "wire drift against {source}:\n{}",
        report.join("\n")
    );
}

#[test]
fn runtime_and_common_match_the_python_sdk_descriptors() {
    let path = require(workspace_root().join(".cache/upstream/python-sdk.fds"));
    let bytes = std::fs::read(&path).expect("read python descriptors");
    let upstream = FileDescriptorSet::decode(bytes.as_slice()).expect("python descriptors decode");
    let ours = ours_in(&["dapr.proto.common.v1", "dapr.proto.runtime.v1"]);
    assert_no_drift(&ours, &upstream, "the Python SDK (PyPI dapr)");
}

#[test]
fn internals_and_sentry_match_the_js_sdk_protos() {
    let include = require(workspace_root().join(".cache/npm/node_modules/@dapr/dapr/proto"));
    let upstream = protox::compile(
        [
            "dapr/proto/internals/v1/service_invocation.proto",
            "dapr/proto/sentry/v1/sentry.proto",
        ],
        [include],
    )
    .expect("the JS SDK's .proto files compile");
    let ours = ours_in(&["dapr.proto.internals.v1", "dapr.proto.sentry.v1"]);
    assert_no_drift(&ours, &upstream, "the JS SDK (npm @dapr/dapr)");
}

/// The operator API as the JS SDK (3.x) ships it predates upstream's newest RPCs; what it has
/// must match ours field by field, and what we have beyond it must be exactly those newer RPCs
/// (from upstream's dapr/proto/operator/v1/operator.proto at HEAD), their messages and one
/// newer field.
#[test]
fn the_operator_api_matches_the_js_sdk_protos_where_they_overlap() {
    let include = require(workspace_root().join(".cache/npm/node_modules/@dapr/dapr/proto"));
    let upstream = protox::compile(["dapr/proto/operator/v1/operator.proto"], [include])
        .expect("the JS SDK's operator.proto compiles");
    let theirs = upstream
        .file
        .iter()
        .find(|f| f.package() == "dapr.proto.operator.v1")
        .expect("the JS SDK's operator package");
    let their_messages: Vec<&str> = theirs.message_type.iter().map(|m| m.name()).collect();
    let their_methods: Vec<&str> = theirs
        .service
        .iter()
        .flat_map(|s| s.method.iter().map(|m| m.name()))
        .collect();

    let mut ours = ours_in(&["dapr.proto.operator.v1"]);
    let file = &mut ours.file[0];
    let mut newer: Vec<String> = Vec::new();
    file.message_type.retain(|m| {
        let known = their_messages.contains(&m.name());
        if !known {
            newer.push(m.name().to_owned());
        }
        known
    });
    for service in &mut file.service {
        service.method.retain(|m| {
            let known = their_methods.contains(&m.name());
            if !known {
                newer.push(m.name().to_owned());
            }
            known
        });
    }
    // Fields upstream added to messages the SDK already had.
    for message in &mut file.message_type {
        let Some(their_message) = theirs
            .message_type
            .iter()
            .find(|t| t.name() == message.name())
        else {
            continue;
        };
        let name = message.name().to_owned();
        message.field.retain(|f| {
            let known = their_message.field.iter().any(|t| t.number() == f.number());
            if !known {
                newer.push(format!("{name}.{}", f.name()));
            }
            known
        });
    }
    newer.sort();
    assert_eq!(
        newer,
        [
            "ConfigurationUpdate",
            "ConfigurationUpdateEvent",
            "ConfigurationUpdateRequest",
            // The event type of HTTPEndpoint changes (dapr/dapr added it after this SDK).
            "HTTPEndpointUpdateEvent.type",
            "ListMCPServers",
            "ListMCPServersRequest",
            "ListMCPServersResponse",
            "ListWorkflowAccessPolicy",
            "ListWorkflowAccessPolicyRequest",
            "ListWorkflowAccessPolicyResponse",
            "MCPServerUpdate",
            "MCPServerUpdateEvent",
            "MCPServerUpdateRequest",
            "ResiliencyUpdate",
            "ResiliencyUpdateEvent",
            "ResiliencyUpdateRequest",
            "WorkflowAccessPolicyUpdate",
            "WorkflowAccessPolicyUpdateEvent",
            "WorkflowAccessPolicyUpdateRequest",
        ]
    );
    assert_no_drift(&ours, &upstream, "the JS SDK (npm @dapr/dapr)");
}
