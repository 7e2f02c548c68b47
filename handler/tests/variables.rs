//! Per-node values in one policy (`spec.variables`) on three real sandbox nodes: one policy
//! gives each node its own static address on eth2 from a NodeNetworkIPPool, and the nodes ping
//! each other over it; a pool of two leaves the third node failing with `IPPoolExhausted` until
//! a node stops being selected and frees its address; the address of a node that went away is
//! reclaimed when the pool runs out; a variable naming a missing label fails with a message that
//! names it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{AVAILABLE, start_handler, stop_handler, true_condition, wait_for_condition};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, ip_pool::NodeNetworkIPPool,
};
use nmstate_localenv::testing::{NodeProcess, TestNode, eventually, install_crds, shared_env, unique_name};
use serde_json::json;
use std::{collections::BTreeMap, time::Duration};

const APPLY: Duration = Duration::from_secs(90);

fn pool(name: &str, start: &str, end: &str) -> NodeNetworkIPPool {
    serde_json::from_value(json!({
        "apiVersion": "nmstate.io/v1", "kind": "NodeNetworkIPPool", "metadata": {"name": name},
        "spec": {"cidr": "10.77.2.0/24", "start": start, "end": end, "gateway": "10.77.2.1"},
    }))
    .unwrap()
}

/// eth2 with this node's address from `pool`, and a description from its labels.
fn storage_policy(name: &str, selector: &str, pool: &str) -> NodeNetworkConfigurationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "nmstate.io/v1", "kind": "NodeNetworkConfigurationPolicy", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {selector: "yes"},
            "maxUnavailable": 3,
            "variables": {
                "storage": {"fromIPPool": {"name": pool}},
                "rack": {"fromNode": {"label": "example.com/rack"}},
                "node": {"fromNode": {"field": "name"}},
            },
            "desiredState": {"interfaces": [{
                "name": "eth2", "type": "ethernet", "state": "up",
                "description": "{{ var.node }} in rack {{ var.rack }}",
                "ipv4": {"enabled": true, "dhcp": false,
                    "address": [{"ip": "{{ var.storage.address }}", "prefix-length": "{{ var.storage.prefix }}"}]},
                "ipv6": {"enabled": false},
            }]},
        },
    }))
    .unwrap()
}

/// The node's resolved desired state, as its enactment shows it.
fn desired_state(enactment: &NodeNetworkConfigurationEnactment) -> &serde_json::Value {
    &enactment
        .status
        .as_ref()
        .unwrap()
        .desired_state
        .as_ref()
        .unwrap()
        .0
}

fn resolved_address(enactment: &NodeNetworkConfigurationEnactment) -> String {
    let desired = desired_state(enactment);
    let interface = &desired["interfaces"][0];
    assert_eq!(
        interface["ipv4"]["address"][0]["prefix-length"],
        json!(24),
        "{desired}"
    );
    interface["ipv4"]["address"][0]["ip"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn allocations(pools: &Api<NodeNetworkIPPool>, name: &str) -> BTreeMap<String, String> {
    let status = pools.get(name).await.unwrap().status.unwrap_or_default();
    status
        .allocations
        .into_iter()
        .map(|a| (a.node, a.address))
        .collect()
}

fn pings(node: &TestNode, address: &str) -> bool {
    let output = node
        .command("ping")
        .unwrap()
        .args(["-c", "1", "-W", "2", "-I", "eth2", address])
        .output()
        .unwrap();
    output.status.success()
}

#[tokio::test]
async fn one_policy_gives_each_node_its_own_address_from_a_pool() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let prefix = unique_name("vars");
    let selector = format!("{prefix}-storage");
    let mut nodes = Vec::new();
    let mut handlers: Vec<NodeProcess> = Vec::new();
    for index in 1..=3 {
        let name = format!("{prefix}-n{index}");
        let labels = BTreeMap::from([
            (selector.clone(), "yes".to_string()),
            ("example.com/rack".to_string(), format!("r{index}")),
        ]);
        let node = TestNode::start(&env, &name, &labels).await.unwrap();
        let log = std::env::temp_dir().join(format!("{name}.log"));
        handlers.push(start_handler(&node, &log));
        nodes.push((name, node));
    }
    let pools: Api<NodeNetworkIPPool> = Api::all(client.clone());
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let create = PostParams::default();

    // Three nodes, a pool of three: three distinct addresses, and they reach each other.
    let three = format!("{prefix}-three");
    pools
        .create(&create, &pool(&three, "10.77.2.20", "10.77.2.22"))
        .await
        .unwrap();
    let policy = format!("{prefix}-storage");
    let started = std::time::Instant::now();
    policies
        .create(&create, &storage_policy(&policy, &selector, &three))
        .await
        .unwrap();
    let mut addresses = BTreeMap::new();
    for (name, _) in &nodes {
        let enactment = wait_for_condition(&enactments, &format!("{name}.{policy}"), AVAILABLE, APPLY).await;
        let desired = desired_state(&enactment);
        let rack = &name[name.len() - 1..];
        assert_eq!(
            desired["interfaces"][0]["description"],
            json!(format!("{name} in rack r{rack}"))
        );
        addresses.insert(name.clone(), resolved_address(&enactment));
    }
    eprintln!(
        "three nodes Available with their own address in {:.1} s: {addresses:?}",
        started.elapsed().as_secs_f64()
    );
    let distinct: std::collections::BTreeSet<&String> = addresses.values().collect();
    assert_eq!(distinct.len(), 3, "{addresses:?}");
    assert_eq!(
        allocations(&pools, &three).await,
        addresses,
        "the pool records each node's address"
    );
    let (first, first_node) = &nodes[0];
    for (other, _) in &nodes[1..] {
        assert!(
            pings(first_node, &addresses[other]),
            "{first} cannot ping {other} at {}",
            addresses[other]
        );
    }

    // The policy goes: so do its addresses.
    policies.delete(&policy, &DeleteParams::default()).await.unwrap();
    eventually("the addresses are released", Duration::from_secs(30), || async {
        allocations(&pools, &three).await.is_empty().then_some(())
    })
    .await
    .unwrap();

    // A pool of two: the third node fails with the reason, nothing applied there.
    let two = format!("{prefix}-two");
    pools
        .create(&create, &pool(&two, "10.77.2.30", "10.77.2.31"))
        .await
        .unwrap();
    let policy = format!("{prefix}-scarce");
    policies
        .create(&create, &storage_policy(&policy, &selector, &two))
        .await
        .unwrap();
    let outcome = eventually("two nodes Available and one IPPoolExhausted", APPLY, || async {
        let mut outcome = BTreeMap::new();
        for (name, _) in &nodes {
            let enactment = enactments.get_opt(&format!("{name}.{policy}")).await.unwrap()?;
            let condition = true_condition(&enactment)?;
            outcome.insert(
                name.clone(),
                (condition.type_, condition.reason, condition.message),
            );
        }
        let available = outcome
            .values()
            .filter(|(type_, _, _)| type_ == "Available")
            .count();
        let exhausted = outcome
            .values()
            .filter(|(_, reason, _)| reason == "IPPoolExhausted")
            .count();
        (available == 2 && exhausted == 1).then_some(outcome)
    })
    .await
    .unwrap();
    let (starved, (type_, _, message)) = outcome
        .iter()
        .find(|(_, (_, reason, _))| reason == "IPPoolExhausted")
        .unwrap();
    assert_eq!(type_, "Failing");
    assert_eq!(
        message,
        &format!(
            "variable \"storage\": NodeNetworkIPPool {two} has no free address (2 of 2 allocated); widen the pool, or free an address"
        )
    );

    // One node stops being selected: its address goes to the starved node.
    let (leaving, _) = nodes.iter().find(|(name, _)| name != starved).unwrap();
    let freed = allocations(&pools, &two).await[leaving].clone();
    let unlabel = json!({"metadata": {"labels": {selector.as_str(): null}}});
    Api::<Node>::all(client.clone())
        .patch(leaving, &PatchParams::default(), &Patch::Merge(&unlabel))
        .await
        .unwrap();
    let taken = wait_for_condition(&enactments, &format!("{starved}.{policy}"), AVAILABLE, APPLY).await;
    assert_eq!(
        resolved_address(&taken),
        freed,
        "the starved node takes the freed address"
    );
    let now = allocations(&pools, &two).await;
    assert_eq!(now.len(), 2);
    assert!(!now.contains_key(leaving), "{now:?}");

    // A node goes while its handler is down: nobody releases its address, but once its
    // enactment is garbage-collected the address is reclaimed when the pool runs out, here by
    // the node that left and is selected again.
    let gone_index = nodes
        .iter()
        .position(|(name, _)| name != starved && name != leaving)
        .unwrap();
    let gone = nodes[gone_index].0.clone();
    let gone_address = allocations(&pools, &two).await[&gone].clone();
    stop_handler(&mut handlers[gone_index]);
    Api::<Node>::all(client.clone())
        .delete(&gone, &DeleteParams::default())
        .await
        .unwrap();
    // The garbage collector may learn of the enactment CRD only at its next discovery.
    eventually(
        "the gone node's enactment is collected",
        Duration::from_secs(90),
        || async {
            let enactment = enactments.get_opt(&format!("{gone}.{policy}")).await.unwrap();
            enactment.is_none().then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        allocations(&pools, &two).await.contains_key(&gone),
        "kept until the pool runs out"
    );
    let relabel = json!({"metadata": {"labels": {selector.as_str(): "yes"}}});
    Api::<Node>::all(client.clone())
        .patch(leaving, &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    let back = wait_for_condition(&enactments, &format!("{leaving}.{policy}"), AVAILABLE, APPLY).await;
    assert_eq!(
        resolved_address(&back),
        gone_address,
        "the gone node's address is reclaimed"
    );
    let now = allocations(&pools, &two).await;
    assert!(!now.contains_key(&gone) && now.len() == 2, "{now:?}");

    // A variable naming a label the node lacks: failing, naming the label; nothing applied.
    let policy = format!("{prefix}-nolabel");
    let mut missing = storage_policy(&policy, &selector, &two);
    let variables = missing.spec.variables.as_mut().unwrap();
    variables.clear();
    variables.insert(
        "zone".into(),
        serde_json::from_value(json!({"fromNode": {"label": "example.com/zone"}})).unwrap(),
    );
    missing.spec.desired_state = Some(nmstate_api::NetworkStateDocument(json!({"interfaces": [
        {"name": "eth1", "type": "ethernet", "state": "up", "description": "zone {{ var.zone }}"}]})));
    policies.create(&create, &missing).await.unwrap();
    let enactment = wait_for_condition(
        &enactments,
        &format!("{starved}.{policy}"),
        ("Failing", "VariableUnresolved"),
        APPLY,
    )
    .await;
    let message = true_condition(&enactment).unwrap().message;
    assert_eq!(
        message,
        format!(
            "variable \"zone\": node {starved} has no label \"example.com/zone\"; label it, or change the variable"
        )
    );

    for name in [format!("{prefix}-scarce"), policy] {
        let _ = policies.delete(&name, &DeleteParams::default()).await;
    }
    for (index, handler) in handlers.iter_mut().enumerate() {
        if index != gone_index {
            stop_handler(handler);
        }
    }
    for name in [three, two] {
        let _ = pools.delete(&name, &DeleteParams::default()).await;
    }
}
