//! Benchmarks of the agent binary (root): `check` against the dump floor on a big table, the
//! event path's latency, and `run`'s memory and idle CPU with a big cluster.
//!
//! `cargo run --release -p e2e --bin agent-bench -- [--entries N] [--services S] [--rounds R]
//! [--events E] [--run-services S] [--agent PATH] [--json]`
//!
//! `agent-bench check-state [--services S] [--endpoints E] [--rounds R] [--agent PATH] [--yaml]`
//! measures what reading a big `--state` file costs `check` on an empty table: its peak RSS,
//! and how long after its `execve` it sends its first conntrack dump request (seen by
//! `strace`, in a separate run from the RSS one).
//!
//! `agent-bench callgrind [--entries N] [--services S] [--agent PATH] [--keep DIR]` counts the user-space
//! instructions `check` spends per flow: it runs `check` under `valgrind --tool=callgrind` on N
//! and then 2N entries and divides the difference by N (the fixed cost — start-up, state file,
//! output — cancels out), in total and for the walk's parts. Instruction counts do not depend
//! on the machine's load or syscall cost, unlike wall time. `--keep` leaves the two profiles
//! in DIR for `callgrind_annotate`.
//!
//! Every figure is reported against something measured in the same run: `check`'s wall time
//! against the raw dump floor (`ctnetlink::testing::RawDumper`), event latency as measured from
//! the create call to the kernel's DESTROY event. With `--json` the table goes to stderr and one
//! JSON line to stdout, for `cargo xtask bench`.

use anyhow::{Context, Result, bail};
use ctnetlink::testing::{KnobGuard, RawDumper, TestNetns};
use ctnetlink::{Conntrack, DumpFilter, Event, EventKinds, Family, NewFlow, Status, Tuple, proto};
use e2e::apiserver::ApiServer;
use e2e::bench::{BenchAgent, endpoint, node, percentile, service, vip};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = "bench-node";

struct Options {
    entries: u32,
    services: u32,
    rounds: usize,
    events: usize,
    run_services: u32,
    agent: PathBuf,
    json: bool,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn options() -> Result<Options> {
    let exe = std::env::current_exe()?;
    let mut o = Options {
        entries: 1_000_000,
        services: 1_000,
        rounds: 3,
        events: 300,
        run_services: 10_000,
        agent: exe.with_file_name("conntrack-reconciler"),
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--entries" => o.entries = value()?.parse()?,
            "--services" => o.services = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            "--events" => o.events = value()?.parse()?,
            "--run-services" => o.run_services = value()?.parse()?,
            "--agent" => o.agent = value()?.into(),
            "--json" => o.json = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if o.services == 0 || o.services > 60_000 {
        bail!("--services must be 1..=60000");
    }
    if !o.agent.is_file() {
        bail!(
            "agent binary {} not found: build it with `cargo build --release -p conntrack-reconciler` or pass --agent",
            o.agent.display()
        );
    }
    Ok(o)
}

fn slice(i: u32, endpoints: u32) -> Value {
    let eps: Vec<Value> = (0..endpoints)
        .map(|k| json!({"addresses": [endpoint(i, k).to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-a"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}]
    })
}

/// Entry j: a client of service j % services; every 100th answered by a gone backend.
fn entry(j: u32, services: u32) -> NewFlow {
    let i = j % services;
    let client = IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 | (j & 0xffff)));
    let sport = 1024 + (j >> 16) as u16 * 64 + (j % 64) as u16;
    let backend = if j.is_multiple_of(100) {
        Ipv4Addr::new(10, 99, 0, 99)
    } else {
        endpoint(i, j % 10)
    };
    NewFlow {
        orig: Tuple::new(client, vip(i).into(), proto::UDP, sport, 53),
        reply: Tuple::new(backend.into(), client, proto::UDP, 5353, sport),
        timeout: 3600,
        status: Status::SEEN_REPLY | Status::ASSURED | Status::DST_NAT,
        mark: 0,
        zone: 0,
    }
}

fn fill(ct: &mut Conntrack, entries: u32, services: u32) -> Result<Duration> {
    fill_range(ct, 0..entries, services)
}

/// Creates entries `range` (see [`entry`]).
fn fill_range(ct: &mut Conntrack, range: std::ops::Range<u32>, services: u32) -> Result<Duration> {
    let started = Instant::now();
    let mut chunk = Vec::with_capacity(65_536);
    for start in range.clone().step_by(65_536) {
        chunk.clear();
        chunk.extend((start..range.end.min(start + 65_536)).map(|j| entry(j, services)));
        let report = ct.create(&chunk)?;
        if let Some((_, e)) = report.failed.first() {
            bail!("create failed: {e}");
        }
    }
    Ok(started.elapsed())
}

/// Runs a command to completion; returns its wall time and peak RSS (KiB).
fn timed(cmd: &mut Command) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; pointers are valid for the call.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let elapsed = started.elapsed();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr {
            let _ = e.read_to_string(&mut stderr);
        }
        bail!("{cmd:?} failed ({status}): {stderr}");
    }
    Ok((elapsed, usage.ru_maxrss as u64))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn apply_cluster(api: &ApiServer, services: u32) -> Result<()> {
    api.apply(&serde_json::from_value::<Node>(node(NODE))?)?;
    for i in 0..services {
        api.apply(&serde_json::from_value::<Service>(service(i))?)?;
        api.apply(&serde_json::from_value::<EndpointSlice>(slice(i, 10))?)?;
    }
    Ok(())
}

fn run() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("check-state") => return check_state_bench(),
        Some("callgrind") => return callgrind_bench(),
        _ => {}
    }
    let o = options()?;
    if !ctnetlink::testing::is_root() {
        bail!("needs root (network namespaces, CAP_NET_ADMIN, sysctl)");
    }
    let _max = KnobGuard::conntrack_max_at_least(u64::from(o.entries) + 65_536)?;
    let ns = TestNetns::new("agentbench")?;
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&ns.path()), caps)?;
    let fill_time = fill(&mut ct, o.entries, o.services)?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state.json");
    let items: Vec<Value> = std::iter::once(node(NODE))
        .chain((0..o.services).flat_map(|i| [service(i), slice(i, 10)]))
        .collect();
    std::fs::write(
        &state,
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?,
    )?;

    // A. check vs the floor, alternating.
    let filter = DumpFilter::family_proto(Family::V4, proto::UDP);
    let mut floor = RawDumper::new(&ns.path(), &filter, &ct.capabilities())?;
    let (mut floors, mut checks, mut rss) = (Vec::new(), Vec::new(), 0u64);
    let mut checks_both = Vec::new();
    for _ in 0..o.rounds {
        let started = Instant::now();
        let n = floor.count()?;
        floors.push(started.elapsed());
        if n != u64::from(o.entries) {
            bail!("floor saw {n} entries, expected {}", o.entries);
        }
        let (t, kib) = timed(
            Command::new(&o.agent)
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
                .arg(&state)
                .arg("--netns")
                .arg(ns.path()),
        )?;
        checks.push(t);
        rss = rss.max(kib);
        // The default, both families: one AF_UNSPEC walk (the table holds only UDPv4 here).
        let (t, _) = timed(
            Command::new(&o.agent)
                .args(["check", "-o", "json", "--node-name", NODE])
                .arg("--state")
                .arg(&state)
                .arg("--netns")
                .arg(ns.path()),
        )?;
        checks_both.push(t);
    }
    let (floor_t, check_t) = (median(floors), median(checks));
    let check_both_t = median(checks_both);

    // B. event path latency, with the agent running on the same big table.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let api = ApiServer::start(rt.handle())?;
    apply_cluster(&api, o.services)?;
    let mut agent = BenchAgent::start(
        &o.agent,
        &api,
        &ns.path(),
        NODE,
        &["--resync-interval", "1h", "--follow-ups", "1h"],
    )?;
    let startup = agent.wait_ready(Duration::from_secs(120))?;
    let latencies = rt.block_on(event_latencies(&ns.path(), &mut ct, o.events, o.services))?;
    drop(agent);

    // C. run with a big cluster: memory once ready, then idle CPU.
    let api_big = ApiServer::start(rt.handle())?;
    apply_cluster(&api_big, o.run_services)?;
    let small = TestNetns::new("agentidle")?;
    let mut agent = BenchAgent::start(&o.agent, &api_big, &small.path(), NODE, &[])?;
    let ready_big = agent.wait_ready(Duration::from_secs(300))?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_big = agent.status_kib("VmRSS:")?;
    let hwm_big = agent.status_kib("VmHWM:")?;
    let cpu0 = agent.cpu_seconds()?;
    let idle_window = Duration::from_secs(10);
    std::thread::sleep(idle_window);
    let idle_cpu = (agent.cpu_seconds()? - cpu0) / idle_window.as_secs_f64();
    drop(agent);

    let lat_p50 = percentile(&latencies, 0.5);
    let lat_p99 = percentile(&latencies, 0.99);
    let lat_max = *latencies.last().context("no latency samples")?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let table = format!(
        "agent-bench: {entries} UDPv4 entries, {svc} services x 10 endpoints (fill {fill:.1} s)\n\
         | what | value | target |\n|---|---|---|\n\
         | dump floor (raw recv loop), median of {rounds} | {floor:.0} ms | |\n\
         | `check` wall time (process start to exit), median | {check:.0} ms | |\n\
         | `check` / floor | {ratio:.2}x | <= 1.15x |\n\
         | `check --family both` (the default: one walk) / floor | {ratio_both:.2}x | <= 1.10x |\n\
         | `check` peak RSS | {rss:.1} MiB | <= 48 MiB |\n\
         | `run` startup to ready (includes the first full pass) | {startup:.0} ms | |\n\
         | event path: stale NEW flow deleted, p50 / p99 / max of {n} | {p50:.2} / {p99:.2} / {max:.2} ms | p99 <= 10 ms |\n\
         | `run` with {big} services / {eps} endpoints: ready after | {ready_big:.1} s | |\n\
         | `run` RSS (VmRSS / VmHWM) | {rss_big:.1} / {hwm_big:.1} MiB | <= 96 MiB |\n\
         | `run` idle CPU over {idle}s | {idle_cpu:.2}% of a core | ~0 |\n",
        entries = o.entries,
        svc = o.services,
        fill = fill_time.as_secs_f64(),
        rounds = o.rounds,
        floor = ms(floor_t),
        check = ms(check_t),
        ratio = check_t.as_secs_f64() / floor_t.as_secs_f64(),
        ratio_both = check_both_t.as_secs_f64() / floor_t.as_secs_f64(),
        rss = rss as f64 / 1024.0,
        startup = ms(startup),
        n = latencies.len(),
        p50 = ms(lat_p50),
        p99 = ms(lat_p99),
        max = ms(lat_max),
        big = o.run_services,
        eps = o.run_services * 10,
        ready_big = ready_big.as_secs_f64(),
        rss_big = rss_big as f64 / 1024.0,
        hwm_big = hwm_big as f64 / 1024.0,
        idle = idle_window.as_secs(),
        idle_cpu = idle_cpu * 100.0,
    );
    if o.json {
        eprint!("{table}");
        println!(
            "{}",
            json!({
                "bench": "agent", "entries": o.entries, "services": o.services,
                "floor_ms": ms(floor_t), "check_ms": ms(check_t),
                "check_over_floor": check_t.as_secs_f64() / floor_t.as_secs_f64(),
                "check_both_over_floor": check_both_t.as_secs_f64() / floor_t.as_secs_f64(),
                "check_peak_rss_mib": rss as f64 / 1024.0,
                "event_p50_ms": ms(lat_p50), "event_p99_ms": ms(lat_p99), "event_max_ms": ms(lat_max),
                "run_services": o.run_services, "run_rss_mib": rss_big as f64 / 1024.0,
                "run_hwm_mib": hwm_big as f64 / 1024.0, "run_idle_cpu_percent": idle_cpu * 100.0,
            })
        );
    } else {
        print!("{table}");
    }
    Ok(())
}

/// Creates stale flows one at a time and measures until the kernel reports each destroyed.
async fn event_latencies(
    netns: &Path,
    ct: &mut Conntrack,
    n: usize,
    services: u32,
) -> Result<Vec<Duration>> {
    let mut events = ctnetlink::events(Some(netns), EventKinds::DESTROY)?;
    let mut out = Vec::with_capacity(n);
    for s in 0..n as u32 {
        // A fresh client per sample, rotating over services (the rate limit is per frontend).
        let i = s % services;
        let client = IpAddr::V4(Ipv4Addr::new(10, 201, (s >> 8) as u8, s as u8));
        let orig = Tuple::new(client, vip(i).into(), proto::UDP, 40_000, 53);
        // Never DNATed while the service has serving endpoints: positive evidence, deleted at
        // once (a backend the agent never saw would wait for proof, see the README).
        let flow = NewFlow {
            orig,
            reply: Tuple::new(vip(i).into(), client, proto::UDP, 53, 40_000),
            timeout: 3600,
            status: Status::SEEN_REPLY | Status::ASSURED,
            mark: 0,
            zone: 0,
        };
        let started = Instant::now();
        ct.create(&[flow])?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(Ok(Event::Destroy(f)))) if f.orig == orig => {
                    out.push(started.elapsed());
                    break;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => bail!("event stream ended"),
                Err(_) => bail!("stale flow {orig} was not deleted within 5 s"),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.sort();
    Ok(out)
}

/// `agent-bench check-state`: `check --state` with a big state file on an empty table, so the
/// figures are the cost of reading the state (see the module docs).
fn check_state_bench() -> Result<()> {
    let exe = std::env::current_exe()?;
    let (mut services, mut endpoints, mut rounds) = (10_000u32, 3u32, 5usize);
    let (mut agent, mut yaml) = (exe.with_file_name("conntrack-reconciler"), false);
    let mut args = std::env::args().skip(2);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--services" => services = value()?.parse()?,
            "--endpoints" => endpoints = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            "--agent" => agent = value()?.into(),
            "--yaml" => yaml = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if services == 0 || services > 60_000 || !(1..=250).contains(&endpoints) || rounds == 0 {
        bail!("--services 1..=60000, --endpoints 1..=250, --rounds >= 1");
    }
    if !agent.is_file() {
        bail!("agent binary {} not found: pass --agent", agent.display());
    }
    if !ctnetlink::testing::is_root() {
        bail!("needs root (a network namespace)");
    }
    let ns = TestNetns::new("ckstate")?;
    let dir = tempfile::tempdir()?;
    // As `kubectl get services,endpointslices -A -o json|yaml` prints it: a v1 List, indented.
    let items: Vec<Value> = (0..services)
        .flat_map(|i| [service(i), slice(i, endpoints)])
        .collect();
    let list = json!({"apiVersion": "v1", "items": items, "kind": "List",
                      "metadata": {"resourceVersion": ""}});
    let state = dir
        .path()
        .join(if yaml { "state.yaml" } else { "state.json" });
    let text = if yaml {
        serde_yaml::to_string(&list)?.into_bytes()
    } else {
        serde_json::to_vec_pretty(&list)?
    };
    std::fs::write(&state, &text)?;
    drop((items, list));
    let check = |cmd: &mut Command| {
        cmd.args(["check", "-o", "json", "--node-name", NODE, "--state"])
            .arg(&state)
            .arg("--netns")
            .arg(ns.path())
            .env("RUST_LOG", "error");
    };
    let trace = dir.path().join("strace.log");
    let usage = dir.path().join("time.txt");
    let (mut rss, mut walls, mut firsts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        // Through GNU time: a process forked from this one starts its peak RSS at this
        // process's (the kernel keeps the high-water mark across exec), so `timed`'s own
        // figure would be this bench's size; time's child is forked from a small process.
        let mut cmd = Command::new("/usr/bin/time");
        cmd.args(["-f", "%M", "-o"]).arg(&usage).arg(&agent);
        check(&mut cmd);
        let (wall, _) = timed(&mut cmd).context("/usr/bin/time (apt-get install time)")?;
        walls.push(wall);
        let kib = std::fs::read_to_string(&usage)?;
        rss.push(kib.trim().parse::<u64>().context("time's %M")?);
        // --seccomp-bpf: only the traced calls stop the process, not its reading.
        let mut cmd = Command::new("strace");
        cmd.args([
            "--seccomp-bpf",
            "-f",
            "-ttt",
            "-e",
            "trace=execve,sendto,sendmsg",
            "-o",
        ])
        .arg(&trace)
        .arg("--")
        .arg(&agent);
        check(&mut cmd);
        timed(&mut cmd).context("strace (apt-get install strace)")?;
        firsts.push(first_dump_after_exec(&std::fs::read_to_string(&trace)?)?);
    }
    rss.sort_unstable();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (first_min, first_med) = (*firsts.iter().min().context("no rounds")?, median(firsts));
    println!(
        "agent-bench check-state: {services} services x {endpoints} endpoints, {format} state \
         file of {size:.1} MiB, empty table, {rounds} rounds\n\
         | what | median | min / max | target |\n|---|---|---|---|\n\
         | peak RSS | {rss_med:.1} MiB | {rss_min:.1} / {rss_max:.1} MiB | <= 48 MiB |\n\
         | execve to the first conntrack dump request (strace) | {first_med:.0} ms | {first_min:.0} ms | <= 100 ms |\n\
         | wall time, process start to exit | {wall:.0} ms | | |",
        format = if yaml { "YAML" } else { "JSON" },
        size = text.len() as f64 / (1 << 20) as f64,
        rss_med = mib(rss[rss.len() / 2]),
        rss_min = mib(rss[0]),
        rss_max = mib(rss[rss.len() - 1]),
        first_med = ms(first_med),
        first_min = ms(first_min),
        wall = ms(median(walls)),
    );
    Ok(())
}

/// From `strace -f -ttt` output: the time from the first `execve` to the first ctnetlink dump
/// request (IPCTNL_MSG_CT_GET with NLM_F_DUMP).
fn first_dump_after_exec(trace: &str) -> Result<Duration> {
    let stamp = |line: &str| -> Option<f64> {
        // `PID SECONDS.MICROS call(...)`
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let exec = trace
        .lines()
        .find(|l| l.contains("execve("))
        .and_then(stamp)
        .context("no execve in the strace output")?;
    let dump = trace
        .lines()
        .find(|l| {
            // strace does not always decode netfilter messages: ctnetlink's GET is 0x101
            // (NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET), NLM_F_DUMP is 0x300.
            (l.contains("IPCTNL_MSG_CT_GET") || l.contains("nlmsg_type=0x101 "))
                && (l.contains("NLM_F_DUMP") || l.contains("|0x300"))
        })
        .and_then(stamp)
        .context("no conntrack dump request in the strace output")?;
    Ok(Duration::from_secs_f64((dump - exec).max(0.0)))
}

/// The parts of a walk whose per-flow cost `agent-bench callgrind` reports: a label and the
/// function-name prefixes whose inclusive cost it sums (callgrind_annotate's names).
const CALLGRIND_PARTS: &[(&str, &[&str])] = &[
    (
        "receive and parse (ctnetlink)",
        &["ctnetlink::socket::", "ctnetlink::parse::"],
    ),
    (
        "plan: classify, tally (pass::Planner::observe)",
        &["conntrack_reconciler::pass::planner::Planner::observe"],
    ),
    (
        "  of which classify (ctdiff)",
        &["ctdiff::classify::<impl ctdiff::index::Index>::classify"],
    ),
    (
        "print the report (JSON; 1% of the flows are stale)",
        &["conntrack_reconciler::check::print_json"],
    ),
];

/// `agent-bench callgrind`: user-space instructions per flow of `check` (module docs).
fn callgrind_bench() -> Result<()> {
    let exe = std::env::current_exe()?;
    let (mut entries, mut services) = (100_000u32, 1_000u32);
    let mut agent = exe.with_file_name("conntrack-reconciler");
    let mut keep: Option<PathBuf> = None;
    let mut args = std::env::args().skip(2);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--entries" => entries = value()?.parse()?,
            "--services" => services = value()?.parse()?,
            "--agent" => agent = value()?.into(),
            "--keep" => keep = Some(value()?.into()),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if !(1_000..=1_000_000).contains(&entries) || services == 0 || services > 60_000 {
        bail!("--entries 1000..=1000000, --services 1..=60000");
    }
    if !agent.is_file() {
        bail!("agent binary {} not found: pass --agent", agent.display());
    }
    if !ctnetlink::testing::is_root() {
        bail!("needs root (a network namespace)");
    }
    let _max = KnobGuard::conntrack_max_at_least(2 * u64::from(entries) + 65_536)?;
    let ns = TestNetns::new("cgbench")?;
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&ns.path()), caps)?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state.json");
    let items: Vec<Value> = std::iter::once(node(NODE))
        .chain((0..services).flat_map(|i| [service(i), slice(i, 10)]))
        .collect();
    std::fs::write(
        &state,
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?,
    )?;
    let mut profiles = Vec::new();
    for (round, range) in [(1, 0..entries), (2, entries..2 * entries)] {
        fill_range(&mut ct, range, services)?;
        let out = keep
            .as_deref()
            .unwrap_or(dir.path())
            .join(format!("callgrind.{round}"));
        let mut cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&agent)
            .args(["check", "-o", "json", "--node-name", NODE, "--state"])
            .arg(&state)
            .arg("--netns")
            .arg(ns.path())
            .env("RUST_LOG", "error");
        timed(&mut cmd).context("valgrind (apt-get install valgrind)")?;
        profiles.push(callgrind_costs(&out)?);
    }
    let per_flow = |part: Option<&[&str]>| -> f64 {
        let cost = |p: &CallgrindCosts| match part {
            None => p.total,
            Some(prefixes) => p.inclusive(prefixes),
        };
        (cost(&profiles[1]) as f64 - cost(&profiles[0]) as f64) / f64::from(entries)
    };
    let mut table = format!(
        "agent-bench callgrind: `check` over {entries} then {} UDPv4 entries, {services} services; \
         user-space instructions per added flow\n| part | instructions per flow |\n|---|---|\n\
         | total | {:.0} (target <= 1,000) |\n",
        2 * entries,
        per_flow(None)
    );
    for (label, prefixes) in CALLGRIND_PARTS {
        table.push_str(&format!("| {label} | {:.0} |\n", per_flow(Some(prefixes))));
    }
    print!("{table}");
    Ok(())
}

/// One callgrind profile: its total and each function's inclusive cost.
struct CallgrindCosts {
    total: u64,
    inclusive: Vec<(String, u64)>,
}

impl CallgrindCosts {
    /// The summed inclusive cost of the functions named by `prefixes`, outermost only (a
    /// function called by another counted one is already inside that one's inclusive cost).
    fn inclusive(&self, prefixes: &[&str]) -> u64 {
        // callgrind_annotate's inclusive list counts a recursive or nested call within its
        // caller; the outermost matching function of each prefix is the largest.
        prefixes
            .iter()
            .filter_map(|prefix| {
                self.inclusive
                    .iter()
                    .filter(|(name, _)| name.starts_with(prefix))
                    .map(|(_, cost)| *cost)
                    .max()
            })
            .sum()
    }
}

/// Reads a callgrind output file through `callgrind_annotate --inclusive=yes`.
fn callgrind_costs(file: &Path) -> Result<CallgrindCosts> {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--auto=no", "--threshold=100"])
        .arg(file)
        .output()
        .context("callgrind_annotate")?;
    if !out.status.success() {
        bail!(
            "callgrind_annotate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let number = |s: &str| s.replace(',', "").parse::<u64>().ok();
    let mut total = None;
    let mut inclusive = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_suffix("PROGRAM TOTALS") {
            total = rest.split_whitespace().next().and_then(number);
            continue;
        }
        // `1,234,567 (12.34%)  file:function [binary]`
        let Some((cost, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some(cost) = number(cost) else { continue };
        let Some(name) = rest.split_once(':').map(|(_, f)| f) else {
            continue;
        };
        let name = name.split(" [").next().unwrap_or(name).trim();
        inclusive.push((name.to_string(), cost));
    }
    Ok(CallgrindCosts {
        total: total.context("no PROGRAM TOTALS in callgrind_annotate's output")?,
        inclusive,
    })
}
