//! Desired state from files, for `check --state`: exactly what `kubectl get … -o yaml|json`
//! prints (a `v1 List`, typed lists, single objects, multi-document YAML).
//!
//! Objects are handed over one at a time as they are decoded ([`ClusterState::from_files_with`]),
//! so a large file never exists as a tree of values or a list of objects: JSON (`-o json`, the
//! large-cluster case) is checked once as a whole by serde_json without keeping anything, then
//! each object of a list is decoded straight from its bytes into its typed form. YAML goes
//! through the YAML parser's value type one document at a time (merge keys need it).
//! `check --delete` acts on what is read here, and a flow judged on partial or misread state is a
//! healthy flow deleted, so the reading is strict, in two tiers:
//!
//! - **Errors, always**: text that is not one clean document stream (bad syntax, a mapping with
//!   a key given twice, a JSON document followed by another, nesting deeper than any object
//!   needs, a file over [`MAX_STATE_FILE_BYTES`]) and objects of a used kind that no API server
//!   would have served (missing name, namespace or `addressType`, a port out of 1–65535, a
//!   protocol other than `TCP`/`UDP`/`SCTP`, an address that is not an IP) or that the files give
//!   twice with different content. Such input has no single reading.
//! - **Incomplete** ([`ClusterState::incompleteness`]): valid input that does not show the whole
//!   truth the engine needs: v1 `Endpoints` or non-v1 EndpointSlices (not read), EndpointSlices
//!   without the `kubernetes.io/service-name` label or with a UDP port without a number, and every
//!   judged Service with UDP ports that lacks an EndpointSlice of one of its IP families.
//!   `check --delete` refuses such state; a read-only `check` warns and reports.
//!
//! Kinds the engine does not use at all (ConfigMaps…) are skipped with a warning.

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Node, NodeStatus, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_yaml::Value;
use slim::{SlimService, SlimSlice};
use std::borrow::Cow;
// Keyed by names from the user's own files, not by anything a third party chooses.
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::HashSet;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::Path;

// A sibling file (`check/slim.rs`), private to this reader.
#[path = "slim.rs"]
mod slim;

/// The largest state file read: a full `kubectl get` of a very large cluster fits many times
/// over, and a bigger file is far more likely a mistake (a log, a device) than state.
pub const MAX_STATE_FILE_BYTES: u64 = 256 << 20;

/// The deepest flow-style (`[`/`{`) nesting accepted. libyaml's scanner costs time in proportion
/// to the flow depth for every token, so a file of nested brackets would stall it for minutes
/// before serde_yaml's own recursion limit (128 levels, counting block nesting too) is checked;
/// no Kubernetes object comes near this depth.
const MAX_FLOW_DEPTH: usize = 100;

/// How to produce a state file `check --delete` accepts.
pub const COMPLETE_STATE_HINT: &str = "dump a complete state with `kubectl get services,endpointslices.discovery.k8s.io -A -o yaml > state.yaml` (add `pods,nodes` to judge hostPorts and this node's NodePort addresses)";

/// The label naming an EndpointSlice's Service.
const LABEL_SERVICE_NAME: &str = ctdiff::LABEL_SERVICE_NAME;

/// A Service or EndpointSlice read from a state file, handed over as soon as it is decoded and
/// checked, and only the first time it is read (an identical copy is not handed over again).
#[derive(Debug, Clone, Copy)]
pub enum StateObject<'a> {
    /// A v1 Service.
    Service(&'a Service),
    /// A discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(&'a EndpointSlice),
}

/// The objects read from state files.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// v1 Services: those read by [`ClusterState::from_files`] or [`ClusterState::add_text`];
    /// empty after [`ClusterState::from_files_with`], which hands them over instead.
    pub services: Vec<Service>,
    /// discovery.k8s.io/v1 EndpointSlices, kept as `services` are.
    pub slices: Vec<EndpointSlice>,
    /// v1 Nodes. From files, only what the engine reads of them: the name and the addresses.
    pub nodes: Vec<Node>,
    /// v1 Pods. From files, only those with a host port (the engine reads no other pod).
    pub pods: Vec<Pod>,
    /// Objects skipped, with why.
    pub warnings: Vec<String>,
    /// Objects read but not usable that make the state incomplete (v1 Endpoints, v1beta1
    /// slices, unlabelled slices…), with why. [`ClusterState::incompleteness`] adds the
    /// Services left without slices.
    pub incomplete_objects: Vec<String>,
    /// A hash of each object read so far (its [`structural_hash`]), by `Kind namespace/name`:
    /// a second copy must be identical, and the first one is not kept to compare with.
    pub(crate) seen: FxHashMap<(&'static str, String), u64>,
    /// The Services read that the engine judges, with the families it judges them in.
    pub(crate) judged: Vec<JudgedService>,
    /// (namespace, Service name, `IPv4`/`IPv6`) of every labelled EndpointSlice read.
    pub(crate) covered: FxHashSet<(String, String, &'static str)>,
}

/// What [`ClusterState::incompleteness`] needs of a judged Service.
#[derive(Debug)]
pub(crate) struct JudgedService {
    namespace: String,
    name: String,
    families: Vec<&'static str>,
    selectorless: bool,
}

impl ClusterState {
    /// Reads and merges every file, keeping every object.
    pub fn from_files(paths: &[impl AsRef<Path>]) -> Result<Self> {
        let (mut services, mut slices) = (Vec::new(), Vec::new());
        let mut state = Self::from_files_with(paths, &mut |object| match object {
            StateObject::Service(svc) => services.push(svc.clone()),
            StateObject::EndpointSlice(slice) => slices.push(slice.clone()),
        })?;
        state.services = services;
        state.slices = slices;
        Ok(state)
    }

    /// Reads and merges every file, handing each Service and EndpointSlice to `each` as soon
    /// as it is read instead of keeping it. On an error, `each` may have been given objects
    /// already: whatever it built from them is not a reading of the files.
    pub fn from_files_with(
        paths: &[impl AsRef<Path>],
        each: &mut dyn FnMut(StateObject<'_>),
    ) -> Result<Self> {
        let mut state = ClusterState::default();
        for path in paths {
            let path = path.as_ref();
            let text = read_capped(path)
                .with_context(|| format!("reading state file {}", path.display()))?;
            state
                .read_text(&text, each)
                .with_context(|| format!("state file {}", path.display()))?;
        }
        Ok(state)
    }

    /// Adds every object of one file's text, keeping every object.
    pub fn add_text(&mut self, text: &str) -> Result<()> {
        let (mut services, mut slices) = (Vec::new(), Vec::new());
        let read = self.read_text(text, &mut |object| match object {
            StateObject::Service(svc) => services.push(svc.clone()),
            StateObject::EndpointSlice(slice) => slices.push(slice.clone()),
        });
        self.services.extend(services);
        self.slices.extend(slices);
        read
    }

    fn read_text(&mut self, text: &str, each: &mut dyn FnMut(StateObject<'_>)) -> Result<()> {
        if text.trim_start().starts_with(['{', '[']) {
            // serde_json is not slowed by nesting; the depth is bounded while checking it.
            return self.read_json(text, each);
        }
        // Before the YAML parser sees it: see MAX_FLOW_DEPTH.
        check_flow_depth(text)?;
        for (n, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let mut value = Value::deserialize(document).map_err(|e| {
                anyhow!(
                    "document {}: not valid YAML or JSON: {}",
                    n + 1,
                    nesting_hint(e.to_string())
                )
            })?;
            if value.is_null() {
                continue; // an empty document, e.g. a trailing `---`
            }
            // `<<: *anchor` keys would otherwise reach the typed objects as unknown fields and
            // be dropped with what they merge in.
            value
                .apply_merge()
                .map_err(|e| anyhow!("document {}: {e}", n + 1))?;
            self.add_value(value, each)
                .with_context(|| format!("document {}", n + 1))?;
        }
        Ok(())
    }

    /// JSON (`-o json`): checked whole first (syntax, keys given twice, nesting, trailing
    /// documents) without building anything but each object's kind and hash, then each object
    /// is decoded from its own bytes.
    fn read_json(&mut self, text: &str, each: &mut dyn FnMut(StateObject<'_>)) -> Result<()> {
        // From the `str`: its UTF-8 was checked once when it was read, not again per string.
        let mut de = serde_json::Deserializer::from_str(text);
        let mut ctx = StrictCtx {
            keys: Vec::new(),
            candidates: Vec::new(),
            types: Vec::new(),
            base: text.as_ptr() as usize,
        };
        StrictJson {
            ctx: &mut ctx,
            depth: 0,
            role: Role::Object,
        }
        .deserialize(&mut de)
        .map_err(|e| anyhow!("not valid JSON: {}", nesting_hint(e.to_string())))?;
        // `kubectl get -o json` prints one document; a second one would be dropped.
        de.end().map_err(|e| {
            anyhow!(
                "trailing data after the first JSON document ({e}): one JSON file holds one \
                 document (a List for several objects); pass more files with more --state"
            )
        })?;
        let mut objects = Objects {
            next: ctx.candidates.iter(),
            types: &ctx.types,
        };
        self.add_json(
            text,
            json_text::skip_ws(text.as_bytes(), 0),
            &mut objects,
            each,
        )
        .map(drop)
    }

    /// Adds the JSON value starting at `at` of `text` (valid JSON); returns where it ends.
    /// `objects`: what the validating pass recorded of this object and of those after it.
    fn add_json(
        &mut self,
        text: &str,
        at: usize,
        objects: &mut Objects<'_, '_>,
        each: &mut dyn FnMut(StateObject<'_>),
    ) -> Result<usize> {
        let bytes = text.as_bytes();
        if bytes[at] != b'{' {
            bail!(
                "expected a Kubernetes object (a mapping), found {}",
                json_text::type_name(bytes[at])
            );
        }
        // Every mapping the decoding reaches as an object was recorded as one.
        let (api_version, kind, hash, items) = objects
            .next()
            .context("the validating pass missed an object (a bug)")?;
        if kind.ends_with("List") {
            let items = match items {
                ItemsAt::Absent => return Ok(json_text::value_end(bytes, at)),
                ItemsAt::After(key_end) => {
                    let colon = json_text::skip_ws(bytes, key_end);
                    json_text::skip_ws(bytes, colon + 1)
                }
                ItemsAt::Unknown => {
                    let (_, [items]) = json_text::fields(bytes, at, ["items"]);
                    items.context("a List's items vanished (a bug)")?.start
                }
            };
            match bytes[items] {
                b'[' => {}
                b'n' => return Ok(json_text::value_end(bytes, at)),
                other => bail!(
                    "{kind}: items is {}, not a list",
                    json_text::type_name(other)
                ),
            }
            // Each item is walked once: reading it tells where the next one starts.
            let (mut i, mut n) = (json_text::skip_ws(bytes, items + 1), 0);
            while bytes[i] != b']' {
                let item_end = self
                    .add_json(text, i, objects, each)
                    .with_context(|| format!("{kind} item {n}"))?;
                i = json_text::skip_ws(bytes, item_end);
                if bytes[i] == b',' {
                    i = json_text::skip_ws(bytes, i + 1);
                }
                n += 1;
            }
            // The keys after `items` (kubectl prints `kind` and `metadata` there).
            return Ok(json_text::object_end_after(bytes, i + 1));
        }
        let raw = Raw::Json { text, at };
        self.add_object(api_version, kind, hash, raw, each)
    }

    fn add_value(&mut self, mut value: Value, each: &mut dyn FnMut(StateObject<'_>)) -> Result<()> {
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
                self.add_value(item, each)
                    .with_context(|| format!("{kind} item {i}"))?;
            }
            return Ok(());
        }
        let meta = map.get("metadata");
        let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
        let name = object_name(get("namespace"), get("name"));
        let hash = structural_hash(&value);
        self.add_object(&api_version, &kind, hash, Raw::Yaml { value, name }, each)
            .map(drop)
    }

    /// Decodes, checks and records one object that is not a list; returns where its text ends
    /// (JSON).
    fn add_object(
        &mut self,
        api_version: &str,
        kind: &str,
        hash: u64,
        raw: Raw<'_>,
        each: &mut dyn FnMut(StateObject<'_>),
    ) -> Result<usize> {
        let end = match (api_version, kind) {
            ("v1", "Service") => {
                let (svc, end) = raw.typed::<SlimService>(kind)?;
                let svc = svc.into_service();
                let name = meta_name(&svc.metadata);
                check_service(&svc).with_context(|| format!("Service {name}"))?;
                if self.first_copy("Service", name, hash)? {
                    self.note_service(&svc);
                    each(StateObject::Service(&svc));
                }
                end
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let (slice, end) = raw.typed::<SlimSlice>(kind)?;
                let slice = slice.into_slice();
                let name = meta_name(&slice.metadata);
                let incomplete =
                    check_slice(&slice).with_context(|| format!("EndpointSlice {name}"))?;
                self.incomplete_objects.extend(
                    incomplete
                        .into_iter()
                        .map(|why| format!("EndpointSlice {name} {why}")),
                );
                if self.first_copy("EndpointSlice", name, hash)? {
                    self.note_slice(&slice);
                    each(StateObject::EndpointSlice(&slice));
                }
                end
            }
            ("v1", "Node") => {
                let (node, end) = raw.typed::<Node>(kind)?;
                let name = meta_name(&node.metadata);
                check_node(&node).with_context(|| format!("Node {name}"))?;
                if self.first_copy("Node", name, hash)? {
                    self.nodes.push(slim_node(node));
                }
                end
            }
            ("v1", "Pod") => {
                let (pod, end) = raw.typed::<Pod>(kind)?;
                let name = meta_name(&pod.metadata);
                check_pod(&pod).with_context(|| format!("Pod {name}"))?;
                if self.first_copy("Pod", name, hash)? && has_host_port(&pod) {
                    self.pods.push(pod);
                }
                end
            }
            ("", _) | (_, "") => bail!("object {} has no apiVersion or kind", raw.name()),
            ("v1", "Endpoints") => {
                self.incomplete_objects.push(format!(
                    "v1 Endpoints {} is not read (the reconciler reads discovery.k8s.io/v1 \
                     EndpointSlices, as kube-proxy does)",
                    raw.name()
                ));
                raw.end()
            }
            (_, "EndpointSlice") => {
                self.incomplete_objects.push(format!(
                    "{api_version} EndpointSlice {} is not read (only discovery.k8s.io/v1 \
                     EndpointSlices are: Kubernetes 1.21 or later)",
                    raw.name()
                ));
                raw.end()
            }
            (_, "Service" | "Node" | "Pod") => {
                bail!(
                    "{api_version} {kind} {}: unknown apiVersion for a {kind} (v1)",
                    raw.name()
                )
            }
            _ => {
                self.warnings.push(format!(
                    "skipped {api_version} {kind} {}: not used by the reconciler",
                    raw.name()
                ));
                raw.end()
            }
        };
        Ok(end)
    }

    /// True the first time `kind name` is read; a later copy with the same content (its
    /// [`structural_hash`]) is false, a different one an error.
    fn first_copy(&mut self, kind: &'static str, name: String, hash: u64) -> Result<bool> {
        match self.seen.entry((kind, name)) {
            std::collections::hash_map::Entry::Occupied(at) => {
                if *at.get() != hash {
                    let name = &at.key().1;
                    bail!(
                        "{kind} {name} is in the state twice with different content (two \
                         snapshots?): which one is true is unknown; keep one"
                    );
                }
                Ok(false)
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(hash);
                Ok(true)
            }
        }
    }

    fn note_service(&mut self, svc: &Service) {
        let families = judged_families(svc);
        if families.is_empty() {
            return;
        }
        let selectorless = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_none_or(|s| s.is_empty());
        self.judged.push(JudgedService {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
            families,
            selectorless,
        });
    }

    fn note_slice(&mut self, slice: &EndpointSlice) {
        let family = match slice.address_type.as_str() {
            "IPv4" => "IPv4",
            "IPv6" => "IPv6",
            _ => return, // no judged family is another
        };
        let namespace = slice.metadata.namespace.as_deref();
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME));
        if let (Some(namespace), Some(service)) = (namespace, service) {
            self.covered
                .insert((namespace.to_owned(), service.clone(), family));
        }
    }

    /// Why the state read from files may not be the whole truth, one sentence each: the
    /// objects read but not usable, then every Service the engine would judge (UDP ports, a
    /// ClusterIP, not handed to another proxy, not skipped by annotation) that lacks an
    /// EndpointSlice of one of its IP families. Empty when complete.
    ///
    /// A Service with a selector always has at least one slice per family (the EndpointSlice
    /// controller creates an empty one when no pod matches), so its absence means the file is
    /// partial. A Service without a selector may legitimately have none, but a file cannot
    /// prove it, so it counts too: such a Service can be annotated
    /// `conntrack-reconciler/skip: "true"` or left out of the file.
    pub fn incompleteness(&self) -> Vec<String> {
        let mut out = self.incomplete_objects.clone();
        let mut key = (String::new(), String::new(), "");
        for svc in &self.judged {
            let (ns, name) = (&svc.namespace, &svc.name);
            for &family in &svc.families {
                // One probe key reused: no allocation per lookup.
                key.0.clone_from(ns);
                key.1.clone_from(name);
                key.2 = family;
                if !self.covered.contains(&key) {
                    out.push(format!(
                        "Service {ns}/{name} has UDP ports but no {family} EndpointSlice in the \
                         state files{}",
                        if svc.selectorless {
                            " (it has no selector: if it truly has no endpoints, annotate it \
                             conntrack-reconciler/skip: \"true\" or leave it out)"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        out
    }

    /// Fails, in one line, when [`ClusterState::incompleteness`] finds anything: the first
    /// problem, how many more, and how to produce a complete file.
    pub fn require_complete(&self) -> Result<()> {
        let problems = self.incompleteness();
        let Some(first) = problems.first() else {
            return Ok(());
        };
        let more = match problems.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        bail!("refusing to delete on incomplete state: {first}{more}; {COMPLETE_STATE_HINT}")
    }
}

/// One object's text, decoded into its typed form once its kind is known.
enum Raw<'a> {
    /// `name`: as [`object_name`] names it.
    Yaml { value: Value, name: String },
    /// `at`: where the object starts within `text`, a whole file of valid JSON.
    Json { text: &'a str, at: usize },
}

impl Raw<'_> {
    /// The object decoded, and where its text ends (JSON).
    fn typed<T: serde::de::DeserializeOwned>(self, kind: &str) -> Result<(T, usize)> {
        match self {
            Raw::Yaml { value, name } => serde_yaml::from_value(value)
                .map(|t| (t, 0))
                .map_err(|e| anyhow!("{kind} {name}: {e}")),
            Raw::Json { text, at } => {
                // A stream stops at the end of the object's value: the text after it is the
                // rest of the file.
                let mut stream = serde_json::Deserializer::from_str(&text[at..]).into_iter::<T>();
                match stream.next() {
                    Some(Ok(t)) => Ok((t, at + stream.byte_offset())),
                    Some(Err(e)) => {
                        let name = Raw::Json { text, at }.name();
                        bail!(
                            "{kind} {name}: {}",
                            json_text::in_file(&e, text.as_bytes(), at)
                        )
                    }
                    None => bail!("{kind}: no object (a bug)"),
                }
            }
        }
    }

    /// The object's name, as [`object_name`] writes it.
    fn name(&self) -> String {
        match self {
            Raw::Yaml { name, .. } => name.clone(),
            Raw::Json { text, at } => {
                let text = text.as_bytes();
                let (_, [metadata]) = json_text::fields(text, *at, ["metadata"]);
                metadata
                    .filter(|m| text[m.start] == b'{')
                    .map(|m| {
                        let (_, [namespace, name]) =
                            json_text::fields(text, m.start, ["namespace", "name"]);
                        let get =
                            |f: Option<Range<usize>>| f.and_then(|r| json_text::string(&text[r]));
                        object_name(get(namespace).as_deref(), get(name).as_deref())
                    })
                    .unwrap_or_else(|| object_name(None, None))
            }
        }
    }

    /// Where the object's text ends (JSON).
    fn end(&self) -> usize {
        match self {
            Raw::Yaml { .. } => 0,
            Raw::Json { text, at } => json_text::value_end(text.as_bytes(), *at),
        }
    }
}

/// An object's name as [`object_name`] writes it.
fn meta_name(meta: &ObjectMeta) -> String {
    object_name(meta.namespace.as_deref(), meta.name.as_deref())
}

/// What the engine reads of a Node (ctdiff's `parse_node`): its name and addresses.
fn slim_node(node: Node) -> Node {
    Node {
        metadata: ObjectMeta {
            name: node.metadata.name,
            ..Default::default()
        },
        status: node.status.map(|s| NodeStatus {
            addresses: s.addresses,
            ..Default::default()
        }),
        spec: None,
    }
}

/// Whether any container port of `pod` has a host port: the engine reads no other pod.
fn has_host_port(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
            .any(|p| p.host_port.is_some_and(|p| p != 0))
    })
}

/// What the validating pass learns of each object (the document, and the items of its Lists):
/// in the order the objects start, so that the decoding pass, which walks the same objects in
/// the same order, takes one entry each.
/// Small, one per object of the file: the kinds are kept once each in [`StrictCtx::types`].
struct Candidate {
    /// [`structural_hash`] of the whole object.
    hash: u64,
    /// [`ItemsAt`], packed.
    items: u64,
    /// apiVersion and kind: an index in [`StrictCtx::types`].
    ty: u32,
}

impl ItemsAt {
    const ABSENT: u64 = u64::MAX;
    const UNKNOWN: u64 = u64::MAX - 1;

    fn pack(self) -> u64 {
        match self {
            ItemsAt::Absent => Self::ABSENT,
            ItemsAt::Unknown => Self::UNKNOWN,
            ItemsAt::After(at) => at as u64,
        }
    }

    fn unpack(packed: u64) -> Self {
        match packed {
            Self::ABSENT => ItemsAt::Absent,
            Self::UNKNOWN => ItemsAt::Unknown,
            at => ItemsAt::After(at as usize),
        }
    }
}

/// The objects the validating pass recorded, taken in order by the decoding pass.
struct Objects<'a, 'de> {
    next: std::slice::Iter<'a, Candidate>,
    types: &'a [(Cow<'de, str>, Cow<'de, str>)],
}

impl<'a> Objects<'a, '_> {
    /// apiVersion, kind, hash and `items` of the next object.
    fn next(&mut self) -> Option<(&'a str, &'a str, u64, ItemsAt)> {
        let c = self.next.next()?;
        let types: &'a [(Cow<'_, str>, Cow<'_, str>)] = self.types;
        let (api_version, kind) = &types[c.ty as usize];
        Some((api_version, kind, c.hash, ItemsAt::unpack(c.items)))
    }
}

/// Where a List's `items` value is.
#[derive(Clone, Copy)]
enum ItemsAt {
    /// No `items` key.
    Absent,
    /// Just past the closing quote of the `items` key.
    After(usize),
    /// The key was spelt with escapes: its place is not known.
    Unknown,
}

/// The state of the validating pass shared by all its levels.
struct StrictCtx<'de> {
    /// The keys of the mappings being read, innermost last: one buffer for the whole text.
    keys: Vec<Cow<'de, str>>,
    candidates: Vec<Candidate>,
    /// The distinct (apiVersion, kind) pairs of the objects.
    types: Vec<(Cow<'de, str>, Cow<'de, str>)>,
    /// The text's address, to turn a borrowed key into its offset.
    base: usize,
}

/// Which values the validating pass records (see [`Candidate`]).
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Plain,
    /// The document, or an item of a List.
    Object,
    /// The `items` of an object: its elements are objects if it turns out to be a List.
    Items,
}

/// What the validating pass returns for a value: its [`structural_hash`], its text if it is a
/// string, and whether it is null.
struct Seen<'de> {
    hash: u64,
    text: Option<Cow<'de, str>>,
    null: bool,
}

impl Seen<'_> {
    fn scalar(hash: u64) -> Self {
        Seen {
            hash,
            text: None,
            null: false,
        }
    }
}

/// Parses any JSON value without keeping it, and fails, as the YAML value type does, on a
/// mapping that gives a key twice (which copy counts is a guess), and on brackets nested deeper
/// than [`MAX_FLOW_DEPTH`]. On the way it hashes every value ([`structural_hash`]) and records
/// each object's kind and hash ([`Candidate`]), so that the objects are decoded without another
/// walk over their text to find their kind or to hash them.
struct StrictJson<'k, 'de> {
    ctx: &'k mut StrictCtx<'de>,
    depth: usize,
    role: Role,
}

impl<'de> StrictJson<'_, 'de> {
    /// One level deeper, or the error for nesting too deep.
    fn nested<E: serde::de::Error>(&mut self, role: Role) -> Result<StrictJson<'_, 'de>, E> {
        if self.depth >= MAX_FLOW_DEPTH {
            return Err(E::custom(format_args!(
                "brackets nested deeper than {MAX_FLOW_DEPTH} levels, far deeper than any \
                 Kubernetes object"
            )));
        }
        Ok(StrictJson {
            ctx: &mut *self.ctx,
            depth: self.depth + 1,
            role,
        })
    }
}

impl<'de> DeserializeSeed<'de> for StrictJson<'_, 'de> {
    type Value = Seen<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Seen<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictJson<'_, 'de> {
    type Value = Seen<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Seen<'de>, E> {
        Ok(Seen::scalar(shash::bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Seen<'de>, E> {
        Ok(Seen::scalar(shash::i64(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Seen<'de>, E> {
        Ok(Seen::scalar(shash::u64(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Seen<'de>, E> {
        Ok(Seen::scalar(shash::f64(v)))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Seen<'de>, E> {
        Ok(Seen {
            hash: shash::str(v),
            text: Some(Cow::Borrowed(v)),
            null: false,
        })
    }

    fn visit_str<E>(self, v: &str) -> Result<Seen<'de>, E> {
        Ok(Seen {
            hash: shash::str(v),
            text: Some(Cow::Owned(v.to_owned())),
            null: false,
        })
    }

    fn visit_unit<E>(self) -> Result<Seen<'de>, E> {
        Ok(Seen {
            hash: shash::NULL,
            text: None,
            null: true,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Seen<'de>, A::Error> {
        let _ = self.nested::<A::Error>(Role::Plain)?;
        let role = if self.role == Role::Items {
            Role::Object
        } else {
            Role::Plain
        };
        let mut hash = shash::Seq::default();
        while let Some(seen) = seq.next_element_seed(self.nested(role)?)? {
            hash.add(seen.hash);
        }
        Ok(Seen::scalar(hash.finish()))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Seen<'de>, A::Error> {
        let _ = self.nested::<A::Error>(Role::Plain)?;
        let object = self.role == Role::Object;
        let slot = self.ctx.candidates.len();
        let (mut kind, mut api_version, mut items) =
            (Cow::Borrowed(""), Cow::Borrowed(""), ItemsAt::Absent);
        if object {
            // Filled in at the end; taken now so that the objects are in the order they start.
            self.ctx.candidates.push(Candidate {
                hash: 0,
                items: ItemsAt::ABSENT,
                ty: 0,
            });
        }
        let mut hash = shash::Map::default();
        // Objects have a few keys: a scan of this mapping's part of the buffer is faster than
        // a set until they have many.
        let start = self.ctx.keys.len();
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(key) = map.next_key_seed(JsonKey)? {
            let twice = match &mut many {
                Some(set) => !set.insert(key.clone()),
                None => {
                    let twice = self.ctx.keys[start..].contains(&key);
                    self.ctx.keys.push(key.clone());
                    if self.ctx.keys.len() - start >= 32 {
                        many = Some(self.ctx.keys.drain(start..).collect());
                    }
                    twice
                }
            };
            if twice {
                // The YAML value type's words, which this reading replaced.
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate entry with key {key:?}"
                )));
            }
            let role = if object && key == "items" {
                items = match &key {
                    Cow::Borrowed(k) => {
                        ItemsAt::After(k.as_ptr() as usize - self.ctx.base + k.len() + 1)
                    }
                    Cow::Owned(_) => ItemsAt::Unknown,
                };
                Role::Items
            } else {
                Role::Plain
            };
            let seen = map.next_value_seed(self.nested(role)?)?;
            if object {
                match key.as_ref() {
                    "kind" => kind = seen.text.clone().unwrap_or_default(),
                    "apiVersion" => api_version = seen.text.clone().unwrap_or_default(),
                    _ => {}
                }
            }
            if !seen.null {
                hash.add(shash::str(&key), seen.hash);
            }
        }
        self.ctx.keys.truncate(start);
        let hash = hash.finish();
        if object {
            if !kind.ends_with("List") {
                // Not a List: its `items`, if any, are no objects of the state.
                self.ctx.candidates.truncate(slot + 1);
            }
            let types = &mut self.ctx.types;
            let ty = match types
                .iter()
                .position(|(a, k)| *a == api_version && *k == kind)
            {
                Some(ty) => ty,
                None => {
                    types.push((api_version, kind));
                    types.len() - 1
                }
            };
            self.ctx.candidates[slot] = Candidate {
                hash,
                items: items.pack(),
                ty: u32::try_from(ty).map_err(serde::de::Error::custom)?,
            };
        }
        Ok(Seen::scalar(hash))
    }
}

/// A hash of a value's content that does not depend on how it was written: the order of a
/// mapping's keys, JSON or YAML, white space, escapes; a key given `null` counts as absent (as
/// for every field of the typed objects). Two copies of an object are the same object when
/// their hashes are equal.
fn structural_hash(value: &Value) -> u64 {
    match value {
        Value::Null => shash::NULL,
        Value::Bool(v) => shash::bool(*v),
        Value::Number(n) => {
            if let Some(v) = n.as_u64() {
                shash::u64(v)
            } else if let Some(v) = n.as_i64() {
                shash::i64(v)
            } else {
                shash::f64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => shash::str(s),
        Value::Sequence(items) => {
            let mut hash = shash::Seq::default();
            for item in items {
                hash.add(structural_hash(item));
            }
            hash.finish()
        }
        Value::Mapping(map) => {
            let mut hash = shash::Map::default();
            for (key, value) in map {
                if !value.is_null() {
                    let key = match key {
                        Value::String(s) => shash::str(s),
                        other => structural_hash(other),
                    };
                    hash.add(key, structural_hash(value));
                }
            }
            hash.finish()
        }
        Value::Tagged(tagged) => {
            let mut hash = shash::Seq::default();
            hash.add(shash::str(&tagged.tag.to_string()));
            hash.add(structural_hash(&tagged.value));
            shash::mix(hash.finish() ^ shash::TAGGED)
        }
    }
}

/// The pieces of [`structural_hash`], shared by the JSON and the YAML readings.
mod shash {
    use std::hash::BuildHasher;

    pub(super) const NULL: u64 = 0x6e75_6c6c_0000_0001;
    pub(super) const TAGGED: u64 = 0x7461_6767_0000_0002;
    const TRUE: u64 = 0x7472_7565_0000_0003;
    const FALSE: u64 = 0x6661_6c73_0000_0004;
    const U64: u64 = 0x7536_3400_0000_0005;
    const I64: u64 = 0x6936_3400_0000_0006;
    const F64: u64 = 0x6636_3400_0000_0007;
    const SEQ: u64 = 0x7365_7100_0000_0008;
    const MAP: u64 = 0x6d61_7000_0000_0009;

    /// A full-avalanche finaliser (MurmurHash3's).
    pub(super) fn mix(mut x: u64) -> u64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }

    pub(super) fn str(s: &str) -> u64 {
        // A fixed seed: copies read in different files, or runs, must hash alike.
        foldhash::quality::FixedState::with_seed(0x5eed).hash_one(s)
    }

    pub(super) fn bool(v: bool) -> u64 {
        if v { TRUE } else { FALSE }
    }

    pub(super) fn u64(v: u64) -> u64 {
        mix(v ^ U64)
    }

    pub(super) fn i64(v: i64) -> u64 {
        mix((v as u64) ^ I64).rotate_left(7)
    }

    pub(super) fn f64(v: f64) -> u64 {
        mix(v.to_bits() ^ F64).rotate_left(13)
    }

    /// A sequence: the order of the elements counts.
    pub(super) struct Seq(u64, u64);

    impl Default for Seq {
        fn default() -> Self {
            Seq(SEQ, 0)
        }
    }

    impl Seq {
        pub(super) fn add(&mut self, element: u64) {
            self.0 = mix(self.0 ^ element).wrapping_add(self.1);
            self.1 += 1;
        }

        pub(super) fn finish(&self) -> u64 {
            mix(self.0 ^ self.1.rotate_left(32))
        }
    }

    /// A mapping: the entries are summed, so their order does not count.
    #[derive(Default)]
    pub(super) struct Map(u64, u64);

    impl Map {
        pub(super) fn add(&mut self, key: u64, value: u64) {
            self.0 = self
                .0
                .wrapping_add(mix(key ^ mix(value.wrapping_add(0x9e37_79b9_7f4a_7c15))));
            self.1 += 1;
        }

        pub(super) fn finish(&self) -> u64 {
            mix(self.0 ^ MAP ^ self.1.rotate_left(40))
        }
    }
}

/// A JSON object key, borrowed from the text unless it has escapes.
struct JsonKey;

impl<'de> DeserializeSeed<'de> for JsonKey {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(JsonKey)
    }
}

impl<'de> Visitor<'de> for JsonKey {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// Walking JSON text that serde_json has already accepted, to find each object's bytes without
/// decoding what is around it. Being valid, the text needs no error handling here.
mod json_text {
    use std::ops::Range;

    fn ws(c: u8) -> bool {
        matches!(c, b' ' | b'\t' | b'\n' | b'\r')
    }

    /// The first byte at or after `i` that is not white space.
    pub(super) fn skip_ws(text: &[u8], mut i: usize) -> usize {
        while i < text.len() && ws(text[i]) {
            i += 1;
        }
        i
    }

    /// The end of the string whose opening quote is at `i`.
    fn string_end(text: &[u8], mut i: usize) -> usize {
        i += 1;
        loop {
            match text[i] {
                b'"' => return i + 1,
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
    }

    /// The end of the value starting at `i`.
    pub(super) fn value_end(text: &[u8], i: usize) -> usize {
        match text[i] {
            b'"' => string_end(text, i),
            b'{' | b'[' => {
                let (mut depth, mut j) = (0usize, i);
                loop {
                    match text[j] {
                        b'"' => {
                            j = string_end(text, j);
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return j + 1;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            }
            _ => {
                let mut j = i;
                while j < text.len() && !ws(text[j]) && !matches!(text[j], b',' | b']' | b'}') {
                    j += 1;
                }
                j
            }
        }
    }

    /// The end of the object in which `i` is just past a value: its remaining keys skipped.
    pub(super) fn object_end_after(text: &[u8], mut i: usize) -> usize {
        loop {
            i = skip_ws(text, i);
            match text[i] {
                b'}' => return i + 1,
                b',' => i += 1,
                _ => {
                    // A key, its `:` and its value.
                    let key_end = string_end(text, i);
                    let value = skip_ws(text, skip_ws(text, key_end) + 1);
                    i = value_end(text, value);
                }
            }
        }
    }

    /// The end of the object whose `{` is at `at`, and where the values of `keys` are.
    pub(super) fn fields<const N: usize>(
        text: &[u8],
        at: usize,
        keys: [&str; N],
    ) -> (usize, [Option<Range<usize>>; N]) {
        let mut found = [const { None }; N];
        let mut i = skip_ws(text, at + 1);
        while text[i] != b'}' {
            let key_end = string_end(text, i);
            let key = &text[i..key_end];
            let value = skip_ws(text, skip_ws(text, key_end) + 1); // past the `:`
            let end = value_end(text, value);
            if let Some(key) = string(key)
                && let Some(n) = keys.iter().position(|k| *k == key)
            {
                found[n] = Some(value..end);
            }
            i = skip_ws(text, end);
            if text[i] == b',' {
                i = skip_ws(text, i + 1);
            }
        }
        (i + 1, found)
    }

    /// The text of a JSON string (with its quotes); `None` for any other value.
    pub(super) fn string(value: &[u8]) -> Option<String> {
        let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        if inner.contains(&b'\\') {
            serde_json::from_slice(value).ok()
        } else {
            std::str::from_utf8(inner).ok().map(str::to_owned)
        }
    }

    /// The YAML value type's name for the JSON value starting with `first`.
    pub(super) fn type_name(first: u8) -> &'static str {
        match first {
            b'{' => "a mapping",
            b'[' => "a list",
            b'"' => "a string",
            b't' | b'f' => "a boolean",
            b'n' => "null",
            _ => "a number",
        }
    }

    /// `error`, from decoding the bytes at `offset` of `text`, with its position in `text`.
    pub(super) fn in_file(error: &serde_json::Error, text: &[u8], offset: usize) -> String {
        let message = error.to_string();
        let (line, column) = (error.line(), error.column());
        if line == 0 {
            return message;
        }
        let what = message
            .strip_suffix(&format!(" at line {line} column {column}"))
            .unwrap_or(&message);
        let before = &text[..offset];
        let lines_before = before.iter().filter(|&&c| c == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1);
        let (line, column) = if line == 1 {
            (lines_before + 1, offset - line_start + column)
        } else {
            (lines_before + line, column)
        };
        format!("{what} at line {line} column {column}")
    }
}

/// The IP families (as EndpointSlice `addressType`s) in which the engine judges `svc`'s UDP
/// frontends; empty when it judges none. Mirrors ctdiff's parsing of Services.
fn judged_families(svc: &Service) -> Vec<&'static str> {
    let meta = &svc.metadata;
    if meta
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(ctdiff::LABEL_SERVICE_PROXY_NAME))
        || meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ctdiff::ANNOTATION_SKIP))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return Vec::new();
    }
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let udp = spec
        .ports
        .iter()
        .flatten()
        .any(|p| p.protocol.as_deref() == Some("UDP"));
    if !udp || spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let cluster_ips: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if matches!(cluster_ips.first(), None | Some(&"" | &"None")) {
        return Vec::new();
    }
    let listed = spec.ip_families.as_deref().unwrap_or_default();
    let mut families = Vec::new();
    for ip in cluster_ips.iter().filter_map(|t| parse_ip(t)) {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        if (listed.is_empty() || listed.iter().any(|f| f == family)) && !families.contains(&family)
        {
            families.push(family);
        }
    }
    families
}

/// Reads at most [`MAX_STATE_FILE_BYTES`] (and refuses more), also from pipes such as
/// `--state <(kubectl get …)`, whose size is unknown up front.
fn read_capped(path: &Path) -> Result<String> {
    let too_big = || {
        anyhow!(
            "larger than {} MiB, the most a state file may hold; split it (one file per kind, \
             each with its own --state)",
            MAX_STATE_FILE_BYTES >> 20
        )
    };
    let file = std::fs::File::open(path)?;
    let mut size = 0;
    if let Ok(meta) = file.metadata()
        && meta.is_file()
    {
        if meta.len() > MAX_STATE_FILE_BYTES {
            return Err(too_big());
        }
        size = meta.len() as usize;
    }
    // Sized up front: growing by doubling would hold two copies of most of the text at once
    // (`take` hides the file's size from `read_to_end`).
    let mut bytes = Vec::with_capacity(size + 1);
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| anyhow!("not UTF-8 text: {e}"))
}

/// Parser errors about recursion say what it means for a state file.
fn nesting_hint(message: String) -> String {
    if message.contains("recursion limit exceeded") {
        format!("{message} (nested too deep for a Kubernetes object)")
    } else {
        message
    }
}

/// Fails when flow collections (`[`, `{`) nest deeper than [`MAX_FLOW_DEPTH`]; one pass, no
/// allocation. A small YAML tokenizer: brackets count only where YAML reads them as flow
/// indicators (anywhere inside a flow collection; at the start of a node outside one), never in
/// quoted scalars, comments or block scalars (`|`, `>`). Where it is unsure it counts, so it
/// may overestimate depth, never miss it, on the input a parser would accept.
fn check_flow_depth(text: &str) -> Result<()> {
    let b = text.as_bytes();
    let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let at = |i: usize| b.get(i).copied().unwrap_or(b'\n');
    let (mut depth, mut line, mut i) = (0usize, 1usize, 0usize);
    // Whether a node may start here (so `[`, `{`, quotes, `|` are indicators), and whether the
    // previous byte was white space (so `#` starts a comment).
    let (mut node_start, mut after_space) = (true, true);
    let mut line_begin = 0usize;
    while i < b.len() {
        let c = b[i];
        if i == line_begin
            && depth == 0
            && (b[i..].starts_with(b"---") || b[i..].starts_with(b"..."))
            && ws(at(i + 3))
        {
            // A document marker; a node may follow on the same line.
            i += 3;
            node_start = true;
            continue;
        }
        match c {
            b'\n' => {
                line += 1;
                line_begin = i + 1;
                node_start = true;
            }
            b' ' | b'\t' | b'\r' => {}
            b'#' if after_space => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'[' | b'{' if node_start || depth > 0 => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    bail!(
                        "line {line}: brackets nested deeper than {MAX_FLOW_DEPTH} levels, far \
                         deeper than any Kubernetes object"
                    );
                }
                node_start = true;
            }
            b']' | b'}' if depth > 0 => {
                depth -= 1;
                node_start = false;
            }
            b',' if depth > 0 => node_start = true,
            b':' if depth > 0 || ws(at(i + 1)) => node_start = true,
            b'-' | b'?' if node_start && ws(at(i + 1)) => {}
            // Anchors, tags, aliases: a node may still follow.
            b'&' | b'!' | b'*' if node_start => {
                while i < b.len() && !ws(b[i]) && !(depth > 0 && b",[]{}".contains(&b[i])) {
                    i += 1;
                }
                continue;
            }
            b'"' if node_start => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    if at(i) == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
                node_start = false;
            }
            b'\'' if node_start => {
                i += 1;
                while i < b.len() && !(b[i] == b'\'' && at(i + 1) != b'\'') {
                    if b[i] == b'\'' {
                        i += 1; // `''`, an escaped quote
                    } else if b[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
                node_start = false;
            }
            b'|' | b'>' if node_start && depth == 0 => {
                // A block scalar: its lines are those indented deeper than the node holding it
                // (the key of `key: |`, the dash of `- |`).
                let mut parent = line_begin;
                let mut j = line_begin;
                while j < i {
                    match b[j] {
                        b' ' => j += 1,
                        b'-' | b'?' if ws(at(j + 1)) => {
                            parent = j;
                            j += 1;
                        }
                        _ => {
                            parent = j;
                            break;
                        }
                    }
                }
                let parent_col = parent - line_begin;
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                while i < b.len() {
                    let start = i + 1;
                    let mut k = start;
                    while k < b.len() && b[k] == b' ' {
                        k += 1;
                    }
                    let blank = k >= b.len() || matches!(b[k], b'\n' | b'\r');
                    if !blank && k - start <= parent_col {
                        break;
                    }
                    line += 1;
                    i = k;
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
                continue;
            }
            _ => node_start = false,
        }
        after_space = ws(c);
        i += 1;
    }
    Ok(())
}

/// Like ctdiff: canonical IP text, or legacy IPv4 with leading zeros (which the API still
/// serves for objects created before it was refused).
fn parse_ip(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts
        .next()
        .is_none()
        .then_some(IpAddr::V4(Ipv4Addr::from(octets)))
}

fn ip(field: &str, text: &str) -> Result<IpAddr> {
    parse_ip(text).ok_or_else(|| anyhow!("{field}: {text:?} is not an IP address"))
}

fn port(field: &str, value: i32) -> Result<()> {
    if !(1..=65535).contains(&value) {
        bail!("{field}: {value} is not a port number (1-65535)");
    }
    Ok(())
}

/// A port where 0 means none (`nodePort`, `hostPort`).
fn optional_port(field: &str, value: Option<i32>) -> Result<()> {
    match value {
        None | Some(0) => Ok(()),
        Some(value) => port(field, value),
    }
}

fn protocol(field: &str, value: Option<&str>) -> Result<()> {
    match value {
        None | Some("TCP" | "UDP" | "SCTP") => Ok(()),
        Some(other) => bail!(
            "{field}: protocol {other:?} is not TCP, UDP or SCTP (the API spells them in capitals)"
        ),
    }
}

fn named(meta: &ObjectMeta, namespaced: bool) -> Result<()> {
    if meta.name.as_deref().is_none_or(str::is_empty) {
        bail!("metadata.name is missing");
    }
    if namespaced && meta.namespace.as_deref().is_none_or(str::is_empty) {
        bail!("metadata.namespace is missing");
    }
    Ok(())
}

fn check_service(svc: &Service) -> Result<()> {
    named(&svc.metadata, true)?;
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(());
    };
    for p in spec.ports.iter().flatten() {
        protocol("spec.ports[].protocol", p.protocol.as_deref())?;
        port("spec.ports[].port", p.port)?;
        optional_port("spec.ports[].nodePort", p.node_port)?;
        match &p.target_port {
            Some(IntOrString::Int(n)) => port("spec.ports[].targetPort", *n)?,
            Some(IntOrString::String(s)) if s.is_empty() => {
                bail!("spec.ports[].targetPort is empty")
            }
            _ => {}
        }
    }
    let cluster_ips = spec
        .cluster_ip
        .iter()
        .chain(spec.cluster_ips.iter().flatten());
    for text in cluster_ips.filter(|t| !t.is_empty() && *t != "None") {
        ip("spec.clusterIPs", text)?;
    }
    for text in spec.external_ips.iter().flatten() {
        ip("spec.externalIPs", text)?;
    }
    for family in spec.ip_families.iter().flatten() {
        if !matches!(family.as_str(), "IPv4" | "IPv6") {
            bail!("spec.ipFamilies: {family:?} is not IPv4 or IPv6");
        }
    }
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for text in ingress
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref())
    {
        ip("status.loadBalancer.ingress[].ip", text)?;
    }
    Ok(())
}

/// Errors for what no API server serves; returns what makes the state incomplete.
fn check_slice(slice: &EndpointSlice) -> Result<Vec<String>> {
    named(&slice.metadata, true)?;
    let family = match slice.address_type.as_str() {
        "" => bail!("has no addressType (IPv4, IPv6 or FQDN)"),
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        "FQDN" => None,
        other => bail!("addressType {other:?} is not IPv4, IPv6 or FQDN"),
    };
    let mut incomplete = Vec::new();
    let labelled = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .is_some_and(|s| !s.is_empty());
    if !labelled {
        incomplete.push(format!(
            "has no {LABEL_SERVICE_NAME} label, so it belongs to no Service (kube-proxy ignores it \
             too; add the label, or leave such slices out with `-l {LABEL_SERVICE_NAME}`)"
        ));
    }
    for p in slice.ports.iter().flatten() {
        protocol("ports[].protocol", p.protocol.as_deref())?;
        match p.port {
            Some(value) => port("ports[].port", value)?,
            None if p.protocol.as_deref() == Some("UDP") => incomplete.push(format!(
                "has UDP port {:?} without a number (\"all ports\"), which no proxy can use",
                p.name.as_deref().unwrap_or_default()
            )),
            None => {}
        }
    }
    for (n, endpoint) in slice.endpoints.iter().enumerate() {
        if endpoint.addresses.is_empty() {
            bail!("endpoints[{n}] has no addresses");
        }
        if let Some(v4) = family {
            for text in &endpoint.addresses {
                let addr = ip("endpoints[].addresses", text)?;
                if addr.is_ipv4() != v4 {
                    bail!(
                        "endpoints[].addresses: {text:?} is not of the slice's addressType {}",
                        slice.address_type
                    );
                }
            }
        }
    }
    Ok(incomplete)
}

fn check_pod(pod: &Pod) -> Result<()> {
    named(&pod.metadata, true)?;
    if let Some(spec) = pod.spec.as_ref() {
        let containers = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for p in containers.flat_map(|c| c.ports.iter().flatten()) {
            protocol("containers[].ports[].protocol", p.protocol.as_deref())?;
            port("containers[].ports[].containerPort", p.container_port)?;
            optional_port("containers[].ports[].hostPort", p.host_port)?;
            if let Some(text) = p.host_ip.as_deref().filter(|t| !t.is_empty()) {
                ip("containers[].ports[].hostIP", text)?;
            }
        }
    }
    if let Some(status) = pod.status.as_ref() {
        let ips = status
            .pod_ip
            .iter()
            .chain(status.pod_ips.iter().flatten().map(|p| &p.ip));
        for text in ips.filter(|t| !t.is_empty()) {
            ip("status.podIPs", text)?;
        }
    }
    Ok(())
}

fn check_node(node: &Node) -> Result<()> {
    named(&node.metadata, false)?;
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in addresses.into_iter().flatten() {
        if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
            ip("status.addresses", &a.address)?;
        }
    }
    Ok(())
}

fn object_name(namespace: Option<&str>, name: Option<&str>) -> String {
    match (namespace, name) {
        (Some(ns), Some(name)) => {
            // Once per object: without the formatting machinery.
            let mut out = String::with_capacity(ns.len() + 1 + name.len());
            out.push_str(ns);
            out.push('/');
            out.push_str(name);
            out
        }
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
        // The pod has no host port: the engine reads nothing of it, so it is not kept.
        assert_eq!((s.nodes.len(), s.pods.len(), s.services.len()), (1, 0, 1));
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
        for text in [
            format!("{one}{two}"),
            format!("{one}\n{two}\n"),
            format!("[{one}]\n[]"),
        ] {
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
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{{{port}}}]\n"
            )
        };
        let pod = |port: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: n}}\nspec:\n  containers: [{{name: c, ports: [{{{port}}}]}}]\n"
            )
        };
        for (text, must_mention) in [
            (slice_with("port: 53", "port: 70000"), "70000"),
            (slice_with("port: 53", "port: 0"), "ports[].port"),
            (service("port: 0, protocol: UDP"), "spec.ports[].port"),
            (service("port: 65536, protocol: UDP"), "65536"),
            (service("port: 53, protocol: UDP, nodePort: 99999"), "99999"),
            (
                service("port: 53, protocol: UDP, targetPort: -1"),
                "targetPort",
            ),
            (pod("containerPort: 70000, protocol: UDP"), "70000"),
            (
                pod("containerPort: 53, hostPort: 70000, protocol: UDP"),
                "70000",
            ),
        ] {
            let err = ClusterState::default().add_text(&text).unwrap_err();
            assert!(
                format!("{err:#}").contains(must_mention),
                "{must_mention}: {err:#}"
            );
        }
    }

    #[test]
    fn unknown_protocols_are_errors() {
        for protocol in ["udp", "Udp", "tcp", "QUIC", "\"\""] {
            let text = slice_with("protocol: UDP", &format!("protocol: {protocol}"));
            let err = ClusterState::default().add_text(&text).unwrap_err();
            assert!(
                format!("{err:#}").contains("protocol"),
                "{protocol}: {err:#}"
            );
            let text = format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  ports: [{{port: 53, protocol: {protocol}}}]\n"
            );
            assert!(
                ClusterState::default().add_text(&text).is_err(),
                "{protocol}"
            );
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
        assert!(
            msg.contains("huge.yaml") && msg.contains("256 MiB"),
            "{msg}"
        );
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
    #[test]
    fn flow_depth_scan_ignores_brackets_in_strings_and_sees_them_after_markers() {
        // kubectl's own output: block scalars with JSON, quoted brackets, plain scalars with
        // brackets, comments. Unbalanced in every way, none of them flow collections.
        let open = "[".repeat(300);
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: n\n  annotations:\n    a: |\n      {open}\n    b: '{open}'\n    c: \"{open}\\\"\"\n    d: x{open}\n    e: >-\n      {open}\n\n      {open}\n    # {open}\n    f: [\"]]]\", '}}}}', {{k: \"[[[\"}}]\n"
        );
        let mut s = ClusterState::default();
        s.add_text(&text).unwrap();
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        // A flow collection after a document marker, an anchor or a tag is counted.
        for text in [
            format!("--- {open}"),
            format!("a: &x {open}"),
            format!("a: !!seq {open}"),
            format!("- - {open}"),
            format!("a: |\n  x\nb: {open}"),
        ] {
            let err = ClusterState::default().add_text(&text).unwrap_err();
            assert!(format!("{err:#}").contains("deep"), "{text:.20}: {err:#}");
        }
    }

    const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  selector: {k8s-app: dns}
  clusterIPs: [10.96.0.10, \"fd00::a\"]
  ports: [{name: dns, port: 53, protocol: UDP}]
";

    fn incompleteness(texts: &[&str]) -> Vec<String> {
        let mut s = ClusterState::default();
        for text in texts {
            s.add_text(text).unwrap();
        }
        s.incompleteness()
    }

    #[test]
    fn a_judged_service_needs_a_slice_of_each_of_its_families() {
        let v6 = slice_with("addressType: IPv4", "addressType: IPv6")
            .replace("10.244.0.5", "fd00::5")
            .replace("dns-abc", "dns-def");
        let empty_v6 = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dns-ghi\n  namespace: kube-system\n  labels: {kubernetes.io/service-name: dns}\naddressType: IPv6\nendpoints: null\nports: null\n";
        assert!(incompleteness(&[SERVICE, SLICE, &v6]).is_empty());
        // An empty slice (no pod matches) proves there is nothing, as it does for kube-proxy.
        assert!(incompleteness(&[SERVICE, SLICE, empty_v6]).is_empty());
        let missing = incompleteness(&[SERVICE, SLICE]);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].contains("no IPv6 EndpointSlice"), "{missing:?}");
        assert!(!missing[0].contains("selector"), "{missing:?}");
        // Without a selector a file cannot prove there are none either; the way out is named.
        let selectorless = SERVICE.replace("  selector: {k8s-app: dns}\n", "");
        let missing = incompleteness(&[&selectorless]);
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(
            missing[0].contains("conntrack-reconciler/skip"),
            "{missing:?}"
        );
        // Services the engine does not judge need nothing.
        for (from, to) in [
            ("protocol: UDP", "protocol: TCP"),
            ("[10.96.0.10, \"fd00::a\"]", "[None]"),
            (
                "namespace: kube-system}",
                "namespace: kube-system, annotations: {conntrack-reconciler/skip: \"true\"}}",
            ),
            (
                "namespace: kube-system}",
                "namespace: kube-system, labels: {service.kubernetes.io/service-proxy-name: x}}",
            ),
            ("spec:\n", "spec:\n  type: ExternalName\n"),
        ] {
            let text = SERVICE.replace(from, to);
            assert!(incompleteness(&[&text]).is_empty(), "{text}");
        }
    }

    #[test]
    fn unusable_objects_make_the_state_incomplete_not_invalid() {
        let endpoints =
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: dns, namespace: kube-system}\n";
        let beta = slice_with("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1");
        let unlabelled = slice_with("  labels: {kubernetes.io/service-name: dns}\n", "");
        let all_ports = slice_with("port: 53, ", "");
        for (text, must_mention) in [
            (endpoints, "v1 Endpoints kube-system/dns"),
            (&beta, "v1beta1 EndpointSlice kube-system/dns-abc"),
            (&unlabelled, "kubernetes.io/service-name"),
            (&all_ports, "without a number"),
        ] {
            let mut s = ClusterState::default();
            s.add_text(text).unwrap();
            let problems = s.incompleteness();
            assert!(
                problems.iter().any(|p| p.contains(must_mention)),
                "{must_mention}: {problems:?}"
            );
            let err = format!("{:#}", s.require_complete().unwrap_err());
            assert!(
                err.contains(must_mention) && err.contains("kubectl get"),
                "{err}"
            );
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    // ---- JSON is read by its own streaming path: the same reading, the same errors ----

    /// `yaml` (one document) as `kubectl get -o json` would print it.
    fn json_of(yaml: &str) -> String {
        let value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        serde_json::to_string_pretty(&value).unwrap()
    }

    /// The error of reading `yaml`, and of reading it as JSON.
    fn errors_both_ways(yaml: &str) -> [String; 2] {
        [yaml.to_owned(), json_of(yaml)].map(|text| {
            let err = ClusterState::default().add_text(&text).unwrap_err();
            format!("{err:#}")
        })
    }

    #[test]
    fn json_and_yaml_read_the_same_objects() {
        let mut yaml = ClusterState::default();
        yaml.add_text(LIST).unwrap();
        let mut json = ClusterState::default();
        json.add_text(&json_of(LIST)).unwrap();
        assert_eq!(json.services, yaml.services);
        assert_eq!(json.slices, yaml.slices);
        assert_eq!(json.warnings, yaml.warnings);
        assert_eq!(json.services.len(), 1);
        // The same objects in both formats are one object, whatever the key order.
        let mut both = ClusterState::default();
        both.add_text(LIST).unwrap();
        both.add_text(&json_of(LIST)).unwrap();
        assert_eq!((both.services.len(), both.slices.len()), (1, 1));
        // A different copy in the other format is still a conflict.
        let err =
            read_files(&[SLICE, &json_of(&slice_with("10.244.0.5", "10.244.0.6"))]).unwrap_err();
        assert!(format!("{err:#}").contains("twice"), "{err:#}");
    }

    #[test]
    fn json_lists_in_kubectl_order_nested_and_empty() {
        // kubectl prints `items` before `kind`.
        let text = format!(
            r#"{{"apiVersion": "v1", "items": [{node}, {{"apiVersion": "v1", "items": [{svc}], "kind": "ServiceList"}}], "kind": "List", "metadata": {{"resourceVersion": ""}}}}"#,
            node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}"#,
            svc = r#"{"kind":"Service","metadata":{"namespace":"b","name":"a"},"apiVersion":"v1"}"#,
        );
        let mut s = ClusterState::default();
        s.add_text(&text).unwrap();
        assert_eq!((s.nodes.len(), s.services.len()), (1, 1));
        for items in ["null", "[]", "[ ]"] {
            let text = format!(r#"{{"apiVersion":"v1","kind":"List","items":{items}}}"#);
            ClusterState::default().add_text(&text).unwrap();
        }
        ClusterState::default()
            .add_text(r#"{"apiVersion":"v1","kind":"List"}"#)
            .unwrap();
        for (text, must_mention) in [
            (
                r#"{"apiVersion":"v1","kind":"List","items":3}"#,
                "items is a number",
            ),
            (
                r#"{"apiVersion":"v1","kind":"List","items":{"a":1}}"#,
                "items is a mapping",
            ),
            (
                r#"{"apiVersion":"v1","kind":"List","items":[1]}"#,
                "List item 0",
            ),
            (r#"[]"#, "found a list"),
            (r#"{"metadata":{"name":"x"}}"#, "no apiVersion or kind"),
            (
                r#"{"apiVersion":"v1","kind":5,"metadata":{"name":"x"}}"#,
                "no apiVersion or kind",
            ),
        ] {
            let err = ClusterState::default().add_text(text).unwrap_err();
            assert!(
                format!("{err:#}").contains(must_mention),
                "{must_mention}: {err:#}"
            );
        }
    }

    #[test]
    fn json_keys_with_escapes_are_read_as_the_keys_they_spell() {
        let text = r#"{"apiVersion":"v1","k\u0069nd":"Node","metadata":{"n\u0061me":"n\u0031"}}"#;
        let mut s = ClusterState::default();
        s.add_text(text).unwrap();
        assert_eq!(s.nodes[0].metadata.name.as_deref(), Some("n1"));
        // Brackets and quotes inside strings do not end an object early.
        let text = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x]}\"[{","namespace":"y"},"data":{"k":"}]\\"}}]}"#;
        let mut s = ClusterState::default();
        s.add_text(text).unwrap();
        assert!(
            s.warnings[0].contains(r#"ConfigMap y/x]}"[{"#),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn json_nesting_is_bounded_where_yaml_nesting_is() {
        let text = |n: usize| {
            format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"x","namespace":"y"}},"data":{}1{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        // The object is one level, its `data` n more: 100 levels are accepted, 101 are not,
        // as by the YAML reader's bound.
        check_flow_depth(&text(99)).unwrap();
        check_flow_depth(&text(100)).unwrap_err();
        ClusterState::default().add_text(&text(99)).unwrap();
        let err = ClusterState::default().add_text(&text(100)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("nested deeper than 100 levels") && msg.contains("not valid JSON"),
            "{msg}"
        );
    }

    #[test]
    fn json_keys_given_twice_are_an_error() {
        // The YAML value type refused them; the streaming reader must too, at any depth and
        // whichever copy a typed reading would have kept.
        for text in [
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"a","name":"b"}}"#,
            r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"s","namespace":"n"},"spec":{"ports":[{"port":53,"port":54}]}}]}"#,
            r#"{"apiVersion":"v1","kind":"List","items":[],"items":[]}"#,
        ] {
            let err = ClusterState::default().add_text(text).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains("duplicate entry with key"), "{msg}");
            assert!(msg.contains("not valid JSON"), "{msg}");
        }
        // Many keys (the set, not the list, of keys seen).
        let many: Vec<String> = (0..100).map(|i| format!(r#""k{i}":"v""#)).collect();
        let labels = many.join(",");
        let ok = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"a","labels":{{{labels}}}}}}}"#
        );
        ClusterState::default().add_text(&ok).unwrap();
        let twice = ok.replace(r#""k99":"v""#, r#""k99":"v","k7":"w""#);
        let err = ClusterState::default().add_text(&twice).unwrap_err();
        assert!(format!("{err:#}").contains(r#"key "k7""#), "{err:#}");
    }

    #[test]
    fn json_errors_name_the_object_and_its_line_in_the_file() {
        let text = "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"List\",\n  \"items\": [\n    {\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {\"name\": \"ok\"}},\n    {\n      \"apiVersion\": \"v1\",\n      \"kind\": \"Service\",\n      \"metadata\": {\"name\": \"bad\", \"namespace\": \"ns\"},\n      \"spec\": {\"ports\": [{\"port\": \"not-a-number\"}]}\n    }\n  ]\n}\n";
        let err = ClusterState::default().add_text(text).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("List item 1: Service ns/bad: invalid type"),
            "{msg}"
        );
        assert!(msg.contains("at line 10 column"), "{msg}");
    }

    #[test]
    fn json_refuses_what_yaml_refuses() {
        let service = |port: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{{{port}}}]\n"
            )
        };
        for (yaml, must_mention) in [
            (slice_with("addressType: IPv4\n", ""), "addressType"),
            (slice_with("addressType: IPv4", "addressType: IPv5"), "IPv5"),
            (slice_with("  namespace: kube-system\n", ""), "namespace"),
            (slice_with("[10.244.0.5]", "[]"), "no addresses"),
            (slice_with("10.244.0.5", "fd00::5"), "fd00::5"),
            (slice_with("port: 53", "port: 70000"), "70000"),
            (slice_with("protocol: UDP", "protocol: udp"), "protocol"),
            (service("port: 0, protocol: UDP"), "spec.ports[].port"),
            (service("port: 53, protocol: UDP, nodePort: 99999"), "99999"),
            (service("port: 53, protocol: QUIC"), "protocol"),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec: {clusterIP: 10.96.0.300}\n".to_owned(),
                "10.96.0.300",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: ns}\nspec:\n  ports: [{port: not-a-number}]\n".to_owned(),
                "Service ns/bad",
            ),
            (
                "apiVersion: v2\nkind: Service\nmetadata: {name: s, namespace: n}\n".to_owned(),
                "unknown apiVersion",
            ),
        ] {
            for msg in errors_both_ways(&yaml) {
                assert!(msg.contains(must_mention), "{must_mention}: {msg}");
            }
        }
        // The same incompleteness, with the same words.
        let endpoints =
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: dns, namespace: kube-system}\n";
        let beta = slice_with("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1");
        let unlabelled = slice_with("  labels: {kubernetes.io/service-name: dns}\n", "");
        for yaml in [endpoints, &beta, &unlabelled, SERVICE] {
            let mut from_yaml = ClusterState::default();
            from_yaml.add_text(yaml).unwrap();
            let mut from_json = ClusterState::default();
            from_json.add_text(&json_of(yaml)).unwrap();
            assert!(!from_yaml.incompleteness().is_empty(), "{yaml}");
            assert_eq!(from_json.incompleteness(), from_yaml.incompleteness());
        }
    }

    #[test]
    fn only_what_the_engine_reads_of_pods_and_nodes_is_kept() {
        let pod = |ports: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: d}}\nspec:\n  nodeName: n1\n  containers: [{{name: c, image: x, ports: [{ports}]}}]\n"
            )
        };
        let mut s = ClusterState::default();
        s.add_text(&pod("{containerPort: 53, protocol: UDP}"))
            .unwrap();
        assert!(s.pods.is_empty());
        s.add_text(
            &pod("{containerPort: 53, hostPort: 1053, protocol: UDP}")
                .replace("name: p,", "name: q,"),
        )
        .unwrap();
        assert_eq!(s.pods.len(), 1);
        assert_eq!(
            s.pods[0].spec.as_ref().unwrap().containers[0]
                .image
                .as_deref(),
            Some("x")
        );
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {a: b}}\nspec: {podCIDR: 10.244.0.0/24}\nstatus:\n  addresses: [{type: InternalIP, address: 192.168.1.1}]\n  images: [{names: [x], sizeBytes: 1}]\n";
        s.add_text(node).unwrap();
        let kept = &s.nodes[0];
        assert_eq!(kept.metadata.name.as_deref(), Some("n1"));
        assert!(kept.metadata.labels.is_none() && kept.spec.is_none());
        let status = kept.status.as_ref().unwrap();
        assert_eq!(status.addresses.as_ref().unwrap()[0].address, "192.168.1.1");
        assert!(status.images.is_none());
        // Duplicates are still compared in full: a Node differing only in what is dropped.
        let err = s.add_text(&node.replace("{a: b}", "{a: c}")).unwrap_err();
        assert!(format!("{err:#}").contains("twice"), "{err:#}");
    }

    #[test]
    fn from_files_with_hands_over_each_service_and_slice_once() {
        let dir = tempfile::tempdir().unwrap();
        let (yaml, json) = (dir.path().join("a.yaml"), dir.path().join("b.json"));
        std::fs::write(&yaml, LIST).unwrap();
        std::fs::write(&json, json_of(LIST)).unwrap();
        let mut handed = Vec::new();
        let s = ClusterState::from_files_with(&[&yaml, &json], &mut |object| {
            handed.push(match object {
                StateObject::Service(svc) => format!("Service {:?}", svc.metadata.name),
                StateObject::EndpointSlice(sl) => format!("EndpointSlice {:?}", sl.metadata.name),
            })
        })
        .unwrap();
        assert_eq!(
            handed,
            ["Service Some(\"dns\")", "EndpointSlice Some(\"dns-abc\")"]
        );
        assert!(s.services.is_empty() && s.slices.is_empty());
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    }
    /// Copies of one object are one object whatever their format and key order (the
    /// validating pass hashes JSON as the YAML reading hashes its values).
    #[test]
    fn copies_in_other_formats_and_key_orders_are_one_object() {
        let reordered = "{\"ports\":[{\"protocol\":\"UDP\",\"port\":53,\"name\":\"dns\"}],\
             \"endpoints\":[{\"conditions\":{\"ready\":true},\"addresses\":[\"10.244.0.5\"]}],\
             \"addressType\":\"IPv4\",\"metadata\":{\"labels\":{\"kubernetes.io/service-name\":\"dns\"},\
             \"namespace\":\"kube-system\",\"name\":\"dns-abc\",\"uid\":null},\
             \"kind\":\"EndpointSlice\",\"apiVersion\":\"discovery.k8s.io/v1\"}";
        let s = read_files(&[SLICE, &json_of(SLICE), reordered]).unwrap();
        assert_eq!(s.slices.len(), 1);
        let changed = reordered.replace("\"ready\":true", "\"ready\":false");
        let err = read_files(&[SLICE, &changed]).unwrap_err();
        assert!(format!("{err:#}").contains("twice"), "{err:#}");
    }
    /// The validating pass and the decoding one agree on which mappings are objects: the
    /// items of a List (its key spelt with escapes too), not those of any other object.
    #[test]
    fn json_objects_are_found_whatever_the_items_key_looks_like() {
        let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"b"}}"#;
        let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"}}"#;
        let mut s = ClusterState::default();
        s.add_text(&format!(
            r#"{{"it\u0065ms":[{svc},{{"kind":"List","items":[{node}]}}],"kind":"List"}}"#
        ))
        .unwrap();
        assert_eq!((s.services.len(), s.nodes.len()), (1, 1));
        // A Service with an `items` field is one object, whatever that field holds.
        let mut s = ClusterState::default();
        s.add_text(&format!(
            r#"{{"items":[{node}],"apiVersion":"v1","kind":"Service","metadata":{{"name":"c","namespace":"b"}}}}"#
        ))
        .unwrap();
        assert_eq!((s.services.len(), s.nodes.len()), (1, 0));
    }
}
