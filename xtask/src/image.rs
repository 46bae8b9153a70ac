//! `cargo xtask image`.

use anyhow::{Result, bail};

/// Entry point of `cargo xtask image`.
pub fn run(_args: &[String]) -> Result<()> {
    bail!("cargo xtask image is not built yet")
}
