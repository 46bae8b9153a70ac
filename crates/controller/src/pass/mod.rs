//! One reconcile pass over one IP family: streaming UDP dump → verdicts → decisions → batched
//! delete.
//!
//! Shared by `run` and `check`. The index is read-locked per flow during the dump, so watch
//! updates are never held up by a long dump. Verdicts can go stale while the dump runs (a slice
//! may arrive meanwhile), so every candidate is judged again against the index as it is *after*
//! the dump, and only then handed to the [`FlowGate`] (fresh, positive evidence) and the budget.
//! Dumps may repeat an entry while the table changes: candidates are de-duplicated first, so
//! the budget and the tallies count each entry once.

pub mod tally;

use crate::pass::tally::FlowTally;
use crate::scheduler::Scope;
use ctdiff::{Decision, Frontend, Gate, Index, Reason, Verdict};
use ctnetlink::{Conntrack, DumpFilter, Family, Flow, FlowKey};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// The gate every deletion of `run` goes through, remembering the flows that wait for proof.
pub type FlowGate = Gate<FlowKey, Flow>;

/// How a pass behaves.
#[derive(Debug, Clone, Copy)]
pub struct PassConfig {
    /// The family to dump.
    pub family: Family,
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
    /// The flow as dumped.
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

/// What a pass saw and did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// UDP flows examined.
    pub scanned: u64,
    /// Stale flows in scope that the gate let through, in dump order, at most `budget` of them
    /// when a budget is set: deleted (or, in a dry run, reported).
    pub stale: Vec<StaleFlow>,
    /// Stale flows beyond the budget, by reason: found but left for a later pass.
    pub over_budget: Vec<(Reason, u64)>,
    /// Stale flows the gate deferred (backend never seen; the view is not yet proven newer).
    pub deferred: u64,
    /// Stale flows the gate held (the view is not fresh).
    pub held: u64,
    /// Flows judged stale during the dump but not any more when judged again after it.
    pub recovered: u64,
    /// Flows deleted.
    pub deleted: u64,
    /// Flows that were gone before the delete reached them.
    pub already_gone: u64,
    /// Deletions the kernel refused, with why.
    pub failed: Vec<(FlowKey, String)>,
    /// Flows per frontend and stale flows left behind, for the table metrics.
    pub tally: FlowTally,
}

impl PassReport {
    /// Whether the budget stopped the pass from deleting everything stale.
    pub fn budget_hit(&self) -> bool {
        !self.over_budget.is_empty()
    }

    /// Deletes `stale` by exact key and records the outcome.
    pub fn delete_stale(&mut self, ct: &mut Conntrack) -> Result<(), ctnetlink::Error> {
        if self.stale.is_empty() {
            return Ok(());
        }
        let deleted = ct.delete(self.stale.iter().map(|s| s.flow.key()))?;
        self.deleted = deleted.deleted;
        self.already_gone = deleted.already_gone;
        self.failed = deleted
            .failed
            .into_iter()
            .map(|(key, err)| (key, err.to_string()))
            .collect();
        Ok(())
    }
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

/// The part of a flow classification needs.
pub fn flow_ref(flow: &Flow) -> ctdiff::FlowRef {
    ctdiff::FlowRef {
        proto: flow.orig.proto,
        orig_dst: SocketAddr::new(flow.orig.dst, flow.orig.dport),
        reply_src: SocketAddr::new(flow.reply.src, flow.reply.sport),
    }
}

/// Whether a verdict's frontend falls within a scope. A scope names a host port on every node
/// address with the unspecified IP, as ctdiff's dirty sets do.
fn in_scope(scope: &Scope<Frontend>, frontend: &Frontend) -> bool {
    scope.covers(frontend)
        || matches!(frontend, Frontend::HostPort(addr) if {
            let any: std::net::IpAddr = if addr.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            scope.covers(&Frontend::HostPort(SocketAddr::new(any, addr.port())))
        })
}

/// Runs one pass over `cfg.family`'s UDP flows within `scope`. Without a `gate` every stale
/// flow is acted on (`check`, whose state is a complete one-shot snapshot); with one, only what
/// the gate lets through.
pub fn run_pass(
    ct: &mut Conntrack,
    index: &RwLock<Index>,
    gate: Option<&Mutex<FlowGate>>,
    scope: &Scope<Frontend>,
    cfg: &PassConfig,
    now: Instant,
) -> Result<PassReport, ctnetlink::Error> {
    let filter = DumpFilter {
        family: Some(cfg.family),
        proto: Some(ctnetlink::proto::UDP),
        ..Default::default()
    };
    let mut report = PassReport::default();
    let mut seen: HashSet<FlowKey> = HashSet::new();
    let mut candidates: Vec<Flow> = Vec::new();
    // Candidates beyond twice the budget cannot be deleted by this pass anyway (the gate
    // may defer some): count them without keeping them.
    let keep_at_most = match cfg.budget {
        0 => usize::MAX,
        b => usize::try_from(b.saturating_mul(2)).unwrap_or(usize::MAX),
    };
    // The filter holds for every flow handed out (ctnetlink re-applies it in user space).
    ct.dump(&filter, |flow| {
        if flow.zone != cfg.zone {
            return;
        }
        report.scanned += 1;
        let index = index.read().unwrap_or_else(PoisonError::into_inner);
        let fref = flow_ref(flow);
        let stale = match index.classify(&fref, now) {
            Verdict::Unrelated => return,
            Verdict::Keep => {
                report.tally.flow(fref.orig_dst);
                return;
            }
            Verdict::Stale(stale) => stale,
        };
        if !seen.insert(flow.key()) {
            return; // a dump may hand out an entry twice while the table changes
        }
        report.tally.flow(fref.orig_dst);
        if !in_scope(scope, &stale.frontend) {
            report.tally.left(fref.orig_dst, stale.reason);
        } else if candidates.len() < keep_at_most {
            candidates.push(*flow);
        } else {
            report.tally.left(fref.orig_dst, stale.reason);
            count_reason(&mut report.over_budget, stale.reason);
        }
    })?;
    decide(index, gate, candidates, cfg, &mut report);
    if !cfg.dry_run {
        report.delete_stale(ct)?;
    }
    Ok(report)
}

fn count_reason(counts: &mut Vec<(Reason, u64)>, reason: Reason) {
    match counts.iter_mut().find(|(r, _)| *r == reason) {
        Some((_, n)) => *n += 1,
        None => counts.push((reason, 1)),
    }
}

/// Judges the dump's candidates again, now, and fills `report.stale` with what the gate and
/// the budget let through.
fn decide(
    index: &RwLock<Index>,
    gate: Option<&Mutex<FlowGate>>,
    candidates: Vec<Flow>,
    cfg: &PassConfig,
    report: &mut PassReport,
) {
    let budget = match cfg.budget {
        0 => u64::MAX,
        b => b,
    };
    let now = Instant::now();
    let index = index.read().unwrap_or_else(PoisonError::into_inner);
    let mut gate = gate.map(|g| g.lock().unwrap_or_else(PoisonError::into_inner));
    for flow in candidates {
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
                if cfg.dry_run {
                    report.tally.left(fref.orig_dst, stale.reason);
                }
                report.stale.push(StaleFlow::new(flow, &stale));
            }
            Decision::Delete => {
                report.tally.left(fref.orig_dst, stale.reason);
                count_reason(&mut report.over_budget, stale.reason);
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
    let overdue_after = gate
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .config()
        .grace
        .saturating_mul(PROOF_OVERDUE_GRACES)
        .max(MIN_PROOF_OVERDUE);
    let budget = match budget {
        0 => usize::MAX,
        b => usize::try_from(b).unwrap_or(usize::MAX),
    };
    let index = index.read().unwrap_or_else(PoisonError::into_inner);
    let mut gate = gate.lock().unwrap_or_else(PoisonError::into_inner);
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
mod tests {
    use super::*;
    use ctdiff::{GateConfig, IndexConfig, Kind};
    use ctnetlink::{Status, Tuple};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;
    use std::time::Duration;

    fn service() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "dns", "namespace": "d"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap()
    }

    fn slice(ready: &[(&str, bool)]) -> EndpointSlice {
        let endpoints: Vec<_> = ready
            .iter()
            .map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r, "serving": r}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "dns-1", "namespace": "d",
                         "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"port": 5353, "protocol": "UDP"}]
        }))
        .unwrap()
    }

    fn flow(sport: u16, backend: &str) -> Flow {
        let client = "10.244.2.9".parse().unwrap();
        let vip = "10.96.0.10".parse().unwrap();
        let backend = backend.parse().unwrap();
        Flow {
            family: Family::V4,
            orig: Tuple::new(client, vip, ctnetlink::proto::UDP, sport, 53),
            reply: Tuple::new(backend, client, ctnetlink::proto::UDP, 5353, sport),
            status: Status::CONFIRMED,
            mark: 0,
            zone: 0,
            timeout: 30,
            id: u32::from(sport),
            zone_dir: ctnetlink::ZoneDir::Both,
        }
    }

    /// An index listed at `t0` with `ready`, where 10.244.0.2 was seen leaving.
    fn index(t0: Instant) -> RwLock<Index> {
        let mut index = Index::new(IndexConfig::new("n1"));
        let _ = index.reset_services([&service()], t0);
        let _ = index
            .reset_endpoint_slices([&slice(&[("10.244.0.1", true), ("10.244.0.2", true)])], t0);
        let _ = index.reset_pods([], t0);
        let _ =
            index.apply_endpoint_slice(&slice(&[("10.244.0.1", true), ("10.244.0.2", false)]), t0);
        for kind in Kind::ALL {
            index.knowledge_mut().relist_started(kind, t0);
            index.knowledge_mut().listed(kind, t0, t0);
        }
        RwLock::new(index)
    }

    fn cfg() -> PassConfig {
        PassConfig {
            family: Family::V4,
            dry_run: false,
            budget: 0,
            zone: 0,
        }
    }

    #[test]
    fn a_verdict_that_went_stale_during_the_dump_is_not_acted_on() {
        let t0 = Instant::now();
        let index = index(t0);
        let gate = Mutex::new(FlowGate::new(GateConfig::default()));
        let mut report = PassReport::default();
        // Judged stale while dumping; the slice flips it back to ready before the delete.
        let _ = index
            .write()
            .unwrap()
            .apply_endpoint_slice(&slice(&[("10.244.0.1", true), ("10.244.0.2", true)]), t0);
        decide(
            &index,
            Some(&gate),
            vec![flow(4000, "10.244.0.2")],
            &cfg(),
            &mut report,
        );
        assert!(report.stale.is_empty(), "{report:?}");
        assert_eq!(report.recovered, 1);
    }

    #[test]
    fn the_budget_caps_deletions_and_counts_the_rest_by_reason() {
        let t0 = Instant::now();
        let index = index(t0);
        let gate = Mutex::new(FlowGate::new(GateConfig::default()));
        let mut report = PassReport::default();
        let flows: Vec<Flow> = (0..5).map(|i| flow(4000 + i, "10.244.0.2")).collect();
        decide(
            &index,
            Some(&gate),
            flows,
            &PassConfig { budget: 3, ..cfg() },
            &mut report,
        );
        assert_eq!(report.stale.len(), 3);
        assert_eq!(report.over_budget, vec![(Reason::EndpointNotServing, 2)]);
    }

    #[test]
    fn the_gate_defers_never_seen_backends_and_holds_on_a_stale_view() {
        let t0 = Instant::now();
        let index = index(t0);
        let gate = Mutex::new(FlowGate::new(GateConfig::default()));
        let mut report = PassReport::default();
        decide(
            &index,
            Some(&gate),
            vec![flow(4000, "10.244.0.9")],
            &cfg(),
            &mut report,
        );
        assert!(report.stale.is_empty());
        assert_eq!(report.deferred, 1);
        assert_eq!(gate.lock().unwrap().len(), 1);
        // Nothing proves the view newer than the flow yet; a bookmark a grace later does.
        let later = Instant::now() + Duration::from_secs(6);
        let found = recheck_waiting(&index, &gate, later, 0);
        assert!(found.delete.is_empty());
        for kind in Kind::ALL {
            index
                .write()
                .unwrap()
                .knowledge_mut()
                .bookmarked(kind, later);
        }
        let found = recheck_waiting(&index, &gate, later, 0);
        assert_eq!(found.delete.len(), 1);
        // A failing watch holds even positive evidence.
        index
            .write()
            .unwrap()
            .knowledge_mut()
            .failed(Kind::EndpointSlices, later);
        let mut report = PassReport::default();
        decide(
            &index,
            Some(&gate),
            vec![flow(4001, "10.244.0.2")],
            &cfg(),
            &mut report,
        );
        assert_eq!((report.stale.len(), report.held), (0, 1));
    }
}
