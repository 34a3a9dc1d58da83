//! Dapr's wire contract: our own `.proto` files with upstream's packages, names and field
//! numbers, compiled into tonic clients and servers.
//!
//! [`descriptor`] exposes the compiled descriptor set and the comparison used by the
//! compatibility test against the official SDKs' descriptors.

pub mod descriptor;

/// `dapr.proto.common.v1`
pub mod common {
    pub mod v1 {
        tonic::include_proto!("dapr.proto.common.v1");
    }
}

/// `dapr.proto.runtime.v1`: the app-facing API and the app callback services.
pub mod runtime {
    pub mod v1 {
        tonic::include_proto!("dapr.proto.runtime.v1");
    }
}

/// `dapr.proto.internals.v1`: the sidecar-to-sidecar API.
pub mod internals {
    pub mod v1 {
        tonic::include_proto!("dapr.proto.internals.v1");
    }
}

/// `dapr.proto.sentry.v1`: the certificate authority's API.
pub mod sentry {
    pub mod v1 {
        tonic::include_proto!("dapr.proto.sentry.v1");
    }
}

/// `dapr.proto.operator.v1`: the operator's API, which serves each sidecar its Kubernetes
/// resources (Configuration, Components, ...) and their changes.
pub mod operator {
    pub mod v1 {
        tonic::include_proto!("dapr.proto.operator.v1");
    }
}
