//! `lab-bench`: every lab scenario N times with the reconciler (and a few times without), and
//! one table of the recovery targets: p50 / p99 / max time to recovery against rules lag +
//! 250 ms (counted from the scenario's last step: scale-to-zero adds its new backend lag +
//! 500 ms after t0, vip-reused creates the new service 500 ms after t0), false deletions over
//! every repetition, and how often the baseline stayed blackholed.
//!
//! Run through `cargo xtask bench lab` or `cargo xtask lab --bench` (which build it first); needs
//! root. Repetitions run `--parallel` at a time (each in its own namespaces): on a small machine
//! the parallel runs share CPUs, which the recovery times include.
//!
//! ```text
//! lab-bench [--reps N] [--baseline-reps M] [--parallel P] [--json] [--log] [SCENARIO...]
//! ```

use anyhow::{Context, Result, bail};
use e2e::agent::locate;
use e2e::emulation::scenarios::{Outcome, RunConfig, Scenario, run};
use e2e::process::Binaries;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const RULES_LAG: Duration = Duration::from_secs(1);
/// The target: recovery within the rules lag plus this.
const TARGET_MARGIN: Duration = Duration::from_millis(250);
const AGENT_WINDOW: Duration = Duration::from_secs(10);
const BASELINE_WINDOW: Duration = Duration::from_secs(5);

struct Options {
    reps: usize,
    baseline_reps: usize,
    parallel: usize,
    json: bool,
    /// Print each run's timeline and agent log to stderr (with `RUST_LOG=debug` for detail).
    log: bool,
    scenarios: Vec<Scenario>,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        reps: 20,
        baseline_reps: 3,
        parallel: 2,
        json: false,
        log: false,
        scenarios: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> Result<usize> {
        value
            .with_context(|| format!("{flag} needs a value"))?
            .parse()
            .with_context(|| format!("{flag} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--reps" => options.reps = number("--reps", args.next())?,
            "--baseline-reps" => options.baseline_reps = number("--baseline-reps", args.next())?,
            "--parallel" => options.parallel = number("--parallel", args.next())?.max(1),
            "--json" => options.json = true,
            "--log" => options.log = true,
            "-h" | "--help" => {
                println!(
                    "lab-bench [--reps N] [--baseline-reps M] [--parallel P] [--json] [--log] [SCENARIO...]\n\
                     scenarios: {}",
                    Scenario::ALL.map(Scenario::name).join(" ")
                );
                std::process::exit(0);
            }
            name => match Scenario::ALL
                .iter()
                .find(|s| s.name() == name || s.name() == name.replace('_', "-"))
            {
                Some(s) => options.scenarios.push(*s),
                None => bail!("unknown argument or scenario {name:?}"),
            },
        }
    }
    if options.scenarios.is_empty() {
        options.scenarios = Scenario::ALL.to_vec();
    }
    Ok(options)
}

/// One repetition to run.
#[derive(Clone, Copy)]
struct Job {
    scenario: Scenario,
    with_agent: bool,
}

/// What the repetitions of one scenario measured.
#[derive(Default)]
struct Tally {
    recoveries: Vec<Duration>,
    not_recovered: usize,
    false_deletions: usize,
    errors: Vec<String>,
    baseline_runs: usize,
    baseline_blackholed: usize,
    rules_lag: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank: the smallest value with at least p% of the samples at or below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| d.as_millis().to_string())
}

fn record(tally: &mut Tally, job: Job, result: Result<Outcome>) {
    match result {
        Err(err) => tally.errors.push(format!("{err:#}")),
        Ok(outcome) => {
            tally.rules_lag = outcome.rules_lag;
            let lost = outcome.false_deletions.len() + outcome.background_missing as usize;
            tally.false_deletions += lost;
            if job.with_agent {
                match outcome.recovery {
                    Some(d) => tally.recoveries.push(d),
                    None => tally.not_recovered += 1,
                }
            } else {
                tally.baseline_runs += 1;
                if outcome.recovery.is_none() {
                    tally.baseline_blackholed += 1;
                }
            }
        }
    }
}

fn main() -> Result<()> {
    if !ctnetlink::testing::is_root() {
        bail!(
            "lab-bench needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN): it builds network namespaces"
        );
    }
    let options = parse_args()?;
    let binaries = Binaries::beside_current_exe()?;
    let agent: PathBuf = locate().map_err(|why| anyhow::anyhow!("{why}"))?;
    let mut jobs: Vec<Job> = Vec::new();
    // Interleaved, so that a slow moment of the machine does not land on one scenario only.
    for rep in 0..options.reps.max(options.baseline_reps) {
        for scenario in &options.scenarios {
            if rep < options.reps {
                jobs.push(Job {
                    scenario: *scenario,
                    with_agent: true,
                });
            }
            if rep < options.baseline_reps {
                jobs.push(Job {
                    scenario: *scenario,
                    with_agent: false,
                });
            }
        }
    }
    let total = jobs.len();
    jobs.reverse(); // popped from the end
    let queue = Mutex::new(jobs);
    let tallies: Mutex<BTreeMap<usize, Tally>> = Mutex::new(BTreeMap::new());
    let done = Mutex::new(0usize);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..options.parallel {
            scope.spawn(|| {
                loop {
                    let Some(job) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                        return;
                    };
                    let result = run(
                        job.scenario,
                        &RunConfig {
                            binaries: binaries.clone(),
                            agent: job.with_agent.then(|| agent.clone()),
                            rules_lag: RULES_LAG,
                            window: if job.with_agent {
                                AGENT_WINDOW
                            } else {
                                BASELINE_WINDOW
                            },
                        },
                    );
                    let line = match &result {
                        Ok(o) if options.log => format!(
                            "{}\ntimeline:\n{}\nagent log:\n{}",
                            o.summary(),
                            o.timeline,
                            o.agent_log
                        ),
                        Ok(o) => o.summary(),
                        Err(e) => format!("{} FAILED: {e:#}", job.scenario.name()),
                    };
                    let index = Scenario::ALL
                        .iter()
                        .position(|s| *s == job.scenario)
                        .unwrap_or(usize::MAX);
                    record(
                        tallies
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(index)
                            .or_default(),
                        job,
                        result,
                    );
                    let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
                    *done += 1;
                    eprintln!(
                        "[{done}/{total} {:.0} s] {line}",
                        started.elapsed().as_secs_f64()
                    );
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let tallies = tallies.into_inner().unwrap_or_else(|e| e.into_inner());

    let mut table = String::from(
        "| scenario | reps | recovery p50 ms | p99 ms | max ms | rules lag ms | target ms | p99 <= target | not recovered | false deletions | baseline blackholed | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    for (index, tally) in &tallies {
        let Some(scenario) = Scenario::ALL.get(*index) else {
            continue;
        };
        let mut sorted = tally.recoveries.clone();
        sorted.sort();
        let (p50, p99, max) = (
            percentile(&sorted, 50.0),
            percentile(&sorted, 99.0),
            sorted.last().copied(),
        );
        // From the scenario's last step: a scenario that adds its new backend later cannot be
        // answered by it earlier.
        let target = scenario.change_spread(tally.rules_lag) + tally.rules_lag + TARGET_MARGIN;
        let met = tally.not_recovered == 0 && p99.is_some_and(|p| p <= target);
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} |\n",
            scenario.name(),
            sorted.len() + tally.not_recovered,
            ms(p50),
            ms(p99),
            ms(max),
            tally.rules_lag.as_millis(),
            target.as_millis(),
            if met { "yes" } else { "NO" },
            tally.not_recovered,
            tally.false_deletions,
            tally.baseline_blackholed,
            tally.baseline_runs,
            tally.errors.len(),
        ));
        rows.push(serde_json::json!({
            "scenario": scenario.name(),
            "reps": sorted.len() + tally.not_recovered,
            "recovery_ms": {"p50": p50.map(|d| d.as_millis() as u64), "p99": p99.map(|d| d.as_millis() as u64), "max": max.map(|d| d.as_millis() as u64)},
            "rules_lag_ms": tally.rules_lag.as_millis() as u64,
            "target_ms": target.as_millis() as u64,
            "target_met": met,
            "not_recovered": tally.not_recovered,
            "false_deletions": tally.false_deletions,
            "baseline_runs": tally.baseline_runs,
            "baseline_blackholed": tally.baseline_blackholed,
            "errors": tally.errors,
        }));
    }
    table.push_str(&format!(
        "\n{total} runs ({} with the reconciler per scenario, {} without), {} at a time, in {:.0} s\n",
        options.reps,
        options.baseline_reps,
        options.parallel,
        elapsed.as_secs_f64()
    ));
    if options.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "lab",
                "reps": options.reps,
                "baseline_reps": options.baseline_reps,
                "parallel": options.parallel,
                "elapsed_s": elapsed.as_secs_f64(),
                "scenarios": rows,
            })
        );
    } else {
        print!("{table}");
    }
    let failed: usize = tallies.values().map(|t| t.errors.len()).sum();
    if failed > 0 {
        for tally in tallies.values() {
            for err in &tally.errors {
                eprintln!("error: {err}");
            }
        }
        bail!("{failed} runs failed");
    }
    Ok(())
}
