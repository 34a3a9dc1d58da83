//! A real Kubernetes control plane on loopback for the cluster tier: `etcd` and `kube-apiserver`
//! built from the published Go modules (`tests/cluster/go.mod`, built into `.cache/cluster/bin`
//! by `scripts/test.sh`), with certificates and a service-account signing key generated per run.
//!
//! There is no kubelet, scheduler or controller manager: objects are stored and admission runs
//! (our webhook is called), but no pod ever starts and no controller creates anything. Clients
//! are `kubectl` and `helm` (`.cache/bin`, installed by `scripts/test.sh`) with a kubeconfig for
//! the admin (a client certificate in `system:masters`) or for a ServiceAccount (a token from the
//! TokenRequest API), so that what a local process may do is what the chart's RBAC grants.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::sidecar::{HttpClient, free_port, free_ports};

/// Bound on one `kubectl`/`helm` run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on etcd answering `/health` after start.
const ETCD_START: Duration = Duration::from_secs(30);
/// Bound on the API server reporting `/readyz` after start (it runs its post-start hooks first:
/// RBAC bootstrap roles, priority and fairness, CRD informers; about 5-10 s here).
const APISERVER_START: Duration = Duration::from_secs(120);
/// The service-account issuer and the one audience the API server accepts for its own tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `.cache/cluster/bin/<name>`: `kube-apiserver` or `etcd`.
pub fn cluster_binary(name: &str) -> PathBuf {
    repo().join(".cache/cluster/bin").join(name)
}

/// `.cache/bin/<name>`: `kubectl` or `helm`.
pub fn tool(name: &str) -> PathBuf {
    repo().join(".cache/bin").join(name)
}

/// Why the cluster tier cannot run here, or `None` when everything it needs is installed.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<String> = [
        cluster_binary("kube-apiserver"),
        cluster_binary("etcd"),
        tool("kubectl"),
        tool("helm"),
    ]
    .into_iter()
    .filter(|p| !p.exists())
    .map(|p| p.display().to_string())
    .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "missing {}: run `bash scripts/test.sh` once (it builds kube-apiserver and etcd from \
             tests/cluster/go.mod and installs kubectl and Helm)",
            missing.join(", ")
        ))
    }
}

/// A CA and its issuer, for the API server's certificates and for test servers (the injector).
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new(common_name: &str) -> anyhow::Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for these DNS names and IP addresses.
    pub fn server(&self, names: &[&str], ips: &[std::net::IpAddr]) -> anyhow::Result<Pem> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: Kubernetes reads the user from the CN and a group from the O
    /// (rcgen keeps one value per attribute, so one group).
    pub fn client(&self, user: &str, group: &str) -> anyhow::Result<Pem> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        params
            .distinguished_name
            .push(DnType::OrganizationName, group);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> anyhow::Result<Pem> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn write(path: &Path, contents: &str) -> anyhow::Result<PathBuf> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_owned())
}

/// Spawns `program` with its output going to `log`, killed when dropped, with no proxy
/// settings (every connection stays on loopback; the API server would send webhook calls
/// through a proxy from the environment).
fn spawn_logged(
    program: &Path,
    args: &[String],
    log: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .kill_on_drop(true);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.spawn()
        .with_context(|| format!("spawning {}", program.display()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The output of a finished `kubectl` or `helm` run.
pub struct ToolOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    /// The output as JSON, or an error with what the tool said.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        ensure!(self.success, "failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {}", self.stdout))
    }

    /// Fails with what the tool said unless it succeeded.
    pub fn ok(self) -> anyhow::Result<ToolOutput> {
        ensure!(
            self.success,
            "failed:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        Ok(self)
    }
}

/// Runs `program` to completion within [`TOOL_TIMEOUT`], with `stdin` as its input.
pub async fn run_tool(
    program: &Path,
    args: &[String],
    envs: &[(&str, &Path)],
    stdin: Option<&str>,
) -> anyhow::Result<ToolOutput> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let what = format!("{} {}", program.display(), args.join(" "));
    let mut child = cmd.spawn().with_context(|| format!("spawning `{what}`"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("stdin")?;
        pipe.write_all(input.as_bytes()).await?;
        drop(pipe);
    }
    let output = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("`{what}` did not finish within {TOOL_TIMEOUT:?}"))?
        .with_context(|| format!("running `{what}`"))?;
    Ok(ToolOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `etcd` + `kube-apiserver` on loopback; both are killed when this is dropped.
pub struct Cluster {
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// The CA that signed the API server's serving certificate and the admin's client
    /// certificate (`--client-ca-file`).
    pub ca: TestCa,
    pub ca_file: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub apiserver_log: PathBuf,
    pub etcd_log: PathBuf,
    apiserver: tokio::process::Child,
    etcd: tokio::process::Child,
}

impl Cluster {
    /// Starts etcd and the API server with everything under `dir`, and waits (bounded) until the
    /// API server is ready.
    pub async fn start(dir: &Path) -> anyhow::Result<Cluster> {
        if let Some(why) = missing_tools() {
            bail!("{why}");
        }
        std::fs::create_dir_all(dir)?;
        let ca = TestCa::new("e2e-cluster-ca")?;
        let ca_file = write(&dir.join("ca.crt"), &ca.cert_pem)?;
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let service_ip = std::net::IpAddr::from([10, 96, 0, 1]);
        let serving = ca.server(
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[loopback, service_ip],
        )?;
        let serving_cert = write(&dir.join("apiserver.crt"), &serving.cert)?;
        let serving_key = write(&dir.join("apiserver.key"), &serving.key)?;
        let admin = ca.client("e2e-admin", "system:masters")?;
        let admin_cert = write(&dir.join("admin.crt"), &admin.cert)?;
        let admin_key = write(&dir.join("admin.key"), &admin.key)?;
        let sa_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let sa_private = write(&dir.join("sa.key"), &sa_key.serialize_pem())?;
        let sa_public = write(&dir.join("sa.pub"), &sa_key.public_key_pem())?;

        let [etcd_port, etcd_peer_port] = free_ports()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_log = dir.join("etcd.log");
        let etcd_args: Vec<String> = [
            "--name",
            "e2e",
            "--data-dir",
            &dir.join("etcd-data").display().to_string(),
            "--listen-client-urls",
            &etcd_url,
            "--advertise-client-urls",
            &etcd_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("e2e={peer_url}"),
            // A test database: durability is not the point, speed is.
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut etcd = spawn_logged(&cluster_binary("etcd"), &etcd_args, &etcd_log)?;
        wait_etcd(&mut etcd, &etcd_url, &etcd_log).await?;

        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let apiserver_log = dir.join("kube-apiserver.log");
        let path = |p: &Path| p.display().to_string();
        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", path(&dir.join("apiserver-certs"))),
            format!("--tls-cert-file={}", path(&serving_cert)),
            format!("--tls-private-key-file={}", path(&serving_key)),
            format!("--client-ca-file={}", path(&ca_file)),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", path(&sa_public)),
            format!("--service-account-signing-key-file={}", path(&sa_private)),
            format!("--api-audiences={SERVICE_ACCOUNT_ISSUER}"),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,DefaultStorageClass,\
             MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota"
                .into(),
            // The `kubernetes` Endpoints object would point at 127.0.0.1, which Kubernetes
            // refuses (loopback); nothing here routes to it anyway.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        let apiserver = spawn_logged(
            &cluster_binary("kube-apiserver"),
            &apiserver_args,
            &apiserver_log,
        )?;
        let admin_kubeconfig = write(
            &dir.join("admin.kubeconfig"),
            &kubeconfig(
                &server,
                &ca_file,
                &format!(
                    "client-certificate: {}\n    client-key: {}",
                    admin_cert.display(),
                    admin_key.display()
                ),
            ),
        )?;
        let mut cluster = Cluster {
            dir: dir.to_owned(),
            server,
            ca,
            ca_file,
            admin_kubeconfig,
            apiserver_log,
            etcd_log,
            apiserver,
            etcd,
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + APISERVER_START;
        loop {
            if let Ok(Some(status)) = self.apiserver.try_wait() {
                bail!(
                    "kube-apiserver exited with {status}; log tail:\n{}",
                    tail(&self.apiserver_log, 40)
                );
            }
            if let Ok(Some(status)) = self.etcd.try_wait() {
                bail!(
                    "etcd exited with {status}; log tail:\n{}",
                    tail(&self.etcd_log, 40)
                );
            }
            let out = self
                .kubectl(&["get", "--raw", "/readyz", "--request-timeout=5s"])
                .await?;
            if out.success && out.stdout.trim() == "ok" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver not ready within {APISERVER_START:?}: {}{}\nlog tail:\n{}",
                    out.stdout,
                    out.stderr,
                    tail(&self.apiserver_log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `kubectl` as the admin.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<ToolOutput> {
        self.kubectl_as(&self.admin_kubeconfig, args, None).await
    }

    /// `kubectl` with `kubeconfig`, with `stdin` as input (`-f -`).
    pub async fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<ToolOutput> {
        let mut all = vec![format!("--kubeconfig={}", kubeconfig.display())];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        run_tool(&tool("kubectl"), &all, &[], stdin).await
    }

    /// `kubectl apply -f -` of `yaml` (or JSON) as the admin.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        self.kubectl_as(&self.admin_kubeconfig, &["apply", "-f", "-"], Some(yaml))
            .await?
            .ok()
            .context("kubectl apply")?;
        Ok(())
    }

    /// `kubectl get <args> -o json` as the admin.
    pub async fn get_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        self.kubectl(&all)
            .await?
            .json()
            .with_context(|| format!("kubectl {}", all.join(" ")))
    }

    /// `helm` with the admin kubeconfig; Helm's cache, config and data stay under the cluster's
    /// directory.
    pub async fn helm(&self, args: &[&str]) -> anyhow::Result<ToolOutput> {
        let home = self.dir.join("helm");
        let (cache, config, data) = (home.join("cache"), home.join("config"), home.join("data"));
        let mut all = vec![format!("--kubeconfig={}", self.admin_kubeconfig.display())];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        run_tool(
            &tool("helm"),
            &all,
            &[
                ("HELM_CACHE_HOME", &cache),
                ("HELM_CONFIG_HOME", &config),
                ("HELM_DATA_HOME", &data),
            ],
            None,
        )
        .await
    }

    /// Creates namespace `name` with its `default` ServiceAccount (the ServiceAccount admission
    /// plugin refuses pods whose account does not exist, and there is no controller manager
    /// here to create it).
    pub async fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: {name}\n"
        ))
        .await
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API (valid for an hour,
    /// for `audience` or the API server's own).
    pub async fn token(
        &self,
        namespace: &str,
        name: &str,
        audience: Option<&str>,
    ) -> anyhow::Result<String> {
        self.token_request(namespace, name, audience, None).await
    }

    /// A token for ServiceAccount `namespace/name` bound to pod `pod` (name, UID), as the
    /// kubelet projects one into a pod (daprd's `dapr-identity-token`): it names the pod in its
    /// `kubernetes.io` claim and stops authenticating once the pod is gone. The API server
    /// refuses to bind it to a pod that runs as another ServiceAccount.
    pub async fn pod_token(
        &self,
        namespace: &str,
        name: &str,
        audience: Option<&str>,
        pod: (&str, &str),
    ) -> anyhow::Result<String> {
        self.token_request(namespace, name, audience, Some(pod))
            .await
    }

    async fn token_request(
        &self,
        namespace: &str,
        name: &str,
        audience: Option<&str>,
        pod: Option<(&str, &str)>,
    ) -> anyhow::Result<String> {
        let mut args: Vec<String> = ["create", "token", name, "-n", namespace, "--duration=1h"]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        if let Some(audience) = audience {
            args.push(format!("--audience={audience}"));
        }
        if let Some((pod_name, pod_uid)) = pod {
            args.push("--bound-object-kind=Pod".into());
            args.push(format!("--bound-object-name={pod_name}"));
            args.push(format!("--bound-object-uid={pod_uid}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self
            .kubectl(&args)
            .await?
            .ok()
            .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
        Ok(out.stdout.trim().to_owned())
    }

    /// A kubeconfig (written under the cluster's directory) with which a process acts as
    /// ServiceAccount `namespace/name`.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self.token(namespace, name, None).await?;
        write(
            &self.dir.join(format!("sa-{namespace}-{name}.kubeconfig")),
            &kubeconfig(&self.server, &self.ca_file, &format!("token: {token}")),
        )
    }

    /// A kubeconfig with the token the kubelet projects into pod `(name, uid)` as its service
    /// account `account` (`/var/run/secrets/kubernetes.io/serviceaccount/token`: bound to the pod,
    /// for the API server's audience), for a process standing in for a container of that pod.
    pub async fn pod_kubeconfig(
        &self,
        namespace: &str,
        account: &str,
        pod: (&str, &str),
    ) -> anyhow::Result<PathBuf> {
        let token = self.pod_token(namespace, account, None, pod).await?;
        write(
            &self
                .dir
                .join(format!("pod-{namespace}-{}.kubeconfig", pod.0)),
            &kubeconfig(&self.server, &self.ca_file, &format!("token: {token}")),
        )
    }

    /// The API server's address (for processes that take host and port).
    pub fn address(&self) -> anyhow::Result<SocketAddr> {
        self.server
            .trim_start_matches("https://")
            .parse()
            .context("server address")
    }

    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        tail(&self.apiserver_log, lines)
    }
}

impl Drop for Cluster {
    /// Stops both processes and removes etcd's data (about 120 MB of preallocated WAL); the
    /// certificates, kubeconfigs and logs stay for a look after a failure.
    fn drop(&mut self) {
        let _ = self.apiserver.start_kill();
        let _ = self.etcd.start_kill();
        let _ = std::fs::remove_dir_all(self.dir.join("etcd-data"));
    }
}

/// A kubeconfig for `server` trusting `ca_file`, with `user` (YAML lines of the user entry,
/// the second and later indented four spaces).
fn kubeconfig(server: &str, ca_file: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: e2e\n  user:\n    {user}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: e2e\ncurrent-context: e2e\n",
        ca_file.display()
    )
}

async fn wait_etcd(etcd: &mut tokio::process::Child, url: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + ETCD_START;
    let client = HttpClient::new();
    let health = format!("{url}/health");
    loop {
        if let Ok(reply) = client.get(&health).await
            && reply.status == 200
        {
            return Ok(());
        }
        if let Ok(Some(status)) = etcd.try_wait() {
            bail!("etcd exited with {status}; log tail:\n{}", tail(log, 40));
        }
        if Instant::now() > deadline {
            bail!(
                "etcd not healthy within {ETCD_START:?}; log tail:\n{}",
                tail(log, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
