//! Per-frontend flow counts taken during a pass, for the metrics and `check --stats`.
//!
//! A pass already classifies every UDP flow; counting the ones that reach a known frontend
//! costs one hash-map increment per such flow, keyed by the flow's original destination (no
//! allocation per flow). Owners are resolved once per distinct destination after the pass,
//! and the series are capped (largest first, the rest summed under `other`), so scrapes stay
//! cheap and the label sets bounded whatever the table size.

use ctdiff::{Index, Reason};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

/// The label value for series beyond the cap, and for flows whose owner is not known.
pub const OTHER: &str = "other";

/// Most series per metric; the rest is summed into one `other` series.
pub const MAX_SERIES: usize = 200;

/// What one pass counted, by original destination.
#[derive(Debug, Default, Clone)]
pub struct FlowTally {
    /// UDP flows to a known frontend (kept or stale), by original destination.
    /// (Only known frontends are keys, never a peer's choice: a fast hash is safe.)
    flows: FxHashMap<SocketAddr, u64>,
    /// Stale flows the pass left in the table (dry run, over budget, out of the pass's scope),
    /// by original destination and reason.
    left: FxHashMap<(SocketAddr, Reason), u64>,
}

impl FlowTally {
    /// Counts a UDP flow to a known frontend.
    #[inline]
    pub fn flow(&mut self, orig_dst: SocketAddr) {
        *self.flows.entry(orig_dst).or_insert(0) += 1;
    }

    /// Counts a stale flow the pass does not delete.
    #[inline]
    pub fn left(&mut self, orig_dst: SocketAddr, reason: Reason) {
        *self.left.entry((orig_dst, reason)).or_insert(0) += 1;
    }

    /// Adds another pass's counts (the other IP family's).
    pub fn merge(&mut self, other: FlowTally) {
        for (dst, n) in other.flows {
            *self.flows.entry(dst).or_insert(0) += n;
        }
        for (key, n) in other.left {
            *self.left.entry(key).or_insert(0) += n;
        }
    }

    /// Names each destination's owner and frontend with `index`, and caps the series.
    pub fn resolve(&self, index: &Index, now: Instant, cap: usize) -> FrontendFigures {
        let mut owners: HashMap<SocketAddr, (String, String)> = HashMap::new();
        let mut owner = |dst: SocketAddr| -> (String, String) {
            owners
                .entry(dst)
                .or_insert_with(|| owner_of(index, dst, now))
                .clone()
        };
        let mut flows: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (&dst, &n) in &self.flows {
            *flows.entry(owner(dst)).or_insert(0) += n;
        }
        let mut left: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (&(dst, reason), &n) in &self.left {
            let (service, _) = owner(dst);
            *left.entry((service, reason.to_string())).or_insert(0) += n;
        }
        FrontendFigures {
            flows: cap_series(flows, cap)
                .into_iter()
                .map(|((service, frontend), flows)| FrontendFlows {
                    service,
                    frontend,
                    flows,
                })
                .collect(),
            stale_left: cap_series(left, cap)
                .into_iter()
                .map(|((service, reason), flows)| StaleLeft {
                    service,
                    reason,
                    flows,
                })
                .collect(),
        }
    }
}

/// The owner (`namespace/name`) and frontend of a destination, as ctdiff resolves it
/// (`nodeport/30053` for a NodePort reached on a node address; a deleted owner while its
/// tombstone lasts). A destination without an owner is `other`.
fn owner_of(index: &Index, dst: SocketAddr, now: Instant) -> (String, String) {
    match index.owner_of(dst, now) {
        Some(owner) => (owner.service.to_string(), owner.frontend.to_string()),
        None => (OTHER.to_owned(), dst.to_string()),
    }
}

/// Keeps the `cap` largest series (ties by name) and sums the rest into `(other, other)`.
fn cap_series(series: BTreeMap<(String, String), u64>, cap: usize) -> Vec<((String, String), u64)> {
    let mut sorted: Vec<_> = series.into_iter().collect();
    sorted.sort_by(|(a_key, a), (b_key, b)| b.cmp(a).then_with(|| a_key.cmp(b_key)));
    if sorted.len() <= cap {
        return sorted;
    }
    let keep = cap.saturating_sub(1);
    let rest: u64 = sorted[keep..].iter().map(|(_, n)| n).sum();
    sorted.truncate(keep);
    sorted.push(((OTHER.to_owned(), OTHER.to_owned()), rest));
    sorted
}

/// Flows to one frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendFlows {
    /// `namespace/name` of the Service (the Pod, for a host port), or `other`.
    pub service: String,
    /// The frontend (`IP:port`, `nodeport/PORT`, `hostport/IP:PORT`), or `other`.
    pub frontend: String,
    /// UDP flows counted.
    pub flows: u64,
}

/// Stale flows of one service left in the table, for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleLeft {
    /// `namespace/name` of the owner, or `other`.
    pub service: String,
    /// Why they are stale (kebab-case), or `other`.
    pub reason: String,
    /// Flows counted.
    pub flows: u64,
}

/// The per-frontend figures of a pass, named and capped, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontendFigures {
    /// UDP flows per frontend.
    pub flows: Vec<FrontendFlows>,
    /// Stale flows left in the table, per owner and reason.
    pub stale_left: Vec<StaleLeft>,
}

impl FrontendFigures {
    /// Stale flows left in the table, all owners together.
    pub fn stale_left_total(&self) -> u64 {
        self.stale_left.iter().map(|s| s.flows).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdiff::IndexConfig;
    use ctdiff::k8s_openapi::api::core::v1::{Pod, Service};
    use ctdiff::k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn index() -> Index {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]}
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "dns-1", "namespace": "kube-system",
                         "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.1"], "conditions": {"ready": true}}],
            "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}]
        }))
        .unwrap();
        let mut index = Index::new(IndexConfig::new("node-1"));
        let now = Instant::now();
        assert!(index.reset([&svc], now).is_empty());
        assert!(index.reset([&slice], now).is_empty());
        assert!(index.reset::<Pod>([], now).is_empty());
        index
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn flows_are_named_by_their_service_and_frontend() {
        let index = index();
        let mut v4 = FlowTally::default();
        for _ in 0..3 {
            v4.flow(addr("10.96.0.10:53"));
        }
        v4.left(addr("10.96.0.10:53"), Reason::EndpointGone);
        let mut other_family = FlowTally::default();
        other_family.flow(addr("10.96.0.10:53"));
        v4.merge(other_family);
        let figures = v4.resolve(&index, Instant::now(), MAX_SERIES);
        assert_eq!(
            figures.flows,
            [FrontendFlows {
                service: "kube-system/dns".into(),
                frontend: "10.96.0.10:53".into(),
                flows: 4
            }]
        );
        assert_eq!(
            figures.stale_left,
            [StaleLeft {
                service: "kube-system/dns".into(),
                reason: "endpoint-gone".into(),
                flows: 1
            }]
        );
        assert_eq!(figures.stale_left_total(), 1);
    }

    #[test]
    fn a_deleted_service_is_named_while_its_tombstone_lasts() {
        let mut index = index();
        let now = Instant::now();
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let _ = index.delete(&svc, now);
        let mut tally = FlowTally::default();
        tally.flow(addr("10.96.0.10:53"));
        tally.left(addr("10.96.0.10:53"), Reason::ServiceDeleted);
        let figures = tally.resolve(&index, now, MAX_SERIES);
        assert_eq!(figures.flows[0].service, "kube-system/dns");
        assert_eq!(figures.stale_left[0].service, "kube-system/dns");
        let later = now + index.config().tombstone_ttl;
        let figures = tally.resolve(&index, later, MAX_SERIES);
        assert_eq!(figures.flows[0].service, OTHER, "the tombstone lapsed");
        assert_eq!(figures.flows[0].frontend, "10.96.0.10:53");
    }

    #[test]
    fn series_beyond_the_cap_are_summed_into_other() {
        let index = index();
        let mut tally = FlowTally::default();
        // Destinations the index does not know have no owner to name.
        for port in 1..=10u16 {
            for _ in 0..port {
                tally.flow(SocketAddr::new("10.0.0.1".parse().unwrap(), port));
            }
        }
        let figures = tally.resolve(&index, Instant::now(), 4);
        assert_eq!(figures.flows.len(), 4);
        let counts: Vec<u64> = figures.flows.iter().map(|f| f.flows).collect();
        // 10, 9, 8 kept; 7+6+…+1 = 28 summed.
        assert_eq!(counts, [10, 9, 8, 28]);
        assert_eq!(figures.flows[3].service, OTHER);
        assert_eq!(figures.flows[3].frontend, OTHER);
        assert_eq!(figures.flows[0].frontend, "10.0.0.1:10");
        let total: u64 = figures.flows.iter().map(|f| f.flows).sum();
        assert_eq!(total, 55, "nothing is lost by capping");
    }
}
