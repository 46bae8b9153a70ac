//! `check --stats`: the table's health in one screen — size and limit, the kernel's counters
//! and how they moved during the check, UDP flows per Service frontend — with a one-line
//! diagnosis for each known pattern behind UDP timeouts.

use crate::pass::tally::{FlowTally, FrontendFigures, MAX_SERIES};
use anyhow::{Context, Result};
use ctdiff::Index;
use ctnetlink::{StatCounters, Stats, StatsReader};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The table is "nearly full" from this fill ratio on (the alert uses the same threshold).
pub const FULL_RATIO: f64 = 0.8;

/// Shortest time between the two readings, so that "rising" means something.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The first reading, taken before the check's dump.
#[derive(Debug)]
pub struct StatsSampler {
    reader: StatsReader,
    before: Stats,
    started: Instant,
}

impl StatsSampler {
    /// Takes the first reading of the table in `netns` (the current namespace when `None`).
    pub fn start(netns: Option<&Path>) -> Result<Self> {
        let mut reader = StatsReader::open_maybe_in(netns)
            .context("opening a socket for the conntrack statistics")?;
        let before = reader.read().context("reading the conntrack statistics")?;
        Ok(StatsSampler {
            reader,
            before,
            started: Instant::now(),
        })
    }

    /// Takes the second reading (at least a second after the first) and names the pass's
    /// per-frontend counts with `index`.
    pub fn finish(
        mut self,
        tally: &FlowTally,
        index: &Index,
        now: Instant,
    ) -> Result<StatsSummary> {
        std::thread::sleep(MIN_INTERVAL.saturating_sub(self.started.elapsed()));
        let after = self
            .reader
            .read()
            .context("reading the conntrack statistics again")?;
        Ok(StatsSummary {
            interval: self.started.elapsed(),
            before: self.before,
            after,
            frontends: tally.resolve(index, now, MAX_SERIES),
        })
    }
}

/// Two readings of the kernel's statistics and the pass's per-frontend figures.
#[derive(Debug, Clone)]
pub struct StatsSummary {
    /// The first reading.
    pub before: Stats,
    /// The second reading.
    pub after: Stats,
    /// Time between them.
    pub interval: Duration,
    /// UDP flows per frontend, and stale flows the check leaves in the table.
    pub frontends: FrontendFigures,
}

/// A known pattern, found in the figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// A stable identifier (`table-nearly-full`, `insert-failed-rising`, …).
    pub code: &'static str,
    /// One line for a person.
    pub message: String,
}

fn delta(after: &StatCounters, before: &StatCounters) -> Vec<(&'static str, u64)> {
    after
        .named()
        .iter()
        .zip(before.named())
        .map(|((name, a), (_, b))| (*name, a.saturating_sub(b)))
        .filter(|(_, d)| *d > 0)
        .collect()
}

impl StatsSummary {
    /// Counters that grew between the readings, by name.
    pub fn changed(&self) -> Vec<(&'static str, u64)> {
        delta(&self.after.counters, &self.before.counters)
    }

    /// The known patterns these figures show, most urgent first.
    pub fn diagnoses(&self) -> Vec<Diagnosis> {
        let mut out = Vec::new();
        let table = self.after.table;
        let counters = self.after.counters;
        let changed = self.changed();
        let grew = |name: &str| {
            changed
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, d)| *d)
        };
        if table.max_entries > 0 && table.fill_ratio() >= FULL_RATIO {
            out.push(Diagnosis {
                code: "table-nearly-full",
                message: format!(
                    "the conntrack table is {:.0}% full ({} of {}): new flows are dropped once it fills; raise nf_conntrack_max or find what fills it",
                    table.fill_ratio() * 100.0,
                    table.entries,
                    table.max_entries
                ),
            });
        }
        if counters.drop > 0 || counters.early_drop > 0 {
            out.push(Diagnosis {
                code: "table-full-drops",
                message: format!(
                    "the kernel dropped {} packets and evicted {} entries early for lack of room ({} and {} during the check): the table has been full",
                    counters.drop,
                    counters.early_drop,
                    grew("drop"),
                    grew("early_drop")
                ),
            });
        }
        let failed_now = grew("insert_failed");
        if failed_now > 0 {
            out.push(Diagnosis {
                code: "insert-failed-rising",
                message: format!(
                    "insert_failed is rising (+{failed_now} in {:.1}s): the parallel A/AAAA DNS race (two queries from one UDP socket at once); expect 5 s lookup delays — use `options single-request-reopen`, NodeLocal DNSCache or DNS over TCP",
                    self.interval.as_secs_f64()
                ),
            });
        } else if counters.insert_failed > 0 {
            out.push(Diagnosis {
                code: "insert-failed-seen",
                message: format!(
                    "insert_failed is {} since boot but did not move during the check: insert races (the A/AAAA DNS race) happened before; watch the metric's rate",
                    counters.insert_failed
                ),
            });
        }
        let stale = self.frontends.stale_left_total();
        if stale > 0 {
            out.push(Diagnosis {
                code: "stale-flows-present",
                message: format!(
                    "{stale} stale UDP flows are in the table: their clients' packets go to backends that are gone until they are deleted (run with --delete, or check that the agent runs, is not in dry run, and is not held by its deletion budget)"
                ),
            });
        }
        out
    }

    /// The JSON form, under the `stats` key of `check -o json`.
    pub fn to_json(&self) -> serde_json::Value {
        let counters: serde_json::Map<String, serde_json::Value> = self
            .after
            .counters
            .named()
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).into()))
            .collect();
        let changed: serde_json::Map<String, serde_json::Value> = self
            .changed()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.into()))
            .collect();
        serde_json::json!({
            "source": self.after.source.as_str(),
            "cpus": self.after.cpus,
            "entries": self.after.table.entries,
            "max_entries": self.after.table.max_entries,
            "fill_ratio": self.after.table.fill_ratio(),
            "counters": counters,
            "interval_seconds": self.interval.as_secs_f64(),
            "changed": changed,
            "udp_flows": self.frontends.flows.iter().map(|f| serde_json::json!({
                "service": f.service, "frontend": f.frontend, "flows": f.flows,
            })).collect::<Vec<_>>(),
            "stale_left": self.frontends.stale_left.iter().map(|s| serde_json::json!({
                "service": s.service, "reason": s.reason, "flows": s.flows,
            })).collect::<Vec<_>>(),
            "diagnoses": self.diagnoses(),
        })
    }

    /// The text form, printed after `check`'s own report.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let s = &self.after;
        writeln!(out)?;
        writeln!(
            out,
            "conntrack table: {} of {} entries ({:.1}% full); statistics from {}, {} CPUs",
            s.table.entries,
            s.table.max_entries,
            s.table.fill_ratio() * 100.0,
            s.source.as_str(),
            s.cpus
        )?;
        let counters: Vec<String> = s
            .counters
            .named()
            .iter()
            .map(|(name, value)| format!("{name} {value}"))
            .collect();
        writeln!(
            out,
            "kernel counters since boot, summed over CPUs: {}",
            counters.join(", ")
        )?;
        let changed: Vec<String> = self
            .changed()
            .iter()
            .map(|(name, d)| format!("{name} +{d}"))
            .collect();
        writeln!(
            out,
            "changed during the check ({:.1}s): {}",
            self.interval.as_secs_f64(),
            if changed.is_empty() {
                "nothing".to_owned()
            } else {
                changed.join(", ")
            }
        )?;
        if !self.frontends.flows.is_empty() {
            writeln!(out, "UDP flows by service frontend:")?;
            let width = |f: fn(&crate::pass::tally::FrontendFlows) -> usize, header: &str| {
                self.frontends
                    .flows
                    .iter()
                    .map(f)
                    .max()
                    .unwrap_or(0)
                    .max(header.len())
            };
            let sw = width(|f| f.service.len(), "SERVICE");
            let fw = width(|f| f.frontend.len(), "FRONTEND");
            writeln!(out, "  {:<sw$}  {:<fw$}  FLOWS", "SERVICE", "FRONTEND")?;
            for f in &self.frontends.flows {
                writeln!(
                    out,
                    "  {:<sw$}  {:<fw$}  {}",
                    f.service, f.frontend, f.flows
                )?;
            }
        }
        let diagnoses = self.diagnoses();
        if diagnoses.is_empty() {
            writeln!(out, "diagnosis: no known problem pattern")?;
        }
        for d in diagnoses {
            writeln!(out, "diagnosis [{}]: {}", d.code, d.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pass::tally::StaleLeft;
    use ctnetlink::{StatsSource, TableCount};

    fn stats(entries: u64, insert_failed: u64, drop: u64) -> Stats {
        Stats {
            table: TableCount {
                entries,
                max_entries: 1000,
            },
            counters: StatCounters {
                insert_failed,
                drop,
                ..StatCounters::default()
            },
            cpus: 2,
            source: StatsSource::Netlink,
        }
    }

    fn summary(before: Stats, after: Stats, stale: u64) -> StatsSummary {
        StatsSummary {
            before,
            after,
            interval: Duration::from_secs(1),
            frontends: FrontendFigures {
                flows: vec![],
                stale_left: if stale > 0 {
                    vec![StaleLeft {
                        service: "kube-system/dns".into(),
                        reason: "endpoint-gone".into(),
                        flows: stale,
                    }]
                } else {
                    vec![]
                },
            },
        }
    }

    fn codes(s: &StatsSummary) -> Vec<&'static str> {
        s.diagnoses().iter().map(|d| d.code).collect()
    }

    #[test]
    fn a_healthy_table_has_no_diagnosis() {
        let s = summary(stats(10, 0, 0), stats(12, 0, 0), 0);
        assert!(codes(&s).is_empty());
        let mut text = Vec::new();
        s.write_text(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("conntrack table: 12 of 1000 entries (1.2% full)"),
            "{text}"
        );
        assert!(
            text.contains("diagnosis: no known problem pattern"),
            "{text}"
        );
    }

    #[test]
    fn each_known_pattern_gets_its_line() {
        let s = summary(stats(700, 3, 0), stats(850, 7, 2), 4);
        assert_eq!(
            codes(&s),
            [
                "table-nearly-full",
                "table-full-drops",
                "insert-failed-rising",
                "stale-flows-present"
            ]
        );
        assert_eq!(s.changed(), [("insert_failed", 4), ("drop", 2)]);
        let json = s.to_json();
        assert_eq!(json["entries"], 850);
        assert_eq!(json["changed"]["insert_failed"], 4);
        assert_eq!(json["diagnoses"][2]["code"], "insert-failed-rising");
        // Old failures that do not move are reported as such, not as rising.
        let old = summary(stats(10, 5, 0), stats(10, 5, 0), 0);
        assert_eq!(codes(&old), ["insert-failed-seen"]);
    }
}
