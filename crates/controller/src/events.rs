//! The event path: a new UDP flow whose backend is not allowed is deleted the moment the kernel
//! announces it, instead of at the next pass.
//!
//! This is what catches flows re-created through rules kube-proxy has not rewritten yet (the
//! watch can be ahead of kube-proxy). A per-frontend token bucket guards against delete storms;
//! what it refuses is counted and left to the next pass. Lost events (ENOBUFS) ask for a full
//! pass, since the flows they announced are now unknown. Every deletion goes through the gate:
//! a flow to a backend the agent never saw waits (kube-proxy may know more than the agent), and
//! nothing is deleted while the agent's view is not fresh.

use crate::metrics::{KindLabels, Metrics};
use crate::pass::{FlowCache, FlowGate, StaleFlow, flow_ref, record};
use crate::ratelimit::RateLimiter;
use ctdiff::{Decision, Frontend, Index, Verdict};
use ctnetlink::{Conntrack, Event, EventKinds, EventOptions, Family};
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What the event path asks of the pass loop.
#[derive(Debug)]
pub enum EventSignal {
    /// Events were lost: a full pass is needed.
    Lost,
    /// The subscription is up: a full pass seeds the flow cache (unless one did already).
    Subscribed,
    /// A stale flow to this frontend was not deleted (rate limit): a pass over it is needed.
    RateLimited(Frontend),
    /// A stale flow waits in the gate: re-checks are needed.
    Waiting,
    /// A stale flow was held because the view is not fresh: a full pass is needed once it is.
    Held,
}

/// What the event path needs.
pub struct EventPath {
    /// The namespace whose events to follow (None: the current one).
    pub netns: Option<PathBuf>,
    /// The shared index.
    pub index: Arc<RwLock<Index>>,
    /// The shared deletion gate.
    pub gate: Arc<Mutex<FlowGate>>,
    /// The conntrack zone judged.
    pub zone: u16,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Families being reconciled.
    pub families: Vec<Family>,
    /// Decide, count, delete nothing.
    pub dry_run: bool,
    /// Deletions per frontend per second.
    pub per_second: u32,
    /// Becomes true once the index holds a complete state.
    pub ready: watch::Receiver<bool>,
    /// Told when events were lost (a full pass is needed) or a delete was rate limited.
    pub signals: mpsc::UnboundedSender<EventSignal>,
    /// The node's UDP flows, kept current by the events followed here.
    pub flows: Arc<Mutex<FlowCache>>,
}

impl EventPath {
    /// Follows conntrack NEW events until the process ends; resubscribes after failures.
    pub async fn run(mut self) {
        let mut limiter = RateLimiter::<Frontend>::new(self.per_second);
        let deleter = EventDeleter::spawn(self.netns.clone(), self.metrics.clone());
        loop {
            // NEW and DESTROY (they keep the flow cache current), and only UDP of the
            // reconciled families: a socket filter drops the rest in the kernel, so TCP's event
            // volume never reaches the agent.
            let options = EventOptions {
                families: Some(self.families.clone()),
                kinds: EventKinds::ALL,
                ..EventOptions::new_only(&[ctnetlink::proto::UDP])
            };
            let stream = ctnetlink::events_with(self.netns.as_deref(), &options);
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot subscribe to conntrack events; retrying in 5s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            tracing::info!("following conntrack NEW and DESTROY events of UDP flows");
            self.flows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .following();
            let _ = self.signals.send(EventSignal::Subscribed);
            let mut malformed = 0;
            while let Some(item) = stream.next().await {
                let stats = stream.stats();
                if stats.malformed > malformed {
                    self.metrics
                        .events_malformed
                        .inc_by(stats.malformed - malformed);
                    malformed = stats.malformed;
                    if let Some(e) = stream.last_malformed() {
                        tracing::warn!(error = %e, "skipped an unparseable conntrack event");
                    }
                }
                match item {
                    Ok(Event::New(flow)) => {
                        self.metrics
                            .events
                            .get_or_create(&KindLabels { kind: "new" })
                            .inc();
                        self.flows
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .created(&flow);
                        self.on_new(&flow, &mut limiter, &deleter);
                    }
                    Ok(Event::Destroy(flow)) => {
                        self.metrics
                            .events
                            .get_or_create(&KindLabels { kind: "destroy" })
                            .inc();
                        self.flows
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .destroyed(&flow);
                    }
                    Ok(Event::Lost) => {
                        self.flows
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .lost();
                        self.metrics.events_lost.inc();
                        tracing::warn!("conntrack events were lost; scheduling a full pass");
                        let _ = self.signals.send(EventSignal::Lost);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "conntrack event stream error");
                        break;
                    }
                }
            }
            self.flows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unsubscribed();
            let _ = self.signals.send(EventSignal::Lost);
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.ready.has_changed().is_err() {
                return; // the agent is shutting down
            }
        }
    }

    fn on_new(
        &mut self,
        flow: &ctnetlink::Flow,
        limiter: &mut RateLimiter<Frontend>,
        deleter: &EventDeleter,
    ) {
        if flow.orig.proto != ctnetlink::proto::UDP
            || flow.zone != self.zone
            || !self.families.contains(&flow.family)
            || !*self.ready.borrow()
        {
            return;
        }
        let now = Instant::now();
        let (stale, decision) = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            let Verdict::Stale(stale) = index.classify(&flow_ref(flow), now) else {
                return;
            };
            let decision = self
                .gate
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .decide(flow.key(), *flow, &stale, index.knowledge(), now);
            (StaleFlow::new(*flow, &stale), decision)
        };
        match decision {
            Decision::Delete => {}
            Decision::Defer => {
                self.metrics.postponed(decision);
                tracing::debug!(flow = %flow.orig, backend = %flow.reply.src, service = %stale.service, reason = %stale.reason, "stale new flow to a backend the agent never saw: waiting for proof");
                let _ = self.signals.send(EventSignal::Waiting);
                return;
            }
            Decision::Hold => {
                self.metrics.postponed(decision);
                let _ = self.signals.send(EventSignal::Held);
                return;
            }
        }
        if self.dry_run {
            record::acted_on(&self.metrics, &stale, true);
            return;
        }
        if !limiter.try_acquire(&stale.frontend, now) {
            // Not dropped: a scoped pass shortly after picks up whatever is still stale then.
            self.metrics.event_deletes_rate_limited.inc();
            let _ = self.signals.send(EventSignal::RateLimited(stale.frontend));
            return;
        }
        // The delete is a netlink exchange: it runs on the deleter's own thread, never on a
        // tokio worker.
        deleter.delete(stale);
    }
}

/// The event path's deleter: a thread that owns its conntrack handle and deletes what it is
/// sent, so a slow kernel (the nfnetlink mutex) never holds up a tokio worker.
struct EventDeleter {
    jobs: std::sync::mpsc::Sender<StaleFlow>,
}

impl EventDeleter {
    fn spawn(netns: Option<PathBuf>, metrics: Arc<Metrics>) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<StaleFlow>();
        let spawned = std::thread::Builder::new()
            .name("event-deletes".into())
            .spawn(move || {
                let mut ct: Option<Conntrack> = None;
                // Ends when the event path (the sender) is dropped.
                while let Ok(job) = queue.recv() {
                    delete_one(&mut ct, netns.as_deref(), &metrics, job);
                }
            });
        if let Err(e) = spawned {
            // Without the thread every send fails and is logged; passes still clean up.
            tracing::error!(error = %e, "cannot start the event-path deleter thread");
        }
        EventDeleter { jobs }
    }

    fn delete(&self, job: StaleFlow) {
        if self.jobs.send(job).is_err() {
            tracing::warn!("the event-path deleter is gone; the next pass deletes the flow");
        }
    }
}

fn delete_one(
    ct: &mut Option<Conntrack>,
    netns: Option<&std::path::Path>,
    metrics: &Metrics,
    job: StaleFlow,
) {
    let flow = job.flow;
    if ct.is_none() {
        let opened = Conntrack::open(netns, ctnetlink::Capabilities::from_running_kernel());
        match opened {
            Ok(handle) => *ct = Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "cannot open conntrack for event-path deletes");
                return;
            }
        }
    }
    let Some(handle) = ct.as_mut() else { return };
    match handle.delete([flow.key()]) {
        Ok(report) if report.deleted > 0 => record::acted_on(metrics, &job, false),
        Ok(report) if !report.failed.is_empty() => record::delete_failed(metrics, flow.family, 1),
        Ok(_) => {} // already gone
        Err(e) => {
            tracing::warn!(error = %e, "event-path delete failed; reopening the socket");
            *ct = None;
        }
    }
}
