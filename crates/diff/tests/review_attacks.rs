//! Reviewer's attacks: inputs for which the engine judges a flow kube-proxy never DNATs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Instant;

use common::*;
use ctdiff::{Evidence, Verdict};

/// kube-proxy's Service and EndpointSlice informers share one label selector,
/// `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`
/// (cmd/kube-proxy/app/server.go): a Service that carries the `headless` label gets no rule at
/// all, whatever its ClusterIP. The EndpointSlice controller treats that label as reserved and
/// does not copy it to the Service's slices (it sets it only for clusterIP None), so the agent
/// sees serving backends. A flow to the Service's ExternalIP — any outside address a namespace
/// user picks — is then judged NotDnated with Removed evidence: deletable at once, on every
/// node, although kube-proxy never touches it.
#[test]
fn a_service_labelled_headless_is_not_proxied_so_its_addresses_are_not_judged() {
    let now = Instant::now();
    let svc = with_label(
        with_external_ips(
            mk_service(
                "ns",
                "evil",
                &["10.96.0.80"],
                vec![udp_np("dns", 53, 30080)],
            ),
            &["8.8.8.8"],
        ),
        ctdiff::LABEL_HEADLESS,
        "",
    );
    let slice = mk_slice(
        "ns",
        "evil-1",
        "evil",
        &[("dns", 5353)],
        vec![ep("10.244.1.5")],
    );
    let index = mk_index(&[svc], &[slice], &[], &["192.168.1.10"], now);
    // A pod's ordinary DNS flow to 8.8.8.8 (not DNATed: kube-proxy has no rule for it).
    for dst in ["8.8.8.8:53", "10.96.0.80:53", "192.168.1.10:30080"] {
        let verdict = index.classify(&flow(dst, dst), now);
        if let Verdict::Stale(stale) = &verdict {
            assert_ne!(
                stale.evidence,
                Evidence::Removed,
                "{dst}: deletable at once: {verdict:?}"
            );
        }
        assert_eq!(verdict, Verdict::Unrelated, "{dst}");
    }
}

/// kube-proxy never DNATs a NodePort on `::1` (iptables: the nodeports rule carries
/// `! -d ::1/128` for IPv6 whatever `--iptables-localhost-nodeports` says; it "never works").
/// The agent takes every interface address as a node address (getifaddrs: `::1` included), so
/// a host process's flow to `[::1]:NODEPORT` — a local listener on that port, not Service
/// traffic — is judged NotDnated with Removed evidence once the Service has a serving backend:
/// deletable at once.
#[test]
fn a_nodeport_on_ipv6_loopback_is_not_service_traffic() {
    let now = Instant::now();
    let svc = with_ip_families(
        mk_service(
            "kube-system",
            "dns",
            &["10.96.0.10", "fd00:96::10"],
            vec![udp_np("dns", 53, 30053)],
        ),
        &["IPv4", "IPv6"],
    );
    let slice = mk_slice(
        "kube-system",
        "dns-v6",
        "dns",
        &[("dns", 5353)],
        vec![ep("fd00:244::5")],
    );
    let mut index = mk_index(&[svc], &[slice], &[], &["192.168.1.10", "fd00:1::10"], now);
    // What the agent's local-address loop hands in: every interface address.
    index.set_local_addrs(
        ["127.0.0.1", "::1", "192.168.1.10", "fd00:1::10"].map(|a| a.parse().unwrap()),
    );
    let dst = "[::1]:30053";
    let verdict = index.classify(&flow(dst, dst), now);
    assert_eq!(verdict, Verdict::Unrelated, "{dst}");
}
