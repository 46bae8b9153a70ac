//! The benchmark workload shared by `examples/classify-bench.rs` and `benches/classify.rs`:
//! N services × M endpoints, and a mixed stream of flows against them.
#![allow(dead_code)] // each user takes a different subset

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use ctdiff::k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use ctdiff::k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use ctdiff::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ctdiff::{FlowRef, Index, IndexConfig};

/// Service `i`'s ClusterIP: 10.96.0.0/12 counted up.
pub fn cluster_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i)
}

/// Endpoint `e` of service `i`: 10.128.0.0/9 counted up.
pub fn endpoint_ip(i: u32, e: u32, per_service: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + i * per_service + e)
}

const PORT: u16 = 53;
const TARGET_PORT: u16 = 5353;

/// `services` UDP services with one slice of `per_service` endpoints each (every tenth
/// endpoint not serving).
pub fn objects(services: u32, per_service: u32) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut svcs = Vec::with_capacity(services as usize);
    let mut slices = Vec::with_capacity(services as usize);
    for i in 0..services {
        let ns = format!("ns-{}", i % 100);
        let name = format!("svc-{i}");
        svcs.push(Service {
            metadata: ObjectMeta {
                namespace: Some(ns.clone()),
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip(i).to_string()),
                cluster_ips: Some(vec![cluster_ip(i).to_string()]),
                ports: Some(vec![ServicePort {
                    name: Some("dns".into()),
                    port: PORT.into(),
                    protocol: Some("UDP".into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        });
        slices.push(EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: (0..per_service)
                .map(|e| Endpoint {
                    addresses: vec![endpoint_ip(i, e, per_service).to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(e % 10 != 9),
                        serving: Some(e % 10 != 9),
                        terminating: Some(false),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            metadata: ObjectMeta {
                namespace: Some(ns),
                name: Some(format!("{name}-abcde")),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_owned(),
                    name,
                )])),
                ..ObjectMeta::default()
            },
            ports: Some(vec![EndpointPort {
                name: Some("dns".into()),
                port: Some(TARGET_PORT.into()),
                protocol: Some("UDP".into()),
                app_protocol: None,
            }]),
        });
    }
    (svcs, slices)
}

/// A fully listed index of the given objects.
pub fn index(services: &[Service], slices: &[EndpointSlice], now: Instant) -> Index {
    let mut index = Index::new(IndexConfig::new("bench-node"));
    let _ = index.reset_services(services, now);
    let _ = index.reset_endpoint_slices(slices, now);
    let _ = index.reset_pods([], now);
    index.set_local_addrs([IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))]);
    index
}

/// Deterministic xorshift: the workload must be the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

/// `count` flows: about 55 % kept (serving endpoint), 25 % stale (gone, not serving, port
/// changed, not DNATed) and 20 % unrelated (other ports, other IPs, TCP).
pub fn flows(count: usize, services: u32, per_service: u32) -> Vec<FlowRef> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let i = rng.below(services);
        let vip = SocketAddr::new(cluster_ip(i).into(), PORT);
        let e = rng.below(per_service);
        let backend = SocketAddr::new(endpoint_ip(i, e, per_service).into(), TARGET_PORT);
        let f = match rng.below(20) {
            0..=10 => FlowRef::udp(
                vip,
                SocketAddr::new(endpoint_ip(i, e % 9, per_service).into(), TARGET_PORT),
            ),
            11 => FlowRef::udp(
                vip,
                SocketAddr::new(
                    endpoint_ip(i, 9.min(per_service - 1), per_service).into(),
                    TARGET_PORT,
                ),
            ),
            12 => FlowRef::udp(vip, SocketAddr::new(backend.ip(), 9999)),
            13 => FlowRef::udp(vip, vip),
            14..=15 => FlowRef::udp(
                vip,
                SocketAddr::new(
                    Ipv4Addr::new(10, 255, 0, rng.below(250) as u8).into(),
                    TARGET_PORT,
                ),
            ),
            16 => FlowRef::udp(
                SocketAddr::new(vip.ip(), 8472),
                SocketAddr::new(vip.ip(), 8472),
            ),
            17 => FlowRef::udp(
                SocketAddr::new(Ipv4Addr::new(8, 8, 8, 8).into(), 53),
                SocketAddr::new(Ipv4Addr::new(8, 8, 8, 8).into(), 53),
            ),
            18 => FlowRef::udp(
                SocketAddr::new(Ipv4Addr::new(192, 168, 0, 1).into(), 30000),
                backend,
            ),
            _ => FlowRef {
                proto: 6,
                orig_dst: vip,
                reply_src: backend,
            },
        };
        out.push(f);
    }
    out
}
