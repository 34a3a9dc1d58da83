//! `Configuration.spec.tracing` checked once at start: the sampling rate and the exporters
//! (docs.dapr.io/operations/observability/tracing/tracing-overview/). A value that cannot work
//! stops the sidecar naming its field, where upstream would start without spans.

use std::time::Duration;

use dapr_crds::configuration::TracingSpec;
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Uri};

/// Upstream's rate when `samplingRate` is absent (`pkg/diagnostics/utils`, `defaultSamplingRate`).
const DEFAULT_SAMPLING_RATE: f64 = 1e-4;
/// How long one export may take when `otel.timeout` is not given (the OTLP exporters' default).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Zipkin export may take.
pub const ZIPKIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The OTLP/HTTP path when the endpoint gives none.
const OTLP_HTTP_PATH: &str = "/v1/traces";

#[derive(Debug, thiserror::Error)]
#[error("spec.tracing.{field}: {reason}")]
pub struct SettingsError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        field,
        reason: reason.into(),
    }
}

/// What the sidecar traces and where the spans go.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The share of new traces sampled (a parent's decision is always followed).
    pub sampling_rate: f64,
    /// Whether tracing was asked for at all: a rate given, or an exporter.
    pub enabled: bool,
    pub stdout: bool,
    /// Zipkin v2 JSON `POST` target.
    pub zipkin: Option<Uri>,
    pub otel: Option<Otel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtelProtocol {
    Grpc,
    Http,
}

/// An OTLP collector.
#[derive(Debug, Clone, PartialEq)]
pub struct Otel {
    pub protocol: OtelProtocol,
    /// `http(s)://host:port` for gRPC, the full `.../v1/traces` URL for HTTP.
    pub uri: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
}

impl Settings {
    /// Nothing traced: `traceparent` is only continued.
    pub fn off() -> Settings {
        Settings {
            sampling_rate: 0.0,
            enabled: false,
            stdout: false,
            zipkin: None,
            otel: None,
        }
    }

    pub fn has_exporter(&self) -> bool {
        self.stdout || self.zipkin.is_some() || self.otel.is_some()
    }

    pub fn from_spec(spec: Option<&TracingSpec>) -> Result<Settings, SettingsError> {
        let Some(spec) = spec else {
            return Ok(Settings::off());
        };
        let sampling_rate = match spec.sampling_rate.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(parse_rate(text)?),
        };
        let zipkin = match spec.zipkin.as_ref() {
            None => None,
            Some(zipkin) => parse_zipkin(zipkin)?,
        };
        let otel = match spec.otel.as_ref() {
            None => None,
            Some(otel) => parse_otel(otel)?,
        };
        let mut settings = Settings {
            sampling_rate: sampling_rate.unwrap_or(DEFAULT_SAMPLING_RATE),
            enabled: false,
            stdout: spec.stdout.unwrap_or(false),
            zipkin,
            otel,
        };
        settings.enabled = sampling_rate.is_some_and(|r| r > 0.0) || settings.has_exporter();
        Ok(settings)
    }
}

fn parse_rate(text: &str) -> Result<f64, SettingsError> {
    let field = "samplingRate";
    let rate: f64 = text
        .parse()
        .map_err(|e| invalid(field, format!("{text:?} is not a number: {e}")))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(invalid(field, format!("{text:?} is not between 0 and 1")));
    }
    Ok(rate)
}

fn string_field<'a>(
    object: &'a serde_json::Value,
    key: &str,
    field: &'static str,
) -> Result<Option<&'a str>, SettingsError> {
    match object.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.trim()).filter(|s| !s.is_empty())),
        Some(other) => Err(invalid(field, format!("must be a string, not {other}"))),
    }
}

fn parse_zipkin(zipkin: &serde_json::Value) -> Result<Option<Uri>, SettingsError> {
    let field = "zipkin.endpointAddress";
    let Some(address) = string_field(zipkin, "endpointAddress", field)? else {
        return Ok(None);
    };
    let uri: Uri = address
        .parse()
        .map_err(|e| invalid(field, format!("{address:?} is not a URL: {e}")))?;
    let scheme_ok = uri.scheme() == Some(&Scheme::HTTP) || uri.scheme() == Some(&Scheme::HTTPS);
    if !scheme_ok || uri.authority().is_none() {
        return Err(invalid(
            field,
            format!("{address:?} is not an http(s) URL such as http://zipkin:9411/api/v2/spans"),
        ));
    }
    Ok(Some(uri))
}

fn parse_otel(otel: &serde_json::Value) -> Result<Option<Otel>, SettingsError> {
    let Some(address) = string_field(otel, "endpointAddress", "otel.endpointAddress")? else {
        return Ok(None);
    };
    let protocol = match string_field(otel, "protocol", "otel.protocol")?
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("grpc") => OtelProtocol::Grpc,
        Some("http") => OtelProtocol::Http,
        other => {
            return Err(invalid(
                "otel.protocol",
                format!("{other:?} is neither \"grpc\" nor \"http\""),
            ));
        }
    };
    let secure = match otel.get("isSecure") {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(other) => {
            return Err(invalid(
                "otel.isSecure",
                format!("{other} is not a boolean"),
            ));
        }
    };
    let uri = otel_uri(address, protocol, secure)?;
    let headers = parse_headers(otel.get("headers"))?;
    let timeout = match otel.get("timeout") {
        None | Some(serde_json::Value::Null) => DEFAULT_EXPORT_TIMEOUT,
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => DEFAULT_EXPORT_TIMEOUT,
        Some(serde_json::Value::String(s)) => parse_go_duration(s.trim())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                invalid(
                    "otel.timeout",
                    format!("{s:?} is not a duration such as 10s"),
                )
            })?,
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .ok_or_else(|| invalid("otel.timeout", format!("{n} is not a positive duration")))?,
        Some(other) => {
            return Err(invalid(
                "otel.timeout",
                format!("{other} is not a duration"),
            ));
        }
    };
    Ok(Some(Otel {
        protocol,
        uri,
        headers,
        timeout,
    }))
}

/// `host:port` (as upstream documents it), with an optional `http(s)://` and, for HTTP, a path.
/// A missing port is the protocol's OTLP port (4317 gRPC, 4318 HTTP).
fn otel_uri(address: &str, protocol: OtelProtocol, secure: bool) -> Result<Uri, SettingsError> {
    let field = "otel.endpointAddress";
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority: Authority = authority
        .parse()
        .map_err(|e| invalid(field, format!("{address:?} is not host:port: {e}")))?;
    if authority.host().is_empty() {
        return Err(invalid(field, format!("{address:?} names no host")));
    }
    let port = authority.port_u16().unwrap_or(match protocol {
        OtelProtocol::Grpc => 4317,
        OtelProtocol::Http => 4318,
    });
    let path = match protocol {
        OtelProtocol::Grpc => "",
        OtelProtocol::Http if path.is_empty() || path == "/" => OTLP_HTTP_PATH,
        OtelProtocol::Http => path,
    };
    let scheme = if secure { "https" } else { "http" };
    let host = authority.host();
    format!("{scheme}://{host}:{port}{path}")
        .parse()
        .map_err(|e| invalid(field, format!("{address:?} is not an address: {e}")))
}

/// `[{name, value}]` as upstream's `NameValuePair` list, or the older `k=v,k2=v2` string.
fn parse_headers(
    value: Option<&serde_json::Value>,
) -> Result<Vec<(HeaderName, HeaderValue)>, SettingsError> {
    let field = "otel.headers";
    let pairs: Vec<(String, String)> = match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| invalid(field, format!("{p:?} is not name=value")))
            })
            .collect::<Result<_, _>>()?,
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|item| {
                let name = string_field(item, "name", field)?
                    .ok_or_else(|| invalid(field, "an entry has no name"))?;
                let value = string_field(item, "value", field)?.unwrap_or_default();
                Ok((name.to_owned(), value.to_owned()))
            })
            .collect::<Result<_, SettingsError>>()?,
        Some(other) => return Err(invalid(field, format!("{other} is not a list of headers"))),
    };
    pairs
        .into_iter()
        .map(|(name, value)| {
            let header = HeaderName::try_from(name.as_str())
                .map_err(|e| invalid(field, format!("{name:?} is not a header name: {e}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| invalid(field, format!("the value of {name:?}: {e}")))?;
            Ok((header, value))
        })
        .collect()
}

/// A Go duration (`10s`, `1m30s`, `500ms`, `1.5s`), `None` when it is not one.
fn parse_go_duration(text: &str) -> Option<Duration> {
    dapr_crds::duration::parse(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> TracingSpec {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn no_spec_or_a_zero_rate_without_exporters_is_off() {
        assert!(!Settings::from_spec(None).unwrap().enabled);
        let s = Settings::from_spec(Some(&spec("samplingRate: \"0\""))).unwrap();
        assert!(!s.enabled);
        let s = Settings::from_spec(Some(&spec("samplingRate: \"0.5\""))).unwrap();
        assert!(s.enabled && !s.has_exporter());
        assert_eq!(s.sampling_rate, 0.5);
    }

    #[test]
    fn exporters_are_parsed_with_upstreams_defaults() {
        let s = Settings::from_spec(Some(&spec(
            "stdout: true\nzipkin:\n  endpointAddress: http://z:9411/api/v2/spans\notel:\n  endpointAddress: collector:4318\n  protocol: http\n  isSecure: false\n  headers:\n  - name: x-key\n    value: k\n  timeout: 2s\n",
        )))
        .unwrap();
        assert!(s.enabled && s.stdout);
        assert_eq!(s.sampling_rate, DEFAULT_SAMPLING_RATE);
        assert_eq!(s.zipkin.unwrap().to_string(), "http://z:9411/api/v2/spans");
        let otel = s.otel.unwrap();
        assert_eq!(otel.protocol, OtelProtocol::Http);
        assert_eq!(otel.uri.to_string(), "http://collector:4318/v1/traces");
        assert_eq!(otel.headers[0].0.as_str(), "x-key");
        assert_eq!(otel.timeout, Duration::from_secs(2));
        let s = Settings::from_spec(Some(&spec(
            "otel:\n  endpointAddress: collector\n  protocol: grpc\n  headers: \"a=b, c=d\"\n",
        )))
        .unwrap();
        let otel = s.otel.unwrap();
        assert_eq!(otel.uri.to_string(), "https://collector:4317/");
        assert_eq!(otel.headers.len(), 2);
        assert_eq!(otel.timeout, DEFAULT_EXPORT_TIMEOUT);
    }

    #[test]
    fn bad_values_name_their_field() {
        for (yaml, field) in [
            ("samplingRate: abc", "samplingRate"),
            ("samplingRate: \"1.5\"", "samplingRate"),
            (
                "zipkin:\n  endpointAddress: not a url",
                "zipkin.endpointAddress",
            ),
            (
                "zipkin:\n  endpointAddress: zipkin:9411",
                "zipkin.endpointAddress",
            ),
            (
                "otel:\n  endpointAddress: \"a b:1\"\n  protocol: grpc",
                "otel.endpointAddress",
            ),
            (
                "otel:\n  endpointAddress: c:4317\n  protocol: tcp",
                "otel.protocol",
            ),
            (
                "otel:\n  endpointAddress: c:4317\n  protocol: grpc\n  timeout: soon",
                "otel.timeout",
            ),
            (
                "otel:\n  endpointAddress: c:4317\n  protocol: grpc\n  headers: [{value: x}]",
                "otel.headers",
            ),
        ] {
            let err = Settings::from_spec(Some(&spec(yaml))).unwrap_err();
            assert_eq!(err.field, field, "{yaml}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("spec.tracing.{field}"))
            );
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("s"), None);
    }
}
