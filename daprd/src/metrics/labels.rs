//! Label values from bounded sets: the capped interning of peer ids and proxied method names,
//! status numbers formatted on the stack, and the HTTP verb, gRPC code and served-method labels.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use http::Method;

use super::OTHER_PEERS;

/// The RPCs this sidecar serves, the only `grpc_server_method` values.
pub(super) const GRPC_METHODS: [&str; 6] = [
    "/dapr.proto.runtime.v1.Dapr/InvokeService",
    "/dapr.proto.runtime.v1.Dapr/GetMetadata",
    "/dapr.proto.runtime.v1.Dapr/SetMetadata",
    "/dapr.proto.runtime.v1.Dapr/Shutdown",
    "/dapr.proto.internals.v1.ServiceInvocation/CallLocal",
    "/dapr.proto.internals.v1.ServiceInvocation/CallLocalStream",
];

/// Label values (peer app ids, proxied method names) seen so far, capped: the interned value is
/// handed out without allocating.
pub(super) struct PeerIds {
    seen: RwLock<Seen>,
    other: Arc<str>,
    cap: usize,
}

/// How many values are kept in a list, compared by value, before the rest go to a hashed set:
/// a sidecar calls and is called by a handful of apps, and hashing an id with SipHash cost
/// about 270 instructions per call on each sidecar (bench/notes.md, "peer ids, statuses and
/// app headers looked up without hashing").
const AT_HAND: usize = 8;

#[derive(Default)]
struct Seen {
    first: Vec<Arc<str>>,
    rest: HashSet<Arc<str>>,
}

impl Seen {
    fn get(&self, id: &str) -> Option<&Arc<str>> {
        let at_hand = self.first.iter().find(|known| ***known == *id);
        at_hand.or_else(|| self.rest.get(id))
    }

    fn len(&self) -> usize {
        self.first.len() + self.rest.len()
    }

    fn insert(&mut self, id: Arc<str>) {
        if self.first.len() < AT_HAND {
            self.first.push(id);
        } else {
            self.rest.insert(id);
        }
    }
}

impl PeerIds {
    pub(super) fn new(cap: usize) -> PeerIds {
        PeerIds {
            seen: RwLock::new(Seen::default()),
            other: Arc::from(OTHER_PEERS),
            cap,
        }
    }

    pub(super) fn label(&self, id: &str) -> Arc<str> {
        if let Ok(seen) = self.seen.read()
            && let Some(known) = seen.get(id)
        {
            return Arc::clone(known);
        }
        let Ok(mut seen) = self.seen.write() else {
            return Arc::clone(&self.other);
        };
        if let Some(known) = seen.get(id) {
            return Arc::clone(known);
        }
        if seen.len() >= self.cap {
            return Arc::clone(&self.other);
        }
        let id: Arc<str> = Arc::from(id);
        seen.insert(Arc::clone(&id));
        id
    }
}

/// A status number as a label value, formatted on the stack.
pub(super) struct StatusLabel {
    buf: [u8; 11],
    len: usize,
}

impl StatusLabel {
    pub(super) fn new(code: i32) -> StatusLabel {
        let mut buf = [0u8; 11];
        let mut digits = [0u8; 10];
        let mut n = code.unsigned_abs();
        let mut count = 0;
        loop {
            digits[count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut len = 0;
        if code < 0 {
            buf[0] = b'-';
            len = 1;
        }
        for digit in digits[..count].iter().rev() {
            buf[len] = *digit;
            len += 1;
        }
        StatusLabel { buf, len }
    }

    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// The `method` label of HTTP metrics: the verb, or `UNKNOWN` for extension methods.
pub fn verb_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "UNKNOWN",
    }
}

/// A gRPC code's name as Go's `codes.Code.String()` writes it (upstream's label values).
pub fn grpc_code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The `grpc_server_method` label for a request path, if it is an RPC this sidecar serves.
pub fn grpc_method_label(path: &str) -> Option<&'static str> {
    GRPC_METHODS.iter().copied().find(|method| *method == path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::OTHER_PEERS;

    #[test]
    fn peer_ids_beyond_the_cap_share_one_label() {
        let peers = PeerIds::new(2);
        assert_eq!(&*peers.label("a"), "a");
        assert_eq!(&*peers.label("b"), "b");
        assert_eq!(&*peers.label("c"), OTHER_PEERS);
        assert_eq!(&*peers.label("a"), "a");
    }

    #[test]
    fn peer_ids_kept_at_hand_and_hashed_are_one_interned_set() {
        let cap = 3 * AT_HAND;
        let peers = PeerIds::new(cap);
        let ids: Vec<String> = (0..cap + 5).map(|i| format!("app-{i}")).collect();
        let first: Vec<Arc<str>> = ids.iter().map(|id| peers.label(id)).collect();
        for (i, (id, label)) in ids.iter().zip(&first).enumerate() {
            let again = peers.label(id);
            if i < cap {
                assert_eq!(&*again, id.as_str());
                // Interned: the same value is handed out, not a new one.
                assert!(Arc::ptr_eq(&again, label), "{id}");
            } else {
                assert_eq!(&*again, OTHER_PEERS, "{id}");
            }
        }
        assert_eq!(peers.seen.read().expect("lock").len(), cap);
        // Same length, other bytes: not mistaken for a kept one.
        assert_eq!(&*peers.label("app-x"), OTHER_PEERS);
    }

    #[test]
    fn labels_come_from_bounded_sets() {
        assert_eq!(verb_label(&Method::POST), "POST");
        assert_eq!(
            verb_label(&Method::from_bytes(b"PURGE").expect("method")),
            "UNKNOWN"
        );
        assert_eq!(grpc_code_label(tonic::Code::Cancelled), "Canceled");
        assert_eq!(grpc_code_label(tonic::Code::NotFound), "NotFound");
        assert_eq!(
            grpc_method_label("/dapr.proto.runtime.v1.Dapr/InvokeService"),
            Some("/dapr.proto.runtime.v1.Dapr/InvokeService")
        );
        assert_eq!(
            grpc_method_label("/dapr.proto.runtime.v1.Dapr/Made/Up"),
            None
        );
        for (code, text) in [(0, "0"), (13, "13"), (200, "200"), (-1, "-1")] {
            assert_eq!(StatusLabel::new(code).as_str(), text);
        }
        assert_eq!(StatusLabel::new(i32::MIN).as_str(), i32::MIN.to_string());
    }

    #[test]
    fn every_rpc_we_serve_has_a_method_label() {
        let set = dapr_proto::descriptor::ours().expect("descriptors");
        let served = [
            "dapr.proto.runtime.v1.Dapr",
            "dapr.proto.internals.v1.ServiceInvocation",
        ];
        let mut count = 0;
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                if !served.contains(&full.as_str()) {
                    continue;
                }
                for method in &service.method {
                    let path = format!("/{full}/{}", method.name());
                    assert_eq!(grpc_method_label(&path), Some(path.as_str()), "{path}");
                    count += 1;
                }
            }
        }
        assert_eq!(count, GRPC_METHODS.len());
    }
}
