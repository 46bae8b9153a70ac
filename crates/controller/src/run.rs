//! `conntrack-reconciler run`: the wiring of watches, index, triggers, passes and metrics.
//!
//! Tasks:
//! - *index* (see `index_task`): the per-kind list-then-watch streams (see `watch`), merged and
//!   read in batches → `Feed` → `Index` and its `Knowledge` (how fresh each kind is),
//!   write-locked per batch; dirty frontends → pass loop;
//! - *pass loop*: the `Scheduler` decides when; passes run on a blocking thread, one at a time,
//!   served by the flow cache when it is trusted (no table walk) and walking the table
//!   otherwise; every second it also re-checks the flows the gate keeps waiting (from memory);
//! - *events*: conntrack NEW and DESTROY events keep the flow cache current, and a stale NEW
//!   flow is deleted at once (see `events`);
//! - *admin*: `/metrics`, `/healthz`, `/readyz`, served from the start.
//!
//! Every deletion goes through one `FlowGate`: nothing is deleted unless every watch is fresh,
//! and a flow to a backend the agent never saw waits for proof (see `ctdiff::Gate`). If any
//! task ends or panics, the process exits non-zero (a restart is the safe way back). On
//! SIGTERM/SIGINT the pass loop finishes the pass in flight (and its delete batch), then the
//! process exits 0.

use crate::cli::RunArgs;
use crate::events::{EventPath, EventSignal};
use crate::health::Health;
use crate::http;
use crate::index_task::Signal;
use crate::local_addrs::local_addrs;
use crate::metrics::kernel_stats::TableMetrics;
use crate::metrics::{FamilyLabels, Metrics, ReasonLabels, Trigger, TriggerLabels};
use crate::pass::{
    FlowCache, FlowGate, PassConfig, PassReport, Sources, WalkChooser, recheck_waiting, record,
    run_pass_with,
};
use crate::scheduler::{Scheduler, Timing};
use crate::watch::{self, WatchTiming};
use anyhow::{Context, Result};
use ctdiff::{Decision, Dirty, Gate, GateConfig, Index, IndexConfig, Kind, Knowledge};
use ctnetlink::Conntrack;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch as tokio_watch};

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> Result<()> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    // The pass loop beats at least every resync interval; allow three misses.
    let health = Arc::new(Health::new(
        args.resync_interval * 3 + Duration::from_secs(60),
    ));
    // Serve the probes and scrapes from the start: the startup walk of a big table takes
    // seconds, and the kubelet probes meanwhile. The table metrics sample the kernel's
    // statistics on a thread of their own.
    let table = TableMetrics::register(&mut registry, args.target.netns.as_deref(), health.clone());
    let admin = tokio::spawn(http::serve(
        args.metrics_addr(),
        http::router(registry, health.clone()),
    ));

    // Fail fast, with a clear error, when the table cannot be opened (no CAP_NET_ADMIN, bad netns).
    let ct = open_conntrack(&args).context("opening the conntrack table")?;
    let client = crate::watch::client::client(args.target.kubeconfig.as_deref()).await?;

    let mut index = Index::new(IndexConfig {
        tombstone_ttl: args.tombstone_ttl,
        nodeport_addresses: args.target.nodeport_addresses.clone(),
        ..IndexConfig::new(args.node_name.clone())
    });
    *index.knowledge_mut() = Knowledge::new(args.watch_stale_after);
    let index = Arc::new(RwLock::new(index));
    refresh_local_addrs(&index, &args);
    let gate: Arc<Mutex<FlowGate>> = Arc::new(Mutex::new(Gate::new(GateConfig {
        grace: args.unseen_backend_grace,
        ..GateConfig::default()
    })));
    let held = Arc::new(AtomicBool::new(false));
    let flows = Arc::new(Mutex::new(FlowCache::new(args.zone)));
    match ctnetlink::events_sysctl(args.target.netns.as_deref()) {
        Ok(0) => {
            tracing::warn!(
                "net.netfilter.nf_conntrack_events is 0: the kernel sends no conntrack events, so new stale flows wait for a pass and every pass walks the table"
            );
            flows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .disable();
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot read net.netfilter.nf_conntrack_events; assuming events are on")
        }
    }
    if args.no_events {
        flows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .disable();
    }
    // Walk the table before the first list: a flow found now existed before that list was
    // requested, so the list alone proves a never-seen backend of it gone. After a restart,
    // flows to backends that left while the agent was down then go with the startup pass
    // instead of waiting for the next event or bookmark.
    let walked_at = Instant::now();
    let (family, zone, walk_gate) = (pass_family(&args), args.zone, gate.clone());
    let (ct, walked) = tokio::task::spawn_blocking(move || {
        let mut ct = ct;
        // Remembering a million fingerprints is work too: it stays on this blocking thread.
        let walked = walk_udp_flows(&mut ct, family, zone).map(|prints| {
            let n = prints.len();
            walk_gate
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .seen_before(walked_at, prints);
            n
        });
        (ct, walked)
    })
    .await
    .context("walking the conntrack table")?;
    match walked {
        Ok(udp_flows) => {
            tracing::info!(
                udp_flows,
                "walked the conntrack table before the first list"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot walk the conntrack table before the first list; flows to never-seen backends wait for proof")
        }
    }

    let timing = WatchTiming {
        idle_timeout: args.watch_idle_timeout,
        ..WatchTiming::default()
    };
    let relister = watch::Relister::default();
    // The watches run inside the index task, which reads them as one merged stream.
    let updates = watch::watches(client, &args.node_name, timing, &relister);
    let (signal_tx, signal_rx) = mpsc::unbounded_channel::<Signal>();
    let (ready_tx, ready_rx) = tokio_watch::channel(false);
    let (event_tx, event_rx) = mpsc::unbounded_channel::<EventSignal>();

    let addrs_task = tokio::spawn(local_addrs_loop(
        index.clone(),
        args.target.netns.clone(),
        signal_tx.clone(),
    ));
    let index_task = tokio::spawn(crate::index_task::index_loop(
        updates,
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
                gate: gate.clone(),
                zone: args.zone,
                metrics: metrics.clone(),
                families: args.target.family.families().to_vec(),
                dry_run: args.dry_run,
                per_second: args.event_deletes_per_second,
                ready: ready_rx.clone(),
                signals: event_tx,
                flows: flows.clone(),
            }
            .run(),
        )
    });

    let (stop_tx, stop_rx) = tokio_watch::channel(false);
    let mut pass_task = tokio::spawn(pass_loop(PassLoop {
        args: args.clone(),
        ct: Some(ct),
        index,
        gate,
        flows,
        walks: Arc::default(),
        held,
        relister,
        last_relist: std::collections::HashMap::new(),
        recheck_tokens: args.max_deletes_per_pass as f64,
        recheck_refilled: Instant::now(),
        metrics,
        table,
        health,
        signals: signal_rx,
        event_signals: event_rx,
        ready: ready_rx,
        stop: stop_rx,
    }));
    // Any task that ends, or panics, ends the agent: a restart is the safe way back to a
    // complete state, and a silently dead watch or event task must not go unnoticed. (A watch
    // stream that ends ends the index task.)
    let events_end = async {
        match events_task {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = &mut pass_task => result.context("pass loop task")??,
        result = admin => result.context("admin server task")??,
        result = index_task => task_ended("index", result)?,
        result = addrs_task => task_ended("local addresses", result)?,
        result = events_end => task_ended("conntrack events", result)?,
        () = shutdown_signal() => {
            // Cooperative: the pass loop finishes the pass (and delete batch) in flight, then
            // returns; nothing is cut off half-way through a batch.
            tracing::info!("shutdown requested: finishing the pass in flight");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(DRAIN_LIMIT, pass_task).await {
                Ok(result) => result.context("pass loop task")??,
                Err(_) => tracing::warn!(limit = ?DRAIN_LIMIT, "the pass in flight did not finish in time"),
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Fingerprints of the UDP flows of `family` (None: both) in `zone`, for
/// [`ctdiff::Gate::seen_before`]: one walk.
fn walk_udp_flows(
    ct: &mut Conntrack,
    family: Option<ctnetlink::Family>,
    zone: u16,
) -> Result<Vec<u64>, ctnetlink::Error> {
    let mut prints = Vec::new();
    let filter = ctnetlink::DumpFilter {
        family,
        proto: Some(ctnetlink::proto::UDP),
        ..Default::default()
    };
    ct.dump(&filter, |flow| {
        if flow.zone == zone {
            prints.push(FlowGate::fingerprint(&flow.key()));
        }
    })?;
    Ok(prints)
}

/// The error for a task that should never end.
fn task_ended(task: &str, result: Result<(), tokio::task::JoinError>) -> Result<()> {
    match result {
        Err(e) if e.is_panic() => anyhow::bail!("the {task} task panicked; exiting"),
        Err(e) => anyhow::bail!("the {task} task failed: {e}; exiting"),
        Ok(()) => anyhow::bail!("the {task} task ended; exiting"),
    }
}

fn open_conntrack(args: &RunArgs) -> Result<Conntrack, ctnetlink::Error> {
    let caps = ctnetlink::Capabilities::from_running_kernel();
    Conntrack::open(args.target.netns.as_deref(), caps)
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

struct PassLoop {
    args: RunArgs,
    ct: Option<Conntrack>,
    index: Arc<RwLock<Index>>,
    gate: Arc<Mutex<FlowGate>>,
    /// The node's UDP flows as events announce them: scoped passes look flows up there.
    flows: Arc<Mutex<FlowCache>>,
    /// How full walks dump both families (learnt from earlier walks).
    walks: Arc<Mutex<WalkChooser>>,
    /// Set when a stale flow was held because the view was not fresh.
    held: Arc<AtomicBool>,
    /// Lists a kind again when flows have waited too long for proof.
    relister: watch::Relister,
    /// When each kind was last asked to list again.
    last_relist: std::collections::HashMap<Kind, Instant>,
    /// Deletions re-checks may still make: the per-pass budget, refilled over one resync
    /// interval, so re-checks every second cannot exceed what passes may do.
    recheck_tokens: f64,
    recheck_refilled: Instant,
    metrics: Arc<Metrics>,
    table: Arc<TableMetrics>,
    health: Arc<Health>,
    signals: mpsc::UnboundedReceiver<Signal>,
    event_signals: mpsc::UnboundedReceiver<EventSignal>,
    ready: tokio_watch::Receiver<bool>,
    /// Becomes true on shutdown: the loop returns once no pass is in flight.
    stop: tokio_watch::Receiver<bool>,
}

/// How long a shutdown waits for the pass in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(25);

/// How often the pass loop re-checks waiting flows and samples the view's freshness.
const TICK: Duration = Duration::from_secs(1);

async fn pass_loop(mut p: PassLoop) -> Result<()> {
    // Nothing is decided before the state is complete.
    while !*p.ready.borrow() {
        p.health.beat();
        record_freshness(&p);
        tokio::select! {
            changed = p.ready.changed() => changed.context("index task ended")?,
            _ = p.stop.changed() => return Ok(()),
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    // The startup pass covers every change so far. Their follow-ups are not kept: changes that
    // race the first lists are part of the initial state, and their scopes together cover
    // nearly every frontend — served from the flow cache, such a follow-up would copy every
    // flow of the table out of it.
    while p.signals.try_recv().is_ok() {}
    let timing = Timing {
        debounce: p.args.debounce,
        max_delay: p.args.max_delay,
        follow_ups: p.args.follow_ups.clone(),
        resync: p.args.resync_interval,
        // Long enough for kube-proxy to have rewritten its rules in the common case, short
        // enough that a rate-limited frontend recovers well before the next follow-up.
        retry: Duration::from_millis(500),
    };
    let mut scheduler = Scheduler::new(timing, Instant::now());
    let mut next_tick = Instant::now() + TICK;
    loop {
        p.health.beat();
        scheduler.set_cheap_scoped_passes(
            p.flows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_complete(),
        );
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + TICK;
            let fresh = record_freshness(&p);
            if fresh && p.held.swap(false, Ordering::Relaxed) {
                tracing::info!(
                    "the view is fresh again: a full pass picks up the flows held meanwhile"
                );
                scheduler.on_view_fresh();
            }
            if fresh
                && !p
                    .gate
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_empty()
            {
                let handle = p.ct.take().context("the conntrack handle is missing")?;
                let (handle, overdue) = recheck(handle, &mut p).await?;
                p.ct = Some(handle);
                ask_for_proof(&mut p, &overdue);
            }
        }
        if let Some(due) = scheduler.take_due(Instant::now()) {
            if due.trigger == Trigger::periodic {
                let expired = p
                    .index
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expire_tombstones(Instant::now());
                if expired > 0 {
                    tracing::debug!(expired, "tombstones expired");
                }
            }
            let handle = p.ct.take().context("the conntrack handle is missing")?;
            let full = due.scope.all;
            let (handle, ok) = run_one_pass(handle, due.trigger, due.scope, &p).await?;
            p.ct = Some(handle);
            if full && ok {
                // Every flow of the walk before the first list has now been judged.
                p.gate
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear_seen_before();
            }
            if ok {
                p.health.set_ready();
            }
            continue;
        }
        let deadline = tokio::time::Instant::from_std(scheduler.next_deadline().min(next_tick));
        tokio::select! {
            signal = p.signals.recv() => match signal {
                Some(Signal::Changed(scope)) => scheduler.on_change(scope, Instant::now()),
                None => anyhow::bail!("index task ended"),
            },
            Some(signal) = p.event_signals.recv() => match signal {
                EventSignal::Lost => scheduler.on_events_lost(Instant::now()),
                EventSignal::Subscribed => {
                    // A full walk seeds the flow cache, unless one already did since.
                    if !p.flows.lock().unwrap_or_else(PoisonError::into_inner).is_complete() {
                        scheduler.on_cache_unseeded();
                    }
                }
                EventSignal::RateLimited(frontend) => scheduler.on_rate_limited(frontend, Instant::now()),
                EventSignal::Waiting => {} // the next tick re-checks
                EventSignal::Held => p.held.store(true, Ordering::Relaxed),
            },
            _ = p.stop.changed() => return Ok(()),
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Re-reads this node's addresses every second (getifaddrs, inside another namespace with
/// `--netns`) on a blocking thread, and updates the index when they changed: a node address
/// that moves away (keepalived, kube-vip) stops being a NodePort frontend at once, not at the
/// next periodic pass. Its own task, so that a slow read never delays a pass.
async fn local_addrs_loop(
    index: Arc<RwLock<Index>>,
    netns: Option<std::path::PathBuf>,
    signals: mpsc::UnboundedSender<Signal>,
) {
    let mut last: Option<Vec<std::net::IpAddr>> = None;
    loop {
        tokio::time::sleep(TICK).await;
        let netns = netns.clone();
        match tokio::task::spawn_blocking(move || local_addrs(netns.as_deref())).await {
            Ok(Ok(mut addrs)) => {
                addrs.sort_unstable();
                addrs.dedup();
                if last.as_ref() != Some(&addrs) {
                    // The frontends this makes dirty go to the pass loop now, not with the
                    // next watch update (which may be a bookmark a minute away).
                    let dirty = {
                        let mut index = index.write().unwrap_or_else(PoisonError::into_inner);
                        index.set_local_addrs(addrs.iter().copied());
                        index.take_dirty()
                    };
                    if !dirty.is_empty() {
                        // (Fails only once the pass loop is gone: the agent is stopping.)
                        let _ = signals.send(Signal::Changed(dirty));
                    }
                    last = Some(addrs);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot list local addresses; keeping the previous ones")
            }
            Err(e) => tracing::warn!(error = %e, "listing local addresses panicked"),
        }
    }
}

/// Samples how fresh the view is into the metrics; true when every kind is fresh.
fn record_freshness(p: &PassLoop) -> bool {
    let now = Instant::now();
    let (fresh, staleness) = {
        let index = p.index.read().unwrap_or_else(PoisonError::into_inner);
        p.metrics.record_knowledge(index.knowledge(), now);
        let staleness = index.knowledge().first_staleness(now);
        (staleness.is_none(), staleness)
    };
    p.health.set_stale(staleness.map(|s| s.to_string()));
    {
        let flows = p.flows.lock().unwrap_or_else(PoisonError::into_inner);
        p.metrics
            .flow_cache_flows
            .set(i64::try_from(flows.len()).unwrap_or(i64::MAX));
        p.metrics
            .flow_cache_complete
            .set(i64::from(flows.is_complete()));
    }
    let waiting = p.gate.lock().unwrap_or_else(PoisonError::into_inner).len();
    p.metrics
        .flows_waiting
        .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    fresh
}

/// Lists again the kinds some flow has waited on for too long (no event or bookmark came to
/// prove its verdict), at most once per two overdue periods per kind.
fn ask_for_proof(p: &mut PassLoop, overdue: &[Kind]) {
    let now = Instant::now();
    let every = p
        .args
        .unseen_backend_grace
        .saturating_mul(2 * crate::pass::PROOF_OVERDUE_GRACES)
        .max(2 * crate::pass::MIN_PROOF_OVERDUE);
    for kind in overdue {
        let due = p
            .last_relist
            .get(kind)
            .is_none_or(|at| now.saturating_duration_since(*at) >= every);
        if due {
            tracing::info!(
                kind = kind.as_str(),
                "stale flows wait for proof that no event or bookmark brought: listing again"
            );
            p.last_relist.insert(*kind, now);
            p.relister.relist(*kind);
        }
    }
}

/// Re-checks the flows the gate keeps waiting, from memory, and deletes those it now lets
/// through (on a blocking thread: deleting is a netlink exchange). Returns the kinds some
/// flow has waited on for too long.
async fn recheck(ct: Conntrack, p: &mut PassLoop) -> Result<(Conntrack, Vec<Kind>)> {
    let (index, gate) = (p.index.clone(), p.gate.clone());
    let dry_run = p.args.dry_run;
    let budget = match p.args.max_deletes_per_pass {
        0 => 0, // no limit
        per_pass => {
            let now = Instant::now();
            let refill = now
                .saturating_duration_since(p.recheck_refilled)
                .as_secs_f64()
                / p.args.resync_interval.as_secs_f64().max(1.0);
            p.recheck_refilled = now;
            p.recheck_tokens = (p.recheck_tokens + refill * per_pass as f64).min(per_pass as f64);
            if p.recheck_tokens < 1.0 {
                return Ok((ct, Vec::new()));
            }
            p.recheck_tokens.floor() as u64
        }
    };
    let (ct, found, deleted) = tokio::task::spawn_blocking(move || {
        let mut ct = ct;
        let found = recheck_waiting(&index, &gate, Instant::now(), budget);
        let deleted = if dry_run || found.delete.is_empty() {
            None
        } else {
            Some(ct.delete(found.delete.iter().map(|s| s.flow.key())))
        };
        (ct, found, deleted)
    })
    .await
    .context("re-check thread panicked")?;
    if budget > 0 {
        p.recheck_tokens -= found.delete.len() as f64;
    }
    for s in &found.delete {
        record::acted_on(&p.metrics, s, dry_run);
    }
    if found.budget_hit {
        p.metrics.budget_exhausted.inc();
    }
    match deleted {
        Some(Ok(report)) if !report.failed.is_empty() => {
            tracing::warn!(failed = report.failed.len(), "re-check deletes failed")
        }
        Some(Err(e)) => tracing::warn!(error = %e, "re-check delete failed; the next pass retries"),
        _ => {}
    }
    if !found.delete.is_empty() {
        tracing::info!(
            deleted = found.delete.len(),
            still_waiting = found.still_waiting,
            recovered = found.recovered,
            dry_run,
            "waiting flows proven stale"
        );
    }
    Ok((ct, found.overdue))
}

/// The family a pass walks: `None` (both, in one `AF_UNSPEC` walk) when both are reconciled.
fn pass_family(args: &RunArgs) -> Option<ctnetlink::Family> {
    match args.target.family.families() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Runs one pass on a blocking thread; returns the handle and whether it succeeded.
async fn run_one_pass(
    ct: Conntrack,
    trigger: Trigger,
    scope: Dirty,
    p: &PassLoop,
) -> Result<(Conntrack, bool)> {
    p.metrics
        .passes
        .get_or_create(&TriggerLabels { trigger })
        .inc();
    let cfg = PassConfig {
        family: pass_family(&p.args),
        dry_run: p.args.dry_run,
        budget: p.args.max_deletes_per_pass,
        zone: p.args.zone,
    };
    let (index, gate, flows) = (p.index.clone(), p.gate.clone(), p.flows.clone());
    let walks = p.walks.clone();
    let full = scope.all;
    let (ct, result, elapsed) = tokio::task::spawn_blocking(move || {
        let mut ct = ct;
        let started = Instant::now();
        let mut walks = walks.lock().unwrap_or_else(PoisonError::into_inner);
        let sources = Sources {
            cache: Some(&flows),
            walks: &mut walks,
        };
        let result = run_pass_with(
            &mut ct,
            &index,
            Some(&gate),
            sources,
            &scope,
            &cfg,
            Instant::now(),
        );
        (ct, result, started.elapsed())
    })
    .await
    .context("pass thread panicked")?;
    let families = p.args.target.family.families();
    for family in families {
        p.metrics
            .pass_duration
            .get_or_create(&FamilyLabels {
                ip_family: (*family).into(),
            })
            .observe(elapsed.as_secs_f64());
    }
    let mut report = match result {
        Ok(report) => report,
        Err(e) => {
            for family in families {
                p.metrics
                    .pass_failures
                    .get_or_create(&FamilyLabels {
                        ip_family: (*family).into(),
                    })
                    .inc();
            }
            tracing::error!(error = %e, "pass failed; the next trigger retries");
            return Ok((ct, false));
        }
    };
    if report.held > 0 {
        p.held.store(true, Ordering::Relaxed);
    }
    record_pass(&p.metrics, trigger, &report, elapsed, p.args.dry_run);
    if report.walked {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        p.metrics.last_successful_pass.set(unix);
    }
    if report.walked && full {
        // Walks the cache's groups: sampled after full passes, not every second.
        let bytes = p
            .flows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .memory_bytes();
        p.metrics
            .flow_cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        // Every family's table was read whole: the per-frontend figures are complete.
        let tally = std::mem::take(&mut report.tally);
        let figures = {
            let index = p.index.read().unwrap_or_else(PoisonError::into_inner);
            tally.resolve(&index, Instant::now(), crate::pass::tally::MAX_SERIES)
        };
        p.table.record_pass(figures);
    }
    Ok((ct, true))
}

fn record_pass(
    metrics: &Metrics,
    trigger: Trigger,
    r: &PassReport,
    elapsed: Duration,
    dry_run: bool,
) {
    for (family, scanned) in r.scanned_by_family() {
        metrics
            .flows_scanned
            .get_or_create(&FamilyLabels {
                ip_family: family.into(),
            })
            .inc_by(scanned);
    }
    for s in &r.stale {
        record::acted_on(metrics, s, dry_run);
    }
    metrics.postponed_by(Decision::Defer, r.deferred);
    metrics.postponed_by(Decision::Hold, r.held);
    for (family, reason, n) in &r.over_budget {
        metrics
            .flows_not_deleted
            .get_or_create(&ReasonLabels {
                ip_family: (*family).into(),
                reason: reason.to_string(),
            })
            .inc_by(*n);
    }
    if r.budget_hit() {
        metrics.budget_exhausted.inc();
        let left: u64 = r.over_budget.iter().map(|(_, _, n)| n).sum();
        tracing::warn!(
            left,
            "deletion budget reached; the rest waits for the next pass"
        );
    }
    if !r.walked {
        metrics.passes_from_cache.inc();
    }
    metrics.flows_missed_by_cache.inc_by(r.missed_by_cache);
    if r.missed_by_cache > 0 {
        tracing::warn!(
            missed = r.missed_by_cache,
            "the full pass found stale flows the flow cache lacked (lost events?)"
        );
    }
    for (key, err) in &r.failed {
        record::delete_failed(metrics, key.family, 1);
        tracing::debug!(flow = %key.orig, error = %err, "delete failed");
    }
    if !r.failed.is_empty() {
        tracing::warn!(failed = r.failed.len(), "deletes failed");
    }
    if !r.stale.is_empty() || r.deferred > 0 || r.held > 0 {
        tracing::info!(
            trigger = ?trigger, walked = r.walked, scanned = r.scanned, stale = r.stale.len(), deferred = r.deferred,
            held = r.held, recovered = r.recovered, deleted = r.deleted,
            already_gone = r.already_gone, failed = r.failed.len(), dry_run, ms = elapsed.as_millis() as u64,
            "pass"
        );
    } else {
        tracing::debug!(trigger = ?trigger, walked = r.walked, scanned = r.scanned, ms = elapsed.as_millis() as u64, "pass");
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
