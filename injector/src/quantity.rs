//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`): only whether a string is one, so a
//! bad `dapr.io/sidecar-*-request|limit` annotation is caught here and not by the API server.

/// True when `s` is a quantity the API server accepts: a signed decimal number followed by a
/// binary-SI suffix (`Ki`..`Ei`), a decimal-SI suffix (`n u m k M G T P E` or none) or a
/// decimal exponent (`e3`, `E-2`).
pub fn is_valid(s: &str) -> bool {
    let rest = s.strip_prefix(['+', '-']).unwrap_or(s);
    let number_len = number_prefix_len(rest);
    if number_len == 0 {
        return false;
    }
    let suffix = &rest[number_len..];
    match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        _ => {
            let Some(exp) = suffix.strip_prefix(['e', 'E']) else {
                return false;
            };
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
        }
    }
}

/// Length of the leading `digits`, `digits.digits`, `digits.` or `.digits`; 0 if none.
fn number_prefix_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let int_len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if bytes.get(int_len) != Some(&b'.') {
        return int_len;
    }
    let frac_len = bytes[int_len + 1..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if int_len == 0 && frac_len == 0 {
        0
    } else {
        int_len + 1 + frac_len
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid;

    #[test]
    fn quantities_the_api_server_accepts_are_valid() {
        for q in [
            "1", "500m", "0.5", ".5", "5.", "1Gi", "128Mi", "2k", "+1", "-1", "1e3", "1E-2",
            "100n", "3u", "4Ei",
        ] {
            assert!(is_valid(q), "{q}");
        }
    }

    #[test]
    fn strings_that_are_not_quantities_are_invalid() {
        for q in [
            "", "abc", "1 Gi", " 1", "1GB", "1gi", "1.2.3", ".", "Mi", "1e", "1e+", "1ee3", "--1",
            "1Kii",
        ] {
            assert!(!is_valid(q), "{q}");
        }
    }
}
