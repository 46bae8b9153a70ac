//! `cargo xtask manifests`.

use anyhow::{Result, bail};

/// Entry point of `cargo xtask manifests`.
pub fn run(_args: &[String]) -> Result<()> {
    bail!("cargo xtask manifests is not built yet")
}
