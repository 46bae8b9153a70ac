//! The lab's network: a node namespace routing between pod namespaces and an external host.
//!
//! ```text
//!   external (192.168.77.2, fd00:77::2)
//!       │ eth0 ── ext0
//!     node (192.168.77.1, fd00:77::1; bridge cni0 = 10.244.0.1/16, fd00:10:244::1/64)
//!       │ pN (port of cni0) ── eth0
//!   pod N (10.244.x.y/32, fd00:10:244::N/128, default via the bridge address)
//! ```
//!
//! Every test gets its own namespaces (unique names from [`TestNetns`]), so the addresses can be
//! the same in every test. Pods hang off a bridge, like kind's or flannel's `cni0`: deleting a
//! pod removes a bridge port but never takes down the interface that masqueraded traffic leaves
//! through, so the kernel does not flush those flows by itself (it would, on `NETDEV_DOWN`, with
//! a point-to-point CNI that puts the gateway address on every veth). Pods have host addresses
//! (/32, /128) and a default route via the node, so pod-to-pod traffic is routed by the node —
//! conntrack sees both directions of every service flow without `br_netfilter` — and the node
//! sends no ICMP redirects that would let pods bypass it. MAC addresses are fixed and neighbour
//! entries permanent (what a CNI knows, it can pin): neighbour discovery under the load of many
//! parallel tests must not make a healthy flow look blackholed. A deleted pod's address
//! stays in the bridge's subnet and goes unanswered: a blackhole, as on a real node. The node's
//! default route leads to the external host, which does not forward: traffic to an address nobody
//! owns is dropped there, and never leaves the lab.

use anyhow::{Context, Result, bail};
use ctnetlink::testing::TestNetns;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The node's address on the link to the external host (its "InternalIP").
pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The node's IPv6 address on the link to the external host.
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
/// The external host's address.
pub const EXTERNAL_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
/// The external host's IPv6 address.
pub const EXTERNAL_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
/// The node's address on the pod bridge: the pods' gateway.
pub const POD_GATEWAY_IPV4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node's IPv6 address on the pod bridge.
pub const POD_GATEWAY_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
/// The pod CIDR (kube-proxy's `--cluster-cidr`), IPv4.
pub const POD_CIDR_IPV4: &str = "10.244.0.0/16";
/// The pod CIDR, IPv6.
pub const POD_CIDR_IPV6: &str = "fd00:10:244::/64";
/// Where ExternalIPs come from: routed by the external host to the node.
pub const EXTERNAL_IP_RANGE_IPV4: &str = "192.168.100.0/24";
/// Where IPv6 ExternalIPs come from.
pub const EXTERNAL_IP_RANGE_IPV6: &str = "fd00:77::e:0/112";

/// The node's pod bridge.
pub const BRIDGE: &str = "cni0";

/// The bridge's MAC address (the pods' gateway).
const BRIDGE_MAC: &str = "02:00:0a:f4:00:01";

/// The first pod index handed out; lower addresses are left to the gateway.
const FIRST_POD_INDEX: u16 = 10;

/// One pod's namespace and addresses.
#[derive(Debug)]
pub struct PodNet {
    /// The pod's name in the lab.
    pub name: String,
    /// The pod's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The pod's IPv6 address.
    pub ipv6: Ipv6Addr,
    /// The node-side end of the pod's veth pair (a port of the bridge).
    pub host_if: String,
    netns: TestNetns,
}

impl PodNet {
    /// The pod's network namespace.
    pub fn netns(&self) -> &TestNetns {
        &self.netns
    }
}

/// The node, the external host and the pods of one test.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: pods go before the node that routes them.
    pods: Mutex<BTreeMap<String, PodNet>>,
    next_pod_index: Mutex<u16>,
    external: TestNetns,
    node: TestNetns,
}

impl Topology {
    /// Creates the node and the external host, linked, with forwarding on in the node.
    pub fn new(prefix: &str) -> Result<Self> {
        let node = TestNetns::new(&format!("{prefix}-node")).context("creating the node netns")?;
        let external =
            TestNetns::new(&format!("{prefix}-ext")).context("creating the external netns")?;
        sysctl(
            &node,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
            ],
        )?;
        sysctl(
            &external,
            &[
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_dad=0",
            ],
        )?;
        ip_batch(
            &node,
            &format!(
                "link add ext0 type veth peer name eth0 netns {ext}\n\
                 link set ext0 up\n\
                 addr add {NODE_IPV4}/24 dev ext0\n\
                 addr add {NODE_IPV6}/64 dev ext0 nodad\n\
                 route add default via {EXTERNAL_IPV4}\n\
                 route add default via {EXTERNAL_IPV6}\n\
                 link add {BRIDGE} address {BRIDGE_MAC} type bridge mcast_snooping 0\n\
                 link set {BRIDGE} up\n\
                 addr add {POD_GATEWAY_IPV4}/16 dev {BRIDGE}\n\
                 addr add {POD_GATEWAY_IPV6}/64 dev {BRIDGE} nodad\n",
                ext = external.name()
            ),
        )?;
        ip_batch(
            &external,
            &format!(
                "link set eth0 up\n\
                 addr add {EXTERNAL_IPV4}/24 dev eth0\n\
                 addr add {EXTERNAL_IPV6}/64 dev eth0 nodad\n\
                 route add {EXTERNAL_IP_RANGE_IPV4} via {NODE_IPV4}\n\
                 route add {EXTERNAL_IP_RANGE_IPV6} via {NODE_IPV6}\n"
            ),
        )?;
        Ok(Self {
            pods: Mutex::new(BTreeMap::new()),
            next_pod_index: Mutex::new(FIRST_POD_INDEX),
            external,
            node,
        })
    }

    /// The node's namespace (kube-proxy's rules, hostNetwork processes and the agent live here).
    pub fn node(&self) -> &TestNetns {
        &self.node
    }

    /// The external host's namespace (NodePort / ExternalIP clients).
    pub fn external(&self) -> &TestNetns {
        &self.external
    }

    /// Creates a pod namespace linked to the node; returns its addresses.
    pub fn add_pod(&self, name: &str) -> Result<(Ipv4Addr, Ipv6Addr)> {
        let index = {
            let mut next = self
                .next_pod_index
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let index = *next;
            *next = next.checked_add(1).context("out of pod addresses")?;
            index
        };
        let [hi, lo] = index.to_be_bytes();
        let ipv4 = Ipv4Addr::new(10, 244, hi, lo);
        let ipv6 = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, index);
        let host_if = format!("p{index}");
        let mac = format!("02:00:0a:f4:{hi:02x}:{lo:02x}");
        let netns = TestNetns::new("e2e-pod").context("creating a pod netns")?;
        sysctl(
            &netns,
            &[
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_dad=0",
            ],
        )?;
        ip_batch(
            &self.node,
            &format!(
                "link add {host_if} type veth peer name eth0 address {mac} netns {pod}\n\
                 link set {host_if} master {BRIDGE} up\n\
                 neigh replace {ipv4} lladdr {mac} dev {BRIDGE} nud permanent\n\
                 neigh replace {ipv6} lladdr {mac} dev {BRIDGE} nud permanent\n",
                pod = netns.name()
            ),
        )?;
        ip_batch(
            &netns,
            &format!(
                "link set eth0 up\n\
                 addr add {ipv4}/32 dev eth0\n\
                 addr add {ipv6}/128 dev eth0 nodad\n\
                 route add {POD_GATEWAY_IPV4} dev eth0 scope link\n\
                 route add default via {POD_GATEWAY_IPV4} dev eth0\n\
                 route add {POD_GATEWAY_IPV6} dev eth0\n\
                 route add default via {POD_GATEWAY_IPV6} dev eth0\n\
                 neigh replace {POD_GATEWAY_IPV4} lladdr {BRIDGE_MAC} dev eth0 nud permanent\n\
                 neigh replace {POD_GATEWAY_IPV6} lladdr {BRIDGE_MAC} dev eth0 nud permanent\n"
            ),
        )?;
        let pod = PodNet {
            name: name.to_string(),
            ipv4,
            ipv6,
            host_if,
            netns,
        };
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        if pods.contains_key(name) {
            bail!("pod {name} already exists");
        }
        pods.insert(name.to_string(), pod);
        Ok((ipv4, ipv6))
    }

    /// The namespace name of a pod, for `ip netns exec`.
    pub fn pod_netns_name(&self, name: &str) -> Option<String> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.get(name).map(|p| p.netns.name().to_string())
    }

    /// Removes a pod's namespace (its processes must be gone first, or the namespace lingers
    /// until they exit) and its bridge port.
    pub fn remove_pod(&self, name: &str) -> Result<()> {
        let pod = {
            let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
            pods.remove(name)
        };
        let Some(pod) = pod else {
            bail!("no pod named {name}");
        };
        // Delete the link explicitly: the namespace itself may outlive `ip netns del` for a
        // moment while the kernel tears it down, and the pod must be unreachable now.
        let _ = ip_batch(
            &self.node,
            &format!(
                "link del {}\nneigh del {} dev {BRIDGE}\nneigh del {} dev {BRIDGE}\n",
                pod.host_if, pod.ipv4, pod.ipv6
            ),
        );
        drop(pod);
        Ok(())
    }
}

/// Sets sysctls inside a namespace.
pub fn sysctl(ns: &TestNetns, settings: &[&str]) -> Result<()> {
    let mut argv = vec!["sysctl", "-q", "-w"];
    argv.extend_from_slice(settings);
    ns.exec_checked(argv)
        .with_context(|| format!("sysctl in {}", ns.name()))?;
    Ok(())
}

/// Runs `ip -batch -` inside a namespace with `script` on stdin.
pub fn ip_batch(ns: &TestNetns, script: &str) -> Result<()> {
    pipe_into(ns.name(), &["ip", "-batch", "-"], script)
}

/// Runs a command inside a namespace with `input` on its stdin; fails with its stderr.
pub fn pipe_into(netns: &str, argv: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {argv:?} in {netns}"))?;
    child
        .stdin
        .take()
        .context("child stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {argv:?}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{argv:?} in {netns} failed ({}): {}\ninput:\n{input}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctnetlink::testing::root_or_skip;

    #[test]
    fn pods_get_addresses_and_routes_and_leave_nothing_behind() {
        if !root_or_skip("topology::pods") {
            return;
        }
        let topo = Topology::new("e2e-topo").unwrap();
        let (v4, v6) = topo.add_pod("a").unwrap();
        assert_eq!(v4, Ipv4Addr::new(10, 244, 0, 10));
        let (v4b, _) = topo.add_pod("b").unwrap();
        assert_eq!(v4b, Ipv4Addr::new(10, 244, 0, 11));
        assert_eq!(v6, "fd00:10:244::a".parse::<Ipv6Addr>().unwrap());
        let ports = topo
            .node()
            .exec_checked(["ip", "link", "show", "master", BRIDGE])
            .unwrap();
        let ports = String::from_utf8_lossy(&ports.stdout).to_string();
        assert!(ports.contains("p10@") && ports.contains("p11@"), "{ports}");
        let pod_ns = topo.pod_netns_name("a").unwrap();
        // The pod reaches the node through the bridge, over both families.
        let b_ns = topo.pod_netns_name("b").unwrap();
        let route = Command::new("ip")
            .args([
                "netns",
                "exec",
                &b_ns,
                "ip",
                "-6",
                "route",
                "get",
                "fd00:77::1",
            ])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&route.stdout).contains("via fd00:10:244::1"));
        topo.remove_pod("a").unwrap();
        let ports = topo
            .node()
            .exec_checked(["ip", "link", "show", "master", BRIDGE])
            .unwrap();
        assert!(!String::from_utf8_lossy(&ports.stdout).contains("p10@"));
        let node_ns = topo.node().name().to_string();
        drop(topo);
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(
            !list.contains(&node_ns) && !list.contains(&pod_ns),
            "{list}"
        );
    }
}
