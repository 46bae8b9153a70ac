//! kube-proxy's iptables mode, emulated: Services and EndpointSlices → iptables-restore input.
//!
//! The rules have kube-proxy's shape: `KUBE-SERVICES` → `KUBE-SVC-*` choosing an endpoint with
//! `-m statistic --mode random --probability 1/n` → `KUBE-SEP-*` DNAT; ExternalIPs and NodePorts
//! through `KUBE-EXT-*` (masqueraded); `KUBE-NODEPORTS` for destinations local to the node; a
//! REJECT in the filter table for a service port without endpoints. Like kube-proxy before
//! v1.32 without its event-driven cleanup, [`render`] knows nothing of conntrack: a flow whose
//! DNAT was decided by old rules keeps it.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

use crate::emulation::objects::SERVICE_NAME_LABEL;
use crate::topology::{POD_CIDR_IPV4, POD_CIDR_IPV6};
use ctnetlink::Family;

/// What kube-proxy's rule sets of the two IP families (iptables, ip6tables) differ in.
pub trait FamilyRules: Copy {
    /// Whether `ip` is of this family.
    fn matches(self, ip: &IpAddr) -> bool;
    /// The prefix length of one host address.
    fn host_mask(self) -> u8;
    /// The lab's pod CIDR of this family.
    fn pod_cidr(self) -> &'static str;
    /// The REJECT type for a service port without endpoints.
    fn reject_with(self) -> &'static str;
    /// The EndpointSlice `addressType` of this family.
    fn address_type(self) -> &'static str;
    /// The restore command for this family.
    fn restore_command(self) -> &'static str;
}

impl FamilyRules for Family {
    fn matches(self, ip: &IpAddr) -> bool {
        ip.is_ipv6() == (self == Family::V6)
    }

    fn host_mask(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn pod_cidr(self) -> &'static str {
        match self {
            Family::V4 => POD_CIDR_IPV4,
            Family::V6 => POD_CIDR_IPV6,
        }
    }

    fn reject_with(self) -> &'static str {
        match self {
            Family::V4 => "icmp-port-unreachable",
            Family::V6 => "icmp6-port-unreachable",
        }
    }

    fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn restore_command(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// One service port's rules, resolved from the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortRules {
    id: String,
    protocol: String,
    port: u16,
    node_port: Option<u16>,
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    endpoints: Vec<(IpAddr, u16)>,
}

/// A stable, short chain-name suffix (kube-proxy hashes the same way, with SHA-256 and base32).
fn chain_hash(text: &str) -> String {
    // FNV-1a, 64 bits: deterministic across runs and Rust versions.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016X}")
}

fn parse_ips<'a>(family: Family, texts: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    texts
        .into_iter()
        .filter_map(|t| t.parse::<IpAddr>().ok())
        .filter(|ip| family.matches(ip))
        .collect()
}

/// Resolves every service port of `family` to its frontends and endpoints.
fn resolve(family: Family, services: &[Service], slices: &[EndpointSlice]) -> Vec<PortRules> {
    let mut rules = Vec::new();
    for service in services {
        let (Some(namespace), Some(name), Some(spec)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
            service.spec.as_ref(),
        ) else {
            continue;
        };
        let proxied_elsewhere = service
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("service.kubernetes.io/service-proxy-name"));
        if proxied_elsewhere || spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let mut cluster_ips = parse_ips(family, spec.cluster_ips.iter().flatten());
        if cluster_ips.is_empty() {
            cluster_ips = parse_ips(family, spec.cluster_ip.iter());
        }
        if cluster_ips.is_empty() {
            continue; // headless, or not of this family
        }
        let external_ips = parse_ips(family, spec.external_ips.iter().flatten());
        let my_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.address_type == family.address_type()
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|n| n == name)
            })
            .collect();
        for port in spec.ports.iter().flatten() {
            let port_name = port.name.clone().unwrap_or_default();
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            let (mut ready, mut serving_terminating) = (Vec::new(), Vec::new());
            for slice in &my_slices {
                let Some(slice_port) = slice.ports.iter().flatten().find(|p| {
                    p.name.clone().unwrap_or_default() == port_name
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                }) else {
                    continue;
                };
                let Some(target) = slice_port.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for endpoint in &slice.endpoints {
                    let conditions = endpoint.conditions.clone().unwrap_or_default();
                    let is_ready = conditions.ready.unwrap_or(true);
                    let is_serving = conditions.serving.unwrap_or(is_ready);
                    let is_terminating = conditions.terminating.unwrap_or(false);
                    for ip in parse_ips(family, endpoint.addresses.iter()) {
                        if is_ready {
                            ready.push((ip, target));
                        } else if is_serving && is_terminating {
                            serving_terminating.push((ip, target));
                        }
                    }
                }
            }
            // kube-proxy falls back to serving, terminating endpoints when none is ready.
            let mut endpoints = if ready.is_empty() {
                serving_terminating
            } else {
                ready
            };
            endpoints.sort();
            endpoints.dedup();
            rules.push(PortRules {
                id: format!("{namespace}/{name}:{port_name}/{protocol}"),
                protocol: protocol.to_lowercase(),
                port: u16::try_from(port.port).unwrap_or(0),
                node_port: port.node_port.and_then(|p| u16::try_from(p).ok()),
                cluster_ips: cluster_ips.clone(),
                external_ips: external_ips.clone(),
                endpoints,
            });
        }
    }
    rules.sort_by(|a, b| a.id.cmp(&b.id));
    rules
}

/// The full `iptables-restore` (or `ip6tables-restore`) input for the node: filter and nat.
pub fn render(family: Family, services: &[Service], slices: &[EndpointSlice]) -> String {
    let rules = resolve(family, services, slices);
    let mask = family.host_mask();
    let mut filter = String::new();
    let mut nat_chains: BTreeMap<String, ()> = BTreeMap::new();
    let mut nat = String::new();
    let mut nodeports = String::new();

    for rule in &rules {
        let proto = &rule.protocol;
        let svc_chain = format!("KUBE-SVC-{}", chain_hash(&rule.id));
        let ext_chain = format!("KUBE-EXT-{}", chain_hash(&rule.id));
        let comment = format!("-m comment --comment \"{}\"", rule.id);
        if rule.endpoints.is_empty() {
            for vip in rule.cluster_ips.iter().chain(&rule.external_ips) {
                let _ = writeln!(
                    filter,
                    "-A KUBE-SERVICES {comment} -d {vip}/{mask} -p {proto} -m {proto} --dport {} -j REJECT --reject-with {}",
                    rule.port,
                    family.reject_with()
                );
            }
            if let Some(node_port) = rule.node_port {
                let _ = writeln!(
                    filter,
                    "-A KUBE-EXTERNAL-SERVICES {comment} -m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport {node_port} -j REJECT --reject-with {}",
                    family.reject_with()
                );
            }
            continue;
        }
        nat_chains.insert(svc_chain.clone(), ());
        for vip in &rule.cluster_ips {
            let _ = writeln!(
                nat,
                "-A KUBE-SERVICES {comment} -d {vip}/{mask} -p {proto} -m {proto} --dport {} -j {svc_chain}",
                rule.port
            );
            let _ = writeln!(
                nat,
                "-A {svc_chain} ! -s {} -d {vip}/{mask} -p {proto} -m {proto} --dport {} -j KUBE-MARK-MASQ",
                family.pod_cidr(),
                rule.port
            );
        }
        let has_external = !rule.external_ips.is_empty() || rule.node_port.is_some();
        if has_external {
            nat_chains.insert(ext_chain.clone(), ());
            let _ = writeln!(nat, "-A {ext_chain} -j KUBE-MARK-MASQ");
            let _ = writeln!(nat, "-A {ext_chain} -j {svc_chain}");
            for eip in &rule.external_ips {
                let _ = writeln!(
                    nat,
                    "-A KUBE-SERVICES {comment} -d {eip}/{mask} -p {proto} -m {proto} --dport {} -j {ext_chain}",
                    rule.port
                );
            }
            if let Some(node_port) = rule.node_port {
                let _ = writeln!(
                    nodeports,
                    "-A KUBE-NODEPORTS {comment} -p {proto} -m {proto} --dport {node_port} -j {ext_chain}"
                );
            }
        }
        let count = rule.endpoints.len();
        for (i, (ip, port)) in rule.endpoints.iter().enumerate() {
            let sep_chain = format!(
                "KUBE-SEP-{}",
                chain_hash(&format!("{}@{ip}:{port}", rule.id))
            );
            nat_chains.insert(sep_chain.clone(), ());
            let remaining = count - i;
            if remaining > 1 {
                let _ = writeln!(
                    nat,
                    "-A {svc_chain} -m statistic --mode random --probability {:.10} -j {sep_chain}",
                    1.0 / remaining as f64
                );
            } else {
                let _ = writeln!(nat, "-A {svc_chain} -j {sep_chain}");
            }
            let destination = match ip {
                IpAddr::V4(_) => format!("{ip}:{port}"),
                IpAddr::V6(_) => format!("[{ip}]:{port}"),
            };
            let _ = writeln!(
                nat,
                "-A {sep_chain} -s {ip}/{mask} -j KUBE-MARK-MASQ\n\
                 -A {sep_chain} -p {proto} -m {proto} -j DNAT --to-destination {destination}"
            );
        }
    }

    let mut out = String::new();
    out.push_str(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n\
         -A INPUT -m conntrack --ctstate NEW -j KUBE-EXTERNAL-SERVICES\n\
         -A FORWARD -m conntrack --ctstate NEW -j KUBE-SERVICES\n\
         -A OUTPUT -m conntrack --ctstate NEW -j KUBE-SERVICES\n",
    );
    out.push_str(&filter);
    out.push_str("COMMIT\n");
    out.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    for chain in nat_chains.keys() {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n",
    );
    out.push_str(&nat);
    out.push_str(&nodeports);
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulation::objects::{EndpointDef, PortDef, ServiceDef, endpoint_slice};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn endpoint(addr: &str, ready: bool) -> EndpointDef {
        EndpointDef {
            ip: ip(addr),
            pod: format!("pod-{addr}"),
            node: "node".into(),
            ready,
            serving: ready,
            terminating: false,
        }
    }

    #[test]
    fn cluster_ip_with_three_endpoints_splits_one_third_each() {
        let svc = ServiceDef::udp("dns", &[ip("10.96.0.10")], 53, 5353);
        let slice = endpoint_slice(
            &svc,
            "dns-v4",
            false,
            &[(String::new(), 5353, "UDP".into())],
            &[
                endpoint("10.244.0.10", true),
                endpoint("10.244.0.11", true),
                endpoint("10.244.0.12", true),
                endpoint("10.244.0.13", false),
            ],
        );
        let text = render(Family::V4, &[svc.to_service()], &[slice]);
        assert!(text.contains("-d 10.96.0.10/32 -p udp -m udp --dport 53 -j KUBE-SVC-"));
        assert!(text.contains("--probability 0.3333333333"));
        assert!(text.contains("--probability 0.5000000000"));
        assert!(text.contains("DNAT --to-destination 10.244.0.12:5353"));
        assert!(
            !text.contains("10.244.0.13"),
            "a not-ready endpoint gets no rule"
        );
        assert!(!text.contains("REJECT --reject"));
        // The IPv6 rule set knows nothing of an IPv4-only service.
        assert!(!render(Family::V6, &[svc.to_service()], &[]).contains("KUBE-SVC-"));
    }

    #[test]
    fn no_endpoints_rejects_and_nodeports_and_external_ips_go_through_ext_chains() {
        let mut svc = ServiceDef::udp("web", &[ip("fd00:10:96::20")], 8125, 8125);
        svc.external_ips = vec![ip("fd00:77::e:1")];
        svc.ports = vec![PortDef {
            node_port: Some(30125),
            ..PortDef::udp(8125, 8125)
        }];
        let text = render(Family::V6, &[svc.to_service()], &[]);
        assert!(text.contains(
            "-d fd00:10:96::20/128 -p udp -m udp --dport 8125 -j REJECT --reject-with icmp6-port-unreachable"
        ));
        assert!(text.contains("--dport 30125 -j REJECT"));
        let slice = endpoint_slice(
            &svc,
            "web-v6",
            true,
            &[(String::new(), 8125, "UDP".into())],
            &[endpoint("fd00:10:244::a", true)],
        );
        let text = render(Family::V6, &[svc.to_service()], &[slice]);
        assert!(text.contains("DNAT --to-destination [fd00:10:244::a]:8125"));
        assert!(text.contains("-A KUBE-NODEPORTS -m comment"));
        assert!(text.contains("-d fd00:77::e:1/128 -p udp -m udp --dport 8125 -j KUBE-EXT-"));
        assert!(!text.contains("REJECT --reject"));
    }
}
