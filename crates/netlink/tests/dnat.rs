//! A real UDP packet through an nftables DNAT rule: the conntrack entry, as dumped and as
//! announced by the NEW event, carries the chosen backend in its reply tuple (root).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use ctnetlink::{DumpFilter, Event, EventKinds, Family, Status, events, proto};
use futures::StreamExt;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);

/// Sends one datagram to VIP:53 from inside the namespace, on a thread that enters it.
fn send_from_namespace(netns: &std::path::Path) -> u16 {
    ctnetlink::netns::in_netns(netns, || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        socket
            .send_to(b"query", SocketAddr::new(IpAddr::V4(VIP), 53))
            .unwrap();
        socket.local_addr().unwrap().port()
    })
    .unwrap()
}

#[tokio::test]
async fn a_dnated_udp_packet_shows_its_backend_in_the_reply_tuple() {
    let Some((ns, mut ct)) = setup("a_dnated_udp_packet_shows_its_backend_in_the_reply_tuple")
    else {
        return;
    };
    for argv in [
        vec!["ip", "addr", "add", "10.244.0.5/32", "dev", "lo"],
        vec!["ip", "route", "add", "10.96.0.0/16", "dev", "lo"],
        vec!["nft", "add", "table", "ip", "svc"],
        vec![
            "nft",
            "add",
            "chain",
            "ip",
            "svc",
            "out",
            "{ type nat hook output priority -100 ; }",
        ],
        vec![
            "nft",
            "add",
            "rule",
            "ip",
            "svc",
            "out",
            "ip",
            "daddr",
            "10.96.0.10",
            "udp",
            "dport",
            "53",
            "dnat",
            "to",
            "10.244.0.5:5353",
        ],
    ] {
        ns.exec_checked(&argv).unwrap();
    }
    let mut stream = events(Some(&ns.path()), EventKinds::NEW).unwrap();
    let sport = send_from_namespace(&ns.path());

    let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a NEW event")
        .unwrap()
        .unwrap();
    let Event::New(flow) = event else {
        panic!("expected NEW, got {event:?}");
    };
    assert_eq!(flow.orig.dst, IpAddr::V4(VIP));
    assert_eq!(
        (flow.orig.proto, flow.orig.sport, flow.orig.dport),
        (proto::UDP, sport, 53)
    );
    assert_eq!(flow.reply.src, IpAddr::V4(BACKEND), "{flow:?}");
    assert_eq!(flow.reply.sport, 5353);
    assert_eq!(flow.reply.dport, sport);
    assert!(flow.status.contains(Status::DST_NAT), "{flow:?}");

    let dumped = dump_all(&mut ct, &DumpFilter::family_proto(Family::V4, proto::UDP));
    let entry = dumped
        .iter()
        .find(|f| f.orig == flow.orig)
        .expect("the entry is in the table");
    assert_eq!(entry.reply, flow.reply);
    assert_eq!(entry.id, flow.id);
}
