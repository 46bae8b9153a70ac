//! The set of frontends touched since the controller last asked, so a pass can be targeted.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::addr::Key;
use crate::verdict::{FlowRef, Frontend, IPPROTO_UDP};

/// Frontends whose verdicts may have changed since the last [`Index::take_dirty`](crate::Index::take_dirty).
///
/// `all` is set after a full relist (`reset_*`) or a change of this node's addresses; then every
/// flow may have changed and `frontends` is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Everything may have changed: do a full pass.
    pub all: bool,
    /// The touched frontends (sorted, without duplicates). A `HostPort` with an unspecified IP
    /// stands for that port on every node address of the family.
    pub frontends: Vec<Frontend>,
}

impl Dirty {
    /// Everything: a full pass.
    pub fn all() -> Self {
        Dirty {
            all: true,
            frontends: Vec::new(),
        }
    }

    /// These frontends (sorted and de-duplicated here).
    pub fn of(frontends: impl IntoIterator<Item = Frontend>) -> Self {
        let mut frontends: Vec<Frontend> = frontends.into_iter().collect();
        frontends.sort_unstable();
        frontends.dedup();
        Dirty {
            all: false,
            frontends,
        }
    }

    /// Widens `self` to cover `other` too.
    pub fn merge(&mut self, other: Dirty) {
        if self.all || other.all {
            *self = Dirty::all();
            return;
        }
        self.frontends.extend(other.frontends);
        self.frontends.sort_unstable();
        self.frontends.dedup();
    }

    /// True when nothing was touched.
    pub fn is_empty(&self) -> bool {
        !self.all && self.frontends.is_empty()
    }

    /// True when `frontend` is in the set (or the set is "all").
    pub fn contains(&self, frontend: &Frontend) -> bool {
        self.all || self.frontends.binary_search(frontend).is_ok()
    }

    /// True when `flow` may be judged differently now: it is UDP and addresses a touched
    /// frontend. Conservative for NodePorts: any destination IP with that port matches.
    /// Linear in the set's size; for large sets and many flows use [`Dirty::matcher`].
    pub fn covers(&self, flow: &FlowRef) -> bool {
        flow.proto == IPPROTO_UDP
            && (self.all || self.frontends.iter().any(|f| frontend_covers(f, flow)))
    }

    /// A hashed form of the set answering [`DirtyMatcher::covers`] in O(1).
    pub fn matcher(&self) -> DirtyMatcher {
        let mut matcher = DirtyMatcher {
            all: self.all,
            ..DirtyMatcher::default()
        };
        for frontend in &self.frontends {
            match *frontend {
                Frontend::Addr(addr) => {
                    matcher.addrs.insert(Key::from_socket(addr).socket());
                }
                Frontend::NodePort(port) => {
                    matcher.ports.insert(port);
                }
                Frontend::HostPort(addr) if addr.ip().is_unspecified() => {
                    matcher.ports.insert(addr.port());
                }
                Frontend::HostPort(addr) => {
                    matcher.addrs.insert(Key::from_socket(addr).socket());
                }
            }
        }
        matcher
    }
}

/// [`Dirty`] prepared for many `covers` questions.
#[derive(Clone, Debug, Default)]
pub struct DirtyMatcher {
    all: bool,
    addrs: HashSet<SocketAddr>,
    /// NodePorts and any-address host ports: matched by port alone (a superset, which is safe:
    /// a covered flow is only re-judged, not deleted).
    ports: HashSet<u16>,
}

impl DirtyMatcher {
    /// True when `flow` is UDP and addresses a touched frontend.
    pub fn covers(&self, flow: &FlowRef) -> bool {
        if flow.proto != IPPROTO_UDP {
            return false;
        }
        if self.all {
            return true;
        }
        let dst = Key::from_socket(flow.orig_dst).socket();
        self.addrs.contains(&dst) || self.ports.contains(&dst.port())
    }
}

fn frontend_covers(frontend: &Frontend, flow: &FlowRef) -> bool {
    let dst = Key::from_socket(flow.orig_dst);
    match *frontend {
        Frontend::Addr(addr) => Key::from_socket(addr) == dst,
        Frontend::NodePort(port) => dst.port == port,
        Frontend::HostPort(addr) if addr.ip().is_unspecified() => {
            dst.port == addr.port() && dst.ip.is_ipv4() == addr.ip().is_ipv4()
        }
        Frontend::HostPort(addr) => Key::from_socket(addr) == dst,
    }
}
