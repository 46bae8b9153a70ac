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
//!
//! A scenario, in outline (a plain `#[test]`; every call blocks):
//!
//! ```no_run
//! # use e2e::real::*;
//! # use e2e::real::cluster::PodDeletion;
//! # use std::{net::SocketAddr, time::Duration};
//! # fn f(lab: e2e::process::Binaries, agent_bin: &std::path::Path) -> anyhow::Result<()> {
//! let Some(bins) = K8sBinaries::for_test("my_test") else { return Ok(()) }; // skip line
//! let config = ClusterConfig { proxy: Some(ProxyFlavour::V1_31_LOST_CLEANUP), ..Default::default() };
//! let mut cluster = RealCluster::start("my_test", &bins, lab, config)?;
//! let svc = cluster.create_service(&UdpService::new("dns", "dns", 53, 5353))?;
//! let ip = svc.spec.unwrap().cluster_ip.unwrap().parse()?;
//! let a = cluster.add_backend("dns-a", "dns", &[5353], true)?.ipv4;
//! cluster.wait_ready_endpoints("dns", &[a.into()], Duration::from_secs(30))?;
//! cluster.wait_service_programmed(ip, &[SocketAddr::new(a.into(), 5353)], &[], Duration::from_secs(30))?;
//! let client = cluster.start_client("c", SocketAddr::new(ip, 53), 40053, Duration::from_millis(20))?;
//! let mut agent = cluster.start_agent(&ShippedAgent::render()?, &AgentOptions::shipped(agent_bin))?;
//! agent.wait_ready(Duration::from_secs(60))?;
//! cluster.delete_pod("dns-a", PodDeletion::Immediate)?;
//! # let _ = client; Ok(()) }
//! ```

pub mod agent;
pub mod binaries;
pub mod cluster;
pub mod component;
pub mod http;
pub mod objects;
pub mod proxy;
pub mod scenarios;

pub use agent::{AgentApi, AgentOptions, RealAgent, ShippedAgent};
pub use binaries::K8sBinaries;
pub use cluster::{ClusterConfig, PodDeletion, RealCluster};
pub use objects::{Families, UdpService};
pub use proxy::{ProxyFlavour, ProxyMode, ProxyVersion};
