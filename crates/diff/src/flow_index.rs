//! An in-memory index of the node's UDP conntrack flows, fed by the kernel's NEW and DESTROY
//! events, answering "which flows have original destination D" without a table dump.
//!
//! Pure: the caller feeds it [`IndexedFlow`] records (from a seeding dump and from events) and
//! asks [`FlowIndex::flows_to`] / [`FlowIndex::flows_to_port`] when a frontend changes; it
//! classifies the answer with [`Index::classify`](crate::Index::classify) and deletes the stale
//! flows by exact key.
//!
//! # Identity
//! A kernel entry is identified by its reply tuple and its conntrack id (reply tuples are unique
//! in the kernel table; the id tells a reused tuple from the entry that held it before). The
//! index compares whole records: for one kernel entry the original tuple follows from the reply
//! tuple, so this is the same identity. Deletions the caller sends should carry the id too, so
//! that a record kept for an entry that died unnoticed never deletes a new entry that reuses its
//! tuple.
//!
//! # Which side errors are allowed on
//! The index may hold a flow the kernel no longer has (an **extra**): a DESTROY that was lost,
//! delivered before its NEW, or seen before a re-seed began while the dump still reported the
//! dying entry. An extra costs at most one deletion that the kernel answers with "not found"
//! ("already gone"), and it is judged like any other flow, so it is deleted only when a live flow
//! with the same tuples would be stale. The dangerous side is a **missing** flow (a live kernel
//! flow the index lacks): a stale flow that a targeted pass would not delete. Every choice below
//! errs towards extras:
//! - [`FlowIndex::insert`] (NEW) always wins: it adds the flow, or revives one that a DESTROY
//!   marked during a seed.
//! - [`FlowIndex::remove`] (DESTROY) of an unknown flow is a no-op.
//! - A flow goes missing only when its NEW event is lost. Lost events are reported by the
//!   kernel (`ENOBUFS` on the event socket); the caller then re-seeds, and the periodic full
//!   pass remains the safety net for everything else.
//!
//! # Re-seeding while events keep coming
//! [`FlowIndex::begin_seed`] must be called **before** the dump request is sent, and events
//! must keep being applied while the dump's records are fed to [`FlowIndex::seed`]; then
//! [`FlowIndex::finish_seed`]. The dump reports every entry that lives throughout it; entries
//! created or destroyed during it may or may not be reported.
//! - A flow held before `begin_seed` that neither the dump nor a NEW event confirmed is dropped
//!   at `finish_seed`: it was not live throughout the dump, and if it was created during it, its
//!   NEW event (after `begin_seed`) would have confirmed it. So only dead flows are dropped.
//! - A flow added by a NEW event after `begin_seed` survives even when the dump missed it.
//! - A DESTROY applied during the seed leaves a marker (a dead record) until `finish_seed`, so a
//!   dump record for that flow processed later does not resurrect it. A NEW for the same
//!   identity revives it (a live flow must never be hidden). The markers are dropped at
//!   `finish_seed`; a DESTROY seen before `begin_seed` for an entry the dump still reports
//!   resurrects it as an extra, which is the harmless side.
//! - If events are lost during the seed, call `begin_seed` again (it restarts the seed; the
//!   markers are kept, confirmations are reset).
//!
//! After a seed completed with no event lost or reordered since `begin_seed`, once the events
//! queued at the kernel are applied, the index holds exactly the kernel's table.
//!
//! # Layout
//! Per family (IPv4 and IPv6 stored separately, generic over the address width), flows are
//! grouped by **route**: (original destination, reply source, reply destination IP when it
//! differs from the original source IP, i.e. when the flow was SNATed). A route's flows sit in
//! one compact vector (client address, reply port, id, flags: 13 bytes for IPv4, 25 for IPv6);
//! routes with more than a few flows also get a hash table of positions for O(1) DESTROY. Routes
//! are grouped by destination, so [`FlowIndex::flows_to`] costs one hash lookup plus the flows
//! and routes of that destination. Vectors grow by a quarter, not by doubling, so slack stays
//! small. Hashing uses a caller-provided seed ([`FlowIndex::with_hash_seed`]): client addresses
//! and ports of NodePort traffic are chosen by remote peers.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use crate::verdict::FlowRef;

/// A UDP conntrack entry as the index stores it: both tuples and the kernel's conntrack id.
///
/// All four addresses are of one family; [`FlowIndex::insert`] refuses others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexedFlow {
    /// Source of the original direction: the client.
    pub orig_src: SocketAddr,
    /// Destination of the original direction: the frontend the client addressed.
    pub orig_dst: SocketAddr,
    /// Source of the reply direction: the backend that answers (equals `orig_dst` without DNAT).
    pub reply_src: SocketAddr,
    /// Destination of the reply direction (equals `orig_src` without SNAT).
    pub reply_dst: SocketAddr,
    /// The kernel's conntrack id (`CTA_ID`).
    pub id: u32,
}

impl IndexedFlow {
    /// True when all four addresses are IPv4, or all four IPv6.
    pub fn is_single_family(&self) -> bool {
        let v4 = self.orig_src.is_ipv4();
        self.orig_dst.is_ipv4() == v4
            && self.reply_src.is_ipv4() == v4
            && self.reply_dst.is_ipv4() == v4
    }

    /// What classification needs from this flow.
    pub fn flow_ref(&self) -> FlowRef {
        FlowRef::udp(self.orig_dst, self.reply_src)
    }
}

/// Why [`FlowIndex`] refused a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowIndexError {
    /// The record mixes IPv4 and IPv6 addresses.
    #[error("flow mixes IPv4 and IPv6 addresses")]
    MixedFamilies,
    /// More routes or destinations than 32-bit ids can number.
    #[error("flow index is full")]
    Full,
}

/// Every UDP flow of the node (zone 0), grouped by original destination; see the module docs.
#[derive(Clone)]
pub struct FlowIndex {
    v4: Family<[u8; 4]>,
    v6: Family<[u8; 16]>,
    hasher: FixedState,
    seeding: bool,
}

impl Default for FlowIndex {
    fn default() -> Self {
        FlowIndex::new()
    }
}

impl fmt::Debug for FlowIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowIndex")
            .field("len", &self.len())
            .field("destinations", &self.destinations())
            .field("seeding", &self.seeding)
            .finish_non_exhaustive()
    }
}

impl FlowIndex {
    /// An empty index hashing with a fixed seed (deterministic; prefer
    /// [`FlowIndex::with_hash_seed`] with a random seed in the agent).
    pub fn new() -> Self {
        FlowIndex::with_hash_seed(0)
    }

    /// An empty index whose hash tables are keyed with `seed`. Remote peers choose the client
    /// addresses and ports of NodePort traffic, so the agent should pass a secret random value.
    pub fn with_hash_seed(seed: u64) -> Self {
        FlowIndex {
            v4: Family::default(),
            v6: Family::default(),
            hasher: FixedState::with_seed(seed),
            seeding: false,
        }
    }

    /// A NEW event: adds `flow`. Returns whether it was not indexed (as a live flow) before; a
    /// duplicate is a no-op returning `false`. During a seed it also confirms the flow, and it
    /// revives a flow a DESTROY marked dead during the seed.
    pub fn insert(&mut self, flow: IndexedFlow) -> Result<bool, FlowIndexError> {
        self.apply(&flow, Op::Insert)
    }

    /// A DESTROY event: removes `flow`. Returns whether it was indexed as a live flow; an unknown
    /// (or mixed-family) flow is a no-op returning `false`. During a seed the flow is remembered
    /// as destroyed until [`FlowIndex::finish_seed`], so the dump cannot bring it back.
    pub fn remove(&mut self, flow: &IndexedFlow) -> bool {
        let op = if self.seeding {
            Op::RemoveSeeding
        } else {
            Op::Remove
        };
        self.apply(flow, op).unwrap_or(false)
    }

    /// True when `flow` is indexed as a live flow.
    pub fn contains(&self, flow: &IndexedFlow) -> bool {
        match split(flow) {
            Some(Split::V4(parts)) => self.v4.contains(&parts, &self.hasher),
            Some(Split::V6(parts)) => self.v6.contains(&parts, &self.hasher),
            None => false,
        }
    }

    /// Starts a re-seed from a full dump (call it before sending the dump request). Every flow
    /// indexed now must be confirmed by [`FlowIndex::seed`] or a NEW event before
    /// [`FlowIndex::finish_seed`], or it is dropped. Calling it again during a seed restarts the
    /// seed (after lost events). Costs one walk over the index.
    pub fn begin_seed(&mut self) {
        self.seeding = true;
        self.v4.unconfirm_all();
        self.v6.unconfirm_all();
    }

    /// A record of the seeding dump. Returns whether it added a flow. Outside a seed it acts as
    /// [`FlowIndex::insert`] (a first seed needs no `begin_seed`); during a seed a flow destroyed
    /// since [`FlowIndex::begin_seed`] stays dead.
    pub fn seed(&mut self, flow: IndexedFlow) -> Result<bool, FlowIndexError> {
        let op = if self.seeding { Op::Seed } else { Op::Insert };
        self.apply(&flow, op)
    }

    /// Ends the seed: drops the flows held before [`FlowIndex::begin_seed`] that nothing
    /// confirmed, and forgets the flows destroyed during the seed. Returns how many live flows
    /// were dropped (flows whose DESTROY was lost). A no-op returning 0 outside a seed.
    pub fn finish_seed(&mut self) -> usize {
        if !self.seeding {
            return 0;
        }
        self.seeding = false;
        self.v4.sweep(&self.hasher) + self.v6.sweep(&self.hasher)
    }

    /// True between [`FlowIndex::begin_seed`] and [`FlowIndex::finish_seed`].
    pub fn is_seeding(&self) -> bool {
        self.seeding
    }

    /// The indexed flows whose original destination is `orig_dst`, in no particular order. Costs
    /// a hash lookup plus the flows (and routes) to that destination, whatever the table's size.
    /// An IPv4-mapped IPv6 destination also finds the IPv4 flows to the mapped address.
    pub fn flows_to(&self, orig_dst: SocketAddr) -> FlowsTo<'_> {
        let port = orig_dst.port().to_be_bytes();
        let (v4, v6) = match orig_dst.ip() {
            IpAddr::V4(ip) => (Some(ip), None),
            IpAddr::V6(ip) => (ip.to_ipv4_mapped(), Some(ip)),
        };
        FlowsTo {
            v4: v4
                .and_then(|ip| {
                    self.v4.dest(
                        &Sock {
                            ip: ip.octets(),
                            port,
                        },
                        &self.hasher,
                    )
                })
                .map(|dest| DestFlows::new(&self.v4, dest))
                .unwrap_or_default(),
            v6: v6
                .and_then(|ip| {
                    self.v6.dest(
                        &Sock {
                            ip: ip.octets(),
                            port,
                        },
                        &self.hasher,
                    )
                })
                .map(|dest| DestFlows::new(&self.v6, dest))
                .unwrap_or_default(),
        }
    }

    /// The indexed flows of one family (`ipv4`) whose original destination has port `port` and
    /// an IP that `dst_ip` accepts: NodePorts and any-address host ports, served on every node
    /// address. Scans the distinct destinations (not the flows), then yields the flows of the
    /// accepted ones.
    pub fn flows_to_port<'a, F>(
        &'a self,
        ipv4: bool,
        port: u16,
        dst_ip: F,
    ) -> impl Iterator<Item = IndexedFlow> + 'a
    where
        F: FnMut(IpAddr) -> bool + 'a,
    {
        if ipv4 {
            Either::Left(self.v4.flows_to_port(port, dst_ip))
        } else {
            Either::Right(self.v6.flows_to_port(port, dst_ip))
        }
    }

    /// Every indexed flow, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = IndexedFlow> + '_ {
        self.v4.iter().chain(self.v6.iter())
    }

    /// Number of indexed live flows.
    pub fn len(&self) -> usize {
        self.v4.live + self.v6.live
    }

    /// True when no live flow is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of distinct original destinations (during a seed this may include destinations
    /// whose only flows were destroyed during the seed).
    pub fn destinations(&self) -> usize {
        self.v4.dests.len() + self.v6.dests.len()
    }

    /// Heap bytes the index has allocated (requested sizes of every vector, table and box it
    /// owns; the allocator's own per-allocation overhead is not included).
    pub fn memory_bytes(&self) -> usize {
        self.v4.memory_bytes() + self.v6.memory_bytes()
    }

    /// Forgets every flow and ends a seed in progress; frees the memory.
    pub fn clear(&mut self) {
        self.v4 = Family::default();
        self.v6 = Family::default();
        self.seeding = false;
    }

    fn apply(&mut self, flow: &IndexedFlow, op: Op) -> Result<bool, FlowIndexError> {
        match split(flow).ok_or(FlowIndexError::MixedFamilies)? {
            Split::V4(parts) => self.v4.apply(parts, op, &self.hasher),
            Split::V6(parts) => self.v6.apply(parts, op, &self.hasher),
        }
    }
}

/// The flows to one destination: see [`FlowIndex::flows_to`].
#[derive(Clone, Debug, Default)]
pub struct FlowsTo<'a> {
    v4: DestFlows<'a, [u8; 4]>,
    v6: DestFlows<'a, [u8; 16]>,
}

impl Iterator for FlowsTo<'_> {
    type Item = IndexedFlow;

    fn next(&mut self) -> Option<IndexedFlow> {
        self.v4.next().or_else(|| self.v6.next())
    }
}

// ---- internals ----

/// Flag: confirmed by the seed in progress (or a NEW event during it).
const CONFIRMED: u8 = 1;
/// Flag: destroyed during the seed in progress; kept so the dump cannot resurrect it.
const DEAD: u8 = 2;
/// Routes with more flows than this get a hash table of positions; smaller ones are scanned.
const SMALL: usize = 8;

#[derive(Clone, Copy)]
enum Op {
    Insert,
    Seed,
    Remove,
    RemoveSeeding,
}

/// An address of one family as the index stores it: IPv4 `[u8; 4]`, IPv6 `[u8; 16]`.
trait Ip: Copy + Eq + Hash + fmt::Debug {
    fn to_ip(self) -> IpAddr;
}

impl Ip for [u8; 4] {
    fn to_ip(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self))
    }
}

impl Ip for [u8; 16] {
    fn to_ip(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self))
    }
}

/// IP and port, unaligned (the port in network byte order), so entries pack without padding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Sock<A> {
    ip: A,
    port: [u8; 2],
}

impl<A: Ip> Sock<A> {
    fn to_socket(self) -> SocketAddr {
        SocketAddr::new(self.ip.to_ip(), u16::from_be_bytes(self.port))
    }
}

/// What the flows of one route share.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct RouteKey<A> {
    dst: Sock<A>,
    reply_src: Sock<A>,
    /// The reply destination's IP when it differs from the original source's (SNAT).
    snat: Option<A>,
}

/// One flow within its route.
#[derive(Clone, Copy, Debug)]
struct Entry<A> {
    src: Sock<A>,
    reply_port: [u8; 2],
    id: [u8; 4],
    flags: u8,
}

impl<A: Ip> Entry<A> {
    fn same(&self, other: &Entry<A>) -> bool {
        self.src == other.src && self.reply_port == other.reply_port && self.id == other.id
    }

    fn is_live(&self) -> bool {
        self.flags & DEAD == 0
    }

    fn hash(&self, hasher: &FixedState) -> u64 {
        hasher.hash_one((self.src, self.reply_port, self.id))
    }

    fn rebuild(&self, key: &RouteKey<A>) -> IndexedFlow {
        IndexedFlow {
            orig_src: self.src.to_socket(),
            orig_dst: key.dst.to_socket(),
            reply_src: key.reply_src.to_socket(),
            reply_dst: Sock {
                ip: key.snat.unwrap_or(self.src.ip),
                port: self.reply_port,
            }
            .to_socket(),
            id: u32::from_be_bytes(self.id),
        }
    }
}

struct Parts<A> {
    key: RouteKey<A>,
    entry: Entry<A>,
}

enum Split {
    V4(Parts<[u8; 4]>),
    V6(Parts<[u8; 16]>),
}

fn split(flow: &IndexedFlow) -> Option<Split> {
    fn sock<A>(addr: &SocketAddr, ip: A) -> Sock<A> {
        Sock {
            ip,
            port: addr.port().to_be_bytes(),
        }
    }
    fn parts<A: Ip>(flow: &IndexedFlow, ips: [A; 4]) -> Parts<A> {
        let [src, dst, reply_src, reply_dst] = ips;
        Parts {
            key: RouteKey {
                dst: sock(&flow.orig_dst, dst),
                reply_src: sock(&flow.reply_src, reply_src),
                snat: (reply_dst != src).then_some(reply_dst),
            },
            entry: Entry {
                src: sock(&flow.orig_src, src),
                reply_port: flow.reply_dst.port().to_be_bytes(),
                id: flow.id.to_be_bytes(),
                flags: CONFIRMED,
            },
        }
    }
    let addrs = [flow.orig_src, flow.orig_dst, flow.reply_src, flow.reply_dst];
    let v4 = addrs.map(|a| match a.ip() {
        IpAddr::V4(ip) => Some(ip.octets()),
        IpAddr::V6(_) => None,
    });
    if let [Some(a), Some(b), Some(c), Some(d)] = v4 {
        return Some(Split::V4(parts(flow, [a, b, c, d])));
    }
    let v6 = addrs.map(|a| match a.ip() {
        IpAddr::V6(ip) => Some(ip.octets()),
        IpAddr::V4(_) => None,
    });
    if let [Some(a), Some(b), Some(c), Some(d)] = v6 {
        return Some(Split::V6(parts(flow, [a, b, c, d])));
    }
    None
}

/// The flows to one original destination, grouped by route.
#[derive(Clone, Debug)]
struct Dest<A> {
    addr: Sock<A>,
    /// Route ids; never empty while the destination is in use.
    routes: Vec<u32>,
}

#[derive(Clone, Debug)]
struct Route<A> {
    key: RouteKey<A>,
    dest: u32,
    /// Position in its destination's `routes`.
    pos: u32,
    /// Never empty while the route is in use.
    entries: Vec<Entry<A>>,
    /// Positions in `entries`, keyed by the entry's identity; only for routes above [`SMALL`].
    table: Option<Box<HashTable<u32>>>,
}

#[derive(Clone, Debug)]
struct Family<A> {
    dests: HashTable<u32>,
    dest_slab: Vec<Dest<A>>,
    free_dests: Vec<u32>,
    routes: HashTable<u32>,
    route_slab: Vec<Route<A>>,
    free_routes: Vec<u32>,
    /// Live flows.
    live: usize,
    /// Flows marked [`DEAD`] (only during a seed).
    dead: usize,
}

impl<A> Default for Family<A> {
    fn default() -> Self {
        Family {
            dests: HashTable::new(),
            dest_slab: Vec::new(),
            free_dests: Vec::new(),
            routes: HashTable::new(),
            route_slab: Vec::new(),
            free_routes: Vec::new(),
            live: 0,
            dead: 0,
        }
    }
}

/// Pushes with growth by a quarter (not doubling) so that a large vector wastes little.
fn push_small_slack<T>(vec: &mut Vec<T>, value: T) {
    if vec.len() == vec.capacity() {
        let cap = vec.capacity();
        vec.reserve_exact(if cap == 0 { 1 } else { (cap / 4).max(2) });
    }
    vec.push(value);
}

/// Gives memory back once a vector is less than half full (hysteresis keeps this amortized O(1)).
fn shrink_small_slack<T>(vec: &mut Vec<T>) {
    let len = vec.len();
    if vec.capacity() > 4 && len < vec.capacity() / 2 {
        vec.shrink_to(len + len / 4);
    }
}

fn table_bytes(table: &HashTable<u32>) -> usize {
    table.allocation_size()
}

impl<A: Ip> Family<A> {
    fn find_dest(&self, addr: &Sock<A>, hasher: &FixedState) -> Option<u32> {
        let slab = &self.dest_slab;
        self.dests
            .find(hasher.hash_one(addr), |&d| slab[d as usize].addr == *addr)
            .copied()
    }

    fn dest(&self, addr: &Sock<A>, hasher: &FixedState) -> Option<&Dest<A>> {
        self.find_dest(addr, hasher)
            .map(|d| &self.dest_slab[d as usize])
    }

    /// Gives every table and slab back once the last entry is gone.
    fn reset_if_empty(&mut self) {
        if self.routes.is_empty() {
            debug_assert_eq!(self.live + self.dead, 0);
            *self = Family::default();
        }
    }

    fn find_route(&self, key: &RouteKey<A>, hasher: &FixedState) -> Option<u32> {
        let slab = &self.route_slab;
        self.routes
            .find(hasher.hash_one(key), |&r| slab[r as usize].key == *key)
            .copied()
    }

    fn contains(&self, parts: &Parts<A>, hasher: &FixedState) -> bool {
        self.find_route(&parts.key, hasher)
            .and_then(|r| {
                let route = &self.route_slab[r as usize];
                find_entry(route, &parts.entry, hasher).map(|pos| route.entries[pos].is_live())
            })
            .unwrap_or(false)
    }

    fn apply(
        &mut self,
        parts: Parts<A>,
        op: Op,
        hasher: &FixedState,
    ) -> Result<bool, FlowIndexError> {
        let found = self.find_route(&parts.key, hasher).and_then(|r| {
            find_entry(&self.route_slab[r as usize], &parts.entry, hasher).map(|pos| (r, pos))
        });
        match (op, found) {
            (Op::Insert | Op::Seed, None) => {
                self.add(parts, CONFIRMED, hasher)?;
                self.live += 1;
                Ok(true)
            }
            (Op::Insert, Some((r, pos))) => {
                let entry = &mut self.route_slab[r as usize].entries[pos];
                let revived = !entry.is_live();
                entry.flags = CONFIRMED;
                if revived {
                    self.dead -= 1;
                    self.live += 1;
                }
                Ok(revived)
            }
            (Op::Seed, Some((r, pos))) => {
                let entry = &mut self.route_slab[r as usize].entries[pos];
                if entry.is_live() {
                    entry.flags |= CONFIRMED;
                }
                Ok(false)
            }
            (Op::Remove, Some((r, pos))) => {
                let live = self.route_slab[r as usize].entries[pos].is_live();
                self.delete(r, pos, hasher);
                if live {
                    self.live -= 1;
                } else {
                    self.dead -= 1;
                }
                self.reset_if_empty();
                Ok(live)
            }
            (Op::Remove, None) => Ok(false),
            (Op::RemoveSeeding, Some((r, pos))) => {
                let entry = &mut self.route_slab[r as usize].entries[pos];
                let live = entry.is_live();
                entry.flags = DEAD;
                if live {
                    self.live -= 1;
                    self.dead += 1;
                }
                Ok(live)
            }
            (Op::RemoveSeeding, None) => {
                self.add(parts, DEAD, hasher)?;
                self.dead += 1;
                Ok(false)
            }
        }
    }

    /// Adds an entry that is not there yet, creating its route and destination if needed.
    fn add(
        &mut self,
        parts: Parts<A>,
        flags: u8,
        hasher: &FixedState,
    ) -> Result<(), FlowIndexError> {
        let r = match self.find_route(&parts.key, hasher) {
            Some(r) => r,
            None => self.add_route(parts.key, hasher)?,
        };
        let route = &mut self.route_slab[r as usize];
        let pos = u32::try_from(route.entries.len()).map_err(|_| FlowIndexError::Full)?;
        let mut entry = parts.entry;
        entry.flags = flags;
        push_small_slack(&mut route.entries, entry);
        let entries = &route.entries;
        match &mut route.table {
            Some(table) => {
                table.insert_unique(entry.hash(hasher), pos, |&p| {
                    entries[p as usize].hash(hasher)
                });
            }
            None if entries.len() > SMALL => {
                route.table = Some(Box::new(build_table(entries, hasher)));
            }
            None => {}
        }
        Ok(())
    }

    fn add_route(&mut self, key: RouteKey<A>, hasher: &FixedState) -> Result<u32, FlowIndexError> {
        let d = match self.find_dest(&key.dst, hasher) {
            Some(d) => d,
            None => {
                let dest = Dest {
                    addr: key.dst,
                    routes: Vec::new(),
                };
                let d = match self.free_dests.pop() {
                    Some(d) => {
                        self.dest_slab[d as usize] = dest;
                        d
                    }
                    None => {
                        let d = u32::try_from(self.dest_slab.len())
                            .map_err(|_| FlowIndexError::Full)?;
                        push_small_slack(&mut self.dest_slab, dest);
                        d
                    }
                };
                let slab = &self.dest_slab;
                self.dests.insert_unique(hasher.hash_one(key.dst), d, |&d| {
                    hasher.hash_one(slab[d as usize].addr)
                });
                d
            }
        };
        let dest = &mut self.dest_slab[d as usize];
        let pos = u32::try_from(dest.routes.len()).map_err(|_| FlowIndexError::Full)?;
        let route = Route {
            key,
            dest: d,
            pos,
            entries: Vec::new(),
            table: None,
        };
        let r = match self.free_routes.pop() {
            Some(r) => {
                self.route_slab[r as usize] = route;
                r
            }
            None => {
                let r = u32::try_from(self.route_slab.len()).map_err(|_| FlowIndexError::Full)?;
                push_small_slack(&mut self.route_slab, route);
                r
            }
        };
        push_small_slack(&mut dest.routes, r);
        let slab = &self.route_slab;
        self.routes.insert_unique(hasher.hash_one(key), r, |&r| {
            hasher.hash_one(slab[r as usize].key)
        });
        Ok(r)
    }

    /// Removes the entry at `pos` of route `r`, and the route and destination when emptied.
    fn delete(&mut self, r: u32, pos: usize, hasher: &FixedState) {
        let route = &mut self.route_slab[r as usize];
        let last = route.entries.len() - 1;
        if let Some(table) = &mut route.table {
            let entries = &route.entries;
            if let Ok(slot) = table.find_entry(entries[pos].hash(hasher), |&p| p as usize == pos) {
                slot.remove();
            }
            if pos != last
                && let Some(slot) =
                    table.find_mut(entries[last].hash(hasher), |&p| p as usize == last)
            {
                // `pos` came from a u32 position, so it fits.
                *slot = pos as u32;
            }
        }
        route.entries.swap_remove(pos);
        if route.entries.is_empty() {
            self.delete_route(r, hasher);
            return;
        }
        shrink_small_slack(&mut route.entries);
        let len = route.entries.len();
        if len <= SMALL / 2 {
            route.table = None;
        } else if let Some(table) = &mut route.table
            && table.capacity() > 4 * len
        {
            let entries = &route.entries;
            table.shrink_to(len, |&p| entries[p as usize].hash(hasher));
        }
    }

    fn delete_route(&mut self, r: u32, hasher: &FixedState) {
        let route = &mut self.route_slab[r as usize];
        route.entries = Vec::new();
        route.table = None;
        let (key, d, pos) = (route.key, route.dest, route.pos);
        if let Ok(slot) = self.routes.find_entry(hasher.hash_one(key), |&x| x == r) {
            slot.remove();
        }
        self.free_routes.push(r);
        let dest = &mut self.dest_slab[d as usize];
        dest.routes.swap_remove(pos as usize);
        if let Some(&moved) = dest.routes.get(pos as usize) {
            self.route_slab[moved as usize].pos = pos;
        }
        shrink_small_slack(&mut dest.routes);
        if dest.routes.is_empty() {
            dest.routes = Vec::new();
            let addr = dest.addr;
            if let Ok(slot) = self.dests.find_entry(hasher.hash_one(addr), |&x| x == d) {
                slot.remove();
            }
            self.free_dests.push(d);
        }
    }

    fn unconfirm_all(&mut self) {
        for route in &mut self.route_slab {
            for entry in &mut route.entries {
                entry.flags &= !CONFIRMED;
            }
        }
    }

    /// Drops unconfirmed and dead entries; returns how many live ones were dropped.
    fn sweep(&mut self, hasher: &FixedState) -> usize {
        let mut dropped = 0;
        let mut emptied = Vec::new();
        for (r, route) in self.route_slab.iter_mut().enumerate() {
            if route.entries.is_empty() {
                continue;
            }
            let before = route.entries.len();
            let mut dead = 0;
            route.entries.retain(|e| {
                if e.flags & DEAD != 0 {
                    dead += 1;
                    false
                } else {
                    e.flags & CONFIRMED != 0
                }
            });
            if route.entries.len() == before {
                continue;
            }
            dropped += before - route.entries.len() - dead;
            self.dead -= dead;
            if route.entries.is_empty() {
                // Slab ids were checked against u32 when the route was added.
                emptied.push(r as u32);
                continue;
            }
            shrink_small_slack(&mut route.entries);
            route.table = (route.entries.len() > SMALL)
                .then(|| Box::new(build_table(&route.entries, hasher)));
        }
        self.live -= dropped;
        for r in emptied {
            self.delete_route(r, hasher);
        }
        self.reset_if_empty();
        dropped
    }

    fn flows_to_port<'a, F>(
        &'a self,
        port: u16,
        mut dst_ip: F,
    ) -> impl Iterator<Item = IndexedFlow> + 'a
    where
        F: FnMut(IpAddr) -> bool + 'a,
    {
        let port = port.to_be_bytes();
        self.dest_slab
            .iter()
            .filter(move |d| {
                !d.routes.is_empty() && d.addr.port == port && dst_ip(d.addr.ip.to_ip())
            })
            .flat_map(move |d| DestFlows::new(self, d))
    }

    fn iter(&self) -> impl Iterator<Item = IndexedFlow> + '_ {
        self.route_slab.iter().flat_map(|route| {
            route
                .entries
                .iter()
                .filter(|e| e.is_live())
                .map(move |e| e.rebuild(&route.key))
        })
    }

    fn memory_bytes(&self) -> usize {
        let dests: usize = self
            .dest_slab
            .iter()
            .map(|d| d.routes.capacity() * size_of::<u32>())
            .sum();
        let routes: usize = self
            .route_slab
            .iter()
            .map(|r| {
                r.entries.capacity() * size_of::<Entry<A>>()
                    + r.table
                        .as_ref()
                        .map_or(0, |t| size_of::<HashTable<u32>>() + table_bytes(t))
            })
            .sum();
        table_bytes(&self.dests)
            + self.dest_slab.capacity() * size_of::<Dest<A>>()
            + self.free_dests.capacity() * size_of::<u32>()
            + dests
            + table_bytes(&self.routes)
            + self.route_slab.capacity() * size_of::<Route<A>>()
            + self.free_routes.capacity() * size_of::<u32>()
            + routes
    }
}

fn find_entry<A: Ip>(route: &Route<A>, entry: &Entry<A>, hasher: &FixedState) -> Option<usize> {
    match &route.table {
        Some(table) => table
            .find(entry.hash(hasher), |&p| {
                route.entries[p as usize].same(entry)
            })
            .map(|&p| p as usize),
        None => route.entries.iter().position(|e| e.same(entry)),
    }
}

fn build_table<A: Ip>(entries: &[Entry<A>], hasher: &FixedState) -> HashTable<u32> {
    let mut table = HashTable::with_capacity(entries.len());
    for (pos, entry) in entries.iter().enumerate() {
        // Positions fit: a route's length was checked against u32 when each entry was added.
        table.insert_unique(entry.hash(hasher), pos as u32, |&p| {
            entries[p as usize].hash(hasher)
        });
    }
    table
}

/// Walks the routes of one destination and their live entries.
#[derive(Clone, Debug)]
struct DestFlows<'a, A> {
    family: Option<&'a Family<A>>,
    routes: std::slice::Iter<'a, u32>,
    current: Option<(&'a RouteKey<A>, std::slice::Iter<'a, Entry<A>>)>,
}

impl<A> Default for DestFlows<'_, A> {
    fn default() -> Self {
        DestFlows {
            family: None,
            routes: [].iter(),
            current: None,
        }
    }
}

impl<'a, A: Ip> DestFlows<'a, A> {
    fn new(family: &'a Family<A>, dest: &'a Dest<A>) -> Self {
        DestFlows {
            family: Some(family),
            routes: dest.routes.iter(),
            current: None,
        }
    }
}

impl<A: Ip> Iterator for DestFlows<'_, A> {
    type Item = IndexedFlow;

    fn next(&mut self) -> Option<IndexedFlow> {
        let family = self.family?;
        loop {
            if let Some((key, entries)) = &mut self.current
                && let Some(entry) = entries.find(|e| e.is_live())
            {
                return Some(entry.rebuild(key));
            }
            let &r = self.routes.next()?;
            let route = &family.route_slab[r as usize];
            self.current = Some((&route.key, route.entries.iter()));
        }
    }
}

enum Either<L, R> {
    Left(L),
    Right(R),
}

impl<L, R> Iterator for Either<L, R>
where
    L: Iterator<Item = IndexedFlow>,
    R: Iterator<Item = IndexedFlow>,
{
    type Item = IndexedFlow;

    fn next(&mut self) -> Option<IndexedFlow> {
        match self {
            Either::Left(l) => l.next(),
            Either::Right(r) => r.next(),
        }
    }
}
