//! What crosses the sidecar-to-sidecar hop: header names, metadata conversion, and the chunked
//! body streams of `CallLocalStream` (first message carries the request or response, later ones
//! only payloads with `seq` counting from 0).
//!
//! Here: the names, the metadata map and the HTTP verb mapping. `metadata` converts headers to
//! metadata and back, `frame` writes gRPC message frames with the caller's and the call's
//! stamps, and `stream` carries bodies as numbered payloads.

mod encode;
mod frame;
mod grpc;
pub mod http1;
mod metadata;
mod received;
mod sent;
mod stream;

use std::collections::BTreeMap;

use dapr_proto::common::v1::http_extension::Verb;
use dapr_proto::internals::v1::ListStringValue;
use http::Method;

pub use encode::Spelling;
pub use frame::{CallStamps, Stamps, frame_head, grpc_status};
pub use grpc::{
    Answer, MessageStream, Messages, RequestBody, answer, grpc_timeout, message_limit,
    within_deadline,
};
pub use metadata::{
    AppHeaders, CONTENT_LENGTH, ClientHeaders, HeaderEntries, app_response_headers_to_metadata,
    append_all, canonical_name, entries_into_headers, first, grpc_metadata_name,
    headers_to_metadata, is_canonical, is_permanent_http_header, metadata_to_grpc_headers,
    metadata_to_headers, push_grouped, set, traceparent_value,
};
pub use received::{
    DecodeError, Decoded, Received, ReceivedDecoder, ReceivedInvocation, ReceivedInvokeService,
    ReceivedMetadata, ReceivedRequest, ReceivedResponse, ReceivedResponseStream,
    ReceivedStreamMessage, StreamMessage, Values,
};
pub use sent::{Sent, SentInvocation, SentResponse, SentResponseStream};
pub use stream::{
    BoxError, BoxStream, Chunked, Gathered, Ready, SeqCheck, boxed_in_place, declared_len,
    into_payloads, payload_body, read_small, ready_part,
};

/// Header and metadata names, as upstream.
pub mod names {
    pub const DAPR_APP_ID: &str = "dapr-app-id";
    pub const CALLER_APP_ID: &str = "dapr-caller-app-id";
    pub const CALLEE_APP_ID: &str = "dapr-callee-app-id";
    pub const CALLER_NAMESPACE: &str = "dapr-caller-namespace";
    pub const DESTINATION_APP_ID: &str = "destination-app-id";
    pub const API_TOKEN: &str = "dapr-api-token";
    pub const FORCE_SHUTDOWN: &str = "dapr-force-shutdown";
    pub const TRACEPARENT: &str = "traceparent";
    /// Marks a proxied gRPC call as a stream for Resiliency (upstream's `StreamMetadataKey`).
    pub const DAPR_STREAM: &str = "dapr-stream";
    pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
    pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
    pub const FORWARDED: &str = "forwarded";

    /// Names looked up in every call's head, as `HeaderName`s: a lookup by `&str` parses the
    /// name before it hashes it (bench/notes.md, "header names looked up as names").
    pub mod header {
        use http::HeaderName;

        pub static DAPR_APP_ID: HeaderName = HeaderName::from_static(super::DAPR_APP_ID);
        pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
        pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    }
}

/// The content type of typed data (an `Any` with a `type_url`) for HTTP (upstream's
/// `ProtobufContentType`, `pkg/messaging/v1/util.go`).
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

/// The HTTP content type of invocation data: [`PROTOBUF_CONTENT_TYPE`] for typed data (a
/// `type_url`), else the message's own content type (maybe empty).
pub fn data_content_type<'a>(type_url: &str, content_type: &'a str) -> &'a str {
    if type_url.is_empty() {
        content_type
    } else {
        PROTOBUF_CONTENT_TYPE
    }
}

/// Largest payload chunk sent per stream message: well under gRPC's 4 MiB message limit, large
/// enough that big bodies need few messages.
pub const MAX_CHUNK: usize = 64 * 1024;

pub type Metadata = BTreeMap<String, ListStringValue>;

pub fn verb_of(method: &Method) -> Verb {
    match *method {
        Method::GET => Verb::Get,
        Method::HEAD => Verb::Head,
        Method::POST => Verb::Post,
        Method::PUT => Verb::Put,
        Method::DELETE => Verb::Delete,
        Method::CONNECT => Verb::Connect,
        Method::OPTIONS => Verb::Options,
        Method::TRACE => Verb::Trace,
        Method::PATCH => Verb::Patch,
        _ => Verb::None,
    }
}

/// The HTTP method for a verb; `NONE` (gRPC callers that set no verb) becomes POST as upstream.
pub fn method_of(verb: Verb) -> Method {
    match verb {
        Verb::Get => Method::GET,
        Verb::Head => Method::HEAD,
        Verb::Put => Method::PUT,
        Verb::Delete => Method::DELETE,
        Verb::Connect => Method::CONNECT,
        Verb::Options => Method::OPTIONS,
        Verb::Trace => Method::TRACE,
        Verb::Patch => Method::PATCH,
        Verb::Post | Verb::None => Method::POST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_round_trip_and_none_means_post() {
        for m in [
            Method::GET,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ] {
            assert_eq!(method_of(verb_of(&m)), m);
        }
        assert_eq!(method_of(Verb::None), Method::POST);
    }
}
