//! `cargo xtask helm`: the pinned `helm`, built from its Go module and cached; and (as tests) the
//! checks of the chart in `charts/conntrack-reconciler`.
//!
//! `xtask/helm/go.mod` and `go.sum` pin `helm.sh/helm/v3` and every dependency, so the binary is
//! the same on every machine without downloading a release archive. It is built once per
//! version and go.sum into `$XDG_CACHE_HOME/conntrack-reconciler/helm/` (or
//! `~/.cache/...`, or `$CONNTRACK_RECONCILER_HELM_CACHE`), shared by every checkout.
//!
//! The chart tests (`cargo test -p xtask helm::`, part of `make test`) run `helm lint --strict`,
//! render the defaults and every option, hold the default render to `kubectl kustomize
//! manifests/` object by object and field by field, hold each option's render to the default
//! plus the fields the option names, and run the manifest checks (least privilege, RBAC,
//! probes) on every render. Without Go they skip with one line, except in CI, where they fail.

use crate::{prereqs, util};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Helm release `xtask/helm/go.mod` pins.
pub const HELM_VERSION: &str = "v3.22.0";

/// The main package of Helm's CLI.
const HELM_PACKAGE: &str = "helm.sh/helm/v3/cmd/helm";

const USAGE: &str = "usage: cargo xtask helm [--print-path | lint]";

/// Entry point of `cargo xtask helm`: builds (or finds) the pinned helm and prints where it is,
/// or with `lint` runs `helm lint --strict` on the chart.
pub fn run(args: &[String]) -> Result<()> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words[..] {
        [] => eprintln!("helm {HELM_VERSION}: {}", ensure()?.display()),
        ["--print-path"] => println!("{}", ensure()?.display()),
        ["lint"] => {
            let chart = chart_dir();
            let out = helm_output(&ensure()?, &["lint", "--strict", &chart.to_string_lossy()])?;
            print!("{out}");
        }
        _ => bail!("{USAGE}"),
    }
    Ok(())
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    util::workspace_root().join("charts/conntrack-reconciler")
}

/// The Go module that pins Helm.
fn module_dir() -> PathBuf {
    util::workspace_root().join("xtask/helm")
}

/// Where built binaries are kept (see the module docs).
fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CONNTRACK_RECONCILER_HELM_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("conntrack-reconciler/helm"))
}

/// FNV-1a, 64 bits: a cache key, not a checksum (go.sum holds the checksums).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The version of a module `go.mod` requires, e.g. `k8s.io/client-go` → `v0.37.0`.
fn required_version<'a>(go_mod: &'a str, module: &str) -> Option<&'a str> {
    go_mod.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() == Some("require") {
            // `require x v1` on one line
            let (name, version) = (words.next()?, words.next()?);
            return (name == module).then_some(version);
        }
        let mut words = line.split_whitespace();
        (words.next()? == module).then(|| words.next()).flatten()
    })
}

/// The path of the pinned helm, built first if the cache does not have it.
pub fn ensure() -> Result<PathBuf> {
    let dir = module_dir();
    let go_mod = std::fs::read_to_string(dir.join("go.mod"))
        .with_context(|| format!("reading {}", dir.join("go.mod").display()))?;
    let go_sum = std::fs::read_to_string(dir.join("go.sum"))
        .with_context(|| format!("reading {}", dir.join("go.sum").display()))?;
    let pinned = required_version(&go_mod, "helm.sh/helm/v3");
    if pinned != Some(HELM_VERSION) {
        bail!("xtask/helm/go.mod pins helm.sh/helm/v3 {pinned:?}, xtask expects {HELM_VERSION}");
    }
    let key = fnv1a(format!("{go_mod}\0{go_sum}").as_bytes());
    let bin_dir = cache_dir()?.join(format!("{HELM_VERSION}-{key:016x}"));
    let bin = bin_dir.join("helm");
    if bin.is_file() {
        return Ok(bin);
    }
    match prereqs::go_version() {
        Some(v) if v >= prereqs::MIN_GO => {}
        Some((major, minor)) => bail!(
            "go {major}.{minor} is too old to build helm {HELM_VERSION}: install Go >= {}.{} \
             (https://go.dev/dl/)",
            prereqs::MIN_GO.0,
            prereqs::MIN_GO.1
        ),
        None => bail!(
            "go is not on PATH: helm {HELM_VERSION} is built from its Go module; install Go >= \
             {}.{} (https://go.dev/dl/)",
            prereqs::MIN_GO.0,
            prereqs::MIN_GO.1
        ),
    }
    std::fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    eprintln!(
        "building helm {HELM_VERSION} from its Go module (once; a few minutes cold) into {}",
        bin_dir.display()
    );
    // Upstream's Makefile stamps the version and the Kubernetes version that `helm template`
    // and `helm lint` assume (that of the client-go it links).
    let mut ldflags = format!("-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}");
    if let Some(minor) = required_version(&go_mod, "k8s.io/client-go")
        .and_then(|v| v.strip_prefix("v0."))
        .and_then(|v| v.split('.').next())
    {
        for package in [
            "helm.sh/helm/v3/pkg/lint/rules",
            "helm.sh/helm/v3/pkg/chartutil",
        ] {
            ldflags.push_str(&format!(
                " -X {package}.k8sVersionMajor=1 -X {package}.k8sVersionMinor={minor}"
            ));
        }
    }
    // Built beside the final name and renamed: a concurrent or interrupted build never leaves
    // a half-written binary where the next run would trust it.
    let partial = bin_dir.join(format!("helm.partial-{}", std::process::id()));
    let output = Command::new("go")
        .current_dir(&dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("GOFLAGS", "-mod=readonly")
        .env("CGO_ENABLED", "0")
        .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(&partial)
        .arg(HELM_PACKAGE)
        .stdin(Stdio::null())
        .output()
        .context("running go build")?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "go build of helm {HELM_VERSION} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    std::fs::rename(&partial, &bin).with_context(|| format!("renaming to {}", bin.display()))?;
    Ok(bin)
}

/// Runs `helm` with `args` and returns its stdout, or its stderr as the error.
pub fn helm_output(helm: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(helm)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", helm.display()))?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    String::from_utf8(output.stdout).context("helm printed non-UTF-8")
}

#[cfg(test)]
mod tests;
