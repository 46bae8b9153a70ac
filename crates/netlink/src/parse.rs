//! Zero-allocation parsing of netlink datagrams and ctnetlink conntrack messages.
//!
//! Every length is checked before it is used: whatever the bytes, these functions return an
//! error instead of panicking (see the proptests in `tests/parser_fuzz.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Error;
use crate::model::{Family, Flow, Status, Tuple, proto};
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

/// Iterates over the attributes in a buffer: `(type without flag bits, payload)`.
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
        let rest = self.buf.get(self.offset..)?;
        if rest.is_empty() {
            return None;
        }
        let at = self.offset;
        self.offset = self.buf.len();
        if rest.len() < NLA_HDR_LEN {
            return Some(Err(Error::Malformed {
                what: "truncated attribute header",
                offset: at,
            }));
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        if len < NLA_HDR_LEN || len > rest.len() {
            return Some(Err(Error::Malformed {
                what: "attribute length out of bounds",
                offset: at,
            }));
        }
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        self.offset = at + align4(len).min(rest.len());
        Some(Ok((ty, &rest[NLA_HDR_LEN..len])))
    }
}

fn be_u16(payload: &[u8], what: &'static str) -> Result<u16, Error> {
    match payload.get(..2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(Error::Malformed { what, offset: 0 }),
    }
}

fn be_u32(payload: &[u8], what: &'static str) -> Result<u32, Error> {
    match payload.get(..4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(Error::Malformed { what, offset: 0 }),
    }
}

fn first_u8(payload: &[u8], what: &'static str) -> Result<u8, Error> {
    payload
        .first()
        .copied()
        .ok_or(Error::Malformed { what, offset: 0 })
}

fn ipv4(payload: &[u8]) -> Result<IpAddr, Error> {
    let octets: [u8; 4] = payload.try_into().map_err(|_| Error::Malformed {
        what: "IPv4 address is not 4 bytes",
        offset: 0,
    })?;
    Ok(IpAddr::V4(Ipv4Addr::from(octets)))
}

fn ipv6(payload: &[u8]) -> Result<IpAddr, Error> {
    let octets: [u8; 16] = payload.try_into().map_err(|_| Error::Malformed {
        what: "IPv6 address is not 16 bytes",
        offset: 0,
    })?;
    Ok(IpAddr::V6(Ipv6Addr::from(octets)))
}

/// Parses `CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY` contents.
fn parse_tuple(buf: &[u8]) -> Result<Tuple, Error> {
    let mut src = None;
    let mut dst = None;
    let mut protonum = None;
    let (mut sport, mut dport) = (0u16, 0u16);
    let (mut icmp_type, mut icmp_code) = (0u8, 0u8);
    for attr in Attrs::new(buf) {
        let (ty, payload) = attr?;
        match ty {
            CTA_TUPLE_IP => {
                for attr in Attrs::new(payload) {
                    let (ty, payload) = attr?;
                    match ty {
                        CTA_IP_V4_SRC => src = Some(ipv4(payload)?),
                        CTA_IP_V4_DST => dst = Some(ipv4(payload)?),
                        CTA_IP_V6_SRC => src = Some(ipv6(payload)?),
                        CTA_IP_V6_DST => dst = Some(ipv6(payload)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for attr in Attrs::new(payload) {
                    let (ty, payload) = attr?;
                    match ty {
                        CTA_PROTO_NUM => protonum = Some(first_u8(payload, "short protocol")?),
                        CTA_PROTO_SRC_PORT => sport = be_u16(payload, "short source port")?,
                        CTA_PROTO_DST_PORT => dport = be_u16(payload, "short destination port")?,
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            sport = be_u16(payload, "short ICMP id")?
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            icmp_type = first_u8(payload, "short ICMP type")?
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            icmp_code = first_u8(payload, "short ICMP code")?
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let (Some(src), Some(dst), Some(protonum)) = (src, dst, protonum) else {
        return Err(Error::Malformed {
            what: "tuple without addresses or protocol",
            offset: 0,
        });
    };
    if proto::is_icmp(protonum) {
        dport = u16::from(icmp_type) << 8 | u16::from(icmp_code);
    }
    Ok(Tuple {
        src,
        dst,
        proto: protonum,
        sport,
        dport,
    })
}

/// Parses the payload (after `nlmsghdr`) of a ctnetlink `CT_NEW` / `CT_DELETE` message.
pub fn parse_flow(payload: &[u8]) -> Result<Flow, Error> {
    if payload.len() < NFGEN_HDR_LEN {
        return Err(Error::Malformed {
            what: "truncated nfgenmsg",
            offset: NLMSG_HDR_LEN,
        });
    }
    let family = Family::from_af(payload[0]).ok_or(Error::Malformed {
        what: "unknown address family",
        offset: NLMSG_HDR_LEN,
    })?;
    let mut orig = None;
    let mut reply = None;
    let mut flow_status = Status::NONE;
    let (mut mark, mut zone, mut timeout, mut id) = (0u32, 0u16, 0u32, 0u32);
    for attr in Attrs::new(&payload[NFGEN_HDR_LEN..]) {
        let (ty, value) = attr.map_err(|err| shift(err, NLMSG_HDR_LEN + NFGEN_HDR_LEN))?;
        match ty {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(value)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(value)?),
            CTA_STATUS => flow_status = Status(be_u32(value, "short status")?),
            CTA_MARK => mark = be_u32(value, "short mark")?,
            CTA_ZONE => zone = be_u16(value, "short zone")?,
            CTA_TIMEOUT => timeout = be_u32(value, "short timeout")?,
            CTA_ID => id = be_u32(value, "short id")?,
            _ => {}
        }
    }
    let (Some(orig), Some(reply)) = (orig, reply) else {
        return Err(Error::Malformed {
            what: "conntrack message without both tuples",
            offset: NLMSG_HDR_LEN,
        });
    };
    Ok(Flow {
        family,
        orig,
        reply,
        status: flow_status,
        mark,
        zone,
        timeout,
        id,
    })
}

fn shift(err: Error, by: usize) -> Error {
    match err {
        Error::Malformed { what, offset } => Error::Malformed {
            what,
            offset: offset + by,
        },
        other => other,
    }
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
