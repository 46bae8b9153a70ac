//! Acting only on fresh, positive evidence: whether a stale verdict may be acted on *now*.
//!
//! The index judges flows against the agent's view of the cluster, and that view can lag
//! kube-proxy's: its watch may be slower, failing, relisting or silently frozen while
//! kube-proxy, with its own watch, already routes new flows to backends the agent has not heard
//! of. [`Knowledge`] tracks how current the view of each watched kind is; [`Gate`] turns a
//! verdict into a [`Decision`]:
//! - nothing is deleted unless every kind is *fresh*: fully listed, not relisting, not failing,
//!   and heard from within `stale_after`;
//! - a kind's view is *current as of* an instant when it provably holds every change the API
//!   server made until then: a list requested at that instant, or an event or bookmark received
//!   one `grace` later (`grace` bounds how far the watch's delivery may lag);
//! - nothing is deleted unless the kind that decides the verdict ([`deciding_kind`]:
//!   EndpointSlices for a live Service, Services for a deleted one, Pods for a host port) is
//!   current as of two graces ago: a frozen watch stops deletions within two graces, not after
//!   `stale_after`;
//! - a backend the agent saw leave ([`Evidence::Removed`]) may then go at once;
//! - a backend it never saw ([`Evidence::Unseen`]) may go only once those kinds are also
//!   current as of when the flow was first seen: the backend existed when kube-proxy chose it,
//!   before the flow was seen, so a view that current would hold it if it were still there.
//!
//! Within the delivery bound, a flow whose backend has been allowed for the last two graces is
//! never deleted.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use crate::verdict::{Evidence, Frontend, Reason, Stale};

/// A watched Kubernetes kind whose freshness the gate tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Services.
    Services,
    /// EndpointSlices.
    EndpointSlices,
    /// This node's Node object.
    Nodes,
    /// Pods on this node.
    Pods,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 4] = [
        Kind::Services,
        Kind::EndpointSlices,
        Kind::Nodes,
        Kind::Pods,
    ];

    /// The plural lower-case resource name, for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::Nodes => "nodes",
            Kind::Pods => "pods",
        }
    }

    const fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How current the agent's view of one kind is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindFreshness {
    /// A complete list has been applied at least once.
    pub listed: bool,
    /// A relist is in progress (the index holds old and new objects mixed).
    pub relisting: bool,
    /// The watch has failed since it last answered, since this instant.
    pub failing_since: Option<Instant>,
    /// The last time the watch answered at all (a list page, a watch accepted, an event, a
    /// bookmark).
    pub last_alive: Option<Instant>,
    /// The receipt time of the latest event or bookmark applied (with everything the watch
    /// delivered before it). It proves the view as current as the API server was a delivery lag
    /// earlier.
    pub confirmed: Option<Instant>,
    /// When the latest complete list was requested: it proves the view as current as the API
    /// server was then (a list is read at or after its request).
    pub list_started: Option<Instant>,
    /// The watch resumed from an old resourceVersion after a gap and may still be replaying
    /// missed events: its events prove nothing until a bookmark (sent after the replay) or a
    /// complete list arrives.
    pub catching_up: bool,
}

/// Why the agent's view is not fresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Staleness {
    /// The kind has never been listed completely.
    NotListed(Kind),
    /// The kind is being relisted.
    Relisting(Kind),
    /// The kind's watch resumed after a gap and is replaying what it missed.
    CatchingUp(Kind),
    /// The kind's watch is failing, since this instant.
    Failing(Kind, Instant),
    /// The kind's watch has not answered for this long.
    Silent(Kind, Duration),
}

impl fmt::Display for Staleness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Staleness::NotListed(kind) => write!(f, "{kind} not listed yet"),
            Staleness::Relisting(kind) => write!(f, "{kind} relisting"),
            Staleness::CatchingUp(kind) => write!(f, "{kind} watch catching up"),
            Staleness::Failing(kind, _) => write!(f, "{kind} watch failing"),
            Staleness::Silent(kind, quiet) => {
                write!(f, "{kind} watch silent for {}s", quiet.as_secs())
            }
        }
    }
}

/// How current the agent's view of every watched kind is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Knowledge {
    kinds: [KindFreshness; 4],
    stale_after: Duration,
}

impl Knowledge {
    /// Nothing known yet. A kind that has not been heard from for `stale_after` is stale.
    pub fn new(stale_after: Duration) -> Self {
        Knowledge {
            kinds: [KindFreshness::default(); 4],
            stale_after,
        }
    }

    /// The state of one kind.
    pub fn kind(&self, kind: Kind) -> &KindFreshness {
        &self.kinds[kind.slot()]
    }

    fn kind_mut(&mut self, kind: Kind) -> &mut KindFreshness {
        &mut self.kinds[kind.slot()]
    }

    /// The watch answered (a list page, an accepted watch request): it is alive, not failing.
    pub fn alive(&mut self, kind: Kind, at: Instant) {
        let k = self.kind_mut(kind);
        k.last_alive = Some(k.last_alive.map_or(at, |t| t.max(at)));
        k.failing_since = None;
    }

    /// A relist started at `at`.
    pub fn relist_started(&mut self, kind: Kind, at: Instant) {
        self.alive(kind, at);
        self.kind_mut(kind).relisting = true;
    }

    /// A complete list that started at `started` has been applied: the view is as current as
    /// the API server was then.
    pub fn listed(&mut self, kind: Kind, started: Instant, at: Instant) {
        self.alive(kind, at);
        let k = self.kind_mut(kind);
        k.listed = true;
        k.relisting = false;
        k.catching_up = false;
        k.list_started = Some(k.list_started.map_or(started, |t| t.max(started)));
    }

    /// The watch resumed at `at` from a resourceVersion older than the gap it was down for: the
    /// events it delivers next may have been sent long ago. The kind is not fresh, and its
    /// events confirm nothing, until a bookmark or a complete list.
    pub fn resumed(&mut self, kind: Kind, at: Instant) {
        self.alive(kind, at);
        self.kind_mut(kind).catching_up = true;
    }

    /// An event received at `at` has been applied (with everything before it). While the
    /// watch is catching up, that only shows it is alive.
    pub fn confirmed(&mut self, kind: Kind, at: Instant) {
        self.alive(kind, at);
        let k = self.kind_mut(kind);
        if !k.catching_up {
            k.confirmed = Some(k.confirmed.map_or(at, |t| t.max(at)));
        }
    }

    /// A bookmark received at `at` has been applied: the API server sends it after every event
    /// before it, replayed ones included.
    pub fn bookmarked(&mut self, kind: Kind, at: Instant) {
        self.kind_mut(kind).catching_up = false;
        self.confirmed(kind, at);
    }

    /// The watch failed at `at` (an error answer, a broken or silent connection).
    pub fn failed(&mut self, kind: Kind, at: Instant) {
        let k = self.kind_mut(kind);
        k.failing_since.get_or_insert(at);
    }

    /// Why `kind`'s view is not fresh at `now`, if it is not.
    pub fn staleness(&self, kind: Kind, now: Instant) -> Option<Staleness> {
        let k = self.kind(kind);
        if !k.listed {
            return Some(Staleness::NotListed(kind));
        }
        if k.relisting {
            return Some(Staleness::Relisting(kind));
        }
        if k.catching_up {
            return Some(Staleness::CatchingUp(kind));
        }
        if let Some(since) = k.failing_since {
            return Some(Staleness::Failing(kind, since));
        }
        let quiet = k
            .last_alive
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        (quiet > self.stale_after).then_some(Staleness::Silent(kind, quiet))
    }

    /// The first reason, in [`Kind::ALL`] order, why the view is not fresh at `now`.
    pub fn first_staleness(&self, now: Instant) -> Option<Staleness> {
        Kind::ALL.iter().find_map(|k| self.staleness(*k, now))
    }

    /// Whether every kind is fresh at `now`.
    pub fn all_fresh(&self, now: Instant) -> bool {
        self.first_staleness(now).is_none()
    }

    /// The instant up to which `kind`'s view provably holds every change the API server made,
    /// if the watch delivers within `lag`: the latest list's request time, or the latest event
    /// or bookmark's receipt time less `lag`.
    pub fn as_of(&self, kind: Kind, lag: Duration) -> Option<Instant> {
        let k = self.kind(kind);
        let by_watch = k.confirmed.and_then(|c| c.checked_sub(lag));
        by_watch.max(k.list_started)
    }

    /// Whether the view of every kind in `kinds` is provably current as of `at`.
    pub fn current_as_of(&self, kinds: &[Kind], at: Instant, lag: Duration) -> bool {
        kinds
            .iter()
            .all(|k| self.as_of(*k, lag).is_some_and(|t| t >= at))
    }
}

/// The kind whose view decides a stale verdict: the one whose next change could make the flow
/// healthy again. A host port's flows change with Pods; a live Service's with its
/// EndpointSlices (backends, readiness, ports); a deleted Service's only with a new owner of
/// its address, a Service.
///
/// One kind, not several: API servers send each watch its bookmarks on its own timer (about a
/// minute apart), so on a quiet cluster two kinds are rarely recent at the same moment.
pub fn deciding_kind(stale: &Stale<'_>) -> Kind {
    match (stale.frontend, stale.reason) {
        (Frontend::HostPort(_), _) => Kind::Pods,
        (_, Reason::ServiceDeleted) => Kind::Services,
        _ => Kind::EndpointSlices,
    }
}

/// What to do with a stale flow now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Delete it.
    Delete,
    /// Not yet: its backend was never seen by the agent, and the agent's view is not yet proven
    /// newer than the flow. Check again later.
    Defer,
    /// Not now: the agent's view is not fresh (see [`Knowledge::first_staleness`]).
    Hold,
}

impl Decision {
    /// The kebab-case name, for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Delete => "delete",
            Decision::Defer => "defer",
            Decision::Hold => "hold",
        }
    }
}

/// Settings of a [`Gate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateConfig {
    /// How far the agent's watch may run behind kube-proxy's: a never-seen backend's flow may go
    /// only after an event or bookmark received this long after the flow was first seen.
    pub grace: Duration,
    /// At most this many flows are remembered as waiting; more are deferred without memory
    /// (and seen anew, later).
    pub max_waiting: usize,
    /// A waiting flow not seen again for this long is forgotten.
    pub forget_after: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            grace: Duration::from_secs(5),
            max_waiting: 100_000,
            forget_after: Duration::from_secs(600),
        }
    }
}

/// A flow waiting for proof that its never-seen backend is really gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting<F> {
    /// When the flow was first seen stale.
    pub first_seen: Instant,
    /// When it was last seen stale.
    pub last_seen: Instant,
    /// The flow, as the caller handed it in (to re-check it without a table walk).
    pub flow: F,
}

/// Decides, flow by flow, whether a stale verdict may be acted on now; remembers the flows that
/// wait (keyed by `K`, carrying the caller's flow `F`).
#[derive(Debug)]
pub struct Gate<K, F> {
    cfg: GateConfig,
    waiting: HashMap<K, Waiting<F>>,
    /// Fingerprints (sorted) of flows known to exist at an earlier instant — a table walk made
    /// before the first list — whose first sighting is that instant.
    seen_before: Option<(Instant, Vec<u64>)>,
}

impl<K: Hash + Eq + Copy, F: Copy> Gate<K, F> {
    /// An empty gate.
    pub fn new(cfg: GateConfig) -> Self {
        Gate {
            cfg,
            waiting: HashMap::new(),
            seen_before: None,
        }
    }

    /// A well-mixed 64-bit fingerprint of a key, for [`Gate::seen_before`].
    pub fn fingerprint(key: &K) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        hasher.finish()
    }

    /// Records that the flows with these fingerprints existed at `at`: when one of them is
    /// first judged stale, it counts as first seen then. After a restart, a walk of the table
    /// before the first list lets that list prove never-seen backends gone at once.
    pub fn seen_before(&mut self, at: Instant, mut fingerprints: Vec<u64>) {
        fingerprints.sort_unstable();
        fingerprints.dedup();
        self.seen_before = Some((at, fingerprints));
    }

    /// Forgets the flows recorded by [`Gate::seen_before`] (their memory is no longer needed
    /// once a full pass has judged them).
    pub fn clear_seen_before(&mut self) {
        self.seen_before = None;
    }

    /// The configuration.
    pub fn config(&self) -> &GateConfig {
        &self.cfg
    }

    /// Decides about a flow the index judged `stale` at `now`.
    ///
    /// A [`Decision::Delete`] forgets the flow; the caller should [`forget`](Gate::forget) it
    /// too when it turns out not stale any more (or gone). A deferred flow is remembered (with
    /// when it was first seen) for re-checks.
    pub fn decide(
        &mut self,
        key: K,
        flow: F,
        stale: &Stale<'_>,
        knowledge: &Knowledge,
        now: Instant,
    ) -> Decision {
        if !knowledge.all_fresh(now) {
            if stale.evidence == Evidence::Unseen {
                self.note(key, flow, now);
            }
            return Decision::Hold;
        }
        // A never-seen backend existed when the flow was created, before it was first seen.
        let first_seen = (stale.evidence == Evidence::Unseen).then(|| self.note(key, flow, now));
        if self.proven(stale, first_seen, knowledge, now) {
            self.waiting.remove(&key);
            Decision::Delete
        } else {
            self.note(key, flow, now);
            Decision::Defer
        }
    }

    /// Decides again about a flow that waits, judged `stale` at `now` from memory (not seen
    /// again: its last sighting is left as it is, so flows gone from the kernel age out).
    /// A flow that no longer waits is deferred.
    pub fn recheck(
        &mut self,
        key: &K,
        stale: &Stale<'_>,
        knowledge: &Knowledge,
        now: Instant,
    ) -> Decision {
        let Some(waiting) = self.waiting.get(key) else {
            return Decision::Defer;
        };
        if !knowledge.all_fresh(now) {
            return Decision::Hold;
        }
        let first_seen = (stale.evidence == Evidence::Unseen).then_some(waiting.first_seen);
        if self.proven(stale, first_seen, knowledge, now) {
            self.waiting.remove(key);
            Decision::Delete
        } else {
            Decision::Defer
        }
    }

    /// Whether `knowledge` proves `stale` at `now`: the deciding kind is current as of two
    /// graces ago (a watch delivers within one grace, so: an event or bookmark received within
    /// the last grace, or a list requested within the last two), and, for a never-seen backend
    /// first seen at `first_seen`, as of then too (only a view that current proves gone a backend
    /// that existed when the flow was created). A backend allowed throughout the last two graces
    /// is then known to the index and cannot be judged stale, not even after a flap the agent
    /// saw half of.
    fn proven(
        &self,
        stale: &Stale<'_>,
        first_seen: Option<Instant>,
        knowledge: &Knowledge,
        now: Instant,
    ) -> bool {
        let grace = self.cfg.grace;
        let recent = now.checked_sub(grace * 2).unwrap_or(now);
        let needed = first_seen.map_or(recent, |seen| recent.max(seen));
        knowledge.current_as_of(&[deciding_kind(stale)], needed, grace)
    }

    /// Keeps only the waiting flows for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &Waiting<F>) -> bool) {
        self.waiting.retain(|k, w| keep(k, w));
    }

    /// Records that `key` was seen stale at `now`; returns when it was first seen.
    fn note(&mut self, key: K, flow: F, now: Instant) -> Instant {
        if let Some(w) = self.waiting.get_mut(&key) {
            w.last_seen = now;
            w.flow = flow;
            return w.first_seen;
        }
        let first_seen = match &self.seen_before {
            Some((at, prints)) if prints.binary_search(&Self::fingerprint(&key)).is_ok() => {
                (*at).min(now)
            }
            _ => now,
        };
        if self.waiting.len() < self.cfg.max_waiting {
            self.waiting.insert(
                key,
                Waiting {
                    first_seen,
                    last_seen: now,
                    flow,
                },
            );
        }
        first_seen
    }

    /// Forgets a flow (no longer stale, deleted, or gone from the table).
    pub fn forget(&mut self, key: &K) {
        self.waiting.remove(key);
    }

    /// Forgets flows not seen stale for `forget_after`; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.waiting.len();
        let limit = self.cfg.forget_after;
        self.waiting
            .retain(|_, w| now.saturating_duration_since(w.last_seen) < limit);
        before - self.waiting.len()
    }

    /// The flows waiting, for a re-check without a table walk.
    pub fn waiting(&self) -> impl Iterator<Item = (&K, &Waiting<F>)> {
        self.waiting.iter()
    }

    /// How many flows wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no flow waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{Reason, ServiceName};

    const GRACE: Duration = Duration::from_secs(5);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn stale(evidence: Evidence, frontend: Frontend) -> Stale<'static> {
        Stale {
            service: ServiceName {
                namespace: "d",
                name: "dns",
            },
            port: "",
            frontend,
            reason: Reason::EndpointGone,
            evidence,
        }
    }

    fn vip() -> Frontend {
        Frontend::Addr("10.96.0.10:53".parse().unwrap())
    }

    /// Every kind listed at `t0` (lists started then) and alive.
    fn fresh_at(t0: Instant) -> Knowledge {
        let mut k = Knowledge::new(secs(90));
        for kind in Kind::ALL {
            k.relist_started(kind, t0);
            k.listed(kind, t0, t0);
        }
        k
    }

    fn gate() -> Gate<u32, ()> {
        Gate::new(GateConfig {
            grace: GRACE,
            ..GateConfig::default()
        })
    }

    #[test]
    fn nothing_is_fresh_before_every_kind_is_listed() {
        let t0 = Instant::now();
        let mut k = Knowledge::new(secs(90));
        assert_eq!(
            k.first_staleness(t0),
            Some(Staleness::NotListed(Kind::Services))
        );
        for kind in [Kind::Services, Kind::EndpointSlices, Kind::Nodes] {
            k.relist_started(kind, t0);
            k.listed(kind, t0, t0);
        }
        assert_eq!(
            k.first_staleness(t0),
            Some(Staleness::NotListed(Kind::Pods))
        );
        k.relist_started(Kind::Pods, t0);
        assert_eq!(
            k.first_staleness(t0),
            Some(Staleness::NotListed(Kind::Pods))
        );
        k.listed(Kind::Pods, t0, t0);
        assert!(k.all_fresh(t0));
    }

    #[test]
    fn failing_relisting_and_silent_watches_are_stale() {
        let t0 = Instant::now();
        let mut k = fresh_at(t0);
        k.failed(Kind::EndpointSlices, t0 + secs(1));
        assert_eq!(
            k.first_staleness(t0 + secs(2)),
            Some(Staleness::Failing(Kind::EndpointSlices, t0 + secs(1)))
        );
        // A later failure keeps the first instant; an answer clears it.
        k.failed(Kind::EndpointSlices, t0 + secs(3));
        k.alive(Kind::EndpointSlices, t0 + secs(4));
        assert!(k.all_fresh(t0 + secs(4)));
        k.relist_started(Kind::Services, t0 + secs(5));
        assert_eq!(
            k.first_staleness(t0 + secs(5)),
            Some(Staleness::Relisting(Kind::Services))
        );
        k.listed(Kind::Services, t0 + secs(5), t0 + secs(6));
        assert!(k.all_fresh(t0 + secs(6)));
        // Silence: nodes and pods were last heard from at t0.
        assert_eq!(
            k.first_staleness(t0 + secs(91)),
            Some(Staleness::Silent(Kind::Nodes, secs(91)))
        );
        for kind in Kind::ALL {
            k.confirmed(kind, t0 + secs(91));
        }
        assert!(k.all_fresh(t0 + secs(91)));
    }

    #[test]
    fn a_resumed_watch_proves_nothing_until_a_bookmark() {
        let t0 = Instant::now();
        let mut k = fresh_at(t0);
        k.failed(Kind::EndpointSlices, t0 + secs(1));
        k.resumed(Kind::EndpointSlices, t0 + secs(20));
        assert_eq!(
            k.first_staleness(t0 + secs(20)),
            Some(Staleness::CatchingUp(Kind::EndpointSlices))
        );
        // A replayed event shows life, not currency.
        k.confirmed(Kind::EndpointSlices, t0 + secs(21));
        assert_eq!(k.kind(Kind::EndpointSlices).confirmed, None);
        assert!(!k.all_fresh(t0 + secs(21)));
        k.bookmarked(Kind::EndpointSlices, t0 + secs(22));
        assert_eq!(k.kind(Kind::EndpointSlices).confirmed, Some(t0 + secs(22)));
        assert!(k.all_fresh(t0 + secs(22)));
    }

    #[test]
    fn a_backend_seen_removed_goes_at_once_but_only_on_a_fresh_view() {
        let t0 = Instant::now();
        let mut k = fresh_at(t0);
        let mut g = gate();
        let s = stale(Evidence::Removed, vip());
        assert_eq!(g.decide(1, (), &s, &k, t0), Decision::Delete);
        k.failed(Kind::EndpointSlices, t0 + secs(1));
        assert_eq!(g.decide(1, (), &s, &k, t0 + secs(1)), Decision::Hold);
        assert!(
            g.is_empty(),
            "held removed-backend flows are found again by a pass"
        );
    }

    #[test]
    fn a_removed_backend_waits_when_the_view_is_older_than_the_grace() {
        // The agent saw the backend leave, but its slices watch then froze: the backend may
        // have come back long ago (a readiness flap) without the agent hearing of it.
        let t0 = Instant::now();
        let mut k = fresh_at(t0);
        let mut g = gate();
        let s = stale(Evidence::Removed, vip());
        // The list of t0 proves the view current as of t0: good for two graces.
        assert_eq!(g.decide(1, (), &s, &k, t0 + secs(9)), Decision::Delete);
        for n in [11, 30, 89] {
            assert_eq!(
                g.decide(1, (), &s, &k, t0 + secs(n)),
                Decision::Defer,
                "at +{n}s"
            );
        }
        assert_eq!(g.len(), 1, "remembered for the re-check");
        // A bookmark of each deciding kind brings the view up to date.
        k.confirmed(Kind::Services, t0 + secs(89));
        k.confirmed(Kind::EndpointSlices, t0 + secs(89));
        assert_eq!(g.decide(1, (), &s, &k, t0 + secs(90)), Decision::Delete);
        assert!(g.is_empty());
    }

    #[test]
    fn a_never_seen_backend_waits_for_an_event_received_a_grace_after_the_flow() {
        let t0 = Instant::now();
        let mut k = fresh_at(t0);
        let mut g = gate();
        let s = stale(Evidence::Unseen, vip());
        let seen = t0 + secs(10);
        assert_eq!(g.decide(7, (), &s, &k, seen), Decision::Defer);
        // Events before first_seen + grace prove nothing: they may precede the backend.
        k.confirmed(Kind::Services, seen + secs(4));
        k.confirmed(Kind::EndpointSlices, seen + secs(4));
        assert_eq!(g.decide(7, (), &s, &k, seen + secs(6)), Decision::Defer);
        // A bookmark of another kind proves nothing about a live Service's backends.
        k.confirmed(Kind::Services, seen + secs(6));
        assert_eq!(g.decide(7, (), &s, &k, seen + secs(6)), Decision::Defer);
        k.confirmed(Kind::EndpointSlices, seen + secs(6));
        assert_eq!(g.decide(7, (), &s, &k, seen + secs(6)), Decision::Delete);
        assert!(g.is_empty());
    }

    #[test]
    fn a_frozen_watch_never_proves_a_never_seen_backend_gone() {
        let t0 = Instant::now();
        let k = fresh_at(t0);
        let mut g = gate();
        let s = stale(Evidence::Unseen, vip());
        for n in 1..200 {
            let d = g.decide(3, (), &s, &k, t0 + secs(n));
            assert_ne!(d, Decision::Delete, "at +{n}s");
        }
    }

    #[test]
    fn a_list_requested_after_the_flow_proves_a_never_seen_backend_gone_at_once() {
        let t0 = Instant::now();
        let mut k = fresh_at(t0);
        let mut g = gate();
        let s = stale(Evidence::Unseen, vip());
        assert_eq!(g.decide(7, (), &s, &k, t0 + secs(1)), Decision::Defer);
        // A relist requested after the flow was first seen holds every backend it could have.
        for kind in [Kind::Services, Kind::EndpointSlices] {
            k.relist_started(kind, t0 + secs(2));
            k.listed(kind, t0 + secs(2), t0 + secs(3));
        }
        assert_eq!(g.decide(7, (), &s, &k, t0 + secs(3)), Decision::Delete);
    }

    #[test]
    fn flows_walked_before_the_first_list_are_proven_by_it() {
        // After a restart: the table is walked at t0, the lists are requested at t0 + 1 s, the
        // startup pass judges at t0 + 2 s.
        let t0 = Instant::now();
        let k = fresh_at(t0 + secs(1));
        let mut g = gate();
        g.seen_before(t0, vec![Gate::<u32, ()>::fingerprint(&7)]);
        let s = stale(Evidence::Unseen, vip());
        assert_eq!(g.decide(7, (), &s, &k, t0 + secs(2)), Decision::Delete);
        // A flow not in the walk may be newer than the lists.
        assert_eq!(g.decide(8, (), &s, &k, t0 + secs(2)), Decision::Defer);
        g.clear_seen_before();
        assert_eq!(g.decide(9, (), &s, &k, t0 + secs(2)), Decision::Defer);
    }

    #[test]
    fn a_deleted_services_flows_are_decided_by_the_service_watch() {
        let t0 = Instant::now();
        let mut k = fresh_at(t0);
        let mut g = gate();
        let s = Stale {
            reason: Reason::ServiceDeleted,
            ..stale(Evidence::Removed, vip())
        };
        // Only a Service can make such a flow healthy again (a new owner of the address).
        k.confirmed(Kind::EndpointSlices, t0 + secs(20));
        assert_eq!(g.decide(1, (), &s, &k, t0 + secs(20)), Decision::Defer);
        k.confirmed(Kind::Services, t0 + secs(20));
        assert_eq!(g.decide(1, (), &s, &k, t0 + secs(20)), Decision::Delete);
    }

    #[test]
    fn host_ports_are_decided_by_the_pod_watch() {
        let t0 = Instant::now();
        let mut k = fresh_at(t0);
        let mut g = gate();
        let s = stale(
            Evidence::Unseen,
            Frontend::HostPort("192.168.1.2:8125".parse().unwrap()),
        );
        assert_eq!(g.decide(1, (), &s, &k, t0 + secs(1)), Decision::Defer);
        k.confirmed(Kind::Services, t0 + secs(7));
        k.confirmed(Kind::EndpointSlices, t0 + secs(7));
        assert_eq!(g.decide(1, (), &s, &k, t0 + secs(7)), Decision::Defer);
        k.confirmed(Kind::Pods, t0 + secs(7));
        assert_eq!(g.decide(1, (), &s, &k, t0 + secs(7)), Decision::Delete);
    }

    #[test]
    fn a_recheck_does_not_count_as_a_sighting() {
        let t0 = Instant::now();
        let k = fresh_at(t0);
        let mut g = gate();
        let s = stale(Evidence::Unseen, vip());
        assert_eq!(g.decide(1, (), &s, &k, t0 + secs(1)), Decision::Defer);
        assert_eq!(g.recheck(&1, &s, &k, t0 + secs(30)), Decision::Defer);
        let last_seen = g.waiting().map(|(_, w)| w.last_seen).next();
        assert_eq!(last_seen, Some(t0 + secs(1)));
        assert_eq!(
            g.recheck(&2, &s, &k, t0 + secs(30)),
            Decision::Defer,
            "not waiting"
        );
        g.retain(|_, w| w.last_seen > t0 + secs(10));
        assert!(g.is_empty());
    }

    #[test]
    fn waiting_flows_are_bounded_and_forgotten() {
        let t0 = Instant::now();
        let k = fresh_at(t0);
        let mut g: Gate<u32, ()> = Gate::new(GateConfig {
            grace: GRACE,
            max_waiting: 2,
            forget_after: secs(60),
        });
        let s = stale(Evidence::Unseen, vip());
        for key in 0..5 {
            assert_eq!(g.decide(key, (), &s, &k, t0 + secs(1)), Decision::Defer);
        }
        assert_eq!(g.len(), 2);
        assert_eq!(g.decide(0, (), &s, &k, t0 + secs(30)), Decision::Defer);
        assert_eq!(g.sweep(t0 + secs(61)), 1, "key 1 was not seen for 61 s");
        assert_eq!(g.waiting().map(|(k, _)| *k).collect::<Vec<_>>(), vec![0]);
        g.forget(&0);
        assert!(g.is_empty());
    }
}
