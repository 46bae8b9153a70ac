//! Desired state from files, for `check --state`: exactly what `kubectl get … -o yaml|json`
//! prints (a `v1 List`, typed lists, single objects, multi-document YAML).
//!
//! JSON is read by the YAML parser (JSON is YAML), so there is one code path. Kinds the engine
//! does not use are skipped with a warning; an object of a used kind that does not deserialize is
//! an error naming the file and the object, because acting on a partly read state could delete
//! healthy flows.

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde_yaml::Value;
use std::path::Path;

/// The objects read from state files.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// v1 Services.
    pub services: Vec<Service>,
    /// discovery.k8s.io/v1 EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// v1 Nodes.
    pub nodes: Vec<Node>,
    /// v1 Pods.
    pub pods: Vec<Pod>,
    /// Objects skipped, with why.
    pub warnings: Vec<String>,
}

impl ClusterState {
    /// Reads and merges every file.
    pub fn from_files(paths: &[impl AsRef<Path>]) -> Result<Self> {
        let mut state = ClusterState::default();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading state file {}", path.display()))?;
            state
                .add_text(&text)
                .with_context(|| format!("state file {}", path.display()))?;
        }
        Ok(state)
    }

    /// Adds every object of one file's text.
    pub fn add_text(&mut self, text: &str) -> Result<()> {
        if text.trim_start().starts_with(['{', '[']) {
            // JSON (`-o json`): serde_json's parser is several times faster and leaner than the
            // YAML one on large lists; the value type, and so the rest, is the same.
            let value = Value::deserialize(&mut serde_json::Deserializer::from_str(text))
                .map_err(|e| anyhow!("not valid JSON: {e}"))?;
            return self.add_value(value);
        }
        for (n, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(document)
                .map_err(|e| anyhow!("document {}: not valid YAML or JSON: {e}", n + 1))?;
            if value.is_null() {
                continue; // an empty document, e.g. a trailing `---`
            }
            self.add_value(value)
                .with_context(|| format!("document {}", n + 1))?;
        }
        Ok(())
    }

    fn add_value(&mut self, mut value: Value) -> Result<()> {
        let Value::Mapping(map) = &mut value else {
            bail!(
                "expected a Kubernetes object (a mapping), found {}",
                type_name(&value)
            );
        };
        let field = |k: &str| {
            map.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        if kind.ends_with("List") {
            // Items are taken, not cloned, and each is dropped once converted: a large list
            // costs its parsed tree once.
            let items = match map.remove("items") {
                Some(Value::Sequence(items)) => items,
                Some(Value::Null) | None => Vec::new(),
                Some(other) => bail!("{kind}: items is {}, not a list", type_name(&other)),
            };
            for (i, item) in items.into_iter().enumerate() {
                self.add_value(item)
                    .with_context(|| format!("{kind} item {i}"))?;
            }
            return Ok(());
        }
        let name = object_name(map);
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => self.services.push(typed(value, &kind, &name)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                self.slices.push(typed(value, &kind, &name)?)
            }
            ("v1", "Node") => self.nodes.push(typed(value, &kind, &name)?),
            ("v1", "Pod") => self.pods.push(typed(value, &kind, &name)?),
            ("", _) | (_, "") => bail!("object {name} has no apiVersion or kind"),
            _ => self.warnings.push(format!(
                "skipped {api_version} {kind} {name}: not used by the reconciler"
            )),
        }
        Ok(())
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: Value, kind: &str, name: &str) -> Result<T> {
    serde_yaml::from_value(value).map_err(|e| anyhow!("{kind} {name}: {e}"))
}

fn object_name(map: &serde_yaml::Mapping) -> String {
    let meta = map.get("metadata");
    let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    match (get("namespace"), get("name")) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => "<unnamed>".to_owned(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: dns, namespace: kube-system}
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10]
    ports: [{name: dns, port: 53, protocol: UDP, targetPort: 53}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: dns-abc
    namespace: kube-system
    labels: {kubernetes.io/service-name: dns}
  addressType: IPv4
  endpoints:
  - addresses: [10.244.0.5]
    conditions: {ready: true}
  ports: [{name: dns, port: 53, protocol: UDP}]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: x, namespace: y}
"#;

    #[test]
    fn reads_a_v1_list_and_skips_unused_kinds() {
        let mut s = ClusterState::default();
        s.add_text(LIST).unwrap();
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.slices.len(), 1);
        assert_eq!(s.warnings.len(), 1);
        assert!(s.warnings[0].contains("ConfigMap y/x"), "{:?}", s.warnings);
    }

    #[test]
    fn reads_multi_document_yaml_and_json() {
        let mut s = ClusterState::default();
        s.add_text("apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: d}\n")
            .unwrap();
        s.add_text(r#"{"apiVersion":"v1","kind":"ServiceList","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"b"},"spec":{"ports":[{"port":53,"protocol":"UDP"}]}}]}"#)
            .unwrap();
        assert_eq!((s.nodes.len(), s.pods.len(), s.services.len()), (1, 1, 1));
    }

    #[test]
    fn broken_yaml_is_an_error_naming_the_document() {
        let err = ClusterState::default().add_text("a: [1, 2\n").unwrap_err();
        assert!(format!("{err:#}").contains("document 1"), "{err:#}");
    }

    #[test]
    fn a_malformed_object_is_an_error_naming_it() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: ns}\nspec:\n  ports: [{port: not-a-number}]\n";
        let err = ClusterState::default().add_text(text).unwrap_err();
        assert!(format!("{err:#}").contains("Service ns/bad"), "{err:#}");
    }

    #[test]
    fn objects_without_kind_and_scalars_are_errors() {
        assert!(
            ClusterState::default()
                .add_text("metadata: {name: x}\n")
                .is_err()
        );
        assert!(ClusterState::default().add_text("42\n").is_err());
        assert!(
            ClusterState::default()
                .add_text("apiVersion: v1\nkind: List\nitems: 3\n")
                .is_err()
        );
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.yaml");
        std::fs::write(&path, "kind: [").unwrap();
        let err = ClusterState::from_files(&[&path]).unwrap_err();
        assert!(format!("{err:#}").contains("state.yaml"), "{err:#}");
        let missing = ClusterState::from_files(&[dir.path().join("nope.yaml")]).unwrap_err();
        assert!(format!("{missing:#}").contains("nope.yaml"));
    }
    // ---- Input classes that were read silently (issue 14, item 5) ----

    const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-abc
  namespace: kube-system
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
endpoints:
- addresses: [10.244.0.5]
  conditions: {ready: true}
ports: [{name: dns, port: 53, protocol: UDP}]
";

    /// `SLICE` with one edit.
    fn slice_with(from: &str, to: &str) -> String {
        assert!(SLICE.contains(from), "{from}");
        SLICE.replace(from, to)
    }

    fn read_files(texts: &[&str]) -> Result<ClusterState> {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let path = dir.path().join(format!("state-{i}.yaml"));
                std::fs::write(&path, text).unwrap();
                path
            })
            .collect();
        ClusterState::from_files(&paths)
    }

    #[test]
    fn concatenated_json_documents_are_an_error() {
        let one = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"a"}}"#;
        let two = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"b"}}"#;
        for text in [format!("{one}{two}"), format!("{one}\n{two}\n"), format!("[{one}]\n[]")] {
            let err = ClusterState::default().add_text(&text).unwrap_err();
            assert!(format!("{err:#}").contains("trailing"), "{err:#}");
        }
        // One document with trailing white space is fine.
        let mut s = ClusterState::default();
        s.add_text(&format!("{one}\n\n")).unwrap();
        assert_eq!(s.nodes.len(), 1);
    }

    #[test]
    fn conflicting_duplicates_are_an_error_identical_ones_are_merged() {
        let err = read_files(&[SLICE, &slice_with("10.244.0.5", "10.244.0.6")]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("EndpointSlice kube-system/dns-abc"), "{msg}");
        assert!(msg.contains("twice"), "{msg}");
        // Within one file too.
        let err = read_files(&[&format!("{SLICE}---\n{}", slice_with("53", "54"))]).unwrap_err();
        assert!(format!("{err:#}").contains("twice"), "{err:#}");
        // The same object twice (overlapping dumps) is one object.
        let s = read_files(&[SLICE, SLICE]).unwrap();
        assert_eq!(s.slices.len(), 1);
    }

    #[test]
    fn missing_required_fields_are_errors() {
        for (text, must_mention) in [
            (slice_with("addressType: IPv4\n", ""), "addressType"),
            (slice_with("addressType: IPv4", "addressType: IPv5"), "IPv5"),
            (slice_with("  namespace: kube-system\n", ""), "namespace"),
            (slice_with("[10.244.0.5]", "[]"), "no addresses"),
            (slice_with("10.244.0.5", "fd00::5"), "fd00::5"),
            (slice_with("10.244.0.5", "pod-a"), "pod-a"),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {}\n".to_owned(),
                "namespace",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec: {clusterIP: 10.96.0.300}\n".to_owned(),
                "10.96.0.300",
            ),
        ] {
            let err = ClusterState::default().add_text(&text).unwrap_err();
            assert!(format!("{err:#}").contains(must_mention), "{must_mention}: {err:#}");
        }
    }

    #[test]
    fn out_of_range_ports_are_errors() {
        let service = |port: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{{{port}}}]\n")
        };
        let pod = |port: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: n}}\nspec:\n  containers: [{{name: c, ports: [{{{port}}}]}}]\n")
        };
        for (text, must_mention) in [
            (slice_with("port: 53", "port: 70000"), "70000"),
            (slice_with("port: 53", "port: 0"), "ports[].port"),
            (service("port: 0, protocol: UDP"), "spec.ports[].port"),
            (service("port: 65536, protocol: UDP"), "65536"),
            (service("port: 53, protocol: UDP, nodePort: 99999"), "99999"),
            (service("port: 53, protocol: UDP, targetPort: -1"), "targetPort"),
            (pod("containerPort: 70000, protocol: UDP"), "70000"),
            (pod("containerPort: 53, hostPort: 70000, protocol: UDP"), "70000"),
        ] {
            let err = ClusterState::default().add_text(&text).unwrap_err();
            assert!(format!("{err:#}").contains(must_mention), "{must_mention}: {err:#}");
        }
    }

    #[test]
    fn unknown_protocols_are_errors() {
        for protocol in ["udp", "Udp", "tcp", "QUIC", "\"\""] {
            let text = slice_with("protocol: UDP", &format!("protocol: {protocol}"));
            let err = ClusterState::default().add_text(&text).unwrap_err();
            assert!(format!("{err:#}").contains("protocol"), "{protocol}: {err:#}");
            let text = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  ports: [{{port: 53, protocol: {protocol}}}]\n");
            assert!(ClusterState::default().add_text(&text).is_err(), "{protocol}");
        }
        // Every protocol of the API, and none (TCP by default), is accepted.
        for protocol in ["UDP", "TCP", "SCTP"] {
            let text = slice_with("protocol: UDP", &format!("protocol: {protocol}"));
            ClusterState::default().add_text(&text).unwrap();
        }
        ClusterState::default()
            .add_text(&slice_with(", protocol: UDP", ""))
            .unwrap();
    }

    #[test]
    fn a_state_file_over_the_size_cap_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.yaml");
        // Sparse: no disk space used, and a reader that tried would take seconds.
        let file = std::fs::File::create(&path).unwrap();
        file.set_len((256 << 20) + 1).unwrap();
        let err = ClusterState::from_files(&[&path]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("huge.yaml") && msg.contains("256 MiB"), "{msg}");
    }

    #[test]
    fn deep_nesting_fails_fast_without_overflowing_the_stack() {
        // libyaml's scanner costs (tokens × flow depth): 100k `[` took minutes before the
        // nesting was bounded up front. JSON has serde_json's recursion limit.
        for text in [
            format!("a: {}", "[".repeat(100_000)),
            format!("a: {}", "{a: ".repeat(100_000)),
            format!("{}1\n", "- ".repeat(100_000)),
            "[".repeat(100_000),
            format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)),
            format!("# comment\n{}", "[".repeat(100_000)),
        ] {
            let start = std::time::Instant::now();
            let err = ClusterState::default().add_text(&text).unwrap_err();
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "{:?} for {}",
                start.elapsed(),
                &text[..20]
            );
            assert!(format!("{err:#}").contains("deep"), "{err:#}");
        }
    }
}
