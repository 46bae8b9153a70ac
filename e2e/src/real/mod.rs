//! A real Kubernetes control plane and node, as plain processes in network namespaces.
//!
//! etcd, kube-apiserver (v1.34) and kube-controller-manager (the EndpointSlice controller)
//! run in a control-plane namespace; kube-proxy (v1.31 or v1.34, iptables or nftables) and the
//! real agent run in the node namespace of [`crate::topology`]; Pods are created bound to the
//! node and their status is patched the way a kubelet would, with real UDP backends behind the
//! addresses the Pod objects carry. Built from source by `cargo xtask k8s` ([`binaries`]).
//!
//! - [`cluster`]: [`RealCluster`], the whole of it;
//! - [`agent`]: the agent's objects rendered from `manifests/` and run as the DaemonSet says;
//! - [`objects`]: the Node, Services and Pods;
//! - [`proxy`]: kube-proxy flavours;
//! - [`component`]: one supervised process and its log.

pub mod agent;
pub mod binaries;
pub mod cluster;
pub mod component;
pub mod http;
pub mod objects;
pub mod proxy;

pub use agent::{AgentApi, AgentOptions, RealAgent, ShippedAgent};
pub use binaries::K8sBinaries;
pub use cluster::{ClusterConfig, PodDeletion, RealCluster};
pub use objects::{Families, UdpService};
pub use proxy::{ProxyFlavour, ProxyMode, ProxyVersion};
