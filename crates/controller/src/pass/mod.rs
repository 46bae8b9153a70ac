//! One reconcile pass: walk (a kernel dump) → plan ([`planner`], pure) → delete by exact key.
//!
//! Shared by `run` and `check`. The index is read-locked per flow during the walk, so watch
//! updates are never held up by a long dump; the planner judges every candidate again after
//! the walk. Re-checks of the flows the gate keeps waiting are judged from memory, no walk.

pub mod flow_cache;
pub mod planner;
pub mod record;
pub mod table;
pub mod tally;
pub mod walk;

pub use flow_cache::{FlowCache, SeedToken};
pub use planner::{FlowGate, PassReport, PlanConfig, Planner, StaleFlow, flow_ref};
pub use table::{FakeTable, Table};
pub use walk::WalkChooser;

use ctdiff::{Decision, Dirty, Index, Verdict};
use ctnetlink::{Family, Flow, FlowKey};
use std::collections::HashSet;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// A random seed for this process's hash tables whose keys carry addresses and ports that
/// remote peers choose (the flow cache, the pass's set of stale keys): drawn once.
pub fn process_hash_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u64)
    })
}

/// How a pass behaves.
#[derive(Debug, Clone, Copy)]
pub struct PassConfig {
    /// The family to judge (None: both, in one walk).
    pub family: Option<Family>,
    /// Decide and report, delete nothing.
    pub dry_run: bool,
    /// Delete at most this many flows (0: no limit).
    pub budget: u64,
    /// The conntrack zone judged; entries of other zones (OVS, OVN, Antrea…) are left alone.
    pub zone: u16,
}

impl PassConfig {
    fn plan(&self) -> PlanConfig {
        PlanConfig {
            dry_run: self.dry_run,
            budget: self.budget,
            zone: self.zone,
        }
    }
}

/// Runs one pass over `cfg.family`'s UDP flows within `scope`, walking the table. Without a
/// `gate` every stale flow is acted on (`check`, whose state is a complete one-shot snapshot);
/// with one, only what the gate lets through.
pub fn run_pass(
    table: &mut impl Table,
    index: &RwLock<Index>,
    gate: Option<&Mutex<FlowGate>>,
    scope: &Dirty,
    cfg: &PassConfig,
    now: Instant,
) -> Result<PassReport, ctnetlink::Error> {
    let sources = Sources {
        cache: None,
        walks: &mut WalkChooser::default(),
    };
    run_pass_with(table, index, gate, sources, scope, cfg, now)
}

/// Where a pass's flows come from besides a walk, and how it walks.
pub struct Sources<'a> {
    /// The flow cache: serves scoped passes while complete; full walks seed it.
    pub cache: Option<&'a Mutex<FlowCache>>,
    /// Chooses one dump of both families or one per family.
    pub walks: &'a mut WalkChooser,
}

/// Runs one pass. A scoped pass is served from the cache when it is complete (no table walk);
/// otherwise the table is walked, and the walk seeds the cache.
pub fn run_pass_with(
    table: &mut impl Table,
    index: &RwLock<Index>,
    gate: Option<&Mutex<FlowGate>>,
    sources: Sources<'_>,
    scope: &Dirty,
    cfg: &PassConfig,
    now: Instant,
) -> Result<PassReport, ctnetlink::Error> {
    let Sources { cache, walks } = sources;
    let mut planner = Planner::new(cfg.plan(), scope);
    let served_by = cache.filter(|c| {
        c.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .can_serve(scope)
    });
    let mut missed: HashSet<FlowKey> = HashSet::new();
    let walked = served_by.is_none();
    match served_by {
        Some(cache) => {
            // One frontend at a time: the copy out of the cache is one frontend's flows, and
            // neither lock is held while the other is taken.
            let mut flows = Vec::new();
            for frontend in &scope.frontends {
                flows.clear();
                cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .flows_of(frontend, &mut flows);
                let index = index.read().unwrap_or_else(PoisonError::into_inner);
                for flow in flows
                    .iter()
                    .filter(|f| cfg.family.is_none_or(|fam| fam == f.family))
                {
                    planner.observe(&index, flow, now);
                }
            }
        }
        None => {
            // Every walk reads the whole table of the reconciled families, a scoped one too: it
            // re-seeds the cache while events are followed, so that after a loss the next
            // scoped pass is a lookup again rather than another walk. A full walk also tells
            // which flows a complete cache had missed (expected none).
            let seeding =
                cache.filter(|c| c.lock().unwrap_or_else(PoisonError::into_inner).can_seed());
            let seed = seeding.map(|c| {
                let mut c = c.lock().unwrap_or_else(PoisonError::into_inner);
                (c.is_complete(), c.begin_seed())
            });
            for filter in walks.filters(cfg.family) {
                let stats = table.walk(&filter, &mut |flow| {
                    if let (Some(cache), Some((was_complete, _))) = (seeding, seed) {
                        let lacked = cache
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .seed(flow);
                        if lacked && was_complete {
                            missed.insert(flow.key());
                        }
                    }
                    let index = index.read().unwrap_or_else(PoisonError::into_inner);
                    planner.observe(&index, flow, now);
                })?;
                walks.observe(&filter, &stats);
            }
            if let (Some(cache), Some((_, token))) = (seeding, seed) {
                cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .finish_seed(token);
            }
        }
    }
    let mut report = {
        let index = index.read().unwrap_or_else(PoisonError::into_inner);
        let mut gate = gate.map(|g| g.lock().unwrap_or_else(PoisonError::into_inner));
        planner.decide(&index, gate.as_deref_mut(), Instant::now())
    };
    report.walked = walked;
    report.missed_by_cache = report
        .stale
        .iter()
        .filter(|s| missed.contains(&s.flow.key()))
        .count() as u64;
    if !cfg.dry_run {
        report.delete_stale(table)?;
    }
    Ok(report)
}

impl PassReport {
    /// Deletes the report's stale flows by exact key and records the outcome.
    pub fn delete_stale(&mut self, table: &mut impl Table) -> Result<(), ctnetlink::Error> {
        if !self.stale.is_empty() {
            let outcome = table.delete(self.keys())?;
            self.record_deletes(outcome);
        }
        Ok(())
    }
}

/// The waiting flows (deferred by the gate) that may be deleted now, at most `budget` of them
/// (0: no limit), judged from memory against the current index: no table walk. Flows no longer
/// stale are forgotten.
pub fn recheck_waiting(
    index: &RwLock<Index>,
    gate: &Mutex<FlowGate>,
    now: Instant,
    budget: u64,
) -> Recheck {
    let index = index.read().unwrap_or_else(PoisonError::into_inner);
    let mut gate = gate.lock().unwrap_or_else(PoisonError::into_inner);
    recheck_gate(&index, &mut gate, now, budget)
}

/// [`recheck_waiting`] on locked state.
pub fn recheck_gate(index: &Index, gate: &mut FlowGate, now: Instant, budget: u64) -> Recheck {
    let overdue_after = gate
        .config()
        .grace
        .saturating_mul(PROOF_OVERDUE_GRACES)
        .max(MIN_PROOF_OVERDUE);
    let budget = match budget {
        0 => usize::MAX,
        b => usize::try_from(b).unwrap_or(usize::MAX),
    };
    let mut out = Recheck::default();
    // A flow not seen again (by a pass or an event) within its conntrack timeout has most
    // likely expired: forget it rather than keep deleting a key nobody has seen.
    let before = gate.len();
    gate.retain(|_, w| {
        let lifetime = Duration::from_secs(u64::from(w.flow.timeout)).max(MIN_WAITING_LIFETIME);
        now.saturating_duration_since(w.last_seen) <= lifetime
    });
    out.forgotten = before - gate.len();
    let waiting: Vec<(FlowKey, Flow, Instant)> = gate
        .waiting()
        .map(|(k, w)| (*k, w.flow, w.first_seen))
        .collect();
    for (key, flow, first_seen) in waiting {
        if out.delete.len() >= budget {
            out.budget_hit = true;
            break; // the rest waits for the next re-check
        }
        let Verdict::Stale(stale) = index.classify(&flow_ref(&flow), now) else {
            gate.forget(&key);
            out.recovered += 1;
            continue;
        };
        match gate.recheck(&key, &stale, index.knowledge(), now) {
            Decision::Delete => out.delete.push(StaleFlow::new(flow, &stale)),
            Decision::Defer | Decision::Hold => {
                out.still_waiting += 1;
                let kind = ctdiff::deciding_kind(&stale);
                let waited = now.saturating_duration_since(first_seen);
                if waited >= overdue_after && !out.overdue.contains(&kind) {
                    out.overdue.push(kind);
                }
            }
        }
    }
    out.forgotten += gate.sweep(now);
    out
}

/// The least time a waiting flow is kept without being seen again (UDP's stream timeout).
const MIN_WAITING_LIFETIME: Duration = Duration::from_secs(120);

/// What a re-check of the waiting flows found.
#[derive(Debug, Default)]
pub struct Recheck {
    /// Flows to delete now.
    pub delete: Vec<StaleFlow>,
    /// Flows that still wait.
    pub still_waiting: u64,
    /// Flows no longer stale.
    pub recovered: u64,
    /// Flows forgotten (not seen stale for long).
    pub forgotten: usize,
    /// Whether the deletion budget stopped the re-check.
    pub budget_hit: bool,
    /// Kinds whose view some flow has waited on for [`PROOF_OVERDUE_GRACES`] graces: no event
    /// or bookmark came, and a list would prove it.
    pub overdue: Vec<ctdiff::Kind>,
}

/// How many graces a flow may wait for an event or bookmark to prove its verdict before the
/// agent lists the deciding kind again to get that proof (a minute at the default grace, about
/// when an API server sends its next bookmark).
pub const PROOF_OVERDUE_GRACES: u32 = 12;

/// The least time a flow waits for proof before a list is asked for (whatever the grace).
pub const MIN_PROOF_OVERDUE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests;
