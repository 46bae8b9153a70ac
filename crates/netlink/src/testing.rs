//! Support for tests that need root and throwaway network namespaces.
//!
//! Enabled by the `testing` feature; used by this crate's tests, the controller's and the node lab.
//! The policy: outside CI a root-only test skips with a clear message when it is not root; in CI
//! (`CI` or `CONNTRACK_RECONCILER_REQUIRE_ROOT_TESTS` set) it fails instead, so that a green CI
//! run always means the real-kernel tests ran.

use std::ffi::OsStr;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether root-only tests must run (CI), rather than skip.
pub fn root_tests_required() -> bool {
    let set =
        |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    set("CONNTRACK_RECONCILER_REQUIRE_ROOT_TESTS") || set("CI")
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns true when the calling root-only test may proceed.
///
/// Not root: prints why the test is skipped and returns false, or panics when
/// [`root_tests_required`] says skipping is not allowed.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if root_tests_required() {
        panic!(
            "{test}: needs root (network namespaces, CAP_NET_ADMIN); CI requires root tests to run"
        );
    }
    eprintln!("skipping {test}: needs root (network namespaces, CAP_NET_ADMIN)");
    false
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A network namespace made with `ip netns add` and removed when dropped (panics included).
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates `ctr-<prefix>-<pid>-<n>` with its loopback up.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("ctr-{prefix}-{}-{id}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.exec_checked(["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, usable with `setns(2)`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace and returns its output, whatever its status.
    pub fn exec<I, S>(&self, argv: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
    }

    /// Runs a command inside the namespace; a non-zero status is an error carrying its stderr.
    pub fn exec_checked<I, S>(&self, argv: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
        )
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run_checked(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}
