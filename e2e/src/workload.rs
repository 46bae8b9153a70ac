//! The UDP workloads: echo backends and steady clients with a fixed source port.

use crate::process::{Line, Process};
use anyhow::Result;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// One answer a client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// When (Unix µs, the client's clock = the lab's clock).
    pub t_us: u64,
    /// The request's sequence number.
    pub seq: u64,
    /// Who answered: `NAME:PORT` of the echo backend.
    pub backend: String,
}

impl Answer {
    /// The backend's pod name (without the port).
    pub fn pod(&self) -> &str {
        self.backend
            .rsplit_once(':')
            .map_or(self.backend.as_str(), |(pod, _)| pod)
    }
}

fn parse_answer((_, line): &Line) -> Option<Answer> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(Answer {
        t_us: value.get("t_us")?.as_u64()?,
        seq: value.get("seq")?.as_u64()?,
        backend: value.get("backend")?.as_str()?.to_string(),
    })
}

/// Starts `udp-echo` answering `NAME:PORT` on each port, inside `netns`; waits until bound.
pub fn start_echo(binary: &Path, netns: &str, name: &str, ports: &[u16]) -> Result<Process> {
    let mut args = vec!["--name".to_string(), name.to_string()];
    for port in ports {
        args.extend(["--port".to_string(), port.to_string()]);
    }
    let mut process = Process::spawn_in(name, netns, binary, &args, |_| {})?;
    process.wait_for_line(Duration::from_secs(5), |l| l == "ready")?;
    Ok(process)
}

/// A running `udp-client`.
#[derive(Debug)]
pub struct Client {
    process: Process,
    /// The client's fixed source port.
    pub source_port: u16,
    /// The target (service frontend).
    pub target: SocketAddr,
}

impl Client {
    /// Starts a client in `netns` sending to `target` from `source_port` every `interval`.
    pub fn start(
        binary: &Path,
        netns: &str,
        name: &str,
        target: SocketAddr,
        source_port: u16,
        interval: Duration,
    ) -> Result<Self> {
        let args = vec![
            "--target".to_string(),
            target.to_string(),
            "--source-port".to_string(),
            source_port.to_string(),
            "--interval-ms".to_string(),
            interval.as_millis().to_string(),
        ];
        let mut process = Process::spawn_in(name, netns, binary, &args, |_| {})?;
        process.wait_for_line(Duration::from_secs(5), |l| l.contains("\"started\""))?;
        Ok(Self {
            process,
            source_port,
            target,
        })
    }

    /// The client's name.
    pub fn name(&self) -> &str {
        self.process.name()
    }

    /// Every answer so far.
    pub fn answers(&self) -> Vec<Answer> {
        self.process
            .lines()
            .iter()
            .filter_map(parse_answer)
            .collect()
    }

    /// The first answer at or after `t_us` satisfying `pred`.
    pub fn first_answer_after(&self, t_us: u64, pred: impl Fn(&Answer) -> bool) -> Option<Answer> {
        self.answers()
            .into_iter()
            .find(|a| a.t_us >= t_us && pred(a))
    }

    /// The latest answer.
    pub fn last_answer(&self) -> Option<Answer> {
        self.answers().pop()
    }

    /// Waits until the client has `count` answers (after `t_us`) in a row from one backend;
    /// returns that backend.
    pub fn wait_steady(&self, count: usize, timeout: Duration) -> Result<Answer> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let answers = self.answers();
            if answers.len() >= count {
                let tail = &answers[answers.len() - count..];
                if tail.iter().all(|a| a.backend == tail[0].backend) {
                    return Ok(tail[count - 1].clone());
                }
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "client {} got no steady answers within {timeout:?} ({} answers: {:?})",
                    self.name(),
                    answers.len(),
                    answers.last()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
