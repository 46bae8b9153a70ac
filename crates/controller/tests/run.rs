//! `conntrack-reconciler run` end to end, against the lab's loopback API double and a real
//! namespace's conntrack table (root).
//!
//! The agent runs in our namespace, talks to the API double on 127.0.0.1, and operates on a
//! throwaway namespace's table through `--netns`. Each test fills the table with hand-made
//! entries (healthy and stale) and checks what the agent deletes — and, above all, what it does
//! not — across the situations the safety rules are about: incomplete lists, relists (410 Gone),
//! API outages, services deleted while the watch was down, dry run, the deletion budget.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use common::{Agent, flow, hold, node, runtime, service, slice, wait_for};
use ctnetlink::testing::{TestNetns, root_or_skip};
use ctnetlink::{Conntrack, DumpFilter, Family, NewFlow, proto};
use e2e::apiserver::ApiServer;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The lab for one test: a namespace, a table handle, an API double and its runtime.
struct Lab {
    ns: TestNetns,
    ct: Conntrack,
    api: ApiServer,
    _rt: tokio::runtime::Runtime,
}

impl Lab {
    fn new(name: &str) -> Lab {
        let rt = runtime();
        let api = ApiServer::start(rt.handle()).unwrap();
        api.apply(&node()).unwrap();
        let ns = TestNetns::new(name).unwrap();
        let caps = ctnetlink::Capabilities::from_running_kernel();
        let ct = Conntrack::open(Some(&ns.path()), caps).unwrap();
        Lab {
            ns,
            ct,
            api,
            _rt: rt,
        }
    }

    fn create(&mut self, flows: &[NewFlow]) {
        let report = self.ct.create(flows).unwrap();
        assert!(report.failed.is_empty(), "{report:?}");
    }

    /// Client ports of the UDP entries present.
    fn ports(&mut self) -> BTreeSet<u16> {
        let mut ports = BTreeSet::new();
        let filter = DumpFilter {
            family: Some(Family::V4),
            proto: Some(proto::UDP),
            ..Default::default()
        };
        self.ct
            .dump(&filter, |f| {
                ports.insert(f.orig.sport);
            })
            .unwrap();
        ports
    }

    fn start_agent(&self, extra: &[&str]) -> Agent {
        Agent::start(&self.api, &self.ns, extra)
    }
}

/// dns: 10.96.0.10:53 → 10.244.1.1:5353 and 10.244.1.2:5353.
fn dns_state(lab: &Lab) {
    lab.api
        .apply(&service("dns", "10.96.0.10", 53, 5353))
        .unwrap();
    lab.api
        .apply(&slice("dns", 5353, &["10.244.1.1", "10.244.1.2"]))
        .unwrap();
}

fn healthy() -> Vec<NewFlow> {
    vec![
        flow(1001, ("10.96.0.10", 53), ("10.244.1.1", 5353)),
        flow(1002, ("10.96.0.10", 53), ("10.244.1.2", 5353)),
        // Not ours: a flow to an address no service uses, and a NodePort-looking foreign one.
        flow(1003, ("10.0.0.1", 53), ("10.0.0.1", 53)),
    ]
}

fn healthy_ports() -> BTreeSet<u16> {
    healthy().iter().map(|f| f.orig.sport).collect()
}

#[test]
fn nothing_is_deleted_before_every_list_completes() {
    if !root_or_skip("nothing_is_deleted_before_every_list_completes") {
        return;
    }
    let mut lab = Lab::new("runlist");
    dns_state(&lab);
    lab.create(&healthy());
    // A flow to a backend that left while the agent was down (it never saw it).
    lab.create(&[flow(2001, ("10.96.0.10", 53), ("10.244.1.9", 5353))]);
    lab.api.stall_for(Duration::from_secs(3));
    // No bookmarks: only the first list, requested after the agent walked the table, can
    // prove 10.244.1.9 gone — and it does, without waiting the grace.
    lab.api.set_bookmark_interval(None);
    let agent = lab.start_agent(&["--unseen-backend-grace", "30s"]);
    let started = Instant::now();
    hold(
        "no deletion while the lists are stalled",
        Duration::from_millis(2500),
        || {
            let ports = lab.ports();
            ports.contains(&2001) && !agent.ready()
        },
        &agent,
    );
    wait_for(
        "stale flow deleted",
        Duration::from_secs(10),
        || !lab.ports().contains(&2001),
        &agent,
    );
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert_eq!(lab.ports(), healthy_ports(), "healthy flows untouched");
    agent.wait_ready();
    assert_eq!(
        agent.metric(
            "conntrack_reconciler_flows_deleted_total",
            &["endpoint-gone"]
        ),
        1.0
    );
}

#[test]
fn relists_and_api_outages_delete_nothing_healthy() {
    if !root_or_skip("relists_and_api_outages_delete_nothing_healthy") {
        return;
    }
    let mut lab = Lab::new("runrelist");
    dns_state(&lab);
    lab.create(&healthy());
    let agent = lab.start_agent(&["--resync-interval", "1s"]);
    agent.wait_ready();
    let expected = healthy_ports();
    // 410 Gone on resume: the watcher relists.
    lab.api.compact();
    lab.api.drop_watches();
    hold(
        "healthy flows after a 410 relist",
        Duration::from_secs(2),
        || lab.ports() == expected,
        &agent,
    );
    // An outage: every request fails, watches drop; periodic passes keep running on the last state.
    lab.api.fail_for(Duration::from_secs(3));
    lab.api.drop_watches();
    hold(
        "healthy flows during an outage",
        Duration::from_secs(4),
        || lab.ports() == expected,
        &agent,
    );
    // And the agent still acts on the last complete state during and after it.
    lab.create(&[flow(2002, ("10.96.0.10", 53), ("10.244.1.9", 5353))]);
    wait_for(
        "stale flow deleted after the outage",
        Duration::from_secs(10),
        || !lab.ports().contains(&2002),
        &agent,
    );
    assert_eq!(lab.ports(), expected);
    assert!(
        agent.metric("conntrack_reconciler_watch_errors_total", &[]) >= 1.0,
        "outage counted"
    );
}

#[test]
fn a_service_deleted_while_the_watch_was_down_is_still_cleaned() {
    if !root_or_skip("a_service_deleted_while_the_watch_was_down_is_still_cleaned") {
        return;
    }
    let mut lab = Lab::new("runtomb");
    dns_state(&lab);
    lab.api
        .apply(&service("statsd", "10.96.0.30", 8125, 8125))
        .unwrap();
    lab.api
        .apply(&slice("statsd", 8125, &["10.244.1.30"]))
        .unwrap();
    lab.create(&healthy());
    lab.create(&[flow(3001, ("10.96.0.30", 8125), ("10.244.1.30", 8125))]);
    let agent = lab.start_agent(&["--no-events"]);
    agent.wait_ready();
    hold(
        "statsd flow is healthy",
        Duration::from_millis(500),
        || lab.ports().contains(&3001),
        &agent,
    );
    // The watch goes down; meanwhile the service is deleted (its slice lingers, as it does until
    // the garbage collector removes it) and history is compacted, so the agent learns of the
    // deletion only from the relist's difference.
    lab.api.fail_for(Duration::from_secs(2));
    lab.api.drop_watches();
    std::thread::sleep(Duration::from_millis(500)); // the streams are closed, reconnects fail
    lab.api.delete::<Service>("default", "statsd").unwrap();
    lab.api.compact();
    wait_for(
        "deleted service's flow cleaned",
        Duration::from_secs(20),
        || !lab.ports().contains(&3001),
        &agent,
    );
    assert_eq!(lab.ports(), healthy_ports());
    assert_eq!(
        agent.metric(
            "conntrack_reconciler_flows_deleted_total",
            &["service-deleted"]
        ),
        1.0
    );
}

#[test]
fn endpoint_removal_cleans_its_flows_and_sigterm_exits_zero() {
    if !root_or_skip("endpoint_removal_cleans_its_flows_and_sigterm_exits_zero") {
        return;
    }
    let mut lab = Lab::new("runchange");
    dns_state(&lab);
    lab.create(&healthy());
    // The same stale flow in another conntrack zone (OVS, OVN, Antrea) is not ours to judge.
    let mut zoned = flow(1102, ("10.96.0.10", 53), ("10.244.1.2", 5353));
    zoned.zone = 7;
    lab.create(&[zoned]);
    let mut agent = lab.start_agent(&["--no-events"]);
    agent.wait_ready();
    lab.api.apply(&slice("dns", 5353, &["10.244.1.1"])).unwrap();
    wait_for(
        "flow to the removed endpoint deleted",
        Duration::from_secs(5),
        || !lab.ports().contains(&1002),
        &agent,
    );
    let left = lab.ports();
    assert!(left.contains(&1001) && left.contains(&1003), "{left:?}");
    assert!(
        left.contains(&1102),
        "a zone-7 flow is left alone: {left:?}"
    );
    // API servers before 1.31 refuse `spec.clusterIP!=None`; a label selector on Services would
    // turn a relabel to another proxy into a deletion. Services are watched unfiltered.
    let services: Vec<String> = lab
        .api
        .requests()
        .into_iter()
        .filter(|r| r.contains("/services"))
        .collect();
    assert!(!services.is_empty());
    assert!(
        services
            .iter()
            .all(|r| !r.contains("fieldSelector") && !r.contains("labelSelector")),
        "{services:?}"
    );
    assert!(agent.metric("conntrack_reconciler_passes_total", &["change"]) >= 1.0);
    let status = agent.terminate();
    assert!(status.success(), "exit status {status}\n{}", agent.logs());
}

#[test]
fn event_path_deletes_a_stale_new_flow_at_once() {
    if !root_or_skip("event_path_deletes_a_stale_new_flow_at_once") {
        return;
    }
    let mut lab = Lab::new("runevent");
    dns_state(&lab);
    let agent = lab.start_agent(&[
        "--resync-interval",
        "1h",
        "--follow-ups",
        "1h",
        "--unseen-backend-grace",
        "1s",
    ]);
    agent.wait_ready();
    // The agent sees 10.244.1.2 leave the service: positive evidence.
    lab.api.apply(&slice("dns", 5353, &["10.244.1.1"])).unwrap();
    std::thread::sleep(Duration::from_millis(500)); // let the change and its pass finish
    let passes_before = agent.metric("conntrack_reconciler_passes_total", &[]);
    let created = Instant::now();
    lab.create(&[flow(4001, ("10.96.0.10", 53), ("10.244.1.2", 5353))]);
    lab.create(&[flow(4002, ("10.96.0.10", 53), ("10.244.1.1", 5353))]);
    wait_for(
        "event path deletion",
        Duration::from_secs(3),
        || !lab.ports().contains(&4001),
        &agent,
    );
    let removed_after = created.elapsed();
    eprintln!("stale NEW flow to a removed backend deleted within {removed_after:?}");
    // A backend seen removed needs no grace: the flow was never postponed. (Counted, not
    // timed: a loaded CI machine may take longer than the grace to deliver the event.)
    assert_eq!(
        agent.metric("conntrack_reconciler_flows_postponed_total", &[]),
        0.0,
        "{}",
        agent.logs()
    );
    assert!(lab.ports().contains(&4002), "the healthy new flow stays");
    assert!(agent.metric("conntrack_reconciler_events_total", &["new"]) >= 2.0);
    // No pass ran meanwhile: the event path did the deletion.
    assert_eq!(
        agent.metric("conntrack_reconciler_passes_total", &[]),
        passes_before,
        "{}",
        agent.logs()
    );
    // A backend the agent never saw may be one kube-proxy knows and the agent does not yet:
    // its flow waits for proof (an event or bookmark received a grace after the flow).
    let created = Instant::now();
    lab.create(&[flow(4003, ("10.96.0.10", 53), ("10.244.1.9", 5353))]);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        lab.ports().contains(&4003),
        "a never-seen backend's flow is not deleted before the grace"
    );
    wait_for(
        "waiting flow proven stale",
        Duration::from_secs(10),
        || !lab.ports().contains(&4003),
        &agent,
    );
    eprintln!(
        "stale NEW flow to a never-seen backend deleted within {:?}",
        created.elapsed()
    );
    assert!(lab.ports().contains(&4002), "the healthy new flow stays");
}

#[test]
fn dry_run_reports_and_deletes_nothing() {
    if !root_or_skip("dry_run_reports_and_deletes_nothing") {
        return;
    }
    let mut lab = Lab::new("rundry");
    dns_state(&lab);
    lab.create(&healthy());
    lab.create(&[flow(5001, ("10.96.0.10", 53), ("10.244.1.9", 5353))]);
    // 10.244.1.9 was never a backend the agent saw: it is reported once the view is proven
    // newer than the flow (a bookmark a grace after it).
    let agent = lab.start_agent(&["--dry-run", "--unseen-backend-grace", "1s"]);
    agent.wait_ready();
    wait_for(
        "dry-run count",
        Duration::from_secs(10),
        || {
            agent.metric(
                "conntrack_reconciler_flows_not_deleted_total",
                &["endpoint-gone"],
            ) >= 1.0
        },
        &agent,
    );
    assert!(lab.ports().contains(&5001));
    assert_eq!(
        agent.metric("conntrack_reconciler_flows_deleted_total", &[]),
        0.0
    );
}

#[test]
fn the_budget_caps_each_pass_and_later_passes_finish_the_job() {
    if !root_or_skip("the_budget_caps_each_pass_and_later_passes_finish_the_job") {
        return;
    }
    let mut lab = Lab::new("runbudget");
    dns_state(&lab);
    lab.create(&healthy());
    let stale: Vec<NewFlow> = (0..25)
        .map(|i| flow(6000 + i, ("10.96.0.10", 53), ("10.244.1.9", 5353)))
        .collect();
    lab.create(&stale);
    // 10.244.1.9 was never a backend the agent saw: the flows wait for proof (a bookmark a
    // grace after them), then go through re-checks that the budget caps like passes.
    let agent = lab.start_agent(&[
        "--max-deletes-per-pass",
        "10",
        "--resync-interval",
        "1s",
        "--no-events",
        "--unseen-backend-grace",
        "1s",
    ]);
    wait_for(
        "all stale flows deleted",
        Duration::from_secs(15),
        || lab.ports() == healthy_ports(),
        &agent,
    );
    assert!(agent.metric("conntrack_reconciler_budget_exhausted_total", &[]) >= 2.0);
    assert_eq!(
        agent.metric("conntrack_reconciler_flows_deleted_total", &[]),
        25.0
    );
}

#[test]
fn malformed_objects_are_skipped_and_nothing_healthy_is_deleted() {
    if !root_or_skip("malformed_objects_are_skipped_and_nothing_healthy_is_deleted") {
        return;
    }
    let mut lab = Lab::new("runbad");
    dns_state(&lab);
    // A Service with no ports, an odd ClusterIP; a slice with an invalid address, an
    // out-of-range port and an endpoint without addresses, next to a valid endpoint.
    let bad_service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "noports", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.999", "clusterIPs": ["10.96.0.999"]}
    }))
    .unwrap();
    let bad_slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "dns-bad", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.1.999"], "conditions": {"ready": true}},
            {"addresses": [], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.3"], "conditions": {"ready": true}}
        ],
        "ports": [{"name": "p", "port": 70000, "protocol": "UDP"}]
    }))
    .unwrap();
    lab.api.apply(&bad_service).unwrap();
    lab.api.apply(&bad_slice).unwrap();
    lab.create(&healthy());
    let agent = lab.start_agent(&["--resync-interval", "1s"]);
    agent.wait_ready();
    hold(
        "healthy flows beside malformed objects",
        Duration::from_secs(2),
        || lab.ports() == healthy_ports(),
        &agent,
    );
    assert!(
        agent.metric("conntrack_reconciler_objects_skipped_total", &[]) >= 2.0,
        "{}",
        agent.logs()
    );
    let logs = agent.logs();
    assert!(
        logs.contains("10.244.1.999") || logs.contains("70000"),
        "skips are logged: {logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}

#[test]
fn without_bookmarks_a_waiting_flow_is_proven_by_a_relist() {
    if !root_or_skip("without_bookmarks_a_waiting_flow_is_proven_by_a_relist") {
        return;
    }
    let mut lab = Lab::new("runproof");
    dns_state(&lab);
    // An API server that sends no periodic bookmarks (no watch cache, or nothing changed on
    // that resource since it started): only events and lists prove the view current.
    lab.api.set_bookmark_interval(None);
    let agent = lab.start_agent(&["--unseen-backend-grace", "1s", "--follow-ups", "1h"]);
    agent.wait_ready();
    lab.api.apply(&slice("dns", 5353, &["10.244.1.1"])).unwrap();
    // Long after the last event: kube-proxy's old rules re-create a flow to the removed backend.
    std::thread::sleep(Duration::from_secs(3));
    let created = Instant::now();
    lab.create(&[flow(7001, ("10.96.0.10", 53), ("10.244.1.2", 5353))]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        lab.ports().contains(&7001),
        "no event or list since the change is recent enough to prove it"
    );
    wait_for(
        "the flow deleted after a list for proof",
        Duration::from_secs(30),
        || !lab.ports().contains(&7001),
        &agent,
    );
    eprintln!("proven and deleted after {:?}", created.elapsed());
    assert!(agent.logs().contains("listing again"), "{}", agent.logs());
}

#[test]
fn a_new_node_address_is_judged_at_once_not_with_the_next_watch_update() {
    if !root_or_skip("a_new_node_address_is_judged_at_once_not_with_the_next_watch_update") {
        return;
    }
    let mut lab = Lab::new("runaddr");
    let mut dns: Service = service("dns", "10.96.0.10", 53, 5353);
    if let Some(port) = dns
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .and_then(|p| p.first_mut())
    {
        port.node_port = Some(30053);
    }
    lab.api.apply(&dns).unwrap();
    lab.api
        .apply(&slice("dns", 5353, &["10.244.1.1", "10.244.1.2"]))
        .unwrap();
    // A flow to 192.0.2.77:30053 that no rule DNATed: nothing of ours while 192.0.2.77 is not
    // a node address; once it is, kube-proxy would DNAT it, so the old entry is stale.
    let undnated = flow(2001, ("192.0.2.77", 30053), ("192.0.2.77", 30053));
    lab.create(&healthy());
    lab.create(&[undnated]);
    // Bookmarks once a minute, as kube-apiserver sends them: no watch update comes meanwhile.
    // (A grace long enough for the lists alone to prove the verdict.)
    lab.api.set_bookmark_interval(Some(Duration::from_secs(60)));
    let mut agent = lab.start_agent(&["--no-events", "--unseen-backend-grace", "30s"]);
    agent.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    assert!(lab.ports().contains(&2001), "not a node address yet");
    let added = std::process::Command::new("ip")
        .args([
            "-n",
            lab.ns.name(),
            "addr",
            "add",
            "192.0.2.77/32",
            "dev",
            "lo",
        ])
        .status()
        .unwrap();
    assert!(added.success());
    // Only the address change can start the pass.
    wait_for(
        "the flow to the new node address deleted",
        Duration::from_secs(5),
        || !lab.ports().contains(&2001),
        &agent,
    );
    let left = lab.ports();
    assert!(healthy_ports().is_subset(&left), "{left:?}");
    let status = agent.terminate();
    assert!(status.success(), "exit status {status}\n{}", agent.logs());
}
