//! The conntrack data model: families, tuples, status bits, flows, keys and dump filters.
//!
//! Every type here is `Copy` (except [`DumpFilter`], which is cheap to clone) and owns no heap
//! memory, so a dump can build a [`Flow`] on the stack for each kernel message and lend it out.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::{BitAnd, BitOr, BitOrAssign, Not};

/// An address family conntrack tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The `AF_*` constant, as carried in `nfgenmsg.nfgen_family`.
    pub const fn to_af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }

    /// The family for an `AF_*` constant, if conntrack can track it.
    pub const fn from_af(af: u8) -> Option<Family> {
        match af as i32 {
            libc::AF_INET => Some(Family::V4),
            libc::AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }

    /// The family of an address.
    pub const fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The unspecified address of this family (`0.0.0.0` or `::`).
    pub const fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

impl From<IpAddr> for Family {
    fn from(addr: IpAddr) -> Self {
        Family::of(&addr)
    }
}

impl From<Family> for u8 {
    fn from(family: Family) -> Self {
        family.to_af()
    }
}

impl TryFrom<u8> for Family {
    type Error = u8;

    /// Fails with the unknown `AF_*` value.
    fn try_from(af: u8) -> Result<Self, Self::Error> {
        Family::from_af(af).ok_or(af)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// IANA layer-4 protocol numbers conntrack knows.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// DCCP.
    pub const DCCP: u8 = 33;
    /// GRE.
    pub const GRE: u8 = 47;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// UDP-Lite.
    pub const UDPLITE: u8 = 136;

    /// Whether the protocol's tuple carries source and destination ports (or GRE keys).
    pub const fn has_ports(proto: u8) -> bool {
        matches!(proto, TCP | UDP | DCCP | GRE | SCTP | UDPLITE)
    }

    /// Whether the protocol's tuple carries an ICMP id, type and code.
    pub const fn is_icmp(proto: u8) -> bool {
        matches!(proto, ICMP | ICMPV6)
    }

    /// The name `conntrack -L` prints for a protocol, if it has one.
    pub const fn name(proto: u8) -> Option<&'static str> {
        Some(match proto {
            ICMP => "icmp",
            TCP => "tcp",
            UDP => "udp",
            DCCP => "dccp",
            GRE => "gre",
            ICMPV6 => "icmpv6",
            SCTP => "sctp",
            UDPLITE => "udplite",
            _ => return None,
        })
    }
}

/// One direction of a connection.
///
/// For ICMP and ICMPv6, which have no ports, `sport` holds the ICMP id and `dport` holds
/// `type << 8 | code`, so that a tuple still identifies the entry exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Layer-4 protocol number (see [`proto`]).
    pub proto: u8,
    /// Source port (ICMP: id).
    pub sport: u16,
    /// Destination port (ICMP: `type << 8 | code`).
    pub dport: u16,
}

impl Tuple {
    /// A tuple from its parts.
    pub const fn new(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Self {
        Self {
            src,
            dst,
            proto,
            sport,
            dport,
        }
    }

    /// The same connection seen from the other end: addresses and ports swapped.
    pub const fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// The family both addresses belong to, or `None` when they disagree.
    pub fn family(&self) -> Option<Family> {
        let family = Family::of(&self.src);
        (family == Family::of(&self.dst)).then_some(family)
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match proto::name(self.proto) {
            Some(name) => f.write_str(name)?,
            None => write!(f, "proto{}", self.proto)?,
        }
        write!(
            f,
            " src={} dst={} sport={} dport={}",
            self.src, self.dst, self.sport, self.dport
        )
    }
}

/// Conntrack status bits (`enum ip_conntrack_status`), a `u32` bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Status(pub u32);

impl Status {
    /// No bits.
    pub const NONE: Status = Status(0);
    /// Expected connection (a helper's child).
    pub const EXPECTED: Status = Status(1 << 0);
    /// Packets were seen in both directions.
    pub const SEEN_REPLY: Status = Status(1 << 1);
    /// Assured: will not be dropped early when the table is full.
    pub const ASSURED: Status = Status(1 << 2);
    /// In the hash table (not a template or still being set up).
    pub const CONFIRMED: Status = Status(1 << 3);
    /// Source NAT applies.
    pub const SRC_NAT: Status = Status(1 << 4);
    /// Destination NAT applies: the reply tuple's source is the translated destination.
    pub const DST_NAT: Status = Status(1 << 5);
    /// TCP sequence adjustment in use.
    pub const SEQ_ADJUST: Status = Status(1 << 6);
    /// Source NAT set up.
    pub const SRC_NAT_DONE: Status = Status(1 << 7);
    /// Destination NAT set up.
    pub const DST_NAT_DONE: Status = Status(1 << 8);
    /// Being torn down.
    pub const DYING: Status = Status(1 << 9);
    /// Fixed timeout.
    pub const FIXED_TIMEOUT: Status = Status(1 << 10);
    /// Template (never in the table).
    pub const TEMPLATE: Status = Status(1 << 11);
    /// Not to be tracked.
    pub const UNTRACKED: Status = Status(1 << 12);
    /// Helper assigned.
    pub const HELPER: Status = Status(1 << 13);
    /// Offloaded to a flow table.
    pub const OFFLOAD: Status = Status(1 << 14);
    /// Offloaded to hardware.
    pub const HW_OFFLOAD: Status = Status(1 << 15);

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Status) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set.
    pub const fn intersects(self, other: Status) -> bool {
        self.0 & other.0 != 0
    }

    /// Bitwise or, usable in constants.
    pub const fn union(self, other: Status) -> Status {
        Status(self.0 | other.0)
    }
}

impl BitOr for Status {
    type Output = Status;
    fn bitor(self, rhs: Status) -> Status {
        Status(self.0 | rhs.0)
    }
}

impl BitOrAssign for Status {
    fn bitor_assign(&mut self, rhs: Status) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for Status {
    type Output = Status;
    fn bitand(self, rhs: Status) -> Status {
        Status(self.0 & rhs.0)
    }
}

impl Not for Status {
    type Output = Status;
    fn not(self) -> Status {
        Status(!self.0)
    }
}

/// Which directions of an entry its conntrack zone applies to.
///
/// Zones usually apply to both directions (`CTA_ZONE`); rules can also put only the original
/// or only the reply direction in a zone (e.g. iptables `CT --zone-orig`), which the kernel
/// reports as `CTA_TUPLE_ZONE` inside that direction's tuple.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ZoneDir {
    /// Both directions (also what a zone-0 entry says).
    #[default]
    Both,
    /// The original direction only.
    Original,
    /// The reply direction only.
    Reply,
}

/// One conntrack entry, as dumped or reported by an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Address family.
    pub family: Family,
    /// The original direction (as the first packet was seen, before NAT).
    pub orig: Tuple,
    /// The reply direction: for a DNATed flow, `reply.src` is the chosen backend.
    pub reply: Tuple,
    /// Status bits.
    pub status: Status,
    /// Connection mark (0 when unset).
    pub mark: u32,
    /// Conntrack zone id (0, the default zone, when unset), whatever direction it applies to
    /// ([`Flow::zone_dir`]): an entry with any zone but 0 belongs to someone else's zone
    /// (OVS/OVN, Antrea, CT rules) even when only one of its directions is zoned.
    pub zone: u16,
    /// Which directions `zone` applies to.
    pub zone_dir: ZoneDir,
    /// Seconds until the entry expires (0 when the message did not carry it, e.g. DESTROY).
    pub timeout: u32,
    /// The kernel's id of the entry (distinguishes re-creations of the same tuple).
    pub id: u32,
}

impl Flow {
    /// The exact key that deletes this entry and no later re-creation of it through another
    /// NAT decision: it looks the entry up by its *reply* tuple (which names the backend) and
    /// checks its id. The kernel reuses a freed entry's memory, and the id is a hash of that
    /// address and the original tuple, so an entry re-created with the same original tuple
    /// often gets the same id; only the reply tuple tells a re-creation DNATed elsewhere apart.
    pub fn key(&self) -> FlowKey {
        FlowKey {
            family: self.family,
            orig: self.orig,
            reply: Some(self.reply),
            zone: self.reply_zone(),
            id: Some(self.id),
        }
    }

    /// The zone id of the reply direction, the one a lookup by reply tuple needs.
    pub fn reply_zone(&self) -> u16 {
        match self.zone_dir {
            ZoneDir::Original => 0,
            ZoneDir::Both | ZoneDir::Reply => self.zone,
        }
    }

    /// Whether the entry is in the default zone (0) in both directions.
    pub fn in_default_zone(&self) -> bool {
        self.zone == 0
    }

    /// The zone id of the original direction, the one a lookup by original tuple needs.
    pub fn orig_zone(&self) -> u16 {
        match self.zone_dir {
            ZoneDir::Reply => 0,
            ZoneDir::Both | ZoneDir::Original => self.zone,
        }
    }
}

/// Identifies one conntrack entry for deletion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Address family.
    pub family: Family,
    /// The complete original tuple.
    pub orig: Tuple,
    /// The complete reply tuple: when set, the entry is looked up by it (and `zone` is the
    /// reply direction's zone, [`Flow::reply_zone`]); else by `orig` (and `zone` is the
    /// original direction's, [`Flow::orig_zone`]).
    pub reply: Option<Tuple>,
    /// Conntrack zone of the direction the lookup uses.
    pub zone: u16,
    /// The entry's id; with `Some`, a different entry found by the same tuple is left alone
    /// (but see [`Flow::key`]: ids are reused).
    pub id: Option<u32>,
}

/// A conntrack entry to create with `CT_NEW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewFlow {
    /// Original direction.
    pub orig: Tuple,
    /// Reply direction (for a DNAT-like entry, `reply.src` is the backend).
    pub reply: Tuple,
    /// Seconds until expiry; the kernel requires one.
    pub timeout: u32,
    /// Status bits to set, e.g. `SEEN_REPLY | ASSURED`. `CONFIRMED` is always added (the
    /// kernel requires it); `EXPECTED`, `DYING`, `TEMPLATE` and `UNTRACKED` are not settable
    /// and are left out.
    pub status: Status,
    /// Connection mark.
    pub mark: u32,
    /// Conntrack zone.
    pub zone: u16,
}

impl NewFlow {
    /// An un-NATed entry whose reply tuple is the reverse of `orig`.
    pub fn symmetric(orig: Tuple, timeout: u32) -> Self {
        Self {
            orig,
            reply: orig.reversed(),
            timeout,
            status: Status::NONE,
            mark: 0,
            zone: 0,
        }
    }
}

/// Which entries a dump returns. Every criterion that is set must hold (they are ANDed).
///
/// The same predicate ([`DumpFilter::matches`]) is always applied in user space, so the
/// answer does not depend on which criteria the running kernel could apply itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpFilter {
    /// Only this address family. `None`: both IPv4 and IPv6, in one `AF_UNSPEC` dump — one
    /// walk of the kernel's table rather than one per family. The kernel cannot filter the
    /// protocol in such a dump (`CTA_FILTER` needs a family), so the protocol is then applied
    /// in user space only; mark, status and zone are still applied by kernels that can.
    pub family: Option<Family>,
    /// Only this layer-4 protocol.
    pub proto: Option<u8>,
    /// `(mask, value)`: only entries with `status & mask == value`.
    pub status: Option<(Status, Status)>,
    /// `(mask, value)`: only entries with `mark & mask == value`.
    pub mark: Option<(u32, u32)>,
    /// Only entries in this zone.
    pub zone: Option<u16>,
}

impl DumpFilter {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// One family and protocol, the controller's usual dump.
    pub fn family_proto(family: Family, proto: u8) -> Self {
        Self {
            family: Some(family),
            proto: Some(proto),
            ..Self::default()
        }
    }

    /// Both families and one protocol, in one dump (one walk of the kernel's table; see
    /// [`DumpFilter::family`]).
    pub fn all_families_proto(proto: u8) -> Self {
        Self {
            proto: Some(proto),
            ..Self::default()
        }
    }

    /// Whether a flow passes every criterion (the user-space filter).
    pub fn matches(&self, flow: &Flow) -> bool {
        self.family.is_none_or(|family| flow.family == family)
            && self.proto.is_none_or(|proto| flow.orig.proto == proto)
            && self
                .status
                .is_none_or(|(mask, value)| flow.status.0 & mask.0 == value.0)
            && self
                .mark
                .is_none_or(|(mask, value)| flow.mark & mask == value)
            && self.zone.is_none_or(|zone| flow.zone == zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        let orig = Tuple::new(
            "10.0.0.1".parse().unwrap(),
            "10.96.0.10".parse().unwrap(),
            proto::UDP,
            40000,
            53,
        );
        Flow {
            family: Family::V4,
            orig,
            reply: orig.reversed(),
            status: Status::CONFIRMED | Status::ASSURED,
            mark: 0x4000,
            zone: 3,
            zone_dir: ZoneDir::Both,
            timeout: 30,
            id: 7,
        }
    }

    #[test]
    fn families_round_trip_af_constants() {
        for family in Family::ALL {
            assert_eq!(Family::from_af(family.to_af()), Some(family));
        }
        assert_eq!(Family::from_af(0), None);
        assert_eq!(Family::from("::1".parse::<IpAddr>().unwrap()), Family::V6);
    }

    #[test]
    fn filter_criteria_are_anded() {
        let flow = flow();
        assert!(DumpFilter::all().matches(&flow));
        assert!(DumpFilter::family_proto(Family::V4, proto::UDP).matches(&flow));
        assert!(!DumpFilter::family_proto(Family::V6, proto::UDP).matches(&flow));
        assert!(!DumpFilter::family_proto(Family::V4, proto::TCP).matches(&flow));
        let by_mark = |mask, value| DumpFilter {
            mark: Some((mask, value)),
            ..DumpFilter::default()
        };
        assert!(by_mark(0xff00, 0x4000).matches(&flow));
        assert!(!by_mark(0xff00, 0x4001).matches(&flow));
        let by_status = |mask, value| DumpFilter {
            status: Some((mask, value)),
            ..DumpFilter::default()
        };
        assert!(by_status(Status::ASSURED, Status::ASSURED).matches(&flow));
        assert!(!by_status(Status::SEEN_REPLY, Status::SEEN_REPLY).matches(&flow));
        assert!(by_status(Status::SEEN_REPLY, Status::NONE).matches(&flow));
        let by_zone = |zone| DumpFilter {
            zone: Some(zone),
            ..DumpFilter::default()
        };
        assert!(by_zone(3).matches(&flow));
        assert!(!by_zone(0).matches(&flow));
    }

    #[test]
    fn key_carries_id_and_zone() {
        let flow = flow();
        let key = flow.key();
        assert_eq!(key.id, Some(7));
        assert_eq!(key.zone, 3);
        assert_eq!(key.orig, flow.orig);
        assert_eq!(key.reply, Some(flow.reply), "looked up by the reply tuple");
        assert!(!flow.in_default_zone());
        // The key is looked up by the reply tuple, so it carries the reply direction's zone.
        let reply_zoned = Flow {
            zone_dir: ZoneDir::Reply,
            ..flow
        };
        assert_eq!(reply_zoned.key().zone, 3);
        assert_eq!(reply_zoned.orig_zone(), 0);
        assert!(!reply_zoned.in_default_zone());
        let orig_zoned = Flow {
            zone_dir: ZoneDir::Original,
            ..flow
        };
        assert_eq!(orig_zoned.key().zone, 0);
        assert_eq!(orig_zoned.orig_zone(), 3);
    }
}
