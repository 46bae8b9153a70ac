//! The table metrics and `check --stats` against a real namespace (root): the figures the
//! agent exports must be the ones `conntrack -C` / `conntrack -S` print for that namespace,
//! and every metric the agent exports must be the list `docs/metrics.md` documents (which the
//! manifests' offline checks hold the alerts and the dashboard to).

use ctnetlink::testing::{TestNetns, root_or_skip};
use ctnetlink::{Conntrack, NewFlow, Status, Tuple, proto};
use e2e::apiserver::ApiServer;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_conntrack-reconciler");
const NODE: &str = "node-1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A DNATed UDP entry from a client port to `frontend`, answered by `backend`.
fn flow(client_port: u16, frontend: (&str, u16), backend: (&str, u16)) -> NewFlow {
    let client = ip("10.244.2.9");
    NewFlow {
        orig: Tuple::new(client, ip(frontend.0), proto::UDP, client_port, frontend.1),
        reply: Tuple::new(ip(backend.0), client, proto::UDP, backend.1, client_port),
        timeout: 600,
        status: Status::CONFIRMED | Status::SEEN_REPLY | Status::DST_NAT,
        mark: 0,
        zone: 0,
    }
}

/// dns (10.96.0.10:53 → 10.244.1.1:5353) in the API double.
fn dns_state(api: &ApiServer) {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.1"}]}
    }))
    .unwrap();
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "dns", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "p", "port": 53, "protocol": "UDP", "targetPort": 5353}]}
    }))
    .unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "dns-x", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.1"], "conditions": {"ready": true}}],
        "ports": [{"name": "p", "port": 5353, "protocol": "UDP"}]
    }))
    .unwrap();
    api.apply(&node).unwrap();
    api.apply(&service).unwrap();
    api.apply(&slice).unwrap();
}

/// 5 healthy flows and 3 stale ones to dns, and 2 flows nobody owns.
fn fill(ns: &TestNetns) {
    let mut flows: Vec<NewFlow> = (0..5)
        .map(|i| flow(1000 + i, ("10.96.0.10", 53), ("10.244.1.1", 5353)))
        .collect();
    flows.extend((0..3).map(|i| flow(2000 + i, ("10.96.0.10", 53), ("10.244.1.9", 5353))));
    flows.extend((0..2).map(|i| flow(3000 + i, ("10.0.0.1", 53), ("10.0.0.1", 53))));
    let report = Conntrack::open_in(&ns.path())
        .unwrap()
        .create(&flows)
        .unwrap();
    assert_eq!(report.created, 10, "{report:?}");
}

/// `conntrack -S` in the namespace, summed over CPUs, named like the metrics.
fn conntrack_s(ns: &TestNetns) -> BTreeMap<String, u64> {
    let out = ns.exec_checked(["conntrack", "-S"]).unwrap();
    let mut sums = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        for field in line.split_whitespace().skip(1) {
            let (name, value) = field.split_once('=').unwrap();
            let name = if name == "chaintoolong" {
                "chain_toolong"
            } else {
                name
            };
            *sums.entry(name.to_owned()).or_insert(0) += value.parse::<u64>().unwrap();
        }
    }
    assert!(sums.contains_key("insert_failed"), "{sums:?}");
    sums
}

fn conntrack_c(ns: &TestNetns) -> u64 {
    let out = ns.exec_checked(["conntrack", "-C"]).unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn nf_conntrack_max() -> u64 {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

struct Agent {
    child: Child,
    metrics: SocketAddr,
    log: tempfile::NamedTempFile,
}

impl Agent {
    fn start(api: &ApiServer, ns: &TestNetns, extra: &[&str]) -> Agent {
        let metrics = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(BIN)
            .args(["--log-format", "json", "run", "--node-name", NODE])
            .args(["--kubeconfig", api.kubeconfig().to_str().unwrap()])
            .args(["--netns", ns.path().to_str().unwrap()])
            .args(["--metrics-addr", &metrics.to_string(), "--family", "ipv4"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Agent {
            child,
            metrics,
            log,
        }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get("/readyz").is_none_or(|(status, _)| status != 200) {
            assert!(
                Instant::now() < deadline,
                "agent not ready\n{}",
                std::fs::read_to_string(self.log.path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One scrape: every sample line, `name{labels}` → value.
    fn scrape(&self) -> (String, BTreeMap<String, f64>) {
        let (status, body) = self.get("/metrics").expect("metrics endpoint");
        assert_eq!(status, 200);
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        (body, samples)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
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
