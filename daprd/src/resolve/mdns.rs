//! The `mdns` resolver, standalone mode's default: every sidecar announces its internal gRPC
//! port over multicast DNS-SD, and a caller browses for the target's service type.
//!
//! DNS-SD service names are 1-15 letters, digits and hyphens (RFC 6763 §7.2) and the library
//! enforces it, so an app id that is not such a name is announced as `dapr-<10 hex digits of its
//! FNV-1a hash>`. The full app id and namespace travel in TXT and are checked on every answer, so
//! ids that share a service type (a hash collision, `Orders` and `orders`) never resolve to each
//! other.
//!
//! One browse per service type runs while its app is being called: the library keeps asking
//! the network (and hears announcements and goodbyes), we re-browse every 30s so cached
//! instances are reported again, and addresses not reported for 60s expire.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mdns_sd::{DaemonEvent, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Target;
use crate::Error;
use crate::config::fnv1a;

/// How long a lookup of an app not seen yet waits for an answer (upstream: 1s).
const FIRST_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an address stays usable after it was last reported (upstream: 60s).
const ADDRESS_TTL: Duration = Duration::from_secs(60);
/// How often a browsed service type is asked again (upstream: 30s).
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Refresh rounds without a lookup after which a service type is no longer browsed.
const IDLE_REFRESHES: u32 = 4;
/// A lookup that finds nothing re-browses at most this often.
const REBROWSE_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long shutdown waits for the daemon to confirm the goodbye.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(1);
/// The library repeats a goodbye after 120ms; the daemon must live that long for peers that
/// missed the first one.
const GOODBYE_REPEAT: Duration = Duration::from_millis(150);
/// TXT keys of a sidecar's announcement.
const TXT_APP_ID: &str = "appid";
const TXT_NAMESPACE: &str = "namespace";
/// RFC 6763 §7.2.
const SERVICE_NAME_MAX: usize = 15;
/// RFC 1035 label limit, for the instance name.
const LABEL_MAX: usize = 63;

/// The DNS-SD service type an app id is announced under: `_<app-id>._tcp.local.` when the id
/// (lower-cased) is a valid service name, else `_dapr-<hash>._tcp.local.`.
pub fn service_type(app_id: &str) -> String {
    let lower = app_id.to_ascii_lowercase();
    let name = if is_service_name(&lower) {
        lower
    } else {
        format!("dapr-{:010x}", fnv1a(app_id.as_bytes()) & 0xff_ffff_ffff)
    };
    format!("_{name}._tcp.local.")
}

/// RFC 6763 §7.2: 1-15 of `a-z`, `0-9`, `-`, at least one letter, no hyphen at either end or
/// twice in a row.
fn is_service_name(name: &str) -> bool {
    (1..=SERVICE_NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// This sidecar's announcement: instance `<hostname>:<pid>` (as upstream), the service type of
/// its app id, its internal gRPC port, app id and namespace in TXT. `addresses` empty means every
/// interface's own addresses, kept current by the library.
pub fn registration(
    app_id: &str,
    namespace: &str,
    hostname: &str,
    pid: u32,
    addresses: &[IpAddr],
    port: u16,
) -> Result<ServiceInfo, Error> {
    let suffix = format!(":{pid}");
    let mut host = hostname;
    while host.len() + suffix.len() > LABEL_MAX {
        let mut end = host.len() - 1;
        while !host.is_char_boundary(end) {
            end -= 1;
        }
        host = &host[..end];
    }
    let instance = format!("{host}{suffix}");
    // The SRV target must be unique per process: sidecars in other network namespaces share
    // the machine's host name but not its addresses.
    let label: String = hostname
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(40)
        .collect();
    let label = if label.is_empty() { "daprd" } else { &label };
    let server = format!("{label}-{pid}.local.");
    let txt = [(TXT_APP_ID, app_id), (TXT_NAMESPACE, namespace)];
    let info = ServiceInfo::new(
        &service_type(app_id),
        &instance,
        &server,
        addresses,
        port,
        &txt[..],
    )
    .map_err(|e| Error::Resolver(format!("cannot build the mDNS announcement: {e}")))?;
    Ok(if addresses.is_empty() {
        info.enable_addr_auto()
    } else {
        info
    })
}

/// The target an answer is for, from its TXT record; `None` for an answer that is not a Dapr
/// sidecar or that was announced under a service type its app id does not map to.
fn announced_target(service: &ResolvedService) -> Option<Target> {
    let app_id = service.get_property_val_str(TXT_APP_ID)?;
    let namespace = service.get_property_val_str(TXT_NAMESPACE)?;
    if app_id.is_empty() || !service_type(app_id).eq_ignore_ascii_case(&service.ty_domain) {
        return None;
    }
    Some(Target {
        app_id: app_id.to_owned(),
        namespace: namespace.to_owned(),
    })
}

/// The addresses to dial for an answer; IPv6 link-local ones carry their interface as scope.
fn dial_addresses(service: &ResolvedService) -> Vec<SocketAddr> {
    let port = service.get_port();
    let mut addrs: Vec<SocketAddr> = service
        .get_addresses()
        .iter()
        .map(|ip| match ip {
            ScopedIp::V4(v4) => SocketAddr::new(IpAddr::V4(*v4.addr()), port),
            ScopedIp::V6(v6) => {
                let scope = if v6.addr().is_unicast_link_local() {
                    v6.scope_id().index
                } else {
                    0
                };
                SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, scope))
            }
            other => SocketAddr::new(other.to_ip_addr(), port),
        })
        .collect();
    addrs.sort();
    addrs
}

/// Addresses per target and instance, each usable until it expires.
#[derive(Default)]
struct AddressBook {
    targets: HashMap<Target, Found>,
}

#[derive(Default)]
struct Found {
    /// By instance full name (ordered, so round-robin is stable): addresses and expiry.
    instances: BTreeMap<String, (Vec<SocketAddr>, Instant)>,
    next_v4: usize,
    next_v6: usize,
}

impl AddressBook {
    /// Records what an instance answered; an answer without addresses removes it.
    fn upsert(&mut self, target: Target, instance: &str, addrs: Vec<SocketAddr>, now: Instant) {
        let found = self.targets.entry(target).or_default();
        found
            .instances
            .retain(|name, _| !name.eq_ignore_ascii_case(instance));
        if !addrs.is_empty() {
            found
                .instances
                .insert(instance.to_owned(), (addrs, now + ADDRESS_TTL));
        }
    }

    /// Forgets an instance that said goodbye.
    fn remove_instance(&mut self, instance: &str) {
        for found in self.targets.values_mut() {
            found
                .instances
                .retain(|name, _| !name.eq_ignore_ascii_case(instance));
        }
        self.targets.retain(|_, found| !found.instances.is_empty());
    }

    /// Forgets a target; returns its instances' names.
    fn evict(&mut self, target: &Target) -> Vec<String> {
        self.targets
            .remove(target)
            .map(|found| found.instances.into_keys().collect())
            .unwrap_or_default()
    }

    /// The next address of a target: round-robin over its IPv4 addresses, over its IPv6 ones
    /// only when it has no IPv4 address (as upstream).
    fn next(&mut self, target: &Target, now: Instant) -> Option<SocketAddr> {
        let found = self.targets.get_mut(target)?;
        found.instances.retain(|_, (_, expires)| *expires > now);
        let all = || found.instances.values().flat_map(|(addrs, _)| addrs.iter());
        let v4 = all().filter(|a| a.is_ipv4()).count();
        let (ipv4, count) = if v4 > 0 {
            (true, v4)
        } else {
            (false, all().count())
        };
        if count == 0 {
            self.targets.remove(target);
            return None;
        }
        let counter = if ipv4 {
            &mut found.next_v4
        } else {
            &mut found.next_v6
        };
        let i = *counter % count;
        *counter = counter.wrapping_add(1);
        found
            .instances
            .values()
            .flat_map(|(addrs, _)| addrs.iter())
            .filter(|a| a.is_ipv4() == ipv4)
            .nth(i)
            .copied()
    }
}

pub struct Mdns {
    inner: Arc<Inner>,
}

struct Inner {
    daemon: ServiceDaemon,
    own: ServiceInfo,
    book: Mutex<AddressBook>,
    /// Bumped whenever the book learns something, to wake lookups waiting for a first answer.
    changed: tokio::sync::watch::Sender<()>,
    /// Browses running, by service type.
    watches: Mutex<HashMap<String, Arc<Watch>>>,
    stopped: CancellationToken,
}

/// A running browse of one service type.
#[derive(Default)]
struct Watch {
    /// Asks for a fresh browse (a lookup found nothing usable).
    kick: Notify,
    /// A lookup happened since the last refresh round.
    used: AtomicBool,
}

impl Mdns {
    /// Starts the mDNS daemon (a thread of the library) and prepares the announcement.
    pub fn new(
        app_id: &str,
        namespace: &str,
        hostname: &str,
        addresses: &[IpAddr],
        port: u16,
    ) -> Result<Self, Error> {
        let own = registration(
            app_id,
            namespace,
            hostname,
            std::process::id(),
            addresses,
            port,
        )?;
        let daemon = ServiceDaemon::new()
            .map_err(|e| Error::Resolver(format!("cannot start the mDNS daemon: {e}")))?;
        Ok(Mdns {
            inner: Arc::new(Inner {
                daemon,
                own,
                book: Mutex::new(AddressBook::default()),
                changed: tokio::sync::watch::Sender::new(()),
                watches: Mutex::new(HashMap::new()),
                stopped: CancellationToken::new(),
            }),
        })
    }

    pub async fn resolve(&self, target: &Target) -> Result<SocketAddr, Error> {
        let ty = service_type(&target.app_id);
        let (watch, started) = self.inner.watch(&ty)?;
        // Subscribed before the first look, so an answer arriving in between is not missed.
        let mut changed = self.inner.changed.subscribe();
        if let Some(addr) = self.inner.next(target) {
            return Ok(addr);
        }
        if !started {
            watch.kick.notify_one();
        }
        let deadline = tokio::time::Instant::now() + FIRST_LOOKUP_TIMEOUT;
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, changed.changed()).await {
            if let Some(addr) = self.inner.next(target) {
                return Ok(addr);
            }
        }
        Err(Error::Resolver(format!(
            "couldn't find service: {} (no mDNS answer for {ty} in namespace {} within {}s)",
            target.app_id,
            target.namespace,
            FIRST_LOOKUP_TIMEOUT.as_secs()
        )))
    }

    /// Forgets a target after a connection to it failed, and asks the network whether its
    /// instances still exist, so the library drops the ones that do not answer (RFC 6762 §10.4).
    pub fn evict(&self, target: &Target) {
        let instances = match self.inner.book.lock() {
            Ok(mut book) => book.evict(target),
            Err(_) => return,
        };
        for instance in instances {
            if let Err(e) = self
                .inner
                .daemon
                .verify(instance, mdns_sd::VERIFY_TIMEOUT_DEFAULT)
            {
                tracing::debug!(error = %e, "cannot ask mDNS to verify an instance");
            }
        }
    }

    /// Announces this sidecar until `shutdown`, then says goodbye and stops the daemon.
    pub async fn run_registration(&self, shutdown: CancellationToken) {
        let inner = &self.inner;
        if let Ok(events) = inner.daemon.monitor() {
            let stopped = inner.stopped.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopped.cancelled() => return,
                        event = events.recv_async() => match event {
                            Ok(DaemonEvent::Error(e)) => tracing::warn!(error = %e, "mDNS daemon error"),
                            Ok(DaemonEvent::NameChange(change)) => tracing::warn!(from = %change.original, to = %change.new_name, "mDNS name conflict, renamed"),
                            Ok(_) => {}
                            Err(_) => return,
                        },
                    }
                }
            });
        }
        let fullname = inner.own.get_fullname().to_owned();
        match inner.daemon.register(inner.own.clone()) {
            Ok(()) => tracing::info!(
                instance = %fullname,
                port = inner.own.get_port(),
                "announcing this sidecar over mDNS"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot announce this sidecar over mDNS"),
        }
        shutdown.cancelled().await;
        match inner.daemon.unregister(&fullname) {
            Ok(status) => {
                if tokio::time::timeout(UNREGISTER_TIMEOUT, status.recv_async())
                    .await
                    .is_ok()
                {
                    tokio::time::sleep(GOODBYE_REPEAT).await;
                    tracing::info!(instance = %fullname, "mDNS announcement withdrawn");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot withdraw the mDNS announcement"),
        }
        inner.stopped.cancel();
        if let Ok(status) = inner.daemon.shutdown() {
            let _ = tokio::time::timeout(UNREGISTER_TIMEOUT, status.recv_async()).await;
        }
    }
}

impl Inner {
    fn next(&self, target: &Target) -> Option<SocketAddr> {
        self.book.lock().ok()?.next(target, Instant::now())
    }

    /// The browse of a service type, started if none runs; marks it used.
    fn watch(self: &Arc<Self>, ty: &str) -> Result<(Arc<Watch>, bool), Error> {
        let mut watches = self
            .watches
            .lock()
            .map_err(|_| Error::Resolver("mDNS browse table poisoned".into()))?;
        if let Some(watch) = watches.get(ty) {
            watch.used.store(true, Ordering::Relaxed);
            return Ok((Arc::clone(watch), false));
        }
        let watch = Arc::new(Watch::default());
        watch.used.store(true, Ordering::Relaxed);
        watches.insert(ty.to_owned(), Arc::clone(&watch));
        tokio::spawn(Arc::clone(self).run_watch(ty.to_owned(), Arc::clone(&watch)));
        Ok((watch, true))
    }

    /// Removes an idle browse unless a lookup touched it meanwhile; true when removed.
    fn retire(&self, ty: &str, watch: &Arc<Watch>) -> bool {
        let Ok(mut watches) = self.watches.lock() else {
            return false;
        };
        if watch.used.load(Ordering::Relaxed) {
            return false;
        }
        if watches.get(ty).is_some_and(|w| Arc::ptr_eq(w, watch)) {
            watches.remove(ty);
        }
        true
    }

    fn browse(&self, ty: &str) -> Option<mdns_sd::Receiver<ServiceEvent>> {
        match self.daemon.browse(ty) {
            Ok(events) => Some(events),
            Err(e) => {
                tracing::warn!(service = ty, error = %e, "cannot browse mDNS");
                None
            }
        }
    }

    /// Browses one service type until it is idle or the resolver stops, feeding the book.
    async fn run_watch(self: Arc<Self>, ty: String, watch: Arc<Watch>) {
        let mut events = self.browse(&ty);
        let mut browsed_at = Instant::now();
        let mut refresh = tokio::time::interval_at(
            tokio::time::Instant::now() + REFRESH_INTERVAL,
            REFRESH_INTERVAL,
        );
        let mut idle = 0;
        loop {
            let next_event = async {
                match &events {
                    Some(rx) => rx.recv_async().await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stopped.cancelled() => break,
                event = next_event => match event {
                    Some(event) => self.apply(event),
                    // The library ended this subscription; the next kick or refresh restarts it.
                    None => events = None,
                },
                _ = watch.kick.notified() => {
                    if events.is_none() || browsed_at.elapsed() >= REBROWSE_MIN_INTERVAL {
                        events = self.browse(&ty);
                        browsed_at = Instant::now();
                    }
                }
                _ = refresh.tick() => {
                    idle = if watch.used.swap(false, Ordering::Relaxed) { 0 } else { idle + 1 };
                    if idle >= IDLE_REFRESHES && self.retire(&ty, &watch) {
                        tracing::debug!(service = %ty, "no lookups for a while, stopping the mDNS browse");
                        break;
                    }
                    events = self.browse(&ty);
                    browsed_at = Instant::now();
                }
            }
        }
        let _ = self.daemon.stop_browse(&ty);
    }

    fn apply(&self, event: ServiceEvent) {
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let Some(target) = announced_target(&service) else {
                    tracing::debug!(instance = %service.fullname, "ignoring an mDNS answer that is not for a Dapr app of this service type");
                    return;
                };
                let addrs = dial_addresses(&service);
                tracing::debug!(instance = %service.fullname, app_id = %target.app_id, ?addrs, "mDNS answer");
                book.upsert(target, &service.fullname, addrs, Instant::now());
            }
            ServiceEvent::ServiceRemoved(_, instance) => {
                tracing::debug!(%instance, "mDNS instance gone");
                book.remove_instance(&instance);
            }
            _ => return,
        }
        drop(book);
        self.changed.send_replace(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> Target {
        Target {
            app_id: "orders".into(),
            namespace: "default".into(),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn short_lowercase_ids_are_their_own_service_type() {
        assert_eq!(service_type("orders"), "_orders._tcp.local.");
        assert_eq!(service_type("Orders"), "_orders._tcp.local.");
        assert_eq!(service_type("a1-b2"), "_a1-b2._tcp.local.");
        assert_eq!(
            service_type("abcdefghijklmno"),
            "_abcdefghijklmno._tcp.local."
        );
    }

    #[test]
    fn ids_that_are_no_valid_service_name_map_to_a_stable_hash_of_15_bytes() {
        for id in [
            "abcdefghijklmnop",
            "order_service",
            "-orders",
            "orders-",
            "a--b",
            "12345",
            "überapp",
        ] {
            let ty = service_type(id);
            let name = ty
                .strip_prefix('_')
                .and_then(|t| t.strip_suffix("._tcp.local."))
                .unwrap();
            assert!(name.starts_with("dapr-"), "{id}: {ty}");
            assert_eq!(name.len(), 15, "{id}: {ty}");
            assert!(is_service_name(name), "{id}: {ty}");
            assert_eq!(ty, service_type(id), "deterministic");
        }
        assert_ne!(
            service_type("checkout-service-v2"),
            service_type("checkout-service-v3")
        );
    }

    #[test]
    fn an_announcement_carries_the_full_id_and_namespace_and_resolves_back_to_them() {
        let ip: IpAddr = "198.18.0.12".parse().unwrap();
        let id = "a-rather-long-app-id-beyond-fifteen";
        let info = registration(id, "shop", "host.example.org", 4242, &[ip], 50002).unwrap();
        assert_eq!(info.get_type(), service_type(id));
        assert!(
            info.get_fullname()
                .starts_with("host\\.example\\.org:4242.")
        );
        assert_eq!(info.get_hostname(), "host-4242.local.");
        let answer = info.as_resolved_service();
        assert_eq!(
            announced_target(&answer),
            Some(Target {
                app_id: id.into(),
                namespace: "shop".into()
            })
        );
        assert_eq!(dial_addresses(&answer), vec![addr("198.18.0.12:50002")]);
    }

    #[test]
    fn answers_whose_txt_does_not_match_the_service_type_or_lacks_the_app_id_are_ignored() {
        // Announced under `_orders` but claiming another app: not trusted.
        let ip: IpAddr = "198.18.0.12".parse().unwrap();
        let mut wrong = registration("orders", "default", "h", 1, &[ip], 1)
            .unwrap()
            .as_resolved_service();
        wrong.ty_domain = service_type("checkout");
        assert_eq!(announced_target(&wrong), None);

        let foreign = ServiceInfo::new(
            "_orders._tcp.local.",
            "printer",
            "printer.local.",
            ip,
            631,
            &[("note", "not dapr")][..],
        )
        .unwrap()
        .as_resolved_service();
        assert_eq!(announced_target(&foreign), None);
    }

    #[test]
    fn the_instance_name_fits_one_dns_label() {
        let host = "h".repeat(100);
        let info = registration("orders", "default", &host, 4_000_000, &[], 1).unwrap();
        let instance = info
            .get_fullname()
            .strip_suffix("._orders._tcp.local.")
            .unwrap();
        assert_eq!(instance.len(), LABEL_MAX);
        assert!(instance.ends_with(":4000000"));
        assert!(
            info.is_addr_auto(),
            "no address given: every interface's own"
        );
    }

    #[test]
    fn round_robin_covers_every_ipv4_address_before_any_ipv6_one() {
        let now = Instant::now();
        let mut book = AddressBook::default();
        book.upsert(
            orders(),
            "b:1._orders._tcp.local.",
            vec![addr("198.18.0.12:1"), addr("[fd00::12]:1")],
            now,
        );
        book.upsert(
            orders(),
            "c:2._orders._tcp.local.",
            vec![addr("198.18.0.13:2")],
            now,
        );
        let picks: Vec<_> = (0..4).map(|_| book.next(&orders(), now).unwrap()).collect();
        assert_eq!(
            picks,
            [
                addr("198.18.0.12:1"),
                addr("198.18.0.13:2"),
                addr("198.18.0.12:1"),
                addr("198.18.0.13:2")
            ]
        );

        let mut v6_only = AddressBook::default();
        v6_only.upsert(
            orders(),
            "b:1._orders._tcp.local.",
            vec![addr("[fd00::12]:1"), addr("[fd00::13]:1")],
            now,
        );
        let picks: Vec<_> = (0..3)
            .map(|_| v6_only.next(&orders(), now).unwrap())
            .collect();
        assert_eq!(
            picks,
            [
                addr("[fd00::12]:1"),
                addr("[fd00::13]:1"),
                addr("[fd00::12]:1")
            ]
        );
    }

    #[test]
    fn addresses_expire_60s_after_they_were_last_reported() {
        let t0 = Instant::now();
        let mut book = AddressBook::default();
        let a = addr("198.18.0.12:1");
        book.upsert(orders(), "b:1._orders._tcp.local.", vec![a], t0);
        assert_eq!(book.next(&orders(), t0 + Duration::from_secs(59)), Some(a));
        // Reported again by a refresh: good for another 60s.
        book.upsert(
            orders(),
            "b:1._orders._tcp.local.",
            vec![a],
            t0 + Duration::from_secs(30),
        );
        assert_eq!(book.next(&orders(), t0 + Duration::from_secs(89)), Some(a));
        assert_eq!(book.next(&orders(), t0 + Duration::from_secs(90)), None);
        assert!(book.targets.is_empty(), "expired targets are dropped");
    }

    #[test]
    fn goodbyes_and_evictions_forget_instances() {
        let now = Instant::now();
        let mut book = AddressBook::default();
        let (b, c) = (addr("198.18.0.12:1"), addr("198.18.0.13:1"));
        book.upsert(orders(), "B:1._orders._tcp.local.", vec![b], now);
        book.upsert(orders(), "c:2._orders._tcp.local.", vec![c], now);
        book.remove_instance("b:1._orders._tcp.local.");
        assert_eq!(book.next(&orders(), now), Some(c));
        assert_eq!(book.next(&orders(), now), Some(c));
        assert_eq!(
            book.evict(&orders()),
            vec!["c:2._orders._tcp.local.".to_owned()]
        );
        assert_eq!(book.next(&orders(), now), None);
        // An answer with no addresses left removes the instance.
        book.upsert(orders(), "c:2._orders._tcp.local.", vec![c], now);
        book.upsert(orders(), "c:2._orders._tcp.local.", vec![], now);
        assert_eq!(book.next(&orders(), now), None);
    }

    #[test]
    fn targets_in_other_namespaces_are_kept_apart() {
        let now = Instant::now();
        let mut book = AddressBook::default();
        let other = Target {
            app_id: "orders".into(),
            namespace: "shop".into(),
        };
        book.upsert(
            other.clone(),
            "b:1._orders._tcp.local.",
            vec![addr("198.18.0.12:1")],
            now,
        );
        assert_eq!(book.next(&orders(), now), None);
        assert!(book.next(&other, now).is_some());
    }
}
