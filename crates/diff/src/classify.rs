//! The hot path: one flow → one verdict, O(1), no allocation.

use std::net::IpAddr;
use std::time::Instant;

use crate::addr::{Key, unspecified_like};
use crate::index::Index;
use crate::tables::{Group, GroupKind, NodePortKey, Slot, pack4};
use crate::verdict::{Evidence, FlowRef, Frontend, IPPROTO_UDP, Reason, Stale, Verdict};

impl Index {
    /// Judges one flow. `now` decides whether tombstones are still in force.
    ///
    /// Lookup order (the first frontend with a live owner decides): an address frontend
    /// (ClusterIP / ExternalIP / LoadBalancer IP with the port), a host port bound to that exact
    /// IP, and — only when the destination IP is one of this node's addresses — a host port on
    /// any node address, then a NodePort. Only when no live owner matches does the first
    /// unexpired tombstone among them decide. Anything else, and every non-UDP flow, is
    /// [`Verdict::Unrelated`].
    #[inline]
    pub fn classify(&self, flow: &FlowRef, now: Instant) -> Verdict<'_> {
        if flow.proto != IPPROTO_UDP {
            return Verdict::Unrelated;
        }
        let dst = Key::from_socket(flow.orig_dst);
        let reply = Key::from_socket(flow.reply_src);
        let mut tomb: Option<(&Group, Evidence, Frontend)> = None;
        let mut consider = |slot: &Slot, frontend: Frontend| -> Option<Verdict<'_>> {
            if slot.has_live() {
                return Some(self.judge_live(slot, dst, reply, frontend, now));
            }
            if tomb.is_none() {
                tomb = self
                    .tombstone(slot, now)
                    .map(|g| (g, self.tomb_evidence(slot, dst, reply, now), frontend));
            }
            None
        };
        let addr_slot = match dst.ip {
            IpAddr::V4(ip) => self.frontends.addrs4.get(&pack4(ip, dst.port)),
            IpAddr::V6(_) => self.frontends.addrs6.get(&dst),
        };
        if let Some(slot) = addr_slot
            && let Some(verdict) = consider(slot, Frontend::Addr(dst.socket()))
        {
            return verdict;
        }
        let host_ports = &self.frontends.host_ports;
        if !host_ports.is_empty()
            && let Some(slot) = host_ports.get(&dst)
            && let Some(verdict) = consider(slot, Frontend::HostPort(dst.socket()))
        {
            return verdict;
        }
        let any_host = if host_ports.is_empty() {
            None
        } else {
            host_ports.get(&Key::new(unspecified_like(dst.ip), dst.port))
        };
        // kube-proxy DNATs a NodePort only on the node addresses `--nodeport-addresses` admits.
        let node_port = self
            .frontends
            .node_ports
            .get(&NodePortKey::of(dst))
            .filter(|_| {
                self.nodeport_addrs
                    .as_ref()
                    .is_none_or(|admitted| admitted.contains(&dst.ip))
            });
        // On 127.0.0.0/8 kube-proxy DNATs NodePorts in iptables mode (with its default
        // `--iptables-localhost-nodeports`) but not in nftables mode, and a hostPort there
        // depends on the CNI: only a flow that was DNATed is known to be service traffic.
        let undnated_loopback = dst.ip.is_loopback() && reply == dst;
        if (any_host.is_some() || node_port.is_some())
            && self.this_node.contains(&dst.ip)
            && !undnated_loopback
        {
            if let Some(slot) = any_host
                && let Some(verdict) = consider(slot, Frontend::HostPort(dst.socket()))
            {
                return verdict;
            }
            if let Some(slot) = node_port
                && let Some(verdict) = consider(slot, Frontend::NodePort(dst.port))
            {
                return verdict;
            }
        }
        match tomb {
            Some((group, evidence, frontend)) => self.judge_tomb(group, frontend, evidence),
            None => Verdict::Unrelated,
        }
    }

    /// Verdict for a frontend with live owners.
    #[inline]
    fn judge_live(
        &self,
        slot: &Slot,
        dst: Key,
        reply: Key,
        frontend: Frontend,
        now: Instant,
    ) -> Verdict<'_> {
        if slot.hot_allows(reply) {
            return Verdict::Keep;
        }
        // Several live owners only happen transiently (or by misconfiguration): the flow is
        // kept if any of them allows it, and a stale verdict names the first one.
        for id in slot.live() {
            let Some(group) = self.groups.get(id) else {
                return Verdict::Keep;
            };
            if group.skip || !self.kind_complete(group.kind) || group.allows(reply) {
                return Verdict::Keep;
            }
        }
        let Some(group) = slot.first().and_then(|id| self.groups.get(id)) else {
            return Verdict::Keep;
        };
        let reason = group.reason(dst, reply);
        let evidence = if reason == Reason::NotDnated {
            // Never DNATed: stale for sure once kube-proxy has serving backends to DNAT to, and
            // the agent knows of some. Without any, the agent may be the one behind.
            if slot.live().any(|id| {
                self.groups
                    .get(id)
                    .is_some_and(|g| g.backends.serving() > 0)
            }) {
                Evidence::Removed
            } else {
                Evidence::Unseen
            }
        } else {
            self.departed(slot, reply, now)
        };
        Verdict::Stale(Stale {
            service: group.name(),
            port: &group.port_name,
            frontend,
            reason,
            evidence,
        })
    }

    /// [`Evidence::Removed`] if the index saw `reply` leave this frontend within the tombstone
    /// TTL, else [`Evidence::Unseen`].
    #[inline]
    fn departed(&self, slot: &Slot, reply: Key, now: Instant) -> Evidence {
        match slot.gone_at(reply) {
            Some(at) if now.saturating_duration_since(at) < self.config().tombstone_ttl => {
                Evidence::Removed
            }
            _ => Evidence::Unseen,
        }
    }

    /// The slot's tombstone, if it is still in force at `now`.
    #[inline]
    fn tombstone(&self, slot: &Slot, now: Instant) -> Option<&Group> {
        let group = self.groups.get(slot.tomb()?)?;
        group.expires.is_some_and(|at| now < at).then_some(group)
    }

    /// Evidence for a flow to a tombstoned frontend. A DNATed flow whose backend the agent never
    /// saw there may belong to a new owner of the address the agent has not heard of yet.
    #[inline]
    fn tomb_evidence(&self, slot: &Slot, dst: Key, reply: Key, now: Instant) -> Evidence {
        if reply == dst {
            Evidence::Removed
        } else {
            self.departed(slot, reply, now)
        }
    }

    fn judge_tomb<'a>(
        &'a self,
        group: &'a Group,
        frontend: Frontend,
        evidence: Evidence,
    ) -> Verdict<'a> {
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
            evidence,
        })
    }
}
