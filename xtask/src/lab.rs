//! `cargo xtask lab [scenario...]`: the node-lab suite (root), and `cargo xtask lab --bench`:
//! the recovery-target table over repetitions.
//!
//! Builds the agent so that the "with reconciler" halves run (set `E2E_WITH_AGENT=0` to skip
//! them), then runs the e2e package's tests: all of them without arguments, or the named
//! scenarios (the test modules of `e2e/tests/scenarios.rs`, spelled with `-` or `_`, e.g.
//! `backend-deleted nodeport`).
//!
//! `--bench [--reps N] [--baseline-reps M] [--parallel P] [--json] [scenario...]` builds the
//! agent and the e2e binaries in release mode and runs `lab-bench`, which repeats every scenario
//! (default 20 times with the reconciler, 3 without) and prints a markdown table (or, with
//! `--json`, one JSON line): recovery p50 / p99 / max against rules lag + 250 ms, false
//! deletions, and how often the baseline stayed blackholed.

use crate::util;
use anyhow::Result;
use std::process::Command;

/// Entry point of `cargo xtask lab`.
pub fn run(args: &[String]) -> Result<()> {
    util::require_root("cargo xtask lab")?;
    if args.first().map(String::as_str) == Some("--bench") {
        build_bench()?;
        return util::run(&mut bench_command(&args[1..]));
    }
    let root = util::workspace_root();
    util::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "-p",
        "conntrack-reconciler",
    ]))?;
    let mut test = Command::new("cargo");
    test.current_dir(&root).args(["test", "-p", "e2e"]);
    if !args.is_empty() {
        test.args(["--test", "scenarios", "--"]);
        for scenario in args {
            // Module paths: `backend_deleted::` selects both halves of that scenario.
            test.arg(format!("{}::", scenario.replace('-', "_")));
        }
    }
    util::run(&mut test)
}

/// The release agent (what users run; recovery times of a debug build say little) and the lab's
/// binaries, side by side so that `lab-bench` finds them.
pub fn build_bench() -> Result<()> {
    util::run(
        Command::new("cargo")
            .current_dir(util::workspace_root())
            .args([
                "build",
                "--release",
                "-p",
                "conntrack-reconciler",
                "-p",
                "e2e",
                "--bins",
            ]),
    )
}

fn bench_command(args: &[String]) -> Command {
    let mut cmd = Command::new(util::workspace_root().join("target/release/lab-bench"));
    cmd.args(args);
    cmd
}
