//! Event stream tests against the real kernel (root), each in its own namespace.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ctnetlink::{Event, EventKinds, EventStream, NewFlow, events, events_with_buffer};
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
