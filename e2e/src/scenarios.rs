//! The measured scenarios, shared by the integration tests and the demo.
//!
//! Each builds a fresh lab, gets a steady fixed-source-port client (plus bystander clients whose
//! flows must survive) answered by a service, makes one change at `t0`, and measures the *time to
//! recovery* (from `t0` to the main client's first answer from an allowed backend) and the *false
//! deletions* (destroyed flows whose backend was serving at that moment). Run without the agent,
//! the same steps show the blackhole that stays for the observation window.

use crate::conntrack::FlowEntry;
use crate::lab::{ClientPlace, Lab, LabConfig};
use crate::objects::{PortDef, ServiceDef};
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
/// The main client's fixed source port.
pub const CLIENT_PORT: u16 = 40053;
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
}

impl Scenario {
    /// Every scenario, headline first.
    pub const ALL: [Scenario; 14] = [
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
}

impl Outcome {
    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{} ({}): recovery {}, false deletions {}, before {}, after {}",
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
    let rules_lag = scenario.rules_lag(config.rules_lag);
    let lab = Lab::new(LabConfig {
        prefix: scenario.name().chars().take(6).collect(),
        rules_lag,
        binaries: config.binaries.clone(),
    })?;
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
        lab.start_agent(agent, &["--resync-interval".into(), "60s".into()])?;
    }
    let monitor = lab.destroy_monitor()?;

    let client = match early_client {
        Some(client) => client,
        None => lab.start_client("client", place, target, CLIENT_PORT)?,
    };
    let mut bystanders: Vec<Client> = Vec::new();
    if scenario != Scenario::NoEndpointsThenOne {
        for i in 0..BYSTANDERS {
            bystanders.push(lab.start_client(
                &format!("bystander-{i}"),
                place,
                target,
                CLIENT_PORT + 1000 + i,
            )?);
        }
    }

    // Before the change: the main client is steadily answered by one backend (or, without
    // endpoints, by nobody: its flow is the not-DNATed one).
    let before = if scenario == Scenario::NoEndpointsThenOne {
        std::thread::sleep(Duration::from_millis(500));
        "nobody (no endpoints)".to_string()
    } else {
        client
            .wait_steady(5, Duration::from_secs(10))
            .with_context(|| {
                format!(
                    "timeline:\n{}\n{}",
                    tl.render(unix_micros()),
                    lab.diagnostics()
                )
            })?
            .backend
    };
    for b in &bystanders {
        b.wait_steady(3, Duration::from_secs(10))?;
    }
    if scenario == Scenario::AgentRestarted
        && let Some(agent) = &config.agent
    {
        tl.record("lab", "restarting the agent");
        lab.stop_agent();
        lab.start_agent(agent, &["--resync-interval".into(), "60s".into()])?;
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
            std::thread::sleep(rules_lag + Duration::from_millis(500));
            lab.add_backend("dns", "dns-new", &ports)?;
        }
        Scenario::ServiceDeletedVipReused => {
            lab.delete_service("dns")?;
            std::thread::sleep(Duration::from_millis(500));
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

    let deadline = t0 + config.window.as_micros() as u64;
    let first = loop {
        if let Some(answer) = client.first_answer_after(t0, &allowed) {
            break Some(answer);
        }
        if unix_micros() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(a) = &first {
        tl.record_at(a.t_us, "client", format!("first answer from {}", a.backend));
    }
    // The agent's passes after kube-proxy's rewrite count too: wait for the rules, then let a
    // late, wrong deletion show up before judging.
    lab.wait_rules_synced()?;
    std::thread::sleep(Duration::from_millis(300));
    let false_deletions = lab.false_deletions(&monitor);
    for flow in &false_deletions {
        tl.record(
            "lab",
            format!(
                "FALSE DELETION of {} -> {} via {}",
                flow.orig_src, flow.orig_dst, flow.reply_src
            ),
        );
    }
    let client_flows_at_end: Vec<FlowEntry> = lab
        .conntrack()
        .context("listing the node's conntrack table")?
        .into_iter()
        .filter(|f| f.orig_src.port() == CLIENT_PORT)
        .collect();
    Ok(Outcome {
        scenario,
        with_agent: config.agent.is_some(),
        rules_lag,
        window: config.window,
        recovery: first
            .as_ref()
            .map(|a| Duration::from_micros(a.t_us.saturating_sub(t0))),
        before,
        after: first.map(|a| a.backend),
        false_deletions,
        client_flows_at_end,
        timeline: tl.render(t0),
        agent_log: lab.agent_log(),
    })
}
