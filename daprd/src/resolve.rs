//! Name resolution: from a target app id to the address of its sidecar's internal gRPC port.
//!
//! `kubernetes` resolves `<id>-dapr.<ns>.svc.<clusterDomain>` through DNS (all A/AAAA records of
//! the headless Service) with the caller's own internal port; `mdns` (standalone default) finds
//! sidecars that announce themselves over multicast DNS-SD; `sqlite` keeps registrations in a
//! shared database file, for hosts without cluster DNS or multicast.

pub mod mdns;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_resolver::TokioResolver;

use crate::Error;
use crate::config::{Config, Mode};

/// How long resolved addresses are reused (upstream caches for at most 20s).
const CACHE_TTL: Duration = Duration::from_secs(20);
/// How often a sqlite registration is refreshed, and how old one may be before it is ignored.
const SQLITE_HEARTBEAT: Duration = Duration::from_secs(5);
const SQLITE_STALE_AFTER: Duration = Duration::from_secs(15);

/// A target sidecar to find.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub app_id: String,
    pub namespace: String,
}

pub enum Resolver {
    Kubernetes(Box<Kubernetes>),
    Mdns(mdns::Mdns),
    Sqlite(Sqlite),
}

impl Resolver {
    /// Picks the resolver as upstream does: `spec.nameResolution.component` of the Configuration,
    /// else `kubernetes` in kubernetes mode and `mdns` in standalone mode.
    pub fn from_config(config: &Config) -> Result<Resolver, Error> {
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
                    &config.namespace,
                    &config.hostname,
                    &addresses,
                    config.internal_grpc_port,
                )?))
            }
            "sqlite" => {
                let path = options
                    .get("connectionString")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| std::env::temp_dir().join("dapr-name-resolution.db"));
                // Without a known address, loopback: sidecars on one machine.
                let ip = known_address(config).unwrap_or(IpAddr::from([127, 0, 0, 1]));
                let address = SocketAddr::new(ip, config.internal_grpc_port);
                Ok(Resolver::Sqlite(Sqlite::open(
                    path,
                    &config.app_id,
                    &config.namespace,
                    address,
                )?))
            }
            other => Err(Error::Config {
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
    pub async fn resolve(&self, target: &Target) -> Result<SocketAddr, Error> {
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

type Entries = HashMap<Target, (Arc<[SocketAddr]>, Instant)>;

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
    ) -> Result<Self, Error> {
        let dns = TokioResolver::builder_tokio()
            .map_err(|e| Error::Resolver(format!("cannot read the system DNS configuration: {e}")))?
            .build()
            .map_err(|e| Error::Resolver(format!("cannot build the DNS resolver: {e}")))?;
        Ok(Kubernetes {
            cluster_domain: cluster_domain.unwrap_or_else(|| "cluster.local".to_owned()),
            template,
            port,
            dns,
            cache: Cache::default(),
        })
    }

    /// The DNS name of a target: `<id>-dapr.<ns>.svc.<clusterDomain>`, or the template.
    pub fn host_name(&self, target: &Target) -> String {
        match &self.template {
            Some(template) => render_template(template, target, self.port),
            None => format!(
                "{}-dapr.{}.svc.{}",
                target.app_id, target.namespace, self.cluster_domain
            ),
        }
    }

    async fn resolve(&self, target: &Target) -> Result<SocketAddr, Error> {
        if let Some(addr) = self.cache.get(target) {
            return Ok(addr);
        }
        let name = self.host_name(target);
        // An absolute name, so no search domains are tried.
        let fqdn = if name.ends_with('.') {
            name.clone()
        } else {
            format!("{name}.")
        };
        let lookup = self
            .dns
            .lookup_ip(fqdn.as_str())
            .await
            .map_err(|e| Error::Resolver(format!("cannot resolve {name}: {e}")))?;
        let addrs: Arc<[SocketAddr]> = lookup
            .iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        let addr = self
            .cache
            .pick(&addrs)
            .ok_or_else(|| Error::Resolver(format!("{name} has no addresses")))?;
        self.cache.put(target, addrs);
        Ok(addr)
    }
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

pub struct Sqlite {
    db: Arc<Mutex<rusqlite::Connection>>,
    registration_id: String,
    app_id: String,
    namespace: String,
    address: SocketAddr,
    cache: Cache,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

type DbCall<T> = Box<dyn FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send>;

fn sql_error(e: rusqlite::Error) -> Error {
    Error::Resolver(format!("sqlite: {e}"))
}

impl Sqlite {
    fn open(
        path: PathBuf,
        app_id: &str,
        namespace: &str,
        address: SocketAddr,
    ) -> Result<Self, Error> {
        let db = rusqlite::Connection::open(&path)
            .map_err(|e| Error::Resolver(format!("cannot open {}: {e}", path.display())))?;
        db.busy_timeout(Duration::from_secs(5)).map_err(sql_error)?;
        // Switching to WAL can fail with "database is locked" without waiting on the busy
        // timeout when another sidecar initialises the same file at the same moment: retry,
        // bounded (50 × 100 ms).
        let mut attempts = 0;
        loop {
            match db.execute_batch(
                "PRAGMA journal_mode=WAL;
                 CREATE TABLE IF NOT EXISTS hosts (
                     registration_id TEXT PRIMARY KEY,
                     app_id TEXT NOT NULL,
                     namespace TEXT NOT NULL,
                     address TEXT NOT NULL,
                     updated_at INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS hosts_app ON hosts (namespace, app_id);",
            ) {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if attempts < 50
                        && matches!(
                            e.code,
                            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                        ) =>
                {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(sql_error(e)),
            }
        }
        Ok(Sqlite {
            db: Arc::new(Mutex::new(db)),
            registration_id: format!("{app_id}-{}-{address}", std::process::id()),
            app_id: app_id.to_owned(),
            namespace: namespace.to_owned(),
            address,
            cache: Cache::default(),
        })
    }

    /// Runs a blocking database call off the async threads.
    /// (The call is boxed: a generic closure over `&Connection` would make callers' futures
    /// fail the higher-ranked `Send` check.)
    async fn with_db<T: Send + 'static>(&self, f: DbCall<T>) -> Result<T, Error> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let conn = db
                .lock()
                .map_err(|_| Error::Resolver("sqlite connection poisoned".into()))?;
            f(&conn).map_err(sql_error)
        })
        .await
        .map_err(|e| Error::Resolver(format!("sqlite task failed: {e}")))?
    }

    async fn resolve(&self, target: &Target) -> Result<SocketAddr, Error> {
        if let Some(addr) = self.cache.get(target) {
            return Ok(addr);
        }
        let (app_id, namespace) = (target.app_id.to_owned(), target.namespace.to_owned());
        let fresh_after = unix_now() - SQLITE_STALE_AFTER.as_secs() as i64;
        let rows: Vec<String> = self
            .with_db(Box::new(move |db| {
                let mut stmt = db.prepare_cached(
                    "SELECT address FROM hosts WHERE app_id = ?1 AND namespace = ?2 AND updated_at >= ?3 ORDER BY registration_id",
                )?;
                let rows = stmt.query_map(rusqlite::params![app_id, namespace, fresh_after], |r| r.get(0))?;
                rows.collect()
            }))
            .await?;
        let addrs: Arc<[SocketAddr]> = rows.iter().filter_map(|a| a.parse().ok()).collect();
        let addr = self.cache.pick(&addrs).ok_or_else(|| {
            Error::Resolver(format!(
                "no sidecar registered for app {} in namespace {}",
                target.app_id, target.namespace
            ))
        })?;
        // Registrations change more often than DNS; keep the cache short.
        self.cache.put(target, addrs);
        Ok(addr)
    }

    async fn run_registration(&self, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(SQLITE_HEARTBEAT);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let (id, app, ns, addr) = (self.registration_id.clone(), self.app_id.clone(), self.namespace.clone(), self.address.to_string());
                    let result = self.with_db(Box::new(move |db| db.execute(
                        "INSERT INTO hosts (registration_id, app_id, namespace, address, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(registration_id) DO UPDATE SET updated_at = excluded.updated_at",
                        rusqlite::params![id, app, ns, addr, unix_now()],
                    ))).await;
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "cannot refresh the sqlite name registration");
                    }
                }
            }
        }
        let id = self.registration_id.clone();
        if let Err(e) = self
            .with_db(Box::new(move |db| {
                db.execute("DELETE FROM hosts WHERE registration_id = ?1", [id])
            }))
            .await
        {
            tracing::warn!(error = %e, "cannot remove the sqlite name registration");
        }
    }
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

    #[tokio::test]
    async fn sqlite_registrations_resolve_until_they_are_removed() {
        let dir = std::env::temp_dir().join(format!("daprd-nr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nr.db");
        let addr: SocketAddr = "127.0.0.1:47001".parse().unwrap();
        let orders = Sqlite::open(path.clone(), "orders", "shop", addr).unwrap();
        let caller =
            Sqlite::open(path, "checkout", "shop", "127.0.0.1:47002".parse().unwrap()).unwrap();
        assert!(
            caller.resolve(&t()).await.is_err(),
            "nothing registered yet"
        );

        let shutdown = tokio_util::sync::CancellationToken::new();
        let registration = {
            let shutdown = shutdown.clone();
            async move { orders.run_registration(shutdown).await }
        };
        let handle = tokio::spawn(registration);
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            match caller.resolve(&t()).await {
                Ok(found) => break found,
                Err(_) if Instant::now() < deadline => tokio::task::yield_now().await,
                Err(e) => panic!("never registered: {e}"),
            }
        };
        assert_eq!(found, addr);
        shutdown.cancel();
        handle.await.unwrap();
        caller.cache.evict(&t());
        assert!(
            caller.resolve(&t()).await.is_err(),
            "registration removed on shutdown"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
