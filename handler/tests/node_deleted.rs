//! A node deleted while it applies a policy, as when a machine is removed from the cluster
//! mid-rollout: its handler dies with the machine, the sandbox (NetworkManager, links) goes,
//! and its Node object is deleted. The other nodes carry on once its rollout slot lapses, never
//! more than `maxUnavailable` at once; the policy counts the nodes that are left; nothing of the
//! deleted node stays behind (enactment, node state, heartbeat, slot), and no handler exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;
#[path = "rollout/fixture.rs"]
mod fixture;

use fixture::{Fixture, Recorder, SERIAL, bridge};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, ResourceExt, api::ListParams};
use nmstate_api::{NodeNetworkState, labels};
use nmstate_localenv::testing::{eventually, free_port};
use serde_json::json;
use std::time::{Duration, Instant};

const ROLLOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_node_deleted_while_applying_leaves_the_rollout_to_the_others_and_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(3, true).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    let name = format!("{}-gone", fixture.namespace);
    let recorder = Recorder::start(&fixture.client, &name).await;
    fixture.create_policy("gone", bridge("br-gone"), json!(1)).await;
    let gone = recorder.first_applying().await;

    // The machine goes: its handler with it (no chance to give anything back), then the
    // sandbox and the Node object.
    let index = fixture.index_of(&gone);
    let deleted = Instant::now();
    if let Some(mut handler) = fixture.handlers.remove(index) {
        handler.kill();
    }
    drop(fixture.nodes.remove(index));
    println!("{gone} deleted while applying");

    let outcomes = fixture.wait_for_rollout(&name, ROLLOUT).await;
    let converged = deleted.elapsed();
    assert!(!outcomes.contains_key(&gone), "{outcomes:?}");

    // Nothing of it left: the garbage collector takes what the Node owns (its enactment, node
    // state and heartbeat), the rollout its slot.
    let enactments = fixture.enactments();
    let states: Api<NodeNetworkState> = Api::all(fixture.client.clone());
    let leases: Api<Lease> = Api::namespaced(fixture.client.clone(), &fixture.namespace);
    let of_node = ListParams::default().labels(&format!("{}={gone}", labels::NODE));
    let slots = format!("{name}.rollout-");
    eventually(
        "nothing of the deleted node left",
        Duration::from_secs(60),
        || async {
            let enactment = enactments.get_opt(&format!("{gone}.{name}")).await.ok()?;
            let state = states.get_opt(&gone).await.ok()?;
            let left = leases.list(&ListParams::default()).await.ok()?.items;
            let heartbeats = leases.list(&of_node).await.ok()?.items;
            let slot_left = left.iter().any(|lease| lease.name_any().starts_with(&slots));
            (enactment.is_none() && state.is_none() && heartbeats.is_empty() && !slot_left).then_some(())
        },
    )
    .await
    .unwrap();
    let cleaned = deleted.elapsed();

    let observed = recorder.observed.lock().unwrap().max_progressing;
    assert!(
        observed <= 1,
        "{observed} nodes applied at once with maxUnavailable 1"
    );
    for handler in fixture.handlers.iter_mut().flatten() {
        assert!(handler.is_running(), "a handler exited: {}", handler.log());
    }
    println!(
        "node deleted while applying -> the policy Available on the other two: {:.1} s; -> nothing of it left: {:.1} s",
        converged.as_secs_f64(),
        cleaned.as_secs_f64()
    );
    fixture.clean_up().await;
}
