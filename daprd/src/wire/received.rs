//! What a sidecar receives from another, read in place: the callee's `InternalInvokeRequest`
//! (`CallLocal`, and the head of `CallLocalStream`) and the caller's `InternalInvokeResponse`.
//!
//! prost's generated map decodes each metadata entry into a `String` per name and value and a
//! `Vec` per list: about 30 allocations and a tenth of the callee's instructions per call
//! (bench/notes.md, "the callee's metadata read in place"). Here the names and values stay
//! slices of the received message ([`ByteString`]); the invocation (`InvokeRequest`,
//! `InvokeResponse`), its status and the payload are decoded by prost as before.
//!
//! The reading follows the protobuf encoding (<https://protobuf.dev/programming-guides/encoding/>)
//! as prost's generated code does: unknown fields are skipped, a message field that comes twice
//! is merged, a map entry that comes twice is replaced by the last.

use bytes::Bytes;
use bytestring::ByteString;
use dapr_proto::common::v1::{InvokeRequest, InvokeResponse, StreamPayload};
use dapr_proto::internals::v1::Status;
use prost::Message;
use smallvec::SmallVec;
use tonic::codec::{DecodeBuf, Decoder};

/// The values of one metadata entry: nearly always one, kept inline.
pub type Values = SmallVec<[ByteString; 1]>;

/// Invocation metadata as received: names as the caller spelt them, one entry per name, values
/// in the caller's order.
///
/// A `Vec`, not a `BTreeMap`. A usual map (up to [`SCANNED_ENTRIES`] names) keeps its entries
/// in the order they came: a name that comes again replaces its entry where it is, and a lookup
/// scans. A larger one is sorted by name once per message ([`ReceivedMetadata::seal`]) and
/// searched, so a peer's thousands of entries cost O(n log n). A call's entries do not come in
/// name order (the client's headers, then the caller's stamps), and sorting them cost the callee
/// about 1k instructions per call (bench/notes.md, "the received metadata in the order it came").
#[derive(Debug, Default, Clone)]
pub struct ReceivedMetadata(Vec<(ByteString, Values)>);

/// As maps: the same names with the same values, in any order.
impl PartialEq for ReceivedMetadata {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .all(|(name, values)| other.get(name) == Some(values))
    }
}

/// Room made for a message's metadata at its first entry: a call's client headers and stamps.
const USUAL_ENTRIES: usize = 16;

/// Up to this many entries, [`ReceivedMetadata::get`] scans instead of searching.
const SCANNED_ENTRIES: usize = 32;

impl ReceivedMetadata {
    /// Where `name`'s entry is, or would go. A usual call's map is a dozen entries, where
    /// comparing lengths first and then the bytes of the one name that matches is cheaper than
    /// a binary search's ordered compares (`memcmp` calls, about 190 instructions a lookup); a
    /// larger map is sorted, and searched.
    fn find(&self, name: &str) -> Result<usize, usize> {
        if self.0.len() <= SCANNED_ENTRIES {
            return self
                .0
                .iter()
                .position(|(held, _)| held.len() == name.len() && **held == *name)
                .ok_or(self.0.len());
        }
        self.0.binary_search_by(|(held, _)| (**held).cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Values> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// Adds an entry for a name the map does not hold, at `at` (from [`Self::find`]). A map that
    /// grows past [`SCANNED_ENTRIES`] is sorted, to be searched from then on.
    fn insert(&mut self, at: usize, entry: (ByteString, Values)) {
        self.0.insert(at, entry);
        if self.0.len() == SCANNED_ENTRIES + 1 {
            self.0.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
    }

    /// The first value under `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|values| values.first())
            .map(|v| &**v)
    }

    /// The first value under the first of `spellings` the map has.
    pub fn first_of(&self, spellings: &[&str]) -> Option<&str> {
        spellings.iter().find_map(|name| self.first(name))
    }

    /// Whether the map holds exactly one value under `name`, and that is `value`.
    pub fn is_only(&self, name: &str, value: &str) -> bool {
        self.get(name)
            .is_some_and(|values| values.len() == 1 && values[0] == value)
    }

    /// Sets one value, replacing what the caller sent under that name. Names are Dapr's own, so
    /// a new entry's name costs no allocation.
    pub fn set(&mut self, name: &'static str, value: &str) {
        let value = Values::from_buf([ByteString::from(value)]);
        match self.find(name) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.insert(i, (ByteString::from_static(name), value)),
        }
    }

    /// Sets one value under the first of `spellings` the map has (else the first one), and
    /// removes the others: the map never holds the header twice, and keeps the caller's
    /// spelling. An entry that is already that one value (a caller's own content length,
    /// usually) is left as it is.
    pub fn set_as_spelt(&mut self, spellings: &[&'static str], value: &str) {
        let Some(&default) = spellings.first() else {
            return;
        };
        let name = spellings
            .iter()
            .copied()
            .find(|name| self.find(name).is_ok())
            .unwrap_or(default);
        for other in spellings {
            if *other != name
                && let Ok(i) = self.find(other)
            {
                self.0.remove(i);
            }
        }
        if !self.is_only(name, value) {
            self.set(name, value);
        }
    }

    /// Each name with its values: in the order they came in a usual map, by name in a larger
    /// one.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[ByteString])> {
        self.0
            .iter()
            .map(|(name, values)| (&**name, values.as_slice()))
    }

    /// The entries as headers for an app's HTTP request ([`super::entries_into_headers`]):
    /// each value becomes its header value without a copy.
    pub fn into_headers(self, headers: &mut http::HeaderMap) {
        let entries = self
            .0
            .into_iter()
            .map(|(name, values)| (name, values.into_iter().map(ByteString::into_bytes)));
        super::entries_into_headers(entries, headers);
    }

    /// The entries as gRPC metadata for a gRPC app's `OnInvoke`
    /// ([`super::metadata_to_grpc_headers`]): each value becomes its header value without a
    /// copy.
    pub fn into_grpc_headers(self, headers: &mut http::HeaderMap) {
        let entries = self
            .0
            .into_iter()
            .map(|(name, values)| (name, values.into_iter().map(ByteString::into_bytes)));
        super::metadata_to_grpc_headers(entries, headers);
    }

    /// The entries, each name with its values.
    pub fn into_entries(self) -> impl Iterator<Item = (ByteString, Values)> {
        self.0.into_iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A map prost decoded (a unary `CallLocal`'s answer): each `String` becomes its
/// [`ByteString`] without a copy.
impl From<super::Metadata> for ReceivedMetadata {
    fn from(metadata: super::Metadata) -> Self {
        ReceivedMetadata(
            metadata
                .into_iter()
                .map(|(name, list)| {
                    let values = list.values.into_iter().map(ByteString::from);
                    (ByteString::from(name), values.collect())
                })
                .collect(),
        )
    }
}

/// An `InternalInvokeRequest` as the callee reads it. Its `ver` and `actor` are not read:
/// service invocation has one version, and actors are not served here.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReceivedRequest {
    pub metadata: ReceivedMetadata,
    pub message: Option<ReceivedInvocation>,
}

/// An `InvokeRequest` as the callee reads it: its strings and its data are slices of the
/// received message (prost allocated each string and copied the data into a `Vec`; bench/notes.md,
/// "the callee's invocation read in place"). Its `data` (an `Any`) and `http_extension` are
/// flattened: nothing here tells an absent one from an empty one, as nothing upstream does.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReceivedInvocation {
    pub method: ByteString,
    /// `data.type_url`.
    pub type_url: ByteString,
    /// `data.value`.
    pub data: Bytes,
    pub content_type: ByteString,
    /// `http_extension.verb`.
    pub verb: i32,
    /// `http_extension.querystring`.
    pub querystring: ByteString,
}

impl Received for ReceivedInvocation {
    /// Reads the fields as prost decodes them (wire types, UTF-8 strings), a message field that
    /// comes twice merged into what was read.
    fn merge_from(&mut self, message: &Bytes, mut part: &[u8]) -> Result<(), DecodeError> {
        while !part.is_empty() {
            match field(&mut part)? {
                (1, Value::Delimited(text)) => {
                    self.method = string(message, text, "InvokeRequest.method")?;
                }
                (2, Value::Delimited(mut any)) => {
                    // `google.protobuf.Any`: `type_url` (1, a string), `value` (2, bytes).
                    while !any.is_empty() {
                        match field(&mut any)? {
                            (1, Value::Delimited(text)) => {
                                self.type_url = string(message, text, "Any.type_url")?;
                            }
                            (2, Value::Delimited(value)) => self.data = message.slice_ref(value),
                            (field @ (1 | 2), value) => return Err(value.unexpected(field)),
                            _ => {}
                        }
                    }
                }
                (3, Value::Delimited(text)) => {
                    self.content_type = string(message, text, "InvokeRequest.content_type")?;
                }
                (4, Value::Delimited(mut extension)) => {
                    // `HTTPExtension`: `verb` (1, an enum), `querystring` (2, a string).
                    while !extension.is_empty() {
                        match field(&mut extension)? {
                            // An `int32` as protobuf reads it: the varint's low 32 bits.
                            (1, Value::Varint(verb)) => self.verb = verb as i32,
                            (2, Value::Delimited(text)) => {
                                self.querystring =
                                    string(message, text, "HTTPExtension.querystring")?;
                            }
                            (field @ (1 | 2), value) => return Err(value.unexpected(field)),
                            _ => {}
                        }
                    }
                }
                (field @ 1..=4, value @ (Value::Varint(_) | Value::Scalar(_))) => {
                    return Err(value.unexpected(field));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl From<InvokeRequest> for ReceivedInvocation {
    fn from(request: InvokeRequest) -> Self {
        let data = request.data.unwrap_or_default();
        let extension = request.http_extension.unwrap_or_default();
        ReceivedInvocation {
            method: request.method.into(),
            type_url: data.type_url.into(),
            data: data.value.into(),
            content_type: request.content_type.into(),
            verb: extension.verb,
            querystring: extension.querystring.into(),
        }
    }
}

/// A `Dapr/InvokeService` request (`InvokeServiceRequest`) as the gRPC API reads it: the
/// target's id, and the invocation (`InvokeRequest`, its field 3) kept as its bytes, a slice of
/// the received message. They go to the peer unchanged, as `InternalInvokeRequest`'s field 3,
/// instead of being decoded by prost (the data copied into a `Vec`, each string allocated) and
/// encoded again (bench/notes.md, "InvokeService read and framed in place"). They are checked
/// as the callee reads them ([`ReceivedInvocation`]), and the invocation's `method` is read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReceivedInvokeService {
    pub id: ByteString,
    /// The invocation's encoding, `None` when the request has none.
    pub message: Option<Bytes>,
    /// The invocation's `method`.
    pub method: ByteString,
}

impl Received for ReceivedInvokeService {
    fn merge_from(&mut self, message: &Bytes, mut part: &[u8]) -> Result<(), DecodeError> {
        while !part.is_empty() {
            match field(&mut part)? {
                (1, Value::Delimited(text)) => self.id = string(message, text, "id")?,
                (3, Value::Delimited(invocation)) => {
                    // A message field that comes twice is merged: one encoding after the other.
                    self.message = Some(match self.message.take() {
                        None => message.slice_ref(invocation),
                        Some(held) => [&held[..], invocation].concat().into(),
                    });
                }
                (field @ (1 | 3), value) => return Err(value.unexpected(field)),
                _ => {}
            }
        }
        if let Some(invocation) = &self.message {
            // Checked as the callee reads it (which is as prost decodes it).
            self.method = ReceivedInvocation::decode(invocation.clone())?.method;
        }
        Ok(())
    }
}

/// An `InternalInvokeResponse` as the caller reads it. Its `trailers` are not read: nothing
/// passes a peer's trailers on (an HTTP API answer has none, and the gRPC API answers with the
/// headers).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReceivedResponse {
    pub status: Option<Status>,
    pub headers: ReceivedMetadata,
    pub message: Option<InvokeResponse>,
}

impl ReceivedResponse {
    /// The app's status: an HTTP status, a gRPC code (0-16), or 200 when the peer sent none.
    pub fn code(&self) -> i32 {
        self.status.as_ref().map_or(200, |s| s.code)
    }
}

/// A unary `CallLocal`'s answer, as prost decoded it.
impl From<dapr_proto::internals::v1::InternalInvokeResponse> for ReceivedResponse {
    fn from(response: dapr_proto::internals::v1::InternalInvokeResponse) -> Self {
        ReceivedResponse {
            status: response.status,
            headers: response.headers.into(),
            message: response.message,
        }
    }
}

/// A message of a `CallLocalStream` (`InternalInvokeRequestStream` or
/// `InternalInvokeResponseStream`): the first carries the head (field 1), any may carry a
/// payload (field 2).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StreamMessage<H> {
    pub head: Option<H>,
    pub payload: Option<StreamPayload>,
}

/// The callee's request stream.
pub type ReceivedStreamMessage = StreamMessage<ReceivedRequest>;
/// The caller's response stream.
pub type ReceivedResponseStream = StreamMessage<ReceivedResponse>;

/// Why a received message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message ends inside a field")]
    Truncated,
    #[error("varint longer than 64 bits")]
    Varint,
    #[error("field number 0")]
    FieldZero,
    #[error("field {field} has wire type {wire_type}, which this message does not use there")]
    WireType { field: u32, wire_type: u8 },
    #[error("{what} is not UTF-8")]
    Utf8 {
        what: &'static str,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error(transparent)]
    Prost(#[from] prost::DecodeError),
}

/// A message the callee reads from its whole encoding.
pub trait Received: Sized + Default {
    /// Reads `part`, a slice of `message`, into `self`, as protobuf merges a message into what
    /// it already holds. What is kept shares `message`'s storage.
    fn merge_from(&mut self, message: &Bytes, part: &[u8]) -> Result<(), DecodeError>;

    fn decode(message: Bytes) -> Result<Self, DecodeError> {
        let mut read = Self::default();
        read.merge_from(&message, &message)?;
        Ok(read)
    }
}

/// Any prost message, read by [`super::Messages`] as the messages above are: an app's
/// `OnInvoke` answer, with the status its trailers carry checked the same way.
#[derive(Debug, Default)]
pub struct Decoded<M>(pub M);

impl<M: Message + Default> Received for Decoded<M> {
    fn merge_from(&mut self, message: &Bytes, part: &[u8]) -> Result<(), DecodeError> {
        self.0.merge(message.slice_ref(part))?;
        Ok(())
    }
}

impl<H: Received> Received for StreamMessage<H> {
    fn merge_from(&mut self, message: &Bytes, mut part: &[u8]) -> Result<(), DecodeError> {
        while !part.is_empty() {
            match field(&mut part)? {
                (1, Value::Delimited(head)) => {
                    self.head
                        .get_or_insert_default()
                        .merge_from(message, head)?;
                }
                (2, Value::Delimited(payload)) => {
                    // The payload's data is a slice of the message, not a copy.
                    let payload_bytes = message.slice_ref(payload);
                    self.payload.get_or_insert_default().merge(payload_bytes)?;
                }
                (field @ (1 | 2), value) => return Err(value.unexpected(field)),
                _ => {}
            }
        }
        Ok(())
    }
}

impl Received for ReceivedRequest {
    fn merge_from(&mut self, message: &Bytes, mut part: &[u8]) -> Result<(), DecodeError> {
        while !part.is_empty() {
            match field(&mut part)? {
                (2, Value::Delimited(entry)) => self.metadata.merge_entry(message, entry)?,
                (3, Value::Delimited(invocation)) => {
                    self.message
                        .get_or_insert_default()
                        .merge_from(message, invocation)?;
                }
                (field @ (2 | 3), value) => return Err(value.unexpected(field)),
                _ => {}
            }
        }
        self.metadata.seal();
        Ok(())
    }
}

impl Received for ReceivedResponse {
    fn merge_from(&mut self, message: &Bytes, mut part: &[u8]) -> Result<(), DecodeError> {
        while !part.is_empty() {
            match field(&mut part)? {
                (1, Value::Delimited(status)) => {
                    self.status.get_or_insert_default().merge(status)?;
                }
                (2, Value::Delimited(entry)) => self.headers.merge_entry(message, entry)?,
                (4, Value::Delimited(answer)) => {
                    self.message.get_or_insert_default().merge(answer)?;
                }
                (field @ 1..=4, value @ (Value::Varint(_) | Value::Scalar(_))) => {
                    return Err(value.unexpected(field));
                }
                _ => {}
            }
        }
        self.headers.seal();
        Ok(())
    }
}

/// tonic's decoder for a [`Received`] message: its bytes are taken from tonic's buffer without
/// a copy, so what the message keeps shares them.
pub struct ReceivedDecoder<D>(std::marker::PhantomData<fn() -> D>);

impl<D> Default for ReceivedDecoder<D> {
    fn default() -> Self {
        ReceivedDecoder(std::marker::PhantomData)
    }
}

impl<D: Received + Send + 'static> Decoder for ReceivedDecoder<D> {
    type Item = D;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, tonic::Status> {
        use bytes::Buf;
        let message = buf.copy_to_bytes(buf.remaining());
        // As prost's decoder answers a message it cannot read.
        D::decode(message)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl ReceivedMetadata {
    /// One map entry (`key` = 1, `value` = 2, a `ListStringValue` of `values` = 1), a slice of
    /// `message`; it replaces an entry of the same name, as a protobuf map keeps the last: here
    /// in a usual map, at [`Self::seal`] in a larger one.
    fn merge_entry(&mut self, message: &Bytes, mut entry: &[u8]) -> Result<(), DecodeError> {
        let mut name = ByteString::new();
        let mut values = Values::new();
        while !entry.is_empty() {
            match field(&mut entry)? {
                (1, Value::Delimited(text)) => name = string(message, text, "metadata name")?,
                (2, Value::Delimited(mut list)) => {
                    while !list.is_empty() {
                        match field(&mut list)? {
                            (1, Value::Delimited(text)) => {
                                values.push(string(message, text, "metadata value")?);
                            }
                            (1, value) => return Err(value.unexpected(1)),
                            _ => {}
                        }
                    }
                }
                (field @ (1 | 2), value) => return Err(value.unexpected(field)),
                _ => {}
            }
        }
        // Looked for while the map is usual (scanned); a later push makes it larger, and
        // [`Self::seal`] sorts it.
        if self.0.len() < SCANNED_ENTRIES
            && let Ok(i) = self.find(&name)
        {
            self.0[i].1 = values;
            return Ok(());
        }
        if self.0.capacity() == 0 {
            // One allocation for a usual call's entries (about a dozen), not one per doubling.
            self.0.reserve(USUAL_ENTRIES);
        }
        self.0.push((name, values));
        Ok(())
    }

    /// Restores a larger map's order and uniqueness after [`Self::merge_entry`]'s pushes: sorted
    /// by name, the last entry of a name kept, as a protobuf map keeps the last. The sort is
    /// stable (a name's entries stay in arrival order) and takes linear time on input already
    /// in order; a hostile peer's unordered map costs O(n log n), as the B-tree did. A usual
    /// map's names are unique already, and their order is free.
    fn seal(&mut self) {
        if self.0.len() <= SCANNED_ENTRIES || self.0.is_sorted_by(|a, b| a.0 < b.0) {
            return;
        }
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        // `dedup_by` keeps the first of a run: move each later entry into the kept slot.
        self.0.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
    }
}

/// `text`, a slice of `message`, as a string that shares `message`'s storage.
#[inline(always)]
fn string(message: &Bytes, text: &[u8], what: &'static str) -> Result<ByteString, DecodeError> {
    ByteString::try_from(message.slice_ref(text))
        .map_err(|source| DecodeError::Utf8 { what, source })
}

/// A field's value, by its wire type. Only length-delimited values are kept: the fields read
/// here are all strings or messages.
enum Value<'a> {
    Delimited(&'a [u8]),
    /// A varint, fixed 32 or fixed 64 bit value (skipped), by its wire type.
    Scalar(u8),
    /// A varint, with its value.
    Varint(u64),
}

impl Value<'_> {
    fn unexpected(&self, field: u32) -> DecodeError {
        let wire_type = match self {
            Value::Delimited(_) => 2,
            Value::Scalar(wire_type) => *wire_type,
            Value::Varint(_) => 0,
        };
        DecodeError::WireType { field, wire_type }
    }
}

/// Reads one field from the front of `buf`: its number and value. Groups (wire types 3 and 4,
/// unused by proto3) are refused, as is any other unknown wire type.
#[inline(always)]
fn field<'a>(buf: &mut &'a [u8]) -> Result<(u32, Value<'a>), DecodeError> {
    let key = varint(buf)?;
    let number = u32::try_from(key >> 3).map_err(|_| DecodeError::Varint)?;
    if number == 0 {
        return Err(DecodeError::FieldZero);
    }
    let wire_type = (key & 7) as u8;
    let value = match wire_type {
        0 => Value::Varint(varint(buf)?),
        1 => {
            take(buf, 8)?;
            Value::Scalar(1)
        }
        5 => {
            take(buf, 4)?;
            Value::Scalar(5)
        }
        2 => {
            let len = usize::try_from(varint(buf)?).map_err(|_| DecodeError::Truncated)?;
            Value::Delimited(take(buf, len)?)
        }
        _ => {
            return Err(DecodeError::WireType {
                field: number,
                wire_type,
            });
        }
    };
    Ok((number, value))
}

/// The next `len` bytes of `buf`.
#[inline(always)]
fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], DecodeError> {
    let Some((taken, rest)) = buf.split_at_checked(len) else {
        return Err(DecodeError::Truncated);
    };
    *buf = rest;
    Ok(taken)
}

/// A base-128 varint of at most 10 bytes (64 bits), from the front of `buf`.
#[inline(always)]
fn varint(buf: &mut &[u8]) -> Result<u64, DecodeError> {
    // Most are one byte: every key, and the length of every name and value under 128 bytes.
    if let Some((&byte, rest)) = buf.split_first()
        && byte < 0x80
    {
        *buf = rest;
        return Ok(u64::from(byte));
    }
    let mut value = 0u64;
    for (i, &byte) in buf.iter().take(10).enumerate() {
        // The tenth byte holds the 64th bit only.
        if i == 9 && byte > 1 {
            return Err(DecodeError::Varint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    Err(if buf.len() < 10 {
        DecodeError::Truncated
    } else {
        DecodeError::Varint
    })
}

#[cfg(test)]
mod tests {
    use dapr_proto::common::v1::{HttpExtension, InvokeRequest, StreamPayload};
    use dapr_proto::internals::v1::{
        Actor, InternalInvokeRequest, InternalInvokeRequestStream, ListStringValue,
    };

    use super::*;

    #[test]
    fn an_invoke_service_request_keeps_its_invocation_as_bytes_and_reads_its_method() {
        use dapr_proto::runtime::v1::InvokeServiceRequest;
        let invocation = InvokeRequest {
            method: "orders/ünïcode".into(),
            data: Some(prost_types::Any {
                type_url: "type.googleapis.com/x".into(),
                value: vec![0xff; 300],
            }),
            content_type: "application/json".into(),
            http_extension: Some(HttpExtension {
                verb: 2,
                querystring: "a=1".into(),
            }),
        };
        let request = InvokeServiceRequest {
            id: "orders.prod".into(),
            message: Some(invocation.clone()),
        };
        let read = ReceivedInvokeService::decode(request.encode_to_vec().into()).expect("reads");
        assert_eq!(&*read.id, "orders.prod");
        assert_eq!(&*read.method, "orders/ünïcode");
        let bytes = read.message.expect("the invocation");
        assert_eq!(bytes, invocation.encode_to_vec());
        assert_eq!(InvokeRequest::decode(bytes).expect("decodes"), invocation);

        let none = InvokeServiceRequest {
            id: "orders".into(),
            message: None,
        };
        let read = ReceivedInvokeService::decode(none.encode_to_vec().into()).expect("reads");
        assert_eq!((read.message, &*read.method), (None, ""));
    }

    #[test]
    fn an_invocation_prost_refuses_is_refused_and_one_it_reads_is_read() {
        use dapr_proto::runtime::v1::InvokeServiceRequest;
        // InvokeServiceRequest { id: "a", message: <invocation> }, by hand.
        let request = |invocation: &[u8]| {
            let mut bytes = vec![0x0a, 1, b'a', 0x1a, invocation.len() as u8];
            bytes.extend_from_slice(invocation);
            Bytes::from(bytes)
        };
        let cases: [(&str, &[u8]); 9] = [
            ("method not UTF-8", &[0x0a, 1, 0xff]),
            ("method as a varint", &[0x08, 1]),
            ("Any.type_url not UTF-8", &[0x12, 3, 0x0a, 1, 0xff]),
            ("Any.value as a varint", &[0x12, 2, 0x10, 1]),
            ("content_type not UTF-8", &[0x1a, 1, 0xc3]),
            ("querystring not UTF-8", &[0x22, 3, 0x12, 1, 0xff]),
            ("verb as a string", &[0x22, 3, 0x0a, 1, b'x']),
            ("a truncated field", &[0x0a, 5, b'x']),
            (
                "unknown fields, an enum value unknown",
                &[0x2a, 1, 0, 0x22, 2, 0x08, 99],
            ),
        ];
        for (what, invocation) in cases {
            let bytes = request(invocation);
            let ours = ReceivedInvokeService::decode(bytes.clone()).is_ok();
            let prost = InvokeServiceRequest::decode(bytes).is_ok();
            assert_eq!(ours, prost, "{what}: read {ours}, prost {prost}");
        }
    }

    fn list(values: &[&str]) -> ListStringValue {
        ListStringValue {
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    fn request() -> InternalInvokeRequest {
        let mut metadata = super::super::Metadata::new();
        metadata.insert("Content-Type".into(), list(&["text/plain"]));
        metadata.insert("X-Multi".into(), list(&["a", "b", "ü"]));
        metadata.insert("dapr-caller-app-id".into(), list(&["checkout"]));
        metadata.insert("empty".into(), list(&[]));
        InternalInvokeRequest {
            ver: 1,
            metadata,
            message: Some(InvokeRequest {
                method: "orders/1".into(),
                data: Some(prost_types::Any {
                    type_url: "type.googleapis.com/x".into(),
                    value: b"data".to_vec(),
                }),
                content_type: "text/plain".into(),
                http_extension: Some(HttpExtension {
                    verb: 3,
                    querystring: "a=1".into(),
                }),
            }),
            actor: Some(Actor {
                actor_type: "t".into(),
                actor_id: "i".into(),
            }),
        }
    }

    fn expected(request: &InternalInvokeRequest) -> ReceivedRequest {
        ReceivedRequest {
            metadata: ReceivedMetadata::from(request.metadata.clone()),
            message: request.message.clone().map(ReceivedInvocation::from),
        }
    }

    #[test]
    fn a_request_reads_as_prost_decodes_it() {
        let request = request();
        let read = ReceivedRequest::decode(request.encode_to_vec().into()).expect("decodes");
        assert_eq!(read, expected(&request));
        assert_eq!(read.metadata.first("X-Multi"), Some("a"));
        assert_eq!(read.metadata.iter().nth(1).map(|(_, v)| v.len()), Some(3));
        assert_eq!(read.metadata.first("empty"), None);
        assert_eq!(read.metadata.len(), 4);
    }

    #[test]
    fn a_stream_message_reads_as_prost_decodes_it_and_its_payload_shares_the_buffer() {
        let request = request();
        let message = InternalInvokeRequestStream {
            request: Some(request.clone()),
            payload: Some(StreamPayload {
                data: Bytes::from_static(b"payload"),
                seq: 7,
            }),
        };
        let buf = Bytes::from(message.encode_to_vec());
        let range = buf.as_ptr_range();
        let read = ReceivedStreamMessage::decode(buf.clone()).expect("decodes");
        assert_eq!(read.head, Some(expected(&request)));
        let payload = read.payload.expect("payload");
        assert_eq!((&payload.data[..], payload.seq), (&b"payload"[..], 7));
        let name = read.head.as_ref().and_then(|r| r.metadata.iter().next());
        let name = name.expect("an entry").0;
        assert!(
            range.contains(&name.as_ptr()),
            "the name is a slice of the message"
        );
        // A later message carries only a payload.
        let later = InternalInvokeRequestStream {
            request: None,
            payload: Some(StreamPayload {
                data: Bytes::from_static(b"more"),
                seq: 8,
            }),
        };
        let read = ReceivedStreamMessage::decode(later.encode_to_vec().into()).expect("decodes");
        assert_eq!(read.head, None);
        assert_eq!(read.payload.map(|p| p.seq), Some(8));
    }

    #[test]
    fn a_repeated_entry_replaces_the_first_and_a_repeated_message_is_merged_as_prost_does() {
        let mut first = InternalInvokeRequest::default();
        first.metadata.insert("x".into(), list(&["1", "2"]));
        first.message = Some(InvokeRequest {
            method: "m".into(),
            ..Default::default()
        });
        let mut second = InternalInvokeRequest::default();
        second.metadata.insert("x".into(), list(&["3"]));
        second.message = Some(InvokeRequest {
            content_type: "text/plain".into(),
            ..Default::default()
        });
        let mut both = first.encode_to_vec();
        both.extend(second.encode_to_vec());
        let by_prost = InternalInvokeRequest::decode(&both[..]).expect("prost decodes");
        let read = ReceivedRequest::decode(both.into()).expect("decodes");
        assert_eq!(read, expected(&by_prost));
        assert_eq!(read.metadata.first("x"), Some("3"));
        let message = read.message.expect("message");
        assert_eq!(
            (&*message.method, &*message.content_type),
            ("m", "text/plain")
        );
    }

    #[test]
    fn entries_out_of_order_and_repeated_read_as_prost_decodes_them() {
        // prost writes a map in name order; a Go peer writes it in any order. Each entry is
        // encoded on its own, as a one-entry map, and the encodings concatenated.
        let names = ["m", "b", "z", "a", "b", "q", "a", "c", "m"];
        let mut bytes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut one = InternalInvokeRequest::default();
            one.metadata.insert((*name).into(), list(&[&i.to_string()]));
            bytes.extend(one.encode_to_vec());
        }
        let by_prost = InternalInvokeRequest::decode(&bytes[..]).expect("prost decodes");
        let read = ReceivedRequest::decode(bytes.into()).expect("decodes");
        assert_eq!(read, expected(&by_prost));
        // A usual map keeps the order its names first came in.
        let order: Vec<&str> = read.metadata.iter().map(|(name, _)| name).collect();
        assert_eq!(order, ["m", "b", "z", "a", "q", "c"]);
        // The last of a repeated name wins.
        assert_eq!(read.metadata.first("a"), Some("6"));
        assert_eq!(read.metadata.first("b"), Some("4"));
        assert_eq!(read.metadata.first("m"), Some("8"));
    }

    #[test]
    fn a_larger_map_out_of_order_and_repeated_reads_as_prost_decodes_it_and_is_searched() {
        // Names repeated on both sides of the point where a map stops being scanned, and past
        // it: the last value of each wins, as prost keeps it.
        let names: Vec<String> = (0..3 * SCANNED_ENTRIES)
            .map(|i| format!("x-{:03}", (i * 7) % (SCANNED_ENTRIES + 5)))
            .collect();
        let mut bytes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let mut one = InternalInvokeRequest::default();
            one.metadata.insert(name.clone(), list(&[&i.to_string()]));
            bytes.extend(one.encode_to_vec());
        }
        let by_prost = InternalInvokeRequest::decode(&bytes[..]).expect("prost decodes");
        let read = ReceivedRequest::decode(bytes.into()).expect("decodes");
        assert_eq!(read, expected(&by_prost));
        assert_eq!(read.metadata.len(), SCANNED_ENTRIES + 5);
        for (name, list) in &by_prost.metadata {
            assert_eq!(
                read.metadata.first(name),
                Some(list.values[0].as_str()),
                "{name}"
            );
        }
        let order: Vec<&str> = read.metadata.iter().map(|(name, _)| name).collect();
        assert!(order.is_sorted(), "a larger map is kept in name order");

        // A usual map that a set makes larger is sorted then, and found either way.
        let mut usual: ReceivedMetadata = (0..SCANNED_ENTRIES)
            .map(|i| (format!("y-{i:03}"), list(&["v"])))
            .rev()
            .collect::<crate::wire::Metadata>()
            .into();
        usual.0.reverse();
        usual.set("a-first", "1");
        assert_eq!(usual.len(), SCANNED_ENTRIES + 1);
        let order: Vec<&str> = usual.iter().map(|(name, _)| name).collect();
        assert!(order.is_sorted());
        assert_eq!(usual.first("a-first"), Some("1"));
        assert_eq!(usual.first("y-000"), Some("v"));
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut buf = request().encode_to_vec();
        // field 9: varint 300, fixed64, length-delimited "abc", fixed32
        buf.extend([9 << 3, 0xac, 0x02]);
        buf.extend([(9 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        buf.extend([(9 << 3) | 2, 3, b'a', b'b', b'c']);
        buf.extend([(9 << 3) | 5, 1, 2, 3, 4]);
        let read = ReceivedRequest::decode(buf.into()).expect("decodes");
        assert_eq!(read, expected(&request()));
    }

    #[test]
    fn malformed_messages_are_refused_with_the_reason() {
        let whole = request().encode_to_vec();
        for cut in 1..whole.len() {
            let read = ReceivedRequest::decode(Bytes::copy_from_slice(&whole[..cut]));
            // Some cuts end on a field boundary; the others must fail, none may panic.
            if let Err(e) = read {
                assert!(
                    matches!(e, DecodeError::Truncated | DecodeError::Prost(_)),
                    "{e}"
                );
            }
        }
        let cases: [(&[u8], &str); 5] = [
            (&[0x12, 0x02, 0x0a], "message ends inside a field"),
            (&[0x10, 0x01], "field 2 has wire type 0"),
            (&[0x0b], "field 1 has wire type 3"),
            (&[0x00], "field number 0"),
            (&[0xff; 11], "varint longer than 64 bits"),
        ];
        for (buf, reason) in cases {
            let e = ReceivedRequest::decode(Bytes::from_static(buf)).expect_err("refused");
            assert!(e.to_string().starts_with(reason), "{e}");
        }
        // An entry whose name is not UTF-8.
        let entry: &[u8] = &[0x12, 0x04, 0x0a, 0x02, 0xc3, 0x28];
        let e = ReceivedRequest::decode(Bytes::from_static(entry)).expect_err("refused");
        assert_eq!(e.to_string(), "metadata name is not UTF-8");
    }

    #[test]
    fn varints_read_as_prost_encodes_them() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut encoded = Vec::new();
            prost::encoding::encode_varint(value, &mut encoded);
            encoded.push(0xaa);
            let mut buf = &encoded[..];
            assert_eq!(varint(&mut buf).expect("a varint"), value);
            assert_eq!(buf, &[0xaa], "{value}: the rest is left");
            let mut cut = &encoded[..encoded.len() - 2];
            assert!(varint(&mut cut).is_err(), "{value} cut short");
        }
    }

    #[test]
    fn a_response_stream_reads_as_prost_decodes_it_without_its_trailers() {
        use dapr_proto::common::v1::InvokeResponse;
        use dapr_proto::internals::v1::{InternalInvokeResponse, InternalInvokeResponseStream};
        let mut headers = super::super::Metadata::new();
        headers.insert("Content-Length".into(), list(&["7"]));
        headers.insert("X-Multi".into(), list(&["a", "b"]));
        let mut trailers = super::super::Metadata::new();
        trailers.insert("grpc-status".into(), list(&["0"]));
        let response = InternalInvokeResponse {
            status: Some(Status {
                code: 404,
                message: "not found".into(),
                details: Vec::new(),
            }),
            headers,
            trailers,
            message: Some(InvokeResponse {
                data: Some(prost_types::Any {
                    type_url: "type.googleapis.com/x".into(),
                    value: Vec::new(),
                }),
                content_type: "application/json".into(),
            }),
        };
        let message = InternalInvokeResponseStream {
            response: Some(response.clone()),
            payload: Some(StreamPayload {
                data: Bytes::from_static(b"payload"),
                seq: 0,
            }),
        };
        let read = ReceivedResponseStream::decode(message.encode_to_vec().into()).expect("reads");
        let head = read.head.expect("head");
        assert_eq!(
            head,
            ReceivedResponse::from(InternalInvokeResponse {
                trailers: Default::default(),
                ..response
            })
        );
        assert_eq!(head.code(), 404);
        assert_eq!(
            head.headers.first_of(&super::super::CONTENT_LENGTH),
            Some("7")
        );
        assert_eq!(
            read.payload.map(|p| p.data),
            Some(Bytes::from_static(b"payload"))
        );
        assert_eq!(ReceivedResponse::default().code(), 200);
        // A scalar where the status message should be is refused.
        let e = ReceivedResponse::decode(Bytes::from_static(&[0x08, 0x01])).expect_err("refused");
        assert!(e.to_string().starts_with("field 1 has wire type 0"), "{e}");
    }

    #[test]
    fn content_length_is_found_and_set_in_either_spelling() {
        use super::super::{CONTENT_LENGTH, Metadata};
        use dapr_proto::internals::v1::ListStringValue;
        let values = |md: &ReceivedMetadata, name: &str| -> Vec<String> {
            md.iter()
                .filter(|(n, _)| *n == name)
                .flat_map(|(_, values)| values.iter().map(ToString::to_string))
                .collect()
        };
        let mut md = ReceivedMetadata::default();
        md.set("Content-Length", "5");
        assert_eq!(md.first_of(&CONTENT_LENGTH), Some("5"));
        md.set_as_spelt(&CONTENT_LENGTH, "7");
        assert_eq!(md.len(), 1);
        assert_eq!(md.first("Content-Length"), Some("7"));
        let mut md = ReceivedMetadata::default();
        md.set("content-length", "5");
        assert_eq!(md.first_of(&CONTENT_LENGTH), Some("5"));
        md.set("Content-Length", "6");
        md.set_as_spelt(&CONTENT_LENGTH, "7");
        assert_eq!(md.len(), 1);
        assert_eq!(md.first("content-length"), Some("7"));
        let mut two = Metadata::new();
        two.insert(
            "Content-Length".to_owned(),
            ListStringValue {
                values: vec!["7".to_owned(), "8".to_owned()],
            },
        );
        let mut md = ReceivedMetadata::from(two);
        md.set_as_spelt(&CONTENT_LENGTH, "7");
        assert_eq!(values(&md, "Content-Length"), ["7"]);
        md.set_as_spelt(&CONTENT_LENGTH, "7");
        assert_eq!(values(&md, "Content-Length"), ["7"]);
        assert_eq!(md.len(), 1);
        let mut md = ReceivedMetadata::default();
        assert_eq!(md.first_of(&CONTENT_LENGTH), None);
        md.set_as_spelt(&CONTENT_LENGTH, "1");
        assert_eq!(md.first("content-length"), Some("1"));
    }

    #[test]
    fn set_replaces_and_set_as_spelt_keeps_the_callers_spelling() {
        let mut metadata = ReceivedMetadata::default();
        metadata.set("traceparent", "a");
        metadata.set("traceparent", "b");
        assert_eq!(metadata.first("traceparent"), Some("b"));
        assert!(metadata.is_only("traceparent", "b"));
        metadata.set("Content-Length", "5");
        metadata.set_as_spelt(&super::super::CONTENT_LENGTH, "7");
        assert_eq!(metadata.first("Content-Length"), Some("7"));
        assert_eq!(metadata.first("content-length"), None);
        assert_eq!(metadata.first_of(&super::super::CONTENT_LENGTH), Some("7"));
        assert_eq!(metadata.len(), 2);
    }

    #[test]
    fn a_name_is_found_alike_in_a_scanned_map_and_a_searched_one() {
        for count in [1, 5, SCANNED_ENTRIES, SCANNED_ENTRIES + 1, 100] {
            let map: crate::wire::Metadata = (0..count)
                .map(|i| (format!("x-{i:03}"), list(&[&format!("v{i}")])))
                .collect();
            let metadata = ReceivedMetadata::from(map);
            for i in 0..count {
                let name = format!("x-{i:03}");
                assert_eq!(
                    metadata.first(&name),
                    Some(format!("v{i}").as_str()),
                    "{count}"
                );
                assert!(metadata.is_only(&name, &format!("v{i}")), "{count}");
            }
            for absent in ["", "x-", "x-1000", "X-000", "y-000", "x-0000"] {
                assert_eq!(metadata.first(absent), None, "{count} {absent}");
            }
        }
    }
}
