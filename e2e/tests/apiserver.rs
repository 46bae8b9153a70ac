//! The API double against a real kube `Client` and kube-runtime's watcher.

use e2e::apiserver::ApiServer;
use e2e::emulation::objects::{ServiceDef, node, pod};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

const PROXY_LABELS: &str = "!service.kubernetes.io/service-proxy-name";
const PROXY_FIELDS: &str = "spec.clusterIP!=None";

async fn client(server: &ApiServer) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn udp_service(name: &str, vip: &str) -> Service {
    ServiceDef::udp(name, &[ip(vip)], 53, 5353).to_service()
}

async fn next_event<K>(
    stream: &mut (impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Unpin),
) -> Event<K> {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("no watch event within 10 s")
            .expect("watch stream ended");
        match item {
            Ok(event) => return event,
            Err(err) => eprintln!("watcher error (retried): {err}"),
        }
    }
}

fn names<K: kube::Resource>(objects: &[K]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect()
}

/// Collects one initial list (Init .. InitDone) from the stream.
async fn initial_list<K: kube::Resource + Clone>(
    stream: &mut (impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Unpin),
) -> Vec<K> {
    let mut items = Vec::new();
    loop {
        match next_event(stream).await {
            Event::Init => items.clear(),
            Event::InitApply(obj) => items.push(obj),
            Event::InitDone => return items,
            Event::Apply(_) | Event::Delete(_) => panic!("change before the initial list ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lists_then_streams_changes_with_kube_proxy_selectors() {
    let server = ApiServer::start(&tokio::runtime::Handle::current()).unwrap();
    server.apply(&udp_service("dns", "10.96.0.10")).unwrap();
    let mut headless = udp_service("headless", "10.96.0.11");
    headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    headless.spec.as_mut().unwrap().cluster_ips = Some(vec!["None".into()]);
    server.apply(&headless).unwrap();
    let mut proxied = udp_service("proxied", "10.96.0.12");
    proxied.metadata.labels = Some(BTreeMap::from([(
        "service.kubernetes.io/service-proxy-name".to_string(),
        "other".to_string(),
    )]));
    server.apply(&proxied).unwrap();

    let api: Api<Service> = Api::all(client(&server).await);
    let config = watcher::Config::default()
        .labels(PROXY_LABELS)
        .fields(PROXY_FIELDS);
    let mut stream = watcher::watcher(api, config).boxed();
    assert_eq!(names(&initial_list(&mut stream).await), ["dns"]);

    server.apply(&udp_service("web", "10.96.0.20")).unwrap();
    match next_event(&mut stream).await {
        Event::Apply(svc) => assert_eq!(svc.metadata.name.as_deref(), Some("web")),
        other => panic!("expected Apply(web), got {other:?}"),
    }
    // A service gaining the proxy-name label leaves the selection: the watch says DELETED.
    let mut web = server.get::<Service>("default", "web").unwrap();
    web.metadata.labels = proxied.metadata.labels.clone();
    server.apply(&web).unwrap();
    match next_event(&mut stream).await {
        Event::Delete(svc) => assert_eq!(svc.metadata.name.as_deref(), Some("web")),
        other => panic!("expected Delete(web), got {other:?}"),
    }
    server.delete::<Service>("default", "dns").unwrap();
    match next_event(&mut stream).await {
        Event::Delete(svc) => assert_eq!(svc.metadata.name.as_deref(), Some("dns")),
        other => panic!("expected Delete(dns), got {other:?}"),
    }
    let watches = server
        .requests()
        .iter()
        .filter(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true"))
        .count();
    assert!(watches >= 1, "{:?}", server.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_resource_version_answers_410_and_the_watcher_relists() {
    let server = ApiServer::start(&tokio::runtime::Handle::current()).unwrap();
    server.apply(&udp_service("dns", "10.96.0.10")).unwrap();
    let client = client(&server).await;

    // Raw watch from a version the history no longer holds: one ERROR event, code 410.
    server.apply(&udp_service("web", "10.96.0.20")).unwrap();
    server.compact();
    let api: Api<Service> = Api::all(client.clone());
    let mut raw = api
        .watch(&kube::api::WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match raw.try_next().await.unwrap() {
        Some(kube::api::WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // A watcher (bookmarks off, so its version only moves with Service events) is cut off while
    // another kind changes and the history is compacted: it must relist and see the new state.
    let config = watcher::Config::default().disable_bookmarks();
    let mut stream = watcher::watcher(api, config).boxed();
    assert_eq!(names(&initial_list(&mut stream).await), ["dns", "web"]);
    server
        .apply(&pod("default", "p", "node-a", &[ip("10.244.0.10")], false))
        .unwrap();
    server.compact();
    server.drop_watches();
    let relisted = initial_list(&mut stream).await;
    assert_eq!(names(&relisted), ["dns", "web"]);
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("/api/v1/services?") && !r.contains("watch=true"))
        .count();
    assert_eq!(lists, 2, "{:?}", server.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_pod_field_selectors_and_streaming_lists() {
    let server = ApiServer::start(&tokio::runtime::Handle::current()).unwrap();
    server
        .apply(&node("node-a", &[ip("192.168.77.1")]))
        .unwrap();
    server
        .apply(&node("node-b", &[ip("192.168.77.3")]))
        .unwrap();
    server
        .apply(&pod(
            "default",
            "here",
            "node-a",
            &[ip("10.244.0.10")],
            false,
        ))
        .unwrap();
    server
        .apply(&pod(
            "default",
            "there",
            "node-b",
            &[ip("10.244.1.10")],
            false,
        ))
        .unwrap();
    let client = client(&server).await;

    let nodes: Api<Node> = Api::all(client.clone());
    let config = watcher::Config::default().fields("metadata.name=node-a");
    let mut stream = watcher::watcher(nodes, config).boxed();
    assert_eq!(names(&initial_list(&mut stream).await), ["node-a"]);

    // kube-runtime's streaming list: sendInitialEvents=true, ended by the initial-events-end
    // bookmark.
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default()
        .fields("spec.nodeName=node-a")
        .streaming_lists();
    let mut stream = watcher::watcher(pods, config).boxed();
    assert_eq!(names(&initial_list(&mut stream).await), ["here"]);
    server
        .apply(&pod(
            "default",
            "new",
            "node-a",
            &[ip("10.244.0.11")],
            false,
        ))
        .unwrap();
    server
        .apply(&pod(
            "default",
            "elsewhere",
            "node-b",
            &[ip("10.244.1.11")],
            false,
        ))
        .unwrap();
    match next_event(&mut stream).await {
        Event::Apply(p) => assert_eq!(p.metadata.name.as_deref(), Some("new")),
        other => panic!("expected Apply(new), got {other:?}"),
    }
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.contains("sendInitialEvents=true")),
        "{:?}",
        server.requests()
    );

    // Unsupported field selectors are refused, as by kube-apiserver.
    let services: Api<Service> = Api::all(client);
    let err = services
        .list(&kube::api::ListParams::default().fields("spec.nodeName=x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_answer_500_then_the_watcher_recovers() {
    let server = ApiServer::start(&tokio::runtime::Handle::current()).unwrap();
    server.apply(&udp_service("dns", "10.96.0.10")).unwrap();
    let api: Api<Service> = Api::all(client(&server).await);
    server.fail_for(Duration::from_millis(600));
    let err = api.list(&Default::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 500),
        "{err:?}"
    );
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    assert_eq!(names(&initial_list(&mut stream).await), ["dns"]);

    // A stall holds events; they arrive once it is over.
    server.stall_for(Duration::from_millis(500));
    let started = std::time::Instant::now();
    server.apply(&udp_service("web", "10.96.0.20")).unwrap();
    match next_event(&mut stream).await {
        Event::Apply(svc) => assert_eq!(svc.metadata.name.as_deref(), Some("web")),
        other => panic!("expected Apply(web), got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_kind_faults_hit_one_kind_only() {
    use e2e::apiserver::Fault;
    use e2e::apiserver::kinds::Kind;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let server = ApiServer::start(&tokio::runtime::Handle::current()).unwrap();
    server.apply(&udp_service("dns", "10.96.0.10")).unwrap();
    let client = client(&server).await;
    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let code = |r: Result<_, kube::Error>| match r {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(other) => panic!("{other:?}"),
    };

    for (fault, expected) in [(Fault::InternalError, 500), (Fault::Forbidden, 403)] {
        server.inject(Kind::EndpointSlice, fault, Duration::from_secs(30));
        assert_eq!(server.fault(Kind::EndpointSlice), Some(fault));
        assert_eq!(
            code(slices.list(&Default::default()).await.map(|_| ())),
            expected
        );
        assert_eq!(
            code(services.list(&Default::default()).await.map(|_| ())),
            200
        );
        server.heal(Kind::EndpointSlice);
        assert_eq!(
            code(slices.list(&Default::default()).await.map(|_| ())),
            200
        );
    }

    // 410 for one kind: its watches get an Expired ERROR event, its lists work, other kinds'
    // watches are untouched.
    let rv = server.resource_version().to_string();
    server.inject(Kind::Service, Fault::Gone, Duration::from_secs(30));
    let mut raw = services
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match raw.try_next().await.unwrap() {
        Some(kube::api::WatchEvent::Error(status)) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert_eq!(
        code(services.list(&Default::default()).await.map(|_| ())),
        200
    );
    let mut other_kind = slices
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    server.heal(Kind::Service);

    // A stall of one kind holds its requests, not the others'.
    server.inject(Kind::Service, Fault::Stall, Duration::from_millis(600));
    let started = std::time::Instant::now();
    slices.list(&Default::default()).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));
    services.list(&Default::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    // The EndpointSlice watch opened during the Service fault still delivers.
    server
        .apply(&e2e::emulation::objects::endpoint_slice(
            &ServiceDef::udp("dns", &[ip("10.96.0.10")], 53, 5353),
            "dns-ipv4",
            false,
            &[],
            &[],
        ))
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), other_kind.try_next())
            .await
            .expect("the other kind's watch delivers")
            .unwrap()
        {
            Some(kube::api::WatchEvent::Added(s)) => {
                assert_eq!(s.metadata.name.as_deref(), Some("dns-ipv4"));
                break;
            }
            Some(kube::api::WatchEvent::Bookmark(_)) => continue,
            other => panic!("expected Added(dns-ipv4), got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_bookmarks_stop_on_a_frozen_watch_which_then_ends() {
    use e2e::apiserver::Fault;
    use e2e::apiserver::kinds::Kind;
    let server = ApiServer::start(&tokio::runtime::Handle::current()).unwrap();
    server.set_bookmark_interval(Some(Duration::from_millis(200)));
    server.apply(&udp_service("dns", "10.96.0.10")).unwrap();
    let services: Api<Service> = Api::all(client(&server).await);
    let rv = server.resource_version().to_string();
    let params = kube::api::WatchParams::default(); // bookmarks are on by default
    let mut stream = services.watch(&params, &rv).await.unwrap().boxed();
    // A bookmark comes with the newest version, also after a change of another kind.
    server
        .apply(&pod("default", "p", "node-a", &[ip("10.244.0.10")], false))
        .unwrap();
    let newest = server.resource_version().to_string();

    match tokio::time::timeout(Duration::from_millis(1500), stream.try_next())
        .await
        .expect("a bookmark within 1.5 s")
        .unwrap()
    {
        Some(kube::api::WatchEvent::Bookmark(b)) => {
            assert_eq!(b.metadata.resource_version, newest)
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }

    // Frozen: nothing at all, though the kind changes; then the stream ends.
    server.inject(Kind::Service, Fault::Freeze, Duration::from_millis(1200));
    server.apply(&udp_service("web", "10.96.0.20")).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), stream.try_next())
            .await
            .is_err(),
        "a frozen watch delivered something"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(3), stream.try_next())
            .await
            .expect("the frozen stream ends after the fault")
            .unwrap()
            .is_none()
    );
    // Resuming from the last version delivers what the freeze held back.
    let mut stream = services.watch(&params, &newest).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_millis(1500), stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(kube::api::WatchEvent::Added(s)) => {
            assert_eq!(s.metadata.name.as_deref(), Some("web"))
        }
        other => panic!("expected Added(web), got {other:?}"),
    }
    assert_eq!(server.bookmark_interval(), Some(Duration::from_millis(200)));
}
