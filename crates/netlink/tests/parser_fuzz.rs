//! Fuzz-like robustness of the message parser: whatever the bytes, it returns flows or
//! errors and never panics (cargo-fuzz needs nightly; proptest runs on stable).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ctnetlink::testing::parse_datagram;
use ctnetlink::{Family, Flow, Status, Tuple, proto};
use proptest::prelude::*;

fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

fn nested(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    attr(ty | 0x8000, &parts.concat())
}

fn tuple(t: &Tuple) -> Vec<u8> {
    let ip = match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => vec![attr(1, &s.octets()), attr(2, &d.octets())],
        (IpAddr::V6(s), IpAddr::V6(d)) => vec![attr(3, &s.octets()), attr(4, &d.octets())],
        _ => unreachable!("test tuples share a family"),
    };
    nested(
        1,
        &[
            nested(1, &ip),
            nested(
                2,
                &[
                    attr(1, &[t.proto]),
                    attr(2, &t.sport.to_be_bytes()),
                    attr(3, &t.dport.to_be_bytes()),
                ],
            ),
        ],
    )
}

/// A CT_NEW message as the kernel sends it in a dump.
fn message(flow: &Flow) -> Vec<u8> {
    let mut tuples = tuple(&flow.orig);
    let mut reply = tuple(&flow.reply);
    // Same layout, type CTA_TUPLE_REPLY.
    reply[2..4].copy_from_slice(&(2u16 | 0x8000).to_ne_bytes());
    tuples.extend(reply);
    let body = [
        tuples,
        attr(3, &flow.status.bits().to_be_bytes()),
        attr(7, &flow.timeout.to_be_bytes()),
        attr(8, &flow.mark.to_be_bytes()),
        attr(12, &flow.id.to_be_bytes()),
        attr(18, &flow.zone.to_be_bytes()),
    ]
    .concat();
    let family = flow.family.to_af();
    let len = 16 + 4 + body.len();
    let mut out = Vec::new();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&(1u16 << 8).to_ne_bytes());
    out.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
    out.extend_from_slice(&1u32.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0, 0, 0]);
    out.extend(body);
    out
}

fn arb_flow() -> impl Strategy<Value = Flow> {
    (
        any::<bool>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<(u16, u16, u32, u32, u16, u32, u32)>(),
    )
        .prop_map(
            |(v6, a, b, (sport, dport, status, mark, zone, timeout, id))| {
                let (src, dst) = if v6 {
                    (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)))
                } else {
                    let a4 = [a[0], a[1], a[2], a[3]];
                    let b4 = [b[0], b[1], b[2], b[3]];
                    (
                        IpAddr::V4(Ipv4Addr::from(a4)),
                        IpAddr::V4(Ipv4Addr::from(b4)),
                    )
                };
                let orig = Tuple::new(src, dst, proto::UDP, sport, dport);
                Flow {
                    family: if v6 { Family::V6 } else { Family::V4 },
                    orig,
                    reply: orig.reversed(),
                    status: Status(status),
                    mark,
                    zone,
                    zone_dir: ctnetlink::ZoneDir::Both,
                    timeout,
                    id,
                }
            },
        )
}

fn parse_all(bytes: &[u8]) -> Vec<Result<Flow, String>> {
    let mut out = Vec::new();
    parse_datagram(bytes, |r| out.push(r.map_err(|e| e.to_string())));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        parse_all(&bytes);
    }

    #[test]
    fn valid_messages_round_trip(flows in proptest::collection::vec(arb_flow(), 1..8)) {
        let datagram: Vec<u8> = flows.iter().flat_map(message).collect();
        let parsed = parse_all(&datagram);
        prop_assert_eq!(parsed.len(), flows.len());
        for (parsed, flow) in parsed.iter().zip(&flows) {
            prop_assert_eq!(parsed.as_ref().unwrap(), flow);
        }
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        flows in proptest::collection::vec(arb_flow(), 1..4),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut datagram: Vec<u8> = flows.iter().flat_map(message).collect();
        for (at, value) in flips {
            let at = at.index(datagram.len());
            datagram[at] = value;
        }
        parse_all(&datagram);
        let cut = cut.index(datagram.len());
        parse_all(&datagram[..cut]);
    }
}
