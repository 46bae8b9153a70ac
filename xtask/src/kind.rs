//! `cargo xtask e2e-kind [--node-image v1.31|v1.32] [--keep]`: the agent on real kind clusters.
//!
//! Per node image: create a two-node cluster (kube-proxy in iptables mode), load a uniquely
//! tagged local build of the image, start a UDP echo Deployment behind a ClusterIP + NodePort
//! Service and a client that keeps its source ports, then run every scenario twice: with
//! kube-proxy alone, then with the agent (the `e2e` overlay). On v1.31 kube-proxy has no
//! reconciler, so an entry its cleanup missed must blackhole the client without the agent and
//! recover with it; on v1.32 kube-proxy reconciles too, and the agent must do no harm.
//!
//! Needs docker, kind (v0.27.0, whose node images are pinned below) and kubectl.

mod cluster;
mod scenarios;

use crate::{image, manifests, util};
use anyhow::{Context as _, Result, bail};
use cluster::{Cluster, NAMESPACE, Sender, now};
use scenarios::{Context, Expect, Observation, Phase, SCENARIOS};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The kind release the node images belong to.
const KIND_VERSION: &str = "v0.27.0";

/// A kind node image and what its kube-proxy does about conntrack.
struct NodeImage {
    key: &'static str,
    image: &'static str,
    /// kube-proxy >= 1.32 reconciles the conntrack table itself.
    kube_proxy_reconciles: bool,
}

const NODE_IMAGES: &[NodeImage] = &[
    NodeImage {
        key: "v1.31",
        image: "kindest/node:v1.31.6@sha256:28b7cbb993dfe093c76641a0c95807637213c9109b761f1d422c2400e22b8e87",
        kube_proxy_reconciles: false,
    },
    NodeImage {
        key: "v1.32",
        image: "kindest/node:v1.32.2@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f",
        kube_proxy_reconciles: true,
    },
];

const USAGE: &str = "usage: cargo xtask e2e-kind [--node-image v1.31|v1.32] [--keep]";

/// Entry point of `cargo xtask e2e-kind`.
pub fn run(args: &[String]) -> Result<()> {
    let mut selected: Vec<&NodeImage> = Vec::new();
    let mut keep = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let key = match arg.as_str() {
            "--keep" => {
                keep = true;
                continue;
            }
            "--node-image" => args.next().context("--node-image needs a value")?.as_str(),
            other => match other.strip_prefix("--node-image=") {
                Some(value) => value,
                None => bail!("unknown argument {other:?}\n{USAGE}"),
            },
        };
        let node = NODE_IMAGES
            .iter()
            .find(|n| n.key == key || n.key.trim_start_matches('v') == key)
            .with_context(|| format!("unknown node image {key:?}\n{USAGE}"))?;
        selected.push(node);
    }
    if selected.is_empty() {
        selected = NODE_IMAGES.iter().collect();
    }

    preflight()?;
    let tag = format!("conntrack-reconciler:e2e-{}-{}", now(), std::process::id());
    image::build(&tag)?;
    let agent_manifests = manifests::render_overlay_with_image("e2e", &tag)?;

    let mut failed = Vec::new();
    for node in selected {
        match run_on(node, &tag, &agent_manifests, keep) {
            Ok(failures) if failures.is_empty() => eprintln!("{}: all expectations met", node.key),
            Ok(failures) => {
                for failure in &failures {
                    eprintln!("{}: FAILED {failure}", node.key);
                }
                failed.push(node.key);
            }
            Err(err) => {
                eprintln!("{}: ERROR {err:#}", node.key);
                failed.push(node.key);
            }
        }
    }
    if !failed.is_empty() {
        bail!("e2e-kind failed on {failed:?} (node logs under target/e2e-kind/)");
    }
    Ok(())
}

/// Fails fast, saying what to install, unless docker (with an engine), kind and kubectl exist.
fn preflight() -> Result<()> {
    image::require_docker()?;
    if !util::have("kind") {
        bail!(
            "kind is not installed (not on PATH): `go install sigs.k8s.io/kind@{KIND_VERSION}` or \
             download it from https://github.com/kubernetes-sigs/kind/releases/tag/{KIND_VERSION}"
        );
    }
    if !util::have("kubectl") {
        bail!("kubectl is not installed (not on PATH): https://kubernetes.io/docs/tasks/tools/");
    }
    let version = Command::new("kind").arg("version").output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    if !version.contains(KIND_VERSION) {
        eprintln!(
            "warning: the node images are pinned for kind {KIND_VERSION}, found: {}",
            version.trim()
        );
    }
    Ok(())
}

/// Runs both phases on one node image; returns the expectations that were not met.
fn run_on(node: &NodeImage, tag: &str, agent_manifests: &str, keep: bool) -> Result<Vec<String>> {
    let name = format!(
        "ctr-e2e-{}",
        node.key.trim_start_matches('v').replace('.', "")
    );
    let scratch = util::workspace_root().join("target/e2e-kind");
    eprintln!("== {}: kind cluster {name} ({})", node.key, node.image);
    let cluster = Cluster::create(&name, node.image, &scratch)?;
    let outcome = exercise(&cluster, node, tag, agent_manifests);
    let failed = !matches!(&outcome, Ok(failures) if failures.is_empty());
    if failed {
        let logs: PathBuf = scratch.join(format!("{name}-logs"));
        if let Err(err) = cluster.export_logs(&logs) {
            eprintln!("could not export the node logs: {err:#}");
        }
    }
    if keep {
        eprintln!(
            "keeping {name}: kubectl --kubeconfig {} …; kind delete cluster --name {name}",
            scratch.join(format!("{name}.kubeconfig")).display()
        );
    } else if let Err(err) = cluster.delete() {
        eprintln!("could not delete {name}: {err:#}");
    }
    outcome
}

/// Deploys the workloads, runs the scenarios without then with the agent, prints the report.
fn exercise(
    cluster: &Cluster,
    node: &NodeImage,
    tag: &str,
    agent_manifests: &str,
) -> Result<Vec<String>> {
    cluster.load_image(tag)?;
    for file in ["namespace.yaml", "udp-echo.yaml", "udp-echo-service.yaml"] {
        cluster.apply_workload(file)?;
    }
    cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "deployment/udp-echo",
        "--timeout=300s",
    ])?;
    cluster.apply_workload("udp-client.yaml")?;
    cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "wait",
        "--for=condition=Ready",
        "pod/udp-client",
        "--timeout=300s",
    ])?;
    let client_node = cluster.pod_field(NAMESPACE, "udp-client", "{.spec.nodeName}")?;
    let client_ip = cluster.pod_field(NAMESPACE, "udp-client", "{.status.podIP}")?;
    eprintln!("client udp-client ({client_ip}) on {client_node}");

    let mut report: Vec<(&str, Phase, Observation)> = Vec::new();
    for phase in [Phase::WithoutAgent, Phase::WithAgent] {
        if phase == Phase::WithAgent {
            deploy_agent(cluster, agent_manifests)?;
        }
        let ctx = Context {
            cluster,
            client_node: client_node.clone(),
            client_ip: client_ip.clone(),
            phase,
        };
        restore(&ctx)?;
        for scenario in SCENARIOS {
            eprintln!("-- {} {}: {}", node.key, phase.label(), scenario.name);
            let observation = (scenario.run)(&ctx)
                .with_context(|| format!("scenario {} {}", scenario.name, phase.label()))?;
            eprintln!(
                "   {} {}\n   conntrack on {client_node}:\n{}",
                if observation.good { "good:" } else { "bad: " },
                observation.detail,
                cluster.conntrack_entries(&client_node)
            );
            report.push((scenario.name, phase, observation));
            restore(&ctx)?;
        }
    }
    print_agent_state(cluster, &client_node);

    let mut failures = Vec::new();
    println!("\n{} (kube-proxy {}):", node.key, node.image);
    println!(
        "  {:<24} {:<14} {:<10} detail",
        "scenario", "phase", "verdict"
    );
    for (scenario, phase, observation) in &report {
        let expect = scenarios::expectation(scenario, *phase, node.kube_proxy_reconciles);
        let verdict = match (expect, observation.good) {
            (Expect::Either, _) => "observed",
            (Expect::Good, true) | (Expect::Bad, false) => "expected",
            (Expect::Good, false) | (Expect::Bad, true) => {
                failures.push(format!(
                    "{scenario} {}: expected {expect:?}, saw: {}",
                    phase.label(),
                    observation.detail
                ));
                "UNEXPECTED"
            }
        };
        let outcome = if observation.good { "good" } else { "bad" };
        println!(
            "  {scenario:<24} {:<14} {verdict:<10} {outcome}: {}",
            phase.label(),
            observation.detail
        );
    }
    Ok(failures)
}

/// Applies the e2e overlay (with the unique image tag) and waits for every agent to be ready.
fn deploy_agent(cluster: &Cluster, agent_manifests: &str) -> Result<()> {
    eprintln!("deploying the agent");
    cluster.apply_yaml(agent_manifests)?;
    cluster
        .kubectl(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "daemonset/conntrack-reconciler",
            "--timeout=300s",
        ])
        .map(drop)
}

/// Back to the starting point: Service present, three ready backends, both senders answered.
/// A sender still unanswered after a minute gets its flow deleted once (kube-proxy alone may
/// have left it stale); if that does not help either, the cluster is broken and the run stops.
fn restore(ctx: &Context) -> Result<()> {
    let cluster = ctx.cluster;
    let mut applied = false;
    for _ in 0..10 {
        // Right after a deletion the pinned ClusterIP may not be free yet.
        if cluster.apply_workload("udp-echo-service.yaml").is_ok() {
            applied = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    if !applied {
        cluster.apply_workload("udp-echo-service.yaml")?;
    }
    cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "scale",
        "deployment/udp-echo",
        "--replicas=3",
    ])?;
    cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "deployment/udp-echo",
        "--timeout=180s",
    ])?;
    for sender in [Sender::ClusterIp, Sender::NodePort] {
        let minute = Duration::from_secs(60);
        if cluster
            .wait_for_answer(sender, now(), minute, |_| true)?
            .is_some()
        {
            continue;
        }
        eprintln!("   {} unanswered: deleting its flow", sender.container());
        scenarios::delete_flow(ctx, sender);
        if cluster
            .wait_for_answer(sender, now(), minute, |_| true)?
            .is_none()
        {
            bail!(
                "the {} sender gets no answer even with a fresh flow",
                sender.container()
            );
        }
    }
    Ok(())
}

/// The agent's recent logs and its metrics on the client's node, for the CI log.
fn print_agent_state(cluster: &Cluster, node: &str) {
    let selector = "app.kubernetes.io/name=conntrack-reconciler";
    match cluster.kubectl(&[
        "-n",
        "kube-system",
        "logs",
        "-l",
        selector,
        "--tail=40",
        "--prefix",
    ]) {
        Ok(logs) => eprintln!("agent logs:\n{logs}"),
        Err(err) => eprintln!("no agent logs: {err:#}"),
    }
    let field = format!("spec.nodeName={node}");
    let pod = cluster.kubectl(&[
        "-n",
        "kube-system",
        "get",
        "pod",
        "-l",
        selector,
        "--field-selector",
        &field,
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let metrics = pod.and_then(|pod| {
        let path = format!(
            "/api/v1/namespaces/kube-system/pods/{}:9795/proxy/metrics",
            pod.trim()
        );
        cluster.kubectl(&["get", "--raw", &path])
    });
    match metrics {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            eprintln!("agent metrics on {node}:\n{}", lines.join("\n"));
        }
        Err(err) => eprintln!("no agent metrics: {err:#}"),
    }
}

/// The workloads cannot be exercised without docker; at least hold them to what the scenarios
/// assume (typed, pinned addresses and ports).
#[cfg(test)]
mod workload_checks {
    use super::cluster::{CLUSTER_IP, NAMESPACE, NODE_PORT, SERVICE_PORT, Sender};
    use crate::util;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Pod, Service};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn load<T: serde::de::DeserializeOwned>(file: &str) -> T {
        let path = util::workspace_root().join("e2e/kind/workloads").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn service_pins_the_addresses_the_scenarios_use() {
        let service: Service = load("udp-echo-service.yaml");
        assert_eq!(service.metadata.namespace.as_deref(), Some(NAMESPACE));
        let spec = service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.cluster_ip.as_deref(), Some(CLUSTER_IP));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("UDP"));
        assert_eq!(port.port, i32::from(SERVICE_PORT));
        assert_eq!(port.node_port, Some(i32::from(NODE_PORT)));
        assert_eq!(port.target_port, Some(IntOrString::String("udp".into())));
    }

    #[test]
    fn echo_servers_answer_on_the_target_port() {
        let deployment: Deployment = load("udp-echo.yaml");
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let container = &spec.template.spec.unwrap().containers[0];
        let args = container.args.clone().unwrap();
        assert!(
            args.contains(&format!("--udp-port={SERVICE_PORT}")),
            "{args:?}"
        );
        let udp = container
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("udp"));
        assert_eq!(udp.map(|p| p.container_port), Some(i32::from(SERVICE_PORT)));
    }

    #[test]
    fn client_senders_use_the_scenarios_ports() {
        let pod: Pod = load("udp-client.yaml");
        let containers = pod.spec.unwrap().containers;
        for sender in [Sender::ClusterIp, Sender::NodePort] {
            let container = containers
                .iter()
                .find(|c| c.name == sender.container())
                .unwrap_or_else(|| panic!("container {}", sender.container()));
            let script = container.args.clone().unwrap().join(" ");
            assert!(
                script.contains(&format!("-p {}", sender.source_port())),
                "{script}"
            );
            let target = match sender {
                Sender::ClusterIp => format!("{CLUSTER_IP} {SERVICE_PORT}"),
                Sender::NodePort => format!("\"$HOST_IP\" {NODE_PORT}"),
            };
            assert!(script.contains(&target), "{script}");
        }
    }
}
