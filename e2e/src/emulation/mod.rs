//! The emulated cluster around the node: kube-proxy, the CNI portmap plugin, the controllers that
//! publish Services, EndpointSlices and Pods, and the scenarios measured against them.
//!
//! - [`objects`]: the lab's compact model of services, endpoints and pods, as Kubernetes objects;
//! - [`kubeproxy`] / [`proxy_sync`]: kube-proxy's iptables mode, emulated, with a rules lag;
//! - [`host_port`]: the CNI portmap plugin's hostPort DNAT, emulated, with the same lag;
//! - [`lab`]: all of it together with the node, the API double and the agent;
//! - [`scenarios`]: the measured scenarios.
//!
//! The real components (kubelet, kube-proxy, a real apiserver) are in [`crate::real`].

pub mod host_port;
pub mod kubeproxy;
pub mod lab;
pub mod objects;
pub mod proxy_sync;
pub mod scenarios;
