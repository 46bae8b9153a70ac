//! Shared by the agent's integration tests: hand-made conntrack entries, Kubernetes objects for
//! the lab's API double, and the agent binary started against both.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic
#![allow(dead_code)] // each test file uses its own subset

use ctnetlink::testing::TestNetns;
use ctnetlink::{NewFlow, Status, Tuple, proto};
use e2e::apiserver::ApiServer;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The agent binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_conntrack-reconciler");
/// The node the tests pretend to be.
pub const NODE: &str = "node-1";

/// Parses an IP address literal.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A DNATed entry: `client` → `frontend`, answered by `backend`.
pub fn dnat(l4: u8, client: (&str, u16), frontend: (&str, u16), backend: (&str, u16)) -> NewFlow {
    let orig = Tuple::new(ip(client.0), ip(frontend.0), l4, client.1, frontend.1);
    let reply = Tuple::new(ip(backend.0), ip(client.0), l4, backend.1, client.1);
    NewFlow {
        orig,
        reply,
        timeout: 600,
        status: Status::CONFIRMED | Status::SEEN_REPLY | Status::DST_NAT,
        mark: 0,
        zone: 0,
    }
}

/// A DNATed UDP entry from 10.244.2.9:`client_port` to `frontend`, answered by `backend`.
pub fn flow(client_port: u16, frontend: (&str, u16), backend: (&str, u16)) -> NewFlow {
    dnat(proto::UDP, ("10.244.2.9", client_port), frontend, backend)
}

/// A UDP Service in namespace `default` with one port named `p`.
pub fn service(name: &str, cluster_ip: &str, port: u16, target: u16) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"name": "p", "port": port, "protocol": "UDP", "targetPort": target}]}
    }))
    .unwrap()
}

/// The EndpointSlice `<service>-x` with ready endpoints `ready` on UDP port `port` named `p`.
pub fn slice(service: &str, port: u16, ready: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ready
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-x"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "p", "port": port, "protocol": "UDP"}]
    }))
    .unwrap()
}

/// This node, with address 192.168.77.1.
pub fn node() -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.1"}]}
    }))
    .unwrap()
}

/// A runtime for the API double; keep it alive as long as the double.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The agent, running `run` against an API double and a namespace's table.
pub struct Agent {
    child: Child,
    metrics: SocketAddr,
    log: tempfile::NamedTempFile,
}

impl Agent {
    /// Starts `conntrack-reconciler run` (IPv4) with `extra` flags.
    pub fn start(api: &ApiServer, ns: &TestNetns, extra: &[&str]) -> Agent {
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(BIN)
            .args(["--log-format", "json", "run", "--node-name", NODE])
            .args(["--kubeconfig", api.kubeconfig().to_str().unwrap()])
            .args(["--netns", ns.path().to_str().unwrap()])
            .args(["--metrics-addr", &metrics.to_string(), "--family", "ipv4"])
            .args(extra)
            .env("RUST_LOG", "info,conntrack_reconciler=debug")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Agent {
            child,
            metrics,
            log,
        }
    }

    /// GET on the admin server: status and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.get("/readyz").is_some_and(|(status, _)| status == 200)
    }

    /// Waits up to 20 s for readiness.
    pub fn wait_ready(&self) {
        wait_for(
            "agent ready",
            Duration::from_secs(20),
            || self.ready(),
            self,
        );
    }

    /// One scrape: the body, and every sample as `name{labels}` → value.
    pub fn scrape(&self) -> (String, BTreeMap<String, f64>) {
        let (status, body) = self.get("/metrics").expect("metrics endpoint");
        assert_eq!(status, 200);
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        (body, samples)
    }

    /// The sum of a metric's samples whose series contains every `filters` substring.
    pub fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        let (_, samples) = self.scrape();
        samples
            .iter()
            .filter(|(series, _)| {
                series.starts_with(name) && filters.iter().all(|f| series.contains(f))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Everything the agent logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (10 s at most) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop on SIGTERM\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `cond`, failing with the agent's log after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool, agent: &Agent) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\nagent log:\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Holds for `duration`, failing as soon as `invariant` breaks.
pub fn hold(what: &str, duration: Duration, mut invariant: impl FnMut() -> bool, agent: &Agent) {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        assert!(invariant(), "{what} broke\nagent log:\n{}", agent.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}
