//! W3C trace context (`traceparent`): each hop through the sidecar continues the caller's trace
//! with a span id of its own, or starts a trace when the caller sent none (or a malformed one).

/// The `traceparent` for the next hop: same trace id and flags as `incoming` when it is valid,
/// with `span` as the new parent id; otherwise a new trace `trace` (not sampled).
pub fn next(incoming: Option<&str>, trace: u128, span: u64) -> String {
    let span = span.max(1);
    match incoming.and_then(parse) {
        Some((trace_id, flags)) => format!("00-{trace_id}-{span:016x}-{flags}"),
        None => format!("00-{:032x}-{span:016x}-00", trace.max(1)),
    }
}

/// A fresh `traceparent` for the next hop (random ids).
pub fn next_random(incoming: Option<&str>) -> String {
    next(incoming, fastrand::u128(1..), fastrand::u64(1..))
}

/// The trace id and flags of a valid version-00 `traceparent`.
fn parse(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = parts.next().is_none()
        && version == "00"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some((trace, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_keeps_its_trace_id_and_flags_with_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            next(Some(incoming), 7, 0xabc),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_unsampled_trace() {
        let fresh = "00-0000000000000000000000000000002a-0000000000000007-00";
        for bad in [
            None,
            Some(""),
            Some("garbage"),
            Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"),
        ] {
            assert_eq!(next(bad, 42, 7), fresh, "{bad:?}");
        }
    }

    #[test]
    fn random_ids_are_well_formed_and_differ() {
        let a = next_random(None);
        let b = next_random(None);
        assert_ne!(a, b);
        assert!(parse(&a).is_some(), "{a}");
    }
}
