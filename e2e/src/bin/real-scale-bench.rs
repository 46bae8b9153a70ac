//! kube-proxy 1.34's own conntrack reconciler beside the agent, on a small and on a big table
//! (root, real components).
//!
//! `cargo run --release -p e2e --bin real-scale-bench -- [--services S] [--changes N]
//! [--window SECS] [--settle SECS] [--entries E] [--clients C] [--agent PATH]`
//!
//! One real cluster (kube-proxy v1.34 iptables, the agent as shipped) with S UDP Services of
//! 2–3 backends each and C fixed-source-port clients. Two phases in the same run: (a) the
//! table as the cluster makes it, (b) after E background UDP entries (no service traffic) are
//! created in the node's table. Each phase makes a burst of N pod deletions + replacements
//! over the window (the first C delete the backend a client is talking to), then measures over
//! the burst and a settle time: kube-proxy's `kubeproxy_sync_proxy_rules_duration_seconds`
//! delta (its metric) and the exact per-sync durations its log prints at `--v=2`, kube-proxy's
//! CPU (its own and its reaped `iptables-restore` children), the agent's CPU, and each
//! client's recovery (delete to first answer from another backend).

use anyhow::{Context, Result, bail};
use ctnetlink::testing::KnobGuard;
use ctnetlink::{Conntrack, NewFlow, Status, Tuple, proto};
use e2e::process::Binaries;
use e2e::real::cluster::PodDeletion;
use e2e::real::{
    AgentOptions, ClusterConfig, K8sBinaries, ProxyFlavour, RealCluster, ShippedAgent, UdpService,
};
use e2e::timeline::unix_micros;
use e2e::workload::Client;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The sync-duration histogram of kube-proxy.
const SYNC_METRIC: &str = "kubeproxy_sync_proxy_rules_duration_seconds";

struct Options {
    services: usize,
    changes: usize,
    window: Duration,
    entries: u32,
    clients: usize,
    /// How long after a burst CPU and syncs are still counted (kube-proxy's and the agent's
    /// follow-up work).
    settle: Duration,
    agent: PathBuf,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("real-scale-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn options() -> Result<Options> {
    let exe = std::env::current_exe()?;
    let mut o = Options {
        services: 200,
        changes: 50,
        window: Duration::from_secs(30),
        entries: 1_000_000,
        clients: 8,
        settle: Duration::from_secs(20),
        agent: exe.with_file_name("conntrack-reconciler"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--services" => o.services = value()?.parse()?,
            "--changes" => o.changes = value()?.parse()?,
            "--window" => o.window = Duration::from_secs(value()?.parse()?),
            "--entries" => o.entries = value()?.parse()?,
            "--clients" => o.clients = value()?.parse()?,
            "--settle" => o.settle = Duration::from_secs(value()?.parse()?),
            "--agent" => o.agent = value()?.into(),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if o.clients == 0 || o.clients >= o.services || o.changes < o.clients {
        bail!("need 0 < --clients < --services and --changes >= --clients");
    }
    if !o.agent.is_file() {
        bail!(
            "agent binary {} not found: build it with `cargo build --release -p conntrack-reconciler` or pass --agent",
            o.agent.display()
        );
    }
    Ok(o)
}

/// User + system CPU seconds of `pid`, and of its reaped children.
fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(((f[11] + f[12]) / hz, (f[13] + f[14]) / hz))
}

/// The sync histogram summed over its label sets: (`le` → cumulative count, sum, count).
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: BTreeMap<String, f64>,
    sum: f64,
    count: f64,
}

fn histogram(text: &str) -> Histogram {
    let mut h = Histogram::default();
    for line in text.lines().filter(|l| l.starts_with(SYNC_METRIC)) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if name.starts_with(&format!("{SYNC_METRIC}_sum")) {
            h.sum += value;
        } else if name.starts_with(&format!("{SYNC_METRIC}_count")) {
            h.count += value;
        } else if let Some(le) = name.split("le=\"").nth(1).and_then(|r| r.split('"').next()) {
            *h.buckets.entry(le.to_string()).or_default() += value;
        }
    }
    h
}

impl Histogram {
    fn minus(&self, before: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, v)| {
                    (
                        le.clone(),
                        v - before.buckets.get(le).copied().unwrap_or(0.0),
                    )
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// The upper bound of the bucket holding quantile `q` (`+Inf` stays as is).
    fn quantile_bound(&self, q: f64) -> String {
        let mut bounds: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|(le, v)| (le.parse::<f64>().unwrap_or(f64::INFINITY), *v))
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let want = q * self.count;
        for (le, cumulative) in bounds {
            if cumulative >= want && self.count > 0.0 {
                return if le.is_infinite() {
                    "+Inf".into()
                } else {
                    format!("≤{:.0} ms", le * 1e3)
                };
            }
        }
        "-".into()
    }
}

/// A Go duration (`12.3ms`, `1.2s`, `850µs`, `1m2.5s`) in seconds.
fn go_duration(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let (unit, scale) = [
            ("ms", 1e-3),
            ("µs", 1e-6),
            ("us", 1e-6),
            ("ns", 1e-9),
            ("h", 3600.0),
            ("m", 60.0),
            ("s", 1.0),
        ]
        .into_iter()
        .find(|(u, _)| rest.starts_with(u))?;
        total += number * scale;
        rest = &rest[unit.len()..];
    }
    Some(total)
}

/// Per-sync durations from kube-proxy's log text (`"SyncProxyRules complete" ... elapsed=`),
/// by IP family.
fn log_syncs(text: &str) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.contains("SyncProxyRules complete"))
    {
        let field = |key: &str| {
            line.split(&format!("{key}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
        };
        let family = field("ipFamily").unwrap_or("?").to_string();
        if let Some(d) = field("elapsed").and_then(go_duration) {
            out.entry(family).or_default().push(d);
        }
    }
    for v in out.values_mut() {
        v.sort_by(f64::total_cmp);
    }
    out
}

/// (start, end) in Unix µs of each IPv4 sync in kube-proxy's log text: the klog header's time
/// of day (the node's clock is UTC; a run across midnight would be misread) minus `elapsed`.
fn sync_spans(text: &str) -> Vec<(u64, u64)> {
    const DAY_US: u64 = 86_400_000_000;
    let midnight = unix_micros() / DAY_US * DAY_US;
    text.lines()
        .filter(|l| l.contains("SyncProxyRules complete") && l.contains("ipFamily=\"IPv4\""))
        .filter_map(|l| {
            let tod = l.split_whitespace().nth(1)?;
            let mut hms = tod.split(':');
            let h: f64 = hms.next()?.parse().ok()?;
            let m: f64 = hms.next()?.parse().ok()?;
            let sec: f64 = hms.next()?.parse().ok()?;
            let end = midnight + ((h * 3600.0 + m * 60.0 + sec) * 1e6) as u64;
            let elapsed = l
                .split("elapsed=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(go_duration)?;
            Some((end.saturating_sub((elapsed * 1e6) as u64), end))
        })
        .collect()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one phase measured.
#[derive(Debug)]
struct Phase {
    label: String,
    table: u64,
    window: Duration,
    histogram: Histogram,
    syncs: BTreeMap<String, Vec<f64>>,
    proxy_cpu: f64,
    proxy_children_cpu: f64,
    agent_cpu: f64,
    recoveries: Vec<Option<Duration>>,
    /// Per client deletion: from the delete to the end of kube-proxy's first IPv4 sync that
    /// started after it (a lower bound of when its rules dropped the backend).
    rules_lags: Vec<Option<Duration>>,
    load: (String, String),
    conntrack_lines: Vec<String>,
    agent_deltas: Vec<(String, f64)>,
}

/// Every sample of a Prometheus text body (`name{labels}` → value), histogram buckets left out.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

struct Bench {
    cluster: RealCluster,
    agent_pid: u32,
    agent: e2e::real::RealAgent,
    clients: Vec<Client>,
    /// Service i's app label is `app-i`.
    services: usize,
    o: Options,
}

impl Bench {
    fn proxy_metrics(&self) -> Result<String> {
        let netns = self.cluster.topology().node().path();
        let (code, body) =
            e2e::real::http::get(&netns, e2e::real::proxy::METRICS_ADDR.parse()?, "/metrics")?;
        if code != 200 {
            bail!("kube-proxy /metrics answered {code}");
        }
        Ok(body)
    }

    fn proxy_pid(&mut self) -> Result<u32> {
        self.cluster
            .kube_proxy()
            .and_then(|p| p.pid())
            .context("kube-proxy is not running")
    }

    fn proxy_log_from(&mut self, offset: u64) -> Result<String> {
        let path = self
            .cluster
            .kube_proxy()
            .context("kube-proxy")?
            .log_path()
            .to_path_buf();
        let bytes = std::fs::read(path)?;
        Ok(String::from_utf8_lossy(&bytes[(offset as usize).min(bytes.len())..]).into_owned())
    }

    /// Replaces one backend of `app`: deletes `victim` (or its oldest), then adds a new one.
    fn replace(&mut self, app: &str, victim: Option<String>) -> Result<String> {
        let victim = match victim {
            Some(v) => v,
            None => {
                let mut names: Vec<String> = self
                    .cluster
                    .backends_of(app)
                    .iter()
                    .map(|b| b.name.clone())
                    .collect();
                names.sort_by_key(|n| {
                    n.rsplit('-')
                        .next()
                        .and_then(|i| i.parse::<u32>().ok())
                        .unwrap_or(0)
                });
                names.first().cloned().context("no backend")?
            }
        };
        self.cluster.delete_pod(&victim, PodDeletion::Immediate)?;
        self.cluster.add_backend_named(app, &[5353])?;
        Ok(victim)
    }

    fn phase(&mut self, label: &str, table: u64, rotate: usize) -> Result<Phase> {
        let load0 = load_average();
        let h0 = histogram(&self.proxy_metrics()?);
        let proxy_pid = self.proxy_pid()?;
        let (p0, pc0) = cpu_seconds(proxy_pid)?;
        let (a0, _) = cpu_seconds(self.agent_pid)?;
        let log0 = self.cluster.kube_proxy().context("kube-proxy")?.log_len();
        let agent0 = samples(&self.agent.get("/metrics")?.1);
        let started = Instant::now();
        let step = self.o.window / self.o.changes as u32;
        let mut deletions = Vec::new();
        for j in 0..self.o.changes {
            let at = started + step * j as u32;
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if j < self.clients.len() {
                // A client's current backend: the deletion whose recovery is measured.
                let current = self.clients[j]
                    .last_answer()
                    .context("client without answers")?
                    .pod()
                    .to_string();
                let t0 = unix_micros();
                self.replace(&format!("app-{j}"), Some(current.clone()))?;
                deletions.push((j, t0, current));
            } else {
                let others = self.services - self.clients.len();
                let i = self.clients.len() + (j * 7 + rotate) % others;
                self.replace(&format!("app-{i}"), None)?;
            }
        }
        let burst = started.elapsed();
        std::thread::sleep(self.o.settle);
        let window = started.elapsed();
        let (p1, pc1) = cpu_seconds(proxy_pid)?;
        let (a1, _) = cpu_seconds(self.agent_pid)?;
        let h1 = histogram(&self.proxy_metrics()?);
        let log = self.proxy_log_from(log0)?;
        let agent1 = samples(&self.agent.get("/metrics")?.1);
        let agent_deltas = agent1
            .iter()
            .map(|(k, v)| (k.clone(), v - agent0.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d != 0.0)
            .collect();
        let recoveries = deletions
            .iter()
            .map(|(k, t0, dead)| {
                self.clients[*k]
                    .first_answer_after(*t0, |a| a.pod() != dead)
                    .map(|a| Duration::from_micros(a.t_us.saturating_sub(*t0)))
            })
            .collect();
        let spans = sync_spans(&log);
        let rules_lags = deletions
            .iter()
            .map(|(_, t0, _)| {
                spans
                    .iter()
                    .filter(|(start, _)| start >= t0)
                    .map(|(_, end)| Duration::from_micros(end - t0))
                    .min()
            })
            .collect();
        let mut conntrack_lines: Vec<String> = log
            .lines()
            .filter(|l| l.to_lowercase().contains("conntrack"))
            .map(|l| l.chars().take(300).collect())
            .collect();
        conntrack_lines.truncate(8);
        eprintln!(
            "phase {label}: burst of {} changes took {:.1} s (planned {:.0} s)",
            self.o.changes,
            burst.as_secs_f64(),
            self.o.window.as_secs_f64()
        );
        Ok(Phase {
            label: label.into(),
            table,
            window,
            histogram: h1.minus(&h0),
            syncs: log_syncs(&log),
            proxy_cpu: p1 - p0,
            proxy_children_cpu: pc1 - pc0,
            agent_cpu: a1 - a0,
            recoveries,
            rules_lags,
            load: (load0, load_average()),
            conntrack_lines,
            agent_deltas,
        })
    }
}

/// Background entry j: a UDP flow from 10.200.x.y to a documentation address, no NAT (not
/// service traffic).
fn background(j: u32) -> NewFlow {
    let client = IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 | (j & 0xffff)));
    let sport = 20_000 + (j >> 16) as u16;
    let server = IpAddr::V4(Ipv4Addr::new(192, 0, 2, (j % 200) as u8 + 1));
    NewFlow {
        orig: Tuple::new(client, server, proto::UDP, sport, 53),
        reply: Tuple::new(server, client, proto::UDP, 53, sport),
        timeout: 3600,
        status: Status::SEEN_REPLY | Status::ASSURED,
        mark: 0,
        zone: 0,
    }
}

fn fill(ct: &mut Conntrack, entries: u32) -> Result<Duration> {
    let started = Instant::now();
    let mut chunk = Vec::with_capacity(65_536);
    for start in (0..entries).step_by(65_536) {
        chunk.clear();
        chunk.extend((start..entries.min(start + 65_536)).map(background));
        let report = ct.create(&chunk)?;
        if let Some((_, e)) = report.failed.first() {
            bail!("create failed: {e}");
        }
    }
    Ok(started.elapsed())
}

fn count_entries(ct: &mut Conntrack) -> u64 {
    let filter = ctnetlink::DumpFilter::family_proto(ctnetlink::Family::V4, proto::UDP);
    let mut n = 0u64;
    let _ = ct.dump(&filter, |_| n += 1);
    n
}

fn run() -> Result<()> {
    let o = options()?;
    if !ctnetlink::testing::is_root() {
        bail!("needs root (network namespaces, CAP_NET_ADMIN, sysctl)");
    }
    let bins = K8sBinaries::locate().map_err(anyhow::Error::msg)?;
    let lab = Binaries::beside_current_exe()?;
    let _max = KnobGuard::conntrack_max_at_least(u64::from(o.entries) + 262_144)?;
    let t = Instant::now();
    let mut cluster = RealCluster::start(
        "real-scale-bench",
        &bins,
        lab,
        ClusterConfig {
            proxy: Some(ProxyFlavour::V1_34_IPTABLES),
            proxy_verbosity: 2,
            ..Default::default()
        },
    )?;
    eprintln!("cluster up in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut ips = Vec::new();
    for i in 0..o.services {
        let svc = cluster.create_service(&UdpService::new(
            &format!("svc-{i}"),
            &format!("app-{i}"),
            53,
            5353,
        ))?;
        let ip: IpAddr = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .context("no ClusterIP")?
            .parse()?;
        ips.push(ip);
        cluster.scale(&format!("app-{i}"), 2 + i % 2, &[5353])?;
    }
    let last = o.services - 1;
    let want: Vec<SocketAddr> = cluster
        .backends_of(&format!("app-{last}"))
        .iter()
        .map(|b| SocketAddr::new(b.ipv4.into(), 5353))
        .collect();
    cluster.wait_service_programmed(ips[last], &want, &[], Duration::from_secs(120))?;
    eprintln!(
        "{} services with {} backends programmed in {:.1} s",
        o.services,
        (0..o.services).map(|i| 2 + i % 2).sum::<usize>(),
        t.elapsed().as_secs_f64()
    );
    let mut agent =
        cluster.start_agent(&ShippedAgent::render()?, &AgentOptions::shipped(&o.agent))?;
    let ready = agent.wait_ready(Duration::from_secs(120))?;
    let agent_pid = agent.component().pid().context("agent pid")?;
    eprintln!("agent ready after {:.1} s", ready.as_secs_f64());
    let mut clients = Vec::new();
    for (k, ip) in ips.iter().enumerate().take(o.clients) {
        let c = cluster.start_client(
            &format!("c{k}"),
            SocketAddr::new(*ip, 53),
            40053,
            Duration::from_millis(20),
        )?;
        c.wait_steady(5, Duration::from_secs(30))?;
        clients.push(c);
    }
    let node = cluster.topology().node().path();
    let mut ct = Conntrack::open(Some(&node), ctnetlink::Capabilities::from_running_kernel())?;
    std::thread::sleep(Duration::from_secs(5));
    let services = o.services;
    let entries = o.entries;
    let mut bench = Bench {
        cluster,
        agent_pid,
        agent,
        clients,
        services,
        o,
    };
    let small_table = count_entries(&mut ct);
    let small = bench.phase("small", small_table, 0)?;

    let fill_time = fill(&mut ct, entries)?;
    let big_table = count_entries(&mut ct);
    eprintln!(
        "filled {entries} background entries in {:.1} s; node table {big_table} UDPv4 entries",
        fill_time.as_secs_f64()
    );
    // The agent sees the fill as events (or an overflow and a resync): let that settle, and
    // kube-proxy's periodic sync run once, before measuring.
    std::thread::sleep(Duration::from_secs(35));
    let big = bench.phase("1M", big_table, 3)?;
    if !bench.agent.component().running() {
        bail!("the agent exited:\n{}", bench.agent.log());
    }

    print_report(&small, &big, &bench);
    for p in [&small, &big] {
        eprintln!("kube-proxy conntrack log lines in phase {}:", p.label);
        for l in &p.conntrack_lines {
            eprintln!("  {l}");
        }
        eprintln!("agent metric deltas in phase {}:", p.label);
        for (k, d) in &p.agent_deltas {
            eprintln!("  {k} {d}");
        }
    }
    Ok(())
}

fn print_report(small: &Phase, big: &Phase, bench: &Bench) {
    let ms = |s: f64| s * 1e3;
    let all_syncs = |p: &Phase| {
        let mut v: Vec<f64> = p.syncs.values().flatten().copied().collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let mean = |p: &Phase| {
        if p.histogram.count > 0.0 {
            p.histogram.sum / p.histogram.count
        } else {
            f64::NAN
        }
    };
    let rec = |all: &[Option<Duration>]| {
        let mut got: Vec<Duration> = all.iter().flatten().copied().collect();
        got.sort();
        let missing = all.len() - got.len();
        let q = |f: f64| {
            got.get((((got.len().max(1) - 1) as f64) * f).round() as usize)
                .map_or("-".to_string(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
        };
        format!(
            "{} / {} ms (max {}; {missing} of {} without)",
            q(0.5),
            q(0.99),
            q(1.0),
            all.len()
        )
    };
    let proxy_total = |p: &Phase| p.proxy_cpu + p.proxy_children_cpu;
    println!(
        "real-scale-bench: kube-proxy v1.34 iptables + agent, {} services (2-3 backends), \
         burst of {} pod replacements over {:.0} s, counted over {:.0} s (burst + {:.0} s settle)\n",
        bench.services,
        bench.o.changes,
        bench.o.window.as_secs_f64(),
        big.window.as_secs_f64(),
        bench.o.settle.as_secs_f64()
    );
    println!("| measure | small table | 1M table | ratio 1M / small |");
    println!("|---|---|---|---|");
    println!(
        "| node table (UDPv4 entries) | {} | {} | |",
        small.table, big.table
    );
    println!(
        "| kube-proxy syncs (metric count, both families) | {:.0} | {:.0} | |",
        small.histogram.count, big.histogram.count
    );
    println!(
        "| kube-proxy sync duration, mean (metric _sum/_count) | {:.1} ms | {:.1} ms | {:.1}x |",
        ms(mean(small)),
        ms(mean(big)),
        mean(big) / mean(small)
    );
    println!(
        "| kube-proxy sync duration p50 / p99 (metric buckets) | {} / {} | {} / {} | |",
        small.histogram.quantile_bound(0.5),
        small.histogram.quantile_bound(0.99),
        big.histogram.quantile_bound(0.5),
        big.histogram.quantile_bound(0.99)
    );
    let (s, b) = (all_syncs(small), all_syncs(big));
    println!(
        "| kube-proxy sync duration p50 / p99 (its log, {} / {} syncs) | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1}x / {:.1}x |",
        s.len(),
        b.len(),
        ms(pct(&s, 0.5)),
        ms(pct(&s, 0.99)),
        ms(pct(&b, 0.5)),
        ms(pct(&b, 0.99)),
        pct(&b, 0.5) / pct(&s, 0.5),
        pct(&b, 0.99) / pct(&s, 0.99)
    );
    for family in big.syncs.keys() {
        let (s, b) = (
            small.syncs.get(family).cloned().unwrap_or_default(),
            big.syncs[family].clone(),
        );
        println!(
            "| ... {family} syncs: n, p50 / max (log) | {}, {:.1} / {:.1} ms | {}, {:.1} / {:.1} ms | {:.1}x p50 |",
            s.len(),
            ms(pct(&s, 0.5)),
            ms(pct(&s, 1.0)),
            b.len(),
            ms(pct(&b, 0.5)),
            ms(pct(&b, 1.0)),
            pct(&b, 0.5) / pct(&s, 0.5)
        );
    }
    println!(
        "| kube-proxy CPU (own + iptables-restore children) | {:.2} + {:.2} s | {:.2} + {:.2} s | {:.1}x |",
        small.proxy_cpu,
        small.proxy_children_cpu,
        big.proxy_cpu,
        big.proxy_children_cpu,
        proxy_total(big) / proxy_total(small)
    );
    println!(
        "| agent CPU | {:.2} s | {:.2} s | {:.1}x |",
        small.agent_cpu,
        big.agent_cpu,
        big.agent_cpu / small.agent_cpu
    );
    println!(
        "| agent CPU / kube-proxy CPU | {:.2} | {:.2} | |",
        small.agent_cpu / proxy_total(small),
        big.agent_cpu / proxy_total(big)
    );
    println!(
        "| client recovery p50 / p99 (delete → answer from another backend) | {} | {} | |",
        rec(&small.recoveries),
        rec(&big.recoveries)
    );
    println!(
        "| kube-proxy rules lag p50 / p99 (delete → end of its first sync started after it) | {} | {} | |",
        rec(&small.rules_lags),
        rec(&big.rules_lags)
    );
    println!(
        "| load average (1/5/15 min) before → after | {} → {} | {} → {} | |",
        small.load.0, small.load.1, big.load.0, big.load.1
    );
}
