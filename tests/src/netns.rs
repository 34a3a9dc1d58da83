//! "Pods" for end-to-end tests: Linux network namespaces joined by a bridge, with a DNS server.
//!
//! Every [`Network`] gets its own namespaces: one holding a Linux bridge (and dnsmasq, on
//! [`DNS_IP`]), plus one per host, connected to the bridge by a veth pair. The veth pairs are
//! created directly inside the bridge namespace with their peer in the host namespace, so nothing
//! is ever added to the root namespace: no interface name can collide with another test, and no
//! packet can leave the machine (the hosts have no route beyond the bridge's subnet).
//!
//! The bridge floods multicast to every host, so mDNS works between hosts. It needs no route:
//! link-local multicast (224.0.0.0/24, ff02::/16) goes out of the interface the sender picks.
//!
//! The test process stays in the root namespace; it reaches servers in a namespace by running a
//! client there ([`Network::command`], [`Network::http`], [`Network::wait_for_tcp`]).
//! Needs root and the Debian packages `iproute2`, `dnsmasq` (for [`Network::start_dns`]),
//! `curl` (for [`Network::http`]) and `bash` (for [`Network::wait_for_tcp`]).

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Address of the bridge interface, where dnsmasq listens.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Address of the first host; the following hosts count up from it.
pub const FIRST_HOST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
/// Prefix length of the hosts' subnet (198.18.0.0/16, inside the benchmarking range
/// 198.18.0.0/15, so it cannot clash with a real network).
const PREFIX_LEN: u8 = 16;
/// A name dnsmasq always answers (with [`DNS_IP`]) so [`Network::start_dns`] can tell it is up
/// whatever records the test asked for. `.test` is reserved for testing (RFC 6761).
pub const DNS_PROBE_NAME: &str = "dnsmasq.netns.test";
/// Prefix of every namespace this module creates; followed by the owning process id, which lets
/// [`Network::create`] remove namespaces leaked by test processes that were killed.
const NS_PREFIX: &str = "dapr-netns-";
/// How long start-up steps (links coming up, dnsmasq answering) may take.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of every readiness poll.
const POLL: Duration = Duration::from_millis(50);

/// Distinguishes the networks of one process; together with the pid it makes names unique
/// across parallel tests and concurrently running test binaries.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// One "pod": a network namespace with a single interface `eth0` on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// The name the test gave the host (`"a"`, `"sentry"`, ...).
    pub name: String,
    /// The network namespace (`ip netns` name), unique per [`Network`].
    pub netns: String,
    /// The address of `eth0`.
    pub ip: Ipv4Addr,
}

/// An isolated network of hosts. Owns the namespaces, dnsmasq and a scratch directory;
/// dropping it removes them all (best effort, never panics).
#[derive(Debug)]
pub struct Network {
    ip: PathBuf,
    id: String,
    bridge_ns: String,
    hosts: Vec<Host>,
    /// Namespaces that exist and must be deleted on drop (the bridge namespace first).
    created: Vec<String>,
    dnsmasq: Option<Child>,
    dir: PathBuf,
}

impl Network {
    /// Creates an isolated network: one namespace holding a Linux bridge (address [`DNS_IP`]),
    /// plus one namespace per host name, each connected to the bridge by a veth pair, with
    /// addresses 198.18.0.11, .12, ... in the order given. Loopback is up in every namespace.
    /// Returns once every link is up.
    ///
    /// Host names must be unique, non-empty, and made of ASCII letters, digits, `-` and `_`.
    pub fn create(hosts: &[&str]) -> anyhow::Result<Network> {
        ensure_root()?;
        let ip = find_program("ip").context(
            "`ip` not found: the e2e tier needs the Debian package iproute2 (network namespaces)",
        )?;
        if hosts.len() > 200 {
            bail!("at most 200 hosts per network, got {}", hosts.len());
        }
        for (i, name) in hosts.iter().enumerate() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!("host name {name:?} must be non-empty ASCII letters, digits, '-' or '_'");
            }
            if hosts[..i].contains(name) {
                bail!("host name {name:?} given twice");
            }
        }
        SWEEP.call_once(|| sweep_stale(&ip));

        let pid = std::process::id();
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NS_PREFIX}{pid}-{n}");
        let dir = std::env::temp_dir().join(&id);
        // Built before anything is created, so an early return still tears down what exists.
        let mut net = Network {
            ip,
            bridge_ns: format!("{id}-bridge"),
            id,
            hosts: Vec::new(),
            created: Vec::new(),
            dnsmasq: None,
            dir,
        };
        std::fs::create_dir_all(&net.dir)
            .with_context(|| format!("creating {}", net.dir.display()))?;

        let br = net.bridge_ns.clone();
        net.add_netns(&br)?;
        net.ip_in(&br, &["link", "set", "lo", "up"])?;
        // No multicast snooping: with no IGMP/MLD querier on this network, the bridge simply
        // floods multicast (mDNS on 224.0.0.251 and ff02::fb) to every host, as a hub would.
        net.ip_in(
            &br,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        net.ip_in(&br, &["addr", "add", &cidr(DNS_IP), "dev", "br0"])?;
        net.ip_in(&br, &["link", "set", "br0", "up"])?;

        for (i, name) in hosts.iter().enumerate() {
            let ns = format!("{}-h-{name}", net.id);
            let offset = u32::try_from(i).context("host index")?;
            let host_ip = Ipv4Addr::from(u32::from(FIRST_HOST_IP) + offset);
            let port = format!("v{i}");
            net.add_netns(&ns)?;
            net.ip_in(&ns, &["link", "set", "lo", "up"])?;
            // Both ends are created in namespaces of this network only: no name in the root
            // namespace, so the 15-character interface name limit never bites.
            net.ip_in(
                &br,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            net.ip_in(&br, &["link", "set", &port, "master", "br0", "up"])?;
            net.ip_in(&ns, &["addr", "add", &cidr(host_ip), "dev", "eth0"])?;
            net.ip_in(&ns, &["link", "set", "eth0", "up"])?;
            net.hosts.push(Host {
                name: (*name).to_owned(),
                netns: ns,
                ip: host_ip,
            });
        }
        net.wait_links_up()?;
        Ok(net)
    }

    /// The host created under `name`.
    ///
    /// # Panics
    /// If there is no such host: that is a mistake in the test itself.
    pub fn host(&self, name: &str) -> &Host {
        match self.try_host(name) {
            Some(h) => h,
            None => panic!("no host {name:?} in this network"),
        }
    }

    /// The host created under `name`, if any.
    pub fn try_host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// All hosts, in creation order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The namespace holding the bridge and dnsmasq.
    pub fn bridge_netns(&self) -> &str {
        &self.bridge_ns
    }

    /// A scratch directory owned by this network (removed on drop): for logs and config files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts dnsmasq in the bridge namespace (listening on [`DNS_IP`]) answering exactly the
    /// given A records (several addresses per name allowed, e.g. a headless service with two
    /// pods; unknown names get NXDOMAIN, and there is no upstream server), and writes
    /// `/etc/netns/<ns>/resolv.conf` for every host so processes started afterwards with
    /// [`Network::command`] resolve through it. Also answers [`DNS_PROBE_NAME`]. Returns once
    /// dnsmasq answers. dnsmasq's log (every query) is in [`Network::dns_log`].
    pub fn start_dns(&mut self, records: &[(&str, Vec<Ipv4Addr>)]) -> anyhow::Result<()> {
        if self.dnsmasq.is_some() {
            bail!("dnsmasq already started for this network");
        }
        let dnsmasq = find_program("dnsmasq")
            .context("`dnsmasq` not found: the e2e tier needs the Debian package dnsmasq")?;
        let mut args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-poll".into(),
            // Every name is local: unknown names get a fast NXDOMAIN instead of REFUSED.
            "--local=/#/".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={DNS_IP}"),
            format!("--pid-file={}", self.dir.join("dnsmasq.pid").display()),
            "--log-facility=-".into(),
            "--log-queries".into(),
            format!("--host-record={DNS_PROBE_NAME},{DNS_IP}"),
        ];
        for (name, ips) in records {
            if name.is_empty() || name.contains([',', '/', ' ']) {
                bail!("invalid DNS name {name:?}");
            }
            for ip in ips {
                args.push(format!("--host-record={name},{ip}"));
            }
        }
        let log_path = self.dns_log_path();
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = std::process::Command::new(&self.ip)
            .args(["netns", "exec", &self.bridge_ns])
            .arg(&dnsmasq)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning dnsmasq")?;
        self.dnsmasq = Some(child);

        let resolv = format!("nameserver {DNS_IP}\n");
        let namespaces: Vec<String> = self
            .hosts
            .iter()
            .map(|h| h.netns.clone())
            .chain([self.bridge_ns.clone()])
            .collect();
        for ns in &namespaces {
            let dir = netns_etc(ns);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(dir.join("resolv.conf"), &resolv)
                .with_context(|| format!("writing {}/resolv.conf", dir.display()))?;
        }

        // Ask through the resolver of the bridge namespace, as a client in a host would.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(child) = self.dnsmasq.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("dnsmasq exited ({status}):\n{}", self.dns_log());
            }
            let out = std::process::Command::new(&self.ip)
                .args(["netns", "exec", &self.bridge_ns, "getent", "ahostsv4"])
                .arg(DNS_PROBE_NAME)
                .stdin(Stdio::null())
                .output()
                .context("running getent")?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("198.18.0.2") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "dnsmasq did not answer within {STARTUP_TIMEOUT:?}:\n{}",
                    self.dns_log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// dnsmasq's log so far (empty before [`Network::start_dns`]): start-up messages and one
    /// line per query and answer.
    pub fn dns_log(&self) -> String {
        std::fs::read_to_string(self.dns_log_path()).unwrap_or_default()
    }

    fn dns_log_path(&self) -> PathBuf {
        self.dir.join("dnsmasq.log")
    }

    /// A command that runs `program` inside the host's namespace (`ip netns exec <ns> program`).
    /// `ip netns exec` execs the program, so the child's pid is the program's. The child is
    /// killed when its handle is dropped, so a failing test leaves no server behind.
    ///
    /// # Panics
    /// If there is no such host.
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.host(host).netns])
            .arg(program)
            .kill_on_drop(true);
        cmd
    }

    /// Like [`Network::command`], for synchronous callers.
    ///
    /// # Panics
    /// If there is no such host.
    pub fn std_command(&self, host: &str, program: impl AsRef<OsStr>) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.host(host).netns])
            .arg(program);
        cmd
    }

    /// Serves `port` on `host`'s address inside its namespace by forwarding every connection to
    /// `target` in the test process's own namespace: a process on the root namespace's loopback
    /// (sentry, which itself needs the API server on loopback) becomes reachable from the hosts
    /// without any route out of this network. Forwarding stops when the [`Forward`] is dropped.
    pub fn forward(&self, host: &str, port: u16, target: SocketAddr) -> anyhow::Result<Forward> {
        let ip = self
            .try_host(host)
            .with_context(|| format!("no host {host:?}"))?
            .ip;
        self.forward_from(host, SocketAddr::from((ip, port)), target)
    }

    /// [`Network::forward`] from any address inside `host`'s namespace, e.g. its loopback
    /// (`127.0.0.1:<port>`), where a process of that host finds the API server at the address
    /// its kubeconfig and the server's certificate name.
    pub fn forward_from(
        &self,
        host: &str,
        bind: SocketAddr,
        target: SocketAddr,
    ) -> anyhow::Result<Forward> {
        let host = self
            .try_host(host)
            .with_context(|| format!("no host {host:?}"))?;
        let listener = in_namespace(&host.netns, || {
            let listener = std::net::TcpListener::bind(bind)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                        splice(inbound, outbound).await;
                    }
                });
            }
        });
        Ok(Forward(task))
    }

    /// The reverse of [`Network::forward`]: a loopback address of the test process whose
    /// connections reach `target` as seen from inside `host` (e.g. its daprd on
    /// `127.0.0.1:3500`), so the test can drive a host with its own clients.
    pub async fn expose(
        &self,
        host: &str,
        target: SocketAddr,
    ) -> anyhow::Result<(SocketAddr, Forward)> {
        let netns = self
            .try_host(host)
            .with_context(|| format!("no host {host:?}"))?
            .netns
            .clone();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let local = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let netns = netns.clone();
                tokio::spawn(async move {
                    let connected = tokio::task::spawn_blocking(move || {
                        in_namespace(&netns, || {
                            let stream = std::net::TcpStream::connect_timeout(
                                &target,
                                Duration::from_secs(5),
                            )?;
                            stream.set_nonblocking(true)?;
                            Ok(stream)
                        })
                    })
                    .await;
                    if let Ok(Ok(stream)) = connected
                        && let Ok(outbound) = tokio::net::TcpStream::from_std(stream)
                    {
                        splice(inbound, outbound).await;
                    }
                });
            }
        });
        Ok((local, Forward(task)))
    }

    /// Waits until a TCP connection from inside `host` to `addr` succeeds (for example a server
    /// in `host` on `127.0.0.1`, or in another host on its address), polling every 50 ms until
    /// `timeout`. Each probe is `bash`'s `/dev/tcp` run in the namespace.
    pub async fn wait_for_tcp(
        &self,
        host: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let bash = find_program("bash").context("`bash` not found")?;
        let ns = &self
            .try_host(host)
            .with_context(|| format!("no host {host:?}"))?
            .netns;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let probe = tokio::process::Command::new(&self.ip)
                .args(["netns", "exec", ns])
                .arg(&bash)
                .args(["-c", "exec 3<>\"/dev/tcp/$0/$1\""])
                .arg(addr.ip().to_string())
                .arg(addr.port().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .output();
            // A probe towards an address nobody answers ARP for hangs in connect: bound it too.
            match tokio::time::timeout_at(deadline, probe).await {
                Ok(Ok(out)) if out.status.success() => return Ok(()),
                Ok(Ok(out)) => last = String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                Ok(Err(e)) => return Err(e).context("running the TCP probe"),
                Err(_) => {}
            }
            if tokio::time::Instant::now() + POLL >= deadline {
                bail!("{addr} not accepting connections from {host} after {timeout:?}: {last}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `curl -sS --noproxy '*' --max-time 30 <args>` inside `host` and returns its output
    /// whatever the exit status (`args` come last, so they can override `--max-time`). Proxies
    /// are disabled so no environment variable can send the request out of the namespace.
    pub async fn http(&self, host: &str, args: &[&str]) -> anyhow::Result<Output> {
        let curl = find_program("curl")
            .context("`curl` not found: the e2e tier needs the Debian package curl")?;
        let ns = &self
            .try_host(host)
            .with_context(|| format!("no host {host:?}"))?
            .netns;
        tokio::process::Command::new(&self.ip)
            .args(["netns", "exec", ns])
            .arg(curl)
            .args(["-sS", "--noproxy", "*", "--max-time", "30"])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running curl")
    }

    fn add_netns(&mut self, ns: &str) -> anyhow::Result<()> {
        run(&self.ip, &["netns", "add", ns])?;
        self.created.push(ns.to_owned());
        Ok(())
    }

    fn ip_in(&self, ns: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", ns];
        full.extend_from_slice(args);
        run(&self.ip, &full)
    }

    /// Veth links take a moment to report carrier; waiting here keeps the first packets of a
    /// test from being dropped (and retried a second later by ARP).
    fn wait_links_up(&self) -> anyhow::Result<()> {
        let mut links: Vec<(String, String)> = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            links.push((h.netns.clone(), "eth0".to_owned()));
            links.push((self.bridge_ns.clone(), format!("v{i}")));
        }
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for (ns, dev) in links {
            loop {
                let out = std::process::Command::new(&self.ip)
                    .args(["-n", &ns, "-o", "link", "show", "dev", &dev])
                    .output()
                    .context("running ip link show")?;
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("state UP") {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("{dev} in {ns} not up after {STARTUP_TIMEOUT:?}: {text}");
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Hosts first, then the bridge; processes still running inside (servers a test left
        // behind) are killed, since they would keep the namespace alive after `ip netns delete`.
        for ns in self.created.iter().rev() {
            kill_netns_processes(&self.ip, ns);
            let _ = run(&self.ip, &["netns", "delete", ns]);
            let _ = std::fs::remove_dir_all(netns_etc(ns));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/etc/netns/<ns>`: files there are bind-mounted over `/etc` by `ip netns exec`.
fn netns_etc(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

fn cidr(ip: Ipv4Addr) -> String {
    format!("{ip}/{PREFIX_LEN}")
}

/// Runs a command to completion; an error carries its stderr.
fn run(program: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn kill_netns_processes(ip: &Path, ns: &str) {
    let Ok(out) = std::process::Command::new(ip)
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
    else {
        return;
    };
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    if !pids.is_empty() {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes the namespaces (and kills what runs inside) left by test processes of this module
/// that no longer exist, e.g. killed before their `Network` was dropped.
fn sweep_stale(ip: &Path) {
    let Ok(out) = std::process::Command::new(ip)
        .args(["netns", "list"])
        .stdin(Stdio::null())
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Lines look like `name` or `name (id: 3)`.
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(owner) = ns
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        kill_netns_processes(ip, ns);
        let _ = run(ip, &["netns", "delete", ns]);
        let _ = std::fs::remove_dir_all(netns_etc(ns));
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(ns));
    }
}

/// `true`, after one `SKIPPED:` line, when this process cannot create network namespaces: a test
/// that needs them then returns and passes without running, so a plain `cargo test` as a user
/// other than root passes (docs/testing.md). `scripts/test.sh` runs as root.
pub fn skip_without_root() -> bool {
    match ensure_root() {
        Ok(()) => false,
        Err(e) => {
            eprintln!("SKIPPED: {e:#}");
            true
        }
    }
}

/// Network namespaces need root (CAP_SYS_ADMIN); say so instead of failing in `ip`.
fn ensure_root() -> anyhow::Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    // `Uid:` real, effective, saved, filesystem.
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    if euid != "0" {
        bail!("the e2e tier needs root (network namespaces); running as uid {euid}");
    }
    Ok(())
}

/// Looks `name` up in `PATH`, then in the sbin directories a non-login `PATH` may lack.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Renders a command's output for an assertion message.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running [`Network::forward`]; stops accepting when dropped (open connections end with
/// their peers).
#[derive(Debug)]
pub struct Forward(tokio::task::JoinHandle<()>);

impl Drop for Forward {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `make` on a thread that has entered the network namespace `netns` (`setns`), for
/// creating sockets there: a socket keeps the namespace it was made in, whatever thread uses it
/// later. The thread ends with the call, so nothing else ever runs in that namespace.
fn in_namespace<T: Send>(
    netns: &str,
    make: impl FnOnce() -> std::io::Result<T> + Send,
) -> anyhow::Result<T> {
    use std::os::fd::AsFd;
    let path = Path::new("/run/netns").join(netns);
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<T> {
                let ns = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .with_context(|| format!("entering {}", path.display()))?;
                make().with_context(|| format!("in {}", path.display()))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    })
}

/// Copies both ways until either side closes.
async fn splice(mut a: tokio::net::TcpStream, mut b: tokio::net::TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}
