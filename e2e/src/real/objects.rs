//! The API objects the harness creates: the Node, UDP Services and backend Pods.

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use serde_json::{Value, json};
use std::net::IpAddr;

/// The namespace of every Service and Pod the harness creates.
pub const NAMESPACE: &str = "default";

/// The label selecting a service's backends.
pub const APP_LABEL: &str = "app";

/// The node object: its InternalIPs are the node namespace's addresses, its pod CIDRs the lab's.
pub fn node(name: &str, addresses: &[IpAddr], pod_cidrs: &[&str]) -> Node {
    let mut addrs: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a.to_string()}))
        .collect();
    addrs.push(json!({"type": "Hostname", "address": name}));
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {"podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs},
        // Nodes take status on create; nothing updates it later (no kubelet).
        "status": {
            "addresses": addrs,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }))
    .expect("a valid Node")
}

/// Which address families a Service gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Families {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
    /// Both, IPv4 first (`RequireDualStack`).
    Dual,
}

/// A UDP Service selecting `app=<app>` pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpService {
    /// The Service's name.
    pub name: String,
    /// The `app` label of its backends.
    pub app: String,
    /// The service port.
    pub port: u16,
    /// The pods' port.
    pub target_port: u16,
    /// Address families.
    pub families: Families,
    /// Chosen ClusterIPs (first family first); empty: allocated.
    pub cluster_ips: Vec<IpAddr>,
    /// `type: NodePort`, with this port when `Some(Some(p))`, allocated with `Some(None)`.
    pub node_port: Option<Option<u16>>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
}

impl UdpService {
    /// An IPv4 ClusterIP Service `name` for `app`, `port` → `target_port`.
    pub fn new(name: &str, app: &str, port: u16, target_port: u16) -> Self {
        Self {
            name: name.into(),
            app: app.into(),
            port,
            target_port,
            families: Families::V4,
            cluster_ips: Vec::new(),
            node_port: None,
            external_ips: Vec::new(),
        }
    }

    /// With these families.
    pub fn families(mut self, families: Families) -> Self {
        self.families = families;
        self
    }

    /// With chosen ClusterIPs (e.g. to reuse a deleted Service's).
    pub fn cluster_ips(mut self, ips: &[IpAddr]) -> Self {
        self.cluster_ips = ips.to_vec();
        self
    }

    /// As a NodePort Service (`None`: allocated).
    pub fn node_port(mut self, port: Option<u16>) -> Self {
        self.node_port = Some(port);
        self
    }

    /// With ExternalIPs.
    pub fn external_ips(mut self, ips: &[IpAddr]) -> Self {
        self.external_ips = ips.to_vec();
        self
    }

    /// The API object.
    pub fn to_object(&self) -> Service {
        let (families, policy): (Vec<&str>, &str) = match self.families {
            Families::V4 => (vec!["IPv4"], "SingleStack"),
            Families::V6 => (vec!["IPv6"], "SingleStack"),
            Families::Dual => (vec!["IPv4", "IPv6"], "RequireDualStack"),
        };
        let mut port = json!({
            "name": "udp",
            "protocol": "UDP",
            "port": self.port,
            "targetPort": self.target_port,
        });
        let mut spec = json!({
            "type": "ClusterIP",
            "selector": {APP_LABEL: self.app},
            "ipFamilies": families,
            "ipFamilyPolicy": policy,
        });
        if let Some(node_port) = self.node_port {
            spec["type"] = json!("NodePort");
            if let Some(p) = node_port {
                port["nodePort"] = json!(p);
            }
        }
        spec["ports"] = json!([port]);
        if !self.cluster_ips.is_empty() {
            let ips: Vec<String> = self.cluster_ips.iter().map(IpAddr::to_string).collect();
            spec["clusterIP"] = json!(ips[0]);
            spec["clusterIPs"] = json!(ips);
        }
        if !self.external_ips.is_empty() {
            let ips: Vec<String> = self.external_ips.iter().map(IpAddr::to_string).collect();
            spec["externalIPs"] = json!(ips);
        }
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "namespace": NAMESPACE},
            "spec": spec,
        }))
        .expect("a valid Service")
    }
}

/// A backend pod bound to `node` (no scheduler): `app=<app>`, one container listening on UDP
/// `ports`. Its status is set afterwards with [`running_status`], as a kubelet would.
pub fn pod(name: &str, app: &str, node: &str, ports: &[u16]) -> Pod {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"containerPort": p, "protocol": "UDP"}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {APP_LABEL: app}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "udp-echo", "image": "udp-echo", "ports": ports}],
        },
    }))
    .expect("a valid Pod")
}

/// The status patch a kubelet makes once the pod runs: phase, IPs (first family first, as
/// `podIPs[0] == podIP` requires) and the Ready condition.
pub fn running_status(ips: &[IpAddr], host_ips: &[IpAddr], ready: bool) -> Value {
    let status = if ready { "True" } else { "False" };
    let now = now();
    json!({
        "status": {
            "phase": "Running",
            "podIP": ips.first().map(IpAddr::to_string),
            "podIPs": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
            "hostIP": host_ips.first().map(IpAddr::to_string),
            "hostIPs": host_ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
                {"type": "Ready", "status": status, "lastTransitionTime": now},
            ],
        }
    })
}

/// The status patch that flips readiness only (a failing readiness probe, or its recovery).
pub fn readiness_status(ready: bool) -> Value {
    let status = if ready { "True" } else { "False" };
    let now = now();
    json!({
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
                {"type": "Ready", "status": status, "lastTransitionTime": now},
            ],
        }
    })
}

/// Now, as `metav1.Time` writes it (RFC 3339, whole seconds, UTC).
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_carry_families_ips_and_node_ports() {
        let v4: IpAddr = "10.96.0.50".parse().unwrap();
        let v6: IpAddr = "fd00:10:96::50".parse().unwrap();
        let svc = UdpService::new("dns", "dns", 53, 5353)
            .families(Families::Dual)
            .cluster_ips(&[v4, v6])
            .node_port(Some(30053))
            .to_object();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.50"));
        assert_eq!(spec.cluster_ips.unwrap().len(), 2);
        assert_eq!(spec.ip_family_policy.as_deref(), Some("RequireDualStack"));
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("UDP"));
        assert_eq!(port.node_port, Some(30053));
    }

    #[test]
    fn pods_are_bound_and_statuses_list_ips_in_order() {
        let p = pod("b-0", "dns", "node", &[5353]);
        assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("node"));
        let ips: Vec<IpAddr> = vec![
            "10.244.0.10".parse().unwrap(),
            "fd00:10:244::a".parse().unwrap(),
        ];
        let s = running_status(&ips, &ips[..1], true);
        assert_eq!(s["status"]["podIP"], "10.244.0.10");
        assert_eq!(s["status"]["podIPs"][1]["ip"], "fd00:10:244::a");
        assert_eq!(s["status"]["conditions"][3]["status"], "True");
    }
}
