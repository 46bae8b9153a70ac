//! Builders shared by the controller's unit tests: UDP Services, EndpointSlices and DNATed
//! flows from one client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ctnetlink::{Family, Flow, Status, Tuple, ZoneDir};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

/// The client every flow comes from.
pub const CLIENT: &str = "10.244.2.9";

/// Service `d/name` with ClusterIP `vip` and unnamed UDP `ports`.
pub fn udp_service(name: &str, vip: &str, ports: &[u16]) -> Service {
    let ports: Vec<_> = ports
        .iter()
        .map(|p| json!({"port": p, "protocol": "UDP"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "d"},
        "spec": {"clusterIP": vip, "clusterIPs": [vip], "ports": ports}
    }))
    .unwrap()
}

/// The EndpointSlice `d/<service>-1` on UDP 5353, each endpoint ready (and serving) or not.
pub fn udp_slice(service: &str, endpoints: &[(&str, bool)]) -> EndpointSlice {
    udp_slice_on(service, 5353, endpoints)
}

/// [`udp_slice`] on UDP `port`.
pub fn udp_slice_on(service: &str, port: u16, endpoints: &[(&str, bool)]) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r, "serving": r}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-1"), "namespace": "d",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"port": port, "protocol": "UDP"}]
    }))
    .unwrap()
}

/// A confirmed UDP flow from [`CLIENT`]`:sport` to `dst:dport`, answered by `backend:bport`
/// (zone 0, id = `sport`).
pub fn udp_flow(sport: u16, dst: &str, dport: u16, backend: &str, bport: u16) -> Flow {
    let client = CLIENT.parse().unwrap();
    let udp = ctnetlink::proto::UDP;
    Flow {
        family: Family::V4,
        orig: Tuple::new(client, dst.parse().unwrap(), udp, sport, dport),
        reply: Tuple::new(backend.parse().unwrap(), client, udp, bport, sport),
        status: Status::CONFIRMED,
        mark: 0,
        zone: 0,
        timeout: 30,
        id: u32::from(sport),
        zone_dir: ZoneDir::Both,
    }
}
