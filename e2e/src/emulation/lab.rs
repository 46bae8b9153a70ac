//! One lab: topology, API double, emulated kube-proxy, workloads and (optionally) the agent.
//!
//! The lab keeps a compact model of its services and their backends and publishes it as
//! Service / EndpointSlice / Pod objects, the way the endpointslice controller and kubelet would.
//! Everything is torn down on drop, processes first, then namespaces.

use crate::agent::Agent;
use crate::apiserver::ApiServer;
use crate::conntrack::{DestroyMonitor, FlowEntry, list_udp};
use crate::emulation::host_port::{HostPortMapping, PortMap};
use crate::emulation::objects::{
    ContainerPortDef, EndpointDef, PodDef, ServiceDef, endpoint_slice, node,
};
use crate::emulation::proxy_sync::KubeProxy;
use crate::process::{Binaries, Process};
use crate::timeline::{Timeline, unix_micros};
use crate::topology::{NODE_IPV4, NODE_IPV6, Topology};
use crate::workload::{Client, start_echo};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The node's name in the API (what the agent gets as `--node-name`).
pub const NODE_NAME: &str = "lab-node";

/// How a lab is built.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Prefix of the namespace names (keep it short: it names network namespaces).
    pub prefix: String,
    /// Delay between an API change and kube-proxy's rule rewrite.
    pub rules_lag: Duration,
    /// The lab's binaries.
    pub binaries: Binaries,
}

/// One backend of a service.
#[derive(Debug, Clone)]
struct Backend {
    pod: String,
    ips: Vec<IpAddr>,
    ready: bool,
    serving: bool,
    terminating: bool,
    /// False for an endpoint the lab publishes without a pod behind it (nobody answers).
    has_pod: bool,
}

/// A pod whose UDP port is mapped on the node (`hostPort`).
#[derive(Debug, Clone, Copy)]
struct HostPortPod {
    mapping: HostPortMapping,
}

#[derive(Debug, Clone)]
struct LabService {
    def: ServiceDef,
    backends: Vec<Backend>,
}

/// Where a client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPlace {
    /// In its own pod namespace.
    Pod,
    /// In the node namespace (a hostNetwork pod).
    HostNetwork,
    /// On the external host.
    External,
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    // Drop order: the agent and processes before the namespaces they live in.
    agent: Mutex<Option<Agent>>,
    processes: Mutex<BTreeMap<String, Process>>,
    kube_proxy: KubeProxy,
    port_map: PortMap,
    api: Arc<ApiServer>,
    runtime: tokio::runtime::Runtime,
    topology: Topology,
    services: Mutex<BTreeMap<String, LabService>>,
    host_port_pods: Mutex<BTreeMap<String, HostPortPod>>,
    /// (time, serving endpoint `IP:port`s of every service) after each publication.
    serving_history: Mutex<Vec<(u64, BTreeSet<SocketAddr>)>>,
    /// Endpoints recorded as serving besides the services' ([`Lab::also_serving`]).
    extra_serving: Mutex<BTreeSet<SocketAddr>>,
    timeline: Timeline,
    config: LabConfig,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lab {
    /// Builds the node, the API double (listening inside the node) and kube-proxy.
    pub fn new(config: LabConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("lab runtime")?;
        let topology = Topology::new(&config.prefix)?;
        let api = Arc::new(ApiServer::start_in_netns(
            runtime.handle(),
            &topology.node().path(),
        )?);
        api.apply(&node(NODE_NAME, &[NODE_IPV4.into(), NODE_IPV6.into()]))?;
        let timeline = Timeline::default();
        let kube_proxy = KubeProxy::start(
            runtime.handle(),
            api.clone(),
            topology.node().name(),
            config.rules_lag,
            timeline.clone(),
        )?;
        let port_map = PortMap::start(runtime.handle(), topology.node().name(), timeline.clone())?;
        Ok(Self {
            agent: Mutex::new(None),
            processes: Mutex::new(BTreeMap::new()),
            kube_proxy,
            port_map,
            api,
            runtime,
            topology,
            services: Mutex::new(BTreeMap::new()),
            host_port_pods: Mutex::new(BTreeMap::new()),
            serving_history: Mutex::new(Vec::new()),
            extra_serving: Mutex::new(BTreeSet::new()),
            timeline,
            config,
        })
    }

    /// The API double.
    pub fn api(&self) -> &ApiServer {
        &self.api
    }

    /// The network topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The shared timeline.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// The emulated kube-proxy.
    pub fn kube_proxy(&self) -> &KubeProxy {
        &self.kube_proxy
    }

    /// The lab's tokio runtime.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// Waits until kube-proxy's rules (and the hostPort rules) reflect every change made so far.
    pub fn wait_rules_synced(&self) -> Result<()> {
        let rv = self.api.resource_version();
        let timeout = self.config.rules_lag.max(self.kube_proxy.lag()) + Duration::from_secs(5);
        self.kube_proxy.wait_applied(rv, timeout)?;
        self.port_map.wait_applied(timeout)
    }

    /// Creates (or replaces) a service; its backends are kept.
    pub fn apply_service(&self, def: ServiceDef) -> Result<()> {
        let key = format!("{}/{}", def.namespace, def.name);
        let mut services = lock(&self.services);
        let backends = services
            .get(&key)
            .map(|s| s.backends.clone())
            .unwrap_or_default();
        self.api.apply(&def.to_service())?;
        let service = LabService { def, backends };
        self.publish_slices(&service)?;
        services.insert(key, service);
        drop(services);
        self.record_serving();
        Ok(())
    }

    /// Deletes a service and its EndpointSlices (its backend pods keep running).
    pub fn delete_service(&self, name: &str) -> Result<()> {
        let key = format!("default/{name}");
        let service = lock(&self.services)
            .remove(&key)
            .with_context(|| format!("no service {key}"))?;
        self.api.delete::<Service>("default", name)?;
        for slice in self.api.list::<EndpointSlice>() {
            let owned =
                slice.metadata.namespace.as_deref() == Some("default")
                    && slice.metadata.name.as_deref().is_some_and(|n| {
                        n == format!("{name}-ipv4") || n == format!("{name}-ipv6")
                    });
            if owned && let Some(slice_name) = slice.metadata.name.as_deref() {
                self.api.delete::<EndpointSlice>("default", slice_name)?;
            }
        }
        self.timeline
            .record("lab", format!("service {} deleted", service.def.name));
        self.record_serving();
        Ok(())
    }

    fn publish_slices(&self, service: &LabService) -> Result<()> {
        let ports: Vec<(String, u16, String)> = service
            .def
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.target_port, p.protocol.clone()))
            .collect();
        let endpoints: Vec<EndpointDef> = service
            .backends
            .iter()
            .flat_map(|b| {
                b.ips.iter().map(|ip| EndpointDef {
                    ip: *ip,
                    pod: b.pod.clone(),
                    node: NODE_NAME.into(),
                    ready: b.ready,
                    serving: b.serving,
                    terminating: b.terminating,
                })
            })
            .collect();
        let families: BTreeSet<bool> = service
            .def
            .cluster_ips
            .iter()
            .map(|ip| ip.is_ipv6())
            .collect();
        for ipv6 in families {
            let slice_name = format!(
                "{}-{}",
                service.def.name,
                if ipv6 { "ipv6" } else { "ipv4" }
            );
            self.api.apply(&endpoint_slice(
                &service.def,
                &slice_name,
                ipv6,
                &ports,
                &endpoints,
            ))?;
        }
        Ok(())
    }

    fn record_serving(&self) {
        let services = lock(&self.services);
        let serving: BTreeSet<SocketAddr> = services
            .values()
            .flat_map(|s| {
                let ports: Vec<u16> = s.def.ports.iter().map(|p| p.target_port).collect();
                s.backends.iter().filter(|b| b.serving).flat_map(move |b| {
                    let ports = ports.clone();
                    b.ips.iter().flat_map(move |ip| {
                        ports
                            .clone()
                            .into_iter()
                            .map(move |p| SocketAddr::new(*ip, p))
                    })
                })
            })
            .chain(
                lock(&self.host_port_pods)
                    .values()
                    .map(|p| SocketAddr::new(p.mapping.pod_ip, p.mapping.container_port)),
            )
            .chain(lock(&self.extra_serving).iter().copied())
            .collect();
        lock(&self.serving_history).push((unix_micros(), serving));
    }

    /// The serving endpoints at time `t_us` (by the lab's own publications).
    pub fn serving_at(&self, t_us: u64) -> BTreeSet<SocketAddr> {
        lock(&self.serving_history)
            .iter()
            .rev()
            .find(|(t, _)| *t <= t_us)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// Adds a backend pod to a service: a pod namespace, `udp-echo` on `ports`, a Pod object and
    /// a ready endpoint. Returns the pod's addresses.
    pub fn add_backend(&self, service: &str, pod_name: &str, ports: &[u16]) -> Result<Vec<IpAddr>> {
        let (v4, v6) = self.topology.add_pod(pod_name)?;
        let netns = self
            .topology
            .pod_netns_name(pod_name)
            .context("pod namespace")?;
        let echo = start_echo(&self.config.binaries.echo, &netns, pod_name, ports)?;
        lock(&self.processes).insert(pod_name.to_string(), echo);
        let key = format!("default/{service}");
        let mut services = lock(&self.services);
        let svc = services
            .get_mut(&key)
            .with_context(|| format!("no service {key}"))?;
        let ips: Vec<IpAddr> = [IpAddr::from(v4), IpAddr::from(v6)]
            .into_iter()
            .filter(|ip| {
                svc.def
                    .cluster_ips
                    .iter()
                    .any(|c| c.is_ipv6() == ip.is_ipv6())
            })
            .collect();
        self.api.apply(
            &self
                .pod_def(pod_name, &ips, ports.iter().map(|p| (*p, None)))
                .to_pod(),
        )?;
        svc.backends.push(Backend {
            pod: pod_name.to_string(),
            ips: ips.clone(),
            ready: true,
            serving: true,
            terminating: false,
            has_pod: true,
        });
        let snapshot = svc.clone();
        drop(services);
        self.publish_slices(&snapshot)?;
        self.record_serving();
        Ok(ips)
    }

    /// Deletes a backend pod: its process and network go, its endpoint and Pod object too.
    pub fn remove_backend(&self, service: &str, pod_name: &str) -> Result<()> {
        self.timeline.record(
            "lab",
            format!("backend pod {pod_name} deleted (process, network, endpoint, Pod object)"),
        );
        if let Some(mut process) = lock(&self.processes).remove(pod_name) {
            process.stop(Duration::ZERO);
        }
        self.topology.remove_pod(pod_name)?;
        let key = format!("default/{service}");
        let mut services = lock(&self.services);
        let svc = services
            .get_mut(&key)
            .with_context(|| format!("no service {key}"))?;
        svc.backends.retain(|b| b.pod != pod_name);
        let snapshot = svc.clone();
        drop(services);
        self.publish_slices(&snapshot)?;
        self.api.delete::<Pod>("default", pod_name)?;
        self.record_serving();
        Ok(())
    }

    /// Sets a backend's endpoint conditions (the pod keeps running).
    pub fn set_backend_conditions(
        &self,
        service: &str,
        pod_name: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
    ) -> Result<()> {
        let key = format!("default/{service}");
        let mut services = lock(&self.services);
        let svc = services
            .get_mut(&key)
            .with_context(|| format!("no service {key}"))?;
        let Some(backend) = svc.backends.iter_mut().find(|b| b.pod == pod_name) else {
            bail!("no backend {pod_name} in {key}");
        };
        backend.ready = ready;
        backend.serving = serving;
        backend.terminating = terminating;
        let snapshot = svc.clone();
        drop(services);
        self.publish_slices(&snapshot)?;
        self.timeline.record(
            "lab",
            format!(
                "endpoint {pod_name}: ready={ready} serving={serving} terminating={terminating}"
            ),
        );
        self.record_serving();
        Ok(())
    }

    /// A Running pod on the lab's node with UDP `(containerPort, hostPort)`s.
    fn pod_def(
        &self,
        name: &str,
        ips: &[IpAddr],
        ports: impl IntoIterator<Item = (u16, Option<u16>)>,
    ) -> PodDef {
        PodDef {
            namespace: "default".into(),
            name: name.into(),
            node_name: NODE_NAME.into(),
            host_ip: Some(NODE_IPV4.into()),
            ips: ips.to_vec(),
            host_network: false,
            udp_ports: ports
                .into_iter()
                .map(|(container_port, host_port)| ContainerPortDef {
                    container_port,
                    host_port,
                })
                .collect(),
        }
    }

    /// Replaces the endpoints of `service` that have no pod behind them (addresses nobody
    /// answers, for scale) with `endpoints` (`(pod name, address)`, ready and serving), in one
    /// EndpointSlice update; the real backends are kept.
    pub fn set_endpoints_without_pods(
        &self,
        service: &str,
        endpoints: &[(String, IpAddr)],
    ) -> Result<()> {
        let key = format!("default/{service}");
        let mut services = lock(&self.services);
        let svc = services
            .get_mut(&key)
            .with_context(|| format!("no service {key}"))?;
        svc.backends.retain(|b| b.has_pod);
        svc.backends
            .extend(endpoints.iter().map(|(pod, ip)| Backend {
                pod: pod.clone(),
                ips: vec![*ip],
                ready: true,
                serving: true,
                terminating: false,
                has_pod: false,
            }));
        let snapshot = svc.clone();
        drop(services);
        self.publish_slices(&snapshot)?;
        self.record_serving();
        Ok(())
    }

    /// Starts a pod whose UDP `container_port` is mapped on the node's `host_port`: a pod
    /// namespace running `udp-echo`, a Pod object carrying the `hostPort`, and (after the rules
    /// lag, like the CNI portmap plugin's rewrite) the node's DNAT. Returns its IPv4 address.
    pub fn add_host_port_pod(
        &self,
        pod_name: &str,
        host_port: u16,
        container_port: u16,
    ) -> Result<IpAddr> {
        let (v4, _) = self.topology.add_pod(pod_name)?;
        let netns = self
            .topology
            .pod_netns_name(pod_name)
            .context("pod namespace")?;
        let echo = start_echo(
            &self.config.binaries.echo,
            &netns,
            pod_name,
            &[container_port],
        )?;
        lock(&self.processes).insert(pod_name.to_string(), echo);
        let ip = IpAddr::from(v4);
        self.api.apply(
            &self
                .pod_def(pod_name, &[ip], [(container_port, Some(host_port))])
                .to_pod(),
        )?;
        let mapping = HostPortMapping {
            host_port,
            pod_ip: ip,
            container_port,
        };
        lock(&self.host_port_pods).insert(pod_name.to_string(), HostPortPod { mapping });
        self.timeline.record(
            "lab",
            format!("pod {pod_name} ({ip}) started with hostPort {host_port} -> {container_port}"),
        );
        self.publish_host_ports()?;
        self.record_serving();
        Ok(ip)
    }

    /// Deletes a hostPort pod: its process, network and Pod object now, its DNAT after the lag.
    pub fn remove_host_port_pod(&self, pod_name: &str) -> Result<()> {
        self.timeline.record(
            "lab",
            format!("hostPort pod {pod_name} deleted (process, network, Pod object)"),
        );
        if let Some(mut process) = lock(&self.processes).remove(pod_name) {
            process.stop(Duration::ZERO);
        }
        self.topology.remove_pod(pod_name)?;
        lock(&self.host_port_pods)
            .remove(pod_name)
            .with_context(|| format!("no hostPort pod {pod_name}"))?;
        self.api.delete::<Pod>("default", pod_name)?;
        self.publish_host_ports()?;
        self.record_serving();
        Ok(())
    }

    fn publish_host_ports(&self) -> Result<()> {
        let mappings = lock(&self.host_port_pods)
            .values()
            .map(|p| p.mapping)
            .collect();
        self.port_map.update(self.config.rules_lag, mappings)
    }

    /// Starts a client (in a new pod, in the node, or on the external host) sending to `target`.
    pub fn start_client(
        &self,
        name: &str,
        place: ClientPlace,
        target: SocketAddr,
        source_port: u16,
    ) -> Result<Client> {
        let netns = match place {
            ClientPlace::Pod => {
                let (v4, v6) = self.topology.add_pod(name)?;
                self.api
                    .apply(&self.pod_def(name, &[v4.into(), v6.into()], []).to_pod())?;
                self.topology.pod_netns_name(name).context("client netns")?
            }
            ClientPlace::HostNetwork => self.topology.node().name().to_string(),
            ClientPlace::External => self.topology.external().name().to_string(),
        };
        Client::start(
            &self.config.binaries.client,
            &netns,
            name,
            target,
            source_port,
            Duration::from_millis(20),
        )
    }

    /// Starts the agent in the node namespace and waits until it is ready.
    pub fn start_agent(&self, binary: &Path, extra: &[String]) -> Result<()> {
        let mut agent = Agent::start(
            binary,
            self.topology.node().name(),
            &self.topology.node().path(),
            NODE_NAME,
            self.api.kubeconfig(),
            extra,
            &self.timeline,
        )?;
        agent.wait_ready(Duration::from_secs(20))?;
        self.timeline.record("agent", "ready");
        *lock(&self.agent) = Some(agent);
        Ok(())
    }

    /// A plain HTTP GET on the running agent's metrics server: (status, body).
    pub fn agent_get(&self, path: &str) -> Result<(u16, String)> {
        lock(&self.agent)
            .as_ref()
            .context("no agent running")?
            .get(path)
    }

    /// Records `endpoints` (`IP:port`) as serving from now on, besides the lab's services:
    /// for scenarios whose live backends the lab's model does not describe (e.g. endpoints
    /// kube-proxy routes to though they are not `serving`, or an outside server).
    pub fn also_serving(&self, endpoints: impl IntoIterator<Item = SocketAddr>) {
        lock(&self.extra_serving).extend(endpoints);
        self.record_serving();
    }

    /// Stops the agent, if running; returns its log.
    pub fn stop_agent(&self) -> Option<String> {
        let mut agent = lock(&self.agent).take()?;
        agent.stop();
        Some(agent.log())
    }

    /// The agent's log so far ("" without an agent).
    pub fn agent_log(&self) -> String {
        lock(&self.agent)
            .as_ref()
            .map(Agent::log)
            .unwrap_or_default()
    }

    /// The node's UDP conntrack entries.
    pub fn conntrack(&self) -> Result<Vec<FlowEntry>> {
        list_udp(self.topology.node().name(), None)
    }

    /// The node's UDP conntrack entries from source port `port` (cheap on a large table).
    pub fn conntrack_from_port(&self, port: u16) -> Result<Vec<FlowEntry>> {
        list_udp(self.topology.node().name(), Some(port))
    }

    /// Starts recording destroyed UDP flows in the node.
    pub fn destroy_monitor(&self) -> Result<DestroyMonitor> {
        DestroyMonitor::start(self.topology.node().name())
    }

    /// The node's state for a failure message: conntrack entries, neighbours, routes, rules.
    pub fn diagnostics(&self) -> String {
        let node = self.topology.node();
        let mut out = String::new();
        for argv in [
            &["conntrack", "-L", "-p", "udp"][..],
            &["conntrack", "-L", "-p", "udp", "-f", "ipv6"],
            &["ip", "neigh"],
            &["ip", "-6", "neigh"],
            &["ip", "-6", "route"],
            &["ip6tables-save", "-t", "nat"],
        ] {
            let text = match node.exec(argv) {
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => e.to_string(),
            };
            out.push_str(&format!("$ {}\n{text}\n", argv.join(" ")));
        }
        out
    }

    /// The destroyed flows whose backend was still serving when they went: false deletions.
    pub fn false_deletions(&self, monitor: &DestroyMonitor) -> Vec<FlowEntry> {
        monitor
            .events()
            .into_iter()
            .filter(|(t, flow)| self.serving_at(*t).contains(&flow.reply_src))
            .map(|(_, flow)| flow)
            .collect()
    }
}
