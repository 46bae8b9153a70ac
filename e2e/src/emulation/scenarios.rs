//! The measured scenarios, shared by the integration tests and the demo.
//!
//! Each builds a fresh lab, gets a steady fixed-source-port client (plus bystander clients whose
//! flows must survive) answered by a service, makes one change at `t0`, and measures the *time to
//! recovery* (from `t0` to the main client's first answer from an allowed backend) and the *false
//! deletions* (destroyed flows whose backend was serving at that moment). Run without the agent,
//! the same steps show the blackhole that stays for the observation window.
//!
//! [`lags`] holds the scenarios where the agent's knowledge lags kube-proxy's (kube-proxy leads a
//! faulted watch) or where it reads ordinary inputs differently: they measure false deletions
//! only.

mod churn;
mod host_port;
pub mod lags;

use crate::conntrack::{DestroyMonitor, FlowEntry};
use crate::emulation::lab::{ClientPlace, Lab, LabConfig};
use crate::emulation::objects::{PortDef, ServiceDef};
use crate::process::Binaries;
use crate::timeline::unix_micros;
use crate::topology::NODE_IPV4;
use crate::workload::{Answer, Client};
use anyhow::{Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The service port clients use.
pub const SERVICE_PORT: u16 = 53;
/// The backends' port.
pub const TARGET_PORT: u16 = 5353;
/// The other port backends listen on (for the target-port change).
pub const NEW_TARGET_PORT: u16 = 5354;
/// The NodePort.
pub const NODE_PORT: u16 = 30053;
/// The hostPort of the host-port scenario's pod.
pub const HOST_PORT: u16 = 8053;
/// The main client's fixed source port.
pub const CLIENT_PORT: u16 = 40053;
/// Scale to zero: the pause after the rules lag before the new backend comes.
const SCALE_BACK_PAUSE: Duration = Duration::from_millis(500);
/// VIP reuse: the pause between the service's deletion and the new service's creation.
const VIP_REUSE_PAUSE: Duration = Duration::from_millis(500);
/// How many bystander clients watch for false deletions.
pub const BYSTANDERS: u16 = 3;

/// Every scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The headline: a pod client, 3-backend UDP ClusterIP service, one backend pod deleted.
    BackendDeleted,
    /// Same through a NodePort, from the external host.
    NodePort,
    /// Same through an ExternalIP, from the external host.
    ExternalIp,
    /// Same with a hostNetwork client (a process in the node namespace).
    HostNetworkClient,
    /// Same over IPv6.
    Ipv6,
    /// Same on a dual-stack service, the client on IPv6.
    DualStack,
    /// Every backend deleted, then one new backend.
    ScaleToZeroAndBack,
    /// Service deleted (its pods keep running); a new service reuses the VIP.
    ServiceDeletedVipReused,
    /// The service's targetPort changes; backends listen on both ports.
    TargetPortChanged,
    /// The client's flow was created while the service had no endpoints; then one appears.
    NoEndpointsThenOne,
    /// The client's backend becomes not-serving (terminating) but keeps running.
    NotServing,
    /// The API double drops every watch at the moment the backend is deleted.
    WatchDroppedDuringChange,
    /// kube-proxy's rules lag 3 s behind the API: the agent sees the change first.
    Race,
    /// The agent is restarted while flows are healthy (none may be touched), then a backend
    /// is deleted.
    AgentRestarted,
    /// A pod with a UDP hostPort (CNI portmap DNAT on the node) is replaced by a new pod with a
    /// new IP; the client is on the external host.
    HostPortReplaced,
    /// 200 services with endpoint churn over 100,000 unrelated and healthy background entries;
    /// the headline's backend is deleted mid-churn. No background entry may be deleted.
    ChurnAtScale,
}

impl Scenario {
    /// Every scenario, headline first.
    pub const ALL: [Scenario; 16] = [
        Scenario::BackendDeleted,
        Scenario::NodePort,
        Scenario::ExternalIp,
        Scenario::HostNetworkClient,
        Scenario::Ipv6,
        Scenario::DualStack,
        Scenario::ScaleToZeroAndBack,
        Scenario::ServiceDeletedVipReused,
        Scenario::TargetPortChanged,
        Scenario::NoEndpointsThenOne,
        Scenario::NotServing,
        Scenario::WatchDroppedDuringChange,
        Scenario::Race,
        Scenario::AgentRestarted,
        Scenario::HostPortReplaced,
        Scenario::ChurnAtScale,
    ];

    /// A short name (namespace prefixes, test names).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::BackendDeleted => "backend-deleted",
            Scenario::NodePort => "nodeport",
            Scenario::ExternalIp => "external-ip",
            Scenario::HostNetworkClient => "hostnetwork",
            Scenario::Ipv6 => "ipv6",
            Scenario::DualStack => "dual-stack",
            Scenario::ScaleToZeroAndBack => "scale-zero",
            Scenario::ServiceDeletedVipReused => "vip-reused",
            Scenario::TargetPortChanged => "target-port",
            Scenario::NoEndpointsThenOne => "no-endpoints",
            Scenario::NotServing => "not-serving",
            Scenario::WatchDroppedDuringChange => "watch-drop",
            Scenario::Race => "race",
            Scenario::AgentRestarted => "agent-restart",
            Scenario::HostPortReplaced => "host-port",
            Scenario::ChurnAtScale => "churn-100k",
        }
    }

    /// How long after the change's start (`t0`) the scenario makes its last step: recovery
    /// cannot come before that step plus the rules lag (the new backend appears only then).
    pub fn change_spread(self, rules_lag: Duration) -> Duration {
        match self {
            Scenario::ScaleToZeroAndBack => rules_lag + SCALE_BACK_PAUSE,
            Scenario::ServiceDeletedVipReused => VIP_REUSE_PAUSE,
            _ => Duration::ZERO,
        }
    }

    fn rules_lag(self, default: Duration) -> Duration {
        if self == Scenario::Race {
            Duration::from_secs(3)
        } else {
            default
        }
    }
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The lab's binaries.
    pub binaries: Binaries,
    /// The agent binary; None runs the scenario without the reconciler.
    pub agent: Option<PathBuf>,
    /// kube-proxy's rules lag (the race scenario uses 3 s regardless).
    pub rules_lag: Duration,
    /// How long after the change to wait for recovery.
    pub window: Duration,
}

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Which scenario.
    pub scenario: Scenario,
    /// Whether the agent ran.
    pub with_agent: bool,
    /// The rules lag used.
    pub rules_lag: Duration,
    /// The observation window.
    pub window: Duration,
    /// Time from the change to the first allowed answer; None if none came within the window.
    pub recovery: Option<Duration>,
    /// The backend answering the main client before the change.
    pub before: String,
    /// The first allowed answer after the change.
    pub after: Option<String>,
    /// Flows destroyed while their backend was serving.
    pub false_deletions: Vec<FlowEntry>,
    /// The main client's flow(s) in the node's table at the end.
    pub client_flows_at_end: Vec<FlowEntry>,
    /// The timeline, times relative to the change.
    pub timeline: String,
    /// The agent's log (empty without the agent).
    pub agent_log: String,
    /// Scenario-specific facts (e.g. the background table's size), one per line.
    pub notes: Vec<String>,
    /// Background entries (scale scenario) missing from the table at the end: must be 0.
    pub background_missing: u64,
}

impl Outcome {
    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{} ({}): recovery {}, false deletions {}, before {}, after {}{}",
            self.scenario.name(),
            if self.with_agent {
                "with reconciler"
            } else {
                "without reconciler"
            },
            match self.recovery {
                Some(d) => format!("{} ms", d.as_millis()),
                None => format!("none within {} s", self.window.as_secs_f64()),
            },
            self.false_deletions.len(),
            self.before,
            self.after.as_deref().unwrap_or("-"),
            if self.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.notes.join("; "))
            },
        )
    }
}

fn ip(text: &str) -> IpAddr {
    // Only called with the literals below.
    text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// The frontend the clients of a scenario target, and where they run.
fn frontend(scenario: Scenario) -> (SocketAddr, ClientPlace) {
    match scenario {
        Scenario::NodePort => (
            SocketAddr::new(NODE_IPV4.into(), NODE_PORT),
            ClientPlace::External,
        ),
        Scenario::ExternalIp => (
            SocketAddr::new(ip("192.168.100.10"), SERVICE_PORT),
            ClientPlace::External,
        ),
        Scenario::HostNetworkClient => (
            SocketAddr::new(ip("10.96.0.10"), SERVICE_PORT),
            ClientPlace::HostNetwork,
        ),
        Scenario::Ipv6 | Scenario::DualStack => (
            SocketAddr::new(ip("fd00:10:96::a"), SERVICE_PORT),
            ClientPlace::Pod,
        ),
        _ => (
            SocketAddr::new(ip("10.96.0.10"), SERVICE_PORT),
            ClientPlace::Pod,
        ),
    }
}

fn service_def(scenario: Scenario) -> ServiceDef {
    let cluster_ips = match scenario {
        Scenario::Ipv6 => vec![ip("fd00:10:96::a")],
        Scenario::DualStack => vec![ip("10.96.0.10"), ip("fd00:10:96::a")],
        _ => vec![ip("10.96.0.10")],
    };
    let mut def = ServiceDef::udp("dns", &cluster_ips, SERVICE_PORT, TARGET_PORT);
    match scenario {
        Scenario::NodePort => def.ports[0].node_port = Some(NODE_PORT),
        Scenario::ExternalIp => def.external_ips = vec![ip("192.168.100.10")],
        _ => {}
    }
    def
}

/// Runs one scenario end to end; the lab is torn down before it returns.
pub fn run(scenario: Scenario, config: &RunConfig) -> Result<Outcome> {
    match scenario {
        Scenario::HostPortReplaced => host_port::run(config),
        Scenario::ChurnAtScale => churn::run(config),
        _ => run_service_change(scenario, config),
    }
}

/// The lab every scenario starts from.
fn new_lab(scenario: Scenario, config: &RunConfig) -> Result<Lab> {
    Lab::new(LabConfig {
        prefix: scenario.name().chars().take(6).collect(),
        rules_lag: scenario.rules_lag(config.rules_lag),
        binaries: config.binaries.clone(),
    })
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

/// Starts the bystanders: more fixed-port clients of the same frontend, whose flows go to live
/// backends — deleting any of them would be a false deletion.
fn start_bystanders(lab: &Lab, place: ClientPlace, target: SocketAddr) -> Result<Vec<Client>> {
    (0..BYSTANDERS)
        .map(|i| {
            lab.start_client(
                &format!("bystander-{i}"),
                place,
                target,
                CLIENT_PORT + 1000 + i,
            )
        })
        .collect()
}

/// Waits until every bystander is answered steadily.
fn wait_bystanders(bystanders: &[Client]) -> Result<()> {
    for b in bystanders {
        b.wait_steady(3, Duration::from_secs(10))?;
    }
    Ok(())
}

/// What a scenario observed up to its first allowed answer, to be judged by [`conclude`].
struct Observed {
    scenario: Scenario,
    t0: u64,
    before: String,
    first: Option<Answer>,
    /// Deletions the scenario itself knows to be wrong (besides flows to serving endpoints).
    also_false: Vec<FlowEntry>,
    notes: Vec<String>,
}

impl Observed {
    /// An observation with nothing beyond the common judgement.
    fn new(scenario: Scenario, t0: u64, before: String, first: Option<Answer>) -> Self {
        Observed {
            scenario,
            t0,
            before,
            first,
            also_false: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// Waits for the rules, lets late deletions show up, and judges the false deletions.
fn conclude(
    lab: &Lab,
    config: &RunConfig,
    monitor: &DestroyMonitor,
    observed: Observed,
) -> Result<Outcome> {
    let tl = lab.timeline();
    if let Some(a) = &observed.first {
        tl.record_at(a.t_us, "client", format!("first answer from {}", a.backend));
    }
    // The agent's passes after the rules' rewrite count too: wait for the rules, then let a
    // late, wrong deletion show up before judging.
    lab.wait_rules_synced()?;
    std::thread::sleep(Duration::from_millis(300));
    let mut false_deletions = lab.false_deletions(monitor);
    for flow in observed.also_false {
        if !false_deletions.contains(&flow) {
            false_deletions.push(flow);
        }
    }
    for flow in &false_deletions {
        tl.record(
            "lab",
            format!(
                "FALSE DELETION of {} -> {} via {}",
                flow.orig_src, flow.orig_dst, flow.reply_src
            ),
        );
    }
    let client_flows_at_end = lab
        .conntrack_from_port(CLIENT_PORT)
        .context("listing the node's conntrack table")?;
    let t0 = observed.t0;
    Ok(Outcome {
        scenario: observed.scenario,
        with_agent: config.agent.is_some(),
        rules_lag: observed.scenario.rules_lag(config.rules_lag),
        window: config.window,
        recovery: observed
            .first
            .as_ref()
            .map(|a| Duration::from_micros(a.t_us.saturating_sub(t0))),
        before: observed.before,
        after: observed.first.map(|a| a.backend),
        false_deletions,
        client_flows_at_end,
        timeline: tl.render(t0),
        agent_log: lab.agent_log(),
        notes: observed.notes,
        background_missing: 0,
    })
}

/// The agent's arguments in every scenario: no periodic resync inside the observation window,
/// so recoveries come from the event path.
fn agent_args() -> Vec<String> {
    vec!["--resync-interval".into(), "60s".into()]
}

/// Waits for a steady answer, with the timeline and the node's state on failure.
fn wait_steady(lab: &Lab, client: &Client) -> Result<Answer> {
    client
        .wait_steady(5, Duration::from_secs(10))
        .with_context(|| {
            format!(
                "timeline:\n{}\n{}",
                lab.timeline().render(unix_micros()),
                lab.diagnostics()
            )
        })
}

/// A change to a service's backends (or to the service), seen by pod, node or external clients.
fn run_service_change(scenario: Scenario, config: &RunConfig) -> Result<Outcome> {
    let rules_lag = scenario.rules_lag(config.rules_lag);
    let lab = new_lab(scenario, config)?;
    let (target, place) = frontend(scenario);
    let def = service_def(scenario);
    let backends = ["dns-a", "dns-b", "dns-c"];
    let ports = [TARGET_PORT, NEW_TARGET_PORT];
    let tl = lab.timeline().clone();

    // The no-endpoints case needs its flow to exist before the service's rules do.
    let early_client = if scenario == Scenario::NoEndpointsThenOne {
        let client = lab.start_client("client", place, target, CLIENT_PORT)?;
        std::thread::sleep(Duration::from_millis(200));
        lab.apply_service(def.clone())?;
        Some(client)
    } else {
        lab.apply_service(def.clone())?;
        for name in backends {
            lab.add_backend("dns", name, &ports)?;
        }
        None
    };
    lab.wait_rules_synced()?;
    if let Some(agent) = &config.agent {
        lab.start_agent(agent, &agent_args())?;
    }
    let monitor = lab.destroy_monitor()?;

    let client = match early_client {
        Some(client) => client,
        None => lab.start_client("client", place, target, CLIENT_PORT)?,
    };
    let bystanders = if scenario == Scenario::NoEndpointsThenOne {
        Vec::new()
    } else {
        start_bystanders(&lab, place, target)?
    };

    // Before the change: the main client is steadily answered by one backend (or, without
    // endpoints, by nobody: its flow is the not-DNATed one).
    let before = if scenario == Scenario::NoEndpointsThenOne {
        std::thread::sleep(Duration::from_millis(500));
        "nobody (no endpoints)".to_string()
    } else {
        wait_steady(&lab, &client)?.backend
    };
    wait_bystanders(&bystanders)?;
    if scenario == Scenario::AgentRestarted
        && let Some(agent) = &config.agent
    {
        tl.record("lab", "restarting the agent");
        lab.stop_agent();
        lab.start_agent(agent, &agent_args())?;
        // Its first pass over a healthy table must delete nothing.
        std::thread::sleep(Duration::from_millis(500));
        client.wait_steady(5, Duration::from_secs(10))?;
    }
    let before = if scenario == Scenario::AgentRestarted {
        client.last_answer().map_or(before, |a| a.backend)
    } else {
        before
    };
    let victim = before
        .rsplit_once(':')
        .map(|(pod, _)| pod.to_string())
        .unwrap_or_default();
    tl.record("client", format!("answered steadily by {before}"));

    let t0 = unix_micros();
    let allowed: Box<dyn Fn(&Answer) -> bool> = match scenario {
        Scenario::ScaleToZeroAndBack => Box::new(|a: &Answer| a.pod() == "dns-new"),
        Scenario::ServiceDeletedVipReused => Box::new(|a: &Answer| a.pod().starts_with("dns2-")),
        Scenario::TargetPortChanged => {
            Box::new(|a: &Answer| a.backend.ends_with(&format!(":{NEW_TARGET_PORT}")))
        }
        Scenario::NoEndpointsThenOne => Box::new(|_: &Answer| true),
        _ => {
            let victim = victim.clone();
            Box::new(move |a: &Answer| a.pod() != victim)
        }
    };
    match scenario {
        Scenario::ScaleToZeroAndBack => {
            for name in backends {
                lab.remove_backend("dns", name)?;
            }
            std::thread::sleep(rules_lag + SCALE_BACK_PAUSE);
            lab.add_backend("dns", "dns-new", &ports)?;
        }
        Scenario::ServiceDeletedVipReused => {
            lab.delete_service("dns")?;
            std::thread::sleep(VIP_REUSE_PAUSE);
            let mut reused = def.clone();
            reused.name = "dns2".into();
            lab.apply_service(reused)?;
            for name in ["dns2-a", "dns2-b"] {
                lab.add_backend("dns2", name, &ports)?;
            }
        }
        Scenario::TargetPortChanged => {
            let mut changed = def.clone();
            changed.ports = vec![PortDef {
                target_port: NEW_TARGET_PORT,
                ..def.ports[0].clone()
            }];
            lab.apply_service(changed)?;
            tl.record(
                "lab",
                format!("targetPort {TARGET_PORT} -> {NEW_TARGET_PORT}"),
            );
        }
        Scenario::NoEndpointsThenOne => {
            lab.add_backend("dns", "dns-a", &ports)?;
            tl.record("lab", "first endpoint dns-a added");
        }
        Scenario::NotServing => {
            lab.set_backend_conditions("dns", &victim, false, false, true)?;
        }
        Scenario::WatchDroppedDuringChange => {
            lab.api().drop_watches();
            lab.remove_backend("dns", &victim)?;
            tl.record("lab", "every watch dropped with the change");
        }
        _ => lab.remove_backend("dns", &victim)?,
    }

    let first = first_allowed_answer(&client, t0, config.window, &allowed);
    conclude(
        &lab,
        config,
        &monitor,
        Observed::new(scenario, t0, before, first),
    )
}
