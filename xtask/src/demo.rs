//! `cargo xtask demo`: the headline scenario without, then with, the reconciler (root).
//!
//! Builds the agent and the lab's binaries, then runs `lab-demo` (e2e/src/bin/lab-demo.rs),
//! which sets up the lab, prints both timelines and recovery times, and tears everything down.

use crate::util;
use anyhow::Result;
use std::process::Command;

/// Entry point of `cargo xtask demo`.
pub fn run(_args: &[String]) -> Result<()> {
    util::require_root("cargo xtask demo")?;
    let root = util::workspace_root();
    util::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "-p",
        "conntrack-reconciler",
        "-p",
        "e2e",
        "--bins",
    ]))?;
    util::run(
        Command::new("cargo")
            .current_dir(&root)
            .args(["run", "--quiet", "-p", "e2e", "--bin", "lab-demo"]),
    )
}
