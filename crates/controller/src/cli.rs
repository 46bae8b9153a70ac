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

    /// The node addresses NodePorts are served on, as kube-proxy's `--nodeport-addresses`:
    /// empty for every node address, `primary` for the node's primary IP per family, or
    /// comma-separated CIDRs. Set it like kube-proxy's, or flows to other node addresses with a
    /// NodePort's port number (not service traffic there) are judged as NodePort flows.
    #[arg(long, env = "CONNTRACK_RECONCILER_NODEPORT_ADDRESSES", default_value = "", value_parser = ctdiff::NodePortAddresses::parse)]
    pub nodeport_addresses: ctdiff::NodePortAddresses,
}

/// Flags of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// This node's name (the DaemonSet sets it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// Which cluster and network namespace to talk to.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Address of the HTTP server for /metrics, /healthz and /readyz. The default is this pod's
    /// IP (`POD_IP`, set from the downward API's `status.podIP`; on the host network, the node's
    /// address) on --metrics-port, and 127.0.0.1 when `POD_IP` is unset: never every address
    /// of the node.
    #[arg(long, env = "CONNTRACK_RECONCILER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Port of the HTTP server when --metrics-addr is not given.
    #[arg(long, env = "CONNTRACK_RECONCILER_METRICS_PORT", default_value_t = METRICS_PORT)]
    pub metrics_port: u16,

    /// Interval of the periodic full pass, 1s to 24h.
    #[arg(long, env = "CONNTRACK_RECONCILER_RESYNC_INTERVAL", default_value = "60s", value_parser = parse_resync_interval)]
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

    /// How long a deleted Service's frontends stay known, so their flows are still cleaned;
    /// 0s to 24h (0s: a deleted Service's flows are left to expire on their own).
    #[arg(long, env = "CONNTRACK_RECONCILER_TOMBSTONE_TTL", default_value = "5m", value_parser = parse_tombstone_ttl)]
    pub tombstone_ttl: Duration,

    /// Quiet time after the last watch change before a pass starts, 0s to 1m.
    #[arg(long, env = "CONNTRACK_RECONCILER_DEBOUNCE", default_value = "100ms", value_parser = parse_debounce)]
    pub debounce: Duration,

    /// Longest a pass waits under constant watch churn, 0s to 10m.
    #[arg(long, env = "CONNTRACK_RECONCILER_MAX_DELAY", default_value = "1s", value_parser = parse_max_delay)]
    pub max_delay: Duration,

    /// Follow-up passes over changed frontends after a change, catching flows re-created through
    /// rules kube-proxy had not rewritten yet (comma-separated durations, each 1ms to 1h).
    #[arg(long, env = "CONNTRACK_RECONCILER_FOLLOW_UPS", default_value = "1s,3s,10s", value_delimiter = ',', value_parser = parse_follow_up)]
    pub follow_ups: Vec<Duration>,

    /// A watch (or list request) that delivers nothing, not even a bookmark, for this long is
    /// reported and replaced by a new list; 5s to 10m. The default outlasts the 290 s an API
    /// server keeps a quiet watch open, so only a dead connection reaches it.
    #[arg(long, env = "CONNTRACK_RECONCILER_WATCH_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_watch_idle_timeout)]
    pub watch_idle_timeout: Duration,

    /// Nothing is deleted while any watch has been failing, is relisting, or has not answered
    /// for this long; 5s to 30m.
    #[arg(long, env = "CONNTRACK_RECONCILER_WATCH_STALE_AFTER", default_value = "6m", value_parser = parse_watch_stale_after)]
    pub watch_stale_after: Duration,

    /// A flow to a backend the agent never saw is deleted only after an event or bookmark
    /// received this long after the flow was first seen proves the agent's view is newer (how
    /// far the agent's watch may run behind kube-proxy's); 0s to 10m.
    #[arg(long, env = "CONNTRACK_RECONCILER_UNSEEN_BACKEND_GRACE", default_value = "5s", value_parser = parse_unseen_backend_grace)]
    pub unseen_backend_grace: Duration,

    /// The conntrack zone judged; entries of other zones (OVS, OVN, Antrea…) are left alone.
    #[arg(long, env = "CONNTRACK_RECONCILER_ZONE", default_value_t = 0)]
    pub zone: u16,
}

/// `--state-max-age`: a snapshot older than a day says nothing about today's backends.
fn parse_state_max_age(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_secs(1), DAY)
}

/// `--watch-idle-timeout`: shorter than a few seconds restarts healthy quiet watches.
fn parse_watch_idle_timeout(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_secs(5), Duration::from_secs(600))
}

/// `--watch-stale-after`: must leave a healthy quiet watch time to answer.
fn parse_watch_stale_after(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_secs(5), Duration::from_secs(1800))
}

/// `--unseen-backend-grace`: zero trusts any event after the flow; beyond minutes, stale
/// flows of never-seen backends linger for nothing.
fn parse_unseen_backend_grace(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::ZERO, Duration::from_secs(600))
}

/// Port of the admin server (`/metrics`, `/healthz`, `/readyz`).
pub const METRICS_PORT: u16 = 9795;

/// The default admin server address: `pod_ip` (the `POD_IP` variable) on [`METRICS_PORT`], or
/// loopback when it is unset or not an IP address. Never the unspecified address: the agent runs
/// on the host network, where that would expose it on every interface of the node.
pub fn default_metrics_addr(pod_ip: Option<&str>, port: u16) -> SocketAddr {
    let ip = pod_ip
        .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(ip, port)
}

impl RunArgs {
    /// Where the admin server listens: --metrics-addr, else `POD_IP` (or loopback) on
    /// --metrics-port.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr.unwrap_or_else(|| {
            default_metrics_addr(std::env::var("POD_IP").ok().as_deref(), self.metrics_port)
        })
    }
}

/// Parses a duration and holds it to `min..=max`, so that a nonsense value is a usage error at
/// start-up instead of a panic later (an `Instant` overflowing, a zero-period timer).
fn duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let value = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if value < min || value > max {
        return Err(format!(
            "{} is out of range: must be between {} and {}",
            humantime::format_duration(value),
            humantime::format_duration(min),
            humantime::format_duration(max),
        ));
    }
    Ok(value)
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// `--resync-interval`: at least a second (a zero interval would pass back to back), at most a day.
fn parse_resync_interval(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_secs(1), DAY)
}

/// `--tombstone-ttl`: zero turns tombstones off; beyond a day a deleted Service's address may
/// well belong to a new one.
fn parse_tombstone_ttl(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::ZERO, DAY)
}

/// `--debounce`: zero starts a pass on every change; more than a minute only delays cleanup.
fn parse_debounce(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::ZERO, Duration::from_secs(60))
}

/// `--max-delay`: zero starts a pass at the first change; the bound keeps churn from
/// postponing cleanup for long.
fn parse_max_delay(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::ZERO, Duration::from_secs(600))
}

/// One `--follow-ups` delay: a zero delay would repeat the pass it follows; kube-proxy rewrites
/// its rules well within an hour.
fn parse_follow_up(text: &str) -> Result<Duration, String> {
    duration_within(text, Duration::from_millis(1), Duration::from_secs(3600))
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
    /// Desired state from these files (YAML or JSON, at most 256 MiB each) instead of the
    /// cluster: `kubectl get services,endpointslices.discovery.k8s.io -A -o yaml` (add
    /// `pods,nodes` for hostPorts and NodePort addresses). Repeatable. Malformed or ambiguous
    /// input (a second JSON document, duplicates that differ, bad ports or protocols, missing
    /// fields) is always an error; incomplete input (v1 Endpoints, v1beta1 slices, a UDP Service
    /// without an EndpointSlice per family) is refused with --delete and warned about otherwise.
    /// See docs/operations.md.
    #[arg(long = "state", value_name = "FILE")]
    pub state: Vec<PathBuf>,

    /// This node's name: selects its Node object and its Pods (hostPorts).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// More addresses of this node, for NodePort and hostPort matching. Repeatable.
    #[arg(long = "node-ip", value_name = "IP")]
    pub node_ip: Vec<IpAddr>,

    /// Which cluster and network namespace to talk to.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Delete the stale flows it reports. With --state, refuses state files that are
    /// incomplete or older than --state-max-age; from the cluster, lists the state again after
    /// reading the table and deletes only what is still stale against it.
    #[arg(long)]
    pub delete: bool,

    /// With --state and --delete: refuse state files last written longer ago than this (a
    /// backend created since would look gone, and its flows would be deleted); 1s to 24h.
    #[arg(long, default_value = "2m", value_parser = parse_state_max_age)]
    pub state_max_age: Duration,

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
        if std::env::var_os("POD_IP").is_none() {
            assert_eq!(run.metrics_addr(), "127.0.0.1:9795".parse().unwrap());
        }
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
    fn run_with(flags: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["conntrack-reconciler", "run", "--node-name", "n1"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(run) => run,
            Command::Check(_) => panic!("expected run"),
        })
    }

    /// Every duration flag accepts its documented bounds and rejects what lies outside them (a
    /// value past `Instant`'s range used to panic inside the agent) with a usage error naming
    /// the flag and the range.
    #[test]
    fn duration_flags_are_bounded_at_parse_time() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "--resync-interval",
                &["1s", "24h"],
                &["0s", "999ms", "24h 1s", "1000000000years"],
            ),
            (
                "--tombstone-ttl",
                &["0s", "24h"],
                &["25h", "1000000000years"],
            ),
            ("--debounce", &["0s", "1m"], &["61s", "1000000000years"]),
            ("--max-delay", &["0s", "10m"], &["601s", "1000000000years"]),
            (
                "--follow-ups",
                &["1ms", "1h", "1s,1h"],
                &["0s", "1s,0s", "61m", "1s,2h", "1000000000years"],
            ),
        ];
        for (flag, good, bad) in cases {
            for value in *good {
                let arg = format!("{flag}={value}");
                if let Err(e) = run_with(&[&arg]) {
                    panic!("{arg} rejected: {e}");
                }
            }
            for value in *bad {
                let arg = format!("{flag}={value}");
                let err = match run_with(&[&arg]) {
                    Ok(run) => panic!("{arg} accepted: {run:?}"),
                    Err(e) => e,
                };
                assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{arg}");
                let text = err.to_string();
                assert!(text.contains(flag), "{arg}: {text}");
            }
        }
        let err = run_with(&["--resync-interval=0s"]).unwrap_err().to_string();
        assert!(err.contains("must be between 1s and 1day"), "{err}");
    }

    #[test]
    fn duration_flags_parse_their_values() {
        let run = run_with(&[
            "--resync-interval=2h",
            "--tombstone-ttl=0s",
            "--debounce=250ms",
            "--max-delay=5s",
            "--follow-ups=500ms,2s",
        ])
        .unwrap();
        assert_eq!(run.resync_interval, Duration::from_secs(7200));
        assert_eq!(run.tombstone_ttl, Duration::ZERO);
        assert_eq!(run.debounce, Duration::from_millis(250));
        assert_eq!(run.max_delay, Duration::from_secs(5));
        assert_eq!(
            run.follow_ups,
            [Duration::from_millis(500), Duration::from_secs(2)]
        );
    }

    /// The admin server defaults to the pod's IP, and to loopback (never 0.0.0.0) without one.
    #[test]
    fn metrics_addr_defaults_to_the_pod_ip_never_to_every_address() {
        assert_eq!(
            default_metrics_addr(Some("10.1.2.3"), 9795),
            "10.1.2.3:9795".parse().unwrap()
        );
        // An IPv6 node address with another port: no `$(POD_IP):PORT` string to get wrong.
        assert_eq!(
            default_metrics_addr(Some("fd00::7"), 9000),
            "[fd00::7]:9000".parse().unwrap()
        );
        for unusable in [None, Some(""), Some("node-1"), Some("0.0.0.0"), Some("::")] {
            assert_eq!(
                default_metrics_addr(unusable, 9795),
                "127.0.0.1:9795".parse().unwrap(),
                "{unusable:?}"
            );
        }
        let run = run_with(&["--metrics-addr=0.0.0.0:9000"]).unwrap();
        assert_eq!(run.metrics_addr(), "0.0.0.0:9000".parse().unwrap());
        let run = run_with(&["--metrics-port=9000"]).unwrap();
        assert_eq!(run.metrics_addr().port(), 9000);
    }
}
