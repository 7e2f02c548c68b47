//! The network-ready gate (`NMState.spec.networkReadiness`, here the handler's environment as
//! the operator renders it) on a sandbox node: a node tainted by its provisioning, with two
//! policies selecting it, loses the taint only once both are Available there; its condition
//! `NetworkConfigured` follows a policy that fails, and the taint is never added back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{
    AVAILABLE, FAILING, policy, start_handler_with, stop_handler, true_condition, wait_for_condition,
};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use nmstate_api::{NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy};
use nmstate_localenv::testing::{TestNode, eventually, install_crds, shared_env, unique_name};
use serde_json::json;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

const TAINT: &str = "nmstate.io/network-unready";

fn tainted(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|taint| taint.key == TAINT))
}

fn network_configured(node: &Node) -> Option<(String, String, String)> {
    let condition = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|condition| condition.type_ == "NetworkConfigured")?;
    Some((
        condition.status.clone(),
        condition.reason.clone().unwrap_or_default(),
        condition.message.clone().unwrap_or_default(),
    ))
}

#[tokio::test]
async fn the_startup_taint_goes_once_every_policy_is_available_and_the_condition_follows() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let node_name = unique_name("ready");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let taint = json!({"spec": {"taints": [{"key": TAINT, "effect": "NoSchedule"}]}});
    nodes
        .patch(&node_name, &PatchParams::default(), &Patch::Merge(&taint))
        .await
        .unwrap();

    // Two policies select the node before its handler starts.
    let this_node = json!({"kubernetes.io/hostname": node_name});
    let names = [format!("{node_name}-br1"), format!("{node_name}-br2")];
    for (name, bridge) in names.iter().zip(["br1", "br2"]) {
        let desired = json!({"interfaces": [{"name": bridge, "type": "linux-bridge", "state": "up",
            "bridge": {"options": {"stp": {"enabled": false}}, "port": []}}]});
        let object = policy(name, this_node.clone(), desired);
        policies.create(&PostParams::default(), &object).await.unwrap();
    }
    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    let gate = [("NETWORK_READINESS", "true"), ("NETWORK_STARTUP_TAINT", TAINT)];
    let mut handler = start_handler_with(&node, &log, &gate);

    // Watched every 50 ms: the taint may go only when both enactments are Available.
    let started = Instant::now();
    let mut saw_one_pending = false;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the taint is still there"
        );
        let current = nodes.get(&node_name).await.unwrap();
        let mut available = 0;
        for name in &names {
            let enactment = enactments.get_opt(&format!("{node_name}.{name}")).await.unwrap();
            if enactment
                .and_then(|e| true_condition(&e))
                .is_some_and(|c| (c.type_.as_str(), c.reason.as_str()) == AVAILABLE)
            {
                available += 1;
            }
        }
        if let Some((status, _, message)) = network_configured(&current)
            && status == "False"
        {
            saw_one_pending |= message.starts_with("not Available here yet: ");
        }
        if !tainted(&current) {
            // Read after the taint: both were Available before it went.
            assert_eq!(available, 2, "the taint went before both policies were Available");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "taint removed {:.2} s after the handler started",
        started.elapsed().as_secs_f64()
    );
    assert!(saw_one_pending, "the condition said what was pending first");
    let current = nodes.get(&node_name).await.unwrap();
    assert_eq!(
        network_configured(&current),
        Some((
            "True".into(),
            "PoliciesAvailable".into(),
            "2 policies selecting this node are Available here".into()
        ))
    );

    // A third policy that fails: the condition says so; the taint stays away.
    let broken = format!("{node_name}-broken");
    let desired = json!({"interfaces": [{"name": "eth9", "type": "ethernet", "state": "up"}]});
    policies
        .create(
            &PostParams::default(),
            &policy(&broken, this_node.clone(), desired),
        )
        .await
        .unwrap();
    wait_for_condition(
        &enactments,
        &format!("{node_name}.{broken}"),
        FAILING,
        Duration::from_secs(120),
    )
    .await;
    let condition = eventually(
        "NetworkConfigured turns False",
        Duration::from_secs(30),
        || async {
            let current = nodes.get(&node_name).await.unwrap();
            network_configured(&current).filter(|(status, _, _)| status == "False")
        },
    )
    .await
    .unwrap();
    assert_eq!(
        condition,
        (
            "False".into(),
            "PoliciesPending".into(),
            format!("not Available here yet: {broken}")
        )
    );
    assert!(
        !tainted(&nodes.get(&node_name).await.unwrap()),
        "never added back"
    );
    stop_handler(&mut handler);
}
