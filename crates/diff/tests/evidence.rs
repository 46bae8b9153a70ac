//! Evidence: which stale verdicts rest on a backend the index saw leave (positive evidence) and
//! which on a backend it never saw (maybe one kube-proxy knows and the agent does not yet).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use common::*;
use ctdiff::{Evidence, Reason, Verdict};
use std::time::{Duration, Instant};

const VIP: &str = "10.96.0.10";

fn dns(ips: &[&str]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    mk_slice(
        "d",
        "dns-1",
        "dns",
        &[("", 5353)],
        ips.iter().map(|ip| ep(ip)).collect(),
    )
}

fn evidence(index: &ctdiff::Index, backend: &str, now: Instant) -> Option<(Reason, Evidence)> {
    match index.classify(&flow(&format!("{VIP}:53"), backend), now) {
        Verdict::Stale(s) => Some((s.reason, s.evidence)),
        _ => None,
    }
}

#[test]
fn a_backend_removed_from_its_slice_is_removed_evidence_one_never_listed_is_unseen() {
    let now = Instant::now();
    let svc = mk_service("d", "dns", &[VIP], vec![udp("", 53)]);
    let mut index = mk_index(&[svc], &[dns(&["10.244.0.1", "10.244.0.2"])], &[], &[], now);
    assert_eq!(
        evidence(&index, "10.244.0.9:5353", now),
        Some((Reason::EndpointGone, Evidence::Unseen))
    );
    let _ = index.apply(&dns(&["10.244.0.1"]), now);
    assert_eq!(
        evidence(&index, "10.244.0.2:5353", now),
        Some((Reason::EndpointGone, Evidence::Removed))
    );
    // Back again: allowed; gone again: removed again.
    let _ = index.apply(&dns(&["10.244.0.1", "10.244.0.2"]), now);
    assert_eq!(evidence(&index, "10.244.0.2:5353", now), None);
}

#[test]
fn an_endpoint_never_ready_is_unseen_one_that_stopped_being_ready_is_removed() {
    let now = Instant::now();
    let svc = mk_service("d", "dns", &[VIP], vec![udp("", 53)]);
    let not_ready = |ip| ep_cond(ip, Some(false), Some(false), None);
    let slice = |eps| mk_slice("d", "dns-1", "dns", &[("", 5353)], eps);
    let mut index = mk_index(
        &[svc],
        &[slice(vec![ep("10.244.0.1"), not_ready("10.244.0.2")])],
        &[],
        &[],
        now,
    );
    // Created not ready: the agent may lag kube-proxy, which may see it ready already.
    assert_eq!(
        evidence(&index, "10.244.0.2:5353", now),
        Some((Reason::EndpointNotServing, Evidence::Unseen))
    );
    let _ = index.apply(&slice(vec![not_ready("10.244.0.1")]), now);
    assert_eq!(
        evidence(&index, "10.244.0.1:5353", now),
        Some((Reason::NoEndpoints, Evidence::Removed))
    );
}

#[test]
fn a_changed_target_port_is_removed_evidence_for_the_old_port_only() {
    let now = Instant::now();
    let svc = mk_service("d", "dns", &[VIP], vec![udp("", 53)]);
    let slice = |port| mk_slice("d", "dns-1", "dns", &[("", port)], vec![ep("10.244.0.1")]);
    let mut index = mk_index(&[svc], &[slice(5353)], &[], &[], now);
    let _ = index.apply(&slice(5354), now);
    assert_eq!(
        evidence(&index, "10.244.0.1:5353", now),
        Some((Reason::PortChanged, Evidence::Removed))
    );
    // kube-proxy already on a port the agent has not seen: not proof of anything.
    assert_eq!(
        evidence(&index, "10.244.0.1:5355", now),
        Some((Reason::PortChanged, Evidence::Unseen))
    );
}

#[test]
fn a_new_service_without_its_slice_yet_is_unseen_and_not_dnated_needs_known_backends() {
    let now = Instant::now();
    let svc = mk_service("d", "dns", &[VIP], vec![udp("", 53)]);
    let mut index = mk_index(&[svc], &[], &[], &[], now);
    assert_eq!(
        evidence(&index, "10.244.0.7:5353", now),
        Some((Reason::NoEndpoints, Evidence::Unseen)),
        "kube-proxy may have the slice already"
    );
    assert_eq!(
        evidence(&index, &format!("{VIP}:53"), now),
        Some((Reason::NotDnated, Evidence::Unseen))
    );
    let _ = index.apply(&dns(&["10.244.0.1"]), now);
    assert_eq!(
        evidence(&index, &format!("{VIP}:53"), now),
        Some((Reason::NotDnated, Evidence::Removed)),
        "serving backends known: an un-DNATed flow predates them"
    );
}

#[test]
fn a_deleted_service_leaves_its_backends_removed_and_others_unseen() {
    let now = Instant::now();
    let svc = mk_service("d", "dns", &[VIP], vec![udp("", 53)]);
    let mut index = mk_index(
        std::slice::from_ref(&svc),
        &[dns(&["10.244.0.1"])],
        &[],
        &[],
        now,
    );
    let _ = index.delete(&svc, now);
    assert_eq!(
        evidence(&index, "10.244.0.1:5353", now),
        Some((Reason::ServiceDeleted, Evidence::Removed))
    );
    // A new owner of the VIP the agent has not heard of may DNAT to its own backends.
    assert_eq!(
        evidence(&index, "10.244.5.5:5353", now),
        Some((Reason::ServiceDeleted, Evidence::Unseen))
    );
    assert_eq!(
        evidence(&index, &format!("{VIP}:53"), now),
        Some((Reason::ServiceDeleted, Evidence::Removed))
    );
    // The new owner arrives: the old backends stay removed evidence at the reused VIP.
    let reuse = mk_service("d", "dns2", &[VIP], vec![udp("", 53)]);
    let _ = index.apply(&reuse, now);
    let slice2 = mk_slice("d", "dns2-1", "dns2", &[("", 5353)], vec![ep("10.244.5.5")]);
    let _ = index.apply(&slice2, now);
    assert_eq!(evidence(&index, "10.244.5.5:5353", now), None);
    assert_eq!(
        evidence(&index, "10.244.0.1:5353", now),
        Some((Reason::EndpointGone, Evidence::Removed))
    );
}

#[test]
fn removed_evidence_lapses_with_the_tombstone_ttl() {
    let now = Instant::now();
    let ttl = ctdiff::DEFAULT_TOMBSTONE_TTL;
    let svc = mk_service("d", "dns", &[VIP], vec![udp("", 53)]);
    let mut index = mk_index(&[svc], &[dns(&["10.244.0.1", "10.244.0.2"])], &[], &[], now);
    let _ = index.apply(&dns(&["10.244.0.1"]), now);
    let later = now + ttl + Duration::from_secs(1);
    assert_eq!(
        evidence(&index, "10.244.0.2:5353", later),
        Some((Reason::EndpointGone, Evidence::Unseen))
    );
    let _ = index.expire_tombstones(later);
    assert_eq!(
        evidence(&index, "10.244.0.2:5353", later),
        Some((Reason::EndpointGone, Evidence::Unseen))
    );
}
