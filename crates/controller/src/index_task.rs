//! The index task: watch updates → `Feed` → `Index` and its `Knowledge` (how fresh each kind
//! is), write-locked per batch; the dirty frontends → the pass loop; readiness once every kind
//! has listed.
//!
//! Contract with the pass loop: changes made before readiness are sent too, *before* readiness
//! is announced, so the pass loop can drain them when it sees `ready` (the startup pass covers
//! them); a watch stream that ends ends this task (and with it the agent).

use crate::metrics::{KindLabels, Metrics};
use crate::watch::feed::Feed;
use crate::watch::{self, Update, What};
use ctdiff::{Dirty, Index, Kind};
use kube::runtime::watcher::Event;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, watch as tokio_watch};

/// What the index task tells the pass loop.
#[derive(Debug)]
pub enum Signal {
    /// The index changed; these frontends are affected.
    Changed(Dirty),
}

/// Applies watch updates to the index (and its knowledge of how fresh each kind is) and tells
/// the pass loop what changed. Returns when a watch stream ends (which ends the agent).
pub async fn index_loop(
    mut updates: watch::Updates,
    index: Arc<RwLock<Index>>,
    metrics: Arc<Metrics>,
    signals: mpsc::UnboundedSender<Signal>,
    ready: tokio_watch::Sender<bool>,
) {
    let mut feed = Feed::default();
    loop {
        let batch = match updates.next_batch().await {
            Ok(batch) => batch,
            Err(ended) => {
                tracing::error!(%ended, "a watch stream ended; exiting");
                return;
            }
        };
        // Everything queued is applied under one write lock, and the dirty set and the index's
        // sizes (a walk of the index) are taken once per batch, not once per object: a relist
        // of 10,000 objects arrives as a burst. Each update's freshness note is applied with
        // it, in order, so a reader never sees a view claimed fresher than its objects.
        let now = Instant::now();
        let relist_done = batch.iter().any(Update::is_relist_done);
        let (skipped, dirty, stats) = {
            let mut index = index.write().unwrap_or_else(PoisonError::into_inner);
            let mut skipped = Vec::new();
            for Update {
                kind,
                at,
                what,
                timely,
            } in batch
            {
                let report = match what {
                    What::Service(e) => {
                        note(&mut index, kind, at, timely, &e);
                        feed.services.handle(&mut index, e, now)
                    }
                    What::Slice(e) => {
                        note(&mut index, kind, at, timely, &e);
                        feed.slices.handle(&mut index, e, now)
                    }
                    What::Node(e) => {
                        note(&mut index, kind, at, timely, &e);
                        feed.nodes.handle(&mut index, e, now)
                    }
                    What::Pod(e) => {
                        note(&mut index, kind, at, timely, &e);
                        feed.pods.handle(&mut index, e, now)
                    }
                    What::Watching => {
                        index.knowledge_mut().alive(kind, at);
                        continue;
                    }
                    What::Bookmark => {
                        if timely {
                            index.knowledge_mut().bookmarked(kind, at);
                        } else {
                            index.knowledge_mut().alive(kind, at);
                        }
                        continue;
                    }
                    What::Failed(error) => {
                        index.knowledge_mut().failed(kind, at);
                        metrics
                            .watch_errors
                            .get_or_create(&KindLabels {
                                kind: kind.as_str(),
                            })
                            .inc();
                        tracing::warn!(kind = kind.as_str(), %error, "watch failed; retrying; nothing is deleted until it is fresh again");
                        continue;
                    }
                };
                if !report.is_empty() {
                    skipped.push((kind.as_str(), report));
                }
            }
            (skipped, index.take_dirty(), index.stats())
        };
        for (kind, report) in &skipped {
            for skip in report.iter() {
                metrics
                    .objects_skipped
                    .get_or_create(&KindLabels { kind })
                    .inc();
                tracing::warn!("{skip}");
            }
        }
        metrics.record_index(&stats);
        if relist_done {
            // A (re)list parses whole pages of objects that are dropped once indexed; hand that
            // memory back so the agent's footprint is the index, not its largest list.
            crate::heap::trim();
        }
        for (kind, is_ready) in feed.readiness() {
            metrics
                .store_ready
                .get_or_create(&KindLabels { kind })
                .set(i64::from(is_ready));
        }
        // Changes before readiness are covered by the startup pass; the pass loop drains them
        // when it sees `ready`, so they are sent first.
        if !dirty.is_empty() && signals.send(Signal::Changed(dirty)).is_err() {
            return;
        }
        if feed.all_ready() && !*ready.borrow() {
            tracing::info!(?stats, "every watch has listed: the state is complete");
            let _ = ready.send(true);
        }
    }
}

/// Records what a watch event says about the freshness of its kind. `at` of `Init` and
/// `InitDone` is the list's start (see `watch`); an event read from a backlog (`timely`
/// false) only shows the watch alive.
fn note<K>(index: &mut Index, kind: Kind, at: Instant, timely: bool, event: &Event<K>) {
    let knowledge = index.knowledge_mut();
    match event {
        Event::Init => knowledge.relist_started(kind, at),
        Event::InitApply(_) => knowledge.alive(kind, Instant::now()),
        Event::InitDone => knowledge.listed(kind, at, Instant::now()),
        Event::Apply(_) | Event::Delete(_) if timely => knowledge.confirmed(kind, at),
        Event::Apply(_) | Event::Delete(_) => knowledge.alive(kind, at),
    }
}

#[cfg(test)]
mod tests {
    //! The index task in process: watch updates fed through [`watch::Updates`] from a channel,
    //! on tokio's paused clock (a sleep returns once every task is idle, so each step has been
    //! applied when the test looks).
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use ctdiff::{Frontend, IndexConfig, Knowledge};
    use futures::StreamExt;
    use futures::channel::mpsc as channel;
    use k8s_openapi::api::core::v1::{Node, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use prometheus_client::registry::Registry;
    use serde_json::json;
    use std::time::Duration;
    use tokio::task::JoinHandle;

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "d"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap()
    }

    fn slice(service: &str, ips: &[&str]) -> EndpointSlice {
        let ready: Vec<(&str, bool)> = ips.iter().map(|ip| (*ip, true)).collect();
        crate::test_fixtures::udp_slice_on(service, 53, &ready)
    }

    fn node() -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap()
    }

    fn update(kind: Kind, at: Instant, what: What) -> Update {
        Update {
            kind,
            at,
            what,
            timely: true,
        }
    }

    /// A running index loop and its ends.
    struct Harness {
        tx: channel::UnboundedSender<Update>,
        index: Arc<RwLock<Index>>,
        metrics: Arc<Metrics>,
        signals: mpsc::UnboundedReceiver<Signal>,
        ready: tokio_watch::Receiver<bool>,
        task: JoinHandle<()>,
    }

    impl Harness {
        fn start() -> Self {
            let (tx, rx) = channel::unbounded();
            // One merged stream carries every kind's updates; the kind it is filed under only
            // names the stream when it ends.
            let updates = watch::Updates::new(vec![(Kind::Services, rx.boxed())], 64);
            let mut index = Index::new(IndexConfig::new("n1"));
            *index.knowledge_mut() = Knowledge::new(Duration::from_secs(600));
            let index = Arc::new(RwLock::new(index));
            let metrics = Arc::new(Metrics::new(&mut Registry::default()));
            let (signal_tx, signals) = mpsc::unbounded_channel();
            let (ready_tx, ready) = tokio_watch::channel(false);
            let task = tokio::spawn(index_loop(
                updates,
                index.clone(),
                metrics.clone(),
                signal_tx,
                ready_tx,
            ));
            Harness {
                tx,
                index,
                metrics,
                signals,
                ready,
                task,
            }
        }

        fn send(&self, update: Update) {
            self.tx.unbounded_send(update).unwrap();
        }

        /// Sends a complete first list of `kind` holding `objects`, started at `at`.
        fn list(&self, kind: Kind, at: Instant, objects: Vec<What>) {
            let boundary = |init: bool| {
                let what = match (kind, init) {
                    (Kind::Services, true) => What::Service(Event::Init),
                    (Kind::Services, false) => What::Service(Event::InitDone),
                    (Kind::EndpointSlices, true) => What::Slice(Event::Init),
                    (Kind::EndpointSlices, false) => What::Slice(Event::InitDone),
                    (Kind::Nodes, true) => What::Node(Event::Init),
                    (Kind::Nodes, false) => What::Node(Event::InitDone),
                    (Kind::Pods, true) => What::Pod(Event::Init),
                    (Kind::Pods, false) => What::Pod(Event::InitDone),
                };
                update(kind, at, what)
            };
            self.send(boundary(true));
            for what in objects {
                self.send(update(kind, at, what));
            }
            self.send(boundary(false));
        }

        /// Lists every kind: Service a at 10.96.0.1 with backends 10.244.0.1 and 10.244.0.2.
        fn list_all(&self, at: Instant) {
            self.list(
                Kind::Services,
                at,
                vec![What::Service(Event::InitApply(service("a", "10.96.0.1")))],
            );
            self.list(
                Kind::EndpointSlices,
                at,
                vec![What::Slice(Event::InitApply(slice(
                    "a",
                    &["10.244.0.1", "10.244.0.2"],
                )))],
            );
            self.list(Kind::Nodes, at, vec![What::Node(Event::InitApply(node()))]);
            self.list(Kind::Pods, at, Vec::new());
        }

        fn is_ready(&self) -> bool {
            *self.ready.borrow()
        }

        fn drain(&mut self) -> Vec<Dirty> {
            let mut out = Vec::new();
            while let Ok(Signal::Changed(dirty)) = self.signals.try_recv() {
                out.push(dirty);
            }
            out
        }

        fn knowledge(&self) -> Knowledge {
            self.index.read().unwrap().knowledge().clone()
        }

        fn store_ready(&self, kind: Kind) -> i64 {
            self.metrics
                .store_ready
                .get_or_create(&KindLabels {
                    kind: kind.as_str(),
                })
                .get()
        }
    }

    /// Lets the index loop apply everything sent so far (the paused clock advances only once
    /// every task waits).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn ready_only_once_every_kind_has_listed() {
        let h = Harness::start();
        let t0 = Instant::now();
        settle().await;
        assert!(!h.is_ready());
        h.list(
            Kind::Services,
            t0,
            vec![What::Service(Event::InitApply(service("a", "10.96.0.1")))],
        );
        h.list(Kind::EndpointSlices, t0, Vec::new());
        h.list(Kind::Nodes, t0, vec![What::Node(Event::InitApply(node()))]);
        // The Pods' list has started, not finished.
        h.send(update(Kind::Pods, t0, What::Pod(Event::Init)));
        settle().await;
        assert!(!h.is_ready(), "pods have not completed their first list");
        assert_eq!(h.store_ready(Kind::Services), 1);
        assert_eq!(h.store_ready(Kind::Nodes), 1);
        assert_eq!(h.store_ready(Kind::Pods), 0);
        h.send(update(Kind::Pods, t0, What::Pod(Event::InitDone)));
        settle().await;
        assert!(h.is_ready());
        assert_eq!(h.store_ready(Kind::Pods), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_does_not_wait_for_a_relist_and_is_announced_once() {
        let mut h = Harness::start();
        let t0 = Instant::now();
        h.list_all(t0);
        settle().await;
        assert!(h.is_ready());
        h.ready.mark_unchanged();
        // A relist of one kind: the kind is not fresh meanwhile (the gate holds deletes), but the
        // state stays complete and readiness is not announced again.
        h.send(update(Kind::Services, t0, What::Service(Event::Init)));
        settle().await;
        assert!(h.is_ready());
        assert!(!h.ready.has_changed().unwrap());
        assert!(h.knowledge().kind(Kind::Services).relisting);
        h.send(update(Kind::Services, t0, What::Service(Event::InitDone)));
        settle().await;
        assert!(!h.ready.has_changed().unwrap());
        assert!(!h.knowledge().kind(Kind::Services).relisting);
        let _ = h.drain();
    }

    #[tokio::test(start_paused = true)]
    async fn changes_before_readiness_are_queued_before_it_and_later_ones_carry_their_frontends() {
        let mut h = Harness::start();
        let t0 = Instant::now();
        h.list_all(t0);
        // Wait for readiness the way the pass loop does, then drain what came before it.
        h.ready.changed().await.unwrap();
        assert!(h.is_ready());
        let before = h.drain();
        assert!(
            !before.is_empty(),
            "the lists' changes are sent before readiness (the startup pass covers them)"
        );
        assert!(
            before.iter().any(|d| d.all),
            "a first list dirties everything"
        );
        settle().await;
        assert!(h.drain().is_empty(), "nothing more without a change");

        // A backend leaves the slice: its Service's frontend is dirty, and only that one.
        h.send(update(
            Kind::EndpointSlices,
            Instant::now(),
            What::Slice(Event::Apply(slice("a", &["10.244.0.1"]))),
        ));
        settle().await;
        let vip = Frontend::Addr("10.96.0.1:53".parse().unwrap());
        assert_eq!(h.drain(), vec![Dirty::of([vip])]);

        // Bookmarks and accepted watches change nothing in the index: no signal.
        h.send(update(Kind::EndpointSlices, Instant::now(), What::Bookmark));
        h.send(update(Kind::Pods, Instant::now(), What::Watching));
        settle().await;
        assert!(h.drain().is_empty());

        // Deleting the Service dirties its frontend too.
        h.send(update(
            Kind::Services,
            Instant::now(),
            What::Service(Event::Delete(service("a", "10.96.0.1"))),
        ));
        settle().await;
        let changed = h.drain();
        assert_eq!(changed.len(), 1, "one batch, one signal");
        assert!(changed[0].contains(&vip));
    }

    #[tokio::test(start_paused = true)]
    async fn updates_in_one_batch_are_sent_as_one_signal() {
        let mut h = Harness::start();
        let t0 = Instant::now();
        h.list_all(t0);
        h.send(update(
            Kind::Services,
            t0,
            What::Service(Event::Apply(service("b", "10.96.0.2"))),
        ));
        settle().await;
        let _ = h.drain();
        // Two changes queued together are applied under one lock and announced together.
        h.send(update(
            Kind::EndpointSlices,
            Instant::now(),
            What::Slice(Event::Apply(slice("a", &["10.244.0.1"]))),
        ));
        h.send(update(
            Kind::EndpointSlices,
            Instant::now(),
            What::Slice(Event::Apply(slice("b", &["10.244.0.9"]))),
        ));
        settle().await;
        let changed = h.drain();
        assert_eq!(changed.len(), 1);
        assert_eq!(
            changed[0],
            Dirty::of([
                Frontend::Addr("10.96.0.1:53".parse().unwrap()),
                Frontend::Addr("10.96.0.2:53".parse().unwrap()),
            ])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_is_noted_per_kind() {
        let h = Harness::start();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);

        // A list: started (relisting, alive), then listed as of its start.
        h.send(update(Kind::Services, at(10), What::Service(Event::Init)));
        settle().await;
        let k = *h.knowledge().kind(Kind::Services);
        assert!(k.relisting && !k.listed);
        assert_eq!(k.last_alive, Some(at(10)));
        assert_eq!(k.list_started, None);
        assert_eq!(
            *h.knowledge().kind(Kind::EndpointSlices),
            Default::default(),
            "other kinds untouched"
        );
        h.send(update(
            Kind::Services,
            at(10),
            What::Service(Event::InitDone),
        ));
        settle().await;
        let k = *h.knowledge().kind(Kind::Services);
        assert!(k.listed && !k.relisting);
        assert_eq!(
            k.list_started,
            Some(at(10)),
            "as current as the list's start"
        );
        assert_eq!(k.confirmed, None);

        // A timely event confirms the view as of its arrival.
        h.send(update(
            Kind::Services,
            at(20),
            What::Service(Event::Apply(service("a", "10.96.0.1"))),
        ));
        settle().await;
        assert_eq!(h.knowledge().kind(Kind::Services).confirmed, Some(at(20)));

        // One read from a backlog only shows the watch alive.
        h.send(Update {
            timely: false,
            ..update(
                Kind::Services,
                at(30),
                What::Service(Event::Delete(service("a", "10.96.0.1"))),
            )
        });
        settle().await;
        let k = *h.knowledge().kind(Kind::Services);
        assert_eq!(k.confirmed, Some(at(20)));
        assert_eq!(k.last_alive, Some(at(30)));

        // Same for bookmarks: a late one is alive only, a timely one confirms.
        h.send(Update {
            timely: false,
            ..update(Kind::Services, at(40), What::Bookmark)
        });
        settle().await;
        let k = *h.knowledge().kind(Kind::Services);
        assert_eq!((k.confirmed, k.last_alive), (Some(at(20)), Some(at(40))));
        h.send(update(Kind::Services, at(50), What::Bookmark));
        settle().await;
        assert_eq!(h.knowledge().kind(Kind::Services).confirmed, Some(at(50)));

        // A failure marks the kind failing (and counts), an accepted watch ends that.
        h.send(update(
            Kind::Pods,
            at(60),
            What::Failed("watch: connection reset".into()),
        ));
        settle().await;
        assert_eq!(h.knowledge().kind(Kind::Pods).failing_since, Some(at(60)));
        let errors = h
            .metrics
            .watch_errors
            .get_or_create(&KindLabels { kind: "pods" })
            .get();
        assert_eq!(errors, 1);
        h.send(update(Kind::Pods, at(70), What::Watching));
        settle().await;
        let k = *h.knowledge().kind(Kind::Pods);
        assert_eq!((k.failing_since, k.last_alive), (None, Some(at(70))));
        assert_eq!(
            k.confirmed, None,
            "an accepted watch proves nothing delivered"
        );
        assert_eq!(
            h.knowledge().kind(Kind::Services).confirmed,
            Some(at(50)),
            "notes stay with their kind"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_ends_ends_the_loop() {
        let h = Harness::start();
        h.list_all(Instant::now());
        settle().await;
        assert!(!h.task.is_finished());
        let Harness { tx, task, .. } = h;
        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the loop returns when a watch stream ends")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_pass_loop_ends_the_loop() {
        let h = Harness::start();
        let Harness {
            tx, signals, task, ..
        } = h;
        drop(signals);
        tx.unbounded_send(update(
            Kind::Services,
            Instant::now(),
            What::Service(Event::Apply(service("a", "10.96.0.1"))),
        ))
        .unwrap();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("a change nobody can be told of ends the loop")
            .unwrap();
    }
}
