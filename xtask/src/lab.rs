//! `cargo xtask lab [scenario...]`: the node-lab suite (root).
//!
//! Builds the agent so that the "with reconciler" halves run (set `E2E_WITH_AGENT=0` to skip
//! them), then runs the e2e package's tests: all of them without arguments, or the named
//! scenarios (the test modules of `e2e/tests/scenarios.rs`, spelled with `-` or `_`, e.g.
//! `backend-deleted nodeport`).

use crate::util;
use anyhow::Result;
use std::process::Command;

/// Entry point of `cargo xtask lab`.
pub fn run(args: &[String]) -> Result<()> {
    util::require_root("cargo xtask lab")?;
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
