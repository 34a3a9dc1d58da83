//! Flags (upstream's names) and environment (upstream's envconfig names in
//! pkg/injector/service/config.go) turned into a validated [`Config`]. This is the only module
//! that reads the process environment or the host's files for configuration.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use dapr_identity::SpiffeId;
use dapr_identity::client::SvidRequest;
use dapr_identity::token::SENTRY_TOKEN_PATH;
use dapr_process::{LogArgs, MetricsArgs};
use k8s_openapi::api::core::v1::Toleration;

use crate::Error;
use crate::authz::AccountPattern;
use crate::names::{control_plane, process_env as penv, volume};
use crate::options::is_truthy;
use crate::patch::Settings;
use crate::tls::ServingCert;

/// The injector's command line: serving flags at the top level (as upstream's binary), plus
/// `render`.
#[derive(Debug, Clone, Parser)]
#[command(name = "injector", version, about = "Dapr-compatible sidecar injector")]
pub struct Flags {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Port of the HTTPS admission webhook.
    #[arg(long, default_value_t = 4000)]
    pub port: u16,
    /// Address the webhook listens on; empty means all interfaces.
    #[arg(long = "listen-address", default_value = "")]
    pub listen_address: String,
    #[arg(long = "healthz-port", default_value_t = 8080)]
    pub healthz_port: u16,
    #[arg(long = "healthz-listen-address", default_value = "")]
    pub healthz_listen_address: String,
    /// Whether sidecars get a default `--scheduler-host-address`.
    #[arg(long = "scheduler-enabled", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub scheduler_enabled: bool,
    /// Kubeconfig to use instead of the in-cluster or default configuration.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// PEM certificate chain for the webhook (e.g. from cert-manager); reloaded on change.
    #[arg(long = "tls-cert-file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for `--tls-cert-file`; reloaded on change.
    #[arg(long = "tls-key-file")]
    pub tls_key_file: Option<PathBuf>,
    /// Do not run the `<app-id>-dapr` Service reconciler.
    #[arg(long = "disable-service-reconciler", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_service_reconciler: bool,
    /// Do not create the `dapr-configuration-reader` RoleBinding in workload namespaces (the
    /// reconciler's; without it daprd cannot read a Configuration named by `dapr.io/config`
    /// unless the user grants that).
    #[arg(long = "disable-configuration-reader-bindings", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_configuration_reader_bindings: bool,
    /// Port of the operator API (`dapr.proto.operator.v1.Operator`, upstream operator's
    /// `--port`), served over mTLS as `dapr-operator` (Service `dapr-api`).
    #[arg(long = "operator-api-port", default_value_t = 6500)]
    pub operator_api_port: u16,
    #[arg(long = "operator-api-listen-address", default_value = "")]
    pub operator_api_listen_address: String,
    /// Do not serve the operator API (sidecars then read their Configuration from the API
    /// server themselves).
    #[arg(long = "disable-operator-api", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_operator_api: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print Kubernetes YAML with the sidecar injected into every pod template that asks for it.
    Render(RenderArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RenderArgs {
    /// YAML file to read (one or more documents), or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    pub filename: String,
    /// Namespace for objects that name none.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[arg(long = "sidecar-image", default_value = "ghcr.io/dapr/daprd:latest")]
    pub sidecar_image: String,
    /// PEM file whose certificates become `DAPR_TRUST_ANCHORS`; empty value when omitted.
    #[arg(long = "trust-anchors-file")]
    pub trust_anchors_file: Option<PathBuf>,
    #[arg(long = "cluster-domain", default_value = "cluster.local")]
    pub cluster_domain: String,
    #[arg(long = "control-plane-namespace", default_value = "dapr-system")]
    pub control_plane_namespace: String,
    #[arg(long = "control-plane-trust-domain", default_value = "cluster.local")]
    pub control_plane_trust_domain: String,
}

/// The process environment and the host files configuration depends on, captured once.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// Contents of /etc/resolv.conf, for the cluster domain.
    pub resolv_conf: Option<String>,
    /// Whether this process runs with a Kubernetes service-account token (i.e. in a pod).
    pub has_service_account_token: bool,
}

const RESOLV_CONF: &str = "/etc/resolv.conf";
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
const DEFAULT_TRUST_ANCHORS_FILE: &str = "/var/run/dapr.io/tls/ca.crt";

impl Env {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
            resolv_conf: std::fs::read_to_string(RESOLV_CONF).ok(),
            has_service_account_token: std::path::Path::new(SERVICE_ACCOUNT_TOKEN).exists(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Self::default()
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    fn truthy_or(&self, name: &str, default: bool) -> bool {
        self.non_empty(name).map_or(default, is_truthy)
    }
}

/// Validated settings of `injector` (serve).
#[derive(Debug, Clone)]
pub struct Config {
    pub webhook_addr: SocketAddr,
    pub healthz_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub log: LogArgs,
    pub serving_cert: ServingCert,
    pub kubeconfig: Option<PathBuf>,
    pub settings: Settings,
    pub trust_anchors_file: PathBuf,
    pub allowed_service_accounts: Vec<AccountPattern>,
    pub allowed_service_account_prefixes: Vec<AccountPattern>,
    pub reconciler_enabled: bool,
    /// The operator API, unless disabled.
    pub operator_api: Option<crate::operator::Settings>,
    /// Whether the reconciler keeps `dapr-configuration-reader` RoleBindings.
    pub configuration_readers: bool,
    /// How often certificate and trust-anchor files are checked for changes.
    pub reload_interval: Duration,
    /// Problems upstream only warns about, logged once logging is up.
    pub warnings: Vec<String>,
}

fn config_error(message: impl Into<String>) -> Error {
    Error::Config(message.into())
}

fn listen(address: &str, port: u16, flag: &str) -> Result<SocketAddr, Error> {
    let ip = if address.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        address
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| config_error(format!("--{flag}: {address:?} is not an IP address")))?
    };
    Ok(SocketAddr::new(ip, port))
}

/// The id the injector asks sentry for (its serving certificate).
const SENTRY_REQUEST_ID: &str = "dapr-injector";

impl Config {
    pub fn from_flags(flags: Flags, env: &Env) -> Result<Self, Error> {
        let mut warnings = Vec::new();
        let serving_files = match (flags.tls_cert_file, flags.tls_key_file) {
            (Some(cert), Some(key)) => Some(ServingCert::Files { cert, key }),
            // Without files the certificate comes from sentry (below), as upstream.
            (None, None) => None,
            _ => {
                return Err(config_error(
                    "--tls-cert-file and --tls-key-file must be given together",
                ));
            }
        };
        let namespace = env
            .non_empty(penv::NAMESPACE)
            .ok_or_else(|| config_error(format!("{} is required", penv::NAMESPACE)))?
            .to_owned();
        let sidecar_image = env
            .non_empty(penv::SIDECAR_IMAGE)
            .ok_or_else(|| config_error(format!("{} is required", penv::SIDECAR_IMAGE)))?
            .to_owned();
        let cluster_domain = env
            .non_empty(penv::KUBE_CLUSTER_DOMAIN)
            .map(str::to_owned)
            .or_else(|| {
                env.resolv_conf
                    .as_deref()
                    .and_then(cluster_domain_from_resolv_conf)
            })
            .unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.to_owned());
        let trust_domain = env
            .non_empty(penv::CONTROL_PLANE_TRUST_DOMAIN)
            .unwrap_or(DEFAULT_CLUSTER_DOMAIN)
            .to_owned();
        let address =
            |(name, port): (&str, u16)| format!("{name}.{namespace}.svc.{cluster_domain}:{port}");

        let actors_enabled = env.truthy_or(penv::ACTORS_ENABLED, true);
        let (default_placement_address, actors_service) = match env
            .non_empty(penv::ACTORS_SERVICE_NAME)
        {
            None | Some(control_plane::ACTORS_SERVICE_PLACEMENT) => (
                actors_enabled.then(|| address(control_plane::PLACEMENT_SERVICE)),
                None,
            ),
            Some(name) => {
                let service = parse_service(env, penv::ACTORS_SERVICE_ADDRESS)?;
                (
                    None,
                    actors_enabled.then(|| format!("{name}:{}", address((&service.0, service.1)))),
                )
            }
        };
        let reminders_service = match env.non_empty(penv::REMINDERS_SERVICE_NAME) {
            None | Some("default") => None,
            Some(name) => {
                let service = parse_service(env, penv::REMINDERS_SERVICE_ADDRESS)?;
                Some(format!("{name}:{}", address((&service.0, service.1))))
            }
        };

        let ignore_entrypoint_tolerations = match env.non_empty(penv::IGNORE_ENTRYPOINT_TOLERATIONS)
        {
            None => Vec::new(),
            Some(json) => serde_json::from_str::<Vec<Toleration>>(json).unwrap_or_else(|e| {
                warnings.push(format!(
                    "{} is not a JSON list of tolerations ({e}); ignored",
                    penv::IGNORE_ENTRYPOINT_TOLERATIONS
                ));
                Vec::new()
            }),
        };

        let sentry_audience =
            SpiffeId::new(&trust_domain, &namespace, control_plane::SENTRY_APP_ID)
                .map_err(Error::InvalidId)?
                .to_string();

        let trust_anchors_file: PathBuf = env
            .non_empty(penv::TRUST_ANCHORS_FILE)
            .unwrap_or(DEFAULT_TRUST_ANCHORS_FILE)
            .into();
        let sentry_address = env
            .non_empty(penv::SENTRY_ADDRESS)
            .map(str::to_owned)
            .unwrap_or_else(|| address(control_plane::SENTRY_SERVICE));
        // Upstream's security package reads DAPR_SENTRY_TOKEN_FILE before the projected token's
        // path, and refuses it set but empty (`pkg/security/token/token.go`).
        let token_file: PathBuf = match env.get(penv::SENTRY_TOKEN_FILE) {
            None => SENTRY_TOKEN_PATH.into(),
            Some("") => {
                return Err(config_error(format!(
                    "{} is set with an empty value",
                    penv::SENTRY_TOKEN_FILE
                )));
            }
            Some(path) => path.into(),
        };
        let svid_request = |id: &str| -> Result<SvidRequest, Error> {
            Ok(SvidRequest {
                sentry_address: sentry_address.clone(),
                sentry_id: SpiffeId::new(&trust_domain, &namespace, control_plane::SENTRY_APP_ID)
                    .map_err(Error::InvalidId)?,
                id: id.to_owned(),
                namespace: namespace.clone(),
                token: String::new(),
                validator: dapr_identity::token::validator::UNKNOWN,
            })
        };
        let serving_cert = match serving_files {
            Some(files) => files,
            None => ServingCert::Sentry {
                request: svid_request(SENTRY_REQUEST_ID)?,
                token_file: token_file.clone(),
                trust_anchors_file: trust_anchors_file.clone(),
            },
        };
        let operator_api = if flags.disable_operator_api {
            None
        } else {
            Some(crate::operator::Settings {
                addr: listen(
                    &flags.operator_api_listen_address,
                    flags.operator_api_port,
                    "operator-api-listen-address",
                )?,
                svid: svid_request(crate::operator::OPERATOR_ID)?,
                token_file,
                trust_anchors_file: trust_anchors_file.clone(),
            })
        };

        let settings = Settings {
            sidecar_image,
            image_pull_policy: pull_policy(env.get(penv::SIDECAR_IMAGE_PULL_POLICY)),
            control_plane_namespace: namespace.clone(),
            control_plane_trust_domain: trust_domain.clone(),
            operator_address: address(control_plane::API_SERVICE),
            sentry_address,
            sentry_audience,
            default_placement_address,
            actors_service,
            reminders_service,
            default_scheduler_address: flags
                .scheduler_enabled
                .then(|| address(control_plane::SCHEDULER_SERVICE)),
            run_as_non_root: env.truthy_or(penv::SIDECAR_RUN_AS_NON_ROOT, true),
            run_as_user: positive_id(env, penv::SIDECAR_RUN_AS_USER)?,
            run_as_group: positive_id(env, penv::SIDECAR_RUN_AS_GROUP)?,
            read_only_root_filesystem: env.truthy_or(penv::SIDECAR_READ_ONLY_ROOT_FILESYSTEM, true),
            drop_all_capabilities: env.truthy_or(penv::SIDECAR_DROP_ALL_CAPABILITIES, false),
            downward_apis: env.truthy_or(penv::ENABLE_K8S_DOWNWARD_APIS, false),
            native_sidecar: env.truthy_or(penv::NATIVE_SIDECAR_ENABLED, false),
            ignore_entrypoint_tolerations,
            token_volume: env.has_service_account_token,
            components_sockets_folder: env
                .non_empty(penv::COMPONENT_SOCKETS_FOLDER)
                .unwrap_or(volume::COMPONENTS_SOCKETS_DEFAULT_FOLDER)
                .to_owned(),
        };

        let accounts = |name: &str| {
            AccountPattern::parse_list(env.get(name).unwrap_or_default())
                .map_err(|e| config_error(format!("{name}: {e}")))
        };
        Ok(Self {
            webhook_addr: listen(&flags.listen_address, flags.port, "listen-address")?,
            healthz_addr: listen(
                &flags.healthz_listen_address,
                flags.healthz_port,
                "healthz-listen-address",
            )?,
            metrics_addr: if flags.metrics.enable_metrics {
                Some(listen(
                    &flags.metrics.metrics_listen_address,
                    flags.metrics.metrics_port,
                    "metrics-listen-address",
                )?)
            } else {
                None
            },
            log: flags.log,
            serving_cert,
            kubeconfig: flags.kubeconfig,
            settings,
            trust_anchors_file,
            allowed_service_accounts: accounts(penv::ALLOWED_SERVICE_ACCOUNTS)?,
            allowed_service_account_prefixes: accounts(
                penv::ALLOWED_SERVICE_ACCOUNTS_PREFIX_NAMES,
            )?,
            reconciler_enabled: !flags.disable_service_reconciler,
            operator_api,
            configuration_readers: !flags.disable_configuration_reader_bindings,
            reload_interval: Duration::from_secs(1),
            warnings,
        })
    }
}

impl RenderArgs {
    /// Settings for offline rendering: what a default Helm install would configure.
    pub fn settings(&self) -> Result<Settings, Error> {
        let ns = &self.control_plane_namespace;
        let cd = &self.cluster_domain;
        let address = |(name, port): (&str, u16)| format!("{name}.{ns}.svc.{cd}:{port}");
        let sentry_audience = SpiffeId::new(
            &self.control_plane_trust_domain,
            ns,
            control_plane::SENTRY_APP_ID,
        )
        .map_err(Error::InvalidId)?
        .to_string();
        Ok(Settings {
            sidecar_image: self.sidecar_image.clone(),
            image_pull_policy: "IfNotPresent".to_owned(),
            control_plane_namespace: ns.clone(),
            control_plane_trust_domain: self.control_plane_trust_domain.clone(),
            operator_address: address(control_plane::API_SERVICE),
            sentry_address: address(control_plane::SENTRY_SERVICE),
            sentry_audience,
            default_placement_address: Some(address(control_plane::PLACEMENT_SERVICE)),
            actors_service: None,
            reminders_service: None,
            default_scheduler_address: Some(address(control_plane::SCHEDULER_SERVICE)),
            run_as_non_root: true,
            run_as_user: None,
            run_as_group: None,
            read_only_root_filesystem: true,
            drop_all_capabilities: false,
            downward_apis: false,
            native_sidecar: false,
            ignore_entrypoint_tolerations: Vec::new(),
            token_volume: true,
            components_sockets_folder: volume::COMPONENTS_SOCKETS_DEFAULT_FOLDER.to_owned(),
        })
    }
}

/// Upstream maps unknown values to IfNotPresent; unset is `Always` (its code default).
fn pull_policy(value: Option<&str>) -> String {
    match value {
        None | Some("") | Some("Always") => "Always",
        Some("Never") => "Never",
        Some(_) => "IfNotPresent",
    }
    .to_owned()
}

/// `<name>:<port>` of a control-plane Service.
fn parse_service(env: &Env, var: &str) -> Result<(String, u16), Error> {
    let value = env.get(var).unwrap_or_default();
    let invalid = || config_error(format!("{var}: {value:?} must have the form <name>:<port>"));
    let (name, port) = value.split_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if name.is_empty() || port == 0 {
        return Err(invalid());
    }
    Ok((name.to_owned(), port))
}

fn positive_id(env: &Env, var: &str) -> Result<Option<i64>, Error> {
    match env.non_empty(var) {
        None => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(config_error(format!(
                "{var}: {v:?} must be a positive integer"
            ))),
        },
    }
}

/// The cluster domain from the pod's DNS search list (`<ns>.svc.<domain>`, `svc.<domain>`).
pub fn cluster_domain_from_resolv_conf(resolv_conf: &str) -> Option<String> {
    resolv_conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("search"))
        .flat_map(str::split_whitespace)
        .find_map(|domain| domain.strip_prefix("svc."))
        .map(|d| d.trim_end_matches('.').to_owned())
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut all = vec![
            "injector",
            "--tls-cert-file",
            "c.pem",
            "--tls-key-file",
            "k.pem",
        ];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).unwrap()
    }

    fn required() -> Vec<(&'static str, &'static str)> {
        vec![
            (penv::NAMESPACE, "dapr-system"),
            (penv::SIDECAR_IMAGE, "ghcr.io/dapr/daprd:1.18.3"),
        ]
    }

    #[test]
    fn log_as_json_is_a_go_bool_flag() {
        for (args, json) in [
            (&[][..], false),
            (&["--log-as-json"][..], true),
            (&["--log-as-json=true"][..], true),
            (&["--log-as-json=false"][..], false),
        ] {
            let c = Config::from_flags(flags(args), &Env::from_pairs(required())).unwrap();
            assert_eq!(c.log.log_as_json, json, "{args:?}");
        }
    }

    #[test]
    fn defaults_match_upstreams_flags_and_env() {
        let c = Config::from_flags(flags(&[]), &Env::from_pairs(required())).unwrap();
        assert_eq!(c.webhook_addr.port(), 4000);
        assert_eq!(c.healthz_addr.port(), 8080);
        assert_eq!(c.metrics_addr.map(|a| a.port()), Some(9090));
        let s = &c.settings;
        assert_eq!(s.image_pull_policy, "Always");
        assert_eq!(
            s.sentry_address,
            "dapr-sentry.dapr-system.svc.cluster.local:443"
        );
        assert_eq!(
            s.operator_address,
            "dapr-api.dapr-system.svc.cluster.local:443"
        );
        assert_eq!(
            s.sentry_audience,
            "spiffe://cluster.local/ns/dapr-system/dapr-sentry"
        );
        assert_eq!(
            s.default_placement_address.as_deref(),
            Some("dapr-placement-server.dapr-system.svc.cluster.local:50005")
        );
        assert_eq!(
            s.default_scheduler_address.as_deref(),
            Some("dapr-scheduler-server-a.dapr-system.svc.cluster.local:443")
        );
        assert!(s.run_as_non_root && s.read_only_root_filesystem);
        assert!(!s.drop_all_capabilities && !s.native_sidecar && !s.token_volume);
        assert_eq!(
            c.trust_anchors_file,
            PathBuf::from("/var/run/dapr.io/tls/ca.crt")
        );
    }

    #[test]
    fn sidecar_image_and_namespace_are_required() {
        let err =
            Config::from_flags(flags(&[]), &Env::from_pairs([(penv::NAMESPACE, "x")])).unwrap_err();
        assert!(err.to_string().contains(penv::SIDECAR_IMAGE), "{err}");
        let err = Config::from_flags(flags(&[]), &Env::from_pairs([(penv::SIDECAR_IMAGE, "x")]))
            .unwrap_err();
        assert!(err.to_string().contains(penv::NAMESPACE), "{err}");
    }

    #[test]
    fn without_certificate_files_the_serving_certificate_comes_from_sentry() {
        let f = Flags::try_parse_from(["injector"]).unwrap();
        let c = Config::from_flags(f, &Env::from_pairs(required())).unwrap();
        let ServingCert::Sentry { request, .. } = &c.serving_cert else {
            panic!("expected sentry, got {:?}", c.serving_cert);
        };
        assert_eq!(request.id, "dapr-injector");
        assert_eq!(
            request.sentry_id.to_string(),
            format!(
                "spiffe://cluster.local/ns/{}/dapr-sentry",
                request.namespace
            )
        );
        let half = Flags::try_parse_from(["injector", "--tls-cert-file", "c.pem"]).unwrap();
        let err = Config::from_flags(half, &Env::from_pairs(required())).unwrap_err();
        assert!(err.to_string().contains("together"), "{err}");
    }

    #[test]
    fn the_sentry_token_is_read_from_dapr_sentry_token_file_when_set() {
        let no_files = || Flags::try_parse_from(["injector"]).unwrap();
        let token_files = |c: &Config| {
            let ServingCert::Sentry { token_file, .. } = &c.serving_cert else {
                panic!("expected sentry, got {:?}", c.serving_cert);
            };
            let operator = c.operator_api.as_ref().expect("operator API");
            (token_file.clone(), operator.token_file.clone())
        };
        let c = Config::from_flags(no_files(), &Env::from_pairs(required())).unwrap();
        let projected = PathBuf::from("/var/run/secrets/dapr.io/sentrytoken/token");
        assert_eq!(token_files(&c), (projected.clone(), projected));
        let mut pairs = required();
        pairs.push((penv::SENTRY_TOKEN_FILE, "/run/tokens/sentry"));
        let c = Config::from_flags(no_files(), &Env::from_pairs(pairs)).unwrap();
        let given = PathBuf::from("/run/tokens/sentry");
        assert_eq!(token_files(&c), (given.clone(), given));
        let mut pairs = required();
        pairs.push((penv::SENTRY_TOKEN_FILE, ""));
        let err = Config::from_flags(no_files(), &Env::from_pairs(pairs)).unwrap_err();
        assert!(
            err.to_string()
                .contains("DAPR_SENTRY_TOKEN_FILE is set with an empty value"),
            "{err}"
        );
    }

    #[test]
    fn the_cluster_domain_comes_from_env_then_resolv_conf() {
        let mut env = Env::from_pairs(required());
        env.resolv_conf =
            Some("nameserver 10.0.0.10\nsearch dapr-system.svc.corp.example svc.corp.example corp.example\n".into());
        let c = Config::from_flags(flags(&[]), &env).unwrap();
        assert_eq!(
            c.settings.sentry_address,
            "dapr-sentry.dapr-system.svc.corp.example:443"
        );
        let mut pairs = required();
        pairs.push((penv::KUBE_CLUSTER_DOMAIN, "k.local"));
        let mut env2 = Env::from_pairs(pairs);
        env2.resolv_conf = env.resolv_conf;
        let c = Config::from_flags(flags(&[]), &env2).unwrap();
        assert!(c.settings.operator_address.ends_with(".svc.k.local:443"));
    }

    #[test]
    fn env_booleans_and_pull_policy_follow_upstream() {
        let mut pairs = required();
        pairs.extend([
            (penv::SIDECAR_IMAGE_PULL_POLICY, "Sometimes"),
            (penv::SIDECAR_RUN_AS_NON_ROOT, "false"),
            (penv::SIDECAR_DROP_ALL_CAPABILITIES, "yes"),
            (penv::ACTORS_ENABLED, "false"),
            (penv::SIDECAR_RUN_AS_USER, "1000"),
        ]);
        let s = Config::from_flags(
            flags(&["--scheduler-enabled=false"]),
            &Env::from_pairs(pairs),
        )
        .unwrap()
        .settings;
        assert_eq!(s.image_pull_policy, "IfNotPresent");
        assert!(!s.run_as_non_root);
        assert!(s.drop_all_capabilities);
        assert_eq!(s.default_placement_address, None);
        assert_eq!(s.default_scheduler_address, None);
        assert_eq!(s.run_as_user, Some(1000));
    }

    #[test]
    fn a_non_placement_actors_service_needs_an_address() {
        let mut pairs = required();
        pairs.push((penv::ACTORS_SERVICE_NAME, "actors"));
        assert!(Config::from_flags(flags(&[]), &Env::from_pairs(pairs.clone())).is_err());
        pairs.push((penv::ACTORS_SERVICE_ADDRESS, "my-actors:5000"));
        let s = Config::from_flags(flags(&[]), &Env::from_pairs(pairs))
            .unwrap()
            .settings;
        assert_eq!(
            s.actors_service.as_deref(),
            Some("actors:my-actors.dapr-system.svc.cluster.local:5000")
        );
        assert_eq!(s.default_placement_address, None);
    }

    #[test]
    fn bad_allowed_service_accounts_are_a_configuration_error() {
        let mut pairs = required();
        pairs.push((penv::ALLOWED_SERVICE_ACCOUNTS, "ns:a,broken"));
        let err = Config::from_flags(flags(&[]), &Env::from_pairs(pairs)).unwrap_err();
        assert!(
            err.to_string().contains(penv::ALLOWED_SERVICE_ACCOUNTS),
            "{err}"
        );
    }

    #[test]
    fn unparseable_entrypoint_tolerations_are_a_warning() {
        let mut pairs = required();
        pairs.push((penv::IGNORE_ENTRYPOINT_TOLERATIONS, "[{"));
        let c = Config::from_flags(flags(&[]), &Env::from_pairs(pairs)).unwrap();
        assert_eq!(c.warnings.len(), 1);
    }
}
