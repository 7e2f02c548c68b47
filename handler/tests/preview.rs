//! A policy marked for preview (`spec.preview: true`) on two sandbox nodes, with the cluster
//! controller writing its status: each node works out what the policy would change and what
//! would undo it, and applies nothing (NetworkManager's profiles and the kernel's links compared
//! before and after), taking no rollout slot; the policy says how many nodes would change.
//! Removing the mark applies it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;
#[path = "rollout/fixture.rs"]
mod fixture;

use common::stdout_of;
use fixture::{Fixture, SERIAL, bridge};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use nmstate_api::{NodeNetworkConfigurationEnactment, condition::find_condition, labels};
use nmstate_handler::rollout::slot_selector;
use nmstate_localenv::testing::free_port;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(60);

/// What the node's NetworkManager and kernel have: every profile and every link.
fn network_of(fixture: &Fixture, index: usize) -> (String, String) {
    let node = &fixture.nodes[index];
    (
        stdout_of(node, &["nmcli", "-t", "-f", "NAME,UUID,DEVICE", "connection"]),
        stdout_of(node, &["ip", "-br", "link"]),
    )
}

async fn enactments_of(fixture: &Fixture, policy: &str) -> Vec<NodeNetworkConfigurationEnactment> {
    let selector = format!("{}={policy}", labels::POLICY);
    fixture
        .enactments()
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
}

fn previewed(enactment: &NodeNetworkConfigurationEnactment) -> (String, String) {
    let conditions = &enactment.status.as_ref().unwrap().conditions;
    let condition = find_condition(conditions, "Previewed").unwrap();
    assert!(condition.is_true(), "{condition:?}");
    (condition.reason.clone(), condition.message.clone())
}

async fn preview(fixture: &Fixture, policy: &str, preview: bool) {
    let patch = json!({"spec": {"preview": preview}});
    fixture
        .policies()
        .patch(policy, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_preview_applies_nothing_says_what_would_change_and_applies_once_unmarked() {
    let _serial = SERIAL.lock().await;
    let mut fixture = Fixture::start(2, true).await;
    let _cluster = fixture.start_cluster("writer", free_port());
    let bridge_name = format!("br{}", std::process::id() % 10_000);
    let before: Vec<(String, String)> = (0..2).map(|index| network_of(&fixture, index)).collect();

    // Marked for preview from the start: each node previews, nothing is applied.
    let started = Instant::now();
    let policy = fixture
        .create_policy_with("preview", bridge(&bridge_name), json!({"preview": true}))
        .await;
    fixture
        .wait_for_policy(&policy, "Previewed", "2/2 nodes would change", SETTLE)
        .await;
    eprintln!("previewed on 2 nodes in {:.2} s", started.elapsed().as_secs_f64());
    let enactments = enactments_of(&fixture, &policy).await;
    assert_eq!(enactments.len(), 2);
    for enactment in &enactments {
        let (reason, message) = previewed(enactment);
        assert_eq!(reason, "WouldChange");
        assert_eq!(message, format!("would change interface {bridge_name}"));
        let status = enactment.status.as_ref().unwrap();
        let preview = status.preview.as_ref().unwrap();
        let diff = &preview.diff.as_ref().unwrap().0;
        assert_eq!(diff["interfaces"][0]["name"], bridge_name, "{diff}");
        let revert = &preview.revert.as_ref().unwrap().0;
        let reverted: Vec<(&Value, &Value)> = revert["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|interface| (&interface["name"], &interface["state"]))
            .collect();
        assert_eq!(reverted, [(&json!(bridge_name), &json!("absent"))], "{revert}");
        assert_eq!(
            status.desired_state.as_ref().unwrap().0["interfaces"][0]["name"],
            bridge_name
        );
        for condition in ["Available", "Progressing", "Failing", "Pending", "Aborted"] {
            assert!(!find_condition(&status.conditions, condition).unwrap().is_true());
        }
    }
    for (index, network) in before.iter().enumerate() {
        assert_eq!(&network_of(&fixture, index), network, "node {index} changed");
    }
    let slots: Api<Lease> = Api::namespaced(fixture.client.clone(), &fixture.namespace);
    let taken = slots
        .list(&ListParams::default().labels(&slot_selector(&policy)))
        .await
        .unwrap();
    assert!(
        taken.items.is_empty(),
        "a preview takes no slot: {:?}",
        taken.items
    );

    // Unmarked: applied as usual, and the preview's report is gone.
    preview(&fixture, &policy, false).await;
    fixture.wait_for_rollout(&policy, SETTLE).await;
    for index in 0..2 {
        let links = stdout_of(
            &fixture.nodes[index],
            &["ip", "-br", "link", "show", &bridge_name],
        );
        assert!(links.starts_with(&bridge_name), "node {index}: {links}");
    }
    for enactment in enactments_of(&fixture, &policy).await {
        let status = enactment.status.unwrap();
        // v1.20's server-side apply leaves the emptied map (`preview: {}`); later ones drop it.
        assert_eq!(status.preview.unwrap_or_default(), Default::default());
        assert!(find_condition(&status.conditions, "Previewed").is_none());
    }
    let applied = fixture.policies().get(&policy).await.unwrap();
    let conditions = applied.status.unwrap().conditions;
    assert!(!find_condition(&conditions, "Previewed").unwrap().is_true());

    // A preview of what the nodes already have: nothing would change.
    let again = fixture
        .create_policy_with("again", bridge(&bridge_name), json!({"preview": true}))
        .await;
    fixture
        .wait_for_policy(&again, "Previewed", "0/2 nodes would change", SETTLE)
        .await;
    for enactment in enactments_of(&fixture, &again).await {
        assert_eq!(previewed(&enactment).0, "NoChange");
        assert_eq!(enactment.status.unwrap().preview.unwrap().diff, None);
    }
    fixture.clean_up().await;
}
