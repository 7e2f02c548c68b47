//! The handler writes an enactment's `Progressing` status beside the change, not before it, and
//! commits the change only once that write is done: here the API server refuses the write (a
//! ValidatingAdmissionPolicy, on this node's enactments only), and the change, already in under
//! its checkpoint, is rolled back at once instead of committed. The retries then write the status
//! before the change, so a refusal that lasts changes the node once, not at every retry. Once
//! the API server takes the write again, the policy is applied and Available.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{AVAILABLE, bridge_over_eth1, policy, start_handler, stop_handler, wait_for_condition};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nmstate_api::{NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, labels};
use nmstate_handler::network::network_manager::checkpoints;
use nmstate_localenv::testing::{TestNode, eventually, install_crds, shared_env, unique_name};
use serde_json::json;
use std::{collections::BTreeMap, time::Duration};

/// What the admission policy answers when it refuses a write.
const REFUSAL: &str = "this test refuses Progressing";

/// Refuses every write of a `Progressing` status to the enactments of `node`.
fn refusing_progressing(
    name: &str,
    node: &str,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let policy = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": ["nmstate.io"], "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["nodenetworkconfigurationenactments/status"],
                }],
                "objectSelector": {"matchLabels": {labels::NODE: node}},
            },
            "validations": [{
                "expression": "!has(object.status) || !has(object.status.conditions) || \
                               !object.status.conditions.exists(c, c.type == 'Progressing' && c.status == 'True')",
                "message": REFUSAL,
            }],
        },
    }))
    .unwrap();
    let binding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }))
    .unwrap();
    (policy, binding)
}

#[tokio::test]
async fn a_change_whose_progressing_status_is_refused_is_rolled_back_not_committed() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let node_name = unique_name("refused");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    let admission_policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());

    // The admission policy, in force before the handler starts: the API server loads it a
    // moment after it is created, so a dry-run write to a stand-in enactment of this node
    // shows when it is refused.
    let (refusal, binding) = refusing_progressing(&node_name, &node_name);
    admission_policies
        .create(&PostParams::default(), &refusal)
        .await
        .unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    let stand_in = format!("{node_name}.stand-in");
    let object: NodeNetworkConfigurationEnactment = serde_json::from_value(json!({
        "apiVersion": "nmstate.io/v1beta1", "kind": "NodeNetworkConfigurationEnactment",
        "metadata": {"name": stand_in, "labels": {labels::NODE: node_name}},
    }))
    .unwrap();
    enactments.create(&PostParams::default(), &object).await.unwrap();
    let progressing = json!({"status": {"conditions": [{
        "type": "Progressing", "status": "True", "reason": "ConfigurationProgressing", "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
    }]}});
    eventually(
        "the admission policy refuses",
        Duration::from_secs(30),
        || async {
            let dry_run = PatchParams {
                dry_run: true,
                ..PatchParams::default()
            };
            let written = enactments
                .patch_status(&stand_in, &dry_run, &Patch::Merge(&progressing))
                .await;
            written.err().filter(|error| error.to_string().contains(REFUSAL))
        },
    )
    .await
    .unwrap();
    enactments
        .delete(&stand_in, &DeleteParams::default())
        .await
        .unwrap();

    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    let mut handler = start_handler(&node, &log);
    let name = format!("{node_name}-br");
    let this_node = json!({"kubernetes.io/hostname": node_name});
    policies
        .create(
            &PostParams::default(),
            &policy(&name, this_node, bridge_over_eth1()),
        )
        .await
        .unwrap();

    // The change went in beside the refused write, and was rolled back rather than committed.
    let rolled_back = "the change was rolled back";
    eventually("the change rolled back", Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .any(|line| line.contains(REFUSAL) && line.contains(rolled_back))
            .then_some(())
    })
    .await
    .unwrap();
    assert!(
        !common::stdout_of(&node, &["ip", "-o", "link", "show"]).contains("br1"),
        "br1 is not on the node once the change is rolled back"
    );
    assert!(
        checkpoints(Some(&node.bus_address())).await.unwrap().is_empty(),
        "no checkpoint is left open"
    );
    // The retries that follow (the failure itself logs once) write the status first: refused,
    // they change nothing on the node.
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let count = |text: &str, what: &str| text.lines().filter(|line| line.contains(what)).count();
    eventually(
        "two retries after the rollback",
        Duration::from_secs(30),
        || async {
            let text = log_text();
            let after = text.split_once(rolled_back).map(|(_, after)| after.to_string());
            let after = after.unwrap_or_default();
            (count(&after, "reconcile failed, retrying") >= 3).then_some(())
        },
    )
    .await
    .unwrap();
    let text = log_text();
    assert_eq!(count(&text, rolled_back), 1, "one change rolled back, no more");
    assert_eq!(count(&text, "Created checkpoint"), 1, "one change made, no more");
    let enactment = format!("{node_name}.{name}");
    let status = enactments
        .get(&enactment)
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert!(
        !status.conditions.iter().any(|condition| condition.is_true()),
        "the enactment says nothing while its status is refused: {:?}",
        status.conditions
    );

    // Taken again, the write lets the change be committed.
    bindings
        .delete(&node_name, &DeleteParams::default())
        .await
        .unwrap();
    admission_policies
        .delete(&node_name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for_condition(&enactments, &enactment, AVAILABLE, Duration::from_secs(60)).await;
    assert!(common::stdout_of(&node, &["ip", "-o", "link", "show"]).contains("br1"));

    policies.delete(&name, &DeleteParams::default()).await.unwrap();
    stop_handler(&mut handler);
}
