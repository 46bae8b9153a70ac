//! `conntrack-reconciler check` against a real namespace's conntrack table (root).
//!
//! The table is filled with hand-made entries covering every verdict a static state can give;
//! `check` must report exactly the stale ones, with the right reasons, and `--delete` must remove
//! exactly those and nothing else.

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
    let mut ct = Conntrack::open_in(&ns.path()).unwrap();
    let flows: Vec<NewFlow> = table().into_iter().map(|(f, _)| f).collect();
    let report = ct.create(&flows).unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    ct
}

/// `check` on the fixture state and `ns`'s table.
fn check_command(ns: &TestNetns) -> Command {
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
