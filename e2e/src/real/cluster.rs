//! [`RealCluster`]: etcd, kube-apiserver, kube-controller-manager and kube-proxy as plain
//! processes, a node and its pods in network namespaces, and Pods run the way a kubelet would.

use crate::process::{Binaries, Process};
use crate::real::agent::{AgentApi, AgentOptions, DownwardApi, RealAgent, ShippedAgent};
use crate::real::binaries::K8sBinaries;
use crate::real::component::{Component, ComponentSpec, tail};
use crate::real::http;
use crate::real::objects::{self, NAMESPACE, UdpService};
use crate::real::proxy::{self, ProxyFlavour, ProxyMode};
use crate::topology::{
    NODE_IPV4, NODE_IPV6, POD_CIDR_IPV4, POD_CIDR_IPV6, Topology, ip_batch, sysctl,
};
use crate::workload::{self, Client};
use anyhow::{Context, Result, bail};
use ctnetlink::testing::TestNetns;
use futures::Future;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// kube-apiserver's address in the control-plane namespace (`--advertise-address`).
pub const APISERVER_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 2);
/// The node's address on its link to the control-plane namespace.
pub const NODE_CP_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 1);
/// The control-plane namespace's IPv6 address.
pub const APISERVER_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, 2);
/// The node's IPv6 address on its link to the control-plane namespace.
pub const NODE_CP_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x78, 0, 0, 0, 0, 0, 1);
/// kube-apiserver's secure port.
pub const APISERVER_PORT: u16 = 6443;
/// `--service-cluster-ip-range`: dual-stack, IPv4 first.
pub const SERVICE_CIDRS: &str = "10.96.0.0/16,fd00:10:96::/112";
/// The `kubernetes` Service's ClusterIP (the first address of the IPv4 range).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The Node's name.
pub const NODE_NAME: &str = "real-node";
/// etcd's client address inside the control-plane namespace.
const ETCD_ADDR: &str = "127.0.0.1:2379";

/// Env: how many real clusters one test process runs at once (default 1): each costs a
/// kube-apiserver's memory and CPU, and parallel starts on a 2-core machine only slow all down.
pub const PARALLEL_ENV: &str = "CONNTRACK_RECONCILER_REAL_PARALLEL";
/// Env: the directory under which each test's logs go (default `<target>/real-logs`).
pub const LOGS_ENV: &str = "CONNTRACK_RECONCILER_REAL_LOGS";

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The kube-proxy to run in the node namespace (None: none; start one later).
    pub proxy: Option<ProxyFlavour>,
    /// kube-proxy's `--v`.
    pub proxy_verbosity: u8,
    /// kube-apiserver's and kube-controller-manager's `--v`.
    pub control_plane_verbosity: u8,
    /// Also run the garbage collector, which deletes a deleted Service's EndpointSlices (their
    /// owner references), as in a real cluster; the EndpointSlice controller does not.
    pub garbage_collector: bool,
    /// How long each component may take to become ready.
    pub startup_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            proxy: Some(ProxyFlavour::V1_34_IPTABLES),
            proxy_verbosity: 2,
            control_plane_verbosity: 1,
            garbage_collector: true,
            startup_timeout: Duration::from_secs(120),
        }
    }
}

/// How a pod goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodDeletion {
    /// A plain DELETE: without a kubelet to finish it, the pod stays Terminating (its endpoint
    /// `serving` per its readiness, `terminating`, not `ready`); its backend keeps running.
    Graceful,
    /// `gracePeriodSeconds=0`: the object is gone at once; then its backend and network go,
    /// as the kubelet tears the sandbox down.
    Immediate,
}

/// A backend pod: a namespace with `udp-echo` and the Pod object with its addresses.
#[derive(Debug)]
pub struct Backend {
    /// The pod's name.
    pub name: String,
    /// Its `app` label.
    pub app: String,
    /// Its IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address.
    pub ipv6: Ipv6Addr,
    /// The UDP ports its echo server answers on.
    pub ports: Vec<u16>,
    echo: Option<Process>,
}

impl Backend {
    /// Both addresses, IPv4 first (the order of `podIPs`).
    pub fn ips(&self) -> [IpAddr; 2] {
        [self.ipv4.into(), self.ipv6.into()]
    }

    /// Whether its echo server still runs.
    pub fn serving(&self) -> bool {
        self.echo.is_some()
    }
}

/// One EndpointSlice endpoint address of a Service, flattened.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointView {
    /// The address.
    pub ip: IpAddr,
    /// `conditions.ready` (unset = true).
    pub ready: bool,
    /// `conditions.serving` (unset = ready).
    pub serving: bool,
    /// `conditions.terminating` (unset = false).
    pub terminating: bool,
    /// The pod it belongs to.
    pub pod: Option<String>,
}

/// A counting semaphore over the process's real clusters.
struct Slot;

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

impl Slot {
    fn acquire() -> Self {
        let limit = std::env::var(PARALLEL_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(1);
        let (lock, cv) = &SLOTS;
        let mut used = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= limit {
            used = cv.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cv) = &SLOTS;
        let mut used = lock.lock().unwrap_or_else(|e| e.into_inner());
        *used -= 1;
        cv.notify_one();
    }
}

/// A real control plane and one node, all in network namespaces of this test.
///
/// ```text
///   cp (192.168.78.2, fd00:78::2): etcd on 127.0.0.1:2379, kube-apiserver :6443, KCM,
///       │ eth0 ── cp0                       and this harness's API client
///   node (192.168.77.1 …, see topology): kube-proxy, the agent, hostNetwork clients
///       │ cni0
///   pods: udp-echo backends (Pod objects carrying their addresses), udp-client clients
/// ```
///
/// Methods are blocking: the API client runs on the cluster's own tokio runtime, driven from
/// threads in the control-plane namespace (its connections are made there), so a plain
/// `#[test]` calls them directly and runs its own API calls with [`RealCluster::block_on`]. Everything is
/// stopped and every namespace removed when it is dropped, panics included; each component's
/// log is kept under [`RealCluster::logs_dir`] and its tail printed when a test panics.
pub struct RealCluster {
    // Field order is drop order: processes before the namespaces they run in.
    backends: BTreeMap<String, Backend>,
    kube_proxy: Option<Component>,
    proxy_flavour: Option<ProxyFlavour>,
    controller_manager: Component,
    apiserver: Component,
    etcd: Component,
    client: kube::Client,
    runtime: Option<tokio::runtime::Runtime>,
    cp_file: std::fs::File,
    cp: TestNetns,
    topology: Topology,
    state: tempfile::TempDir,
    logs: PathBuf,
    startup: Vec<(String, Duration)>,
    bins: K8sBinaries,
    lab: Binaries,
    config: ClusterConfig,
    next_pod: u32,
    agent_rbac_installed: bool,
    _slot: Slot,
}

impl std::fmt::Debug for RealCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealCluster")
            .field("logs", &self.logs)
            .field("node", &self.topology.node().name())
            .field("cp", &self.cp.name())
            .finish_non_exhaustive()
    }
}

/// `<target>/real-logs/<test>` (or under `$CONNTRACK_RECONCILER_REAL_LOGS`), emptied.
fn logs_dir(test: &str) -> Result<PathBuf> {
    let base = match std::env::var_os(LOGS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            // Test binaries live in <target>/<profile>/deps.
            let exe = std::env::current_exe()?;
            let target = exe
                .ancestors()
                .find(|d| d.file_name().is_some_and(|n| n == "deps"))
                .and_then(|deps| deps.parent()?.parent())
                .map(Path::to_path_buf)
                .unwrap_or_else(std::env::temp_dir);
            target.join("real-logs")
        }
    };
    let safe: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = base.join(safe);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A kubeconfig (JSON is YAML) for a bearer token.
fn kubeconfig(server: &str, ca: &Path, token: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "real",
        "clusters": [{"name": "real", "cluster": {
            "server": server,
            "certificate-authority": ca.display().to_string(),
        }}],
        "users": [{"name": "real", "user": {"token": token}}],
        "contexts": [{"name": "real", "context": {"cluster": "real", "user": "real"}}],
    })
    .to_string()
}

/// A runtime whose every thread lives in the network namespace at `netns`.
fn runtime_in(netns: &Path) -> Result<tokio::runtime::Runtime> {
    let file = Arc::new(std::fs::File::open(netns)?);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("real-api")
        .enable_all()
        .on_thread_start(move || {
            // SAFETY: setns on the calling (new) thread with a descriptor the Arc keeps open.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                // A thread left outside would fail every connection: make that visible.
                eprintln!(
                    "real-api thread could not enter the control-plane namespace: {}",
                    std::io::Error::last_os_error()
                );
            }
        })
        .build()
        .context("building the API client runtime")
}

/// Runs `future` on `runtime` from a short-lived thread inside the namespace of `netns`:
/// `block_on` polls the future on the calling thread, and that is where connections are made.
fn block_in<F>(netns: &std::fs::File, runtime: &tokio::runtime::Runtime, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    use std::os::fd::AsFd;
    ctnetlink::netns::in_netns_fd(netns.as_fd(), || runtime.block_on(future))
        .expect("entering the control-plane namespace")
}

fn random_token(what: &str) -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Tokens only guard namespaced test servers; a weak one is no risk.
        bytes = crate::timeline::unix_micros()
            .to_le_bytes()
            .repeat(2)
            .try_into()
            .unwrap_or_default();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{what}-{hex}")
}

impl RealCluster {
    /// Starts etcd, kube-apiserver, kube-controller-manager, creates the Node and starts
    /// `config.proxy`, each waited for; `test` names the log directory.
    pub fn start(
        test: &str,
        bins: &K8sBinaries,
        lab: Binaries,
        config: ClusterConfig,
    ) -> Result<Self> {
        let slot = Slot::acquire();
        let logs = logs_dir(test)?;
        let topology = Topology::new("real").context("creating the node")?;
        let cp = TestNetns::new("real-cp").context("creating the control-plane namespace")?;
        sysctl(
            &cp,
            &[
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_dad=0",
            ],
        )?;
        ip_batch(
            topology.node(),
            &format!(
                "link add cp0 type veth peer name eth0 netns {cp}\n\
                 link set cp0 up\n\
                 addr add {NODE_CP_IPV4}/24 dev cp0\n\
                 addr add {NODE_CP_IPV6}/64 dev cp0 nodad\n",
                cp = cp.name()
            ),
        )?;
        ip_batch(
            &cp,
            &format!(
                "link set eth0 up\n\
                 addr add {APISERVER_IPV4}/24 dev eth0\n\
                 addr add {APISERVER_IPV6}/64 dev eth0 nodad\n\
                 route add default via {NODE_CP_IPV4}\n\
                 route add default via {NODE_CP_IPV6}\n"
            ),
        )?;
        let shm = Path::new("/dev/shm");
        let state = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("ctr-real-")
                .tempdir_in(shm)?
        } else {
            tempfile::Builder::new().prefix("ctr-real-").tempdir()?
        };
        let s = state.path();
        let admin_token = random_token("admin");
        let proxy_token = random_token("kube-proxy");
        // kube-proxy authenticates as the user its real kubeconfig names, so the bootstrap
        // `system:node-proxier` binding is what authorizes it, not system:masters.
        std::fs::write(
            s.join("tokens.csv"),
            format!(
                "{admin_token},admin,admin,\"system:masters\"\n\
                 {proxy_token},system:kube-proxy,kube-proxy\n"
            ),
        )?;
        // SEC1 ("EC PRIVATE KEY"): --service-account-key-file reads no PKCS#8 "PRIVATE KEY".
        let key = std::process::Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(s.join("sa.key"))
            .output()
            .context("running openssl for the ServiceAccount signing key")?;
        if !key.status.success() {
            bail!(
                "openssl genpkey failed: {}",
                String::from_utf8_lossy(&key.stderr)
            );
        }
        let mut startup = Vec::new();

        // etcd: its data on tmpfs and without fsync, a throwaway store.
        let t = Instant::now();
        let mut etcd = Component::start(
            ComponentSpec {
                name: "etcd".into(),
                netns: cp.name().into(),
                program: bins.etcd(),
                args: vec![
                    format!("--data-dir={}", s.join("etcd").display()),
                    format!("--listen-client-urls=http://{ETCD_ADDR}"),
                    format!("--advertise-client-urls=http://{ETCD_ADDR}"),
                    "--listen-peer-urls=http://127.0.0.1:2380".into(),
                    "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                    "--initial-cluster=default=http://127.0.0.1:2380".into(),
                    "--unsafe-no-fsync".into(),
                    "--log-level=warn".into(),
                ],
                env: Vec::new(),
                path: None,
            },
            &logs,
        )?;
        let cp_path = cp.path();
        let etcd_addr: SocketAddr = ETCD_ADDR.parse()?;
        etcd.wait_until("healthy", config.startup_timeout, || {
            let (status, body) = http::get(&cp_path, etcd_addr, "/health")?;
            Ok(status == 200 && body.contains("true"))
        })?;
        startup.push(("etcd".to_string(), t.elapsed()));

        // kube-apiserver.
        let t = Instant::now();
        let pki = s.join("pki");
        let mut apiserver = Component::start(
            ComponentSpec {
                name: "kube-apiserver".into(),
                netns: cp.name().into(),
                program: bins.apiserver(),
                args: vec![
                    format!("--etcd-servers=http://{ETCD_ADDR}"),
                    "--bind-address=0.0.0.0".into(),
                    format!("--advertise-address={APISERVER_IPV4}"),
                    format!("--secure-port={APISERVER_PORT}"),
                    format!("--cert-dir={}", pki.display()),
                    format!("--service-cluster-ip-range={SERVICE_CIDRS}"),
                    "--service-account-issuer=https://kubernetes.default.svc".into(),
                    format!("--service-account-key-file={}", s.join("sa.key").display()),
                    format!(
                        "--service-account-signing-key-file={}",
                        s.join("sa.key").display()
                    ),
                    format!("--token-auth-file={}", s.join("tokens.csv").display()),
                    "--authorization-mode=RBAC".into(),
                    // No serviceaccount controller makes `default` ServiceAccounts; pods name none.
                    "--disable-admission-plugins=ServiceAccount".into(),
                    "--enable-priority-and-fairness=false".into(),
                    "--profiling=false".into(),
                    format!("--v={}", config.control_plane_verbosity),
                ],
                env: Vec::new(),
                path: None,
            },
            &logs,
        )?;
        let ca = pki.join("apiserver.crt");
        // The certificate file holds the serving certificate and then its CA; the key is
        // written after it. A client reading a half-written file trusts nothing.
        let key_file = pki.join("apiserver.key");
        apiserver.wait_until(
            "writing its serving certificate",
            config.startup_timeout,
            || {
                let cert = std::fs::read_to_string(&ca).unwrap_or_default();
                Ok(cert.matches("END CERTIFICATE").count() >= 2
                    && std::fs::metadata(&key_file).is_ok_and(|m| m.len() > 0))
            },
        )?;
        let direct = format!("https://{APISERVER_IPV4}:{APISERVER_PORT}");
        let admin_kubeconfig = s.join("admin.kubeconfig");
        std::fs::write(&admin_kubeconfig, kubeconfig(&direct, &ca, &admin_token))?;
        std::fs::write(
            s.join("kube-proxy.kubeconfig"),
            kubeconfig(&direct, &ca, &proxy_token),
        )?;
        let runtime = runtime_in(&cp_path)?;
        let cp_file = std::fs::File::open(&cp_path)?;
        let client = block_in(&cp_file, &runtime, async {
            let kc = kube::config::Kubeconfig::read_from(&admin_kubeconfig)?;
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            anyhow::Ok(kube::Client::try_from(config)?)
        })?;
        apiserver.wait_until("ready", config.startup_timeout, || {
            let request = ::http::Request::get("/readyz").body(Vec::new())?;
            Ok(block_in(&cp_file, &runtime, client.request_text(request))?.trim() == "ok")
        })?;
        startup.push(("kube-apiserver".to_string(), t.elapsed()));

        // kube-controller-manager: the EndpointSlice controller (and the garbage collector).
        let t = Instant::now();
        let mut controllers = vec!["endpointslice-controller"];
        if config.garbage_collector {
            controllers.push("garbage-collector-controller");
        }
        let mut controller_manager = Component::start(
            ComponentSpec {
                name: "kube-controller-manager".into(),
                netns: cp.name().into(),
                program: bins.controller_manager(),
                args: vec![
                    format!("--kubeconfig={}", admin_kubeconfig.display()),
                    format!("--controllers={}", controllers.join(",")),
                    "--leader-elect=false".into(),
                    "--use-service-account-credentials=false".into(),
                    "--secure-port=0".into(),
                    format!("--v={}", config.control_plane_verbosity.max(2)),
                ],
                env: Vec::new(),
                path: None,
            },
            &logs,
        )?;
        controller_manager.wait_for_log(0, config.startup_timeout, |l| {
            l.contains("Caches are synced") && l.contains("endpoint_slice")
        })?;
        startup.push(("kube-controller-manager".to_string(), t.elapsed()));

        let mut cluster = Self {
            backends: BTreeMap::new(),
            kube_proxy: None,
            proxy_flavour: None,
            controller_manager,
            apiserver,
            etcd,
            client,
            runtime: Some(runtime),
            cp_file,
            cp,
            topology,
            state,
            logs,
            startup,
            bins: bins.clone(),
            lab,
            config: config.clone(),
            next_pod: 0,
            agent_rbac_installed: false,
            _slot: slot,
        };
        let node = objects::node(
            NODE_NAME,
            &[NODE_IPV4.into(), NODE_IPV6.into()],
            &[POD_CIDR_IPV4, POD_CIDR_IPV6],
        );
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        cluster
            .block_on(nodes.create(&PostParams::default(), &node))
            .context("creating the Node")?;
        if let Some(flavour) = config.proxy {
            cluster.start_kube_proxy(flavour)?;
        }
        Ok(cluster)
    }

    /// Runs a future on the cluster's runtime (its sockets live in the control-plane namespace).
    pub fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        block_in(
            &self.cp_file,
            self.runtime.as_ref().expect("runtime"),
            future,
        )
    }

    /// The admin's API client (system:masters); use it inside [`RealCluster::block_on`].
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// How long each component took to become ready, in start order.
    pub fn startup_times(&self) -> &[(String, Duration)] {
        &self.startup
    }

    /// Where this test's logs are.
    pub fn logs_dir(&self) -> &Path {
        &self.logs
    }

    /// The admin kubeconfig (for kubectl while debugging: it works from the `cp` namespace).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state.path().join("admin.kubeconfig")
    }

    /// The node's namespaces and pods.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The control-plane namespace.
    pub fn cp_netns(&self) -> &TestNetns {
        &self.cp
    }

    /// The binaries the cluster runs.
    pub fn binaries(&self) -> &K8sBinaries {
        &self.bins
    }

    /// The lab's own binaries (udp-echo, udp-client).
    pub fn lab_binaries(&self) -> &Binaries {
        &self.lab
    }

    /// etcd.
    pub fn etcd(&mut self) -> &mut Component {
        &mut self.etcd
    }

    /// kube-apiserver (kill, restart, pause it; see [`RealCluster::restart_apiserver`]).
    pub fn apiserver(&mut self) -> &mut Component {
        &mut self.apiserver
    }

    /// kube-controller-manager.
    pub fn controller_manager(&mut self) -> &mut Component {
        &mut self.controller_manager
    }

    /// kube-proxy, when one runs.
    pub fn kube_proxy(&mut self) -> Option<&mut Component> {
        self.kube_proxy.as_mut()
    }

    /// The running kube-proxy's flavour.
    pub fn proxy_flavour(&self) -> Option<ProxyFlavour> {
        self.proxy_flavour
    }

    /// Starts kube-proxy in the node namespace (stopping a running one first) and waits until
    /// its health endpoint says its rules are synced.
    pub fn start_kube_proxy(&mut self, flavour: ProxyFlavour) -> Result<Duration> {
        self.stop_kube_proxy();
        let path = if flavour.conntrack_tool {
            None
        } else {
            Some(proxy::path_without_conntrack(
                &self.state.path().join("path-without-conntrack"),
            )?)
        };
        let t = Instant::now();
        let mut component = Component::start(
            ComponentSpec {
                name: "kube-proxy".into(),
                netns: self.topology.node().name().into(),
                program: self.bins.kube_proxy(flavour.version),
                args: proxy::args(
                    flavour,
                    &self.state.path().join("kube-proxy.kubeconfig"),
                    NODE_NAME,
                    &format!("{POD_CIDR_IPV4},{POD_CIDR_IPV6}"),
                    self.config.proxy_verbosity,
                ),
                env: Vec::new(),
                path,
            },
            &self.logs,
        )?;
        let node = self.topology.node().path();
        let addr: SocketAddr = proxy::HEALTHZ_ADDR.parse()?;
        component.wait_until("healthy", self.config.startup_timeout, || {
            Ok(http::get(&node, addr, "/healthz")?.0 == 200)
        })?;
        let took = t.elapsed();
        self.startup
            .push((format!("kube-proxy {}", flavour.name()), took));
        self.kube_proxy = Some(component);
        self.proxy_flavour = Some(flavour);
        Ok(took)
    }

    /// Stops kube-proxy (its rules stay, as when a real kube-proxy exits).
    pub fn stop_kube_proxy(&mut self) {
        if let Some(mut proxy) = self.kube_proxy.take() {
            proxy.stop(Duration::from_secs(5));
        }
        self.proxy_flavour = None;
    }

    /// kube-proxy's rules as text: `iptables-save` + `ip6tables-save`, or `nft list ruleset`.
    pub fn proxy_rules(&self) -> Result<String> {
        let node = self.topology.node();
        let commands: Vec<Vec<&str>> = match self.proxy_flavour.map(|f| f.mode) {
            Some(ProxyMode::Nftables) => vec![vec!["nft", "list", "ruleset"]],
            _ => vec![vec!["iptables-save"], vec!["ip6tables-save"]],
        };
        let mut text = String::new();
        for argv in commands {
            let out = node.exec_checked(&argv)?;
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        Ok(text)
    }

    /// Waits until kube-proxy's rules satisfy `pred`; returns how long it took.
    pub fn wait_proxy_rules(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let rules = self.proxy_rules()?;
            if pred(&rules) {
                return Ok(start.elapsed());
            }
            if let Some(proxy) = self.kube_proxy.as_mut()
                && let Some(status) = proxy.exit_status()
            {
                bail!(
                    "kube-proxy exited ({status}) while waiting for {what}:\n{}",
                    proxy.log_tail(40)
                );
            }
            if start.elapsed() > timeout {
                bail!("kube-proxy's rules lack {what} after {timeout:?}:\n{rules}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until kube-proxy DNATs `frontend`'s address to exactly-at-least `backends` and to
    /// none of `gone` (`IP:PORT`, `[IPv6]:PORT`, as both iptables-save and nft print them).
    pub fn wait_service_programmed(
        &mut self,
        frontend: IpAddr,
        backends: &[SocketAddr],
        gone: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Duration> {
        let front = frontend.to_string();
        let present: Vec<String> = backends.iter().map(SocketAddr::to_string).collect();
        let absent: Vec<String> = gone.iter().map(SocketAddr::to_string).collect();
        self.wait_proxy_rules(
            &format!("{front} → {present:?} (and none of {absent:?})"),
            timeout,
            |rules| {
                rules.contains(&front)
                    && present.iter().all(|b| rules.contains(b.as_str()))
                    && !absent.iter().any(|b| rules.contains(b.as_str()))
            },
        )
    }

    /// Creates a Service; returns it as stored (ClusterIPs allocated).
    pub fn create_service(&self, service: &UdpService) -> Result<Service> {
        let api: Api<Service> = Api::namespaced(self.client(), NAMESPACE);
        self.block_on(api.create(&PostParams::default(), &service.to_object()))
            .with_context(|| format!("creating Service {}", service.name))
    }

    /// A Service as stored.
    pub fn service(&self, name: &str) -> Result<Service> {
        let api: Api<Service> = Api::namespaced(self.client(), NAMESPACE);
        Ok(self.block_on(api.get(name))?)
    }

    /// A Service's ClusterIPs, first family first.
    pub fn cluster_ips(&self, name: &str) -> Result<Vec<IpAddr>> {
        let spec = self.service(name)?.spec.context("no spec")?;
        spec.cluster_ips
            .unwrap_or_default()
            .iter()
            .map(|ip| ip.parse().with_context(|| format!("bad ClusterIP {ip}")))
            .collect()
    }

    /// A Service's (first) NodePort.
    pub fn node_port(&self, name: &str) -> Result<u16> {
        let spec = self.service(name)?.spec.context("no spec")?;
        let port = spec
            .ports
            .unwrap_or_default()
            .first()
            .and_then(|p| p.node_port);
        Ok(u16::try_from(port.context("no NodePort")?)?)
    }

    /// Merge-patches a Service.
    pub fn patch_service(&self, name: &str, patch: &serde_json::Value) -> Result<Service> {
        let api: Api<Service> = Api::namespaced(self.client(), NAMESPACE);
        Ok(self.block_on(api.patch(name, &PatchParams::default(), &Patch::Merge(patch)))?)
    }

    /// Changes the (first) port's `targetPort`.
    pub fn set_target_port(&self, name: &str, target_port: u16) -> Result<Service> {
        let api: Api<Service> = Api::namespaced(self.client(), NAMESPACE);
        let mut service = self.service(name)?;
        let ports = service
            .spec
            .as_mut()
            .and_then(|s| s.ports.as_mut())
            .context("no ports")?;
        ports[0].target_port = Some(IntOrString::Int(i32::from(target_port)));
        Ok(self.block_on(api.replace(name, &PostParams::default(), &service))?)
    }

    /// Deletes a Service and waits until it is gone (its ClusterIPs free for reuse).
    pub fn delete_service(&self, name: &str) -> Result<()> {
        let api: Api<Service> = Api::namespaced(self.client(), NAMESPACE);
        self.block_on(api.delete(name, &DeleteParams::default()))?;
        self.wait_api("Service deleted", Duration::from_secs(30), || {
            Ok(self.block_on(api.get_opt(name))?.is_none())
        })
    }

    /// Polls `check` until true.
    fn wait_api(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn() -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let last = check();
            if matches!(last, Ok(true)) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("not {what} within {timeout:?} (last: {last:?})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every endpoint of a Service's EndpointSlices (both families).
    pub fn endpoints(&self, service: &str) -> Result<Vec<EndpointView>> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client(), NAMESPACE);
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
        let slices = self.block_on(api.list(&lp))?;
        let mut out = Vec::new();
        for slice in slices {
            for endpoint in slice.endpoints {
                let c = endpoint.conditions.unwrap_or_default();
                let ready = c.ready.unwrap_or(true);
                for address in endpoint.addresses {
                    out.push(EndpointView {
                        ip: address.parse()?,
                        ready,
                        serving: c.serving.unwrap_or(ready),
                        terminating: c.terminating.unwrap_or(false),
                        pod: endpoint.target_ref.as_ref().and_then(|r| r.name.clone()),
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Waits until the Service's *ready* endpoint addresses are exactly `ready`.
    pub fn wait_ready_endpoints(
        &self,
        service: &str,
        ready: &[IpAddr],
        timeout: Duration,
    ) -> Result<Duration> {
        let want: BTreeSet<IpAddr> = ready.iter().copied().collect();
        let start = Instant::now();
        self.wait_api(
            &format!("{service} ready endpoints = {want:?}"),
            timeout,
            || {
                let have: BTreeSet<IpAddr> = self
                    .endpoints(service)?
                    .into_iter()
                    .filter(|e| e.ready)
                    .map(|e| e.ip)
                    .collect();
                Ok(have == want)
            },
        )?;
        Ok(start.elapsed())
    }

    /// A fresh pod name `<app>-<n>`.
    fn pod_name(&mut self, app: &str) -> String {
        self.next_pod += 1;
        format!("{app}-{}", self.next_pod)
    }

    /// Creates a backend pod: its namespace, `udp-echo` on `ports`, the Pod bound to the node,
    /// and the kubelet's status patch (Running, both IPs, Ready = `ready`).
    pub fn add_backend(
        &mut self,
        name: &str,
        app: &str,
        ports: &[u16],
        ready: bool,
    ) -> Result<&Backend> {
        let (ipv4, ipv6) = self.topology.add_pod(name)?;
        let netns = self.topology.pod_netns_name(name).context("pod netns")?;
        let echo = workload::start_echo(&self.lab.echo, &netns, name, ports)?;
        let api: Api<Pod> = Api::namespaced(self.client(), NAMESPACE);
        self.block_on(api.create(
            &PostParams::default(),
            &objects::pod(name, app, NODE_NAME, ports),
        ))
        .with_context(|| format!("creating Pod {name}"))?;
        let status = objects::running_status(
            &[ipv4.into(), ipv6.into()],
            &[NODE_IPV4.into(), NODE_IPV6.into()],
            ready,
        );
        self.block_on(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)))
            .with_context(|| format!("setting Pod {name}'s status"))?;
        self.backends.insert(
            name.to_string(),
            Backend {
                name: name.into(),
                app: app.into(),
                ipv4,
                ipv6,
                ports: ports.to_vec(),
                echo: Some(echo),
            },
        );
        Ok(&self.backends[name])
    }

    /// Adds a backend with a generated name `<app>-<n>`; returns the name.
    pub fn add_backend_named(&mut self, app: &str, ports: &[u16]) -> Result<String> {
        let name = self.pod_name(app);
        self.add_backend(&name, app, ports, true)?;
        Ok(name)
    }

    /// A backend.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.get(name)
    }

    /// The backends of `app` still in the harness (Terminating ones included), by name.
    pub fn backends_of(&self, app: &str) -> Vec<&Backend> {
        self.backends.values().filter(|b| b.app == app).collect()
    }

    /// Scales `app` to `replicas` ready backends answering on `ports`: adds `<app>-<n>` pods,
    /// or deletes the newest ([`PodDeletion::Immediate`]). Returns the names now serving.
    pub fn scale(&mut self, app: &str, replicas: usize, ports: &[u16]) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .backends_of(app)
            .iter()
            .map(|b| b.name.clone())
            .collect();
        // Newest last: pod names carry an increasing number.
        names.sort_by_key(|n| {
            n.rsplit('-')
                .next()
                .and_then(|i| i.parse::<u32>().ok())
                .unwrap_or(0)
        });
        while names.len() < replicas {
            names.push(self.add_backend_named(app, ports)?);
        }
        while names.len() > replicas {
            let name = names.pop().context("no pod")?;
            self.delete_pod(&name, PodDeletion::Immediate)?;
        }
        Ok(names)
    }

    /// Flips a pod's readiness (its Ready and ContainersReady conditions).
    pub fn set_pod_ready(&self, name: &str, ready: bool) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client(), NAMESPACE);
        self.block_on(api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&objects::readiness_status(ready)),
        ))?;
        Ok(())
    }

    /// Deletes a pod; see [`PodDeletion`].
    pub fn delete_pod(&mut self, name: &str, how: PodDeletion) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client(), NAMESPACE);
        match how {
            PodDeletion::Graceful => {
                self.block_on(api.delete(name, &DeleteParams::default()))?;
            }
            PodDeletion::Immediate => {
                self.block_on(api.delete(
                    name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                ))?;
                self.wait_api(&format!("Pod {name} gone"), Duration::from_secs(30), || {
                    Ok(self.block_on(api.get_opt(name))?.is_none())
                })?;
                self.remove_backend_network(name)?;
            }
        }
        Ok(())
    }

    /// Stops a backend's echo server and removes its network (the sandbox torn down), leaving
    /// its Pod object as it is.
    pub fn remove_backend_network(&mut self, name: &str) -> Result<()> {
        if let Some(mut backend) = self.backends.remove(name) {
            if let Some(mut echo) = backend.echo.take() {
                echo.stop(Duration::from_millis(200));
            }
            self.topology.remove_pod(name)?;
        }
        Ok(())
    }

    /// Starts a fixed-source-port client in a new pod namespace `name` (no Pod object).
    pub fn start_client(
        &self,
        name: &str,
        target: SocketAddr,
        source_port: u16,
        interval: Duration,
    ) -> Result<Client> {
        self.topology.add_pod(name)?;
        let netns = self.topology.pod_netns_name(name).context("client netns")?;
        Client::start(
            &self.lab.client,
            &netns,
            name,
            target,
            source_port,
            interval,
        )
    }

    /// Starts a client in the node namespace (a hostNetwork pod).
    pub fn start_node_client(
        &self,
        name: &str,
        target: SocketAddr,
        source_port: u16,
        interval: Duration,
    ) -> Result<Client> {
        Client::start(
            &self.lab.client,
            self.topology.node().name(),
            name,
            target,
            source_port,
            interval,
        )
    }

    /// Starts a client on the external host (NodePort and ExternalIP traffic).
    pub fn start_external_client(
        &self,
        name: &str,
        target: SocketAddr,
        source_port: u16,
        interval: Duration,
    ) -> Result<Client> {
        Client::start(
            &self.lab.client,
            self.topology.external().name(),
            name,
            target,
            source_port,
            interval,
        )
    }

    /// Applies the agent's ServiceAccount, ClusterRole and ClusterRoleBinding as rendered
    /// (once; later calls do nothing).
    pub fn install_agent_rbac(&mut self, shipped: &ShippedAgent) -> Result<()> {
        if self.agent_rbac_installed {
            return Ok(());
        }
        let (namespace, _) = shipped.service_account_ref()?;
        let pp = PostParams::default();
        let sa: Api<ServiceAccount> = Api::namespaced(self.client(), &namespace);
        self.block_on(sa.create(&pp, &shipped.service_account))
            .context("creating the ServiceAccount")?;
        let roles: Api<ClusterRole> = Api::all(self.client());
        self.block_on(roles.create(&pp, &shipped.cluster_role))
            .context("creating the ClusterRole")?;
        let bindings: Api<ClusterRoleBinding> = Api::all(self.client());
        self.block_on(bindings.create(&pp, &shipped.cluster_role_binding))
            .context("creating the ClusterRoleBinding")?;
        self.agent_rbac_installed = true;
        Ok(())
    }

    /// A token for a ServiceAccount (the TokenRequest API, as the kubelet gets one for a pod).
    pub fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(i64::try_from(ttl.as_secs())?),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = self
            .block_on(api.create_token_request(name, &PostParams::default(), &request))
            .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
        Ok(answer.status.context("TokenRequest without status")?.token)
    }

    /// Runs the real agent as its DaemonSet does: RBAC applied, a token of its ServiceAccount,
    /// the container's args and env, only its capabilities, in the node namespace (hostNetwork).
    pub fn start_agent(
        &mut self,
        shipped: &ShippedAgent,
        options: &AgentOptions,
    ) -> Result<RealAgent> {
        if !shipped.host_network()? {
            bail!(
                "the DaemonSet is not on the host network: the harness runs the agent in the node"
            );
        }
        self.install_agent_rbac(shipped)?;
        let (namespace, sa) = shipped.service_account_ref()?;
        let token = self.service_account_token(&namespace, &sa, Duration::from_secs(3600))?;
        let server = match options.api {
            AgentApi::KubernetesService => {
                if self.kube_proxy.is_none() {
                    bail!("AgentApi::KubernetesService needs kube-proxy's rules; start one first");
                }
                format!("https://{KUBERNETES_SERVICE_IP}:443")
            }
            AgentApi::Direct => format!("https://{APISERVER_IPV4}:{APISERVER_PORT}"),
        };
        let config_path = self
            .state
            .path()
            .join(format!("{}.kubeconfig", options.name));
        let ca = self.state.path().join("pki/apiserver.crt");
        std::fs::write(&config_path, kubeconfig(&server, &ca, &token))?;
        let downward = DownwardApi {
            node_name: NODE_NAME.into(),
            pod_ip: NODE_IPV4.into(),
            host_ip: NODE_IPV4.into(),
            pod_name: format!("{}-{NODE_NAME}", options.name),
            namespace,
        };
        let mut env = shipped.env(&downward)?;
        // The pod's in-cluster credentials, as a kubeconfig file (the path is this process's).
        env.push((
            "CONNTRACK_RECONCILER_KUBECONFIG".into(),
            config_path.display().to_string(),
        ));
        env.extend(options.extra_env.iter().cloned());
        let mut args = shipped.args()?;
        args.extend(options.extra_args.iter().cloned());
        let (program, args) = match shipped.capabilities()? {
            Some(caps) if options.enforce_capabilities => {
                let keep: String = caps.iter().map(|c| format!(",+{c}")).collect();
                let mut wrapped = vec![
                    "--inh-caps=-all".to_string(),
                    format!("--bounding-set=-all{keep}"),
                    "--no-new-privs".to_string(),
                    "--".to_string(),
                    options.binary.display().to_string(),
                ];
                wrapped.extend(args);
                (PathBuf::from("/usr/bin/setpriv"), wrapped)
            }
            _ => (options.binary.clone(), args),
        };
        let (path, port) = shipped.readiness_probe()?;
        let component = Component::start(
            ComponentSpec {
                name: options.name.clone(),
                netns: self.topology.node().name().into(),
                program,
                args,
                env,
                path: None,
            },
            &self.logs,
        )?;
        Ok(RealAgent {
            component,
            node_netns: self.topology.node().path(),
            admin_addr: SocketAddr::new(downward.pod_ip, port),
            readiness_path: path,
            kubeconfig: config_path,
        })
    }

    /// Kills kube-apiserver (SIGKILL) and starts it again; waits until it is ready.
    pub fn restart_apiserver(&mut self, down_for: Duration) -> Result<Duration> {
        self.apiserver.kill();
        std::thread::sleep(down_for);
        self.apiserver.restart(Duration::ZERO)?;
        let client = self.client();
        let runtime = self.runtime.as_ref().expect("runtime");
        let cp_file = &self.cp_file;
        let took = self
            .apiserver
            .wait_until("ready again", self.config.startup_timeout, || {
                let request = ::http::Request::get("/readyz").body(Vec::new())?;
                Ok(block_in(cp_file, runtime, client.request_text(request))?.trim() == "ok")
            })?;
        Ok(took)
    }

    /// Compacts etcd up to its current revision, so that every watch resuming from an older
    /// resourceVersion gets 410 Gone (once kube-apiserver's watch cache has moved past it).
    /// Returns the revision.
    pub fn compact_etcd(&self) -> Result<i64> {
        let addr: SocketAddr = ETCD_ADDR.parse()?;
        let netns = self.cp.path();
        let (status, body) =
            http::request(&netns, addr, "/v3/kv/range", Some(r#"{"key":"AA=="}"#))?;
        if status != 200 {
            bail!("etcd range: {status} {body}");
        }
        let value: serde_json::Value = serde_json::from_str(&body)?;
        let revision = &value["header"]["revision"];
        let revision: i64 = match revision {
            serde_json::Value::String(s) => s.parse()?,
            other => other.as_i64().context("no revision")?,
        };
        let (status, body) = http::request(
            &netns,
            addr,
            "/v3/kv/compaction",
            Some(&json!({"revision": revision.to_string(), "physical": true}).to_string()),
        )?;
        if status != 200 {
            bail!("etcd compaction: {status} {body}");
        }
        Ok(revision)
    }

    /// The tail of every component's log, for a failure report.
    pub fn logs_report(&self, lines: usize) -> String {
        let mut out = format!("logs of this cluster: {}\n", self.logs.display());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.logs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            out.push_str(&format!(
                "---- last {lines} lines of {} ----\n{}\n",
                file.display(),
                tail(&file, lines)
            ));
        }
        out
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs_report(60));
        }
        for backend in self.backends.values_mut() {
            if let Some(mut echo) = backend.echo.take() {
                echo.stop(Duration::ZERO);
            }
        }
        if let Some(mut proxy) = self.kube_proxy.take() {
            proxy.kill();
        }
        self.controller_manager.kill();
        self.apiserver.kill();
        self.etcd.kill();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
        // The namespaces and the state directory go with the fields.
    }
}
