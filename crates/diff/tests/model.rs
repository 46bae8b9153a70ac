//! Property tests: ctdiff against a deliberately simple reference model (plain loops over plain
//! data), and incremental updates against an index built from the final state.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use ctdiff::k8s_openapi::api::core::v1::{Pod, Service};
use ctdiff::k8s_openapi::api::discovery::v1::EndpointSlice;
use ctdiff::{Cidr, FlowRef, Index, IndexConfig, NodePortAddresses, Reason, Verdict};
use proptest::prelude::*;

// ---- plain data ----

#[derive(Clone, Debug)]
enum Kind {
    Normal,
    Headless,
    ExternalName,
    OtherProxy,
    /// Labelled `service.kubernetes.io/headless` (kube-proxy's informers skip it).
    HeadlessLabel,
}

#[derive(Clone, Debug)]
struct PPort {
    name: String,
    udp: bool,
    port: u16,
    node_port: Option<u16>,
}

#[derive(Clone, Debug)]
struct PSvc {
    ns: String,
    name: String,
    kind: Kind,
    skip: bool,
    cluster_ips: Vec<IpAddr>,
    /// `spec.ipFamilies` (true = IPv4), possibly inconsistent with the ClusterIPs.
    ip_families: Option<Vec<bool>>,
    external_ips: Vec<IpAddr>,
    /// (ip, mode): None = absent, Some(true) = VIP, Some(false) = Proxy.
    lb: Vec<(IpAddr, Option<bool>)>,
    ports: Vec<PPort>,
}

#[derive(Clone, Debug)]
struct PEndpoint {
    ip: IpAddr,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Clone, Debug)]
struct PSlice {
    ns: String,
    name: String,
    service: String,
    fqdn: bool,
    /// (name, udp, port)
    ports: Vec<(String, bool, u16)>,
    endpoints: Vec<PEndpoint>,
}

#[derive(Clone, Debug)]
struct PPod {
    name: String,
    on_this_node: bool,
    host_network: bool,
    ips: Vec<IpAddr>,
    /// (hostIP, hostPort, containerPort)
    host_ports: Vec<(Option<IpAddr>, u16, u16)>,
}

/// kube-proxy's `--nodeport-addresses`.
#[derive(Clone, Debug, Default)]
enum PNodePort {
    #[default]
    All,
    /// (address, prefix length)
    Cidrs(Vec<(IpAddr, u8)>),
    Primary,
}

#[derive(Clone, Debug, Default)]
struct Cluster {
    services: BTreeMap<(String, String), PSvc>,
    slices: BTreeMap<(String, String), PSlice>,
    pods: BTreeMap<String, PPod>,
    node_addrs: Vec<IpAddr>,
    nodeport: PNodePort,
}

// ---- strategies: tiny pools so that addresses, ports and names collide often ----

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        4 => (1u8..=6).prop_map(|i| IpAddr::from([10, 0, 0, i])),
        2 => (1u16..=3).prop_map(|i| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i])),
    ]
}

/// A node address: getifaddrs also reports the loopback addresses.
fn node_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        6 => ip(),
        1 => Just(IpAddr::from([127, 0, 0, 1])),
        1 => Just(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
    ]
}

fn svc_port_number() -> impl Strategy<Value = u16> {
    prop_oneof![Just(53u16), Just(54), Just(5353)]
}

fn node_port() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![2 => Just(None), 1 => (30000u16..=30001).prop_map(Some)]
}

fn port_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a".to_owned()),
        Just("b".to_owned())
    ]
}

fn ns() -> impl Strategy<Value = String> {
    prop_oneof![Just("ns0".to_owned()), Just("ns1".to_owned())]
}

fn svc_name() -> impl Strategy<Value = String> {
    (0..3u8).prop_map(|i| format!("s{i}"))
}

fn service() -> impl Strategy<Value = PSvc> {
    let kind = prop_oneof![8 => Just(Kind::Normal), 1 => Just(Kind::Headless), 1 => Just(Kind::ExternalName), 1 => Just(Kind::OtherProxy), 1 => Just(Kind::HeadlessLabel)];
    let ports = proptest::collection::vec(
        (
            port_name(),
            prop::bool::weighted(0.8),
            svc_port_number(),
            node_port(),
        ),
        0..3,
    )
    .prop_map(|raw| {
        // Like the API: port names and (port, protocol) unique within a service.
        let mut ports: Vec<PPort> = Vec::new();
        for (name, udp, port, node_port) in raw {
            if ports.iter().any(|p| {
                p.name == name
                    || p.port == port
                    || (node_port.is_some() && p.node_port == node_port)
            }) {
                continue;
            }
            ports.push(PPort {
                name,
                udp,
                port,
                node_port,
            });
        }
        ports
    });
    let ip_families = prop_oneof![
        2 => Just(None),
        1 => proptest::collection::vec(any::<bool>(), 1..3).prop_map(Some),
    ];
    (
        (ns(), svc_name(), kind, prop::bool::weighted(0.1)),
        (proptest::collection::vec(ip(), 1..3), ip_families),
        proptest::collection::vec(ip(), 0..3),
        proptest::collection::vec(
            (
                ip(),
                prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
            ),
            0..2,
        ),
        ports,
    )
        .prop_map(
            |((ns, name, kind, skip), (cluster_ips, ip_families), external_ips, lb, ports)| PSvc {
                ns,
                name,
                kind,
                skip,
                cluster_ips,
                ip_families,
                external_ips,
                lb,
                ports,
            },
        )
}

fn endpoint() -> impl Strategy<Value = PEndpoint> {
    let cond = prop_oneof![Just(None), Just(Some(true)), Just(Some(false))];
    (ip(), cond.clone(), cond.clone(), cond).prop_map(|(ip, ready, serving, terminating)| {
        PEndpoint {
            ip,
            ready,
            serving,
            terminating,
        }
    })
}

fn slice() -> impl Strategy<Value = PSlice> {
    (
        ns(),
        (0..4u8).prop_map(|i| format!("e{i}")),
        svc_name(),
        prop::bool::weighted(0.05),
        proptest::collection::vec(
            (port_name(), prop::bool::weighted(0.85), svc_port_number()),
            0..3,
        ),
        proptest::collection::vec(endpoint(), 0..4),
    )
        .prop_map(|(ns, name, service, fqdn, ports, endpoints)| PSlice {
            ns,
            name,
            service,
            fqdn,
            ports,
            endpoints,
        })
}

fn pod() -> impl Strategy<Value = PPod> {
    let host_ip = prop_oneof![3 => Just(None), 1 => ip().prop_map(Some)];
    (
        (0..3u8).prop_map(|i| format!("p{i}")),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.1),
        proptest::collection::vec(ip(), 0..3),
        proptest::collection::vec(
            (
                host_ip,
                prop_oneof![Just(53u16), Just(5060)],
                svc_port_number(),
            ),
            0..3,
        ),
    )
        .prop_map(|(name, on_this_node, host_network, mut ips, raw)| {
            ips.sort();
            ips.dedup();
            let mut host_ports: Vec<(Option<IpAddr>, u16, u16)> = Vec::new();
            for hp in raw {
                // The kubelet rejects two mappings of one host port in one pod.
                if !host_ports.iter().any(|other| other.1 == hp.1) {
                    host_ports.push(hp);
                }
            }
            PPod {
                name,
                on_this_node,
                host_network,
                ips,
                host_ports,
            }
        })
}

fn nodeport_addresses() -> impl Strategy<Value = PNodePort> {
    let cidr = ip().prop_flat_map(|ip| {
        let prefixes: Vec<u8> = if ip.is_ipv4() {
            vec![0, 30, 31, 32]
        } else {
            vec![0, 126, 127, 128]
        };
        proptest::sample::select(prefixes).prop_map(move |p| (ip, p))
    });
    prop_oneof![
        3 => Just(PNodePort::All),
        2 => proptest::collection::vec(cidr, 1..3).prop_map(PNodePort::Cidrs),
        2 => Just(PNodePort::Primary),
    ]
}

fn cluster() -> impl Strategy<Value = Cluster> {
    (
        proptest::collection::vec(service(), 0..5),
        proptest::collection::vec(slice(), 0..6),
        proptest::collection::vec(pod(), 0..3),
        proptest::collection::vec(node_ip(), 0..3),
        nodeport_addresses(),
    )
        .prop_map(|(services, slices, pods, node_addrs, nodeport)| Cluster {
            services: services
                .into_iter()
                .map(|s| ((s.ns.clone(), s.name.clone()), s))
                .collect(),
            slices: slices
                .into_iter()
                .map(|s| ((s.ns.clone(), s.name.clone()), s))
                .collect(),
            pods: pods.into_iter().map(|p| (p.name.clone(), p)).collect(),
            node_addrs,
            nodeport,
        })
}

fn socket() -> impl Strategy<Value = SocketAddr> {
    let port = prop_oneof![
        Just(53u16),
        Just(54),
        Just(5353),
        Just(5060),
        Just(30000),
        Just(30001),
        Just(9)
    ];
    (ip(), port).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// A flow, with IPv4 addresses sometimes spelled as IPv4-mapped IPv6 sockets.
fn flow_ref() -> impl Strategy<Value = FlowRef> {
    (
        prop_oneof![9 => Just(17u8), 1 => Just(6u8)],
        socket(),
        socket(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(proto, dst, reply, not_dnated, mapped)| {
            let reply = if not_dnated { dst } else { reply };
            let spell = |a: SocketAddr| match (a.ip(), mapped) {
                (IpAddr::V4(v4), true) => {
                    SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port())
                }
                _ => a,
            };
            FlowRef {
                proto,
                orig_dst: spell(dst),
                reply_src: spell(reply),
            }
        })
}

// ---- plain data → Kubernetes objects, with varied spellings ----

/// Spells an IP one of several equivalent ways, chosen by `salt`.
fn spell(ip: IpAddr, salt: usize) -> String {
    match (ip, salt % 3) {
        (IpAddr::V4(v4), 1) => format!("::ffff:{v4}"),
        (IpAddr::V4(v4), 2) => v4
            .octets()
            .iter()
            .map(|o| format!("{o:03}"))
            .collect::<Vec<_>>()
            .join("."),
        (IpAddr::V6(v6), 1) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:04X}"))
            .collect::<Vec<_>>()
            .join(":"),
        (IpAddr::V6(v6), 2) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join(":"),
        (ip, _) => ip.to_string(),
    }
}

fn to_service(s: &PSvc) -> Service {
    let ports = s
        .ports
        .iter()
        .map(|p| {
            port(
                if p.udp { "UDP" } else { "TCP" },
                &p.name,
                p.port.into(),
                p.node_port.map(i32::from),
            )
        })
        .collect();
    let ips: Vec<String> = s
        .cluster_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| spell(*ip, i))
        .collect();
    let ips: Vec<&str> = match s.kind {
        Kind::Headless => vec!["None"],
        _ => ips.iter().map(String::as_str).collect(),
    };
    let mut svc = mk_service(&s.ns, &s.name, &ips, ports);
    if let Some(families) = &s.ip_families {
        let names: Vec<&str> = families
            .iter()
            .map(|v4| if *v4 { "IPv4" } else { "IPv6" })
            .collect();
        svc = with_ip_families(svc, &names);
    }
    let external: Vec<String> = s
        .external_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| spell(*ip, i + 1))
        .collect();
    svc = with_external_ips(
        svc,
        &external.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    if !s.lb.is_empty() {
        let texts: Vec<(String, Option<&str>)> =
            s.lb.iter()
                .enumerate()
                .map(|(i, (ip, mode))| {
                    (
                        spell(*ip, i + 2),
                        mode.map(|vip| if vip { "VIP" } else { "Proxy" }),
                    )
                })
                .collect();
        let refs: Vec<(&str, Option<&str>)> = texts.iter().map(|(t, m)| (t.as_str(), *m)).collect();
        svc = with_lb(svc, &refs);
    }
    match s.kind {
        Kind::ExternalName => svc.spec.as_mut().unwrap().type_ = Some("ExternalName".into()),
        Kind::OtherProxy => svc = with_label(svc, ctdiff::LABEL_SERVICE_PROXY_NAME, "other"),
        Kind::HeadlessLabel => svc = with_label(svc, ctdiff::LABEL_HEADLESS, ""),
        _ => {}
    }
    if s.skip {
        svc = with_annotation(svc, ctdiff::ANNOTATION_SKIP, "true");
    }
    svc
}

fn to_slice(s: &PSlice) -> EndpointSlice {
    let endpoints = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| match (e.ready, e.serving, e.terminating) {
            (None, None, None) if i % 2 == 0 => ep(&spell(e.ip, i)),
            (ready, serving, terminating) => ep_cond(&spell(e.ip, i), ready, serving, terminating),
        })
        .collect();
    let mut slice = mk_slice(&s.ns, &s.name, &s.service, &[], endpoints);
    slice.ports = Some(
        s.ports
            .iter()
            .map(
                |(name, udp, number)| ctdiff::k8s_openapi::api::discovery::v1::EndpointPort {
                    name: Some(name.clone()),
                    port: Some((*number).into()),
                    protocol: Some(if *udp { "UDP" } else { "TCP" }.into()),
                    app_protocol: None,
                },
            )
            .collect(),
    );
    if s.fqdn {
        slice.address_type = "FQDN".into();
    }
    slice
}

fn to_pod(p: &PPod) -> Pod {
    let ips: Vec<String> = p
        .ips
        .iter()
        .enumerate()
        .map(|(i, ip)| spell(*ip, i))
        .collect();
    let host_ips: Vec<Option<String>> = p
        .host_ports
        .iter()
        .map(|(h, _, _)| h.map(|ip| spell(ip, 1)))
        .collect();
    let ports: Vec<(Option<&str>, i32, i32)> = p
        .host_ports
        .iter()
        .zip(&host_ips)
        .map(|((_, hp, cp), h)| (h.as_deref(), i32::from(*hp), i32::from(*cp)))
        .collect();
    let node = if p.on_this_node { NODE } else { "node-b" };
    let mut pod = mk_pod(
        "pods",
        &p.name,
        node,
        &ips.iter().map(String::as_str).collect::<Vec<_>>(),
        &ports,
    );
    if p.host_network {
        pod.spec.as_mut().unwrap().host_network = Some(true);
    }
    pod
}

fn node_texts(c: &Cluster) -> Vec<String> {
    c.node_addrs
        .iter()
        .enumerate()
        .map(|(i, ip)| spell(*ip, i))
        .collect()
}

fn build(c: &Cluster, now: Instant) -> Index {
    let services: Vec<Service> = c.services.values().map(to_service).collect();
    let slices: Vec<EndpointSlice> = c.slices.values().map(to_slice).collect();
    let pods: Vec<Pod> = c.pods.values().map(to_pod).collect();
    let texts = node_texts(c);
    let nodeport_addresses = match &c.nodeport {
        PNodePort::All => NodePortAddresses::All,
        PNodePort::Cidrs(list) => NodePortAddresses::Cidrs(
            list.iter()
                .map(|(ip, prefix)| Cidr::new(*ip, *prefix).unwrap())
                .collect(),
        ),
        PNodePort::Primary => NodePortAddresses::Primary,
    };
    mk_index_with(
        IndexConfig {
            nodeport_addresses,
            ..IndexConfig::new(NODE)
        },
        &services,
        &slices,
        &pods,
        &texts.iter().map(String::as_str).collect::<Vec<_>>(),
        now,
    )
}

// ---- the reference model ----

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    Unrelated,
    Keep,
    Stale {
        owner: String,
        port: String,
        reason: Reason,
    },
}

/// One owner of a frontend: name, port name, skip flag, backends (ip, port, serving), host port?
struct Owner {
    ns: String,
    name: String,
    port: String,
    skip: bool,
    backends: Vec<(IpAddr, u16, bool)>,
    host_port: bool,
}

fn canonical(a: SocketAddr) -> (IpAddr, u16) {
    (a.ip().to_canonical(), a.port())
}

fn service_backends(c: &Cluster, svc: &PSvc, port_name: &str) -> Vec<(IpAddr, u16, bool)> {
    let mut out = Vec::new();
    for slice in c.slices.values() {
        if slice.ns != svc.ns || slice.service != svc.name || slice.fqdn {
            continue;
        }
        for (name, udp, number) in &slice.ports {
            if !udp || name != port_name {
                continue;
            }
            for e in &slice.endpoints {
                // Allowed: ready, or serving and terminating (unset: true, true, false).
                let allowed = e.ready.unwrap_or(true)
                    || (e.serving.unwrap_or(true) && e.terminating.unwrap_or(false));
                out.push((e.ip, *number, allowed));
            }
        }
    }
    out
}

fn reference(c: &Cluster, f: &FlowRef) -> Expected {
    if f.proto != 17 {
        return Expected::Unrelated;
    }
    let (dip, dport) = canonical(f.orig_dst);
    let (rip, rport) = canonical(f.reply_src);
    // kube-proxy never serves `::1`; on IPv4 loopback only a DNATed flow is known to be service
    // traffic (iptables mode DNATs NodePorts there, nftables mode does not).
    let undnated_loopback = dip.is_loopback() && (rip, rport) == (dip, dport);
    let on_node = c.node_addrs.contains(&dip)
        && dip != IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        && !undnated_loopback;
    let nodeport_on_node = on_node && nodeport_admits(c, dip);
    // A Service is served only in its IP families, and needs a ClusterIP of one of them.
    let handled = |s: &&PSvc| {
        matches!(s.kind, Kind::Normal) && s.cluster_ips.iter().any(|ip| in_families(s, *ip))
    };
    let relevant_pods = || {
        c.pods
            .values()
            .filter(|p| p.on_this_node && !p.host_network && !p.ips.is_empty())
    };

    // Class 1: address frontends.
    let mut owners = Vec::new();
    // The addresses kube-proxy programs for a Service (of its families only).
    let served_ips = |svc: &PSvc| -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = svc.cluster_ips.clone();
        ips.extend(&svc.external_ips);
        ips.extend(
            svc.lb
                .iter()
                .filter(|(_, mode)| *mode != Some(false))
                .map(|(ip, _)| *ip),
        );
        ips.retain(|ip| in_families(svc, *ip));
        ips
    };
    for svc in c.services.values().filter(handled) {
        let ips = served_ips(svc);
        for p in svc.ports.iter().filter(|p| p.udp) {
            if p.port == dport && ips.contains(&dip) {
                owners.push(svc_owner(c, svc, p));
            }
        }
    }
    // Class 2: host ports on an explicit host IP.
    if owners.is_empty() {
        for pod in relevant_pods() {
            for (host_ip, hp, cp) in &pod.host_ports {
                if *host_ip == Some(dip) && *hp == dport {
                    owners.push(pod_owner(pod, *cp));
                }
            }
        }
    }
    // Class 3: host ports on any node address (pod must have an IP of the family).
    if owners.is_empty() && on_node {
        for pod in relevant_pods() {
            for (host_ip, hp, cp) in &pod.host_ports {
                let family = pod.ips.iter().any(|ip| ip.is_ipv4() == dip.is_ipv4());
                if host_ip.is_none() && *hp == dport && family {
                    owners.push(pod_owner(pod, *cp));
                }
            }
        }
    }
    // Class 4: NodePorts on the node addresses --nodeport-addresses admits, of the families the
    // Service is served in (kube-proxy's per-family proxiers).
    // (Served in a family: the Service has an address of it that kube-proxy programs; the
    // same for every valid object as its `spec.ipFamilies`.)
    let served_in_dip_family =
        |s: &&PSvc| served_ips(s).iter().any(|ip| ip.is_ipv6() == dip.is_ipv6());
    if owners.is_empty() && nodeport_on_node {
        for svc in c
            .services
            .values()
            .filter(handled)
            .filter(served_in_dip_family)
        {
            for p in svc.ports.iter().filter(|p| p.udp) {
                if p.node_port == Some(dport) {
                    owners.push(svc_owner(c, svc, p));
                }
            }
        }
    }
    if owners.is_empty() {
        return Expected::Unrelated;
    }
    for o in &owners {
        if o.skip
            || o.backends
                .iter()
                .any(|(ip, port, serving)| *serving && *ip == rip && *port == rport)
        {
            return Expected::Keep;
        }
    }
    let first = owners
        .iter()
        .min_by(|a, b| (&a.ns, &a.name, &a.port).cmp(&(&b.ns, &b.name, &b.port)))
        .unwrap();
    let reason = if (rip, rport) == (dip, dport) {
        Reason::NotDnated
    } else if !first.host_port && !first.backends.iter().any(|b| b.2) {
        Reason::NoEndpoints
    } else if first
        .backends
        .iter()
        .any(|(ip, port, _)| *ip == rip && *port == rport)
    {
        Reason::EndpointNotServing
    } else if first
        .backends
        .iter()
        .any(|(ip, _, serving)| *serving && *ip == rip)
    {
        Reason::PortChanged
    } else if first.host_port {
        Reason::HostPortPodGone
    } else {
        Reason::EndpointGone
    };
    Expected::Stale {
        owner: format!("{}/{}", first.ns, first.name),
        port: first.port.clone(),
        reason,
    }
}

/// Whether `ip` is of one of the Service's families: `spec.ipFamilies` entries that have a
/// ClusterIP at their index, or without it the families of the ClusterIPs.
fn in_families(svc: &PSvc, ip: IpAddr) -> bool {
    match &svc.ip_families {
        Some(families) => families
            .iter()
            .take(svc.cluster_ips.len())
            .any(|v4| *v4 == ip.is_ipv4()),
        None => svc.cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4()),
    }
}

/// kube-proxy's `--nodeport-addresses`: per family, every address unless restricted.
fn nodeport_admits(c: &Cluster, ip: IpAddr) -> bool {
    let same = |other: &IpAddr| other.is_ipv4() == ip.is_ipv4();
    match &c.nodeport {
        PNodePort::All => true,
        PNodePort::Cidrs(list) => {
            let family: Vec<&(IpAddr, u8)> = list.iter().filter(|(net, _)| same(net)).collect();
            family.is_empty()
                || family.iter().any(|(net, prefix)| match (net, ip) {
                    (IpAddr::V4(net), IpAddr::V4(ip)) => {
                        let bits = 32 - u32::from(*prefix);
                        u64::from(net.to_bits()) >> bits == u64::from(ip.to_bits()) >> bits
                    }
                    (IpAddr::V6(net), IpAddr::V6(ip)) => {
                        let bits = 128 - u32::from(*prefix);
                        net.to_bits().checked_shr(bits).unwrap_or(0)
                            == ip.to_bits().checked_shr(bits).unwrap_or(0)
                    }
                    _ => false,
                })
        }
        // The Node's first address of the family (all are InternalIPs here).
        // (A loopback primary restricts nothing.)
        PNodePort::Primary => c
            .node_addrs
            .iter()
            .find(|a| same(a))
            .filter(|p| !p.is_loopback())
            .is_none_or(|p| *p == ip),
    }
}

fn svc_owner(c: &Cluster, svc: &PSvc, p: &PPort) -> Owner {
    Owner {
        ns: svc.ns.clone(),
        name: svc.name.clone(),
        port: p.name.clone(),
        skip: svc.skip,
        backends: service_backends(c, svc, &p.name),
        host_port: false,
    }
}

fn pod_owner(pod: &PPod, container_port: u16) -> Owner {
    Owner {
        ns: "pods".into(),
        name: pod.name.clone(),
        port: String::new(),
        skip: false,
        backends: pod
            .ips
            .iter()
            .map(|ip| (*ip, container_port, true))
            .collect(),
        host_port: true,
    }
}

fn observed(v: Verdict<'_>) -> Expected {
    match v {
        Verdict::Unrelated => Expected::Unrelated,
        Verdict::Keep => Expected::Keep,
        Verdict::Stale(s) => Expected::Stale {
            owner: s.service.to_string(),
            port: s.port.to_owned(),
            reason: s.reason,
        },
    }
}

// ---- events ----

#[derive(Clone, Debug)]
enum Event {
    ApplyService(PSvc),
    DeleteService(usize),
    ResetServices(Vec<PSvc>),
    ApplySlice(PSlice),
    DeleteSlice(usize),
    ResetSlices(Vec<PSlice>),
    ApplyPod(PPod),
    DeletePod(usize),
    ResetPods(Vec<PPod>),
    SetNode(Vec<IpAddr>),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => service().prop_map(Event::ApplyService),
        3 => any::<usize>().prop_map(Event::DeleteService),
        1 => proptest::collection::vec(service(), 0..4).prop_map(Event::ResetServices),
        6 => slice().prop_map(Event::ApplySlice),
        3 => any::<usize>().prop_map(Event::DeleteSlice),
        1 => proptest::collection::vec(slice(), 0..4).prop_map(Event::ResetSlices),
        3 => pod().prop_map(Event::ApplyPod),
        2 => any::<usize>().prop_map(Event::DeletePod),
        1 => proptest::collection::vec(pod(), 0..3).prop_map(Event::ResetPods),
        1 => proptest::collection::vec(ip(), 0..3).prop_map(Event::SetNode),
    ]
}

/// Applies an event to both the incremental index and the plain final state.
fn play(index: &mut Index, state: &mut Cluster, e: &Event, now: Instant) {
    match e {
        Event::ApplyService(s) => {
            let _ = index.apply(&to_service(s), now);
            state
                .services
                .insert((s.ns.clone(), s.name.clone()), s.clone());
        }
        Event::DeleteService(i) => {
            if let Some(key) = state
                .services
                .keys()
                .nth(i % state.services.len().max(1))
                .cloned()
            {
                let s = state.services.remove(&key).unwrap();
                let _ = index.delete(&to_service(&s), now);
            }
        }
        Event::ResetServices(list) => {
            state.services = list
                .iter()
                .map(|s| ((s.ns.clone(), s.name.clone()), s.clone()))
                .collect();
            let objects: Vec<Service> = state.services.values().map(to_service).collect();
            let _ = index.reset(&objects, now);
        }
        Event::ApplySlice(s) => {
            let _ = index.apply(&to_slice(s), now);
            state
                .slices
                .insert((s.ns.clone(), s.name.clone()), s.clone());
        }
        Event::DeleteSlice(i) => {
            if let Some(key) = state
                .slices
                .keys()
                .nth(i % state.slices.len().max(1))
                .cloned()
            {
                let s = state.slices.remove(&key).unwrap();
                let _ = index.delete(&to_slice(&s), now);
            }
        }
        Event::ResetSlices(list) => {
            state.slices = list
                .iter()
                .map(|s| ((s.ns.clone(), s.name.clone()), s.clone()))
                .collect();
            let objects: Vec<EndpointSlice> = state.slices.values().map(to_slice).collect();
            let _ = index.reset(&objects, now);
        }
        Event::ApplyPod(p) => {
            let _ = index.apply(&to_pod(p), now);
            state.pods.insert(p.name.clone(), p.clone());
        }
        Event::DeletePod(i) => {
            if let Some(key) = state.pods.keys().nth(i % state.pods.len().max(1)).cloned() {
                let p = state.pods.remove(&key).unwrap();
                let _ = index.delete(&to_pod(&p), now);
            }
        }
        Event::ResetPods(list) => {
            state.pods = list.iter().map(|p| (p.name.clone(), p.clone())).collect();
            let objects: Vec<Pod> = state.pods.values().map(to_pod).collect();
            let _ = index.reset(&objects, now);
        }
        Event::SetNode(addrs) => {
            state.node_addrs = addrs.clone();
            let texts = node_texts(state);
            let _ = index.apply_node(&mk_node(
                NODE,
                &texts.iter().map(String::as_str).collect::<Vec<_>>(),
            ));
        }
    }
}

const TTL: Duration = Duration::from_secs(300);

/// Flows aimed at what the cluster holds (every frontend address × every endpoint × every slice
/// port), capped: random flows alone rarely hit an exact serving backend.
fn aimed_flows(c: &Cluster, cap: usize) -> Vec<FlowRef> {
    // NodePorts on every node address (loopback included), not DNATed or DNATed to each
    // endpoint: half the budget.
    let mut out = Vec::new();
    let node_ports = c
        .services
        .values()
        .flat_map(|svc| svc.ports.iter().filter_map(|p| p.node_port));
    for (addr, port) in node_ports.flat_map(|p| c.node_addrs.iter().map(move |a| (*a, p))) {
        let dst = SocketAddr::new(addr, port);
        out.push(FlowRef::udp(dst, dst));
        for slice in c.slices.values() {
            for (e, (_, _, number)) in slice
                .endpoints
                .iter()
                .flat_map(|e| slice.ports.iter().map(move |p| (e, p)))
            {
                out.push(FlowRef::udp(dst, SocketAddr::new(e.ip, *number)));
            }
        }
    }
    out.truncate(cap / 2);
    for svc in c.services.values() {
        let addrs = svc.cluster_ips.iter().chain(&svc.external_ips);
        for (addr, p) in addrs.flat_map(|a| svc.ports.iter().map(move |p| (a, p))) {
            for slice in c.slices.values().filter(|s| s.ns == svc.ns) {
                for (e, (_, _, number)) in slice
                    .endpoints
                    .iter()
                    .flat_map(|e| slice.ports.iter().map(move |p| (e, p)))
                {
                    out.push(FlowRef::udp(
                        SocketAddr::new(*addr, p.port),
                        SocketAddr::new(e.ip, *number),
                    ));
                }
            }
        }
    }
    out.truncate(cap);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6000, ..ProptestConfig::default() })]

    /// Random clusters and flows: the index agrees with the reference model on every flow.
    #[test]
    fn index_agrees_with_reference_model(c in cluster(), flows in proptest::collection::vec(flow_ref(), 1..40)) {
        let now = Instant::now();
        let index = build(&c, now);
        for f in flows.iter().chain(&aimed_flows(&c, 48)) {
            prop_assert_eq!(observed(index.classify(f, now)), reference(&c, f), "flow {:?}", f);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Scoped passes judge only the frontends an update made dirty: every update — a watch
    /// event, a relist (`Reset*`, the path a watch takes after any failure), a node change —
    /// must make dirty every flow whose verdict it changed. (A relist that is not a kind's
    /// first listing no longer dirties everything: this is what makes that safe.)
    #[test]
    fn every_changed_verdict_is_covered_by_the_dirty_set(initial in cluster(), events in proptest::collection::vec(event(), 1..12), flows in proptest::collection::vec(flow_ref(), 1..30)) {
        let now = Instant::now();
        let mut index = build(&initial, now);
        let mut state = initial;
        let _ = index.take_dirty();
        for e in &events {
            // Probes aimed at the state before and after the event (the latter found by
            // playing it on a copy).
            let mut next = state.clone();
            play(&mut build(&state, now), &mut next, e, now);
            let probes: Vec<FlowRef> = flows
                .iter()
                .copied()
                .chain(aimed_flows(&state, 48))
                .chain(aimed_flows(&next, 48))
                .collect();
            let before: Vec<Expected> = probes.iter().map(|f| observed(index.classify(f, now))).collect();
            play(&mut index, &mut state, e, now);
            let dirty = index.take_dirty();
            for (f, before) in probes.iter().zip(&before) {
                let after = observed(index.classify(f, now));
                if *before != after {
                    prop_assert!(dirty.covers(f), "{:?}: {:?} -> {:?} after {:?}, not in {:?}", f, before, after, e, dirty);
                }
            }
        }
    }

    /// Random event sequences: once tombstones have expired the incremental index equals an
    /// index built from the final state (and the reference model); before, they differ only
    /// where a tombstone judges a flow the final state does not know.
    #[test]
    fn incremental_updates_equal_rebuild(initial in cluster(), events in proptest::collection::vec(event(), 0..12), flows in proptest::collection::vec(flow_ref(), 1..30)) {
        let now = Instant::now();
        let mut index = build(&initial, now);
        let mut state = initial;
        for e in &events {
            play(&mut index, &mut state, e, now);
        }
        let fresh = build(&state, now);
        let later = now + TTL;
        for f in flows.iter().chain(&aimed_flows(&state, 48)) {
            let before = observed(index.classify(f, now));
            match observed(fresh.classify(f, now)) {
                Expected::Unrelated => prop_assert!(
                    matches!(before, Expected::Unrelated | Expected::Stale { reason: Reason::ServiceDeleted | Reason::HostPortPodGone, .. }),
                    "flow {:?}: {:?}", f, before
                ),
                want => prop_assert_eq!(before, want, "flow {:?}", f),
            }
            prop_assert_eq!(observed(index.classify(f, later)), observed(fresh.classify(f, later)), "flow {:?} after TTL", f);
            prop_assert_eq!(observed(index.classify(f, later)), reference(&state, f), "flow {:?} vs model", f);
        }
        prop_assert_eq!(index.stats().services, fresh.stats().services);
        prop_assert_eq!(index.stats().service_ports, fresh.stats().service_ports);
        prop_assert_eq!(index.stats().endpoints, fresh.stats().endpoints);
        index.expire_tombstones(later);
        prop_assert_eq!(index.stats(), fresh.stats());
    }
}
