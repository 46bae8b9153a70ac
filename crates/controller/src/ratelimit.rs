//! A per-key token bucket: the event path's guard against delete storms.
//!
//! A frontend whose flows keep being re-created as stale (for example because kube-proxy's rules
//! still point at a dead backend) would otherwise make the agent delete in a tight loop. Each key
//! may spend `rate` tokens per second, with a burst of the same size; what is refused is counted
//! and left to the next pass.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Keys beyond this many trigger a sweep of idle (full) buckets, bounding memory.
const SWEEP_ABOVE: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by `K`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_second` tokens per key per second, burst of the same size; 0 refuses everything.
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            rate: f64::from(per_second),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now`; false when the key has none left.
    pub fn try_acquire(&mut self, key: &K, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        if self.buckets.len() > SWEEP_ABOVE {
            self.sweep(now);
        }
        let rate = self.rate;
        let bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: rate,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops buckets that have refilled completely: they behave exactly like absent ones.
    fn sweep(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < rate
        });
    }

    /// Number of keys currently tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(3);
        assert!((0..3).all(|_| rl.try_acquire(&"a", t0)));
        assert!(!rl.try_acquire(&"a", t0), "burst exhausted");
        assert!(rl.try_acquire(&"b", t0), "keys are independent");
        assert!(!rl.try_acquire(&"a", t0 + Duration::from_millis(200)));
        assert!(
            rl.try_acquire(&"a", t0 + Duration::from_millis(400)),
            "one token after 1/3 s"
        );
        assert!(!rl.try_acquire(&"a", t0 + Duration::from_millis(400)));
    }

    #[test]
    fn refill_is_capped_at_the_burst() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(2);
        let later = t0 + Duration::from_secs(3600);
        assert!(rl.try_acquire(&1, t0));
        assert!(rl.try_acquire(&1, later));
        assert!(rl.try_acquire(&1, later));
        assert!(!rl.try_acquire(&1, later));
    }

    #[test]
    fn zero_rate_refuses_everything() {
        let mut rl = RateLimiter::new(0);
        assert!(!rl.try_acquire(&1, Instant::now()));
    }

    #[test]
    fn idle_buckets_are_swept() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10);
        for k in 0..=SWEEP_ABOVE {
            assert!(rl.try_acquire(&k, t0));
        }
        assert!(rl.len() > SWEEP_ABOVE);
        assert!(rl.try_acquire(&usize::MAX, t0 + Duration::from_secs(10)));
        assert_eq!(rl.len(), 1, "only the new key remains");
    }
}
