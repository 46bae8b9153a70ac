//! Liveness and readiness: the state the agent's tasks update and the admin server reports.
//!
//! Kept apart from HTTP serving ([`crate::http`]) so the rules are plain functions of the state
//! and a time, testable without a server.
//!
//! - *Liveness* is a heartbeat: the pass loop beats whenever it comes round, and the agent is
//!   alive while the last beat is at most the stall limit old. Beats are measured on a
//!   monotonic clock (nanoseconds since the state was made, from [`Instant`]), so a wall-clock
//!   step (NTP, a VM resumed) neither fakes a stall nor hides one.
//! - *Readiness*: unready until the first complete state and first successful pass, and again
//!   whenever the agent's view of the cluster is not fresh (nothing is deleted meanwhile).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Liveness and readiness, shared between the agent's tasks and the admin server.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    /// Why the agent's view is not fresh, if it is not.
    stale: Mutex<Option<String>>,
    /// The last beat, in nanoseconds since `origin`.
    heartbeat_nanos: AtomicU64,
    origin: Instant,
    stall_limit: Duration,
}

/// What `/readyz` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Waiting for every watch's first list and the first successful pass.
    Starting,
    /// Ready once, but the view of the cluster is not fresh now, for this reason.
    Stale(String),
    /// Ready.
    Ready,
}

impl Health {
    /// A new, unready state that has just beaten; the pass loop must beat at least every
    /// `stall_limit`.
    pub fn new(stall_limit: Duration) -> Self {
        Self::new_at(stall_limit, Instant::now())
    }

    /// [`Health::new`] with its clock starting at `origin` (tests).
    pub fn new_at(stall_limit: Duration, origin: Instant) -> Self {
        Health {
            ready: AtomicBool::new(false),
            stale: Mutex::new(None),
            heartbeat_nanos: AtomicU64::new(0),
            origin,
            stall_limit,
        }
    }

    /// Marks the agent ready (first complete state and first successful pass).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Records why the agent's view is not fresh (`None`: it is). `/readyz` fails meanwhile.
    pub fn set_stale(&self, why: Option<String>) {
        *self.stale.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    /// Why the agent's view is not fresh, if it is not.
    pub fn stale(&self) -> Option<String> {
        self.stale
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the agent has become ready (first complete state and first successful pass).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// What `/readyz` reports now.
    pub fn readiness(&self) -> Readiness {
        if !self.is_ready() {
            return Readiness::Starting;
        }
        match self.stale() {
            Some(why) => Readiness::Stale(why),
            None => Readiness::Ready,
        }
    }

    /// Records that the pass loop is making progress.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    /// Records a beat at `now` (a later beat never moves the heartbeat back).
    pub fn beat_at(&self, now: Instant) {
        self.heartbeat_nanos
            .fetch_max(self.nanos(now), Ordering::Relaxed);
    }

    /// Whether the pass loop made progress recently.
    pub fn is_alive(&self) -> bool {
        self.is_alive_at(Instant::now())
    }

    /// Whether the last beat is at most the stall limit old at `now`.
    pub fn is_alive_at(&self, now: Instant) -> bool {
        self.since_beat(now) <= self.stall_limit
    }

    /// How long ago the last beat was, at `now`.
    pub fn since_beat(&self, now: Instant) -> Duration {
        let last = self.heartbeat_nanos.load(Ordering::Relaxed);
        Duration::from_nanos(self.nanos(now).saturating_sub(last))
    }

    /// Ready, alive and fresh: what the `ready` metric reports.
    pub fn is_serving(&self) -> bool {
        self.readiness() == Readiness::Ready && self.is_alive()
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    #[test]
    fn alive_until_the_last_beat_is_older_than_the_stall_limit() {
        let t0 = Instant::now();
        let health = Health::new_at(LIMIT, t0);
        assert!(health.is_alive_at(t0));
        assert!(health.is_alive_at(t0 + LIMIT));
        assert!(!health.is_alive_at(t0 + LIMIT + Duration::from_millis(1)));
        health.beat_at(t0 + Duration::from_secs(50));
        assert!(health.is_alive_at(t0 + LIMIT + Duration::from_secs(1)));
        assert_eq!(
            health.since_beat(t0 + Duration::from_secs(55)),
            Duration::from_secs(5)
        );
        assert!(!health.is_alive_at(t0 + Duration::from_secs(111)));
    }

    #[test]
    fn a_late_beat_never_moves_the_heartbeat_back() {
        let t0 = Instant::now();
        let health = Health::new_at(LIMIT, t0);
        health.beat_at(t0 + Duration::from_secs(30));
        // A beat taken before (a task that read the clock, then was descheduled) stores later.
        health.beat_at(t0 + Duration::from_secs(10));
        assert_eq!(
            health.since_beat(t0 + Duration::from_secs(30)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_time_before_the_origin_reads_as_the_origin() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let health = Health::new_at(LIMIT, t0);
        assert!(health.is_alive_at(Instant::now()));
        assert_eq!(health.since_beat(Instant::now()), Duration::ZERO);
    }

    /// The production clock: a stalled loop is found out, a beat revives it.
    #[test]
    fn a_stalled_loop_is_not_alive() {
        let health = Health::new(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!health.is_alive());
        health.beat();
        assert!(health.is_alive());
    }

    #[test]
    fn readiness_follows_the_first_pass_and_the_view() {
        let health = Health::new(LIMIT);
        assert_eq!(health.readiness(), Readiness::Starting);
        assert!(!health.is_serving());
        health.set_stale(Some("endpointslices watch failing".into()));
        assert_eq!(health.readiness(), Readiness::Starting);
        health.set_ready();
        assert_eq!(
            health.readiness(),
            Readiness::Stale("endpointslices watch failing".into())
        );
        assert!(!health.is_serving());
        health.set_stale(None);
        assert_eq!(health.readiness(), Readiness::Ready);
        assert!(health.is_serving());
    }

    #[test]
    fn a_ready_but_stalled_agent_is_not_serving() {
        let t0 = Instant::now();
        let health = Health::new_at(Duration::from_millis(1), t0);
        health.set_ready();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(health.readiness(), Readiness::Ready);
        assert!(!health.is_serving());
    }
}
