//! `cargo xtask demo`.

use anyhow::{Result, bail};

/// Entry point of `cargo xtask demo`.
pub fn run(_args: &[String]) -> Result<()> {
    bail!("cargo xtask demo is not built yet")
}
