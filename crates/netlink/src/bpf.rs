//! A classic BPF socket filter that drops conntrack events in the kernel, before they are
//! queued on the event socket, by address family and layer-4 protocol.
//!
//! The approach of libnetfilter_conntrack's `nfct_filter`: the program walks the message's
//! attributes with the kernel's netlink ancillary loads (`net/core/filter.c`):
//!
//! - `SKF_AD_NLATTR`: with `A` = offset of a run of attributes in the packet and `X` = an
//!   attribute type, `A` becomes the offset of the first attribute of that type in the rest of
//!   the packet (its header), or 0 when there is none.
//! - `SKF_AD_NLATTR_NEST`: with `A` = offset of a nested attribute's header and `X` = a type,
//!   `A` becomes the offset of that type's attribute inside the nest, or 0.
//!
//! Both compare the type without its flag bits (`NLA_F_NESTED`), and both return 0 for a
//! non-linear packet. The program reads `CTA_TUPLE_ORIG` → `CTA_TUPLE_PROTO` →
//! `CTA_PROTO_NUM` that way, and the family from `nfgenmsg` at a fixed offset.
//!
//! A socket filter sees a whole packet, which for netlink may hold several messages. Conntrack
//! events are one message per packet: `ctnetlink_conntrack_event` in
//! `net/netfilter/nf_conntrack_netlink.c` allocates a buffer, puts one message in it and
//! multicasts it with `nfnetlink_send`. So the offsets below (the first message's header) are
//! the event's own.
//!
//! **Fail open.** When the walk cannot find the protocol (a message without the attributes,
//! a non-linear packet) the program accepts: a filter must never hide an event the consumer
//! wanted, and user space applies the same criteria again anyway ([`Criteria::matches`]).

use crate::model::{Family, Flow};
use crate::wire::{
    CTA_PROTO_NUM, CTA_TUPLE_ORIG, CTA_TUPLE_PROTO, NFGEN_HDR_LEN, NLA_HDR_LEN, NLMSG_HDR_LEN,
};

// Classic BPF opcodes (uapi linux/filter.h, linux/bpf_common.h).
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_MISC: u16 = 0x07;
const BPF_W: u16 = 0x00;
const BPF_B: u16 = 0x10;
const BPF_IMM: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_JEQ: u16 = 0x10;
const BPF_K: u16 = 0x00;
const BPF_TAX: u16 = 0x00;
/// Ancillary data lives at negative offsets from `SKF_AD_OFF`.
const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_NLATTR: i32 = 12;
const SKF_AD_NLATTR_NEST: i32 = 16;

/// Return values: the number of bytes to keep (all of them) or 0 to drop.
const ACCEPT: u32 = u32::MAX;
const REJECT: u32 = 0;

/// Offset of `nfgenmsg.nfgen_family` in the packet.
const FAMILY_AT: u32 = NLMSG_HDR_LEN as u32;
/// Offset of the first top-level attribute.
const ATTRS_AT: u32 = (NLMSG_HDR_LEN + NFGEN_HDR_LEN) as u32;

/// Which events to let through; `None` lets everything through on that criterion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Criteria {
    /// Address families.
    pub families: Option<Vec<Family>>,
    /// Layer-4 protocols of the original tuple.
    pub protocols: Option<Vec<u8>>,
}

impl Criteria {
    /// Whether any criterion is set (otherwise no filter is needed).
    pub fn is_set(&self) -> bool {
        self.families.is_some() || self.protocols.is_some()
    }

    /// The same decision in user space, for a parsed event.
    pub fn matches(&self, flow: &Flow) -> bool {
        self.families
            .as_ref()
            .is_none_or(|families| families.contains(&flow.family))
            && self
                .protocols
                .as_ref()
                .is_none_or(|protocols| protocols.contains(&flow.orig.proto))
    }

    /// The classic BPF program for these criteria.
    pub fn program(&self) -> Vec<libc::sock_filter> {
        let mut prog = Vec::new();
        if let Some(families) = &self.families {
            let mut afs: Vec<u32> = families.iter().map(|f| u32::from(f.to_af())).collect();
            afs.sort_unstable();
            afs.dedup();
            prog.push(stmt(BPF_LD | BPF_B | BPF_ABS, FAMILY_AT));
            // Each match jumps over the remaining comparisons and the reject.
            let count = afs.len();
            for (i, af) in afs.into_iter().enumerate() {
                prog.push(jeq(af, (count - i) as u8, 0));
            }
            prog.push(stmt(BPF_RET | BPF_K, REJECT));
        }
        if let Some(protocols) = &self.protocols {
            let mut protos: Vec<u8> = protocols.clone();
            protos.sort_unstable();
            protos.dedup();
            // A = offset of the first attribute; then find ORIG, PROTO inside it, NUM inside
            // that. Every step that finds nothing accepts (fail open).
            prog.push(stmt(BPF_LD | BPF_IMM, ATTRS_AT));
            for (ty, ancillary) in [
                (CTA_TUPLE_ORIG, SKF_AD_NLATTR),
                (CTA_TUPLE_PROTO, SKF_AD_NLATTR_NEST),
                (CTA_PROTO_NUM, SKF_AD_NLATTR_NEST),
            ] {
                prog.push(stmt(BPF_LDX | BPF_IMM, u32::from(ty)));
                prog.push(stmt(
                    BPF_LD | BPF_W | BPF_ABS,
                    (SKF_AD_OFF + ancillary) as u32,
                ));
                prog.push(jeq(0, 0, 1));
                prog.push(stmt(BPF_RET | BPF_K, ACCEPT));
            }
            // X = offset of CTA_PROTO_NUM; its one-byte value follows the header.
            prog.push(stmt(BPF_MISC | BPF_TAX, 0));
            prog.push(stmt(BPF_LD | BPF_B | BPF_IND, NLA_HDR_LEN as u32));
            // Short jumps only (a jump offset is one byte): match → the next instruction
            // accepts, mismatch → skip it.
            for proto in protos {
                prog.push(jeq(u32::from(proto), 0, 1));
                prog.push(stmt(BPF_RET | BPF_K, ACCEPT));
            }
            prog.push(stmt(BPF_RET | BPF_K, REJECT));
        } else {
            prog.push(stmt(BPF_RET | BPF_K, ACCEPT));
        }
        prog
    }
}

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: BPF_JMP | BPF_JEQ | BPF_K,
        jt,
        jf,
        k,
    }
}

/// Attaches `program` to `fd` (`SO_ATTACH_FILTER`), replacing any earlier filter.
pub fn attach(fd: std::os::fd::RawFd, program: &[libc::sock_filter]) -> std::io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| std::io::Error::other("socket filter program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads the program (it copies it in).
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: a valid descriptor; fprog points at `len` instructions that outlive the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::proto;

    #[test]
    fn every_jump_lands_inside_the_program_and_it_ends_with_a_return() {
        let criteria = [
            Criteria::default(),
            Criteria {
                families: Some(vec![Family::V4]),
                protocols: None,
            },
            Criteria {
                families: Some(vec![Family::V6, Family::V4, Family::V6]),
                protocols: Some(vec![proto::UDP]),
            },
            Criteria {
                families: None,
                // Every protocol number: still only short jumps.
                protocols: Some((0..=255).collect()),
            },
        ];
        for c in criteria {
            let prog = c.program();
            assert!(prog.len() <= 4096, "{c:?}");
            assert_eq!(prog.last().unwrap().code, BPF_RET | BPF_K, "{c:?}");
            for (at, insn) in prog.iter().enumerate() {
                if insn.code & 0x07 == BPF_JMP {
                    let far = at + 1 + usize::from(insn.jt.max(insn.jf));
                    assert!(far < prog.len(), "{c:?}: jump at {at} leaves the program");
                }
            }
        }
    }
}
