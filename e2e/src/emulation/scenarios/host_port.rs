//! A pod with a UDP hostPort is replaced: the CNI portmap DNAT of `nodeIP:hostPort` moves to the
//! new pod's IP after the rules lag, but the external client's flow keeps the old pod's IP.
//!
//! The headline's three-backend service runs beside it with pod clients: bystanders whose flows
//! must survive the agent's hostPort judgement.

use super::{
    CLIENT_PORT, HOST_PORT, Observed, RunConfig, SERVICE_PORT, Scenario, TARGET_PORT, agent_args,
    conclude, first_allowed_answer, new_lab, service_def, start_bystanders, wait_bystanders,
    wait_steady,
};
use crate::emulation::lab::ClientPlace;
use crate::topology::NODE_IPV4;
use crate::workload::Answer;
use anyhow::Result;
use std::net::SocketAddr;

/// Runs the scenario; the lab is torn down before it returns.
pub(super) fn run(config: &RunConfig) -> Result<super::Outcome> {
    let scenario = Scenario::HostPortReplaced;
    let lab = new_lab(scenario, config)?;
    let tl = lab.timeline().clone();
    let service = service_def(scenario);
    let service_vip = SocketAddr::new(service.cluster_ips[0], SERVICE_PORT);
    lab.apply_service(service)?;
    for name in ["dns-a", "dns-b", "dns-c"] {
        lab.add_backend("dns", name, &[TARGET_PORT])?;
    }
    lab.add_host_port_pod("hp-old", HOST_PORT, TARGET_PORT)?;
    lab.wait_rules_synced()?;
    if let Some(agent) = &config.agent {
        lab.start_agent(agent, &agent_args())?;
    }
    let monitor = lab.destroy_monitor()?;

    let client = lab.start_client(
        "client",
        ClientPlace::External,
        SocketAddr::new(NODE_IPV4.into(), HOST_PORT),
        CLIENT_PORT,
    )?;
    let bystanders = start_bystanders(&lab, ClientPlace::Pod, service_vip)?;
    let before = wait_steady(&lab, &client)?.backend;
    wait_bystanders(&bystanders)?;
    tl.record("client", format!("answered steadily by {before}"));

    // A DaemonSet-style replacement: the old pod goes, a new one (new name, new IP) takes the
    // same hostPort; the portmap rules follow after the lag.
    let t0 = crate::timeline::unix_micros();
    lab.remove_host_port_pod("hp-old")?;
    lab.add_host_port_pod("hp-new", HOST_PORT, TARGET_PORT)?;
    let allowed = |a: &Answer| a.pod() == "hp-new";
    let first = first_allowed_answer(&client, t0, config.window, &allowed);
    conclude(
        &lab,
        config,
        &monitor,
        Observed::new(scenario, t0, before, first),
    )
}
