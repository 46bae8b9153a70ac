//! Scenarios where the agent's knowledge lags the truth, or where it reads ordinary inputs
//! differently from kube-proxy: every flow in them goes to a live, serving backend (or to a live
//! outside server), so every deletion is a false deletion. They measure only that.
//!
//! kube-proxy *leads* the agent in the first ones: the emulation follows the API double's store
//! directly (see [`crate::emulation::proxy_sync`]) while the agent's EndpointSlice watch is faulted
//! ([`crate::apiserver::ApiServer::inject`]), so new clients are DNATed to endpoints the agent
//! has not seen.

use super::{
    BYSTANDERS, CLIENT_PORT, RunConfig, SERVICE_PORT, TARGET_PORT, agent_args, start_bystanders,
    wait_bystanders, wait_steady,
};
use crate::apiserver::Fault;
use crate::apiserver::kinds::Kind;
use crate::conntrack::{DestroyMonitor, FlowEntry};
use crate::emulation::lab::{ClientPlace, Lab, LabConfig};
use crate::emulation::objects::ServiceDef;
use crate::timeline::unix_micros;
use crate::topology::EXTERNAL_IPV6;
use crate::workload::{Client, start_echo};
use anyhow::{Context, Result, bail};
use ctnetlink::testing::KnobGuard;
use ctnetlink::{Conntrack, DumpFilter, Family, NewFlow, Status, Tuple, proto};
use k8s_openapi::api::core::v1::Service;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// kube-proxy's rules lag in these scenarios: short, so that it leads a faulted agent soon.
const LEAD_RULES_LAG: Duration = Duration::from_millis(100);
/// How long a fault is injected for at most (the scenarios heal it before).
const FAULT_LIMIT: Duration = Duration::from_secs(60);
/// After a fault is injected, before the change: the agent's watch meets the fault.
const FAULT_SETTLE: Duration = Duration::from_millis(500);
/// How long new clients talk while the agent's view lags.
const EXPOSURE: Duration = Duration::from_secs(3);
/// After the fault is healed: time for the agent to catch up (and for late deletions).
const CATCH_UP: Duration = Duration::from_secs(3);
/// New clients started after a scale-up (the more, the surer some land on a new backend).
const NEW_CLIENTS: u16 = 12;
/// The label handing a Service to another proxy.
const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Background entries of the long-pass scenario.
const LONG_PASS_ENTRIES: u32 = 200_000;
/// The agent's default debounce before a change pass.
const AGENT_DEBOUNCE: Duration = Duration::from_millis(100);

/// A scenario where a correct agent deletes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagScenario {
    /// Scale 3 → 6 while the agent's EndpointSlice watch is frozen (open, silent, no error);
    /// kube-proxy programs the new endpoints and new clients reach them.
    ScaleUpSliceWatchFrozen,
    /// The same while the agent's EndpointSlice watch is stalled (requests hang, events held).
    ScaleUpSliceWatchStalled,
    /// The same while every EndpointSlice request answers HTTP 500.
    ScaleUpSliceWatchFailing,
    /// The same while every EndpointSlice request answers HTTP 403.
    ScaleUpSliceWatchForbidden,
    /// The same while every EndpointSlice watch answers 410 Gone (the agent relists, with
    /// backoff, over and over).
    ScaleUpSliceWatchGone,
    /// A new Service (with two backends) while the EndpointSlice watch is stalled: the agent
    /// sees the Service but not its slice.
    NewServiceSliceWatchStalled,
    /// A Service is relabelled with `service.kubernetes.io/service-proxy-name` (handed to
    /// another proxy): the agent's watch says DELETED, but the Service and its flows live on.
    RelabelledToOtherProxy,
    /// A `publishNotReadyAddresses` Service whose pods are `ready=true, serving=false`:
    /// kube-proxy routes to them.
    PublishNotReadyAddresses,
    /// An IPv4-only Service with an IPv6 externalIP that is a real outside server's address:
    /// kube-proxy ignores it; a node client's un-DNATed flow to that server must survive.
    WrongFamilyExternalIp,
    /// A backend flips to not serving and back while a pass over 200,000 background entries
    /// runs: its flows must survive the flip back.
    FlippedToServingDuringLongPass,
}

impl LagScenario {
    /// Every scenario.
    pub const ALL: [LagScenario; 10] = [
        LagScenario::ScaleUpSliceWatchFrozen,
        LagScenario::ScaleUpSliceWatchStalled,
        LagScenario::ScaleUpSliceWatchFailing,
        LagScenario::ScaleUpSliceWatchForbidden,
        LagScenario::ScaleUpSliceWatchGone,
        LagScenario::NewServiceSliceWatchStalled,
        LagScenario::RelabelledToOtherProxy,
        LagScenario::PublishNotReadyAddresses,
        LagScenario::WrongFamilyExternalIp,
        LagScenario::FlippedToServingDuringLongPass,
    ];

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            LagScenario::ScaleUpSliceWatchFrozen => "scale-up-frozen",
            LagScenario::ScaleUpSliceWatchStalled => "scale-up-stalled",
            LagScenario::ScaleUpSliceWatchFailing => "scale-up-500",
            LagScenario::ScaleUpSliceWatchForbidden => "scale-up-403",
            LagScenario::ScaleUpSliceWatchGone => "scale-up-410",
            LagScenario::NewServiceSliceWatchStalled => "new-service-stalled",
            LagScenario::RelabelledToOtherProxy => "relabelled",
            LagScenario::PublishNotReadyAddresses => "publish-not-ready",
            LagScenario::WrongFamilyExternalIp => "wrong-family-eip",
            LagScenario::FlippedToServingDuringLongPass => "flip-long-pass",
        }
    }

    /// The namespace prefix (short: it names network namespaces).
    fn prefix(self) -> &'static str {
        match self {
            LagScenario::ScaleUpSliceWatchFrozen => "lgfrz",
            LagScenario::ScaleUpSliceWatchStalled => "lgstl",
            LagScenario::ScaleUpSliceWatchFailing => "lg500",
            LagScenario::ScaleUpSliceWatchForbidden => "lg403",
            LagScenario::ScaleUpSliceWatchGone => "lg410",
            LagScenario::NewServiceSliceWatchStalled => "lgnsv",
            LagScenario::RelabelledToOtherProxy => "lgrlb",
            LagScenario::PublishNotReadyAddresses => "lgpnr",
            LagScenario::WrongFamilyExternalIp => "lgwfe",
            LagScenario::FlippedToServingDuringLongPass => "lgflp",
        }
    }
}

/// What a lag scenario measured.
#[derive(Debug, Clone)]
pub struct LagOutcome {
    /// Which scenario.
    pub scenario: LagScenario,
    /// Whether the agent ran.
    pub with_agent: bool,
    /// Flows the scenario put at risk (e.g. new clients answered by a backend the agent has not
    /// seen): 0 means it exercised nothing.
    pub at_risk: usize,
    /// Destroyed flows whose backend (or outside server) was live and serving: must be empty.
    pub false_deletions: Vec<FlowEntry>,
    /// Scenario-specific facts, one per line.
    pub notes: Vec<String>,
    /// The timeline, times relative to the change.
    pub timeline: String,
    /// The agent's log (empty without the agent).
    pub agent_log: String,
}

impl LagOutcome {
    /// A one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "{} ({}): {} flows at risk, false deletions {}{}",
            self.scenario.name(),
            if self.with_agent {
                "with reconciler"
            } else {
                "without reconciler"
            },
            self.at_risk,
            self.false_deletions.len(),
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

/// The service every scenario starts with: `dns`, 10.96.0.10:53 → 5353.
fn dns() -> ServiceDef {
    ServiceDef::udp("dns", &[ip("10.96.0.10")], SERVICE_PORT, TARGET_PORT)
}

/// Runs one scenario end to end; the lab is torn down before it returns.
pub fn run(scenario: LagScenario, config: &RunConfig) -> Result<LagOutcome> {
    let lab = Lab::new(LabConfig {
        prefix: scenario.prefix().into(),
        rules_lag: LEAD_RULES_LAG,
        binaries: config.binaries.clone(),
    })?;
    let run = Run {
        lab,
        config,
        scenario,
        notes: Vec::new(),
        also_false: Vec::new(),
        at_risk: 0,
        t0: 0,
    };
    match scenario {
        LagScenario::ScaleUpSliceWatchFrozen => run.scale_up(Fault::Freeze),
        LagScenario::ScaleUpSliceWatchStalled => run.scale_up(Fault::Stall),
        LagScenario::ScaleUpSliceWatchFailing => run.scale_up(Fault::InternalError),
        LagScenario::ScaleUpSliceWatchForbidden => run.scale_up(Fault::Forbidden),
        LagScenario::ScaleUpSliceWatchGone => run.scale_up(Fault::Gone),
        LagScenario::NewServiceSliceWatchStalled => run.new_service_stalled(),
        LagScenario::RelabelledToOtherProxy => run.relabelled(),
        LagScenario::PublishNotReadyAddresses => run.publish_not_ready(),
        LagScenario::WrongFamilyExternalIp => run.wrong_family_external_ip(),
        LagScenario::FlippedToServingDuringLongPass => run.flipped_during_long_pass(),
    }
}

struct Run<'a> {
    lab: Lab,
    config: &'a RunConfig,
    scenario: LagScenario,
    notes: Vec<String>,
    also_false: Vec<FlowEntry>,
    at_risk: usize,
    t0: u64,
}

impl Run<'_> {
    /// The `dns` service with three backends, the rules synced, the agent ready and the destroy
    /// monitor recording. Returns the backends' IPv4 addresses.
    fn base(&self, service: ServiceDef) -> Result<(Vec<IpAddr>, DestroyMonitor)> {
        self.lab.apply_service(service)?;
        let mut ips = Vec::new();
        for name in ["dns-a", "dns-b", "dns-c"] {
            ips.extend(self.lab.add_backend("dns", name, &[TARGET_PORT])?);
        }
        self.lab.wait_rules_synced()?;
        // The monitor comes first: the agent's first pass is judged too.
        let monitor = self.lab.destroy_monitor()?;
        if let Some(agent) = &self.config.agent {
            self.lab.start_agent(agent, &agent_args())?;
        }
        Ok((ips, monitor))
    }

    fn start_clients(
        &self,
        prefix: &str,
        place: ClientPlace,
        target: SocketAddr,
        count: u16,
        first_port: u16,
    ) -> Result<Vec<Client>> {
        (0..count)
            .map(|i| {
                self.lab
                    .start_client(&format!("{prefix}-{i}"), place, target, first_port + i)
            })
            .collect()
    }

    fn readiness_note(&mut self, when: &str) {
        if self.config.agent.is_none() {
            return;
        }
        let status = match self.lab.agent_get("/readyz") {
            Ok((status, _)) => status.to_string(),
            Err(err) => format!("error ({err:#})"),
        };
        self.notes.push(format!("agent /readyz {when}: {status}"));
    }

    /// Scale up while the agent's EndpointSlice watch suffers `fault`; kube-proxy leads.
    fn scale_up(mut self, fault: Fault) -> Result<LagOutcome> {
        let (_, monitor) = self.base(dns())?;
        let target = SocketAddr::new(ip("10.96.0.10"), SERVICE_PORT);
        let bystanders = start_bystanders(&self.lab, ClientPlace::Pod, target)?;
        wait_bystanders(&bystanders)?;
        let tl = self.lab.timeline().clone();

        self.t0 = unix_micros();
        self.lab
            .api()
            .inject(Kind::EndpointSlice, fault, FAULT_LIMIT);
        tl.record(
            "lab",
            format!("fault {fault:?} on the agent's EndpointSlice watch"),
        );
        std::thread::sleep(FAULT_SETTLE);
        let new_backends = ["dns-d", "dns-e", "dns-f"];
        for name in new_backends {
            self.lab.add_backend("dns", name, &[TARGET_PORT])?;
        }
        tl.record("lab", "scaled up 3 -> 6");
        self.lab.wait_rules_synced()?;
        let clients = self.start_clients(
            "new",
            ClientPlace::Pod,
            target,
            NEW_CLIENTS,
            CLIENT_PORT + 2000,
        )?;
        std::thread::sleep(EXPOSURE);
        // On a loaded machine the clients may start late: give each one time to be answered
        // (while the fault lasts), or the scenario would put nothing at risk by accident.
        let answered_by = Instant::now() + Duration::from_secs(10);
        while clients.iter().any(|c| c.answers().is_empty()) && Instant::now() < answered_by {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.readiness_note("during the fault");
        self.at_risk = clients
            .iter()
            .filter(|c| c.answers().iter().any(|a| new_backends.contains(&a.pod())))
            .count();
        self.notes.push(format!(
            "{} of {NEW_CLIENTS} new clients answered by a new backend",
            self.at_risk
        ));
        self.lab.api().heal(Kind::EndpointSlice);
        tl.record("lab", "fault healed");
        std::thread::sleep(CATCH_UP);
        self.finish(&monitor)
    }

    /// A new Service while the agent's EndpointSlice watch is stalled.
    fn new_service_stalled(mut self) -> Result<LagOutcome> {
        let (_, monitor) = self.base(dns())?;
        let tl = self.lab.timeline().clone();
        self.t0 = unix_micros();
        self.lab
            .api()
            .inject(Kind::EndpointSlice, Fault::Stall, FAULT_LIMIT);
        tl.record("lab", "the agent's EndpointSlice watch stalled");
        std::thread::sleep(FAULT_SETTLE);
        let web = ServiceDef::udp("web", &[ip("10.96.0.20")], SERVICE_PORT, TARGET_PORT);
        let target = SocketAddr::new(web.cluster_ips[0], SERVICE_PORT);
        self.lab.apply_service(web)?;
        for name in ["web-a", "web-b"] {
            self.lab.add_backend("web", name, &[TARGET_PORT])?;
        }
        tl.record("lab", "new service web with 2 backends");
        self.lab.wait_rules_synced()?;
        let clients = self.start_clients("web", ClientPlace::Pod, target, 4, CLIENT_PORT)?;
        std::thread::sleep(EXPOSURE);
        self.readiness_note("during the stall");
        self.at_risk = clients.iter().filter(|c| !c.answers().is_empty()).count();
        self.lab.api().heal(Kind::EndpointSlice);
        tl.record("lab", "stall healed");
        std::thread::sleep(CATCH_UP);
        self.finish(&monitor)
    }

    /// The Service gains the service-proxy-name label; its flows live on.
    fn relabelled(mut self) -> Result<LagOutcome> {
        let (_, monitor) = self.base(dns())?;
        let target = SocketAddr::new(ip("10.96.0.10"), SERVICE_PORT);
        let client = self
            .lab
            .start_client("client", ClientPlace::Pod, target, CLIENT_PORT)?;
        let bystanders = start_bystanders(&self.lab, ClientPlace::Pod, target)?;
        wait_steady(&self.lab, &client)?;
        wait_bystanders(&bystanders)?;
        self.at_risk = 1 + bystanders.len();
        let mut service = self
            .lab
            .api()
            .get::<Service>("default", "dns")
            .context("service dns")?;
        service
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(SERVICE_PROXY_NAME.into(), "other-proxy".into());
        self.t0 = unix_micros();
        self.lab.api().apply(&service)?;
        self.lab.timeline().record(
            "lab",
            format!("service dns labelled {SERVICE_PROXY_NAME}=other-proxy"),
        );
        std::thread::sleep(EXPOSURE + CATCH_UP);
        self.finish(&monitor)
    }

    /// A publishNotReadyAddresses Service whose endpoints are ready but not serving.
    fn publish_not_ready(mut self) -> Result<LagOutcome> {
        let (ips, monitor) = self.base(dns())?;
        let mut service = self
            .lab
            .api()
            .get::<Service>("default", "dns")
            .context("service dns")?;
        if let Some(spec) = service.spec.as_mut() {
            spec.publish_not_ready_addresses = Some(true);
        }
        self.lab.api().apply(&service)?;
        // The pods run on and kube-proxy routes to them: they are live backends.
        self.lab
            .also_serving(ips.iter().map(|ip| SocketAddr::new(*ip, TARGET_PORT)));
        self.t0 = unix_micros();
        for name in ["dns-a", "dns-b", "dns-c"] {
            self.lab
                .set_backend_conditions("dns", name, true, false, false)?;
        }
        self.lab.wait_rules_synced()?;
        let target = SocketAddr::new(ip("10.96.0.10"), SERVICE_PORT);
        let clients = self.start_clients(
            "client",
            ClientPlace::Pod,
            target,
            1 + BYSTANDERS,
            CLIENT_PORT,
        )?;
        std::thread::sleep(EXPOSURE);
        self.at_risk = clients.iter().filter(|c| !c.answers().is_empty()).count();
        std::thread::sleep(CATCH_UP);
        self.finish(&monitor)
    }

    /// An IPv6 externalIP on an IPv4-only Service; node clients talk to that outside address.
    fn wrong_family_external_ip(mut self) -> Result<LagOutcome> {
        let outside = SocketAddr::new(EXTERNAL_IPV6.into(), SERVICE_PORT);
        let mut service = dns();
        service.external_ips = vec![outside.ip()];
        let _server = start_echo(
            &self.config.binaries.echo,
            self.lab.topology().external().name(),
            "outside",
            &[SERVICE_PORT],
        )?;
        self.lab.also_serving([outside]);
        let (_, monitor) = self.base(service)?;
        self.t0 = unix_micros();
        let clients = self.start_clients(
            "client",
            ClientPlace::HostNetwork,
            outside,
            1 + BYSTANDERS,
            CLIENT_PORT,
        )?;
        std::thread::sleep(EXPOSURE);
        self.at_risk = clients.iter().filter(|c| !c.answers().is_empty()).count();
        std::thread::sleep(CATCH_UP);
        self.finish(&monitor)
    }

    /// A backend flips to not serving and back while a pass over a big table runs.
    fn flipped_during_long_pass(mut self) -> Result<LagOutcome> {
        let _max = KnobGuard::conntrack_max_at_least(u64::from(LONG_PASS_ENTRIES) * 2)
            .context("raising nf_conntrack_max")?;
        let fill = fill_background(&self.lab, LONG_PASS_ENTRIES)?;
        let (_, monitor) = self.base(dns())?;
        let target = SocketAddr::new(ip("10.96.0.10"), SERVICE_PORT);
        let client = self
            .lab
            .start_client("client", ClientPlace::Pod, target, CLIENT_PORT)?;
        // More flows on the victim, more chances that one is classified before the flip back
        // (a pass classifies flows in the table's hash order).
        let bystanders =
            self.start_clients("by", ClientPlace::Pod, target, 9, CLIENT_PORT + 1000)?;
        let before = wait_steady(&self.lab, &client)?.backend;
        wait_bystanders(&bystanders)?;
        let victim = before
            .rsplit_once(':')
            .map(|(pod, _)| pod.to_string())
            .unwrap_or_default();
        self.at_risk = 1 + bystanders
            .iter()
            .filter(|b| b.last_answer().is_some_and(|a| a.pod() == victim))
            .count();
        let dump = time_dump(&self.lab)?;
        self.notes.push(format!(
            "{LONG_PASS_ENTRIES} background entries (filled in {} ms), a full dump takes {} ms",
            fill.as_millis(),
            dump.as_millis()
        ));
        // Back to serving in the middle of the pass the change starts (after the debounce).
        let flip_back_after = AGENT_DEBOUNCE + dump / 2;
        self.t0 = unix_micros();
        self.lab
            .set_backend_conditions("dns", &victim, false, false, false)?;
        std::thread::sleep(flip_back_after);
        self.lab
            .set_backend_conditions("dns", &victim, true, true, false)?;
        self.notes.push(format!(
            "{victim} not serving for {} ms",
            flip_back_after.as_millis()
        ));
        std::thread::sleep(EXPOSURE);
        self.also_false = monitor
            .events()
            .into_iter()
            .map(|(_, flow)| flow)
            .filter(|flow| is_background_client(flow.orig_src.ip()))
            .collect();
        self.finish(&monitor)
    }

    /// Waits for the rules, lets late deletions show up, and judges.
    fn finish(self, monitor: &DestroyMonitor) -> Result<LagOutcome> {
        self.lab.wait_rules_synced()?;
        std::thread::sleep(Duration::from_millis(300));
        let tl = self.lab.timeline();
        let mut false_deletions = self.lab.false_deletions(monitor);
        for flow in self.also_false {
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
        Ok(LagOutcome {
            scenario: self.scenario,
            with_agent: self.config.agent.is_some(),
            at_risk: self.at_risk,
            false_deletions,
            notes: self.notes,
            timeline: tl.render(self.t0),
            agent_log: self.lab.agent_log(),
        })
    }
}

/// Whether an address belongs to a background client of the long-pass scenario.
fn is_background_client(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [10, 201])
}

/// Background entry `j`: an unrelated, un-NATed, replied UDP flow.
fn background_entry(j: u32) -> NewFlow {
    let client = IpAddr::V4(Ipv4Addr::from(0x0ac9_0000 | (j & 0xffff)));
    let server = IpAddr::V4(Ipv4Addr::from(0x0afb_0000 | (j & 0xffff)));
    let sport = 20_000 + (j >> 16) as u16;
    let mut flow = NewFlow::symmetric(Tuple::new(client, server, proto::UDP, sport, 443), 600);
    flow.status = Status::SEEN_REPLY | Status::ASSURED;
    flow
}

/// Creates `count` background entries in the node's table; returns how long it took.
fn fill_background(lab: &Lab, count: u32) -> Result<Duration> {
    let started = Instant::now();
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&lab.topology().node().path()), caps)
        .context("conntrack socket in the node")?;
    let mut chunk = Vec::with_capacity(10_000);
    for start in (0..count).step_by(10_000) {
        chunk.clear();
        chunk.extend((start..count.min(start + 10_000)).map(background_entry));
        let report = ct.create(&chunk).context("creating background entries")?;
        if let Some((index, err)) = report.failed.first() {
            bail!("background entry {} refused: {err}", start as usize + index);
        }
    }
    Ok(started.elapsed())
}

/// How long a full dump of the node's IPv4 UDP table takes (what one agent pass reads).
fn time_dump(lab: &Lab) -> Result<Duration> {
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&lab.topology().node().path()), caps)
        .context("conntrack socket in the node")?;
    let filter = DumpFilter {
        family: Some(Family::V4),
        proto: Some(proto::UDP),
        ..Default::default()
    };
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    let mut count = 0u64;
    ct.dump(&filter, |flow| {
        count += 1;
        // Touch each entry as a pass does (a pass classifies every one).
        if count.is_multiple_of(100_000) {
            seen.insert(flow.orig.src);
        }
    })
    .context("dumping the node's table")?;
    Ok(started.elapsed())
}
