//! Kubernetes objects → the plain data the index needs. Everything the engine knows about the
//! API's semantics (defaults, ignored kinds, labels) lives here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, LoadBalancerIngress, LoadBalancerStatus, Node, NodeStatus, Pod,
    PodSpec as ApiPodSpec, PodStatus, Service, ServicePort, ServiceSpec as ApiServiceSpec,
    ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::addr::{parse_ip, port_from_i32};
use crate::report::{Report, SkipReason};

// The label keys are written once, as macros, so that the selectors below are built from
// them at compile time.
macro_rules! label_service_proxy_name {
    () => {
        "service.kubernetes.io/service-proxy-name"
    };
}
macro_rules! label_headless {
    () => {
        "service.kubernetes.io/headless"
    };
}

/// Label naming the Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label that hands a Service to another proxy; kube-proxy (and so this engine) ignores it.
pub const LABEL_SERVICE_PROXY_NAME: &str = label_service_proxy_name!();
/// Label the EndpointSlice controller puts on the slices of headless Services. kube-proxy
/// selects neither Services nor EndpointSlices that carry it, and neither does the engine.
pub const LABEL_HEADLESS: &str = label_headless!();

/// Label selector for the Services kube-proxy programs (not handed to another proxy), for
/// one-shot lists. A *watch* must not use it: it would turn a relabel into a deletion carrying
/// the old object, which the index would take for a real deletion and tombstone (see
/// [`IndexedKind::delete`](crate::IndexedKind::delete)); the index filters the label itself.
pub const SERVICE_LABEL_SELECTOR: &str =
    concat!("!", label_service_proxy_name!(), ",!", label_headless!());
/// Label selector for the EndpointSlices that can matter: those of non-headless Services.
/// Safe for watches too (a Service never becomes headless or stops being headless).
pub const ENDPOINT_SLICE_LABEL_SELECTOR: &str = concat!("!", label_headless!());
/// Annotation that opts a Service out: with value `"true"` its flows are always kept.
pub const ANNOTATION_SKIP: &str = "conntrack-reconciler/skip";

/// Namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ObjKey {
    pub(crate) namespace: Box<str>,
    pub(crate) name: Box<str>,
}

impl ObjKey {
    fn of(meta: &ObjectMeta) -> Option<ObjKey> {
        let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
        let namespace = meta.namespace.as_deref().filter(|n| !n.is_empty())?;
        Some(ObjKey {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

/// How an object is named in skip reports: `Kind namespace/name`.
struct Described<'a>(&'static str, &'a ObjectMeta);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.1.namespace.as_deref().unwrap_or("");
        let name = self.1.name.as_deref().unwrap_or("");
        if ns.is_empty() {
            write!(f, "{} {}", self.0, name)
        } else {
            write!(f, "{} {}/{}", self.0, ns, name)
        }
    }
}

fn label<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.labels
        .as_ref()
        .and_then(|l: &BTreeMap<String, String>| l.get(key))
        .map(String::as_str)
}

fn is_udp(protocol: Option<&str>) -> bool {
    // The API defaults an absent protocol to TCP.
    protocol == Some("UDP")
}

/// One UDP port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServicePortSpec {
    pub(crate) name: Box<str>,
    pub(crate) port: u16,
    pub(crate) node_port: Option<u16>,
}

/// What the engine uses of a Service it handles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceSpec {
    pub(crate) skip: bool,
    /// ClusterIPs, ExternalIPs and VIP-mode LoadBalancer IPs, sorted, without duplicates.
    pub(crate) ips: Vec<IpAddr>,
    pub(crate) ports: Vec<ServicePortSpec>,
}

/// The IP families a Service has, as kube-proxy's per-family proxiers see them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    /// From `spec.ipFamilies`: each family counts only with a ClusterIP at its index (kube-proxy's
    /// `GetClusterIPByFamily`); unknown spellings count as nothing.
    fn listed(listed: &[String], cluster_ips: usize) -> Self {
        let mut families = Families::default();
        for family in listed.iter().take(cluster_ips) {
            match family.as_str() {
                "IPv4" => families.v4 = true,
                "IPv6" => families.v6 = true,
                _ => {}
            }
        }
        families
    }

    /// The families of some addresses (a Service without `spec.ipFamilies`: its ClusterIPs').
    fn of(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut families = Families::default();
        for ip in ips {
            match ip {
                IpAddr::V4(_) => families.v4 = true,
                IpAddr::V6(_) => families.v6 = true,
            }
        }
        families
    }

    fn has(self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.v4,
            IpAddr::V6(_) => self.v6,
        }
    }

    fn name(self) -> &'static str {
        match (self.v4, self.v6) {
            (true, true) => "IPv4,IPv6",
            (true, false) => "IPv4",
            (false, true) => "IPv6",
            (false, false) => "none",
        }
    }
}

/// A Service, parsed: handled, or ignored for a reason.
pub(crate) enum ParsedService {
    Handled(ServiceSpec),
    Ignored(&'static str),
}

pub(crate) fn parse_service(svc: &Service, report: &mut Report) -> Option<(ObjKey, ParsedService)> {
    let meta = &svc.metadata;
    let who = Described("Service", meta);
    let Some(key) = ObjKey::of(meta) else {
        report.skip(&who, SkipReason::NoName);
        return None;
    };
    let ignored = |why| Some((key.clone(), ParsedService::Ignored(why)));
    if label(meta, LABEL_SERVICE_PROXY_NAME).is_some() {
        return ignored(
            "labelled service.kubernetes.io/service-proxy-name (another proxy serves it)",
        );
    }
    // kube-proxy's Service informer selects `!service-proxy-name,!headless`: a Service carrying
    // the headless label gets no rule, whatever its ClusterIP (and its slices do not carry the
    // label, so they would give it serving backends).
    if label(meta, LABEL_HEADLESS).is_some() {
        return ignored("labelled service.kubernetes.io/headless (kube-proxy ignores it)");
    }
    let Some(spec) = svc.spec.as_ref() else {
        return ignored("no spec");
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return ignored("type ExternalName");
    }
    let cluster_ips: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    // Like kube-proxy: a service without a usable ClusterIP (headless, or not yet allocated)
    // gets no rules at all, so none of its frontends are judged.
    match cluster_ips.first() {
        None | Some(&"") => return ignored("no ClusterIP"),
        Some(&"None") => return ignored("headless (clusterIP None)"),
        Some(_) => {}
    }
    let skip = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SKIP))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));

    // Like kube-proxy, which runs one proxier per IP family: a Service is programmed only in
    // the families it has (`spec.ipFamilies`, each paired with the ClusterIP at the same
    // index; without ipFamilies, the families of its ClusterIPs), and an ExternalIP or
    // LoadBalancer IP of another family gets no rule at all. Judging such an address would
    // let anyone who may create a Service have every node delete flows to an arbitrary
    // outside address.
    let mut cluster = Vec::with_capacity(cluster_ips.len());
    for text in &cluster_ips {
        match parse_ip(text) {
            Some(ip) => cluster.push((ip, *text)),
            None => report.skip(
                &who,
                SkipReason::BadIp {
                    field: "spec.clusterIPs",
                    value: (*text).to_owned(),
                },
            ),
        }
    }
    let families = match spec.ip_families.as_deref() {
        Some(listed) if !listed.is_empty() => Families::listed(listed, cluster_ips.len()),
        _ => Families::of(cluster.iter().map(|(ip, _)| *ip)),
    };
    let mut ips = Vec::new();
    let mut add_ip = |field: &'static str, ip: IpAddr, text: &str, report: &mut Report| {
        if families.has(ip) {
            ips.push(ip);
            true
        } else {
            report.skip(
                &who,
                SkipReason::OtherFamily {
                    field,
                    value: text.to_owned(),
                    families: families.name(),
                },
            );
            false
        }
    };
    let mut usable_cluster_ip = false;
    for (ip, text) in cluster {
        usable_cluster_ip |= add_ip("spec.clusterIPs", ip, text, report);
    }
    if !usable_cluster_ip {
        return ignored("no usable ClusterIP of the Service's IP families");
    }
    let mut add_text = |field: &'static str, text: &str, report: &mut Report| match parse_ip(text) {
        Some(ip) => {
            add_ip(field, ip, text, report);
        }
        None => report.skip(
            &who,
            SkipReason::BadIp {
                field,
                value: text.to_owned(),
            },
        ),
    };
    for text in spec.external_ips.iter().flatten() {
        add_text("spec.externalIPs", text, report);
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for entry in ingress.into_iter().flatten() {
        // ipMode Proxy means the load balancer delivers to the node itself, not to the VIP:
        // no rule matches the VIP on the node, so flows to it are not service traffic here.
        let vip_mode = matches!(entry.ip_mode.as_deref(), None | Some("VIP"));
        if let (Some(text), true) = (entry.ip.as_deref(), vip_mode) {
            add_text("status.loadBalancer.ingress[].ip", text, report);
        }
    }
    ips.sort_unstable();
    ips.dedup();

    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        if !is_udp(port.protocol.as_deref()) {
            continue;
        }
        let Some(number) = port_from_i32(port.port) else {
            report.skip(
                &who,
                SkipReason::BadPort {
                    field: "spec.ports[].port",
                    value: port.port.into(),
                },
            );
            continue;
        };
        let node_port = match port.node_port {
            None | Some(0) => None,
            Some(value) => {
                let parsed = port_from_i32(value);
                if parsed.is_none() {
                    report.skip(
                        &who,
                        SkipReason::BadPort {
                            field: "spec.ports[].nodePort",
                            value: value.into(),
                        },
                    );
                }
                parsed
            }
        };
        ports.push(ServicePortSpec {
            name: port.name.as_deref().unwrap_or("").into(),
            port: number,
            node_port,
        });
    }
    Some((
        key,
        ParsedService::Handled(ServiceSpec { skip, ips, ports }),
    ))
}

/// What the engine uses of an EndpointSlice it handles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceSpec {
    /// The Service (same namespace) named by the `kubernetes.io/service-name` label.
    pub(crate) service: ObjKey,
    /// UDP ports: name and number.
    pub(crate) ports: Vec<(Box<str>, u16)>,
    /// Each endpoint's first address and whether it is an allowed backend (ready, or serving
    /// and terminating).
    pub(crate) endpoints: Vec<(IpAddr, bool)>,
}

pub(crate) fn parse_endpoint_slice(
    slice: &EndpointSlice,
    report: &mut Report,
) -> Option<(ObjKey, Option<SliceSpec>)> {
    let meta = &slice.metadata;
    let who = Described("EndpointSlice", meta);
    let Some(key) = ObjKey::of(meta) else {
        report.skip(&who, SkipReason::NoName);
        return None;
    };
    let Some(service) = label(meta, LABEL_SERVICE_NAME).filter(|s| !s.is_empty()) else {
        report.skip(
            &who,
            SkipReason::Ignored("no kubernetes.io/service-name label"),
        );
        return Some((key, None));
    };
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        report.skip(
            &who,
            SkipReason::Ignored("address type is not IPv4 or IPv6 (FQDN)"),
        );
        return Some((key, None));
    }
    let mut ports = Vec::new();
    for port in slice.ports.iter().flatten() {
        if !is_udp(port.protocol.as_deref()) {
            continue;
        }
        let name = port.name.as_deref().unwrap_or("");
        match port.port {
            None => report.skip(
                &who,
                SkipReason::PortWithoutNumber {
                    name: name.to_owned(),
                },
            ),
            Some(value) => match port_from_i32(value) {
                Some(number) => ports.push((name.into(), number)),
                None => report.skip(
                    &who,
                    SkipReason::BadPort {
                        field: "ports[].port",
                        value: value.into(),
                    },
                ),
            },
        }
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for endpoint in &slice.endpoints {
        // Consumers use the first address only (the API says the others are interchangeable).
        let Some(text) = endpoint.addresses.first() else {
            continue;
        };
        let Some(ip) = parse_ip(text) else {
            report.skip(
                &who,
                SkipReason::BadIp {
                    field: "endpoints[].addresses",
                    value: text.clone(),
                },
            );
            continue;
        };
        // kube-proxy routes to `ready` endpoints and, when a service has none, to serving
        // terminating ones; it reads an unset `ready` or `serving` as true and an unset
        // `terminating` as false. So an endpoint it may route to is ready, or serving and
        // terminating: a publishNotReadyAddresses Service's not-ready pod is `ready=true` and
        // does get traffic; a not-ready pod that is not terminating gets none, whatever an
        // unset `serving` says.
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        endpoints.push((ip, ready || (serving && terminating)));
    }
    let service = ObjKey {
        namespace: key.namespace.clone(),
        name: service.into(),
    };
    Some((
        key,
        Some(SliceSpec {
            service,
            ports,
            endpoints,
        }),
    ))
}

/// One UDP hostPort of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostPortSpec {
    /// `None`: every node address.
    pub(crate) host_ip: Option<IpAddr>,
    pub(crate) host_port: u16,
    pub(crate) container_port: u16,
    pub(crate) name: Box<str>,
}

/// What the engine uses of a Pod with UDP host ports on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodSpec {
    pub(crate) ips: Vec<IpAddr>,
    pub(crate) ports: Vec<HostPortSpec>,
}

pub(crate) fn parse_pod(
    pod: &Pod,
    node_name: &str,
    report: &mut Report,
) -> Option<(ObjKey, Option<PodSpec>)> {
    let meta = &pod.metadata;
    let who = Described("Pod", meta);
    let Some(key) = ObjKey::of(meta) else {
        report.skip(&who, SkipReason::NoName);
        return None;
    };
    let Some(spec) = pod.spec.as_ref() else {
        return Some((key, None));
    };
    if spec.node_name.as_deref() != Some(node_name) {
        return Some((key, None));
    }
    let status = pod.status.as_ref();
    // A finished pod's sandbox (and its port mapping) is gone.
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Some((key, None));
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut ports = Vec::new();
    for port in containers.flat_map(|c: &Container| c.ports.iter().flatten()) {
        let Some(host_port) = port.host_port.filter(|p| *p != 0) else {
            continue;
        };
        if !is_udp(port.protocol.as_deref()) {
            continue;
        }
        let (Some(host_port), Some(container_port)) =
            (port_from_i32(host_port), port_from_i32(port.container_port))
        else {
            report.skip(
                &who,
                SkipReason::BadPort {
                    field: "containers[].ports[]",
                    value: host_port.into(),
                },
            );
            continue;
        };
        let host_ip = match port.host_ip.as_deref() {
            None | Some("") => None,
            Some(text) => match parse_ip(text) {
                Some(ip) if ip.is_unspecified() => None,
                Some(ip) => Some(ip),
                None => {
                    report.skip(
                        &who,
                        SkipReason::BadIp {
                            field: "containers[].ports[].hostIP",
                            value: text.to_owned(),
                        },
                    );
                    continue;
                }
            },
        };
        ports.push(HostPortSpec {
            host_ip,
            host_port,
            container_port,
            name: port.name.as_deref().unwrap_or("").into(),
        });
    }
    if ports.is_empty() {
        return Some((key, None));
    }
    if spec.host_network == Some(true) {
        // No DNAT happens for a host-network pod: its "host port" is just a socket on the node.
        report.skip(
            &who,
            SkipReason::Ignored("hostNetwork pod: host ports are not DNATed"),
        );
        return Some((key, None));
    }
    let mut ips = Vec::new();
    let listed = status
        .and_then(|s| s.pod_ips.as_ref())
        .filter(|l| !l.is_empty());
    let texts: Vec<&str> = match listed {
        Some(list) => list.iter().map(|p| p.ip.as_str()).collect(),
        None => status
            .and_then(|s| s.pod_ip.as_deref())
            .into_iter()
            .collect(),
    };
    for text in texts {
        match parse_ip(text) {
            Some(ip) => ips.push(ip),
            None => report.skip(
                &who,
                SkipReason::BadIp {
                    field: "status.podIPs",
                    value: text.to_owned(),
                },
            ),
        }
    }
    ips.sort_unstable();
    ips.dedup();
    if ips.is_empty() {
        // Not started yet: no DNAT exists for it, and whatever was there before stays judged
        // by the previous owner's tombstone.
        return Some((key, None));
    }
    Some((key, Some(PodSpec { ips, ports })))
}

/// This node's addresses from its Node object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NodeAddrs {
    /// Every InternalIP and ExternalIP, sorted, without duplicates.
    pub(crate) all: Vec<IpAddr>,
    /// The node's primary IP of each family, as kube-proxy picks them (`GetNodeHostIPs`): the
    /// first InternalIP of the family, else its first ExternalIP. At most one per family.
    pub(crate) primary: Vec<IpAddr>,
}

/// This node's addresses from its status (`None` if `node` is another node).
pub(crate) fn parse_node(node: &Node, node_name: &str, report: &mut Report) -> Option<NodeAddrs> {
    let meta = &node.metadata;
    if meta.name.as_deref() != Some(node_name) {
        report.skip(
            &Described("Node", meta),
            SkipReason::Ignored("not this node"),
        );
        return None;
    }
    let mut internal = Vec::new();
    let mut external = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for address in addresses.into_iter().flatten() {
        let list = match address.type_.as_str() {
            "InternalIP" => &mut internal,
            "ExternalIP" => &mut external,
            _ => continue,
        };
        match parse_ip(&address.address) {
            Some(ip) => list.push(ip),
            None => report.skip(
                &Described("Node", meta),
                SkipReason::BadIp {
                    field: "status.addresses",
                    value: address.address.clone(),
                },
            ),
        }
    }
    let ordered = internal.iter().chain(&external);
    let primary: Vec<IpAddr> = [
        ordered.clone().find(|ip| ip.is_ipv4()),
        ordered.clone().find(|ip| ip.is_ipv6()),
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect();
    let mut all: Vec<IpAddr> = ordered.copied().collect();
    all.sort_unstable();
    all.dedup();
    Some(NodeAddrs { all, primary })
}

// ---- pruning: each parser's fields, and nothing else ----
//
// A watch keeps objects only until the index has parsed them, but a relist can queue whole
// pages: the controller prunes each object to what the parser above reads. Every prune below
// is the mirror of one parser; the tests check that a pruned object parses to the same state
// and the same reports.

/// The metadata every parser reads (namespace and name, for the key and the reports), the
/// resourceVersion a watch resumes from, and the given label and annotation keys.
fn prune_meta(meta: &mut ObjectMeta, labels: &[&str], annotations: &[&str]) {
    fn only(
        map: Option<BTreeMap<String, String>>,
        keys: &[&str],
    ) -> Option<BTreeMap<String, String>> {
        let mut map = map?;
        map.retain(|k, _| keys.contains(&k.as_str()));
        (!map.is_empty()).then_some(map)
    }
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        resource_version: meta.resource_version.take(),
        labels: only(meta.labels.take(), labels),
        annotations: only(meta.annotations.take(), annotations),
        ..ObjectMeta::default()
    };
}

/// Keeps what [`parse_service`] reads.
pub(crate) fn prune_service(svc: &mut Service) {
    prune_meta(
        &mut svc.metadata,
        &[LABEL_SERVICE_PROXY_NAME, LABEL_HEADLESS],
        &[ANNOTATION_SKIP],
    );
    svc.spec = svc.spec.take().map(|spec| ApiServiceSpec {
        type_: spec.type_,
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        ip_families: spec.ip_families,
        external_ips: spec.external_ips,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .filter(|p| is_udp(p.protocol.as_deref()))
                .map(|p| ServicePort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    node_port: p.node_port,
                    ..ServicePort::default()
                })
                .collect()
        }),
        ..ApiServiceSpec::default()
    });
    let ingress = svc
        .status
        .take()
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress);
    svc.status = ingress.map(|ingress| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(
                ingress
                    .into_iter()
                    .map(|i| LoadBalancerIngress {
                        ip: i.ip,
                        ip_mode: i.ip_mode,
                        ..LoadBalancerIngress::default()
                    })
                    .collect(),
            ),
        }),
        ..ServiceStatus::default()
    });
}

/// Keeps what [`parse_endpoint_slice`] reads.
pub(crate) fn prune_endpoint_slice(slice: &mut EndpointSlice) {
    prune_meta(&mut slice.metadata, &[LABEL_SERVICE_NAME], &[]);
    for endpoint in &mut slice.endpoints {
        // Consumers use the first address only.
        endpoint.addresses.truncate(1);
        *endpoint = Endpoint {
            addresses: std::mem::take(&mut endpoint.addresses),
            conditions: endpoint.conditions.take(),
            ..Endpoint::default()
        };
    }
    slice.ports = slice.ports.take().map(|ports| {
        ports
            .into_iter()
            .filter(|p| is_udp(p.protocol.as_deref()))
            .map(|p| EndpointPort {
                name: p.name,
                port: p.port,
                protocol: p.protocol,
                ..EndpointPort::default()
            })
            .collect()
    });
}

/// Keeps what [`parse_pod`] reads: UDP host ports of containers and init (sidecar) containers.
pub(crate) fn prune_pod(pod: &mut Pod) {
    fn host_ports(containers: Vec<Container>) -> Vec<Container> {
        containers
            .into_iter()
            .filter_map(|c| {
                let ports: Vec<ContainerPort> = c
                    .ports?
                    .into_iter()
                    .filter(|p| p.host_port.is_some_and(|hp| hp != 0))
                    .filter(|p| is_udp(p.protocol.as_deref()))
                    .collect();
                (!ports.is_empty()).then(|| Container {
                    name: c.name,
                    ports: Some(ports),
                    ..Container::default()
                })
            })
            .collect()
    }
    prune_meta(&mut pod.metadata, &[], &[]);
    pod.spec = pod.spec.take().map(|spec| ApiPodSpec {
        node_name: spec.node_name,
        host_network: spec.host_network,
        containers: host_ports(spec.containers),
        init_containers: spec
            .init_containers
            .map(host_ports)
            .filter(|c| !c.is_empty()),
        ..ApiPodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        ..PodStatus::default()
    });
}

/// Keeps what [`parse_node`] reads.
pub(crate) fn prune_node(node: &mut Node) {
    prune_meta(&mut node.metadata, &[], &[]);
    node.spec = None;
    node.status = node.status.take().map(|status| NodeStatus {
        addresses: status.addresses,
        ..NodeStatus::default()
    });
}
