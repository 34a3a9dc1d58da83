//! One pass over an object's JSON before it is decoded, allocating nothing but the two
//! annotation values and the name it reports: whether the pod asks for a sidecar, and an upper
//! bound of the memory that decoding it into k8s-openapi's types and patching it will take.
//!
//! Typed decoding amplifies: the 22 bytes `{"name":"c","image":"i"}` in `spec.containers`
//! become a 2.3 KB `Container` in a vector that may double, so a 3 MiB pod of them needs about
//! a gigabyte. The bound lets the webhook refuse such a pod before allocating any of it, and
//! pods that do not ask for a sidecar are answered from this pass alone.
//!
//! The bound follows the Pod schema where it matters: arrays under the keys of the large
//! element types cost those types' sizes, and objects cost a B-tree node only where the schema
//! has a map (or inside a free-form JSON field); other objects are structs stored inline in
//! their parent, or unknown fields decoding skips. A map field missing from the list is
//! undercounted by one node each time it occurs, and each occurrence sits in a counted array
//! element or at a fixed place, so the bound loosens by at most about a third.

use std::fmt;
use std::mem::size_of;

use k8s_openapi::api::core::v1::{Container, EnvVar, EphemeralContainer, Pod, Volume};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::names::annotation;

/// Subtrees nested deeper are skipped and the object reported as such. No Pod field nests
/// beyond about 15 levels (`managedFields[].fieldsV1` mirrors the pod's own structure), so a
/// pod nested deeper only carries junk; the bound also keeps this pass's recursion short.
pub const MAX_DEPTH: usize = 32;

/// A non-empty map: one B-tree node of a `BTreeMap<String, String>` or a `serde_json::Map`
/// (11 slots and 12 edges, 728 bytes at most).
const OBJECT: usize = 768;
/// Each map entry: B-tree nodes other than the root are at least half full (728 / 5).
const ENTRY: usize = 160;
/// Each string: its bytes plus the allocator's smallest chunk.
const STRING: usize = 32;
/// Vector growth: capacity is under twice the length, and while a vector grows its old and new
/// buffers exist together.
const GROWTH: usize = 3;
/// An array element that is a scalar, or any element of a free-form JSON array: a `String` or
/// `serde_json::Value` slot.
const SCALAR_SLOT: usize = GROWTH * 32;
/// An array element that is an object, outside the keys given their own size: covers every
/// other element type a Pod holds (the largest, `ContainerStatus`, is 752 bytes in
/// k8s-openapi 0.29; a unit test keeps this true).
pub const OTHER_ELEMENT: usize = 768;
/// What the patch adds for each app container (env and mount ops as JSON values, then their
/// text, base64 and the answer), about 4 KiB, doubled.
const PATCH_PER_CONTAINER: usize = 8 * 1024;
/// `dapr.io/*` annotation values are copied into the sidecar container, its JSON value, the
/// patch text, its base64 and the answer.
const COPIED: usize = 8;
/// Non-empty arrays: the smallest vector capacity is 4 elements.
const ARRAY: usize = 128;

/// Pod fields (JSON names) decoded into `BTreeMap`s, from k8s-openapi's core/v1 and meta/v1.
const MAP_FIELDS: &[&str] = &[
    "annotations",
    "labels",
    "matchLabels",
    "nodeSelector",
    "overhead",
    "limits",
    "requests",
    "volumeAttributes",
    "options",
    "userAnnotations",
    "allocatedResources",
    "consumedCapacity",
];
/// Pod fields decoded into `serde_json::Value` (`FieldsV1`, `RawExtension`).
const JSON_FIELDS: &[&str] = &["fieldsV1", "parameters", "data"];

/// What one pass found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Survey {
    /// `metadata.annotations["dapr.io/enabled"]` is "true" in any case (the webhook's gate).
    pub enabled: bool,
    /// `metadata.annotations["dapr.io/app-id"]` when a string.
    pub app_id: Option<String>,
    /// `metadata.name` when a string.
    pub name: Option<String>,
    /// Upper bound of the bytes decoding and patching the object takes.
    pub bytes: usize,
    /// Some part was nested deeper than [`MAX_DEPTH`] and not looked at.
    pub too_deep: bool,
}

impl Survey {
    /// Surveys a pod (or anything sent as one). Duplicated keys count as decoding them does:
    /// the last occurrence wins.
    pub fn of_pod(object: &RawValue) -> Self {
        let mut survey = Survey {
            bytes: size_of::<Pod>(),
            ..Survey::default()
        };
        survey.walk(object, Place::Pod, Kind::Typed);
        survey
    }

    /// Surveys JSON decoded into plain strings and vectors (the requester's `userInfo`).
    pub fn of_value(json: &RawValue) -> Self {
        let mut survey = Survey::default();
        survey.walk(json, Place::Other, Kind::Typed);
        survey
    }

    /// The app id for logs and rejections: the annotation, else the pod name.
    pub fn diagnostic_app_id(&self) -> String {
        self.app_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .or(self.name.as_deref())
            .unwrap_or_default()
            .to_owned()
    }

    fn walk(&mut self, json: &RawValue, place: Place, kind: Kind) {
        let mut deserializer = serde_json::Deserializer::from_str(json.get());
        let node = Node {
            survey: self,
            place,
            kind,
            slot: GROWTH * OTHER_ELEMENT,
            depth: 0,
        };
        // The text is valid JSON (it was read as a raw value) and the walk accepts any type, so
        // only the parser's own depth limit could fail it; count that as too deep.
        if node.deserialize(&mut deserializer).is_err() {
            self.too_deep = true;
        }
    }
}

/// Where a value sits, for what the survey reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Pod,
    Metadata,
    Annotations,
    Name,
    Enabled,
    AppId,
    /// Another `dapr.io/*` annotation's value.
    DaprAnnotation,
    /// An element of an array: costs the node's `slot`.
    Element,
    Other,
}

/// What decoding makes of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A struct, a scalar, or skipped.
    Typed,
    /// A `BTreeMap` of strings.
    Map,
    /// A `serde_json::Value`, all the way down.
    Json,
}

/// A map key, classified without keeping it.
#[derive(Debug, Clone, Copy)]
struct Key {
    len: usize,
    class: KeyClass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyClass {
    Metadata,
    Annotations,
    Name,
    Enabled,
    AppId,
    Dapr,
    Containers,
    EphemeralContainers,
    Volumes,
    Env,
    MapField,
    JsonField,
    Other,
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Key, E> {
        let class = match key {
            "metadata" => KeyClass::Metadata,
            "annotations" => KeyClass::Annotations,
            "name" => KeyClass::Name,
            "containers" | "initContainers" => KeyClass::Containers,
            "ephemeralContainers" => KeyClass::EphemeralContainers,
            "volumes" => KeyClass::Volumes,
            "env" => KeyClass::Env,
            k if k == annotation::ENABLED => KeyClass::Enabled,
            k if k == annotation::APP_ID => KeyClass::AppId,
            k if k.starts_with("dapr.io/") => KeyClass::Dapr,
            k if MAP_FIELDS.contains(&k) => KeyClass::MapField,
            k if JSON_FIELDS.contains(&k) => KeyClass::JsonField,
            _ => KeyClass::Other,
        };
        Ok(Key {
            len: key.len(),
            class,
        })
    }
}

/// What an object element of a typed array under `class` costs.
fn element_slot(class: KeyClass) -> usize {
    match class {
        KeyClass::Containers => GROWTH * size_of::<Container>() + PATCH_PER_CONTAINER,
        KeyClass::EphemeralContainers => GROWTH * size_of::<EphemeralContainer>(),
        KeyClass::Volumes => GROWTH * size_of::<Volume>(),
        KeyClass::Env => GROWTH * size_of::<EnvVar>(),
        _ => GROWTH * OTHER_ELEMENT,
    }
}

/// One value: where it sits, what decoding makes of it, what its elements cost if it is an
/// array, and its depth.
struct Node<'s> {
    survey: &'s mut Survey,
    place: Place,
    kind: Kind,
    slot: usize,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // Replaced as a whole by a later duplicate, whatever its type.
        match self.place {
            Place::Metadata => {
                self.survey.name = None;
                self.survey.enabled = false;
                self.survey.app_id = None;
            }
            Place::Annotations => {
                self.survey.enabled = false;
                self.survey.app_id = None;
            }
            Place::Name => self.survey.name = None,
            Place::Enabled => self.survey.enabled = false,
            Place::AppId => self.survey.app_id = None,
            _ => {}
        }
        if self.depth > MAX_DEPTH {
            self.survey.too_deep = true;
            return deserializer.deserialize_ignored_any(IgnoredAny).map(|_| ());
        }
        deserializer.deserialize_any(self)
    }
}

impl Node<'_> {
    fn scalar(self) {
        if self.place == Place::Element {
            self.survey.bytes += SCALAR_SLOT;
        }
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.scalar();
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.scalar();
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.scalar();
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.scalar();
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.scalar();
        Ok(())
    }

    fn visit_str<E>(self, value: &str) -> Result<(), E> {
        let copies = match self.place {
            Place::Enabled | Place::AppId | Place::DaprAnnotation => COPIED,
            _ => 1,
        };
        self.survey.bytes += STRING + copies * value.len();
        match self.place {
            Place::Name => self.survey.name = Some(value.to_owned()),
            Place::Enabled => self.survey.enabled = value.eq_ignore_ascii_case("true"),
            Place::AppId => self.survey.app_id = Some(value.to_owned()),
            _ => {}
        }
        self.scalar();
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (kind, slot) = match self.kind {
            Kind::Json => (Kind::Json, SCALAR_SLOT),
            _ => (Kind::Typed, self.slot),
        };
        let mut elements = 0usize;
        loop {
            let element = Node {
                survey: &mut *self.survey,
                place: Place::Element,
                kind,
                slot,
                depth: self.depth + 1,
            };
            if seq.next_element_seed(element)?.is_none() {
                break;
            }
            elements += 1;
        }
        if elements > 0 {
            self.survey.bytes += ARRAY;
        }
        // An array inside an array is a slot of its own.
        self.scalar();
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let is_map = matches!(self.kind, Kind::Map | Kind::Json);
        let mut entries = 0usize;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            entries += 1;
            if is_map {
                self.survey.bytes += ENTRY + STRING + key.len;
            }
            let place = match (self.place, key.class) {
                (Place::Pod, KeyClass::Metadata) => Place::Metadata,
                (Place::Metadata, KeyClass::Annotations) => Place::Annotations,
                (Place::Metadata, KeyClass::Name) => Place::Name,
                (Place::Annotations, KeyClass::Enabled) => Place::Enabled,
                (Place::Annotations, KeyClass::AppId) => Place::AppId,
                (Place::Annotations, KeyClass::Dapr) => Place::DaprAnnotation,
                _ => Place::Other,
            };
            let kind = match (self.kind, key.class) {
                (Kind::Json, _) | (_, KeyClass::JsonField) => Kind::Json,
                (Kind::Typed, KeyClass::Annotations | KeyClass::MapField) => Kind::Map,
                _ => Kind::Typed,
            };
            map.next_value_seed(Node {
                survey: &mut *self.survey,
                place,
                kind,
                slot: element_slot(key.class),
                depth: self.depth + 1,
            })?;
        }
        if is_map && entries > 0 {
            self.survey.bytes += OBJECT;
        }
        if self.place == Place::Element {
            self.survey.bytes += self.slot;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerStatus, EnvVar, VolumeProjection};

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn the_gate_and_the_app_id_are_read_as_decoding_would_read_them() {
        let s = Survey::of_pod(&raw(
            r#"{"metadata":{"name":"p","annotations":{"dapr.io/enabled":"TRUE","dapr.io/app-id":"a"}}}"#,
        ));
        assert!(s.enabled);
        assert_eq!(s.diagnostic_app_id(), "a");
        assert!(!s.too_deep);

        let s = Survey::of_pod(&raw(
            r#"{"metadata":{"name":"p","annotations":{"dapr.io/enabled":"yes","dapr.io/app-id":""}}}"#,
        ));
        assert!(!s.enabled);
        assert_eq!(
            s.diagnostic_app_id(),
            "p",
            "an empty app id falls back to the name"
        );

        for wrong in [
            r#"{"metadata":"x"}"#,
            r#"{"metadata":{"annotations":["dapr.io/enabled"]}}"#,
            r#"{"metadata":{"annotations":{"dapr.io/enabled":true}}}"#,
            r#"{"spec":{"metadata":{"annotations":{"dapr.io/enabled":"true"}}}}"#,
            r#"[{"metadata":{"annotations":{"dapr.io/enabled":"true"}}}]"#,
            "null",
        ] {
            assert!(!Survey::of_pod(&raw(wrong)).enabled, "{wrong}");
        }
    }

    #[test]
    fn a_duplicated_key_counts_by_its_last_occurrence() {
        let last_true =
            r#"{"metadata":{"annotations":{"dapr.io/enabled":"false","dapr.io/enabled":"true"}}}"#;
        assert!(Survey::of_pod(&raw(last_true)).enabled);
        let replaced =
            r#"{"metadata":{"annotations":{"dapr.io/enabled":"true"}},"metadata":{"name":"n"}}"#;
        let s = Survey::of_pod(&raw(replaced));
        assert!(!s.enabled);
        assert_eq!(s.name.as_deref(), Some("n"));
        let annotations_replaced =
            r#"{"metadata":{"annotations":{"dapr.io/enabled":"true"},"annotations":null}}"#;
        assert!(!Survey::of_pod(&raw(annotations_replaced)).enabled);
    }

    #[test]
    fn nesting_past_the_depth_limit_is_reported_and_not_walked() {
        let deep = format!(
            r#"{{"metadata":{{"annotations":{{"dapr.io/enabled":"true"}}}},"spec":{{"junk":{}0{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let s = Survey::of_pod(&raw(&deep));
        assert!(s.too_deep);
        assert!(s.enabled, "the gate is still read");
        let shallow = format!(
            r#"{{"spec":{{"junk":{}0{}}}}}"#,
            "[".repeat(20),
            "]".repeat(20)
        );
        assert!(!Survey::of_pod(&raw(&shallow)).too_deep);
    }

    #[test]
    fn containers_cost_their_typed_size_and_their_patch() {
        let containers: Vec<String> = (0..1000).map(|i| format!(r#"{{"name":"c{i}"}}"#)).collect();
        let pod = format!(r#"{{"spec":{{"containers":[{}]}}}}"#, containers.join(","));
        let s = Survey::of_pod(&raw(&pod));
        assert!(
            s.bytes > 1000 * (2 * size_of::<Container>() + 4096),
            "{}",
            s.bytes
        );
        assert!(
            pod.len() * 100 < s.bytes,
            "typed containers amplify the text a hundredfold"
        );
    }

    /// Twenty containers with a hundred secret env vars and ten mounts each, ten volumes, and the
    /// managed fields the API server adds: a large pod, as real ones go.
    fn large_real_pod() -> String {
        let env: Vec<String> = (0..100)
            .map(|i| {
                format!(
                    r#"{{"name":"VARIABLE_{i}","valueFrom":{{"secretKeyRef":{{"name":"secret","key":"key{i}"}}}}}}"#
                )
            })
            .collect();
        let mounts: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"name":"vol{i}","mountPath":"/mnt/{i}"}}"#))
            .collect();
        let containers: Vec<String> = (0..20)
            .map(|i| {
                format!(
                    r#"{{"name":"c{i}","image":"example.com/app:1","env":[{}],"volumeMounts":[{}],"resources":{{"limits":{{"cpu":"1","memory":"1Gi"}}}}}}"#,
                    env.join(","),
                    mounts.join(",")
                )
            })
            .collect();
        let fields: Vec<String> = (0..2000)
            .map(|i| format!(r#""k:{{\"name\":\"VARIABLE_{i}\"}}":{{".":{{}},"f:name":{{}},"f:valueFrom":{{}}}}"#))
            .collect();
        let volumes: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"name":"vol{i}","configMap":{{"name":"cm{i}"}}}}"#))
            .collect();
        format!(
            r#"{{"metadata":{{"name":"p","labels":{{"app":"p"}},"annotations":{{"dapr.io/enabled":"true"}},"managedFields":[{{"manager":"m","fieldsV1":{{"f:spec":{{{}}}}}}}]}},"spec":{{"containers":[{}],"volumes":[{}]}}}}"#,
            fields.join(","),
            containers.join(","),
            volumes.join(",")
        )
    }

    #[test]
    fn a_large_real_pod_is_estimated_well_under_the_decode_limit() {
        let pod = large_real_pod();
        let s = Survey::of_pod(&raw(&pod));
        assert!(!s.too_deep);
        assert!(
            s.bytes < crate::admission::MAX_DECODED / 2,
            "{} bytes for {} bytes of text",
            s.bytes,
            pod.len()
        );
        // Decoding it for real takes less than the estimate.
        let decoded: Pod = serde_json::from_str(&pod).unwrap();
        let env = size_of::<EnvVar>() * 2000 + size_of::<Container>() * 20;
        assert!(env < s.bytes);
        drop(decoded);
    }

    #[test]
    fn free_form_json_costs_a_node_per_object_and_structs_cost_none() {
        let objects: Vec<String> = (0..1000).map(|i| format!(r#""k{i}":{{"a":0}}"#)).collect();
        let objects = objects.join(",");
        let in_json =
            format!(r#"{{"metadata":{{"managedFields":[{{"fieldsV1":{{{objects}}}}}]}}}}"#);
        let in_struct = format!(r#"{{"spec":{{"junk":{{{objects}}}}}}}"#);
        let json = Survey::of_pod(&raw(&in_json)).bytes;
        let typed = Survey::of_pod(&raw(&in_struct)).bytes;
        assert!(json > 1000 * (OBJECT + 2 * ENTRY), "{json}");
        assert!(typed < 100_000, "{typed}");
    }

    #[test]
    fn other_array_elements_are_no_larger_than_the_default_slot() {
        for (name, size) in [
            ("ContainerStatus", size_of::<ContainerStatus>()),
            ("VolumeProjection", size_of::<VolumeProjection>()),
            ("EnvVar", size_of::<EnvVar>()),
        ] {
            assert!(size <= OTHER_ELEMENT, "{name} is {size} bytes");
        }
        assert!(size_of::<serde_json::Value>() * GROWTH <= SCALAR_SLOT);
    }
}
