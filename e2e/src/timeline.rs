//! A shared, timestamped record of what happened during a scenario (printed by the demo).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the clock the lab's processes share.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One timeline entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When, in Unix microseconds.
    pub t_us: u64,
    /// Who: `lab`, `kube-proxy`, `agent`, `client`.
    pub source: String,
    /// What happened.
    pub text: String,
}

/// A cloneable handle on the scenario's timeline.
#[derive(Debug, Clone, Default)]
pub struct Timeline(Arc<Mutex<Vec<Entry>>>);

impl Timeline {
    /// Records an entry now.
    pub fn record(&self, source: &str, text: impl Into<String>) {
        self.record_at(unix_micros(), source, text);
    }

    /// Records an entry at a given time.
    pub fn record_at(&self, t_us: u64, source: &str, text: impl Into<String>) {
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        entries.push(Entry {
            t_us,
            source: source.to_string(),
            text: text.into(),
        });
    }

    /// Every entry, in time order.
    pub fn entries(&self) -> Vec<Entry> {
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        entries.sort_by_key(|e| e.t_us);
        entries
    }

    /// The entries as readable lines, times relative to `origin_us`.
    pub fn render(&self, origin_us: u64) -> String {
        self.entries()
            .iter()
            .map(|e| {
                let delta = e.t_us as i64 - origin_us as i64;
                format!(
                    "{:>+9.3}s  {:<10}  {}\n",
                    delta as f64 / 1e6,
                    e.source,
                    e.text
                )
            })
            .collect()
    }
}
