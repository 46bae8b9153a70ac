//! kube-proxy flavours and how each is run in the node namespace.

use std::path::Path;

/// A kube-proxy release line the harness has a binary for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyVersion {
    /// v1.31: event-based conntrack cleanup with the `conntrack` binary, never retried.
    V1_31,
    /// v1.34: state-based conntrack reconciler over netlink.
    V1_34,
}

impl ProxyVersion {
    /// The directory of its binary in xtask's layout.
    pub fn dir(self) -> &'static str {
        match self {
            Self::V1_31 => "v1.31",
            Self::V1_34 => "v1.34",
        }
    }
}

/// kube-proxy's `--proxy-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyMode {
    /// iptables (iptables-restore).
    Iptables,
    /// nftables (`nft`).
    Nftables,
}

impl ProxyMode {
    /// The flag value.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }
}

/// One kube-proxy as a scenario runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxyFlavour {
    /// Which release.
    pub version: ProxyVersion,
    /// Which mode.
    pub mode: ProxyMode,
    /// Whether the `conntrack` tool is on its `PATH`. v1.31 calls it for every cleanup and
    /// only logs a failure: without it, every cleanup is lost (and never retried). v1.32+ uses
    /// netlink and does not care.
    pub conntrack_tool: bool,
}

impl ProxyFlavour {
    /// v1.31, iptables mode, with its own (event-based) cleanup.
    pub const V1_31: Self = Self {
        version: ProxyVersion::V1_31,
        mode: ProxyMode::Iptables,
        conntrack_tool: true,
    };
    /// v1.31, iptables mode, `conntrack` missing from its `PATH`: every cleanup lost.
    pub const V1_31_LOST_CLEANUP: Self = Self {
        version: ProxyVersion::V1_31,
        mode: ProxyMode::Iptables,
        conntrack_tool: false,
    };
    /// v1.34, iptables mode.
    pub const V1_34_IPTABLES: Self = Self {
        version: ProxyVersion::V1_34,
        mode: ProxyMode::Iptables,
        conntrack_tool: true,
    };
    /// v1.34, nftables mode.
    pub const V1_34_NFTABLES: Self = Self {
        version: ProxyVersion::V1_34,
        mode: ProxyMode::Nftables,
        conntrack_tool: true,
    };
    /// The four flavours of the scenario matrix.
    pub const ALL: [Self; 4] = [
        Self::V1_31,
        Self::V1_31_LOST_CLEANUP,
        Self::V1_34_IPTABLES,
        Self::V1_34_NFTABLES,
    ];

    /// A short name for tables and log directories, e.g. `v1.31-lost-cleanup`.
    pub fn name(self) -> String {
        let mut name = format!("{}-{}", self.version.dir(), self.mode.flag());
        if !self.conntrack_tool {
            name.push_str("-lost-cleanup");
        }
        name
    }
}

/// Arguments for kube-proxy in the node namespace.
///
/// The conntrack settings are "leave as is" (`0`), so kube-proxy never writes the global
/// `nf_conntrack_max` of the machine running the tests; `--iptables-localhost-nodeports=false`
/// keeps it from needing `route_localnet`. Health and metrics listen on the node namespace's
/// own loopback (one kube-proxy per namespace).
pub fn args(
    flavour: ProxyFlavour,
    kubeconfig: &Path,
    node_name: &str,
    cluster_cidrs: &str,
    verbosity: u8,
) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--hostname-override={node_name}"),
        format!("--proxy-mode={}", flavour.mode.flag()),
        format!("--cluster-cidr={cluster_cidrs}"),
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0s".into(),
        "--conntrack-tcp-timeout-close-wait=0s".into(),
        "--iptables-localhost-nodeports=false".into(),
        format!("--healthz-bind-address={HEALTHZ_ADDR}"),
        format!("--metrics-bind-address={METRICS_ADDR}"),
        format!("--v={verbosity}"),
    ]
}

/// kube-proxy's health endpoint inside the node namespace.
pub const HEALTHZ_ADDR: &str = "127.0.0.1:10256";
/// kube-proxy's metrics endpoint inside the node namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:10249";

/// The system directories whose programs kube-proxy may run.
const SYSTEM_BIN_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Makes `dir` a `PATH` directory with a link to every program of the system directories except
/// `conntrack`: what a node without conntrack-tools installed looks like to kube-proxy.
pub fn path_without_conntrack(dir: &Path) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    for system in SYSTEM_BIN_DIRS {
        let Ok(entries) = std::fs::read_dir(system) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name == "conntrack" || dir.join(&name).exists() {
                continue;
            }
            // Links keep argv[0] (iptables-nft dispatches on its name).
            std::os::unix::fs::symlink(entry.path(), dir.join(&name))?;
        }
    }
    Ok(dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_names_are_distinct() {
        let names: std::collections::BTreeSet<String> =
            ProxyFlavour::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), 4);
        assert_eq!(
            ProxyFlavour::V1_31_LOST_CLEANUP.name(),
            "v1.31-iptables-lost-cleanup"
        );
    }

    #[test]
    fn the_path_without_conntrack_keeps_iptables() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_without_conntrack(&dir.path().join("bin")).unwrap();
        let bin = Path::new(&path);
        assert!(!bin.join("conntrack").exists());
        assert!(bin.join("sh").exists());
        if Path::new("/usr/sbin/iptables").exists() || Path::new("/sbin/iptables").exists() {
            assert!(bin.join("iptables-restore").exists());
        }
    }
}
