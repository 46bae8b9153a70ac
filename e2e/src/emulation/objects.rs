//! Builders for the Kubernetes objects the lab serves, from a compact description.

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HostIP, Node, NodeAddress, NodeStatus, Pod, PodCondition, PodIP,
    PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortDef {
    /// The port's name ("" when the service has one unnamed port).
    pub name: String,
    /// `UDP` or `TCP`.
    pub protocol: String,
    /// The service port (on the ClusterIP and ExternalIPs).
    pub port: u16,
    /// The port on the endpoints.
    pub target_port: u16,
    /// The NodePort, for `NodePort` services.
    pub node_port: Option<u16>,
}

impl PortDef {
    /// An unnamed UDP port.
    pub fn udp(port: u16, target_port: u16) -> Self {
        Self {
            name: String::new(),
            protocol: "UDP".into(),
            port,
            target_port,
            node_port: None,
        }
    }
}

/// A service, as the lab describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIPs, one per family (first is primary).
    pub cluster_ips: Vec<IpAddr>,
    /// ExternalIPs.
    pub external_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<PortDef>,
}

impl ServiceDef {
    /// A ClusterIP service in `default` with one UDP port.
    pub fn udp(name: &str, cluster_ips: &[IpAddr], port: u16, target_port: u16) -> Self {
        Self {
            namespace: "default".into(),
            name: name.into(),
            cluster_ips: cluster_ips.to_vec(),
            external_ips: Vec::new(),
            ports: vec![PortDef::udp(port, target_port)],
        }
    }

    /// The Kubernetes object.
    pub fn to_service(&self) -> Service {
        let node_port = self.ports.iter().any(|p| p.node_port.is_some());
        let families: Vec<String> = self
            .cluster_ips
            .iter()
            .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_string())
            .collect();
        Service {
            metadata: meta(&self.namespace, &self.name, BTreeMap::new()),
            spec: Some(ServiceSpec {
                type_: Some(if node_port { "NodePort" } else { "ClusterIP" }.into()),
                cluster_ip: self.cluster_ips.first().map(|ip| ip.to_string()),
                cluster_ips: Some(self.cluster_ips.iter().map(|ip| ip.to_string()).collect()),
                ip_families: Some(families),
                external_ips: (!self.external_ips.is_empty())
                    .then(|| self.external_ips.iter().map(|ip| ip.to_string()).collect()),
                ports: Some(
                    self.ports
                        .iter()
                        .map(|p| ServicePort {
                            name: (!p.name.is_empty()).then(|| p.name.clone()),
                            protocol: Some(p.protocol.clone()),
                            port: p.port.into(),
                            target_port: Some(IntOrString::Int(p.target_port.into())),
                            node_port: p.node_port.map(i32::from),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointDef {
    /// The endpoint's address.
    pub ip: IpAddr,
    /// The backing pod's name.
    pub pod: String,
    /// The node it runs on.
    pub node: String,
    /// `ready` condition.
    pub ready: bool,
    /// `serving` condition.
    pub serving: bool,
    /// `terminating` condition.
    pub terminating: bool,
}

/// An EndpointSlice for one family of a service; the ports are `(name, port, protocol)`.
pub fn endpoint_slice(
    service: &ServiceDef,
    slice_name: &str,
    ipv6: bool,
    ports: &[(String, u16, String)],
    endpoints: &[EndpointDef],
) -> EndpointSlice {
    let labels = BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), service.name.clone()),
        (
            "endpointslice.kubernetes.io/managed-by".to_string(),
            "endpointslice-controller.k8s.io".to_string(),
        ),
    ]);
    EndpointSlice {
        metadata: meta(&service.namespace, slice_name, labels),
        address_type: if ipv6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: endpoints
            .iter()
            .filter(|e| e.ip.is_ipv6() == ipv6)
            .map(|e| Endpoint {
                addresses: vec![e.ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(e.ready),
                    serving: Some(e.serving),
                    terminating: Some(e.terminating),
                }),
                node_name: Some(e.node.clone()),
                target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(e.pod.clone()),
                    namespace: Some(service.namespace.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(
            ports
                .iter()
                .map(|(name, port, protocol)| EndpointPort {
                    name: Some(name.clone()),
                    port: Some((*port).into()),
                    protocol: Some(protocol.clone()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// A Node with InternalIPs.
pub fn node(name: &str, ips: &[IpAddr]) -> Node {
    Node {
        metadata: meta("", name, BTreeMap::new()),
        status: Some(NodeStatus {
            addresses: Some(
                ips.iter()
                    .map(|ip| NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One UDP port of a pod's container; with `host_port`, mapped on the node (CNI portmap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerPortDef {
    /// The port the container listens on.
    pub container_port: u16,
    /// The node port mapped to it (`hostPort`), if any.
    pub host_port: Option<u16>,
}

/// A running pod, as the lab describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The node it runs on (`spec.nodeName`).
    pub node_name: String,
    /// The node's address (`status.hostIP`), if known.
    pub host_ip: Option<IpAddr>,
    /// The pod's addresses, primary first (`status.podIP`, `status.podIPs`).
    pub ips: Vec<IpAddr>,
    /// Whether it shares the node's network namespace.
    pub host_network: bool,
    /// Its one container's UDP ports.
    pub udp_ports: Vec<ContainerPortDef>,
}

impl PodDef {
    /// The Kubernetes object: one container, phase Running, Ready.
    pub fn to_pod(&self) -> Pod {
        let ports: Vec<ContainerPort> = self
            .udp_ports
            .iter()
            .map(|p| ContainerPort {
                container_port: p.container_port.into(),
                host_port: p.host_port.map(i32::from),
                protocol: Some("UDP".into()),
                ..Default::default()
            })
            .collect();
        Pod {
            metadata: meta(&self.namespace, &self.name, BTreeMap::new()),
            spec: Some(PodSpec {
                node_name: Some(self.node_name.clone()),
                host_network: Some(self.host_network),
                containers: vec![Container {
                    name: "main".into(),
                    ports: (!ports.is_empty()).then_some(ports),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                host_ip: self.host_ip.map(|ip| ip.to_string()),
                host_ips: self.host_ip.map(|ip| vec![HostIP { ip: ip.to_string() }]),
                pod_ip: self.ips.first().map(|ip| ip.to_string()),
                pod_ips: Some(
                    self.ips
                        .iter()
                        .map(|ip| PodIP { ip: ip.to_string() })
                        .collect(),
                ),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }
}

/// A running Pod on `node_name` with no ports and no host IP (see [`PodDef`] for more).
pub fn pod(
    namespace: &str,
    name: &str,
    node_name: &str,
    ips: &[IpAddr],
    host_network: bool,
) -> Pod {
    PodDef {
        namespace: namespace.into(),
        name: name.into(),
        node_name: node_name.into(),
        host_ip: None,
        ips: ips.to_vec(),
        host_network,
        udp_ports: Vec::new(),
    }
    .to_pod()
}

fn meta(namespace: &str, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: (!namespace.is_empty()).then(|| namespace.into()),
        labels: (!labels.is_empty()).then_some(labels),
        ..Default::default()
    }
}
