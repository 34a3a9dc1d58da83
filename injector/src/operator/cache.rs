//! One watch cache of Dapr's resources in every namespace, shared by every connected sidecar:
//! one watch per kind against the API server, however many streams are open (upstream's
//! operator uses one informer per kind the same way, pkg/operator/api/informer/informer.go).
//!
//! Each kind keeps its objects (as JSON, encoded once) and a broadcast channel of changes. A
//! relist after a broken watch is diffed against what was held, so subscribers see the
//! creations, updates and deletions they missed instead of a replay of everything.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How many changes of one kind a stream may fall behind before it is closed (it reconnects
/// and lists again, as upstream daprd does after any stream error).
pub const CHANGE_BUFFER: usize = 256;

/// The kinds the operator API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Configuration,
    Resiliency,
    HttpEndpoint,
    Component,
    Subscription,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Configuration,
        Kind::Resiliency,
        Kind::HttpEndpoint,
        Kind::Component,
        Kind::Subscription,
    ];

    /// The Kubernetes kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Configuration => "Configuration",
            Kind::Resiliency => "Resiliency",
            Kind::HttpEndpoint => "HTTPEndpoint",
            Kind::Component => "Component",
            Kind::Subscription => "Subscription",
        }
    }

    /// Group, version (the one upstream's operator serves) and kind.
    pub fn resource(self) -> ApiResource {
        let version = match self {
            // daprd decodes v2alpha1 (pkg/operator/api/subscriptions.go serves only those).
            Kind::Subscription => "v2alpha1",
            _ => "v1alpha1",
        };
        ApiResource::from_gvk(&GroupVersionKind::gvk(
            crate::names::crd::GROUP,
            version,
            self.name(),
        ))
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `ResourceEventType` of dapr/proto/operator/v1/operator.proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Deleted,
}

/// One object as served: its parsed JSON and its encoding.
#[derive(Debug)]
pub struct Object {
    pub namespace: String,
    pub name: String,
    pub json: Value,
    pub encoded: Bytes,
    resource_version: Option<String>,
}

impl Object {
    /// The object from a watch event; `None` (logged by the caller) when it names no
    /// namespace or name.
    pub fn from_dynamic(object: &DynamicObject) -> Option<Object> {
        let namespace = object.metadata.namespace.clone()?;
        let name = object.metadata.name.clone()?;
        let json = serde_json::to_value(object).ok()?;
        Some(Object::new(namespace, name, json))
    }

    pub fn new(namespace: String, name: String, json: Value) -> Object {
        let encoded = Bytes::from(serde_json::to_vec(&json).unwrap_or_default());
        let resource_version = json["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_owned);
        Object {
            namespace,
            name,
            json,
            encoded,
            resource_version,
        }
    }

    /// Top-level `scopes` (Component, Resiliency, HTTPEndpoint, Subscription): the app ids
    /// the object is for; empty means every app.
    pub fn scopes(&self) -> Vec<&str> {
        self.json["scopes"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// Whether the app `app_id` may see this object.
    pub fn in_scope_of(&self, app_id: &str) -> bool {
        let scopes = self.scopes();
        scopes.is_empty() || scopes.contains(&app_id)
    }
}

/// A change as broadcast to the streams.
#[derive(Debug, Clone)]
pub struct Changed {
    pub change: Change,
    pub object: Arc<Object>,
}

type Key = (String, String);
type Objects = BTreeMap<Key, Arc<Object>>;

/// What one kind holds.
struct Shelf {
    objects: RwLock<Objects>,
    changes: broadcast::Sender<Changed>,
    synced: AtomicBool,
}

/// The shared cache.
pub struct Cache {
    shelves: [Shelf; 5],
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

/// The changes that turn `old` into `new` (a relist), in key order.
pub fn diff(old: &Objects, new: &Objects) -> Vec<Changed> {
    let mut events = Vec::new();
    for (key, object) in new {
        match old.get(key) {
            None => events.push(Changed {
                change: Change::Created,
                object: object.clone(),
            }),
            Some(before) if before.resource_version != object.resource_version => {
                events.push(Changed {
                    change: Change::Updated,
                    object: object.clone(),
                })
            }
            Some(_) => {}
        }
    }
    for (key, object) in old {
        if !new.contains_key(key) {
            events.push(Changed {
                change: Change::Deleted,
                object: object.clone(),
            });
        }
    }
    events
}

impl Cache {
    pub fn new() -> Cache {
        let shelf = || Shelf {
            objects: RwLock::new(BTreeMap::new()),
            changes: broadcast::channel(CHANGE_BUFFER).0,
            synced: AtomicBool::new(false),
        };
        Cache {
            shelves: [shelf(), shelf(), shelf(), shelf(), shelf()],
        }
    }

    fn shelf(&self, kind: Kind) -> &Shelf {
        &self.shelves[kind.index()]
    }

    /// Whether the first list of `kind` has completed.
    pub fn is_synced(&self, kind: Kind) -> bool {
        self.shelf(kind).synced.load(Ordering::Acquire)
    }

    /// The changes of `kind` from now on.
    pub fn subscribe(&self, kind: Kind) -> broadcast::Receiver<Changed> {
        self.shelf(kind).changes.subscribe()
    }

    /// Every object of `kind` in `namespace`, in name order.
    pub fn list(&self, kind: Kind, namespace: &str) -> Vec<Arc<Object>> {
        let objects = read(&self.shelf(kind).objects);
        objects
            .range((namespace.to_owned(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, o)| o.clone())
            .collect()
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Object>> {
        read(&self.shelf(kind).objects)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Stores or replaces one object and tells the subscribers.
    pub fn apply(&self, kind: Kind, object: Object) {
        let shelf = self.shelf(kind);
        let object = Arc::new(object);
        let key = (object.namespace.clone(), object.name.clone());
        let before = write(&shelf.objects).insert(key, object.clone());
        let change = match before {
            None => Change::Created,
            Some(before) if before.resource_version == object.resource_version => return,
            Some(_) => Change::Updated,
        };
        // No receiver is not an error: nobody is listening.
        let _ = shelf.changes.send(Changed { change, object });
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let shelf = self.shelf(kind);
        let removed = write(&shelf.objects).remove(&(namespace.to_owned(), name.to_owned()));
        if let Some(object) = removed {
            let _ = shelf.changes.send(Changed {
                change: Change::Deleted,
                object,
            });
        }
    }

    /// Replaces everything of `kind` with a fresh list, telling subscribers what changed.
    pub fn replace(&self, kind: Kind, fresh: Vec<Object>) {
        let shelf = self.shelf(kind);
        let new: Objects = fresh
            .into_iter()
            .map(|o| ((o.namespace.clone(), o.name.clone()), Arc::new(o)))
            .collect();
        let events = {
            let mut objects = write(&shelf.objects);
            let events = diff(&objects, &new);
            *objects = new;
            events
        };
        for event in events {
            let _ = shelf.changes.send(event);
        }
        shelf.synced.store(true, Ordering::Release);
    }
}

fn read(lock: &RwLock<Objects>) -> std::sync::RwLockReadGuard<'_, Objects> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(lock: &RwLock<Objects>) -> std::sync::RwLockWriteGuard<'_, Objects> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps `cache` current with one watch per kind in every namespace until `shutdown`; watch
/// errors are retried with kube-rs' default backoff.
pub async fn run(client: kube::Client, cache: Arc<Cache>, shutdown: CancellationToken) {
    let mut watches = tokio::task::JoinSet::new();
    for kind in Kind::ALL {
        watches.spawn(watch(client.clone(), cache.clone(), kind));
    }
    shutdown.cancelled().await;
    watches.abort_all();
}

async fn watch(client: kube::Client, cache: Arc<Cache>, kind: Kind) {
    let resource = kind.resource();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Option<Vec<Object>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                warn!(kind = %resource.kind, error = %e, "watch failed; retrying");
                continue;
            }
        };
        match event {
            Event::Init => relist = Some(Vec::new()),
            Event::InitApply(object) => {
                if let (Some(list), Some(object)) = (relist.as_mut(), checked(&resource, &object)) {
                    list.push(object);
                }
            }
            Event::InitDone => {
                let list = relist.take().unwrap_or_default();
                info!(kind = %resource.kind, objects = list.len(), "listed");
                cache.replace(kind, list);
            }
            Event::Apply(object) => {
                if let Some(object) = checked(&resource, &object) {
                    cache.apply(kind, object);
                }
            }
            Event::Delete(object) => {
                if let (Some(ns), Some(name)) = (&object.metadata.namespace, &object.metadata.name)
                {
                    cache.delete(kind, ns, name);
                }
            }
        }
    }
}

/// An object the cache can hold, or `None` after logging why not.
fn checked(resource: &ApiResource, object: &DynamicObject) -> Option<Object> {
    let held = Object::from_dynamic(object);
    if held.is_none() {
        warn!(
            kind = %resource.kind,
            name = ?object.metadata.name,
            "ignoring an object without a namespace or name (it is not served)"
        );
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(ns: &str, name: &str, version: &str) -> Object {
        Object::new(
            ns.into(),
            name.into(),
            json!({"metadata": {"name": name, "namespace": ns, "resourceVersion": version}}),
        )
    }

    #[test]
    fn a_relist_reports_only_what_changed() {
        let cache = Cache::new();
        cache.replace(
            Kind::Component,
            vec![
                object("a", "kept", "1"),
                object("a", "changed", "1"),
                object("a", "gone", "1"),
            ],
        );
        let mut changes = cache.subscribe(Kind::Component);
        cache.replace(
            Kind::Component,
            vec![
                object("a", "kept", "1"),
                object("a", "changed", "2"),
                object("a", "new", "1"),
            ],
        );
        let mut seen = Vec::new();
        while let Ok(event) = changes.try_recv() {
            seen.push((event.change, event.object.name.clone()));
        }
        assert_eq!(
            seen,
            vec![
                (Change::Updated, "changed".to_owned()),
                (Change::Created, "new".to_owned()),
                (Change::Deleted, "gone".to_owned()),
            ]
        );
    }

    #[test]
    fn listing_stays_within_the_namespace_and_repeated_versions_are_not_news() {
        let cache = Cache::new();
        for (ns, name) in [("a", "x"), ("ab", "y"), ("b", "z"), ("a", "w")] {
            cache.apply(Kind::Configuration, object(ns, name, "1"));
        }
        let names: Vec<_> = cache
            .list(Kind::Configuration, "a")
            .iter()
            .map(|o| o.name.clone())
            .collect();
        assert_eq!(names, ["w", "x"]);
        let mut changes = cache.subscribe(Kind::Configuration);
        cache.apply(Kind::Configuration, object("a", "x", "1"));
        assert!(changes.try_recv().is_err());
        cache.delete(Kind::Configuration, "a", "x");
        assert_eq!(
            changes.try_recv().map(|e| e.change).ok(),
            Some(Change::Deleted)
        );
        assert!(cache.get(Kind::Configuration, "a", "x").is_none());
    }

    #[test]
    fn scopes_admit_listed_apps_or_everyone_when_empty() {
        let scoped = Object::new("a".into(), "c".into(), json!({"scopes": ["orders"]}));
        assert!(scoped.in_scope_of("orders"));
        assert!(!scoped.in_scope_of("billing"));
        let open = Object::new("a".into(), "c".into(), json!({"scopes": []}));
        assert!(open.in_scope_of("billing"));
        let malformed = Object::new("a".into(), "c".into(), json!({"scopes": "orders"}));
        assert!(malformed.in_scope_of("billing"));
    }
}
