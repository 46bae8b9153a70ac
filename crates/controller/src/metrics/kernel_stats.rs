//! Metrics about the node's conntrack table itself, next to the reconciler's own: size and
//! limit, the kernel's per-CPU counters summed (what `conntrack -S` shows), UDP flows per
//! Service frontend and the stale flows left in the table.
//!
//! A prometheus-client [`Collector`] encodes them at scrape time from memory only, so a scrape
//! never waits for the kernel:
//! - the kernel figures come from a thread of their own ([`TableMetrics::register`] starts it)
//!   that owns a ctnetlink statistics handle and reads them every [`SAMPLE_INTERVAL`] (one
//!   exchange, O(CPUs), never a dump); a scrape encodes the last sample and its age. A sample
//!   older than [`MAX_SAMPLE_AGE`] is not encoded (a stuck or failing sampler shows as a gap,
//!   not as frozen figures), but its age is;
//! - the per-frontend figures are the last pass's, swapped in whole after each pass so a scrape
//!   never sees half of one.
//!
//! The kernel's counters are exported as counters (`_total`): they only grow, from the
//! namespace's creation. Each CPU's is a 32-bit integer in the kernel, so on a busy node one
//! can wrap; `rate()` then sees a reset and under-counts that one interval.

use crate::health::Health;
use crate::pass::tally::FrontendFigures;
use ctnetlink::{Stats, StatsReader};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// How often the sampler thread reads the kernel's statistics. Well under Prometheus' usual
/// scrape intervals, so each scrape sees a recent sample; each read is one small exchange.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// The oldest sample a scrape still encodes: older means two samples in a row failed or the
/// sampler is stuck.
pub const MAX_SAMPLE_AGE: Duration = SAMPLE_INTERVAL.saturating_mul(3);

/// The table metrics, shared by the pass loop (which records) and the admin server (which
/// encodes).
#[derive(Debug)]
pub struct TableMetrics {
    figures: Mutex<Arc<FrontendFigures>>,
    health: Arc<Health>,
    kernel: Arc<KernelSamples>,
    /// The sampler thread, woken to stop when the metrics are dropped.
    sampler: Option<std::thread::Thread>,
}

/// What the sampler thread publishes for scrapes.
#[derive(Debug, Default)]
struct KernelSamples {
    /// The last successful sample. The lock is only held to copy a sample in or out.
    last: Mutex<Option<Sample>>,
    /// Samples that failed (no socket, or no answer).
    errors: AtomicU64,
    /// Set when the metrics are dropped.
    stop: AtomicBool,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    stats: Stats,
    at: Instant,
}

impl KernelSamples {
    fn publish(&self, stats: Stats, at: Instant) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Sample { stats, at });
    }

    fn last(&self) -> Option<Sample> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One reading of the kernel's statistics, as the sampler thread takes it.
type ReadStats = Box<dyn FnMut() -> Option<Stats> + Send>;

/// Reads the statistics of `netns` over a handle of its own, opened lazily and reopened after
/// an error, so that a transient failure heals by itself. `None` (logged) when it failed.
fn kernel_reader(netns: Option<PathBuf>) -> ReadStats {
    let mut reader: Option<StatsReader> = None;
    Box::new(move || {
        let open = match reader.take() {
            Some(open) => open,
            None => match StatsReader::open_maybe_in(netns.as_deref()) {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a socket for conntrack statistics");
                    return None;
                }
            },
        };
        let open = reader.insert(open);
        match open.read() {
            Ok(stats) => Some(stats),
            Err(e) => {
                reader = None;
                tracing::warn!(error = %e, "cannot read conntrack statistics");
                None
            }
        }
    })
}

/// The sampler thread: reads every `interval` until the samples' owner is dropped.
fn sample_loop(mut read: ReadStats, samples: Weak<KernelSamples>, interval: Duration) {
    loop {
        // Only a weak reference between samples: dropping the metrics ends the thread.
        let Some(into) = samples.upgrade() else {
            return;
        };
        if into.stop.load(Ordering::Relaxed) {
            return;
        }
        match read() {
            Some(stats) => into.publish(stats, Instant::now()),
            None => {
                into.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(into);
        std::thread::park_timeout(interval);
    }
}

impl TableMetrics {
    /// Registers the table metrics under `conntrack_reconciler_`, reading the table of
    /// `netns` (the current namespace when `None`), and starts the thread that samples the
    /// kernel's statistics every [`SAMPLE_INTERVAL`] (the first sample at once). The thread
    /// ends when the metrics are dropped.
    pub fn register(
        registry: &mut Registry,
        netns: Option<&Path>,
        health: Arc<Health>,
    ) -> Arc<TableMetrics> {
        let read = kernel_reader(netns.map(Path::to_path_buf));
        Self::register_with(registry, health, Some((read, SAMPLE_INTERVAL)))
    }

    /// [`TableMetrics::register`] sampling with `read` every `interval`, or never (`None`:
    /// tests that publish samples themselves).
    fn register_with(
        registry: &mut Registry,
        health: Arc<Health>,
        sampling: Option<(ReadStats, Duration)>,
    ) -> Arc<TableMetrics> {
        let kernel = Arc::new(KernelSamples::default());
        let sampler = sampling.and_then(|(read, interval)| {
            let samples = Arc::downgrade(&kernel);
            let spawned = std::thread::Builder::new()
                .name("conntrack-stats".into())
                .spawn(move || sample_loop(read, samples, interval));
            match spawned {
                Ok(handle) => Some(handle.thread().clone()),
                Err(e) => {
                    // The agent works without these figures; a scrape shows them missing.
                    kernel.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot start the conntrack statistics thread");
                    None
                }
            }
        });
        let metrics = Arc::new(TableMetrics {
            figures: Mutex::new(Arc::default()),
            health,
            kernel,
            sampler,
        });
        let r = registry.sub_registry_with_prefix("conntrack_reconciler");
        r.register_collector(Box::new(Arc::clone(&metrics)));
        metrics
    }

    /// Replaces the per-frontend figures with a finished pass's.
    pub fn record_pass(&self, figures: FrontendFigures) {
        *self.figures.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(figures);
    }
}

impl Drop for TableMetrics {
    fn drop(&mut self) {
        self.kernel.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = &self.sampler {
            thread.unpark();
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
        gauge(
            &mut encoder,
            "ready",
            "1 when the agent is ready (every watch listed, a pass succeeded) and its pass loop is alive",
            Some(i64::from(self.health.is_serving())),
        )?;

        // Descriptors are written whatever happens, so every name is always listed; samples
        // only from a recent enough reading of the kernel.
        let now = Instant::now();
        let last = self.kernel.last();
        let age = last.map(|s| now.saturating_duration_since(s.at));
        let stats = last
            .filter(|s| now.saturating_duration_since(s.at) <= MAX_SAMPLE_AGE)
            .map(|s| s.stats);
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
        let errors = ConstCounter::new(self.kernel.errors.load(Ordering::Relaxed));
        let family = encoder.encode_descriptor(
            "table_stats_read_errors",
            "Samples of the kernel's conntrack statistics that failed (read off the scrape path every few seconds)",
            None,
            errors.metric_type(),
        )?;
        errors.encode(family)?;
        let age_gauge = ConstGauge::new(age.map_or(0.0, |a| a.as_secs_f64()));
        let family = encoder.encode_descriptor(
            "table_stats_age_seconds",
            "Age of the kernel's conntrack statistics encoded here (the last successful sample); the table_* figures are left out past a few missed samples",
            None,
            age_gauge.metric_type(),
        )?;
        if age.is_some() {
            age_gauge.encode(family)?;
        }
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
            "Stale UDP flows the last full pass found and left in the table (dry run, deletion budget, waiting for proof), by owner and reason",
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
    use ctnetlink::{StatCounters, StatsSource, TableCount};
    use prometheus_client::encoding::text::encode;

    fn encoded(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).unwrap();
        out
    }

    fn stats(entries: u64, insert_failed: u64) -> Stats {
        Stats {
            table: TableCount {
                entries,
                max_entries: 262_144,
            },
            counters: StatCounters {
                insert_failed,
                ..StatCounters::default()
            },
            cpus: 2,
            source: StatsSource::Netlink,
        }
    }

    fn has_sample(out: &str, name: &str) -> bool {
        out.lines().any(|l| l.starts_with(&format!("{name} ")))
    }

    #[test]
    fn every_family_is_described_and_last_pass_figures_are_labelled() {
        let mut registry = Registry::default();
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let table = TableMetrics::register_with(&mut registry, health.clone(), None);
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
        let out = encoded(&registry);
        for line in [
            "# TYPE conntrack_reconciler_table_entries gauge",
            "# TYPE conntrack_reconciler_table_entries_limit gauge",
            "# TYPE conntrack_reconciler_table_insert_failed counter",
            "# TYPE conntrack_reconciler_table_chain_toolong counter",
            "# TYPE conntrack_reconciler_table_stats_age_seconds gauge",
            "conntrack_reconciler_ready 0",
            "conntrack_reconciler_udp_flows{service=\"kube-system/dns\",frontend=\"10.96.0.10:53\"} 7",
            "conntrack_reconciler_stale_flows_left{service=\"kube-system/dns\",reason=\"endpoint-gone\"} 2",
            "conntrack_reconciler_table_stats_read_errors_total 0",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        for name in [
            "conntrack_reconciler_table_entries",
            "conntrack_reconciler_table_stats_age_seconds",
            "conntrack_reconciler_table_insert_failed_total",
        ] {
            assert!(
                !has_sample(&out, name),
                "no {name} without a sample:\n{out}"
            );
        }
        health.set_ready();
        assert!(encoded(&registry).contains("conntrack_reconciler_ready 1"));
    }

    #[test]
    fn a_scrape_encodes_the_last_sample_with_its_age_and_drops_an_old_one() {
        let mut registry = Registry::default();
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let table = TableMetrics::register_with(&mut registry, health, None);
        let now = Instant::now();
        table
            .kernel
            .publish(stats(10, 3), now - Duration::from_secs(2));
        let out = encoded(&registry);
        assert!(
            out.contains("conntrack_reconciler_table_entries 10\n"),
            "{out}"
        );
        assert!(out.contains("conntrack_reconciler_table_entries_limit 262144\n"));
        assert!(out.contains("conntrack_reconciler_table_insert_failed_total 3\n"));
        let age: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("conntrack_reconciler_table_stats_age_seconds "))
            .expect("an age sample")
            .parse()
            .unwrap();
        assert!((2.0..MAX_SAMPLE_AGE.as_secs_f64()).contains(&age), "{age}");

        // Past the limit the figures are left out, and the age tells why.
        table
            .kernel
            .publish(stats(11, 3), now - MAX_SAMPLE_AGE - Duration::from_secs(1));
        let out = encoded(&registry);
        assert!(
            !has_sample(&out, "conntrack_reconciler_table_entries"),
            "{out}"
        );
        assert!(!has_sample(
            &out,
            "conntrack_reconciler_table_insert_failed_total"
        ));
        assert!(has_sample(
            &out,
            "conntrack_reconciler_table_stats_age_seconds"
        ));
    }

    /// The sampler thread counts what it cannot read (here a namespace path that does not
    /// exist), and ends once the metrics are dropped.
    #[test]
    fn the_sampler_counts_failures_and_stops_with_the_metrics() {
        let mut registry = Registry::default();
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let table = TableMetrics::register_with(
            &mut registry,
            health,
            Some((
                kernel_reader(Some(PathBuf::from("/nonexistent/netns"))),
                Duration::from_millis(10),
            )),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while table.kernel.errors.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline, "the sampler never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = encoded(&registry);
        assert!(
            !has_sample(&out, "conntrack_reconciler_table_entries"),
            "{out}"
        );
        assert!(!out.contains("conntrack_reconciler_table_stats_read_errors_total 0\n"));

        let samples = Arc::downgrade(&table.kernel);
        drop(table);
        drop(registry);
        // The thread holds the samples only while it samples: once it has seen the stop,
        // nothing keeps them.
        while samples.upgrade().is_some() {
            assert!(
                Instant::now() < deadline,
                "the sampler outlived the metrics"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A scrape never waits for the kernel: while a reading is in progress (here one that
    /// takes seconds), it encodes the previous sample at once.
    #[test]
    fn a_scrape_does_not_wait_for_a_slow_kernel() {
        let mut registry = Registry::default();
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let mut calls = 0u64;
        let read: ReadStats = Box::new(move || {
            calls += 1;
            if calls > 1 {
                let _ = started_tx.send(());
                std::thread::sleep(Duration::from_secs(3));
            }
            Some(stats(calls, 0))
        });
        let table =
            TableMetrics::register_with(&mut registry, health, Some((read, Duration::ZERO)));
        // The second reading is the slow one.
        started_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a second reading");
        let started = Instant::now();
        let out = encoded(&registry);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "the scrape waited {took:?}"
        );
        assert!(
            out.contains("conntrack_reconciler_table_entries 1\n"),
            "{out}"
        );
        drop(table);
    }
}
