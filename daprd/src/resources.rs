//! The Dapr resources this sidecar applies: `--resources-path` directories in standalone mode,
//! the API server in kubernetes mode.
//!
//! Every `*.yaml`/`*.yml` file of each directory is read, one or more YAML documents each, and
//! dispatched by `kind`. Resiliency and HTTPEndpoint objects are kept; other `dapr.io` kinds
//! (Component, Subscription, ...) are named in one start-up warning, since this sidecar does not
//! implement them; documents of other groups are skipped (upstream shares these folders with
//! any YAML). A document that does not parse stops the sidecar with its file and field, where
//! upstream logs it and runs without it (docs/upstream-differences.md).

use std::path::{Path, PathBuf};

use dapr_crds::http_endpoint::HttpEndpointFields;
use dapr_crds::resiliency::ResiliencyFields;
use dapr_crds::{HttpEndpoint, Resiliency};
use serde::Deserialize;

/// Where a resource came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Document `index` (from 1) of a file.
    File { path: PathBuf, index: usize },
    /// The API server, object `namespace/name`.
    ApiServer { namespace: String, name: String },
    /// The operator API, object `namespace/name`.
    Operator { namespace: String, name: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File { path, index: 1 } => write!(f, "{}", path.display()),
            Origin::File { path, index } => write!(f, "{} (document {index})", path.display()),
            Origin::ApiServer { namespace, name } => write!(f, "API server {namespace}/{name}"),
            Origin::Operator { namespace, name } => write!(f, "operator {namespace}/{name}"),
        }
    }
}

/// Why an HTTPEndpoint cannot be used; start-up stops with it
/// (checked by `crate::outbound::endpoint::Endpoints::new`).
#[derive(Debug, thiserror::Error)]
#[error("HTTPEndpoint {name} ({origin}): {field}: {reason}")]
pub struct EndpointError {
    pub name: String,
    pub origin: String,
    pub field: &'static str,
    pub reason: String,
}

/// A resource with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub origin: Origin,
    pub resource: T,
}

/// The resources that apply to this app (scopes already honoured).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub resiliencies: Vec<Loaded<Resiliency>>,
    /// Stored only: nothing invokes them yet.
    pub http_endpoints: Vec<Loaded<HttpEndpoint>>,
    /// `Kind/name (origin)` of each `dapr.io` object this sidecar does not implement.
    pub not_implemented: Vec<String>,
}

impl Resources {
    /// Logs, once, what was found but is not applied.
    pub fn warn_not_implemented(&self) {
        if !self.not_implemented.is_empty() {
            tracing::warn!(
                "resources this sidecar does not implement, not loaded: {}",
                self.not_implemented.join(", ")
            );
        }
    }
}

/// Why the resources could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    #[error("cannot read resources directory {}: {source}", path.display())]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read resource file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: invalid YAML: {source}")]
    Yaml {
        origin: Origin,
        source: yaml_serde::Error,
    },
    #[error("{origin}: {kind} field {field}: {source}")]
    Field {
        origin: Origin,
        kind: &'static str,
        field: String,
        source: serde_json::Error,
    },
    #[error("{origin}: {kind} apiVersion {api_version:?} is not dapr.io/v1alpha1")]
    Version {
        origin: Origin,
        kind: &'static str,
        api_version: String,
    },
    #[error("reading Resiliencies from the API server: {0}")]
    ApiServer(#[source] ListError),
}

/// Why the Resiliencies could not be listed from the API server. Kept apart from the other
/// [`ResourcesError`]s because the sidecar logs these and runs without them, as upstream.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{0}")]
    Client(#[from] crate::apiserver::ApiServerError),
    #[error("no answer within {}s", .0.as_secs())]
    Timeout(std::time::Duration),
    #[error("{status}: {message}")]
    Status {
        status: http::StatusCode,
        message: String,
    },
    #[error("not a list: {0}")]
    NotAList(#[source] serde_json::Error),
}

impl From<crate::apiserver::ApiServerError> for ResourcesError {
    fn from(e: crate::apiserver::ApiServerError) -> Self {
        ResourcesError::ApiServer(e.into())
    }
}

/// Reads every YAML file of `dirs` (sorted by name, directories in the order given) for the
/// app `app_id`. A directory that does not exist is skipped, as upstream.
pub fn load_dirs(dirs: &[PathBuf], app_id: &str) -> Result<Resources, ResourcesError> {
    let mut resources = Resources::default();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!("resources path {} does not exist", dir.display());
                continue;
            }
            Err(source) => {
                return Err(ResourcesError::Directory {
                    path: dir.clone(),
                    source,
                });
            }
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ResourcesError::Directory {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            if is_yaml(&path) && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| ResourcesError::File {
                path: path.clone(),
                source,
            })?;
            parse_file(&text, &path, app_id, &mut resources)?;
        }
    }
    Ok(resources)
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// The `dapr.io` kinds upstream loads from a resources path that this sidecar does not apply.
const NOT_IMPLEMENTED: [&str; 5] = [
    "Component",
    "Subscription",
    "Configuration",
    "MCPServer",
    "WorkflowAccessPolicy",
];

/// Adds the documents of one file's `text` to `resources`.
pub fn parse_file(
    text: &str,
    path: &Path,
    app_id: &str,
    resources: &mut Resources,
) -> Result<(), ResourcesError> {
    for (i, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let origin = Origin::File {
            path: path.to_owned(),
            index: i + 1,
        };
        let value = match serde_json::Value::deserialize(document) {
            Ok(value) => value,
            Err(source) => return Err(ResourcesError::Yaml { origin, source }),
        };
        add(value, origin, app_id, resources)?;
    }
    Ok(())
}

/// Dispatches one document by `kind`.
fn add(
    mut value: serde_json::Value,
    origin: Origin,
    app_id: &str,
    resources: &mut Resources,
) -> Result<(), ResourcesError> {
    let Some(object) = value.as_object_mut() else {
        // An empty document (`---` at the end) or a scalar: nothing to load.
        return Ok(());
    };
    let text = |key: &str| {
        object
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (kind, api_version) = (text("kind"), text("apiVersion"));
    if api_version.split('/').next() != Some(dapr_crds::GROUP) {
        tracing::debug!(%origin, kind, api_version, "not a Dapr resource; skipped");
        return Ok(());
    }
    // Files written for standalone mode often leave `metadata` out.
    object
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}));
    match kind.as_str() {
        "Resiliency" => {
            let r: Resiliency =
                decode::<ResiliencyFields, _>(value, &origin, "Resiliency", &api_version)?;
            if in_scope(&r.spec.scopes, app_id, &origin) {
                resources.resiliencies.push(Loaded {
                    origin,
                    resource: r,
                });
            }
        }
        "HTTPEndpoint" => {
            let e: HttpEndpoint =
                decode::<HttpEndpointFields, _>(value, &origin, "HTTPEndpoint", &api_version)?;
            if in_scope(&e.spec.scopes, app_id, &origin) {
                resources.http_endpoints.push(Loaded {
                    origin,
                    resource: e,
                });
            }
        }
        other => {
            let name = value
                .pointer("/metadata/name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            if !NOT_IMPLEMENTED.contains(&other) {
                tracing::debug!(%origin, kind = other, "unknown Dapr kind");
            }
            resources
                .not_implemented
                .push(format!("{other}/{name} ({origin})"));
        }
    }
    Ok(())
}

/// Decodes `value` as `kind`, naming the field that does not fit. The kube derive flattens the
/// fields into the object, which hides the path of an error: the fields (`F`) are decoded on
/// their own first, for the path.
fn decode<F: serde::de::DeserializeOwned, T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    origin: &Origin,
    kind: &'static str,
    api_version: &str,
) -> Result<T, ResourcesError> {
    if api_version != dapr_crds::API_VERSION {
        return Err(ResourcesError::Version {
            origin: origin.clone(),
            kind,
            api_version: api_version.to_owned(),
        });
    }
    let named = |field: String, source| ResourcesError::Field {
        origin: origin.clone(),
        kind,
        field,
        source,
    };
    if let Err(e) = serde_path_to_error::deserialize::<_, F>(&value) {
        let field = e.path().to_string();
        return Err(named(field, e.into_inner()));
    }
    serde_json::from_value(value).map_err(|e| named("metadata".into(), e))
}

/// Top-level `scopes`: empty applies to every app.
fn in_scope(scopes: &[String], app_id: &str, origin: &Origin) -> bool {
    let applies = scopes.is_empty() || scopes.iter().any(|s| s == app_id);
    if !applies {
        tracing::info!(%origin, "scoped to other apps ({}); not applied", scopes.join(", "));
    }
    applies
}

/// Kubernetes mode: the Resiliencies of `namespace`, read once at start. Upstream asks the
/// operator (`ListResiliency`); here the sidecar lists them itself until the operator API
/// replaces this read. As upstream, a failed read is logged and the sidecar runs without them.
pub async fn list_resiliencies(
    source: &crate::apiserver::Source,
    namespace: &str,
    app_id: &str,
) -> Result<Vec<Loaded<Resiliency>>, ResourcesError> {
    let api = crate::apiserver::ApiServer::from_source(source)?;
    let path = format!("/apis/dapr.io/v1alpha1/namespaces/{namespace}/resiliencies");
    let patience = std::time::Duration::from_secs(10);
    let answer = tokio::time::timeout(patience, api.get(&path))
        .await
        .map_err(|_| ResourcesError::ApiServer(ListError::Timeout(patience)))??;
    if !answer.status.is_success() {
        return Err(ResourcesError::ApiServer(ListError::Status {
            status: answer.status,
            message: answer.message(),
        }));
    }
    from_list(&answer.body, namespace, app_id)
}

/// Kubernetes mode with the operator: the Resiliencies and HTTPEndpoints it serves for
/// `namespace` (`ListResiliency`, `ListHTTPEndpoints`: one JSON object each), those that apply
/// to `app_id`. An object that does not decode stops the sidecar, as one from a file does.
pub fn from_operator<B: AsRef<[u8]>>(
    resiliencies: &[B],
    http_endpoints: &[B],
    namespace: &str,
    app_id: &str,
) -> Result<Resources, ResourcesError> {
    let mut resources = Resources::default();
    for (objects, kind) in [
        (resiliencies, "Resiliency"),
        (http_endpoints, "HTTPEndpoint"),
    ] {
        for object in objects {
            let origin = |name: &str| Origin::Operator {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            };
            let mut value: serde_json::Value =
                serde_json::from_slice(object.as_ref()).map_err(|source| {
                    ResourcesError::Field {
                        origin: origin(""),
                        kind,
                        field: "(the object)".into(),
                        source,
                    }
                })?;
            if let Some(object) = value.as_object_mut() {
                object
                    .entry("apiVersion")
                    .or_insert_with(|| dapr_crds::API_VERSION.into());
                object.entry("kind").or_insert_with(|| kind.into());
            }
            let name = value
                .pointer("/metadata/name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let origin = origin(&name);
            if kind == "Resiliency" {
                let r: Resiliency = decode::<ResiliencyFields, _>(
                    value,
                    &origin,
                    "Resiliency",
                    dapr_crds::API_VERSION,
                )?;
                if in_scope(&r.spec.scopes, app_id, &origin) {
                    resources.resiliencies.push(Loaded {
                        origin,
                        resource: r,
                    });
                }
            } else {
                let e: HttpEndpoint = decode::<HttpEndpointFields, _>(
                    value,
                    &origin,
                    "HTTPEndpoint",
                    dapr_crds::API_VERSION,
                )?;
                if in_scope(&e.spec.scopes, app_id, &origin) {
                    resources.http_endpoints.push(Loaded {
                        origin,
                        resource: e,
                    });
                }
            }
        }
    }
    Ok(resources)
}

/// The Resiliencies of a `ResiliencyList` from the API server that apply to `app_id`.
fn from_list(
    body: &[u8],
    namespace: &str,
    app_id: &str,
) -> Result<Vec<Loaded<Resiliency>>, ResourcesError> {
    #[derive(Deserialize)]
    struct List {
        #[serde(default)]
        items: Vec<serde_json::Value>,
    }
    let list: List = serde_json::from_slice(body)
        .map_err(|e| ResourcesError::ApiServer(ListError::NotAList(e)))?;
    let mut found = Vec::new();
    for mut item in list.items {
        // List items may leave out their type.
        if let Some(object) = item.as_object_mut() {
            object
                .entry("apiVersion")
                .or_insert_with(|| dapr_crds::API_VERSION.into());
            object.entry("kind").or_insert_with(|| "Resiliency".into());
        }
        let name = item
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let origin = Origin::ApiServer {
            namespace: namespace.to_owned(),
            name,
        };
        let r: Resiliency =
            decode::<ResiliencyFields, _>(item, &origin, "Resiliency", dapr_crds::API_VERSION)?;
        if in_scope(&r.spec.scopes, app_id, &origin) {
            found.push(Loaded {
                origin,
                resource: r,
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, app: &str) -> Result<Resources, ResourcesError> {
        let mut r = Resources::default();
        parse_file(text, Path::new("r.yaml"), app, &mut r)?;
        Ok(r)
    }

    const MIXED: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: res}
spec:
  policies:
    timeouts: {short: 1s}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec: {type: state.redis, version: v1}
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: orders}
---
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata: {name: ext}
spec: {baseUrl: "http://example.com"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
---
"#;

    #[test]
    fn documents_dispatch_by_kind() {
        let r = parse(MIXED, "app").unwrap();
        assert_eq!(r.resiliencies.len(), 1);
        assert_eq!(r.http_endpoints.len(), 1);
        assert_eq!(
            r.http_endpoints[0].resource.spec.spec.base_url,
            "http://example.com"
        );
        assert_eq!(
            r.not_implemented,
            [
                "Component/statestore (r.yaml (document 2))",
                "Subscription/orders (r.yaml (document 3))"
            ]
        );
    }

    #[test]
    fn the_operators_objects_are_loaded_by_kind_and_scope() {
        let resiliency = br#"{"metadata":{"name":"r","namespace":"shop"},"spec":{"policies":{}}}"#;
        let elsewhere = br#"{"metadata":{"name":"x"},"scopes":["billing"],"spec":{}}"#;
        let endpoint =
            br#"{"metadata":{"name":"pay"},"spec":{"baseUrl":"http://pay","headers":[]}}"#;
        let r = from_operator(
            &[resiliency.to_vec(), elsewhere.to_vec()],
            &[endpoint.to_vec()],
            "shop",
            "orders",
        )
        .unwrap();
        assert_eq!(r.resiliencies.len(), 1);
        assert_eq!(r.resiliencies[0].origin.to_string(), "operator shop/r");
        assert_eq!(
            r.http_endpoints[0].resource.spec.spec.base_url,
            "http://pay"
        );
        let bad = br#"{"metadata":{"name":"b"},"spec":{"baseUrl":7}}"#;
        let e = from_operator(&[], &[bad.to_vec()], "shop", "orders").unwrap_err();
        assert!(e.to_string().contains("operator shop/b"), "{e}");
    }

    #[test]
    fn scopes_to_other_apps_are_not_applied() {
        let text = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: r}\nscopes: [a, b]\nspec: {}\n";
        assert_eq!(parse(text, "b").unwrap().resiliencies.len(), 1);
        assert!(parse(text, "c").unwrap().resiliencies.is_empty());
    }

    #[test]
    fn a_bad_field_is_named() {
        let text = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: r}\nspec:\n  policies:\n    retries:\n      r1: {maxRetries: many}\n";
        let e = parse(text, "a").unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("spec.policies.retries.r1.maxRetries"),
            "{message}"
        );
        assert!(message.starts_with("r.yaml: Resiliency field"), "{message}");
    }

    #[test]
    fn api_server_lists_are_read_with_scopes() {
        let body = br#"{"apiVersion":"dapr.io/v1alpha1","kind":"ResiliencyList","items":[
            {"metadata":{"name":"mine","namespace":"ns"},"spec":{"policies":{"timeouts":{"t":"1s"}}}},
            {"metadata":{"name":"theirs","namespace":"ns"},"scopes":["other"],"spec":{}}]}"#;
        let found = from_list(body, "ns", "app").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].origin.to_string(), "API server ns/mine");
        assert_eq!(found[0].resource.spec.spec.policies.timeouts["t"], "1s");
        let bad = br#"{"items":[{"metadata":{"name":"x"},"spec":{"policies":{"timeouts":[]}}}]}"#;
        let e = from_list(bad, "ns", "app").unwrap_err().to_string();
        assert!(
            e.contains("API server ns/x: Resiliency field spec.policies.timeouts"),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_version_is_an_error() {
        let text = "apiVersion: dapr.io/v2\nkind: Resiliency\nspec: {}\n";
        assert!(matches!(
            parse(text, "a"),
            Err(ResourcesError::Version { .. })
        ));
    }

    #[test]
    fn directories_load_yaml_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yml"), MIXED).unwrap();
        std::fs::write(dir.path().join("b.txt"), "not: [yaml").unwrap();
        let r = load_dirs(&[dir.path().to_owned(), dir.path().join("missing")], "app").unwrap();
        assert_eq!(r.resiliencies.len(), 1);
        std::fs::write(dir.path().join("c.yaml"), "a: [b").unwrap();
        let e = load_dirs(&[dir.path().to_owned()], "app").unwrap_err();
        assert!(e.to_string().contains("c.yaml"), "{e}");
    }
}
