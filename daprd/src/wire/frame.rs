//! gRPC message frames written by hand: the 5-byte prefix, requests with the caller's identity
//! stamped on once, and the `grpc-status` of a response.

use bytes::Bytes;
use dapr_proto::internals::v1::{InternalInvokeRequest, InternalInvokeRequestStream};
use http::HeaderMap;

use super::{Metadata, set};

/// Metadata entries encoded once, as `InternalInvokeRequest.metadata` entries on the wire, for
/// values that are the same on every call (the caller's identity): appended to each encoded
/// request instead of being inserted into, encoded from and dropped with its map every time.
/// A map entry that comes later on the wire replaces an earlier one of the same key (protobuf's
/// rule), but the names are taken out of the map anyway so that nothing says two things.
#[derive(Debug, Clone, Default)]
pub struct Stamps {
    entries: Vec<(&'static str, String)>,
    encoded: Bytes,
}

impl Stamps {
    pub fn new(entries: Vec<(&'static str, String)>) -> Self {
        let mut stamps = Stamps {
            entries,
            encoded: Bytes::new(),
        };
        let mut only = InternalInvokeRequest::default();
        stamps.insert_into(&mut only.metadata);
        stamps.encoded = prost::Message::encode_to_vec(&only).into();
        stamps
    }

    /// Sets every stamp in `metadata` (for requests that are not framed here).
    pub fn insert_into(&self, metadata: &mut Metadata) {
        for (name, value) in &self.entries {
            set(metadata, name, value);
        }
    }

    /// Takes the stamped names out of `metadata`: whatever a client sent under them.
    pub fn remove_from(&self, metadata: &mut Metadata) {
        for (name, _) in &self.entries {
            metadata.remove(*name);
        }
    }

    /// `request` as a gRPC message frame, the stamps appended to its metadata.
    pub fn frame(&self, request: &InternalInvokeRequest) -> Bytes {
        use prost::Message;
        let len = request.encoded_len() + self.encoded.len();
        let mut buf = frame_head(len);
        request.encode_raw(&mut buf);
        buf.extend_from_slice(&self.encoded);
        buf.freeze()
    }

    /// The first message of a `CallLocalStream` as a gRPC message frame, the stamps appended to
    /// its request's metadata.
    pub fn stream_frame(&self, message: &InternalInvokeRequestStream) -> Bytes {
        use prost::Message;
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
        let request_len = message
            .request
            .as_ref()
            .map(|r| r.encoded_len() + self.encoded.len());
        let payload_len = message
            .payload
            .as_ref()
            .map_or(0, |p| prost::encoding::message::encoded_len(2, p));
        let len = request_len.map_or(0, |n| key_len(1) + encoded_len_varint(n as u64) + n);
        let mut buf = frame_head(len + payload_len);
        if let (Some(request), Some(request_len)) = (&message.request, request_len) {
            encode_key(1, WireType::LengthDelimited, &mut buf);
            encode_varint(request_len as u64, &mut buf);
            request.encode_raw(&mut buf);
            buf.extend_from_slice(&self.encoded);
        }
        if let Some(payload) = &message.payload {
            prost::encoding::message::encode(2, payload, &mut buf);
        }
        buf.freeze()
    }
}

/// A buffer holding the 5-byte gRPC message prefix (not compressed, `len` bytes follow) with
/// room for the message.
pub fn frame_head(len: usize) -> bytes::BytesMut {
    use bytes::BufMut;
    let mut buf = bytes::BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    buf
}

/// The `grpc-status` of a response head (a trailers-only answer) or of its trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{first, names};
    use dapr_proto::common::v1::StreamPayload;

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

    #[test]
    fn framed_requests_decode_with_the_stamps_in_their_metadata() {
        use prost::Message;
        let stamps = stamps();
        let mut expected = request();
        stamps.insert_into(&mut expected.metadata);
        let unary = stamps.frame(&request());
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
            let message = InternalInvokeRequestStream {
                request: request_of.clone(),
                payload: payload.clone(),
            };
            let decoded =
                InternalInvokeRequestStream::decode(body_of(&stamps.stream_frame(&message)))
                    .expect("decodes");
            let expected = InternalInvokeRequestStream {
                request: request_of.is_some().then(|| expected.clone()),
                payload,
            };
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn a_stamp_on_the_wire_replaces_what_a_client_sent_under_its_name() {
        use prost::Message;
        let stamps = stamps();
        let mut spoofed = request();
        set(&mut spoofed.metadata, names::CALLER_APP_ID, "admin");
        let decoded =
            InternalInvokeRequest::decode(body_of(&stamps.frame(&spoofed))).expect("decodes");
        assert_eq!(
            first(&decoded.metadata, names::CALLER_APP_ID),
            Some("checkout")
        );
        stamps.remove_from(&mut spoofed.metadata);
        assert_eq!(first(&spoofed.metadata, names::CALLER_APP_ID), None);
        assert_eq!(first(&spoofed.metadata, "content-type"), Some("text/plain"));
    }
}
