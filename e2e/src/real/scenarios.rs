//! The measured scenarios on real components: etcd, kube-apiserver, the EndpointSlice controller
//! and a real kube-proxy (v1.31 with or without its own cleanup, v1.34 iptables or nftables),
//! each run with and without the real agent.
//!
//! Every run starts a fresh [`RealCluster`], a 3-backend UDP Service, a fixed-source-port client
//! and [`BYSTANDERS`] bystander clients steadily answered through it, watches the node's
//! conntrack DESTROY events ([`crate::conntrack::DestroyMonitor`]), makes one change and measures:
//!
//! - the *recovery*: from the change (`t0`) to the main client's first answer from a backend
//!   it may now reach (None: not within the window, i.e. still blackholed or stuck);
//! - the *false deletions*: destroyed flows whose backend (`IP:port`, the reply source) was
//!   serving at that moment, by this module's own record of what it made serving and when
//!   (a backend stops serving when the harness starts the change, and starts serving before the
//!   harness makes it ready, so the record errs towards calling a deletion false);
//! - the agent's and kube-proxy's conntrack errors (a race between the two deleting the same
//!   flow must be neither's error).
//!
//! These are the same measures as the emulated lab's ([`crate::emulation::scenarios`]), taken
//! against the real control plane and the real kube-proxy's rules and cleanup.

use crate::conntrack::FlowEntry;
use crate::process::{Binaries, Process};
use crate::real::cluster::{KUBERNETES_SERVICE_IP, PodDeletion, RealCluster};
use crate::real::objects::NAMESPACE;
use crate::real::{
    AgentOptions, ClusterConfig, Families, K8sBinaries, ProxyFlavour, ProxyVersion, RealAgent,
    ShippedAgent, UdpService,
};
use crate::timeline::{Timeline, unix_micros};
use crate::topology::NODE_IPV4;
use crate::workload::{Answer, Client};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The service port clients use.
pub const SERVICE_PORT: u16 = 53;
/// The backends' port.
pub const TARGET_PORT: u16 = 5353;
/// The other port every backend listens on (the targetPort change moves to it).
pub const NEW_TARGET_PORT: u16 = 5354;
/// The main client's fixed source port.
pub const CLIENT_PORT: u16 = 40053;
/// How many bystander clients watch for false deletions.
pub const BYSTANDERS: u16 = 3;
/// The ExternalIP of the ExternalIP scenario (routed by the external host to the node).
pub const EXTERNAL_IP: &str = "192.168.100.10";
/// How often clients send.
const CLIENT_INTERVAL: Duration = Duration::from_millis(20);
/// Backends of the scenario's Service.
const BACKENDS: usize = 3;
/// Scale to zero: how long the Service stays without endpoints before one comes back.
const SCALE_BACK_PAUSE: Duration = Duration::from_millis(500);
/// Terminating: how long the plain-deleted (Terminating, still serving) pod keeps its flow
/// before its readiness fails.
const TERMINATING_HOLD: Duration = Duration::from_secs(2);
/// Agent restarted: how long it is down while the backend goes.
const AGENT_DOWN: Duration = Duration::from_secs(1);
/// kube-apiserver restarted: how long it is down.
const APISERVER_DOWN: Duration = Duration::from_secs(1);
/// API blackholed: how long after `t0` the agent's API path is healed.
const BLACKHOLE_AFTER_CHANGE: Duration = Duration::from_secs(3);
/// API blackholed: new clients started while the agent is blind.
const BLIND_CLIENTS: u16 = 6;
/// After the first allowed answer: time for late (wrong) deletions to show up.
const SETTLE: Duration = Duration::from_millis(1500);
/// etcd's client address in the control-plane namespace (as the cluster starts it).
const ETCD_ADDR: &str = "127.0.0.1:2379";
/// How long setup waits for anything (rules, endpoints, steady answers).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Every scenario on real components.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RealScenario {
    /// The headline: a pod client of a UDP ClusterIP Service; its backend pod deleted
    /// (grace period 0: the object goes, then the sandbox).
    BackendDeleted,
    /// The client's backend turns not ready (readiness fails); it keeps running.
    NotReady,
    /// The client's backend is deleted plainly and stays Terminating (no kubelet): still
    /// serving, its flow must stay; then its readiness fails (not serving): recovery is
    /// counted from then.
    Terminating,
    /// Every backend deleted, then one new backend: recovery counted from the new one's start.
    ScaleToZeroAndBack,
    /// The Service's targetPort changes (backends listen on both ports).
    TargetPortChanged,
    /// The Service is deleted (its pods keep running) and a new one reuses its ClusterIP.
    ServiceDeletedVipReused,
    /// A NodePort Service, the client on the external host; its backend deleted.
    NodePort,
    /// An ExternalIP, the client on the external host; its backend deleted.
    ExternalIp,
    /// An IPv6 Service and client; its backend deleted.
    Ipv6,
    /// A dual-stack Service, the client on IPv6 (bystanders on both); its backend deleted.
    DualStack,
    /// A hostNetwork client (in the node namespace); its backend deleted.
    HostNetworkClient,
    /// The agent is stopped, the backend deleted while it is down, and it starts again
    /// (its startup must touch no healthy flow and recover the stale one).
    AgentRestarted,
    /// The backend is deleted and kube-apiserver killed at once, restarted a second later.
    ApiserverRestarted,
    /// etcd compacted past every watch's resourceVersion and restarted: kube-apiserver's watch
    /// caches re-list and resumed watches get a real 410 Gone; the backend's pod dies while
    /// etcd is down, its Pod object is deleted once the API answers.
    EtcdCompacted,
    /// The agent's API connection blackholed (only its path: TCP to the `kubernetes`
    /// Service's 10.96.0.1:443 dropped in the node namespace; kube-proxy talks to
    /// kube-apiserver directly and keeps syncing) while new endpoints and a new Service
    /// arrive and new clients reach them; the client's backend deleted; then healed.
    AgentApiBlackholed,
}

impl RealScenario {
    /// Every scenario, headline first.
    pub const ALL: [RealScenario; 15] = [
        RealScenario::BackendDeleted,
        RealScenario::NotReady,
        RealScenario::Terminating,
        RealScenario::ScaleToZeroAndBack,
        RealScenario::TargetPortChanged,
        RealScenario::ServiceDeletedVipReused,
        RealScenario::NodePort,
        RealScenario::ExternalIp,
        RealScenario::Ipv6,
        RealScenario::DualStack,
        RealScenario::HostNetworkClient,
        RealScenario::AgentRestarted,
        RealScenario::ApiserverRestarted,
        RealScenario::EtcdCompacted,
        RealScenario::AgentApiBlackholed,
    ];

    /// A short name (log directories, command lines).
    pub fn name(self) -> &'static str {
        match self {
            RealScenario::BackendDeleted => "backend-deleted",
            RealScenario::NotReady => "not-ready",
            RealScenario::Terminating => "terminating",
            RealScenario::ScaleToZeroAndBack => "scale-zero",
            RealScenario::TargetPortChanged => "target-port",
            RealScenario::ServiceDeletedVipReused => "vip-reused",
            RealScenario::NodePort => "nodeport",
            RealScenario::ExternalIp => "external-ip",
            RealScenario::Ipv6 => "ipv6",
            RealScenario::DualStack => "dual-stack",
            RealScenario::HostNetworkClient => "hostnetwork",
            RealScenario::AgentRestarted => "agent-restart",
            RealScenario::ApiserverRestarted => "apiserver-restart",
            RealScenario::EtcdCompacted => "etcd-compacted",
            RealScenario::AgentApiBlackholed => "agent-api-blackholed",
        }
    }

    /// A row title for tables.
    pub fn title(self) -> &'static str {
        match self {
            RealScenario::BackendDeleted => "backend pod deleted",
            RealScenario::NotReady => "backend not ready",
            RealScenario::Terminating => "pod Terminating, then not serving¹",
            RealScenario::ScaleToZeroAndBack => "scale to zero and back²",
            RealScenario::TargetPortChanged => "targetPort changed",
            RealScenario::ServiceDeletedVipReused => "Service deleted, ClusterIP reused",
            RealScenario::NodePort => "NodePort, external client",
            RealScenario::ExternalIp => "ExternalIP, external client",
            RealScenario::Ipv6 => "IPv6",
            RealScenario::DualStack => "dual-stack (client on IPv6)",
            RealScenario::HostNetworkClient => "hostNetwork client",
            RealScenario::AgentRestarted => "agent down 1 s while the backend goes, restarted",
            RealScenario::ApiserverRestarted => "kube-apiserver killed during the change",
            RealScenario::EtcdCompacted => "etcd compacted and restarted (real 410 Gone)⁴",
            RealScenario::AgentApiBlackholed => "agent's API blackholed, kube-proxy leads³",
        }
    }

    /// By name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name || s.name() == name.replace('_', "-"))
    }

    fn families(self) -> Families {
        match self {
            RealScenario::Ipv6 => Families::V6,
            RealScenario::DualStack => Families::Dual,
            _ => Families::V4,
        }
    }
}

/// Where a scenario's clients run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Pod,
    Node,
    External,
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RealRunConfig {
    /// The real components.
    pub k8s: K8sBinaries,
    /// The lab's binaries (udp-echo, udp-client).
    pub lab: Binaries,
    /// The agent binary; None runs the scenario without the agent.
    pub agent: Option<PathBuf>,
    /// The kube-proxy.
    pub flavour: ProxyFlavour,
    /// How long after the change to wait for recovery.
    pub window: Duration,
    /// Names the run's log directory (`<target>/real-logs/<label>-<scenario>-<flavour>-…`).
    pub label: String,
}

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct RealOutcome {
    /// Which scenario.
    pub scenario: RealScenario,
    /// Which kube-proxy.
    pub flavour: ProxyFlavour,
    /// Whether the agent ran.
    pub with_agent: bool,
    /// The observation window.
    pub window: Duration,
    /// Time from the change to the first answer from an allowed backend; None: none within
    /// the window.
    pub recovery: Option<Duration>,
    /// The backend answering the main client before the change.
    pub before: String,
    /// The first allowed answer after the change.
    pub after: Option<String>,
    /// Flows destroyed while their backend was serving, by anyone: must be empty.
    pub false_deletions: Vec<FlowEntry>,
    /// Those of them the agent's own netlink sockets deleted (by the destroy event's
    /// `portid`): must be empty whatever kube-proxy does.
    pub false_deletions_by_agent: Vec<FlowEntry>,
    /// Every UDP flow destroyed during the run (by anyone).
    pub destroyed: usize,
    /// The agent's pass totals: deleted, already gone (someone else was first), failed.
    pub agent_deleted: u64,
    /// Deletions the agent found already done (kube-proxy's cleanup was first).
    pub agent_already_gone: u64,
    /// Deletions that failed (must be 0).
    pub agent_failed: u64,
    /// kube-proxy's conntrack error lines (the lost cleanup's, expected without the tool).
    pub proxy_conntrack_errors: Vec<String>,
    /// The timeline, times relative to the change.
    pub timeline: String,
    /// Scenario-specific facts, one per entry.
    pub notes: Vec<String>,
    /// Where the run's logs are.
    pub logs: PathBuf,
}

impl RealOutcome {
    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{} on {} ({}): recovery {}, false deletions {} (by the agent {}), destroyed {}, agent deleted {} \
             (already gone {}, failed {}), kube-proxy conntrack errors {}, before {}, after {}{}",
            self.scenario.name(),
            self.flavour.name(),
            if self.with_agent {
                "with agent"
            } else {
                "without agent"
            },
            match self.recovery {
                Some(d) => format!("{} ms", d.as_millis()),
                None => format!("none within {} s", self.window.as_secs_f64()),
            },
            self.false_deletions.len(),
            self.false_deletions_by_agent.len(),
            self.destroyed,
            self.agent_deleted,
            self.agent_already_gone,
            self.agent_failed,
            self.proxy_conntrack_errors.len(),
            self.before,
            self.after.as_deref().unwrap_or("-"),
            if self.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.notes.join("; "))
            },
        )
    }

    /// Everything a failing assertion should print.
    pub fn report(&self) -> String {
        format!(
            "{}\ntimeline:\n{}false deletions: {:?}\nlogs: {}",
            self.summary(),
            self.timeline,
            self.false_deletions,
            self.logs.display()
        )
    }
}

/// What serves, and since when: `IP:port`s of backends allowed to get traffic.
#[derive(Debug, Default)]
struct Truth {
    now: BTreeSet<SocketAddr>,
    history: Vec<(u64, BTreeSet<SocketAddr>)>,
}

impl Truth {
    fn publish(&mut self) {
        self.history.push((unix_micros(), self.now.clone()));
    }

    fn add(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.now.extend(addrs);
        self.publish();
    }

    fn remove(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for a in addrs {
            self.now.remove(&a);
        }
        self.publish();
    }

    fn serving_at(&self, t_us: u64) -> BTreeSet<SocketAddr> {
        self.history
            .iter()
            .rev()
            .find(|(t, _)| *t <= t_us)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }
}

/// One run in progress.
struct Run {
    scenario: RealScenario,
    config: RealRunConfig,
    // Field order is drop order: clients and the agent before the cluster.
    clients: Vec<Client>,
    agent: Option<RealAgent>,
    shipped: Option<ShippedAgent>,
    monitor: Option<Destroys>,
    agent_ports: BTreeSet<u32>,
    cluster: RealCluster,
    truth: Truth,
    tl: Timeline,
    notes: Vec<String>,
    next_pod: u32,
    port: u16,
}

/// The addresses of `ips` (filtered to `families`) at `port`.
fn addrs(ips: &[IpAddr], families: Families, port: u16) -> Vec<SocketAddr> {
    ips.iter()
        .filter(|ip| match families {
            Families::V4 => ip.is_ipv4(),
            Families::V6 => ip.is_ipv6(),
            Families::Dual => true,
        })
        .map(|ip| SocketAddr::new(*ip, port))
        .collect()
}

impl Run {
    fn families(&self) -> Families {
        self.scenario.families()
    }

    /// A backend's addresses the Service sends to (its families, the current targetPort).
    fn backend_addrs(&self, pod: &str) -> Vec<SocketAddr> {
        self.cluster
            .backend(pod)
            .map(|b| addrs(&b.ips(), self.families(), self.port))
            .unwrap_or_default()
    }

    fn ips(&self, pod: &str) -> Vec<IpAddr> {
        let families = self.families();
        self.cluster
            .backend(pod)
            .map(|b| {
                b.ips()
                    .into_iter()
                    .filter(|ip| match families {
                        Families::V4 => ip.is_ipv4(),
                        Families::V6 => ip.is_ipv6(),
                        Families::Dual => true,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Adds a backend of `app`: not ready first, recorded as serving, then made ready (so no
    /// flow reaches it before the record says it serves).
    fn add_ready_backend(&mut self, app: &str, serving: bool) -> Result<String> {
        self.next_pod += 1;
        let name = format!("{app}-{}", self.next_pod);
        self.cluster
            .add_backend(&name, app, &[TARGET_PORT, NEW_TARGET_PORT], false)?;
        if serving {
            let a = self.backend_addrs(&name);
            self.truth.add(a);
        }
        self.cluster.set_pod_ready(&name, true)?;
        Ok(name)
    }

    fn start_client(
        &mut self,
        name: &str,
        place: Place,
        target: SocketAddr,
        port: u16,
    ) -> Result<usize> {
        let client = match place {
            Place::Pod => self
                .cluster
                .start_client(name, target, port, CLIENT_INTERVAL)?,
            Place::Node => self
                .cluster
                .start_node_client(name, target, port, CLIENT_INTERVAL)?,
            Place::External => {
                self.cluster
                    .start_external_client(name, target, port, CLIENT_INTERVAL)?
            }
        };
        self.clients.push(client);
        Ok(self.clients.len() - 1)
    }

    /// Deletes a pod as the change: recorded as not serving first.
    fn delete_backend(&mut self, pod: &str, how: PodDeletion) -> Result<()> {
        let a = self.backend_addrs(pod);
        self.truth.remove(a);
        self.tl
            .record("harness", format!("deleting pod {pod} ({how:?})"));
        self.cluster.delete_pod(pod, how)
    }

    /// The kubelet's side of a pod's end while the API cannot hear of it: its backend
    /// stops and its network goes; recorded as not serving. The Pod object goes later.
    fn delete_backend_while_frozen(&mut self, pod: &str) -> Result<()> {
        let a = self.backend_addrs(pod);
        self.truth.remove(a);
        self.tl
            .record("harness", format!("pod {pod}'s sandbox torn down"));
        self.cluster.remove_backend_network(pod)
    }

    /// The agent (a fresh start from the shipped manifests).
    fn start_agent(&mut self) -> Result<()> {
        let Some(binary) = self.config.agent.clone() else {
            return Ok(());
        };
        let shipped = ShippedAgent::render()?;
        let mut options = AgentOptions::shipped(&binary);
        // The event path logs its deletions at debug level only: count them too.
        options.extra_env.push((
            "RUST_LOG".into(),
            "info,conntrack_reconciler::events=debug".into(),
        ));
        let mut agent = self.cluster.start_agent(&shipped, &options)?;
        let took = agent.wait_ready(Duration::from_secs(60))?;
        self.tl.record("agent", format!("ready after {took:?}"));
        self.agent = Some(agent);
        self.shipped = Some(shipped);
        self.snapshot_agent_ports();
        Ok(())
    }

    /// Notes the netlink ports of the agent's conntrack sockets (to attribute deletions).
    fn snapshot_agent_ports(&mut self) {
        if let Some(pid) = self.agent.as_mut().and_then(|a| a.component().pid()) {
            self.agent_ports.insert(pid);
            self.agent_ports.extend(netlink_ports(pid));
        }
    }
}

/// Runs one scenario end to end; the cluster is torn down before it returns.
pub fn run(scenario: RealScenario, config: &RealRunConfig) -> Result<RealOutcome> {
    let test = format!(
        "{}-{}-{}-{}",
        config.label,
        scenario.name(),
        config.flavour.name(),
        if config.agent.is_some() {
            "agent"
        } else {
            "baseline"
        }
    );
    let cluster = RealCluster::start(
        &test,
        &config.k8s,
        config.lab.clone(),
        ClusterConfig {
            proxy: Some(config.flavour),
            ..Default::default()
        },
    )
    .with_context(|| format!("{test}: starting the cluster"))?;
    let mut run = Run {
        scenario,
        config: config.clone(),
        clients: Vec::new(),
        agent: None,
        shipped: None,
        monitor: None,
        agent_ports: BTreeSet::new(),
        cluster,
        truth: Truth::default(),
        tl: Timeline::default(),
        notes: Vec::new(),
        next_pod: 0,
        port: TARGET_PORT,
    };
    let result = drive(&mut run);
    if let Err(e) = &result {
        // The logs outlive the cluster; say where they are.
        eprintln!(
            "{test} failed: {e:#}\ntimeline:\n{}\n{}",
            run.tl.render(unix_micros()),
            run.cluster.logs_report(30)
        );
    }
    result
}

/// The frontend the main client targets for `scenario`, from the Service as created.
fn frontend(run: &Run, service: &str) -> Result<(SocketAddr, Place, Vec<SocketAddr>)> {
    let ips = run.cluster.cluster_ips(service)?;
    let v4 = ips.iter().find(|i| i.is_ipv4()).copied();
    let v6 = ips.iter().find(|i| i.is_ipv6()).copied();
    Ok(match run.scenario {
        RealScenario::NodePort => {
            let port = run.cluster.node_port(service)?;
            let t = SocketAddr::new(NODE_IPV4.into(), port);
            (t, Place::External, vec![t; BYSTANDERS as usize])
        }
        RealScenario::ExternalIp => {
            let t = SocketAddr::new(EXTERNAL_IP.parse()?, SERVICE_PORT);
            (t, Place::External, vec![t; BYSTANDERS as usize])
        }
        RealScenario::HostNetworkClient => {
            let t = SocketAddr::new(v4.context("no IPv4 ClusterIP")?, SERVICE_PORT);
            (t, Place::Node, vec![t; BYSTANDERS as usize])
        }
        RealScenario::Ipv6 => {
            let t = SocketAddr::new(v6.context("no IPv6 ClusterIP")?, SERVICE_PORT);
            (t, Place::Pod, vec![t; BYSTANDERS as usize])
        }
        RealScenario::DualStack => {
            let t6 = SocketAddr::new(v6.context("no IPv6 ClusterIP")?, SERVICE_PORT);
            let t4 = SocketAddr::new(v4.context("no IPv4 ClusterIP")?, SERVICE_PORT);
            // Bystanders on both families.
            let by = (0..BYSTANDERS)
                .map(|i| if i % 2 == 0 { t4 } else { t6 })
                .collect();
            (t6, Place::Pod, by)
        }
        _ => {
            let t = SocketAddr::new(v4.context("no IPv4 ClusterIP")?, SERVICE_PORT);
            (t, Place::Pod, vec![t; BYSTANDERS as usize])
        }
    })
}

/// Waits until the service's endpoints are all of `pods` and kube-proxy programmed each
/// frontend IP of the Service to them.
fn wait_programmed(run: &mut Run, service: &str, pods: &[String]) -> Result<()> {
    let ips: Vec<IpAddr> = pods.iter().flat_map(|p| run.ips(p)).collect();
    run.cluster
        .wait_ready_endpoints(service, &ips, SETUP_TIMEOUT)?;
    let port = run.port;
    for front in run.cluster.cluster_ips(service)? {
        let backends: Vec<SocketAddr> = ips
            .iter()
            .filter(|ip| ip.is_ipv4() == front.is_ipv4())
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        run.cluster
            .wait_service_programmed(front, &backends, &[], SETUP_TIMEOUT)?;
    }
    Ok(())
}

/// Waits up to `window` after `t0` for the client's first answer that `allowed` accepts.
fn first_allowed_answer(
    client: &Client,
    t0: u64,
    window: Duration,
    allowed: &dyn Fn(&Answer) -> bool,
) -> Option<Answer> {
    let deadline = t0 + window.as_micros() as u64;
    loop {
        if let Some(answer) = client.first_answer_after(t0, allowed) {
            return Some(answer);
        }
        if unix_micros() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent's pass totals from its JSON log: (deleted, already gone, failed).
fn agent_pass_totals(log: &str) -> (u64, u64, u64) {
    let mut totals = (0, 0, 0);
    for line in log.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if value["message"] == "deleted stale new flow" {
            totals.0 += 1;
            continue;
        }
        let n = |k: &str| {
            value
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        totals.0 += n("deleted");
        totals.1 += n("already_gone");
        totals.2 += n("failed");
    }
    totals
}

/// The agent's passes that did something, as (Unix µs, summary), from its JSON log.
fn agent_passes(log: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(t) = value["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        else {
            continue;
        };
        let t = u64::try_from(t.as_microsecond()).unwrap_or(0);
        let message = value["message"].as_str().unwrap_or_default();
        if message.starts_with("deleted stale new flow") || message.starts_with("stale new flow") {
            out.push((
                t,
                format!(
                    "event path: {message}: {} via {}",
                    value["flow"].as_str().unwrap_or("?"),
                    value["backend"].as_str().unwrap_or("?")
                ),
            ));
            continue;
        }
        if message != "pass" {
            continue;
        }
        let n = |k: &str| {
            value
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        if n("stale") + n("deferred") + n("held") + n("deleted") == 0 {
            continue;
        }
        out.push((
            t,
            format!(
                "pass ({}, {}): stale {}, deferred {}, held {}, deleted {}, already gone {}",
                value["trigger"].as_str().unwrap_or("?"),
                value["family"].as_str().unwrap_or("?"),
                n("stale"),
                n("deferred"),
                n("held"),
                n("deleted"),
                n("already_gone")
            ),
        ));
    }
    out
}

/// A destroyed UDP flow: when its event was read, and the netlink port of the socket that
/// deleted it (None: the kernel, e.g. a timeout).
#[derive(Debug, Clone)]
struct Destroy {
    t: u64,
    flow: FlowEntry,
    portid: Option<u32>,
}

/// `conntrack -E -e DESTROY` for UDP in both families, keeping each event's `portid` (which
/// [`crate::conntrack::DestroyMonitor`] drops) so that a deletion is attributed to its deleter.
struct Destroys {
    processes: Vec<Process>,
}

impl Destroys {
    fn start(netns: &str) -> Result<Self> {
        let mut processes = Vec::new();
        for family in ["ipv4", "ipv6"] {
            let args: Vec<String> = ["-E", "-e", "DESTROY", "-p", "udp", "-f", family, "-o", "id"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            processes.push(Process::spawn_in(
                &format!("destroys-{family}"),
                netns,
                Path::new("conntrack"),
                &args,
                |_| {},
            )?);
        }
        // The event sockets must be subscribed before the scenario acts.
        std::thread::sleep(Duration::from_millis(100));
        Ok(Self { processes })
    }

    fn events(&self) -> Vec<Destroy> {
        let mut out: Vec<Destroy> = self
            .processes
            .iter()
            .flat_map(Process::lines)
            .filter_map(|(t, line)| {
                Some(Destroy {
                    t,
                    flow: FlowEntry::parse(&line)?,
                    portid: portid(&line),
                })
            })
            .collect();
        out.sort_by_key(|d| d.t);
        out
    }
}

/// The `portid=` of a `conntrack -E` line (a userspace deletion's netlink socket).
fn portid(line: &str) -> Option<u32> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("portid=")?.parse().ok())
}

/// The netlink ports of process `pid`'s netfilter (NETLINK_NETFILTER = 12) sockets: its
/// socket inodes matched against `/proc/<pid>/net/netlink`.
fn netlink_ports(pid: u32) -> BTreeSet<u32> {
    let inodes: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| {
                    let target = std::fs::read_link(e.path()).ok()?;
                    let target = target.to_str()?;
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
            let (eth, port, inode) = (cols.get(1)?, cols.get(2)?, cols.get(9)?);
            let inode: u64 = inode.parse().ok()?;
            if *eth == "12" && inodes.contains(&inode) {
                port.parse().ok()
            } else {
                None
            }
        })
        .collect()
}

/// How many times kube-apiserver's watch caches (re-)initialised
/// (`apiserver_watch_cache_initializations_total`, every resource): each ends every watch the
/// cache served, and a watch resumed from before its new list is answered 410 Gone.
fn watch_cache_initializations(cluster: &RealCluster) -> u64 {
    let Ok(request) = ::http::Request::get("/metrics").body(Vec::new()) else {
        return 0;
    };
    let text = cluster
        .block_on(cluster.client().request_text(request))
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("apiserver_watch_cache_initializations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// kube-proxy's error lines about conntrack (klog: an `E` severity prefix).
fn proxy_conntrack_errors(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.starts_with('E') && l.to_lowercase().contains("conntrack"))
        .map(str::to_string)
        .collect()
}

/// Installs (or removes) the drop of the agent's API path in the node namespace: TCP to the
/// `kubernetes` Service's ClusterIP, matched in `raw` OUTPUT, before kube-proxy's DNAT, so
/// kube-proxy's own connection (straight to kube-apiserver) is untouched.
fn agent_api_rule(run: &Run, install: bool) -> Result<()> {
    let ip = KUBERNETES_SERVICE_IP.to_string();
    let op = if install { "-I" } else { "-D" };
    let argv = [
        "iptables", "-w", "-t", "raw", op, "OUTPUT", "-p", "tcp", "-d", &ip, "--dport", "443",
        "-j", "DROP",
    ];
    run.cluster
        .topology()
        .node()
        .exec_checked(argv)
        .with_context(|| format!("iptables {op} the agent's API drop"))?;
    Ok(())
}

fn drive(run: &mut Run) -> Result<RealOutcome> {
    let scenario = run.scenario;
    let families = scenario.families();
    let mut service = UdpService::new("dns", "dns", SERVICE_PORT, TARGET_PORT).families(families);
    match scenario {
        RealScenario::NodePort => service = service.node_port(None),
        RealScenario::ExternalIp => service = service.external_ips(&[EXTERNAL_IP.parse()?]),
        _ => {}
    }
    run.cluster.create_service(&service)?;
    let mut pods = Vec::new();
    for _ in 0..BACKENDS {
        pods.push(run.add_ready_backend("dns", true)?);
    }
    wait_programmed(run, "dns", &pods)?;
    if scenario == RealScenario::ExternalIp {
        run.cluster
            .wait_proxy_rules("the ExternalIP", SETUP_TIMEOUT, |rules| {
                rules.contains(EXTERNAL_IP)
            })?;
    }
    // The ClusterIP-reuse scenario's next backends: pods of another app, selected by nothing
    // yet (not serving).
    let mut next_pods = Vec::new();
    if scenario == RealScenario::ServiceDeletedVipReused {
        for _ in 0..2 {
            next_pods.push(run.add_ready_backend("dns2", false)?);
        }
    }
    run.start_agent()?;
    let node_ns = run.cluster.topology().node().name().to_string();
    run.monitor = Some(Destroys::start(&node_ns)?);

    let (target, place, bystander_targets) = frontend(run, "dns")?;
    let main = run.start_client("client", place, target, CLIENT_PORT)?;
    let mut bystanders = Vec::new();
    for (i, t) in bystander_targets.into_iter().enumerate() {
        let i = i as u16;
        bystanders.push(run.start_client(
            &format!("bystander-{i}"),
            place,
            t,
            CLIENT_PORT + 1000 + i,
        )?);
    }
    let before = run.clients[main]
        .wait_steady(5, SETUP_TIMEOUT)
        .context("the main client before the change")?
        .backend;
    for &b in &bystanders {
        run.clients[b]
            .wait_steady(3, SETUP_TIMEOUT)
            .context("a bystander before the change")?;
    }
    let victim = before
        .rsplit_once(':')
        .map_or(before.clone(), |(pod, _)| pod.to_string());
    run.tl
        .record("client", format!("answered steadily by {before}"));

    let window = run.config.window;
    let mut t0 = unix_micros();
    let allowed: Box<dyn Fn(&Answer) -> bool> = match scenario {
        RealScenario::ScaleToZeroAndBack => {
            run.tl.record("harness", "scaling to zero");
            for pod in pods.clone() {
                run.delete_backend(&pod, PodDeletion::Immediate)?;
            }
            run.cluster
                .wait_ready_endpoints("dns", &[], SETUP_TIMEOUT)?;
            std::thread::sleep(SCALE_BACK_PAUSE);
            // Recovery counts from the new backend's start: nothing could answer before.
            t0 = unix_micros();
            run.tl.record("harness", "scaling back to one");
            let new = run.add_ready_backend("dns", true)?;
            Box::new(move |a: &Answer| a.pod() == new)
        }
        RealScenario::TargetPortChanged => {
            let old: Vec<SocketAddr> = pods.iter().flat_map(|p| run.backend_addrs(p)).collect();
            run.truth.remove(old);
            run.port = NEW_TARGET_PORT;
            let new: Vec<SocketAddr> = pods.iter().flat_map(|p| run.backend_addrs(p)).collect();
            run.truth.add(new);
            run.tl.record(
                "harness",
                format!("targetPort {TARGET_PORT} -> {NEW_TARGET_PORT}"),
            );
            run.cluster.set_target_port("dns", NEW_TARGET_PORT)?;
            Box::new(|a: &Answer| a.backend.ends_with(&format!(":{NEW_TARGET_PORT}")))
        }
        RealScenario::ServiceDeletedVipReused => {
            let ips = run.cluster.cluster_ips("dns")?;
            let old: Vec<SocketAddr> = pods.iter().flat_map(|p| run.backend_addrs(p)).collect();
            run.truth.remove(old);
            run.tl.record("harness", "deleting Service dns");
            run.cluster.delete_service("dns")?;
            let new: Vec<SocketAddr> = next_pods
                .iter()
                .flat_map(|p| run.backend_addrs(p))
                .collect();
            run.truth.add(new);
            run.tl
                .record("harness", format!("creating Service dns2 on {ips:?}"));
            run.cluster.create_service(
                &UdpService::new("dns2", "dns2", SERVICE_PORT, TARGET_PORT)
                    .families(families)
                    .cluster_ips(&ips),
            )?;
            Box::new(|a: &Answer| a.pod().starts_with("dns2-"))
        }
        RealScenario::NotReady => {
            let a = run.backend_addrs(&victim);
            run.truth.remove(a);
            run.tl.record("harness", format!("{victim} not ready"));
            run.cluster.set_pod_ready(&victim, false)?;
            let v = victim.clone();
            Box::new(move |a: &Answer| a.pod() != v)
        }
        RealScenario::Terminating => {
            // Still serving while Terminating: its flow must stay.
            run.tl
                .record("harness", format!("deleting {victim} (stays Terminating)"));
            run.cluster.delete_pod(&victim, PodDeletion::Graceful)?;
            std::thread::sleep(TERMINATING_HOLD);
            let kept = run.clients[main]
                .last_answer()
                .is_some_and(|a| a.pod() == victim && a.t_us > t0);
            run.notes.push(format!(
                "flow kept by its Terminating, serving backend for {TERMINATING_HOLD:?}: {kept}"
            ));
            t0 = unix_micros();
            let a = run.backend_addrs(&victim);
            run.truth.remove(a);
            run.tl
                .record("harness", format!("{victim} not ready (not serving)"));
            run.cluster.set_pod_ready(&victim, false)?;
            let v = victim.clone();
            Box::new(move |a: &Answer| a.pod() != v)
        }
        RealScenario::AgentRestarted => {
            run.snapshot_agent_ports();
            if let Some(agent) = run.agent.as_mut() {
                run.tl.record("harness", "stopping the agent");
                agent.component().stop(Duration::from_secs(5));
            }
            t0 = unix_micros();
            run.delete_backend(&victim, PodDeletion::Immediate)?;
            if let Some(agent) = run.agent.as_mut() {
                std::thread::sleep(AGENT_DOWN);
                run.tl.record("harness", "starting the agent again");
                agent.component().restart(Duration::ZERO)?;
                let took = agent.wait_ready(Duration::from_secs(60))?;
                run.tl
                    .record("agent", format!("ready again after {took:?}"));
            }
            run.snapshot_agent_ports();
            let v = victim.clone();
            Box::new(move |a: &Answer| a.pod() != v)
        }
        RealScenario::ApiserverRestarted => {
            let a = run.backend_addrs(&victim);
            run.truth.remove(a);
            run.tl.record(
                "harness",
                format!("deleting {victim} and killing kube-apiserver"),
            );
            let api: Api<Pod> = Api::namespaced(run.cluster.client(), NAMESPACE);
            run.cluster.block_on(api.delete(
                &victim,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            ))?;
            run.cluster.apiserver().kill();
            run.cluster.remove_backend_network(&victim)?;
            let took = run.cluster.restart_apiserver(APISERVER_DOWN)?;
            run.tl.record(
                "harness",
                format!("kube-apiserver ready again after {took:?}"),
            );
            let v = victim.clone();
            Box::new(move |a: &Answer| a.pod() != v)
        }
        RealScenario::EtcdCompacted => {
            // A real 410 Gone: etcd's revision moves past every watch's resourceVersion
            // (objects nobody watches) and is compacted there; then etcd restarts. kube-apiserver's
            // watch caches resume their etcd watches from a compacted revision, fail, end every
            // client watch and re-list; a client watch resumed from its old resourceVersion is
            // answered 410 Gone (too old). The backend's pod dies while etcd is down; its Pod
            // object goes once the API answers again.
            let inits_before = watch_cache_initializations(&run.cluster);
            let api: Api<ConfigMap> = Api::namespaced(run.cluster.client(), NAMESPACE);
            for i in 0..5 {
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("churn-{i}")},
                    "data": {"i": i.to_string()},
                }))?;
                run.cluster
                    .block_on(api.create(&PostParams::default(), &cm))?;
            }
            let revision = run.cluster.compact_etcd()?;
            run.tl
                .record("harness", format!("etcd compacted at revision {revision}"));
            run.cluster.etcd().kill();
            t0 = unix_micros();
            run.delete_backend_while_frozen(&victim)?;
            std::thread::sleep(Duration::from_millis(300));
            let cp = run.cluster.cp_netns().path();
            let etcd: SocketAddr = ETCD_ADDR.parse()?;
            let etcd_component = run.cluster.etcd();
            etcd_component.restart(Duration::ZERO)?;
            etcd_component.wait_until("healthy again", SETUP_TIMEOUT, || {
                let (status, body) = crate::real::http::get(&cp, etcd, "/health")?;
                Ok(status == 200 && body.contains("true"))
            })?;
            run.tl.record("harness", "etcd restarted");
            let pods: Api<Pod> = Api::namespaced(run.cluster.client(), NAMESPACE);
            let deadline = std::time::Instant::now() + SETUP_TIMEOUT;
            loop {
                let deleted = run.cluster.block_on(pods.delete(
                    &victim,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                ));
                match deleted {
                    Ok(_) => break,
                    Err(e) if std::time::Instant::now() > deadline => {
                        bail!("deleting Pod {victim} after etcd's restart: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            run.tl.record("harness", format!("Pod {victim} deleted"));
            let v = victim.clone();
            let allowed = Box::new(move |a: &Answer| a.pod() != v);
            run.notes.push(format!("cache-inits-before={inits_before}"));
            allowed
        }
        RealScenario::AgentApiBlackholed => {
            agent_api_rule(run, true)?;
            run.tl
                .record("harness", "agent's API path (10.96.0.1:443) blackholed");
            std::thread::sleep(Duration::from_millis(500));
            // kube-proxy leads: new endpoints and a new Service the agent cannot see.
            let mut added = Vec::new();
            for _ in 0..BACKENDS {
                added.push(run.add_ready_backend("dns", true)?);
            }
            let mut all = pods.clone();
            all.extend(added.iter().cloned());
            wait_programmed(run, "dns", &all)?;
            run.cluster.create_service(&UdpService::new(
                "fresh",
                "fresh",
                SERVICE_PORT,
                TARGET_PORT,
            ))?;
            let fresh = vec![run.add_ready_backend("fresh", true)?];
            wait_programmed(run, "fresh", &fresh)?;
            let fresh_ip = run.cluster.cluster_ips("fresh")?[0];
            run.tl.record(
                "harness",
                "kube-proxy programmed 3 new endpoints and Service fresh",
            );
            for i in 0..BLIND_CLIENTS {
                let t = if i % 3 == 2 {
                    SocketAddr::new(fresh_ip, SERVICE_PORT)
                } else {
                    target
                };
                let c =
                    run.start_client(&format!("blind-{i}"), Place::Pod, t, CLIENT_PORT + 2000 + i)?;
                bystanders.push(c);
            }
            let mut on_new = 0;
            for &c in &bystanders[BYSTANDERS as usize..] {
                let a = run.clients[c].wait_steady(3, SETUP_TIMEOUT)?;
                if added.contains(&a.pod().to_string()) || a.pod().starts_with("fresh-") {
                    on_new += 1;
                }
            }
            run.notes.push(format!(
                "{on_new} of {BLIND_CLIENTS} new clients on endpoints the agent never saw"
            ));
            t0 = unix_micros();
            run.delete_backend(&victim, PodDeletion::Immediate)?;
            std::thread::sleep(BLACKHOLE_AFTER_CHANGE);
            agent_api_rule(run, false)?;
            run.tl.record("harness", "agent's API path healed");
            let v = victim.clone();
            Box::new(move |a: &Answer| a.pod() != v)
        }
        RealScenario::BackendDeleted
        | RealScenario::NodePort
        | RealScenario::ExternalIp
        | RealScenario::Ipv6
        | RealScenario::DualStack
        | RealScenario::HostNetworkClient => {
            run.delete_backend(&victim, PodDeletion::Immediate)?;
            let v = victim.clone();
            Box::new(move |a: &Answer| a.pod() != v)
        }
    };

    let first = first_allowed_answer(&run.clients[main], t0, window, &allowed);
    if let Some(a) = &first {
        run.tl
            .record_at(a.t_us, "client", format!("first answer from {}", a.backend));
    }
    // Late, wrong deletions (the agent's next passes, kube-proxy's next syncs) show up here.
    std::thread::sleep(SETTLE);
    // Every bystander still answered by a backend that serves (or moved off a stale one).
    let monitor = run.monitor.as_ref().context("no monitor")?;
    let destroys = monitor.events();
    run.snapshot_agent_ports();
    let events: Vec<(u64, FlowEntry)> = destroys.iter().map(|d| (d.t, d.flow.clone())).collect();
    let false_destroys: Vec<&Destroy> = destroys
        .iter()
        .filter(|d| run.truth.serving_at(d.t).contains(&d.flow.reply_src))
        .collect();
    let false_deletions: Vec<FlowEntry> = false_destroys.iter().map(|d| d.flow.clone()).collect();
    let false_deletions_by_agent: Vec<FlowEntry> = false_destroys
        .iter()
        .filter(|d| d.portid.is_none_or(|p| run.agent_ports.contains(&p)))
        .map(|d| d.flow.clone())
        .collect();
    for flow in &false_deletions {
        run.tl.record(
            "harness",
            format!(
                "FALSE DELETION of {} -> {} via {}",
                flow.orig_src, flow.orig_dst, flow.reply_src
            ),
        );
    }
    for d in &destroys {
        let by = match d.portid {
            Some(p) if run.agent_ports.contains(&p) => "the agent".to_string(),
            Some(p) => format!("portid {p}"),
            None => "the kernel".to_string(),
        };
        run.tl.record_at(
            d.t,
            "conntrack",
            format!(
                "destroyed {} -> {} via {} (by {by})",
                d.flow.orig_src, d.flow.orig_dst, d.flow.reply_src
            ),
        );
    }
    // The main client's answers around the change: each switch of backend, and silences.
    let mut last: Option<Answer> = None;
    for a in run.clients[main].answers() {
        if a.t_us + 1_000_000 < t0 {
            continue;
        }
        let switched = last.as_ref().is_none_or(|l| l.backend != a.backend);
        let gap = last.as_ref().is_some_and(|l| a.t_us > l.t_us + 200_000);
        if switched || gap {
            run.tl
                .record_at(a.t_us, "client", format!("answered by {}", a.backend));
        }
        last = Some(a);
    }
    let agent_log = run.agent.as_ref().map(RealAgent::log).unwrap_or_default();
    let (agent_deleted, agent_already_gone, agent_failed) = agent_pass_totals(&agent_log);
    for (t, text) in agent_passes(&agent_log) {
        run.tl.record_at(t, "agent", text);
    }
    let proxy_log = run
        .cluster
        .kube_proxy()
        .map(|p| p.log_text())
        .unwrap_or_default();
    let proxy_errors = proxy_conntrack_errors(&proxy_log);
    let mut notes = std::mem::take(&mut run.notes);
    if scenario == RealScenario::EtcdCompacted {
        let before: u64 = notes
            .iter()
            .find_map(|n| n.strip_prefix("cache-inits-before=")?.parse().ok())
            .unwrap_or(0);
        notes.retain(|n| !n.starts_with("cache-inits-before="));
        let after = watch_cache_initializations(&run.cluster);
        notes.push(format!(
            "kube-apiserver's watch caches re-initialised {} times after the compaction",
            after.saturating_sub(before)
        ));
    }
    if scenario == RealScenario::AgentApiBlackholed && run.agent.is_some() {
        let warns = agent_log
            .lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .count();
        notes.push(format!("agent warnings/errors while blind: {warns}"));
    }
    if let Some(agent) = run.agent.as_mut() {
        agent.component().stop(Duration::from_secs(5));
    }
    let flavour = run.config.flavour;
    let outcome = RealOutcome {
        scenario,
        flavour,
        with_agent: run.config.agent.is_some(),
        window,
        recovery: first
            .as_ref()
            .map(|a| Duration::from_micros(a.t_us.saturating_sub(t0))),
        before,
        after: first.map(|a| a.backend),
        false_deletions,
        false_deletions_by_agent,
        destroyed: events.len(),
        agent_deleted,
        agent_already_gone,
        agent_failed,
        proxy_conntrack_errors: proxy_errors,
        timeline: run.tl.render(t0),
        notes,
        logs: run.cluster.logs_dir().to_path_buf(),
    };
    // Kept with the components' logs, for reading a run afterwards.
    let _ = std::fs::write(outcome.logs.join("outcome.txt"), outcome.report());
    Ok(outcome)
}

/// Whether kube-proxy's own cleanup is expected to recover flows without the agent (every
/// flavour but the lost cleanup): their blackholes are recorded, never asserted.
pub fn proxy_cleans_up(flavour: ProxyFlavour) -> bool {
    flavour.conntrack_tool || flavour.version != ProxyVersion::V1_31
}

/// Checks the invariants every run must keep: no false deletion, no failed agent deletion,
/// no conntrack error from a kube-proxy whose cleanup works.
pub fn check_invariants(outcome: &RealOutcome) -> Result<()> {
    if !outcome.false_deletions_by_agent.is_empty() {
        bail!("false deletions by the agent:\n{}", outcome.report());
    }
    // kube-proxy v1.31's own cleanup (the `conntrack` tool) deletes healthy IPv6 flows (seen
    // in real runs: recorded, not the agent's); any other deleter of a healthy flow fails.
    let tool_cleanup =
        outcome.flavour.version == ProxyVersion::V1_31 && outcome.flavour.conntrack_tool;
    if !outcome.false_deletions.is_empty() && !tool_cleanup {
        bail!("false deletions:\n{}", outcome.report());
    }
    if outcome.agent_failed > 0 {
        bail!("the agent's deletions failed:\n{}", outcome.report());
    }
    if outcome.flavour.version == ProxyVersion::V1_34 && !outcome.proxy_conntrack_errors.is_empty()
    {
        bail!(
            "kube-proxy v1.34 logged conntrack errors beside the agent: {:?}\n{}",
            outcome.proxy_conntrack_errors,
            outcome.report()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let names: BTreeSet<&str> = RealScenario::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), RealScenario::ALL.len());
        for s in RealScenario::ALL {
            assert_eq!(RealScenario::from_name(s.name()), Some(s));
        }
    }

    #[test]
    fn truth_answers_as_of_a_time() {
        let mut truth = Truth::default();
        let a: SocketAddr = "10.244.0.2:5353".parse().unwrap();
        truth.add([a]);
        let t = unix_micros();
        std::thread::sleep(Duration::from_millis(2));
        truth.remove([a]);
        assert!(truth.serving_at(t).contains(&a));
        assert!(!truth.serving_at(unix_micros()).contains(&a));
        assert!(truth.serving_at(0).is_empty());
    }

    #[test]
    fn pass_totals_and_proxy_errors_are_read_from_logs() {
        let log = r#"{"message":"pass","deleted":2,"already_gone":1,"failed":0}
{"message":"pass","deleted":1,"already_gone":0,"failed":0}
{"timestamp":"2026-11-30T11:54:43.119484Z","message":"deleted stale new flow","flow":"a","backend":"b"}
not json"#;
        assert_eq!(agent_pass_totals(log), (4, 1, 0));
        let passes = agent_passes(log);
        assert_eq!(passes.len(), 1, "{passes:?}");
        assert!(passes[0].1.starts_with("event path"), "{passes:?}");
        let proxy = "I1130 fine\nE1130 cleanup.go:99] \"Failed to delete endpoint connections\" err=\"conntrack\"\nE1130 other";
        assert_eq!(proxy_conntrack_errors(proxy).len(), 1);
    }
}
