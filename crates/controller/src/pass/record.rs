//! One recorder of what was done to stale flows, shared by passes, re-checks and the event
//! path, so every deletion is counted and logged the same way.

use super::StaleFlow;
use crate::metrics::{FamilyLabels, Metrics, ReasonLabels};

/// Counts and logs one stale flow acted on: deleted, or reported by a dry run (or left over
/// budget, counted as not deleted).
pub fn acted_on(metrics: &Metrics, s: &StaleFlow, dry_run: bool) {
    let counter = if dry_run {
        &metrics.flows_not_deleted
    } else {
        &metrics.flows_deleted
    };
    counter
        .get_or_create(&ReasonLabels {
            ip_family: s.flow.family.into(),
            reason: s.reason.to_string(),
        })
        .inc();
    tracing::debug!(
        flow = %s.flow.orig, backend = %s.flow.reply.src, frontend = %s.frontend, service = %s.service, port = %s.port,
        reason = %s.reason, evidence = %s.evidence, dry_run, "stale flow"
    );
}

/// Counts deletions the kernel refused.
pub fn delete_failed(metrics: &Metrics, family: ctnetlink::Family, n: u64) {
    metrics
        .delete_errors
        .get_or_create(&FamilyLabels {
            ip_family: family.into(),
        })
        .inc_by(n);
}
