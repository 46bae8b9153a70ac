//! The classification tables: groups (an owner's allowed backends) and the frontend slots
//! that point at them.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::addr::Key;
use crate::parse::ObjKey;
use crate::verdict::{Frontend, Reason, ServiceName};

/// Index of a group in [`Groups`].
pub(crate) type GroupId = u32;

/// Which kind of object owns a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GroupKind {
    /// A UDP port of a Service.
    ServicePort,
    /// A UDP hostPort of a Pod.
    HostPort,
}

/// An allowed (or known but not serving) backend, as collected from slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    pub(crate) key: Key,
    pub(crate) serving: bool,
}

/// Packs an IPv4 `(ip, port)` into the key of the IPv4 tables: `ip << 16 | port`.
#[inline]
pub(crate) fn pack4(ip: Ipv4Addr, port: u16) -> u64 {
    (u64::from(ip.to_bits()) << 16) | u64::from(port)
}

/// The backends of a group, laid out for the hot path: IPv4 backends packed into one `u64`
/// each (`ip << 17 | port << 1 | serving`, sorted), IPv6 backends as sorted [`Backend`]s. Ten
/// IPv4 backends fit in 80 bytes (two cache lines).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Backends {
    /// Shared with the [`Slot`]s this group is the first owner of (their Keep fast path).
    v4: Arc<[u64]>,
    v6: Box<[Backend]>,
    serving: u32,
}

/// Below this many entries a linear scan beats a binary search.
const LINEAR_SCAN: usize = 16;

impl Backends {
    /// From an unsorted list that may repeat keys (serving if any repeat serves).
    pub(crate) fn from_list(list: Vec<Backend>) -> Self {
        let mut v4: Vec<u64> = Vec::new();
        let mut v6: Vec<Backend> = Vec::new();
        for b in list {
            match b.key.ip {
                IpAddr::V4(ip) => v4.push((pack4(ip, b.key.port) << 1) | u64::from(b.serving)),
                IpAddr::V6(_) => v6.push(b),
            }
        }
        v4.sort_unstable();
        // Sorted, so a repeated key is adjacent with the serving copy last.
        v4.dedup_by(|later, kept| {
            if *later >> 1 == *kept >> 1 {
                *kept |= *later & 1;
                true
            } else {
                false
            }
        });
        v6.sort_unstable_by_key(|b| b.key);
        v6.dedup_by(|later, kept| {
            if later.key == kept.key {
                kept.serving |= later.serving;
                true
            } else {
                false
            }
        });
        let serving =
            v4.iter().filter(|v| *v & 1 == 1).count() + v6.iter().filter(|b| b.serving).count();
        Backends {
            v4: v4.into(),
            v6: v6.into_boxed_slice(),
            serving: serving as u32,
        }
    }

    /// The packed IPv4 backends, for a [`Slot`]'s fast path.
    pub(crate) fn v4(&self) -> &Arc<[u64]> {
        &self.v4
    }

    /// Number of serving backends.
    pub(crate) fn serving(&self) -> u32 {
        self.serving
    }

    /// `Some(serving)` if `key` is a known backend.
    #[inline]
    fn lookup(&self, key: Key) -> Option<bool> {
        match key.ip {
            IpAddr::V4(ip) => {
                let want = pack4(ip, key.port);
                let found = if self.v4.len() <= LINEAR_SCAN {
                    self.v4.iter().find(|v| **v >> 1 == want).copied()
                } else {
                    self.v4
                        .binary_search_by(|v| (*v >> 1).cmp(&want))
                        .ok()
                        .map(|i| self.v4[i])
                };
                found.map(|v| v & 1 == 1)
            }
            IpAddr::V6(_) => self
                .v6
                .binary_search_by(|b| b.key.cmp(&key))
                .ok()
                .map(|i| self.v6[i].serving),
        }
    }

    /// True if `key` is a serving backend.
    #[inline]
    pub(crate) fn allows(&self, key: Key) -> bool {
        self.lookup(key) == Some(true)
    }

    /// Every allowed (serving) backend.
    pub(crate) fn allowed_keys(&self) -> impl Iterator<Item = Key> + '_ {
        let v4 = self.v4.iter().filter(|v| *v & 1 == 1).map(|v| {
            let packed = *v >> 1;
            Key::new(
                IpAddr::V4(Ipv4Addr::from_bits((packed >> 16) as u32)),
                packed as u16,
            )
        });
        v4.chain(self.v6.iter().filter(|b| b.serving).map(|b| b.key))
    }

    /// True if `key` is a backend that is not serving.
    fn not_serving(&self, key: Key) -> bool {
        self.lookup(key) == Some(false)
    }

    /// True if `ip` serves on some port.
    fn serves_ip(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(ip) => {
                let ip = u64::from(ip.to_bits());
                self.v4.iter().any(|v| *v >> 17 == ip && *v & 1 == 1)
            }
            IpAddr::V6(_) => self.v6.iter().any(|b| b.key.ip == ip && b.serving),
        }
    }
}

/// Where a group is registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FrontendKey {
    Addr(Key),
    /// A NodePort of one IP family: kube-proxy's per-family proxiers DNAT a single-stack
    /// Service's NodePort on that family's node addresses only.
    NodePort(NodePortKey),
    /// Unspecified IP: every node address of that family.
    HostPort(Key),
}

/// A NodePort of one IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct NodePortKey {
    pub(crate) v6: bool,
    pub(crate) port: u16,
}

impl NodePortKey {
    /// The NodePort a flow to `dst` would have reached.
    pub(crate) fn of(dst: Key) -> Self {
        NodePortKey {
            v6: dst.ip.is_ipv6(),
            port: dst.port,
        }
    }
}

impl FrontendKey {
    pub(crate) fn public(self) -> Frontend {
        match self {
            FrontendKey::Addr(key) => Frontend::Addr(key.socket()),
            FrontendKey::NodePort(key) => Frontend::NodePort(key.port),
            FrontendKey::HostPort(key) => Frontend::HostPort(key.socket()),
        }
    }
}

/// One service port or one pod host port: the frontends it owns and the backends allowed
/// behind them. A tombstone is a group whose owner is gone (`expires` set, no backends).
///
/// `repr(C)` with the fields `classify` reads on every flow first, so that they share one
/// cache line.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Group {
    pub(crate) backends: Backends,
    pub(crate) kind: GroupKind,
    /// Opted out: every flow to its frontends is kept.
    pub(crate) skip: bool,
    pub(crate) owner: Arc<ObjKey>,
    pub(crate) port_name: Box<str>,
    pub(crate) frontends: Box<[FrontendKey]>,
    pub(crate) expires: Option<Instant>,
}

impl Group {
    pub(crate) fn name(&self) -> ServiceName<'_> {
        ServiceName {
            namespace: &self.owner.namespace,
            name: &self.owner.name,
        }
    }

    /// Sets the backends from an unsorted list that may repeat keys. `None` if nothing
    /// changed, else the backends that were allowed before and are not any more.
    pub(crate) fn set_backends(&mut self, list: Vec<Backend>) -> Option<Vec<Key>> {
        let backends = Backends::from_list(list);
        if backends == self.backends {
            return None;
        }
        let removed = self
            .backends
            .allowed_keys()
            .filter(|key| !backends.allows(*key))
            .collect();
        self.backends = backends;
        Some(removed)
    }

    #[inline]
    pub(crate) fn allows(&self, reply: Key) -> bool {
        self.backends.allows(reply)
    }

    /// Why a flow to `dst` answered by `reply` is stale, given that no owner allows it.
    /// The precedence is documented on [`Reason`].
    pub(crate) fn reason(&self, dst: Key, reply: Key) -> Reason {
        if reply == dst {
            return Reason::NotDnated;
        }
        if self.kind == GroupKind::ServicePort && self.backends.serving() == 0 {
            return Reason::NoEndpoints;
        }
        if self.backends.not_serving(reply) {
            return Reason::EndpointNotServing;
        }
        if self.backends.serves_ip(reply.ip) {
            return Reason::PortChanged;
        }
        match self.kind {
            GroupKind::ServicePort => Reason::EndpointGone,
            GroupKind::HostPort => Reason::HostPortPodGone,
        }
    }
}

/// Slab of groups with reusable ids.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    slots: Vec<Option<Group>>,
    free: Vec<GroupId>,
}

impl Groups {
    pub(crate) fn insert(&mut self, group: Group) -> GroupId {
        match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(group);
                id
            }
            None => {
                self.slots.push(Some(group));
                (self.slots.len() - 1) as GroupId
            }
        }
    }

    pub(crate) fn remove(&mut self, id: GroupId) -> Option<Group> {
        let group = self.slots.get_mut(id as usize)?.take();
        if group.is_some() {
            self.free.push(id);
        }
        group
    }

    #[inline]
    pub(crate) fn get(&self, id: GroupId) -> Option<&Group> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, id: GroupId) -> Option<&mut Group> {
        self.slots.get_mut(id as usize).and_then(Option::as_mut)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Group> {
        self.slots.iter().flatten()
    }

    /// Order of live owners in a slot: the first is the one stale verdicts name.
    fn order_key(&self, id: GroupId) -> Option<(&str, &str, &str, GroupId)> {
        self.get(id)
            .map(|g| (&*g.owner.namespace, &*g.owner.name, &*g.port_name, id))
    }
}

/// No group (sentinel of [`Slot`]'s id fields, which keeps a slot at 16 bytes).
const NONE: GroupId = GroupId::MAX;

/// What a frontend resolves to: its live owners (normally one), else a tombstone.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The first live owner (by namespace, name, port name), or `NONE`.
    first: GroupId,
    /// The tombstone, or `NONE`.
    tomb: GroupId,
    /// Further live owners, in order (rare: conflicting services, transient states).
    #[allow(clippy::box_collection)] // a thin pointer keeps the common slot small
    rest: Option<Box<Vec<GroupId>>>,
    /// The first live owner's packed IPv4 backends: lets `classify` answer Keep without
    /// visiting the group (one memory hop less). Kept equal to the first owner's by
    /// [`Frontends::refresh_hot`]; it only ever proves Keep, which any allowing owner does.
    hot: Option<Arc<[u64]>>,
    /// Backends that were allowed behind this frontend and that the index saw stop being
    /// allowed (removed, not serving, re-ported, their owner deleted or replaced), with when.
    /// A flow still answered by one of them is stale on positive evidence; any other
    /// disallowed backend may merely be one the agent has not heard of yet.
    #[allow(clippy::box_collection)] // most slots never lose a backend: keep them small
    gone: Option<Box<FxHashMap<Key, Instant>>>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            first: NONE,
            tomb: NONE,
            rest: None,
            hot: None,
            gone: None,
        }
    }
}

impl Slot {
    #[inline]
    pub(crate) fn has_live(&self) -> bool {
        self.first != NONE
    }

    /// The first live owner: the one stale verdicts name.
    #[inline]
    pub(crate) fn first(&self) -> Option<GroupId> {
        (self.first != NONE).then_some(self.first)
    }

    /// Every live owner, in order.
    #[inline]
    pub(crate) fn live(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.first()
            .into_iter()
            .chain(self.rest.iter().flat_map(|r| r.iter().copied()))
    }

    /// True when the first live owner surely allows `reply` (IPv4 serving backend).
    #[inline]
    pub(crate) fn hot_allows(&self, reply: Key) -> bool {
        let (Some(hot), IpAddr::V4(ip)) = (&self.hot, reply.ip) else {
            return false;
        };
        let want = (pack4(ip, reply.port) << 1) | 1;
        if hot.len() <= LINEAR_SCAN {
            hot.contains(&want)
        } else {
            hot.binary_search(&want).is_ok()
        }
    }

    #[inline]
    pub(crate) fn tomb(&self) -> Option<GroupId> {
        (self.tomb != NONE).then_some(self.tomb)
    }

    /// When the index saw `key` stop being an allowed backend here, if it did.
    #[inline]
    pub(crate) fn gone_at(&self, key: Key) -> Option<Instant> {
        self.gone.as_ref()?.get(&key).copied()
    }

    fn record_gone(&mut self, keys: &[Key], now: Instant) {
        if keys.is_empty() {
            return;
        }
        let gone = self.gone.get_or_insert_with(Box::default);
        for key in keys {
            gone.insert(*key, now);
        }
    }

    /// Forgets backends that left before `before`.
    fn expire_gone(&mut self, before: Instant) {
        if let Some(gone) = &mut self.gone {
            gone.retain(|_, at| *at >= before);
            if gone.is_empty() {
                self.gone = None;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.first == NONE && self.tomb == NONE && self.gone.is_none()
    }

    fn set_live(&mut self, mut ids: Vec<GroupId>) {
        if ids.is_empty() {
            self.first = NONE;
            self.rest = None;
            return;
        }
        self.first = ids.remove(0);
        self.rest = (!ids.is_empty()).then(|| Box::new(ids));
    }
}

/// The three frontend tables.
#[derive(Debug, Default)]
pub(crate) struct Frontends {
    /// IPv4 address frontends keyed by [`pack4`].
    pub(crate) addrs4: FxHashMap<u64, Slot>,
    pub(crate) addrs6: FxHashMap<Key, Slot>,
    pub(crate) node_ports: FxHashMap<NodePortKey, Slot>,
    pub(crate) host_ports: FxHashMap<Key, Slot>,
}

impl Frontends {
    fn entry(&mut self, fk: FrontendKey) -> &mut Slot {
        match fk {
            FrontendKey::Addr(Key {
                ip: IpAddr::V4(ip),
                port,
            }) => self.addrs4.entry(pack4(ip, port)).or_default(),
            FrontendKey::Addr(key) => self.addrs6.entry(key).or_default(),
            FrontendKey::NodePort(key) => self.node_ports.entry(key).or_default(),
            FrontendKey::HostPort(key) => self.host_ports.entry(key).or_default(),
        }
    }

    pub(crate) fn get(&self, fk: FrontendKey) -> Option<&Slot> {
        match fk {
            FrontendKey::Addr(Key {
                ip: IpAddr::V4(ip),
                port,
            }) => self.addrs4.get(&pack4(ip, port)),
            FrontendKey::Addr(key) => self.addrs6.get(&key),
            FrontendKey::NodePort(key) => self.node_ports.get(&key),
            FrontendKey::HostPort(key) => self.host_ports.get(&key),
        }
    }

    fn get_mut(&mut self, fk: FrontendKey) -> Option<&mut Slot> {
        match fk {
            FrontendKey::Addr(Key {
                ip: IpAddr::V4(ip),
                port,
            }) => self.addrs4.get_mut(&pack4(ip, port)),
            FrontendKey::Addr(key) => self.addrs6.get_mut(&key),
            FrontendKey::NodePort(key) => self.node_ports.get_mut(&key),
            FrontendKey::HostPort(key) => self.host_ports.get_mut(&key),
        }
    }

    fn remove(&mut self, fk: FrontendKey) {
        match fk {
            FrontendKey::Addr(Key {
                ip: IpAddr::V4(ip),
                port,
            }) => drop(self.addrs4.remove(&pack4(ip, port))),
            FrontendKey::Addr(key) => drop(self.addrs6.remove(&key)),
            FrontendKey::NodePort(key) => drop(self.node_ports.remove(&key)),
            FrontendKey::HostPort(key) => drop(self.host_ports.remove(&key)),
        }
    }

    /// Makes `id` a live owner of `fk`, replacing any tombstone there.
    pub(crate) fn claim(&mut self, groups: &Groups, fk: FrontendKey, id: GroupId) {
        let slot = self.entry(fk);
        slot.tomb = NONE;
        if slot.live().any(|other| other == id) {
            return;
        }
        let mut ids: Vec<GroupId> = slot.live().collect();
        ids.push(id);
        ids.sort_by(|a, b| groups.order_key(*a).cmp(&groups.order_key(*b)));
        slot.set_live(ids);
        slot.hot = hot_of(slot, groups);
    }

    /// Re-reads the fast-path backends of `fk` after a group's backends changed.
    pub(crate) fn refresh_hot(&mut self, fk: FrontendKey, groups: &Groups) {
        if let Some(slot) = self.get_mut(fk) {
            slot.hot = hot_of(slot, groups);
        }
    }

    /// Removes `id` from `fk`; with `tombstone`, `id` becomes the tombstone there if no live
    /// owner is left.
    pub(crate) fn release(
        &mut self,
        groups: &Groups,
        fk: FrontendKey,
        id: GroupId,
        tombstone: bool,
    ) {
        let Some(slot) = self.get_mut(fk) else { return };
        if slot.live().any(|other| other == id) {
            let ids: Vec<GroupId> = slot.live().filter(|other| *other != id).collect();
            slot.set_live(ids);
            slot.hot = hot_of(slot, groups);
        }
        if slot.tomb == id {
            slot.tomb = NONE;
        }
        if tombstone && !slot.has_live() {
            slot.tomb = id;
        }
        if slot.is_empty() {
            self.remove(fk);
        }
    }

    /// Records that `keys` stopped being allowed backends behind `fk` at `now`.
    pub(crate) fn record_gone(&mut self, fk: FrontendKey, keys: &[Key], now: Instant) {
        if !keys.is_empty() {
            self.entry(fk).record_gone(keys, now);
        }
    }

    /// Forgets departed backends older than `before`, and the slots left with nothing.
    pub(crate) fn expire_gone(&mut self, before: Instant) {
        fn sweep<K>(table: &mut FxHashMap<K, Slot>, before: Instant) {
            table.retain(|_, slot| {
                slot.expire_gone(before);
                !slot.is_empty()
            });
        }
        sweep(&mut self.addrs4, before);
        sweep(&mut self.addrs6, before);
        sweep(&mut self.node_ports, before);
        sweep(&mut self.host_ports, before);
    }

    /// Frontends with a live owner or a tombstone (slots kept only for departed backends
    /// are not counted).
    pub(crate) fn len(&self) -> usize {
        fn owned<K>(table: &FxHashMap<K, Slot>) -> usize {
            table
                .values()
                .filter(|s| s.first != NONE || s.tomb != NONE)
                .count()
        }
        owned(&self.addrs4)
            + owned(&self.addrs6)
            + owned(&self.node_ports)
            + owned(&self.host_ports)
    }
}

fn hot_of(slot: &Slot, groups: &Groups) -> Option<Arc<[u64]>> {
    let group = groups.get(slot.first()?)?;
    let v4 = group.backends.v4();
    (!v4.is_empty()).then(|| v4.clone())
}
