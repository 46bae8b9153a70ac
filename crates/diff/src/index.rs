//! The incremental index: Kubernetes objects in, classification tables maintained.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::addr::{Key, NodePortAddresses, unspecified_like};
use crate::dirty::Dirty;
use crate::gate::Knowledge;
#[cfg(doc)]
use crate::kinds::IndexedKind;
use crate::parse::{self, ObjKey, ParsedService, PodSpec, ServiceSpec, SliceSpec};
use crate::report::{Report, SkipReason};
use crate::tables::{
    Backend, Backends, FrontendKey, Frontends, Group, GroupId, GroupKind, Groups, NodePortKey,
};
use crate::verdict::Frontend;

/// Default time after which a kind whose watch has not answered counts as stale.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(90);

/// Default time a deleted service's (or pod's) frontends stay judged as stale.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(5 * 60);

/// Settings of an [`Index`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// How long a deleted service's frontends are remembered (default 5 minutes).
    pub tombstone_ttl: Duration,
    /// This node's name: only its Node object and the Pods scheduled on it are used.
    pub node_name: String,
    /// Which node addresses accept NodePorts: set it to kube-proxy's `--nodeport-addresses`
    /// (default: every node address, kube-proxy's default).
    pub nodeport_addresses: NodePortAddresses,
}

impl IndexConfig {
    /// A configuration for `node_name` with the default tombstone TTL.
    pub fn new(node_name: impl Into<String>) -> Self {
        IndexConfig {
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            node_name: node_name.into(),
            nodeport_addresses: NodePortAddresses::All,
        }
    }
}

/// Sizes of the index, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Services with at least one judged frontend or opted out (ignored kinds not counted).
    pub services: usize,
    /// Live UDP service ports.
    pub service_ports: usize,
    /// Distinct frontends (addresses, NodePorts, host ports), live or tombstoned.
    pub frontends: usize,
    /// Endpoints across all stored EndpointSlices (UDP-relevant or not).
    pub endpoints: usize,
    /// Stored EndpointSlices.
    pub endpoint_slices: usize,
    /// Tombstoned groups (service ports / host ports of deleted objects) not yet expired.
    pub tombstones: usize,
    /// Live UDP host ports of pods on this node.
    pub host_ports: usize,
    /// Addresses counted as this node's (Node status plus local interfaces).
    pub node_addresses: usize,
}

/// Which kinds have completed a full list (a finished relist): verdicts other than `Keep`/`Unrelated`
/// are only given on complete state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Listed {
    services: bool,
    slices: bool,
    pods: bool,
}

#[derive(Debug)]
struct ServiceEntry {
    spec: ServiceSpec,
    owner: Arc<ObjKey>,
    groups: Vec<GroupId>,
}

#[derive(Debug)]
struct PodEntry {
    spec: PodSpec,
    groups: Vec<GroupId>,
}

/// Kubernetes state reduced to what classification needs, updated incrementally.
///
/// See the crate documentation for the semantics.
#[derive(Debug)]
pub struct Index {
    cfg: IndexConfig,
    services: FxHashMap<ObjKey, ServiceEntry>,
    slices: FxHashMap<ObjKey, SliceSpec>,
    /// Service key → keys of the slices labelled with it (kept even while the service is
    /// unknown: a slice may arrive first).
    slices_of: FxHashMap<ObjKey, Vec<ObjKey>>,
    pods: FxHashMap<ObjKey, PodEntry>,
    node_addrs: Vec<IpAddr>,
    /// The Node object's primary IPs; `None` until this node's Node object is known.
    node_primary: Option<Vec<IpAddr>>,
    local_addrs: Vec<IpAddr>,
    pub(crate) this_node: FxHashSet<IpAddr>,
    /// The node addresses that accept NodePorts; `None`: all of `this_node`.
    pub(crate) nodeport_addrs: Option<FxHashSet<IpAddr>>,
    pub(crate) groups: Groups,
    tombstones: Vec<GroupId>,
    pub(crate) frontends: Frontends,
    dirty: FxHashSet<Frontend>,
    dirty_all: bool,
    listed: Listed,
    /// How current this state is, kept by the caller beside the objects so that one lock
    /// gives a consistent pair (see [`Knowledge`]).
    knowledge: Knowledge,
}

impl Index {
    /// An empty index. Until Services and EndpointSlices (and for host ports Pods) have been
    /// fully listed once ([`Index::reset`], or a relist ended by [`Index::finish_relist`]),
    /// flows to known frontends are kept, never stale: a half-listed cache must not delete.
    pub fn new(cfg: IndexConfig) -> Self {
        Index {
            cfg,
            services: FxHashMap::default(),
            slices: FxHashMap::default(),
            slices_of: FxHashMap::default(),
            pods: FxHashMap::default(),
            node_addrs: Vec::new(),
            node_primary: None,
            local_addrs: Vec::new(),
            this_node: FxHashSet::default(),
            nodeport_addrs: None,
            groups: Groups::default(),
            tombstones: Vec::new(),
            frontends: Frontends::default(),
            dirty: FxHashSet::default(),
            dirty_all: false,
            listed: Listed::default(),
            knowledge: Knowledge::new(DEFAULT_STALE_AFTER),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IndexConfig {
        &self.cfg
    }

    /// How current the state is. The caller updates it as it applies watch updates, so that
    /// whoever reads the index under a lock reads the matching freshness.
    pub fn knowledge(&self) -> &Knowledge {
        &self.knowledge
    }

    /// How current the state is, for the caller to update.
    pub fn knowledge_mut(&mut self) -> &mut Knowledge {
        &mut self.knowledge
    }

    /// True once services and endpoint slices have been fully listed.
    pub fn services_complete(&self) -> bool {
        self.listed.services && self.listed.slices
    }

    /// True once pods have been fully listed.
    pub fn pods_complete(&self) -> bool {
        self.listed.pods
    }

    #[inline]
    pub(crate) fn kind_complete(&self, kind: GroupKind) -> bool {
        match kind {
            GroupKind::ServicePort => self.listed.services && self.listed.slices,
            GroupKind::HostPort => self.listed.pods,
        }
    }

    /// Records that a relist of one kind finished. The kind's first listing makes the whole
    /// index dirty: until then every flow its groups decide was kept whatever it was. A later
    /// relist does not: each object it added, changed or removed marked its own frontends
    /// dirty as it was applied, exactly like a watch event, and one that changed nothing
    /// must not cost a walk of the whole table (with its follow-ups, four).
    fn mark_listed(&mut self, kind: impl FnOnce(&mut Listed) -> &mut bool) {
        let listed = kind(&mut self.listed);
        if !*listed {
            *listed = true;
            self.dirty_all = true;
        }
    }

    // ---- services ----

    /// Adds or updates a Service (see [`IndexedKind::apply`]); with `seen`, records it as
    /// listed by a relist in progress, from the same parse.
    pub(crate) fn apply_service_listed(
        &mut self,
        svc: &Service,
        seen: Option<&mut FxHashSet<ObjKey>>,
    ) -> Report {
        let mut report = Report::default();
        let Some((key, parsed)) = parse::parse_service(svc, &mut report) else {
            return report;
        };
        if let Some(seen) = seen {
            seen.insert(key.clone());
        }
        match parsed {
            ParsedService::Ignored(why) => {
                report.skip(
                    &format_args!("Service {}/{}", key.namespace, key.name),
                    SkipReason::Ignored(why),
                );
                self.remove_service(&key, None);
            }
            ParsedService::Handled(spec) => self.upsert_service(key, spec),
        }
        report
    }

    /// Removes a Service (see [`IndexedKind::delete`]).
    pub(crate) fn delete_service_obj(&mut self, svc: &Service, now: Instant) -> Report {
        let mut report = Report::default();
        match parse::parse_service(svc, &mut Report::default()) {
            Some((key, ParsedService::Ignored(_))) => self.remove_service(&key, None),
            Some((key, ParsedService::Handled(_))) => self.remove_service(&key, Some(now)),
            None => report.skip(&"Service", SkipReason::NoName),
        }
        report
    }

    /// Ends a relist of Services: those not listed are deleted (tombstoned) and the kind counts
    /// as listed (see [`Index::mark_listed`] for what becomes dirty).
    pub(crate) fn finish_services(&mut self, seen: &FxHashSet<ObjKey>, now: Instant) {
        let gone: Vec<ObjKey> = self
            .services
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove_service(&key, Some(now));
        }
        self.mark_listed(|listed| &mut listed.services);
    }

    fn upsert_service(&mut self, key: ObjKey, spec: ServiceSpec) {
        if self.services.get(&key).is_some_and(|e| e.spec == spec) {
            return;
        }
        let owner = match self.services.get(&key) {
            Some(entry) => entry.owner.clone(),
            None => Arc::new(key.clone()),
        };
        self.remove_service(&key, None);
        let mut groups = Vec::with_capacity(spec.ports.len());
        for port in &spec.ports {
            let mut fks: Vec<FrontendKey> = spec
                .ips
                .iter()
                .map(|ip| FrontendKey::Addr(Key::new(*ip, port.port)))
                .collect();
            // A NodePort on the node addresses of the Service's families only (its ips are
            // already those families' addresses).
            if let Some(node_port) = port.node_port {
                for v6 in [false, true] {
                    if spec.ips.iter().any(|ip| ip.is_ipv6() == v6) {
                        fks.push(FrontendKey::NodePort(NodePortKey {
                            v6,
                            port: node_port,
                        }));
                    }
                }
            }
            let mut group = Group {
                owner: owner.clone(),
                port_name: port.name.clone(),
                kind: GroupKind::ServicePort,
                skip: spec.skip,
                backends: Backends::default(),
                frontends: fks.into_boxed_slice(),
                expires: None,
            };
            // A new group: nothing departed from it.
            let _ = group.set_backends(self.backends_of(&key, &port.name));
            let id = self.groups.insert(group);
            self.register(id);
            groups.push(id);
        }
        self.services.insert(
            key,
            ServiceEntry {
                spec,
                owner,
                groups,
            },
        );
    }

    /// Removes a service's groups; with `now`, leaves tombstones (unless opted out).
    fn remove_service(&mut self, key: &ObjKey, now: Option<Instant>) {
        let Some(entry) = self.services.remove(key) else {
            return;
        };
        let tombstone_at = if entry.spec.skip { None } else { now };
        for id in entry.groups {
            self.retire(id, tombstone_at);
        }
    }

    /// Allowed and known backends of a service port, from every slice of the service.
    fn backends_of(&self, service: &ObjKey, port_name: &str) -> Vec<Backend> {
        let mut list = Vec::new();
        let Some(slice_keys) = self.slices_of.get(service) else {
            return list;
        };
        for slice in slice_keys.iter().filter_map(|k| self.slices.get(k)) {
            for (_, port) in slice.ports.iter().filter(|(name, _)| &**name == port_name) {
                list.extend(slice.endpoints.iter().map(|(ip, serving)| Backend {
                    key: Key::new(*ip, *port),
                    serving: *serving,
                }));
            }
        }
        list
    }

    /// Recomputes the backends of a service's ports after its slices changed; backends that
    /// stop being allowed are remembered as departed at `now`.
    fn refresh_backends(&mut self, service: &ObjKey, now: Instant) {
        let Some(entry) = self.services.get(service) else {
            return;
        };
        let ports: Vec<(GroupId, Box<str>)> = entry
            .groups
            .iter()
            .filter_map(|id| self.groups.get(*id).map(|g| (*id, g.port_name.clone())))
            .collect();
        for (id, port_name) in ports {
            let backends = self.backends_of(service, &port_name);
            let Some(group) = self.groups.get_mut(id) else {
                continue;
            };
            if let Some(removed) = group.set_backends(backends) {
                let fks = group.frontends.clone();
                for fk in fks.iter().copied() {
                    self.frontends.record_gone(fk, &removed, now);
                    self.frontends.refresh_hot(fk, &self.groups);
                    self.dirty.insert(fk.public());
                }
            }
        }
    }

    // ---- endpoint slices ----

    /// Adds or updates an EndpointSlice (see [`IndexedKind::apply`]); with `seen`, records it
    /// as listed by a relist in progress, from the same parse.
    pub(crate) fn apply_slice_listed(
        &mut self,
        slice: &EndpointSlice,
        seen: Option<&mut FxHashSet<ObjKey>>,
        now: Instant,
    ) -> Report {
        let mut report = Report::default();
        let Some((key, spec)) = parse::parse_endpoint_slice(slice, &mut report) else {
            return report;
        };
        if let Some(seen) = seen {
            seen.insert(key.clone());
        }
        if let Some(service) = self.put_slice(key, spec) {
            for key in service {
                self.refresh_backends(&key, now);
            }
        }
        report
    }

    /// Removes an EndpointSlice (see [`IndexedKind::delete`]).
    pub(crate) fn delete_slice_obj(&mut self, slice: &EndpointSlice, now: Instant) -> Report {
        let mut report = Report::default();
        match parse::parse_endpoint_slice(slice, &mut Report::default()) {
            Some((key, _)) => {
                if let Some(service) = self.drop_slice(&key) {
                    self.refresh_backends(&service, now);
                }
            }
            None => report.skip(&"EndpointSlice", SkipReason::NoName),
        }
        report
    }

    /// Ends a relist of EndpointSlices: those not listed are removed and the kind counts as
    /// listed (see [`Index::mark_listed`]).
    pub(crate) fn finish_slices(&mut self, seen: &FxHashSet<ObjKey>, now: Instant) {
        let gone: Vec<ObjKey> = self
            .slices
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        let mut touched = BTreeSet::new();
        for key in gone {
            touched.extend(self.drop_slice(&key));
        }
        for service in touched {
            self.refresh_backends(&service, now);
        }
        self.mark_listed(|listed| &mut listed.slices);
    }

    /// Stores a slice; returns the services whose backends must be recomputed.
    fn put_slice(&mut self, key: ObjKey, spec: Option<SliceSpec>) -> Option<Vec<ObjKey>> {
        let Some(spec) = spec else {
            return self.drop_slice(&key).map(|s| vec![s]);
        };
        if self.slices.get(&key) == Some(&spec) {
            return None;
        }
        let mut touched = vec![spec.service.clone()];
        if let Some(old) = self.drop_slice(&key)
            && old != spec.service
        {
            touched.push(old);
        }
        // drop_slice above removed any previous entry of this key.
        self.slices_of
            .entry(spec.service.clone())
            .or_default()
            .push(key.clone());
        self.slices.insert(key, spec);
        Some(touched)
    }

    /// Forgets a slice; returns its service.
    fn drop_slice(&mut self, key: &ObjKey) -> Option<ObjKey> {
        let old = self.slices.remove(key)?;
        if let Some(set) = self.slices_of.get_mut(&old.service) {
            set.retain(|k| k != key);
            if set.is_empty() {
                self.slices_of.remove(&old.service);
            }
        }
        Some(old.service)
    }

    // ---- pods ----

    /// Adds or updates a Pod (see [`IndexedKind::apply`]); with `seen`, records it as listed
    /// by a relist in progress, from the same parse. Only pods of this node with UDP
    /// hostPorts, a pod IP and no host network matter; a pod that stops mattering (finished,
    /// …) leaves tombstones.
    pub(crate) fn apply_pod_listed(
        &mut self,
        pod: &Pod,
        seen: Option<&mut FxHashSet<ObjKey>>,
        now: Instant,
    ) -> Report {
        let mut report = Report::default();
        let Some((key, spec)) = parse::parse_pod(pod, &self.cfg.node_name, &mut report) else {
            return report;
        };
        if let Some(seen) = seen {
            seen.insert(key.clone());
        }
        match spec {
            None => self.remove_pod(&key, Some(now)),
            Some(spec) => self.upsert_pod(key, spec, now),
        }
        report
    }

    /// Removes a Pod (see [`IndexedKind::delete`]); its host ports become tombstones.
    pub(crate) fn delete_pod_obj(&mut self, pod: &Pod, now: Instant) -> Report {
        let mut report = Report::default();
        match parse::parse_pod(pod, &self.cfg.node_name, &mut Report::default()) {
            Some((key, _)) => self.remove_pod(&key, Some(now)),
            None => report.skip(&"Pod", SkipReason::NoName),
        }
        report
    }

    /// Ends a relist of Pods: those not listed are removed (host-port tombstones) and the kind
    /// counts as listed (see [`Index::mark_listed`]).
    pub(crate) fn finish_pods(&mut self, seen: &FxHashSet<ObjKey>, now: Instant) {
        let gone: Vec<ObjKey> = self
            .pods
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove_pod(&key, Some(now));
        }
        self.mark_listed(|listed| &mut listed.pods);
    }

    fn upsert_pod(&mut self, key: ObjKey, spec: PodSpec, now: Instant) {
        if self.pods.get(&key).is_some_and(|e| e.spec == spec) {
            return;
        }
        // A changed pod (same name, new sandbox) is a replacement: the old mapping is gone.
        self.remove_pod(&key, Some(now));
        let owner = Arc::new(key.clone());
        let mut groups = Vec::with_capacity(spec.ports.len());
        for hp in &spec.ports {
            let fks: Vec<FrontendKey> = match hp.host_ip {
                Some(ip) => vec![FrontendKey::HostPort(Key::new(ip, hp.host_port))],
                None => {
                    let mut families: Vec<IpAddr> =
                        spec.ips.iter().map(|ip| unspecified_like(*ip)).collect();
                    families.dedup();
                    families
                        .into_iter()
                        .map(|ip| FrontendKey::HostPort(Key::new(ip, hp.host_port)))
                        .collect()
                }
            };
            let mut group = Group {
                owner: owner.clone(),
                port_name: hp.name.clone(),
                kind: GroupKind::HostPort,
                skip: false,
                backends: Backends::default(),
                frontends: fks.into_boxed_slice(),
                expires: None,
            };
            let _ = group.set_backends(
                spec.ips
                    .iter()
                    .map(|ip| Backend {
                        key: Key::new(*ip, hp.container_port),
                        serving: true,
                    })
                    .collect(),
            );
            let id = self.groups.insert(group);
            self.register(id);
            groups.push(id);
        }
        self.pods.insert(key, PodEntry { spec, groups });
    }

    fn remove_pod(&mut self, key: &ObjKey, now: Option<Instant>) {
        let Some(entry) = self.pods.remove(key) else {
            return;
        };
        for id in entry.groups {
            self.retire(id, now);
        }
    }

    // ---- node ----

    /// Sets this node's addresses from its Node object (InternalIP and ExternalIP). A Node
    /// with another name is skipped.
    pub(crate) fn apply_node_obj(&mut self, node: &Node) -> Report {
        let mut report = Report::default();
        if let Some(addrs) = parse::parse_node(node, &self.cfg.node_name, &mut report) {
            self.node_addrs = addrs.all;
            self.node_primary = Some(addrs.primary);
            self.refresh_this_node();
        }
        report
    }

    /// Sets the addresses found on this node's interfaces (by the caller). They count as this
    /// node's for NodePorts and any-address host ports, together with the Node's addresses.
    pub fn set_local_addrs(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        let mut list: Vec<IpAddr> = addrs.into_iter().map(|ip| ip.to_canonical()).collect();
        list.sort_unstable();
        list.dedup();
        self.local_addrs = list;
        self.refresh_this_node();
    }

    fn refresh_this_node(&mut self) {
        // kube-proxy never serves NodePorts on `::1` (its rules exclude it in every mode).
        let new: FxHashSet<IpAddr> = self
            .node_addrs
            .iter()
            .chain(&self.local_addrs)
            .copied()
            .filter(|ip| *ip != IpAddr::V6(std::net::Ipv6Addr::LOCALHOST))
            .collect();
        let nodeport = match &self.cfg.nodeport_addresses {
            NodePortAddresses::All => None,
            only => Some(
                new.iter()
                    .copied()
                    .filter(|ip| only.admits(*ip, self.node_primary.as_deref()))
                    .collect(),
            ),
        };
        if new != self.this_node || nodeport != self.nodeport_addrs {
            self.this_node = new;
            self.nodeport_addrs = nodeport;
            // Node addresses decide only the frontends served on every node address: NodePorts
            // and host ports without a host IP. Those are dirty, not the whole index (a pod's
            // new interface, a link-local address, would otherwise cost a walk of the table
            // and its follow-ups).
            let node_ports = self
                .frontends
                .node_ports
                .keys()
                .map(|k| Frontend::NodePort(k.port));
            let any_host = self
                .frontends
                .host_ports
                .keys()
                .filter(|k| k.ip.is_unspecified())
                .map(|k| Frontend::HostPort(k.socket()));
            self.dirty.extend(node_ports.chain(any_host));
        }
    }

    // ---- groups and tombstones ----

    fn register(&mut self, id: GroupId) {
        let Some(group) = self.groups.get(id) else {
            return;
        };
        for fk in group.frontends.iter().copied() {
            self.frontends.claim(&self.groups, fk, id);
            self.dirty.insert(fk.public());
        }
    }

    /// Takes a group out of service: removed, or with `now` turned into a tombstone.
    fn retire(&mut self, id: GroupId, now: Option<Instant>) {
        let Some(group) = self.groups.get(id) else {
            return;
        };
        let fks = group.frontends.clone();
        let tombstone = now.is_some();
        // A deleted (or replaced) owner's backends have positively left its frontends.
        let departed: Vec<Key> = match now {
            Some(_) => group.backends.allowed_keys().collect(),
            None => Vec::new(),
        };
        for fk in fks.iter().copied() {
            if let Some(now) = now {
                self.frontends.record_gone(fk, &departed, now);
            }
            self.frontends.release(&self.groups, fk, id, tombstone);
            self.dirty.insert(fk.public());
        }
        let Some(group) = self.groups.get_mut(id) else {
            return;
        };
        match now {
            Some(now) => {
                // An absurd TTL must not panic: the tombstone then lapses at once (the safe
                // direction: fewer flows judged stale).
                group.expires = Some(now.checked_add(self.cfg.tombstone_ttl).unwrap_or(now));
                group.backends = Backends::default();
                self.tombstones.push(id);
            }
            None => {
                self.groups.remove(id);
            }
        }
    }

    /// Forgets tombstones whose TTL has passed; returns how many. (Classification already
    /// ignores expired tombstones; this frees their memory.)
    pub fn expire_tombstones(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        let mut kept = Vec::with_capacity(self.tombstones.len());
        for id in std::mem::take(&mut self.tombstones) {
            let Some(group) = self.groups.get(id) else {
                continue;
            };
            if group.expires.is_some_and(|at| at > now) {
                kept.push(id);
                continue;
            }
            for fk in group.frontends.iter().copied() {
                self.frontends.release(&self.groups, fk, id, false);
            }
            self.groups.remove(id);
            expired += 1;
        }
        self.tombstones = kept;
        if let Some(before) = now.checked_sub(self.cfg.tombstone_ttl) {
            self.frontends.expire_gone(before);
        }
        expired
    }

    // ---- outputs ----

    /// The frontends touched since the last call (or "all" after a reset or a change of the
    /// node's addresses), and clears them.
    pub fn take_dirty(&mut self) -> Dirty {
        let all = std::mem::take(&mut self.dirty_all);
        let set = std::mem::take(&mut self.dirty);
        let mut frontends: Vec<Frontend> = if all {
            Vec::new()
        } else {
            set.into_iter().collect()
        };
        frontends.sort_unstable();
        Dirty { all, frontends }
    }

    /// Sizes, for metrics.
    pub fn stats(&self) -> IndexStats {
        let mut stats = IndexStats {
            services: self.services.len(),
            frontends: self.frontends.len(),
            endpoints: self.slices.values().map(|s| s.endpoints.len()).sum(),
            endpoint_slices: self.slices.len(),
            tombstones: self.tombstones.len(),
            node_addresses: self.this_node.len(),
            ..IndexStats::default()
        };
        for group in self.groups.iter().filter(|g| g.expires.is_none()) {
            match group.kind {
                GroupKind::ServicePort => stats.service_ports += 1,
                GroupKind::HostPort => stats.host_ports += 1,
            }
        }
        stats
    }
}
