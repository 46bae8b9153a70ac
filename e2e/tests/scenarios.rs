//! Every lab scenario, without the reconciler (the blackhole stays) and with it (recovery, and
//! no false deletions). Needs root; each test builds its own uniquely named namespaces.
//!
//! The "with reconciler" tests run the real `conntrack-reconciler` binary when it is built and
//! usable, unless `E2E_WITH_AGENT=0`; `E2E_WITH_AGENT=1` makes its absence a failure.

use e2e::agent::agent_for_tests;
use e2e::emulation::scenarios::lags::{self, LagScenario};
use e2e::emulation::scenarios::{Outcome, RunConfig, Scenario, run};
use e2e::process::Binaries;
use std::path::PathBuf;
use std::time::Duration;

const RULES_LAG: Duration = Duration::from_secs(1);
/// Without the reconciler: long enough past the rules lag to show nothing recovers.
const BASELINE_WINDOW: Duration = Duration::from_secs(5);
/// With the reconciler: generous, so a slow CI machine does not fail it; the recovery targets
/// are measured by `cargo xtask bench lab`, not asserted here.
const AGENT_WINDOW: Duration = Duration::from_secs(10);

fn binaries() -> Binaries {
    Binaries {
        echo: PathBuf::from(env!("CARGO_BIN_EXE_udp-echo")),
        client: PathBuf::from(env!("CARGO_BIN_EXE_udp-client")),
    }
}

fn explain(outcome: &Outcome) -> String {
    format!(
        "{}\ntimeline:\n{}\nclient flows at end: {:#?}\nagent log:\n{}",
        outcome.summary(),
        outcome.timeline,
        outcome.client_flows_at_end,
        outcome.agent_log
    )
}

fn without_reconciler(scenario: Scenario) {
    if !ctnetlink::testing::root_or_skip(scenario.name()) {
        return;
    }
    let outcome = run(
        scenario,
        &RunConfig {
            binaries: binaries(),
            agent: None,
            rules_lag: RULES_LAG,
            window: BASELINE_WINDOW,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e:#}", scenario.name()));
    eprintln!("{}", outcome.summary());
    assert!(
        outcome.recovery.is_none(),
        "without the reconciler the client must stay blackholed:\n{}",
        explain(&outcome)
    );
    assert!(
        !outcome.client_flows_at_end.is_empty(),
        "the stale flow must still be in the table:\n{}",
        explain(&outcome)
    );
    assert!(
        outcome.false_deletions.is_empty() && outcome.background_missing == 0,
        "nothing deletes flows without the reconciler:\n{}",
        explain(&outcome)
    );
}

fn with_reconciler(scenario: Scenario) {
    if !ctnetlink::testing::root_or_skip(scenario.name()) {
        return;
    }
    let agent = match agent_for_tests() {
        Ok(path) => path,
        Err(why) => {
            eprintln!("skipping {} with the reconciler: {why}", scenario.name());
            return;
        }
    };
    let outcome = run(
        scenario,
        &RunConfig {
            binaries: binaries(),
            agent: Some(agent),
            rules_lag: RULES_LAG,
            window: AGENT_WINDOW,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e:#}", scenario.name()));
    eprintln!("{}", outcome.summary());
    assert!(
        outcome.recovery.is_some(),
        "the reconciler must restore the client:\n{}",
        explain(&outcome)
    );
    assert!(
        outcome.false_deletions.is_empty(),
        "flows to serving backends must survive:\n{}",
        explain(&outcome)
    );
    assert_eq!(
        outcome.background_missing,
        0,
        "healthy and unrelated background entries must survive:\n{}",
        explain(&outcome)
    );
}

macro_rules! scenario_tests {
    ($($module:ident => $scenario:expr),* $(,)?) => {
        $(
            mod $module {
                use super::*;

                #[test]
                fn without_the_reconciler_the_blackhole_stays() {
                    without_reconciler($scenario);
                }

                #[test]
                fn with_the_reconciler_the_client_recovers() {
                    with_reconciler($scenario);
                }
            }
        )*
    };
}

scenario_tests! {
    backend_deleted => Scenario::BackendDeleted,
    nodeport => Scenario::NodePort,
    external_ip => Scenario::ExternalIp,
    hostnetwork_client => Scenario::HostNetworkClient,
    ipv6 => Scenario::Ipv6,
    dual_stack => Scenario::DualStack,
    scale_to_zero_and_back => Scenario::ScaleToZeroAndBack,
    service_deleted_vip_reused => Scenario::ServiceDeletedVipReused,
    target_port_changed => Scenario::TargetPortChanged,
    no_endpoints_then_one => Scenario::NoEndpointsThenOne,
    not_serving => Scenario::NotServing,
    watch_dropped_during_change => Scenario::WatchDroppedDuringChange,
    race => Scenario::Race,
    agent_restarted => Scenario::AgentRestarted,
    host_port_replaced => Scenario::HostPortReplaced,
    churn_at_scale => Scenario::ChurnAtScale,
}

/// A scenario where the agent's knowledge lags kube-proxy's, or where it reads an ordinary input
/// differently: every flow goes to a live backend, so nothing may be deleted.
fn no_false_deletion(scenario: LagScenario) {
    if !ctnetlink::testing::root_or_skip(scenario.name()) {
        return;
    }
    let agent = match agent_for_tests() {
        Ok(path) => path,
        Err(why) => {
            eprintln!("skipping {} with the reconciler: {why}", scenario.name());
            return;
        }
    };
    let outcome = lags::run(
        scenario,
        &RunConfig {
            binaries: binaries(),
            agent: Some(agent),
            rules_lag: RULES_LAG,
            window: AGENT_WINDOW,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e:#}", scenario.name()));
    eprintln!("{}", outcome.summary());
    let explain = || {
        format!(
            "{}\ntimeline:\n{}\nagent log:\n{}",
            outcome.summary(),
            outcome.timeline,
            outcome.agent_log
        )
    };
    if std::env::var_os("E2E_SHOW_TIMELINE").is_some() {
        eprintln!("{}", explain());
    }
    assert!(
        outcome.at_risk > 0,
        "the scenario put no flow at risk: it tests nothing:\n{}",
        explain()
    );
    assert!(
        outcome.false_deletions.is_empty(),
        "flows to live, serving backends must survive:\n{}",
        explain()
    );
}

/// The `lags_` tests: run them alone with `cargo test -p e2e --test scenarios lags_`.
macro_rules! lag_tests {
    ($($module:ident => $scenario:expr),* $(,)?) => {
        $(
            mod $module {
                use super::*;

                #[test]
                fn flows_to_live_backends_survive() {
                    no_false_deletion($scenario);
                }
            }
        )*
    };
}

lag_tests! {
    lags_scale_up_during_frozen_slice_watch => LagScenario::ScaleUpSliceWatchFrozen,
    lags_scale_up_during_stalled_slice_watch => LagScenario::ScaleUpSliceWatchStalled,
    lags_scale_up_while_slice_watch_answers_500 => LagScenario::ScaleUpSliceWatchFailing,
    lags_scale_up_while_slice_watch_answers_403 => LagScenario::ScaleUpSliceWatchForbidden,
    lags_scale_up_while_slice_watch_answers_410 => LagScenario::ScaleUpSliceWatchGone,
    lags_new_service_during_stalled_slice_watch => LagScenario::NewServiceSliceWatchStalled,
    lags_service_relabelled_to_another_proxy => LagScenario::RelabelledToOtherProxy,
    lags_publish_not_ready_addresses => LagScenario::PublishNotReadyAddresses,
    lags_external_ip_of_a_family_the_service_lacks => LagScenario::WrongFamilyExternalIp,
    lags_slice_flipped_to_serving_during_a_long_pass => LagScenario::FlippedToServingDuringLongPass,
}
