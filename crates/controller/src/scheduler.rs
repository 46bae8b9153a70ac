//! When passes run, and over what: the trigger state machine, free of I/O and clocks.
//!
//! Inputs are watch changes (with the frontends they touched), lost conntrack events and time;
//! the output is the next pass to run. Rules:
//! - a change starts a pass once the watch has been quiet for `debounce`, but never later than
//!   `max_delay` after the first change of a burst, so constant churn cannot starve it;
//! - each such pass is followed by passes over the same frontends after each `follow_ups` delay,
//!   catching flows re-created through rules that kube-proxy had not yet rewritten;
//! - lost events and the `resync` period cause full passes; passes for lost events back off
//!   (1 s doubling to 60 s while losses keep coming) so that an event storm cannot chain full
//!   table walks;
//! - a view that turns fresh again after stale flows were held causes a full pass;
//! - a frontend whose event-path deletes were rate limited gets a scoped pass `retry` later (one
//!   pending retry at a time, widened by further refusals: a retry cannot become a storm);
//! - everything due at the same moment is merged into one pass.

use crate::metrics::Trigger;
use ctdiff::{Dirty, Frontend};
use std::time::{Duration, Instant};

/// Timing parameters.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Quiet time after the last change.
    pub debounce: Duration,
    /// Longest delay after the first change of a burst.
    pub max_delay: Duration,
    /// Delays of the follow-up passes after a change pass.
    pub follow_ups: Vec<Duration>,
    /// Period of the full pass.
    pub resync: Duration,
    /// Delay of the pass over frontends whose event-path deletes were rate limited.
    pub retry: Duration,
}

#[derive(Debug)]
struct Burst {
    first: Instant,
    last: Instant,
    scope: Dirty,
}

/// A pass to run now.
#[derive(Debug, PartialEq, Eq)]
pub struct Due {
    /// The most significant reason among the merged requests.
    pub trigger: Trigger,
    /// What the pass covers.
    pub scope: Dirty,
}

/// The scheduler's state.
#[derive(Debug)]
pub struct Scheduler {
    timing: Timing,
    burst: Option<Burst>,
    follow_ups: Vec<(Instant, Dirty)>,
    retry: Option<(Instant, Dirty)>,
    next_periodic: Instant,
    full_now: Option<Trigger>,
    /// A full pass for lost events, due at this instant (after the backoff).
    lost: Option<Instant>,
    /// No full pass for lost events before this.
    lost_not_before: Instant,
    /// The current backoff between full passes for lost events.
    lost_gap: Duration,
    /// Scoped passes are cheap (lookups in the flow index, no table walk): a change is acted
    /// on `debounce` after the first change of a burst, not after the burst goes quiet.
    cheap_scoped_passes: bool,
}

/// The first backoff between full passes for lost events.
const LOST_GAP_MIN: Duration = Duration::from_secs(1);
/// The longest backoff between full passes for lost events; also how long without losses
/// resets the backoff.
const LOST_GAP_MAX: Duration = Duration::from_secs(60);

impl Scheduler {
    /// A scheduler whose first full pass (`startup`) is due at once.
    pub fn new(timing: Timing, now: Instant) -> Self {
        Scheduler {
            next_periodic: now + timing.resync,
            timing,
            burst: None,
            follow_ups: Vec::new(),
            retry: None,
            full_now: Some(Trigger::startup),
            lost: None,
            lost_not_before: now,
            lost_gap: LOST_GAP_MIN,
            cheap_scoped_passes: false,
        }
    }

    /// Says whether scoped passes are cheap (served by the flow index) or walk the table.
    pub fn set_cheap_scoped_passes(&mut self, cheap: bool) {
        self.cheap_scoped_passes = cheap;
    }

    /// Records a watch change that touched `scope`.
    pub fn on_change(&mut self, scope: Dirty, now: Instant) {
        if scope.is_empty() {
            return;
        }
        match &mut self.burst {
            Some(b) => {
                b.last = now;
                b.scope.merge(scope);
            }
            None => {
                self.burst = Some(Burst {
                    first: now,
                    last: now,
                    scope,
                })
            }
        }
    }

    /// Records that an event-path delete for `frontend` was rate limited.
    pub fn on_rate_limited(&mut self, frontend: Frontend, now: Instant) {
        let scope = Dirty::of([frontend]);
        match &mut self.retry {
            Some((_, pending)) => pending.merge(scope),
            None => self.retry = Some((now + self.timing.retry, scope)),
        }
    }

    /// Records that conntrack events were lost: a full pass is due, at once unless one ran for
    /// lost events less than the backoff ago.
    pub fn on_events_lost(&mut self, now: Instant) {
        if now >= self.lost_not_before + LOST_GAP_MAX {
            self.lost_gap = LOST_GAP_MIN; // quiet for long: start over
        }
        if self.lost.is_none() {
            self.lost = Some(now.max(self.lost_not_before));
        }
    }

    /// Records that the agent's view turned fresh again after stale flows were held: a full
    /// pass is due at once.
    pub fn on_view_fresh(&mut self) {
        self.full_now.get_or_insert(Trigger::view_fresh);
    }

    /// Records that the flow cache needs a seeding walk (the event subscription is up): a
    /// full pass is due at once.
    pub fn on_cache_unseeded(&mut self) {
        self.full_now.get_or_insert(Trigger::cache_seed);
    }

    /// When the next pass is due (possibly in the past).
    pub fn next_deadline(&self) -> Instant {
        let mut next = self.next_periodic;
        if self.full_now.is_some() {
            return Instant::now().min(next);
        }
        if let Some(b) = &self.burst {
            next = next.min(self.burst_due(b));
        }
        for (at, _) in self.follow_ups.iter().chain(&self.retry) {
            next = next.min(*at);
        }
        if let Some(at) = self.lost {
            next = next.min(at);
        }
        next
    }

    fn burst_due(&self, b: &Burst) -> Instant {
        if self.cheap_scoped_passes {
            return b.first + self.timing.debounce;
        }
        (b.last + self.timing.debounce).min(b.first + self.timing.max_delay)
    }

    /// Takes the pass due at `now`, merging everything that is due, or None.
    pub fn take_due(&mut self, now: Instant) -> Option<Due> {
        let mut due: Option<Due> = None;
        let mut add = |trigger: Trigger, scope: Dirty| match &mut due {
            Some(d) => {
                d.trigger = d.trigger.max_significance(trigger);
                d.scope.merge(scope);
            }
            None => due = Some(Due { trigger, scope }),
        };
        if let Some(trigger) = self.full_now.take() {
            add(trigger, Dirty::all());
        }
        if self.lost.is_some_and(|at| now >= at) {
            self.lost = None;
            self.lost_not_before = now + self.lost_gap;
            self.lost_gap = (self.lost_gap * 2).min(LOST_GAP_MAX);
            add(Trigger::events_lost, Dirty::all());
        }
        if now >= self.next_periodic {
            add(Trigger::periodic, Dirty::all());
            self.next_periodic = now + self.timing.resync;
        }
        let burst_due = self.burst.as_ref().map(|b| self.burst_due(b));
        if let Some(burst) = self
            .burst
            .take_if(|_| burst_due.is_some_and(|at| now >= at))
        {
            for delay in &self.timing.follow_ups {
                self.follow_ups.push((now + *delay, burst.scope.clone()));
            }
            add(Trigger::change, burst.scope);
        }
        if let Some((_, scope)) = self.retry.take_if(|(at, _)| now >= *at) {
            add(Trigger::rate_limited, scope);
        }
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.follow_ups.drain(..).partition(|(at, _)| now >= *at);
        self.follow_ups = waiting;
        for (_, scope) in ready {
            add(Trigger::follow_up, scope);
        }
        due
    }
}

impl Trigger {
    /// The label kept when passes of several triggers are merged into one.
    fn max_significance(self, other: Trigger) -> Trigger {
        fn rank(t: Trigger) -> u8 {
            match t {
                Trigger::follow_up => 0,
                Trigger::rate_limited => 0,
                Trigger::change => 1,
                Trigger::periodic => 2,
                Trigger::view_fresh => 3,
                Trigger::cache_seed => 3,
                Trigger::events_lost => 3,
                Trigger::startup => 4,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timing() -> Timing {
        Timing {
            debounce: ms(100),
            max_delay: ms(1000),
            follow_ups: vec![ms(1000), ms(3000)],
            resync: Duration::from_secs(60),
            retry: ms(500),
        }
    }

    fn only(f: u16) -> Dirty {
        Dirty::of([Frontend::NodePort(f)])
    }

    fn started(t0: Instant) -> Scheduler {
        let mut s = Scheduler::new(timing(), t0);
        let first = s.take_due(t0).unwrap();
        assert_eq!(
            first,
            Due {
                trigger: Trigger::startup,
                scope: Dirty::all()
            }
        );
        s
    }

    #[test]
    fn change_waits_for_quiet_then_follows_up() {
        let t0 = Instant::now();
        let mut s = started(t0);
        s.on_change(only(1), t0);
        assert_eq!(s.next_deadline(), t0 + ms(100));
        assert!(s.take_due(t0 + ms(50)).is_none());
        let due = s.take_due(t0 + ms(100)).unwrap();
        assert_eq!(
            due,
            Due {
                trigger: Trigger::change,
                scope: only(1)
            }
        );
        assert_eq!(s.next_deadline(), t0 + ms(1100));
        assert_eq!(
            s.take_due(t0 + ms(1100)).unwrap().trigger,
            Trigger::follow_up
        );
        assert_eq!(s.take_due(t0 + ms(3100)).unwrap().scope, only(1));
        assert!(s.take_due(t0 + ms(10_000)).is_none());
    }

    #[test]
    fn constant_churn_cannot_starve_a_pass() {
        let t0 = Instant::now();
        let mut s = started(t0);
        let mut now = t0;
        let mut ran_at = None;
        for i in 0..40u16 {
            s.on_change(only(i), now);
            if let Some(due) = s.take_due(now) {
                ran_at = Some((now, due));
                break;
            }
            now += ms(50);
        }
        let (at, due) = ran_at.expect("a pass must run under churn");
        assert!(at <= t0 + ms(1000), "ran at +{:?}", at - t0);
        assert!(!due.scope.all, "scoped pass expected");
        assert_eq!(
            due.scope.frontends.len(),
            21,
            "every frontend touched so far is covered"
        );
    }

    #[test]
    fn due_requests_merge_into_one_pass() {
        let t0 = Instant::now();
        let mut s = started(t0);
        s.on_change(only(1), t0);
        s.on_events_lost(t0);
        let due = s.take_due(t0 + ms(100)).unwrap();
        assert_eq!(due.trigger, Trigger::events_lost);
        assert_eq!(due.scope, Dirty::all());
        assert!(s.take_due(t0 + ms(100)).is_none());
    }

    #[test]
    fn lost_event_passes_back_off_while_losses_keep_coming() {
        let t0 = Instant::now();
        let mut s = started(t0);
        let mut passes = Vec::new();
        // Losses every 100 ms for 20 s: without backoff that is 200 full passes.
        for i in 0..200u64 {
            let now = t0 + ms(i * 100);
            s.on_events_lost(now);
            if let Some(due) = s.take_due(now) {
                assert_eq!(due.trigger, Trigger::events_lost);
                passes.push(now - t0);
            }
        }
        assert_eq!(passes.len(), 5, "1 s, 2 s, 4 s, 8 s gaps: {passes:?}");
        assert!(
            passes
                .windows(2)
                .all(|w| w[1] - w[0] >= Duration::from_secs(1))
        );
        // A minute without losses starts the backoff over.
        let later = t0 + Duration::from_secs(100);
        s.on_events_lost(later);
        assert!(s.take_due(later).is_some());
        s.on_events_lost(later + ms(1));
        assert!(s.take_due(later + ms(1)).is_none());
        assert!(s.take_due(later + ms(1000)).is_some());
    }

    #[test]
    fn periodic_pass_every_resync() {
        let t0 = Instant::now();
        let mut s = started(t0);
        assert_eq!(s.next_deadline(), t0 + Duration::from_secs(60));
        let due = s.take_due(t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(
            due,
            Due {
                trigger: Trigger::periodic,
                scope: Dirty::all()
            }
        );
        assert_eq!(s.next_deadline(), t0 + Duration::from_secs(120));
    }

    #[test]
    fn rate_limited_frontends_get_one_retry_pass() {
        let t0 = Instant::now();
        let mut s = started(t0);
        s.on_rate_limited(Frontend::NodePort(7), t0);
        s.on_rate_limited(Frontend::NodePort(8), t0 + ms(100));
        s.on_rate_limited(Frontend::NodePort(7), t0 + ms(200));
        assert_eq!(
            s.next_deadline(),
            t0 + ms(500),
            "the first refusal sets the time"
        );
        assert!(s.take_due(t0 + ms(400)).is_none());
        let due = s.take_due(t0 + ms(500)).unwrap();
        assert_eq!(due.trigger, Trigger::rate_limited);
        assert_eq!(due.scope, Dirty::of([7, 8].map(Frontend::NodePort)));
        assert!(
            s.take_due(t0 + ms(5000)).is_none(),
            "no follow-ups after a retry"
        );
    }

    #[test]
    fn empty_changes_are_ignored() {
        let t0 = Instant::now();
        let mut s = started(t0);
        s.on_change(Dirty::default(), t0);
        assert!(s.take_due(t0 + ms(5000)).is_none());
    }

    #[test]
    fn with_cheap_scoped_passes_churn_waits_only_the_debounce() {
        let t0 = Instant::now();
        let mut s = started(t0);
        s.set_cheap_scoped_passes(true);
        let mut now = t0;
        let mut ran_at = None;
        for i in 0..40u16 {
            s.on_change(only(i), now);
            if s.take_due(now).is_some() {
                ran_at = Some(now);
                break;
            }
            now += ms(50);
        }
        assert_eq!(
            ran_at,
            Some(t0 + ms(100)),
            "due one debounce after the first change"
        );
    }

    #[test]
    fn scope_merge_and_cover() {
        let mut a = only(1);
        a.merge(only(2));
        let np = Frontend::NodePort;
        assert!(a.contains(&np(1)) && a.contains(&np(2)) && !a.contains(&np(3)));
        a.merge(Dirty::all());
        assert!(a.contains(&np(3)));
    }
}
