//! The node lab: a Kubernetes node made of network namespaces on the real kernel.
//!
//! - [`topology`]: the node, pods and an external host, joined by veth pairs;
//! - [`netns`]: running code (making sockets) inside one of those namespaces;
//! - [`apiserver`]: the loopback Kubernetes API double ([`store`], [`selector`], [`kinds`]);
//! - [`kubeproxy`] / [`proxy_sync`]: kube-proxy's iptables mode, emulated, with a rules lag;
//! - [`hostport`]: the CNI portmap plugin's hostPort DNAT, emulated, with the same lag;
//! - [`workload`], [`process`]: UDP echo backends and fixed-source-port clients;
//! - [`conntrack`]: the node's table and its destroy events;
//! - [`agent`]: the real `conntrack-reconciler` binary, run in the node;
//! - [`lab`]: all of it together; [`scenarios`]: the measured scenarios.
#![warn(missing_docs)]

pub mod agent;
pub mod apiserver;
pub mod conntrack;
pub mod hostport;
pub mod kinds;
pub mod kubeproxy;
pub mod lab;
pub mod netns;
pub mod objects;
pub mod process;
pub mod proxy_sync;
pub mod real;
pub mod scenarios;
pub mod selector;
pub mod store;
pub mod timeline;
pub mod topology;
pub mod workload;
