//! Scale: the headline's backend is deleted while 199 other services churn their endpoints, over
//! a table of 100,000 background entries that must all survive.
//!
//! The other services have no pods: their EndpointSlices list addresses nobody answers (kube-proxy
//! programs them all the same). Each keeps three *stable* endpoints and churns the rest. Half of
//! the background entries are DNATed flows of those services to their stable endpoints (healthy:
//! a correct agent keeps them), half are unrelated un-NATed flows (not the agent's business).
//! Background clients come from 10.200.0.0/16, an address range nothing else in the lab uses, so
//! any destroy event from there is a false deletion.

use super::{
    CLIENT_PORT, Observed, Outcome, RunConfig, SERVICE_PORT, Scenario, TARGET_PORT, agent_args,
    conclude, first_allowed_answer, new_lab, service_def, start_bystanders, wait_bystanders,
    wait_steady,
};
use crate::conntrack::FlowEntry;
use crate::emulation::lab::{ClientPlace, Lab};
use crate::emulation::objects::ServiceDef;
use crate::timeline::unix_micros;
use crate::workload::Answer;
use anyhow::{Context, Result, bail};
use ctnetlink::testing::KnobGuard;
use ctnetlink::{Conntrack, DumpFilter, NewFlow, Status, Tuple, proto};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Services besides the headline's.
const OTHER_SERVICES: u16 = 199;
/// Endpoints of each other service that never change.
const STABLE_ENDPOINTS: u8 = 3;
/// Endpoints of each other service replaced at every churn step.
const CHURNED_ENDPOINTS: u8 = 4;
/// Background entries created in the node's table.
const BACKGROUND_ENTRIES: u32 = 100_000;
/// How long the churn runs before the headline change.
const CHURN_LEAD: Duration = Duration::from_secs(3);
/// How often a churn step rewrites some services' slices.
const CHURN_STEP: Duration = Duration::from_millis(100);
/// Services rewritten per churn step.
const SERVICES_PER_STEP: u16 = 5;

fn vip(service: u16) -> Ipv4Addr {
    let [hi, lo] = service.to_be_bytes();
    Ipv4Addr::new(10, 97, hi, lo.wrapping_add(1))
}

fn stable_endpoint(service: u16, k: u8) -> Ipv4Addr {
    let [hi, lo] = service.to_be_bytes();
    Ipv4Addr::new(10, 245 + hi, lo, 1 + k)
}

fn churned_endpoint(service: u16, generation: u32, k: u8) -> Ipv4Addr {
    let [hi, lo] = service.to_be_bytes();
    let slot = (generation * u32::from(CHURNED_ENDPOINTS) + u32::from(k)) % 240;
    Ipv4Addr::new(10, 245 + hi, lo, 10 + slot as u8)
}

/// Whether an address belongs to a background client.
fn is_background_client(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [10, 200])
}

/// Background entry `j`: even ones are healthy DNATed flows to a stable endpoint, odd ones are
/// unrelated un-NATed flows.
fn background_entry(j: u32) -> NewFlow {
    let client = IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 | (j & 0xffff)));
    let sport = 20_000 + (j >> 16) as u16;
    let status = Status::SEEN_REPLY | Status::ASSURED;
    if j.is_multiple_of(2) {
        let service = ((j / 2) % u32::from(OTHER_SERVICES)) as u16;
        let backend = stable_endpoint(service, (j % u32::from(STABLE_ENDPOINTS)) as u8);
        NewFlow {
            orig: Tuple::new(client, vip(service).into(), proto::UDP, sport, SERVICE_PORT),
            reply: Tuple::new(backend.into(), client, proto::UDP, TARGET_PORT, sport),
            timeout: 600,
            status: status | Status::DST_NAT,
            mark: 0,
            zone: 0,
        }
    } else {
        let server = IpAddr::V4(Ipv4Addr::from(0x0afa_0000 | (j & 0xffff)));
        let mut flow = NewFlow::symmetric(Tuple::new(client, server, proto::UDP, sport, 443), 600);
        flow.status = status;
        flow
    }
}

/// Creates the background entries in the node's table; returns how long it took.
fn fill_background(lab: &Lab) -> Result<Duration> {
    let started = Instant::now();
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&lab.topology().node().path()), caps)
        .context("conntrack socket in the node")?;
    let mut chunk = Vec::with_capacity(10_000);
    for start in (0..BACKGROUND_ENTRIES).step_by(10_000) {
        chunk.clear();
        chunk.extend((start..BACKGROUND_ENTRIES.min(start + 10_000)).map(background_entry));
        let report = ct.create(&chunk).context("creating background entries")?;
        if let Some((index, err)) = report.failed.first() {
            bail!("background entry {} refused: {err}", start as usize + index);
        }
        if report.created + report.already_existed != chunk.len() as u64 {
            bail!("background entries unconfirmed: {report:?}");
        }
    }
    Ok(started.elapsed())
}

/// How many background entries are in the node's table.
fn count_background(lab: &Lab) -> Result<u64> {
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&lab.topology().node().path()), caps)
        .context("conntrack socket in the node")?;
    let mut count = 0;
    ct.dump(&DumpFilter::default(), |flow| {
        if flow.orig.proto == proto::UDP && is_background_client(flow.orig.src) {
            count += 1;
        }
    })
    .context("dumping the node's table")?;
    Ok(count)
}

fn churn_endpoints(service: u16, generation: u32) -> Vec<(String, IpAddr)> {
    let stable = (0..STABLE_ENDPOINTS).map(|k| {
        (
            format!("svc-{service}-stable-{k}"),
            IpAddr::V4(stable_endpoint(service, k)),
        )
    });
    let churned = (0..CHURNED_ENDPOINTS).map(|k| {
        (
            format!("svc-{service}-g{generation}-{k}"),
            IpAddr::V4(churned_endpoint(service, generation, k)),
        )
    });
    stable.chain(churned).collect()
}

/// Rewrites a few services' endpoints every step until told to stop; returns the steps made.
fn churn(lab: &Lab, stop: &AtomicBool) -> Result<u32> {
    let mut step: u32 = 0;
    while !stop.load(Ordering::SeqCst) {
        step += 1;
        for n in 0..SERVICES_PER_STEP {
            let service = ((step * u32::from(SERVICES_PER_STEP) + u32::from(n))
                % u32::from(OTHER_SERVICES)) as u16;
            lab.set_endpoints_without_pods(
                &format!("svc-{service}"),
                &churn_endpoints(service, step),
            )?;
        }
        std::thread::sleep(CHURN_STEP);
    }
    Ok(step)
}

/// Runs the scenario; the lab is torn down before it returns.
pub(super) fn run(config: &RunConfig) -> Result<Outcome> {
    let scenario = Scenario::ChurnAtScale;
    let setup_started = Instant::now();
    // nf_conntrack_max is the init namespace's and shared: only raise it when it is too low.
    let _max = KnobGuard::conntrack_max_at_least(u64::from(BACKGROUND_ENTRIES) * 2)
        .context("raising nf_conntrack_max")?;
    let lab = new_lab(scenario, config)?;
    let tl = lab.timeline().clone();
    let headline = service_def(scenario);
    let target = SocketAddr::new(headline.cluster_ips[0], SERVICE_PORT);
    lab.apply_service(headline)?;
    for name in ["dns-a", "dns-b", "dns-c"] {
        lab.add_backend("dns", name, &[TARGET_PORT])?;
    }
    for service in 0..OTHER_SERVICES {
        let name = format!("svc-{service}");
        lab.apply_service(ServiceDef::udp(
            &name,
            &[vip(service).into()],
            SERVICE_PORT,
            TARGET_PORT,
        ))?;
        lab.set_endpoints_without_pods(&name, &churn_endpoints(service, 0))?;
    }
    lab.wait_rules_synced()?;
    let fill_time = fill_background(&lab)?;
    let created = count_background(&lab)?;
    tl.record(
        "lab",
        format!(
            "{} services, {created} background entries created in {} ms",
            OTHER_SERVICES + 1,
            fill_time.as_millis()
        ),
    );
    // The monitor comes first: the agent's first pass over the big table is judged too.
    let monitor = lab.destroy_monitor()?;
    if let Some(agent) = &config.agent {
        lab.start_agent(agent, &agent_args())?;
    }
    let client = lab.start_client("client", ClientPlace::Pod, target, CLIENT_PORT)?;
    let bystanders = start_bystanders(&lab, ClientPlace::Pod, target)?;
    let before = wait_steady(&lab, &client)?.backend;
    wait_bystanders(&bystanders)?;
    tl.record("client", format!("answered steadily by {before}"));
    let setup_time = setup_started.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let (first, t0, steps) = std::thread::scope(|scope| -> Result<_> {
        let churner = scope.spawn(|| churn(&lab, &stop));
        tl.record("lab", "endpoint churn started");
        std::thread::sleep(CHURN_LEAD);
        let victim = before
            .rsplit_once(':')
            .map(|(pod, _)| pod.to_string())
            .unwrap_or_default();
        let t0 = unix_micros();
        let removed = lab.remove_backend("dns", &victim);
        let allowed = move |a: &Answer| a.pod() != victim;
        let first = match removed {
            Ok(()) => first_allowed_answer(&client, t0, config.window, &allowed),
            Err(_) => None,
        };
        // Churn on a little past the recovery: the agent keeps working under load.
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
        let steps = churner
            .join()
            .map_err(|_| anyhow::anyhow!("the churn thread panicked"))??;
        removed?;
        Ok((first, t0, steps))
    })?;
    tl.record("lab", format!("endpoint churn stopped after {steps} steps"));

    let background_destroyed: Vec<FlowEntry> = monitor
        .events()
        .into_iter()
        .map(|(_, flow)| flow)
        .filter(|flow| is_background_client(flow.orig_src.ip()))
        .collect();
    let mut outcome = conclude(
        &lab,
        config,
        &monitor,
        Observed {
            also_false: background_destroyed,
            ..Observed::new(scenario, t0, before, first)
        },
    )?;
    let left = count_background(&lab)?;
    outcome.notes = vec![
        format!(
            "{} services, {} churn steps of {SERVICES_PER_STEP} services every {} ms",
            OTHER_SERVICES + 1,
            steps,
            CHURN_STEP.as_millis()
        ),
        format!("background entries: {created} created, {left} left at the end"),
        format!(
            "setup {} ms (background fill {} ms)",
            setup_time.as_millis(),
            fill_time.as_millis()
        ),
    ];
    // A loss without a destroy event (events can be dropped under load) still counts.
    outcome.background_missing = created.saturating_sub(left);
    Ok(outcome)
}
