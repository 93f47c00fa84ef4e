//! Faults of the store: a primary that steps down, commands that fail, a process that is
//! killed and restarted on its data.

use std::time::Duration;

use mongodb::bson::doc;

use crate::harness::{Cluster, RECOVERY_BOUND, STORE_TIMEOUT, steady};
use crate::helpers::eventually;

/// How long a failpoint stays armed.
const FAILING: Duration = Duration::from_secs(4);

#[tokio::test]
async fn a_primary_that_steps_down_under_traffic_loses_nothing() {
    let cluster = Cluster::start().await;
    let traffic = cluster.start_traffic();
    traffic.steady(steady()).await;
    traffic.mark_fault();
    cluster
        .admin_command(doc! { "replSetStepDown": 6, "force": true })
        .await;
    let writable_again = eventually(Duration::from_secs(20), || cluster.writable()).await;
    assert!(writable_again, "the store never became primary again");
    traffic.mark_repair();
    traffic.steady(steady()).await;
    let outcome = traffic.finish(&cluster, "primary steps down for 6 s").await;
    assert!(
        outcome.saw_no_primary,
        "/readyz never said that MongoDB had no writable primary: {outcome:?}"
    );
    outcome.assert_kept();
}

#[tokio::test]
async fn not_primary_errors_are_503s_and_lose_nothing() {
    let cluster = Cluster::start().await;
    let traffic = cluster.start_traffic();
    traffic.steady(steady()).await;
    traffic.mark_fault();
    cluster
        .fail_commands(doc! { "failCommands": ["insert"], "errorCode": 10107 })
        .await;
    tokio::time::sleep(FAILING).await;
    cluster.clear_failpoint().await;
    traffic.mark_repair();
    traffic.steady(steady()).await;
    traffic
        .finish(&cluster, "inserts fail: not primary (10107)")
        .await
        .assert_kept();
}

/// The outcome-unknown case that retryable writes and idempotency keys exist for: the write
/// is applied, but its answer says it failed.
#[tokio::test]
async fn writes_applied_but_answered_as_failed_are_stored_and_counted_once() {
    let cluster = Cluster::start().await;
    let traffic = cluster.start_traffic();
    traffic.steady(steady()).await;
    traffic.mark_fault();
    cluster
        .fail_commands(doc! {
            "failCommands": ["insert"],
            "writeConcernError": { "code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out" },
        })
        .await;
    tokio::time::sleep(FAILING).await;
    cluster.clear_failpoint().await;
    traffic.mark_repair();
    traffic.steady(steady()).await;
    traffic
        .finish(
            &cluster,
            "inserts applied, answered with a write concern error",
        )
        .await
        .assert_kept();
}

/// A write that the store applies after the service gave up on it (the client got a 503).
#[tokio::test]
async fn writes_that_land_after_their_request_gave_up_are_announced_and_counted_once() {
    let cluster = Cluster::start().await;
    let traffic = cluster.start_traffic();
    traffic.steady(steady()).await;
    traffic.mark_fault();
    let late = STORE_TIMEOUT * 2 + Duration::from_millis(500);
    cluster
        .fail_commands(doc! {
            "failCommands": ["insert"],
            "blockConnection": true,
            "blockTimeMS": i64::try_from(late.as_millis()).unwrap(),
        })
        .await;
    tokio::time::sleep(FAILING).await;
    cluster.clear_failpoint().await;
    traffic.mark_repair();
    traffic.steady(steady()).await;
    traffic
        .finish(&cluster, "inserts applied after the request gave up")
        .await
        .assert_kept();
}

#[tokio::test]
async fn failing_counter_writes_lose_no_count() {
    let cluster = Cluster::start().await;
    let traffic = cluster.start_traffic();
    traffic.steady(steady()).await;
    traffic.mark_fault();
    cluster
        .fail_commands(doc! { "failCommands": ["update"], "errorCode": 11602 })
        .await;
    tokio::time::sleep(FAILING).await;
    cluster.clear_failpoint().await;
    traffic.mark_repair();
    traffic.steady(steady()).await;
    traffic
        .finish(&cluster, "counter writes fail (11602)")
        .await
        .assert_kept();
}

#[tokio::test]
async fn failing_reads_are_503s_and_lose_nothing() {
    let cluster = Cluster::start().await;
    let traffic = cluster.start_traffic();
    traffic.steady(steady()).await;
    traffic.mark_fault();
    cluster
        .fail_commands(doc! { "failCommands": ["find"], "errorCode": 13436 })
        .await;
    tokio::time::sleep(FAILING).await;
    cluster.clear_failpoint().await;
    traffic.mark_repair();
    traffic.steady(steady()).await;
    traffic
        .finish(&cluster, "reads fail: node recovering (13436)")
        .await
        .assert_kept();
}

#[tokio::test]
async fn a_store_killed_and_restarted_on_its_data_loses_nothing() {
    let mut cluster = Cluster::start().await;
    let traffic = cluster.start_traffic();
    traffic.steady(steady()).await;
    traffic.mark_fault();
    cluster.store.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.store.restart().await;
    traffic.mark_repair();
    let back = eventually(RECOVERY_BOUND, || cluster.writable()).await;
    assert!(back, "the store did not come back");
    traffic.steady(steady()).await;
    traffic
        .finish(&cluster, "store killed (SIGKILL), restarted after 2 s")
        .await
        .assert_kept();
}
