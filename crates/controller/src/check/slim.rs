//! Services and EndpointSlices decoded into only the fields `check --state` reads: what
//! ctdiff's parsers read (the mirror of its `IndexedKind::prune`) plus what the state reader's
//! own checks read (target ports, selectors, every endpoint address, non-UDP ports). Decoding
//! a whole k8s-openapi object costs an allocation for every string of it; a state file of a
//! large cluster is mostly fields nobody reads.
//!
//! Like k8s-openapi's decoders, these accept `null` for an absent field and ignore unknown
//! ones; a field that is read fails on a value of the wrong type just as there, and an object
//! is read only from a mapping (serde's derive alone would also fill one from an array, by
//! position).

use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::marker::PhantomData;

/// An object decoded only from a mapping, as k8s-openapi's decoders require.
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = MapOnly<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(MapOnly)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// An optional object (null: none), from a mapping only.
fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<MapOnly<T>>::deserialize(d)?.map(|o| o.0))
}

/// An optional list of objects (null: none), each from a mapping only.
fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    Ok(Option::<Vec<MapOnly<T>>>::deserialize(d)?.map(|v| v.into_iter().map(|o| o.0).collect()))
}

/// The labels any reader of a Service or EndpointSlice looks at.
const LABELS: &[&str] = &[
    ctdiff::LABEL_SERVICE_PROXY_NAME,
    ctdiff::LABEL_HEADLESS,
    ctdiff::LABEL_SERVICE_NAME,
];
/// The annotations any reader of a Service looks at.
const ANNOTATIONS: &[&str] = &[ctdiff::ANNOTATION_SKIP];

#[derive(Deserialize)]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default, deserialize_with = "labels")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "annotations")]
    annotations: Option<BTreeMap<String, String>>,
}

impl Meta {
    fn into_meta(self) -> ObjectMeta {
        ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            labels: self.labels,
            annotations: self.annotations,
            ..ObjectMeta::default()
        }
    }
}

fn labels<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    d.deserialize_option(KeptEntries(LABELS))
}

fn annotations<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    d.deserialize_option(KeptEntries(ANNOTATIONS))
}

/// A string-to-string map (null: none) of which only the given keys are kept; every value is
/// still required to be a string, as the full map's decoder requires.
struct KeptEntries(&'static [&'static str]);

impl<'de> Visitor<'de> for KeptEntries {
    type Value = Option<BTreeMap<String, String>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map of strings")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = BTreeMap::new();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let value = map.next_value::<Str<'de>>()?;
            if self.0.contains(&key.0.as_ref()) {
                kept.insert(key.0.into_owned(), value.0.into_owned());
            }
        }
        Ok(Some(kept))
    }
}

/// A string, borrowed from the text when it can be: most are only looked at.
struct Str<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Str(s.into()))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Str(s.to_owned().into()))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Str(s.into()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A v1 Service, slim.
#[derive(Deserialize)]
pub(crate) struct SlimService {
    #[serde(default, deserialize_with = "object")]
    metadata: Option<Meta>,
    #[serde(default, deserialize_with = "object")]
    spec: Option<SlimServiceSpec>,
    #[serde(default, deserialize_with = "object")]
    status: Option<SlimServiceStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimServiceSpec {
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Option<Vec<String>>,
    ip_families: Option<Vec<String>>,
    #[serde(rename = "externalIPs")]
    external_ips: Option<Vec<String>>,
    selector: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "objects")]
    ports: Option<Vec<SlimServicePort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimServicePort {
    name: Option<String>,
    protocol: Option<String>,
    port: Option<i32>,
    node_port: Option<i32>,
    target_port: Option<IntOrString>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimServiceStatus {
    #[serde(default, deserialize_with = "object")]
    load_balancer: Option<SlimLoadBalancer>,
}

#[derive(Deserialize)]
struct SlimLoadBalancer {
    #[serde(default, deserialize_with = "objects")]
    ingress: Option<Vec<SlimIngress>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimIngress {
    ip: Option<String>,
    ip_mode: Option<String>,
}

impl SlimService {
    /// The k8s-openapi Service holding what was decoded.
    pub(crate) fn into_service(self) -> Service {
        Service {
            metadata: self.metadata.map(Meta::into_meta).unwrap_or_default(),
            spec: self.spec.map(|spec| ServiceSpec {
                type_: spec.type_,
                cluster_ip: spec.cluster_ip,
                cluster_ips: spec.cluster_ips,
                ip_families: spec.ip_families,
                external_ips: spec.external_ips,
                selector: spec.selector,
                ports: spec.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|p| ServicePort {
                            name: p.name,
                            protocol: p.protocol,
                            port: p.port.unwrap_or_default(),
                            node_port: p.node_port,
                            target_port: p.target_port,
                            ..ServicePort::default()
                        })
                        .collect()
                }),
                ..ServiceSpec::default()
            }),
            status: self.status.map(|status| ServiceStatus {
                load_balancer: status.load_balancer.map(|lb| LoadBalancerStatus {
                    ingress: lb.ingress.map(|ingress| {
                        ingress
                            .into_iter()
                            .map(|i| LoadBalancerIngress {
                                ip: i.ip,
                                ip_mode: i.ip_mode,
                                ..LoadBalancerIngress::default()
                            })
                            .collect()
                    }),
                }),
                ..ServiceStatus::default()
            }),
        }
    }
}

/// A discovery.k8s.io/v1 EndpointSlice, slim.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SlimSlice {
    #[serde(default, deserialize_with = "object")]
    metadata: Option<Meta>,
    address_type: Option<String>,
    #[serde(default, deserialize_with = "objects")]
    endpoints: Option<Vec<SlimEndpoint>>,
    #[serde(default, deserialize_with = "objects")]
    ports: Option<Vec<SlimEndpointPort>>,
}

#[derive(Deserialize)]
struct SlimEndpoint {
    addresses: Option<Vec<String>>,
    #[serde(default, deserialize_with = "object")]
    conditions: Option<SlimConditions>,
}

#[derive(Deserialize)]
struct SlimConditions {
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Deserialize)]
struct SlimEndpointPort {
    name: Option<String>,
    port: Option<i32>,
    protocol: Option<String>,
}

impl SlimSlice {
    /// The k8s-openapi EndpointSlice holding what was decoded.
    pub(crate) fn into_slice(self) -> EndpointSlice {
        EndpointSlice {
            metadata: self.metadata.map(Meta::into_meta).unwrap_or_default(),
            address_type: self.address_type.unwrap_or_default(),
            endpoints: self
                .endpoints
                .unwrap_or_default()
                .into_iter()
                .map(|e| Endpoint {
                    addresses: e.addresses.unwrap_or_default(),
                    conditions: e.conditions.map(|c| EndpointConditions {
                        ready: c.ready,
                        serving: c.serving,
                        terminating: c.terminating,
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ports: self.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| EndpointPort {
                        name: p.name,
                        port: p.port,
                        protocol: p.protocol,
                        ..EndpointPort::default()
                    })
                    .collect()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctdiff::IndexedKind;

    const SERVICE: &str = r#"{"apiVersion":"v1","kind":"Service",
      "metadata":{"name":"dns","namespace":"kube-system","resourceVersion":"7","uid":"u",
        "labels":{"app":"dns","service.kubernetes.io/service-proxy-name":"other"},
        "annotations":{"conntrack-reconciler/skip":"true","other":"x"}},
      "spec":{"type":"LoadBalancer","clusterIP":"10.96.0.10","clusterIPs":["10.96.0.10","fd00::a"],
        "ipFamilies":["IPv4","IPv6"],"externalIPs":["192.0.2.1"],"selector":{"k8s-app":"dns"},
        "sessionAffinity":"None","ports":[
          {"name":"dns","port":53,"protocol":"UDP","targetPort":53,"nodePort":30053},
          {"name":"tcp","port":53,"protocol":"TCP","targetPort":"dns-tcp"},
          {"port":54}]},
      "status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.1","ipMode":"Proxy","hostname":"h"},
        {"ip":"198.51.100.2"}]}}}"#;

    const SLICE: &str = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
      "metadata":{"name":"dns-abc","namespace":"kube-system","generation":3,
        "labels":{"kubernetes.io/service-name":"dns","endpointslice.kubernetes.io/managed-by":"x"}},
      "addressType":"IPv4",
      "endpoints":[{"addresses":["10.244.0.5","10.244.0.6"],"nodeName":"n1",
          "conditions":{"ready":false,"serving":true,"terminating":true}},
        {"addresses":["10.244.0.7"]}],
      "ports":[{"name":"dns","port":53,"protocol":"UDP","appProtocol":"dns"},{"port":80}]}"#;

    /// What ctdiff reads of the slim object is what it reads of the full one, and so are the
    /// fields the state reader checks.
    #[test]
    fn slim_decoding_keeps_what_the_readers_read() {
        for text in [
            SERVICE,
            &SERVICE.replace("\"skip\":\"true\"", "\"skip\":null"),
        ] {
            let full: Service = serde_json::from_str(text).unwrap();
            let slim = serde_json::from_str::<SlimService>(text)
                .unwrap()
                .into_service();
            let (fs, ss) = (full.spec.clone().unwrap(), slim.spec.clone().unwrap());
            assert_eq!(fs.selector, ss.selector);
            let targets = |s: &ServiceSpec| -> Vec<Option<IntOrString>> {
                s.ports
                    .iter()
                    .flatten()
                    .map(|p| p.target_port.clone())
                    .collect()
            };
            assert_eq!(targets(&fs), targets(&ss));
            assert_eq!(
                fs.ports.as_ref().map(Vec::len),
                ss.ports.as_ref().map(Vec::len)
            );
            let (mut full, mut slim) = (full, slim);
            full.prune();
            slim.prune();
            // The resourceVersion is kept by prune for watches; `check` does not read it.
            full.metadata.resource_version = None;
            assert_eq!(full, slim);
        }
        let full: EndpointSlice = serde_json::from_str(SLICE).unwrap();
        let slim = serde_json::from_str::<SlimSlice>(SLICE)
            .unwrap()
            .into_slice();
        let addresses = |s: &EndpointSlice| -> Vec<Vec<String>> {
            s.endpoints.iter().map(|e| e.addresses.clone()).collect()
        };
        assert_eq!(addresses(&full), addresses(&slim));
        assert_eq!(
            full.ports.as_ref().map(Vec::len),
            slim.ports.as_ref().map(Vec::len)
        );
        let (mut full, mut slim) = (full, slim);
        full.prune();
        slim.prune();
        assert_eq!(full, slim);
    }

    /// A field that is read fails on a wrong type as the full decoding does; null is absent.
    #[test]
    fn slim_decoding_fails_where_the_full_one_does() {
        for (from, to) in [
            ("\"port\":53,", "\"port\":\"53\","),
            ("\"ready\":false", "\"ready\":\"no\""),
            ("\"name\":\"dns\",\"port\":53", "\"name\":5,\"port\":53"),
            ("\"addressType\":\"IPv4\"", "\"addressType\":4"),
            ("\"addresses\":[\"10.244.0.7\"]", "\"addresses\":null"),
        ] {
            let text = SLICE.replacen(from, to, 1);
            assert_ne!(text, SLICE, "{from}");
            let full = serde_json::from_str::<EndpointSlice>(&text);
            let slim = serde_json::from_str::<SlimSlice>(&text);
            assert_eq!(full.is_ok(), slim.is_ok(), "{from} -> {to}");
        }
        for (from, to) in [
            ("\"nodePort\":30053", "\"nodePort\":\"x\""),
            ("\"app\":\"dns\"", "\"app\":5"),
            ("\"other\":\"x\"", "\"other\":null"),
            ("\"ipFamilies\":[\"IPv4\",\"IPv6\"]", "\"ipFamilies\":null"),
        ] {
            let text = SERVICE.replacen(from, to, 1);
            assert_ne!(text, SERVICE, "{from}");
            let full = serde_json::from_str::<Service>(&text);
            let slim = serde_json::from_str::<SlimService>(&text);
            assert_eq!(full.is_ok(), slim.is_ok(), "{from} -> {to}");
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use ctdiff::IndexedKind;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// A value that is sometimes absent, sometimes null.
    fn maybe(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![Just(None), Just(Some(Value::Null)), v.prop_map(Some)]
    }

    fn text() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("UDP")),
            Just(json!("TCP")),
            Just(json!("10.0.0.1")),
            Just(json!("fd00::1")),
            Just(json!("true")),
            Just(json!("")),
            Just(json!("dns")),
        ]
    }

    fn any_scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            text(),
            (-2i64..70000).prop_map(|n| json!(n)),
            any::<bool>().prop_map(|b| json!(b))
        ]
    }

    fn map(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
        proptest::collection::vec((proptest::sample::select(keys), text()), 0..3).prop_map(
            |entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                )
            },
        )
    }

    /// An object with each of `fields` absent, null, or given by its strategy, plus an unknown
    /// field.
    fn object(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
        let parts: Vec<_> = fields
            .into_iter()
            .map(|(k, s)| maybe(s).prop_map(move |v| (k, v)))
            .collect();
        (parts, any_scalar())
            .prop_map(|(parts, extra)| {
                let mut out = serde_json::Map::new();
                for (k, v) in parts {
                    if let Some(v) = v {
                        out.insert(k.to_owned(), v);
                    }
                }
                out.insert("somethingElse".to_owned(), extra);
                Value::Object(out)
            })
            .boxed()
    }

    fn list(item: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
        proptest::collection::vec(item, 0..3)
            .prop_map(Value::Array)
            .boxed()
    }

    fn metadata() -> BoxedStrategy<Value> {
        const LABELS: &[&str] = &[
            "kubernetes.io/service-name",
            "service.kubernetes.io/service-proxy-name",
            "service.kubernetes.io/headless",
            "app",
        ];
        const ANNOTATIONS: &[&str] = &["conntrack-reconciler/skip", "other"];
        object(vec![
            ("name", text().boxed()),
            ("namespace", text().boxed()),
            ("labels", map(LABELS).boxed()),
            ("annotations", map(ANNOTATIONS).boxed()),
        ])
    }

    fn port_number() -> BoxedStrategy<Value> {
        prop_oneof![(-2i64..70000).prop_map(|n| json!(n)), text()].boxed()
    }

    fn service() -> BoxedStrategy<Value> {
        let port = object(vec![
            ("name", text().boxed()),
            ("protocol", text().boxed()),
            ("port", port_number()),
            ("nodePort", port_number()),
            ("targetPort", port_number()),
            ("appProtocol", text().boxed()),
        ]);
        let spec = object(vec![
            ("type", text().boxed()),
            ("clusterIP", text().boxed()),
            ("clusterIPs", list(text().boxed())),
            ("ipFamilies", list(text().boxed())),
            ("externalIPs", list(text().boxed())),
            ("selector", map(&["app"]).boxed()),
            ("ports", list(port)),
        ]);
        let ingress = object(vec![("ip", text().boxed()), ("ipMode", text().boxed())]);
        let status = object(vec![(
            "loadBalancer",
            object(vec![("ingress", list(ingress))]),
        )]);
        object(vec![
            ("metadata", metadata()),
            ("spec", spec),
            ("status", status),
        ])
    }

    fn slice() -> BoxedStrategy<Value> {
        let conditions = object(vec![
            ("ready", any_scalar().boxed()),
            ("serving", any::<bool>().prop_map(|b| json!(b)).boxed()),
            ("terminating", any::<bool>().prop_map(|b| json!(b)).boxed()),
        ]);
        let endpoint = object(vec![
            ("addresses", list(text().boxed())),
            ("conditions", conditions),
            ("nodeName", text().boxed()),
        ]);
        let port = object(vec![
            ("name", text().boxed()),
            ("protocol", text().boxed()),
            ("port", port_number()),
        ]);
        object(vec![
            ("metadata", metadata()),
            ("addressType", text().boxed()),
            ("endpoints", list(endpoint)),
            ("ports", list(port)),
        ])
    }

    proptest! {
        /// Generated Services: the slim decoding fails exactly when the full one does, and
        /// otherwise ctdiff reads the same of both (its prune is what it reads).
        #[test]
        fn slim_services_read_as_full_ones(value in service()) {
            let text = value.to_string();
            let full = serde_json::from_str::<Service>(&text);
            let slim = serde_json::from_str::<SlimService>(&text);
            prop_assert_eq!(full.is_ok(), slim.is_ok(), "{}", text);
            if let (Ok(mut full), Ok(slim)) = (full, slim) {
                let mut slim = slim.into_service();
                let spec = |s: &Service| s.spec.as_ref().map(|s| (s.selector.clone(), s.ports.as_ref().map(|p| p.iter().map(|p| (p.protocol.clone(), p.port, p.node_port, p.target_port.clone())).collect::<Vec<_>>())));
                prop_assert_eq!(spec(&full), spec(&slim));
                full.prune();
                slim.prune();
                full.metadata.resource_version = None;
                prop_assert_eq!(full, slim);
            }
        }

        /// Generated EndpointSlices, likewise.
        #[test]
        fn slim_slices_read_as_full_ones(value in slice()) {
            let text = value.to_string();
            let full = serde_json::from_str::<EndpointSlice>(&text);
            let slim = serde_json::from_str::<SlimSlice>(&text);
            prop_assert_eq!(full.is_ok(), slim.is_ok(), "{}", text);
            if let (Ok(mut full), Ok(slim)) = (full, slim) {
                let mut slim = slim.into_slice();
                let checked = |s: &EndpointSlice| (s.address_type.clone(), s.endpoints.iter().map(|e| e.addresses.clone()).collect::<Vec<_>>(), s.ports.clone());
                prop_assert_eq!(checked(&full), checked(&slim));
                full.prune();
                slim.prune();
                prop_assert_eq!(full, slim);
            }
        }
    }
}
