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

/// `InternalInvokeResponse` as the callee answers: the app's status, its headers and its
/// content type. The fields an answer does not use (`trailers`) are not written.
#[derive(Debug)]
pub struct SentResponse {
    status: InvokeStatus,
    /// The headers that travel, each with its values that do.
    headers: HeaderEntries,
    spelling: Spelling,
    message: InvokeResponse,
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
        SentResponse {
            status,
            headers: headers.travelling(|name| name == http::header::CONTENT_TYPE),
            spelling,
            message,
        }
    }

    fn body_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, values)| entry_len(HEADERS, name.as_str(), values))
            .sum();
        message::encoded_len(STATUS, &self.status)
            + headers
            + message::encoded_len(MESSAGE, &self.message)
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
