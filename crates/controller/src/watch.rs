//! The four watches (Services, EndpointSlices, this Node, this node's Pods), merged into one
//! channel of updates. Objects are pruned before they travel: the index keeps only what it needs,
//! but a relist buffers whole lists until `InitDone`, so what is never read is dropped here.

use crate::kube_client::{SERVICE_FIELDS, SERVICE_LABELS, SLICE_LABELS, node_fields, pod_fields};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::mpsc;

/// The annotation the engine reads; every other annotation is pruned.
pub const SKIP_ANNOTATION: &str = "conntrack-reconciler/skip";

/// One item from one of the watches.
#[derive(Debug)]
// Updates are moved once through a channel; boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Update {
    /// A Service event.
    Service(watcher::Event<Service>),
    /// An EndpointSlice event.
    Slice(watcher::Event<EndpointSlice>),
    /// An event of this node's Node object.
    Node(watcher::Event<Node>),
    /// An event of a Pod on this node.
    Pod(watcher::Event<Pod>),
    /// A watch failed; it retries with backoff, and the last complete state keeps serving.
    Error {
        /// The watched kind.
        kind: &'static str,
        /// What failed.
        error: watcher::Error,
    },
}

impl Update {
    /// Whether this ends a (re)list of its kind.
    pub fn is_relist_done(&self) -> bool {
        matches!(
            self,
            Update::Service(watcher::Event::InitDone)
                | Update::Slice(watcher::Event::InitDone)
                | Update::Node(watcher::Event::InitDone)
                | Update::Pod(watcher::Event::InitDone)
        )
    }
}

/// Starts the four watches; they run until `tx` is closed.
pub fn spawn(
    client: Client,
    node_name: &str,
    tx: mpsc::Sender<Update>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default()
            .labels(SERVICE_LABELS)
            .fields(SERVICE_FIELDS),
    );
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(SLICE_LABELS),
    );
    let nodes = watcher(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&node_fields(node_name)),
    );
    let pods = watcher(
        Api::<Pod>::all(client),
        watcher::Config::default().fields(&pod_fields(node_name)),
    );
    vec![
        forward(services, "services", tx.clone(), Update::Service),
        forward(slices, "endpointslices", tx.clone(), Update::Slice),
        forward(nodes, "nodes", tx.clone(), Update::Node),
        forward(pods, "pods", tx, Update::Pod),
    ]
}

fn forward<K, S>(
    stream: S,
    kind: &'static str,
    tx: mpsc::Sender<Update>,
    wrap: fn(watcher::Event<K>) -> Update,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Prune + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.default_backoff());
        while let Some(item) = stream.next().await {
            let update = match item {
                Ok(event) => wrap(event.modify(Prune::prune)),
                Err(error) => Update::Error { kind, error },
            };
            if tx.send(update).await.is_err() {
                return; // the agent is shutting down
            }
        }
    })
}

/// Drops the parts of an object the engine never reads.
pub trait Prune {
    /// Prunes in place.
    fn prune(&mut self);
}

fn prune_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, _| k == SKIP_ANNOTATION);
    }
}

impl Prune for Service {
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        if let Some(spec) = &mut self.spec {
            spec.selector = None;
        }
    }
}

impl Prune for EndpointSlice {
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        for ep in &mut self.endpoints {
            ep.hints = None;
            ep.target_ref = None;
            ep.deprecated_topology = None;
            ep.zone = None;
        }
    }
}

impl Prune for Node {
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        self.metadata.labels = None;
        self.spec = None;
        if let Some(status) = &mut self.status {
            let addresses = status.addresses.take();
            *status = Default::default();
            status.addresses = addresses;
        }
    }
}

impl Prune for Pod {
    fn prune(&mut self) {
        prune_meta(&mut self.metadata);
        self.metadata.labels = None;
        if let Some(spec) = &mut self.spec {
            spec.volumes = None;
            spec.affinity = None;
            spec.tolerations = None;
            spec.init_containers = None;
            spec.ephemeral_containers = None;
            for c in &mut spec.containers {
                c.env = None;
                c.env_from = None;
                c.volume_mounts = None;
                c.command = None;
                c.args = None;
                c.liveness_probe = None;
                c.readiness_probe = None;
                c.startup_probe = None;
                c.resources = None;
            }
        }
        if let Some(status) = &mut self.status {
            status.conditions = None;
            status.container_statuses = None;
            status.init_container_statuses = None;
            status.ephemeral_container_statuses = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn prune_keeps_what_the_engine_reads() {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "b",
                "annotations": {SKIP_ANNOTATION: "true", "kubectl.kubernetes.io/last-applied-configuration": "{…}"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "x"}, "ports": [{"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        svc.prune();
        assert_eq!(
            svc.metadata.annotations,
            Some(BTreeMap::from([(
                SKIP_ANNOTATION.to_owned(),
                "true".to_owned()
            )]))
        );
        assert!(svc.metadata.managed_fields.is_none());
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert!(spec.selector.is_none());
        assert_eq!(spec.ports.unwrap().len(), 1);
    }

    #[test]
    fn prune_pod_keeps_ports_and_ips() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"a": "b"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "env": [{"name": "X", "value": "1"}],
                "ports": [{"containerPort": 8125, "hostPort": 8125, "protocol": "UDP"}]}]},
            "status": {"podIP": "10.244.0.9", "hostIP": "192.168.1.2", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        pod.prune();
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.containers[0].env.is_none());
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0].host_port,
            Some(8125)
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.9"));
        assert_eq!(status.host_ip.as_deref(), Some("192.168.1.2"));
        assert!(status.conditions.is_none());
    }
}
