//! `cargo xtask lab`.

use anyhow::{Result, bail};

/// Entry point of `cargo xtask lab`.
pub fn run(_args: &[String]) -> Result<()> {
    bail!("cargo xtask lab is not built yet")
}
