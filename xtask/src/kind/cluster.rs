//! A kind cluster driven through the `kind`, `kubectl` and `docker` CLIs, and the UDP client's
//! log read back as "which backend answered when".

use crate::util;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The namespace of the test workloads (`e2e/kind/workloads/namespace.yaml`).
pub const NAMESPACE: &str = "ctr-e2e";
/// The pinned ClusterIP and ports of `udp-echo` (`e2e/kind/workloads/udp-echo-service.yaml`).
pub const CLUSTER_IP: &str = "10.96.100.53";
/// The Service's port.
pub const SERVICE_PORT: u16 = 5005;
/// The Service's NodePort.
pub const NODE_PORT: u16 = 31005;

/// One of the two senders of the `udp-client` pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// Sends to the ClusterIP from source port 12345.
    ClusterIp,
    /// Sends to its node's address and the NodePort from source port 12346.
    NodePort,
}

impl Sender {
    /// The container of `udp-client` that runs this sender.
    pub fn container(self) -> &'static str {
        match self {
            Sender::ClusterIp => "clusterip",
            Sender::NodePort => "nodeport",
        }
    }

    /// The fixed source port of this sender.
    pub fn source_port(self) -> u16 {
        match self {
            Sender::ClusterIp => 12345,
            Sender::NodePort => 12346,
        }
    }
}

/// One attempt of a sender: when, and which backend answered (None: nothing did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Unix seconds (kind nodes share the host's clock).
    pub at: u64,
    /// The answering pod's name.
    pub backend: Option<String>,
}

/// Parses the client's log lines, `"<unix seconds> <pod name>"` or `"<unix seconds> -"`;
/// anything else (a shell error, a truncated line) is skipped.
pub fn parse_attempts(log: &str) -> Vec<Attempt> {
    log.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let at = words.next()?.parse().ok()?;
            let backend = match words.next()? {
                "-" => None,
                name => Some(name.to_string()),
            };
            Some(Attempt { at, backend })
        })
        .collect()
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A kind cluster with its own kubeconfig file (the user's `~/.kube/config` is left alone).
pub struct Cluster {
    /// The kind cluster name.
    pub name: String,
    kubeconfig: PathBuf,
}

impl Cluster {
    /// Creates the cluster from `e2e/kind/cluster.yaml` with `node_image`, replacing any
    /// leftover cluster of the same name.
    pub fn create(name: &str, node_image: &str, scratch: &Path) -> Result<Self> {
        std::fs::create_dir_all(scratch)?;
        let cluster = Cluster {
            name: name.to_string(),
            kubeconfig: scratch.join(format!("{name}.kubeconfig")),
        };
        let existing = capture(Command::new("kind").args(["get", "clusters"]))?;
        if existing.lines().any(|line| line.trim() == name) {
            eprintln!("deleting the leftover kind cluster {name}");
            cluster.delete()?;
        }
        let config = util::workspace_root().join("e2e/kind/cluster.yaml");
        util::run(
            Command::new("kind")
                .args(["create", "cluster", "--name", name, "--image", node_image])
                .arg("--config")
                .arg(&config)
                .arg("--kubeconfig")
                .arg(&cluster.kubeconfig)
                .args(["--wait", "180s"]),
        )?;
        Ok(cluster)
    }

    /// Deletes the cluster.
    pub fn delete(&self) -> Result<()> {
        util::run(Command::new("kind").args(["delete", "cluster", "--name", &self.name]))
    }

    /// Copies every node's logs (kubelet, containerd, pods) into `dir`.
    pub fn export_logs(&self, dir: &Path) -> Result<()> {
        util::run(
            Command::new("kind")
                .args(["export", "logs", "--name", &self.name])
                .arg(dir),
        )
    }

    /// Puts a local docker image on every node.
    pub fn load_image(&self, image: &str) -> Result<()> {
        util::run(Command::new("kind").args(["load", "docker-image", image, "--name", &self.name]))
    }

    /// `kubectl` against this cluster; returns stdout, fails with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        capture(self.kubectl_command().args(args))
    }

    /// `kubectl apply -f <file>` for a file of `e2e/kind/workloads`.
    pub fn apply_workload(&self, file: &str) -> Result<()> {
        let path = util::workspace_root().join("e2e/kind/workloads").join(file);
        let path = path
            .to_str()
            .context("non-UTF-8 workspace path")?
            .to_string();
        self.kubectl(&["apply", "-f", &path]).map(drop)
    }

    /// `kubectl apply -f -` with `yaml` on stdin.
    pub fn apply_yaml(&self, yaml: &str) -> Result<()> {
        let mut child = self
            .kubectl_command()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("starting kubectl apply")?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(yaml.as_bytes())
            .context("writing to kubectl apply")?;
        let status = child.wait()?;
        if !status.success() {
            bail!("kubectl apply -f - failed: {status}");
        }
        Ok(())
    }

    /// Runs a command inside a node's container (kind nodes ship `conntrack`).
    pub fn node_exec(&self, node: &str, args: &[&str]) -> Result<String> {
        capture(Command::new("docker").args(["exec", node]).args(args))
    }

    /// The UDP conntrack entries of the test Service on `node`, for the log.
    pub fn conntrack_entries(&self, node: &str) -> String {
        let mut out = String::new();
        for port in [SERVICE_PORT, NODE_PORT] {
            let port = port.to_string();
            match self.node_exec(
                node,
                &["conntrack", "-L", "-p", "udp", "--orig-port-dst", &port],
            ) {
                Ok(list) => out.push_str(&list),
                Err(err) => out.push_str(&format!("(conntrack -L failed: {err:#})\n")),
            }
        }
        out
    }

    /// Every attempt a sender logged (its last 600, several minutes).
    pub fn attempts(&self, sender: Sender) -> Result<Vec<Attempt>> {
        let log = self.kubectl(&[
            "-n",
            NAMESPACE,
            "logs",
            "udp-client",
            "-c",
            sender.container(),
            "--tail=600",
        ])?;
        Ok(parse_attempts(&log))
    }

    /// Waits until `sender` gets an answer at or after `since` from a backend `accept`s;
    /// returns the backend and the seconds it took, or None at `timeout`.
    pub fn wait_for_answer(
        &self,
        sender: Sender,
        since: u64,
        timeout: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> Result<Option<(String, u64)>> {
        let start = Instant::now();
        loop {
            let found = self.attempts(sender)?.into_iter().find(|attempt| {
                attempt.at >= since && attempt.backend.as_deref().is_some_and(&accept)
            });
            if let Some(Attempt { at, backend }) = found {
                return Ok(backend.map(|b| (b, at.saturating_sub(since))));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Waits until `sender` has logged attempts up to `until`, then returns those in
    /// `[from, until]`.
    pub fn attempts_between(&self, sender: Sender, from: u64, until: u64) -> Result<Vec<Attempt>> {
        let deadline = Instant::now() + Duration::from_secs(until.saturating_sub(now()) + 30);
        loop {
            let attempts = self.attempts(sender)?;
            if attempts.iter().any(|a| a.at >= until) || Instant::now() >= deadline {
                return Ok(attempts
                    .into_iter()
                    .filter(|a| (from..=until).contains(&a.at))
                    .collect());
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// A pod field through jsonpath, e.g. `{.spec.nodeName}`.
    pub fn pod_field(&self, namespace: &str, pod: &str, jsonpath: &str) -> Result<String> {
        let out = self.kubectl(&[
            "-n",
            namespace,
            "get",
            "pod",
            pod,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ])?;
        Ok(out.trim().to_string())
    }

    fn kubectl_command(&self) -> Command {
        let mut command = Command::new("kubectl");
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }
}

/// Runs a command and returns its stdout; fails with its stderr.
fn capture(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("could not start {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("{command:?} printed non-UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_log_lines_become_attempts() {
        let log = "1700000000 udp-echo-5d9c-abcde\n1700000001 -\nsh: nc: error\n\n1700000002\n";
        assert_eq!(
            parse_attempts(log),
            [
                Attempt {
                    at: 1_700_000_000,
                    backend: Some("udp-echo-5d9c-abcde".into())
                },
                Attempt {
                    at: 1_700_000_001,
                    backend: None
                },
            ]
        );
    }
}
