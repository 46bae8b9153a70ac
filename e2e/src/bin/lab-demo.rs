//! The demo: the headline scenario without, then with, the reconciler.
//!
//! A DNS-like client with a fixed source port talks to a 3-backend UDP ClusterIP service; the
//! backend answering it is deleted. Prints each run's timeline and the two recovery times.
//! Run through `cargo xtask demo` (which builds everything first); needs root.

use anyhow::{Result, bail};
use e2e::agent::locate;
use e2e::emulation::scenarios::{Outcome, RunConfig, Scenario, run};
use e2e::process::Binaries;
use std::time::Duration;

const WINDOW: Duration = Duration::from_secs(6);
const RULES_LAG: Duration = Duration::from_secs(1);

fn main() -> Result<()> {
    if !ctnetlink::testing::is_root() {
        bail!(
            "the demo needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN): it creates network \
             namespaces and edits their conntrack tables; run it with sudo"
        );
    }
    let binaries = Binaries::beside_current_exe()?;
    let agent = match locate() {
        Ok(agent) => agent,
        Err(why) => bail!("{why}"),
    };
    println!(
        "Headline scenario: a DNS-like client (fixed source port) -> UDP ClusterIP 10.96.0.10:53 \
         with 3 backends; the backend answering it is deleted. kube-proxy's rules follow the API \
         {} ms later and, like kube-proxy <= 1.31 without its cleanup, never touch conntrack.\n",
        RULES_LAG.as_millis()
    );
    let without = run(
        Scenario::BackendDeleted,
        &RunConfig {
            binaries: binaries.clone(),
            agent: None,
            rules_lag: RULES_LAG,
            window: WINDOW,
        },
    )?;
    print_run("1. without the reconciler", &without);
    let with = run(
        Scenario::BackendDeleted,
        &RunConfig {
            binaries,
            agent: Some(agent),
            rules_lag: RULES_LAG,
            window: WINDOW,
        },
    )?;
    print_run("2. with conntrack-reconciler running in the node", &with);
    println!("Recovery time (backend deleted -> first answer from a live backend):");
    println!("  without the reconciler: {}", recovery(&without));
    println!("  with the reconciler:    {}", recovery(&with));
    println!(
        "False deletions (flows to serving backends removed): {} without, {} with.",
        without.false_deletions.len(),
        with.false_deletions.len()
    );
    if with.recovery.is_none() || !with.false_deletions.is_empty() {
        bail!("the reconciler did not recover the client cleanly");
    }
    Ok(())
}

fn recovery(outcome: &Outcome) -> String {
    match outcome.recovery {
        Some(d) => format!("{} ms", d.as_millis()),
        None => format!(
            "none: still blackholed after {} s (the flow is still DNATed to the deleted pod)",
            outcome.window.as_secs()
        ),
    }
}

fn print_run(title: &str, outcome: &Outcome) {
    println!("== {title}");
    println!("   time (relative to the deletion), source, event");
    // Setup (the initial rule syncs) happens before; show the story from the steady client on.
    let story: Vec<&str> = outcome
        .timeline
        .lines()
        .skip_while(|line| {
            !line.contains("answered steadily") && !line.contains("agent      ready")
        })
        .collect();
    for line in story {
        println!("   {line}");
    }
    for flow in &outcome.client_flows_at_end {
        println!(
            "   conntrack at the end: {} -> {} answered by {}",
            flow.orig_src, flow.orig_dst, flow.reply_src
        );
    }
    println!("   => {}\n", outcome.summary());
}
