//! The bounded drills `make test` runs: each drill once, briefly, against real replica
//! processes. `make chaos` runs the same drills for longer (`testudo-chaos`).

use chaos_tests::drills::{self, Report, Settings};

fn assert_passed(report: Report) {
    eprintln!("{} drill: {}", report.drill, report.summary);
    assert!(report.passed(), "{} drill failed:\n{}", report.drill, report.failures.join("\n"));
}

#[test]
fn leader_kill_loop_under_write_load() {
    assert_passed(drills::leader_kill::run(&Settings { iterations: 3, ..Settings::QUICK }));
}

#[test]
fn five_replicas_lose_two_at_once_under_write_load() {
    assert_passed(drills::leader_kill::run_five(&Settings { iterations: 2, ..Settings::QUICK }));
}

#[test]
fn leader_kills_with_keys_in_a_kms_or_an_hsm_lose_nothing_and_still_sign() {
    assert_passed(drills::leader_kill::run_managed_keys(&Settings::QUICK));
}

#[test]
fn partitions_leave_the_minority_unable_to_write_and_heal() {
    assert_passed(drills::partition::run(&Settings::QUICK));
}

#[test]
fn partitions_in_the_kernel_between_namespaces_split_no_brain() {
    assert_passed(drills::partition::run_netns(&Settings::QUICK));
}

#[test]
fn a_paused_leader_is_replaced_and_rejoins() {
    assert_passed(drills::leader_pause::run(&Settings::QUICK));
}

#[test]
fn a_rolling_restart_is_invisible_to_workloads() {
    assert_passed(drills::rolling_restart::run(&Settings::QUICK));
}

#[test]
fn a_rolling_restart_with_keys_in_a_kms_or_an_hsm_is_invisible_to_workloads() {
    assert_passed(drills::rolling_restart::run_managed_keys(&Settings::QUICK));
}

#[test]
fn bad_links_between_agent_and_replicas_are_invisible_to_workloads() {
    assert_passed(drills::agent_links::run(&Settings::QUICK));
}

#[test]
fn workloads_keep_valid_svids_while_every_replica_is_down() {
    assert_passed(drills::all_down::run(&Settings::QUICK));
}

#[test]
fn a_wiped_replica_rejoins_by_snapshot() {
    assert_passed(drills::wiped_replica::run(&Settings::QUICK));
}

#[test]
fn a_damaged_store_recovers_or_is_refused_and_replaced() {
    assert_passed(drills::damaged_data_dir::run(&Settings { iterations: 2, ..Settings::QUICK }));
}

#[test]
fn a_full_disk_on_the_leader_loses_nothing() {
    assert_passed(drills::disk_failure::run(&Settings::QUICK));
}

#[test]
fn failing_syncs_on_the_leader_lose_nothing() {
    assert_passed(drills::io_errors::run(&Settings::QUICK));
}

#[test]
fn clocks_off_on_a_replica_and_on_agents_never_reach_workloads() {
    assert_passed(drills::clock_skew::run(&Settings::QUICK));
}

#[test]
fn federated_clusters_refresh_through_leader_kills() {
    assert_passed(drills::federation::run(&Settings::QUICK));
}

#[test]
fn nested_regions_keep_issuing_through_leader_kills_and_a_cut() {
    assert_passed(drills::nested_regions::run(&Settings::QUICK));
}

#[test]
fn a_leader_killed_while_making_a_key_leaves_no_orphan() {
    assert_passed(drills::key_orphans::run(&Settings { iterations: 3, ..Settings::QUICK }));
}

#[test]
fn every_member_of_five_is_replaced_under_write_load() {
    assert_passed(drills::rolling_replacement::run(&Settings::QUICK));
}
