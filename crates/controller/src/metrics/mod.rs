//! The agent's Prometheus metrics (prometheus-client: typed, no global registry, OpenMetrics text).
//!
//! Names are prefixed `conntrack_reconciler_`; label values are bounded sets (families, reasons,
//! triggers, kinds), never per-flow or per-service values.

pub mod kernel_stats;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// An IP family label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the values are the label values
pub enum IpFamily {
    /// IPv4.
    ipv4,
    /// IPv6.
    ipv6,
}

impl From<ctnetlink::Family> for IpFamily {
    fn from(f: ctnetlink::Family) -> Self {
        match f {
            ctnetlink::Family::V4 => IpFamily::ipv4,
            ctnetlink::Family::V6 => IpFamily::ipv6,
        }
    }
}

/// Labels `{ip_family}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    /// The IP family.
    pub ip_family: IpFamily,
}

/// Labels `{ip_family, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The IP family.
    pub ip_family: IpFamily,
    /// Why the flow was stale (kebab-case, from ctdiff).
    pub reason: String,
}

/// Labels `{trigger}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// What started the pass.
    pub trigger: Trigger,
}

/// What started a pass.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Trigger {
    /// The first pass after the first complete state.
    startup,
    /// Watch changes (debounced).
    change,
    /// A follow-up pass after a change.
    follow_up,
    /// Conntrack events were lost.
    events_lost,
    /// The event path's rate limit left stale flows of a frontend.
    rate_limited,
    /// The periodic full pass.
    periodic,
    /// The agent's view turned fresh again after stale flows were held.
    view_fresh,
    /// The event subscription is up and the flow cache needs its seeding walk.
    cache_seed,
}

/// Labels `{kind}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// A Kubernetes kind, an index object kind, or an event kind.
    pub kind: &'static str,
}

/// Every metric the agent exports.
pub struct Metrics {
    /// Passes started, by trigger.
    pub passes: Family<TriggerLabels, Counter>,
    /// Passes that failed (dump or socket error), by family.
    pub pass_failures: Family<FamilyLabels, Counter>,
    /// Pass duration, by family.
    pub pass_duration: Family<FamilyLabels, Histogram, fn() -> Histogram>,
    /// UDP flows examined by passes, by family.
    pub flows_scanned: Family<FamilyLabels, Counter>,
    /// Flows deleted, by family and reason (passes and the event path).
    pub flows_deleted: Family<ReasonLabels, Counter>,
    /// Stale flows found but not deleted (dry run or budget), by family and reason.
    pub flows_not_deleted: Family<ReasonLabels, Counter>,
    /// Deletions the kernel refused (other than "already gone"), by family.
    pub delete_errors: Family<FamilyLabels, Counter>,
    /// Passes that hit the deletion budget.
    pub budget_exhausted: Counter,
    /// Conntrack events received, by kind (`new`, `destroy`).
    pub events: Family<KindLabels, Counter>,
    /// Times the kernel reported lost conntrack events.
    pub events_lost: Counter,
    /// Conntrack event messages that could not be parsed and were skipped.
    pub events_malformed: Counter,
    /// Event-path deletions suppressed by the per-frontend rate limit.
    pub event_deletes_rate_limited: Counter,
    /// Unix time of the last pass that completed without error.
    pub last_successful_pass: Gauge<f64, AtomicU64>,
    /// 1 when a watched kind has completed its first list, by kind.
    pub store_ready: Family<KindLabels, Gauge>,
    /// Watch errors, by kind.
    pub watch_errors: Family<KindLabels, Counter>,
    /// Objects skipped or partly skipped as malformed, by kind.
    pub objects_skipped: Family<KindLabels, Counter>,
    /// Index sizes, by kind (services, service_ports, frontends, endpoints, tombstones, host_ports).
    pub index_size: Family<KindLabels, Gauge>,
    /// 1 when every watched kind is fresh (listed, not failing, heard from recently).
    pub view_fresh: Gauge,
    /// 1 when a watched kind is fresh, by kind.
    pub watch_fresh: Family<KindLabels, Gauge>,
    /// Stale flows not deleted yet because of the agent's view, by decision (`defer`: backend
    /// never seen, waiting for proof; `hold`: view not fresh).
    pub flows_postponed: Family<DecisionLabels, Counter>,
    /// Stale flows waiting for proof that their never-seen backend is gone.
    pub flows_waiting: Gauge,
    /// UDP flows in the flow cache (kept by conntrack events; serves scoped passes).
    pub flow_cache_flows: Gauge,
    /// Heap bytes the flow cache holds.
    pub flow_cache_bytes: Gauge,
    /// 1 while the flow cache is trusted to serve scoped passes (seeded, no event lost since).
    pub flow_cache_complete: Gauge,
    /// Stale flows a full pass found that the trusted flow cache lacked (expected 0).
    pub flows_missed_by_cache: Counter,
    /// Passes served by the flow cache, without a table walk.
    pub passes_from_cache: Counter,
}

/// Label of a gate decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `defer` or `hold`.
    pub decision: &'static str,
}

fn pass_histogram() -> Histogram {
    // 1 ms .. ~65 s: a tiny table to a million entries.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    /// Creates the metrics and registers them under `conntrack_reconciler_`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            passes: Family::default(),
            pass_failures: Family::default(),
            pass_duration: Family::new_with_constructor(pass_histogram),
            flows_scanned: Family::default(),
            flows_deleted: Family::default(),
            flows_not_deleted: Family::default(),
            delete_errors: Family::default(),
            budget_exhausted: Counter::default(),
            events: Family::default(),
            events_lost: Counter::default(),
            events_malformed: Counter::default(),
            event_deletes_rate_limited: Counter::default(),
            last_successful_pass: Gauge::default(),
            store_ready: Family::default(),
            watch_errors: Family::default(),
            objects_skipped: Family::default(),
            index_size: Family::default(),
            view_fresh: Gauge::default(),
            watch_fresh: Family::default(),
            flows_postponed: Family::default(),
            flows_waiting: Gauge::default(),
            flow_cache_flows: Gauge::default(),
            flow_cache_bytes: Gauge::default(),
            flow_cache_complete: Gauge::default(),
            flows_missed_by_cache: Counter::default(),
            passes_from_cache: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("conntrack_reconciler");
        r.register(
            "passes",
            "Reconcile passes started, by trigger",
            m.passes.clone(),
        );
        r.register(
            "pass_failures",
            "Reconcile passes that failed, by IP family",
            m.pass_failures.clone(),
        );
        r.register(
            "pass_duration_seconds",
            "Duration of a reconcile pass, by IP family",
            m.pass_duration.clone(),
        );
        r.register(
            "flows_scanned",
            "UDP conntrack flows examined by passes",
            m.flows_scanned.clone(),
        );
        r.register(
            "flows_deleted",
            "Stale conntrack flows deleted, by IP family and reason",
            m.flows_deleted.clone(),
        );
        r.register(
            "flows_not_deleted",
            "Stale conntrack flows found but left (dry run or deletion budget), by IP family and reason",
            m.flows_not_deleted.clone(),
        );
        r.register(
            "delete_errors",
            "Conntrack deletions the kernel refused",
            m.delete_errors.clone(),
        );
        r.register(
            "budget_exhausted",
            "Passes that hit the per-pass deletion budget",
            m.budget_exhausted.clone(),
        );
        r.register(
            "events",
            "Conntrack events received, by kind",
            m.events.clone(),
        );
        r.register(
            "events_lost",
            "Times the kernel reported lost conntrack events",
            m.events_lost.clone(),
        );
        r.register(
            "events_malformed",
            "Conntrack event messages that could not be parsed and were skipped",
            m.events_malformed.clone(),
        );
        r.register(
            "event_deletes_rate_limited",
            "Event-path deletions suppressed by the per-frontend rate limit",
            m.event_deletes_rate_limited.clone(),
        );
        r.register(
            "last_successful_pass_timestamp_seconds",
            "Unix time of the last reconcile pass that completed without error",
            m.last_successful_pass.clone(),
        );
        r.register(
            "store_ready",
            "1 when a watched kind has completed its first list",
            m.store_ready.clone(),
        );
        r.register(
            "watch_errors",
            "Watch errors, by kind",
            m.watch_errors.clone(),
        );
        r.register(
            "objects_skipped",
            "Kubernetes objects skipped in whole or part as malformed",
            m.objects_skipped.clone(),
        );
        r.register(
            "index_objects",
            "Objects held by the stale-flow index, by kind",
            m.index_size.clone(),
        );
        r.register(
            "view_fresh",
            "1 when the agent's view of every watched kind is fresh; stale flows are deleted only then",
            m.view_fresh.clone(),
        );
        r.register(
            "watch_fresh",
            "1 when the agent's view of a watched kind is fresh (listed, not failing, heard from recently), by kind",
            m.watch_fresh.clone(),
        );
        r.register(
            "flows_postponed",
            "Stale flows not deleted yet because of the agent's view: defer (backend never seen, waiting for proof) or hold (view not fresh)",
            m.flows_postponed.clone(),
        );
        r.register(
            "flows_waiting",
            "Stale flows waiting for proof that their never-seen backend is gone",
            m.flows_waiting.clone(),
        );
        r.register(
            "flow_cache_flows",
            "UDP flows in the flow cache kept by conntrack events",
            m.flow_cache_flows.clone(),
        );
        r.register(
            "flow_cache_bytes",
            "Heap bytes the flow cache holds",
            m.flow_cache_bytes.clone(),
        );
        r.register(
            "flow_cache_complete",
            "1 while the flow cache serves scoped passes (seeded, no event lost since)",
            m.flow_cache_complete.clone(),
        );
        r.register(
            "flows_missed_by_cache",
            "Stale flows a full pass found that the trusted flow cache lacked (expected 0)",
            m.flows_missed_by_cache.clone(),
        );
        r.register(
            "passes_from_cache",
            "Passes served by the flow cache without a table walk",
            m.passes_from_cache.clone(),
        );
        m.preinit();
        m
    }

    /// Counts stale flows the gate did not let through.
    pub fn postponed(&self, decision: ctdiff::Decision) {
        self.postponed_by(decision, 1);
    }

    /// Counts `n` stale flows the gate did not let through.
    pub fn postponed_by(&self, decision: ctdiff::Decision, n: u64) {
        if n > 0 {
            self.flows_postponed
                .get_or_create(&DecisionLabels {
                    decision: decision.as_str(),
                })
                .inc_by(n);
        }
    }

    /// Records how fresh the agent's view is.
    pub fn record_knowledge(&self, knowledge: &ctdiff::Knowledge, now: std::time::Instant) {
        let mut all = true;
        for kind in ctdiff::Kind::ALL {
            let fresh = knowledge.staleness(kind, now).is_none();
            all &= fresh;
            self.watch_fresh
                .get_or_create(&KindLabels {
                    kind: kind.as_str(),
                })
                .set(i64::from(fresh));
        }
        self.view_fresh.set(i64::from(all));
    }

    /// Creates at 0 every series whose labels are known in advance, so that each metric is
    /// listed from the first scrape (docs/metrics.md is checked against it) and `increase()`
    /// sees the first event instead of a series appearing at 1.
    fn preinit(&self) {
        for ip_family in [IpFamily::ipv4, IpFamily::ipv6] {
            let fam = FamilyLabels {
                ip_family: ip_family.clone(),
            };
            let _ = self.pass_failures.get_or_create(&fam);
            let _ = self.delete_errors.get_or_create(&fam);
            for reason in ctdiff::Reason::ALL {
                let labels = ReasonLabels {
                    ip_family: ip_family.clone(),
                    reason: reason.to_string(),
                };
                let _ = self.flows_deleted.get_or_create(&labels);
                let _ = self.flows_not_deleted.get_or_create(&labels);
            }
        }
        for kind in ["new", "destroy"] {
            let _ = self.events.get_or_create(&KindLabels { kind });
        }
        for kind in ctdiff::Kind::ALL.map(ctdiff::Kind::as_str) {
            let _ = self.watch_errors.get_or_create(&KindLabels { kind });
            let _ = self.objects_skipped.get_or_create(&KindLabels { kind });
            let _ = self.watch_fresh.get_or_create(&KindLabels { kind });
        }
        for decision in [ctdiff::Decision::Defer, ctdiff::Decision::Hold] {
            let _ = self.flows_postponed.get_or_create(&DecisionLabels {
                decision: decision.as_str(),
            });
        }
    }

    /// Records the index's sizes.
    pub fn record_index(&self, stats: &ctdiff::IndexStats) {
        for (kind, value) in [
            ("services", stats.services),
            ("service_ports", stats.service_ports),
            ("frontends", stats.frontends),
            ("endpoints", stats.endpoints),
            ("tombstones", stats.tombstones),
            ("host_ports", stats.host_ports),
        ] {
            self.index_size
                .get_or_create(&KindLabels { kind })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn metrics_encode_with_prefix_and_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.flows_deleted
            .get_or_create(&ReasonLabels {
                ip_family: IpFamily::ipv6,
                reason: "endpoint-gone".into(),
            })
            .inc_by(3);
        m.passes
            .get_or_create(&TriggerLabels {
                trigger: Trigger::follow_up,
            })
            .inc();
        m.pass_duration
            .get_or_create(&FamilyLabels {
                ip_family: IpFamily::ipv4,
            })
            .observe(0.25);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(out.contains(
            "conntrack_reconciler_flows_deleted_total{ip_family=\"ipv6\",reason=\"endpoint-gone\"} 3"
        ), "{out}");
        assert!(
            out.contains("conntrack_reconciler_passes_total{trigger=\"follow_up\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("conntrack_reconciler_pass_duration_seconds_count{ip_family=\"ipv4\"} 1"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"));
    }
}
