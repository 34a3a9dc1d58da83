//! What the callee sends back written by hand: the head of a `CallLocalStream` answer
//! (`InternalInvokeResponseStream`) straight from the app's header map. Built with prost, each
//! header became a `String` for its name, one for each value and a `Vec`, in a map encoded once
//! and dropped (bench/notes.md, "the callee's response head written from the app's headers").

use bytes::BufMut;
use dapr_proto::common::v1::{InvokeResponse, StreamPayload};
use dapr_proto::internals::v1::Status as InvokeStatus;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len, message};

use super::encode::{Spelling, encode_entry, entry_len};
use super::metadata::{AppHeaders, HeaderEntries};

/// A message the internal server sends: written by its own code, or by prost.
pub trait Sent {
    fn encoded_len(&self) -> usize;
    fn encode(&self, buf: &mut impl BufMut);
}

impl<M: prost::Message> Sent for M {
    fn encoded_len(&self) -> usize {
        prost::Message::encoded_len(self)
    }

    fn encode(&self, buf: &mut impl BufMut) {
        self.encode_raw(buf);
    }
}

/// A gRPC app's `OnInvoke` request (`InvokeRequest`), written from the parts the callee read
/// in place ([`super::ReceivedInvocation`]) instead of copied into prost's `String`s and
/// `Vec`: the bytes prost writes for `InvokeRequest { method, data: Some(Any { type_url, value:
/// data }), content_type, http_extension: Some(HTTPExtension { verb, querystring }) }`
/// (a unit test compares them).
#[derive(Debug, Clone, Copy)]
pub struct SentInvocation<'a> {
    pub method: &'a str,
    pub type_url: &'a str,
    pub data: &'a [u8],
    pub content_type: &'a str,
    pub verb: i32,
    pub querystring: &'a str,
}

/// A string or bytes field's encoded length, as prost writes it: none when it is empty.
fn text_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        super::encode::string_len(tag, value)
    }
}

/// A string or bytes field, as prost writes it: nothing when it is empty.
fn encode_text(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if !value.is_empty() {
        super::encode::encode_string(tag, value, buf);
    }
}

impl SentInvocation<'_> {
    fn any_len(&self) -> usize {
        text_len(1, self.type_url.as_bytes()) + text_len(2, self.data)
    }

    fn extension_len(&self) -> usize {
        let verb = if self.verb == 0 {
            0
        } else {
            key_len(1) + encoded_len_varint(i64::from(self.verb) as u64)
        };
        verb + text_len(2, self.querystring.as_bytes())
    }
}

impl Sent for SentInvocation<'_> {
    fn encoded_len(&self) -> usize {
        let any = self.any_len();
        let extension = self.extension_len();
        text_len(1, self.method.as_bytes())
            + key_len(2)
            + encoded_len_varint(any as u64)
            + any
            + text_len(3, self.content_type.as_bytes())
            + key_len(4)
            + encoded_len_varint(extension as u64)
            + extension
    }

    fn encode(&self, buf: &mut impl BufMut) {
        encode_text(1, self.method.as_bytes(), buf);
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(self.any_len() as u64, buf);
        encode_text(1, self.type_url.as_bytes(), buf);
        encode_text(2, self.data, buf);
        encode_text(3, self.content_type.as_bytes(), buf);
        encode_key(4, WireType::LengthDelimited, buf);
        encode_varint(self.extension_len() as u64, buf);
        if self.verb != 0 {
            encode_key(1, WireType::Varint, buf);
            encode_varint(i64::from(self.verb) as u64, buf);
        }
        encode_text(2, self.querystring.as_bytes(), buf);
    }
}

/// `InternalInvokeResponse` as the callee answers: the app's status, its headers and its
/// content type. The fields an answer does not use (`trailers`) are not written.
#[derive(Debug)]
pub struct SentResponse {
    status: InvokeStatus,
    /// The headers that travel, each with its values that do.
    headers: HeaderEntries,
    spelling: Spelling,
    message: InvokeResponse,
    /// The encoded length, counted once: a streamed answer's head needs it twice (for the
    /// frame's length and for the head's own), and each count walks every header.
    body_len: usize,
}

/// `InternalInvokeResponse`'s field numbers.
const STATUS: u32 = 1;
const HEADERS: u32 = 2;
const MESSAGE: u32 = 4;

impl SentResponse {
    /// Takes the app's `headers`: all but hop-by-hop ones and `content-type` (which travels in
    /// `message`) travel, spelt as `spelling` says, with their values that are visible ASCII
    /// (a header with none does not travel), as `wire::headers_to_metadata` keeps them.
    pub fn new(
        status: InvokeStatus,
        headers: AppHeaders,
        spelling: Spelling,
        message: InvokeResponse,
    ) -> Self {
        let headers = headers.travelling(|name| name == http::header::CONTENT_TYPE);
        let header_len: usize = headers
            .iter()
            .map(|(name, values)| entry_len(HEADERS, name.as_str(), values))
            .sum();
        let body_len = message::encoded_len(STATUS, &status)
            + header_len
            + message::encoded_len(MESSAGE, &message);
        SentResponse {
            status,
            headers,
            spelling,
            message,
            body_len,
        }
    }

    fn body_len(&self) -> usize {
        self.body_len
    }
}

impl Sent for SentResponse {
    fn encoded_len(&self) -> usize {
        self.body_len()
    }

    fn encode(&self, buf: &mut impl BufMut) {
        message::encode(STATUS, &self.status, buf);
        for (name, values) in &self.headers {
            encode_entry(HEADERS, name.as_str(), self.spelling, values, buf);
        }
        message::encode(MESSAGE, &self.message, buf);
    }
}

/// `InternalInvokeResponseStream`: the head first, payloads after it.
#[derive(Debug, Default)]
pub struct SentResponseStream {
    pub head: Option<SentResponse>,
    pub payload: Option<StreamPayload>,
}

impl Sent for SentResponseStream {
    fn encoded_len(&self) -> usize {
        let head = self.head.as_ref().map_or(0, |head| {
            let n = head.body_len();
            key_len(1) + encoded_len_varint(n as u64) + n
        });
        head + self
            .payload
            .as_ref()
            .map_or(0, |p| message::encoded_len(2, p))
    }

    fn encode(&self, buf: &mut impl BufMut) {
        if let Some(head) = &self.head {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(head.body_len() as u64, buf);
            head.encode(buf);
        }
        if let Some(payload) = &self.payload {
            message::encode(2, payload, buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use dapr_proto::common::v1::{HttpExtension, InvokeRequest};
    use prost::Message;

    use super::*;

    #[test]
    fn an_invocation_is_written_as_prost_writes_its_invoke_request() {
        let cases = [
            (
                "orders/ü",
                "type.googleapis.com/x",
                &b"data"[..],
                "text/plain",
                3,
                "a=1",
            ),
            ("", "", &b""[..], "", 0, ""),
            ("m", "", &[0u8; 200][..], "", -1, ""),
        ];
        for (method, type_url, data, content_type, verb, querystring) in cases {
            let sent = SentInvocation {
                method,
                type_url,
                data,
                content_type,
                verb,
                querystring,
            };
            let typed = InvokeRequest {
                method: method.into(),
                data: Some(prost_types::Any {
                    type_url: type_url.into(),
                    value: data.to_vec(),
                }),
                content_type: content_type.into(),
                http_extension: Some(HttpExtension {
                    verb,
                    querystring: querystring.into(),
                }),
            };
            let mut written = Vec::new();
            sent.encode(&mut written);
            assert_eq!(written, typed.encode_to_vec(), "{method:?}");
            assert_eq!(Sent::encoded_len(&sent), written.len(), "{method:?}");
        }
    }
}
