//! `real-bench`: the full matrix of real-component scenarios ([`e2e::real::scenarios`]): every
//! scenario × every kube-proxy flavour × with and without the agent, N times each, printed as
//! one markdown table (a row per scenario, a column pair per flavour: without the agent,
//! recovered or blackholed and when; with it, recovery p50 / p99 and false deletions).
//!
//! Needs root, the real components (`cargo xtask k8s`), the agent binary and `udp-echo` /
//! `udp-client` beside this binary (`cargo build -p e2e --bins`). Progress and every run's
//! summary go to stderr, the table to stdout.
//!
//! ```text
//! real-bench [--reps N] [--baseline-reps M] [--window-agent S] [--window-baseline S]
//!            [--parallel P] [--flavour NAME]... [SCENARIO...]
//! ```

use anyhow::{Context, Result, bail};
use e2e::process::Binaries;
use e2e::real::scenarios::{
    RealOutcome, RealRunConfig, RealScenario, check_invariants, proxy_cleans_up, run,
};
use e2e::real::{K8sBinaries, ProxyFlavour};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the table's marks mean (the scenarios' module docs have the details).
const LEGEND: &str = "¹ recovery counted from the Terminating pod's readiness failing (its flow \
must stay while it serves). ² counted from the new backend's creation. ³ the agent's TCP to \
10.96.0.1:443 dropped while kube-proxy programs new endpoints and a Service; healed 3 s after the \
change. ⁴ counted from the pod's death while etcd is down. ⁵ false deletions not made by the \
agent (the destroy event's netlink port is not one of the agent's sockets): kube-proxy's own. \
⁶ runs that could not complete (listed below). FD: false deletions by the agent.";

struct Options {
    reps: usize,
    baseline_reps: usize,
    window_agent: Duration,
    window_baseline: Duration,
    parallel: usize,
    flavours: Vec<ProxyFlavour>,
    scenarios: Vec<RealScenario>,
}

const USAGE: &str = "real-bench [--reps N] [--baseline-reps M] [--window-agent S] \
                     [--window-baseline S] [--parallel P] [--flavour NAME]... [SCENARIO...]";

fn parse_args() -> Result<Options> {
    let mut o = Options {
        reps: 1,
        baseline_reps: 1,
        window_agent: Duration::from_secs(30),
        window_baseline: Duration::from_secs(15),
        parallel: 1,
        flavours: Vec::new(),
        scenarios: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> Result<u64> {
        value
            .with_context(|| format!("{flag} needs a value"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--reps" => o.reps = number("--reps", args.next())?.max(1) as usize,
            "--baseline-reps" => o.baseline_reps = number("--baseline-reps", args.next())? as usize,
            "--window-agent" => {
                o.window_agent = Duration::from_secs(number("--window-agent", args.next())?)
            }
            "--window-baseline" => {
                o.window_baseline = Duration::from_secs(number("--window-baseline", args.next())?)
            }
            "--parallel" => o.parallel = number("--parallel", args.next())?.max(1) as usize,
            "--flavour" => {
                let name = args.next().context("--flavour needs a value")?;
                let f = ProxyFlavour::ALL
                    .into_iter()
                    .find(|f| f.name() == name)
                    .with_context(|| format!("unknown flavour {name}"))?;
                o.flavours.push(f);
            }
            "-h" | "--help" => {
                println!(
                    "{USAGE}\nflavours: {}\nscenarios: {}",
                    ProxyFlavour::ALL.map(ProxyFlavour::name).join(" "),
                    RealScenario::ALL.map(RealScenario::name).join(" ")
                );
                std::process::exit(0);
            }
            name => match RealScenario::from_name(name) {
                Some(s) => o.scenarios.push(s),
                None => bail!("unknown argument or scenario {name:?}\n{USAGE}"),
            },
        }
    }
    if o.flavours.is_empty() {
        o.flavours = ProxyFlavour::ALL.to_vec();
    }
    if o.scenarios.is_empty() {
        o.scenarios = RealScenario::ALL.to_vec();
    }
    Ok(o)
}

/// One cell's runs: outcomes, and errors of runs that could not complete.
#[derive(Default)]
struct Cell {
    outcomes: Vec<RealOutcome>,
    errors: Vec<String>,
}

type Key = (RealScenario, String, bool);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn baseline_cell(cell: Option<&Cell>) -> String {
    let Some(cell) = cell.filter(|c| !c.outcomes.is_empty() || !c.errors.is_empty()) else {
        return "not run".into();
    };
    if cell.outcomes.is_empty() {
        return "not measured⁶".into();
    }
    let mut recovered: Vec<Duration> = cell.outcomes.iter().filter_map(|o| o.recovery).collect();
    recovered.sort();
    let n = cell.outcomes.len();
    let window = cell.outcomes[0].window;
    let fd: usize = cell.outcomes.iter().map(|o| o.false_deletions.len()).sum();
    let mut text = if recovered.is_empty() {
        format!("blackholed (≥ {})", secs(window))
    } else if recovered.len() == n {
        format!("recovered in {}", secs(percentile(&recovered, 50.0)))
    } else {
        format!(
            "recovered {}/{n} (p50 {}), else blackholed ≥ {}",
            recovered.len(),
            secs(percentile(&recovered, 50.0)),
            secs(window)
        )
    };
    if fd > 0 {
        text.push_str(&format!(", kube-proxy's own false deletions: **{fd}**⁵"));
    }
    if !cell.errors.is_empty() {
        text.push_str(&format!(" ({} runs failed⁶)", cell.errors.len()));
    }
    text
}

fn agent_cell(cell: Option<&Cell>) -> String {
    let Some(cell) = cell.filter(|c| !c.outcomes.is_empty() || !c.errors.is_empty()) else {
        return "not run".into();
    };
    if cell.outcomes.is_empty() {
        return "not measured⁶".into();
    }
    let mut recovered: Vec<Duration> = cell.outcomes.iter().filter_map(|o| o.recovery).collect();
    recovered.sort();
    let n = cell.outcomes.len();
    let fd: usize = cell.outcomes.iter().map(|o| o.false_deletions.len()).sum();
    let fd_agent: usize = cell
        .outcomes
        .iter()
        .map(|o| o.false_deletions_by_agent.len())
        .sum();
    let mut text = if recovered.is_empty() {
        format!("**no recovery** in {n} runs")
    } else {
        let p50 = percentile(&recovered, 50.0);
        let p99 = percentile(&recovered, 99.0);
        let mut t = format!("{} / {}", secs(p50), secs(p99));
        if recovered.len() < n {
            t.push_str(&format!(" (**{}/{n} recovered**)", recovered.len()));
        }
        t
    };
    text.push_str(&format!(", FD {fd_agent}"));
    if fd > fd_agent {
        text.push_str(&format!(" (kube-proxy's own: **{}**⁵)", fd - fd_agent));
    }
    if !cell.errors.is_empty() {
        text.push_str(&format!(" ({} runs failed⁶)", cell.errors.len()));
    }
    text
}

fn flavour_title(f: ProxyFlavour) -> &'static str {
    match (f.version, f.mode, f.conntrack_tool) {
        (e2e::real::ProxyVersion::V1_31, _, true) => "v1.31.4 iptables (own cleanup)",
        (e2e::real::ProxyVersion::V1_31, _, false) => "v1.31.4 iptables, `conntrack` missing",
        (_, e2e::real::ProxyMode::Iptables, _) => "v1.34.12 iptables",
        (_, e2e::real::ProxyMode::Nftables, _) => "v1.34.12 nftables",
    }
}

fn table(o: &Options, cells: &BTreeMap<Key, Cell>) -> String {
    let mut out = String::from("| scenario |");
    for f in &o.flavours {
        out.push_str(&format!(
            " {} without agent | {} with agent: p50 / p99, false deletions |",
            flavour_title(*f),
            flavour_title(*f)
        ));
    }
    out.push_str("\n|---|");
    for _ in &o.flavours {
        out.push_str("---|---|");
    }
    out.push('\n');
    for s in &o.scenarios {
        out.push_str(&format!("| {} |", s.title()));
        for f in &o.flavours {
            let b = cells.get(&(*s, f.name(), false));
            let a = cells.get(&(*s, f.name(), true));
            out.push_str(&format!(" {} | {} |", baseline_cell(b), agent_cell(a)));
        }
        out.push('\n');
    }
    out
}

fn main() -> Result<()> {
    let o = parse_args()?;
    if !ctnetlink::testing::is_root() {
        bail!("real-bench needs root (network namespaces, conntrack)");
    }
    // The harness reads the cluster limit from the environment when each cluster starts.
    // SAFETY: set before any thread of this process starts.
    unsafe { std::env::set_var(e2e::real::cluster::PARALLEL_ENV, o.parallel.to_string()) };
    let k8s = K8sBinaries::locate().map_err(anyhow::Error::msg)?;
    for (path, version) in k8s.versions() {
        eprintln!("real-bench: {} = {version}", path.display());
    }
    let agent = e2e::agent::locate().map_err(anyhow::Error::msg)?;
    let lab = Binaries::beside_current_exe()?;

    let mut jobs: Vec<(RealScenario, ProxyFlavour, bool, usize)> = Vec::new();
    for rep in 0..o.reps.max(o.baseline_reps) {
        for s in &o.scenarios {
            for f in &o.flavours {
                if rep < o.reps {
                    jobs.push((*s, *f, true, rep));
                }
                if rep < o.baseline_reps {
                    jobs.push((*s, *f, false, rep));
                }
            }
        }
    }
    let total = jobs.len();
    eprintln!("real-bench: {total} runs, {} at a time", o.parallel);
    let jobs = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let cells: Mutex<BTreeMap<Key, Cell>> = Mutex::new(BTreeMap::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..o.parallel {
            scope.spawn(|| {
                loop {
                    let Some((i, (s, f, with_agent, rep))) =
                        jobs.lock().unwrap_or_else(|e| e.into_inner()).pop()
                    else {
                        return;
                    };
                    let config = RealRunConfig {
                        k8s: k8s.clone(),
                        lab: lab.clone(),
                        agent: with_agent.then(|| agent.clone()),
                        flavour: f,
                        window: if with_agent {
                            o.window_agent
                        } else {
                            o.window_baseline
                        },
                        label: format!("bench{rep}"),
                    };
                    let result = run(s, &config);
                    let mut cells = cells.lock().unwrap_or_else(|e| e.into_inner());
                    let cell = cells.entry((s, f.name(), with_agent)).or_default();
                    match result {
                        Ok(outcome) => {
                            eprintln!(
                                "real-bench [{}/{total}, {:.0} s]: {}",
                                total - i,
                                started.elapsed().as_secs_f64(),
                                outcome.summary()
                            );
                            if let Err(e) = check_invariants(&outcome) {
                                eprintln!("real-bench: INVARIANT BROKEN: {e:#}");
                            }
                            if !with_agent && !proxy_cleans_up(f) && outcome.recovery.is_some() {
                                eprintln!(
                                    "real-bench: note: {} recovered without the agent on {}",
                                    s.name(),
                                    f.name()
                                );
                            }
                            cell.outcomes.push(outcome);
                        }
                        Err(e) => {
                            eprintln!(
                                "real-bench: {} on {} ({}) could not run: {e:#}",
                                s.name(),
                                f.name(),
                                if with_agent { "agent" } else { "baseline" }
                            );
                            cell.errors.push(format!("{e:#}"));
                        }
                    }
                }
            });
        }
    });
    let cells = cells.into_inner().unwrap_or_else(|e| e.into_inner());
    println!("{}", table(&o, &cells));
    println!("{LEGEND}");
    println!(
        "{} runs in {:.0} s: {} with the agent per cell, {} without; windows {} (agent) and {} (baseline), {} cluster(s) at a time.",
        total,
        started.elapsed().as_secs_f64(),
        o.reps,
        o.baseline_reps,
        secs(o.window_agent),
        secs(o.window_baseline),
        o.parallel
    );
    let errors: Vec<String> = cells
        .iter()
        .flat_map(|((s, f, a), c)| {
            c.errors.iter().map(move |e| {
                format!(
                    "- {} on {f} ({}): {}",
                    s.name(),
                    if *a { "agent" } else { "baseline" },
                    e.lines().next().unwrap_or("")
                )
            })
        })
        .collect();
    if !errors.is_empty() {
        println!("\n⁶ runs that could not complete:\n{}", errors.join("\n"));
    }
    let notes: Vec<String> = cells
        .iter()
        .flat_map(|((s, f, a), c)| {
            c.outcomes
                .iter()
                .filter(|o| !o.notes.is_empty())
                .map(move |o| {
                    format!(
                        "- {} on {f} ({}): {}",
                        s.name(),
                        if *a { "agent" } else { "baseline" },
                        o.notes.join("; ")
                    )
                })
        })
        .collect();
    if !notes.is_empty() {
        eprintln!("real-bench notes:\n{}", notes.join("\n"));
    }
    Ok(())
}
