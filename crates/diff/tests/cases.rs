//! One named test per upstream bug and per edge case of the kube-proxy reconciler notes, plus
//! the extra cases of the ctdiff issue.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use std::time::{Duration, Instant};

use common::*;
use ctdiff::k8s_openapi::api::core::v1::{Pod, Service};
use ctdiff::k8s_openapi::api::discovery::v1::EndpointSlice;
use ctdiff::{FlowRef, Frontend, Index, IndexConfig, Reason, SkipReason, Verdict};

const NODE_IP: &str = "192.168.1.10";

fn reason(index: &Index, f: FlowRef, now: Instant) -> Option<Reason> {
    index.classify(&f, now).reason()
}

#[track_caller]
fn assert_keep(index: &Index, f: FlowRef, now: Instant) {
    assert_eq!(index.classify(&f, now), Verdict::Keep, "{f:?}");
}

#[track_caller]
fn assert_unrelated(index: &Index, f: FlowRef, now: Instant) {
    assert_eq!(index.classify(&f, now), Verdict::Unrelated, "{f:?}");
}

#[track_caller]
fn assert_stale(index: &Index, f: FlowRef, now: Instant, want: Reason) {
    assert_eq!(
        reason(index, f, now),
        Some(want),
        "{f:?}: {:?}",
        index.classify(&f, now)
    );
}

/// `dns` in `kube-system`: ClusterIP 10.96.0.10, UDP port "dns" 53 → 5353, NodePort 30053.
fn dns_service() -> Service {
    mk_service(
        "kube-system",
        "dns",
        &["10.96.0.10"],
        vec![udp_np("dns", 53, 30053)],
    )
}

/// `dns_service` with a ClusterIP of each family: its NodePort is on both families.
fn dual_stack_dns_service() -> Service {
    mk_service(
        "kube-system",
        "dns",
        &["10.96.0.10", "fd00:96::10"],
        vec![udp_np("dns", 53, 30053)],
    )
}

fn dns_slice(endpoints: Vec<ctdiff::k8s_openapi::api::discovery::v1::Endpoint>) -> EndpointSlice {
    mk_slice("kube-system", "dns-abc", "dns", &[("dns", 5353)], endpoints)
}

fn dns_index(
    endpoints: Vec<ctdiff::k8s_openapi::api::discovery::v1::Endpoint>,
    now: Instant,
) -> Index {
    mk_index(
        &[dns_service()],
        &[dns_slice(endpoints)],
        &[],
        &[NODE_IP],
        now,
    )
}

// ---- the upstream bugs table ----

#[test]
fn bug_129982_130170_external_and_lb_ips_match_by_ip_and_port_not_ip_alone() {
    let now = Instant::now();
    let svc = with_lb(
        with_external_ips(dns_service(), &["203.0.113.7"]),
        &[("198.51.100.9", None)],
    );
    let index = mk_index(
        &[svc],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[],
        &[NODE_IP],
        now,
    );
    // VXLAN and any other UDP traffic to the same IPs on other ports is not service traffic.
    assert_unrelated(&index, flow("203.0.113.7:8472", "203.0.113.7:8472"), now);
    assert_unrelated(&index, flow("198.51.100.9:8472", "10.0.0.99:8472"), now);
    assert_unrelated(&index, flow("203.0.113.7:123", "203.0.113.7:123"), now);
    // The service port on those IPs is judged.
    assert_keep(&index, flow("203.0.113.7:53", "10.244.1.5:5353"), now);
    assert_keep(&index, flow("198.51.100.9:53", "10.244.1.5:5353"), now);
    assert_stale(
        &index,
        flow("203.0.113.7:53", "10.244.9.9:5353"),
        now,
        Reason::EndpointGone,
    );
}

#[test]
fn bug_130542_target_port_change_makes_old_flows_stale() {
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    let old = flow("10.96.0.10:53", "10.244.1.5:5353");
    assert_keep(&index, old, now);
    let _ = index.apply(
        &mk_slice(
            "kube-system",
            "dns-abc",
            "dns",
            &[("dns", 5354)],
            vec![ep("10.244.1.5")],
        ),
        now,
    );
    assert_stale(&index, old, now, Reason::PortChanged);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5354"), now);
}

#[test]
fn bug_135323_135511_large_index_classifies_without_scanning() {
    // 2,000 services: a per-flow scan would still pass a functional test, so this checks that
    // a flow to the last service resolves to its own port and that unrelated flows are cheap
    // misses; allocation-freedom is checked in tests/no_alloc.rs and speed by the benchmark.
    let now = Instant::now();
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..2000u32 {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        services.push(mk_service(
            "ns",
            &format!("s{i}"),
            &[&ip],
            vec![udp("p", 53)],
        ));
        slices.push(mk_slice(
            "ns",
            &format!("s{i}-x"),
            &format!("s{i}"),
            &[("p", 8053)],
            vec![ep(&format!("10.244.{}.{}", i / 250, i % 250 + 1))],
        ));
    }
    let index = mk_index(&services, &slices, &[], &[NODE_IP], now);
    assert_eq!(index.stats().service_ports, 2000);
    assert_keep(&index, flow("10.96.7.250:53", "10.244.7.250:8053"), now);
    match index.classify(&flow("10.96.7.250:53", "10.244.0.1:8053"), now) {
        Verdict::Stale(stale) => {
            assert_eq!(stale.service.to_string(), "ns/s1999");
            assert_eq!(stale.reason, Reason::EndpointGone);
        }
        other => panic!("{other:?}"),
    }
    assert_unrelated(&index, flow("10.96.7.250:54", "10.244.7.250:8053"), now);
}

#[test]
fn bug_139628_139629_zero_serving_endpoints_make_every_flow_stale() {
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    let statsd = flow("10.96.0.10:53", "10.244.1.5:5353");
    assert_keep(&index, statsd, now);
    let _ = index.apply(&dns_slice(vec![]), now);
    assert_stale(&index, statsd, now, Reason::NoEndpoints);
    // Also when the only endpoint is still listed but not serving.
    let _ = index.apply(
        &dns_slice(vec![ep_cond("10.244.1.5", Some(false), Some(false), None)]),
        now,
    );
    assert_stale(&index, statsd, now, Reason::NoEndpoints);
}

#[test]
fn bug_141275_141371_deleted_service_flows_are_stale_until_the_ttl() {
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    let _ = index.delete(&dns_service(), now);
    let f = flow("10.96.0.10:53", "10.244.1.5:5353");
    assert_stale(&index, f, now, Reason::ServiceDeleted);
    assert_stale(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.1.5:5353"),
        now,
        Reason::ServiceDeleted,
    );
    let later = now + Duration::from_secs(5 * 60);
    assert_unrelated(&index, f, later);
}

#[test]
fn bug_122740_restart_keeps_healthy_flows() {
    // A restart is a fresh index built from a full list: healthy flows must be kept.
    let now = Instant::now();
    let index = dns_index(vec![ep("10.244.1.5"), ep("10.244.2.6")], now);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.2.6:5353"), now);
    assert_keep(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.2.6:5353"),
        now,
    );
}

#[test]
fn bug_125467_127780_serving_to_not_serving_is_a_removal() {
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5"), ep("10.244.2.6")], now);
    let f = flow("10.96.0.10:53", "10.244.1.5:5353");
    assert_keep(&index, f, now);
    let _ = index.apply(
        &dns_slice(vec![
            ep_cond("10.244.1.5", Some(false), Some(false), Some(false)),
            ep("10.244.2.6"),
        ]),
        now,
    );
    assert_stale(&index, f, now, Reason::EndpointNotServing);
}

#[test]
fn bug_137986_terminating_but_serving_endpoints_are_kept_and_opt_out_protects_sip() {
    let now = Instant::now();
    let terminating = ep_cond("10.244.1.5", Some(false), Some(true), Some(true));
    let index = dns_index(vec![terminating.clone()], now);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
    // A SIP service that sheds load by going not-serving can opt out entirely.
    let sip = with_annotation(dns_service(), "conntrack-reconciler/skip", "true");
    let not_serving = ep_cond("10.244.1.5", Some(false), Some(false), Some(false));
    let index = mk_index(
        &[sip],
        &[dns_slice(vec![not_serving])],
        &[],
        &[NODE_IP],
        now,
    );
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
}

#[test]
fn bug_49881_nodeport_to_a_foreign_address_is_unrelated() {
    let now = Instant::now();
    let index = dns_index(vec![ep("10.244.1.5")], now);
    // Another host's IP with the NodePort number: not DNATed here, not ours to judge.
    assert_unrelated(&index, flow("192.168.1.99:30053", "10.99.0.1:4444"), now);
    assert_unrelated(&index, flow("8.8.8.8:30053", "8.8.8.8:30053"), now);
    // This node's address is judged.
    assert_stale(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.99.0.1:4444"),
        now,
        Reason::EndpointGone,
    );
    assert_keep(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.1.5:5353"),
        now,
    );
}

// ---- edge cases of the notes ----

#[test]
fn edge_udp_only_tcp_sctp_icmp_are_unrelated() {
    let now = Instant::now();
    let index = dns_index(vec![ep("10.244.1.5")], now);
    for proto in [6u8, 132, 1, 58, 0, 255] {
        let f = FlowRef {
            proto,
            orig_dst: sock("10.96.0.10:53"),
            reply_src: sock("10.244.9.9:5353"),
        };
        assert_unrelated(&index, f, now);
    }
    // A TCP port of the same service is no UDP frontend either.
    let svc = mk_service(
        "ns",
        "mixed",
        &["10.96.0.20"],
        vec![port("TCP", "t", 80, None), port("SCTP", "s", 81, None)],
    );
    let index = mk_index(&[svc], &[], &[], &[NODE_IP], now);
    assert_unrelated(&index, flow("10.96.0.20:80", "10.96.0.20:80"), now);
    assert_eq!(index.stats().service_ports, 0);
}

#[test]
fn edge_dual_stack_service_has_one_cluster_ip_per_family() {
    let now = Instant::now();
    let svc = mk_service(
        "ns",
        "ds",
        &["10.96.0.30", "fd00:10:96::30"],
        vec![udp("", 53)],
    );
    let v4 = mk_slice("ns", "ds-v4", "ds", &[("", 5353)], vec![ep("10.244.1.5")]);
    let v6 = mk_slice(
        "ns",
        "ds-v6",
        "ds",
        &[("", 5353)],
        vec![ep("fd00:10:244::5")],
    );
    let index = mk_index(&[svc], &[v4, v6], &[], &[NODE_IP], now);
    assert_keep(&index, flow("10.96.0.30:53", "10.244.1.5:5353"), now);
    assert_keep(
        &index,
        flow("[fd00:10:96::30]:53", "[fd00:10:244::5]:5353"),
        now,
    );
    assert_stale(
        &index,
        flow("[fd00:10:96::30]:53", "[fd00:10:244::6]:5353"),
        now,
        Reason::EndpointGone,
    );
    assert_stale(
        &index,
        flow("10.96.0.30:53", "10.244.1.6:5353"),
        now,
        Reason::EndpointGone,
    );
    assert_eq!(index.stats().frontends, 2);
}

#[test]
fn edge_full_tuple_a_backend_of_one_port_is_not_allowed_for_another() {
    let now = Instant::now();
    let svc = mk_service(
        "ns",
        "multi",
        &["10.96.0.40"],
        vec![udp("a", 1000), udp("b", 2000)],
    );
    let slice = mk_slice(
        "ns",
        "multi-1",
        "multi",
        &[("a", 1001), ("b", 2001)],
        vec![ep("10.244.1.5")],
    );
    let index = mk_index(&[svc], &[slice], &[], &[NODE_IP], now);
    assert_keep(&index, flow("10.96.0.40:1000", "10.244.1.5:1001"), now);
    assert_keep(&index, flow("10.96.0.40:2000", "10.244.1.5:2001"), now);
    // Port a's backend answering on port b's frontend: the tuple does not match.
    assert_stale(
        &index,
        flow("10.96.0.40:2000", "10.244.1.5:1001"),
        now,
        Reason::PortChanged,
    );
    assert_stale(
        &index,
        flow("10.96.0.40:1000", "10.244.1.5:2001"),
        now,
        Reason::PortChanged,
    );
}

#[test]
fn edge_nodeport_on_this_nodes_addresses_including_local_interfaces() {
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    let f = flow("10.0.5.5:30053", "10.99.0.1:4444");
    assert_unrelated(&index, f, now);
    index.set_local_addrs(["10.0.5.5".parse().unwrap(), "127.0.0.1".parse().unwrap()]);
    assert_stale(&index, f, now, Reason::EndpointGone);
    assert_keep(&index, flow("127.0.0.1:30053", "10.244.1.5:5353"), now);
    // On IPv4 loopback only a DNATed flow is service traffic (iptables mode DNATs NodePorts
    // there, nftables mode does not): a host process's own flow is left alone.
    assert_stale(
        &index,
        flow("127.0.0.1:30053", "10.99.0.1:4444"),
        now,
        Reason::EndpointGone,
    );
    assert_unrelated(&index, flow("127.0.0.1:30053", "127.0.0.1:30053"), now);
    let _ = index.take_dirty();
    index.set_local_addrs(["10.0.5.6".parse().unwrap()]);
    let dirty = index.take_dirty();
    assert!(
        !dirty.all && dirty.covers(&f) && !dirty.covers(&flow("10.96.0.10:53", "10.244.1.5:5353")),
        "a change of node addresses dirties the NodePorts, not everything: {dirty:?}"
    );
}

#[test]
fn edge_host_network_endpoints_match_node_ip_and_target_port() {
    let now = Instant::now();
    let index = dns_index(vec![ep(NODE_IP), ep("192.168.1.11")], now);
    assert_keep(
        &index,
        flow("10.96.0.10:53", &format!("{NODE_IP}:5353")),
        now,
    );
    assert_keep(
        &index,
        flow(&format!("{NODE_IP}:30053"), &format!("{NODE_IP}:5353")),
        now,
    );
    assert_keep(
        &index,
        flow(&format!("{NODE_IP}:30053"), "192.168.1.11:5353"),
        now,
    );
    assert_stale(
        &index,
        flow("10.96.0.10:53", &format!("{NODE_IP}:53")),
        now,
        Reason::PortChanged,
    );
}

#[test]
fn edge_ipv6_spellings_compare_as_parsed_addresses() {
    let now = Instant::now();
    let svc = mk_service("ns", "v6", &["FD00:10:96:0:0:0:0:A"], vec![udp("", 53)]);
    let slice = mk_slice(
        "ns",
        "v6-1",
        "v6",
        &[("", 5353)],
        vec![ep("fd00:10:244:0000::0005")],
    );
    let index = mk_index(&[svc], &[slice], &[], &[NODE_IP], now);
    assert_keep(
        &index,
        flow("[fd00:10:96::a]:53", "[fd00:10:244::5]:5353"),
        now,
    );
    assert_stale(
        &index,
        flow("[fd00:10:96::a]:53", "[fd00:10:244::50]:5353"),
        now,
        Reason::EndpointGone,
    );
}

#[test]
fn edge_ipv4_mapped_and_leading_zero_spellings_compare_equal() {
    let now = Instant::now();
    let svc = mk_service("ns", "v4", &["010.096.000.011"], vec![udp("", 53)]);
    let mut slice = mk_slice(
        "ns",
        "v4-1",
        "v4",
        &[("", 5353)],
        vec![ep("::ffff:10.244.1.5")],
    );
    slice.address_type = "IPv6".into();
    let index = mk_index(&[svc], &[slice], &[], &[NODE_IP], now);
    assert_keep(&index, flow("10.96.0.11:53", "10.244.1.5:5353"), now);
    assert_keep(
        &index,
        flow("[::ffff:10.96.0.11]:53", "[::ffff:10.244.1.5]:5353"),
        now,
    );
}

#[test]
fn edge_half_listed_cache_never_deletes() {
    let now = Instant::now();
    let mut index = Index::new(IndexConfig::new(NODE));
    // The service watch has listed, the slice watch not yet: the service looks endpoint-less.
    let _ = index.reset([&dns_service()], now);
    let f = flow("10.96.0.10:53", "10.244.1.5:5353");
    assert_keep(&index, f, now);
    assert!(!index.services_complete());
    let _ = index.reset([&dns_slice(vec![ep("10.244.9.9")])], now);
    assert!(index.services_complete());
    assert_stale(&index, f, now, Reason::EndpointGone);
    // Host ports wait for the pod list.
    let pod = mk_pod(
        "ns",
        "hp",
        NODE,
        &["10.244.1.7"],
        &[(Some(NODE_IP), 5060, 5060)],
    );
    let _ = index.apply(&pod, now);
    let hp = flow(&format!("{NODE_IP}:5060"), "10.244.3.3:5060");
    assert_keep(&index, hp, now);
    let _ = index.reset([&pod], now);
    assert_stale(&index, hp, now, Reason::HostPortPodGone);
}

#[test]
fn edge_rules_lag_a_recreated_flow_through_old_rules_is_caught_again() {
    // The controller can see a slice change before kube-proxy rewrote its rules; the kernel may
    // re-create the flow through the old rules after it was deleted. Verdicts are stateless, so
    // the re-created flow is still stale, and the frontend stays in the dirty set until taken.
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5"), ep("10.244.2.6")], now);
    let _ = index.take_dirty();
    let _ = index.apply(&dns_slice(vec![ep("10.244.2.6")]), now);
    let f = flow("10.96.0.10:53", "10.244.1.5:5353");
    assert_stale(&index, f, now, Reason::EndpointGone);
    let dirty = index.take_dirty();
    assert!(dirty.covers(&f) && dirty.matcher().covers(&f));
    // …deleted by the pass, re-created by the old rules, judged again on a later pass.
    assert_stale(
        &index,
        f,
        now + Duration::from_secs(1),
        Reason::EndpointGone,
    );
}

#[test]
fn edge_not_dnated_flow_created_without_endpoints_is_stale() {
    let now = Instant::now();
    let index = dns_index(vec![ep("10.244.1.5")], now);
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.96.0.10:53"),
        now,
        Reason::NotDnated,
    );
    let np = format!("{NODE_IP}:30053");
    assert_stale(&index, flow(&np, &np), now, Reason::NotDnated);
}

// ---- extra cases of the issue ----

#[test]
fn two_slices_are_merged() {
    let now = Instant::now();
    let a = mk_slice(
        "kube-system",
        "dns-a",
        "dns",
        &[("dns", 5353)],
        vec![ep("10.244.1.5")],
    );
    let b = mk_slice(
        "kube-system",
        "dns-b",
        "dns",
        &[("dns", 5353)],
        vec![ep("10.244.2.6")],
    );
    let mut index = mk_index(&[dns_service()], &[a, b.clone()], &[], &[NODE_IP], now);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.2.6:5353"), now);
    let _ = index.delete(&b, now);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.2.6:5353"),
        now,
        Reason::EndpointGone,
    );
}

#[test]
fn the_same_endpoint_in_two_slices_serves_if_either_says_so() {
    // During slice rebalancing an endpoint can appear twice.
    let now = Instant::now();
    let a = mk_slice(
        "kube-system",
        "dns-a",
        "dns",
        &[("dns", 5353)],
        vec![ep_cond("10.244.1.5", Some(false), Some(false), None)],
    );
    let b = mk_slice(
        "kube-system",
        "dns-b",
        "dns",
        &[("dns", 5353)],
        vec![ep("10.244.1.5")],
    );
    let index = mk_index(&[dns_service()], &[a, b], &[], &[NODE_IP], now);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
}

#[test]
fn two_ports_are_matched_by_name_not_position() {
    let now = Instant::now();
    let svc = mk_service(
        "ns",
        "sip",
        &["10.96.0.50"],
        vec![udp("sip", 5060), udp("rtp", 10000)],
    );
    // The slice lists the ports in the other order.
    let slice = mk_slice(
        "ns",
        "sip-1",
        "sip",
        &[("rtp", 20000), ("sip", 15060)],
        vec![ep("10.244.1.5")],
    );
    let index = mk_index(&[svc], &[slice], &[], &[NODE_IP], now);
    assert_keep(&index, flow("10.96.0.50:5060", "10.244.1.5:15060"), now);
    assert_keep(&index, flow("10.96.0.50:10000", "10.244.1.5:20000"), now);
    match index.classify(&flow("10.96.0.50:5060", "10.244.9.9:15060"), now) {
        Verdict::Stale(stale) => assert_eq!(
            (stale.port, stale.service.to_string().as_str()),
            ("sip", "ns/sip")
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_tcp_slice_port_with_the_same_name_is_not_used() {
    let now = Instant::now();
    let mut slice = dns_slice(vec![ep("10.244.1.5")]);
    slice.ports.as_mut().unwrap()[0].protocol = Some("TCP".into());
    let index = mk_index(&[dns_service()], &[slice], &[], &[NODE_IP], now);
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.1.5:5353"),
        now,
        Reason::NoEndpoints,
    );
}

#[test]
fn opt_out_annotation_keeps_every_flow_and_leaves_no_tombstone() {
    let now = Instant::now();
    let svc = with_annotation(dns_service(), ctdiff::ANNOTATION_SKIP, "true");
    let mut index = mk_index(
        std::slice::from_ref(&svc),
        &[dns_slice(vec![])],
        &[],
        &[NODE_IP],
        now,
    );
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
    assert_keep(&index, flow("10.96.0.10:53", "10.96.0.10:53"), now);
    let _ = index.delete(&svc, now);
    assert_unrelated(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
    assert_eq!(index.stats().tombstones, 0);
    // "false" (or anything else) does not opt out.
    let svc = with_annotation(dns_service(), ctdiff::ANNOTATION_SKIP, "false");
    let index = mk_index(&[svc], &[dns_slice(vec![])], &[], &[NODE_IP], now);
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.1.5:5353"),
        now,
        Reason::NoEndpoints,
    );
}

#[test]
fn tombstone_expires_after_the_ttl() {
    let now = Instant::now();
    let mut index = Index::new(IndexConfig {
        tombstone_ttl: Duration::from_secs(30),
        ..IndexConfig::new(NODE)
    });
    let _ = index.reset([&dns_service()], now);
    let _ = index.reset([&dns_slice(vec![ep("10.244.1.5")])], now);
    let _ = index.reset::<Service>([], now); // relist without it: deleted
    let f = flow("10.96.0.10:53", "10.244.1.5:5353");
    assert_stale(
        &index,
        f,
        now + Duration::from_secs(29),
        Reason::ServiceDeleted,
    );
    assert_unrelated(&index, f, now + Duration::from_secs(30));
    assert_eq!(index.expire_tombstones(now + Duration::from_secs(10)), 0);
    assert_eq!(index.stats().tombstones, 1);
    assert_eq!(index.expire_tombstones(now + Duration::from_secs(30)), 1);
    assert_eq!(index.stats().tombstones, 0);
    assert_eq!(index.stats().frontends, 0);
}

#[test]
fn a_new_service_reusing_the_vip_replaces_the_tombstone() {
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    let _ = index.delete(&dns_service(), now);
    let reuse = mk_service("other", "new", &["10.96.0.10"], vec![udp("x", 53)]);
    let _ = index.apply(&reuse, now);
    let _ = index.apply(
        &mk_slice(
            "other",
            "new-1",
            "new",
            &[("x", 7000)],
            vec![ep("10.244.8.8")],
        ),
        now,
    );
    assert_keep(&index, flow("10.96.0.10:53", "10.244.8.8:7000"), now);
    match index.classify(&flow("10.96.0.10:53", "10.244.1.5:5353"), now) {
        Verdict::Stale(stale) => {
            assert_eq!(stale.service.to_string(), "other/new");
            assert_eq!(stale.reason, Reason::EndpointGone);
        }
        other => panic!("{other:?}"),
    }
    // The old NodePort has no new owner: still a tombstone. Expiry does not disturb the new VIP.
    assert_stale(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.1.5:5353"),
        now,
        Reason::ServiceDeleted,
    );
    assert_eq!(index.expire_tombstones(now + Duration::from_secs(301)), 1);
    assert_keep(
        &index,
        flow("10.96.0.10:53", "10.244.8.8:7000"),
        now + Duration::from_secs(301),
    );
}

#[test]
fn host_port_allows_only_the_pod_ip_and_container_port() {
    let now = Instant::now();
    let pod = mk_pod("ns", "sip", NODE, &["10.244.1.7"], &[(None, 5060, 15060)]);
    let index = mk_index(&[], &[], &[pod], &[NODE_IP], now);
    let dst = format!("{NODE_IP}:5060");
    assert_keep(&index, flow(&dst, "10.244.1.7:15060"), now);
    assert_stale(
        &index,
        flow(&dst, "10.244.1.8:15060"),
        now,
        Reason::HostPortPodGone,
    );
    assert_stale(
        &index,
        flow(&dst, "10.244.1.7:5060"),
        now,
        Reason::PortChanged,
    );
    assert_stale(&index, flow(&dst, &dst), now, Reason::NotDnated);
    // Not on foreign addresses, and not on other ports.
    assert_unrelated(&index, flow("192.168.1.99:5060", "10.244.1.8:15060"), now);
    assert_unrelated(
        &index,
        flow(&format!("{NODE_IP}:5061"), "10.244.1.8:15060"),
        now,
    );
    assert_eq!(index.stats().host_ports, 1);
}

#[test]
fn host_port_with_host_ip_matches_that_ip_only() {
    let now = Instant::now();
    let pod = mk_pod(
        "ns",
        "sip",
        NODE,
        &["10.244.1.7"],
        &[(Some("192.168.1.20"), 5060, 5060)],
    );
    let index = mk_index(&[], &[], &[pod], &[NODE_IP, "192.168.1.20"], now);
    assert_stale(
        &index,
        flow("192.168.1.20:5060", "10.244.9.9:5060"),
        now,
        Reason::HostPortPodGone,
    );
    assert_unrelated(
        &index,
        flow(&format!("{NODE_IP}:5060"), "10.244.9.9:5060"),
        now,
    );
}

#[test]
fn host_port_pod_replaced_old_flows_are_stale() {
    let now = Instant::now();
    let old = mk_pod(
        "ns",
        "sip-old",
        NODE,
        &["10.244.1.7"],
        &[(None, 5060, 5060)],
    );
    let new = mk_pod(
        "ns",
        "sip-new",
        NODE,
        &["10.244.1.9"],
        &[(None, 5060, 5060)],
    );
    let mut index = mk_index(&[], &[], std::slice::from_ref(&old), &[NODE_IP], now);
    let dst = format!("{NODE_IP}:5060");
    let _ = index.delete(&old, now);
    assert_stale(
        &index,
        flow(&dst, "10.244.1.7:5060"),
        now,
        Reason::HostPortPodGone,
    );
    let _ = index.apply(&new, now);
    assert_keep(&index, flow(&dst, "10.244.1.9:5060"), now);
    match index.classify(&flow(&dst, "10.244.1.7:5060"), now) {
        Verdict::Stale(stale) => {
            assert_eq!(stale.service.to_string(), "ns/sip-new");
            assert_eq!(stale.reason, Reason::HostPortPodGone);
            assert_eq!(stale.frontend, Frontend::HostPort(sock(&dst)));
        }
        other => panic!("{other:?}"),
    }
    // Same name, new sandbox (StatefulSet-style): the update replaces the backend.
    let same_name = mk_pod(
        "ns",
        "sip-new",
        NODE,
        &["10.244.1.10"],
        &[(None, 5060, 5060)],
    );
    let _ = index.apply(&same_name, now);
    assert_stale(
        &index,
        flow(&dst, "10.244.1.9:5060"),
        now,
        Reason::HostPortPodGone,
    );
    assert_keep(&index, flow(&dst, "10.244.1.10:5060"), now);
}

#[test]
fn host_network_pods_and_other_nodes_pods_and_finished_pods_have_no_host_port_frontends() {
    let now = Instant::now();
    let mut host_net = mk_pod("ns", "hn", NODE, &[NODE_IP], &[(None, 5060, 5060)]);
    host_net.spec.as_mut().unwrap().host_network = Some(true);
    let elsewhere = mk_pod(
        "ns",
        "far",
        "node-b",
        &["10.244.5.5"],
        &[(None, 5061, 5061)],
    );
    let mut done = mk_pod("ns", "done", NODE, &["10.244.5.6"], &[(None, 5062, 5062)]);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let pending = mk_pod("ns", "pending", NODE, &[], &[(None, 5063, 5063)]);
    let index = mk_index(
        &[],
        &[],
        &[host_net, elsewhere, done, pending],
        &[NODE_IP],
        now,
    );
    for port in 5060..=5063 {
        let dst = format!("{NODE_IP}:{port}");
        assert_unrelated(&index, flow(&dst, &dst), now);
    }
    assert_eq!(index.stats().host_ports, 0);
}

#[test]
fn pod_finishing_leaves_a_tombstone() {
    let now = Instant::now();
    let pod = mk_pod("ns", "sip", NODE, &["10.244.1.7"], &[(None, 5060, 5060)]);
    let mut index = mk_index(&[], &[], std::slice::from_ref(&pod), &[NODE_IP], now);
    let mut failed = pod;
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    let _ = index.apply(&failed, now);
    assert_stale(
        &index,
        flow(&format!("{NODE_IP}:5060"), "10.244.1.7:5060"),
        now,
        Reason::HostPortPodGone,
    );
}

#[test]
fn endpoint_slice_before_its_service_is_remembered() {
    let now = Instant::now();
    let mut index = mk_index(
        &[],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[],
        &[NODE_IP],
        now,
    );
    let _ = index.apply(&dns_service(), now);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
}

#[test]
fn slice_relabelled_to_another_service_moves_its_endpoints() {
    let now = Instant::now();
    let other = mk_service(
        "kube-system",
        "other",
        &["10.96.0.60"],
        vec![udp("dns", 53)],
    );
    let mut index = mk_index(
        &[dns_service(), other],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[],
        &[NODE_IP],
        now,
    );
    let moved = mk_slice(
        "kube-system",
        "dns-abc",
        "other",
        &[("dns", 5353)],
        vec![ep("10.244.1.5")],
    );
    let _ = index.apply(&moved, now);
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.1.5:5353"),
        now,
        Reason::NoEndpoints,
    );
    assert_keep(&index, flow("10.96.0.60:53", "10.244.1.5:5353"), now);
}

#[test]
fn lb_ingress_ip_mode_proxy_is_not_a_frontend() {
    let now = Instant::now();
    let svc = with_lb(
        dns_service(),
        &[
            ("198.51.100.1", Some("VIP")),
            ("198.51.100.2", Some("Proxy")),
            ("198.51.100.3", None),
        ],
    );
    let index = mk_index(
        &[svc],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[],
        &[NODE_IP],
        now,
    );
    assert_stale(
        &index,
        flow("198.51.100.1:53", "10.9.9.9:53"),
        now,
        Reason::EndpointGone,
    );
    assert_unrelated(&index, flow("198.51.100.2:53", "10.9.9.9:53"), now);
    assert_stale(
        &index,
        flow("198.51.100.3:53", "10.9.9.9:53"),
        now,
        Reason::EndpointGone,
    );
}

#[test]
fn ignored_services_external_name_headless_and_other_proxies() {
    let now = Instant::now();
    let headless = mk_service("ns", "headless", &["None"], vec![udp("", 53)]);
    let mut external = mk_service("ns", "ext", &["10.96.0.70"], vec![udp("", 53)]);
    external.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    let other_proxy = with_label(
        mk_service("ns", "op", &["10.96.0.71"], vec![udp("", 53)]),
        ctdiff::LABEL_SERVICE_PROXY_NAME,
        "cilium",
    );
    let mut index = Index::new(IndexConfig::new(NODE));
    let report = index.reset([&headless, &external, &other_proxy], now);
    let _ = index.reset::<EndpointSlice>([], now);
    assert_eq!(report.len(), 3, "{report}");
    assert!(
        report
            .iter()
            .all(|s| matches!(s.reason, SkipReason::Ignored(_)))
    );
    for dst in ["10.96.0.70:53", "10.96.0.71:53"] {
        assert_unrelated(&index, flow(dst, dst), now);
    }
    assert_eq!(index.stats().services, 0);
}

#[test]
fn service_becoming_ignored_drops_its_frontends_without_tombstone() {
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    let handed_over = with_label(dns_service(), ctdiff::LABEL_SERVICE_PROXY_NAME, "other");
    let _ = index.apply(&handed_over, now);
    assert_unrelated(&index, flow("10.96.0.10:53", "10.244.9.9:5353"), now);
    assert_eq!(index.stats().tombstones, 0);
}

#[test]
fn fqdn_and_unlabelled_slices_are_ignored() {
    let now = Instant::now();
    let mut fqdn = dns_slice(vec![ep("example.com")]);
    fqdn.address_type = "FQDN".into();
    let mut unlabelled = mk_slice(
        "kube-system",
        "loose",
        "dns",
        &[("dns", 5353)],
        vec![ep("10.244.1.5")],
    );
    unlabelled.metadata.labels = None;
    let mut index = Index::new(IndexConfig::new(NODE));
    let _ = index.reset([&dns_service()], now);
    let report = index.reset([&fqdn, &unlabelled], now);
    assert_eq!(report.len(), 2, "{report}");
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.1.5:5353"),
        now,
        Reason::NoEndpoints,
    );
}

#[test]
fn allowed_is_ready_or_serving_and_terminating_as_kube_proxy_reads_them() {
    let now = Instant::now();
    let endpoints = vec![
        ep("10.244.0.1"),                                            // no conditions
        ep_cond("10.244.0.2", None, None, None),                     // all absent
        ep_cond("10.244.0.3", Some(false), None, None),              // not ready, not terminating
        ep_cond("10.244.0.4", Some(true), None, None),               // ready
        ep_cond("10.244.0.5", Some(false), Some(true), Some(true)),  // terminating, serving
        ep_cond("10.244.0.6", Some(true), Some(false), None),        // publishNotReadyAddresses
        ep_cond("10.244.0.7", Some(false), Some(false), None),       // neither
        ep_cond("10.244.0.8", Some(false), Some(false), Some(true)), // terminating, not serving
        ep_cond("10.244.0.9", Some(false), None, Some(true)),        // terminating, serving absent
    ];
    let index = dns_index(endpoints, now);
    let want = [true, true, false, true, true, true, false, false, true];
    for (i, allowed) in want.iter().enumerate() {
        let f = flow("10.96.0.10:53", &format!("10.244.0.{}:5353", i + 1));
        if *allowed {
            assert_keep(&index, f, now);
        } else {
            assert_stale(&index, f, now, Reason::EndpointNotServing);
        }
    }
}

#[test]
fn reason_precedence_is_as_documented() {
    let now = Instant::now();
    // not-dnated beats no-endpoints.
    let index = dns_index(vec![], now);
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.96.0.10:53"),
        now,
        Reason::NotDnated,
    );
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.1.5:5353"),
        now,
        Reason::NoEndpoints,
    );
    // no-endpoints beats endpoint-not-serving.
    let index = dns_index(
        vec![ep_cond("10.244.1.5", Some(false), Some(false), None)],
        now,
    );
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.1.5:5353"),
        now,
        Reason::NoEndpoints,
    );
    // endpoint-not-serving beats port-changed (same IP, another port still serving).
    let a = mk_slice(
        "kube-system",
        "dns-a",
        "dns",
        &[("dns", 5353)],
        vec![ep_cond("10.244.1.5", Some(false), Some(false), None)],
    );
    let b = mk_slice(
        "kube-system",
        "dns-b",
        "dns",
        &[("dns", 5354)],
        vec![ep("10.244.1.5")],
    );
    let index = mk_index(&[dns_service()], &[a, b], &[], &[NODE_IP], now);
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.1.5:5353"),
        now,
        Reason::EndpointNotServing,
    );
    // port-changed beats endpoint-gone; endpoint-gone otherwise.
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.1.5:9999"),
        now,
        Reason::PortChanged,
    );
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.7.7:5354"),
        now,
        Reason::EndpointGone,
    );
    // Keep beats everything: a hostNetwork endpoint whose address equals the frontend.
    let np = format!("{NODE_IP}:30053");
    let index = mk_index(
        &[dns_service()],
        &[mk_slice(
            "kube-system",
            "dns-a",
            "dns",
            &[("dns", 30053)],
            vec![ep(NODE_IP)],
        )],
        &[],
        &[NODE_IP],
        now,
    );
    assert_keep(&index, flow(&np, &np), now);
}

#[test]
fn reasons_print_kebab_case() {
    let names: Vec<String> = Reason::ALL.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        names,
        [
            "service-deleted",
            "not-dnated",
            "no-endpoints",
            "endpoint-not-serving",
            "port-changed",
            "endpoint-gone",
            "host-port-pod-gone"
        ]
    );
    for reason in Reason::ALL {
        assert_eq!(reason.as_str(), reason.to_string());
    }
}

#[test]
fn stale_verdict_names_service_port_and_frontend() {
    let now = Instant::now();
    let index = dns_index(vec![ep("10.244.1.5")], now);
    let Verdict::Stale(stale) =
        index.classify(&flow(&format!("{NODE_IP}:30053"), "10.1.1.1:1"), now)
    else {
        panic!("not stale")
    };
    assert_eq!(stale.service.namespace, "kube-system");
    assert_eq!(stale.service.name, "dns");
    assert_eq!(stale.port, "dns");
    assert_eq!(stale.frontend, Frontend::NodePort(30053));
    assert_eq!(stale.frontend.to_string(), "nodeport/30053");
    assert_eq!(
        stale.to_string(),
        "kube-system/dns port \"dns\" via nodeport/30053: endpoint-gone"
    );
}

#[test]
fn dirty_set_holds_exactly_the_touched_frontends() {
    let now = Instant::now();
    let other = mk_service("ns", "other", &["10.96.0.80"], vec![udp("", 53)]);
    let mut index = mk_index(
        &[dns_service(), other],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[],
        &[NODE_IP],
        now,
    );
    let first = index.take_dirty();
    assert!(first.all && first.frontends.is_empty());
    assert!(index.take_dirty().is_empty());
    // Re-applying an identical object touches nothing.
    let _ = index.apply(&dns_service(), now);
    let _ = index.apply(&dns_slice(vec![ep("10.244.1.5")]), now);
    assert!(index.take_dirty().is_empty());
    let _ = index.apply(&dns_slice(vec![ep("10.244.1.6")]), now);
    let dirty = index.take_dirty();
    assert!(!dirty.all);
    assert_eq!(
        dirty.frontends,
        vec![
            Frontend::Addr(sock("10.96.0.10:53")),
            Frontend::NodePort(30053)
        ]
    );
    assert!(dirty.contains(&Frontend::NodePort(30053)));
    assert!(!dirty.covers(&flow("10.96.0.80:53", "10.244.1.6:5353")));
    assert!(dirty.covers(&flow("10.96.0.10:53", "10.244.1.6:5353")));
    assert!(
        dirty
            .matcher()
            .covers(&flow("192.168.1.10:30053", "10.244.1.6:5353"))
    );
    let tcp = FlowRef {
        proto: 6,
        ..flow("10.96.0.10:53", "10.244.1.6:5353")
    };
    assert!(!dirty.covers(&tcp) && !dirty.matcher().covers(&tcp));
    // A pod's host port is dirty as "any node address" of its family.
    let _ = index.apply(
        &mk_pod("ns", "hp", NODE, &["10.244.3.3"], &[(None, 6000, 6000)]),
        now,
    );
    let dirty = index.take_dirty();
    assert_eq!(
        dirty.frontends,
        vec![Frontend::HostPort(sock("0.0.0.0:6000"))]
    );
    assert!(dirty.covers(&flow("192.168.1.10:6000", "10.244.3.3:6000")));
    assert!(!dirty.covers(&flow("[fd00::1]:6000", "[fd00::2]:6000")));
}

#[test]
fn reset_services_tombstones_only_the_missing_ones() {
    let now = Instant::now();
    let other = mk_service("ns", "other", &["10.96.0.80"], vec![udp("", 53)]);
    let mut index = mk_index(&[dns_service(), other.clone()], &[], &[], &[NODE_IP], now);
    let _ = index.reset([&other], now);
    assert_eq!(index.stats().tombstones, 1);
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.1.1.1:1"),
        now,
        Reason::ServiceDeleted,
    );
    assert_stale(
        &index,
        flow("10.96.0.80:53", "10.1.1.1:1"),
        now,
        Reason::NoEndpoints,
    );
}

#[test]
fn conflicting_owners_keep_a_flow_any_of_them_allows() {
    let now = Instant::now();
    let a = with_external_ips(
        mk_service("ns", "a", &["10.96.0.91"], vec![udp("", 53)]),
        &["203.0.113.1"],
    );
    let b = with_external_ips(
        mk_service("ns", "b", &["10.96.0.92"], vec![udp("", 53)]),
        &["203.0.113.1"],
    );
    let sa = mk_slice("ns", "a-1", "a", &[("", 53)], vec![ep("10.244.1.1")]);
    let sb = mk_slice("ns", "b-1", "b", &[("", 53)], vec![ep("10.244.1.2")]);
    let mut index = mk_index(&[b, a.clone()], &[sa, sb], &[], &[NODE_IP], now);
    assert_keep(&index, flow("203.0.113.1:53", "10.244.1.1:53"), now);
    assert_keep(&index, flow("203.0.113.1:53", "10.244.1.2:53"), now);
    match index.classify(&flow("203.0.113.1:53", "10.244.1.3:53"), now) {
        Verdict::Stale(stale) => {
            assert_eq!(stale.service.to_string(), "ns/a", "first owner by name")
        }
        other => panic!("{other:?}"),
    }
    // Deleting one owner leaves the other live: no tombstone on the shared frontend.
    let _ = index.delete(&a, now);
    assert_stale(
        &index,
        flow("203.0.113.1:53", "10.244.1.1:53"),
        now,
        Reason::EndpointGone,
    );
}

#[test]
fn bad_fields_are_reported_and_skipped_never_panic() {
    let now = Instant::now();
    let mut svc = mk_service(
        "ns",
        "bad",
        &["10.96.0.99", "not-an-ip"],
        vec![udp("", 0), udp("ok", 53), udp_np("np", 54, 70000)],
    );
    svc = with_external_ips(svc, &["300.1.1.1"]);
    let mut slice = mk_slice(
        "ns",
        "bad-1",
        "bad",
        &[("ok", 99999), ("np", 54)],
        vec![ep("bogus"), ep("10.244.1.1")],
    );
    slice
        .ports
        .as_mut()
        .unwrap()
        .push(ctdiff::k8s_openapi::api::discovery::v1::EndpointPort {
            name: Some("ok".into()),
            port: None,
            protocol: Some("UDP".into()),
            app_protocol: None,
        });
    let mut index = Index::new(IndexConfig::new(NODE));
    let r1 = index.reset([&svc], now);
    let r2 = index.reset([&slice], now);
    let texts: Vec<String> = r1.iter().chain(r2.iter()).map(|s| s.to_string()).collect();
    assert_eq!(texts.len(), 7, "{texts:#?}");
    assert!(texts.contains(
        &"Service ns/bad: spec.clusterIPs: \"not-an-ip\" is not an IP address".to_owned()
    ));
    assert!(texts.contains(
        &"EndpointSlice ns/bad-1: endpoints[].addresses: \"bogus\" is not an IP address".to_owned()
    ));
    assert_keep(&index, flow("10.96.0.99:54", "10.244.1.1:54"), now);
    // Objects with nothing in them.
    let _ = index.apply(&Service::default(), now);
    let _ = index.delete(&Service::default(), now);
    let _ = index.apply(&EndpointSlice::default(), now);
    let _ = index.delete(&EndpointSlice::default(), now);
    let _ = index.apply(&Pod::default(), now);
    let _ = index.delete(&Pod::default(), now);
    let _ = index.apply_node(&Default::default());
    let named = Service {
        metadata: meta("ns", "empty"),
        ..Service::default()
    };
    let _ = index.apply(&named, now);
    let named_pod = Pod {
        metadata: meta("ns", "empty"),
        ..Pod::default()
    };
    let _ = index.apply(&named_pod, now);
}

#[test]
fn apply_node_ignores_other_nodes() {
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    let report = index.apply_node(&mk_node("node-b", &["192.168.1.99"]));
    assert_eq!(report.len(), 1);
    assert_unrelated(&index, flow("192.168.1.99:30053", "10.1.1.1:1"), now);
}

#[test]
fn stats_count_the_index() {
    let now = Instant::now();
    let svc = with_external_ips(
        mk_service(
            "ns",
            "s",
            &["10.96.0.1", "fd00::1"],
            vec![udp_np("a", 53, 30001), udp("b", 54)],
        ),
        &["203.0.113.5"],
    );
    let slice = mk_slice(
        "ns",
        "s-1",
        "s",
        &[("a", 53), ("b", 54)],
        vec![ep("10.244.0.1"), ep("10.244.0.2")],
    );
    let pod = mk_pod("ns", "p", NODE, &["10.244.0.9"], &[(None, 7000, 7000)]);
    let index = mk_index(&[svc], &[slice], &[pod], &[NODE_IP], now);
    let stats = index.stats();
    assert_eq!(stats.services, 1);
    assert_eq!(stats.service_ports, 2);
    // Per port: two ClusterIPs and the ExternalIP; the NodePort once per family; the host port.
    assert_eq!(stats.frontends, 3 * 2 + 2 + 1);
    assert_eq!(stats.endpoints, 2);
    assert_eq!(stats.endpoint_slices, 1);
    assert_eq!(stats.host_ports, 1);
    assert_eq!(stats.tombstones, 0);
    assert_eq!(stats.node_addresses, 1);
}

#[test]
fn a_tombstone_never_shadows_a_live_frontend_of_another_class() {
    // A deleted service's ClusterIP:port tombstone on an address that is also this node's, where
    // a live service has the same number as NodePort: the live NodePort decides.
    let now = Instant::now();
    let gone = mk_service("ns", "gone", &[NODE_IP], vec![udp("", 30053)]);
    let mut index = mk_index(
        &[dns_service(), gone.clone()],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[],
        &[NODE_IP],
        now,
    );
    let _ = index.delete(&gone, now);
    assert_keep(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.1.5:5353"),
        now,
    );
    assert_stale(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.9.9:5353"),
        now,
        Reason::EndpointGone,
    );
}

#[test]
fn backends_changing_after_the_service_is_known_are_seen_on_every_frontend() {
    // Service first, then its slice, then the slice changes: every frontend (ClusterIP,
    // ExternalIP, NodePort) must see each new backend set, not a cached one.
    let now = Instant::now();
    let svc = with_external_ips(dns_service(), &["203.0.113.7"]);
    let mut index = mk_index(
        &[],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[],
        &[NODE_IP],
        now,
    );
    let _ = index.apply(&svc, now);
    let dsts = [
        "10.96.0.10:53".to_owned(),
        "203.0.113.7:53".to_owned(),
        format!("{NODE_IP}:30053"),
    ];
    for dst in &dsts {
        assert_keep(&index, flow(dst, "10.244.1.5:5353"), now);
    }
    let _ = index.apply(
        &dns_slice(vec![
            ep_cond("10.244.1.5", Some(false), Some(false), None),
            ep("10.244.1.6"),
        ]),
        now,
    );
    for dst in &dsts {
        assert_stale(
            &index,
            flow(dst, "10.244.1.5:5353"),
            now,
            Reason::EndpointNotServing,
        );
        assert_keep(&index, flow(dst, "10.244.1.6:5353"), now);
    }
    let _ = index.delete(&dns_slice(vec![]), now);
    for dst in &dsts {
        assert_stale(
            &index,
            flow(dst, "10.244.1.6:5353"),
            now,
            Reason::NoEndpoints,
        );
    }
}

// ---- streaming relists ----

#[test]
fn edge_streaming_relist_keeps_old_state_until_finished_then_tombstones_the_unlisted() {
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    let other = mk_service("default", "statsd", &["10.96.0.30"], vec![udp("", 8125)]);
    let _ = index.apply(&other, now);
    let statsd = flow("10.96.0.30:8125", "10.244.9.9:8125");
    assert_stale(&index, statsd, now, Reason::NoEndpoints);

    // A relist that lists only dns: while it runs, statsd is still known as it was.
    let mut relist = ctdiff::Relist::default();
    let _ = index.relist(&mut relist, &dns_service(), now);
    assert_eq!(relist.len(), 1);
    assert_stale(&index, statsd, now, Reason::NoEndpoints);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);

    let _ = index.take_dirty();
    let _ = index.finish_relist(relist, now);
    assert_stale(&index, statsd, now, Reason::ServiceDeleted);
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
    // Not the kind's first listing: dirty is what the relist changed, statsd's frontend.
    let dirty = index.take_dirty();
    assert!(!dirty.all, "a later relist dirties what it changed only");
    assert!(dirty.covers(&statsd));
    assert!(!dirty.covers(&flow("10.96.0.10:53", "10.244.1.5:5353")));
}

#[test]
fn a_kinds_first_listing_dirties_everything_a_relist_that_changed_nothing_nothing() {
    let now = Instant::now();
    let mut index = Index::new(IndexConfig::new(NODE));
    let mut services = ctdiff::Relist::default();
    let _ = index.relist(&mut services, &dns_service(), now);
    let _ = index.finish_relist(services, now);
    assert!(index.take_dirty().all, "the first listing of Services");
    let mut slices = ctdiff::Relist::default();
    let _ = index.relist(&mut slices, &dns_slice(vec![ep("10.244.1.5")]), now);
    let _ = index.finish_relist(slices, now);
    assert!(
        index.take_dirty().all,
        "the first listing of EndpointSlices"
    );
    // The same objects again (a watch that failed and listed again): nothing changed.
    let mut services = ctdiff::Relist::default();
    let _ = index.relist(&mut services, &dns_service(), now);
    let _ = index.finish_relist(services, now);
    let mut slices = ctdiff::Relist::default();
    let _ = index.relist(&mut slices, &dns_slice(vec![ep("10.244.1.5")]), now);
    let _ = index.finish_relist(slices, now);
    assert!(index.take_dirty().is_empty());
    // A relist that finds a backend gone dirties that Service's frontends.
    let mut slices = ctdiff::Relist::default();
    let _ = index.relist(&mut slices, &dns_slice(vec![]), now);
    let _ = index.finish_relist(slices, now);
    let dirty = index.take_dirty();
    let gone = flow("10.96.0.10:53", "10.244.1.5:5353");
    assert!(!dirty.all && dirty.covers(&gone));
    assert_stale(&index, gone, now, Reason::NoEndpoints);
}

#[test]
fn edge_nothing_is_stale_until_the_first_streaming_relists_finish() {
    let now = Instant::now();
    let mut index = Index::new(IndexConfig::new("node-1"));
    let (mut services, mut slices) = (ctdiff::Relist::default(), ctdiff::Relist::default());
    let _ = index.relist(&mut services, &dns_service(), now);
    let _ = index.relist(&mut slices, &dns_slice(vec![ep("10.244.1.5")]), now);
    let gone = flow("10.96.0.10:53", "10.244.7.7:5353");
    assert_eq!(
        index.classify(&gone, now),
        Verdict::Keep,
        "half-listed: never stale"
    );
    let _ = index.finish_relist(services, now);
    assert_eq!(
        index.classify(&gone, now),
        Verdict::Keep,
        "slices still listing"
    );
    let _ = index.finish_relist(slices, now);
    assert_stale(&index, gone, now, Reason::EndpointGone);
}

// ---- issue 14: what kube-proxy routes to, and what it ignores ----

#[test]
fn publish_not_ready_addresses_ready_but_not_serving_endpoints_keep_their_flows() {
    // The EndpointSlice controller marks a not-ready pod of a publishNotReadyAddresses Service
    // `ready=true, serving=false`; kube-proxy routes to it.
    let now = Instant::now();
    let index = dns_index(
        vec![ep_cond("10.244.1.5", Some(true), Some(false), Some(false))],
        now,
    );
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
    assert_keep(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.1.5:5353"),
        now,
    );
    // A backend nobody routes to is still stale.
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.9.9:5353"),
        now,
        Reason::EndpointGone,
    );
}

#[test]
fn a_not_ready_endpoint_that_is_not_terminating_gets_no_traffic_whatever_serving_says() {
    // kube-proxy falls back to serving endpoints only among terminating ones: a not-ready,
    // non-terminating endpoint (here with `serving` unset, as controllers before 1.26 leave
    // it) is never routed to, so flows still going there are stale.
    let now = Instant::now();
    let index = dns_index(vec![ep_cond("10.244.1.5", Some(false), None, None)], now);
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.1.5:5353"),
        now,
        Reason::NoEndpoints,
    );
}

/// A single-stack IPv4 `dns` Service that also lists an IPv6 ExternalIP (a public resolver) and
/// an IPv6 LoadBalancer IP.
fn dns_with_foreign_family_ips() -> Service {
    with_lb(
        with_external_ips(dns_service(), &["203.0.113.7", "2001:4860:4860::8888"]),
        &[("198.51.100.9", None), ("2001:db8::9", Some("VIP"))],
    )
}

#[test]
fn external_and_lb_ips_of_a_family_the_service_lacks_are_not_frontends() {
    let now = Instant::now();
    let index = mk_index(
        &[dns_with_foreign_family_ips()],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[],
        &[NODE_IP],
        now,
    );
    // Flows to the outside IPv6 resolver are none of this Service's business.
    let resolver = "[2001:4860:4860::8888]:53";
    assert_unrelated(&index, flow(resolver, resolver), now);
    assert_unrelated(&index, flow("[2001:db8::9]:53", "[2001:db8::9]:53"), now);
    // The IPv4 ones are still frontends.
    assert_stale(
        &index,
        flow("203.0.113.7:53", "203.0.113.7:53"),
        now,
        Reason::NotDnated,
    );
    assert_keep(&index, flow("198.51.100.9:53", "10.244.1.5:5353"), now);
}

#[test]
fn each_dropped_foreign_family_ip_is_reported_once_saying_why() {
    let now = Instant::now();
    let mut index = Index::new(IndexConfig::new(NODE));
    let report = index.apply(&dns_with_foreign_family_ips(), now);
    let texts: Vec<String> = report.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        texts,
        [
            "Service kube-system/dns: spec.externalIPs: 2001:4860:4860::8888 is not of the \
             Service's IP families (IPv4): kube-proxy ignores it, so it is not judged",
            "Service kube-system/dns: status.loadBalancer.ingress[].ip: 2001:db8::9 is not of \
             the Service's IP families (IPv4): kube-proxy ignores it, so it is not judged",
        ]
    );
    assert!(report.iter().all(|s| matches!(
        s.reason,
        SkipReason::OtherFamily {
            families: "IPv4",
            ..
        }
    )));
}

#[test]
fn ip_families_decide_and_pair_with_cluster_ips_by_index() {
    let now = Instant::now();
    let v6_ext = "[fd00:ee::1]:53";
    let slices = [dns_slice(vec![ep("10.244.1.5")])];
    // Dual-stack: an IPv6 ExternalIP is a frontend.
    let dual = with_external_ips(
        with_ip_families(
            mk_service(
                "kube-system",
                "dns",
                &["10.96.0.10", "fd00:10:96::10"],
                vec![udp_np("dns", 53, 30053)],
            ),
            &["IPv4", "IPv6"],
        ),
        &["fd00:ee::1"],
    );
    let index = mk_index(&[dual], &slices, &[], &[NODE_IP], now);
    assert_stale(&index, flow(v6_ext, v6_ext), now, Reason::NotDnated);
    // PreferDualStack with only the IPv4 ClusterIP allocated: IPv6 is not served (kube-proxy
    // takes a family only with a ClusterIP at its index).
    let half = with_external_ips(
        with_ip_families(dns_service(), &["IPv4", "IPv6"]),
        &["fd00:ee::1"],
    );
    let index = mk_index(&[half], &slices, &[], &[NODE_IP], now);
    assert_unrelated(&index, flow(v6_ext, v6_ext), now);
    // ipFamilies decides over the ClusterIPs listed (an inconsistent object): the IPv6
    // ClusterIP of an IPv4-only Service is not served either.
    let skewed = with_ip_families(
        mk_service(
            "kube-system",
            "dns",
            &["10.96.0.10", "fd00:10:96::10"],
            vec![udp_np("dns", 53, 30053)],
        ),
        &["IPv4"],
    );
    let index = mk_index(&[skewed], &slices, &[], &[NODE_IP], now);
    assert_unrelated(
        &index,
        flow("[fd00:10:96::10]:53", "[fd00:10:96::10]:53"),
        now,
    );
    assert_keep(&index, flow("10.96.0.10:53", "10.244.1.5:5353"), now);
    // No family at all: nothing of the Service is served, its NodePort included.
    let none = with_external_ips(with_ip_families(dns_service(), &["IPv5"]), &["203.0.113.7"]);
    let index = mk_index(&[none], &slices, &[], &[NODE_IP], now);
    assert_unrelated(&index, flow("10.96.0.10:53", "10.96.0.10:53"), now);
    assert_unrelated(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.9.9:5353"),
        now,
    );
    assert_eq!(index.stats().services, 0);
}

#[test]
fn a_single_stack_nodeport_is_not_judged_on_the_other_familys_node_addresses() {
    // kube-proxy's IPv6 proxier knows nothing of an IPv4-only Service: a flow to the same port
    // on a node IPv6 address is some other traffic, never DNATed by it, and must be kept.
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    index.set_local_addrs([NODE_IP.parse().unwrap(), "fd00:1::5".parse().unwrap()]);
    assert_unrelated(&index, flow("[fd00:1::5]:30053", "[fd00:1::5]:30053"), now);
    assert_stale(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.9.9:5353"),
        now,
        Reason::EndpointGone,
    );
    // With a ClusterIP of each family the NodePort is on both.
    let mut index = mk_index(
        &[dual_stack_dns_service()],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[],
        &[NODE_IP],
        now,
    );
    index.set_local_addrs([NODE_IP.parse().unwrap(), "fd00:1::5".parse().unwrap()]);
    assert_stale(
        &index,
        flow("[fd00:1::5]:30053", "[fd00:1::5]:30053"),
        now,
        Reason::NotDnated,
    );
    // The owner of a NodePort named without a family is found in either.
    assert!(
        index
            .owner(ctdiff::Frontend::NodePort(30053), now)
            .is_some()
    );
}

#[test]
fn nodeport_addresses_cidrs_restrict_nodeports_but_not_host_ports() {
    let now = Instant::now();
    let cfg = IndexConfig {
        nodeport_addresses: "192.168.1.0/24".parse().unwrap(),
        ..IndexConfig::new(NODE)
    };
    let sip = mk_pod("ns", "sip", NODE, &["10.244.1.7"], &[(None, 5060, 5060)]);
    let mut index = mk_index_with(
        cfg,
        &[dual_stack_dns_service()],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[sip],
        &[NODE_IP],
        now,
    );
    index.set_local_addrs(["10.0.5.5".parse().unwrap(), "fd00:1::5".parse().unwrap()]);
    // 10.0.5.5 is a node address outside --nodeport-addresses: kube-proxy does not DNAT
    // NodePorts there, so whatever flows to it is not service traffic.
    assert_unrelated(&index, flow("10.0.5.5:30053", "10.0.5.5:30053"), now);
    assert_stale(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.9.9:5353"),
        now,
        Reason::EndpointGone,
    );
    // No IPv6 network given: kube-proxy does not restrict that family.
    assert_stale(
        &index,
        flow("[fd00:1::5]:30053", "[fd00:1::5]:30053"),
        now,
        Reason::NotDnated,
    );
    // Host ports keep every node address.
    assert_stale(
        &index,
        flow("10.0.5.5:5060", "10.244.9.9:5060"),
        now,
        Reason::HostPortPodGone,
    );
}

#[test]
fn nodeport_addresses_primary_is_the_nodes_first_internal_ip_per_family() {
    let now = Instant::now();
    let cfg = IndexConfig {
        nodeport_addresses: ctdiff::NodePortAddresses::Primary,
        ..IndexConfig::new(NODE)
    };
    let mut index = mk_index_with(
        cfg,
        &[dual_stack_dns_service()],
        &[dns_slice(vec![ep("10.244.1.5")])],
        &[],
        &[],
        now,
    );
    let _ = index.take_dirty();
    let _ = index.apply_node(&mk_node_typed(
        NODE,
        &[
            ("ExternalIP", "203.0.113.5"),
            ("InternalIP", "192.168.1.10"),
            ("InternalIP", "192.168.1.11"),
            ("ExternalIP", "2001:db8::5"),
        ],
    ));
    let dirty = index.take_dirty();
    assert!(
        !dirty.all && dirty.covers(&flow("192.168.1.10:30053", "192.168.1.10:30053")),
        "new NodePort addresses dirty the NodePorts: {dirty:?}"
    );
    let judged = |dst: &str| index.classify(&flow(dst, dst), now) != Verdict::Unrelated;
    assert!(judged("192.168.1.10:30053"));
    assert!(!judged("192.168.1.11:30053"), "not the first InternalIP");
    assert!(
        !judged("203.0.113.5:30053"),
        "an ExternalIP, with an InternalIP of the family"
    );
    assert!(
        judged("[2001:db8::5]:30053"),
        "first IPv6 address, an ExternalIP"
    );
    // The primary IP moves with the Node object.
    let _ = index.apply_node(&mk_node(NODE, &["192.168.1.11"]));
    assert!(
        index
            .take_dirty()
            .covers(&flow("192.168.1.11:30053", "192.168.1.11:30053"))
    );
    let judged = |dst: &str| index.classify(&flow(dst, dst), now) != Verdict::Unrelated;
    assert!(judged("192.168.1.11:30053"));
    assert!(!judged("192.168.1.10:30053"));
}

#[test]
fn nodeport_addresses_primary_matches_nothing_until_the_node_is_known() {
    let now = Instant::now();
    let mut index = Index::new(IndexConfig {
        nodeport_addresses: ctdiff::NodePortAddresses::Primary,
        ..IndexConfig::new(NODE)
    });
    let _ = index.reset([&dns_service()], now);
    let _ = index.reset([&dns_slice(vec![ep("10.244.1.5")])], now);
    index.set_local_addrs(["192.168.1.10".parse().unwrap()]);
    let f = flow("192.168.1.10:30053", "192.168.1.10:30053");
    assert_unrelated(&index, f, now);
    let _ = index.apply_node(&mk_node(NODE, &["192.168.1.10"]));
    assert_stale(&index, f, now, Reason::NotDnated);
}

#[test]
fn service_handed_to_another_proxy_by_a_deleted_event_leaves_no_tombstone() {
    // A watch that filters the label server-side, or a relabel followed by a deletion: the
    // DELETED object carries the label. Its flows belong to the other proxy now.
    let now = Instant::now();
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    let handed_over = with_label(dns_service(), ctdiff::LABEL_SERVICE_PROXY_NAME, "other");
    let _ = index.delete(&handed_over, now);
    assert_unrelated(&index, flow("10.96.0.10:53", "10.244.9.9:5353"), now);
    assert_unrelated(
        &index,
        flow(&format!("{NODE_IP}:30053"), "10.244.9.9:5353"),
        now,
    );
    assert_eq!(index.stats().tombstones, 0);
    assert_eq!(index.stats().services, 0);
}

#[test]
fn deleted_event_of_an_external_name_or_headless_object_leaves_no_tombstone() {
    let now = Instant::now();
    let mut external = dns_service();
    external.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
    let headless = mk_service(
        "kube-system",
        "dns",
        &["None"],
        vec![udp_np("dns", 53, 30053)],
    );
    for gone in [external, headless] {
        let mut index = dns_index(vec![ep("10.244.1.5")], now);
        let _ = index.delete(&gone, now);
        assert_unrelated(&index, flow("10.96.0.10:53", "10.244.9.9:5353"), now);
        assert_eq!(index.stats().tombstones, 0);
    }
    // A handled object's deletion still leaves one.
    let mut index = dns_index(vec![ep("10.244.1.5")], now);
    let _ = index.delete(&dns_service(), now);
    assert_stale(
        &index,
        flow("10.96.0.10:53", "10.244.9.9:5353"),
        now,
        Reason::ServiceDeleted,
    );
}
