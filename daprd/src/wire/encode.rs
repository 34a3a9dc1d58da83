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

/// A length-delimited field's key and length. Nearly always both fit a byte (the tags here are
/// below 16, names and values shorter than 128 bytes): then they go in as one slice, where
/// prost's `encode_key` and `encode_varint` appended a byte at a time, each append a capacity
/// check and a copy (bench/notes.md, "the HTTP API's plain requests without hyper").
fn put_head(tag: u32, len: usize, buf: &mut impl BufMut) {
    if tag < 16 && len < 0x80 {
        buf.put_slice(&[
            (tag << 3 | WireType::LengthDelimited as u32) as u8,
            len as u8,
        ]);
    } else {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    }
}

/// A string field: `value` is UTF-8 (a `str`'s bytes, or a header value that is visible ASCII).
pub(super) fn encode_string(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    put_head(tag, value.len(), buf);
    buf.put_slice(value);
}

/// The encoded length of a `ListStringValue` of `values`.
fn values_len<S: AsRef<[u8]>>(values: &[S]) -> usize {
    values.iter().map(|v| string_len(1, v.as_ref())).sum()
}

/// The length of an entry's message, given the length of its list (`values_len`): the name
/// and the list are left out when they are empty (their defaults), as prost leaves them out. A
/// name's spelling does not change its length.
fn entry_body_len(name: &str, values_len: usize) -> usize {
    let name = if name.is_empty() {
        0
    } else {
        string_len(1, name.as_bytes())
    };
    let values = match values_len {
        0 => 0,
        n => key_len(2) + encoded_len_varint(n as u64) + n,
    };
    name + values
}

/// The encoded length of one entry of the map field `tag`.
pub fn entry_len<S: AsRef<[u8]>>(tag: u32, name: &str, values: &[S]) -> usize {
    let n = entry_body_len(name, values_len(values));
    key_len(tag) + encoded_len_varint(n as u64) + n
}

/// The longest name spelt Go-canonical on the stack and appended at once.
const SHORT_NAME: usize = 64;

/// One entry of the map field `tag`: `name`, spelt as `spelling` says, and a
/// `ListStringValue` of `values` (each UTF-8).
pub fn encode_entry<S: AsRef<[u8]>>(
    tag: u32,
    name: &str,
    spelling: Spelling,
    values: &[S],
    buf: &mut impl BufMut,
) {
    let n = values_len(values);
    put_head(tag, entry_body_len(name, n), buf);
    if !name.is_empty() {
        match spelling {
            Spelling::AsIs => encode_string(1, name.as_bytes(), buf),
            Spelling::Canonical => {
                put_head(1, name.len(), buf);
                if name.len() <= SHORT_NAME {
                    let mut spelt = [0u8; SHORT_NAME];
                    for (to, b) in spelt.iter_mut().zip(canonical_bytes(name)) {
                        *to = b;
                    }
                    buf.put_slice(&spelt[..name.len()]);
                } else {
                    for b in canonical_bytes(name) {
                        buf.put_u8(b);
                    }
                }
            }
        }
    }
    if n > 0 {
        put_head(2, n, buf);
        for value in values {
            encode_string(1, value.as_ref(), buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries as prost writes them, for short and long names and values, and both spellings:
    /// the one-slice heads and the stack-spelt names write the same bytes.
    #[test]
    fn entries_are_written_as_prost_writes_them() {
        use dapr_proto::internals::v1::ListStringValue;
        let long = "x".repeat(200);
        let names = ["content-type", "a", "x-custom-header", long.as_str()];
        let lists: [&[&str]; 4] = [&["text/plain"], &["1", "2"], &[long.as_str()], &[""]];
        for name in names {
            for values in lists {
                for spelling in [Spelling::AsIs, Spelling::Canonical] {
                    let spelt = match spelling {
                        Spelling::AsIs => name.to_owned(),
                        Spelling::Canonical => canonical_bytes(name).map(char::from).collect(),
                    };
                    let mut by_prost = Vec::new();
                    let list = ListStringValue {
                        values: values.iter().map(|v| (*v).to_owned()).collect(),
                    };
                    let map = std::collections::HashMap::from([(spelt, list)]);
                    prost::encoding::hash_map::encode(
                        prost::encoding::string::encode,
                        prost::encoding::string::encoded_len,
                        prost::encoding::message::encode,
                        prost::encoding::message::encoded_len,
                        3,
                        &map,
                        &mut by_prost,
                    );
                    let mut ours = Vec::new();
                    encode_entry(3, name, spelling, values, &mut ours);
                    assert_eq!(ours, by_prost, "{name:.20} {values:.20?} {spelling:?}");
                    assert_eq!(entry_len(3, name, values), ours.len());
                }
            }
        }
    }

    #[test]
    fn a_name_spelt_canonical_is_compared_byte_by_byte() {
        assert!(is_spelt_canonical("content-type", "Content-Type"));
        assert!(is_spelt_canonical("x-a-b", "X-A-B"));
        assert!(!is_spelt_canonical("content-type", "content-type"));
        assert!(!is_spelt_canonical("content-type", "Content-type"));
        assert!(!is_spelt_canonical("content-type", "Content-Types"));
    }
}
