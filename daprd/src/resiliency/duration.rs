//! Go's `time.ParseDuration` syntax (`500ms`, `5s`, `1m30s`, `1.5h`), which Resiliency
//! durations use upstream.

use std::time::Duration;

/// Parses a non-negative Go duration. `Err` holds why, for the caller to name the field.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.strip_prefix('+').unwrap_or(text);
    if s.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration such as 5s or 1m30s"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "{text:?} has a number without a unit (ms, s, m, h)"
                ));
            }
            other => return Err(format!("{text:?} has an unknown unit {other:?}")),
        };
        total += value * nanos;
        rest = tail;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(format!("{text:?} is too long"));
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("5s", ms(5000)),
            ("500ms", ms(500)),
            ("1m30s", ms(90_000)),
            ("1.5h", ms(5_400_000)),
            ("0", ms(0)),
            ("2us", Duration::from_micros(2)),
            ("1h2m3s4ms", ms(3_723_004)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
        for bad in ["", "5", "5 s", "-1s", "5x", "s", "1..2s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
