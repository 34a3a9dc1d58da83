//! The `mdns` resolver, standalone mode's default, speaking upstream's dialect (components-contrib
//! `nameresolution/mdns/mdns.go` over `github.com/grandcat/zeroconf` v1.0.0) so our sidecars and
//! upstream's find each other:
//!
//! - a sidecar announces service `<app-id>.local.` (the app id as one label, no `_tcp`), instance
//!   `<hostname>:<pid>.<app-id>.local.`, SRV target `<hostname>.local.` with the internal gRPC
//!   port, TXT with the one string `<app-id>`, and A records for its address;
//! - a lookup multicasts a PTR question for `<app-id>.local.`; an answer counts when one message
//!   carries the instance's SRV, its TXT whose first string is exactly the app id, and A/AAAA
//!   records for the SRV target (what zeroconf's browser requires);
//! - a PTR or ANY question for our service name is answered with the PTR and, as additional
//!   records, SRV, TXT and addresses; a question for our instance name with SRV, TXT and
//!   addresses; by multicast, or unicast to the asker when it sets the unicast-response bit or
//!   asks from a port other than 5353. Start-up sends the answer unasked twice, 1 s apart;
//!   shutdown sends it with TTL 0 (goodbye).
//!
//! Namespaces play no part, as upstream. IPv4 multicast only (224.0.0.251:5353): upstream sends
//! and listens on both IPv4 and IPv6, so IPv4 reaches it.
//!
//! Bounds: a lookup of an app not in the cache waits at most 1 s (upstream: 1 s); addresses live
//! 60 s after they were last heard (upstream: 60 s) and apps looked up in the last 2 minutes are
//! asked again every 30 s (upstream: 30 s, for every cached app); a lookup asks the network at
//! most once a second per app id; answers are kept only for app ids being looked up.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::ResolveError;
use super::Target;

/// How long a lookup of an app not seen yet waits for an answer (upstream: 1s).
const FIRST_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an address stays usable after it was last heard (upstream: 60s).
const ADDRESS_TTL: Duration = Duration::from_secs(60);
/// How often looked-up apps are asked for again (upstream: 30s).
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// An app id not looked up for this long is no longer asked for, and its answers not kept.
const WANTED_FOR: Duration = Duration::from_secs(120);
/// A lookup that finds nothing asks the network at most this often per app id.
const REQUERY_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// TTL of PTR, SRV and TXT records (zeroconf's 3200) and of address records (120, RFC 6762 §10).
const RECORD_TTL: u32 = 3200;
const ADDRESS_RECORD_TTL: u32 = 120;
/// Unsolicited announcements at start, and the wait between them (zeroconf: 2, 1s).
const ANNOUNCEMENTS: u32 = 2;
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// The goodbye is sent twice, this far apart, for peers that miss the first.
const GOODBYE_REPEAT: Duration = Duration::from_millis(150);

const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const MDNS_PORT: u16 = 5353;

const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
/// The top bit of a question's class: the asker wants a unicast answer (RFC 6762 §5.4).
const CLASS_UNICAST_RESPONSE: u16 = 0x8000;

/// A domain name as its labels, compared without regard to ASCII case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Name(Vec<String>);

impl Name {
    fn new(labels: &[&str]) -> Name {
        Name(
            labels
                .iter()
                .flat_map(|l| l.split('.'))
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    fn same(&self, other: &Name) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for label in &self.0 {
            write!(f, "{label}.")?;
        }
        Ok(())
    }
}

/// The service name an app id is announced and browsed under: `<app-id>.local.`.
pub fn service_name(app_id: &str) -> Name {
    Name(vec![app_id.to_owned(), "local".to_owned()])
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    Ptr(Name),
    Srv { port: u16, target: Name },
    Txt(Vec<String>),
    A(Ipv4Addr),
    Aaaa(std::net::Ipv6Addr),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: Name,
    pub ttl: u32,
    pub data: RData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub qtype: u16,
    pub unicast: bool,
}

/// The parts of a DNS message mDNS uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub response: bool,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authority: usize,
    pub additional: Vec<Record>,
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&[0, 0]);
        // QR and AA for responses.
        let flags: u16 = if self.response { 0x8400 } else { 0 };
        out.extend_from_slice(&flags.to_be_bytes());
        for n in [
            self.questions.len(),
            self.answers.len(),
            0,
            self.additional.len(),
        ] {
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        for q in &self.questions {
            put_name(&mut out, &q.name);
            out.extend_from_slice(&q.qtype.to_be_bytes());
            let class = CLASS_IN | if q.unicast { CLASS_UNICAST_RESPONSE } else { 0 };
            out.extend_from_slice(&class.to_be_bytes());
        }
        for r in self.answers.iter().chain(&self.additional) {
            put_record(&mut out, r);
        }
        out
    }

    /// Parses a message; `None` for anything malformed.
    pub fn decode(buf: &[u8]) -> Option<Message> {
        let u16_at = |i: usize| -> Option<u16> {
            Some(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]))
        };
        let flags = u16_at(2)?;
        let (qd, an, ns, ar) = (u16_at(4)?, u16_at(6)?, u16_at(8)?, u16_at(10)?);
        let mut pos = 12;
        let mut msg = Message {
            response: flags & 0x8000 != 0,
            authority: usize::from(ns),
            ..Message::default()
        };
        for _ in 0..qd {
            let name = read_name(buf, &mut pos)?;
            let (qtype, class) = (u16_at(pos)?, u16_at(pos + 2)?);
            pos += 4;
            msg.questions.push(Question {
                name,
                qtype,
                unicast: class & CLASS_UNICAST_RESPONSE != 0,
            });
        }
        for i in 0..(u32::from(an) + u32::from(ns) + u32::from(ar)) {
            let record = read_record(buf, &mut pos)?;
            if i < u32::from(an) {
                msg.answers.push(record);
            } else if i >= u32::from(an) + u32::from(ns) {
                msg.additional.push(record);
            }
        }
        Some(msg)
    }
}

fn put_name(out: &mut Vec<u8>, name: &Name) {
    for label in &name.0 {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
}

fn put_record(out: &mut Vec<u8>, r: &Record) {
    put_name(out, &r.name);
    let (rtype, flush) = match &r.data {
        RData::Ptr(_) => (TYPE_PTR, false),
        RData::Srv { .. } => (TYPE_SRV, true),
        RData::Txt(_) => (TYPE_TXT, true),
        RData::A(_) => (TYPE_A, true),
        RData::Aaaa(_) => (TYPE_AAAA, true),
        RData::Other => return,
    };
    out.extend_from_slice(&rtype.to_be_bytes());
    // Unique records carry the cache-flush bit (RFC 6762 §10.2); shared PTRs do not.
    let class = CLASS_IN | if flush { 0x8000 } else { 0 };
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&r.ttl.to_be_bytes());
    let mut data = Vec::new();
    match &r.data {
        RData::Ptr(name) => put_name(&mut data, name),
        RData::Srv { port, target } => {
            data.extend_from_slice(&[0, 0, 0, 0]);
            data.extend_from_slice(&port.to_be_bytes());
            put_name(&mut data, target);
        }
        RData::Txt(strings) => {
            for s in strings {
                let bytes = &s.as_bytes()[..s.len().min(255)];
                data.push(bytes.len() as u8);
                data.extend_from_slice(bytes);
            }
        }
        RData::A(ip) => data.extend_from_slice(&ip.octets()),
        RData::Aaaa(ip) => data.extend_from_slice(&ip.octets()),
        RData::Other => {}
    }
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(&data);
}

/// Reads a possibly compressed name at `pos`, advancing `pos` past it.
fn read_name(buf: &[u8], pos: &mut usize) -> Option<Name> {
    let mut labels = Vec::new();
    let mut at = *pos;
    let mut jumped = false;
    // Each pointer must go backwards, so a loop cannot last; the bound is belt and braces.
    for _ in 0..128 {
        let len = *buf.get(at)?;
        match len {
            0 => {
                if !jumped {
                    *pos = at + 1;
                }
                return Some(Name(labels));
            }
            l if l & 0xc0 == 0xc0 => {
                let target = usize::from(u16::from_be_bytes([l & 0x3f, *buf.get(at + 1)?]));
                if target >= at {
                    return None;
                }
                if !jumped {
                    *pos = at + 2;
                    jumped = true;
                }
                at = target;
            }
            l if l & 0xc0 == 0 => {
                let label = buf.get(at + 1..at + 1 + usize::from(l))?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                at += 1 + usize::from(l);
            }
            _ => return None,
        }
    }
    None
}

fn read_record(buf: &[u8], pos: &mut usize) -> Option<Record> {
    let name = read_name(buf, pos)?;
    let header = buf.get(*pos..*pos + 10)?;
    let rtype = u16::from_be_bytes([header[0], header[1]]);
    let ttl = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let len = usize::from(u16::from_be_bytes([header[8], header[9]]));
    let start = *pos + 10;
    let rdata = buf.get(start..start + len)?;
    *pos = start + len;
    let data = match rtype {
        TYPE_PTR => {
            let mut at = start;
            RData::Ptr(read_name(buf, &mut at)?)
        }
        TYPE_SRV if len >= 7 => {
            let mut at = start + 6;
            RData::Srv {
                port: u16::from_be_bytes([rdata[4], rdata[5]]),
                target: read_name(buf, &mut at)?,
            }
        }
        TYPE_TXT => {
            let mut strings = Vec::new();
            let mut i = 0;
            while i < rdata.len() {
                let l = usize::from(rdata[i]);
                let s = rdata.get(i + 1..i + 1 + l)?;
                strings.push(String::from_utf8_lossy(s).into_owned());
                i += 1 + l;
            }
            RData::Txt(strings)
        }
        TYPE_A if len == 4 => RData::A(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
        TYPE_AAAA if len == 16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(rdata);
            RData::Aaaa(o.into())
        }
        _ => RData::Other,
    };
    Some(Record { name, ttl, data })
}

/// This sidecar's announcement, named as upstream's zeroconf registration names it.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub app_id: String,
    pub service: Name,
    pub instance: Name,
    pub host: Name,
    pub port: u16,
    pub addresses: Vec<IpAddr>,
}

impl Announcement {
    /// Instance `<hostname>:<pid>`, host `<hostname>.local.` (zeroconf adds `.local` unless the
    /// host name already ends with it).
    pub fn new(
        app_id: &str,
        hostname: &str,
        pid: u32,
        addresses: Vec<IpAddr>,
        port: u16,
    ) -> Announcement {
        let service = service_name(app_id);
        let trimmed = hostname.trim_matches('.');
        let host = if trimmed.ends_with("local") {
            Name::new(&[trimmed])
        } else {
            Name::new(&[trimmed, "local"])
        };
        let instance_label = format!("{trimmed}:{pid}");
        let mut instance = Name::new(&[&instance_label]);
        instance.0.extend(service.0.iter().cloned());
        Announcement {
            app_id: app_id.to_owned(),
            service,
            instance,
            host,
            port,
            addresses,
        }
    }

    /// SRV, TXT and address records (TTL 0 for a goodbye).
    fn instance_records(&self, goodbye: bool) -> Vec<Record> {
        let ttl = |t: u32| if goodbye { 0 } else { t };
        let mut records = vec![
            Record {
                name: self.instance.clone(),
                ttl: ttl(RECORD_TTL),
                data: RData::Srv {
                    port: self.port,
                    target: self.host.clone(),
                },
            },
            Record {
                name: self.instance.clone(),
                ttl: ttl(RECORD_TTL),
                data: RData::Txt(vec![self.app_id.clone()]),
            },
        ];
        records.extend(self.addresses.iter().map(|ip| Record {
            name: self.host.clone(),
            ttl: ttl(ADDRESS_RECORD_TTL),
            data: match ip {
                IpAddr::V4(v4) => RData::A(*v4),
                IpAddr::V6(v6) => RData::Aaaa(*v6),
            },
        }));
        records
    }

    fn ptr(&self, goodbye: bool) -> Record {
        Record {
            name: self.service.clone(),
            ttl: if goodbye { 0 } else { RECORD_TTL },
            data: RData::Ptr(self.instance.clone()),
        }
    }

    /// The unasked announcement (or goodbye): everything in the answer section.
    pub fn announcement(&self, goodbye: bool) -> Message {
        let mut answers = vec![self.ptr(goodbye)];
        answers.extend(self.instance_records(goodbye));
        Message {
            response: true,
            answers,
            ..Message::default()
        }
    }

    /// Our answer to a query, if it asks about us (zeroconf ignores queries carrying authority
    /// records, i.e. probes, and so do we).
    pub fn answer(&self, query: &Message) -> Option<Message> {
        if query.response || query.authority > 0 {
            return None;
        }
        let mut reply = Message {
            response: true,
            ..Message::default()
        };
        for q in &query.questions {
            if q.name.same(&self.service) && matches!(q.qtype, TYPE_PTR | TYPE_ANY) {
                // Known-answer suppression (RFC 6762 §7.1): the asker already has our PTR.
                let known = query.answers.iter().any(|r| {
                    r.name.same(&self.service)
                        && r.ttl >= RECORD_TTL / 2
                        && matches!(&r.data, RData::Ptr(p) if p.same(&self.instance))
                });
                if !known && reply.answers.is_empty() {
                    reply.answers.push(self.ptr(false));
                    reply.additional = self.instance_records(false);
                }
            } else if q.name.same(&self.instance)
                && matches!(q.qtype, TYPE_SRV | TYPE_TXT | TYPE_ANY)
                && reply.answers.is_empty()
            {
                reply.answers = self.instance_records(false);
            }
        }
        (!reply.answers.is_empty()).then_some(reply)
    }
}

/// What a response says about instances of `<app-id>.local.` services: per instance, the app
/// id (from a TXT whose first string equals the service label), and its addresses with the
/// SRV port, or an empty list for a goodbye.
pub fn instances_in(msg: &Message) -> Vec<(String, Name, Vec<SocketAddr>)> {
    if !msg.response {
        return Vec::new();
    }
    let records: Vec<&Record> = msg.answers.iter().chain(&msg.additional).collect();
    let mut found = Vec::new();
    for srv in &records {
        let RData::Srv { port, target } = &srv.data else {
            continue;
        };
        // `<instance>.<app-id>.local.`
        let n = srv.name.0.len();
        if n < 3 || !srv.name.0[n - 1].eq_ignore_ascii_case("local") {
            continue;
        }
        let app_label = &srv.name.0[n - 2];
        if srv.ttl == 0 {
            found.push((app_label.clone(), srv.name.clone(), Vec::new()));
            continue;
        }
        let txt_matches = records.iter().any(|r| {
            r.name.same(&srv.name)
                && matches!(&r.data, RData::Txt(t) if t.first() == Some(app_label))
        });
        if !txt_matches {
            continue;
        }
        let mut addrs: Vec<SocketAddr> = records
            .iter()
            .filter(|r| r.name.same(target) && r.ttl > 0)
            .filter_map(|r| match r.data {
                RData::A(ip) => Some(SocketAddr::new(IpAddr::V4(ip), *port)),
                RData::Aaaa(ip) => Some(SocketAddr::new(IpAddr::V6(ip), *port)),
                _ => None,
            })
            .collect();
        addrs.sort();
        addrs.dedup();
        if !addrs.is_empty() {
            found.push((app_label.clone(), srv.name.clone(), addrs));
        }
    }
    found
}

/// Addresses per app id and instance, each usable until it expires.
#[derive(Default)]
struct AddressBook {
    apps: HashMap<String, Found>,
}

#[derive(Default)]
struct Found {
    /// By instance name as text (ordered, so round-robin is stable): addresses and expiry.
    instances: BTreeMap<String, (Vec<SocketAddr>, Instant)>,
    next_v4: usize,
    next_v6: usize,
}

impl AddressBook {
    /// Records what an instance answered; an answer without addresses removes it.
    fn upsert(&mut self, app_id: &str, instance: &str, addrs: Vec<SocketAddr>, now: Instant) {
        let found = self.apps.entry(app_id.to_owned()).or_default();
        found
            .instances
            .retain(|name, _| !name.eq_ignore_ascii_case(instance));
        if !addrs.is_empty() {
            found
                .instances
                .insert(instance.to_owned(), (addrs, now + ADDRESS_TTL));
        }
        if found.instances.is_empty() {
            self.apps.remove(app_id);
        }
    }

    /// Forgets an app; returns its instances' names.
    fn evict(&mut self, app_id: &str) -> Vec<String> {
        self.apps
            .remove(app_id)
            .map(|found| found.instances.into_keys().collect())
            .unwrap_or_default()
    }

    /// The next address of an app: round-robin over its IPv4 addresses, over its IPv6 ones only
    /// when it has no IPv4 address (as upstream).
    fn next(&mut self, app_id: &str, now: Instant) -> Option<SocketAddr> {
        let found = self.apps.get_mut(app_id)?;
        found.instances.retain(|_, (_, expires)| *expires > now);
        let all = || found.instances.values().flat_map(|(addrs, _)| addrs.iter());
        let v4 = all().filter(|a| a.is_ipv4()).count();
        let (ipv4, count) = if v4 > 0 {
            (true, v4)
        } else {
            (false, all().count())
        };
        if count == 0 {
            self.apps.remove(app_id);
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

/// The IPv4 addresses of the interfaces mDNS runs on: every non-loopback one.
fn interface_addresses() -> Vec<Ipv4Addr> {
    let mut v4: Vec<Ipv4Addr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.addr {
            if_addrs::IfAddr::V4(a) if !a.ip.is_loopback() => Some(a.ip),
            _ => None,
        })
        .collect();
    v4.sort();
    v4.dedup();
    v4
}

/// The socket on 5353, joined to the group on every interface.
fn bind(interfaces: &[Ipv4Addr]) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Other responders on this machine (upstream's daprd, avahi) share the port.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, MDNS_PORT)).into())?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_ttl_v4(255)?;
    let mut joined = 0;
    for ip in interfaces {
        match socket.join_multicast_v4(&MDNS_GROUP, ip) {
            Ok(()) => joined += 1,
            Err(e) => tracing::debug!(interface = %ip, error = %e, "cannot join the mDNS group"),
        }
    }
    if joined == 0 {
        socket.join_multicast_v4(&MDNS_GROUP, &Ipv4Addr::UNSPECIFIED)?;
    }
    UdpSocket::from_std(socket.into())
}

pub struct Mdns {
    inner: Arc<Inner>,
}

struct Inner {
    own: Announcement,
    interfaces: Vec<Ipv4Addr>,
    /// Bound on first use (inside the runtime), with its receive loop.
    socket: OnceLock<Result<Arc<UdpSocket>, Arc<std::io::Error>>>,
    /// Sends are serialised: each picks its outgoing interface first.
    send_lock: tokio::sync::Mutex<()>,
    book: Mutex<AddressBook>,
    /// App ids being looked up: when last looked up, and when last asked for.
    wanted: Mutex<HashMap<String, (Instant, Option<Instant>)>>,
    /// Bumped whenever the book learns something, to wake lookups waiting for a first answer.
    changed: tokio::sync::watch::Sender<()>,
    stopped: CancellationToken,
}

impl Mdns {
    /// Prepares the announcement: `addresses` empty means every interface's IPv4 addresses.
    pub fn new(
        app_id: &str,
        hostname: &str,
        addresses: &[IpAddr],
        port: u16,
    ) -> Result<Self, ResolveError> {
        let interfaces = interface_addresses();
        let announced = if addresses.is_empty() {
            interfaces.iter().copied().map(IpAddr::V4).collect()
        } else {
            addresses.to_vec()
        };
        let own = Announcement::new(app_id, hostname, std::process::id(), announced, port);
        Ok(Mdns {
            inner: Arc::new(Inner {
                own,
                interfaces,
                socket: OnceLock::new(),
                send_lock: tokio::sync::Mutex::new(()),
                book: Mutex::new(AddressBook::default()),
                wanted: Mutex::new(HashMap::new()),
                changed: tokio::sync::watch::Sender::new(()),
                stopped: CancellationToken::new(),
            }),
        })
    }

    pub async fn resolve(&self, target: &Target) -> Result<SocketAddr, ResolveError> {
        let inner = &self.inner;
        inner.socket()?;
        let app_id = target.app_id.as_str();
        // Subscribed before the first look, so an answer arriving in between is not missed.
        let mut changed = inner.changed.subscribe();
        let ask = inner.want(app_id);
        if let Some(addr) = inner.next(app_id) {
            return Ok(addr);
        }
        if ask {
            inner.query(app_id).await;
        }
        let deadline = tokio::time::Instant::now() + FIRST_LOOKUP_TIMEOUT;
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, changed.changed()).await {
            if let Some(addr) = inner.next(app_id) {
                return Ok(addr);
            }
        }
        Err(ResolveError::NoMdnsAnswer {
            app_id: app_id.to_owned(),
            service: service_name(app_id).to_string(),
            seconds: FIRST_LOOKUP_TIMEOUT.as_secs(),
        })
    }

    /// Forgets an app after a connection to it failed: the next lookup asks the network, and
    /// only instances that answer come back.
    pub fn evict(&self, target: &Target) {
        let instances = match self.inner.book.lock() {
            Ok(mut book) => book.evict(&target.app_id),
            Err(_) => return,
        };
        for instance in instances {
            tracing::debug!(%instance, "mDNS instance gone");
        }
    }

    /// Announces this sidecar and answers queries until `shutdown`, then says goodbye.
    pub async fn run_registration(&self, shutdown: CancellationToken) {
        let inner = &self.inner;
        if let Err(e) = inner.socket() {
            tracing::warn!(error = %e, "cannot announce this sidecar over mDNS");
            return;
        }
        tracing::info!(
            instance = %inner.own.instance,
            port = inner.own.port,
            addresses = ?inner.own.addresses,
            "announcing this sidecar over mDNS"
        );
        let announce = async {
            for i in 0..ANNOUNCEMENTS {
                if i > 0 {
                    tokio::time::sleep(ANNOUNCE_INTERVAL).await;
                }
                inner.multicast(&inner.own.announcement(false)).await;
            }
            std::future::pending::<()>().await
        };
        let refresh = async {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + REFRESH_INTERVAL,
                REFRESH_INTERVAL,
            );
            loop {
                tick.tick().await;
                for app_id in inner.refresh_list() {
                    inner.query(&app_id).await;
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = announce => {}
            _ = refresh => {}
        }
        let goodbye = inner.own.announcement(true);
        inner.multicast(&goodbye).await;
        tokio::time::sleep(GOODBYE_REPEAT).await;
        inner.multicast(&goodbye).await;
        tracing::info!(instance = %inner.own.instance, "mDNS announcement withdrawn");
        inner.stopped.cancel();
    }
}

impl Inner {
    fn socket(self: &Arc<Self>) -> Result<Arc<UdpSocket>, ResolveError> {
        self.socket
            .get_or_init(|| match bind(&self.interfaces) {
                Ok(socket) => {
                    let socket = Arc::new(socket);
                    tokio::spawn(Arc::clone(self).receive(Arc::clone(&socket)));
                    Ok(socket)
                }
                Err(e) => Err(Arc::new(e)),
            })
            .clone()
            .map_err(|source| ResolveError::MdnsSocket {
                port: MDNS_PORT,
                source,
            })
    }

    /// Marks an app id as looked up; true when the network may be asked about it now.
    fn want(&self, app_id: &str) -> bool {
        let Ok(mut wanted) = self.wanted.lock() else {
            return false;
        };
        let now = Instant::now();
        let entry = wanted.entry(app_id.to_owned()).or_insert((now, None));
        entry.0 = now;
        let ask = entry
            .1
            .is_none_or(|at| now.duration_since(at) >= REQUERY_MIN_INTERVAL);
        if ask {
            entry.1 = Some(now);
        }
        ask
    }

    /// App ids looked up recently, to ask for again; others are forgotten.
    fn refresh_list(&self) -> Vec<String> {
        let Ok(mut wanted) = self.wanted.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        wanted.retain(|_, (used, _)| now.duration_since(*used) < WANTED_FOR);
        wanted.keys().cloned().collect()
    }

    fn is_wanted(&self, app_id: &str) -> bool {
        self.wanted
            .lock()
            .is_ok_and(|wanted| wanted.contains_key(app_id))
    }

    fn next(&self, app_id: &str) -> Option<SocketAddr> {
        self.book.lock().ok()?.next(app_id, Instant::now())
    }

    async fn query(self: &Arc<Self>, app_id: &str) {
        let msg = Message {
            questions: vec![Question {
                name: service_name(app_id),
                qtype: TYPE_PTR,
                unicast: false,
            }],
            ..Message::default()
        };
        self.multicast(&msg).await;
    }

    /// Sends to the group on every interface (or the default one when none is known).
    async fn multicast(&self, msg: &Message) {
        let Some(Ok(socket)) = self.socket.get() else {
            return;
        };
        let bytes = msg.encode();
        let group = SocketAddr::V4(SocketAddrV4::new(MDNS_GROUP, MDNS_PORT));
        let _guard = self.send_lock.lock().await;
        if self.interfaces.is_empty() {
            if let Err(e) = socket.send_to(&bytes, group).await {
                tracing::debug!(error = %e, "cannot send an mDNS message");
            }
            return;
        }
        for ip in &self.interfaces {
            let sent = match socket2::SockRef::from(socket.as_ref()).set_multicast_if_v4(ip) {
                Ok(()) => socket.send_to(&bytes, group).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                tracing::debug!(interface = %ip, error = %e, "cannot send an mDNS message");
            }
        }
    }

    async fn receive(self: Arc<Self>, socket: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 9000];
        loop {
            let (n, from) = tokio::select! {
                _ = self.stopped.cancelled() => return,
                received = socket.recv_from(&mut buf) => match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "mDNS receive failed");
                        continue;
                    }
                },
            };
            let Some(msg) = Message::decode(&buf[..n]) else {
                continue;
            };
            if msg.response {
                self.learn(&msg);
            } else if let Some(reply) = self.own.answer(&msg) {
                let unicast = from.port() != MDNS_PORT || msg.questions.iter().any(|q| q.unicast);
                if unicast {
                    if let Err(e) = socket.send_to(&reply.encode(), from).await {
                        tracing::debug!(error = %e, %from, "cannot answer an mDNS query");
                    }
                } else {
                    self.multicast(&reply).await;
                }
            }
        }
    }

    fn learn(&self, msg: &Message) {
        let now = Instant::now();
        let mut learned = false;
        for (app_id, instance, addrs) in instances_in(msg) {
            if !self.is_wanted(&app_id) {
                continue;
            }
            let Ok(mut book) = self.book.lock() else {
                return;
            };
            if addrs.is_empty() {
                tracing::debug!(%instance, "mDNS instance gone");
            } else {
                tracing::debug!(%instance, %app_id, ?addrs, "mDNS answer");
            }
            book.upsert(&app_id, &instance.to_string(), addrs, now);
            learned = true;
        }
        if learned {
            self.changed.send_replace(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn orders() -> Announcement {
        Announcement::new(
            "orders",
            "host",
            4242,
            vec!["198.18.0.12".parse().unwrap()],
            50002,
        )
    }

    #[test]
    fn names_are_upstreams() {
        let a = orders();
        assert_eq!(a.service.to_string(), "orders.local.");
        assert_eq!(a.instance.to_string(), "host:4242.orders.local.");
        assert_eq!(a.host.to_string(), "host.local.");
        let dotted = Announcement::new("Orders", "box.example.org", 1, vec![], 1);
        assert_eq!(dotted.service.to_string(), "Orders.local.");
        assert_eq!(
            dotted.instance.to_string(),
            "box.example.org:1.Orders.local."
        );
        assert_eq!(dotted.host.to_string(), "box.example.org.local.");
        assert_eq!(
            Announcement::new("a", "pi.local", 1, vec![], 1)
                .host
                .to_string(),
            "pi.local."
        );
    }

    #[test]
    fn a_browse_is_answered_with_ptr_srv_txt_and_addresses_and_round_trips() {
        let query = Message {
            questions: vec![Question {
                name: service_name("orders"),
                qtype: TYPE_PTR,
                unicast: false,
            }],
            ..Message::default()
        };
        let query = Message::decode(&query.encode()).unwrap();
        let reply = orders().answer(&query).expect("answered");
        let reply = Message::decode(&reply.encode()).unwrap();
        assert!(reply.response && reply.questions.is_empty());
        assert_eq!(
            reply.answers,
            [Record {
                name: service_name("orders"),
                ttl: RECORD_TTL,
                data: RData::Ptr(orders().instance)
            }]
        );
        assert_eq!(reply.additional.len(), 3);
        assert!(reply.additional.contains(&Record {
            name: orders().instance,
            ttl: RECORD_TTL,
            data: RData::Txt(vec!["orders".into()])
        }));
        assert!(reply.additional.contains(&Record {
            name: orders().host,
            ttl: ADDRESS_RECORD_TTL,
            data: RData::A("198.18.0.12".parse().unwrap())
        }));
        assert_eq!(
            instances_in(&reply),
            [(
                "orders".to_owned(),
                orders().instance,
                vec![addr("198.18.0.12:50002")]
            )]
        );
        // Questions about other apps, probes and answers get no reply.
        let other = Message {
            questions: vec![Question {
                name: service_name("checkout"),
                qtype: TYPE_PTR,
                unicast: false,
            }],
            ..Message::default()
        };
        assert!(orders().answer(&other).is_none());
        assert!(
            orders()
                .answer(&Message {
                    authority: 1,
                    ..query.clone()
                })
                .is_none()
        );
        // Known-answer suppression.
        let knowing = Message {
            answers: vec![orders().ptr(false)],
            ..query
        };
        assert!(orders().answer(&knowing).is_none());
    }

    #[test]
    fn an_instance_question_gets_srv_txt_and_addresses() {
        let q = Message {
            questions: vec![Question {
                name: orders().instance,
                qtype: TYPE_SRV,
                unicast: true,
            }],
            ..Message::default()
        };
        let q = Message::decode(&q.encode()).unwrap();
        assert!(q.questions[0].unicast);
        let reply = orders().answer(&q).unwrap();
        assert_eq!(reply.answers.len(), 3);
    }

    #[test]
    fn answers_need_a_txt_naming_the_app_and_addresses_and_goodbyes_remove() {
        let mut msg = orders().announcement(false);
        assert_eq!(instances_in(&msg).len(), 1);
        // A TXT that is not exactly the app id (as zeroconf's first string check).
        for r in &mut msg.answers {
            if let RData::Txt(t) = &mut r.data {
                *t = vec!["appid=orders".into()];
            }
        }
        assert!(instances_in(&msg).is_empty());
        // No address for the SRV target.
        let mut msg = orders().announcement(false);
        msg.answers.retain(|r| !matches!(r.data, RData::A(_)));
        assert!(instances_in(&msg).is_empty());
        // Goodbye.
        let bye = Message::decode(&orders().announcement(true).encode()).unwrap();
        assert_eq!(
            instances_in(&bye),
            [("orders".to_owned(), orders().instance, vec![])]
        );
        // Queries carry nothing to learn.
        assert!(
            instances_in(&Message {
                response: false,
                ..orders().announcement(false)
            })
            .is_empty()
        );
    }

    #[test]
    fn compressed_names_are_read_and_loops_refused() {
        // Header, then a question `orders.local.` PTR, then an answer whose name points at it.
        let mut buf = vec![0, 0, 0x84, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        put_name(&mut buf, &service_name("orders"));
        buf.extend_from_slice(&[0, 12, 0, 1]);
        buf.extend_from_slice(&[0xc0, 12, 0, 12, 0, 1, 0, 0, 0, 10, 0, 2, 0xc0, 12]);
        let msg = Message::decode(&buf).unwrap();
        assert_eq!(msg.answers[0].name, service_name("orders"));
        assert_eq!(msg.answers[0].data, RData::Ptr(service_name("orders")));
        // A pointer to itself.
        let mut bad = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        bad.extend_from_slice(&[0xc0, 12, 0, 12, 0, 1]);
        assert!(Message::decode(&bad).is_none());
        assert!(Message::decode(&buf[..20]).is_none(), "truncated");
    }

    #[test]
    fn round_robin_covers_every_ipv4_address_before_any_ipv6_one() {
        let now = Instant::now();
        let mut book = AddressBook::default();
        book.upsert(
            "orders",
            "b:1.orders.local.",
            vec![addr("198.18.0.12:1"), addr("[fd00::12]:1")],
            now,
        );
        book.upsert(
            "orders",
            "c:2.orders.local.",
            vec![addr("198.18.0.13:2")],
            now,
        );
        let picks: Vec<_> = (0..4).map(|_| book.next("orders", now).unwrap()).collect();
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
            "orders",
            "b:1.orders.local.",
            vec![addr("[fd00::12]:1"), addr("[fd00::13]:1")],
            now,
        );
        let picks: Vec<_> = (0..3)
            .map(|_| v6_only.next("orders", now).unwrap())
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
    fn addresses_expire_60s_after_they_were_last_heard() {
        let t0 = Instant::now();
        let mut book = AddressBook::default();
        let a = addr("198.18.0.12:1");
        book.upsert("orders", "b:1.orders.local.", vec![a], t0);
        assert_eq!(book.next("orders", t0 + Duration::from_secs(59)), Some(a));
        book.upsert(
            "orders",
            "b:1.orders.local.",
            vec![a],
            t0 + Duration::from_secs(30),
        );
        assert_eq!(book.next("orders", t0 + Duration::from_secs(89)), Some(a));
        assert_eq!(book.next("orders", t0 + Duration::from_secs(90)), None);
        assert!(book.apps.is_empty(), "expired apps are dropped");
    }

    #[test]
    fn goodbyes_and_evictions_forget_instances() {
        let now = Instant::now();
        let mut book = AddressBook::default();
        let (b, c) = (addr("198.18.0.12:1"), addr("198.18.0.13:1"));
        book.upsert("orders", "B:1.orders.local.", vec![b], now);
        book.upsert("orders", "c:2.orders.local.", vec![c], now);
        book.upsert("orders", "b:1.orders.local.", vec![], now);
        assert_eq!(book.next("orders", now), Some(c));
        assert_eq!(book.evict("orders"), vec!["c:2.orders.local.".to_owned()]);
        assert_eq!(book.next("orders", now), None);
    }
}
