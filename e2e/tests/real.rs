//! The real tier: etcd, kube-apiserver, kube-controller-manager and kube-proxy built from source
//! (`cargo xtask k8s`), run as plain processes in network namespaces, and the real agent run as
//! its rendered DaemonSet says, with its own least-privilege ServiceAccount token.
//!
//! Needs root and the built components: outside CI each test skips with one line when either is
//! missing; in CI (`CI`, `CONNTRACK_RECONCILER_REQUIRE_ROOT_TESTS`) it fails instead. Logs of
//! every component are kept under `target/real-logs/<test>/`.

mod common;

use common::{agent_binary, lab};
use e2e::real::cluster::{NODE_NAME, PodDeletion};
use e2e::real::{
    AgentOptions, ClusterConfig, K8sBinaries, ProxyFlavour, ProxyMode, RealCluster, ShippedAgent,
    UdpService,
};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Control plane up → Node, UDP Service, two backends → EndpointSlice → kube-proxy's rules →
/// a fixed-port client answered through the ClusterIP → the agent ready with its own token →
/// the client's backend deleted → the client's flow recovers; the recovery time is printed.
fn smoke(test: &str, flavour: ProxyFlavour) {
    let Some(bins) = K8sBinaries::for_test(test) else {
        return;
    };
    let Some(agent_bin) = agent_binary(test) else {
        return;
    };
    for (path, version) in bins.versions() {
        eprintln!("{test}: {} = {version}", path.display());
    }
    let mut cluster = RealCluster::start(
        test,
        &bins,
        lab(),
        ClusterConfig {
            proxy: Some(flavour),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{test}: starting the cluster: {e:#}"));
    for (component, took) in cluster.startup_times() {
        eprintln!("{test}: startup {component}: {took:?}");
    }

    // A UDP Service with two backends.
    let service = cluster
        .create_service(&UdpService::new("echo", "echo", 53, 5353))
        .unwrap();
    let cluster_ip: IpAddr = service.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
    let a = cluster
        .add_backend("echo-a", "echo", &[5353], true)
        .unwrap()
        .ipv4;
    let b = cluster
        .add_backend("echo-b", "echo", &[5353], true)
        .unwrap()
        .ipv4;
    let took = cluster
        .wait_ready_endpoints("echo", &[a.into(), b.into()], Duration::from_secs(30))
        .unwrap();
    eprintln!("{test}: EndpointSlice with both backends after {took:?}");
    let backends = [
        SocketAddr::new(a.into(), 5353),
        SocketAddr::new(b.into(), 5353),
    ];
    let took = cluster
        .wait_service_programmed(cluster_ip, &backends, &[], Duration::from_secs(30))
        .unwrap();
    eprintln!("{test}: kube-proxy programmed the service after {took:?}");
    let rules = cluster.proxy_rules().unwrap();
    match flavour.mode {
        ProxyMode::Iptables => assert!(rules.contains("-A KUBE-SVC-"), "{rules}"),
        ProxyMode::Nftables => assert!(rules.contains("table ip kube-proxy"), "{rules}"),
    }

    // A DNS-like client keeping its source port, answered through the ClusterIP.
    let client = cluster
        .start_client(
            "client",
            SocketAddr::new(cluster_ip, 53),
            40053,
            Duration::from_millis(20),
        )
        .unwrap();
    let first = client.wait_steady(10, Duration::from_secs(20)).unwrap();
    eprintln!("{test}: client answered by {}", first.backend);

    // The agent as shipped: rendered RBAC, a TokenRequest token, the DaemonSet's args and env,
    // NET_ADMIN only, reaching the API through the kubernetes Service.
    let shipped = ShippedAgent::render().unwrap();
    let mut agent = cluster
        .start_agent(&shipped, &AgentOptions::shipped(&agent_bin))
        .unwrap();
    let ready = agent.wait_ready(Duration::from_secs(60)).unwrap();
    eprintln!(
        "{test}: agent ready after {ready:?} (least-privilege token, {})",
        agent.admin_addr()
    );
    // NET_ADMIN only, as the DaemonSet's securityContext grants (bit 12).
    let pid = agent.component().pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        assert!(
            line.ends_with("0000000000001000"),
            "the agent must run with NET_ADMIN only: {line}"
        );
    }
    let log = agent.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the shipped RBAC must suffice:\n{log}"
    );

    // Delete the pod the client's flow goes to.
    let victim = first.pod().to_string();
    let victim_addr = SocketAddr::new(cluster.backend(&victim).unwrap().ipv4.into(), 5353);
    let survivor = backends.into_iter().find(|b| *b != victim_addr).unwrap();
    let proxy_log_offset = cluster.kube_proxy().unwrap().log_len();
    let t0 = e2e::timeline::unix_micros();
    cluster.delete_pod(&victim, PodDeletion::Immediate).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let recovered = loop {
        if let Some(answer) = client.first_answer_after(t0, |a| a.pod() != victim) {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{test}: the client's flow did not recover within 30 s of deleting {victim}\n\
             agent log:\n{}\n{}",
            agent.log(),
            cluster.logs_report(40)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let recovery = Duration::from_micros(recovered.t_us.saturating_sub(t0));
    eprintln!(
        "{test}: RECOVERY {recovery:?} after deleting {victim} (now answered by {}; kube-proxy {}, node {NODE_NAME})",
        recovered.backend,
        flavour.name()
    );
    let took = cluster
        .wait_service_programmed(
            cluster_ip,
            &[survivor],
            &[victim_addr],
            Duration::from_secs(30),
        )
        .unwrap();
    eprintln!(
        "{test}: kube-proxy dropped the deleted backend's rules after {took:?} (from the recovery on)"
    );
    if !flavour.conntrack_tool {
        // The lost cleanup: kube-proxy v1.31 tries the `conntrack` tool for the deleted
        // endpoint, fails, logs it and never retries; only the agent can have recovered it.
        let line = cluster
            .kube_proxy()
            .unwrap()
            .wait_for_log(proxy_log_offset, Duration::from_secs(10), |l| {
                l.contains("conntrack") && l.contains("not found")
            })
            .unwrap();
        eprintln!("{test}: kube-proxy's lost cleanup: {line}");
    }
    agent.component().stop(Duration::from_secs(5));
}

#[test]
fn real_smoke_v1_34_iptables() {
    smoke("real_smoke_v1_34_iptables", ProxyFlavour::V1_34_IPTABLES);
}

#[test]
fn real_smoke_v1_34_nftables() {
    smoke("real_smoke_v1_34_nftables", ProxyFlavour::V1_34_NFTABLES);
}

#[test]
fn real_smoke_v1_31_iptables() {
    smoke("real_smoke_v1_31_iptables", ProxyFlavour::V1_31);
}

#[test]
fn real_smoke_v1_31_lost_cleanup() {
    smoke(
        "real_smoke_v1_31_lost_cleanup",
        ProxyFlavour::V1_31_LOST_CLEANUP,
    );
}

/// Every process stopped and every namespace and state file removed when a test panics with a
/// running cluster; the panic prints the components' logs.
#[test]
fn real_cluster_leaves_nothing_behind_on_panic() {
    let test = "real_cluster_leaves_nothing_behind_on_panic";
    let Some(bins) = K8sBinaries::for_test(test) else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let mut cluster = RealCluster::start(test, &bins, lab(), ClusterConfig::default()).unwrap();
        cluster
            .add_backend("echo-a", "echo", &[5353], true)
            .unwrap();
        let pids: Vec<u32> = [
            cluster.etcd().pid(),
            cluster.apiserver().pid(),
            cluster.controller_manager().pid(),
            cluster.kube_proxy().and_then(|p| p.pid()),
        ]
        .into_iter()
        .map(Option::unwrap)
        .collect();
        let mut netns = vec![
            cluster.cp_netns().name().to_string(),
            cluster.topology().node().name().to_string(),
        ];
        netns.push(cluster.topology().pod_netns_name("echo-a").unwrap());
        let state = cluster.admin_kubeconfig().parent().unwrap().to_path_buf();
        tx.send((pids, netns, state)).unwrap();
        panic!("deliberate panic with a running cluster");
    })
    .join();
    assert!(panicked.is_err(), "the thread must have panicked");
    let (pids, netns, state) = rx.recv().unwrap();
    for pid in pids {
        // SAFETY: kill(pid, 0) only checks for existence.
        let alive = unsafe { libc::kill(i32::try_from(pid).unwrap(), 0) } == 0;
        assert!(!alive, "process {pid} survived the cluster");
    }
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for name in netns {
        assert!(
            !list.contains(&name),
            "namespace {name} survived the cluster:\n{list}"
        );
    }
    assert!(!state.exists(), "{} survived the cluster", state.display());
}

/// What the harness does the way a kubelet and users would, checked against the real control
/// plane: readiness, terminating pods, targetPort changes, ClusterIP reuse, dual-stack, scaling,
/// etcd compaction and a kube-apiserver restart.
#[test]
fn real_harness_operations_behave_like_a_cluster() {
    let test = "real_harness_operations_behave_like_a_cluster";
    let Some(bins) = K8sBinaries::for_test(test) else {
        return;
    };
    let mut cluster = RealCluster::start(test, &bins, lab(), ClusterConfig::default()).unwrap();
    let svc = cluster
        .create_service(
            &UdpService::new("dual", "dual", 53, 5353).families(e2e::real::Families::Dual),
        )
        .unwrap();
    let ips: Vec<IpAddr> = svc
        .spec
        .unwrap()
        .cluster_ips
        .unwrap()
        .iter()
        .map(|i| i.parse().unwrap())
        .collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    let names = cluster.scale("dual", 2, &[5353, 6000]).unwrap();
    let a = cluster.backend(&names[0]).unwrap().ips();
    let b = cluster.backend(&names[1]).unwrap().ips();
    cluster
        .wait_ready_endpoints("dual", &[a[0], a[1], b[0], b[1]], Duration::from_secs(30))
        .unwrap();
    // Both families answer through their ClusterIP.
    for (i, ip) in ips.iter().enumerate() {
        let backends: Vec<SocketAddr> = [a[i], b[i]]
            .iter()
            .map(|ip| SocketAddr::new(*ip, 5353))
            .collect();
        cluster
            .wait_service_programmed(*ip, &backends, &[], Duration::from_secs(30))
            .unwrap();
        let client = cluster
            .start_client(
                &format!("client-{i}"),
                SocketAddr::new(*ip, 53),
                40000 + i as u16,
                Duration::from_millis(20),
            )
            .unwrap();
        client.wait_steady(5, Duration::from_secs(20)).unwrap();
    }

    // Not ready: the endpoint stays, not ready and not serving.
    cluster.set_pod_ready(&names[0], false).unwrap();
    cluster
        .wait_ready_endpoints("dual", &[b[0], b[1]], Duration::from_secs(30))
        .unwrap();
    let view = cluster.endpoints("dual").unwrap();
    assert!(
        view.iter()
            .any(|e| e.ip == a[0] && !e.ready && !e.serving && !e.terminating),
        "{view:?}"
    );
    cluster.set_pod_ready(&names[0], true).unwrap();
    cluster
        .wait_ready_endpoints("dual", &[a[0], a[1], b[0], b[1]], Duration::from_secs(30))
        .unwrap();

    // A plain delete without a kubelet: Terminating, serving, not ready, for as long as we like.
    cluster
        .delete_pod(&names[1], PodDeletion::Graceful)
        .unwrap();
    cluster
        .wait_ready_endpoints("dual", &[a[0], a[1]], Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let view = cluster.endpoints("dual").unwrap();
    assert!(
        view.iter()
            .any(|e| e.ip == b[0] && !e.ready && e.serving && e.terminating),
        "{view:?}"
    );
    // ... until the kubelet would finish it.
    cluster
        .delete_pod(&names[1], PodDeletion::Immediate)
        .unwrap();
    cluster.wait_api_gone_endpoint("dual", b[0]);

    // targetPort changed: kube-proxy DNATs to the new port.
    cluster.set_target_port("dual", 6000).unwrap();
    cluster
        .wait_service_programmed(
            ips[0],
            &[SocketAddr::new(a[0], 6000)],
            &[SocketAddr::new(a[0], 5353)],
            Duration::from_secs(30),
        )
        .unwrap();

    // Deleted and recreated with the same ClusterIPs.
    cluster.delete_service("dual").unwrap();
    cluster
        .create_service(
            &UdpService::new("dual", "dual", 53, 5353)
                .families(e2e::real::Families::Dual)
                .cluster_ips(&ips),
        )
        .unwrap();
    assert_eq!(cluster.cluster_ips("dual").unwrap(), ips);

    // Scale to zero and back.
    assert!(cluster.scale("dual", 0, &[5353]).unwrap().is_empty());
    cluster
        .wait_ready_endpoints("dual", &[], Duration::from_secs(30))
        .unwrap();
    let names = cluster.scale("dual", 1, &[5353]).unwrap();
    let c = cluster.backend(&names[0]).unwrap().ips();
    cluster
        .wait_ready_endpoints("dual", &[c[0], c[1]], Duration::from_secs(30))
        .unwrap();

    // etcd compacted; kube-apiserver killed and restarted: the cluster keeps working.
    let revision = cluster.compact_etcd().unwrap();
    assert!(revision > 1);
    let took = cluster
        .restart_apiserver(Duration::from_millis(500))
        .unwrap();
    eprintln!("{test}: kube-apiserver ready again {took:?} after its restart");
    cluster.scale("dual", 2, &[5353]).unwrap();
    let view = cluster.endpoints("dual").unwrap();
    eprintln!("{test}: endpoints after the restart: {view:?}");
    let all: Vec<IpAddr> = cluster
        .backends_of("dual")
        .iter()
        .flat_map(|b| b.ips())
        .collect();
    cluster
        .wait_ready_endpoints("dual", &all, Duration::from_secs(30))
        .unwrap();
}

/// Small helpers kept with the tests that use them.
trait WaitGone {
    fn wait_api_gone_endpoint(&self, service: &str, ip: IpAddr);
}

impl WaitGone for RealCluster {
    fn wait_api_gone_endpoint(&self, service: &str, ip: IpAddr) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.endpoints(service).unwrap().iter().any(|e| e.ip == ip) {
            assert!(
                std::time::Instant::now() < deadline,
                "{ip} still an endpoint of {service}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
