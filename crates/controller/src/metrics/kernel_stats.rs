//! Metrics about the node's conntrack table itself, next to the reconciler's own: size and
//! limit, the kernel's per-CPU counters summed (what `conntrack -S` shows), UDP flows per
//! Service frontend and the stale flows left in the table.
//!
//! A prometheus-client [`Collector`] encodes them at scrape time. The kernel figures are read
//! then (one ctnetlink exchange, O(CPUs), never a dump); the per-frontend figures are the last
//! pass's, swapped in whole after each pass so a scrape never sees half of one.
//!
//! The kernel's counters are exported as counters (`_total`): they only grow, from the
//! namespace's creation. Each CPU's is a 32-bit integer in the kernel, so on a busy node one
//! can wrap; `rate()` then sees a reset and under-counts that one interval.

use crate::pass::tally::FrontendFigures;
use crate::http::Health;
use ctnetlink::{Stats, StatsReader};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The table metrics, shared by the pass loop (which records) and the admin server (which
/// encodes).
#[derive(Debug)]
pub struct TableMetrics {
    netns: Option<PathBuf>,
    /// Opened lazily and reopened after an error, so a transient failure heals by itself.
    reader: Mutex<Option<StatsReader>>,
    figures: Mutex<Arc<FrontendFigures>>,
    health: Arc<Health>,
    /// Failed reads, encoded by the collector right after the read it counts.
    read_errors: AtomicU64,
}

impl TableMetrics {
    /// Registers the table metrics under `conntrack_reconciler_`, reading the table of
    /// `netns` (the current namespace when `None`).
    pub fn register(
        registry: &mut Registry,
        netns: Option<&Path>,
        health: Arc<Health>,
    ) -> Arc<TableMetrics> {
        let metrics = Arc::new(TableMetrics {
            netns: netns.map(Path::to_path_buf),
            reader: Mutex::new(None),
            figures: Mutex::new(Arc::default()),
            health,
            read_errors: AtomicU64::new(0),
        });
        let r = registry.sub_registry_with_prefix("conntrack_reconciler");
        r.register_collector(Box::new(Arc::clone(&metrics)));
        metrics
    }

    /// Replaces the per-frontend figures with a finished pass's.
    pub fn record_pass(&self, figures: FrontendFigures) {
        *self.figures.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(figures);
    }

    /// Reads the kernel's statistics now.
    fn read_stats(&self) -> Option<Stats> {
        let mut reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        if reader.is_none() {
            match StatsReader::open_maybe_in(self.netns.as_deref()) {
                Ok(opened) => *reader = Some(opened),
                Err(e) => {
                    self.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot open a socket for conntrack statistics");
                    return None;
                }
            }
        }
        let result = reader.as_mut()?.read();
        match result {
            Ok(stats) => Some(stats),
            Err(e) => {
                self.read_errors.fetch_add(1, Ordering::Relaxed);
                *reader = None;
                tracing::warn!(error = %e, "cannot read conntrack statistics");
                None
            }
        }
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<i64>,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value.unwrap_or(0));
    let family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    if value.is_some() {
        metric.encode(family)?;
    }
    Ok(())
}

/// Help text of each kernel counter, by the name `StatCounters::named` gives it.
fn counter_help(name: &str) -> &'static str {
    match name {
        "found" => "Conntrack lookups that found an existing entry (kernel, summed over CPUs)",
        "invalid" => "Packets conntrack could not track (kernel, summed over CPUs)",
        "insert" => "Conntrack entries inserted (kernel, summed over CPUs)",
        "insert_failed" => {
            "Conntrack inserts that failed, e.g. the parallel A/AAAA DNS race (kernel, summed over CPUs)"
        }
        "drop" => {
            "Packets dropped because no conntrack entry could be made, e.g. table full (kernel, summed over CPUs)"
        }
        "early_drop" => {
            "Conntrack entries evicted early to make room in a full table (kernel, summed over CPUs)"
        }
        "error" => "Packets conntrack refused as erroneous (kernel, summed over CPUs)",
        "search_restart" => {
            "Conntrack lookups restarted by a concurrent table resize (kernel, summed over CPUs)"
        }
        "clash_resolve" => {
            "Conntrack insert races resolved by reusing the winning entry (kernel, summed over CPUs)"
        }
        "chain_toolong" => {
            "Conntrack inserts refused because a hash chain was too long (kernel, summed over CPUs)"
        }
        _ => "Conntrack kernel counter (summed over CPUs)",
    }
}

impl Collector for TableMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ready =
            self.health.is_ready() && self.health.is_alive() && self.health.stale().is_none();
        gauge(
            &mut encoder,
            "ready",
            "1 when the agent is ready (every watch listed, a pass succeeded) and its pass loop is alive",
            Some(i64::from(ready)),
        )?;

        // Descriptors are written whatever happens, so every name is always listed; samples
        // only when the kernel answered.
        let stats = self.read_stats();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "table_entries",
            "Entries in the node's conntrack table (nf_conntrack_count)",
            stats.map(|s| clamp(s.table.entries)),
        )?;
        gauge(
            &mut encoder,
            "table_entries_limit",
            "Most entries the conntrack table may hold (nf_conntrack_max)",
            stats.map(|s| clamp(s.table.max_entries)),
        )?;
        let errors = ConstCounter::new(self.read_errors.load(Ordering::Relaxed));
        let family = encoder.encode_descriptor(
            "table_stats_read_errors",
            "Scrapes at which the kernel's conntrack statistics could not be read",
            None,
            errors.metric_type(),
        )?;
        errors.encode(family)?;
        let named = stats.map(|s| s.counters.named());
        for (index, name) in ctnetlink::StatCounters::default()
            .named()
            .iter()
            .map(|(name, _)| *name)
            .enumerate()
        {
            let metric = ConstCounter::new(named.map_or(0, |n| n[index].1));
            let full_name = format!("table_{name}");
            let family = encoder.encode_descriptor(
                &full_name,
                counter_help(name),
                None,
                metric.metric_type(),
            )?;
            if named.is_some() {
                metric.encode(family)?;
            }
        }

        let figures = self
            .figures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let probe = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "udp_flows",
            "UDP conntrack flows to each Service frontend at the last pass (largest series; the rest under service=\"other\")",
            None,
            probe.metric_type(),
        )?;
        for f in &figures.flows {
            let labels = [
                ("service", f.service.as_str()),
                ("frontend", f.frontend.as_str()),
            ];
            ConstGauge::new(clamp(f.flows)).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "stale_flows_left",
            "Stale UDP flows the last pass found and left in the table (dry run, deletion budget, outside its scope), by owner and reason",
            None,
            probe.metric_type(),
        )?;
        for s in &figures.stale_left {
            let labels = [
                ("service", s.service.as_str()),
                ("reason", s.reason.as_str()),
            ];
            ConstGauge::new(clamp(s.flows)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pass::tally::{FrontendFlows, StaleLeft};
    use prometheus_client::encoding::text::encode;
    use std::time::Duration;

    #[test]
    fn every_family_is_described_and_last_pass_figures_are_labelled() {
        let mut registry = Registry::default();
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        // A namespace path that does not exist: the kernel figures cannot be read, which must
        // be counted and must not hide the other metrics.
        let table = TableMetrics::register(
            &mut registry,
            Some(Path::new("/nonexistent/netns")),
            health.clone(),
        );
        table.record_pass(FrontendFigures {
            flows: vec![FrontendFlows {
                service: "kube-system/dns".into(),
                frontend: "10.96.0.10:53".into(),
                flows: 7,
            }],
            stale_left: vec![StaleLeft {
                service: "kube-system/dns".into(),
                reason: "endpoint-gone".into(),
                flows: 2,
            }],
        });
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        for line in [
            "# TYPE conntrack_reconciler_table_entries gauge",
            "# TYPE conntrack_reconciler_table_entries_limit gauge",
            "# TYPE conntrack_reconciler_table_insert_failed counter",
            "# TYPE conntrack_reconciler_table_chain_toolong counter",
            "conntrack_reconciler_ready 0",
            "conntrack_reconciler_udp_flows{service=\"kube-system/dns\",frontend=\"10.96.0.10:53\"} 7",
            "conntrack_reconciler_stale_flows_left{service=\"kube-system/dns\",reason=\"endpoint-gone\"} 2",
            "conntrack_reconciler_table_stats_read_errors_total 1",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert!(
            !out.lines()
                .any(|l| l.starts_with("conntrack_reconciler_table_entries ")),
            "no sample without a reading:\n{out}"
        );
        health.set_ready();
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(out.contains("conntrack_reconciler_ready 1"), "{out}");
    }
}
