//! The emulated kube-proxy's sync loop: follows the API double and rewrites the node's rules
//! a fixed lag after each Service / EndpointSlice change.
//!
//! The lag reproduces the window in which an agent watching the API sees a change before
//! kube-proxy has rewritten its rules (and traffic still follows the old ones).
//!
//! It can also *lead* the agent: it follows the API double's store directly, its own healthy
//! view that no injected fault reaches. While the agent's watch of a kind is failing, stalled
//! or frozen ([`crate::apiserver::ApiServer::inject`]), kube-proxy keeps programming the changes
//! the agent does not see, after its lag ([`KubeProxy::set_lag`], zero for "at once"), so new
//! clients are DNATed to endpoints the agent has not seen.

use crate::apiserver::ApiServer;
use crate::apiserver::kinds::Kind;
use crate::emulation::kubeproxy::{FamilyRules, render};
use crate::timeline::Timeline;
use crate::topology::pipe_into;
use anyhow::{Context, Result, bail};
use ctnetlink::Family;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// The running sync loop; stops when dropped.
#[derive(Debug)]
pub struct KubeProxy {
    applied: watch::Receiver<u64>,
    /// The resourceVersion of the last change of any kind the follower has seen.
    seen: Arc<AtomicU64>,
    /// The resourceVersion of the last Service / EndpointSlice change it has seen.
    wanted: Arc<AtomicU64>,
    /// The current lag, in microseconds.
    lag_us: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The state kube-proxy saw at one resourceVersion.
struct Snapshot {
    rv: u64,
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
}

fn snapshot(api: &ApiServer) -> Snapshot {
    // Version first: the lists may be newer, never older.
    let rv = api.resource_version();
    Snapshot {
        rv,
        services: api.list::<Service>(),
        slices: api.list::<EndpointSlice>(),
    }
}

fn apply(netns: &str, snapshot: &Snapshot) -> Result<()> {
    for family in Family::ALL {
        let rules = render(family, &snapshot.services, &snapshot.slices);
        pipe_into(netns, &[family.restore_command()], &rules)
            .with_context(|| format!("{} at rv {}", family.restore_command(), snapshot.rv))?;
    }
    Ok(())
}

impl KubeProxy {
    /// Programs the current state now, then follows changes with `lag`.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        api: Arc<ApiServer>,
        netns: &str,
        lag: Duration,
        timeline: Timeline,
    ) -> Result<Self> {
        let mut changes = api.subscribe();
        let first = snapshot(&api);
        apply(netns, &first)?;
        let (applied_tx, applied) = watch::channel(first.rv);
        let (queue_tx, mut queue_rx) =
            mpsc::unbounded_channel::<(tokio::time::Instant, Snapshot)>();

        let netns_owned = netns.to_string();
        let applier = runtime.spawn(async move {
            let mut waiting = None;
            loop {
                let (deadline, mut snapshot) = match waiting.take() {
                    Some(item) => item,
                    None => match queue_rx.recv().await {
                        Some(item) => item,
                        None => return,
                    },
                };
                tokio::time::sleep_until(deadline).await;
                // Changes whose lag is already over are applied together, as kube-proxy's
                // sync coalesces a burst: hundreds of object writes need not mean hundreds of
                // restores. A change whose lag is not over keeps waiting for its own turn.
                while let Ok((next_deadline, next)) = queue_rx.try_recv() {
                    if next_deadline <= tokio::time::Instant::now() {
                        snapshot = next;
                    } else {
                        waiting = Some((next_deadline, next));
                        break;
                    }
                }
                let netns = netns_owned.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let result = apply(&netns, &snapshot);
                    (snapshot.rv, result)
                })
                .await;
                match result {
                    Ok((rv, Ok(()))) => {
                        timeline
                            .record("kube-proxy", format!("rules rewritten (state at rv {rv})"));
                        applied_tx.send_replace(rv);
                    }
                    Ok((rv, Err(err))) => {
                        timeline.record(
                            "kube-proxy",
                            format!("rule sync at rv {rv} FAILED: {err:#}"),
                        );
                    }
                    Err(err) => timeline.record("kube-proxy", format!("rule sync panicked: {err}")),
                }
            }
        });
        let seen = Arc::new(AtomicU64::new(first.rv));
        let wanted = Arc::new(AtomicU64::new(first.rv));
        let lag_us = Arc::new(AtomicU64::new(duration_us(lag)));
        let lag_by_follower = lag_us.clone();
        let (seen_by_follower, wanted_by_follower) = (seen.clone(), wanted.clone());
        let follower = runtime.spawn(async move {
            loop {
                // One change, then whatever else is already queued: a burst of writes costs one
                // snapshot (listing every object is not free), taken after all of them.
                let mut burst = vec![changes.recv().await];
                loop {
                    match changes.try_recv() {
                        Ok(change) => burst.push(Ok(change)),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            burst.push(Err(broadcast::error::RecvError::Lagged(n)))
                        }
                        Err(broadcast::error::TryRecvError::Closed) => {
                            burst.push(Err(broadcast::error::RecvError::Closed))
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                    }
                }
                let mut resync = false;
                let mut closed = false;
                for received in &burst {
                    match received {
                        Ok(change) => {
                            seen_by_follower.fetch_max(change.rv, Ordering::SeqCst);
                            if matches!(change.kind, Kind::Service | Kind::EndpointSlice) {
                                wanted_by_follower.fetch_max(change.rv, Ordering::SeqCst);
                                resync = true;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => resync = true,
                        Err(broadcast::error::RecvError::Closed) => closed = true,
                    }
                }
                if resync {
                    let lag = Duration::from_micros(lag_by_follower.load(Ordering::SeqCst));
                    let deadline = tokio::time::Instant::now() + lag;
                    let state = snapshot(&api);
                    // Missed changes (a burst outran the channel) are covered by the snapshot,
                    // whatever their kinds.
                    seen_by_follower.fetch_max(state.rv, Ordering::SeqCst);
                    wanted_by_follower.fetch_max(state.rv, Ordering::SeqCst);
                    if queue_tx.send((deadline, state)).is_err() {
                        return;
                    }
                }
                if closed {
                    return;
                }
            }
        });
        Ok(Self {
            applied,
            seen,
            wanted,
            lag_us,
            tasks: vec![applier, follower],
        })
    }

    /// Sets the delay between a change and the rule rewrite, for changes from now on. Zero
    /// rewrites at once: with a fault on the agent's watch, kube-proxy then leads the agent.
    pub fn set_lag(&self, lag: Duration) {
        self.lag_us.store(duration_us(lag), Ordering::SeqCst);
    }

    /// The delay between a change and the rule rewrite.
    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.load(Ordering::SeqCst))
    }

    /// The resourceVersion of the state the rules last reflected.
    pub fn applied_rv(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits (blocking) until the rules reflect every Service / EndpointSlice change up to
    /// the API's resourceVersion `rv` (changes to other kinds need no sync).
    pub fn wait_applied(&self, rv: u64, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while self.seen.load(Ordering::SeqCst) < rv {
            if std::time::Instant::now() > deadline {
                bail!("kube-proxy has not seen rv {rv} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let rv = self.wanted.load(Ordering::SeqCst);
        while self.applied_rv() < rv {
            if std::time::Instant::now() > deadline {
                bail!(
                    "rules still at rv {} after {timeout:?}, wanted {rv}",
                    self.applied_rv()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
