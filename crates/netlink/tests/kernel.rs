//! Tests against the real kernel, each in its own throwaway network namespace (root only).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use ctnetlink::{
    Capabilities, Conntrack, DumpFilter, Family, FilterPlacement, FlowKey, NewFlow, Status, proto,
};

#[test]
fn create_then_dump_round_trips_ipv4_and_ipv6() {
    let Some((_ns, mut ct)) = setup("create_then_dump_round_trips_ipv4_and_ipv6") else {
        return;
    };
    let mut v4 = udp4(1);
    v4.mark = 0xbeef;
    v4.zone = 0;
    v4.status = Status::SEEN_REPLY | Status::ASSURED;
    let mut v6 = udp6(2);
    v6.mark = 7;
    v6.zone = 12;
    let wanted = [v4, v6, icmp(3, false), icmp(4, true)];
    create_all(&mut ct, &wanted);

    let flows = dump_all(&mut ct, &DumpFilter::all());
    assert_eq!(flows.len(), wanted.len(), "{flows:#?}");
    for new in &wanted {
        let flow = flows
            .iter()
            .find(|f| f.orig == new.orig && f.zone == new.zone)
            .unwrap_or_else(|| panic!("{new:?} missing from {flows:#?}"));
        assert_eq!(flow.family, Family::of(&new.orig.src));
        assert_eq!(flow.reply, new.reply);
        assert_eq!(flow.mark, new.mark);
        assert!(
            flow.status.contains(new.status | Status::CONFIRMED),
            "{flow:?}"
        );
        assert!(
            flow.timeout <= new.timeout && flow.timeout + 10 >= new.timeout,
            "{flow:?}"
        );
        assert_ne!(flow.id, 0);
    }
    // The families filter splits them.
    for family in Family::ALL {
        let only = dump_all(
            &mut ct,
            &DumpFilter {
                family: Some(family),
                ..DumpFilter::default()
            },
        );
        assert_eq!(only.len(), 2);
        assert!(only.iter().all(|f| f.family == family));
    }
}

#[test]
fn handles_opened_on_a_path_see_that_namespace_and_the_caller_stays_in_its_own() {
    let Some((ns, mut first)) =
        setup("handles_opened_on_a_path_see_that_namespace_and_the_caller_stays_in_its_own")
    else {
        return;
    };
    create_all(&mut first, &[udp4(9)]);
    let mut second = Conntrack::open(Some(&ns.path()), Capabilities::NONE).unwrap();
    let flows = dump_all(&mut second, &DumpFilter::all());
    assert_eq!(identities(&flows), new_identities(&[udp4(9)]));
    // The test thread itself stayed where it was: its own namespace does not hold the entry.
    let mut here = Conntrack::open(None, Capabilities::from_running_kernel()).unwrap();
    let mut seen_here = 0;
    here.dump(&DumpFilter::all(), |flow| {
        if flow.orig == udp4(9).orig {
            seen_here += 1;
        }
    })
    .unwrap();
    assert_eq!(seen_here, 0);
}

#[test]
fn filtered_dumps_return_exactly_the_subset_in_kernel_and_in_user_space() {
    let Some((ns, ct)) =
        setup("filtered_dumps_return_exactly_the_subset_in_kernel_and_in_user_space")
    else {
        return;
    };
    drop(ct);
    // Kernel filters as the live probe found them, not as the version suggests.
    let probed = ctnetlink::testing::probe_capabilities().unwrap();
    let mut ct = Conntrack::open(Some(&ns.path()), probed).unwrap();
    let mut flows = Vec::new();
    for i in 0..24u32 {
        let mut flow = if i % 2 == 0 { udp4(i) } else { udp6(i) };
        flow.mark = i % 3;
        flow.zone = (i % 4) as u16;
        flow.status = if i % 5 == 0 {
            Status::SEEN_REPLY | Status::ASSURED
        } else {
            Status::NONE
        };
        flows.push(flow);
    }
    for i in 0..4u16 {
        let mut flow = icmp(i + 1, i % 2 == 1);
        flow.mark = 1;
        flows.push(flow);
    }
    create_all(&mut ct, &flows);

    let caps = ct.capabilities();
    assert!(
        caps.probed,
        "the capability probe should run as root: {caps:?}"
    );
    // This project's kernels (6.8+) implement every filter; the probe must find them.
    if Capabilities::from_running_kernel().zone {
        assert!(
            caps.proto && caps.mark && caps.status && caps.zone,
            "{caps:?}"
        );
    }
    let filters = [
        DumpFilter::family_proto(Family::V4, proto::UDP),
        DumpFilter::family_proto(Family::V6, proto::UDP),
        DumpFilter::family_proto(Family::V6, proto::ICMPV6),
        DumpFilter {
            proto: Some(proto::UDP),
            ..DumpFilter::default()
        },
        DumpFilter {
            family: Some(Family::V4),
            mark: Some((0xff, 1)),
            ..DumpFilter::default()
        },
        DumpFilter {
            mark: Some((0x2, 0x2)),
            zone: Some(2),
            ..DumpFilter::default()
        },
        DumpFilter {
            family: Some(Family::V6),
            status: Some((Status::ASSURED, Status::ASSURED)),
            ..DumpFilter::default()
        },
        DumpFilter {
            status: Some((Status::ASSURED, Status::NONE)),
            proto: Some(proto::UDP),
            family: Some(Family::V4),
            ..DumpFilter::default()
        },
        DumpFilter {
            zone: Some(3),
            ..DumpFilter::default()
        },
        DumpFilter {
            zone: Some(1),
            family: Some(Family::V6),
            proto: Some(proto::UDP),
            mark: Some((u32::MAX, 0)),
            status: Some((Status::SEEN_REPLY, Status::NONE)),
        },
    ];
    for filter in &filters {
        // Expected, computed from what was created, independently of DumpFilter::matches.
        let expected = new_identities(flows.iter().filter(|f| {
            let family = Family::of(&f.orig.src);
            filter.family.is_none_or(|x| x == family)
                && filter.proto.is_none_or(|x| x == f.orig.proto)
                && filter.mark.is_none_or(|(m, v)| f.mark & m == v)
                && filter.zone.is_none_or(|z| z == f.zone)
                // The kernel adds CONFIRMED; the filters above only look at these two bits.
                && filter
                    .status
                    .is_none_or(|(m, v)| f.status.bits() & m.bits() == v.bits())
        }));
        assert!(
            !expected.is_empty(),
            "filter {filter:?} should match something"
        );
        let mut in_kernel = Vec::new();
        let stats = ct
            .dump_with(filter, FilterPlacement::Auto, |f| in_kernel.push(*f))
            .unwrap();
        let mut in_user_space = Vec::new();
        let user_stats = ct
            .dump_with(filter, FilterPlacement::UserSpace, |f| {
                in_user_space.push(*f)
            })
            .unwrap();
        assert_eq!(identities(&in_kernel), expected, "kernel-side {filter:?}");
        assert_eq!(
            identities(&in_user_space),
            expected,
            "user-space {filter:?}"
        );
        assert_eq!(stats.matched, expected.len() as u64);
        assert_eq!(user_stats.matched, expected.len() as u64);
        // Where the kernel did all the work, it sent nothing else.
        if stats.filtered_in_kernel {
            assert_eq!(stats.messages, stats.matched, "{filter:?} {stats:?}");
        }
        assert!(user_stats.messages >= user_stats.matched);
    }
}

#[test]
fn batched_delete_of_10k_scattered_out_of_100k_removes_exactly_those() {
    let Some((_ns, mut ct)) =
        setup("batched_delete_of_10k_scattered_out_of_100k_removes_exactly_those")
    else {
        return;
    };
    let flows: Vec<NewFlow> = (0..100_000).map(udp4).collect();
    create_all(&mut ct, &flows);
    let mut keys = HashMap::new();
    ct.dump(&DumpFilter::family_proto(Family::V4, proto::UDP), |flow| {
        keys.insert(flow.orig, flow.key());
    })
    .unwrap();
    assert_eq!(keys.len(), 100_000);

    // Every 10th, in an order unrelated to creation.
    let doomed: Vec<FlowKey> = (0..100_000u32)
        .filter(|i| i % 10 == 7)
        .map(|i| keys[&udp4((i * 7919) % 100_000 / 10 * 10 + 7).orig])
        .collect();
    let doomed_set: BTreeSet<String> = doomed.iter().map(|k| k.orig.to_string()).collect();
    assert_eq!(doomed_set.len(), 10_000);
    let report = ct.delete(doomed.iter().copied()).unwrap();
    assert!(
        report.failed.is_empty(),
        "{:?}",
        &report.failed[..3.min(report.failed.len())]
    );
    assert_eq!(
        (report.deleted, report.already_gone, report.unconfirmed),
        (10_000, 0, 0)
    );

    let left = dump_all(&mut ct, &DumpFilter::all());
    assert_eq!(left.len(), 90_000);
    assert!(
        left.iter()
            .all(|f| !doomed_set.contains(&f.orig.to_string()))
    );
}

#[test]
fn deleting_already_gone_or_recreated_entries_counts_them_as_gone() {
    let Some((_ns, mut ct)) =
        setup("deleting_already_gone_or_recreated_entries_counts_them_as_gone")
    else {
        return;
    };
    let flows: Vec<NewFlow> = (0..50).map(udp4).collect();
    create_all(&mut ct, &flows);
    let keys: Vec<FlowKey> = dump_all(&mut ct, &DumpFilter::all())
        .iter()
        .map(|f| f.key())
        .collect();
    let first = ct.delete(keys[..20].iter().copied()).unwrap();
    assert_eq!((first.deleted, first.already_gone), (20, 0));
    // Again, mixed with live ones: the gone ones are counted, the live ones deleted.
    let again = ct.delete(keys[..25].iter().copied()).unwrap();
    assert_eq!((again.deleted, again.already_gone), (5, 20));
    assert!(again.failed.is_empty());
    // A key whose id belongs to an earlier incarnation leaves the live entry alone.
    let mut stale = keys[30];
    stale.id = stale.id.map(|id| id.wrapping_add(1));
    let report = ct.delete([stale]).unwrap();
    assert_eq!((report.deleted, report.already_gone), (0, 1));
    // Without an id it is deleted.
    let report = ct.delete([FlowKey { id: None, ..stale }]).unwrap();
    assert_eq!(report.deleted, 1);
    assert_eq!(dump_all(&mut ct, &DumpFilter::all()).len(), 50 - 25 - 1);
    // An invalid key (mixed families) is reported for itself, and never sent.
    let mut invalid = keys[40];
    if let Some(reply) = &mut invalid.reply {
        reply.dst = "fd00::1".parse().unwrap();
    }
    let report = ct.delete([invalid, keys[41]]).unwrap();
    assert_eq!(report.deleted, 1);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, invalid);
}

#[test]
fn a_key_never_deletes_an_entry_recreated_through_another_nat_decision() {
    let Some((_ns, mut ct)) =
        setup("a_key_never_deletes_an_entry_recreated_through_another_nat_decision")
    else {
        return;
    };
    // A client with a fixed source port: its entry DNATed to a backend that left...
    let stale = udp4(1);
    create_all(&mut ct, &[stale]);
    let key = dump_all(&mut ct, &DumpFilter::all())[0].key();
    let report = ct.delete([key]).unwrap();
    assert_eq!(report.deleted, 1);
    // ...is re-created by its next packet, DNATed to a healthy backend. The kernel often gives
    // it the same id (a hash of the reused memory and the original tuple): a key without an id
    // stands for that case. The old key must not find the new entry.
    let mut healthy = stale;
    healthy.reply.src = "10.244.99.1".parse().unwrap();
    create_all(&mut ct, &[healthy]);
    let report = ct.delete([FlowKey { id: None, ..key }]).unwrap();
    assert_eq!((report.deleted, report.already_gone), (0, 1), "{report:?}");
    let left = dump_all(&mut ct, &DumpFilter::all());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].reply.src, healthy.reply.src);
}

#[test]
fn zoned_entries_are_dumped_and_deleted_by_zone() {
    let Some((_ns, mut ct)) = setup("zoned_entries_are_dumped_and_deleted_by_zone") else {
        return;
    };
    let base = udp4(5);
    let zones = [0u16, 5, 65535];
    let flows: Vec<NewFlow> = zones.iter().map(|&zone| NewFlow { zone, ..base }).collect();
    create_all(&mut ct, &flows);
    let dumped = dump_all(&mut ct, &DumpFilter::all());
    let dumped_zones: BTreeSet<u16> = dumped.iter().map(|f| f.zone).collect();
    assert_eq!(dumped_zones, zones.into_iter().collect());
    let in_zone_5 = dumped.iter().find(|f| f.zone == 5).unwrap();
    let report = ct.delete([in_zone_5.key()]).unwrap();
    assert_eq!(report.deleted, 1);
    let left: BTreeSet<u16> = dump_all(&mut ct, &DumpFilter::all())
        .iter()
        .map(|f| f.zone)
        .collect();
    assert_eq!(left, [0u16, 65535].into_iter().collect());
    // A zoneless key for a zoned tuple does not touch the other zones' entries.
    let report = ct
        .delete([FlowKey {
            zone: 0,
            id: None,
            ..in_zone_5.key()
        }])
        .unwrap();
    assert_eq!(report.deleted, 1);
    let left: Vec<u16> = dump_all(&mut ct, &DumpFilter::all())
        .iter()
        .map(|f| f.zone)
        .collect();
    assert_eq!(left, [65535]);
}

#[test]
fn creating_an_existing_entry_is_counted_not_failed() {
    let Some((_ns, mut ct)) = setup("creating_an_existing_entry_is_counted_not_failed") else {
        return;
    };
    create_all(&mut ct, &[udp4(1), udp4(2)]);
    let report = ct.create(&[udp4(2), udp4(3)]).unwrap();
    assert_eq!((report.created, report.already_existed), (1, 1));
    assert!(report.failed.is_empty());
}

#[test]
fn the_one_dump_probe_finds_every_filter_on_this_kernel() {
    if !ctnetlink::testing::root_or_skip("the_one_dump_probe_finds_every_filter_on_this_kernel") {
        return;
    }
    let probed = ctnetlink::testing::probe_capabilities().unwrap();
    // Linux >= 6.8 implements all four criteria; the probe must see each of them work.
    let expected = ctnetlink::Capabilities::from_running_kernel();
    assert!(probed.probed);
    assert_eq!(
        (probed.proto, probed.mark, probed.status, probed.zone),
        (
            expected.proto,
            expected.mark,
            expected.status,
            expected.zone
        ),
        "probe {probed:?} vs kernel version {expected:?}"
    );
}

/// Runs `f` on a thread and fails the test if it has not finished within `secs`, so that a
/// handle that hangs is a failure rather than a stuck test run.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("the handle hung (or the closure panicked)")
}

#[test]
fn a_dump_abandoned_by_a_panicking_callback_leaves_the_handle_usable() {
    let Some((ns, mut ct)) =
        setup("a_dump_abandoned_by_a_panicking_callback_leaves_the_handle_usable")
    else {
        return;
    };
    // Enough entries for many datagrams, so that the dump is abandoned in its middle.
    let flows: Vec<NewFlow> = (0..5_000).map(udp4).collect();
    create_all(&mut ct, &flows);
    let (second, deleted, third, reopens) = within(120, move || {
        let abandoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut seen = 0;
            ct.dump(&DumpFilter::all(), |_| {
                seen += 1;
                if seen == 10 {
                    panic!("the callback gives up (on purpose)");
                }
            })
        }));
        assert!(abandoned.is_err(), "the panic propagates to the caller");
        // The same handle dumps again (no EBUSY) and deletes.
        let all = dump_all(&mut ct, &DumpFilter::all());
        let report = ct.delete([all[0].key()]).unwrap();
        let third = dump_all(&mut ct, &DumpFilter::all()).len();
        (all.len(), report.deleted, third, ct.reopens())
    });
    drop(ns);
    assert_eq!((second, deleted, third), (5_000, 1, 4_999));
    assert_eq!(
        reopens, 1,
        "one new socket, for the request after the abandoned dump"
    );
}

#[test]
fn a_delete_after_an_abandoned_dump_is_not_poisoned() {
    let Some((_ns, mut ct)) = setup("a_delete_after_an_abandoned_dump_is_not_poisoned") else {
        return;
    };
    let flows: Vec<NewFlow> = (0..5_000).map(udp4).collect();
    create_all(&mut ct, &flows);
    let mut keys = Vec::new();
    let (deleted, left) = within(120, move || {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ct.dump(&DumpFilter::all(), |flow| {
                keys.push(flow.key());
                if keys.len() == 100 {
                    panic!("the callback gives up (on purpose)");
                }
            })
        }));
        // Straight to a batch delete and a create: their replies must not be mixed up with
        // the rest of the abandoned dump.
        let report = ct.delete(keys.iter().copied()).unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        create_all(&mut ct, &[udp4(9_999)]);
        (report.deleted, dump_all(&mut ct, &DumpFilter::all()).len())
    });
    assert_eq!(deleted, 100);
    assert_eq!(left, 5_000 - 100 + 1);
}

#[test]
fn one_dump_without_a_family_returns_both_families_with_one_request() {
    let Some((ns, mut ct)) =
        setup("one_dump_without_a_family_returns_both_families_with_one_request")
    else {
        return;
    };
    let mut flows = Vec::new();
    for i in 0..40u32 {
        let mut flow = if i % 2 == 0 { udp4(i) } else { udp6(i) };
        flow.mark = i % 4;
        flows.push(flow);
    }
    // Entries of another protocol in both families, which the protocol filter must drop.
    for i in 0..6u16 {
        let mut flow = icmp(i + 1, i % 2 == 1);
        flow.mark = 1;
        flows.push(flow);
    }
    create_all(&mut ct, &flows);
    let expected =
        |keep: &dyn Fn(&NewFlow) -> bool| new_identities(flows.iter().filter(|f| keep(f)));

    // Both families, UDP only: one request.
    let before = ct.dump_requests();
    let mut seen = Vec::new();
    let stats = ct
        .dump(&DumpFilter::all_families_proto(proto::UDP), |f| {
            seen.push(*f)
        })
        .unwrap();
    assert_eq!(ct.dump_requests(), before + 1, "one dump request");
    assert_eq!(identities(&seen), expected(&|f| f.orig.proto == proto::UDP));
    for family in Family::ALL {
        assert_eq!(seen.iter().filter(|f| f.family == family).count(), 20);
    }
    assert!(seen.iter().all(|f| f.orig.proto == proto::UDP));
    // The kernel cannot filter the protocol without a family: the ICMP entries came out of
    // it and were dropped in user space.
    assert!(!stats.filtered_in_kernel, "{stats:?}");
    assert_eq!((stats.messages, stats.matched), (46, 40), "{stats:?}");

    // Criteria that need no family stay in the kernel for a dump of both families.
    if ct.capabilities().mark {
        let by_mark = DumpFilter {
            mark: Some((0x3, 1)),
            ..DumpFilter::default()
        };
        let before = ct.dump_requests();
        let mut seen = Vec::new();
        let stats = ct.dump(&by_mark, |f| seen.push(*f)).unwrap();
        assert_eq!(ct.dump_requests(), before + 1);
        assert_eq!(identities(&seen), expected(&|f| f.mark & 0x3 == 1));
        assert!(
            Family::ALL
                .iter()
                .all(|&family| seen.iter().any(|f| f.family == family))
        );
        assert!(stats.filtered_in_kernel, "{stats:?}");
        assert_eq!(
            stats.messages, stats.matched,
            "the kernel sent only matches"
        );
    }
    if ct.capabilities().status {
        let unreplied = DumpFilter {
            status: Some((Status::SEEN_REPLY, Status::NONE)),
            ..DumpFilter::default()
        };
        let mut seen = Vec::new();
        let stats = ct.dump(&unreplied, |f| seen.push(*f)).unwrap();
        assert_eq!(
            identities(&seen),
            expected(&|f| !f.status.contains(Status::SEEN_REPLY))
        );
        assert!(
            Family::ALL
                .iter()
                .all(|&family| seen.iter().any(|f| f.family == family))
        );
        assert!(stats.filtered_in_kernel, "{stats:?}");
        assert_eq!(
            stats.messages, stats.matched,
            "the kernel sent only matches"
        );
    }

    // The request a handle sends, alone on a raw socket: one request, both families.
    let caps = ct.capabilities();
    let filter = DumpFilter::all_families_proto(proto::UDP);
    let mut raw = ctnetlink::testing::RawDumper::new(&ns.path(), &filter, &caps).unwrap();
    let mut families = HashMap::new();
    raw.dump_with(|datagram| {
        ctnetlink::testing::parse_datagram(datagram, |flow| {
            let flow = flow.unwrap();
            if flow.orig.proto == proto::UDP {
                *families.entry(flow.family).or_insert(0) += 1;
            }
        })
    })
    .unwrap();
    assert_eq!(families.get(&Family::V4), Some(&20));
    assert_eq!(families.get(&Family::V6), Some(&20));
}
