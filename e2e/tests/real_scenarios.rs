//! Every real-component scenario ([`e2e::real::scenarios`]) on the two flavours CI runs:
//! kube-proxy v1.31 with its cleanup lost (`conntrack` missing: only the agent can recover) and
//! kube-proxy v1.34 in iptables mode (its own reconciler racing with the agent's). With the
//! agent, each asserts no false deletion, no failed deletion and a recovery within
//! [`AGENT_BOUND`]; the without-agent baseline runs where it is cheap (v1.34, whose own
//! reconciler recovers, and the headline on v1.31-lost-cleanup, which must stay blackholed).
//! The full matrix (four flavours, both ways, repeated) is `real-bench`.
//!
//! Needs root, the built components (`cargo xtask k8s`) and the agent binary: outside CI each
//! test skips with one line when one is missing; in CI it fails instead. Clusters run one at a
//! time unless `CONNTRACK_RECONCILER_REAL_PARALLEL` says more.

mod common;

use common::{agent_binary, lab};
use e2e::real::scenarios::{RealOutcome, RealRunConfig, RealScenario, check_invariants, run};
use e2e::real::{K8sBinaries, ProxyFlavour};
use std::path::PathBuf;
use std::time::Duration;

/// The bound on recovery with the agent: generous, a shared 2-core machine runs the cluster.
const AGENT_BOUND: Duration = Duration::from_secs(20);
/// The agent runs' observation window (only reached on failure).
const AGENT_WINDOW: Duration = Duration::from_secs(30);
/// The baseline's observation window.
const BASELINE_WINDOW: Duration = Duration::from_secs(8);

fn run_one(
    test: &str,
    scenario: RealScenario,
    k8s: &K8sBinaries,
    flavour: ProxyFlavour,
    agent: Option<PathBuf>,
) -> RealOutcome {
    let with_agent = agent.is_some();
    let config = RealRunConfig {
        k8s: k8s.clone(),
        lab: lab(),
        agent,
        flavour,
        window: if with_agent {
            AGENT_WINDOW
        } else {
            BASELINE_WINDOW
        },
        label: "test".into(),
    };
    let outcome =
        run(scenario, &config).unwrap_or_else(|e| panic!("{test}: {}: {e:#}", flavour.name()));
    eprintln!("{test}: {}", outcome.summary());
    outcome
}

/// Runs `scenario` with the agent on both CI flavours (and the cheap baselines).
fn scenario_on_ci_flavours(test: &str, scenario: RealScenario) {
    let Some(k8s) = K8sBinaries::for_test(test) else {
        return;
    };
    let Some(agent) = agent_binary(test) else {
        return;
    };
    for flavour in [
        ProxyFlavour::V1_31_LOST_CLEANUP,
        ProxyFlavour::V1_34_IPTABLES,
    ] {
        let outcome = run_one(test, scenario, &k8s, flavour, Some(agent.clone()));
        if let Err(e) = check_invariants(&outcome) {
            panic!("{test}: {e:#}");
        }
        let recovery = outcome
            .recovery
            .unwrap_or_else(|| panic!("{test}: no recovery:\n{}", outcome.report()));
        assert!(
            recovery <= AGENT_BOUND,
            "{test}: recovery {recovery:?} over {AGENT_BOUND:?}:\n{}",
            outcome.report()
        );

        let baseline =
            flavour == ProxyFlavour::V1_34_IPTABLES || scenario == RealScenario::BackendDeleted;
        if baseline {
            let outcome = run_one(test, scenario, &k8s, flavour, None);
            if let Err(e) = check_invariants(&outcome) {
                panic!("{test} (without the agent): {e:#}");
            }
            if flavour == ProxyFlavour::V1_31_LOST_CLEANUP {
                // Nothing else recovers it: the reason the agent exists.
                assert!(
                    outcome.recovery.is_none(),
                    "{test}: v1.31 without conntrack recovered without the agent:\n{}",
                    outcome.report()
                );
            }
        }
    }
}

macro_rules! scenario_tests {
    ($($test:ident => $scenario:ident,)*) => {
        $(
            #[test]
            fn $test() {
                scenario_on_ci_flavours(stringify!($test), RealScenario::$scenario);
            }
        )*

        /// Every scenario has its test here.
        #[test]
        fn every_scenario_is_tested() {
            let tested = [$(RealScenario::$scenario),*];
            for s in RealScenario::ALL {
                assert!(tested.contains(&s), "{} has no test", s.name());
            }
        }
    };
}

scenario_tests! {
    real_scenario_backend_deleted => BackendDeleted,
    real_scenario_not_ready => NotReady,
    real_scenario_terminating => Terminating,
    real_scenario_scale_to_zero_and_back => ScaleToZeroAndBack,
    real_scenario_target_port_changed => TargetPortChanged,
    real_scenario_service_deleted_vip_reused => ServiceDeletedVipReused,
    real_scenario_nodeport => NodePort,
    real_scenario_external_ip => ExternalIp,
    real_scenario_ipv6 => Ipv6,
    real_scenario_dual_stack => DualStack,
    real_scenario_hostnetwork_client => HostNetworkClient,
    real_scenario_agent_restarted => AgentRestarted,
    real_scenario_apiserver_restarted => ApiserverRestarted,
    real_scenario_etcd_compacted => EtcdCompacted,
    real_scenario_agent_api_blackholed => AgentApiBlackholed,
}
