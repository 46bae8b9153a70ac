//! The CNI `portmap` plugin, emulated: a pod's UDP `hostPort` becomes a DNAT of
//! `nodeIP:hostPort` to `podIP:containerPort` in the node, rewritten a lag after the pod changes.
//!
//! The rules live in their own nftables table (`inet cni_portmap`), as the plugin's nftables
//! backend keeps them, so kube-proxy's `iptables-restore` never touches them and vice versa.
//! Each rewrite replaces the whole table in one transaction. Like the real plugin, it performs no
//! conntrack cleanup that would help a client whose flow still points at a replaced pod.

use crate::timeline::Timeline;
use crate::topology::pipe_into;
use anyhow::{Result, bail};
use std::fmt::Write;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// One mapping: `node:host_port` → `pod_ip:container_port` (UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPortMapping {
    /// The port on every node address.
    pub host_port: u16,
    /// The pod's address.
    pub pod_ip: IpAddr,
    /// The port the pod listens on.
    pub container_port: u16,
}

const TABLE: &str = "inet cni_portmap";

/// The `nft -f` input that replaces the table with `mappings`.
pub fn render(mappings: &[HostPortMapping]) -> String {
    let mut rules = String::new();
    for m in mappings {
        let (nfproto, family, to) = match m.pod_ip {
            IpAddr::V4(ip) => ("ipv4", "ip", format!("{ip}:{}", m.container_port)),
            IpAddr::V6(ip) => ("ipv6", "ip6", format!("[{ip}]:{}", m.container_port)),
        };
        let _ = writeln!(
            rules,
            "    fib daddr type local meta nfproto {nfproto} udp dport {} dnat {family} to {to}",
            m.host_port
        );
    }
    // Declaring the table first makes the delete valid on the first run; both chains see the
    // same rules: PREROUTING for traffic from outside, OUTPUT for hostNetwork clients.
    format!(
        "table {TABLE} {{}}\ndelete table {TABLE}\ntable {TABLE} {{\n  \
         chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n  \
         chain output {{\n    type nat hook output priority -100; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// The running rewrite loop of one node; stops when dropped.
#[derive(Debug)]
pub struct PortMap {
    queue: mpsc::UnboundedSender<(tokio::time::Instant, u64, Vec<HostPortMapping>)>,
    /// The generation of the last mappings handed to [`PortMap::update`].
    wanted: std::sync::atomic::AtomicU64,
    applied: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl PortMap {
    /// Programs no mappings now; each later [`PortMap::update`] is applied after its lag.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        netns: &str,
        timeline: Timeline,
    ) -> Result<Self> {
        pipe_into(netns, &["nft", "-f", "-"], &render(&[]))?;
        let (queue, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, u64, Vec<_>)>();
        let (applied_tx, applied) = watch::channel(0);
        let netns = netns.to_string();
        let task = runtime.spawn(async move {
            while let Some((deadline, generation, mappings)) = rx.recv().await {
                tokio::time::sleep_until(deadline).await;
                let netns = netns.clone();
                let text = render(&mappings);
                let result = tokio::task::spawn_blocking(move || {
                    pipe_into(&netns, &["nft", "-f", "-"], &text)
                })
                .await;
                match result {
                    Ok(Ok(())) => {
                        let shown: Vec<String> = mappings
                            .iter()
                            .map(|m| {
                                format!(":{} -> {}:{}", m.host_port, m.pod_ip, m.container_port)
                            })
                            .collect();
                        timeline.record(
                            "portmap",
                            format!("hostPort rules rewritten [{}]", shown.join(", ")),
                        );
                        applied_tx.send_replace(generation);
                    }
                    Ok(Err(err)) => timeline.record("portmap", format!("rewrite FAILED: {err:#}")),
                    Err(err) => timeline.record("portmap", format!("rewrite panicked: {err}")),
                }
            }
        });
        Ok(Self {
            queue,
            wanted: std::sync::atomic::AtomicU64::new(0),
            applied,
            task,
        })
    }

    /// Schedules the node's mappings to become `mappings` after `lag`.
    pub fn update(&self, lag: Duration, mut mappings: Vec<HostPortMapping>) -> Result<()> {
        mappings.sort();
        let generation = self
            .wanted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let deadline = tokio::time::Instant::now() + lag;
        if self.queue.send((deadline, generation, mappings)).is_err() {
            bail!("the portmap rewrite loop has stopped");
        }
        Ok(())
    }

    /// Waits (blocking) until every update so far is in the node's rules.
    pub fn wait_applied(&self, timeout: Duration) -> Result<()> {
        let wanted = self.wanted.load(std::sync::atomic::Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while *self.applied.borrow() < wanted {
            if std::time::Instant::now() > deadline {
                bail!("hostPort rules not rewritten after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for PortMap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_dnat_per_family_in_both_chains() {
        let text = render(&[
            HostPortMapping {
                host_port: 8053,
                pod_ip: "10.244.0.12".parse().unwrap(),
                container_port: 5353,
            },
            HostPortMapping {
                host_port: 8053,
                pod_ip: "fd00:10:244::c".parse().unwrap(),
                container_port: 5353,
            },
        ]);
        assert_eq!(
            text.matches("udp dport 8053 dnat ip to 10.244.0.12:5353")
                .count(),
            2
        );
        assert_eq!(text.matches("dnat ip6 to [fd00:10:244::c]:5353").count(), 2);
        assert!(text.starts_with("table inet cni_portmap {}\ndelete table inet cni_portmap\n"));
    }
}
