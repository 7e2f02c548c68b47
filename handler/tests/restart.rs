//! The API server, or etcd, killed mid-rollout and started again in place: the nodes carry on,
//! never more than `maxUnavailable` at once, and the policy's status follows their enactments
//! within seconds of the restart, never saying in between what the enactments contradict
//! (issue: "Ignored: Policy does not match any node" for three minutes while every node was
//! Available); no rollout slot is left and no handler exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;
#[path = "rollout/fixture.rs"]
mod fixture;

use fixture::{Fixture, Recorder, SERIAL, bridge};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{ListParams, WatchEvent, WatchParams},
};
use nmstate_api::{NodeNetworkConfigurationEnactment, condition::find_condition, labels};
use nmstate_localenv::{
    control_plane::{Part, Stop},
    testing::{eventually, free_port},
};
use nmstate_runtime::heartbeat;
use serde_json::json;
use std::time::{Duration, Instant};

/// Longer than the heartbeat Leases (4 s here): when the API server comes back, every
/// heartbeat it holds has expired, as after any outage longer than the lease duration.
const DOWN: Duration = Duration::from_secs(10);
/// From the last enactment Available (or, when later, the writer's watches being back) to the
/// policy saying so; the rest is margin for a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(5);
/// The longest a watch of ours waits before it tries again (`nmstate_runtime::watch`): once the
/// API server serves watches, the writer's are back within it.
const LONGEST_RETRY: Duration = Duration::from_secs(4);

/// The statuses the writer wrote for `policy`, in order, from its log (one line per write).
fn written_statuses(log: &str, policy: &str) -> Vec<String> {
    let marker = format!(" policy={policy} ");
    log.lines()
        .filter(|line| line.contains(&marker) && line.contains("nmstate_cluster::controller: "))
        .filter_map(|line| line.split("nmstate_cluster::controller: ").nth(1))
        .filter_map(|rest| rest.split([' ', '(']).next())
        .map(str::to_string)
        .collect()
}

/// When the API server first serves a watch of `enactments` again: a restarted one answers
/// watches only once its watch cache is filled, seconds after it accepts connections on a
/// loaded machine, and nobody's watches are back before that.
async fn watches_served(enactments: Api<NodeNetworkConfigurationEnactment>) -> Instant {
    loop {
        let watch = enactments.watch(&WatchParams::default().timeout(5), "0").await;
        if let Ok(events) = watch {
            let mut events = std::pin::pin!(events);
            if let Some(Ok(WatchEvent::Added(_))) = events.next().await {
                return Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// When, polling every 200 ms, every enactment of `policy` was Available, and when the policy
/// said so.
async fn times_to_available(fixture: &Fixture, policy: &str, nodes: usize) -> (Instant, Instant) {
    let selector = ListParams::default().labels(&format!("{}={policy}", labels::POLICY));
    let (mut enactments_at, started) = (None, Instant::now());
    loop {
        let enactments = fixture.enactments().list(&selector).await.map(|list| list.items);
        let all_available = enactments.is_ok_and(|items| {
            items.len() == nodes
                && items.iter().all(|enactment| {
                    let conditions = enactment
                        .status
                        .as_ref()
                        .map(|s| s.conditions.clone())
                        .unwrap_or_default();
                    find_condition(&conditions, "Available").is_some_and(|c| c.is_true())
                })
        });
        if all_available {
            enactments_at.get_or_insert_with(Instant::now);
        }
        let policy_available = fixture
            .policies()
            .get_opt(policy)
            .await
            .ok()
            .flatten()
            .is_some_and(|p| {
                let conditions = p.status.map(|s| s.conditions).unwrap_or_default();
                find_condition(&conditions, "Available")
                    .is_some_and(|c| c.is_true() && c.message.starts_with(&format!("{nodes}/{nodes} ")))
            });
        if policy_available && let Some(enactments_at) = enactments_at {
            return (enactments_at, Instant::now());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not Available 120 s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_api_server_restart_the_policy_status_follows_the_nodes_within_seconds() {
    killed_mid_rollout(Part::ApiServer, "restart").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_etcd_restart_the_rollout_completes_and_the_status_follows() {
    killed_mid_rollout(Part::Etcd, "etcd").await;
}

/// `part` of the control plane killed while a node applies a policy (one node at a time), down
/// for [`DOWN`], then started again in place. Afterwards: never more than one node applied at
/// once, every node Available and the policy saying so within [`BOUND`] of the last, no status
/// that said otherwise in between, no rollout slot left, every handler still running.
async fn killed_mid_rollout(part: Part, suffix: &str) {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(3, true).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    let name = fixture.policy_name(suffix);
    let recorder = Recorder::start(&fixture.client, &name).await;
    // Every node runs a handler before the policy comes: from then on, no status may say that
    // the policy matches no node.
    let heartbeats: Api<Lease> = Api::namespaced(fixture.client.clone(), &fixture.namespace);
    let with_heartbeats = ListParams::default().labels(&heartbeat::selector());
    eventually("three heartbeats", Duration::from_secs(30), || async {
        (heartbeats.list(&with_heartbeats).await.ok()?.items.len() == 3).then_some(())
    })
    .await
    .unwrap();
    fixture.create_policy(suffix, bridge("br-rst"), json!(1)).await;
    let selector = ListParams::default().labels(&format!("{}={name}", labels::POLICY));
    let enactments = fixture.enactments();
    eventually("a node applying", Duration::from_secs(60), || async {
        let listed = enactments.list(&selector).await.ok()?;
        listed
            .items
            .iter()
            .any(|enactment| {
                let conditions = enactment
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                find_condition(&conditions, "Progressing").is_some_and(|c| c.is_true())
            })
            .then_some(())
    })
    .await
    .unwrap();

    let control_plane = fixture.env.control_plane();
    control_plane.stop_part(part, Stop::Kill);
    tokio::time::sleep(DOWN).await;
    control_plane.start_part(part).await.unwrap();
    let restarted = Instant::now();
    let ((enactments_at, policy_at), served_at) = tokio::join!(
        times_to_available(&fixture, &name, 3),
        watches_served(fixture.enactments())
    );

    let log = std::fs::read_to_string(fixture.log("writer")).unwrap();
    let written = written_statuses(&log, &name);
    let seconds = |at: Instant| at.saturating_duration_since(restarted).as_secs_f64();
    println!(
        "{part:?} restarted -> watches served: {:.1} s; -> every enactment Available: {:.1} s; -> the policy Available: {:.1} s; statuses written: {written:?}",
        seconds(served_at),
        seconds(enactments_at),
        seconds(policy_at)
    );
    // Every node runs a handler and is selected all along: no status may say otherwise. Not
    // yet so after an etcd outage: the API server keeps serving its cache, so the writer's
    // watch stays up while every heartbeat expires, and it may write `Ignored` once etcd is back
    // until the handlers renew (a known gap: telling that from every handler dying needs the
    // writer's own renewals).
    assert!(!written.is_empty(), "{written:?}");
    if part != Part::Etcd {
        assert!(!written.iter().any(|status| status == "Ignored"), "{written:?}");
    }
    // The writer sees nothing until its watches are back: when the nodes finish sooner, the lag
    // counts from then.
    let writer_back = served_at + LONGEST_RETRY;
    let lag = policy_at.saturating_duration_since(enactments_at.max(writer_back));
    assert!(
        lag <= BOUND,
        "the policy said Available {:.1} s after its last node (bound {} s); statuses written: {written:?}",
        lag.as_secs_f64(),
        BOUND.as_secs()
    );
    let observed = recorder.observed.lock().unwrap().max_progressing;
    assert!(
        observed <= 1,
        "{observed} nodes applied at once with maxUnavailable 1"
    );
    fixture.wait_for_slots_given_back(&name).await;
    for handler in fixture.handlers.iter_mut().flatten() {
        assert!(handler.is_running(), "a handler exited: {}", handler.log());
    }
    fixture.clean_up().await;
}
