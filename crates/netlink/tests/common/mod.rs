//! Helpers shared by the real-kernel tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ctnetlink::testing::TestNetns;
use ctnetlink::{Conntrack, DumpFilter, Flow, NewFlow, Status, Tuple, proto};

/// A distinct IPv4 UDP flow for index `i` (up to 2^24 of them), DNAT-shaped: the reply comes
/// from a "backend" address rather than the original destination.
pub fn udp4(i: u32) -> NewFlow {
    let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)));
    let vip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
    let backend = IpAddr::V4(Ipv4Addr::new(10, 244, (i % 7) as u8, 5));
    let sport = 1024 + (i % 50_000) as u16;
    NewFlow {
        orig: Tuple::new(client, vip, proto::UDP, sport, 53),
        reply: Tuple::new(backend, client, proto::UDP, 5353, sport),
        timeout: 600,
        status: Status::SEEN_REPLY,
        mark: 0,
        zone: 0,
    }
}

/// A distinct IPv6 UDP flow for index `i`.
pub fn udp6(i: u32) -> NewFlow {
    let client = IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0,
        0,
        0,
        0,
        0,
        (i >> 16) as u16,
        i as u16,
    ));
    let vip = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 10));
    let backend = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 5));
    NewFlow {
        orig: Tuple::new(client, vip, proto::UDP, 40000, 53),
        reply: Tuple::new(backend, client, proto::UDP, 5353, 40000),
        timeout: 600,
        status: Status::NONE,
        mark: 0,
        zone: 0,
    }
}

/// An ICMP echo flow of family `v6` for index `i`.
pub fn icmp(i: u16, v6: bool) -> NewFlow {
    let (a, b, protonum, request, reply) = if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, i)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1)),
            proto::ICMPV6,
            128u16,
            129u16,
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, i as u8)),
            IpAddr::V4(Ipv4Addr::new(192, 168, 2, 1)),
            proto::ICMP,
            8u16,
            0u16,
        )
    };
    NewFlow {
        orig: Tuple::new(a, b, protonum, i, request << 8),
        reply: Tuple::new(b, a, protonum, i, reply << 8),
        timeout: 600,
        status: Status::NONE,
        mark: 0,
        zone: 0,
    }
}

/// A fresh namespace and a handle on it; `None` when the test must skip (not root).
pub fn setup(test: &str) -> Option<(TestNetns, Conntrack)> {
    if !ctnetlink::testing::root_or_skip(test) {
        return None;
    }
    let ns = TestNetns::new("ctnl").expect("create test namespace");
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let ct = Conntrack::open(Some(&ns.path()), caps).expect("open conntrack in test namespace");
    Some((ns, ct))
}

/// Creates flows and insists that all were created.
pub fn create_all(ct: &mut Conntrack, flows: &[NewFlow]) {
    let report = ct.create(flows).expect("create");
    assert!(
        report.failed.is_empty(),
        "create failed: {:?}",
        report.failed
    );
    assert_eq!(report.created, flows.len() as u64, "{report:?}");
}

/// Everything a dump returns for `filter`.
pub fn dump_all(ct: &mut Conntrack, filter: &DumpFilter) -> Vec<Flow> {
    let mut flows = Vec::new();
    ct.dump(filter, |flow| flows.push(*flow)).expect("dump");
    flows
}

/// (original tuple, zone) of each flow, as a set: what identifies an entry.
pub fn identities<'a>(flows: impl IntoIterator<Item = &'a Flow>) -> BTreeSet<String> {
    flows
        .into_iter()
        .map(|f| format!("{} zone={}", f.orig, f.zone))
        .collect()
}

/// The same identities for flows about to be created.
pub fn new_identities<'a>(flows: impl IntoIterator<Item = &'a NewFlow>) -> BTreeSet<String> {
    flows
        .into_iter()
        .map(|f| format!("{} zone={}", f.orig, f.zone))
        .collect()
}
