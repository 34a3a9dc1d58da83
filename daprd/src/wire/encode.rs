//! The protobuf wire format written by hand for what is sent most: entries of a
//! `map<string, ListStringValue>` (request metadata, response headers) straight from where
//! their names and values already are, with no map of owned strings built to be encoded once.
//! Entries are written as prost writes them (an empty name or list is left out of its entry),
//! so a reader cannot tell the two apart (unit tests in `frame` and `sent` compare the bytes).

use bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// How an entry's name is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// As it is.
    AsIs,
    /// A lower-case header name Go-canonical, as
    /// [`canonical_name`](super::metadata::canonical_name) spells it (`content-type` as
    /// `Content-Type`), written byte by byte without a copy.
    Canonical,
}

/// The bytes of `name`, a header name, spelt Go-canonical ([`Spelling::Canonical`]).
fn canonical_bytes(name: &str) -> impl Iterator<Item = u8> + '_ {
    let mut word_start = true;
    name.bytes().map(move |b| {
        let spelt = if word_start {
            b.to_ascii_uppercase()
        } else {
            b.to_ascii_lowercase()
        };
        word_start = b == b'-';
        spelt
    })
}

/// Whether `lower`, a lower-case header name, spelt Go-canonical is `other`.
pub fn is_spelt_canonical(lower: &str, other: &str) -> bool {
    lower.len() == other.len() && canonical_bytes(lower).eq(other.bytes())
}

/// A string field's encoded length.
pub(super) fn string_len(tag: u32, value: &[u8]) -> usize {
    key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
}

/// A string field: `value` is UTF-8 (a `str`'s bytes, or a header value that is visible ASCII).
pub(super) fn encode_string(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

/// The encoded length of a `ListStringValue` of `values`.
fn values_len<S: AsRef<[u8]>>(values: &[S]) -> usize {
    values.iter().map(|v| string_len(1, v.as_ref())).sum()
}

/// The length of an entry's message: the name and the list are left out when they are empty
/// (their defaults), as prost leaves them out. A name's spelling does not change its length.
fn entry_body_len<S: AsRef<[u8]>>(name: &str, values: &[S]) -> usize {
    let name = if name.is_empty() {
        0
    } else {
        string_len(1, name.as_bytes())
    };
    let values = match values_len(values) {
        0 => 0,
        n => key_len(2) + encoded_len_varint(n as u64) + n,
    };
    name + values
}

/// The encoded length of one entry of the map field `tag`.
pub fn entry_len<S: AsRef<[u8]>>(tag: u32, name: &str, values: &[S]) -> usize {
    let n = entry_body_len(name, values);
    key_len(tag) + encoded_len_varint(n as u64) + n
}

/// One entry of the map field `tag`: `name`, spelt as `spelling` says, and a
/// `ListStringValue` of `values` (each UTF-8).
pub fn encode_entry<S: AsRef<[u8]>>(
    tag: u32,
    name: &str,
    spelling: Spelling,
    values: &[S],
    buf: &mut impl BufMut,
) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(entry_body_len(name, values) as u64, buf);
    if !name.is_empty() {
        match spelling {
            Spelling::AsIs => encode_string(1, name.as_bytes(), buf),
            Spelling::Canonical => {
                encode_key(1, WireType::LengthDelimited, buf);
                encode_varint(name.len() as u64, buf);
                for b in canonical_bytes(name) {
                    buf.put_u8(b);
                }
            }
        }
    }
    let n = values_len(values);
    if n > 0 {
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(n as u64, buf);
        for value in values {
            encode_string(1, value.as_ref(), buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_spelt_canonical;

    #[test]
    fn a_name_spelt_canonical_is_compared_byte_by_byte() {
        assert!(is_spelt_canonical("content-type", "Content-Type"));
        assert!(is_spelt_canonical("x-a-b", "X-A-B"));
        assert!(!is_spelt_canonical("content-type", "content-type"));
        assert!(!is_spelt_canonical("content-type", "Content-type"));
        assert!(!is_spelt_canonical("content-type", "Content-Types"));
    }
}
