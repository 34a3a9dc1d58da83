//! Schema pieces schemars cannot infer: free-form values the API server must keep as they are.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Any JSON value, kept as given (`x-kubernetes-preserve-unknown-fields`).
pub fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// An object with free-form keys and values.
pub fn free_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}
