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
            self.on_subscribed();
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
                    // The skipped event may have been a NEW: the cache may lack that flow, as
                    // after a loss, until a full walk seeds it again.
                    self.flows
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .lost();
                    let _ = self.signals.send(EventSignal::Lost);
                }
                match item {
                    Ok(event) => {
                        if let Some(stale) = self.on_event(event, &mut limiter, Instant::now()) {
                            // The delete is a netlink exchange: it runs on the deleter's own
                            // thread, never on a tokio worker.
                            deleter.delete(stale);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "conntrack event stream error");
                        break;
                    }
                }
            }
            self.on_stream_end();
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.ready.has_changed().is_err() {
                return; // the agent is shutting down
            }
        }
    }

    /// The subscription is up: the flow cache follows events from now on, and the pass loop is
    /// told (a full walk seeds the cache).
    pub fn on_subscribed(&mut self) {
        self.flows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .following();
        let _ = self.signals.send(EventSignal::Subscribed);
    }

    /// The subscription ended (an error): nothing keeps the flow cache current until the next
    /// one, and flows announced meanwhile are unknown, so a full pass is asked for.
    pub fn on_stream_end(&mut self) {
        self.flows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unsubscribed();
        let _ = self.signals.send(EventSignal::Lost);
    }

    /// Applies one event received at `now`: keeps the flow cache current, counts, tells the
    /// pass loop what it must do, and returns the stale flow to delete, if any (the caller
    /// deletes it off the tokio workers).
    pub fn on_event(
        &mut self,
        event: Event,
        limiter: &mut RateLimiter<Frontend>,
        now: Instant,
    ) -> Option<StaleFlow> {
        match event {
            Event::New(flow) => {
                self.metrics
                    .events
                    .get_or_create(&KindLabels { kind: "new" })
                    .inc();
                self.flows
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .created(&flow);
                self.on_new(&flow, limiter, now)
            }
            Event::Destroy(flow) => {
                self.metrics
                    .events
                    .get_or_create(&KindLabels { kind: "destroy" })
                    .inc();
                self.flows
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .destroyed(&flow);
                // A waiting entry goes with its flow: a later entry with the same key (the
                // kernel reuses ids) must be judged from its own first sighting.
                self.gate
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget(&flow.key());
                None
            }
            Event::Lost => {
                self.flows
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .lost();
                self.metrics.events_lost.inc();
                tracing::warn!("conntrack events were lost; scheduling a full pass");
                let _ = self.signals.send(EventSignal::Lost);
                None
            }
        }
    }

    /// Acts on the decision about a NEW flow: counts it, signals the pass loop, and returns the
    /// flow when it is to be deleted.
    fn on_new(
        &self,
        flow: &ctnetlink::Flow,
        limiter: &mut RateLimiter<Frontend>,
        now: Instant,
    ) -> Option<StaleFlow> {
        match self.decide_new(flow, limiter, now) {
            NewFlow::Ignored | NewFlow::Kept => None,
            NewFlow::Delete(stale) => Some(stale),
            NewFlow::Deferred(stale) => {
                self.metrics.postponed(Decision::Defer);
                tracing::debug!(flow = %flow.orig, backend = %flow.reply.src, service = %stale.service, reason = %stale.reason, "stale new flow to a backend the agent never saw: waiting for proof");
                let _ = self.signals.send(EventSignal::Waiting);
                None
            }
            NewFlow::Held(_) => {
                self.metrics.postponed(Decision::Hold);
                let _ = self.signals.send(EventSignal::Held);
                None
            }
            NewFlow::DryRun(stale) => {
                record::acted_on(&self.metrics, &stale, true);
                None
            }
            NewFlow::RateLimited(stale) => {
                // Not dropped: a scoped pass shortly after picks up whatever is still stale then.
                self.metrics.event_deletes_rate_limited.inc();
                let _ = self.signals.send(EventSignal::RateLimited(stale.frontend));
                None
            }
        }
    }

    /// Decides about one NEW flow at `now`: the filters (protocol, zone, family, a complete
    /// state), the index's verdict, the gate, dry run, then the frontend's rate limit. Changes
    /// only the gate's memory of waiting flows and the limiter's tokens; counting, signals and
    /// the delete are the caller's.
    pub fn decide_new(
        &self,
        flow: &ctnetlink::Flow,
        limiter: &mut RateLimiter<Frontend>,
        now: Instant,
    ) -> NewFlow {
        if flow.orig.proto != ctnetlink::proto::UDP
            || flow.zone != self.zone
            || !self.families.contains(&flow.family)
            || !*self.ready.borrow()
        {
            return NewFlow::Ignored;
        }
        let (stale, decision) = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            let Verdict::Stale(stale) = index.classify(&flow_ref(flow), now) else {
                return NewFlow::Kept;
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
            Decision::Defer => return NewFlow::Deferred(stale),
            Decision::Hold => return NewFlow::Held(stale),
        }
        if self.dry_run {
            return NewFlow::DryRun(stale);
        }
        if !limiter.try_acquire(&stale.frontend, now) {
            return NewFlow::RateLimited(stale);
        }
        NewFlow::Delete(stale)
    }
}

/// What the event path does with one NEW event (see [`EventPath::decide_new`]).
#[derive(Debug)]
pub enum NewFlow {
    /// Not the event path's to judge: another protocol, zone or family, or the state is not
    /// complete yet.
    Ignored,
    /// Not stale.
    Kept,
    /// Stale and let through by the gate and the rate limit: delete it now.
    Delete(StaleFlow),
    /// Stale, to a backend the agent never saw: it waits in the gate for proof.
    Deferred(StaleFlow),
    /// Stale, but the agent's view is not fresh: nothing is deleted until it is.
    Held(StaleFlow),
    /// Stale and let through, but its frontend's deletions are spent for now: left to a pass.
    RateLimited(StaleFlow),
    /// Stale and let through; a dry run only reports it.
    DryRun(StaleFlow),
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

#[cfg(test)]
mod tests {
    //! The event path without a kernel: events handed to [`EventPath::on_event`] with explicit
    //! instants, against an index, a gate and a rate limiter in memory.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::test_fixtures::{udp_flow, udp_service, udp_slice};
    use ctdiff::{Evidence, GateConfig, IndexConfig, Kind};
    use ctnetlink::Flow;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use prometheus_client::registry::Registry;

    const VIP: &str = "10.96.0.10";
    /// Seen ready, then seen leaving.
    const REMOVED: &str = "10.244.0.2";
    /// Ready.
    const READY: &str = "10.244.0.1";
    /// Never seen by the agent.
    const UNSEEN: &str = "10.244.0.9";

    fn service() -> Service {
        udp_service("dns", VIP, &[53, 54])
    }

    fn slice(ready: &[(&str, bool)]) -> EndpointSlice {
        udp_slice("dns", ready)
    }

    /// A UDP flow from a client port to the VIP's `dport`, DNATed to `backend`.
    fn flow(sport: u16, dport: u16, backend: &str) -> Flow {
        udp_flow(sport, VIP, dport, backend, 5353)
    }

    /// An event path over an index listed at `t0` (every kind fresh), where `REMOVED` was seen
    /// leaving; the state is complete unless `ready` is false.
    struct Harness {
        path: EventPath,
        limiter: RateLimiter<Frontend>,
        signals: mpsc::UnboundedReceiver<EventSignal>,
        ready: watch::Sender<bool>,
        t0: Instant,
    }

    impl Harness {
        fn new(per_second: u32, dry_run: bool) -> Self {
            let t0 = Instant::now();
            let mut index = Index::new(IndexConfig::new("n1"));
            let _ = index.reset_services([&service()], t0);
            let _ = index.reset_endpoint_slices([&slice(&[(READY, true), (REMOVED, true)])], t0);
            let _ = index.reset_pods([], t0);
            let _ = index.apply_endpoint_slice(&slice(&[(READY, true), (REMOVED, false)]), t0);
            for kind in Kind::ALL {
                index.knowledge_mut().relist_started(kind, t0);
                index.knowledge_mut().listed(kind, t0, t0);
            }
            let (signal_tx, signals) = mpsc::unbounded_channel();
            let (ready, ready_rx) = watch::channel(true);
            let path = EventPath {
                netns: None,
                index: Arc::new(RwLock::new(index)),
                gate: Arc::new(Mutex::new(FlowGate::new(GateConfig::default()))),
                zone: 0,
                metrics: Arc::new(Metrics::new(&mut Registry::default())),
                families: vec![Family::V4],
                dry_run,
                per_second,
                ready: ready_rx,
                signals: signal_tx,
                flows: Arc::new(Mutex::new(FlowCache::new(0))),
            };
            Harness {
                path,
                limiter: RateLimiter::new(per_second),
                signals,
                ready,
                t0,
            }
        }

        /// An instant `ms` after the list (well within the view's freshness).
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn new_flow(&mut self, flow: Flow, now: Instant) -> Option<StaleFlow> {
            self.path.on_event(Event::New(flow), &mut self.limiter, now)
        }

        fn signals(&mut self) -> Vec<EventSignal> {
            let mut out = Vec::new();
            while let Ok(s) = self.signals.try_recv() {
                out.push(s);
            }
            out
        }

        fn waiting(&self) -> usize {
            self.path.gate.lock().unwrap().len()
        }

        fn cache(&self) -> std::sync::MutexGuard<'_, FlowCache> {
            self.path.flows.lock().unwrap()
        }

        /// Subscribes and seeds the flow cache with a full walk of nothing: it is complete.
        fn complete_cache(&mut self) {
            self.path.on_subscribed();
            let mut cache = self.cache();
            let token = cache.begin_seed();
            cache.finish_seed(token);
            assert!(cache.is_complete());
        }

        fn deleted(&self, dry_run: bool) -> u64 {
            let m = &self.path.metrics;
            let family = if dry_run {
                &m.flows_not_deleted
            } else {
                &m.flows_deleted
            };
            family
                .get_or_create(&crate::metrics::ReasonLabels {
                    ip_family: Family::V4.into(),
                    reason: ctdiff::Reason::EndpointNotServing.to_string(),
                })
                .get()
        }
    }

    #[test]
    fn a_new_flow_to_a_backend_seen_leaving_is_deleted_at_once() {
        let mut h = Harness::new(100, false);
        let now = h.at(1000);
        let stale = h.new_flow(flow(4000, 53, REMOVED), now).expect("deleted");
        assert_eq!(stale.flow, flow(4000, 53, REMOVED));
        assert_eq!(
            stale.frontend,
            Frontend::Addr("10.96.0.10:53".parse().unwrap())
        );
        assert_eq!(stale.evidence, Evidence::Removed);
        assert_eq!(stale.reason, ctdiff::Reason::EndpointNotServing);
        assert!(h.signals().is_empty(), "nothing for the pass loop to do");
        assert_eq!(h.waiting(), 0);
        // Counted by the deleter once the kernel confirms, not here.
        assert_eq!(h.deleted(false), 0);
    }

    #[test]
    fn a_new_flow_to_a_ready_backend_is_kept() {
        let mut h = Harness::new(100, false);
        let now = h.at(1000);
        assert!(matches!(
            h.path
                .decide_new(&flow(4000, 53, READY), &mut h.limiter, now),
            NewFlow::Kept
        ));
        assert!(h.new_flow(flow(4001, 53, READY), now).is_none());
        assert!(h.signals().is_empty());
    }

    #[test]
    fn a_new_flow_to_a_never_seen_backend_waits_for_proof() {
        let mut h = Harness::new(100, false);
        let now = h.at(1000);
        let unseen = flow(4000, 53, UNSEEN);
        assert!(matches!(
            h.path.decide_new(&unseen, &mut h.limiter, now),
            NewFlow::Deferred(ref s) if s.evidence == Evidence::Unseen
        ));
        assert!(h.new_flow(unseen, now).is_none(), "not deleted");
        assert!(matches!(h.signals()[..], [EventSignal::Waiting]));
        assert_eq!(h.waiting(), 1, "the gate remembers it for re-checks");
        let postponed = h
            .path
            .metrics
            .flows_postponed
            .get_or_create(&crate::metrics::DecisionLabels { decision: "defer" })
            .get();
        assert_eq!(postponed, 1);
    }

    #[test]
    fn a_destroyed_flow_stops_waiting() {
        let mut h = Harness::new(100, false);
        let now = h.at(1000);
        let unseen = flow(4000, 53, UNSEEN);
        assert!(h.new_flow(unseen, now).is_none());
        assert_eq!(h.waiting(), 1);
        let _ = h.path.on_event(Event::Destroy(unseen), &mut h.limiter, now);
        assert_eq!(
            h.waiting(),
            0,
            "a re-created entry is judged from its own first sighting"
        );
    }

    #[test]
    fn a_stale_view_holds() {
        let mut h = Harness::new(100, false);
        let now = h.at(1000);
        h.path
            .index
            .write()
            .unwrap()
            .knowledge_mut()
            .failed(Kind::EndpointSlices, now);
        assert!(matches!(
            h.path
                .decide_new(&flow(4000, 53, REMOVED), &mut h.limiter, now),
            NewFlow::Held(_)
        ));
        assert!(h.new_flow(flow(4001, 53, REMOVED), now).is_none());
        assert!(matches!(h.signals()[..], [EventSignal::Held]));
        let held = h
            .path
            .metrics
            .flows_postponed
            .get_or_create(&crate::metrics::DecisionLabels { decision: "hold" })
            .get();
        assert_eq!(held, 1);
    }

    #[test]
    fn the_rate_limit_refuses_past_n_per_second_per_frontend() {
        let mut h = Harness::new(2, false);
        let now = h.at(1000);
        assert!(h.new_flow(flow(4000, 53, REMOVED), now).is_some());
        assert!(h.new_flow(flow(4001, 53, REMOVED), now).is_some());
        assert!(
            h.new_flow(flow(4002, 53, REMOVED), now).is_none(),
            "third in the second"
        );
        let vip53 = Frontend::Addr("10.96.0.10:53".parse().unwrap());
        match &h.signals()[..] {
            [EventSignal::RateLimited(frontend)] => assert_eq!(*frontend, vip53),
            other => panic!("expected one RateLimited signal, got {other:?}"),
        }
        assert_eq!(h.path.metrics.event_deletes_rate_limited.get(), 1);
        // Another frontend has its own bucket.
        assert!(h.new_flow(flow(4003, 54, REMOVED), now).is_some());
        // A second later the bucket has refilled.
        assert!(h.new_flow(flow(4004, 53, REMOVED), h.at(2000)).is_some());
        assert!(h.signals().is_empty());
    }

    #[test]
    fn other_zones_families_protocols_and_an_incomplete_state_are_ignored() {
        let mut h = Harness::new(100, false);
        let now = h.at(1000);
        let mut zoned = flow(4000, 53, REMOVED);
        zoned.zone = 7;
        let mut v6 = flow(4001, 53, REMOVED);
        v6.family = Family::V6;
        let mut tcp = flow(4002, 53, REMOVED);
        tcp.orig.proto = ctnetlink::proto::TCP;
        tcp.reply.proto = ctnetlink::proto::TCP;
        for f in [zoned, v6, tcp] {
            assert!(matches!(
                h.path.decide_new(&f, &mut h.limiter, now),
                NewFlow::Ignored
            ));
            assert!(h.new_flow(f, now).is_none());
        }
        h.ready.send_replace(false);
        assert!(matches!(
            h.path
                .decide_new(&flow(4003, 53, REMOVED), &mut h.limiter, now),
            NewFlow::Ignored
        ));
        assert!(h.new_flow(flow(4004, 53, UNSEEN), now).is_none());
        assert!(h.signals().is_empty());
        assert_eq!(
            h.waiting(),
            0,
            "nothing judged before the state is complete"
        );
    }

    #[test]
    fn a_dry_run_deletes_nothing_and_reports() {
        let mut h = Harness::new(1, true);
        let now = h.at(1000);
        for sport in 4000..4003 {
            assert!(matches!(
                h.path
                    .decide_new(&flow(sport, 53, REMOVED), &mut h.limiter, now),
                NewFlow::DryRun(_)
            ));
        }
        assert!(h.new_flow(flow(4010, 53, REMOVED), now).is_none());
        assert!(h.new_flow(flow(4011, 53, REMOVED), now).is_none());
        assert_eq!(h.deleted(true), 2, "reported as not deleted");
        assert_eq!(h.deleted(false), 0);
        assert!(h.signals().is_empty(), "a dry run spends no rate limit");
    }

    #[test]
    fn events_keep_the_flow_cache_current() {
        let mut h = Harness::new(100, false);
        h.complete_cache();
        assert!(matches!(h.signals()[..], [EventSignal::Subscribed]));
        let now = h.at(1000);
        // Every NEW flow of the zone is cached, stale or not, ready or not.
        h.ready.send_replace(false);
        let _ = h.new_flow(flow(4000, 53, READY), now);
        let _ = h.new_flow(flow(4001, 53, REMOVED), now);
        let mut other_zone = flow(4002, 53, READY);
        other_zone.zone = 7;
        let _ = h.new_flow(other_zone, now);
        assert_eq!(h.cache().len(), 2);
        let _ = h
            .path
            .on_event(Event::Destroy(flow(4000, 53, READY)), &mut h.limiter, now);
        assert_eq!(h.cache().len(), 1);
        let count = |kind| {
            h.path
                .metrics
                .events
                .get_or_create(&KindLabels { kind })
                .get()
        };
        assert_eq!((count("new"), count("destroy")), (3, 1));
        assert!(h.cache().is_complete());
        assert!(h.signals().is_empty());
    }

    #[test]
    fn lost_events_make_the_cache_untrusted_until_a_new_seed() {
        let mut h = Harness::new(100, false);
        h.complete_cache();
        let _ = h.signals();
        let now = h.at(1000);
        assert!(h.path.on_event(Event::Lost, &mut h.limiter, now).is_none());
        assert!(!h.cache().is_complete());
        assert!(matches!(h.signals()[..], [EventSignal::Lost]));
        assert_eq!(h.path.metrics.events_lost.get(), 1);
        // Still subscribed: a full walk that starts now makes it complete again.
        let mut cache = h.cache();
        let token = cache.begin_seed();
        cache.finish_seed(token);
        assert!(cache.is_complete());
    }

    #[test]
    fn the_end_of_the_stream_unsubscribes_the_cache() {
        let mut h = Harness::new(100, false);
        h.complete_cache();
        let _ = h.signals();
        h.path.on_stream_end();
        assert!(matches!(h.signals()[..], [EventSignal::Lost]));
        let mut cache = h.cache();
        assert!(!cache.is_complete());
        // Nothing follows events now: a seed cannot make it complete.
        let token = cache.begin_seed();
        cache.finish_seed(token);
        assert!(!cache.is_complete());
        drop(cache);
        // A new subscription (and its seed) can.
        h.complete_cache();
    }
}
