//! Helpers shared by the real-components test files.

#![allow(dead_code)] // each test binary uses a different subset

use e2e::process::Binaries;
use std::path::PathBuf;

/// The lab's UDP workload binaries, built with the tests.
pub fn lab() -> Binaries {
    Binaries {
        echo: PathBuf::from(env!("CARGO_BIN_EXE_udp-echo")),
        client: PathBuf::from(env!("CARGO_BIN_EXE_udp-client")),
    }
}

/// The agent binary, or None after a skip line (a failure in CI).
pub fn agent_binary(test: &str) -> Option<PathBuf> {
    match e2e::agent::locate() {
        Ok(path) => Some(path),
        Err(why) if ctnetlink::testing::root_tests_required() => {
            panic!("{test}: the agent binary is required in CI: {why}")
        }
        Err(why) => {
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}
