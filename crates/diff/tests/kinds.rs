//! The per-kind trait (`IndexedKind`), the owner lookup, pruning and the exported selectors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

mod common;

use std::time::{Duration, Instant};

use common::*;
use ctdiff::k8s_openapi::api::core::v1::{Container, ContainerPort, Node, Pod, Service};
use ctdiff::k8s_openapi::api::discovery::v1::EndpointSlice;
use ctdiff::k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use ctdiff::{
    Frontend, Index, IndexConfig, IndexedKind, Kind, Owner, Relist, Report, ServiceName, Verdict,
};

const NODE_IP: &str = "192.168.1.10";

fn dns_service() -> Service {
    mk_service(
        "kube-system",
        "dns",
        &["10.96.0.10"],
        vec![udp_np("dns", 53, 30053)],
    )
}

fn dns_slice() -> EndpointSlice {
    mk_slice(
        "kube-system",
        "dns-abc",
        "dns",
        &[("dns", 5353)],
        vec![ep("10.244.1.5")],
    )
}

fn agent_pod() -> Pod {
    mk_pod(
        "monitoring",
        "agent",
        NODE,
        &["10.244.0.9"],
        &[(None, 8125, 8125)],
    )
}

fn index(now: Instant) -> Index {
    mk_index(
        &[dns_service()],
        &[dns_slice()],
        &[agent_pod()],
        &[NODE_IP],
        now,
    )
}

fn owner<'a>(ns: &'a str, name: &'a str, port: &'a str, frontend: Frontend) -> Owner<'a> {
    Owner {
        service: ServiceName {
            namespace: ns,
            name,
        },
        port,
        frontend,
        deleted: false,
        opted_out: false,
    }
}

// ---- the owner lookup ----

#[test]
fn owner_of_names_each_kind_of_frontend() {
    let now = Instant::now();
    let index = index(now);
    let dns = |frontend| owner("kube-system", "dns", "dns", frontend);
    assert_eq!(
        index.owner_of(sock("10.96.0.10:53"), now),
        Some(dns(Frontend::Addr(sock("10.96.0.10:53"))))
    );
    assert_eq!(
        index.owner_of(sock("192.168.1.10:30053"), now),
        Some(dns(Frontend::NodePort(30053))),
        "a NodePort reached on a node address"
    );
    assert_eq!(
        index.owner_of(sock("192.168.1.10:8125"), now),
        Some(owner(
            "monitoring",
            "agent",
            "",
            Frontend::HostPort(sock("192.168.1.10:8125"))
        )),
        "a host port on every node address"
    );
    assert_eq!(
        index.owner_of(sock("10.0.0.1:30053"), now),
        None,
        "not a node address: no NodePort there"
    );
    assert_eq!(index.owner_of(sock("10.96.0.10:54"), now), None);
}

#[test]
fn owner_of_names_a_deleted_owner_until_its_tombstone_lapses() {
    let now = Instant::now();
    let mut index = index(now);
    let _ = index.delete(&dns_service(), now);
    let found = index.owner_of(sock("10.96.0.10:53"), now);
    assert_eq!(
        found,
        Some(Owner {
            deleted: true,
            ..owner(
                "kube-system",
                "dns",
                "dns",
                Frontend::Addr(sock("10.96.0.10:53"))
            )
        })
    );
    let later = now + index.config().tombstone_ttl + Duration::from_secs(1);
    assert_eq!(index.owner_of(sock("10.96.0.10:53"), later), None);
}

#[test]
fn owner_of_names_opted_out_and_not_yet_listed_owners() {
    let now = Instant::now();
    let skipped = with_annotation(dns_service(), ctdiff::ANNOTATION_SKIP, "true");
    let index = mk_index(&[skipped], &[dns_slice()], &[], &[NODE_IP], now);
    let found = index.owner_of(sock("10.96.0.10:53"), now);
    assert_eq!(found.map(|o| o.opted_out), Some(true));
    assert_eq!(
        found.map(|o| o.service.to_string()).as_deref(),
        Some("kube-system/dns")
    );

    // Before any list: verdicts are Keep, but the owner is known.
    let mut index = Index::new(IndexConfig::new(NODE));
    let _ = index.apply(&dns_service(), now);
    assert_eq!(
        index.classify(&flow("10.96.0.10:53", "10.244.9.9:5353"), now),
        Verdict::Keep
    );
    assert_eq!(
        index.owner_of(sock("10.96.0.10:53"), now),
        Some(owner(
            "kube-system",
            "dns",
            "dns",
            Frontend::Addr(sock("10.96.0.10:53"))
        ))
    );
}

#[test]
fn owner_of_agrees_with_the_verdicts_it_replaces() {
    // The lookup the controller used before: a probe flow answered by its own destination is
    // stale (not DNATed, or its owner deleted) and the verdict names the owner.
    let now = Instant::now();
    let other = mk_service(
        "ns",
        "other",
        &["10.96.0.80"],
        vec![udp("", 53), udp_np("np", 54, 30054)],
    );
    let mut index = mk_index(
        &[dns_service(), other.clone()],
        &[dns_slice()],
        &[agent_pod()],
        &[NODE_IP, "fd00::10"],
        now,
    );
    let _ = index.delete(&other, now);
    let dsts = [
        "10.96.0.10:53",
        "10.96.0.80:53",
        "10.96.0.80:54",
        "192.168.1.10:30053",
        "192.168.1.10:30054",
        "192.168.1.10:8125",
        "[fd00::10]:30053", // an IPv4-only Service's NodePort: not on IPv6 node addresses
        "10.96.0.10:5353",
        "10.0.0.1:30053",
    ];
    let mut named = 0;
    for dst in dsts {
        let dst = sock(dst);
        let probe = index.classify(&ctdiff::FlowRef::udp(dst, dst), now);
        let found = index.owner_of(dst, now);
        match probe {
            Verdict::Stale(stale) => {
                named += 1;
                let found = found.unwrap_or_else(|| panic!("{dst}: no owner"));
                assert_eq!(
                    (found.service, found.port, found.frontend),
                    (stale.service, stale.port, stale.frontend),
                    "{dst}"
                );
            }
            _ => assert_eq!(found, None, "{dst}"),
        }
    }
    assert_eq!(named, 6);
}

#[test]
fn owner_looks_up_a_frontend_as_the_index_keys_it() {
    let now = Instant::now();
    let index = index(now);
    assert_eq!(
        index
            .owner(Frontend::NodePort(30053), now)
            .map(|o| o.frontend),
        Some(Frontend::NodePort(30053))
    );
    let any = Frontend::HostPort(sock("0.0.0.0:8125"));
    assert_eq!(
        index.owner(any, now),
        Some(owner("monitoring", "agent", "", any))
    );
    assert_eq!(
        index.owner(Frontend::HostPort(sock("192.168.1.10:8125")), now),
        None,
        "bound to every address, not to that one"
    );
    let addr = Frontend::Addr(sock("10.96.0.10:53"));
    assert_eq!(
        index.owner(addr, now),
        Some(owner("kube-system", "dns", "dns", addr))
    );
    // The frontends a dirty set names resolve to their owners.
    let dirty = {
        let mut index = Index::new(IndexConfig::new(NODE));
        let _ = index.apply(&dns_service(), now);
        index.take_dirty()
    };
    let mut named: Vec<String> = dirty
        .frontends
        .iter()
        .filter_map(|f| index.owner(*f, now))
        .map(|o| format!("{} {}", o.service, o.frontend))
        .collect();
    named.sort();
    assert_eq!(
        named,
        [
            "kube-system/dns 10.96.0.10:53",
            "kube-system/dns nodeport/30053"
        ]
    );
}

// ---- the per-kind trait ----

/// A watch feed generic over the kind, as the controller writes one.
fn list_then_watch<K: IndexedKind>(index: &mut Index, listed: &[K], now: Instant) -> Report {
    let mut relist = Relist::<K>::default();
    let mut report = Report::default();
    for obj in listed {
        report.merge(index.relist(&mut relist, obj, now));
    }
    if K::KIND != Kind::Nodes {
        // Only this node's Node object is read: a Node relist deletes nothing.
        assert_eq!(relist.len(), listed.len());
    }
    report.merge(index.finish_relist(relist, now));
    report
}

#[test]
fn every_kind_is_fed_through_one_trait() {
    assert_eq!(Service::KIND, Kind::Services);
    assert_eq!(EndpointSlice::KIND, Kind::EndpointSlices);
    assert_eq!(Pod::KIND, Kind::Pods);
    assert_eq!(Node::KIND, Kind::Nodes);

    let now = Instant::now();
    let mut index = Index::new(IndexConfig::new(NODE));
    assert!(list_then_watch(&mut index, &[dns_service()], now).is_empty());
    assert!(!index.services_complete());
    assert!(list_then_watch(&mut index, &[dns_slice()], now).is_empty());
    assert!(index.services_complete());
    assert!(list_then_watch(&mut index, &[agent_pod()], now).is_empty());
    assert!(index.pods_complete());
    assert!(list_then_watch(&mut index, &[mk_node(NODE, &[NODE_IP])], now).is_empty());
    let stale =
        |index: &Index, dst: &str, reply: &str| index.classify(&flow(dst, reply), now).reason();
    assert_eq!(stale(&index, "10.96.0.10:53", "10.244.1.5:5353"), None);
    assert!(stale(&index, "192.168.1.10:30053", "10.244.1.6:5353").is_some());
    assert!(stale(&index, "192.168.1.10:8125", "10.244.0.7:8125").is_some());

    // Watch events, through the same trait.
    let _ = index.delete(&agent_pod(), now);
    assert!(
        index
            .owner_of(sock("192.168.1.10:8125"), now)
            .is_some_and(|o| o.deleted)
    );
    let _ = index.apply(&agent_pod(), now);
    assert!(
        index
            .owner_of(sock("192.168.1.10:8125"), now)
            .is_some_and(|o| !o.deleted)
    );
    // Our own Node going away keeps its addresses.
    let _ = index.delete(&mk_node(NODE, &[NODE_IP]), now);
    assert!(stale(&index, "192.168.1.10:30053", "10.244.1.6:5353").is_some());
}

#[test]
fn a_relist_deletes_what_it_did_not_list_only_when_it_ends() {
    let now = Instant::now();
    let mut index = index(now);
    let healthy = flow("10.96.0.10:53", "10.244.1.5:5353");
    let mut relist = Relist::<Service>::default();
    let skipped = index.relist(&mut relist, &Service::default(), now);
    assert_eq!(skipped.len(), 1, "a nameless object is reported once");
    assert_eq!(relist.len(), 0);
    assert_eq!(index.classify(&healthy, now), Verdict::Keep);
    let _ = index.finish_relist(relist, now);
    assert_eq!(
        index.classify(&healthy, now).reason(),
        Some(ctdiff::Reason::ServiceDeleted)
    );
}

#[test]
fn reset_reports_each_skipped_object_once() {
    let now = Instant::now();
    let mut index = Index::new(IndexConfig::new(NODE));
    let bad = mk_service("ns", "bad", &["not-an-ip", "10.96.0.9"], vec![udp("", 53)]);
    let report = index.reset([&bad], now);
    assert_eq!(report.len(), 1, "{report:?}");
}

// ---- pruning ----

fn rich_objects() -> (Vec<Service>, Vec<EndpointSlice>, Vec<Pod>, Vec<Node>) {
    let mut dns = with_annotation(dns_service(), "kubectl.kubernetes.io/last-applied", "{}");
    dns.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
    dns.metadata.resource_version = Some("42".into());
    let spec = dns.spec.as_mut().unwrap();
    spec.selector = Some([("app".to_owned(), "dns".to_owned())].into());
    spec.ports
        .as_mut()
        .unwrap()
        .push(port("TCP", "dns-tcp", 53, None));
    let services = vec![
        dns,
        with_lb(
            with_external_ips(
                with_ip_families(
                    mk_service("ns", "lb", &["10.96.0.20"], vec![udp_np("a", 500, 30500)]),
                    &["IPv4"],
                ),
                &["203.0.113.7", "2001:db8::7", "bad-ip"],
            ),
            &[("198.51.100.9", None), ("198.51.100.10", Some("Proxy"))],
        ),
        with_annotation(
            mk_service("ns", "skip", &["10.96.0.30"], vec![udp("", 53)]),
            ctdiff::ANNOTATION_SKIP,
            "true",
        ),
        with_label(
            mk_service("ns", "proxied", &["10.96.0.40"], vec![udp("", 53)]),
            ctdiff::LABEL_SERVICE_PROXY_NAME,
            "other",
        ),
        mk_service("ns", "bad-port", &["10.96.0.50"], vec![udp("", 70000)]),
    ];
    let mut slice = mk_slice(
        "kube-system",
        "dns-abc",
        "dns",
        &[("dns", 5353)],
        vec![
            ep_cond("10.244.1.5", Some(true), None, None),
            ep_cond("10.244.1.6", Some(false), Some(true), Some(true)),
            ep_cond("10.244.1.7", Some(false), Some(true), None),
        ],
    );
    slice.endpoints[0].addresses.push("10.244.1.55".into());
    slice.endpoints[0].hostname = Some("a".into());
    slice
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("endpointslice.kubernetes.io/managed-by".into(), "x".into());
    let mut fqdn = mk_slice("ns", "fqdn", "lb", &[("a", 500)], vec![ep("example.com")]);
    fqdn.address_type = "FQDN".into();
    let slices = vec![
        slice,
        fqdn,
        mk_slice(
            "ns",
            "lb-1",
            "lb",
            &[("a", 500)],
            vec![ep("10.244.2.1"), ep("x")],
        ),
    ];
    let mut sidecar = mk_pod("ns", "sidecar", NODE, &["10.244.0.11"], &[]);
    let spec = sidecar.spec.as_mut().unwrap();
    spec.init_containers = Some(vec![Container {
        name: "agent".into(),
        restart_policy: Some("Always".into()),
        ports: Some(vec![ContainerPort {
            container_port: 9125,
            host_port: Some(9125),
            protocol: Some("UDP".into()),
            ..ContainerPort::default()
        }]),
        ..Container::default()
    }]);
    spec.containers[0].env = Some(vec![]);
    let mut host_network = mk_pod(
        "ns",
        "hostnet",
        NODE,
        &["192.168.1.10"],
        &[(None, 7000, 7000)],
    );
    host_network.spec.as_mut().unwrap().host_network = Some(true);
    let mut finished = mk_pod("ns", "done", NODE, &["10.244.0.12"], &[(None, 7001, 7001)]);
    finished.status.as_mut().unwrap().phase = Some("Succeeded".into());
    let pods = vec![
        agent_pod(),
        sidecar,
        host_network,
        finished,
        mk_pod(
            "ns",
            "elsewhere",
            "node-b",
            &["10.244.9.1"],
            &[(None, 7002, 7002)],
        ),
        mk_pod(
            "ns",
            "bound",
            NODE,
            &["10.244.0.13", "fd00::13"],
            &[(Some(NODE_IP), 7003, 7003), (Some("bad"), 7004, 7004)],
        ),
    ];
    let nodes = vec![
        mk_node_typed(
            NODE,
            &[
                ("InternalIP", NODE_IP),
                ("Hostname", "a"),
                ("ExternalIP", "203.0.113.1"),
            ],
        ),
        mk_node("node-b", &["192.168.1.11"]),
    ];
    (services, slices, pods, nodes)
}

fn pruned<K: IndexedKind + Clone>(objects: &[K]) -> Vec<K> {
    objects
        .iter()
        .cloned()
        .map(|mut o| {
            o.prune();
            o
        })
        .collect()
}

fn build(
    services: &[Service],
    slices: &[EndpointSlice],
    pods: &[Pod],
    nodes: &[Node],
    now: Instant,
) -> (Index, Vec<Report>) {
    let mut index = Index::new(IndexConfig::new(NODE));
    let mut reports = vec![
        index.reset(services, now),
        index.reset(slices, now),
        index.reset(pods, now),
    ];
    reports.extend(nodes.iter().map(|n| index.apply(n, now)));
    // Deletions carry the object too.
    reports.push(index.delete(&services[1], now));
    reports.push(index.delete(&pods[1], now));
    (index, reports)
}

#[test]
fn pruned_objects_parse_to_the_same_state_and_reports() {
    let now = Instant::now();
    let (services, slices, pods, nodes) = rich_objects();
    let (full, full_reports) = build(&services, &slices, &pods, &nodes, now);
    let (small, small_reports) = build(
        &pruned(&services),
        &pruned(&slices),
        &pruned(&pods),
        &pruned(&nodes),
        now,
    );
    assert_eq!(full_reports, small_reports);
    assert!(full_reports.iter().map(Report::len).sum::<usize>() > 5);
    assert_eq!(full.stats(), small.stats());
    let dsts = [
        "10.96.0.10:53",
        "10.96.0.20:500",
        "203.0.113.7:500",
        "198.51.100.9:500",
        "198.51.100.10:500",
        "10.96.0.30:53",
        "10.96.0.40:53",
        "192.168.1.10:30053",
        "203.0.113.1:30500",
        "192.168.1.10:8125",
        "192.168.1.10:9125",
        "192.168.1.10:7000",
        "192.168.1.10:7001",
        "192.168.1.10:7002",
        "192.168.1.10:7003",
    ];
    let replies = [
        "10.244.1.5:5353",
        "10.244.1.6:5353",
        "10.244.1.7:5353",
        "10.244.1.55:5353",
        "10.244.2.1:500",
        "10.244.0.9:8125",
        "10.244.0.11:9125",
        "10.244.0.13:7003",
        "10.244.0.99:1",
    ];
    let mut judged = 0;
    for dst in dsts {
        for reply in replies {
            let f = flow(dst, reply);
            assert_eq!(
                full.classify(&f, now),
                small.classify(&f, now),
                "{dst} → {reply}"
            );
            judged += usize::from(full.classify(&f, now) != Verdict::Unrelated);
        }
        assert_eq!(
            full.owner_of(sock(dst), now),
            small.owner_of(sock(dst), now),
            "{dst}"
        );
    }
    assert!(judged > 50, "the grid reaches the frontends ({judged})");
}

#[test]
fn pruning_drops_what_the_engine_does_not_read() {
    let (services, slices, pods, nodes) = rich_objects();
    let svc = &pruned(&services)[0];
    assert!(svc.metadata.managed_fields.is_none());
    assert_eq!(svc.metadata.resource_version.as_deref(), Some("42"));
    assert!(
        svc.metadata.annotations.is_none(),
        "only the skip annotation is kept"
    );
    let spec = svc.spec.as_ref().unwrap();
    assert!(spec.selector.is_none());
    assert_eq!(spec.ports.as_ref().unwrap().len(), 1, "UDP ports only");
    let skip = &pruned(&services)[2];
    assert_eq!(
        skip.metadata.annotations,
        Some([(ctdiff::ANNOTATION_SKIP.to_owned(), "true".to_owned())].into())
    );
    let slice = &pruned(&slices)[0];
    assert_eq!(slice.endpoints[0].addresses, ["10.244.1.5"]);
    assert!(slice.endpoints[0].hostname.is_none());
    assert_eq!(
        slice.metadata.labels,
        Some([(ctdiff::LABEL_SERVICE_NAME.to_owned(), "dns".to_owned())].into())
    );
    let pod = &pruned(&pods)[1];
    let spec = pod.spec.as_ref().unwrap();
    assert!(
        spec.containers.is_empty(),
        "no UDP host port in the main container"
    );
    assert_eq!(spec.init_containers.as_ref().map(Vec::len), Some(1));
    let node = &pruned(&nodes)[0];
    assert_eq!(
        node.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(Vec::len),
        Some(3)
    );
}

// ---- selectors ----

#[test]
fn selectors_are_built_from_the_label_keys() {
    // kube-proxy's: `!service-proxy-name,!headless` (Services and EndpointSlices alike).
    assert_eq!(
        ctdiff::SERVICE_LABEL_SELECTOR,
        format!(
            "!{},!{}",
            ctdiff::LABEL_SERVICE_PROXY_NAME,
            ctdiff::LABEL_HEADLESS
        )
    );
    assert_eq!(
        ctdiff::ENDPOINT_SLICE_LABEL_SELECTOR,
        format!("!{}", ctdiff::LABEL_HEADLESS)
    );
    assert_eq!(ctdiff::LABEL_HEADLESS, "service.kubernetes.io/headless");
    assert_eq!(
        ctdiff::LABEL_SERVICE_PROXY_NAME,
        "service.kubernetes.io/service-proxy-name"
    );
}
