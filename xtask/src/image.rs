//! `cargo xtask image [--tag T]`: builds the agent's container image from `Dockerfile`.

use crate::util;
use anyhow::{Context, Result, bail};
use std::process::Command;

/// The tag `cargo xtask image` builds when given none.
pub const DEFAULT_TAG: &str = "ghcr.io/conntrack-reconciler/conntrack-reconciler:dev";

const USAGE: &str = "usage: cargo xtask image [--tag IMAGE:TAG]";

/// Entry point of `cargo xtask image`.
pub fn run(args: &[String]) -> Result<()> {
    let mut tag = DEFAULT_TAG.to_string();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tag" | "-t" => tag.clone_from(args.next().context("--tag needs a value")?),
            other => match other.strip_prefix("--tag=") {
                Some(value) => tag = value.to_string(),
                None => bail!("unknown argument {other:?}\n{USAGE}"),
            },
        }
    }
    build(&tag)?;
    println!("{tag}");
    Ok(())
}

/// Builds the image with `docker build` and tags it `tag`.
pub fn build(tag: &str) -> Result<()> {
    require_docker()?;
    util::run(
        Command::new("docker")
            .current_dir(util::workspace_root())
            // The Dockerfile uses cache mounts, a BuildKit feature (the default since Docker 23).
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "--file", "Dockerfile", "--tag", tag, "."]),
    )
}

/// Fails with a message saying what to install or start unless a Docker engine answers.
pub fn require_docker() -> Result<()> {
    if !util::have("docker") {
        bail!(
            "docker is not installed (not on PATH): install Docker Engine \
             (https://docs.docker.com/engine/install/) to build the image or run the kind tests"
        );
    }
    let output = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .context("running docker info")?;
    if !output.status.success() {
        let reason = String::from_utf8_lossy(&output.stderr);
        let reason = reason
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        bail!(
            "the docker CLI is installed but no Docker engine answers ({}): start the daemon \
             (`sudo systemctl start docker`) or point DOCKER_HOST at one",
            reason.trim()
        );
    }
    Ok(())
}
