//! The node's conntrack table as the `conntrack` tool shows it: snapshots and destroy events.

use crate::process::Process;
use anyhow::{Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One UDP conntrack entry (or destroy event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEntry {
    /// Original source.
    pub orig_src: SocketAddr,
    /// Original destination (the service frontend, for service traffic).
    pub orig_dst: SocketAddr,
    /// Reply source (the backend chosen by DNAT, or the original destination if none).
    pub reply_src: SocketAddr,
    /// Conntrack id, when shown.
    pub id: Option<u32>,
    /// Whether the event says a userspace program deleted it (`[USERSPACE]`).
    pub by_userspace: bool,
}

impl FlowEntry {
    /// Parses one `conntrack -L -o id` / `conntrack -E -o id` line; None for other lines.
    pub fn parse(line: &str) -> Option<Self> {
        let mut addrs: Vec<(String, String)> = Vec::new(); // (src, dst) per direction
        let mut ports: Vec<(u16, u16)> = Vec::new();
        let mut id = None;
        let mut pending_src = None;
        let mut pending_sport = None;
        for word in line.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "src" => pending_src = Some(value.to_string()),
                "dst" => addrs.push((pending_src.take()?, value.to_string())),
                "sport" => pending_sport = Some(value.parse().ok()?),
                "dport" => ports.push((pending_sport.take()?, value.parse().ok()?)),
                "id" => id = value.parse().ok(),
                _ => {}
            }
        }
        if addrs.len() < 2 || ports.len() < 2 {
            return None;
        }
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        Some(Self {
            orig_src: SocketAddr::new(ip(&addrs[0].0)?, ports[0].0),
            orig_dst: SocketAddr::new(ip(&addrs[0].1)?, ports[0].1),
            reply_src: SocketAddr::new(ip(&addrs[1].0)?, ports[1].0),
            id,
            by_userspace: line.contains("[USERSPACE]"),
        })
    }
}

/// Every UDP entry of both families in the namespace `netns` (only those from source port
/// `sport`, when given).
pub fn list_udp(netns: &str, sport: Option<u16>) -> Result<Vec<FlowEntry>> {
    let mut entries = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "conntrack",
                "-L",
                "-p",
                "udp",
                "-f",
                family,
            ])
            .args(["-o", "id"])
            .args(
                sport
                    .map(|p| ["--sport".to_string(), p.to_string()])
                    .iter()
                    .flatten(),
            )
            .output()
            .context("running conntrack -L")?;
        if !out.status.success() {
            anyhow::bail!(
                "conntrack -L failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        entries.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(FlowEntry::parse),
        );
    }
    Ok(entries)
}

/// A destroyed flow and when the event was read (Unix µs).
pub type Destroyed = (u64, FlowEntry);

/// `conntrack -E -e DESTROY` for UDP in both families, collected while it lives.
#[derive(Debug)]
pub struct DestroyMonitor {
    events: Arc<Mutex<Vec<Destroyed>>>,
    _processes: Vec<Process>,
}

impl DestroyMonitor {
    /// Starts watching the namespace `netns`.
    pub fn start(netns: &str) -> Result<Self> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut processes = Vec::new();
        for family in ["ipv4", "ipv6"] {
            let sink = events.clone();
            let args: Vec<String> = ["-E", "-e", "DESTROY", "-p", "udp", "-f", family, "-o", "id"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            processes.push(Process::spawn_in(
                &format!("conntrack-events-{family}"),
                netns,
                Path::new("conntrack"),
                &args,
                move |(t, line)| {
                    if let Some(entry) = FlowEntry::parse(line) {
                        sink.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((*t, entry));
                    }
                },
            )?);
        }
        // The event socket must be subscribed before the scenario acts.
        std::thread::sleep(std::time::Duration::from_millis(100));
        Ok(Self {
            events,
            _processes: processes,
        })
    }

    /// Every destroy event so far.
    pub fn events(&self) -> Vec<Destroyed> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dnat_entries_and_destroy_events() {
        let line = "[DESTROY] udp      17 29 src=10.244.0.20 dst=10.96.0.10 sport=40000 dport=53 \
                    src=10.244.0.11 dst=10.244.0.20 sport=5353 dport=40000 [ASSURED] id=1366316840 \
                    [USERSPACE] portid=2986687411";
        let e = FlowEntry::parse(line).unwrap();
        assert_eq!(e.orig_src, "10.244.0.20:40000".parse().unwrap());
        assert_eq!(e.orig_dst, "10.96.0.10:53".parse().unwrap());
        assert_eq!(e.reply_src, "10.244.0.11:5353".parse().unwrap());
        assert_eq!(e.id, Some(1366316840));
        assert!(e.by_userspace);
        let v6 = "udp 17 29 src=fd00:10:244::14 dst=fd00:10:96::a sport=1 dport=53 [UNREPLIED] \
                  src=fd00:10:96::a dst=fd00:10:244::14 sport=53 dport=1 mark=0 use=1";
        let e = FlowEntry::parse(v6).unwrap();
        assert_eq!(e.reply_src, "[fd00:10:96::a]:53".parse().unwrap());
        assert!(e.id.is_none() && !e.by_userspace);
        assert!(FlowEntry::parse("conntrack v1.4.7 (conntrack-tools): 2 flow events").is_none());
    }
}
