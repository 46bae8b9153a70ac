//! Reviewer's attacks on `check --state` decoding.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use conntrack_reconciler::check::state_files::ClusterState;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The slim decoders are `#[derive(Deserialize)]` structs, which serde also fills from a JSON
/// array, field by field in declaration order; k8s-openapi's decoders accept only a mapping. So
/// a state file the full decoding refuses (kubectl never writes these) is read, and read by
/// position: `conditions: [false, true, false]` becomes ready=false, serving=true,
/// terminating=false. The generated objects of the slim/full property tests are mappings
/// only, so they never see it.
#[test]
fn slim_decoding_refuses_what_the_full_one_refuses_arrays_for_objects() {
    let slice = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
      "metadata":{"name":"a","namespace":"n","labels":{"kubernetes.io/service-name":"s"}},
      "addressType":"IPv4",
      "endpoints":[{"addresses":["10.244.1.5"],"conditions":[false,true,false]}],
      "ports":[{"name":"dns","port":53,"protocol":"UDP"}]}"#;
    let service = r#"{"apiVersion":"v1","kind":"Service",
      "metadata":["s","n",null,null],
      "spec":{"clusterIP":"10.96.0.10","ports":[["dns","UDP",53,null,53]]}}"#;
    assert!(serde_json::from_str::<EndpointSlice>(slice).is_err());
    assert!(serde_json::from_str::<Service>(service).is_err());
    for text in [slice, service] {
        let mut state = ClusterState::default();
        assert!(
            state.add_text(text).is_err(),
            "read although k8s-openapi refuses it: {text}\n{:?}\n{:?}",
            state.services,
            state.slices
        );
    }
}
