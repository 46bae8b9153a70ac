//! Encoding of ctnetlink requests into a reusable byte buffer.

use std::net::IpAddr;

use crate::error::Error;
use crate::model::{DumpFilter, Family, FlowKey, NewFlow, Status, Tuple, proto};
use crate::wire::*;

/// Appends netlink messages to a buffer that is reused between batches.
#[derive(Debug, Default)]
pub struct MsgWriter {
    buf: Vec<u8>,
}

impl MsgWriter {
    /// A writer whose buffer starts with `capacity` bytes reserved.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Forgets the contents, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Starts a ctnetlink message; returns its start, for [`MsgWriter::end_msg`].
    pub fn begin_ct_msg(&mut self, msg: u16, flags: u16, seq: u32, family: u8) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in end_msg
        self.buf.extend_from_slice(&ct_msg_type(msg).to_ne_bytes());
        self.buf
            .extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        self.buf.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
        start
    }

    /// Finishes the message started at `start` by writing its length.
    pub fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Adds `flags` to the header of the message that starts at `start`.
    pub fn add_flags(&mut self, start: usize, flags: u16) {
        let at = start + 6;
        let old = u16::from_ne_bytes([self.buf[at], self.buf[at + 1]]);
        self.buf[at..at + 2].copy_from_slice(&(old | flags).to_ne_bytes());
    }

    /// Drops a message that was started at `start` (e.g. when it cannot be encoded).
    pub fn truncate(&mut self, start: usize) {
        self.buf.truncate(start);
    }

    fn attr(&mut self, ty: u16, value: &[u8]) {
        let len = (NLA_HDR_LEN + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn begin_nested(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn end_nested(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr_u8(&mut self, ty: u16, value: u8) {
        self.attr(ty, &[value]);
    }

    fn attr_be16(&mut self, ty: u16, value: u16) {
        self.attr(ty, &value.to_be_bytes());
    }

    fn attr_be32(&mut self, ty: u16, value: u32) {
        self.attr(ty, &value.to_be_bytes());
    }

    /// A complete tuple (`CTA_TUPLE_ORIG` or `CTA_TUPLE_REPLY`).
    fn tuple(&mut self, ty: u16, family: Family, tuple: &Tuple) -> Result<(), Error> {
        self.tuple_in_zone(ty, family, tuple, None)
    }

    /// A tuple, with a `CTA_TUPLE_ZONE` (a zone of this direction alone) when `zone` is set.
    fn tuple_in_zone(
        &mut self,
        ty: u16,
        family: Family,
        tuple: &Tuple,
        zone: Option<u16>,
    ) -> Result<(), Error> {
        let outer = self.begin_nested(ty);
        let ip = self.begin_nested(CTA_TUPLE_IP);
        match (family, tuple.src, tuple.dst) {
            (Family::V4, IpAddr::V4(src), IpAddr::V4(dst)) => {
                self.attr(CTA_IP_V4_SRC, &src.octets());
                self.attr(CTA_IP_V4_DST, &dst.octets());
            }
            (Family::V6, IpAddr::V6(src), IpAddr::V6(dst)) => {
                self.attr(CTA_IP_V6_SRC, &src.octets());
                self.attr(CTA_IP_V6_DST, &dst.octets());
            }
            _ => {
                self.truncate(outer);
                return Err(Error::Invalid(
                    "tuple addresses do not belong to the flow's family",
                ));
            }
        }
        self.end_nested(ip);
        let l4 = self.begin_nested(CTA_TUPLE_PROTO);
        self.attr_u8(CTA_PROTO_NUM, tuple.proto);
        if proto::has_ports(tuple.proto) {
            self.attr_be16(CTA_PROTO_SRC_PORT, tuple.sport);
            self.attr_be16(CTA_PROTO_DST_PORT, tuple.dport);
        } else if proto::is_icmp(tuple.proto) {
            let (id, ty, code) = if tuple.proto == proto::ICMP {
                (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
            } else {
                (
                    CTA_PROTO_ICMPV6_ID,
                    CTA_PROTO_ICMPV6_TYPE,
                    CTA_PROTO_ICMPV6_CODE,
                )
            };
            self.attr_be16(id, tuple.sport);
            self.attr_u8(ty, (tuple.dport >> 8) as u8);
            self.attr_u8(code, tuple.dport as u8);
        }
        self.end_nested(l4);
        if let Some(zone) = zone {
            self.attr_be16(CTA_TUPLE_ZONE, zone);
        }
        self.end_nested(outer);
        Ok(())
    }

    /// One `CT_DELETE` for an exact key. Never encodes a tuple-less DELETE (that would flush).
    pub fn delete(&mut self, key: &FlowKey, seq: u32, flags: u16) -> Result<(), Error> {
        let start = self.begin_ct_msg(IPCTNL_MSG_CT_DELETE, flags, seq, key.family.to_af());
        let (attr, tuple) = match &key.reply {
            Some(reply) => (CTA_TUPLE_REPLY, reply),
            None => (CTA_TUPLE_ORIG, &key.orig),
        };
        if let Err(err) = self.tuple(attr, key.family, tuple) {
            self.truncate(start);
            return Err(err);
        }
        if key.zone != 0 {
            self.attr_be16(CTA_ZONE, key.zone);
        }
        if let Some(id) = key.id {
            self.attr_be32(CTA_ID, id);
        }
        self.end_msg(start);
        Ok(())
    }

    /// One `CT_NEW` that creates an entry (fails with EEXIST if it exists).
    pub fn create(&mut self, flow: &NewFlow, seq: u32, flags: u16) -> Result<(), Error> {
        let Some(family) = flow.orig.family() else {
            return Err(Error::Invalid("original tuple mixes address families"));
        };
        if flow.orig.proto != flow.reply.proto {
            return Err(Error::Invalid("tuples disagree on the protocol"));
        }
        let start = self.begin_ct_msg(
            IPCTNL_MSG_CT_NEW,
            NLM_F_CREATE | NLM_F_EXCL | flags,
            seq,
            family.to_af(),
        );
        let tuples = self
            .tuple(CTA_TUPLE_ORIG, family, &flow.orig)
            .and_then(|()| self.tuple(CTA_TUPLE_REPLY, family, &flow.reply));
        if let Err(err) = tuples {
            self.truncate(start);
            return Err(err);
        }
        self.attr_be32(CTA_TIMEOUT, flow.timeout);
        // The kernel marks a created entry CONFIRMED before applying CTA_STATUS and refuses
        // (EBUSY) a status that would clear it or set bits only it may set.
        let settable = flow.status
            & !(Status::EXPECTED | Status::DYING | Status::TEMPLATE | Status::UNTRACKED);
        self.attr_be32(CTA_STATUS, (settable | Status::CONFIRMED).bits());
        if flow.mark != 0 {
            self.attr_be32(CTA_MARK, flow.mark);
        }
        if flow.zone != 0 {
            self.attr_be16(CTA_ZONE, flow.zone);
        }
        self.end_msg(start);
        Ok(())
    }

    /// A `CT_NEW` whose zone applies to one direction only (tests: [`NewFlow`] cannot say so).
    #[cfg(test)]
    pub fn create_one_way_zoned(
        &mut self,
        flow: &NewFlow,
        reply_only: bool,
        seq: u32,
    ) -> Result<(), Error> {
        let family = flow.orig.family().ok_or(Error::Invalid("mixed families"))?;
        let start = self.begin_ct_msg(
            IPCTNL_MSG_CT_NEW,
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            seq,
            family.to_af(),
        );
        let (orig_zone, reply_zone) = if reply_only {
            (None, Some(flow.zone))
        } else {
            (Some(flow.zone), None)
        };
        self.tuple_in_zone(CTA_TUPLE_ORIG, family, &flow.orig, orig_zone)?;
        self.tuple_in_zone(CTA_TUPLE_REPLY, family, &flow.reply, reply_zone)?;
        self.attr_be32(CTA_TIMEOUT, flow.timeout);
        self.attr_be32(CTA_STATUS, Status::CONFIRMED.bits());
        self.end_msg(start);
        Ok(())
    }

    /// A `CT_GET` dump request with the kernel-side part of `filter` that `kernel` allows.
    pub fn dump_request(&mut self, filter: &DumpFilter, kernel: &KernelFilter, seq: u32) {
        let family = filter.family.map_or(0, Family::to_af);
        let start = self.begin_ct_msg(IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, family);
        if let (true, Some(protonum)) = (kernel.proto, filter.proto) {
            // Only the protocol number: never addresses, which the kernel compares inverted
            // for IPv6.
            let outer = self.begin_nested(CTA_TUPLE_ORIG);
            let l4 = self.begin_nested(CTA_TUPLE_PROTO);
            self.attr_u8(CTA_PROTO_NUM, protonum);
            self.end_nested(l4);
            self.end_nested(outer);
            let nested = self.begin_nested(CTA_FILTER);
            self.attr(CTA_FILTER_ORIG_FLAGS, &CTA_FILTER_F_PROTO_NUM.to_ne_bytes());
            self.end_nested(nested);
        }
        if let (true, Some((mask, value))) = (kernel.mark, filter.mark) {
            self.attr_be32(CTA_MARK, value);
            self.attr_be32(CTA_MARK_MASK, mask);
        }
        if let (true, Some((mask, value))) = (kernel.status, filter.status) {
            self.attr_be32(CTA_STATUS, value.0);
            self.attr_be32(CTA_STATUS_MASK, mask.0);
        }
        if let (true, Some(zone)) = (kernel.zone, filter.zone) {
            self.attr_be16(CTA_ZONE, zone);
        }
        self.end_msg(start);
    }
}

/// Which criteria of one dump are sent to the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFilter {
    /// Protocol via `CTA_FILTER`.
    pub proto: bool,
    /// Mark via `CTA_MARK` + `CTA_MARK_MASK`.
    pub mark: bool,
    /// Status via `CTA_STATUS` + `CTA_STATUS_MASK`.
    pub status: bool,
    /// Zone via `CTA_ZONE`.
    pub zone: bool,
}

impl KernelFilter {
    /// Whether the kernel applies every criterion `filter` asks for.
    pub fn covers(&self, filter: &DumpFilter) -> bool {
        (filter.proto.is_none() || self.proto)
            && (filter.mark.is_none() || self.mark)
            && (filter.status.is_none() || self.status)
            && (filter.zone.is_none() || self.zone)
    }
}
