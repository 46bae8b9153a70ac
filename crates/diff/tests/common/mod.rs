//! Small builders for Kubernetes objects and flows, shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use ctdiff::k8s_openapi::api::core::v1::{
    Container, ContainerPort, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress,
    NodeStatus, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use ctdiff::k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use ctdiff::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ctdiff::{FlowRef, Index, IndexConfig};

pub const NODE: &str = "node-a";

pub fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

/// A service port: protocol, name, port, optional NodePort.
pub fn port(protocol: &str, name: &str, port: i32, node_port: Option<i32>) -> ServicePort {
    ServicePort {
        name: (!name.is_empty()).then(|| name.to_owned()),
        protocol: Some(protocol.to_owned()),
        port,
        node_port,
        ..ServicePort::default()
    }
}

pub fn udp(name: &str, number: i32) -> ServicePort {
    port("UDP", name, number, None)
}

pub fn udp_np(name: &str, number: i32, node_port: i32) -> ServicePort {
    port("UDP", name, number, Some(node_port))
}

/// A ClusterIP service with the given ClusterIPs (one per family) and ports.
pub fn mk_service(ns: &str, name: &str, cluster_ips: &[&str], ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: cluster_ips.first().map(|s| s.to_string()),
            cluster_ips: Some(cluster_ips.iter().map(|s| s.to_string()).collect()),
            ports: Some(ports),
            type_: Some("ClusterIP".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

pub fn with_external_ips(mut svc: Service, ips: &[&str]) -> Service {
    svc.spec.as_mut().unwrap().external_ips = Some(ips.iter().map(|s| s.to_string()).collect());
    svc
}

/// Adds LoadBalancer ingress entries: (ip, ipMode).
pub fn with_lb(mut svc: Service, ingress: &[(&str, Option<&str>)]) -> Service {
    svc.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(
                ingress
                    .iter()
                    .map(|(ip, mode)| LoadBalancerIngress {
                        ip: Some(ip.to_string()),
                        ip_mode: mode.map(str::to_owned),
                        ..LoadBalancerIngress::default()
                    })
                    .collect(),
            ),
        }),
        ..ServiceStatus::default()
    });
    svc
}

/// Sets `spec.ipFamilies`.
pub fn with_ip_families(mut svc: Service, families: &[&str]) -> Service {
    svc.spec.as_mut().unwrap().ip_families = Some(families.iter().map(|s| s.to_string()).collect());
    svc
}

pub fn with_label(mut svc: Service, key: &str, value: &str) -> Service {
    svc.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
    svc
}

pub fn with_annotation(mut svc: Service, key: &str, value: &str) -> Service {
    svc.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
    svc
}

/// An endpoint with no conditions (serving by default).
pub fn ep(ip: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        ..Endpoint::default()
    }
}

/// An endpoint with explicit conditions.
pub fn ep_cond(
    ip: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready,
            serving,
            terminating,
        }),
        ..Endpoint::default()
    }
}

/// An EndpointSlice of `service` with UDP ports (name, number) and endpoints. The address type
/// follows the first endpoint's address.
pub fn mk_slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: &[(&str, i32)],
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let v6 = endpoints
        .first()
        .is_some_and(|e| e.addresses[0].contains(':'));
    let mut metadata = meta(ns, name);
    metadata.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_owned(),
        service.to_owned(),
    )]));
    EndpointSlice {
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        endpoints,
        metadata,
        ports: Some(
            ports
                .iter()
                .map(|(name, number)| EndpointPort {
                    name: Some(name.to_string()),
                    port: Some(*number),
                    protocol: Some("UDP".into()),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    }
}

/// A running pod on `node` with pod IPs and UDP host ports (hostIP, hostPort, containerPort).
pub fn mk_pod(
    ns: &str,
    name: &str,
    node: &str,
    pod_ips: &[&str],
    host_ports: &[(Option<&str>, i32, i32)],
) -> Pod {
    Pod {
        metadata: meta(ns, name),
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "main".into(),
                ports: Some(
                    host_ports
                        .iter()
                        .map(|(host_ip, host_port, container_port)| ContainerPort {
                            container_port: *container_port,
                            host_port: Some(*host_port),
                            host_ip: host_ip.map(str::to_owned),
                            protocol: Some("UDP".into()),
                            ..ContainerPort::default()
                        })
                        .collect(),
                ),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: pod_ips.first().map(|s| s.to_string()),
            pod_ips: Some(
                pod_ips
                    .iter()
                    .map(|ip| PodIP { ip: ip.to_string() })
                    .collect(),
            ),
            ..PodStatus::default()
        }),
    }
}

/// This node with its InternalIP addresses.
pub fn mk_node(name: &str, addrs: &[&str]) -> Node {
    let typed: Vec<(&str, &str)> = addrs.iter().map(|a| ("InternalIP", *a)).collect();
    mk_node_typed(name, &typed)
}

/// A node with addresses of the given types: (type, address), in order.
pub fn mk_node_typed(name: &str, addrs: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(
                addrs
                    .iter()
                    .map(|(type_, a)| NodeAddress {
                        address: a.to_string(),
                        type_: type_.to_string(),
                    })
                    .collect(),
            ),
            ..NodeStatus::default()
        }),
    }
}

/// An index for [`NODE`] whose every kind has been listed from the given objects.
pub fn mk_index(
    services: &[Service],
    slices: &[EndpointSlice],
    pods: &[Pod],
    node_addrs: &[&str],
    now: Instant,
) -> Index {
    mk_index_with(
        IndexConfig::new(NODE),
        services,
        slices,
        pods,
        node_addrs,
        now,
    )
}

/// [`mk_index`] with a configuration (its node name should be [`NODE`]).
pub fn mk_index_with(
    cfg: IndexConfig,
    services: &[Service],
    slices: &[EndpointSlice],
    pods: &[Pod],
    node_addrs: &[&str],
    now: Instant,
) -> Index {
    let mut index = Index::new(cfg);
    let _ = index.reset(services, now);
    let _ = index.reset(slices, now);
    let _ = index.reset(pods, now);
    let _ = index.apply_node(&mk_node(NODE, node_addrs));
    index
}

/// A UDP flow: original destination and reply source as `ip:port` text.
pub fn flow(orig_dst: &str, reply_src: &str) -> FlowRef {
    FlowRef::udp(sock(orig_dst), sock(reply_src))
}

pub fn sock(text: &str) -> SocketAddr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}
