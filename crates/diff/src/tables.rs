//! The classification tables: groups (an owner's allowed backends) and the frontend slots
//! that point at them.

use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

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

/// An allowed (or known but not serving) backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    pub(crate) key: Key,
    pub(crate) serving: bool,
}

/// Where a group is registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FrontendKey {
    Addr(Key),
    NodePort(u16),
    /// Unspecified IP: every node address of that family.
    HostPort(Key),
}

impl FrontendKey {
    pub(crate) fn public(self) -> Frontend {
        match self {
            FrontendKey::Addr(key) => Frontend::Addr(key.socket()),
            FrontendKey::NodePort(port) => Frontend::NodePort(port),
            FrontendKey::HostPort(key) => Frontend::HostPort(key.socket()),
        }
    }
}

/// One service port or one pod host port: the frontends it owns and the backends allowed
/// behind them. A tombstone is a group whose owner is gone (`expires` set, no backends).
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) owner: Arc<ObjKey>,
    pub(crate) port_name: Box<str>,
    pub(crate) kind: GroupKind,
    /// Opted out: every flow to its frontends is kept.
    pub(crate) skip: bool,
    /// Sorted by key, one entry per key (serving if any slice says so).
    pub(crate) backends: Box<[Backend]>,
    pub(crate) serving: u32,
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

    /// Sets the backends from an unsorted list that may repeat keys.
    pub(crate) fn set_backends(&mut self, mut list: Vec<Backend>) -> bool {
        list.sort_unstable_by_key(|b| b.key);
        list.dedup_by(|later, kept| {
            if later.key == kept.key {
                kept.serving |= later.serving;
                true
            } else {
                false
            }
        });
        if *self.backends == *list {
            return false;
        }
        self.serving = list.iter().filter(|b| b.serving).count() as u32;
        self.backends = list.into_boxed_slice();
        true
    }

    #[inline]
    pub(crate) fn allows(&self, reply: Key) -> bool {
        match self.backends.binary_search_by(|b| b.key.cmp(&reply)) {
            Ok(i) => self.backends[i].serving,
            Err(_) => false,
        }
    }

    /// Why a flow to `dst` answered by `reply` is stale, given that no owner allows it.
    /// The precedence is documented on [`Reason`].
    pub(crate) fn reason(&self, dst: Key, reply: Key) -> Reason {
        if reply == dst {
            return Reason::NotDnated;
        }
        let gone = match self.kind {
            GroupKind::ServicePort => Reason::EndpointGone,
            GroupKind::HostPort => Reason::HostPortPodGone,
        };
        if self.serving == 0 && self.kind == GroupKind::ServicePort {
            return Reason::NoEndpoints;
        }
        if let Ok(i) = self.backends.binary_search_by(|b| b.key.cmp(&reply))
            && !self.backends[i].serving
        {
            return Reason::EndpointNotServing;
        }
        let first = self.backends.partition_point(|b| b.key.ip < reply.ip);
        let same_ip = self.backends[first..]
            .iter()
            .take_while(|b| b.key.ip == reply.ip);
        if same_ip.clone().any(|b| b.serving) {
            return Reason::PortChanged;
        }
        gone
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

/// What a frontend resolves to: its live owners (normally one), else a tombstone.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Sorted by owner namespace, name, port name.
    pub(crate) live: SmallVec<[GroupId; 2]>,
    pub(crate) tomb: Option<GroupId>,
}

/// The three frontend tables.
#[derive(Debug, Default)]
pub(crate) struct Frontends {
    pub(crate) addrs: FxHashMap<Key, Slot>,
    pub(crate) node_ports: FxHashMap<u16, Slot>,
    pub(crate) host_ports: FxHashMap<Key, Slot>,
}

impl Frontends {
    fn entry(&mut self, fk: FrontendKey) -> &mut Slot {
        match fk {
            FrontendKey::Addr(key) => self.addrs.entry(key).or_default(),
            FrontendKey::NodePort(port) => self.node_ports.entry(port).or_default(),
            FrontendKey::HostPort(key) => self.host_ports.entry(key).or_default(),
        }
    }

    fn get_mut(&mut self, fk: FrontendKey) -> Option<&mut Slot> {
        match fk {
            FrontendKey::Addr(key) => self.addrs.get_mut(&key),
            FrontendKey::NodePort(port) => self.node_ports.get_mut(&port),
            FrontendKey::HostPort(key) => self.host_ports.get_mut(&key),
        }
    }

    fn remove(&mut self, fk: FrontendKey) {
        match fk {
            FrontendKey::Addr(key) => drop(self.addrs.remove(&key)),
            FrontendKey::NodePort(port) => drop(self.node_ports.remove(&port)),
            FrontendKey::HostPort(key) => drop(self.host_ports.remove(&key)),
        }
    }

    /// Makes `id` a live owner of `fk`, replacing any tombstone there.
    pub(crate) fn claim(&mut self, groups: &Groups, fk: FrontendKey, id: GroupId) {
        let slot = self.entry(fk);
        slot.tomb = None;
        if slot.live.contains(&id) {
            return;
        }
        let key = groups.order_key(id);
        let at = slot
            .live
            .partition_point(|other| groups.order_key(*other) < key);
        slot.live.insert(at, id);
    }

    /// Removes `id` from `fk`; with `tombstone`, `id` becomes the tombstone there if no live
    /// owner is left.
    pub(crate) fn release(&mut self, fk: FrontendKey, id: GroupId, tombstone: bool) {
        let Some(slot) = self.get_mut(fk) else { return };
        slot.live.retain(|other| *other != id);
        if slot.tomb == Some(id) {
            slot.tomb = None;
        }
        if tombstone && slot.live.is_empty() {
            slot.tomb = Some(id);
        }
        if slot.live.is_empty() && slot.tomb.is_none() {
            self.remove(fk);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.addrs.len() + self.node_ports.len() + self.host_ports.len()
    }
}
