//! What the agent benchmarks (`agent-bench`, `churn-bench`) share: the synthetic cluster's
//! addresses and objects, the agent process with its admin endpoint and CPU/memory readings,
//! and small statistics helpers.

use crate::apiserver::ApiServer;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Service i's ClusterIP. Service i: ClusterIP 10.96.x.y:53/UDP, endpoints 10.(100+i/256).(i%256).(k+1):5353.
pub fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Endpoint k of service i.
pub fn endpoint(i: u32, k: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, (100 + i / 256) as u8, (i % 256) as u8, (k + 1) as u8)
}

/// Service i, one UDP port 53 → 5353.
pub fn service(i: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": vip(i).to_string(), "clusterIPs": [vip(i).to_string()],
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]}
    })
}

/// The benchmark's Node object: `name` with one InternalIP.
pub fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.1"}]}})
}

/// The agent binary running `run` against the API double on a namespace's table.
pub struct BenchAgent {
    child: Child,
    metrics: SocketAddr,
}

impl BenchAgent {
    /// Starts `bin run` for node `node` (IPv4 only, logs at warn, discarded), its admin server
    /// on a free loopback port, with `extra` flags.
    pub fn start(
        bin: &Path,
        api: &ApiServer,
        netns: &Path,
        node: &str,
        extra: &[&str],
    ) -> Result<BenchAgent> {
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(bin)
            .args(["--log-format", "json", "run", "--node-name", node])
            .args(["--family", "ipv4"])
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .arg("--netns")
            .arg(netns)
            .args(["--metrics-addr", &metrics.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(BenchAgent { child, metrics })
    }

    /// The body of `GET path` when it answers 200.
    pub fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(1)).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let (head, body) = resp.split_once("\r\n\r\n")?;
        (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"))
            .then(|| body.to_owned())
    }

    /// Waits until `/readyz` answers 200; returns how long that took.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        while self.get("/readyz").is_none() {
            if let Some(status) = self.child.try_wait()? {
                bail!("agent exited: {status}");
            }
            if started.elapsed() > limit {
                bail!("agent not ready after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(started.elapsed())
    }

    /// Every sample of /metrics, by series (`name{labels}`).
    pub fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let body = self.get("/metrics").context("GET /metrics")?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect())
    }

    /// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
    pub fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .with_context(|| format!("{field} of the agent"))
    }

    /// User + system CPU seconds so far (its kernel time includes the table walks).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after = stat.rsplit_once(')').context("malformed stat")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / clock_ticks())
    }

    /// On-CPU nanoseconds of each live thread (`/proc/PID/task/*/schedstat`): finer than the
    /// 10 ms ticks of [`BenchAgent::cpu_seconds`], but a thread's time goes with it when it exits.
    pub fn thread_cpu(&self) -> Result<ThreadCpu> {
        let mut out = ThreadCpu::new();
        for task in std::fs::read_dir(format!("/proc/{}/task", self.child.id()))? {
            let task = task?;
            let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // A thread may exit between the listing and the read.
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            if let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse().ok()) {
                out.insert(tid, ns);
            }
        }
        Ok(out)
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// On-CPU nanoseconds by thread id.
pub type ThreadCpu = std::collections::HashMap<u32, u64>;

/// CPU seconds between two [`BenchAgent::thread_cpu`] readings: threads alive at both ends count
/// their difference, threads started since count all of theirs; threads that exited in
/// between are missed (the runtime's idle blocking threads, which exit after idling).
pub fn thread_cpu_between(before: &ThreadCpu, after: &ThreadCpu) -> f64 {
    after
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / 1e9
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// The `p` quantile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
