//! Redis restarting with its data lost: the event log, presence and revocations are gone.

use crate::harness::{Cluster, steady};

#[tokio::test]
async fn a_redis_restart_that_loses_its_data_loses_no_message() {
    let mut cluster = Cluster::start().await;
    let traffic = cluster.start_traffic();
    traffic.steady(steady()).await;
    traffic.mark_fault();
    cluster.redis.restart().await;
    traffic.mark_repair();
    traffic.steady(steady()).await;
    let outcome = traffic
        .finish(&cluster, "Redis restarted, its data lost")
        .await;
    assert!(
        outcome.resyncs > 0,
        "the streams were not told to resync: {outcome:?}"
    );
    outcome.assert_kept();
}
