//! AdmissionReviews mutated the way a hostile or broken client would send them, the same for
//! the same seed: case `i` of seed `s` depends on nothing else, so concurrent senders can share
//! a seed without sharing a generator. Large cases are written as text rather than built as
//! JSON values, so a run of thousands stays quick.

use serde_json::{Value, json};

/// A string value replaced in the serialized review by generated JSON text.
const SPLICE: &str = "@@splice@@";
/// An object key (with a `null` value) replaced by generated `"key":value` pairs.
const SPLICE_KEYS: &str = "@@keys@@";

/// What was done to a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutation {
    /// A pod asking for a sidecar, unchanged: must get its patch.
    Valid,
    HugeAnnotationValue,
    ManyAnnotations,
    DeepNesting,
    ManyContainers,
    ManyVolumes,
    ManyEnvVars,
    LargeScalarArray,
    ManyGroups,
    ManyManagedFields,
    ManySmallObjects,
    WrongType,
    Truncated,
    DuplicatedKeys,
    ByteFlips,
    /// A valid review padded to at most the body limit: must get its patch.
    NearLimit,
    /// A review just over the body limit: must be answered 413.
    OverLimit,
    EmptyBody,
    WrongContentType,
}

pub struct Case {
    pub mutation: Mutation,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Case `index` of `seed` for a webhook that takes bodies up to `limit` bytes.
pub fn case(seed: u64, index: u64, limit: usize) -> Case {
    let mut rng = fastrand::Rng::with_seed(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mutation = pick(&mut rng);
    let body = match mutation {
        Mutation::Valid => text(&review(&mut rng, index)),
        Mutation::HugeAnnotationValue => huge_annotation_value(&mut rng, index, limit),
        Mutation::ManyAnnotations => many_annotations(&mut rng, index, limit),
        Mutation::DeepNesting => deep_nesting(&mut rng, index, limit),
        Mutation::ManyContainers => many_elements(
            &mut rng,
            index,
            limit,
            &["request", "object", "spec", "containers"],
            |i| format!(r#"{{"name":"c{i}","image":"i"}}"#),
        ),
        Mutation::ManyVolumes => many_elements(
            &mut rng,
            index,
            limit,
            &["request", "object", "spec", "volumes"],
            |i| format!(r#"{{"name":"v{i}","emptyDir":{{}}}}"#),
        ),
        Mutation::ManyEnvVars => many_elements(
            &mut rng,
            index,
            limit,
            &["request", "object", "spec", "containers", "0", "env"],
            |i| format!(r#"{{"name":"E{i}","value":""}}"#),
        ),
        Mutation::LargeScalarArray => {
            let path: &[&str] = match rng.u8(0..3) {
                0 => &["request", "object", "spec", "junk"],
                1 => &["request", "object", "metadata", "finalizers"],
                _ => &["request", "object", "spec", "containers", "0", "args"],
            };
            let element = if rng.bool() { "0" } else { r#""""# };
            many_elements(&mut rng, index, limit, path, |_| element.to_owned())
        }
        Mutation::ManyGroups => many_elements(
            &mut rng,
            index,
            limit,
            &["request", "userInfo", "groups"],
            |_| r#""""#.to_owned(),
        ),
        Mutation::ManyManagedFields => many_elements(
            &mut rng,
            index,
            limit,
            &["request", "object", "metadata", "managedFields"],
            |i| format!(r#"{{"manager":"m{i}","fieldsV1":{{"f:a":{{"f:b":{{"c":0}}}}}}}}"#),
        ),
        Mutation::ManySmallObjects => {
            let path: &[&str] = match rng.u8(0..3) {
                0 => &["request", "object", "spec", "junk"],
                1 => &["request", "object", "spec", "tolerations"],
                _ => &["request", "object", "spec", "containers", "0", "ports"],
            };
            many_elements(&mut rng, index, limit, path, |_| r#"{"a":0}"#.to_owned())
        }
        Mutation::WrongType => wrong_type(&mut rng, index),
        Mutation::Truncated => {
            let mut body = if rng.u8(0..4) == 0 {
                huge_annotation_value(&mut rng, index, limit)
            } else {
                text(&review(&mut rng, index))
            };
            let keep = rng.usize(0..body.len());
            body.truncate(keep);
            body
        }
        Mutation::DuplicatedKeys => duplicated_keys(&mut rng, index),
        Mutation::ByteFlips => {
            let mut body = text(&review(&mut rng, index));
            for _ in 0..rng.usize(1..8) {
                let at = rng.usize(0..body.len());
                body[at] = rng.u8(..);
            }
            body
        }
        Mutation::NearLimit => {
            let total = limit - rng.usize(0..4096);
            padded(&mut rng, index, total)
        }
        Mutation::OverLimit => {
            let total = limit + rng.usize(1..64 * 1024);
            padded(&mut rng, index, total)
        }
        Mutation::EmptyBody => Vec::new(),
        Mutation::WrongContentType => text(&review(&mut rng, index)),
    };
    let content_type = match mutation {
        Mutation::WrongContentType => "text/plain",
        _ => "application/json",
    };
    Case {
        mutation,
        content_type,
        body,
    }
}

/// About one case in five is valid so injections keep happening during a run; sizes are
/// log-uniform, so 2 500 cases move about 800 MiB rather than gigabytes.
fn pick(rng: &mut fastrand::Rng) -> Mutation {
    use Mutation::*;
    const TABLE: &[(Mutation, u32)] = &[
        (Valid, 20),
        (HugeAnnotationValue, 4),
        (ManyAnnotations, 4),
        (DeepNesting, 4),
        (ManyContainers, 4),
        (ManyVolumes, 4),
        (ManyEnvVars, 4),
        (LargeScalarArray, 4),
        (ManyGroups, 3),
        (ManyManagedFields, 3),
        (ManySmallObjects, 4),
        (WrongType, 10),
        (Truncated, 8),
        (DuplicatedKeys, 8),
        (ByteFlips, 8),
        (NearLimit, 2),
        (OverLimit, 2),
        (EmptyBody, 2),
        (WrongContentType, 2),
    ];
    let total: u32 = TABLE.iter().map(|(_, w)| w).sum();
    let mut roll = rng.u32(0..total);
    for (mutation, weight) in TABLE {
        if roll < *weight {
            return *mutation;
        }
        roll -= weight;
    }
    Valid
}

/// A size between 1 KiB and `max`, log-uniform: most large cases are modest, a few are huge.
fn size(rng: &mut fastrand::Rng, max: usize) -> usize {
    let (lo, hi) = (10u32, usize::BITS - max.leading_zeros() - 1);
    let bits = rng.u32(lo..=hi.max(lo));
    let base = 1usize << bits;
    (base + rng.usize(0..base)).min(max)
}

/// A review the default configuration injects: a ReplicaSet's pod asking for a sidecar.
pub fn review(rng: &mut fastrand::Rng, index: u64) -> Value {
    let containers: Vec<Value> = (0..rng.usize(1..4))
        .map(|i| {
            json!({
                "name": format!("app{i}"),
                "image": "example.com/app:1.0",
                "ports": [{"containerPort": 8080 + i}],
                "env": [{"name": "MODE", "value": "fuzz"}]
            })
        })
        .collect();
    json!({
        "apiVersion": if rng.bool() { "admission.k8s.io/v1" } else { "admission.k8s.io/v1beta1" },
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("fuzz-{index}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "fuzz",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "7c1f7d9e-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:authenticated"]
            },
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": format!("app{index}-"),
                    "namespace": "fuzz",
                    "labels": {"app": format!("app{index}")},
                    "annotations": {
                        "dapr.io/enabled": "true",
                        "dapr.io/app-id": format!("app{index}"),
                        "dapr.io/app-port": "8080"
                    }
                },
                "spec": {"containers": containers, "serviceAccountName": "app"}
            },
            "oldObject": null,
            "dryRun": false
        }
    })
}

fn text(review: &Value) -> Vec<u8> {
    serde_json::to_vec(review).expect("a review serializes")
}

/// Sets the value at `path` (object keys, or array indices as digits), creating objects.
fn set(review: &mut Value, path: &[&str], value: Value) {
    let mut at = review;
    for key in &path[..path.len() - 1] {
        at = match key.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*key],
        };
    }
    let last = path[path.len() - 1];
    match last.parse::<usize>() {
        Ok(i) => at[i] = value,
        Err(_) => at[last] = value,
    }
}

/// The review with `path` replaced by `generated` JSON text.
fn spliced(mut review: Value, path: &[&str], generated: &str) -> Vec<u8> {
    set(&mut review, path, json!(SPLICE));
    let text = String::from_utf8(text(&review)).expect("UTF-8");
    text.replacen(&format!("\"{SPLICE}\""), generated, 1)
        .into_bytes()
}

fn huge_annotation_value(rng: &mut fastrand::Rng, index: u64, limit: usize) -> Vec<u8> {
    let len = size(rng, limit.saturating_sub(2048));
    let unit = match rng.u8(0..3) {
        0 => "x",
        1 => "\\u00e9",
        _ => "\\\"",
    };
    let mut value = String::with_capacity(len + 8);
    value.push('"');
    while value.len() + unit.len() < len {
        value.push_str(unit);
    }
    value.push('"');
    let key = match rng.u8(0..4) {
        0 => "example.com/blob",
        1 => "dapr.io/app-port",
        2 => "dapr.io/app-id",
        _ => "dapr.io/env",
    };
    spliced(
        review(rng, index),
        &["request", "object", "metadata", "annotations", key],
        &value,
    )
}

fn many_annotations(rng: &mut fastrand::Rng, index: u64, limit: usize) -> Vec<u8> {
    let len = size(rng, limit.saturating_sub(2048));
    let mut object = format!(r#"{{"dapr.io/enabled":"true","dapr.io/app-id":"app{index}""#);
    let mut i = 0u64;
    while object.len() < len {
        object.push_str(&format!(r#","k{i}":"""#));
        i += 1;
    }
    object.push('}');
    spliced(
        review(rng, index),
        &["request", "object", "metadata", "annotations"],
        &object,
    )
}

fn deep_nesting(rng: &mut fastrand::Rng, index: u64, limit: usize) -> Vec<u8> {
    let depth = size(rng, (limit / 4).max(1024)) / 2;
    let (open, close) = if rng.bool() {
        ("[", "]")
    } else {
        (r#"{"a":"#, "}")
    };
    let nested = format!("{}0{}", open.repeat(depth), close.repeat(depth));
    let path: &[&str] = match rng.u8(0..4) {
        0 => &["request", "object", "spec", "junk"],
        1 => &[
            "request",
            "object",
            "metadata",
            "annotations",
            "example.com/deep",
        ],
        2 => &["request", "object", "spec", "containers", "0", "env"],
        _ => &["request", "junk"],
    };
    spliced(review(rng, index), path, &nested)
}

/// An array of generated elements at `path`, up to a random size below `limit`.
fn many_elements(
    rng: &mut fastrand::Rng,
    index: u64,
    limit: usize,
    path: &[&str],
    element: impl Fn(u64) -> String,
) -> Vec<u8> {
    let len = size(rng, limit.saturating_sub(2048));
    let mut array = String::with_capacity(len + 64);
    array.push('[');
    let mut i = 0u64;
    while array.len() < len {
        if i > 0 {
            array.push(',');
        }
        array.push_str(&element(i));
        i += 1;
    }
    array.push(']');
    spliced(review(rng, index), path, &array)
}

fn wrong_type(rng: &mut fastrand::Rng, index: u64) -> Vec<u8> {
    const PATHS: &[&[&str]] = &[
        &["apiVersion"],
        &["kind"],
        &["request"],
        &["request", "uid"],
        &["request", "kind"],
        &["request", "kind", "kind"],
        &["request", "namespace"],
        &["request", "userInfo"],
        &["request", "userInfo", "groups"],
        &["request", "userInfo", "groups", "0"],
        &["request", "object"],
        &["request", "object", "metadata"],
        &["request", "object", "metadata", "annotations"],
        &[
            "request",
            "object",
            "metadata",
            "annotations",
            "dapr.io/enabled",
        ],
        &[
            "request",
            "object",
            "metadata",
            "annotations",
            "dapr.io/app-id",
        ],
        &["request", "object", "metadata", "labels"],
        &["request", "object", "spec"],
        &["request", "object", "spec", "containers"],
        &["request", "object", "spec", "containers", "0"],
        &["request", "object", "spec", "containers", "0", "name"],
        &["request", "object", "spec", "containers", "0", "ports"],
        &[
            "request",
            "object",
            "spec",
            "containers",
            "0",
            "ports",
            "0",
            "containerPort",
        ],
        &["request", "object", "spec", "containers", "0", "env", "0"],
    ];
    let mut review = review(rng, index);
    let replacement = match rng.u8(0..9) {
        0 => json!(42),
        1 => json!(-1.5),
        2 => json!("s"),
        3 => json!([]),
        4 => json!({}),
        5 => Value::Null,
        6 => json!(true),
        7 => json!([1, "a", {}]),
        _ => json!("true"),
    };
    set(&mut review, PATHS[rng.usize(0..PATHS.len())], replacement);
    text(&review)
}

fn duplicated_keys(rng: &mut fastrand::Rng, index: u64) -> Vec<u8> {
    let (path, pairs): (&[&str], String) = match rng.u8(0..4) {
        0 => (
            &["request", "object", "metadata", "annotations", SPLICE_KEYS],
            r#""dapr.io/enabled":"false","dapr.io/enabled":"true","dapr.io/app-id":"a","dapr.io/app-id":"b""#
                .to_owned(),
        ),
        1 => (
            &["request", SPLICE_KEYS],
            r#""object":{"metadata":{"annotations":{"dapr.io/enabled":"true"}}},"uid":"again""#
                .to_owned(),
        ),
        2 => (
            &["request", "object", SPLICE_KEYS],
            r#""metadata":{"name":"second","annotations":{"dapr.io/enabled":"true"}}"#.to_owned(),
        ),
        _ => (
            &["request", "object", "spec", SPLICE_KEYS],
            r#""containers":[{"name":"again"}],"containers":[]"#.to_owned(),
        ),
    };
    let mut review = review(rng, index);
    set(&mut review, path, Value::Null);
    let text = String::from_utf8(text(&review)).expect("UTF-8");
    text.replacen(&format!("\"{SPLICE_KEYS}\":null"), &pairs, 1)
        .into_bytes()
}

/// A valid review grown to exactly `total` bytes with an ignored annotation and whitespace.
fn padded(rng: &mut fastrand::Rng, index: u64, total: usize) -> Vec<u8> {
    let mut review = review(rng, index);
    let path = [
        "request",
        "object",
        "metadata",
        "annotations",
        "example.com/pad",
    ];
    set(&mut review, &path, json!(SPLICE));
    let marked = text(&review).len();
    // The marker and its quotes give way to the filler and its quotes.
    let room = (total + SPLICE.len()).saturating_sub(marked);
    let filler = rng.usize(0..=room);
    let mut body = spliced(review, &path, &format!("\"{}\"", "p".repeat(filler)));
    let spaces = total.saturating_sub(body.len());
    body.resize(body.len() + spaces, b' ');
    body
}
