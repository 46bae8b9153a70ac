//! Command-line interface: every flag also reads an environment variable, so the DaemonSet can
//! be configured either way.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Keeps a Kubernetes node's conntrack table free of stale UDP entries.
#[derive(Debug, Parser)]
#[command(name = "conntrack-reconciler", version, about, long_about = None)]
pub struct Cli {
    /// Log format; `auto` is text on a terminal and JSON otherwise (e.g. in a pod).
    #[arg(long, global = true, env = "CONNTRACK_RECONCILER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: watch, decide, delete (the DaemonSet's process).
    Run(RunArgs),
    /// One-shot diagnosis: list the stale flows of this node's table and why, optionally delete them.
    Check(CheckArgs),
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Which IP families a pass covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
    /// Both families, one pass each.
    Both,
}

impl FamilyArg {
    /// The families this choice covers, in pass order.
    pub fn families(self) -> &'static [ctnetlink::Family] {
        use ctnetlink::Family::{V4, V6};
        match self {
            FamilyArg::Ipv4 => &[V4],
            FamilyArg::Ipv6 => &[V6],
            FamilyArg::Both => &[V4, V6],
        }
    }
}

/// Where the cluster and the conntrack table are.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Path to a kubeconfig file; without it the in-cluster configuration is used, and failing
    /// that the default kubeconfig (`KUBECONFIG`, `~/.kube/config`).
    #[arg(long, env = "CONNTRACK_RECONCILER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Operate on the conntrack table of this network namespace (a `/run/netns/NAME` path)
    /// instead of the current one.
    #[arg(long, env = "CONNTRACK_RECONCILER_NETNS")]
    pub netns: Option<PathBuf>,

    /// IP families to reconcile.
    #[arg(long, env = "CONNTRACK_RECONCILER_FAMILY", value_enum, default_value_t = FamilyArg::Both)]
    pub family: FamilyArg,
}

/// Flags of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// This node's name (the DaemonSet sets it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "CONNTRACK_RECONCILER_METRICS_ADDR",
        default_value = "0.0.0.0:9795"
    )]
    pub metrics_addr: SocketAddr,

    /// Interval of the periodic full pass.
    #[arg(long, env = "CONNTRACK_RECONCILER_RESYNC_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,

    /// Decide and report, delete nothing.
    #[arg(long, env = "CONNTRACK_RECONCILER_DRY_RUN")]
    pub dry_run: bool,

    /// At most this many deletions per pass (0: no limit); the rest waits for the next pass.
    #[arg(
        long,
        env = "CONNTRACK_RECONCILER_MAX_DELETES_PER_PASS",
        default_value_t = 10_000
    )]
    pub max_deletes_per_pass: u64,

    /// Do not subscribe to conntrack NEW events (passes only).
    #[arg(long, env = "CONNTRACK_RECONCILER_NO_EVENTS")]
    pub no_events: bool,

    /// Event-path deletions allowed per frontend per second (a guard against delete storms).
    #[arg(
        long,
        env = "CONNTRACK_RECONCILER_EVENT_DELETES_PER_SECOND",
        default_value_t = 50
    )]
    pub event_deletes_per_second: u32,

    /// How long a deleted Service's frontends stay known, so their flows are still cleaned.
    #[arg(long, env = "CONNTRACK_RECONCILER_TOMBSTONE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub tombstone_ttl: Duration,

    /// Quiet time after the last watch change before a pass starts.
    #[arg(long, env = "CONNTRACK_RECONCILER_DEBOUNCE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,

    /// Longest a pass waits under constant watch churn.
    #[arg(long, env = "CONNTRACK_RECONCILER_MAX_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub max_delay: Duration,

    /// Follow-up passes over changed frontends after a change, catching flows re-created through
    /// rules kube-proxy had not rewritten yet (comma-separated durations).
    #[arg(long, env = "CONNTRACK_RECONCILER_FOLLOW_UPS", default_value = "1s,3s,10s", value_delimiter = ',', value_parser = humantime::parse_duration)]
    pub follow_ups: Vec<Duration>,
}

/// Output formats of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for a person.
    Text,
    /// One JSON document.
    Json,
}

/// Flags of `check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Desired state from these files (YAML or JSON; `kubectl get svc,endpointslices -A -o yaml`
    /// output, multi-document YAML, Node and Pod objects too) instead of the cluster. Repeatable.
    #[arg(long = "state", value_name = "FILE")]
    pub state: Vec<PathBuf>,

    /// This node's name: selects its Node object and its Pods (hostPorts).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// More addresses of this node, for NodePort and hostPort matching. Repeatable.
    #[arg(long = "node-ip", value_name = "IP")]
    pub node_ip: Vec<IpAddr>,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Delete the stale flows it reports.
    #[arg(long)]
    pub delete: bool,

    /// Also summarise the table's health: size and limit, the kernel's counters (as
    /// `conntrack -S`) and how they move, UDP flows per Service frontend, and a diagnosis of
    /// known patterns (a nearly full table, the A/AAAA DNS insert race, stale flows).
    #[arg(long)]
    pub stats: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults() {
        let cli =
            Cli::try_parse_from(["conntrack-reconciler", "run", "--node-name", "n1"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.node_name, "n1");
        assert_eq!(run.metrics_addr, "0.0.0.0:9795".parse().unwrap());
        assert_eq!(run.resync_interval, Duration::from_secs(60));
        assert_eq!(run.tombstone_ttl, Duration::from_secs(300));
        assert_eq!(run.follow_ups, [1, 3, 10].map(Duration::from_secs).to_vec());
        assert_eq!(run.target.family, FamilyArg::Both);
        assert!(!run.dry_run);
    }

    #[test]
    fn check_accepts_repeated_state_and_node_ips() {
        let cli = Cli::try_parse_from([
            "conntrack-reconciler",
            "check",
            "--state",
            "a.yaml",
            "--state",
            "b.json",
            "--node-ip",
            "192.168.1.1",
            "--node-ip",
            "fd00::1",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Check(check) = cli.command else {
            panic!("expected check")
        };
        assert_eq!(check.state.len(), 2);
        assert_eq!(check.node_ip.len(), 2);
        assert_eq!(check.output, OutputFormat::Json);
        assert!(!check.delete);
    }

    #[test]
    fn run_requires_a_node_name() {
        // SAFETY-free: clap reads NODE_NAME from the environment; the test binary does not set it.
        if std::env::var_os("NODE_NAME").is_none() {
            assert!(Cli::try_parse_from(["conntrack-reconciler", "run"]).is_err());
        }
    }
}
