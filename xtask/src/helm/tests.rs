//! The chart's checks: real `helm` (built from the pinned module) against the kustomize
//! manifests and the manifest checks of `manifests::checks`.

use super::*;
use crate::manifests::{self, checks};
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// The release name that gives the objects kustomize's names.
const RELEASE: &str = "conntrack-reconciler";
const NAMESPACE: &str = "kube-system";
const DAEMON_SET: &str = "DaemonSet/conntrack-reconciler";
const SERVICE: &str = "Service/conntrack-reconciler-metrics";
const CONTAINER: &str = "DaemonSet/conntrack-reconciler.spec.template.spec.containers[0]";

/// Rendered objects by `Kind/name`.
type Objects = BTreeMap<String, Value>;

/// The built helm, or `None` (after one line saying why) when Go is missing outside CI.
fn helm() -> Option<&'static Path> {
    static HELM: OnceLock<Option<PathBuf>> = OnceLock::new();
    HELM.get_or_init(|| match ensure() {
        Ok(path) => Some(path),
        Err(why) => {
            let go_ok = prereqs::go_version().is_some_and(|v| v >= prereqs::MIN_GO);
            if go_ok || prereqs::root_tests_required() {
                panic!("the Helm chart tests must run here: {why:#}");
            }
            eprintln!("SKIP the Helm chart tests: {why:#}");
            None
        }
    })
    .as_deref()
}

fn parse(text: &str) -> Objects {
    let mut objects = Objects::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).expect("rendered YAML parses");
        if value.is_null() {
            continue;
        }
        let key = format!(
            "{}/{}",
            value["kind"].as_str().expect("kind"),
            value["metadata"]["name"].as_str().expect("metadata.name")
        );
        assert!(objects.insert(key.clone(), value).is_none(), "{key} twice");
    }
    objects
}

/// `helm template` of the chart as release `conntrack-reconciler` in kube-system.
fn template(helm: &Path, args: &[&str]) -> Result<Objects> {
    let chart = chart_dir();
    let mut all = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
    ];
    all.extend(args);
    Ok(parse(&helm_output(helm, &all)?))
}

/// `kubectl kustomize` of a directory under `manifests/`, or xtask's built-in renderer (which
/// `manifests::checks` holds to kubectl's output) without kubectl.
fn kustomize(relative: &str) -> Objects {
    let dir = manifests::manifests_dir().join(relative);
    let text = if util::have("kubectl") {
        manifests::kubectl_kustomize_with_images(&dir, &[], "").unwrap()
    } else {
        manifests::render_builtin(&dir, &[]).unwrap()
    };
    parse(&text)
}

/// Paths (`Kind/name.a.b[2].c`) where two renders differ.
fn differences(a: &Objects, b: &Objects) -> BTreeSet<String> {
    fn walk(a: Option<&Value>, b: Option<&Value>, path: String, out: &mut BTreeSet<String>) {
        match (a, b) {
            (Some(Value::Mapping(a)), Some(Value::Mapping(b))) => {
                let keys: BTreeSet<String> = a
                    .keys()
                    .chain(b.keys())
                    .map(|k| k.as_str().expect("string keys").to_string())
                    .collect();
                for key in keys {
                    walk(a.get(&key), b.get(&key), format!("{path}.{key}"), out);
                }
            }
            (Some(Value::Sequence(a)), Some(Value::Sequence(b))) if a.len() == b.len() => {
                for (i, (a, b)) in a.iter().zip(b).enumerate() {
                    walk(Some(a), Some(b), format!("{path}[{i}]"), out);
                }
            }
            (a, b) if a == b => {}
            _ => {
                out.insert(path);
            }
        }
    }
    let mut out = BTreeSet::new();
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        walk(a.get(key), b.get(key), key.clone(), &mut out);
    }
    out
}

/// Which of the manifest checks an option may legitimately change.
#[derive(Clone, Copy, Default)]
struct Relax {
    /// Tolerations, node selector, priority class.
    scheduling: bool,
    /// The metrics port.
    port: bool,
    /// Requests and limits.
    resources: bool,
}

/// The manifest checks of `manifests::checks` on a render: least privilege, read-only RBAC bound
/// to the agent alone, the downward API, the event path, probes, ports and resources (the last
/// three unless the option under test is about them).
fn check_promises(objects: &Objects, relax: Relax) {
    let agent_kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Service",
    ];
    let agent: Vec<(PathBuf, Value)> = objects
        .iter()
        .filter(|(_, v)| agent_kinds.contains(&v["kind"].as_str().unwrap()))
        .map(|(key, v)| (PathBuf::from(format!("helm template: {key}")), v.clone()))
        .collect();
    let base = checks::base_from_objects(agent);
    checks::check_container_is_least_privilege(&base);
    checks::check_node_name_comes_from_the_downward_api(&base);
    checks::check_agent_runs_with_conntrack_events(&base);
    checks::check_rbac_is_list_and_watch_only_and_exact(&base);
    checks::check_binding_grants_the_role_to_the_agent_only(&base);
    if !relax.scheduling {
        checks::check_daemon_set_runs_on_every_node_as_node_critical(&base);
    }
    if !relax.port {
        checks::check_probes_and_metrics_share_one_named_port_that_clashes_with_nothing(&base);
        checks::check_metrics_server_binds_the_pod_ip_from_the_downward_api(&base);
        checks::check_metrics_service_is_headless_and_selects_the_agent(&base);
    }
    if !relax.resources {
        checks::check_resources_fit_the_memory_target(&base);
    }
}

fn container(objects: &Objects) -> &Value {
    &objects[DAEMON_SET]["spec"]["template"]["spec"]["containers"][0]
}

fn env_value<'a>(objects: &'a Objects, name: &str) -> Option<&'a str> {
    container(objects)["env"]
        .as_sequence()?
        .iter()
        .find(|var| var["name"].as_str() == Some(name))
        .and_then(|var| var["value"].as_str())
}

#[test]
fn chart_passes_helm_lint_strict_with_defaults_and_with_everything_on() {
    let Some(helm) = helm() else { return };
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    helm_output(helm, &["lint", "--strict", chart, "--namespace", NAMESPACE]).unwrap();
    helm_output(
        helm,
        &[
            "lint",
            "--strict",
            chart,
            "--namespace",
            NAMESPACE,
            "--set",
            "monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,\
             monitoring.dashboard.enabled=true,agent.dryRun=true,agent.zone=3,\
             metrics.port=9796,podAnnotations.a=b",
            "--set-json",
            r#"agent.followUps=["1s","5s"]"#,
        ],
    )
    .unwrap();
}

#[test]
fn default_render_is_the_kustomize_base_object_for_object() {
    let Some(helm) = helm() else { return };
    let ours = template(helm, &[]).unwrap();
    let theirs = kustomize("");
    let keys = |o: &Objects| o.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours), keys(&theirs), "the same objects");
    let differ = differences(&ours, &theirs);
    assert!(
        differ.is_empty(),
        "helm template (defaults) differs from kubectl kustomize manifests/ at {differ:#?}"
    );
    check_promises(&ours, Relax::default());
}

#[test]
fn monitoring_extras_are_off_by_default_and_render_the_monitoring_overlay() {
    let Some(helm) = helm() else { return };
    let default = template(helm, &[]).unwrap();
    let all = template(
        helm,
        &[
            "--set",
            "monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,\
             monitoring.dashboard.enabled=true",
        ],
    )
    .unwrap();
    let overlay = kustomize("overlays/monitoring");
    let differ = differences(&all, &overlay);
    assert!(
        differ.is_empty(),
        "helm template (monitoring on) differs from kubectl kustomize \
         manifests/overlays/monitoring at {differ:#?}; the chart's files/ copy the overlay's \
         prometheusrule.yaml spec and dashboard.yaml JSON"
    );
    check_promises(&all, Relax::default());
    for (value, kind) in [
        ("serviceMonitor", "ServiceMonitor"),
        ("prometheusRule", "PrometheusRule"),
        ("dashboard", "ConfigMap"),
    ] {
        assert!(!default.keys().any(|k| k.starts_with(&format!("{kind}/"))));
        let one = template(
            helm,
            &["--set", &format!("monitoring.{value}.enabled=true")],
        )
        .unwrap();
        let added: Vec<&String> = one.keys().filter(|k| !default.contains_key(*k)).collect();
        assert_eq!(added.len(), 1, "{value}: {added:?}");
        assert!(added[0].starts_with(&format!("{kind}/")), "{added:?}");
        assert!(
            differences(&default, &one)
                .iter()
                .all(|p| p.starts_with(added[0]))
        );
    }
    // Extra labels for a Prometheus selector land on the objects, not on selectors.
    let labelled = template(
        helm,
        &[
            "--set",
            "monitoring.serviceMonitor.enabled=true,monitoring.serviceMonitor.labels.release=prom",
        ],
    )
    .unwrap();
    let monitor = &labelled["ServiceMonitor/conntrack-reconciler"];
    assert_eq!(
        monitor["metadata"]["labels"]["release"].as_str(),
        Some("prom")
    );
    assert!(monitor["spec"]["selector"]["matchLabels"]["release"].is_null());
}

#[test]
fn dry_run_renders_the_dry_run_overlay() {
    let Some(helm) = helm() else { return };
    let ours = template(helm, &["--set", "agent.dryRun=true"]).unwrap();
    assert_eq!(
        env_value(&ours, "CONNTRACK_RECONCILER_DRY_RUN"),
        Some("true")
    );
    check_promises(&ours, Relax::default());
    if !util::have("kubectl") {
        eprintln!("kubectl is not on PATH: the dry-run overlay (a patch) is compared by env only");
        return;
    }
    // kustomize's strategic merge may order env differently: compare env as a set.
    let sorted_env = |mut objects: Objects| {
        let env = objects
            .get_mut(DAEMON_SET)
            .and_then(|ds| ds["spec"]["template"]["spec"]["containers"][0]["env"].as_sequence_mut())
            .unwrap();
        env.sort_by_key(|var| var["name"].as_str().unwrap().to_string());
        objects
    };
    let differ = differences(
        &sorted_env(ours),
        &sorted_env(kustomize("overlays/dry-run")),
    );
    assert!(
        differ.is_empty(),
        "differs from the dry-run overlay at {differ:#?}"
    );
}

/// One option of values.yaml: what it sets, which fields of the default render it may change
/// (path prefixes; each must change), and what the changed fields must say.
struct Case {
    args: &'static [&'static str],
    changes: &'static [&'static str],
    relax: Relax,
    check: fn(&Objects),
}

const fn case(args: &'static [&'static str], changes: &'static [&'static str]) -> Case {
    Case {
        args,
        changes,
        relax: Relax {
            scheduling: false,
            port: false,
            resources: false,
        },
        check: |_| {},
    }
}

#[test]
fn every_option_changes_exactly_what_it_names_and_keeps_the_promises() {
    let Some(helm) = helm() else { return };
    let scheduling = Relax {
        scheduling: true,
        ..Relax::default()
    };
    let cases = [
        Case {
            check: |o| {
                assert_eq!(
                    container(o)["image"].as_str(),
                    Some("registry.example/ctr:v9")
                )
            },
            ..case(
                &[
                    "--set",
                    "image.repository=registry.example/ctr,image.tag=v9",
                ],
                &[".spec.template.spec.containers[0].image"],
            )
        },
        Case {
            check: |o| {
                let image = container(o)["image"].as_str().unwrap();
                assert_eq!(
                    image,
                    format!("{}@sha256:{}", manifests::IMAGE_NAME, "a".repeat(64))
                );
            },
            ..case(
                &[
                    "--set",
                    "image.digest=sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                ],
                &[".spec.template.spec.containers[0].image"],
            )
        },
        case(
            &["--set", "image.pullPolicy=Always"],
            &[".spec.template.spec.containers[0].imagePullPolicy"],
        ),
        Case {
            relax: Relax {
                resources: true,
                ..Relax::default()
            },
            check: |o| {
                let resources = &container(o)["resources"];
                assert_eq!(resources["requests"]["cpu"].as_str(), Some("50m"));
                assert_eq!(resources["limits"]["memory"].as_str(), Some("256Mi"));
            },
            ..case(
                &[
                    "--set",
                    "resources.requests.cpu=50m,resources.limits.memory=256Mi",
                ],
                &[
                    ".spec.template.spec.containers[0].resources.requests.cpu",
                    ".spec.template.spec.containers[0].resources.limits.memory",
                ],
            )
        },
        Case {
            relax: scheduling,
            ..case(
                &[
                    "--set-json",
                    r#"tolerations=[{"key":"dedicated","operator":"Equal","value":"dns","effect":"NoSchedule"}]"#,
                ],
                &[".spec.template.spec.tolerations"],
            )
        },
        Case {
            relax: scheduling,
            ..case(
                &["--set", "nodeSelector.pool=infra"],
                &[".spec.template.spec.nodeSelector.pool"],
            )
        },
        Case {
            relax: scheduling,
            ..case(
                &["--set", "priorityClassName=agents"],
                &[".spec.template.spec.priorityClassName"],
            )
        },
        Case {
            relax: scheduling,
            ..case(
                &[
                    "--set-json",
                    r#"affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"a","operator":"Exists"}]}]}}}"#,
                ],
                &[".spec.template.spec.affinity"],
            )
        },
        case(
            &["--set", "imagePullSecrets[0].name=pull"],
            &[".spec.template.spec.imagePullSecrets"],
        ),
        case(
            &["--set", "podAnnotations.example\\.com/team=net"],
            &[".spec.template.metadata.annotations"],
        ),
        Case {
            check: |o| {
                let args = container(o)["args"].as_sequence().unwrap();
                assert_eq!(args.last().unwrap().as_str(), Some("--family=ipv4"));
            },
            ..case(
                &["--set", "extraArgs[0]=--family=ipv4"],
                &[".spec.template.spec.containers[0].args"],
            )
        },
        Case {
            check: |o| assert_eq!(env_value(o, "RUST_LOG"), Some("debug")),
            ..case(
                &[
                    "--set-json",
                    r#"extraEnv=[{"name":"RUST_LOG","value":"debug"}]"#,
                ],
                &[".spec.template.spec.containers[0].env"],
            )
        },
        Case {
            relax: Relax {
                port: true,
                ..Relax::default()
            },
            check: |o| {
                let port = &container(o)["ports"][0];
                assert_eq!(port["containerPort"].as_u64(), Some(9796));
                assert_eq!(port["name"].as_str(), Some("metrics"));
                assert_eq!(
                    env_value(o, "CONNTRACK_RECONCILER_METRICS_PORT"),
                    Some("9796")
                );
                assert_eq!(env_value(o, "CONNTRACK_RECONCILER_METRICS_ADDR"), None);
                let service = &o[SERVICE]["spec"]["ports"][0];
                assert_eq!(service["port"].as_u64(), Some(9796));
                assert_eq!(service["targetPort"].as_str(), Some("metrics"));
            },
            ..case(
                &["--set", "metrics.port=9796"],
                &[
                    ".spec.template.spec.containers[0].ports[0].containerPort",
                    ".spec.template.spec.containers[0].env",
                    "Service/conntrack-reconciler-metrics.spec.ports[0].port",
                ],
            )
        },
        Case {
            relax: scheduling,
            ..case(
                &["--set", "updateStrategy.rollingUpdate.maxUnavailable=1"],
                &[".spec.updateStrategy.rollingUpdate.maxUnavailable"],
            )
        },
    ];
    let default = template(helm, &[]).unwrap();
    for case in &cases {
        let what = case.args.join(" ");
        let render = template(helm, case.args).unwrap_or_else(|e| panic!("{what}: {e}"));
        let changed = differences(&default, &render);
        let prefixes: Vec<String> = case
            .changes
            .iter()
            .map(|p| {
                if p.starts_with('.') {
                    format!("{DAEMON_SET}{p}")
                } else {
                    p.to_string()
                }
            })
            .collect();
        for path in &changed {
            assert!(
                prefixes.iter().any(|p| path.starts_with(p.as_str())),
                "{what}: changed {path}, which it does not name"
            );
        }
        for prefix in &prefixes {
            assert!(
                changed.iter().any(|p| p.starts_with(prefix.as_str())),
                "{what}: did not change {prefix}"
            );
        }
        (case.check)(&render);
        check_promises(&render, case.relax);
    }
}

/// Every flag of `run` a cluster operator sets has a value in the chart; each becomes its
/// environment variable, verbatim, and changes nothing else.
#[test]
fn every_agent_flag_becomes_its_environment_variable() {
    let Some(helm) = helm() else { return };
    // (value, --set or --set-json argument, variable, value the agent reads)
    let flags: &[(&str, &str, &str, &str)] = &[
        ("--set", "agent.dryRun=true", "DRY_RUN", "true"),
        (
            "--set",
            "agent.maxDeletesPerPass=500",
            "MAX_DELETES_PER_PASS",
            "500",
        ),
        // JSON numbers arrive as floats: large ones must not print as 1e+06.
        (
            "--set-json",
            "agent.maxDeletesPerPass=1000000",
            "MAX_DELETES_PER_PASS",
            "1000000",
        ),
        (
            "--set-json",
            "agent.maxDeletesPerPass=0",
            "MAX_DELETES_PER_PASS",
            "0",
        ),
        ("--set", "agent.family=ipv4", "FAMILY", "ipv4"),
        ("--set", "agent.resyncInterval=2m", "RESYNC_INTERVAL", "2m"),
        ("--set", "agent.noEvents=true", "NO_EVENTS", "true"),
        (
            "--set",
            "agent.eventDeletesPerSecond=20",
            "EVENT_DELETES_PER_SECOND",
            "20",
        ),
        ("--set", "agent.tombstoneTtl=10m", "TOMBSTONE_TTL", "10m"),
        ("--set", "agent.debounce=50ms", "DEBOUNCE", "50ms"),
        ("--set", "agent.maxDelay=2s", "MAX_DELAY", "2s"),
        (
            "--set-json",
            r#"agent.followUps=["2s","5s"]"#,
            "FOLLOW_UPS",
            "2s,5s",
        ),
        (
            "--set",
            "agent.watchIdleTimeout=2m",
            "WATCH_IDLE_TIMEOUT",
            "2m",
        ),
        (
            "--set",
            "agent.watchStaleAfter=3m",
            "WATCH_STALE_AFTER",
            "3m",
        ),
        (
            "--set",
            "agent.unseenBackendGrace=10s",
            "UNSEEN_BACKEND_GRACE",
            "10s",
        ),
        (
            "--set-json",
            r#"agent.nodeportAddresses=["10.0.0.0/8","fd00::/64"]"#,
            "NODEPORT_ADDRESSES",
            "10.0.0.0/8,fd00::/64",
        ),
        (
            "--set-json",
            r#"agent.nodeportAddresses=["primary"]"#,
            "NODEPORT_ADDRESSES",
            "primary",
        ),
        ("--set", "agent.zone=0", "ZONE", "0"),
        ("--set", "agent.zone=7", "ZONE", "7"),
    ];
    let default = template(helm, &[]).unwrap();
    let mut covered = BTreeSet::new();
    for (how, set, var, value) in flags {
        let render = template(helm, &[how, set]).unwrap_or_else(|e| panic!("{set}: {e}"));
        let name = format!("CONNTRACK_RECONCILER_{var}");
        assert_eq!(env_value(&render, &name), Some(*value), "{set}");
        let changed = differences(&default, &render);
        let env = format!("{CONTAINER}.env");
        assert_eq!(changed, BTreeSet::from([env]), "{set}");
        // NO_EVENTS is a value of the chart, so the event-path check (which reads args) holds.
        check_promises(&render, Relax::default());
        covered.insert(name);
    }
    // Every variable of cli.rs but those the chart sets itself or that make no sense in a
    // DaemonSet (another namespace's table, a kubeconfig file).
    let cli = std::fs::read_to_string(util::workspace_root().join("crates/controller/src/cli.rs"))
        .unwrap();
    let not_values = [
        "CONNTRACK_RECONCILER_KUBECONFIG",
        "CONNTRACK_RECONCILER_NETNS",
        "CONNTRACK_RECONCILER_METRICS_ADDR",
        "CONNTRACK_RECONCILER_METRICS_PORT",
        "CONNTRACK_RECONCILER_LOG_FORMAT",
    ];
    let flags_of_cli: BTreeSet<String> = cli
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| name.starts_with("CONNTRACK_RECONCILER_") && !not_values.contains(name))
        .map(str::to_string)
        .collect();
    assert!(flags_of_cli.len() >= 15, "{flags_of_cli:?}");
    let missing: Vec<&String> = flags_of_cli.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "flags of run without a chart value: {missing:?}"
    );
}

#[test]
fn schema_rejects_bad_values_naming_the_value() {
    let Some(helm) = helm() else { return };
    let bad: &[(&[&str], &str)] = &[
        (&["--set", "agent.dryrun=true"], "dryrun"),
        (&["--set", "agent.zone=70000"], "/agent/zone"),
        (&["--set", "agent.family=ipv5"], "/agent/family"),
        (
            &["--set", "agent.watchIdleTimeout=soon"],
            "/agent/watchIdleTimeout",
        ),
        (
            &["--set-json", "agent.maxDeletesPerPass=-1"],
            "/agent/maxDeletesPerPass",
        ),
        (
            &["--set-json", r#"agent.followUps=["1s","later"]"#],
            "/agent/followUps",
        ),
        (
            &["--set-json", r#"agent.nodeportAddresses=["eth0"]"#],
            "/agent/nodeportAddresses",
        ),
        (&["--set", "image.digest=sha256:abc"], "/image/digest"),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (&["--set", "extraArgs[0]=run"], "/extraArgs/0"),
        (
            &["--set", "monitoring.serviceMonitor.enabled=yes"],
            "/monitoring/serviceMonitor/enabled",
        ),
        (&["--set", "resources.request.cpu=1"], "request"),
    ];
    for (args, names) in bad {
        let error = match template(helm, args) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains("values don't meet the specifications of the schema"),
            "{args:?}: {error}"
        );
        assert!(
            error.contains(names),
            "{args:?}: the error does not name {names}: {error}"
        );
    }
    // A port that clashes with the node's own services: refused by the template, in words.
    let error = template(helm, &["--set", "metrics.port=10249"])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("metrics.port 10249 is kube-proxy's metrics port"),
        "{error}"
    );
}

/// The chart's version follows the workspace's, and its image tag is the kustomize base's.
#[test]
fn chart_version_and_image_tag_follow_the_workspace() {
    let text = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let chart: Value = serde_yaml::from_str(&text).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        chart["version"].as_str(),
        Some(version),
        "Chart.yaml version"
    );
    let app = format!("v{version}");
    assert_eq!(chart["appVersion"].as_str(), Some(app.as_str()));
    let base = kustomize("");
    let image = base[DAEMON_SET]["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert_eq!(image, format!("{}:{app}", manifests::IMAGE_NAME));
}

#[test]
fn go_mod_lines_are_read() {
    let go_mod = "module m\n\nrequire helm.sh/helm/v3 v3.22.0\n\nrequire (\n\tk8s.io/client-go v0.37.0 // indirect\n)\n";
    assert_eq!(required_version(go_mod, "helm.sh/helm/v3"), Some("v3.22.0"));
    assert_eq!(
        required_version(go_mod, "k8s.io/client-go"),
        Some("v0.37.0")
    );
    assert_eq!(required_version(go_mod, "k8s.io/api"), None);
    assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
}
