//! Flags and environment, named as upstream sentry, turned into a validated [`Config`].
//!
//! This is the only module that reads the environment or the Configuration file.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dapr_crds::Configuration;
use dapr_crds::configuration::TokenValidatorSpec;
use dapr_process::{LogArgs, MetricsArgs};

use crate::Error;

/// Workload certificate lifetime when the Configuration names none.
pub const DEFAULT_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Backdating of NotBefore when the Configuration names none.
pub const DEFAULT_ALLOWED_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// `--trust-domain` when neither the flag nor the Configuration sets one.
pub const DEFAULT_TRUST_DOMAIN: &str = "localhost";
/// Namespace of the control plane when `NAMESPACE` is unset (upstream default).
pub const DEFAULT_NAMESPACE: &str = "default";
/// The Configuration sentry reads in kubernetes mode.
pub const DEFAULT_CONFIG_NAME: &str = "daprsystem";

/// Environment variables sentry reads, named as upstream.
pub mod env {
    pub const NAMESPACE: &str = "NAMESPACE";
}

/// Upstream sentry's flags (the subset this CA acts on).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sentry",
    version,
    about = "Dapr-compatible certificate authority"
)]
pub struct Flags {
    /// standalone, or kubernetes (trust bundle and Configuration from the API server, tokens
    /// checked with a TokenReview).
    #[arg(long, value_enum, default_value_t = Mode::Standalone)]
    pub mode: Mode,
    /// Standalone: path to a Configuration YAML (optional). Kubernetes: its name (daprsystem).
    #[arg(long)]
    pub config: Option<String>,
    /// Directory holding the trust anchors, the issuer certificate and its key.
    #[arg(
        long = "issuer-credentials",
        default_value = "/var/run/secrets/dapr.io/credentials"
    )]
    pub issuer_credentials: PathBuf,
    #[arg(long = "issuer-ca-filename", default_value = "ca.crt")]
    pub issuer_ca_filename: PathBuf,
    #[arg(long = "issuer-certificate-filename", default_value = "issuer.crt")]
    pub issuer_certificate_filename: PathBuf,
    #[arg(long = "issuer-key-filename", default_value = "issuer.key")]
    pub issuer_key_filename: PathBuf,
    /// Control-plane trust domain [default: localhost]; wins over the Configuration's
    /// controlPlaneTrustDomain.
    #[arg(long = "trust-domain")]
    pub trust_domain: Option<String>,
    #[arg(long, default_value_t = 50001)]
    pub port: u16,
    #[arg(long = "listen-address", default_value = "0.0.0.0")]
    pub listen_address: String,
    #[arg(long = "healthz-port", default_value_t = 8080)]
    pub healthz_port: u16,
    #[arg(long = "healthz-listen-address", default_value = "0.0.0.0")]
    pub healthz_listen_address: String,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Values read from the environment, passed in so config building stays pure.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub namespace: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        Env {
            namespace: std::env::var(env::NAMESPACE).ok().filter(|v| !v.is_empty()),
        }
    }
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Standalone,
    Kubernetes,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Kubernetes => "kubernetes",
        }
    }
}

/// Where the three credential files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialPaths {
    pub dir: PathBuf,
    pub trust_anchors: PathBuf,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
}

/// A configured `spec.mtls.tokenValidators` entry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidatorConfig {
    Jwks(JwksOptions),
}

/// Options of the `jwks` validator, as upstream names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksOptions {
    /// A URL (http/https), a file path, or the JWKS itself (optionally base64-encoded).
    pub source: String,
    /// PEM roots for an https source; the system roots when absent.
    pub ca_certificate: Option<String>,
    /// Least time between two fetches of a URL source triggered by an unknown key id.
    pub min_refresh_interval: Duration,
    pub request_timeout: Duration,
}

/// Upstream's defaults for [`JwksOptions`].
pub const DEFAULT_JWKS_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(600);
pub const DEFAULT_JWKS_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The validated settings sentry runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub credentials: CredentialPaths,
    pub trust_domain: String,
    /// The control-plane namespace (`NAMESPACE`), part of sentry's own SPIFFE id.
    pub namespace: String,
    pub listen: SocketAddr,
    pub healthz: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub workload_cert_ttl: Duration,
    pub allowed_clock_skew: Duration,
    pub validators: Vec<ValidatorConfig>,
    pub log: LogArgs,
    /// Kubernetes mode: the Configuration to read mTLS settings from (`--config`, default
    /// `daprsystem`).
    pub configuration_name: String,
    /// Whether `--trust-domain` was given (it wins over the Configuration).
    pub trust_domain_from_flag: bool,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Config {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Builds the config, reading the `--config` file in standalone mode.
    pub fn from_flags(flags: Flags, env: Env) -> Result<Self, Error> {
        let configuration = match (flags.mode, &flags.config) {
            (Mode::Standalone, Some(path)) => Some(read_configuration(Path::new(path))?),
            _ => None,
        };
        Self::build(flags, env, configuration)
    }

    /// The pure part: flags, environment and an already parsed Configuration.
    pub fn build(
        flags: Flags,
        env: Env,
        configuration: Option<Configuration>,
    ) -> Result<Self, Error> {
        let mode = flags.mode;
        let configuration_name = match mode {
            Mode::Kubernetes => flags
                .config
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "daprsystem".to_owned()),
            Mode::Standalone => String::new(),
        };
        let trust_domain_from_flag = flags.trust_domain.is_some();
        let mtls = configuration.and_then(|c| c.spec.mtls).unwrap_or_default();

        let trust_domain = flags
            .trust_domain
            .or(mtls.control_plane_trust_domain)
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_owned());
        if trust_domain.is_empty() || trust_domain.contains('/') {
            return Err(bad(
                "--trust-domain",
                format!("{trust_domain:?} must be non-empty and contain no '/'"),
            ));
        }
        let namespace = env
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        if namespace.contains('/') {
            return Err(bad("NAMESPACE", format!("{namespace:?} contains '/'")));
        }

        let workload_cert_ttl = match mtls.workload_cert_ttl.as_deref() {
            None | Some("") => DEFAULT_WORKLOAD_CERT_TTL,
            Some(v) => {
                parse_go_duration(v).map_err(|reason| bad("spec.mtls.workloadCertTTL", reason))?
            }
        };
        if workload_cert_ttl.is_zero() {
            return Err(bad("spec.mtls.workloadCertTTL", "must be greater than 0"));
        }
        let allowed_clock_skew = match mtls.allowed_clock_skew.as_deref() {
            None | Some("") => DEFAULT_ALLOWED_CLOCK_SKEW,
            Some(v) => {
                parse_go_duration(v).map_err(|reason| bad("spec.mtls.allowedClockSkew", reason))?
            }
        };

        let validators = mtls
            .token_validators
            .iter()
            .map(validator_config)
            .collect::<Result<Vec<_>, _>>()?;

        let dir = flags.issuer_credentials;
        let credentials = CredentialPaths {
            trust_anchors: dir.join(&flags.issuer_ca_filename),
            issuer_cert: dir.join(&flags.issuer_certificate_filename),
            issuer_key: dir.join(&flags.issuer_key_filename),
            dir,
        };
        let ip = |flag: &'static str, v: &str| -> Result<IpAddr, Error> {
            let v = v.trim().trim_start_matches('[').trim_end_matches(']');
            if v.is_empty() {
                return Ok(IpAddr::from([0, 0, 0, 0]));
            }
            if v == "localhost" {
                return Ok(IpAddr::from([127, 0, 0, 1]));
            }
            v.parse()
                .map_err(|_| bad(flag, format!("{v:?} is not an IP address")))
        };
        let listen = SocketAddr::new(ip("--listen-address", &flags.listen_address)?, flags.port);
        let healthz = SocketAddr::new(
            ip("--healthz-listen-address", &flags.healthz_listen_address)?,
            flags.healthz_port,
        );
        let metrics = if flags.metrics.enable_metrics {
            Some(SocketAddr::new(
                ip(
                    "--metrics-listen-address",
                    &flags.metrics.metrics_listen_address,
                )?,
                flags.metrics.metrics_port,
            ))
        } else {
            None
        };

        Ok(Config {
            mode,
            credentials,
            trust_domain,
            namespace,
            listen,
            healthz,
            metrics,
            workload_cert_ttl,
            allowed_clock_skew,
            validators,
            log: flags.log,
            configuration_name,
            trust_domain_from_flag,
        })
    }

    /// Applies the mTLS settings of a Configuration read after start-up (kubernetes mode reads
    /// it from the API): TTL, clock skew, token validators, and the control-plane trust domain
    /// unless `--trust-domain` was given.
    pub fn apply_configuration(&mut self, configuration: Configuration) -> Result<(), Error> {
        let mtls = configuration.spec.mtls.unwrap_or_default();
        if !self.trust_domain_from_flag
            && let Some(td) = mtls.control_plane_trust_domain.filter(|t| !t.is_empty())
        {
            self.trust_domain = td;
        }
        if let Some(v) = mtls.workload_cert_ttl.as_deref().filter(|v| !v.is_empty()) {
            self.workload_cert_ttl =
                parse_go_duration(v).map_err(|reason| bad("spec.mtls.workloadCertTTL", reason))?;
        }
        if let Some(v) = mtls.allowed_clock_skew.as_deref().filter(|v| !v.is_empty()) {
            self.allowed_clock_skew =
                parse_go_duration(v).map_err(|reason| bad("spec.mtls.allowedClockSkew", reason))?;
        }
        self.validators = mtls
            .token_validators
            .iter()
            .map(validator_config)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(())
    }
}

/// Reads and parses a Configuration file; a missing file is an error naming the path.
pub fn read_configuration(path: &Path) -> Result<Configuration, Error> {
    let field = || format!("--config {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| bad(field(), e.to_string()))?;
    Configuration::from_yaml(&text).map_err(|e| bad(field(), e.to_string()))
}

fn validator_config(spec: &TokenValidatorSpec) -> Result<ValidatorConfig, Error> {
    let field = "spec.mtls.tokenValidators";
    match spec.name.as_str() {
        "jwks" => jwks_options(&spec.options).map(ValidatorConfig::Jwks),
        "kubernetes" | "insecure" => Err(bad(
            field,
            format!(
                "the {:?} validator cannot be configured explicitly",
                spec.name
            ),
        )),
        other => Err(bad(
            field,
            format!("unknown validator {other:?} (supported: jwks)"),
        )),
    }
}

fn jwks_options(options: &BTreeMap<String, serde_json::Value>) -> Result<JwksOptions, Error> {
    let text = |key: &str| -> Result<Option<String>, Error> {
        match options.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(
                format!("spec.mtls.tokenValidators[jwks].options.{key}"),
                format!("must be a string, got {other}"),
            )),
        }
    };
    let duration = |key: &str, default: Duration| -> Result<Duration, Error> {
        match text(key)? {
            None => Ok(default),
            Some(v) => parse_go_duration(&v)
                .map_err(|r| bad(format!("spec.mtls.tokenValidators[jwks].options.{key}"), r)),
        }
    };
    let source = text("source")?.ok_or_else(|| {
        bad(
            "spec.mtls.tokenValidators[jwks].options.source",
            "is required",
        )
    })?;
    Ok(JwksOptions {
        source,
        ca_certificate: text("caCertificate")?,
        min_refresh_interval: duration("minRefreshInterval", DEFAULT_JWKS_MIN_REFRESH_INTERVAL)?,
        request_timeout: duration("requestTimeout", DEFAULT_JWKS_REQUEST_TIMEOUT)?,
    })
}

/// Parses a Go duration string (`24h`, `15m`, `1h30m`, `1.5h`, `300ms`, `0`), as the
/// Configuration resource carries them, ignoring surrounding spaces ([`dapr_crds::duration`]).
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    dapr_crds::duration::parse(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut argv = vec!["sentry"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).unwrap()
    }

    fn configuration(yaml: &str) -> Configuration {
        Configuration::from_yaml(yaml).unwrap()
    }

    #[test]
    fn go_durations_parse_like_go() {
        let cases = [
            ("24h", 86_400_000),
            ("15m", 900_000),
            ("1h30m", 5_400_000),
            ("1.5h", 5_400_000),
            ("300ms", 300),
            ("2m3s", 123_000),
            ("0", 0),
            ("1h0m0s", 3_600_000),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_go_duration(text).unwrap(),
                Duration::from_millis(millis),
                "{text}"
            );
        }
        for bad in ["", "10", "h", "-1h", "1d", "1.2.3s", "abc"] {
            let err = parse_go_duration(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn defaults_match_upstream() {
        let config = Config::build(flags(&[]), Env::default(), None).unwrap();
        assert_eq!(config.mode, Mode::Standalone);
        assert_eq!(config.trust_domain, "localhost");
        assert_eq!(config.namespace, "default");
        assert_eq!(config.listen, "0.0.0.0:50001".parse().unwrap());
        assert_eq!(config.healthz, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.metrics, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(config.workload_cert_ttl, DEFAULT_WORKLOAD_CERT_TTL);
        assert_eq!(config.allowed_clock_skew, DEFAULT_ALLOWED_CLOCK_SKEW);
        assert!(config.validators.is_empty());
        assert_eq!(
            config.credentials.issuer_key,
            PathBuf::from("/var/run/secrets/dapr.io/credentials/issuer.key")
        );
    }

    #[test]
    fn absolute_credential_file_names_are_used_as_is() {
        let config = Config::build(
            flags(&[
                "--issuer-credentials",
                "/creds",
                "--issuer-ca-filename",
                "/elsewhere/root.pem",
            ]),
            Env::default(),
            None,
        )
        .unwrap();
        assert_eq!(
            config.credentials.trust_anchors,
            PathBuf::from("/elsewhere/root.pem")
        );
        assert_eq!(
            config.credentials.issuer_cert,
            PathBuf::from("/creds/issuer.crt")
        );
    }

    #[test]
    fn the_configuration_overrides_ttl_skew_and_trust_domain_but_the_flag_wins() {
        let cfg = configuration(
            r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata: {name: daprsystem}
spec:
  mtls:
    workloadCertTTL: 1h30m
    allowedClockSkew: 1m
    controlPlaneTrustDomain: example.org
"#,
        );
        let config = Config::build(
            flags(&[]),
            Env {
                namespace: Some("dapr-system".into()),
            },
            Some(cfg.clone()),
        )
        .unwrap();
        assert_eq!(config.workload_cert_ttl, Duration::from_secs(5400));
        assert_eq!(config.allowed_clock_skew, Duration::from_secs(60));
        assert_eq!(config.trust_domain, "example.org");
        assert_eq!(config.namespace, "dapr-system");

        let config = Config::build(
            flags(&["--trust-domain", "cluster.local"]),
            Env::default(),
            Some(cfg),
        )
        .unwrap();
        assert_eq!(config.trust_domain, "cluster.local");
    }

    #[test]
    fn a_bad_duration_in_the_configuration_names_the_field() {
        let cfg = configuration(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nspec:\n  mtls:\n    workloadCertTTL: 1day\n",
        );
        let err = Config::build(flags(&[]), Env::default(), Some(cfg)).unwrap_err();
        assert!(err.to_string().contains("workloadCertTTL"), "{err}");
    }

    #[test]
    fn jwks_validators_are_read_with_upstreams_option_names_and_defaults() {
        let cfg = configuration(
            r#"
apiVersion: dapr.io/v1alpha1
kind: Configuration
spec:
  mtls:
    tokenValidators:
    - name: jwks
      options:
        source: https://issuer.example/jwks.json
        requestTimeout: 5s
"#,
        );
        let config = Config::build(flags(&[]), Env::default(), Some(cfg)).unwrap();
        assert_eq!(
            config.validators,
            vec![ValidatorConfig::Jwks(JwksOptions {
                source: "https://issuer.example/jwks.json".into(),
                ca_certificate: None,
                min_refresh_interval: DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
                request_timeout: Duration::from_secs(5),
            })]
        );
    }

    #[test]
    fn validators_that_cannot_be_configured_are_rejected() {
        for (name, options, needle) in [
            ("insecure", "{}", "cannot be configured"),
            ("kubernetes", "{}", "cannot be configured"),
            ("oidc", "{}", "unknown validator"),
            ("jwks", "{}", "source: is required"),
        ] {
            let cfg = configuration(&format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nspec:\n  mtls:\n    tokenValidators:\n    - name: {name}\n      options: {options}\n"
            ));
            let err = Config::build(flags(&[]), Env::default(), Some(cfg)).unwrap_err();
            assert!(err.to_string().contains(needle), "{name}: {err}");
        }
    }

    #[test]
    fn an_unknown_mode_is_a_usage_error_naming_the_modes() {
        let err = Flags::try_parse_from(["sentry", "--mode", "cloud"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        let text = err.to_string();
        assert!(
            text.contains("--mode") && text.contains("standalone, kubernetes"),
            "{text}"
        );
        let config = Config::build(flags(&["--mode", "kubernetes"]), Env::default(), None).unwrap();
        assert_eq!(config.mode, Mode::Kubernetes);
    }

    #[test]
    fn log_as_json_is_a_go_bool_flag() {
        for (args, json) in [
            (&[][..], false),
            (&["--log-as-json"][..], true),
            (&["--log-as-json=true"][..], true),
            (&["--log-as-json=false"][..], false),
        ] {
            let config = Config::build(flags(args), Env::default(), None).unwrap();
            assert_eq!(config.log.log_as_json, json, "{args:?}");
        }
    }

    #[test]
    fn a_missing_configuration_file_is_a_clear_error() {
        let err = Config::from_flags(
            flags(&["--config", "/nonexistent/dapr/config.yaml"]),
            Env::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/dapr/config.yaml"), "{text}");
    }

    #[test]
    fn metrics_can_be_disabled() {
        let config =
            Config::build(flags(&["--enable-metrics=false"]), Env::default(), None).unwrap();
        assert_eq!(config.metrics, None);
    }
}
