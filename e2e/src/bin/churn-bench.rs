//! What one change, constant churn, a big cluster and a storm of conntrack events cost the agent
//! binary on a big table (root; issue 12's targets).
//!
//! `cargo run --release -p e2e --bin churn-bench -- [--agent PATH] [--entries N] [--services S]
//! [--seconds T] [--reps R] [--only one-change|churn|memory|events] [--json]`
//!
//! The release agent (`cargo build --release -p conntrack-reconciler`) runs with `--netns` on a
//! throwaway network namespace whose table is filled with UDP entries DNATed to the backends of
//! `S` services, against the loopback list/watch API double (`e2e::apiserver::ApiServer`), with
//! `--family ipv4 --resync-interval 1h` (no periodic full pass inside a measuring window),
//! `--debounce 100ms` (its default, explicit so that latencies can be given after it) and its
//! default follow-ups. Every figure is a ratio to, or a difference from,
//! something measured in the same run:
//!
//! - **one-change**: one endpoint (a backend with `N / S / 10` flows) is removed from one
//!   EndpointSlice. The agent's CPU in a fixed window after the change (long enough to include
//!   the default follow-ups) minus its idle CPU over the same length, as a share of the CPU of
//!   one full dump+classify: `check -o json --state` on the same table, user + system time of
//!   the process (so its kernel walk counts, as the agent's does). The agent's CPU is read
//!   both from `/proc/PID/stat` (10 ms ticks, exited threads included) and from each thread's
//!   `schedstat` (nanoseconds, exited threads missed). Latency: from just before
//!   the API double stores the change to the kernel's DESTROY event of the backend's last flow
//!   (conntrack events, read by this process); it includes the agent's debounce. Every
//!   repetition re-adds the endpoint, waits for the agent to go quiet and re-creates the flows.
//!   Any DESTROY of another flow is a false deletion.
//! - **churn**: `--churn-services` services each have an eleventh endpoint that no flow uses;
//!   it flips ready / not ready `--churn-rate` times a second in all, round robin, so every
//!   change makes the agent act but no flow is stale: the cost is the passes alone. Agent CPU as
//!   a share of one core over the run, passes run (`conntrack_reconciler_passes_total`), entries
//!   before and after, DESTROY events seen (all false deletions).
//! - **memory**: a second namespace, the same number of entries spread over `--mem-services`
//!   services; the agent's VmHWM once ready and again after one periodic full pass (this
//!   scenario alone runs the agent with a short `--resync-interval`).
//! - **events**: two threads create and delete UDP entries (DNATed to healthy backends) as fast
//!   as they can beside the big table for `--event-seconds`; the NEW+DESTROY rate achieved, the
//!   agent's CPU at that rate, `conntrack_reconciler_events_lost_total` and the events the agent
//!   counted against those generated. An entry the deleting thread finds already gone was
//!   deleted by the agent: a false deletion.
//!
//! Scenarios run one after another, never beside another benchmark (namespace deletion and big
//! dumps walk the kernel's global table). The table goes to stderr; with `--json` one JSON line
//! goes to stdout.

use anyhow::{Context, Result, bail};
use ctnetlink::testing::{KnobGuard, TestNetns};
use ctnetlink::{Conntrack, Event, EventKinds, Family, FlowKey, NewFlow, Status, Tuple, proto};
use e2e::apiserver::ApiServer;
use e2e::bench::{BenchAgent, endpoint, ms, node, percentile, service, thread_cpu_between, vip};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODE: &str = "churn-node";
/// Endpoints per service that carry flows.
const ENDPOINTS: u32 = 10;
/// The agent's debounce, passed explicitly so that latencies can be reported after it.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Entries per `Conntrack::create` call while filling.
const FILL_CHUNK: u32 = 65_536;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Only {
    OneChange,
    Churn,
    Memory,
    Events,
}

struct Options {
    agent: PathBuf,
    entries: u32,
    services: u32,
    seconds: u64,
    reps: usize,
    window: Duration,
    churn_services: u32,
    churn_rate: f64,
    mem_services: u32,
    event_seconds: u64,
    only: Option<Only>,
    json: bool,
}

impl Options {
    fn runs(&self, what: Only) -> bool {
        self.only.is_none_or(|o| o == what)
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("churn-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn options() -> Result<Options> {
    let exe = std::env::current_exe()?;
    let mut o = Options {
        agent: exe.with_file_name("conntrack-reconciler"),
        entries: 1_000_000,
        services: 1_000,
        seconds: 30,
        reps: 20,
        window: Duration::from_secs(12),
        churn_services: 200,
        churn_rate: 5.0,
        mem_services: 10_000,
        event_seconds: 10,
        only: None,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--agent" => o.agent = value()?.into(),
            "--entries" => o.entries = value()?.parse()?,
            "--services" => o.services = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--reps" => o.reps = value()?.parse()?,
            "--window" => o.window = Duration::from_secs_f64(value()?.parse()?),
            "--churn-services" => o.churn_services = value()?.parse()?,
            "--churn-rate" => o.churn_rate = value()?.parse()?,
            "--mem-services" => o.mem_services = value()?.parse()?,
            "--event-seconds" => o.event_seconds = value()?.parse()?,
            "--only" => {
                o.only = Some(match value()?.as_str() {
                    "one-change" => Only::OneChange,
                    "churn" => Only::Churn,
                    "memory" => Only::Memory,
                    "events" => Only::Events,
                    other => bail!("--only {other:?}: one-change, churn, memory or events"),
                })
            }
            "--json" => o.json = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    for (name, s) in [
        ("--services", o.services),
        ("--mem-services", o.mem_services),
    ] {
        // vip() and endpoint() below give distinct addresses up to here.
        if s == 0 || s > 39_000 {
            bail!("{name} must be 1..=39000");
        }
    }
    if o.entries < o.services * ENDPOINTS || o.entries > 16_000_000 {
        bail!("--entries must be at least 10 x --services (a flow per endpoint) and <= 16M");
    }
    if o.churn_services == 0 || o.churn_services > o.services {
        bail!("--churn-services must be 1..=--services");
    }
    if o.reps == 0 || o.seconds == 0 || o.event_seconds == 0 || o.churn_rate <= 0.0 {
        bail!("--reps, --seconds, --event-seconds and --churn-rate must be positive");
    }
    if !o.agent.is_file() {
        bail!(
            "agent binary {} not found: build it with `cargo build --release -p conntrack-reconciler` or pass --agent",
            o.agent.display()
        );
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// The cluster and the table.

/// Service i's slice: endpoints 0..10 but `without`, and when `spare` is set an eleventh
/// endpoint (k = 10) that no flow uses, ready or not as given.
fn slice(i: u32, without: Option<u32>, spare: Option<bool>) -> Value {
    let mut eps: Vec<Value> = (0..ENDPOINTS)
        .filter(|k| Some(*k) != without)
        .map(|k| json!({"addresses": [endpoint(i, k).to_string()], "conditions": {"ready": true}}))
        .collect();
    if let Some(ready) = spare {
        eps.push(json!({"addresses": [endpoint(i, ENDPOINTS).to_string()],
                        "conditions": {"ready": ready}}));
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-a"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}]
    })
}

fn apply_slice(api: &ApiServer, slice: Value) -> Result<()> {
    api.apply(&serde_json::from_value::<EndpointSlice>(slice)?)?;
    Ok(())
}

fn apply_cluster(api: &ApiServer, services: u32, spare: bool) -> Result<()> {
    api.apply(&serde_json::from_value::<Node>(node(NODE))?)?;
    for i in 0..services {
        api.apply(&serde_json::from_value::<Service>(service(i))?)?;
        apply_slice(api, slice(i, None, spare.then_some(true)))?;
    }
    Ok(())
}

/// The same cluster as a `v1 List` for `check --state`.
fn state_file(path: &Path, services: u32, spare: bool) -> Result<()> {
    let items: Vec<Value> = std::iter::once(node(NODE))
        .chain((0..services).flat_map(|i| [service(i), slice(i, None, spare.then_some(true))]))
        .collect();
    std::fs::write(
        path,
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?,
    )?;
    Ok(())
}

/// Background entry j: a client of service j % S answered by its endpoint (j / S) % 10, so
/// every endpoint carries N / S / 10 flows and every flow is healthy.
fn entry(j: u32, services: u32) -> NewFlow {
    let i = j % services;
    let k = (j / services) % ENDPOINTS;
    let client = IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 | (j & 0xffff)));
    let sport = 1024 + (j >> 16) as u16;
    dnat(client, sport, i, k)
}

fn dnat(client: IpAddr, sport: u16, i: u32, k: u32) -> NewFlow {
    NewFlow {
        orig: Tuple::new(client, vip(i).into(), proto::UDP, sport, 53),
        reply: Tuple::new(endpoint(i, k).into(), client, proto::UDP, 5353, sport),
        timeout: 3600,
        status: Status::SEEN_REPLY | Status::ASSURED | Status::DST_NAT,
        mark: 0,
        zone: 0,
    }
}

/// Entries j of the background table that belong to endpoint k of service i.
fn endpoint_entries(entries: u32, services: u32, i: u32, k: u32) -> Vec<NewFlow> {
    (0..entries)
        .filter(|j| j % services == i && (j / services) % ENDPOINTS == k)
        .map(|j| entry(j, services))
        .collect()
}

fn create_all(ct: &mut Conntrack, flows: &[NewFlow]) -> Result<()> {
    let report = ct.create(flows)?;
    if let Some((_, e)) = report.failed.first() {
        bail!("create failed: {e}");
    }
    Ok(())
}

fn fill(ct: &mut Conntrack, entries: u32, services: u32) -> Result<Duration> {
    let started = Instant::now();
    let mut chunk = Vec::with_capacity(FILL_CHUNK as usize);
    for start in (0..entries).step_by(FILL_CHUNK as usize) {
        chunk.clear();
        chunk.extend((start..entries.min(start + FILL_CHUNK)).map(|j| entry(j, services)));
        create_all(ct, &chunk)?;
    }
    Ok(started.elapsed())
}

// ---------------------------------------------------------------------------------------------
// The agent process.

/// The agent under test.
type Agent = BenchAgent;

/// Starts the agent with the benchmark's debounce.
fn start_agent(bin: &Path, api: &ApiServer, netns: &Path, extra: &[&str]) -> Result<Agent> {
    let debounce = format!("{}ms", DEBOUNCE.as_millis());
    let mut args = vec!["--debounce", debounce.as_str()];
    args.extend_from_slice(extra);
    BenchAgent::start(bin, api, netns, NODE, &args)
}

/// Waiting for the agent to go quiet between measurements.
trait WaitQuiet {
    /// Waits at least `min`, then until the agent has started no pass and used under 2% of a
    /// core for one second: the follow-ups of the last change are over.
    fn wait_quiet(&self, min: Duration, limit: Duration) -> Result<()>;
}

impl WaitQuiet for Agent {
    fn wait_quiet(&self, min: Duration, limit: Duration) -> Result<()> {
        let started = Instant::now();
        std::thread::sleep(min);
        loop {
            let (p0, c0) = (passes(&self.metrics()?), self.cpu_seconds()?);
            std::thread::sleep(Duration::from_secs(1));
            let (p1, c1) = (passes(&self.metrics()?), self.cpu_seconds()?);
            if p1 == p0 && c1 - c0 < 0.02 {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("agent still busy after {limit:?}");
            }
        }
    }
}

/// The sum of every series of a metric; `name{label="v"}` sums the series that carry that
/// label, whatever other labels they have.
fn metric_sum(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    let (base, label) = match name.split_once('{') {
        Some((base, label)) => (base, label.trim_end_matches('}')),
        None => (name, ""),
    };
    m.iter()
        .filter(|(series, _)| {
            series.strip_prefix(base).is_some_and(|rest| {
                (rest.is_empty() || rest.starts_with('{')) && rest.contains(label)
            })
        })
        .map(|(_, v)| v)
        .sum()
}

fn passes(m: &BTreeMap<String, f64>) -> f64 {
    metric_sum(m, "conntrack_reconciler_passes_total")
}

/// Passes by trigger label, e.g. `change=3 follow_up=9`.
fn passes_by_trigger(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    after
        .iter()
        .filter_map(|(series, v)| {
            let trigger = series
                .strip_prefix("conntrack_reconciler_passes_total{trigger=\"")?
                .strip_suffix("\"}")?;
            let d = v - before.get(series).copied().unwrap_or(0.0);
            (d > 0.0).then(|| format!("{trigger}={d}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `check` to completion; returns its wall time and CPU (user + system) seconds.
fn check_cpu(agent: &Path, state: &Path, netns: &Path) -> Result<(Duration, f64)> {
    let started = Instant::now();
    let child = Command::new(agent)
        .args([
            "check",
            "--family",
            "ipv4",
            "-o",
            "json",
            "--node-name",
            NODE,
        ])
        .arg("--state")
        .arg(state)
        .arg("--netns")
        .arg(netns)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; pointers are valid for the call.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let wall = started.elapsed();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr {
            let _ = e.read_to_string(&mut stderr);
        }
        bail!("check failed ({status}): {stderr}");
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((wall, secs(usage.ru_utime) + secs(usage.ru_stime)))
}

// ---------------------------------------------------------------------------------------------
// Conntrack DESTROY events of the namespace, read on their own thread.

/// A DESTROY event: when it was read and the flow's original and reply tuples.
type Destroyed = (Instant, Tuple, Tuple);

struct DestroyLog {
    events: Arc<Mutex<Vec<Destroyed>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl DestroyLog {
    fn start(netns: &Path) -> Result<DestroyLog> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (sink, stopped, netns) = (events.clone(), stop.clone(), netns.to_owned());
        let thread = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut stream = match ctnetlink::events(Some(&netns), EventKinds::DESTROY) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                while !stopped.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
                        Ok(Some(Ok(Event::Destroy(f)))) => sink
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((Instant::now(), f.orig, f.reply)),
                        Ok(Some(Ok(Event::Lost))) => bail!("this benchmark's DESTROY events lost"),
                        Ok(Some(Ok(_))) | Err(_) => {}
                        Ok(Some(Err(e))) => return Err(e.into()),
                        Ok(None) => bail!("event stream ended"),
                    }
                }
                Ok(())
            })
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("subscribe to DESTROY events: {e}"),
            Err(_) => bail!("event thread died"),
        }
        Ok(DestroyLog {
            events,
            stop,
            thread: Some(thread),
        })
    }

    fn len(&self) -> usize {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn since(&self, from: usize) -> Vec<Destroyed> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())[from..].to_vec()
    }

    fn finish(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("event thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for DestroyLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The big namespace: its table, the API double with its cluster, and the agent on both.
struct Main {
    ns: TestNetns,
    ct: Conntrack,
    /// DESTROY events of the namespace, from before its fill until the event storm.
    log: Option<DestroyLog>,
    api: ApiServer,
    agent: Agent,
    ready: Duration,
    fill: Duration,
    /// `check` on the table: median wall time and CPU seconds.
    check_wall: Duration,
    check_cpu: f64,
}

fn setup_main(o: &Options, rt: &tokio::runtime::Runtime) -> Result<Main> {
    let ns = TestNetns::new("churnbench")?;
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&ns.path()), caps)?;
    // Subscribed before the fill: with the default nf_conntrack_events=2 the kernel gives an
    // entry event records only while someone listens, and the background entries' DESTROY
    // events are what the one-change latency is read from.
    let log = DestroyLog::start(&ns.path())?;
    eprintln!("churn-bench: filling {} entries", o.entries);
    let fill = fill(&mut ct, o.entries, o.services)?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state.json");
    state_file(&state, o.services, true)?;
    // Before the agent starts, so the two do not share the cores.
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (wall, cpu) = check_cpu(&o.agent, &state, &ns.path())?;
        walls.push(wall);
        cpus.push(cpu);
    }
    walls.sort();
    let api = ApiServer::start(rt.handle())?;
    apply_cluster(&api, o.services, true)?;
    let mut agent = start_agent(&o.agent, &api, &ns.path(), &["--resync-interval", "1h"])?;
    let ready = agent.wait_ready(Duration::from_secs(300))?;
    agent.wait_quiet(Duration::from_secs(2), Duration::from_secs(120))?;
    Ok(Main {
        ns,
        ct,
        log: Some(log),
        api,
        agent,
        ready,
        fill,
        check_wall: walls[1],
        check_cpu: median_f(cpus),
    })
}

struct OneChange {
    idle_cpu_per_s: f64,
    /// The same from per-thread nanosecond counters.
    idle_ns_per_s: f64,
    /// Ticks-based CPU in each window minus idle.
    extra_cpu: Vec<f64>,
    /// Ticks-based CPU in each window, idle not subtracted: an upper bound.
    raw_cpu: Vec<f64>,
    /// Per-thread nanosecond CPU in each window minus idle.
    extra_ns: Vec<f64>,
    latencies: Vec<Duration>,
    /// From the change to the first DESTROY of the backend's flows.
    firsts: Vec<Duration>,
    flows_per_rep: usize,
    false_deletions: usize,
    missed: usize,
    count_mismatches: usize,
    passes: String,
}

fn one_change(o: &Options, m: &mut Main) -> Result<OneChange> {
    let log = m.log.as_ref().context("DESTROY events already stopped")?;
    let idle_window = Duration::from_secs(5);
    let (c0, t0) = (m.agent.cpu_seconds()?, m.agent.thread_cpu()?);
    std::thread::sleep(idle_window);
    let idle_cpu_per_s = (m.agent.cpu_seconds()? - c0) / idle_window.as_secs_f64();
    let idle_ns_per_s = thread_cpu_between(&t0, &m.agent.thread_cpu()?) / idle_window.as_secs_f64();
    let metrics0 = m.agent.metrics()?;
    let mut r = OneChange {
        idle_cpu_per_s,
        idle_ns_per_s,
        extra_cpu: Vec::new(),
        raw_cpu: Vec::new(),
        extra_ns: Vec::new(),
        latencies: Vec::new(),
        firsts: Vec::new(),
        flows_per_rep: 0,
        false_deletions: 0,
        missed: 0,
        count_mismatches: 0,
        passes: String::new(),
    };
    for rep in 0..o.reps as u32 {
        // A different service and endpoint each time, spread over the services.
        let i = (rep * 7_919) % o.services;
        let k = rep % ENDPOINTS;
        let backend = IpAddr::V4(endpoint(i, k));
        let flows = endpoint_entries(o.entries, o.services, i, k);
        r.flows_per_rep = flows.len();
        let count0 = m.ns.conntrack_count()?;
        let from = log.len();
        let (cpu0, threads0) = (m.agent.cpu_seconds()?, m.agent.thread_cpu()?);
        let t0 = Instant::now();
        apply_slice(&m.api, slice(i, Some(k), Some(true)))?;
        let deadline = t0 + Duration::from_secs(60);
        let gone = loop {
            let events = log.since(from);
            let mine: Vec<Instant> = events
                .iter()
                .filter(|(_, _, reply)| reply.src == backend)
                .map(|(t, ..)| *t)
                .collect();
            if mine.len() >= flows.len() || Instant::now() > deadline {
                break mine;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if gone.len() < flows.len() {
            r.missed += flows.len() - gone.len();
        }
        if let (Some(first), Some(last)) = (gone.iter().min(), gone.iter().max()) {
            r.firsts.push(*first - t0);
            r.latencies.push(*last - t0);
        }
        let count1 = m.ns.conntrack_count()?;
        if count0 as i64 - count1 as i64 != flows.len() as i64 {
            r.count_mismatches += 1;
        }
        if let Some(rest) = (t0 + o.window).checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
        let cpu = m.agent.cpu_seconds()? - cpu0;
        let ns = thread_cpu_between(&threads0, &m.agent.thread_cpu()?);
        let window = (Instant::now() - t0).as_secs_f64();
        r.extra_cpu.push(cpu - idle_cpu_per_s * window);
        r.raw_cpu.push(cpu);
        r.extra_ns.push(ns - idle_ns_per_s * window);
        // Put it back: the endpoint first (else the agent rightly deletes its new flows), and
        // its flows once the agent has acted on that change.
        apply_slice(&m.api, slice(i, None, Some(true)))?;
        // At least a window: the re-add's follow-ups must not land in the next rep's window.
        m.agent.wait_quiet(o.window, Duration::from_secs(120))?;
        create_all(&mut m.ct, &flows)?;
        let back = m.ns.conntrack_count()?;
        if back != count0 {
            bail!("rep {rep}: table has {back} entries after re-adding, had {count0}");
        }
        m.agent
            .wait_quiet(Duration::from_millis(200), Duration::from_secs(120))?;
        // Any other flow destroyed, or one of this backend's destroyed twice (its re-created
        // flows are healthy again), is a false deletion.
        let all = log.since(from);
        let theirs = all
            .iter()
            .filter(|(_, _, reply)| reply.src == backend)
            .count();
        r.false_deletions += all.len() - theirs + theirs.saturating_sub(flows.len());
        eprintln!(
            "churn-bench: one-change rep {rep}: {} flows of {backend} gone after {:.1} ms, extra CPU {:.3} s (ticks) / {:.4} s (schedstat)",
            gone.len(),
            r.latencies.last().map_or(f64::NAN, |d| ms(*d)),
            r.extra_cpu.last().copied().unwrap_or(f64::NAN),
            r.extra_ns.last().copied().unwrap_or(f64::NAN),
        );
    }
    r.passes = passes_by_trigger(&metrics0, &m.agent.metrics()?);
    r.latencies.sort();
    r.firsts.sort();
    Ok(r)
}

struct Churn {
    changes: u64,
    seconds: f64,
    cpu: f64,
    passes: f64,
    by_trigger: String,
    entries_before: u64,
    entries_after: u64,
    destroyed: usize,
}

fn churn(o: &Options, m: &mut Main) -> Result<Churn> {
    let log = m.log.as_ref().context("DESTROY events already stopped")?;
    let from = log.len();
    let entries_before = m.ns.conntrack_count()?;
    let metrics0 = m.agent.metrics()?;
    let cpu0 = m.agent.cpu_seconds()?;
    let started = Instant::now();
    let total = (o.seconds as f64 * o.churn_rate).round() as u64;
    let mut spare_ready = vec![true; o.churn_services as usize];
    for n in 0..total {
        let at = started + Duration::from_secs_f64(n as f64 / o.churn_rate);
        if let Some(rest) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
        let i = (n % u64::from(o.churn_services)) as u32;
        let ready = &mut spare_ready[i as usize];
        *ready = !*ready;
        apply_slice(&m.api, slice(i, None, Some(*ready)))?;
    }
    let end = started + Duration::from_secs(o.seconds);
    if let Some(rest) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(rest);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = (m.agent.cpu_seconds()? - cpu0) / seconds;
    let metrics1 = m.agent.metrics()?;
    // Let the last passes finish before counting entries and destroys.
    m.agent
        .wait_quiet(Duration::from_secs(1), Duration::from_secs(120))?;
    let r = Churn {
        changes: total,
        seconds,
        cpu,
        passes: passes(&metrics1) - passes(&metrics0),
        by_trigger: passes_by_trigger(&metrics0, &metrics1),
        entries_before,
        entries_after: m.ns.conntrack_count()?,
        destroyed: log.len() - from,
    };
    Ok(r)
}

struct Events {
    seconds: f64,
    created: u64,
    deleted: u64,
    already_gone: u64,
    cpu: f64,
    lost: f64,
    /// NEW and DESTROY events the agent counted (`conntrack_reconciler_events_total`).
    agent_new: f64,
    agent_destroy: f64,
    entries_before: u64,
    entries_after: u64,
}

/// Entry n of the event storm: a fresh client of a service, answered by a live endpoint.
fn storm_flow(n: u64, services: u32) -> NewFlow {
    let client = IpAddr::V4(Ipv4Addr::from(0x0ac9_0000 | (n & 0xffff) as u32));
    let sport = 1024 + ((n >> 16) % 60_000) as u16;
    dnat(
        client,
        sport,
        (n % u64::from(services)) as u32,
        (n % 7) as u32,
    )
}

fn events(o: &Options, m: &mut Main) -> Result<Events> {
    const BATCH: u64 = 2_048;
    // This process reading the storm's DESTROY events would take CPU from the agent.
    if let Some(log) = m.log.take() {
        log.finish()?;
    }
    let entries_before = m.ns.conntrack_count()?;
    let metrics0 = m.agent.metrics()?;
    let cpu0 = m.agent.cpu_seconds()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (created, deleted, gone) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    // A few batches in flight: the table stays near its size, the deleter never waits long.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<FlowKey>>(4);
    let caps = m.ct.capabilities();
    let started = Instant::now();
    let creator = {
        let (netns, stop, created, services) =
            (m.ns.path(), stop.clone(), created.clone(), o.services);
        std::thread::spawn(move || -> Result<()> {
            let mut ct = Conntrack::open(Some(&netns), caps)?;
            let mut n = 0u64;
            let mut batch = Vec::with_capacity(BATCH as usize);
            while !stop.load(Ordering::Relaxed) {
                batch.clear();
                batch.extend((n..n + BATCH).map(|n| storm_flow(n, services)));
                n += BATCH;
                let report = ct.create(&batch)?;
                if let Some((_, e)) = report.failed.first() {
                    bail!("create failed: {e}");
                }
                created.fetch_add(report.created, Ordering::Relaxed);
                let keys = batch
                    .iter()
                    .map(|f| FlowKey {
                        family: Family::V4,
                        orig: f.orig,
                        reply: None,
                        zone: 0,
                        id: None,
                    })
                    .collect();
                if tx.send(keys).is_err() {
                    break;
                }
            }
            Ok(())
        })
    };
    let deleter = {
        let (netns, deleted, gone) = (m.ns.path(), deleted.clone(), gone.clone());
        std::thread::spawn(move || -> Result<()> {
            let mut ct = Conntrack::open(Some(&netns), caps)?;
            for keys in rx {
                let report = ct.delete(keys)?;
                if let Some((_, e)) = report.failed.first() {
                    bail!("delete failed: {e}");
                }
                deleted.fetch_add(report.deleted, Ordering::Relaxed);
                gone.fetch_add(report.already_gone, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    std::thread::sleep(Duration::from_secs(o.event_seconds));
    stop.store(true, Ordering::Relaxed);
    let (c, d) = (creator.join(), deleter.join());
    let seconds = started.elapsed().as_secs_f64();
    let cpu = (m.agent.cpu_seconds()? - cpu0) / seconds;
    c.map_err(|_| anyhow::anyhow!("creator panicked"))??;
    d.map_err(|_| anyhow::anyhow!("deleter panicked"))??;
    m.agent
        .wait_quiet(Duration::from_secs(1), Duration::from_secs(300))?;
    let metrics1 = m.agent.metrics()?;
    let delta = |name: &str| metric_sum(&metrics1, name) - metric_sum(&metrics0, name);
    Ok(Events {
        seconds,
        created: created.load(Ordering::Relaxed),
        deleted: deleted.load(Ordering::Relaxed),
        already_gone: gone.load(Ordering::Relaxed),
        cpu,
        lost: delta("conntrack_reconciler_events_lost_total"),
        agent_new: delta("conntrack_reconciler_events_total{kind=\"new\"}"),
        agent_destroy: delta("conntrack_reconciler_events_total{kind=\"destroy\"}"),
        entries_before,
        entries_after: m.ns.conntrack_count()?,
    })
}

struct Memory {
    fill: Duration,
    ready: Duration,
    hwm_ready: u64,
    rss_ready: u64,
    hwm_pass: u64,
    rss_pass: u64,
    pass_seconds: f64,
}

fn memory(o: &Options, rt: &tokio::runtime::Runtime) -> Result<Memory> {
    let ns = TestNetns::new("churnmem")?;
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&ns.path()), caps)?;
    eprintln!(
        "churn-bench: memory: filling {} entries over {} services",
        o.entries, o.mem_services
    );
    let fill = fill(&mut ct, o.entries, o.mem_services)?;
    let api = ApiServer::start(rt.handle())?;
    apply_cluster(&api, o.mem_services, false)?;
    let resync = 20u64;
    let mut agent = start_agent(
        &o.agent,
        &api,
        &ns.path(),
        &["--resync-interval", &format!("{resync}s")],
    )?;
    let ready = agent.wait_ready(Duration::from_secs(300))?;
    std::thread::sleep(Duration::from_secs(1));
    let (hwm_ready, rss_ready) = (agent.status_kib("VmHWM:")?, agent.status_kib("VmRSS:")?);
    let periodic = |m: &BTreeMap<String, f64>| {
        m.get("conntrack_reconciler_passes_total{trigger=\"periodic\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let p0 = periodic(&agent.metrics()?);
    let dur0 = metric_sum(
        &agent.metrics()?,
        "conntrack_reconciler_pass_duration_seconds_sum",
    );
    let deadline = Instant::now() + Duration::from_secs(resync * 3 + 120);
    while periodic(&agent.metrics()?) <= p0 {
        if Instant::now() > deadline {
            bail!("no periodic full pass within {}s", resync * 3 + 120);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.wait_quiet(Duration::from_millis(200), Duration::from_secs(120))?;
    let metrics = agent.metrics()?;
    let r = Memory {
        fill,
        ready,
        hwm_ready,
        rss_ready,
        hwm_pass: agent.status_kib("VmHWM:")?,
        rss_pass: agent.status_kib("VmRSS:")?,
        pass_seconds: metric_sum(&metrics, "conntrack_reconciler_pass_duration_seconds_sum") - dur0,
    };
    drop(agent);
    drop(ct);
    drop(ns);
    Ok(r)
}

// ---------------------------------------------------------------------------------------------

fn run() -> Result<()> {
    let o = options()?;
    if !ctnetlink::testing::is_root() {
        bail!("needs root (network namespaces, CAP_NET_ADMIN, sysctl)");
    }
    let _max = KnobGuard::conntrack_max_at_least(u64::from(o.entries) + 262_144)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut out = serde_json::Map::new();
    out.insert("bench".into(), json!("churn"));
    out.insert("entries".into(), json!(o.entries));
    out.insert("services".into(), json!(o.services));
    let mut row =
        |what: String, value: String, target: &str| rows.push((what, value, target.to_owned()));

    if o.runs(Only::OneChange) || o.runs(Only::Churn) || o.runs(Only::Events) {
        let mut m = setup_main(&o, &rt)?;
        row(
            format!(
                "fill {} entries / agent ready after (incl. its startup pass)",
                o.entries
            ),
            format!(
                "{:.1} s / {:.1} s",
                m.fill.as_secs_f64(),
                m.ready.as_secs_f64()
            ),
            "",
        );
        row(
            "one full dump+classify: `check --family ipv4 -o json --state`, median of 3: wall / CPU (user+sys)".into(),
            format!("{:.0} ms / {:.0} ms", ms(m.check_wall), m.check_cpu * 1e3),
            "",
        );
        out.insert("fill_s".into(), json!(m.fill.as_secs_f64()));
        out.insert("ready_s".into(), json!(m.ready.as_secs_f64()));
        out.insert("check_wall_ms".into(), json!(ms(m.check_wall)));
        out.insert("check_cpu_ms".into(), json!(m.check_cpu * 1e3));
        if o.runs(Only::OneChange) {
            let r = one_change(&o, &mut m)?;
            let extra = median_f(r.extra_cpu.clone());
            let extra_max = r.extra_cpu.iter().copied().fold(f64::MIN, f64::max);
            let pct = |cpu: f64| cpu / m.check_cpu * 100.0;
            let lat = |p| r.latencies.first().map(|_| ms(percentile(&r.latencies, p)));
            let first = |p| r.firsts.first().map(|_| ms(percentile(&r.firsts, p)));
            let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            row(
                "one change: agent idle CPU (5 s before the changes), ticks / schedstat".into(),
                format!(
                    "{:.2}% / {:.3}% of a core",
                    r.idle_cpu_per_s * 100.0,
                    r.idle_ns_per_s * 100.0
                ),
                "",
            );
            row(
                format!(
                    "one change ({} flows of one backend), agent CPU over {:.0} s after it minus idle, median / max of {}",
                    r.flows_per_rep,
                    o.window.as_secs_f64(),
                    r.extra_cpu.len()
                ),
                format!(
                    "{:.0} / {:.0} ms = {:.1}% / {:.1}% of one full pass",
                    extra * 1e3,
                    extra_max * 1e3,
                    pct(extra),
                    pct(extra_max)
                ),
                "<= 5%",
            );
            let raw = median_f(r.raw_cpu.clone());
            let ns = median_f(r.extra_ns.clone());
            let ns_max = r.extra_ns.iter().copied().fold(f64::MIN, f64::max);
            row(
                "one change: the same, idle not subtracted (upper bound); and from per-thread schedstat (ns) minus idle, median / max".into(),
                format!(
                    "{:.0} ms = {:.1}%; {:.1} / {:.1} ms = {:.2}% / {:.2}% of one full pass",
                    raw * 1e3,
                    pct(raw),
                    ns * 1e3,
                    ns_max * 1e3,
                    pct(ns),
                    pct(ns_max)
                ),
                "<= 5%",
            );
            row(
                "one change: API change to the backend's last flow DESTROYed (incl. debounce), p50 / p99 / max".into(),
                format!(
                    "{} / {} / {} ms",
                    fmt(lat(0.5)),
                    fmt(lat(0.99)),
                    fmt(lat(1.0))
                ),
                "",
            );
            let after = |v: Option<f64>| v.map(|v| v - ms(DEBOUNCE));
            row(
                format!(
                    "one change: the same minus the agent's {} ms debounce, p50 / p99 / max",
                    DEBOUNCE.as_millis()
                ),
                format!(
                    "{} / {} / {} ms",
                    fmt(after(lat(0.5))),
                    fmt(after(lat(0.99))),
                    fmt(after(lat(1.0)))
                ),
                "p99 <= 10 ms",
            );
            row(
                "one change: API change to the first flow DESTROYed, p50 / p99".into(),
                format!("{} / {} ms", fmt(first(0.5)), fmt(first(0.99))),
                "",
            );
            row(
                "one change: false deletions / flows not deleted / table count off".into(),
                format!(
                    "{} / {} / {} reps",
                    r.false_deletions, r.missed, r.count_mismatches
                ),
                "0 / 0 / 0",
            );
            row(
                "one change: passes during the reps, by trigger".into(),
                r.passes.clone(),
                "",
            );
            out.insert("one_change_flows".into(), json!(r.flows_per_rep));
            out.insert("one_change_reps".into(), json!(r.extra_cpu.len()));
            out.insert("one_change_window_s".into(), json!(o.window.as_secs_f64()));
            out.insert("idle_cpu_percent".into(), json!(r.idle_cpu_per_s * 100.0));
            out.insert("one_change_cpu_ms".into(), json!(extra * 1e3));
            out.insert("one_change_cpu_max_ms".into(), json!(extra_max * 1e3));
            out.insert(
                "one_change_cpu_of_full_pass".into(),
                json!(pct(extra) / 100.0),
            );
            out.insert("one_change_raw_cpu_ms".into(), json!(raw * 1e3));
            out.insert("one_change_schedstat_cpu_ms".into(), json!(ns * 1e3));
            out.insert(
                "one_change_schedstat_cpu_max_ms".into(),
                json!(ns_max * 1e3),
            );
            out.insert(
                "one_change_schedstat_of_full_pass".into(),
                json!(pct(ns) / 100.0),
            );
            out.insert("one_change_p50_ms".into(), json!(lat(0.5)));
            out.insert("one_change_p99_ms".into(), json!(lat(0.99)));
            out.insert("one_change_max_ms".into(), json!(lat(1.0)));
            out.insert("debounce_ms".into(), json!(ms(DEBOUNCE)));
            out.insert(
                "one_change_after_debounce_p99_ms".into(),
                json!(after(lat(0.99))),
            );
            out.insert("one_change_first_p50_ms".into(), json!(first(0.5)));
            out.insert(
                "one_change_false_deletions".into(),
                json!(r.false_deletions),
            );
            out.insert("one_change_missed".into(), json!(r.missed));
            out.insert("one_change_passes".into(), json!(r.passes));
        }
        if o.runs(Only::Churn) {
            let r = churn(&o, &mut m)?;
            row(
                format!(
                    "churn: {} services, {} changes in {:.0} s making no flow stale: agent CPU",
                    o.churn_services, r.changes, r.seconds
                ),
                format!("{:.1}% of a core", r.cpu * 100.0),
                "<= 10%",
            );
            row(
                "churn: passes run (by trigger)".into(),
                format!("{} ({})", r.passes, r.by_trigger),
                "",
            );
            row(
                "churn: entries before / after, DESTROY events (false deletions)".into(),
                format!(
                    "{} / {}, {}",
                    r.entries_before, r.entries_after, r.destroyed
                ),
                "equal, 0",
            );
            out.insert("churn_services".into(), json!(o.churn_services));
            out.insert("churn_changes".into(), json!(r.changes));
            out.insert("churn_seconds".into(), json!(r.seconds));
            out.insert("churn_cpu_percent".into(), json!(r.cpu * 100.0));
            out.insert("churn_passes".into(), json!(r.passes));
            out.insert("churn_entries_before".into(), json!(r.entries_before));
            out.insert("churn_entries_after".into(), json!(r.entries_after));
            out.insert("churn_false_deletions".into(), json!(r.destroyed));
        }
        if o.runs(Only::Events) {
            let r = events(&o, &mut m)?;
            let generated = (r.created + r.deleted) as f64;
            row(
                format!(
                    "events: NEW+DESTROY generated beside the table ({:.0} s)",
                    r.seconds
                ),
                format!("{:.0}/s", generated / r.seconds),
                ">= 200,000/s",
            );
            row(
                "events: agent CPU at that rate".into(),
                format!("{:.1}% of a core", r.cpu * 100.0),
                "",
            );
            row(
                "events: NEW / DESTROY counted by the agent of created / deleted; loss reports (events_lost_total)".into(),
                format!(
                    "{:.0} / {:.0} of {} / {}; {}",
                    r.agent_new, r.agent_destroy, r.created, r.deleted, r.lost
                ),
                "all; 0",
            );
            row(
                "events: storm entries the agent deleted (false deletions); entries before / after"
                    .into(),
                format!(
                    "{}; {} / {}",
                    r.already_gone, r.entries_before, r.entries_after
                ),
                "0; equal",
            );
            out.insert("events_per_s".into(), json!(generated / r.seconds));
            out.insert("events_cpu_percent".into(), json!(r.cpu * 100.0));
            out.insert("events_agent_new".into(), json!(r.agent_new));
            out.insert("events_agent_destroy".into(), json!(r.agent_destroy));
            out.insert("events_generated".into(), json!(generated));
            out.insert("events_lost_reports".into(), json!(r.lost));
            out.insert("events_false_deletions".into(), json!(r.already_gone));
        }
        // The namespace's removal walks the global table: before the memory scenario fills.
        drop(m);
    }
    if o.runs(Only::Memory) {
        let r = memory(&o, &rt)?;
        let mib = |kib: u64| kib as f64 / 1024.0;
        row(
            format!(
                "memory: {} entries, {} services: fill / ready after",
                o.entries, o.mem_services
            ),
            format!(
                "{:.1} s / {:.1} s",
                r.fill.as_secs_f64(),
                r.ready.as_secs_f64()
            ),
            "",
        );
        row(
            "memory: agent VmHWM (VmRSS) once ready".into(),
            format!("{:.1} ({:.1}) MiB", mib(r.hwm_ready), mib(r.rss_ready)),
            "<= 96 MiB",
        );
        row(
            format!(
                "memory: agent VmHWM (VmRSS) after one periodic full pass ({:.2} s of passes)",
                r.pass_seconds
            ),
            format!("{:.1} ({:.1}) MiB", mib(r.hwm_pass), mib(r.rss_pass)),
            "<= 96 MiB",
        );
        out.insert("mem_services".into(), json!(o.mem_services));
        out.insert("mem_hwm_ready_mib".into(), json!(mib(r.hwm_ready)));
        out.insert("mem_hwm_pass_mib".into(), json!(mib(r.hwm_pass)));
        out.insert("mem_rss_pass_mib".into(), json!(mib(r.rss_pass)));
    }

    let mut table = format!(
        "churn-bench: agent {}, {} UDPv4 entries, {} services x {ENDPOINTS} endpoints\n\
         | what | value | target |\n|---|---|---|\n",
        o.agent.display(),
        o.entries,
        o.services
    );
    for (what, value, target) in &rows {
        table.push_str(&format!("| {what} | {value} | {target} |\n"));
    }
    eprint!("{table}");
    if o.json {
        println!("{}", Value::Object(out));
    }
    Ok(())
}
