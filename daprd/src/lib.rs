//! The Dapr sidecar. The service invocation path lands with its issue.
