//! The Helm chart against the real tier: `charts/conntrack-reconciler` rendered by the pinned
//! helm (`cargo xtask helm --print-path`), every object applied to a real kube-apiserver as the
//! admin (server-side apply, strict field validation), read back, its ClusterRole checked to be
//! exactly the agent's read-only grant, and the agent run as the chart's ServiceAccount until it
//! is ready without a single "forbidden".
//!
//! There is no kubelet and no scheduler: the DaemonSet gets no running pod, which is not what is
//! tested here; the harness runs the agent as that DaemonSet's pod would run.
//!
//! Needs root, the built components and helm (built with Go when not cached): outside CI the
//! test skips with one line when any is missing; in CI (`CI`,
//! `CONNTRACK_RECONCILER_REQUIRE_ROOT_TESTS`) it fails instead.

use anyhow::{Context, Result, bail};
mod common;

use common::lab;
use e2e::real::binaries::workspace_root;
use e2e::real::cluster::{APISERVER_IPV4, APISERVER_PORT, KUBERNETES_SERVICE_IP};
use e2e::real::{
    AgentOptions, ClusterConfig, K8sBinaries, ProxyFlavour, RealCluster, ShippedAgent,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The release name that gives the chart the object names kustomize uses.
const RELEASE: &str = "conntrack-reconciler";
/// Where the chart is installed (as the manifests install it).
const NAMESPACE: &str = "kube-system";
/// The field manager of this test's server-side applies.
const MANAGER: &str = "e2e-real-chart";

/// A missing prerequisite: None after one skip line, a panic in CI.
fn required<T>(test: &str, what: &str, found: Result<T>) -> Option<T> {
    match found {
        Ok(found) => Some(found),
        Err(why) if ctnetlink::testing::root_tests_required() => {
            panic!("{test}: {what} is required in CI: {why:#}")
        }
        Err(why) => {
            let why = format!("{why:#}");
            eprintln!(
                "skipping {test}: {what} unavailable ({})",
                why.lines().last().unwrap_or(&why)
            );
            None
        }
    }
}

/// The pinned helm: `cargo xtask helm --print-path` (builds it with Go when not cached).
fn helm() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["xtask", "helm", "--print-path"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .context("running cargo xtask helm --print-path")?;
    if !out.status.success() {
        bail!(
            "cargo xtask helm --print-path failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    if !path.is_file() {
        bail!("cargo xtask helm --print-path printed {}", path.display());
    }
    Ok(path)
}

/// `helm template` of the chart with its default values and the monitoring extras off (they
/// need the Prometheus Operator's CRDs, which a bare control plane does not have).
fn render(helm: &PathBuf) -> Result<String> {
    let out = Command::new(helm)
        .args([
            "template",
            RELEASE,
            "charts/conntrack-reconciler",
            "--namespace",
            NAMESPACE,
            "--set",
            "monitoring.serviceMonitor.enabled=false",
            "--set",
            "monitoring.prometheusRule.enabled=false",
            "--set",
            "monitoring.dashboard.enabled=false",
        ])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .context("running helm template")?;
    if !out.status.success() {
        bail!(
            "helm template failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `kind namespace/name` of a rendered object.
fn describe(object: &Value) -> String {
    let meta = &object["metadata"];
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = meta["name"].as_str().unwrap_or("?");
    match meta["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The API of a rendered object's kind, found by discovery on the real API server, and its
/// namespace (None: cluster-scoped).
async fn api_for(client: &kube::Client, object: &Value) -> Result<(Api<DynamicObject>, String)> {
    let api_version = object["apiVersion"].as_str().context("no apiVersion")?;
    let kind = object["kind"].as_str().context("no kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {api_version} {kind}"))?;
    let name = object["metadata"]["name"]
        .as_str()
        .context("no metadata.name")?
        .to_string();
    let api = match caps.scope {
        Scope::Namespaced => {
            let ns = object["metadata"]["namespace"].as_str().with_context(|| {
                format!("namespaced {kind} {name} rendered without a namespace")
            })?;
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    Ok((api, name))
}

/// Server-side apply of a rendered object; strict field validation makes a misspelt or
/// misplaced field an error instead of a silently dropped setting.
async fn apply(client: &kube::Client, object: &Value, dry_run: bool) -> Result<Value> {
    let (api, name) = api_for(client, object).await?;
    let mut params = PatchParams::apply(MANAGER).validation_strict();
    if dry_run {
        params = params.dry_run();
    }
    let applied = api
        .patch(&name, &params, &Patch::Apply(object))
        .await
        .with_context(|| format!("applying {}", describe(object)))?;
    Ok(serde_json::to_value(applied)?)
}

/// The stored object, read back.
async fn read_back(client: &kube::Client, object: &Value) -> Result<Value> {
    let (api, name) = api_for(client, object).await?;
    let live = api
        .get(&name)
        .await
        .with_context(|| format!("reading back {}", describe(object)))?;
    Ok(serde_json::to_value(live)?)
}

/// Paths where `live` lacks or changed what `rendered` sets (defaults the server adds are fine).
fn not_kept(rendered: &Value, live: &Value, path: &str, out: &mut Vec<String>) {
    match (rendered, live) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, value) in want {
                match have.get(key) {
                    Some(got) => not_kept(value, got, &format!("{path}.{key}"), out),
                    None if value.is_null() => {}
                    None => out.push(format!("{path}.{key}: {value} dropped")),
                }
            }
        }
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => {
            for (i, (value, got)) in want.iter().zip(have).enumerate() {
                not_kept(value, got, &format!("{path}[{i}]"), out);
            }
        }
        (want, have) if want != have => out.push(format!("{path}: {want} became {have}")),
        _ => {}
    }
}

/// (apiGroup, resource, verb) of every rule, or an error for anything wider than that.
fn grants(role: &ClusterRole) -> Result<BTreeSet<(String, String, String)>> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        if rule
            .non_resource_urls
            .as_ref()
            .is_some_and(|u| !u.is_empty())
        {
            bail!("a non-resource rule: {rule:?}");
        }
        if rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()) {
            bail!("resourceNames are not expected: {rule:?}");
        }
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    if role.aggregation_rule.is_some() {
        bail!("an aggregated ClusterRole");
    }
    Ok(out)
}

/// Whether the real authorizer lets the ServiceAccount `verb` `resource` cluster-wide.
async fn allowed(
    client: &kube::Client,
    user: &str,
    group: &str,
    resource: &str,
    verb: &str,
) -> Result<bool> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{NAMESPACE}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.into()),
                resource: Some(resource.into()),
                verb: Some(verb.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer
        .status
        .context("SubjectAccessReview without status")?
        .allowed)
}

#[test]
fn real_chart_applies_and_its_rbac_suffices() {
    let test = "real_chart_applies_and_its_rbac_suffices";
    let Some(bins) = K8sBinaries::for_test(test) else {
        return;
    };
    let Some(agent_bin) = required(
        test,
        "the agent binary",
        e2e::agent::locate().map_err(anyhow::Error::msg),
    ) else {
        return;
    };
    let t = Instant::now();
    let Some(helm) = required(test, "helm", helm()) else {
        return;
    };
    let text = render(&helm).unwrap();
    let shipped = ShippedAgent::from_yaml(&text).unwrap();
    eprintln!(
        "{test}: helm template rendered {} objects in {:?}: {}",
        shipped.objects.len(),
        t.elapsed(),
        shipped
            .objects
            .iter()
            .map(describe)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let kinds: BTreeSet<&str> = shipped
        .objects
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Service",
    ] {
        assert!(
            kinds.contains(kind),
            "the chart renders no {kind}: {kinds:?}"
        );
    }

    // kube-proxy: the agent reaches the API through the kubernetes Service, as in a pod.
    let t = Instant::now();
    let mut cluster = RealCluster::start(
        test,
        &bins,
        lab(),
        ClusterConfig {
            proxy: Some(ProxyFlavour::V1_34_IPTABLES),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{test}: starting the cluster: {e:#}"));
    eprintln!("{test}: cluster up after {:?}", t.elapsed());
    let client = cluster.client();

    // Every object, as a create on a fresh cluster: validation and admission (the
    // system-node-critical PriorityClass included), nothing stored.
    let t = Instant::now();
    for object in &shipped.objects {
        cluster
            .block_on(apply(&client, object, true))
            .unwrap_or_else(|e| panic!("{test}: dry run: {e:#}"));
    }
    eprintln!(
        "{test}: every object accepted by a dry-run apply in {:?}",
        t.elapsed()
    );

    // The harness installs RBAC with plain creates (once); it installs the chart's three
    // objects here so that start_agent below finds them installed. The apply that follows
    // covers every rendered object, those three included: same values, so this manager
    // co-owns them without a conflict, and strict validation still checks each whole object.
    cluster.install_agent_rbac(&shipped).unwrap();
    let t = Instant::now();
    for object in &shipped.objects {
        cluster
            .block_on(apply(&client, object, false))
            .unwrap_or_else(|e| panic!("{test}: {e:#}"));
    }
    eprintln!("{test}: every object applied in {:?}", t.elapsed());

    // Read back: stored, with every rendered field kept as rendered, and managed by the apply.
    for object in &shipped.objects {
        let live = cluster
            .block_on(read_back(&client, object))
            .unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let mut diffs = Vec::new();
        not_kept(object, &live, "", &mut diffs);
        assert!(
            diffs.is_empty(),
            "{test}: {} was not stored as rendered:\n{}",
            describe(object),
            diffs.join("\n")
        );
        let managers: Vec<&str> = live["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["operation"] == "Apply")
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert!(
            managers.contains(&MANAGER),
            "{test}: {} is not managed by the apply: {managers:?}",
            describe(object)
        );
    }

    // The ClusterRole as stored: exactly list and watch on the four resources the agent reads.
    let role_name = shipped.cluster_role.metadata.name.clone().unwrap();
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role = cluster.block_on(roles.get(&role_name)).unwrap();
    let got = grants(&role).unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let mut want = BTreeSet::new();
    for (group, resource) in [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "nodes"),
        ("", "pods"),
    ] {
        for verb in ["list", "watch"] {
            want.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    assert_eq!(got, want, "{test}: the ClusterRole's grant");

    // The real authorizer, through the binding: those granted, nothing more of note.
    let (sa_ns, sa_name) = shipped.service_account_ref().unwrap();
    assert_eq!(sa_ns, NAMESPACE);
    let user = format!("system:serviceaccount:{sa_ns}:{sa_name}");
    for (group, resource, verb) in &want {
        assert!(
            cluster
                .block_on(allowed(&client, &user, group, resource, verb))
                .unwrap(),
            "{test}: {user} may not {verb} {resource}"
        );
    }
    for (group, resource, verb) in [
        ("", "pods", "delete"),
        ("", "nodes", "patch"),
        ("", "services", "update"),
        ("", "secrets", "list"),
        ("discovery.k8s.io", "endpointslices", "create"),
    ] {
        assert!(
            !cluster
                .block_on(allowed(&client, &user, group, resource, verb))
                .unwrap(),
            "{test}: {user} may {verb} {resource}: more than the agent needs"
        );
    }

    // The agent as the chart's DaemonSet runs it, with a token of the chart's ServiceAccount,
    // through the kubernetes Service. kube-proxy must have programmed that Service first:
    // before, the agent's first connection attempt only ends with its connect timeout, which
    // would measure that timeout rather than the chart.
    let took = cluster
        .wait_service_programmed(
            KUBERNETES_SERVICE_IP.into(),
            &[SocketAddr::new(APISERVER_IPV4.into(), APISERVER_PORT)],
            &[],
            Duration::from_secs(30),
        )
        .unwrap();
    eprintln!("{test}: kube-proxy programmed the kubernetes Service after {took:?}");
    let mut agent = cluster
        .start_agent(&shipped, &AgentOptions::shipped(&agent_bin))
        .unwrap();
    let ready = agent.wait_ready(Duration::from_secs(60)).unwrap();
    eprintln!(
        "{test}: agent ready after {ready:?} as {user} ({})",
        agent.admin_addr()
    );
    let log = agent.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "{test}: the chart's RBAC must suffice:\n{log}"
    );
    agent.component().stop(Duration::from_secs(5));
}
