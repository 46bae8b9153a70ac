//! `cargo xtask bench`.

use anyhow::{Result, bail};

/// Entry point of `cargo xtask bench`.
pub fn run(_args: &[String]) -> Result<()> {
    bail!("cargo xtask bench is not built yet")
}
