//! `cargo xtask prereqs [demo|test]`: what `make demo` and `make test` need on this machine,
//! installed when it can be, otherwise named in one line.
//!
//! The tests and the demo drive the real kernel through the usual tools (`ip`, `iptables-restore`,
//! `nft`, `conntrack`, `sysctl`); the Helm chart tests and the real-components tier build Go
//! programs. As root on Debian or Ubuntu, missing packages are installed with one
//! `apt-get update` and one `apt-get install`; anywhere else the command stops with a line naming
//! the packages and the command that installs them. Every expected failure is one line (an
//! `anyhow` error, never a panic), so that a newcomer reads the fix, not a backtrace.

use crate::util;
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Command, Stdio};

/// The oldest Go that builds the pinned Helm (its go.mod says `go 1.26.0`) and the real
/// Kubernetes components.
pub const MIN_GO: (u32, u32) = (1, 26);

/// A program the tests run, and the Debian package that ships it.
struct Tool {
    program: &'static str,
    package: &'static str,
}

const TOOLS: &[Tool] = &[
    Tool {
        program: "ip",
        package: "iproute2",
    },
    Tool {
        program: "iptables",
        package: "iptables",
    },
    Tool {
        program: "ip6tables",
        package: "iptables",
    },
    Tool {
        program: "iptables-save",
        package: "iptables",
    },
    Tool {
        program: "iptables-restore",
        package: "iptables",
    },
    Tool {
        program: "ip6tables-restore",
        package: "iptables",
    },
    Tool {
        program: "nft",
        package: "nftables",
    },
    Tool {
        program: "conntrack",
        package: "conntrack",
    },
    Tool {
        program: "sysctl",
        package: "procps",
    },
    Tool {
        program: "ps",
        package: "procps",
    },
    // The real-components tier probes etcd and the apiserver with curl.
    Tool {
        program: "curl",
        package: "curl",
    },
];

/// Go modules and the real components are fetched over TLS.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const USAGE: &str = "usage: cargo xtask prereqs [demo|test]";

/// What the check is for: the demo needs root; the tests run without it (root-only tests skip).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Purpose {
    Demo,
    Test,
}

/// Entry point of `cargo xtask prereqs`.
pub fn run(args: &[String]) -> Result<()> {
    let purpose = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["test"] => Purpose::Test,
        ["demo"] => Purpose::Demo,
        _ => bail!("{USAGE}"),
    };
    // Every failure here is an expected one with its fix in the message: print that one line and
    // exit, never a backtrace (anyhow prints one whenever RUST_BACKTRACE is set).
    if let Err(error) = check(purpose) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
    Ok(())
}

fn check(purpose: Purpose) -> Result<()> {
    let root = is_root();
    let required = root_tests_required();
    if !root {
        match purpose {
            Purpose::Demo => bail!(
                "make demo needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN): it creates network \
                 namespaces and edits their conntrack tables; run it with sudo"
            ),
            Purpose::Test if required => bail!(
                "not root, and root-only tests must run here (CI or \
                 CONNTRACK_RECONCILER_REQUIRE_ROOT_TESTS is set): run make test as root"
            ),
            Purpose::Test => eprintln!(
                "prereqs: not root: the real-kernel and node-lab tests will skip (run make test \
                 as root to include them)"
            ),
        }
    }

    // Without root the kernel tests skip, so their tools are not needed; Go still is.
    if root {
        let missing = missing_packages();
        if !missing.is_empty() {
            install(&missing)?;
            let still = missing_packages();
            if !still.is_empty() {
                bail!(
                    "still missing after apt-get install: {} (is /usr/sbin on PATH?)",
                    still.join(" ")
                );
            }
        }
        check_network_namespaces()?;
    }

    if purpose == Purpose::Test {
        check_go(required)?;
    }
    Ok(())
}

/// Debian packages one of whose programs (or the CA bundle) is missing, each named once.
fn missing_packages() -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = Vec::new();
    for tool in TOOLS {
        if !util::have(tool.program) && !missing.contains(&tool.package) {
            missing.push(tool.package);
        }
    }
    if !Path::new(CA_BUNDLE).is_file() {
        missing.push("ca-certificates");
    }
    missing
}

/// Installs `packages` with apt-get (root, Debian or Ubuntu), or stops with the one line that
/// says how to get them.
fn install(packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    if !is_debian_like() || !util::have("apt-get") {
        bail!(
            "missing packages: {list}; install them with your distribution's package manager \
             (Debian/Ubuntu: apt-get install {list})"
        );
    }
    eprintln!("prereqs: installing {list} (apt-get)");
    // One update: a fresh machine's package lists are empty or old.
    quiet_apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(packages);
    quiet_apt(&install)
}

/// Runs apt-get with its chatter captured; on failure the error carries its last lines.
fn quiet_apt(args: &[&str]) -> Result<()> {
    let output = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .context("running apt-get")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "apt-get {} failed ({}): {}",
            args.join(" "),
            output.status,
            tail.join(" / ")
        );
    }
    Ok(())
}

/// Creates and deletes one named network namespace, as the tests do.
fn check_network_namespaces() -> Result<()> {
    let name = format!("ctr-prereqs-{}", std::process::id());
    let added = Command::new("ip")
        .args(["netns", "add", &name])
        .stdout(Stdio::null())
        .output()
        .context("running ip netns add")?;
    if !added.status.success() {
        bail!(
            "cannot create network namespaces here (ip netns add: {}): the tests and the demo \
             need a VM, a bare-metal machine or a privileged container",
            String::from_utf8_lossy(&added.stderr).trim()
        );
    }
    let _ = Command::new("ip")
        .args(["netns", "del", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    Ok(())
}

/// Go builds the pinned Helm for the chart tests (and the real-components tier). No distribution
/// package is recent enough everywhere, so it is never installed here: outside CI its absence
/// only skips those tests; in CI it stops the run.
fn check_go(required: bool) -> Result<()> {
    let found = go_version();
    let problem = match found {
        Some(version) if version >= MIN_GO => return Ok(()),
        Some((major, minor)) => format!("go {major}.{minor} is older than"),
        None => "go is not on PATH; the chart tests need".to_string(),
    };
    let line = format!(
        "{problem} Go >= {}.{} (https://go.dev/dl/), which builds the pinned helm",
        MIN_GO.0, MIN_GO.1
    );
    if required {
        bail!("{line}; CI must run the Helm chart tests");
    }
    eprintln!("prereqs: {line}: the Helm chart tests will skip");
    Ok(())
}

/// The installed Go's `go env GOVERSION` as (major, minor), e.g. `go1.26.8` → (1, 26).
pub(crate) fn go_version() -> Option<(u32, u32)> {
    if !util::have("go") {
        return None;
    }
    let out = Command::new("go")
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .ok()?;
    parse_go_version(String::from_utf8_lossy(&out.stdout).trim())
}

fn parse_go_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.strip_prefix("go")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether root-only tests must run rather than skip: the rule of
/// `ctnetlink::testing::root_tests_required`, repeated here to keep xtask's dependencies small.
pub fn root_tests_required() -> bool {
    let set =
        |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    set("CONNTRACK_RECONCILER_REQUIRE_ROOT_TESTS") || set("CI")
}

/// The effective user id is 0 (read from /proc, no libc needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            // Uid: real effective saved filesystem
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Debian, Ubuntu or a derivative, by /etc/os-release.
fn is_debian_like() -> bool {
    let Ok(text) = std::fs::read_to_string("/etc/os-release") else {
        return false;
    };
    text.lines().any(|line| {
        let Some((key, value)) = line.split_once('=') else {
            return false;
        };
        let value = value.trim_matches('"');
        (key == "ID" || key == "ID_LIKE")
            && value
                .split_whitespace()
                .any(|id| id == "debian" || id == "ubuntu")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_parse() {
        assert_eq!(parse_go_version("go1.26.8"), Some((1, 26)));
        assert_eq!(parse_go_version("go1.27rc1"), Some((1, 27)));
        assert_eq!(parse_go_version("go1.22"), Some((1, 22)));
        assert_eq!(parse_go_version("devel"), None);
        assert!(parse_go_version("go1.24.3").unwrap() < MIN_GO);
    }

    #[test]
    fn every_tool_names_a_package() {
        for tool in TOOLS {
            assert!(!tool.package.is_empty(), "{}", tool.program);
        }
        for program in [
            "ip",
            "iptables-restore",
            "ip6tables-restore",
            "nft",
            "conntrack",
        ] {
            assert!(TOOLS.iter().any(|t| t.program == program), "{program}");
        }
    }
}
