//! Address parsing and the compact `(IP, port)` key used by every lookup table.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An `(IP, port)` pair with the IP in canonical form (IPv4-mapped IPv6 folded to IPv4).
///
/// Smaller than `SocketAddr` (20 bytes instead of 32) and hashed as one or two machine words,
/// which matters on the classification hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub(crate) ip: IpAddr,
    pub(crate) port: u16,
}

impl Key {
    /// A key from an address; the IP is canonicalised so that `::ffff:10.0.0.1` equals `10.0.0.1`.
    #[inline]
    pub(crate) fn new(ip: IpAddr, port: u16) -> Self {
        Key {
            ip: ip.to_canonical(),
            port,
        }
    }

    /// A key from a socket address (flow info and scope id are not part of a conntrack tuple).
    #[inline]
    pub(crate) fn from_socket(addr: SocketAddr) -> Self {
        Key::new(addr.ip(), addr.port())
    }

    /// The key as a plain socket address.
    #[inline]
    pub(crate) fn socket(self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self.ip {
            IpAddr::V4(ip) => {
                state.write_u64((u64::from(ip.to_bits()) << 16) | u64::from(self.port))
            }
            IpAddr::V6(ip) => {
                state.write_u128(ip.to_bits());
                state.write_u16(self.port);
            }
        }
    }
}

/// The unspecified address of `ip`'s family: the key under which "any node address" host ports
/// are stored.
#[inline]
pub(crate) fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Parses an IP address the way Kubernetes tolerates them, and canonicalises it.
///
/// Accepts every standard IPv4/IPv6 spelling (compressed, expanded, upper case, IPv4-mapped) and,
/// like Kubernetes' legacy parser, IPv4 octets with leading zeros read as *decimal*
/// (`010.000.000.001` is `10.0.0.1`), which older API servers accepted and may still store.
pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    parse_ipv4_leading_zeros(text).map(IpAddr::V4)
}

fn parse_ipv4_leading_zeros(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// A Kubernetes `int32` port field as a port number, if it is one (1..=65535).
pub(crate) fn port_from_i32(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

/// An IP network (`address/prefix`), as in kube-proxy's `--nodeport-addresses`.
///
/// Host bits are cleared, like Go's `ParseCIDR`; an IPv4-mapped IPv6 network with a prefix of
/// 96 or more is the IPv4 network it maps, as Go treats it when matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr` with `prefix` bits, or `None` if the prefix is too long.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let network = match addr {
            IpAddr::V4(v4) if prefix <= 32 => {
                IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask32(prefix)))
            }
            IpAddr::V6(v6) if prefix <= 128 => {
                IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask128(prefix)))
            }
            _ => return None,
        };
        Some(Cidr { network, prefix })
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` (compared canonical: IPv4-mapped IPv6 is IPv4) is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                ip.to_bits() & mask32(self.prefix) == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                ip.to_bits() & mask128(self.prefix) == net.to_bits()
            }
            _ => false,
        }
    }

    fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = NodePortAddressesError;

    /// `address/prefix`; IPv4 octets may have leading zeros (read as decimal), as Kubernetes'
    /// sloppy parser allows. A bare address without a prefix is not a CIDR.
    fn from_str(text: &str) -> Result<Cidr, NodePortAddressesError> {
        let bad = || NodePortAddressesError::BadCidr(text.to_owned());
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        // Not `parse_ip`: it folds IPv4-mapped addresses before the prefix is known.
        let addr = match addr.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => IpAddr::V4(parse_ipv4_leading_zeros(addr).ok_or_else(bad)?),
        };
        Cidr::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Which of this node's addresses accept NodePort traffic: kube-proxy's `--nodeport-addresses`
/// (`nodePortAddresses` in its configuration file).
///
/// A NodePort flow to a node address outside this set gets no DNAT from kube-proxy, so it is
/// not service traffic and must not be judged. Host ports are not affected (they match every
/// node address, or their `hostIP`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every node address: kube-proxy's default (the flag unset or empty).
    #[default]
    All,
    /// Node addresses inside one of these networks. As in kube-proxy, a family with no network
    /// listed is not restricted (it gets `0.0.0.0/0` or `::/0`), and a zero-length prefix
    /// admits the whole family.
    Cidrs(Vec<Cidr>),
    /// `primary` (kube-proxy 1.29 and later): per family, only the Node object's primary IP
    /// (its first InternalIP of the family, else its first ExternalIP). A family without one,
    /// or whose primary IP is a loopback address, is not restricted. Until this node's Node
    /// object is known, no address admits NodePorts.
    ///
    /// kube-proxy reads the primary IPs once at start, and takes `--bind-address` instead when
    /// that is a specific IP; this engine follows the Node object.
    Primary,
}

/// A `--nodeport-addresses` value that kube-proxy would reject too.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodePortAddressesError {
    /// An entry that is not `address/prefix`.
    #[error(
        "{0:?} is not a CIDR (expected a comma-separated list like 10.0.0.0/8,fd00::/64, or primary)"
    )]
    BadCidr(String),
    /// `primary` together with other entries.
    #[error("'primary' cannot be combined with CIDRs")]
    PrimaryWithCidrs,
}

impl NodePortAddresses {
    /// Parses kube-proxy's flag syntax: empty (every address), `primary`, or comma-separated
    /// CIDRs of either family (spaces around entries are ignored).
    pub fn parse(flag: &str) -> Result<NodePortAddresses, NodePortAddressesError> {
        let flag = flag.trim();
        if flag.is_empty() {
            return Ok(NodePortAddresses::All);
        }
        let entries: Vec<&str> = flag.split(',').map(str::trim).collect();
        if entries.contains(&"primary") {
            return match entries.len() {
                1 => Ok(NodePortAddresses::Primary),
                _ => Err(NodePortAddressesError::PrimaryWithCidrs),
            };
        }
        let cidrs = entries
            .into_iter()
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NodePortAddresses::Cidrs(cidrs))
    }

    /// Whether node address `ip` accepts NodePorts, given the Node's primary IPs (`None`: the
    /// Node object is not known yet).
    pub(crate) fn admits(&self, ip: IpAddr, primary: Option<&[IpAddr]>) -> bool {
        match self {
            NodePortAddresses::All => true,
            NodePortAddresses::Cidrs(cidrs) => {
                let mut family = cidrs
                    .iter()
                    .filter(|c| c.is_ipv4() == ip.is_ipv4())
                    .peekable();
                family.peek().is_none() || family.any(|c| c.contains(ip))
            }
            NodePortAddresses::Primary => {
                let Some(primary) = primary else {
                    return false;
                };
                match primary.iter().find(|p| p.is_ipv4() == ip.is_ipv4()) {
                    Some(p) if !p.is_loopback() => *p == ip,
                    _ => true,
                }
            }
        }
    }
}

impl FromStr for NodePortAddresses {
    type Err = NodePortAddressesError;

    fn from_str(flag: &str) -> Result<NodePortAddresses, NodePortAddressesError> {
        NodePortAddresses::parse(flag)
    }
}

impl fmt::Display for NodePortAddresses {
    /// The flag syntax [`NodePortAddresses::parse`] reads (empty for [`NodePortAddresses::All`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodePortAddresses::All => Ok(()),
            NodePortAddresses::Primary => f.write_str("primary"),
            NodePortAddresses::Cidrs(cidrs) => {
                for (i, cidr) in cidrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{cidr}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_spellings_to_one_address() {
        let canonical: IpAddr = "fd00::a".parse().unwrap();
        for text in [
            "fd00::a",
            "FD00::A",
            "fd00:0:0:0:0:0:0:a",
            "fd00:0000::000a",
        ] {
            assert_eq!(parse_ip(text), Some(canonical), "{text}");
        }
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        for text in [
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "::FFFF:a00:1",
            "010.000.000.001",
        ] {
            assert_eq!(parse_ip(text), Some(v4), "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "10.0.0",
            "10.0.0.1.2",
            "256.0.0.1",
            "10.0.0.1/24",
            "host",
            "1..2.3",
            "0x1.0.0.1",
        ] {
            assert_eq!(parse_ip(text), None, "{text}");
        }
    }

    #[test]
    fn ports_are_range_checked() {
        assert_eq!(port_from_i32(53), Some(53));
        assert_eq!(port_from_i32(65535), Some(65535));
        assert_eq!(port_from_i32(0), None);
        assert_eq!(port_from_i32(-1), None);
        assert_eq!(port_from_i32(65536), None);
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_like_kube_proxy_and_clear_host_bits() {
        let cidr: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(cidr.to_string(), "10.0.0.0/8");
        assert!(cidr.contains(ip("10.200.0.1")));
        assert!(cidr.contains(ip("::ffff:10.200.0.1")));
        assert!(!cidr.contains(ip("11.0.0.1")));
        assert!(!cidr.contains(ip("fd00::1")));
        let sloppy: Cidr = "010.000.000.000/8".parse().unwrap();
        assert_eq!(sloppy, cidr);
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, cidr);
        let v6: Cidr = "FD00:0::1/64".parse().unwrap();
        assert_eq!(v6.to_string(), "fd00::/64");
        assert!(v6.contains(ip("fd00::ffff:1")));
        assert!(!v6.contains(ip("fd00:0:0:1::1")));
        let all4: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all4.contains(ip("203.0.113.1")) && !all4.contains(ip("::1")));
        let host: Cidr = "192.168.1.10/32".parse().unwrap();
        assert!(host.contains(ip("192.168.1.10")) && !host.contains(ip("192.168.1.11")));
        for bad in [
            "10.0.0.1",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/",
            "/8",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "host/8",
            "",
        ] {
            assert_eq!(
                bad.parse::<Cidr>(),
                Err(NodePortAddressesError::BadCidr(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn nodeport_addresses_flag_syntax() {
        assert_eq!(NodePortAddresses::parse(""), Ok(NodePortAddresses::All));
        assert_eq!(NodePortAddresses::parse(" "), Ok(NodePortAddresses::All));
        assert_eq!(
            NodePortAddresses::parse("primary"),
            Ok(NodePortAddresses::Primary)
        );
        let both = NodePortAddresses::parse("10.0.0.0/8, fd00::/64").unwrap();
        assert_eq!(both.to_string(), "10.0.0.0/8,fd00::/64");
        assert_eq!(both.to_string().parse(), Ok(both));
        assert_eq!(
            NodePortAddresses::parse("primary,10.0.0.0/8"),
            Err(NodePortAddressesError::PrimaryWithCidrs)
        );
        let err = NodePortAddresses::parse("10.0.0.0/8,10.0.0.1").unwrap_err();
        assert_eq!(err, NodePortAddressesError::BadCidr("10.0.0.1".into()));
        assert!(
            err.to_string().contains("\"10.0.0.1\" is not a CIDR"),
            "{err}"
        );
        assert!(NodePortAddresses::parse("10.0.0.0/8,").is_err());
        assert_eq!(NodePortAddresses::All.to_string(), "");
        assert_eq!(NodePortAddresses::Primary.to_string(), "primary");
    }

    #[test]
    fn nodeport_addresses_admit_like_kube_proxy() {
        let cidrs = NodePortAddresses::parse("192.168.1.0/24").unwrap();
        assert!(cidrs.admits(ip("192.168.1.10"), None));
        assert!(!cidrs.admits(ip("10.0.5.5"), None));
        // No IPv6 network listed: kube-proxy adds ::/0 for that family.
        assert!(cidrs.admits(ip("fd00::10"), None));
        let primary = NodePortAddresses::Primary;
        let node = [ip("192.168.1.10")];
        assert!(primary.admits(ip("192.168.1.10"), Some(&node)));
        assert!(!primary.admits(ip("10.0.5.5"), Some(&node)));
        // No IPv6 primary: the family is not restricted.
        assert!(primary.admits(ip("fd00::10"), Some(&node)));
        // A loopback primary is not used as a restriction.
        assert!(primary.admits(ip("10.0.5.5"), Some(&[ip("127.0.0.1")])));
        // Node not known yet: nothing.
        assert!(!primary.admits(ip("192.168.1.10"), None));
        assert!(NodePortAddresses::All.admits(ip("10.0.5.5"), None));
    }

    #[test]
    fn key_equality_ignores_mapped_spelling() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:53".parse().unwrap();
        let plain: SocketAddr = "10.0.0.1:53".parse().unwrap();
        assert_eq!(Key::from_socket(mapped), Key::from_socket(plain));
        assert_eq!(Key::from_socket(mapped).socket(), plain);
    }
}
