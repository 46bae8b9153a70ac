//! Event stream tests against the real kernel (root), each in its own namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ctnetlink::{
    Event, EventKinds, EventOptions, EventStream, Family, Flow, NewFlow, Tuple, events,
    events_with, events_with_buffer, proto,
};
use futures::StreamExt;

/// The next item, or a panic after `secs` seconds of silence.
async fn next_event(stream: &mut EventStream, secs: u64) -> Event {
    tokio::time::timeout(Duration::from_secs(secs), stream.next())
        .await
        .expect("no event in time")
        .expect("the stream never ends")
        .expect("event")
}

#[tokio::test]
async fn events_deliver_new_and_destroy_for_created_and_deleted_flows() {
    let Some((ns, mut ct)) = setup("events_deliver_new_and_destroy_for_created_and_deleted_flows")
    else {
        return;
    };
    let mut stream = events(Some(&ns.path()), EventKinds::ALL).unwrap();
    let flows: Vec<NewFlow> = (0..10).map(udp4).chain((0..5).map(udp6)).collect();
    create_all(&mut ct, &flows);
    let mut created = Vec::new();
    while created.len() < flows.len() {
        match next_event(&mut stream, 5).await {
            Event::New(flow) => created.push(flow),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(identities(&created), new_identities(&flows));
    for flow in &created {
        let wanted = flows.iter().find(|f| f.orig == flow.orig).unwrap();
        assert_eq!(
            flow.reply, wanted.reply,
            "the NEW event carries the reply tuple"
        );
    }

    let report = ct.delete(created.iter().map(|f| f.key())).unwrap();
    assert_eq!(report.deleted, flows.len() as u64);
    let mut destroyed = Vec::new();
    while destroyed.len() < flows.len() {
        match next_event(&mut stream, 5).await {
            Event::Destroy(flow) => destroyed.push(flow),
            other => panic!("unexpected {other:?}"),
        }
    }
    let ids: BTreeSet<u32> = destroyed.iter().map(|f| f.id).collect();
    assert_eq!(ids, created.iter().map(|f| f.id).collect());
}

#[tokio::test]
async fn events_report_loss_when_the_reader_stalls_and_then_go_on() {
    let Some((ns, mut ct)) = setup("events_report_loss_when_the_reader_stalls_and_then_go_on")
    else {
        return;
    };
    // A tiny buffer (the kernel rounds it up to its minimum) overflows after a few events.
    let mut stream = events_with_buffer(Some(&ns.path()), EventKinds::NEW, 4096).unwrap();
    let burst: Vec<NewFlow> = (0..2000).map(udp4).collect();
    create_all(&mut ct, &burst);
    let mut received = 0;
    let mut lost = false;
    while !lost {
        match next_event(&mut stream, 5).await {
            Event::New(_) => received += 1,
            Event::Lost => lost = true,
            Event::Destroy(flow) => panic!("not subscribed to DESTROY: {flow:?}"),
        }
    }
    assert!(
        received < burst.len(),
        "all {received} events arrived: no loss to report"
    );
    // The stream goes on with new events.
    // Drain what was queued around the loss until the socket is quiet: while it is still
    // congested the kernel drops new events too.
    while tokio::time::timeout(Duration::from_millis(500), stream.next())
        .await
        .is_ok()
    {}
    let late = udp4(5000);
    create_all(&mut ct, &[late]);
    loop {
        if let Event::New(flow) = next_event(&mut stream, 5).await
            && flow.orig == late.orig
        {
            break;
        }
    }
}

#[tokio::test]
async fn events_outside_a_namespace_that_does_not_exist_fail_cleanly() {
    if !ctnetlink::testing::root_or_skip(
        "events_outside_a_namespace_that_does_not_exist_fail_cleanly",
    ) {
        return;
    }
    let err = events(
        Some("/run/netns/does-not-exist-ctnl".as_ref()),
        EventKinds::NEW,
    )
    .unwrap_err();
    assert!(matches!(err, ctnetlink::Error::Netns { .. }), "{err}");
}

/// A TCP flow for index `i`, created by CT_NEW like the UDP ones.
fn tcp4(i: u32) -> NewFlow {
    let base = udp4(i);
    let mut orig = base.orig;
    let mut reply = base.reply;
    orig.proto = proto::TCP;
    reply.proto = proto::TCP;
    NewFlow {
        orig,
        reply,
        ..base
    }
}

/// NEW events until the one for `last` (created last), with a deadline.
async fn news_until(stream: &mut EventStream, last: &Tuple) -> Vec<Flow> {
    let mut seen = Vec::new();
    loop {
        match next_event(stream, 5).await {
            Event::New(flow) => {
                seen.push(flow);
                if flow.orig == *last {
                    return seen;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_kernel_side_filter_keeps_tcp_and_other_family_events_out_of_user_space() {
    let Some((ns, mut ct)) =
        setup("a_kernel_side_filter_keeps_tcp_and_other_family_events_out_of_user_space")
    else {
        return;
    };
    let path = ns.path();
    let mut udp_only = events_with(Some(&path), &EventOptions::new_only(&[proto::UDP])).unwrap();
    let mut udp4_only = events_with(
        Some(&path),
        &EventOptions {
            families: Some(vec![Family::V4]),
            ..EventOptions::new_only(&[proto::UDP])
        },
    )
    .unwrap();
    let mut everything = events_with(
        Some(&path),
        &EventOptions {
            kinds: EventKinds::NEW,
            ..EventOptions::default()
        },
    )
    .unwrap();
    // TCP and UDP interleaved, then a last IPv4 UDP entry that every stream must see.
    let mut flows = Vec::new();
    for i in 0..20 {
        flows.push(tcp4(100 + i));
        flows.push(if i % 2 == 0 { udp4(i) } else { udp6(i) });
    }
    let last = udp4(1000);
    flows.push(last);
    create_all(&mut ct, &flows);

    let seen = news_until(&mut udp_only, &last.orig).await;
    assert!(
        seen.iter().all(|f| f.orig.proto == proto::UDP),
        "a TCP event reached user space: {seen:?}"
    );
    assert_eq!(seen.len(), 21, "every UDP event, both families: {seen:?}");
    let stats = udp_only.stats();
    assert_eq!(stats.filtered, 0, "user space had to filter: {stats:?}");
    assert_eq!(stats.events, 21, "{stats:?}");

    let seen = news_until(&mut udp4_only, &last.orig).await;
    assert!(
        seen.iter()
            .all(|f| f.orig.proto == proto::UDP && f.family == Family::V4),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 11);
    assert_eq!(udp4_only.stats().filtered, 0);

    // Without a filter both protocols arrive.
    let seen = news_until(&mut everything, &last.orig).await;
    assert_eq!(seen.len(), flows.len());
    assert_eq!(
        seen.iter().filter(|f| f.orig.proto == proto::TCP).count(),
        20
    );
    // Nothing else is queued on the filtered streams.
    for stream in [&mut udp_only, &mut udp4_only] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), stream.next())
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn empty_filter_lists_are_refused() {
    for options in [
        EventOptions::new_only(&[]),
        EventOptions {
            families: Some(Vec::new()),
            ..EventOptions::default()
        },
    ] {
        let err = events_with(None, &options).unwrap_err();
        assert!(matches!(err, ctnetlink::Error::Invalid(_)), "{err}");
    }
}

#[test]
fn the_events_sysctl_is_read_inside_the_namespace() {
    if !ctnetlink::testing::root_or_skip("the_events_sysctl_is_read_inside_the_namespace") {
        return;
    }
    let ns = ctnetlink::testing::TestNetns::new("ct-evsysctl").unwrap();
    ns.exec_checked(["sysctl", "-qw", "net.netfilter.nf_conntrack_events=0"])
        .unwrap();
    assert_eq!(ctnetlink::events_sysctl(Some(&ns.path())).unwrap(), 0);
    ns.exec_checked(["sysctl", "-qw", "net.netfilter.nf_conntrack_events=1"])
        .unwrap();
    assert_eq!(ctnetlink::events_sysctl(Some(&ns.path())).unwrap(), 1);
}
