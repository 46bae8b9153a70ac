//! Zero-allocation parsing of netlink datagrams and ctnetlink conntrack messages.
//!
//! Every length is checked before it is used: whatever the bytes, these functions return an
//! error instead of panicking (see the proptests in `tests/parser_fuzz.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Error;
use crate::model::{Family, Flow, Status, Tuple, ZoneDir, proto};
use crate::wire::*;

/// One netlink message inside a datagram.
#[derive(Clone, Copy, Debug)]
pub struct NlMsg<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// Everything after the 16-byte header, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

/// Iterates over the messages of one received datagram.
///
/// After the first error the iterator is exhausted: a bad length makes the rest unreadable.
#[derive(Clone, Debug)]
pub struct NlMsgs<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> NlMsgs<'a> {
    /// Messages in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, offset: 0 }
    }
}

impl<'a> Iterator for NlMsgs<'a> {
    type Item = Result<NlMsg<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.offset..)?;
        if rest.is_empty() {
            return None;
        }
        let at = self.offset;
        // Whatever happens next, do not come back to this datagram on error.
        self.offset = self.buf.len();
        if rest.len() < NLMSG_HDR_LEN {
            return Some(Err(Error::Malformed {
                what: "truncated netlink header",
                offset: at,
            }));
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return Some(Err(Error::Malformed {
                what: "netlink message length out of bounds",
                offset: at,
            }));
        }
        let msg = NlMsg {
            ty: u16::from_ne_bytes([rest[4], rest[5]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
            payload: &rest[NLMSG_HDR_LEN..len],
        };
        self.offset = at + align4(len).min(rest.len());
        Some(Ok(msg))
    }
}

/// The errno of an `NLMSG_ERROR` payload: 0 for an acknowledgement, else the positive errno.
pub fn error_code(payload: &[u8]) -> Result<i32, Error> {
    let bytes: [u8; 4] =
        payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::Malformed {
                what: "truncated NLMSG_ERROR",
                offset: NLMSG_HDR_LEN,
            })?;
    Ok(i32::from_ne_bytes(bytes).saturating_neg())
}

/// Why a message is unreadable, with the byte offset of the problem inside the buffer being
/// parsed. Kept small (unlike [`Error`]) so that the hot path passes results in registers.
#[derive(Clone, Copy, Debug)]
struct Bad {
    what: &'static str,
    offset: usize,
}

impl Bad {
    const fn at(what: &'static str, offset: usize) -> Self {
        Self { what, offset }
    }

    /// The public error, with the offset counted from the start of the netlink message.
    fn into_error(self, base: usize) -> Error {
        Error::Malformed {
            what: self.what,
            offset: base + self.offset,
        }
    }
}

/// The attribute at `at` in `buf`: `(type without flag bits, payload, offset of the next)`.
///
/// The next offset may lie past the end of `buf` (a last attribute without its padding); loops
/// stop there.
#[inline(always)]
fn attr_at(buf: &[u8], at: usize) -> Result<(u16, &[u8], usize), Bad> {
    let Some(&[l0, l1, t0, t1]) = buf.get(at..at + NLA_HDR_LEN) else {
        return Err(Bad::at("truncated attribute header", at));
    };
    let len = usize::from(u16::from_ne_bytes([l0, l1]));
    let ty = u16::from_ne_bytes([t0, t1]) & NLA_TYPE_MASK;
    // A length below the header size makes the range empty-reversed, which `get` refuses.
    match buf.get(at + NLA_HDR_LEN..at + len) {
        Some(payload) if len >= NLA_HDR_LEN => Ok((ty, payload, at + align4(len))),
        _ => Err(Bad::at("attribute length out of bounds", at)),
    }
}

/// Iterates over the attributes in a buffer: `(type without flag bits, payload)`.
///
/// After the first error the iterator is exhausted: a bad length makes the rest unreadable.
#[derive(Clone, Debug)]
pub struct Attrs<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Attrs<'a> {
    /// Attributes in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, offset: 0 }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset >= self.buf.len() {
            return None;
        }
        match attr_at(self.buf, self.offset) {
            Ok((ty, payload, next)) => {
                self.offset = next;
                Some(Ok((ty, payload)))
            }
            Err(bad) => {
                self.offset = self.buf.len();
                Some(Err(bad.into_error(0)))
            }
        }
    }
}

#[inline(always)]
fn be_u16(payload: &[u8], what: &'static str) -> Result<u16, Bad> {
    match payload {
        [b0, b1, ..] => Ok(u16::from_be_bytes([*b0, *b1])),
        _ => Err(Bad::at(what, 0)),
    }
}

#[inline(always)]
fn be_u32(payload: &[u8], what: &'static str) -> Result<u32, Bad> {
    match payload {
        [b0, b1, b2, b3, ..] => Ok(u32::from_be_bytes([*b0, *b1, *b2, *b3])),
        _ => Err(Bad::at(what, 0)),
    }
}

fn first_u8(payload: &[u8], what: &'static str) -> Result<u8, Bad> {
    payload.first().copied().ok_or(Bad::at(what, 0))
}

fn ipv4(payload: &[u8]) -> Result<IpAddr, Bad> {
    let octets: [u8; 4] = payload
        .try_into()
        .map_err(|_| Bad::at("IPv4 address is not 4 bytes", 0))?;
    Ok(IpAddr::V4(Ipv4Addr::from(octets)))
}

fn ipv6(payload: &[u8]) -> Result<IpAddr, Bad> {
    let octets: [u8; 16] = payload
        .try_into()
        .map_err(|_| Bad::at("IPv6 address is not 16 bytes", 0))?;
    Ok(IpAddr::V6(Ipv6Addr::from(octets)))
}

/// An attribute header as the native-endian `u32` that starts the attribute.
const fn attr_header(len: usize, ty: u16) -> u32 {
    let len = (len as u16).to_ne_bytes();
    let ty = ty.to_ne_bytes();
    u32::from_ne_bytes([len[0], len[1], ty[0], ty[1]])
}

/// Clears the flag bits (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`) of an attribute header word.
const HEADER_FLAGS_OFF: u32 = attr_header(0xffff, NLA_TYPE_MASK);

/// Size of the `CTA_TUPLE_PROTO` nest the kernel writes for a protocol with ports: the
/// protocol number (padded to 8 bytes) and two ports (8 bytes each).
const PORTS_NEST_LEN: usize = NLA_HDR_LEN + 3 * 8;

/// Parses a tuple in exactly the layout the kernel writes for protocols with ports
/// (`CTA_TUPLE_IP {SRC, DST}`, `CTA_TUPLE_PROTO {NUM, SRC_PORT, DST_PORT}`), `A` being the
/// address size and `N` the tuple's size. Every header is compared with what that layout
/// implies, so `Some` means the generic parser would have read the same values; any other
/// shape (ICMP, a tuple zone, other attribute orders, anything malformed) gives `None` and is
/// left to the generic parser.
#[inline(always)]
fn canonical_tuple<const A: usize, const N: usize>(buf: &[u8]) -> Option<Tuple>
where
    [u8; A]: Into<IpAddr>,
{
    const { assert!(N == NLA_HDR_LEN + 2 * (NLA_HDR_LEN + A) + PORTS_NEST_LEN) };
    // A fixed-size array: the constant offsets below need no run-time bounds checks, and
    // neighbouring byte reads merge into single loads.
    let buf: &[u8; N] = buf.try_into().ok()?;
    let bytes = |at: usize| -> [u8; 4] { [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]] };
    let word = |at: usize| u32::from_ne_bytes(bytes(at)) & HEADER_FLAGS_OFF;
    let (src_ty, dst_ty) = if A == 4 {
        (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    } else {
        (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    };
    let ip_len = N - PORTS_NEST_LEN;
    let src_at = 2 * NLA_HDR_LEN;
    let dst_at = src_at + A + NLA_HDR_LEN;
    let p = ip_len;
    let layout_matches = word(0) == attr_header(ip_len, CTA_TUPLE_IP)
        && word(src_at - NLA_HDR_LEN) == attr_header(NLA_HDR_LEN + A, src_ty)
        && word(dst_at - NLA_HDR_LEN) == attr_header(NLA_HDR_LEN + A, dst_ty)
        && word(p) == attr_header(PORTS_NEST_LEN, CTA_TUPLE_PROTO)
        && word(p + 4) == attr_header(NLA_HDR_LEN + 1, CTA_PROTO_NUM)
        && word(p + 12) == attr_header(NLA_HDR_LEN + 2, CTA_PROTO_SRC_PORT)
        && word(p + 20) == attr_header(NLA_HDR_LEN + 2, CTA_PROTO_DST_PORT);
    let protonum = buf[p + 8];
    // ICMP's "dport" is built from type and code, which this layout does not carry.
    if !layout_matches || proto::is_icmp(protonum) {
        return None;
    }
    let address = |at: usize| -> IpAddr { std::array::from_fn::<u8, A, _>(|i| buf[at + i]).into() };
    Some(Tuple {
        src: address(src_at),
        dst: address(dst_at),
        proto: protonum,
        sport: u16::from_be_bytes([buf[p + 16], buf[p + 17]]),
        dport: u16::from_be_bytes([buf[p + 24], buf[p + 25]]),
    })
}

/// Parses `CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY` contents: the kernel's usual layout directly,
/// anything else attribute by attribute. Also returns the tuple's `CTA_TUPLE_ZONE`, which the
/// kernel writes only for a zone of this direction alone.
#[inline(always)]
fn parse_tuple(buf: &[u8], family: Family) -> Result<(Tuple, Option<u16>), Bad> {
    let fast = match family {
        Family::V4 => canonical_tuple::<4, 48>(buf),
        Family::V6 => canonical_tuple::<16, 72>(buf),
    };
    match fast {
        Some(tuple) => Ok((tuple, None)),
        None => parse_tuple_zoned(buf),
    }
}

/// Parses tuple contents in any order, with any extra attributes (the tests' reference).
#[cfg(test)]
fn parse_tuple_generic(buf: &[u8]) -> Result<Tuple, Bad> {
    parse_tuple_zoned(buf).map(|(tuple, _)| tuple)
}

/// Parses tuple contents in any order, with any extra attributes; also returns the tuple's
/// zone.
#[cold]
fn parse_tuple_zoned(buf: &[u8]) -> Result<(Tuple, Option<u16>), Bad> {
    let mut tuple_zone = None;
    let mut src = None;
    let mut dst = None;
    let mut protonum = None;
    let (mut sport, mut dport) = (0u16, 0u16);
    let (mut icmp_type, mut icmp_code) = (0u8, 0u8);
    let mut at = 0;
    while at < buf.len() {
        let (ty, payload, next) = attr_at(buf, at)?;
        at = next;
        match ty {
            CTA_TUPLE_IP => {
                let mut at = 0;
                while at < payload.len() {
                    let (ty, value, next) = attr_at(payload, at)?;
                    at = next;
                    match ty {
                        CTA_IP_V4_SRC => src = Some(ipv4(value)?),
                        CTA_IP_V4_DST => dst = Some(ipv4(value)?),
                        CTA_IP_V6_SRC => src = Some(ipv6(value)?),
                        CTA_IP_V6_DST => dst = Some(ipv6(value)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                let mut at = 0;
                while at < payload.len() {
                    let (ty, value, next) = attr_at(payload, at)?;
                    at = next;
                    match ty {
                        CTA_PROTO_NUM => protonum = Some(first_u8(value, "short protocol")?),
                        CTA_PROTO_SRC_PORT => sport = be_u16(value, "short source port")?,
                        CTA_PROTO_DST_PORT => dport = be_u16(value, "short destination port")?,
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            sport = be_u16(value, "short ICMP id")?
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            icmp_type = first_u8(value, "short ICMP type")?
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            icmp_code = first_u8(value, "short ICMP code")?
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => tuple_zone = Some(be_u16(payload, "short tuple zone")?),
            _ => {}
        }
    }
    let (Some(src), Some(dst), Some(protonum)) = (src, dst, protonum) else {
        return Err(Bad::at("tuple without addresses or protocol", 0));
    };
    if proto::is_icmp(protonum) {
        dport = u16::from(icmp_type) << 8 | u16::from(icmp_code);
    }
    Ok((
        Tuple {
            src,
            dst,
            proto: protonum,
            sport,
            dport,
        },
        tuple_zone,
    ))
}

/// Parses the payload (after `nlmsghdr`) of a ctnetlink `CT_NEW` / `CT_DELETE` message.
///
/// One pass over the top-level attributes; the tuples take the direct path when they have
/// the kernel's usual layout. Errors carry offsets from the start of the netlink message.
pub fn parse_flow(payload: &[u8]) -> Result<Flow, Error> {
    parse_flow_inner(payload).map_err(|bad| bad.into_error(NLMSG_HDR_LEN))
}

#[inline(always)]
fn parse_flow_inner(payload: &[u8]) -> Result<Flow, Bad> {
    let Some(&[af, ..]) = payload.get(..NFGEN_HDR_LEN) else {
        return Err(Bad::at("truncated nfgenmsg", 0));
    };
    let family = Family::from_af(af).ok_or(Bad::at("unknown address family", 0))?;
    let attrs = &payload[NFGEN_HDR_LEN..];
    let mut orig = None;
    let mut reply = None;
    let mut flow_status = Status::NONE;
    let (mut mark, mut zone, mut timeout, mut id) = (0u32, 0u16, 0u32, 0u32);
    let mut at = 0;
    while at < attrs.len() {
        let (ty, value, next) = attr_at(attrs, at).map_err(|bad| Bad {
            offset: bad.offset + NFGEN_HDR_LEN,
            ..bad
        })?;
        at = next;
        match ty {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(value, family)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(value, family)?),
            CTA_STATUS => flow_status = Status(be_u32(value, "short status")?),
            CTA_MARK => mark = be_u32(value, "short mark")?,
            CTA_ZONE => zone = be_u16(value, "short zone")?,
            CTA_TIMEOUT => timeout = be_u32(value, "short timeout")?,
            CTA_ID => id = be_u32(value, "short id")?,
            _ => {}
        }
    }
    let (Some((orig, orig_zone)), Some((reply, reply_zone))) = (orig, reply) else {
        return Err(Bad::at("conntrack message without both tuples", 0));
    };
    // The kernel writes a zone in exactly one place: CTA_ZONE for both directions, or the
    // tuple of the one direction it applies to.
    let zone_dir = match (orig_zone, reply_zone) {
        (Some(z), None) if zone == 0 => {
            zone = z;
            ZoneDir::Original
        }
        (None, Some(z)) if zone == 0 => {
            zone = z;
            ZoneDir::Reply
        }
        _ => ZoneDir::Both,
    };
    Ok(Flow {
        family,
        orig,
        reply,
        status: flow_status,
        mark,
        zone,
        zone_dir,
        timeout,
        id,
    })
}

/// What one message of a ctnetlink reply stream means.
#[derive(Debug)]
pub enum Reply<'a> {
    /// A conntrack entry (dump item or event), not yet parsed.
    Conntrack {
        /// `CT_NEW` or `CT_DELETE`.
        msg: u16,
        /// The message payload, for [`parse_flow`].
        payload: &'a [u8],
    },
    /// `NLMSG_ERROR`: 0 is an acknowledgement, anything else a positive errno.
    Error(i32),
    /// `NLMSG_DONE`: the end of a dump; a non-zero positive errno says the dump failed.
    Done(i32),
    /// Anything else (`NLMSG_NOOP`, other subsystems): skip.
    Other,
}

/// Classifies a message.
pub fn classify<'a>(msg: &NlMsg<'a>) -> Result<Reply<'a>, Error> {
    Ok(match msg.ty {
        NLMSG_ERROR => Reply::Error(error_code(msg.payload)?),
        NLMSG_DONE => Reply::Done(error_code(msg.payload).unwrap_or(0)),
        NLMSG_NOOP | NLMSG_OVERRUN => Reply::Other,
        ty if ty >> 8 == NFNL_SUBSYS_CTNETLINK => Reply::Conntrack {
            msg: ty & 0xff,
            payload: msg.payload,
        },
        _ => Reply::Other,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLA_HDR_LEN + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
        out
    }

    /// A tuple as the kernel lays it out for a protocol with ports.
    fn kernel_tuple(src: &[u8], dst: &[u8], protonum: u8, sport: u16, dport: u16) -> Vec<u8> {
        let (src_ty, dst_ty) = if src.len() == 4 {
            (CTA_IP_V4_SRC, CTA_IP_V4_DST)
        } else {
            (CTA_IP_V6_SRC, CTA_IP_V6_DST)
        };
        let ip = [attr(src_ty, src), attr(dst_ty, dst)].concat();
        let l4 = [
            attr(CTA_PROTO_NUM, &[protonum]),
            attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
        ]
        .concat();
        [
            attr(CTA_TUPLE_IP | NLA_F_NESTED, &ip),
            attr(CTA_TUPLE_PROTO | NLA_F_NESTED, &l4),
        ]
        .concat()
    }

    fn fast(buf: &[u8], family: Family) -> Option<Tuple> {
        match family {
            Family::V4 => canonical_tuple::<4, 48>(buf),
            Family::V6 => canonical_tuple::<16, 72>(buf),
        }
    }

    #[test]
    fn kernel_layout_takes_the_direct_path() {
        let v4 = kernel_tuple(&[10, 0, 0, 1], &[10, 0, 0, 2], proto::UDP, 1000, 53);
        let tuple = fast(&v4, Family::V4).expect("canonical IPv4 tuple");
        assert_eq!(tuple, parse_tuple_generic(&v4).expect("valid tuple"));
        assert_eq!(
            (tuple.sport, tuple.dport, tuple.proto),
            (1000, 53, proto::UDP)
        );
        let v6 = kernel_tuple(&[0xfd; 16], &[0xfe; 16], proto::TCP, 4242, 443);
        let tuple = fast(&v6, Family::V6).expect("canonical IPv6 tuple");
        assert_eq!(tuple, parse_tuple_generic(&v6).expect("valid tuple"));
        // ICMP carries type and code in `dport`: always the generic path.
        let icmp = kernel_tuple(&[10, 0, 0, 1], &[10, 0, 0, 2], proto::ICMP, 7, 0);
        assert_eq!(fast(&icmp, Family::V4), None);
    }

    /// A whole CT_NEW payload (after the netlink header) from its two tuples and extras.
    fn payload(orig: &[u8], reply: &[u8], extra: &[u8]) -> Vec<u8> {
        [
            vec![libc::AF_INET as u8, 0, 0, 0],
            attr(CTA_TUPLE_ORIG | NLA_F_NESTED, orig),
            attr(CTA_TUPLE_REPLY | NLA_F_NESTED, reply),
            extra.to_vec(),
        ]
        .concat()
    }

    #[test]
    fn a_zone_of_one_direction_is_read_from_its_tuple() {
        let orig = kernel_tuple(&[10, 0, 0, 1], &[10, 0, 0, 2], proto::UDP, 1000, 53);
        let reply = kernel_tuple(&[10, 0, 0, 2], &[10, 0, 0, 1], proto::UDP, 53, 1000);
        let zoned = |tuple: &[u8]| [tuple, &attr(CTA_TUPLE_ZONE, &7u16.to_be_bytes())].concat();
        let read = |bytes: Vec<u8>| {
            let flow = parse_flow(&bytes).expect("valid message");
            (flow.zone, flow.zone_dir, flow.orig_zone())
        };
        assert_eq!(read(payload(&orig, &reply, &[])), (0, ZoneDir::Both, 0));
        let both = attr(CTA_ZONE, &7u16.to_be_bytes());
        assert_eq!(read(payload(&orig, &reply, &both)), (7, ZoneDir::Both, 7));
        assert_eq!(
            read(payload(&zoned(&orig), &reply, &[])),
            (7, ZoneDir::Original, 7)
        );
        // Only the reply direction is zoned: a lookup by original tuple is in zone 0 (and one
        // by reply tuple, what `Flow::key` does, in zone 7).
        assert_eq!(
            read(payload(&orig, &zoned(&reply), &[])),
            (7, ZoneDir::Reply, 0)
        );
    }

    proptest! {
        /// Whatever the bytes, the direct path either declines or agrees with the generic
        /// parser.
        #[test]
        fn direct_path_agrees_with_generic_parser(
            v6 in any::<bool>(),
            protonum in any::<u8>(),
            sport in any::<u16>(),
            dport in any::<u16>(),
            flips in proptest::collection::vec((0usize..72, any::<u8>()), 0..4),
        ) {
            let (family, len) = if v6 { (Family::V6, 16) } else { (Family::V4, 4) };
            let mut buf = kernel_tuple(&vec![1; len], &vec![2; len], protonum, sport, dport);
            for (at, byte) in flips {
                if let Some(slot) = buf.get_mut(at) {
                    *slot = byte;
                }
            }
            if let Some(tuple) = fast(&buf, family) {
                prop_assert_eq!(Ok(tuple), parse_tuple_generic(&buf).map_err(|bad| bad.what));
            }
        }
    }
}
