//! The stale-flow engine: Kubernetes state in, a verdict for every conntrack flow out.
//!
//! Pure: no I/O, no async, no logging. The controller feeds an [`Index`] with watch events,
//! one [`IndexedKind`] at a time ([`Index::apply`], [`Index::delete`], a [`Relist`] streamed
//! through [`Index::relist`] and [`Index::finish_relist`], or [`Index::reset`]), asks
//! [`Index::classify`] about each UDP conntrack flow and [`Index::owner_of`] who owns a flow's
//! destination. It prunes objects with [`IndexedKind::prune`] and selects them with the label
//! keys and selectors exported here ([`SERVICE_LABEL_SELECTOR`], …), so that what it keeps and
//! lists is what the engine reads.
//!
//! # Semantics (kube-proxy ≥ 1.32, without its bugs)
//! - **Frontends** of each UDP service port: every ClusterIP (`spec.clusterIPs`, one per
//!   family), every ExternalIP, every LoadBalancer ingress IP whose `ipMode` is `VIP` or absent,
//!   each with the service port; and the NodePort, matched only when the destination is one of
//!   this node's addresses (Node status addresses plus [`Index::set_local_addrs`]) that
//!   [`IndexConfig::nodeport_addresses`] admits (kube-proxy's `--nodeport-addresses`; see
//!   [`NodePortAddresses`]).
//! - **IP families**: like kube-proxy, which runs one proxier per family, a Service is served
//!   only in its families: `spec.ipFamilies` (each family paired with the ClusterIP at its
//!   index), or, without it, the families of its ClusterIPs. An ExternalIP or LoadBalancer IP of
//!   another family gets no kube-proxy rule, so it is no frontend here either (reported as a
//!   [`SkipReason::OtherFamily`]); a Service left without a ClusterIP of its families is
//!   ignored.
//! - **Host ports** of pods on this node: `hostIP:hostPort` (or any node address when `hostIP`
//!   is unset) with `podIP:containerPort` as the only allowed backend.
//! - **Allowed backends** of a service port: `address:port` of every endpoint that is `ready`,
//!   or `serving` and `terminating` (absent `ready`/`serving` → true, absent `terminating` →
//!   false, as the API defines them), across every slice labelled
//!   `kubernetes.io/service-name` with the service's name, using the slice port with the same
//!   name and protocol UDP. IPs are compared parsed and canonical (IPv4-mapped IPv6 = IPv4).
//!   kube-proxy routes to ready endpoints and, when none is ready, to serving terminating ones,
//!   so its backends are always ready, or serving and terminating; a `publishNotReadyAddresses` Service's
//!   not-ready pod is `ready=true, serving=false` and does receive traffic. (kube-proxy's own
//!   reconciler, from 1.32, keeps only `serving` ones and so cuts such flows: not copied.)
//! - A flow to a frontend is **stale** when its reply source is not an allowed backend; the
//!   [`Reason`] says why (precedence documented there).
//! - **Ignored**: services labelled `service.kubernetes.io/service-proxy-name` or
//!   `service.kubernetes.io/headless` (kube-proxy's informers select neither), ExternalName and
//!   headless services (and services without a ClusterIP), FQDN slices, non-UDP ports. A
//!   service that becomes ignored, by an update or in the object a deletion carries, loses its
//!   frontends without a tombstone (another proxy may own them now). The
//!   annotation `conntrack-reconciler/skip: "true"` makes every flow to a service's frontends
//!   [`Verdict::Keep`].
//! - **Tombstones**: a deleted service's (pod's) frontends stay stale for a TTL; a new owner of
//!   the frontend replaces the tombstone at once.
//! - **Completeness**: until services and slices (pods, for host ports) have been fully listed
//!   once (a finished relist), flows to known frontends are kept.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod addr;
mod classify;
mod dirty;
mod flow_index;
mod gate;
mod index;
mod kinds;
mod owner;
mod parse;
mod report;
mod tables;
mod verdict;

pub use addr::{Cidr, NodePortAddresses, NodePortAddressesError};
pub use dirty::{Dirty, DirtyMatcher};
pub use flow_index::{FlowIndex, FlowIndexError, FlowsTo, IndexedFlow};
pub use gate::{
    Decision, Gate, GateConfig, Kind, KindFreshness, Knowledge, Staleness, Waiting, deciding_kind,
};
pub use index::{DEFAULT_STALE_AFTER, DEFAULT_TOMBSTONE_TTL, Index, IndexConfig, IndexStats};
pub use kinds::{IndexedKind, Relist};
pub use owner::Owner;
pub use parse::{
    ANNOTATION_SKIP, ENDPOINT_SLICE_LABEL_SELECTOR, LABEL_HEADLESS, LABEL_SERVICE_NAME,
    LABEL_SERVICE_PROXY_NAME, SERVICE_LABEL_SELECTOR,
};
pub use report::{Report, Skip, SkipReason};
pub use verdict::{Evidence, FlowRef, Frontend, IPPROTO_UDP, Reason, ServiceName, Stale, Verdict};

/// Re-export of the Kubernetes types the API takes, so callers use the same version.
pub use k8s_openapi;
