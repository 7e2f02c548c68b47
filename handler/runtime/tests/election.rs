//! Leader election against the real API server: when the leader stops (its pod replaced in a
//! rollout), it releases the Lease and a replica standing by takes it at once, not when the
//! lease would have expired.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use nmstate_localenv::testing::{eventually, shared_env, unique_name};
use nmstate_runtime::election::{Election, run_while_leading};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::oneshot;

/// Long enough that waiting for expiry cannot pass for taking over a released Lease.
const LEASE: Duration = Duration::from_secs(60);

fn election(lease: &str, identity: &str) -> Election {
    Election {
        lease: lease.into(),
        namespace: "default".into(),
        identity: identity.into(),
        duration: LEASE,
        field_manager: format!("{lease}-election"),
        role: "testing",
    }
}

/// Runs one replica until `stop` fires; records in `leader` when it starts leading.
fn replica(
    client: kube::Client,
    election: Election,
    leader: Arc<Mutex<Vec<(String, Instant)>>>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let identity = election.identity.clone();
        let lead = || {
            leader.lock().unwrap().push((identity.clone(), Instant::now()));
            std::future::pending::<()>()
        };
        run_while_leading(
            client,
            &election,
            async {
                let _ = stopped.await;
            },
            lead,
            || {},
        )
        .await
        .unwrap();
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_released_lease_is_taken_by_the_replica_standing_by_at_once() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    let lease = unique_name("election");
    let leaders = Arc::new(Mutex::new(Vec::new()));

    let (stop_first, first) = replica(client.clone(), election(&lease, "first"), leaders.clone());
    eventually("the first replica leads", Duration::from_secs(20), || async {
        (leaders.lock().unwrap().len() == 1).then_some(())
    })
    .await
    .unwrap();
    let (stop_second, second) = replica(client.clone(), election(&lease, "second"), leaders.clone());
    // Standing by: it has read the Lease and waits for its expiry, a minute away.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leaders.lock().unwrap().len(), 1, "only one replica leads");

    let released = Instant::now();
    stop_first.send(()).unwrap();
    first.await.unwrap();
    eventually("the second replica leads", LEASE, || async {
        (leaders.lock().unwrap().len() == 2).then_some(())
    })
    .await
    .unwrap();
    let (identity, at) = leaders.lock().unwrap()[1].clone();
    let taken = at.duration_since(released);
    eprintln!(
        "the second replica led {:.2} s after the first released the Lease",
        taken.as_secs_f64()
    );
    assert_eq!(identity, "second");
    assert!(
        taken < LEASE / 4,
        "taken {:.1} s after the release: the standby waited for the lease to expire",
        taken.as_secs_f64()
    );
    stop_second.send(()).unwrap();
    second.await.unwrap();
}
