//! Durations as the Dapr resources carry them: Go's `time.Duration` syntax (Configuration's
//! `workloadCertTTL`, Resiliency's timeouts and retry intervals, the OTel exporter's `timeout`).

use std::time::Duration;

/// Parses `text` as Go's `time.ParseDuration` does (`24h`, `1h30m`, `1.5h`, `300ms`, `0`),
/// rejecting negative durations. `Err` says why, for the caller to name the field.
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid =
        |why: &str| format!("{text:?} is not a duration ({why}); use e.g. 24h, 15m, 1h30m");
    let s = text;
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(invalid("negative"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(invalid("empty"));
    }
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return Err(invalid("expected a number"));
        }
        let value: f64 = number.parse().map_err(|_| invalid("bad number"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(invalid("missing unit")),
            _ => return Err(invalid("unknown unit")),
        };
        total_nanos += value * nanos_per_unit;
        rest = tail;
    }
    // Go's limit: the largest int64 nanoseconds, about 292 years.
    if !total_nanos.is_finite() || total_nanos > i64::MAX as f64 {
        return Err(invalid("too large"));
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
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
            ("+1s", ms(1000)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "5",
            "5 s",
            " 5s",
            "-1s",
            "5x",
            "s",
            "1..2s",
            "1d",
            "300000000h",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
        }
    }
}
