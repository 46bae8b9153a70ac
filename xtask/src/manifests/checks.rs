//! Offline checks of the shipped manifests (`cargo test -p xtask manifests::`, also run by
//! `cargo xtask manifests --check`): every object the kustomization lists is deserialized into
//! its k8s-openapi type and held to the security and scheduling promises of the DaemonSet.

use super::kustomization::{self, Kustomization};
use super::{IMAGE_NAME, OVERLAYS, manifests_dir, render_builtin};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The agent's metrics/health port and the ports it must never take on a host-network node.
const METRICS_PORT: i32 = 9795;
const TAKEN_PORTS: &[(i32, &str)] = &[
    (10249, "kube-proxy metrics"),
    (10256, "kube-proxy healthz"),
    (9100, "node-exporter"),
];
const NAMESPACE: &str = "kube-system";
const CONTAINER: &str = "conntrack-reconciler";

/// The objects of the base, typed.
pub(crate) struct Base {
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    binding: ClusterRoleBinding,
    daemon_set: DaemonSet,
    service: Service,
    /// Every object, untyped, with the file it came from.
    raw: Vec<(PathBuf, Value)>,
}

/// Every YAML document of a file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|value| !value.is_null())
        .collect()
}

/// One object per file, as the README promises readers of `manifests/`.
fn single_object(path: &Path) -> Value {
    let mut docs = documents(path);
    assert_eq!(
        docs.len(),
        1,
        "{} must hold exactly one object",
        path.display()
    );
    docs.remove(0)
}

fn typed<T: serde::de::DeserializeOwned>(path: &Path, value: &Value) -> T {
    serde_yaml::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{} does not deserialize: {e}", path.display()))
}

fn load_base() -> Base {
    let raw = kustomization::resource_files(&manifests_dir())
        .unwrap()
        .into_iter()
        .map(|(path, _)| {
            let value = single_object(&path);
            (path, value)
        })
        .collect();
    base_from_objects(raw)
}

/// The five objects of the agent, typed, from any rendering (`path` names where each came from).
pub(crate) fn base_from_objects(objects: Vec<(PathBuf, Value)>) -> Base {
    let mut service_account = None;
    let mut cluster_role = None;
    let mut binding = None;
    let mut daemon_set = None;
    let mut service = None;
    let mut raw = Vec::new();
    for (path, value) in objects {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let slot_taken = match kind.as_str() {
            "ServiceAccount" => service_account.replace(typed(&path, &value)).is_some(),
            "ClusterRole" => cluster_role.replace(typed(&path, &value)).is_some(),
            "ClusterRoleBinding" => binding.replace(typed(&path, &value)).is_some(),
            "DaemonSet" => daemon_set.replace(typed(&path, &value)).is_some(),
            "Service" => service.replace(typed(&path, &value)).is_some(),
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        };
        assert!(!slot_taken, "{}: a second {kind}", path.display());
        raw.push((path, value));
    }
    Base {
        service_account: service_account.expect("a ServiceAccount"),
        cluster_role: cluster_role.expect("a ClusterRole"),
        binding: binding.expect("a ClusterRoleBinding"),
        daemon_set: daemon_set.expect("a DaemonSet"),
        service: service.expect("a Service"),
        raw,
    }
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    let spec = ds.spec.as_ref().expect("DaemonSet spec");
    spec.template.spec.as_ref().expect("pod template spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let containers = &pod_spec(ds).containers;
    assert_eq!(containers.len(), 1, "one container, the agent");
    assert_eq!(containers[0].name, CONTAINER);
    &containers[0]
}

fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    let env = container.env.as_ref()?;
    env.iter()
        .find(|var| var.name == name)
        .and_then(|var| var.value.as_deref())
}

#[test]
fn kustomization_lists_exactly_the_agent_objects() {
    let base = load_base();
    let kinds: BTreeSet<&str> = base
        .raw
        .iter()
        .map(|(_, value)| value["kind"].as_str().unwrap())
        .collect();
    let expected = BTreeSet::from([
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Service",
        "ServiceAccount",
    ]);
    assert_eq!(kinds, expected);
    assert_eq!(base.raw.len(), expected.len());
}

#[test]
fn builtin_parser_agrees_with_a_yaml_parser() {
    let dirs = [manifests_dir(), manifests_dir().join("base")]
        .into_iter()
        .chain(
            OVERLAYS
                .iter()
                .map(|o| manifests_dir().join("overlays").join(o)),
        );
    for dir in dirs {
        let ours = Kustomization::load(&dir).unwrap();
        let yaml = single_object(&dir.join("kustomization.yaml"));
        assert_eq!(
            yaml["kind"].as_str(),
            Some("Kustomization"),
            "{}",
            dir.display()
        );
        let strings = |key: &str| -> Vec<String> {
            yaml[key]
                .as_sequence()
                .map(|items| {
                    items
                        .iter()
                        .map(|item| match item {
                            Value::String(s) => s.clone(),
                            other => other["path"].as_str().unwrap().to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(ours.resources, strings("resources"), "{}", dir.display());
        assert_eq!(ours.patches, strings("patches"), "{}", dir.display());
        assert_eq!(ours.namespace.as_deref(), yaml["namespace"].as_str());
        let images = yaml["images"].as_sequence().cloned().unwrap_or_default();
        assert_eq!(ours.images.len(), images.len(), "{}", dir.display());
        for (image, value) in ours.images.iter().zip(&images) {
            assert_eq!(Some(image.name.as_str()), value["name"].as_str());
            assert_eq!(image.new_name.as_deref(), value["newName"].as_str());
            assert_eq!(image.new_tag.as_deref(), value["newTag"].as_str());
            assert_eq!(image.digest.as_deref(), value["digest"].as_str());
        }
    }
}

#[test]
fn namespaced_objects_live_in_kube_system() {
    let base = load_base();
    let kustomization = Kustomization::load(&manifests_dir().join("base")).unwrap();
    assert_eq!(kustomization.namespace.as_deref(), Some(NAMESPACE));
    for (path, value) in &base.raw {
        let kind = value["kind"].as_str().unwrap();
        let namespace = value["metadata"]["namespace"].as_str();
        if kind.starts_with("Cluster") {
            assert_eq!(namespace, None, "{}: cluster-scoped", path.display());
        } else {
            // Stated in the file too, so the built-in renderer (which ignores `namespace:`)
            // prints what kustomize prints.
            assert_eq!(namespace, Some(NAMESPACE), "{}", path.display());
        }
    }
}

#[test]
fn container_is_least_privilege() {
    check_container_is_least_privilege(&load_base());
}

/// The promise of [`container_is_least_privilege`], for any rendering of the objects (the Helm chart's too).
pub(crate) fn check_container_is_least_privilege(base: &Base) {
    let pod = pod_spec(&base.daemon_set);
    let container = agent_container(&base.daemon_set);
    let sc = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    // Root, stated rather than inherited from the image (see docs/operations.md).
    assert_eq!(sc.run_as_user, Some(0));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    let seccomp = sc
        .seccomp_profile
        .as_ref()
        .or_else(|| pod.security_context.as_ref()?.seccomp_profile.as_ref())
        .expect("a seccomp profile");
    assert_eq!(seccomp.type_, "RuntimeDefault");
    assert_ne!(pod.host_pid, Some(true), "no host PID namespace");
    assert_ne!(pod.host_ipc, Some(true), "no host IPC namespace");
    let host_paths = pod
        .volumes
        .iter()
        .flatten()
        .filter(|volume| volume.host_path.is_some())
        .count();
    assert_eq!(host_paths, 0, "no hostPath volumes: netlink needs no files");
}

#[test]
fn daemon_set_runs_on_every_node_as_node_critical() {
    check_daemon_set_runs_on_every_node_as_node_critical(&load_base());
}

/// The promise of [`daemon_set_runs_on_every_node_as_node_critical`], for any rendering of the objects (the Helm chart's too).
pub(crate) fn check_daemon_set_runs_on_every_node_as_node_critical(base: &Base) {
    let ds = &base.daemon_set;
    let pod = pod_spec(ds);
    assert_eq!(pod.host_network, Some(true), "the node's conntrack table");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "must tolerate every taint: {tolerations:?}"
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        base.service_account.metadata.name.as_deref()
    );
    let spec = ds.spec.as_ref().unwrap();
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let max_unavailable = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.max_unavailable.as_ref());
    assert_eq!(max_unavailable, Some(&IntOrString::String("10%".into())));
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    let labels = labels.expect("pod labels");
    for (key, value) in selector {
        assert_eq!(
            labels.get(key),
            Some(value),
            "selector {key} must match the pod"
        );
    }
}

#[test]
fn node_name_comes_from_the_downward_api() {
    check_node_name_comes_from_the_downward_api(&load_base());
}

/// The promise of [`node_name_comes_from_the_downward_api`], for any rendering of the objects (the Helm chart's too).
pub(crate) fn check_node_name_comes_from_the_downward_api(base: &Base) {
    let container = agent_container(&base.daemon_set);
    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|var| var.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|source| source.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
}

#[test]
fn agent_runs_with_conntrack_events() {
    check_agent_runs_with_conntrack_events(&load_base());
}

/// The promise of [`agent_runs_with_conntrack_events`], for any rendering of the objects (the Helm chart's too).
pub(crate) fn check_agent_runs_with_conntrack_events(base: &Base) {
    let args = agent_container(&base.daemon_set)
        .args
        .clone()
        .unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    // `--no-events` turns off the path that catches a stale flow the moment it is created;
    // it is a troubleshooting switch, not a default.
    assert!(!args.iter().any(|a| a == "--no-events"), "{args:?}");
    assert!(
        !args.iter().any(|a| a.starts_with("--dry-run")),
        "dry-run is an overlay"
    );
}

#[test]
fn probes_and_metrics_share_one_named_port_that_clashes_with_nothing() {
    check_probes_and_metrics_share_one_named_port_that_clashes_with_nothing(&load_base());
}

/// The promise of [`probes_and_metrics_share_one_named_port_that_clashes_with_nothing`], for any rendering of the objects (the Helm chart's too).
pub(crate) fn check_probes_and_metrics_share_one_named_port_that_clashes_with_nothing(base: &Base) {
    let container = agent_container(&base.daemon_set);
    let ports = container.ports.as_ref().expect("ports");
    let metrics = ports
        .iter()
        .find(|port| port.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(metrics.container_port, METRICS_PORT);
    for port in ports {
        for (taken, owner) in TAKEN_PORTS {
            assert_ne!(port.container_port, *taken, "{taken} belongs to {owner}");
        }
    }
    // The agent listens on POD_IP:9795 by default (cli.rs); an explicit address, if any, must
    // be on the named port too and must not open the server on every node interface.
    if let Some(addr) = env_value(container, "CONNTRACK_RECONCILER_METRICS_ADDR") {
        let listen: std::net::SocketAddr = addr.parse().expect("metrics addr is ip:port");
        assert_eq!(
            i32::from(listen.port()),
            METRICS_PORT,
            "the agent listens on the named port"
        );
        assert!(
            !listen.ip().is_unspecified(),
            "{addr}: the host-network agent must not listen on every node address"
        );
    }
    assert!(
        !container
            .args
            .iter()
            .flatten()
            .any(|arg| arg.starts_with("--metrics-addr")),
        "the listen address comes from POD_IP, not from args"
    );

    let named = IntOrString::String("metrics".into());
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, named, "{path} probes the named port");
    }
}

fn quantity<'a>(map: &'a Option<BTreeMap<String, Quantity>>, key: &str) -> Option<&'a str> {
    map.as_ref()?.get(key).map(|q| q.0.as_str())
}

#[test]
fn resources_fit_the_memory_target() {
    check_resources_fit_the_memory_target(&load_base());
}

/// The promise of [`resources_fit_the_memory_target`], for any rendering of the objects (the Helm chart's too).
pub(crate) fn check_resources_fit_the_memory_target(base: &Base) {
    let resources = agent_container(&base.daemon_set)
        .resources
        .as_ref()
        .expect("resources");
    assert_eq!(quantity(&resources.requests, "cpu"), Some("20m"));
    assert_eq!(quantity(&resources.requests, "memory"), Some("64Mi"));
    // The agent targets <= 96 MiB RSS at 10k services; 128Mi leaves headroom.
    assert_eq!(quantity(&resources.limits, "memory"), Some("128Mi"));
    assert_eq!(
        quantity(&resources.limits, "cpu"),
        None,
        "no CPU throttling"
    );
}

#[test]
fn image_is_set_by_kustomize() {
    let base = load_base();
    let image = agent_container(&base.daemon_set).image.as_deref();
    assert_eq!(
        image,
        Some(IMAGE_NAME),
        "the tag belongs in kustomization.yaml"
    );
    let kustomization = Kustomization::load(&manifests_dir().join("base")).unwrap();
    let entry = kustomization
        .images
        .iter()
        .find(|i| i.name == IMAGE_NAME)
        .expect("an images: entry for the agent");
    assert!(entry.new_tag.is_some() || entry.digest.is_some());
    assert_eq!(
        agent_container(&base.daemon_set)
            .image_pull_policy
            .as_deref(),
        Some("IfNotPresent")
    );
}

#[test]
fn metrics_server_binds_the_pod_ip_from_the_downward_api() {
    check_metrics_server_binds_the_pod_ip_from_the_downward_api(&load_base());
}

/// The promise of [`metrics_server_binds_the_pod_ip_from_the_downward_api`], for any rendering of the objects (the Helm chart's too).
pub(crate) fn check_metrics_server_binds_the_pod_ip_from_the_downward_api(base: &Base) {
    let container = agent_container(&base.daemon_set);
    let pod_ip = container
        .env
        .iter()
        .flatten()
        .find(|var| var.name == "POD_IP")
        .expect("POD_IP, the admin server's default listen address");
    let field = pod_ip
        .value_from
        .as_ref()
        .and_then(|source| source.field_ref.as_ref())
        .expect("POD_IP from a fieldRef");
    // On the host network the pod IP is the node's primary address: the one the kubelet
    // probes and Prometheus scrapes.
    assert_eq!(field.field_path, "status.podIP");
    assert_eq!(
        env_value(container, "CONNTRACK_RECONCILER_METRICS_ADDR"),
        None,
        "an explicit address would override POD_IP"
    );
}

/// Every base image of the agent's Dockerfile is pinned by digest, with the tag kept so a
/// reader knows which release the digest is.
#[test]
fn dockerfile_pins_base_images_by_tag_and_digest() {
    let path = crate::util::workspace_root().join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut stages = BTreeSet::new();
    let mut bases = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
        {
            continue;
        }
        let image = words
            .iter()
            .skip(1)
            .find(|w| !w.starts_with("--"))
            .unwrap_or_else(|| panic!("FROM without an image: {line}"));
        if let Some(alias) = words
            .iter()
            .position(|w| w.eq_ignore_ascii_case("AS"))
            .and_then(|i| words.get(i + 1))
        {
            stages.insert(alias.to_string());
        }
        if stages.contains(*image) && !line.contains('@') {
            continue; // an earlier stage of this file
        }
        bases += 1;
        let (reference, digest) = image
            .split_once("@sha256:")
            .unwrap_or_else(|| panic!("{image}: not pinned by digest"));
        assert!(
            digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{image}: a sha256 digest is 64 lowercase hex digits"
        );
        let name_end = reference.rfind('/').map_or(0, |slash| slash + 1);
        assert!(
            reference[name_end..].contains(':'),
            "{image}: keep the tag next to the digest, for readers"
        );
    }
    assert!(bases >= 2, "a build image and a runtime image: {bases}");
}

/// The agent lists (`check`, and every watch's initial list) and watches; it never reads a
/// single object by name, so not even `get` is granted.
#[test]
fn rbac_is_list_and_watch_only_and_exact() {
    check_rbac_is_list_and_watch_only_and_exact(&load_base());
}

/// The promise of [`rbac_is_list_and_watch_only_and_exact`], for any rendering of the objects (the Helm chart's too).
pub(crate) fn check_rbac_is_list_and_watch_only_and_exact(base: &Base) {
    let rules = base.cluster_role.rules.as_ref().expect("rules");
    let mut granted = BTreeSet::new();
    for rule in rules {
        assert!(rule.resource_names.is_none(), "no resourceNames needed");
        assert!(rule.non_resource_urls.is_none(), "no non-resource URLs");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        ["list", "watch"].contains(&verb.as_str()),
                        "{verb} on {resource}: only list and watch are used"
                    );
                    granted.insert((group.as_str(), resource.as_str(), verb.as_str()));
                }
            }
        }
    }
    let expected = BTreeSet::from([
        ("", "services", "list"),
        ("", "services", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
    ]);
    assert_eq!(granted, expected);
    assert!(base.cluster_role.aggregation_rule.is_none());
}

#[test]
fn binding_grants_the_role_to_the_agent_only() {
    check_binding_grants_the_role_to_the_agent_only(&load_base());
}

/// The promise of [`binding_grants_the_role_to_the_agent_only`], for any rendering of the objects (the Helm chart's too).
pub(crate) fn check_binding_grants_the_role_to_the_agent_only(base: &Base) {
    let binding = &base.binding;
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(
        Some(&binding.role_ref.name),
        base.cluster_role.metadata.name.as_ref()
    );
    let subjects = binding.subjects.as_ref().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(
        Some(&subjects[0].name),
        base.service_account.metadata.name.as_ref()
    );
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
}

#[test]
fn metrics_service_is_headless_and_selects_the_agent() {
    check_metrics_service_is_headless_and_selects_the_agent(&load_base());
}

/// The promise of [`metrics_service_is_headless_and_selects_the_agent`], for any rendering of the objects (the Helm chart's too).
pub(crate) fn check_metrics_service_is_headless_and_selects_the_agent(base: &Base) {
    let spec = base.service.spec.as_ref().expect("Service spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    let ports = spec.ports.as_ref().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("metrics"));
    assert_eq!(ports[0].port, METRICS_PORT);
    assert_eq!(
        ports[0].target_port,
        Some(IntOrString::String("metrics".into()))
    );
    let selector = spec.selector.as_ref().expect("selector");
    let pod_labels = base
        .daemon_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref();
    let pod_labels = pod_labels.and_then(|m| m.labels.as_ref()).unwrap();
    for (key, value) in selector {
        assert_eq!(pod_labels.get(key), Some(value), "selector {key}");
    }
}

fn overlay(name: &str) -> (PathBuf, Kustomization) {
    let dir = manifests_dir().join("overlays").join(name);
    let kustomization = Kustomization::load(&dir).unwrap();
    (dir, kustomization)
}

#[test]
fn every_overlay_builds_on_the_base() {
    for name in OVERLAYS {
        let (dir, kustomization) = overlay(name);
        // Every overlay starts from the base, directly or through another overlay (monitoring
        // adds rules and a dashboard to servicemonitor).
        let first = kustomization.resources.first().map(String::as_str);
        assert!(
            matches!(first, Some("../../base") | Some("../servicemonitor")),
            "{name}: first resource {first:?}"
        );
        assert!(dir.join(first.unwrap()).canonicalize().unwrap().is_dir());
        for (file, _) in kustomization::resource_files(&dir).unwrap() {
            single_object(&file);
        }
    }
}

#[test]
fn dry_run_overlay_sets_the_env_var_on_the_agent() {
    let base = load_base();
    let (dir, kustomization) = overlay("dry-run");
    assert_eq!(kustomization.patches.len(), 1);
    let patch = single_object(&dir.join(&kustomization.patches[0]));
    assert_eq!(patch["kind"].as_str(), Some("DaemonSet"));
    assert_eq!(
        patch["metadata"]["name"].as_str(),
        base.daemon_set.metadata.name.as_deref()
    );
    assert_eq!(patch["metadata"]["namespace"].as_str(), Some(NAMESPACE));
    let containers = patch["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0]["name"].as_str(), Some(CONTAINER));
    let env = containers[0]["env"].as_sequence().expect("env");
    assert!(env.iter().any(|var| {
        var["name"].as_str() == Some("CONNTRACK_RECONCILER_DRY_RUN")
            && var["value"].as_str() == Some("true")
    }));
}

#[test]
fn servicemonitor_overlay_scrapes_the_metrics_port() {
    let base = load_base();
    let (dir, kustomization) = overlay("servicemonitor");
    let files: Vec<PathBuf> = kustomization
        .resources
        .iter()
        .filter(|resource| *resource != "../../base")
        .map(|resource| dir.join(resource))
        .collect();
    assert_eq!(files.len(), 1, "the ServiceMonitor only");
    let monitor = single_object(&files[0]);
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(monitor["kind"].as_str(), Some("ServiceMonitor"));
    assert_eq!(monitor["metadata"]["namespace"].as_str(), Some(NAMESPACE));
    let names = monitor["spec"]["namespaceSelector"]["matchNames"].as_sequence();
    assert_eq!(names.map(|n| n.len()), Some(1));
    assert_eq!(names.unwrap()[0].as_str(), Some(NAMESPACE));
    let service_labels = base
        .service
        .metadata
        .labels
        .as_ref()
        .expect("Service labels");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        let key = key.as_str().unwrap();
        assert_eq!(service_labels.get(key).map(String::as_str), value.as_str());
    }
    let endpoints = monitor["spec"]["endpoints"]
        .as_sequence()
        .expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"].as_str(), Some("metrics"));
    assert_eq!(endpoints[0]["path"].as_str(), Some("/metrics"));
}

#[test]
fn e2e_overlay_only_swaps_the_image() {
    let (_, kustomization) = overlay("e2e");
    assert_eq!(kustomization.resources, ["../../base"]);
    assert!(kustomization.patches.is_empty());
    assert_eq!(kustomization.namespace, None);
    assert_eq!(kustomization.images.len(), 1);
    assert_eq!(kustomization.images[0].name, IMAGE_NAME);
    assert!(kustomization.images[0].new_name.is_some());
}

/// The built-in renderer must print the objects `kubectl kustomize` prints. Needs kubectl
/// (GitHub's runners have it); without it there is nothing to compare against.
#[test]
fn builtin_render_matches_kubectl_kustomize() {
    if !crate::util::have("kubectl") {
        eprintln!("SKIP builtin_render_matches_kubectl_kustomize: kubectl is not on PATH");
        return;
    }
    let parse = |text: &str| -> Vec<Value> {
        serde_yaml::Deserializer::from_str(text)
            .map(|doc| Value::deserialize(doc).unwrap())
            .filter(|value| !value.is_null())
            .collect()
    };
    let key = |value: &Value| {
        format!(
            "{}/{}",
            value["kind"].as_str().unwrap(),
            value["metadata"]["name"].as_str().unwrap()
        )
    };
    let sorted = |mut values: Vec<Value>| {
        values.sort_by_key(key);
        values
    };
    let ours = sorted(parse(&render_builtin(&manifests_dir(), &[]).unwrap()));
    let theirs = sorted(parse(
        &super::kubectl_kustomize_with_images(&manifests_dir(), &[], "").unwrap(),
    ));
    assert_eq!(ours.len(), theirs.len());
    for (ours, theirs) in ours.iter().zip(&theirs) {
        assert_eq!(ours, theirs, "{} differs from kubectl kustomize", key(ours));
    }
}

// --- The monitoring overlay: alerts and dashboard, held to the metrics the agent exports. ---

const MONITORING: &str = "monitoring";

/// The metric names `docs/metrics.md` lists (as they appear in `/metrics`), with their types.
/// The agent's own test (`crates/controller/tests/table_stats.rs`) checks this list against a
/// running agent's `/metrics`, so names checked against it here are names the binary exports.
fn documented_metrics() -> BTreeMap<String, String> {
    let path = crate::util::workspace_root().join("docs/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("| `conntrack_reconciler_") else {
            continue;
        };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`');
        let kind = cells[2];
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind),
            "docs/metrics.md: {name} has type {kind:?}"
        );
        assert!(!rest.is_empty());
        assert!(
            out.insert(name.to_string(), kind.to_string()).is_none(),
            "docs/metrics.md lists {name} twice"
        );
    }
    assert!(
        out.len() > 10,
        "docs/metrics.md lists too few metrics: {out:?}"
    );
    out
}

/// Alert names in the alerts table of `docs/metrics.md`.
fn documented_alerts() -> BTreeSet<String> {
    let path = crate::util::workspace_root().join("docs/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("| `Conntrack"))
        .map(|rest| format!("Conntrack{}", rest.split('`').next().unwrap()))
        .collect()
}

/// The agent's metric names a PromQL expression uses (identifiers outside string literals).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
            continue;
        }
        if current.starts_with("conntrack_reconciler_") {
            names.push(std::mem::take(&mut current));
        }
        current.clear();
        if c == '"' || c == '\'' || c == '`' {
            quote = Some(c);
        }
    }
    names
}

/// Brackets balance outside string literals, and the expression is not empty.
fn assert_well_formed_promql(what: &str, expr: &str) {
    assert!(!expr.trim().is_empty(), "{what}: empty expression");
    let mut stack = Vec::new();
    let mut quote: Option<char> = None;
    for c in expr.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '{' | '[' => stack.push(c),
            ')' | '}' | ']' => {
                let open = stack.pop();
                let expected = match c {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                assert_eq!(open, Some(expected), "{what}: unbalanced {c:?} in {expr}");
            }
            _ => {}
        }
    }
    assert!(quote.is_none(), "{what}: unterminated string in {expr}");
    assert!(stack.is_empty(), "{what}: unclosed {stack:?} in {expr}");
}

/// Every agent metric `expr` uses is exported: documented directly, or a histogram's
/// `_bucket` / `_sum` / `_count` series.
fn assert_uses_exported_metrics(what: &str, expr: &str, exported: &BTreeMap<String, String>) {
    let names = metric_names(expr);
    assert!(
        !names.is_empty(),
        "{what}: uses none of the agent's metrics: {expr}"
    );
    for name in names {
        if exported.contains_key(&name) {
            continue;
        }
        let histogram_series = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| exported.get(base).is_some_and(|k| k == "histogram"))
        });
        assert!(
            histogram_series,
            "{what}: {name} is not a metric the agent exports (docs/metrics.md)"
        );
    }
}

fn monitoring_object(file: &str) -> Value {
    single_object(&manifests_dir().join("overlays").join(MONITORING).join(file))
}

#[test]
fn monitoring_overlay_adds_rules_and_dashboard_to_the_servicemonitor_overlay() {
    let (dir, kustomization) = overlay(MONITORING);
    assert_eq!(
        kustomization.resources,
        ["../servicemonitor", "prometheusrule.yaml", "dashboard.yaml"]
    );
    assert!(kustomization.patches.is_empty());
    let yaml = single_object(&dir.join("kustomization.yaml"));
    assert_eq!(yaml["kind"].as_str(), Some("Kustomization"));
    let files = kustomization::resource_files(&dir).unwrap();
    let kinds: BTreeSet<String> = files
        .iter()
        .map(|(file, _)| single_object(file)["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in ["DaemonSet", "ServiceMonitor", "PrometheusRule", "ConfigMap"] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    for file in ["prometheusrule.yaml", "dashboard.yaml"] {
        let object = monitoring_object(file);
        assert_eq!(object["metadata"]["namespace"].as_str(), Some(NAMESPACE));
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/name"].as_str(),
            Some(CONTAINER)
        );
    }
}

#[test]
fn prometheus_rule_alerts_are_well_formed_documented_and_use_exported_metrics() {
    let exported = documented_metrics();
    let rule = monitoring_object("prometheusrule.yaml");
    assert_eq!(
        rule["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    let groups = rule["spec"]["groups"].as_sequence().expect("spec.groups");
    let mut alerts: BTreeMap<String, Value> = BTreeMap::new();
    let mut group_names = BTreeSet::new();
    for group in groups {
        let name = group["name"].as_str().expect("group name");
        assert!(group_names.insert(name), "group {name} twice");
        for rule in group["rules"].as_sequence().expect("rules") {
            let alert = rule["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_string();
            let expr = rule["expr"].as_str().expect("expr");
            assert_well_formed_promql(&alert, expr);
            assert_uses_exported_metrics(&alert, expr, &exported);
            let duration = rule["for"].as_str().expect("for");
            let minutes = duration
                .strip_suffix('m')
                .and_then(|m| m.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("{alert}: for {duration:?} is not whole minutes"));
            assert!(minutes <= 60, "{alert}: for {duration}");
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("warning" | "critical")),
                "{alert}: severity {severity:?}"
            );
            for key in ["summary", "description"] {
                let text = rule["annotations"][key].as_str().unwrap_or_default();
                assert!(!text.trim().is_empty(), "{alert}: annotation {key}");
            }
            assert!(
                alerts.insert(alert.clone(), rule.clone()).is_none(),
                "{alert} twice"
            );
        }
    }
    let names: BTreeSet<String> = alerts.keys().cloned().collect();
    assert_eq!(
        names,
        documented_alerts(),
        "alerts and docs/metrics.md disagree"
    );
    for required in [
        "ConntrackTableNearlyFull",
        "ConntrackInsertFailedRising",
        "ConntrackStaleFlowsNotDeleted",
        "ConntrackReconcilerNotReady",
    ] {
        assert!(names.contains(required), "{required} missing");
    }
    let full = &alerts["ConntrackTableNearlyFull"];
    assert_eq!(full["for"].as_str(), Some("5m"));
    let expr = full["expr"].as_str().unwrap();
    assert!(expr.contains("conntrack_reconciler_table_entries_limit") && expr.contains("> 0.8"));
    let insert = alerts["ConntrackInsertFailedRising"]["expr"]
        .as_str()
        .unwrap();
    assert!(
        insert.contains("increase(conntrack_reconciler_table_insert_failed_total")
            || insert.contains("rate(conntrack_reconciler_table_insert_failed_total"),
        "insert_failed is a counter: alert on its growth"
    );
    let stale = alerts["ConntrackStaleFlowsNotDeleted"]["expr"]
        .as_str()
        .unwrap();
    assert!(stale.contains("conntrack_reconciler_stale_flows_left"));
    let ready = alerts["ConntrackReconcilerNotReady"]["expr"]
        .as_str()
        .unwrap();
    assert!(ready.contains("conntrack_reconciler_ready == 0"));
}

#[test]
fn dashboard_is_well_formed_json_whose_queries_use_exported_metrics() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::serde_json::{self, Value as Json};
    let exported = documented_metrics();
    let path = manifests_dir()
        .join("overlays")
        .join(MONITORING)
        .join("dashboard.yaml");
    let map: ConfigMap = typed(&path, &single_object(&path));
    let labels = map.metadata.labels.as_ref().expect("labels");
    assert_eq!(
        labels.get("grafana_dashboard").map(String::as_str),
        Some("1")
    );
    let data = map.data.as_ref().expect("data");
    assert_eq!(data.len(), 1, "one dashboard");
    let (key, text) = data.iter().next().unwrap();
    assert!(key.ends_with(".json"), "{key}");
    let dashboard: Json = serde_json::from_str(text).expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"].as_str(), Some("conntrack-reconciler"));
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, BTreeSet::from(["datasource", "node"]));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: id"
        );
        titles.insert(title);
        assert_eq!(
            panel["datasource"]["uid"].as_str(),
            Some("${datasource}"),
            "{title}: datasource"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(w > 0 && x + w <= 24, "{title}: gridPos {grid}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            assert_well_formed_promql(title, expr);
            assert_uses_exported_metrics(title, expr, &exported);
            assert!(
                expr.contains("$node"),
                "{title}: not filtered by node: {expr}"
            );
        }
    }
    for required in [
        "Table fill",
        "Insert failures and drops",
        "Deletions by reason",
        "Pass latency",
        "Stale flows not deleted",
    ] {
        assert!(
            titles.contains(required),
            "panel {required:?} missing: {titles:?}"
        );
    }
}

#[test]
fn metric_names_skip_label_values_and_functions() {
    let names = metric_names(
        r#"rate(conntrack_reconciler_x_total{node=~"conntrack_reconciler_not_a_metric"}[5m]) or up{job="a"} == 0"#,
    );
    assert_eq!(names, ["conntrack_reconciler_x_total"]);
}
