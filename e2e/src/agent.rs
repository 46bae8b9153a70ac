//! The real `conntrack-reconciler` binary, run inside the node namespace.
//!
//! The "with reconciler" half of every scenario runs when the binary is found and usable (it has
//! a `run` subcommand) and `E2E_WITH_AGENT` is not `0`. `E2E_WITH_AGENT=1` makes a missing
//! binary an error instead of a skip. `CONNTRACK_RECONCILER_BIN` points at a specific binary;
//! otherwise it is looked up in the cargo target directory the tests were built into.

use crate::netns::in_netns;
use crate::process::Process;
use crate::timeline::Timeline;
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The binary's file name.
pub const BINARY: &str = "conntrack-reconciler";
/// Where the agent serves /metrics, /healthz and /readyz inside the node namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9464";

/// Whether the "with reconciler" halves should run: Ok(path) to run, Err(why) to skip.
///
/// Panics with the reason when `E2E_WITH_AGENT=1` demands the agent and it is not usable.
pub fn agent_for_tests() -> std::result::Result<PathBuf, String> {
    let setting = std::env::var("E2E_WITH_AGENT").unwrap_or_default();
    if setting == "0" {
        return Err("E2E_WITH_AGENT=0".into());
    }
    match locate() {
        Ok(path) => Ok(path),
        Err(why) if setting == "1" => panic!("E2E_WITH_AGENT=1 but {why}"),
        Err(why) => Err(why),
    }
}

/// Finds a usable agent binary.
pub fn locate() -> std::result::Result<PathBuf, String> {
    let candidate = if let Some(path) = std::env::var_os("CONNTRACK_RECONCILER_BIN") {
        PathBuf::from(path)
    } else {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let found = exe
            .ancestors()
            .skip(1)
            .map(|dir| dir.join(BINARY))
            .find(|p| p.is_file());
        found.ok_or_else(|| {
            format!(
                "{BINARY} not found in the target directory above {} \
                 (build it: cargo build -p conntrack-reconciler)",
                exe.display()
            )
        })?
    };
    let help = std::process::Command::new(&candidate)
        .args(["run", "--help"])
        .output()
        .map_err(|e| format!("{} cannot run: {e}", candidate.display()))?;
    let text = String::from_utf8_lossy(&help.stdout);
    if !help.status.success() || !text.contains("--node-name") {
        return Err(format!(
            "{} has no usable `run` subcommand yet (`run --help` did not list --node-name)",
            candidate.display()
        ));
    }
    Ok(candidate)
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    process: Process,
    netns_path: PathBuf,
    metrics: SocketAddr,
}

impl Agent {
    /// Starts `conntrack-reconciler run` in the node namespace with `extra` arguments appended.
    /// Log lines mentioning deletions go to the timeline.
    pub fn start(
        binary: &Path,
        netns: &str,
        netns_path: &Path,
        node_name: &str,
        kubeconfig: &Path,
        extra: &[String],
        timeline: &Timeline,
    ) -> Result<Self> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--node-name".into(),
            node_name.into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--metrics-addr".into(),
            METRICS_ADDR.into(),
            "--log-format".into(),
            "json".into(),
        ];
        args.extend_from_slice(extra);
        let timeline = timeline.clone();
        let process = Process::spawn_in("agent", netns, binary, &args, move |(t, line)| {
            if line.to_lowercase().contains("delet") {
                timeline.record_at(*t, "agent", summarize_log(line));
            }
        })?;
        Ok(Self {
            process,
            netns_path: netns_path.to_path_buf(),
            metrics: METRICS_ADDR.parse().context("metrics address")?,
        })
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            if self.process.exited() {
                bail!(
                    "the agent exited; its output:\n{}",
                    self.process.output_text()
                );
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the agent was not ready within {timeout:?}; its output:\n{}",
                    self.process.output_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A plain HTTP GET on the agent's metrics server; returns (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.metrics;
        let stream = in_netns(&self.netns_path, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        })?;
        let mut stream = stream;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status")?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// The agent's log lines so far.
    pub fn log(&self) -> String {
        self.process.output_text()
    }

    /// Stops the agent (SIGTERM, then SIGKILL after 3 s).
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(3));
    }
}

/// A JSON log line's message and fields, flattened for the timeline.
fn summarize_log(line: &str) -> String {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(line)
    else {
        return line.to_string();
    };
    // tracing-subscriber's JSON puts fields at the top level (flattened) or under "fields".
    let mut fields = object.clone();
    if let Some(serde_json::Value::Object(nested)) = fields.remove("fields") {
        fields.extend(nested);
    }
    let message = fields
        .remove("message")
        .and_then(|m| m.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut parts = vec![message];
    for (key, value) in &fields {
        if matches!(
            key.as_str(),
            "timestamp" | "level" | "target" | "span" | "spans"
        ) {
            continue;
        }
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
        parts.push(format!("{key}={text}"));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::summarize_log;

    #[test]
    fn log_lines_are_flattened_for_the_timeline() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"pass","family":"ipv4","deleted":1,"target":"x"}"#;
        assert_eq!(summarize_log(line), "pass deleted=1 family=ipv4");
        let nested = r#"{"fields":{"message":"deleted","flow":"a"},"level":"INFO"}"#;
        assert_eq!(summarize_log(nested), "deleted flow=a");
        assert_eq!(summarize_log("plain text"), "plain text");
    }
}
