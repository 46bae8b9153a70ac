//! The flow as classification sees it, and what classification answers.

use std::fmt;
use std::net::SocketAddr;

/// IANA protocol number of UDP, the only protocol the engine judges.
pub const IPPROTO_UDP: u8 = 17;

/// What classification needs from a conntrack flow (the controller fills it from a
/// `ctnetlink::Flow`): the L4 protocol, the original destination and the reply source.
///
/// For a DNATed flow the reply source is the backend the kernel chose; for a flow that was
/// never DNATed it equals the original destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowRef {
    /// IANA protocol number (17 = UDP; everything else is [`Verdict::Unrelated`]).
    pub proto: u8,
    /// Destination of the original direction: the frontend the client addressed.
    pub orig_dst: SocketAddr,
    /// Source of the reply direction: the backend that answers.
    pub reply_src: SocketAddr,
}

impl FlowRef {
    /// A UDP flow from its original destination and reply source.
    pub fn udp(orig_dst: SocketAddr, reply_src: SocketAddr) -> Self {
        FlowRef {
            proto: IPPROTO_UDP,
            orig_dst,
            reply_src,
        }
    }
}

/// A place where clients reach a service or a host port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frontend {
    /// A ClusterIP, ExternalIP or LoadBalancer ingress IP with the service port.
    Addr(SocketAddr),
    /// A NodePort, on any of this node's addresses.
    NodePort(u16),
    /// A pod's UDP hostPort. In a verdict this is the flow's original destination; in a
    /// [`Dirty`](crate::Dirty) set an unspecified IP (`0.0.0.0` / `::`) stands for "every node
    /// address of that family".
    HostPort(SocketAddr),
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frontend::Addr(addr) => write!(f, "{addr}"),
            Frontend::NodePort(port) => write!(f, "nodeport/{port}"),
            Frontend::HostPort(addr) => write!(f, "hostport/{addr}"),
        }
    }
}

/// Namespace and name of the object that owns a frontend: the Service, or for host-port
/// frontends the Pod. Displays as `namespace/name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName<'a> {
    /// The object's namespace.
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
}

impl fmt::Display for ServiceName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a flow is stale.
///
/// When several reasons apply, the first in this order wins (the order of the variants):
/// a tombstone gives [`ServiceDeleted`](Reason::ServiceDeleted) /
/// [`HostPortPodGone`](Reason::HostPortPodGone) whatever the reply source; otherwise
/// [`NotDnated`](Reason::NotDnated) > [`NoEndpoints`](Reason::NoEndpoints) >
/// [`EndpointNotServing`](Reason::EndpointNotServing) > [`PortChanged`](Reason::PortChanged) >
/// [`EndpointGone`](Reason::EndpointGone) (host ports: `HostPortPodGone`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The service was deleted; its frontends are remembered (tombstone) for the TTL.
    ServiceDeleted,
    /// The reply source is the frontend itself: the flow was created while no DNAT rule
    /// existed (typically while the service had no endpoints).
    NotDnated,
    /// The service port has no serving endpoint at all: every flow to it is stale.
    NoEndpoints,
    /// The reply source is an endpoint of the service port that is not serving.
    EndpointNotServing,
    /// The reply source's IP still serves this service port, but on another port
    /// (the `targetPort` changed).
    PortChanged,
    /// The reply source is not an endpoint of the service port (any more).
    EndpointGone,
    /// The host port's pod is gone or replaced: the reply source is not the current pod.
    HostPortPodGone,
}

impl Reason {
    /// Every reason, for pre-registering metric label values.
    pub const ALL: [Reason; 7] = [
        Reason::ServiceDeleted,
        Reason::NotDnated,
        Reason::NoEndpoints,
        Reason::EndpointNotServing,
        Reason::PortChanged,
        Reason::EndpointGone,
        Reason::HostPortPodGone,
    ];

    /// The kebab-case name, for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::ServiceDeleted => "service-deleted",
            Reason::NotDnated => "not-dnated",
            Reason::NoEndpoints => "no-endpoints",
            Reason::EndpointNotServing => "endpoint-not-serving",
            Reason::PortChanged => "port-changed",
            Reason::EndpointGone => "endpoint-gone",
            Reason::HostPortPodGone => "host-port-pod-gone",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the index knows a stale flow is stale.
///
/// The agent's view of the cluster can lag kube-proxy's (its own watch is slower, failing or
/// frozen). A backend the agent has never seen may be one kube-proxy already routes to, so only
/// a backend the agent *saw leave* is positive evidence on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Evidence {
    /// The agent saw this backend stop being allowed behind the frontend (removed, no longer
    /// serving, re-ported, its Service deleted or its Pod replaced), or the flow was never
    /// DNATed although the agent knows serving backends (or the owner was deleted). Safe to act
    /// on while the agent's view is fresh.
    Removed,
    /// The backend was never an allowed backend of this frontend in the agent's view: it may be
    /// one the agent has not heard of yet. Safe to act on only once the agent's view is proven
    /// newer than the flow (see [`Gate`](crate::Gate)).
    Unseen,
}

impl Evidence {
    /// The kebab-case name, for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Evidence::Removed => "removed",
            Evidence::Unseen => "unseen",
        }
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stale flow: who owns the frontend it addressed, which port, and why it is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stale<'a> {
    /// The owning Service (or Pod, for a host port).
    pub service: ServiceName<'a>,
    /// The service port's name (`""` if unnamed); for a host port, the container port's name.
    pub port: &'a str,
    /// The frontend the flow addressed.
    pub frontend: Frontend,
    /// Why the flow is stale.
    pub reason: Reason,
    /// Whether the agent saw the backend leave, or merely does not know it.
    pub evidence: Evidence,
}

impl fmt::Display for Stale<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} port {:?} via {}: {}",
            self.service, self.port, self.frontend, self.reason
        )
    }
}

/// The answer for one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict<'a> {
    /// Not a UDP flow to a known frontend: leave it alone.
    Unrelated,
    /// A flow to a known frontend that is fine (or that must be left alone: opted-out service,
    /// state not completely listed yet).
    Keep,
    /// A flow to a known frontend whose reply source is not an allowed backend: delete it.
    Stale(Stale<'a>),
}

impl Verdict<'_> {
    /// True for [`Verdict::Stale`].
    pub fn is_stale(&self) -> bool {
        matches!(self, Verdict::Stale(_))
    }

    /// The reason, for a stale flow.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Verdict::Stale(stale) => Some(stale.reason),
            _ => None,
        }
    }
}
