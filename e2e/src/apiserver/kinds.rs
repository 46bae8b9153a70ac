//! The Kubernetes kinds the API double serves, and their REST coordinates.

/// A kind served by the lab's API double.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// v1 Node.
    Node,
    /// v1 Pod.
    Pod,
}

impl Kind {
    /// Every served kind.
    pub const ALL: [Kind; 4] = [Kind::Service, Kind::EndpointSlice, Kind::Node, Kind::Pod];

    /// The kind's `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
        }
    }

    /// The kind named by a `kind` field.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The `apiVersion` of its objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    /// The URL prefix of its group version.
    pub fn group_prefix(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "/apis/discovery.k8s.io/v1",
            _ => "/api/v1",
        }
    }

    /// The resource name in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
        }
    }

    /// Whether its objects live in namespaces.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node)
    }

    /// The field selector paths kube-apiserver supports for it (besides metadata.name and
    /// metadata.namespace).
    pub fn field_paths(self) -> &'static [&'static str] {
        match self {
            Kind::Service => &["spec.clusterIP", "spec.type"],
            Kind::EndpointSlice => &["addressType"],
            Kind::Node => &["spec.unschedulable"],
            Kind::Pod => &["spec.nodeName", "status.phase", "spec.hostNetwork"],
        }
    }

    /// The kind served at `prefix`/`plural`, if any.
    pub fn from_path(prefix: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group_prefix() == prefix && k.plural() == plural)
    }
}
