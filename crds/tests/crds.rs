//! The generated CustomResourceDefinitions: committed files up to date, schemas structural (as
//! the API server requires), and sample resources accepted while broken ones are rejected.

use std::path::Path;

use serde_json::Value;

fn crds() -> Vec<Value> {
    dapr_crds::crd::all()
        .expect("definitions build")
        .iter()
        .map(|crd| serde_json::to_value(crd).expect("serialises"))
        .collect()
}

#[test]
fn the_committed_crd_files_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stale = Vec::new();
    for crd in dapr_crds::crd::all().expect("definitions build") {
        let text = dapr_crds::crd::to_yaml(&crd).expect("yaml");
        for dir in ["crds", "charts/dapr/crds"] {
            let path = root.join(dir).join(dapr_crds::crd::file_name(&crd));
            if std::fs::read_to_string(&path).unwrap_or_default() != text {
                stale.push(format!("{dir}/{}", dapr_crds::crd::file_name(&crd)));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "out of date: {stale:?}; run `cargo run -p dapr-crds --bin crdgen` to regenerate"
    );
}

/// The rules of a structural schema (Kubernetes "Specifying a structural schema") that a
/// generator can break: every node has a type unless it preserves unknown fields or is
/// int-or-string; no `$ref`; `properties` and `additionalProperties` never together; the
/// junctors (`anyOf`, `allOf`, `oneOf`, `not`) never carry types or defaults.
fn structural_violations(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(object) = node.as_object() else {
        out.push(format!("{path}: not an object"));
        return;
    };
    if object.contains_key("$ref") || object.contains_key("definitions") {
        out.push(format!("{path}: $ref/definitions are not allowed"));
    }
    let free = object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !object.contains_key("type") && !free {
        out.push(format!("{path}: no type"));
    }
    if object.contains_key("properties") && object.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    for junctor in ["anyOf", "allOf", "oneOf"] {
        for (i, branch) in object
            .get(junctor)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for key in ["type", "default", "nullable", "description"] {
                if branch.get(key).is_some() {
                    out.push(format!("{path}.{junctor}[{i}]: {key} inside a junctor"));
                }
            }
        }
    }
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            structural_violations(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = object.get("items") {
        structural_violations(items, &format!("{path}[]"), out);
    }
    if let Some(extra) = object.get("additionalProperties").filter(|v| v.is_object()) {
        structural_violations(extra, &format!("{path}{{}}"), out);
    }
}

#[test]
fn every_version_of_every_crd_has_a_structural_schema() {
    let mut violations = Vec::new();
    for crd in crds() {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for version in crd["spec"]["versions"].as_array().expect("versions") {
            let schema = &version["schema"]["openAPIV3Schema"];
            let path = format!("{name}/{}", version["name"].as_str().unwrap_or_default());
            structural_violations(schema, &path, &mut violations);
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn subscription_stores_v2alpha1_and_still_serves_v1alpha1() {
    let crd = crds()
        .into_iter()
        .find(|c| c["metadata"]["name"] == "subscriptions.dapr.io")
        .expect("subscriptions");
    let versions: Vec<(String, bool, bool)> = crd["spec"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or_default().to_owned(),
                v["served"] == Value::Bool(true),
                v["storage"] == Value::Bool(true),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            ("v1alpha1".to_owned(), true, false),
            ("v2alpha1".to_owned(), true, true)
        ]
    );
}

/// The schema a resource of `kind` at `version` is validated against.
fn schema_for(kind: &str, version: &str) -> Value {
    for crd in crds() {
        if crd["spec"]["names"]["kind"] != kind {
            continue;
        }
        for v in crd["spec"]["versions"].as_array().expect("versions") {
            if v["name"] == version {
                return v["schema"]["openAPIV3Schema"].clone();
            }
        }
    }
    panic!("no schema for {kind} {version}");
}

fn validate(doc: &str) -> Result<(), String> {
    let value: Value = yaml_serde::from_str(doc).map_err(|e| e.to_string())?;
    let kind = value["kind"].as_str().unwrap_or_default();
    let version = value["apiVersion"]
        .as_str()
        .and_then(|v| v.strip_prefix("dapr.io/"))
        .unwrap_or_default();
    let schema = schema_for(kind, version);
    let validator = jsonschema::validator_for(&schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

const GOOD: &[&str] = &[
    r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec:
  type: state.redis
  version: v1
  ignoreErrors: false
  initTimeout: 5s
  metadata:
  - name: redisHost
    value: redis:6379
  - name: maxRetries
    value: 3
  - name: redisPassword
    secretKeyRef: {name: redis, key: password}
auth: {secretStore: kubernetes}
scopes: [orders]
"#,
    r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: appconfig}
spec:
  mtls:
    enabled: true
    workloadCertTTL: 24h
    allowedClockSkew: 15m
    controlPlaneTrustDomain: cluster.local
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
    - appId: checkout
      defaultAction: allow
      trustDomain: public
      namespace: default
      operations:
      - {name: /orders/*, httpVerb: [GET, POST], action: allow}
  nameResolution:
    component: kubernetes
    configuration: {clusterDomain: example.local}
  tracing: {samplingRate: "1", zipkin: {endpointAddress: "http://zipkin:9411/api/v2/spans"}}
  features:
  - {name: SomeFeature, enabled: true}
"#,
    r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: myresiliency}
spec:
  policies:
    timeouts: {general: 5s}
    retries:
      retryForever: {policy: constant, duration: 5s, maxRetries: -1}
      important: {policy: exponential, maxInterval: 15s, maxRetries: 10, matching: {httpStatusCodes: "500-599", gRPCStatusCodes: "14"}}
    circuitBreakers:
      simpleCB: {maxRequests: 1, timeout: 30s, trip: consecutiveFailures >= 5}
  targets:
    apps:
      orders: {timeout: general, retry: important, circuitBreaker: simpleCB}
    components:
      statestore:
        outbound: {retry: retryForever}
scopes: [checkout]
"#,
    r#"
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: orders}
spec:
  pubsubname: pubsub
  topic: orders
  routes:
    rules:
    - {match: event.type == "order", path: /orders}
    default: /other
  deadLetterTopic: poison
  bulkSubscribe: {enabled: true, maxMessagesCount: 100}
scopes: [orders]
"#,
    r#"
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: legacy}
spec:
  pubsubname: pubsub
  topic: orders
  route: /orders
"#,
    r#"
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata: {name: github}
spec:
  baseUrl: https://api.github.com
  headers:
  - {name: Accept, value: application/json}
  - name: Authorization
    secretKeyRef: {name: gh, key: token}
  clientTLS:
    rootCA: {value: "-----BEGIN CERTIFICATE-----"}
"#,
];

const BROKEN: &[(&str, &str)] = &[
    (
        "a component without a type",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: x}\nspec: {version: v1}\n",
    ),
    (
        "a component with an empty type",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: x}\nspec: {type: '', version: v1}\n",
    ),
    (
        "scopes that are not a list",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: x}\nspec: {type: state.redis, version: v1}\nscopes: orders\n",
    ),
    (
        "a feature whose enabled is not a boolean",
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: x}\nspec:\n  features:\n  - {name: f, enabled: yes-please}\n",
    ),
    (
        "an access policy without an app id",
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: x}\nspec:\n  accessControl:\n    policies:\n    - {namespace: default}\n",
    ),
    (
        "a retry policy that does not exist",
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: x}\nspec:\n  policies:\n    retries:\n      r: {policy: linear}\n",
    ),
    (
        "a v2alpha1 subscription without routes",
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: x}\nspec: {pubsubname: p, topic: t}\n",
    ),
    (
        "an HTTP endpoint without a base URL",
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: x}\nspec: {headers: []}\n",
    ),
];

#[test]
fn sample_resources_validate_against_the_crd_schemas() {
    for doc in GOOD {
        validate(doc).unwrap_or_else(|e| panic!("rejected: {e}\n{doc}"));
    }
}

#[test]
fn broken_resources_are_rejected_by_the_crd_schemas() {
    for (what, doc) in BROKEN {
        assert!(validate(doc).is_err(), "{what} was accepted:\n{doc}");
    }
}

#[test]
fn sample_resources_load_into_the_rust_types() {
    use dapr_crds::subscription::{v1alpha1, v2alpha1};
    assert!(dapr_crds::Component::from_yaml(GOOD[0]).is_ok());
    let config = dapr_crds::Configuration::from_yaml(GOOD[1]).expect("configuration");
    assert_eq!(config.spec.features[0].name, "SomeFeature");
    let resiliency = dapr_crds::Resiliency::from_yaml(GOOD[2]).expect("resiliency");
    assert_eq!(
        resiliency.spec.spec.policies.retries["important"].max_retries,
        Some(10)
    );
    let sub = v2alpha1::Subscription::from_yaml(GOOD[3]).expect("v2alpha1");
    assert_eq!(sub.spec.spec.routes.rules[0].path, "/orders");
    let legacy = v1alpha1::Subscription::from_yaml(GOOD[4]).expect("v1alpha1");
    assert_eq!(legacy.spec.spec.route, "/orders");
    assert!(dapr_crds::HttpEndpoint::from_yaml(GOOD[5]).is_ok());
}
