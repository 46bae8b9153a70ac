//! One reconcile pass over one IP family: streaming UDP dump → verdicts → batched delete.
//!
//! Shared by `run` and `check`. The index is read-locked per flow, not per pass, so watch updates
//! are never held up by a long dump; every state the index can be in is a complete one (see
//! `feed`), so each flow is judged against complete knowledge. Dumps may repeat an entry while
//! the table changes: stale keys are de-duplicated before deletion.

use crate::flow_tally::FlowTally;
use crate::scheduler::Scope;
use ctdiff::{Frontend, Index, Reason, Verdict};
use ctnetlink::{Conntrack, DumpFilter, Family, Flow, FlowKey};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{PoisonError, RwLock};
use std::time::Instant;

/// How a pass behaves.
#[derive(Debug, Clone, Copy)]
pub struct PassConfig {
    /// The family to dump.
    pub family: Family,
    /// Decide and report, delete nothing.
    pub dry_run: bool,
    /// Delete at most this many flows (0: no limit).
    pub budget: u64,
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
}

/// What a pass saw and did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// UDP flows examined.
    pub scanned: u64,
    /// Stale flows in scope, in dump order, at most `budget` of them when a budget is set.
    pub stale: Vec<StaleFlow>,
    /// Stale flows beyond the budget, by reason: found but left for a later pass.
    pub over_budget: Vec<(Reason, u64)>,
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

/// Runs one pass over `cfg.family`'s UDP flows within `scope`.
pub fn run_pass(
    ct: &mut Conntrack,
    index: &RwLock<Index>,
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
    let budget = if cfg.budget == 0 {
        u64::MAX
    } else {
        cfg.budget
    };
    // The filter holds for every flow handed out (ctnetlink re-applies it in user space).
    ct.dump(&filter, |flow| {
        report.scanned += 1;
        let index = index.read().unwrap_or_else(PoisonError::into_inner);
        let fref = flow_ref(flow);
        let stale = match index.classify(&fref, now) {
            Verdict::Unrelated => return,
            Verdict::Keep => {
                report.tally.flow(fref.orig_dst);
                return;
            }
            Verdict::Stale(stale) => {
                report.tally.flow(fref.orig_dst);
                stale
            }
        };
        if !in_scope(scope, &stale.frontend) {
            report.tally.left(fref.orig_dst, stale.reason);
            return;
        }
        if (report.stale.len() as u64) < budget {
            if !seen.insert(flow.key()) {
                return; // a dump may hand out an entry twice while the table changes
            }
            if cfg.dry_run {
                report.tally.left(fref.orig_dst, stale.reason);
            }
            report.stale.push(StaleFlow {
                flow: *flow,
                service: stale.service.to_string(),
                port: stale.port.to_owned(),
                frontend: stale.frontend,
                reason: stale.reason,
            });
        } else {
            report.tally.left(fref.orig_dst, stale.reason);
            match report
                .over_budget
                .iter_mut()
                .find(|(r, _)| *r == stale.reason)
            {
                Some((_, n)) => *n += 1,
                None => report.over_budget.push((stale.reason, 1)),
            }
        }
    })?;
    if !cfg.dry_run && !report.stale.is_empty() {
        let deleted = ct.delete(report.stale.iter().map(|s| s.flow.key()))?;
        report.deleted = deleted.deleted;
        report.already_gone = deleted.already_gone;
        report.failed = deleted
            .failed
            .into_iter()
            .map(|(key, err)| (key, err.to_string()))
            .collect();
    }
    Ok(report)
}
