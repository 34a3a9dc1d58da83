//! gRPC message frames written by hand: the 5-byte prefix, requests with the caller's and the
//! call's stamps written into their metadata, and the `grpc-status` of a response.

use bytes::{BufMut, Bytes, BytesMut};
use dapr_proto::internals::v1::{ApiVersion, InternalInvokeRequest, InternalInvokeRequestStream};
use http::HeaderMap;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::encode::{Spelling, encode_entry, entry_len};
use super::{ClientHeaders, Metadata, names, set};

/// `InternalInvokeRequest`'s field numbers.
const VER: u32 = 1;
const METADATA: u32 = 2;
const MESSAGE: u32 = 3;

/// Metadata entries encoded once, as `InternalInvokeRequest.metadata` entries on the wire, for
/// values that are the same on every call (the caller's identity): appended to each encoded
/// request instead of being inserted into, encoded from and dropped with its map every time.
/// The request's own entries under a stamped name are left out of the frame (nothing says two
/// things), and its map is left as the client sent it, for another attempt.
#[derive(Debug, Clone, Default)]
pub struct Stamps {
    entries: Vec<(&'static str, String)>,
    encoded: Bytes,
}

/// What each call stamps on its request, as upstream does on the remote leg: the callee's app
/// id (under both of upstream's names) and the `traceparent` of the next hop. Written after the
/// request's map when it is framed here ([`Stamps::frame`]), so no entry is inserted into the
/// map, copied or dropped per call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStamps<'a> {
    pub callee: &'a str,
    pub traceparent: String,
}

impl CallStamps<'_> {
    /// The names a call stamps.
    const NAMES: [&'static str; 3] = [
        names::CALLEE_APP_ID,
        names::DESTINATION_APP_ID,
        names::TRACEPARENT,
    ];

    fn entries(&self) -> [(&'static str, &str); 3] {
        let [callee, destination, traceparent] = Self::NAMES;
        [
            (callee, self.callee),
            (destination, self.callee),
            (traceparent, &self.traceparent),
        ]
    }

    /// Sets every stamp in `metadata` (for requests that are not framed here).
    pub fn insert_into(&self, metadata: &mut Metadata) {
        for (name, value) in self.entries() {
            set(metadata, name, value);
        }
    }

    fn encoded_len(&self) -> usize {
        self.entries()
            .iter()
            .map(|(name, value)| entry_len(METADATA, name, &[value]))
            .sum()
    }

    fn encode(&self, buf: &mut BytesMut) {
        for (name, value) in self.entries() {
            encode_entry(METADATA, name, Spelling::AsIs, &[value], buf);
        }
    }
}

impl Stamps {
    pub fn new(entries: Vec<(&'static str, String)>) -> Self {
        let mut encoded = BytesMut::new();
        for (name, value) in &entries {
            encode_entry(METADATA, name, Spelling::AsIs, &[value], &mut encoded);
        }
        Stamps {
            entries,
            encoded: encoded.freeze(),
        }
    }

    /// Sets every stamp in `metadata` (for requests that are not framed here).
    pub fn insert_into(&self, metadata: &mut Metadata) {
        for (name, value) in &self.entries {
            set(metadata, name, value);
        }
    }

    /// Whether `name` is stamped, by the caller or by each call: the request's own entry under
    /// it is not written.
    fn stamps(&self, name: &str) -> bool {
        CallStamps::NAMES.contains(&name) || self.entries.iter().any(|(n, _)| *n == name)
    }

    /// Whether a client header, spelt as it travels, is under a stamped name.
    fn stamps_header(&self, name: &http::HeaderName, spelling: Spelling) -> bool {
        match spelling {
            Spelling::AsIs => self.stamps(name.as_str()),
            Spelling::Canonical => CallStamps::NAMES
                .iter()
                .chain(self.entries.iter().map(|(n, _)| n))
                .any(|stamp| super::encode::is_spelt_canonical(name.as_str(), stamp)),
        }
    }

    /// `request` as a gRPC message frame, with the caller's and the call's stamps.
    pub fn frame(&self, request: &mut InternalInvokeRequest, call: &CallStamps) -> Bytes {
        let metadata = std::mem::take(&mut request.metadata);
        let len = self.request_len(request, &metadata, call);
        let mut buf = frame_head(len);
        self.encode_request(
            request,
            &metadata,
            &ClientHeaders::default(),
            call,
            &mut buf,
        );
        request.metadata = metadata;
        buf.freeze()
    }

    /// A `CallLocal` request as a gRPC message frame, written from a gRPC API request as it
    /// came ([`super::ReceivedInvokeService`]): `ver` (V1), the invocation's bytes unchanged,
    /// the client's metadata that is not stamped, and the stamps.
    pub fn invoke_frame(
        &self,
        invocation: Option<&[u8]>,
        client: &ClientHeaders,
        call: &CallStamps,
    ) -> Bytes {
        let message_len = invocation.map_or(0, |bytes| {
            key_len(MESSAGE) + encoded_len_varint(bytes.len() as u64) + bytes.len()
        });
        let len = key_len(VER)
            + 1
            + message_len
            + self.client_len(client)
            + self.encoded.len()
            + call.encoded_len();
        let mut buf = frame_head(len);
        encode_key(VER, WireType::Varint, &mut buf);
        encode_varint(ApiVersion::V1 as u64, &mut buf);
        if let Some(bytes) = invocation {
            encode_key(MESSAGE, WireType::LengthDelimited, &mut buf);
            encode_varint(bytes.len() as u64, &mut buf);
            buf.extend_from_slice(bytes);
        }
        self.encode_metadata(&Metadata::new(), client, call, &mut buf);
        buf.freeze()
    }

    /// The first message of a `CallLocalStream` as a gRPC message frame, its request with the
    /// client's headers (after the request's own entries) and the caller's and the call's
    /// stamps.
    pub fn stream_frame(
        &self,
        message: &mut InternalInvokeRequestStream,
        client: &ClientHeaders,
        call: &CallStamps,
    ) -> Bytes {
        let metadata = message
            .request
            .as_mut()
            .map(|r| std::mem::take(&mut r.metadata))
            .unwrap_or_default();
        let request_len = message
            .request
            .as_ref()
            .map(|r| self.request_len(r, &metadata, call) + self.client_len(client));
        let payload_len = message
            .payload
            .as_ref()
            .map_or(0, |p| prost::encoding::message::encoded_len(2, p));
        let len = request_len.map_or(0, |n| key_len(1) + encoded_len_varint(n as u64) + n);
        let mut buf = frame_head(len + payload_len);
        if let (Some(request), Some(request_len)) = (&mut message.request, request_len) {
            encode_key(1, WireType::LengthDelimited, &mut buf);
            encode_varint(request_len as u64, &mut buf);
            self.encode_request(request, &metadata, client, call, &mut buf);
            request.metadata = metadata;
        }
        if let Some(payload) = &message.payload {
            prost::encoding::message::encode(2, payload, &mut buf);
        }
        buf.freeze()
    }

    /// The encoded length of `request` (its map taken out into `metadata`) with the stamps.
    fn request_len(
        &self,
        request: &InternalInvokeRequest,
        metadata: &Metadata,
        call: &CallStamps,
    ) -> usize {
        let kept: usize = metadata
            .iter()
            .filter(|(name, _)| !self.stamps(name))
            .map(|(name, list)| entry_len(METADATA, name, &list.values))
            .sum();
        request.encoded_len() + kept + self.encoded.len() + call.encoded_len()
    }

    /// The encoded length of the client's headers that are not stamped, as map entries.
    fn client_len(&self, client: &ClientHeaders) -> usize {
        client
            .iter()
            .filter(|(name, spelling, _)| !self.stamps_header(name, *spelling))
            .map(|(name, _, values)| entry_len(METADATA, name.as_str(), values))
            .sum()
    }

    /// `request`'s fields but its map, then the map's entries and the client's headers that
    /// are not stamped, then the stamps. Fields in any order are one message to a protobuf
    /// reader, and a map entry that comes twice is the last one.
    fn encode_request(
        &self,
        request: &InternalInvokeRequest,
        metadata: &Metadata,
        client: &ClientHeaders,
        call: &CallStamps,
        buf: &mut BytesMut,
    ) {
        request.encode_raw(buf);
        self.encode_metadata(metadata, client, call, buf);
    }

    /// The map's entries and the client's headers that are not stamped, then the stamps.
    fn encode_metadata(
        &self,
        metadata: &Metadata,
        client: &ClientHeaders,
        call: &CallStamps,
        buf: &mut BytesMut,
    ) {
        for (name, list) in metadata {
            if !self.stamps(name) {
                encode_entry(METADATA, name, Spelling::AsIs, &list.values, buf);
            }
        }
        for (name, spelling, values) in client.iter() {
            if !self.stamps_header(name, spelling) {
                encode_entry(METADATA, name.as_str(), spelling, values, buf);
            }
        }
        buf.extend_from_slice(&self.encoded);
        call.encode(buf);
    }
}

/// A buffer holding the 5-byte gRPC message prefix (not compressed, `len` bytes follow) with
/// room for the message.
pub fn frame_head(len: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    buf
}

/// The `grpc-status` of a response head (a trailers-only answer) or of its trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    dapr_serve::field(headers, &super::names::header::GRPC_STATUS)
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::first;
    use dapr_proto::common::v1::StreamPayload;
    use dapr_proto::internals::v1::ListStringValue;

    fn stamps() -> Stamps {
        Stamps::new(vec![
            (names::CALLER_APP_ID, "checkout".to_owned()),
            (names::X_FORWARDED_HOST, "node-1".to_owned()),
        ])
    }

    fn request() -> InternalInvokeRequest {
        let mut request = InternalInvokeRequest {
            ver: dapr_proto::internals::v1::ApiVersion::V1 as i32,
            message: Some(dapr_proto::common::v1::InvokeRequest {
                method: "echo".into(),
                content_type: "text/plain".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        set(&mut request.metadata, "content-type", "text/plain");
        request
    }

    fn body_of(frame: &Bytes) -> &[u8] {
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!((frame[0], len), (0, frame.len() - 5), "the gRPC prefix");
        &frame[5..]
    }

    fn call() -> CallStamps<'static> {
        CallStamps {
            callee: "orders",
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        }
    }

    /// What a reader of the frame of `request` must see: its map with every stamp set.
    fn stamped(stamps: &Stamps, mut request: InternalInvokeRequest) -> InternalInvokeRequest {
        stamps.insert_into(&mut request.metadata);
        call().insert_into(&mut request.metadata);
        request
    }

    #[test]
    fn client_headers_in_the_frame_read_as_the_map_they_stand_for() {
        // Go-canonical and Dapr's own spellings, several values, a stamped name in each
        // spelling (the lower-case stamp replaces the client's; the canonical one does not
        // match the lower-case stamp, as in the map), hop-by-hop and skipped headers.
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "text/plain"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("traceparent", "00-client-span-01"),
            ("dapr-caller-app-id", "spoof"),
            ("x-forwarded-host", "client-host"),
            ("dapr-app-id", "orders"),
            ("connection", "keep-alive"),
        ] {
            headers.append(name, http::HeaderValue::from_static(value));
        }
        let skip = [names::DAPR_APP_ID];
        let client = ClientHeaders::new(headers, &skip);
        let stamps = stamps();
        let mut with_map = request();
        with_map.metadata = Metadata::new();
        client.clone().insert_into(&mut with_map.metadata);
        let mut without = request();
        without.metadata = Default::default();
        let frame_of = |request: InternalInvokeRequest, client: &ClientHeaders| {
            let mut message = InternalInvokeRequestStream {
                request: Some(request),
                payload: None,
            };
            let frame = stamps.stream_frame(&mut message, client, &call());
            InternalInvokeRequestStream::decode(body_of(&frame)).expect("decodes")
        };
        let by_map = frame_of(with_map, &ClientHeaders::default());
        let by_headers = frame_of(without, &client);
        assert_eq!(by_headers, by_map);
        let metadata = &by_headers.request.expect("a request").metadata;
        assert_eq!(metadata["X-Multi"].values, ["a", "b"]);
        assert_eq!(
            first(metadata, "traceparent"),
            Some(call().traceparent.as_str())
        );
        assert_eq!(first(metadata, "dapr-caller-app-id"), Some("checkout"));
        assert_eq!(first(metadata, "X-Forwarded-Host"), Some("client-host"));
        assert_eq!(first(metadata, "x-forwarded-host"), Some("node-1"));
        assert!(!metadata.contains_key("dapr-app-id") && !metadata.contains_key("Connection"));
        assert_eq!(client.first("traceparent"), Some("00-client-span-01"));
    }

    #[test]
    fn a_grpc_requests_invocation_and_metadata_frame_as_the_typed_request_does() {
        // gRPC metadata keeps its names as they came; the token and the transport's own
        // entries stay behind; a stamped name is the stamp's.
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "1S"),
            ("dapr-api-token", "secret"),
            ("user-agent", "grpc-python/1.66"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("dapr-caller-app-id", "spoof"),
            ("traceparent", "00-client-span-01"),
        ] {
            headers.append(name, http::HeaderValue::from_static(value));
        }
        let client = ClientHeaders::grpc(headers);
        let stamps = stamps();
        let invocation = request().message.expect("an invocation");
        let bytes = invocation.encode_to_vec();
        let framed = stamps.invoke_frame(Some(&bytes), &client, &call());
        let read = InternalInvokeRequest::decode(body_of(&framed)).expect("decodes");

        let mut typed = InternalInvokeRequest {
            ver: dapr_proto::internals::v1::ApiVersion::V1 as i32,
            message: Some(invocation),
            ..Default::default()
        };
        client.clone().insert_into(&mut typed.metadata);
        assert_eq!(read, stamped(&stamps, typed));
        let metadata = &read.metadata;
        assert_eq!(metadata["x-multi"].values, ["a", "b"]);
        assert_eq!(first(metadata, "user-agent"), Some("grpc-python/1.66"));
        assert_eq!(first(metadata, "dapr-caller-app-id"), Some("checkout"));
        for gone in ["content-type", "te", "grpc-timeout", "dapr-api-token"] {
            assert!(!metadata.contains_key(gone), "{gone}");
        }

        let bare = stamps.invoke_frame(None, &ClientHeaders::grpc(HeaderMap::new()), &call());
        let read = InternalInvokeRequest::decode(body_of(&bare)).expect("decodes");
        assert_eq!((read.ver, read.message), (1, None));
    }

    #[test]
    fn framed_requests_decode_with_the_stamps_in_their_metadata() {
        let stamps = stamps();
        let expected = stamped(&stamps, request());
        let mut sent = request();
        let unary = stamps.frame(&mut sent, &call());
        assert_eq!(sent, request(), "the request's own map is left as it was");
        assert_eq!(
            InternalInvokeRequest::decode(body_of(&unary)).expect("decodes"),
            expected
        );
        let payload = Some(StreamPayload {
            data: Bytes::from_static(b"hello"),
            seq: 0,
        });
        for (request_of, payload) in [
            (Some(request()), payload.clone()),
            (Some(request()), None),
            (None, payload),
        ] {
            let mut message = InternalInvokeRequestStream {
                request: request_of.clone(),
                payload: payload.clone(),
            };
            let frame = stamps.stream_frame(&mut message, &ClientHeaders::default(), &call());
            assert_eq!(message.request, request_of, "left as it was");
            let decoded = InternalInvokeRequestStream::decode(body_of(&frame)).expect("decodes");
            let expected = InternalInvokeRequestStream {
                request: request_of.is_some().then(|| expected.clone()),
                payload,
            };
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn map_entries_are_written_as_prost_writes_them() {
        // Several values, an empty name and an empty list (prost leaves both out of the entry),
        // multi-byte lengths: byte for byte what prost writes for the map, then for the call's
        // stamps. A request of only a map, so that no other field comes between them.
        let long = "v".repeat(300);
        let mut request = InternalInvokeRequest::default();
        set(&mut request.metadata, "content-type", "text/plain");
        request.metadata.insert(
            "x-many".into(),
            ListStringValue {
                values: vec!["a".into(), String::new(), long.clone()],
            },
        );
        request
            .metadata
            .insert(String::new(), ListStringValue::default());
        request.metadata.insert(long, ListStringValue::default());
        let mut only_call = InternalInvokeRequest::default();
        call().insert_into(&mut only_call.metadata);
        let mut expected = request.encode_to_vec();
        expected.extend(only_call.encode_to_vec());
        let frame = Stamps::new(Vec::new()).frame(&mut request.clone(), &call());
        assert_eq!(body_of(&frame), expected);
    }

    #[test]
    fn a_stamp_on_the_wire_replaces_what_a_client_sent_under_its_name() {
        let stamps = stamps();
        let mut spoofed = request();
        for name in [
            names::CALLER_APP_ID,
            names::CALLEE_APP_ID,
            names::TRACEPARENT,
        ] {
            set(&mut spoofed.metadata, name, "admin");
        }
        let before = spoofed.clone();
        let frame = stamps.frame(&mut spoofed, &call());
        let decoded = InternalInvokeRequest::decode(body_of(&frame)).expect("decodes");
        assert_eq!(decoded, stamped(&stamps, request()));
        assert_eq!(
            first(&decoded.metadata, names::CALLER_APP_ID),
            Some("checkout")
        );
        assert_eq!(
            first(&decoded.metadata, names::CALLEE_APP_ID),
            Some("orders")
        );
        // Only the stamps are on the wire, not what the client sent under their names.
        let admin = frame.windows(5).filter(|w| w == b"admin").count();
        assert_eq!(admin, 0, "the client's values are left out");
        assert_eq!(
            spoofed, before,
            "another attempt gets the request as the client sent it"
        );
    }
}
