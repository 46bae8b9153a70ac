//! The agent as users install it: objects rendered from `manifests/`, run as its DaemonSet says.
//!
//! The rendering is `cargo xtask manifests` (kubectl kustomize when kubectl is installed, else
//! xtask's own renderer of the base), so the test runs what `kubectl apply -k manifests/`
//! would install: the ServiceAccount, ClusterRole and ClusterRoleBinding are applied to the
//! real kube-apiserver as they are, and the DaemonSet's container args, env (downward API
//! resolved as the kubelet would for a hostNetwork pod), capabilities and readiness probe are
//! what the harness runs and probes.

use crate::real::binaries::workspace_root;
use crate::real::component::Component;
use crate::real::http;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Names a file holding the rendered manifests: used instead of running `cargo xtask manifests`.
pub const MANIFEST_ENV: &str = "CONNTRACK_RECONCILER_MANIFEST";

/// The agent's objects, rendered from `manifests/`.
#[derive(Debug, Clone)]
pub struct ShippedAgent {
    /// The ServiceAccount the DaemonSet runs as.
    pub service_account: ServiceAccount,
    /// Its read-only ClusterRole.
    pub cluster_role: ClusterRole,
    /// The binding of the two.
    pub cluster_role_binding: ClusterRoleBinding,
    /// The DaemonSet.
    pub daemonset: DaemonSet,
    /// Every rendered object, as JSON (the ones above included).
    pub objects: Vec<Value>,
}

/// The downward API values the kubelet would fill in for the agent's pod.
#[derive(Debug, Clone)]
pub struct DownwardApi {
    /// `spec.nodeName`.
    pub node_name: String,
    /// `status.podIP`: the node's primary address, the pod being on the host network.
    pub pod_ip: IpAddr,
    /// `status.hostIP`.
    pub host_ip: IpAddr,
    /// `metadata.name`.
    pub pod_name: String,
    /// `metadata.namespace`.
    pub namespace: String,
}

impl ShippedAgent {
    /// Renders `manifests/` (once per process) and parses it.
    pub fn render() -> Result<Self> {
        static RENDERED: OnceLock<Result<String, String>> = OnceLock::new();
        let text = RENDERED
            .get_or_init(|| render_text().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)?;
        Self::from_yaml(&text)
    }

    /// Parses a multi-document YAML stream of the rendered objects.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let mut objects = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = Value::deserialize(doc).context("parsing the rendered manifests")?;
            if !value.is_null() {
                objects.push(value);
            }
        }
        let one = |kind: &str| -> Result<Value> {
            let mut found = objects.iter().filter(|o| o["kind"] == kind);
            let first = found
                .next()
                .with_context(|| format!("the rendered manifests have no {kind}"))?;
            if found.next().is_some() {
                bail!("the rendered manifests have more than one {kind}");
            }
            Ok(first.clone())
        };
        Ok(Self {
            service_account: serde_json::from_value(one("ServiceAccount")?)?,
            cluster_role: serde_json::from_value(one("ClusterRole")?)?,
            cluster_role_binding: serde_json::from_value(one("ClusterRoleBinding")?)?,
            daemonset: serde_json::from_value(one("DaemonSet")?)?,
            objects,
        })
    }

    /// The ServiceAccount's namespace and name.
    pub fn service_account_ref(&self) -> Result<(String, String)> {
        let meta = &self.service_account.metadata;
        Ok((
            meta.namespace
                .clone()
                .context("the ServiceAccount has no namespace")?,
            meta.name
                .clone()
                .context("the ServiceAccount has no name")?,
        ))
    }

    fn pod_spec(&self) -> Result<&k8s_openapi::api::core::v1::PodSpec> {
        self.daemonset
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .context("the DaemonSet has no pod spec")
    }

    /// The agent's container (the only one).
    pub fn container(&self) -> Result<&Container> {
        let spec = self.pod_spec()?;
        match spec.containers.as_slice() {
            [one] => Ok(one),
            other => bail!("the DaemonSet has {} containers, expected 1", other.len()),
        }
    }

    /// Whether the pod runs on the host network (the agent must: it edits the node's table).
    pub fn host_network(&self) -> Result<bool> {
        Ok(self.pod_spec()?.host_network.unwrap_or(false))
    }

    /// The container's arguments (the image's entrypoint is the binary itself).
    pub fn args(&self) -> Result<Vec<String>> {
        let c = self.container()?;
        if let Some(command) = &c.command {
            bail!("the DaemonSet overrides the image's command ({command:?}); teach the harness");
        }
        Ok(c.args.clone().unwrap_or_default())
    }

    /// The container's environment with the downward API resolved.
    pub fn env(&self, downward: &DownwardApi) -> Result<Vec<(String, String)>> {
        let mut env = Vec::new();
        for var in self.container()?.env.iter().flatten() {
            let value = if let Some(value) = &var.value {
                value.clone()
            } else {
                let field = var
                    .value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .with_context(|| {
                        format!("env {} is neither a value nor a fieldRef", var.name)
                    })?;
                match field.field_path.as_str() {
                    "spec.nodeName" => downward.node_name.clone(),
                    "status.podIP" => downward.pod_ip.to_string(),
                    "status.hostIP" => downward.host_ip.to_string(),
                    "metadata.name" => downward.pod_name.clone(),
                    "metadata.namespace" => downward.namespace.clone(),
                    other => bail!("env {}: fieldRef {other} is not emulated", var.name),
                }
            };
            env.push((var.name.clone(), value));
        }
        Ok(env)
    }

    /// The readiness probe's HTTP path and port.
    pub fn readiness_probe(&self) -> Result<(String, u16)> {
        let c = self.container()?;
        let get = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .context("the container has no HTTP readiness probe")?;
        let port = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => u16::try_from(*p)?,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
                let port = c
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .with_context(|| format!("no container port named {name}"))?;
                u16::try_from(port.container_port)?
            }
        };
        Ok((get.path.clone().unwrap_or_else(|| "/".into()), port))
    }

    /// The capabilities the container keeps when it drops `ALL` (lowercase, for `setpriv`);
    /// None when it does not drop them all (a runtime's default set, not emulated).
    pub fn capabilities(&self) -> Result<Option<Vec<String>>> {
        let caps = self
            .container()?
            .security_context
            .as_ref()
            .and_then(|s| s.capabilities.as_ref());
        let Some(caps) = caps else { return Ok(None) };
        if !caps.drop.iter().flatten().any(|c| c == "ALL") {
            return Ok(None);
        }
        Ok(Some(
            caps.add
                .iter()
                .flatten()
                .map(|c| c.trim_start_matches("CAP_").to_lowercase())
                .collect(),
        ))
    }
}

/// `$CONNTRACK_RECONCILER_MANIFEST`'s content, else `cargo xtask manifests`' output.
fn render_text() -> Result<String> {
    if let Some(path) = std::env::var_os(MANIFEST_ENV).filter(|p| !p.is_empty()) {
        return std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", Path::new(&path).display()));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["xtask", "manifests"])
        .current_dir(workspace_root())
        .output()
        .context("running cargo xtask manifests")?;
    if !out.status.success() {
        bail!(
            "cargo xtask manifests failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The way the agent reaches the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentApi {
    /// Through the `kubernetes` Service's ClusterIP, i.e. kube-proxy's rules, as the in-cluster
    /// configuration of a real DaemonSet pod does.
    KubernetesService,
    /// Straight to kube-apiserver's address (as kube-proxy itself does).
    Direct,
}

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The `conntrack-reconciler` binary.
    pub binary: PathBuf,
    /// Its path to the API server.
    pub api: AgentApi,
    /// Arguments appended to the DaemonSet's.
    pub extra_args: Vec<String>,
    /// Environment added to the DaemonSet's.
    pub extra_env: Vec<(String, String)>,
    /// Run with only the capabilities the DaemonSet grants (`setpriv`), when it drops `ALL`.
    pub enforce_capabilities: bool,
    /// The component's name (its log file).
    pub name: String,
}

impl AgentOptions {
    /// The DaemonSet's settings as shipped, through the `kubernetes` Service.
    pub fn shipped(binary: &Path) -> Self {
        Self {
            binary: binary.to_path_buf(),
            api: AgentApi::KubernetesService,
            extra_args: Vec::new(),
            extra_env: Vec::new(),
            enforce_capabilities: true,
            name: "agent".into(),
        }
    }
}

/// A running agent.
#[derive(Debug)]
pub struct RealAgent {
    pub(crate) component: Component,
    pub(crate) node_netns: PathBuf,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) readiness_path: String,
    pub(crate) kubeconfig: PathBuf,
}

impl RealAgent {
    /// Waits for the readiness probe to answer 200; returns how long that took from the start.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let (netns, addr, path) = (
            self.node_netns.clone(),
            self.admin_addr,
            self.readiness_path.clone(),
        );
        let started = self.component.started_at();
        self.component.wait_until("ready", timeout, || {
            Ok(matches!(http::get(&netns, addr, &path), Ok((200, _))))
        })?;
        Ok(Instant::now().duration_since(started))
    }

    /// A GET on the agent's admin server (e.g. `/metrics`).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http::get(&self.node_netns, self.admin_addr, path)
    }

    /// Where its admin server listens (the DaemonSet's `POD_IP` and port).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The kubeconfig it runs with (its ServiceAccount's token).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.component.log_text()
    }

    /// The process, to stop, restart, pause or kill it.
    pub fn component(&mut self) -> &mut Component {
        &mut self.component
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- last 60 lines of {} ----\n{}",
                self.component.log_path().display(),
                self.component.log_tail(60)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped manifests render and every part the harness needs resolves.
    #[test]
    fn the_shipped_manifests_give_everything_the_harness_runs() {
        let dir = workspace_root().join("manifests/base");
        // Offline, without xtask: the base's files are one object each.
        let mut text = String::new();
        for file in [
            "serviceaccount.yaml",
            "clusterrole.yaml",
            "clusterrolebinding.yaml",
            "daemonset.yaml",
        ] {
            text.push_str("---\n");
            text.push_str(&std::fs::read_to_string(dir.join(file)).unwrap());
        }
        let agent = ShippedAgent::from_yaml(&text).unwrap();
        assert!(agent.host_network().unwrap());
        assert_eq!(agent.args().unwrap()[0], "run");
        let env = agent
            .env(&DownwardApi {
                node_name: "n1".into(),
                pod_ip: "192.168.77.1".parse().unwrap(),
                host_ip: "192.168.77.1".parse().unwrap(),
                pod_name: "p".into(),
                namespace: "kube-system".into(),
            })
            .unwrap();
        assert!(env.contains(&("NODE_NAME".into(), "n1".into())), "{env:?}");
        assert!(
            env.contains(&("POD_IP".into(), "192.168.77.1".into())),
            "{env:?}"
        );
        let (path, port) = agent.readiness_probe().unwrap();
        assert_eq!((path.as_str(), port), ("/readyz", 9795));
        assert_eq!(
            agent.capabilities().unwrap(),
            Some(vec!["net_admin".to_string()])
        );
    }
}
