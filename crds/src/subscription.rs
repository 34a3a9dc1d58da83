//! `Subscription`: declarative pub/sub subscriptions. v2alpha1 (routes with rules) is stored;
//! v1alpha1 (a single route) is still served, as upstream.

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::free_object;

pub mod v2alpha1 {
    use super::*;

    #[derive(
        CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema,
    )]
    #[kube(
        group = "dapr.io",
        version = "v2alpha1",
        kind = "Subscription",
        plural = "subscriptions",
        namespaced,
        no_spec,
        crates(kube_core = "::kube_core", k8s_openapi = "::k8s_openapi"),
        doc = "Dapr Subscription: a topic of a pub/sub component routed to app paths"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct SubscriptionFields {
        pub spec: SubscriptionSpec,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub scopes: Vec<String>,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct SubscriptionSpec {
        #[schemars(length(min = 1))]
        pub pubsubname: String,
        #[schemars(length(min = 1))]
        pub topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(schema_with = "free_object")]
        pub metadata: Option<serde_json::Value>,
        pub routes: Routes,
        /// v1alpha1's single route. There is no conversion webhook (upstream's lives in its
        /// operator), so an object created at v1alpha1 is stored as v2alpha1 unchanged; keeping
        /// the field in this schema stops the API server from pruning it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub route: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub dead_letter_topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub bulk_subscribe: Option<super::BulkSubscribe>,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct Routes {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub rules: Vec<Rule>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub default: Option<String>,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct Rule {
        /// A CEL expression over the event.
        #[serde(rename = "match")]
        pub match_: String,
        pub path: String,
    }

    impl Subscription {
        pub fn from_yaml(text: &str) -> Result<Self, crate::Error> {
            crate::from_yaml(text, "Subscription")
        }
    }
}

pub mod v1alpha1 {
    use super::*;

    #[derive(
        CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema,
    )]
    #[kube(
        group = "dapr.io",
        version = "v1alpha1",
        kind = "Subscription",
        plural = "subscriptions",
        namespaced,
        no_spec,
        crates(kube_core = "::kube_core", k8s_openapi = "::k8s_openapi"),
        doc = "Dapr Subscription (v1alpha1): a topic of a pub/sub component routed to one app path"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct SubscriptionFields {
        pub spec: SubscriptionSpec,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub scopes: Vec<String>,
    }

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct SubscriptionSpec {
        #[schemars(length(min = 1))]
        pub pubsubname: String,
        #[schemars(length(min = 1))]
        pub topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(schema_with = "free_object")]
        pub metadata: Option<serde_json::Value>,
        pub route: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub dead_letter_topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub bulk_subscribe: Option<super::BulkSubscribe>,
    }

    impl Subscription {
        pub fn from_yaml(text: &str) -> Result<Self, crate::Error> {
            crate::from_yaml(text, "Subscription")
        }
    }
}

pub use v2alpha1::Subscription;

/// Shared by both versions.
pub mod bulk {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct BulkSubscribe {
        pub enabled: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_messages_count: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_await_duration_ms: Option<i32>,
    }
}

pub use bulk::BulkSubscribe;
