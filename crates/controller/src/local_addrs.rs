//! The addresses of the node's own interfaces, for NodePort and hostPort matching.
//!
//! kube-proxy accepts NodePort traffic on the node's local addresses (by default all of them),
//! so a NodePort frontend is only that port on these addresses — never any destination (#49881).
//! With `--netns` the addresses are read inside that namespace, on a short-lived thread, so the
//! rest of the program never changes namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// Every address on every interface of the current namespace, or of `netns` when given.
pub fn local_addrs(netns: Option<&Path>) -> io::Result<Vec<IpAddr>> {
    match netns {
        None => interface_addrs(),
        Some(path) => ctnetlink::netns::in_netns(path, interface_addrs)
            .map_err(|e| io::Error::new(e.kind(), format!("entering {}: {e}", path.display())))?,
    }
}

fn interface_addrs() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        // SAFETY: ifa_addr is null or a sockaddr owned by the list.
        if let Some(addr) = unsafe { sockaddr_ip(ifa.ifa_addr) }
            && !out.contains(&addr)
        {
            out.push(addr);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Reads an IPv4 or IPv6 address out of a `sockaddr`.
///
/// # Safety
/// `sa` must be null or point to a valid `sockaddr` of the length its family implies.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: non-null and valid per the contract; the family tells the concrete type.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_has_loopback() {
        let addrs = local_addrs(None).unwrap();
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }

    #[test]
    fn addresses_inside_another_namespace() {
        if !ctnetlink::testing::root_or_skip("addresses_inside_another_namespace") {
            return;
        }
        let ns = ctnetlink::testing::TestNetns::new("addrs").unwrap();
        ns.exec_checked([
            "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb",
        ])
        .unwrap();
        ns.exec_checked(["ip", "addr", "add", "192.168.77.1/24", "dev", "va"])
            .unwrap();
        ns.exec_checked([
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:77::1/64",
            "dev",
            "va",
            "nodad",
        ])
        .unwrap();
        let addrs = local_addrs(Some(&ns.path())).unwrap();
        assert!(
            addrs.contains(&"192.168.77.1".parse().unwrap()),
            "{addrs:?}"
        );
        assert!(addrs.contains(&"fd00:77::1".parse().unwrap()), "{addrs:?}");
        let here = local_addrs(None).unwrap();
        assert!(
            !here.contains(&"192.168.77.1".parse().unwrap()),
            "our namespace is untouched"
        );
    }

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let err = local_addrs(Some(Path::new("/run/netns/does-not-exist-ctr"))).unwrap_err();
        assert!(
            err.to_string().contains("/run/netns/does-not-exist-ctr"),
            "{err}"
        );
    }
}
