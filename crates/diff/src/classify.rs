//! The hot path: one flow → one verdict, O(1), no allocation.

use std::time::Instant;

use crate::addr::{Key, unspecified_like};
use crate::index::Index;
use crate::tables::{GroupKind, Slot};
use crate::verdict::{FlowRef, Frontend, IPPROTO_UDP, Reason, Stale, Verdict};

impl Index {
    /// Judges one flow. `now` decides whether tombstones are still in force.
    ///
    /// Lookup order (first match decides): an address frontend (ClusterIP / ExternalIP /
    /// LoadBalancer IP with the port), a host port bound to that exact IP, and — only when the
    /// destination IP is one of this node's addresses — a host port on any node address, then a
    /// NodePort. Anything else, and every non-UDP flow, is [`Verdict::Unrelated`].
    #[inline]
    pub fn classify(&self, flow: &FlowRef, now: Instant) -> Verdict<'_> {
        if flow.proto != IPPROTO_UDP {
            return Verdict::Unrelated;
        }
        let dst = Key::from_socket(flow.orig_dst);
        let reply = Key::from_socket(flow.reply_src);
        if let Some(slot) = self.frontends.addrs.get(&dst) {
            return self.judge(slot, dst, reply, Frontend::Addr(dst.socket()), now);
        }
        let host_ports = &self.frontends.host_ports;
        if !host_ports.is_empty()
            && let Some(slot) = host_ports.get(&dst)
        {
            return self.judge(slot, dst, reply, Frontend::HostPort(dst.socket()), now);
        }
        let any_host = if host_ports.is_empty() {
            None
        } else {
            host_ports.get(&Key::new(unspecified_like(dst.ip), dst.port))
        };
        let node_port = self.frontends.node_ports.get(&dst.port);
        if (any_host.is_some() || node_port.is_some()) && self.this_node.contains(&dst.ip) {
            if let Some(slot) = any_host {
                return self.judge(slot, dst, reply, Frontend::HostPort(dst.socket()), now);
            }
            if let Some(slot) = node_port {
                return self.judge(slot, dst, reply, Frontend::NodePort(dst.port), now);
            }
        }
        Verdict::Unrelated
    }

    #[inline]
    fn judge(
        &self,
        slot: &Slot,
        dst: Key,
        reply: Key,
        frontend: Frontend,
        now: Instant,
    ) -> Verdict<'_> {
        if let Some(&first) = slot.live.first() {
            // Several live owners only happen transiently (or by misconfiguration): the flow is
            // kept if any of them allows it, and a stale verdict names the first one.
            for &id in &slot.live {
                let Some(group) = self.groups.get(id) else {
                    return Verdict::Keep;
                };
                if group.skip || !self.kind_complete(group.kind) || group.allows(reply) {
                    return Verdict::Keep;
                }
            }
            let Some(group) = self.groups.get(first) else {
                return Verdict::Keep;
            };
            return Verdict::Stale(Stale {
                service: group.name(),
                port: &group.port_name,
                frontend,
                reason: group.reason(dst, reply),
            });
        }
        let Some(group) = slot.tomb.and_then(|id| self.groups.get(id)) else {
            return Verdict::Unrelated;
        };
        if group.expires.is_none_or(|at| now >= at) {
            return Verdict::Unrelated;
        }
        if !self.kind_complete(group.kind) {
            return Verdict::Keep;
        }
        let reason = match group.kind {
            GroupKind::ServicePort => Reason::ServiceDeleted,
            GroupKind::HostPort => Reason::HostPortPodGone,
        };
        Verdict::Stale(Stale {
            service: group.name(),
            port: &group.port_name,
            frontend,
            reason,
        })
    }
}
