//! Node selection with Kubernetes' node-selector terms (`nodeSelectorTerms`,
//! `examples/node-selector-terms.yaml`), ANDed with the equality `nodeSelector`, on two sandbox
//! nodes with the cluster controller: label changes add and remove a node's enactment, the
//! policy is Ignored while no node matches, and counts the nodes that do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;
#[path = "rollout/fixture.rs"]
mod fixture;

use fixture::{Fixture, SERIAL};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use nmstate_localenv::testing::{eventually, free_port};
use serde_json::{Value, json};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(60);
const TIER: &str = "nmstate-test/tier";

async fn label(fixture: &Fixture, index: usize, value: Option<&str>) {
    let nodes: Api<Node> = Api::all(fixture.client.clone());
    let patch = json!({"metadata": {"labels": {TIER: value}}});
    nodes
        .patch(
            &fixture.node_name(index),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
}

/// Waits until exactly the nodes `expected` (by index) have an enactment of `policy`.
async fn enacted_on(fixture: &Fixture, policy: &str, expected: &[usize]) {
    let enactments = fixture.enactments();
    let names: Vec<String> = (0..fixture.nodes.len())
        .map(|index| format!("{}.{policy}", fixture.node_name(index)))
        .collect();
    eventually(
        &format!("{policy} enacted on nodes {expected:?}"),
        SETTLE,
        || async {
            for (index, name) in names.iter().enumerate() {
                let exists = enactments.get_opt(name).await.unwrap().is_some();
                if exists != expected.contains(&index) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn node_selector_terms_select_nodes_as_kubernetes_does_and_follow_label_changes() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(2, true).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    let example = format!(
        "{}/../examples/node-selector-terms.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut example: Value = serde_yaml::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    let spec = example["spec"].as_object_mut().unwrap();
    let desired = spec.remove("desiredState").unwrap();
    // The example selects by zone and excludes control-plane nodes: here, by this test's label.
    spec["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] = json!(TIER);
    let spec = Value::Object(spec.clone());
    let policy = fixture.create_policy_with("terms", desired, spec).await;

    // No node carries the label: Ignored, no enactment.
    fixture
        .wait_for_policy(&policy, "Ignored", "Policy does not match any node", SETTLE)
        .await;
    enacted_on(&fixture, &policy, &[]).await;

    // node0 in a listed value, node1 in another: only node0.
    label(&fixture, 0, Some("edge")).await;
    label(&fixture, 1, Some("core")).await;
    enacted_on(&fixture, &policy, &[0]).await;
    fixture
        .wait_for_policy(&policy, "Available", "1/1 nodes successfully configured", SETTLE)
        .await;

    // node1 moves into the set: both; node0 loses the label: only node1.
    label(&fixture, 1, Some("far-edge")).await;
    enacted_on(&fixture, &policy, &[0, 1]).await;
    fixture
        .wait_for_policy(&policy, "Available", "2/2 nodes successfully configured", SETTLE)
        .await;
    label(&fixture, 0, None).await;
    enacted_on(&fixture, &policy, &[1]).await;
    fixture
        .wait_for_policy(&policy, "Available", "1/1 nodes successfully configured", SETTLE)
        .await;

    // The second term, by name: node0 is selected again without its label.
    let by_name = json!({"spec": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": TIER, "operator": "In", "values": ["edge", "far-edge"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [fixture.node_name(0)]}]},
    ]}});
    fixture
        .policies()
        .patch(&policy, &PatchParams::default(), &Patch::Merge(&by_name))
        .await
        .unwrap();
    enacted_on(&fixture, &policy, &[0, 1]).await;
    fixture
        .wait_for_policy(&policy, "Available", "2/2 nodes successfully configured", SETTLE)
        .await;
    fixture.clean_up().await;
}
