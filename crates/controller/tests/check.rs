//! `conntrack-reconciler check` against a real namespace's conntrack table (root).
//!
//! The table is filled with hand-made entries covering every verdict a static state can give;
//! `check` must report exactly the stale ones, with the right reasons, and `--delete` must remove
//! exactly those and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use common::{BIN, dnat};
use ctnetlink::testing::{TestNetns, root_or_skip};
use ctnetlink::{Conntrack, DumpFilter, Family, NewFlow, proto};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/check-state.yaml")
        .display()
        .to_string()
}

/// (client port, expected reason or None for kept) — each entry has its own client port.
fn table() -> Vec<(NewFlow, Option<&'static str>)> {
    let udp = proto::UDP;
    vec![
        (
            dnat(
                udp,
                ("10.244.2.9", 40001),
                ("10.96.0.10", 53),
                ("10.244.1.1", 5353),
            ),
            None,
        ),
        (
            dnat(
                udp,
                ("10.244.2.9", 40002),
                ("10.96.0.10", 53),
                ("10.244.1.9", 5353),
            ),
            Some("endpoint-gone"),
        ),
        (
            dnat(
                udp,
                ("10.244.2.9", 40003),
                ("10.96.0.10", 53),
                ("10.244.1.2", 5353),
            ),
            Some("endpoint-not-serving"),
        ),
        (
            dnat(
                udp,
                ("10.244.2.9", 40004),
                ("10.96.0.10", 53),
                ("10.244.1.1", 53),
            ),
            Some("port-changed"),
        ),
        (
            dnat(
                udp,
                ("10.244.2.9", 40005),
                ("10.96.0.10", 53),
                ("10.96.0.10", 53),
            ),
            Some("not-dnated"),
        ),
        (
            dnat(
                udp,
                ("10.244.2.9", 40006),
                ("10.96.0.20", 514),
                ("10.244.1.7", 514),
            ),
            Some("no-endpoints"),
        ),
        // NodePort on this node's address is judged; on a foreign address it is not ours.
        (
            dnat(
                udp,
                ("192.168.50.7", 40007),
                ("192.168.77.1", 30053),
                ("10.244.1.9", 5353),
            ),
            Some("endpoint-gone"),
        ),
        (
            dnat(
                udp,
                ("192.168.50.7", 40008),
                ("192.168.99.1", 30053),
                ("10.244.1.9", 5353),
            ),
            None,
        ),
        (
            dnat(
                udp,
                ("192.168.50.7", 40009),
                ("192.168.77.1", 30053),
                ("10.244.1.1", 5353),
            ),
            None,
        ),
        // hostPort: the old pod's IP is stale, the current pod's is kept.
        (
            dnat(
                udp,
                ("192.168.50.7", 40010),
                ("192.168.77.1", 8125),
                ("10.244.1.40", 8125),
            ),
            Some("host-port-pod-gone"),
        ),
        (
            dnat(
                udp,
                ("192.168.50.7", 40011),
                ("192.168.77.1", 8125),
                ("10.244.1.50", 8125),
            ),
            None,
        ),
        // TCP is never touched, even to a gone backend.
        (
            dnat(
                proto::TCP,
                ("10.244.2.9", 40012),
                ("10.96.0.10", 53),
                ("10.244.1.9", 5353),
            ),
            None,
        ),
        // Unrelated UDP.
        (
            dnat(
                udp,
                ("10.244.2.9", 40013),
                ("10.0.0.1", 53),
                ("10.0.0.1", 53),
            ),
            None,
        ),
        // IPv6, another spelling of the ClusterIP included.
        (
            dnat(
                udp,
                ("fd00:10:244::9", 40014),
                ("fd00:10:96::a", 53),
                ("fd00:10:244::1", 5353),
            ),
            None,
        ),
        (
            dnat(
                udp,
                ("fd00:10:244::9", 40015),
                ("fd00:10:96:0:0:0:0:a", 53),
                ("fd00:10:244::99", 5353),
            ),
            Some("endpoint-gone"),
        ),
    ]
}

fn fill(ns: &TestNetns) -> Conntrack {
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&ns.path()), caps).unwrap();
    let flows: Vec<NewFlow> = table().into_iter().map(|(f, _)| f).collect();
    let report = ct.create(&flows).unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    ct
}

/// `check` on the fixture state and `ns`'s table.
fn check_command(ns: &TestNetns) -> Command {
    // `check --delete` refuses state files older than --state-max-age: the fixture stands for
    // a state dumped just now.
    std::fs::File::options()
        .write(true)
        .open(fixture())
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--log-format",
        "text",
        "check",
        "--state",
        &fixture(),
        "--node-name",
        "node-1",
    ]);
    cmd.args(["--netns", ns.path().to_str().unwrap()]);
    cmd
}

fn check(ns: &TestNetns, extra: &[&str]) -> serde_json::Value {
    let out = check_command(ns)
        .args(["-o", "json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn client_ports_by_reason(doc: &serde_json::Value) -> BTreeSet<(u64, String)> {
    doc["stale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["orig"]["sport"].as_u64().unwrap(),
                s["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expected() -> BTreeSet<(u64, String)> {
    table()
        .into_iter()
        .filter_map(|(f, r)| r.map(|r| (u64::from(f.orig.sport), r.to_owned())))
        .collect()
}

fn remaining_client_ports(ct: &mut Conntrack) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for family in Family::ALL {
        let filter = DumpFilter {
            family: Some(family),
            ..Default::default()
        };
        ct.dump(&filter, |f| {
            ports.insert(f.orig.sport);
        })
        .unwrap();
    }
    ports
}

#[test]
fn check_reports_every_stale_flow_with_its_reason() {
    if !root_or_skip("check_reports_every_stale_flow_with_its_reason") {
        return;
    }
    let ns = TestNetns::new("check").unwrap();
    let mut ct = fill(&ns);
    let doc = check(&ns, &[]);
    assert_eq!(client_ports_by_reason(&doc), expected(), "{doc:#}");
    let udp = table()
        .iter()
        .filter(|(f, _)| f.orig.proto == proto::UDP)
        .count() as u64;
    assert_eq!(
        doc["scanned"].as_u64(),
        Some(udp),
        "scanned counts the UDP flows"
    );
    assert_eq!(doc["deleted"].as_u64(), Some(0));
    let first = &doc["stale"][0];
    for field in [
        "family", "service", "port", "reason", "orig", "reply", "timeout",
    ] {
        assert!(!first[field].is_null(), "missing {field}: {first:#}");
    }
    // Without --delete nothing changes.
    assert_eq!(remaining_client_ports(&mut ct).len(), table().len());
}

/// `check -o json` on `ns` with `state`, with or without `--node-name`.
fn check_state(ns: &TestNetns, state: &Path, node: Option<&str>) -> serde_json::Value {
    let mut cmd = Command::new(BIN);
    cmd.args(["--log-format", "text", "check", "-o", "json", "--state"])
        .arg(state)
        .arg("--netns")
        .arg(ns.path());
    if let Some(node) = node {
        cmd.args(["--node-name", node]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn check_reads_a_json_state_as_it_reads_the_yaml_one() {
    if !root_or_skip("check_reads_a_json_state_as_it_reads_the_yaml_one") {
        return;
    }
    let ns = TestNetns::new("checkjson").unwrap();
    let _ct = fill(&ns);
    // The fixture as `kubectl get -o json` prints it (JSON has its own, streaming, reader).
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("state.json");
    let value: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(fixture()).unwrap()).unwrap();
    std::fs::write(&json, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    let yaml = Path::new(&fixture()).to_owned();
    // Without --node-name, the node is the state's only Node (node-1): its address takes
    // NodePorts and its pod's host port is judged, though the state is read before the node
    // is known.
    for (state, node) in [(&json, Some("node-1")), (&yaml, None), (&json, None)] {
        let doc = check_state(&ns, state, node);
        assert_eq!(
            client_ports_by_reason(&doc),
            expected(),
            "{state:?} {node:?}: {doc:#}"
        );
        // Both families come from one walk: each flow is labelled with its own.
        for stale in doc["stale"].as_array().unwrap() {
            let src: std::net::IpAddr = stale["orig"]["src"].as_str().unwrap().parse().unwrap();
            let family = if src.is_ipv4() { "ipv4" } else { "ipv6" };
            assert_eq!(stale["family"], family, "{stale:#}");
        }
    }
}

#[test]
fn check_delete_removes_exactly_the_reported_flows() {
    if !root_or_skip("check_delete_removes_exactly_the_reported_flows") {
        return;
    }
    let ns = TestNetns::new("checkdel").unwrap();
    let mut ct = fill(&ns);
    let doc = check(&ns, &["--delete"]);
    let stale = expected();
    assert_eq!(doc["deleted"].as_u64(), Some(stale.len() as u64), "{doc:#}");
    let kept: BTreeSet<u16> = table()
        .into_iter()
        .filter(|(_, r)| r.is_none())
        .map(|(f, _)| f.orig.sport)
        .collect();
    assert_eq!(remaining_client_ports(&mut ct), kept);
    // A second run finds nothing left.
    let again = check(&ns, &[]);
    assert!(again["stale"].as_array().unwrap().is_empty(), "{again:#}");
}

#[test]
fn check_text_output_names_service_and_reason() {
    if !root_or_skip("check_text_output_names_service_and_reason") {
        return;
    }
    let ns = TestNetns::new("checktxt").unwrap();
    let _ct = fill(&ns);
    let out = check_command(&ns).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("SERVICE"), "{text}");
    assert!(text.contains("kube-system/dns"), "{text}");
    assert!(text.contains("logging/syslog"), "{text}");
    assert!(text.contains("host-port-pod-gone"), "{text}");
    let summary = text.lines().last().unwrap();
    assert!(
        summary.starts_with("scanned 14 UDP flows: 8 stale"),
        "{summary}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ConfigMap"),
        "skipped kinds are warned about"
    );
}

#[test]
fn check_bad_input_fails_clearly_and_deletes_nothing() {
    if !root_or_skip("check_bad_input_fails_clearly_and_deletes_nothing") {
        return;
    }
    let ns = TestNetns::new("checkbad").unwrap();
    let mut ct = fill(&ns);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("broken.yaml", "items: [\n", "broken.yaml"),
        (
            "badsvc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec: {ports: [{port: x}]}\n",
            "Service n/s",
        ),
    ];
    for (name, text, must_mention) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args([
                "check",
                "--state",
                path.to_str().unwrap(),
                "--netns",
                ns.path().to_str().unwrap(),
                "--delete",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(must_mention), "{name}: {stderr}");
        assert_eq!(
            stderr
                .trim()
                .lines()
                .filter(|l| l.starts_with("error"))
                .count(),
            1,
            "one-line error: {stderr}"
        );
    }
    assert_eq!(
        remaining_client_ports(&mut ct).len(),
        table().len(),
        "nothing deleted"
    );
}

// ---- `check --state … --delete` refuses incomplete or ambiguous state (issue 14, item 5) ----
//
// Each state below, run with `--delete` on the old code, was read without error and deleted the
// healthy flow 10.244.2.9:40001 → 10.96.0.10:53 → 10.244.1.1:5353 (or others). Now each must be
// refused with one error line naming the problem, and the table must stay untouched.

/// Single-stack `kube-system/dns`, with a selector: the EndpointSlice controller gives it slices.
const DNS_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  selector: {k8s-app: dns}
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
";

/// A `kube-system/dns` slice named `name` with one serving endpoint `address`; `replace` edits
/// its text (pairs of from → to) to make it bad in one way.
fn dns_slice(name: &str, address: &str, replace: &[(&str, &str)]) -> String {
    let mut text = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: kube-system
  labels: {{kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints:
- addresses: [{address}]
  conditions: {{ready: true, serving: true}}
ports: [{{name: dns, port: 5353, protocol: UDP}}]
"
    );
    for (from, to) in replace {
        assert!(text.contains(from), "{from} not in {text}");
        text = text.replace(from, to);
    }
    text
}

/// Runs `check --delete` on `files` (name, content) and asserts it fails with one error line
/// containing every one of `must_mention`, and that nothing was deleted.
fn assert_refused(test: &str, files: &[(&str, String)], must_mention: &[&str]) {
    if !root_or_skip(test) {
        return;
    }
    let ns = TestNetns::new("checkref").unwrap();
    let mut ct = fill(&ns);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["--log-format", "text", "check", "--node-name", "node-1"]);
    cmd.args(["--netns", ns.path().to_str().unwrap(), "--delete"]);
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        cmd.arg("--state").arg(&path);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{test}: must be refused\nstdout: {stdout}\nstderr: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{test}: one error line: {stderr}");
    for word in must_mention {
        assert!(
            errors[0].contains(word),
            "{test}: {word:?} not in {}",
            errors[0]
        );
    }
    assert_eq!(
        remaining_client_ports(&mut ct).len(),
        table().len(),
        "{test}: nothing deleted"
    );
}

#[test]
fn check_delete_refuses_v1_endpoints_instead_of_slices() {
    // `kubectl get svc,ep -A -o yaml`: the Endpoints were skipped, the Service judged as having
    // no endpoints at all.
    let endpoints = "apiVersion: v1
kind: Endpoints
metadata: {name: dns, namespace: kube-system}
subsets:
- addresses: [{ip: 10.244.1.1}]
  ports: [{name: dns, port: 5353, protocol: UDP}]
";
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}{}",
        indent_item(DNS_SERVICE),
        indent_item(endpoints)
    );
    assert_refused(
        "check_delete_refuses_v1_endpoints_instead_of_slices",
        &[("state.yaml", list)],
        &[
            "Endpoints kube-system/dns",
            "endpointslices.discovery.k8s.io",
        ],
    );
}

/// One object as a `- ` item of a List's `items`.
fn indent_item(object: &str) -> String {
    let mut out = String::new();
    for (i, line) in object.lines().enumerate() {
        out.push_str(if i == 0 { "- " } else { "  " });
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn check_delete_refuses_v1beta1_slices() {
    let slice = dns_slice(
        "dns-v4",
        "10.244.1.1",
        &[("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1")],
    );
    assert_refused(
        "check_delete_refuses_v1beta1_slices",
        &[("state.yaml", format!("{DNS_SERVICE}---\n{slice}"))],
        &["v1beta1", "endpointslices.discovery.k8s.io"],
    );
}

#[test]
fn check_delete_refuses_a_service_without_any_slice() {
    // `kubectl get svc -A -o yaml` alone: every flow to the Service looked endpoint-less.
    assert_refused(
        "check_delete_refuses_a_service_without_any_slice",
        &[("services.yaml", DNS_SERVICE.to_owned())],
        &[
            "Service kube-system/dns",
            "no IPv4 EndpointSlice",
            "kubectl get",
        ],
    );
}

#[test]
fn check_delete_refuses_concatenated_json_documents() {
    // The slice in the second document was dropped silently.
    let service = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"dns","namespace":"kube-system"},"spec":{"selector":{"k8s-app":"dns"},"clusterIP":"10.96.0.10","clusterIPs":["10.96.0.10"],"ports":[{"name":"dns","port":53,"protocol":"UDP","targetPort":5353}]}}"#;
    let slice = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"dns-v4","namespace":"kube-system","labels":{"kubernetes.io/service-name":"dns"}},"addressType":"IPv4","endpoints":[{"addresses":["10.244.1.1"],"conditions":{"ready":true}}],"ports":[{"name":"dns","port":5353,"protocol":"UDP"}]}"#;
    assert_refused(
        "check_delete_refuses_concatenated_json_documents",
        &[("state.json", format!("{service}\n{slice}\n"))],
        &["state.json", "trailing"],
    );
}

#[test]
fn check_delete_refuses_conflicting_duplicates() {
    // Two snapshots of the same slice: which one is true is unknown (the last one won).
    assert_refused(
        "check_delete_refuses_conflicting_duplicates",
        &[
            (
                "a.yaml",
                format!(
                    "{DNS_SERVICE}---\n{}",
                    dns_slice("dns-v4", "10.244.1.1", &[])
                ),
            ),
            ("b.yaml", dns_slice("dns-v4", "10.244.1.9", &[])),
        ],
        &["EndpointSlice kube-system/dns-v4", "twice"],
    );
}

#[test]
fn check_delete_refuses_a_slice_without_address_type() {
    let slice = dns_slice("dns-v4", "10.244.1.1", &[("addressType: IPv4\n", "")]);
    assert_refused(
        "check_delete_refuses_a_slice_without_address_type",
        &[("state.yaml", format!("{DNS_SERVICE}---\n{slice}"))],
        &["EndpointSlice kube-system/dns-v4", "addressType"],
    );
}

#[test]
fn check_delete_refuses_a_slice_without_service_name_label() {
    let slice = dns_slice(
        "dns-v4",
        "10.244.1.1",
        &[("  labels: {kubernetes.io/service-name: dns}\n", "")],
    );
    assert_refused(
        "check_delete_refuses_a_slice_without_service_name_label",
        &[("state.yaml", format!("{DNS_SERVICE}---\n{slice}"))],
        &[
            "EndpointSlice kube-system/dns-v4",
            "kubernetes.io/service-name",
        ],
    );
}

#[test]
fn check_delete_refuses_an_out_of_range_port() {
    // The slice port was skipped with a warning, then every flow judged `port-changed`.
    let slice = dns_slice("dns-v4", "10.244.1.1", &[("port: 5353", "port: 70000")]);
    assert_refused(
        "check_delete_refuses_an_out_of_range_port",
        &[("state.yaml", format!("{DNS_SERVICE}---\n{slice}"))],
        &["EndpointSlice kube-system/dns-v4", "70000"],
    );
}

#[test]
fn check_delete_refuses_a_lowercase_protocol() {
    // `udp` is no protocol of the API: the port was taken for a TCP one and the flows judged.
    let slice = dns_slice(
        "dns-v4",
        "10.244.1.1",
        &[("protocol: UDP", "protocol: udp")],
    );
    assert_refused(
        "check_delete_refuses_a_lowercase_protocol",
        &[("state.yaml", format!("{DNS_SERVICE}---\n{slice}"))],
        &["EndpointSlice kube-system/dns-v4", "\"udp\""],
    );
}

#[test]
fn check_report_on_incomplete_state_warns_instead_of_refusing() {
    // Read-only: the report runs, and says why its verdicts on that Service cannot be trusted.
    if !root_or_skip("check_report_on_incomplete_state_warns_instead_of_refusing") {
        return;
    }
    let ns = TestNetns::new("checkwarn").unwrap();
    let mut ct = fill(&ns);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.yaml");
    std::fs::write(&path, DNS_SERVICE).unwrap();
    let out = Command::new(BIN)
        .args(["--log-format", "text", "check", "--node-name", "node-1"])
        .args(["--netns", ns.path().to_str().unwrap()])
        .arg("--state")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Service kube-system/dns has UDP ports but no IPv4 EndpointSlice")
            && stderr.contains("--delete` refuses"),
        "{stderr}"
    );
    assert_eq!(remaining_client_ports(&mut ct).len(), table().len());
}

#[test]
fn check_delete_refuses_an_old_snapshot() {
    if !root_or_skip("check_delete_refuses_an_old_snapshot") {
        return;
    }
    let ns = TestNetns::new("checkold").unwrap();
    let mut ct = fill(&ns);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    std::fs::copy(fixture(), &path).unwrap();
    let ten_minutes_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(ten_minutes_ago))
        .unwrap();
    let out = Command::new(BIN)
        .args([
            "--log-format",
            "text",
            "check",
            "--node-name",
            "node-1",
            "--state",
        ])
        .arg(&path)
        .args(["--netns", ns.path().to_str().unwrap(), "--delete"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("old snapshot"), "{stderr}");
    assert_eq!(
        remaining_client_ports(&mut ct).len(),
        table().len(),
        "nothing deleted"
    );
}
