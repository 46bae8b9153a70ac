//! The node lab: a Kubernetes node made of network namespaces on the real kernel.
//!
//! - [`topology`]: the node, pods and an external host, joined by veth pairs;
//! - [`netns`]: running code (making sockets) inside one of those namespaces;
//! - [`apiserver`]: the loopback Kubernetes API double ([`store`], [`selector`], [`kinds`]).
#![warn(missing_docs)]

pub mod apiserver;
pub mod kinds;
pub mod netns;
pub mod objects;
pub mod selector;
pub mod store;
pub mod timeline;
pub mod topology;
