//! What the kind tests do to the cluster and what they expect, with and without the agent.
//!
//! Every scenario reports a desired outcome (`good`: the client is served by a live backend, or
//! a deleted Service stops answering) and whether it happened; [`expectation`] says which
//! outcome each phase must show.

use super::cluster::{CLUSTER_IP, Cluster, NAMESPACE, NODE_PORT, SERVICE_PORT, Sender, now};
use anyhow::{Result, bail};
use std::time::Duration;

/// Whether the agent is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// kube-proxy alone.
    WithoutAgent,
    /// kube-proxy and the agent.
    WithAgent,
}

impl Phase {
    /// How long a scenario waits for the good outcome. With the agent: longer than its
    /// periodic pass (60 s by default), so a recovery by the pass still counts.
    pub fn deadline(self) -> Duration {
        match self {
            Phase::WithoutAgent => Duration::from_secs(60),
            Phase::WithAgent => Duration::from_secs(75),
        }
    }

    /// For the report.
    pub fn label(self) -> &'static str {
        match self {
            Phase::WithoutAgent => "without agent",
            Phase::WithAgent => "with agent",
        }
    }
}

/// What a phase must show for a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The good outcome.
    Good,
    /// The bad outcome: the gap the agent exists for.
    Bad,
    /// Either; reported, not judged (kube-proxy's own cleanup, which is not under test).
    Either,
}

/// The result of one scenario run.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Whether the desired outcome happened.
    pub good: bool,
    /// What was seen, for the report.
    pub detail: String,
}

/// Where the client runs.
pub struct Context<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// The node (and kind container) of `udp-client`: where its flows' conntrack entries are.
    pub client_node: String,
    /// The client pod's IP, the original source of its flows.
    pub client_ip: String,
    /// The phase being run.
    pub phase: Phase,
}

/// A named scenario.
pub struct Scenario {
    /// Short name for the report.
    pub name: &'static str,
    /// Runs it; errors mean the test itself could not proceed.
    pub run: fn(&Context) -> Result<Observation>,
}

/// Every scenario, in order; the Service deletion comes last since it recreates the Service.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "steady-flow",
        run: steady_flow,
    },
    Scenario {
        name: "clusterip-backend-cycle",
        run: |ctx| backend_cycle(ctx, Sender::ClusterIp),
    },
    Scenario {
        name: "nodeport-backend-cycle",
        run: |ctx| backend_cycle(ctx, Sender::NodePort),
    },
    Scenario {
        name: "scale-to-zero-and-back",
        run: scale_to_zero_and_back,
    },
    Scenario {
        name: "lost-cleanup",
        run: lost_cleanup,
    },
    Scenario {
        name: "service-deletion",
        run: service_deletion,
    },
];

/// What each phase must show. `kube_proxy_reconciles`: kube-proxy >= 1.32, which has its own
/// reconciler; the agent must coexist with it (everything good, nothing fought over).
pub fn expectation(scenario: &str, phase: Phase, kube_proxy_reconciles: bool) -> Expect {
    match (scenario, phase) {
        // A healthy flow is never moved, by anyone: the setup works and nothing over-deletes.
        ("steady-flow", _) => Expect::Good,
        (_, Phase::WithAgent) => Expect::Good,
        // kube-proxy <= 1.31 cleans only on the events it sees: an entry its cleanup missed
        // stays, and the client is blackholed. This is the gap the agent closes.
        ("lost-cleanup", Phase::WithoutAgent) if !kube_proxy_reconciles => Expect::Bad,
        (_, Phase::WithoutAgent) => Expect::Either,
    }
}

/// The backend currently answering `sender`.
fn current_backend(ctx: &Context, sender: Sender) -> Result<String> {
    match ctx
        .cluster
        .wait_for_answer(sender, now(), Duration::from_secs(60), |_| true)?
    {
        Some((backend, _)) => Ok(backend),
        None => bail!("the {} sender gets no answer at all", sender.container()),
    }
}

/// A flow to a healthy backend keeps that backend and never goes unanswered.
fn steady_flow(ctx: &Context) -> Result<Observation> {
    const WINDOW: u64 = 30;
    let mut details = Vec::new();
    let mut good = true;
    let pinned: Vec<(Sender, String)> = [Sender::ClusterIp, Sender::NodePort]
        .into_iter()
        .map(|sender| Ok((sender, current_backend(ctx, sender)?)))
        .collect::<Result<_>>()?;
    let start = now();
    std::thread::sleep(Duration::from_secs(WINDOW));
    for (sender, backend) in pinned {
        let attempts = ctx
            .cluster
            .attempts_between(sender, start, start + WINDOW)?;
        let moved = attempts
            .iter()
            .filter(|a| a.backend.as_deref() != Some(backend.as_str()))
            .count();
        good &= moved == 0 && attempts.len() >= 5;
        details.push(format!(
            "{}: {} of {} attempts not answered by {backend}",
            sender.container(),
            moved,
            attempts.len()
        ));
    }
    Ok(Observation {
        good,
        detail: details.join("; "),
    })
}

/// The backend a flow is pinned to is deleted; the flow must reach another one.
fn backend_cycle(ctx: &Context, sender: Sender) -> Result<Observation> {
    let old = current_backend(ctx, sender)?;
    let start = now();
    ctx.cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        &old,
        "--wait=true",
        "--timeout=90s",
    ])?;
    let deadline = ctx.phase.deadline();
    Ok(
        match ctx
            .cluster
            .wait_for_answer(sender, start, deadline, |b| b != old)?
        {
            Some((new, secs)) => Observation {
                good: true,
                detail: format!("{old} deleted; {new} answered {secs}s later"),
            },
            None => Observation {
                good: false,
                detail: format!(
                    "{old} deleted; no other backend answered within {}s",
                    deadline.as_secs()
                ),
            },
        },
    )
}

/// Every backend goes away, then three come back; both flows must reach them.
fn scale_to_zero_and_back(ctx: &Context) -> Result<Observation> {
    let cluster = ctx.cluster;
    cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "scale",
        "deployment/udp-echo",
        "--replicas=0",
    ])?;
    // `wait --for=delete` errors when nothing matches any more; the sleep covers that case.
    let _ = cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "wait",
        "--for=delete",
        "pod",
        "-l",
        "app=udp-echo",
        "--timeout=90s",
    ]);
    // Let the senders hit the Service while it has no endpoints.
    std::thread::sleep(Duration::from_secs(10));
    cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "scale",
        "deployment/udp-echo",
        "--replicas=3",
    ])?;
    let start = now();
    let deadline = ctx.phase.deadline();
    let mut good = true;
    let mut details = Vec::new();
    for sender in [Sender::ClusterIp, Sender::NodePort] {
        match cluster.wait_for_answer(sender, start, deadline, |_| true)? {
            Some((backend, secs)) => details.push(format!(
                "{}: {backend} answered {secs}s after the scale-up",
                sender.container()
            )),
            None => {
                good = false;
                details.push(format!(
                    "{}: no answer within {}s of the scale-up",
                    sender.container(),
                    deadline.as_secs()
                ));
            }
        }
    }
    Ok(Observation {
        good,
        detail: details.join("; "),
    })
}

/// The entry a missed kube-proxy cleanup leaves behind, written into the client's node: the
/// ClusterIP flow replaced by one that was never DNATed (reply source = the ClusterIP itself,
/// as when the first packet raced the rules). No Kubernetes event follows it, so only a
/// reconciler that compares the table with the desired state removes it.
fn lost_cleanup(ctx: &Context) -> Result<Observation> {
    current_backend(ctx, Sender::ClusterIp)?;
    inject_undnated_flow(ctx)?;
    let injected = now();
    eprintln!(
        "  injected on {}:\n{}",
        ctx.client_node,
        ctx.cluster.conntrack_entries(&ctx.client_node)
    );
    let deadline = ctx.phase.deadline();
    // One attempt may have been in flight while the entry was swapped.
    let result = ctx
        .cluster
        .wait_for_answer(Sender::ClusterIp, injected + 2, deadline, |_| true)?;
    // Start the next scenario from a clean flow either way.
    delete_flow(ctx, Sender::ClusterIp);
    Ok(match result {
        Some((backend, secs)) => Observation {
            good: true,
            detail: format!("{backend} answered {secs}s after the stale entry was written"),
        },
        None => Observation {
            good: false,
            detail: format!("blackholed: no answer for {}s", deadline.as_secs()),
        },
    })
}

/// The Service is deleted while its backends live on; its flows must stop being delivered.
fn service_deletion(ctx: &Context) -> Result<Observation> {
    /// Unanswered seconds in a row that count as "stopped".
    const QUIET: u64 = 6;
    current_backend(ctx, Sender::ClusterIp)?;
    let start = now();
    ctx.cluster
        .kubectl(&["-n", NAMESPACE, "delete", "service", "udp-echo"])?;
    let deadline = ctx.phase.deadline();
    let until = start + deadline.as_secs();
    loop {
        let attempts = ctx
            .cluster
            .attempts_between(Sender::ClusterIp, start + 1, now())?;
        let mut quiet_since: Option<(u64, usize)> = None;
        for attempt in &attempts {
            quiet_since = match (attempt.backend.is_some(), quiet_since) {
                (true, _) => None,
                (false, None) => Some((attempt.at, 1)),
                (false, Some((since, count))) => Some((since, count + 1)),
            };
            if let Some((since, count)) = quiet_since
                && attempt.at >= since + QUIET
                && count >= 3
            {
                return Ok(Observation {
                    good: true,
                    detail: format!("unanswered from {}s after the deletion", since - start),
                });
            }
        }
        if now() >= until {
            let last = attempts.iter().rev().find_map(|a| a.backend.clone());
            return Ok(Observation {
                good: false,
                detail: format!(
                    "still delivered ({}) {}s after the Service was deleted",
                    last.as_deref().unwrap_or("intermittently"),
                    deadline.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Replaces the ClusterIP sender's entry with a never-DNATed one, retrying when a datagram
/// re-creates the real entry between the delete and the insert.
fn inject_undnated_flow(ctx: &Context) -> Result<()> {
    let sport = Sender::ClusterIp.source_port().to_string();
    let dport = SERVICE_PORT.to_string();
    let ip = ctx.client_ip.as_str();
    let script = format!(
        "conntrack -D -p udp -s {ip} -d {CLUSTER_IP} --sport {sport} --dport {dport} \
         >/dev/null 2>&1; \
         conntrack -I -p udp -s {ip} -d {CLUSTER_IP} --sport {sport} --dport {dport} \
         -r {CLUSTER_IP} -q {ip} --reply-port-src {dport} --reply-port-dst {sport} -t 120"
    );
    let mut last_error = None;
    for _ in 0..10 {
        match ctx
            .cluster
            .node_exec(&ctx.client_node, &["sh", "-c", &script])
        {
            Ok(_) => return Ok(()),
            Err(err) => last_error = Some(err),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    match last_error {
        Some(err) => Err(err.context("could not write the stale entry")),
        None => bail!("could not write the stale entry"),
    }
}

/// Deletes a sender's flow on the client's node (its next datagram creates a fresh one).
pub fn delete_flow(ctx: &Context, sender: Sender) {
    let sport = sender.source_port().to_string();
    let dport = match sender {
        Sender::ClusterIp => SERVICE_PORT,
        Sender::NodePort => NODE_PORT,
    }
    .to_string();
    // Exit status 1 just means there was no such entry.
    let _ = ctx.cluster.node_exec(
        &ctx.client_node,
        &[
            "conntrack",
            "-D",
            "-p",
            "udp",
            "-s",
            &ctx.client_ip,
            "--sport",
            &sport,
            "--dport",
            &dport,
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blackhole_is_required_only_where_kube_proxy_cannot_reconcile() {
        assert_eq!(
            expectation("lost-cleanup", Phase::WithoutAgent, false),
            Expect::Bad
        );
        assert_eq!(
            expectation("lost-cleanup", Phase::WithoutAgent, true),
            Expect::Either
        );
        for scenario in SCENARIOS {
            for reconciles in [false, true] {
                assert_eq!(
                    expectation(scenario.name, Phase::WithAgent, reconciles),
                    Expect::Good,
                    "{}",
                    scenario.name
                );
            }
        }
        assert_eq!(
            expectation("steady-flow", Phase::WithoutAgent, true),
            Expect::Good
        );
    }
}
