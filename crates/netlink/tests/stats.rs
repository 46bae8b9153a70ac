//! Statistics against the real kernel and `conntrack -S` / `conntrack -C` (root only).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;

use common::*;
use ctnetlink::testing::{TestNetns, root_or_skip};
use ctnetlink::{Capabilities, Conntrack, StatCounters, Stats, StatsReader, StatsSource};

/// Makes conntrack track this namespace's packets (hooks are registered only when a rule
/// needs them) and sends UDP over loopback, so the table holds kernel-made entries too.
fn udp_traffic(ns: &TestNetns) {
    ns.exec_checked([
        "nft",
        "add table inet t; add chain inet t out { type filter hook output priority 0; }; \
         add rule inet t out ct state new counter",
    ])
    .unwrap();
    ctnetlink::netns::in_netns(&ns.path(), || {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..4 {
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..3 {
                client.send_to(b"x", server.local_addr().unwrap()).unwrap();
            }
        }
    })
    .unwrap();
}

fn conntrack_s(ns: &TestNetns) -> (usize, BTreeMap<String, u64>) {
    ns.conntrack_stats().unwrap()
}

fn conntrack_c(ns: &TestNetns) -> u64 {
    ns.conntrack_count().unwrap()
}

fn nf_conntrack_max() -> u64 {
    ctnetlink::testing::nf_conntrack_max().unwrap()
}

fn named(counters: &StatCounters) -> BTreeMap<String, u64> {
    counters
        .named()
        .iter()
        .map(|(n, v)| ((*n).to_owned(), *v))
        .collect()
}

fn assert_matches_conntrack_tools(ns: &TestNetns, stats: &Stats) {
    let (cpus, sums) = conntrack_s(ns);
    assert_eq!(stats.cpus, cpus, "{stats:?}");
    assert_eq!(named(&stats.counters), sums, "{:?}", stats.source);
    assert_eq!(stats.table.entries, conntrack_c(ns), "{:?}", stats.source);
    assert_eq!(stats.table.max_entries, nf_conntrack_max());
}

#[test]
fn netlink_and_proc_stats_match_conntrack_tools_in_a_namespace() {
    if !root_or_skip("netlink_and_proc_stats_match_conntrack_tools_in_a_namespace") {
        return;
    }
    let ns = TestNetns::new("stats").unwrap();
    let mut ct = Conntrack::open(Some(&ns.path()), Capabilities::from_running_kernel()).unwrap();
    let flows: Vec<_> = (0..25).map(udp4).collect();
    assert_eq!(ct.create(&flows).unwrap().created, 25);
    udp_traffic(&ns);

    let mut reader = StatsReader::open_in(&ns.path()).unwrap();
    let netlink = reader.read_netlink().unwrap();
    assert_eq!(netlink.source, StatsSource::Netlink);
    // 25 created by hand, plus the loopback flows the traffic made. (On 6.18 only ctnetlink
    // inserts count as `insert`, and lookups no longer count as `found`.)
    assert!(netlink.table.entries >= 25 + 4, "{netlink:?}");
    assert!(netlink.counters.insert >= 25, "{netlink:?}");
    assert_matches_conntrack_tools(&ns, &netlink);

    let proc = reader.read_proc().unwrap();
    assert_eq!(proc.source, StatsSource::Proc);
    assert_matches_conntrack_tools(&ns, &proc);
    assert_eq!(proc.counters, netlink.counters);
    assert_eq!(proc.table, netlink.table);

    let per_cpu = reader.stats_per_cpu().unwrap();
    let cpus: Vec<u16> = per_cpu.iter().map(|c| c.cpu).collect();
    let mut sorted = cpus.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(cpus, sorted, "one message per CPU");
    assert_eq!(reader.read().unwrap().source, StatsSource::Netlink);
}

#[test]
fn stats_are_per_namespace() {
    if !root_or_skip("stats_are_per_namespace") {
        return;
    }
    let busy = TestNetns::new("statsbusy").unwrap();
    let idle = TestNetns::new("statsidle").unwrap();
    let mut ct = Conntrack::open(Some(&busy.path()), Capabilities::from_running_kernel()).unwrap();
    let flows: Vec<_> = (0..7).map(udp4).collect();
    assert_eq!(ct.create(&flows).unwrap().created, 7);

    let busy_stats = StatsReader::open_in(&busy.path()).unwrap().read().unwrap();
    let idle_stats = StatsReader::open_in(&idle.path()).unwrap().read().unwrap();
    assert_eq!(busy_stats.table.entries, 7);
    assert_eq!(busy_stats.counters.insert, 7);
    assert_eq!(idle_stats.table.entries, 0);
    assert_eq!(idle_stats.counters, StatCounters::default());
    // The /proc fallback must read the target namespace too, not the test's own.
    let idle_proc = ctnetlink::read_proc_in(Some(&idle.path())).unwrap();
    assert_eq!(idle_proc.table.entries, 0);
    let busy_proc = ctnetlink::read_proc_in(Some(&busy.path())).unwrap();
    assert_eq!(busy_proc.table.entries, 7);
    assert_eq!(busy_proc.counters.insert, 7);
}
