//! Telling, byte by byte, whether a connection has shown its protocol yet.

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much of the HTTP/2 preface a connection has sent. A connection has shown its protocol
/// once it sent the whole preface (HTTP/2) or a byte that departs from it (anything else, for
/// which the HTTP/1 header deadline takes over).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preface {
    matched: usize,
    departed: bool,
}

impl Preface {
    /// Takes the next bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.is_shown() {
                return;
            }
            if H2_PREFACE[self.matched] == byte {
                self.matched += 1;
            } else {
                self.departed = true;
            }
        }
    }

    /// Whether the protocol is known.
    pub fn is_shown(&self) -> bool {
        self.departed || self.matched == H2_PREFACE.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_http2_preface_shows_the_protocol_even_in_pieces() {
        let mut p = Preface::default();
        p.feed(&H2_PREFACE[..5]);
        assert!(!p.is_shown());
        p.feed(&H2_PREFACE[5..23]);
        assert!(!p.is_shown());
        p.feed(&H2_PREFACE[23..]);
        assert!(p.is_shown());
    }

    #[test]
    fn an_http1_request_shows_its_protocol_at_its_first_departing_byte() {
        for request in [&b"GET / HTTP/1.1"[..], b"POST /", b"PUT /", b"PATCH /"] {
            let mut p = Preface::default();
            p.feed(&request[..2]);
            assert!(p.is_shown(), "{}", String::from_utf8_lossy(request));
        }
    }

    #[test]
    fn nothing_or_a_half_preface_shows_nothing() {
        let mut p = Preface::default();
        p.feed(b"");
        assert!(!p.is_shown());
        p.feed(b"PRI * HTTP/2.0\r\n");
        assert!(!p.is_shown());
    }
}
