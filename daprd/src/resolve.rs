//! Name resolution: from a target app id to the address of its sidecar's internal gRPC port.
//!
//! `kubernetes` resolves `<id>-dapr.<ns>.svc.<clusterDomain>` through DNS (all A/AAAA records of
//! the headless Service) with the caller's own internal port; `mdns` (standalone default) finds
//! sidecars that announce themselves over multicast DNS-SD; `sqlite` keeps registrations in a
//! shared database file, for hosts without cluster DNS or multicast.

pub mod mdns;
pub mod sqlite;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;

use crate::StartError;
use crate::config::{Config, Mode};

/// Why a resolver could not be set up, or could not find an app.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read the system DNS configuration: {0}")]
    DnsConfiguration(#[source] hickory_resolver::net::NetError),
    #[error("cannot build the DNS resolver: {0}")]
    DnsResolver(#[source] hickory_resolver::net::NetError),
    #[error("cannot resolve {name}: {source}")]
    Lookup {
        name: String,
        source: hickory_resolver::net::NetError,
    },
    #[error("{name} has no addresses")]
    NoAddresses { name: String },
    /// Upstream's template gives `host:port`; a rendering without a port is refused here.
    #[error("the kubernetes resolver's template gave {rendered:?}, which is not host:port")]
    Template { rendered: String },
    /// No mDNS answer for the app in time (upstream's message first).
    #[error("couldn't find service: {app_id} (no mDNS answer for {service} within {seconds}s)")]
    NoMdnsAnswer {
        app_id: String,
        service: String,
        seconds: u64,
    },
    /// The mDNS socket could not be opened (the error is kept for every later lookup).
    #[error("cannot listen on mDNS port {port}: {source}")]
    MdnsSocket {
        port: u16,
        source: Arc<std::io::Error>,
    },
    #[error("cannot open {path}: {source}")]
    SqliteOpen {
        path: String,
        source: rusqlite::Error,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("sqlite connection poisoned")]
    SqlitePoisoned,
    #[error("sqlite query took longer than {0:?}")]
    SqliteTimeout(Duration),
    #[error("sqlite task failed: {0}")]
    SqliteTask(#[from] tokio::task::JoinError),
    /// No live registration of the app in the sqlite table (upstream's message).
    #[error("no host found with the given ID: {0}")]
    NotRegistered(String),
}

/// How long resolved addresses are reused (upstream caches for at most 20s).
const CACHE_TTL: Duration = Duration::from_secs(20);

/// A target sidecar to find.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub app_id: String,
    pub namespace: String,
}

pub enum Resolver {
    Kubernetes(Box<Kubernetes>),
    Mdns(mdns::Mdns),
    Sqlite(Box<sqlite::Sqlite>),
}

impl Resolver {
    /// Picks the resolver as upstream does: `spec.nameResolution.component` of the Configuration,
    /// else `kubernetes` in kubernetes mode and `mdns` in standalone mode.
    pub fn from_config(config: &Config) -> Result<Resolver, StartError> {
        let spec = config
            .configuration
            .spec
            .name_resolution
            .clone()
            .unwrap_or_default();
        let component = component(&spec.component, config.mode);
        let options: BTreeMap<String, String> = spec
            .configuration
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect();
        match component {
            "kubernetes" => Ok(Resolver::Kubernetes(Box::new(Kubernetes::new(
                options.get("clusterDomain").cloned(),
                options.get("template").cloned(),
                config.internal_grpc_port,
            )?))),
            "mdns" => {
                // Without a known address every interface announces its own addresses.
                let addresses: Vec<IpAddr> = known_address(config).into_iter().collect();
                Ok(Resolver::Mdns(mdns::Mdns::new(
                    &config.app_id,
                    &config.hostname,
                    &addresses,
                    config.internal_grpc_port,
                )?))
            }
            "sqlite" => {
                // Without a known address, loopback: sidecars on one machine.
                let ip = known_address(config).unwrap_or(IpAddr::from([127, 0, 0, 1]));
                let address = SocketAddr::new(ip, config.internal_grpc_port);
                Ok(Resolver::Sqlite(Box::new(sqlite::Sqlite::open(
                    sqlite::Options::from_map(&options)?,
                    &config.app_id,
                    address,
                )?)))
            }
            other => Err(StartError::Config {
                flag: "--config",
                reason: format!(
                    "nameResolution component {other:?} is not supported (kubernetes, mdns, sqlite)"
                ),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Resolver::Kubernetes(_) => "kubernetes",
            Resolver::Mdns(_) => "mdns",
            Resolver::Sqlite(_) => "sqlite",
        }
    }

    /// One address of the target's sidecar; successive calls spread over all known addresses.
    pub async fn resolve(&self, target: &Target) -> Result<SocketAddr, ResolveError> {
        match self {
            Resolver::Kubernetes(k) => k.resolve(target).await,
            Resolver::Mdns(m) => m.resolve(target).await,
            Resolver::Sqlite(s) => s.resolve(target).await,
        }
    }

    /// Forgets what was cached for a target, after a connection to it failed.
    pub fn evict(&self, target: &Target) {
        match self {
            Resolver::Kubernetes(k) => k.cache.evict(target),
            Resolver::Mdns(m) => m.evict(target),
            Resolver::Sqlite(s) => s.cache.evict(target),
        }
    }

    /// Announces this sidecar (mdns, sqlite) and keeps the announcement fresh until
    /// `shutdown`, then withdraws it.
    pub async fn register(&self, shutdown: tokio_util::sync::CancellationToken) {
        match self {
            Resolver::Kubernetes(_) => {}
            Resolver::Mdns(m) => m.run_registration(shutdown).await,
            Resolver::Sqlite(s) => s.run_registration(shutdown).await,
        }
    }
}

/// The resolver a Configuration's `nameResolution.component` names, else the mode's default.
fn component(configured: &str, mode: Mode) -> &str {
    match (configured, mode) {
        ("", Mode::Kubernetes) => "kubernetes",
        ("", Mode::Standalone) => "mdns",
        (other, _) => other,
    }
}

/// The address peers can reach this sidecar's internal server on, when known: `DAPR_HOST_IP`,
/// else the internal listen address unless it is every interface.
pub fn known_address(config: &Config) -> Option<IpAddr> {
    config.host_ip.or_else(|| {
        let ip = config.internal_listen_address;
        (!ip.is_unspecified()).then_some(ip)
    })
}

type Entries = crate::CallMap<Target, (Arc<[SocketAddr]>, Instant)>;

/// Addresses per target, reused for [`CACHE_TTL`].
#[derive(Default)]
struct Cache {
    entries: Mutex<Entries>,
    next: AtomicUsize,
}

impl Cache {
    fn get(&self, target: &Target) -> Option<SocketAddr> {
        let entries = self.entries.lock().ok()?;
        let (addrs, at) = entries.get(target)?;
        (at.elapsed() < CACHE_TTL)
            .then(|| self.pick(addrs))
            .flatten()
    }

    fn put(&self, target: &Target, addrs: Arc<[SocketAddr]>) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(target.clone(), (addrs, Instant::now()));
        }
    }

    fn evict(&self, target: &Target) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(target);
        }
    }

    fn pick(&self, addrs: &[SocketAddr]) -> Option<SocketAddr> {
        if addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(addrs[i % addrs.len()])
    }
}

pub struct Kubernetes {
    cluster_domain: String,
    template: Option<String>,
    port: u16,
    dns: TokioResolver,
    cache: Cache,
}

impl Kubernetes {
    fn new(
        cluster_domain: Option<String>,
        template: Option<String>,
        port: u16,
    ) -> Result<Self, ResolveError> {
        let dns = TokioResolver::builder_tokio()
            .map_err(ResolveError::DnsConfiguration)?
            .build()
            .map_err(ResolveError::DnsResolver)?;
        Ok(Kubernetes {
            cluster_domain: cluster_domain.unwrap_or_else(|| "cluster.local".to_owned()),
            template,
            port,
            dns,
            cache: Cache::default(),
        })
    }

    /// The host to look up and the port to dial: `<id>-dapr.<ns>.svc.<clusterDomain>` with this
    /// sidecar's own internal port, or what the template renders, split as upstream splits it
    /// (components-contrib `nameresolution/kubernetes/kubernetes.go`, `ResolveIDMulti`): at the
    /// last `:` when something follows it. A rendering without a port gives upstream an address
    /// with an empty port that no dial succeeds on; here it is an error naming the template.
    pub fn host_port(&self, target: &Target) -> Result<(String, u16), ResolveError> {
        let Some(template) = &self.template else {
            return Ok((
                format!(
                    "{}-dapr.{}.svc.{}",
                    target.app_id, target.namespace, self.cluster_domain
                ),
                self.port,
            ));
        };
        let rendered = render_template(template, target, self.port);
        split_host_port(&rendered).ok_or(ResolveError::Template { rendered })
    }

    async fn resolve(&self, target: &Target) -> Result<SocketAddr, ResolveError> {
        if let Some(addr) = self.cache.get(target) {
            return Ok(addr);
        }
        let (name, port) = self.host_port(target)?;
        let addrs: Arc<[SocketAddr]> =
            if let Ok(ip) = name.parse::<IpAddr>() {
                Arc::from([SocketAddr::new(ip, port)])
            } else {
                // An absolute name, so no search domains are tried.
                let fqdn = if name.ends_with('.') {
                    name.clone()
                } else {
                    format!("{name}.")
                };
                let lookup = self.dns.lookup_ip(fqdn.as_str()).await.map_err(|source| {
                    ResolveError::Lookup {
                        name: name.clone(),
                        source,
                    }
                })?;
                lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect()
            };
        let addr = self
            .cache
            .pick(&addrs)
            .ok_or(ResolveError::NoAddresses { name })?;
        self.cache.put(target, addrs);
        Ok(addr)
    }
}

/// Splits a rendered template at its last `:` as upstream does; `None` without a port after
/// it, or with one that is not a port number. A bracketed IPv6 host loses its brackets.
fn split_host_port(rendered: &str) -> Option<(String, u16)> {
    let (host, port) = rendered.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// Renders the subset of Go template syntax upstream documents for `template`:
/// `{{.ID}}`, `{{.Namespace}}`, `{{.Port}}`, `{{.Data.<key>}}` (no data is passed today).
fn render_template(template: &str, target: &Target, port: u16) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        match rest[start + 2..start + end].trim() {
            ".ID" => out.push_str(&target.app_id),
            ".Namespace" => out.push_str(&target.namespace),
            ".Port" => out.push_str(&port.to_string()),
            _ => {}
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Target {
        Target {
            app_id: "orders".into(),
            namespace: "shop".into(),
        }
    }

    #[test]
    fn mdns_is_the_standalone_default_and_a_configured_component_wins() {
        assert_eq!(component("", Mode::Standalone), "mdns");
        assert_eq!(component("", Mode::Kubernetes), "kubernetes");
        assert_eq!(component("sqlite", Mode::Standalone), "sqlite");
        assert_eq!(component("mdns", Mode::Kubernetes), "mdns");
    }

    #[test]
    fn template_output_is_host_and_port_split_at_the_last_colon() {
        assert_eq!(
            split_host_port("orders-dapr.shop.svc:50002"),
            Some(("orders-dapr.shop.svc".into(), 50002))
        );
        assert_eq!(
            split_host_port("127.0.0.1:3500"),
            Some(("127.0.0.1".into(), 3500))
        );
        assert_eq!(
            split_host_port("[fd00::1]:50002"),
            Some(("fd00::1".into(), 50002))
        );
        assert_eq!(split_host_port("orders-dapr.shop.svc"), None, "no port");
        assert_eq!(split_host_port("orders-dapr.shop.svc:"), None, "empty port");
        assert_eq!(split_host_port("orders:http"), None, "not a number");
        assert_eq!(split_host_port(":50002"), None, "no host");
    }

    #[test]
    fn templates_substitute_id_namespace_and_port() {
        assert_eq!(
            render_template("{{.ID}}-dapr.{{ .Namespace }}.svc:{{.Port}}", &t(), 50002),
            "orders-dapr.shop.svc:50002"
        );
        assert_eq!(render_template("{{.ID}}{{", &t(), 1), "orders{{");
    }

    #[test]
    fn the_cache_spreads_calls_over_all_addresses_and_forgets_evicted_targets() {
        let cache = Cache::default();
        let a: SocketAddr = "198.18.0.11:50002".parse().unwrap();
        let b: SocketAddr = "198.18.0.12:50002".parse().unwrap();
        cache.put(&t(), Arc::from(vec![a, b]));
        let picks: Vec<_> = (0..4).filter_map(|_| cache.get(&t())).collect();
        assert_eq!(picks.len(), 4);
        assert!(picks.contains(&a) && picks.contains(&b));
        cache.evict(&t());
        assert_eq!(cache.get(&t()), None);
    }
}
