//! Kubernetes client setup and the selectors the agent shares with kube-proxy.

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::Path;

/// Services kube-proxy programs: not claimed by another proxy (ctdiff's
/// [`SERVICE_LABEL_SELECTOR`](ctdiff::SERVICE_LABEL_SELECTOR)). Used by one-shot lists only:
/// the agent's watch must see a relabel as an update, not as a deletion. (No field selector:
/// `spec.clusterIP!=None` is refused by API servers before 1.31; ctdiff ignores headless
/// Services itself.)
pub const SERVICE_LABELS: &str = ctdiff::SERVICE_LABEL_SELECTOR;
/// EndpointSlices of non-headless services (ctdiff's
/// [`ENDPOINT_SLICE_LABEL_SELECTOR`](ctdiff::ENDPOINT_SLICE_LABEL_SELECTOR)).
pub const SLICE_LABELS: &str = ctdiff::ENDPOINT_SLICE_LABEL_SELECTOR;

/// Field selector for this node's Node object.
pub fn node_fields(node: &str) -> String {
    format!("metadata.name={node}")
}

/// Field selector for the Pods scheduled on this node.
pub fn pod_fields(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// A client from `--kubeconfig`, else the in-cluster configuration, else the default kubeconfig.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => match Config::incluster() {
            Ok(config) => config,
            Err(_) => Config::infer()
                .await
                .context("no --kubeconfig, not in a cluster, and no default kubeconfig")?,
        },
    };
    let mut config = config;
    // A node agent often starts before the node can reach the API server (kube-proxy has not
    // programmed the `kubernetes` Service yet): retry after seconds, not the default 30 s.
    config.connect_timeout = Some(std::time::Duration::from_secs(5));
    Client::try_from(config).context("building the Kubernetes client")
}
