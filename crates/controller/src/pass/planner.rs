//! The pass planner: what a pass deletes, decided without I/O.
//!
//! A pass feeds the planner every flow it walks ([`Planner::observe`]: classification, zone,
//! scope, de-duplication, tallies), then asks it to decide ([`Planner::decide`]): each candidate
//! is judged again against the index as it is *now* (a slice may have arrived while the table
//! was walked), then goes through the gate (fresh, positive evidence), then the budget. The keys
//! to delete are in [`PassReport::stale`]. Nothing here touches the kernel, so every rule is unit
//! tested without root; the pass itself ([`super::run_pass`]) is walk → plan → delete.

use super::tally::FlowTally;
use ctdiff::{Decision, Dirty, DirtyMatcher, Frontend, Gate, Index, Reason, Verdict};
use ctnetlink::{Flow, FlowKey};
use foldhash::fast::FixedState;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

/// The gate every deletion of `run` goes through, remembering the flows that wait for proof.
pub type FlowGate = Gate<FlowKey, Flow>;

/// How a pass decides.
#[derive(Debug, Clone, Copy)]
pub struct PlanConfig {
    /// Decide and report, delete nothing.
    pub dry_run: bool,
    /// Delete at most this many flows (0: no limit).
    pub budget: u64,
    /// The conntrack zone judged; entries of other zones (OVS, OVN, Antrea…) are left alone.
    pub zone: u16,
}

/// A stale flow, with the verdict's details, owned so it can outlive the index lock.
#[derive(Debug, Clone)]
pub struct StaleFlow {
    /// The flow as walked.
    pub flow: Flow,
    /// `namespace/name` of the service.
    pub service: String,
    /// The service port's name (empty when unnamed).
    pub port: String,
    /// The frontend the flow was sent to.
    pub frontend: Frontend,
    /// Why it is stale.
    pub reason: Reason,
    /// Whether the agent saw the backend leave or merely does not know it.
    pub evidence: ctdiff::Evidence,
}

impl StaleFlow {
    /// The flow with its verdict's details.
    pub fn new(flow: Flow, stale: &ctdiff::Stale<'_>) -> Self {
        StaleFlow {
            flow,
            service: stale.service.to_string(),
            port: stale.port.to_owned(),
            frontend: stale.frontend,
            reason: stale.reason,
            evidence: stale.evidence,
        }
    }
}

/// What a pass saw and did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// UDP flows of the judged zone examined (stale ones counted once each).
    pub scanned: u64,
    /// Of `scanned`, the IPv6 ones.
    pub scanned_v6: u64,
    /// Stale flows in scope that the gate let through, in walk order, at most `budget` of them
    /// when a budget is set: deleted (or, in a dry run, reported).
    pub stale: Vec<StaleFlow>,
    /// Stale flows beyond the budget, by family and reason: found but left for a later pass.
    pub over_budget: Vec<(ctnetlink::Family, Reason, u64)>,
    /// Stale flows the gate deferred (backend never seen; the view is not yet proven newer).
    pub deferred: u64,
    /// Stale flows the gate held (the view is not fresh).
    pub held: u64,
    /// Flows judged stale during the walk but not any more when judged again after it.
    pub recovered: u64,
    /// Flows deleted.
    pub deleted: u64,
    /// Flows that were gone before the delete reached them.
    pub already_gone: u64,
    /// Deletions the kernel refused, with why.
    pub failed: Vec<(FlowKey, String)>,
    /// Flows per frontend and stale flows left behind, for the table metrics.
    pub tally: FlowTally,
    /// Whether the table was walked (false: the flows came from the flow cache).
    pub walked: bool,
    /// Stale flows acted on that a complete flow cache lacked (expected 0): found by a full
    /// walk, which a scoped pass served by the cache would have missed.
    pub missed_by_cache: u64,
}

impl PassReport {
    /// Whether the budget stopped the pass from deleting everything stale.
    pub fn budget_hit(&self) -> bool {
        !self.over_budget.is_empty()
    }

    /// Flows examined, by family.
    pub fn scanned_by_family(&self) -> [(ctnetlink::Family, u64); 2] {
        [
            (ctnetlink::Family::V4, self.scanned - self.scanned_v6),
            (ctnetlink::Family::V6, self.scanned_v6),
        ]
    }

    fn count_scanned(&mut self, flow: &Flow) {
        self.scanned += 1;
        if flow.family == ctnetlink::Family::V6 {
            self.scanned_v6 += 1;
        }
    }

    /// The exact keys of the flows to delete.
    pub fn keys(&self) -> Vec<FlowKey> {
        self.stale.iter().map(|s| s.flow.key()).collect()
    }

    /// Records the kernel's answer to deleting [`PassReport::keys`].
    pub fn record_deletes(&mut self, outcome: ctnetlink::DeleteReport) {
        self.deleted = outcome.deleted;
        self.already_gone = outcome.already_gone;
        self.failed = outcome
            .failed
            .into_iter()
            .map(|(key, err)| (key, err.to_string()))
            .collect();
    }
}

/// The part of a flow classification needs.
pub fn flow_ref(flow: &Flow) -> ctdiff::FlowRef {
    ctdiff::FlowRef {
        proto: flow.orig.proto,
        orig_dst: SocketAddr::new(flow.orig.dst, flow.orig.dport),
        reply_src: SocketAddr::new(flow.reply.src, flow.reply.sport),
    }
}

/// Decides one pass from the flows it is fed.
#[derive(Debug)]
pub struct Planner {
    cfg: PlanConfig,
    scope: DirtyMatcher,
    seen: HashSet<FlowKey, FixedState>,
    candidates: Vec<Flow>,
    /// Candidates beyond this cannot be deleted by this pass anyway (twice the budget: the gate
    /// may defer some); they are counted without being kept.
    keep_at_most: usize,
    report: PassReport,
}

impl Planner {
    /// A planner for the flows in `scope` (a [`Dirty`] with `all` for a full pass).
    pub fn new(cfg: PlanConfig, scope: &Dirty) -> Self {
        let keep_at_most = match cfg.budget {
            0 => usize::MAX,
            b => usize::try_from(b.saturating_mul(2)).unwrap_or(usize::MAX),
        };
        Planner {
            cfg,
            scope: scope.matcher(),
            seen: HashSet::with_hasher(FixedState::with_seed(super::process_hash_seed())),
            candidates: Vec::new(),
            keep_at_most,
            report: PassReport::default(),
        }
    }

    /// Looks at one walked flow. Walks may hand out an entry twice while the table changes:
    /// each entry is counted and kept once.
    pub fn observe(&mut self, index: &Index, flow: &Flow, now: Instant) {
        if flow.zone != self.cfg.zone || flow.orig.proto != ctnetlink::proto::UDP {
            return;
        }
        let fref = flow_ref(flow);
        let stale = match index.classify(&fref, now) {
            Verdict::Unrelated => {
                self.report.count_scanned(flow);
                return;
            }
            Verdict::Keep => {
                // Kept flows are not de-duplicated: a set of every healthy key would cost more
                // than the table's own size, and a repeat only nudges a count of a table that
                // changes during the walk anyway.
                self.report.count_scanned(flow);
                self.report.tally.flow(fref.orig_dst);
                return;
            }
            Verdict::Stale(stale) => stale,
        };
        if !self.seen.insert(flow.key()) {
            return; // a walk may hand out an entry twice while the table changes
        }
        self.report.count_scanned(flow);
        self.report.tally.flow(fref.orig_dst);
        if !self.scope.covers(&fref) {
            self.report.tally.left(fref.orig_dst, stale.reason);
        } else if self.candidates.len() < self.keep_at_most {
            self.candidates.push(*flow);
        } else {
            self.report.tally.left(fref.orig_dst, stale.reason);
            count_reason(&mut self.report.over_budget, flow.family, stale.reason);
        }
    }

    /// Judges the candidates again against `index` as it is now and fills the report's stale
    /// list with what `gate` (none: a one-shot `check` of a complete snapshot) and the budget
    /// let through.
    pub fn decide(
        mut self,
        index: &Index,
        mut gate: Option<&mut FlowGate>,
        now: Instant,
    ) -> PassReport {
        let budget = match self.cfg.budget {
            0 => u64::MAX,
            b => b,
        };
        let report = &mut self.report;
        for flow in std::mem::take(&mut self.candidates) {
            let fref = flow_ref(&flow);
            let Verdict::Stale(stale) = index.classify(&fref, now) else {
                if let Some(gate) = gate.as_mut() {
                    gate.forget(&flow.key());
                }
                report.recovered += 1;
                continue;
            };
            let decision = match gate.as_mut() {
                Some(gate) => gate.decide(flow.key(), flow, &stale, index.knowledge(), now),
                None => Decision::Delete,
            };
            match decision {
                Decision::Delete if (report.stale.len() as u64) < budget => {
                    if self.cfg.dry_run {
                        report.tally.left(fref.orig_dst, stale.reason);
                    }
                    report.stale.push(StaleFlow::new(flow, &stale));
                }
                Decision::Delete => {
                    report.tally.left(fref.orig_dst, stale.reason);
                    count_reason(&mut report.over_budget, flow.family, stale.reason);
                }
                Decision::Defer => {
                    report.tally.left(fref.orig_dst, stale.reason);
                    report.deferred += 1;
                }
                Decision::Hold => {
                    report.tally.left(fref.orig_dst, stale.reason);
                    report.held += 1;
                }
            }
        }
        self.report
    }
}

fn count_reason(
    counts: &mut Vec<(ctnetlink::Family, Reason, u64)>,
    family: ctnetlink::Family,
    reason: Reason,
) {
    match counts
        .iter_mut()
        .find(|(f, r, _)| *f == family && *r == reason)
    {
        Some((_, _, n)) => *n += 1,
        None => counts.push((family, reason, 1)),
    }
}
