//! `conntrack-reconciler run`: the wiring of watches, index, triggers, passes and metrics.
//!
//! Tasks:
//! - *index*: watch updates → `Feed` → `Index` (write-locked per update), dirty frontends → pass loop;
//! - *pass loop*: the `Scheduler` decides when; passes run on a blocking thread, one at a time;
//! - *events*: conntrack NEW events → immediate deletes (see `events`);
//! - *admin*: `/metrics`, `/healthz`, `/readyz`.
//!
//! Nothing is deleted before every watch has completed its first list. On SIGTERM/SIGINT the
//! loops stop taking work, a pass in flight (and its delete batch) finishes, and the process
//! exits 0.

use crate::cli::RunArgs;
use crate::events::{EventPath, EventSignal};
use crate::feed::Feed;
use crate::http::{self, Health};
use crate::local_addrs::local_addrs;
use crate::metrics::{FamilyLabels, KindLabels, Metrics, ReasonLabels, Trigger, TriggerLabels};
use crate::pass::{PassConfig, PassReport, run_pass};
use crate::scheduler::{Scheduler, Scope, Timing};
use crate::table_stats::TableMetrics;
use crate::watch::{self, Update};
use anyhow::{Context, Result};
use ctdiff::{Dirty, Frontend, Index, IndexConfig};
use ctnetlink::Conntrack;
use prometheus_client::registry::Registry;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch as tokio_watch};

/// What the index task tells the pass loop.
enum Signal {
    /// The index changed; these frontends are affected.
    Changed(Scope<Frontend>),
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> Result<()> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    // The pass loop beats at least every resync interval; allow three misses.
    let health = Arc::new(Health::new(
        args.resync_interval * 3 + Duration::from_secs(60),
    ));

    // Fail fast, with a clear error, when the table cannot be opened (no CAP_NET_ADMIN, bad netns).
    let ct = open_conntrack(&args).context("opening the conntrack table")?;
    let client = crate::kube_client::client(args.target.kubeconfig.as_deref()).await?;

    let index = Arc::new(RwLock::new(Index::new(IndexConfig {
        tombstone_ttl: args.tombstone_ttl,
        ..IndexConfig::new(args.node_name.clone())
    })));
    refresh_local_addrs(&index, &args);

    let table = TableMetrics::register(&mut registry, args.target.netns.as_deref(), health.clone());
    let admin = tokio::spawn(http::serve(
        args.metrics_addr,
        http::router(registry, health.clone()),
    ));

    let (update_tx, update_rx) = mpsc::channel::<Update>(1024);
    let watchers = watch::spawn(client, &args.node_name, update_tx);
    let (signal_tx, signal_rx) = mpsc::unbounded_channel::<Signal>();
    let (ready_tx, ready_rx) = tokio_watch::channel(false);
    let (event_tx, event_rx) = mpsc::unbounded_channel::<EventSignal>();

    let index_task = tokio::spawn(index_loop(
        update_rx,
        index.clone(),
        metrics.clone(),
        signal_tx,
        ready_tx,
    ));
    let events_task = (!args.no_events).then(|| {
        tokio::spawn(
            EventPath {
                netns: args.target.netns.clone(),
                index: index.clone(),
                metrics: metrics.clone(),
                families: args.target.family.families().to_vec(),
                dry_run: args.dry_run,
                per_second: args.event_deletes_per_second,
                ready: ready_rx.clone(),
                signals: event_tx,
            }
            .run(),
        )
    });

    let pass_loop = pass_loop(PassLoop {
        args: args.clone(),
        ct: Some(ct),
        index,
        metrics,
        table,
        health,
        signals: signal_rx,
        event_signals: event_rx,
        ready: ready_rx,
    });
    tokio::select! {
        result = pass_loop => result?,
        result = admin => result.context("admin server task")??,
        () = shutdown_signal() => tracing::info!("shutdown requested"),
    }
    for w in watchers {
        w.abort();
    }
    index_task.abort();
    if let Some(t) = events_task {
        t.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

fn open_conntrack(args: &RunArgs) -> Result<Conntrack, ctnetlink::Error> {
    match &args.target.netns {
        Some(path) => Conntrack::open_in(path),
        None => Conntrack::open(),
    }
}

fn refresh_local_addrs(index: &RwLock<Index>, args: &RunArgs) {
    match local_addrs(args.target.netns.as_deref()) {
        Ok(addrs) => index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .set_local_addrs(addrs),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list local addresses; keeping the previous ones")
        }
    }
}

/// Most watch updates applied under one write lock.
const UPDATE_BATCH: usize = 256;

/// Applies watch updates to the index and tells the pass loop what changed.
async fn index_loop(
    mut updates: mpsc::Receiver<Update>,
    index: Arc<RwLock<Index>>,
    metrics: Arc<Metrics>,
    signals: mpsc::UnboundedSender<Signal>,
    ready: tokio_watch::Sender<bool>,
) {
    let mut feed = Feed::default();
    let mut batch: Vec<Update> = Vec::with_capacity(UPDATE_BATCH);
    while updates.recv_many(&mut batch, UPDATE_BATCH).await > 0 {
        // Everything queued is applied under one write lock, and the dirty set and the index's
        // sizes (a walk of the index) are taken once per batch, not once per object: a relist
        // of 10,000 objects arrives as a burst.
        let now = Instant::now();
        let relist_done = batch.iter().any(Update::is_relist_done);
        let (skipped, dirty, stats) = {
            let mut index = index.write().unwrap_or_else(PoisonError::into_inner);
            let mut skipped = Vec::new();
            for update in batch.drain(..) {
                let (kind, report) = match update {
                    Update::Service(e) => ("services", feed.services.handle(&mut index, e, now)),
                    Update::Slice(e) => ("endpointslices", feed.slices.handle(&mut index, e, now)),
                    Update::Node(e) => ("nodes", feed.nodes.handle(&mut index, e, now)),
                    Update::Pod(e) => ("pods", feed.pods.handle(&mut index, e, now)),
                    Update::Error { kind, error } => {
                        metrics
                            .watch_errors
                            .get_or_create(&KindLabels { kind })
                            .inc();
                        tracing::warn!(kind, error = %error, "watch failed; retrying, the last complete state keeps serving");
                        continue;
                    }
                };
                if !report.is_empty() {
                    skipped.push((kind, report));
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
        let scope = scope_of(dirty);
        if !scope.is_empty() && signals.send(Signal::Changed(scope)).is_err() {
            return;
        }
        if feed.all_ready() && !*ready.borrow() {
            tracing::info!(?stats, "every watch has listed: the state is complete");
            let _ = ready.send(true);
        }
    }
}

fn scope_of(dirty: Dirty) -> Scope<Frontend> {
    if dirty.all {
        Scope::All
    } else {
        Scope::Frontends(dirty.frontends.into_iter().collect())
    }
}

struct PassLoop {
    args: RunArgs,
    ct: Option<Conntrack>,
    index: Arc<RwLock<Index>>,
    metrics: Arc<Metrics>,
    table: Arc<TableMetrics>,
    health: Arc<Health>,
    signals: mpsc::UnboundedReceiver<Signal>,
    event_signals: mpsc::UnboundedReceiver<EventSignal>,
    ready: tokio_watch::Receiver<bool>,
}

async fn pass_loop(mut p: PassLoop) -> Result<()> {
    // Nothing is decided before the state is complete.
    while !*p.ready.borrow() {
        p.health.beat();
        tokio::select! {
            changed = p.ready.changed() => changed.context("index task ended")?,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    while p.signals.try_recv().is_ok() {} // the startup pass covers everything listed so far
    let timing = Timing {
        debounce: p.args.debounce,
        max_delay: p.args.max_delay,
        follow_ups: p.args.follow_ups.clone(),
        resync: p.args.resync_interval,
        // Long enough for kube-proxy to have rewritten its rules in the common case, short
        // enough that a rate-limited frontend recovers well before the next follow-up.
        retry: Duration::from_millis(500),
    };
    let mut scheduler = Scheduler::<Frontend>::new(timing, Instant::now());
    loop {
        p.health.beat();
        if let Some(due) = scheduler.take_due(Instant::now()) {
            if due.trigger == Trigger::periodic {
                refresh_local_addrs(&p.index, &p.args);
                let expired = p
                    .index
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expire_tombstones(Instant::now());
                if expired > 0 {
                    tracing::debug!(expired, "tombstones expired");
                }
            }
            let handle =
                p.ct.take()
                    .expect("the handle is returned after every pass");
            let (handle, ok) = run_passes(handle, due.trigger, due.scope, &p).await?;
            p.ct = Some(handle);
            if ok {
                p.health.set_ready();
            }
            continue;
        }
        let deadline = tokio::time::Instant::from_std(scheduler.next_deadline());
        tokio::select! {
            signal = p.signals.recv() => match signal {
                Some(Signal::Changed(scope)) => scheduler.on_change(scope, Instant::now()),
                None => anyhow::bail!("index task ended"),
            },
            Some(signal) = p.event_signals.recv() => match signal {
                EventSignal::Lost => scheduler.on_events_lost(),
                EventSignal::RateLimited(frontend) => scheduler.on_rate_limited(frontend, Instant::now()),
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Runs one pass per family on a blocking thread; returns the handle and whether all succeeded.
async fn run_passes(
    ct: Conntrack,
    trigger: Trigger,
    scope: Scope<Frontend>,
    p: &PassLoop,
) -> Result<(Conntrack, bool)> {
    p.metrics
        .passes
        .get_or_create(&TriggerLabels { trigger })
        .inc();
    let families = p.args.target.family.families().to_vec();
    let (dry_run, budget) = (p.args.dry_run, p.args.max_deletes_per_pass);
    let index = p.index.clone();
    let (ct, results) = tokio::task::spawn_blocking(move || {
        let mut ct = ct;
        let results: Vec<_> = families
            .iter()
            .map(|&family| {
                let started = Instant::now();
                let cfg = PassConfig {
                    family,
                    dry_run,
                    budget,
                };
                (
                    family,
                    run_pass(&mut ct, &index, &scope, &cfg, Instant::now()),
                    started.elapsed(),
                )
            })
            .collect();
        (ct, results)
    })
    .await
    .context("pass thread panicked")?;
    let mut all_ok = true;
    let mut tally = crate::flow_tally::FlowTally::default();
    for (family, result, elapsed) in results {
        let fam = FamilyLabels {
            ip_family: family.into(),
        };
        p.metrics
            .pass_duration
            .get_or_create(&fam)
            .observe(elapsed.as_secs_f64());
        match result {
            Ok(mut report) => {
                record_pass(&p.metrics, family, trigger, &report, elapsed, dry_run);
                tally.merge(std::mem::take(&mut report.tally));
            }
            Err(e) => {
                all_ok = false;
                p.metrics.pass_failures.get_or_create(&fam).inc();
                tracing::error!(%family, error = %e, "pass failed; the next trigger retries");
            }
        }
    }
    if all_ok {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        p.metrics.last_successful_pass.set(unix);
        // Every family's table was read whole: the per-frontend figures are complete.
        let figures = {
            let index = p.index.read().unwrap_or_else(PoisonError::into_inner);
            tally.resolve(&index, Instant::now(), crate::flow_tally::MAX_SERIES)
        };
        p.table.record_pass(figures);
    }
    Ok((ct, all_ok))
}

fn record_pass(
    metrics: &Metrics,
    family: ctnetlink::Family,
    trigger: Trigger,
    r: &PassReport,
    elapsed: Duration,
    dry_run: bool,
) {
    let ip_family = crate::metrics::IpFamily::from(family);
    metrics
        .flows_scanned
        .get_or_create(&FamilyLabels {
            ip_family: ip_family.clone(),
        })
        .inc_by(r.scanned);
    let counter = if dry_run {
        &metrics.flows_not_deleted
    } else {
        &metrics.flows_deleted
    };
    for s in &r.stale {
        counter
            .get_or_create(&ReasonLabels {
                ip_family: ip_family.clone(),
                reason: s.reason.to_string(),
            })
            .inc();
        tracing::debug!(
            flow = %s.flow.orig, backend = %s.flow.reply.src, frontend = %s.frontend, service = %s.service, port = %s.port,
            reason = %s.reason, dry_run, "stale flow"
        );
    }
    for (reason, n) in &r.over_budget {
        metrics
            .flows_not_deleted
            .get_or_create(&ReasonLabels {
                ip_family: ip_family.clone(),
                reason: reason.to_string(),
            })
            .inc_by(*n);
    }
    if r.budget_hit() {
        metrics.budget_exhausted.inc();
        let left: u64 = r.over_budget.iter().map(|(_, n)| n).sum();
        tracing::warn!(%family, left, "deletion budget reached; the rest waits for the next pass");
    }
    if !r.failed.is_empty() {
        metrics
            .delete_errors
            .get_or_create(&FamilyLabels { ip_family })
            .inc_by(r.failed.len() as u64);
        for (key, err) in r.failed.iter().take(10) {
            tracing::warn!(flow = %key.orig, error = %err, "delete failed");
        }
    }
    if !r.stale.is_empty() {
        tracing::info!(
            %family, trigger = ?trigger, scanned = r.scanned, stale = r.stale.len(), deleted = r.deleted,
            already_gone = r.already_gone, failed = r.failed.len(), dry_run, ms = elapsed.as_millis() as u64,
            "pass"
        );
    } else {
        tracing::debug!(%family, trigger = ?trigger, scanned = r.scanned, ms = elapsed.as_millis() as u64, "pass");
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
