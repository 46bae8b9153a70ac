//! Address parsing and the compact `(IP, port)` key used by every lookup table.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

    #[test]
    fn key_equality_ignores_mapped_spelling() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:53".parse().unwrap();
        let plain: SocketAddr = "10.0.0.1:53".parse().unwrap();
        assert_eq!(Key::from_socket(mapped), Key::from_socket(plain));
        assert_eq!(Key::from_socket(mapped).socket(), plain);
    }
}
