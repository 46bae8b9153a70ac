//! The node lab: a Kubernetes node made of network namespaces on the real kernel.
//!
//! The node and what runs in it, shared by both ways of building a cluster around it:
//! - [`topology`]: the node, pods and an external host, joined by veth pairs;
//! - [`netns`]: running code (making sockets) inside one of those namespaces;
//! - [`workload`], [`process`]: UDP echo backends and fixed-source-port clients;
//! - [`conntrack`]: the node's table and its destroy events;
//! - [`agent`]: the real `conntrack-reconciler` binary, run in the node;
//! - [`timeline`]: the timestamped record of a scenario.
//!
//! The cluster around the node:
//! - [`apiserver`]: the loopback Kubernetes API double (its store, selectors and kinds);
//! - [`emulation`]: kube-proxy and the CNI portmap plugin emulated, the [`lab`] tying everything
//!   together, and the measured [`scenarios`];
//! - [`real`]: the same node with real Kubernetes components.
#![warn(missing_docs)]

pub mod agent;
pub mod apiserver;
pub mod bench;
pub mod conntrack;
pub mod emulation;
pub mod netns;
pub mod process;
pub mod real;
pub mod timeline;
pub mod topology;
pub mod workload;

// The paths these modules had before they were grouped, kept for existing callers.
pub use apiserver::{kinds, selector, store};
pub use emulation::host_port as hostport;
pub use emulation::{kubeproxy, lab, objects, proxy_sync, scenarios};
