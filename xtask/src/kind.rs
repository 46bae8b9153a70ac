//! `cargo xtask kind`.

use anyhow::{Result, bail};

/// Entry point of `cargo xtask kind`.
pub fn run(_args: &[String]) -> Result<()> {
    bail!("cargo xtask kind is not built yet")
}
