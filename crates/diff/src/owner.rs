//! Who owns a frontend: the question metrics and reports ask about a flow's destination.

use std::net::SocketAddr;
use std::time::Instant;

use crate::addr::{Key, unspecified_like};
use crate::index::Index;
use crate::tables::{FrontendKey, Group, NodePortKey, Slot, pack4};
use crate::verdict::{Frontend, ServiceName};

/// The owner of a frontend, as [`Index::owner_of`] and [`Index::owner`] find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner<'a> {
    /// The owning Service (or Pod, for a host port).
    pub service: ServiceName<'a>,
    /// The service port's name (`""` if unnamed); for a host port, the container port's name.
    pub port: &'a str,
    /// The frontend that matched (for a flow's destination, as a stale verdict would name it:
    /// `nodeport/PORT` for a NodePort reached on a node address).
    pub frontend: Frontend,
    /// The owner was deleted: the frontend is a tombstone still in force.
    pub deleted: bool,
    /// The owner opted out (`conntrack-reconciler/skip`): its flows are always kept.
    pub opted_out: bool,
}

impl Index {
    /// The owner of the frontend a UDP flow to `dst` reaches, resolved as
    /// [`Index::classify`] resolves it: an address frontend, a host port bound to that IP,
    /// and, when `dst`'s IP is one of this node's addresses, a host port on every node address,
    /// then a NodePort (if `--nodeport-addresses` admits the IP). The first frontend with a live
    /// owner answers (the first owner by namespace, name and port name when several claim it);
    /// without one, the first tombstone still in force at `now`. `None`: no frontend there.
    ///
    /// Unlike a verdict, the answer does not depend on completeness or on the skip annotation:
    /// an opted-out owner is named (see [`Owner::opted_out`]).
    pub fn owner_of(&self, dst: SocketAddr, now: Instant) -> Option<Owner<'_>> {
        let dst = Key::from_socket(dst);
        let mut tomb: Option<Owner<'_>> = None;
        let mut consider = |slot: Option<&Slot>, frontend: Frontend| -> Option<Owner<'_>> {
            let slot = slot?;
            if let Some(owner) = self.live_owner(slot, frontend) {
                return Some(owner);
            }
            if tomb.is_none() {
                tomb = self.tomb_owner(slot, frontend, now);
            }
            None
        };
        let addr = match dst.ip {
            std::net::IpAddr::V4(ip) => self.frontends.addrs4.get(&pack4(ip, dst.port)),
            std::net::IpAddr::V6(_) => self.frontends.addrs6.get(&dst),
        };
        if let Some(owner) = consider(addr, Frontend::Addr(dst.socket())) {
            return Some(owner);
        }
        let host_ports = &self.frontends.host_ports;
        if let Some(owner) = consider(host_ports.get(&dst), Frontend::HostPort(dst.socket())) {
            return Some(owner);
        }
        if self.this_node.contains(&dst.ip) {
            let any_host = host_ports.get(&Key::new(unspecified_like(dst.ip), dst.port));
            if let Some(owner) = consider(any_host, Frontend::HostPort(dst.socket())) {
                return Some(owner);
            }
            // kube-proxy DNATs a NodePort only on the node addresses `--nodeport-addresses`
            // admits.
            let admitted = self
                .nodeport_addrs
                .as_ref()
                .is_none_or(|admitted| admitted.contains(&dst.ip));
            let node_port = self
                .frontends
                .node_ports
                .get(&NodePortKey::of(dst))
                .filter(|_| admitted);
            if let Some(owner) = consider(node_port, Frontend::NodePort(dst.port)) {
                return Some(owner);
            }
        }
        tomb
    }

    /// The owner of one frontend as the index keys it (as in a [`Dirty`](crate::Dirty) set): an
    /// address, a NodePort whatever the node's addresses, or a host port, where an unspecified
    /// IP (`0.0.0.0:PORT`, `[::]:PORT`) is a host port on every node address of the family.
    /// The live owner first, else a tombstone still in force at `now`.
    pub fn owner(&self, frontend: Frontend, now: Instant) -> Option<Owner<'_>> {
        let keys = match frontend {
            Frontend::Addr(addr) => [Some(FrontendKey::Addr(Key::from_socket(addr))), None],
            // Either family's (a dual-stack Service owns both).
            Frontend::NodePort(port) => {
                [false, true].map(|v6| Some(FrontendKey::NodePort(NodePortKey { v6, port })))
            }
            Frontend::HostPort(addr) => [Some(FrontendKey::HostPort(Key::from_socket(addr))), None],
        };
        let slots = keys.map(|key| key.and_then(|key| self.frontends.get(key)));
        slots
            .iter()
            .flatten()
            .find_map(|slot| self.live_owner(slot, frontend))
            .or_else(|| {
                slots
                    .iter()
                    .flatten()
                    .find_map(|slot| self.tomb_owner(slot, frontend, now))
            })
    }

    fn live_owner(&self, slot: &Slot, frontend: Frontend) -> Option<Owner<'_>> {
        let group = self.groups.get(slot.first()?)?;
        Some(owner(group, frontend, false))
    }

    fn tomb_owner(&self, slot: &Slot, frontend: Frontend, now: Instant) -> Option<Owner<'_>> {
        let group = self.groups.get(slot.tomb()?)?;
        group
            .expires
            .is_some_and(|at| now < at)
            .then(|| owner(group, frontend, true))
    }
}

fn owner(group: &Group, frontend: Frontend, deleted: bool) -> Owner<'_> {
    Owner {
        service: group.name(),
        port: &group.port_name,
        frontend,
        deleted,
        opted_out: group.skip,
    }
}
