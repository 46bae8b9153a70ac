//! The table metrics and `check --stats` against a real namespace (root): the figures the
//! agent exports must be the ones `conntrack -C` / `conntrack -S` print for that namespace,
//! and every metric the agent exports must be the list `docs/metrics.md` documents (which the
//! manifests' offline checks hold the alerts and the dashboard to).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use common::{Agent, BIN, NODE, flow, node, runtime, service, slice};
use ctnetlink::Conntrack;
use ctnetlink::NewFlow;
use ctnetlink::testing::{TestNetns, root_or_skip};
use e2e::apiserver::ApiServer;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// dns (10.96.0.10:53 → 10.244.1.1:5353) in the API double.
fn dns_state(api: &ApiServer) {
    api.apply(&node()).unwrap();
    api.apply(&service("dns", "10.96.0.10", 53, 5353)).unwrap();
    api.apply(&slice("dns", 5353, &["10.244.1.1"])).unwrap();
}

/// 5 healthy flows and 3 stale ones to dns, and 2 flows nobody owns.
fn fill(ns: &TestNetns) {
    let mut flows: Vec<NewFlow> = (0..5)
        .map(|i| flow(1000 + i, ("10.96.0.10", 53), ("10.244.1.1", 5353)))
        .collect();
    flows.extend((0..3).map(|i| flow(2000 + i, ("10.96.0.10", 53), ("10.244.1.9", 5353))));
    flows.extend((0..2).map(|i| flow(3000 + i, ("10.0.0.1", 53), ("10.0.0.1", 53))));
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let report = Conntrack::open(Some(&ns.path()), caps)
        .unwrap()
        .create(&flows)
        .unwrap();
    assert_eq!(report.created, 10, "{report:?}");
}

/// `conntrack -S` in the namespace, summed over CPUs, named like the metrics.
fn conntrack_s(ns: &TestNetns) -> BTreeMap<String, u64> {
    let (_, sums) = ns.conntrack_stats().unwrap();
    assert!(sums.contains_key("insert_failed"), "{sums:?}");
    sums
}

fn conntrack_c(ns: &TestNetns) -> u64 {
    ns.conntrack_count().unwrap()
}

fn nf_conntrack_max() -> u64 {
    ctnetlink::testing::nf_conntrack_max().unwrap()
}

/// The names `docs/metrics.md` documents, as `/metrics` shows them.
fn documented_metrics() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| `conntrack_reconciler_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_owned(), cells[2].to_owned())
        })
        .collect()
}

/// The names a `/metrics` body exports, from its `# TYPE` lines (which are there even for a
/// family with no series yet); counters as their `_total` samples are named.
fn exported_metrics(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            (name, kind.to_owned())
        })
        .collect()
}

#[test]
fn metrics_match_conntrack_tools_and_the_documented_list() {
    if !root_or_skip("metrics_match_conntrack_tools_and_the_documented_list") {
        return;
    }
    let rt = runtime();
    let api = ApiServer::start(rt.handle()).unwrap();
    dns_state(&api);
    let ns = TestNetns::new("tblstats").unwrap();
    fill(&ns);
    // Dry run: the stale flows stay, so the table does not change under the comparison.
    let agent = Agent::start(&api, &ns, &["--dry-run", "--no-events"]);
    agent.wait_ready();
    let (body, samples) = agent.scrape();

    let value = |name: &str| -> u64 {
        *samples
            .get(name)
            .unwrap_or_else(|| panic!("no sample {name}:\n{body}")) as u64
    };
    assert_eq!(
        value("conntrack_reconciler_table_entries"),
        conntrack_c(&ns)
    );
    assert_eq!(value("conntrack_reconciler_table_entries"), 10);
    assert_eq!(
        value("conntrack_reconciler_table_entries_limit"),
        nf_conntrack_max()
    );
    let kernel = conntrack_s(&ns);
    assert_eq!(kernel["insert"], 10, "the test's own inserts: {kernel:?}");
    for (name, expected) in &kernel {
        assert_eq!(
            value(&format!("conntrack_reconciler_table_{name}_total")),
            *expected,
            "{name}"
        );
    }
    assert_eq!(
        value("conntrack_reconciler_table_stats_read_errors_total"),
        0
    );
    // Read off the scrape path, a few seconds old at most.
    let age = samples["conntrack_reconciler_table_stats_age_seconds"];
    assert!(
        (0.0..=conntrack_reconciler::metrics::kernel_stats::MAX_SAMPLE_AGE.as_secs_f64())
            .contains(&age),
        "{age}"
    );
    assert_eq!(value("conntrack_reconciler_ready"), 1);
    // The pass's per-frontend figures: flows nobody owns are not counted.
    assert_eq!(
        value(r#"conntrack_reconciler_udp_flows{service="default/dns",frontend="10.96.0.10:53"}"#),
        8,
        "{body}"
    );
    assert_eq!(
        value(
            r#"conntrack_reconciler_stale_flows_left{service="default/dns",reason="endpoint-gone"}"#
        ),
        3,
        "{body}"
    );

    let exported = exported_metrics(&body);
    let documented = documented_metrics();
    let missing: Vec<_> = exported
        .keys()
        .filter(|n| !documented.contains_key(*n))
        .collect();
    let stale_docs: Vec<_> = documented
        .keys()
        .filter(|n| !exported.contains_key(*n))
        .collect();
    assert!(
        missing.is_empty() && stale_docs.is_empty(),
        "docs/metrics.md and /metrics disagree: undocumented {missing:?}, not exported {stale_docs:?}"
    );
    assert_eq!(exported, documented, "types differ");
}

fn check(ns: &TestNetns, state: &Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args([
            "--log-format",
            "text",
            "check",
            "--stats",
            "--node-name",
            NODE,
        ])
        .args(["--state", state.to_str().unwrap()])
        .args(["--netns", ns.path().to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn check_stats_reports_the_table_like_conntrack_tools_with_diagnoses() {
    if !root_or_skip("check_stats_reports_the_table_like_conntrack_tools_with_diagnoses") {
        return;
    }
    let ns = TestNetns::new("chkstats").unwrap();
    fill(&ns);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.yaml");
    std::fs::write(
        &state,
        "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: default}\n\
         spec: {clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], \
         ports: [{name: p, port: 53, protocol: UDP, targetPort: 5353}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: dns-x, namespace: default, labels: {kubernetes.io/service-name: dns}}\n\
         addressType: IPv4\nendpoints: [{addresses: [10.244.1.1], conditions: {ready: true}}]\n\
         ports: [{name: p, port: 5353, protocol: UDP}]\n",
    )
    .unwrap();

    let doc: serde_json::Value =
        serde_json::from_str(&check(&ns, &state, &["-o", "json", "--family", "ipv4"])).unwrap();
    let stats = &doc["stats"];
    assert_eq!(stats["entries"].as_u64(), Some(conntrack_c(&ns)), "{doc:#}");
    assert_eq!(stats["max_entries"].as_u64(), Some(nf_conntrack_max()));
    assert_eq!(stats["source"], "netlink");
    for (name, expected) in conntrack_s(&ns) {
        assert_eq!(stats["counters"][&name].as_u64(), Some(expected), "{name}");
    }
    assert_eq!(
        stats["udp_flows"],
        json!([{"service": "default/dns", "frontend": "10.96.0.10:53", "flows": 8}])
    );
    assert_eq!(
        stats["stale_left"],
        json!([{"service": "default/dns", "reason": "endpoint-gone", "flows": 3}])
    );
    let codes: Vec<&str> = stats["diagnoses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["stale-flows-present"], "{stats:#}");
    assert!(stats["interval_seconds"].as_f64().unwrap() >= 1.0);

    let text = check(&ns, &state, &["--family", "ipv4"]);
    assert!(text.contains("conntrack table: 10 of "), "{text}");
    assert!(text.contains("insert_failed 0"), "{text}");
    assert!(text.contains("default/dns  10.96.0.10:53  8"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("diagnosis [stale-flows-present]: 3 stale UDP flows")),
        "{text}"
    );

    // Deleting them leaves nothing to diagnose.
    let text = check(&ns, &state, &["--family", "ipv4", "--delete"]);
    assert!(
        text.contains("diagnosis: no known problem pattern"),
        "{text}"
    );
    assert!(text.contains("conntrack table: 7 of "), "{text}");
}
