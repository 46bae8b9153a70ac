//! Where the real components are: `cargo xtask k8s --print-dir`, or a directory given outright.
//!
//! The layout is xtask's: `<dir>/etcd/etcd`, `<dir>/v1.34/{kube-apiserver,
//! kube-controller-manager,kube-proxy}`, `<dir>/v1.31/kube-proxy`.

use crate::real::proxy::ProxyVersion;
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Names a directory laid out like `cargo xtask k8s --print-dir`'s: used as is, nothing built.
pub const DIR_ENV: &str = "CONNTRACK_RECONCILER_K8S_BIN";

/// The real components' binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sBinaries {
    /// The directory laid out as xtask's.
    pub dir: PathBuf,
}

/// The workspace root (the e2e crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

impl K8sBinaries {
    /// etcd.
    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd/etcd")
    }

    /// kube-apiserver (v1.34).
    pub fn apiserver(&self) -> PathBuf {
        self.dir.join("v1.34/kube-apiserver")
    }

    /// kube-controller-manager (v1.34).
    pub fn controller_manager(&self) -> PathBuf {
        self.dir.join("v1.34/kube-controller-manager")
    }

    /// kube-proxy of a version.
    pub fn kube_proxy(&self, version: ProxyVersion) -> PathBuf {
        self.dir.join(version.dir()).join("kube-proxy")
    }

    /// Every binary, for checks and version reports.
    pub fn all(&self) -> Vec<PathBuf> {
        vec![
            self.etcd(),
            self.apiserver(),
            self.controller_manager(),
            self.kube_proxy(ProxyVersion::V1_34),
            self.kube_proxy(ProxyVersion::V1_31),
        ]
    }

    /// Checks that every binary is there and executable.
    pub fn check(&self) -> Result<()> {
        for path in self.all() {
            if !path.is_file() {
                bail!("{} is missing", path.display());
            }
        }
        Ok(())
    }

    /// Each binary's `--version` (first line), e.g. `kube-proxy Kubernetes v1.31.14`.
    pub fn versions(&self) -> Vec<(PathBuf, String)> {
        self.all()
            .into_iter()
            .map(|path| {
                let version = Command::new(&path)
                    .arg("--version")
                    .output()
                    .map(|o| {
                        let text = String::from_utf8_lossy(&o.stdout).into_owned();
                        text.lines().next().unwrap_or("").trim().to_string()
                    })
                    .unwrap_or_else(|e| format!("cannot run: {e}"));
                (path, version)
            })
            .collect()
    }

    /// `$CONNTRACK_RECONCILER_K8S_BIN`, else what `cargo xtask k8s --print-dir` prints (it builds
    /// what is missing; its progress goes to stderr). Computed once per process.
    pub fn locate() -> Result<Self, String> {
        static FOUND: OnceLock<Result<K8sBinaries, String>> = OnceLock::new();
        FOUND
            .get_or_init(|| Self::locate_uncached().map_err(|e| format!("{e:#}")))
            .clone()
    }

    fn locate_uncached() -> Result<Self> {
        let dir = match std::env::var_os(DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => print_dir()?,
        };
        let found = Self { dir };
        found.check()?;
        Ok(found)
    }

    /// For a test: the binaries, or None after one line saying why the test is skipped. Not
    /// root, or binaries missing, is a failure instead in CI (`CI`,
    /// `CONNTRACK_RECONCILER_REQUIRE_ROOT_TESTS`), like every root test.
    pub fn for_test(test: &str) -> Option<Self> {
        if !ctnetlink::testing::root_or_skip(test) {
            return None;
        }
        match Self::locate() {
            Ok(found) => Some(found),
            Err(why) if ctnetlink::testing::root_tests_required() => panic!(
                "{test}: the real Kubernetes components are required in CI but unavailable: {why}"
            ),
            Err(why) => {
                eprintln!(
                    "skipping {test}: real Kubernetes components unavailable ({}); build them \
                     with `cargo xtask k8s` (needs Go) or set {DIR_ENV}",
                    why.lines().last().unwrap_or(&why)
                );
                None
            }
        }
    }
}

/// Runs `cargo xtask k8s --print-dir` in the workspace; its stderr is echoed and kept.
fn print_dir() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["xtask", "k8s", "--print-dir"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo xtask k8s --print-dir")?;
    let stderr = child.stderr.take().context("stderr")?;
    let echo = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            kept.push(line);
        }
        kept
    });
    let out = child.wait_with_output()?;
    let kept = echo.join().unwrap_or_default();
    if !out.status.success() {
        let last = kept
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .cloned()
            .unwrap_or_default();
        bail!(
            "cargo xtask k8s --print-dir failed ({}): {last}",
            out.status
        );
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if dir.is_empty() {
        bail!("cargo xtask k8s --print-dir printed nothing");
    }
    Ok(PathBuf::from(dir))
}
