//! Node state that stays bounded (`NMState.spec.stateReporting`, here the handler's environment
//! as the operator renders it) on a sandbox node with 600 macvlan interfaces: under a size cap
//! the NodeNetworkState stays below it and says it was trimmed, the node's own NICs keep their
//! details; with an exclude pattern the macvlans are gone and so is the trimming.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{start_handler_with, stop_handler};
use kube::Api;
use nmstate_api::{NodeNetworkState, condition::find_condition};
use nmstate_localenv::testing::{TestNode, eventually, install_crds, shared_env, unique_name};
use serde_json::Value;
use std::{collections::BTreeMap, io::Write, time::Duration};

const MACVLANS: usize = 600;
const CAP: usize = 128 * 1024;

fn current_state(state: &NodeNetworkState) -> &Value {
    &state.status.as_ref().unwrap().current_state.as_ref().unwrap().0
}

fn interfaces(state: &NodeNetworkState) -> Vec<&Value> {
    current_state(state)["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .collect()
}

#[tokio::test]
async fn a_node_with_600_macvlans_reports_a_trimmed_state_under_the_cap_or_leaves_them_out() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let node_name = unique_name("bounded");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let states: Api<NodeNetworkState> = Api::all(client.clone());

    let batch = std::env::temp_dir().join(format!("{node_name}.ip-batch"));
    let mut file = std::fs::File::create(&batch).unwrap();
    for index in 0..MACVLANS {
        writeln!(file, "link add mv{index} link eth1 type macvlan mode bridge").unwrap();
    }
    let created = node
        .command("ip")
        .unwrap()
        .arg("-batch")
        .arg(&batch)
        .status()
        .unwrap();
    assert!(created.success(), "ip -batch: {created}");

    // Under the cap: trimmed, and says so.
    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    let cap = CAP.to_string();
    let mut handler = start_handler_with(&node, &log, &[("NNS_MAX_BYTES", cap.as_str())]);
    let reported = eventually(
        "a NodeNetworkState with every macvlan",
        Duration::from_secs(90),
        || async {
            let state = states.get_opt(&node_name).await.unwrap()?;
            state.status.as_ref()?.current_state.as_ref()?;
            let macvlans = interfaces(&state)
                .iter()
                .filter(|i| i["type"] == "mac-vlan")
                .count();
            let trimming = state.status.as_ref()?.trimmed.as_ref()?;
            (macvlans + trimming.interfaces_omitted as usize == MACVLANS).then_some(state)
        },
    )
    .await
    .unwrap();
    let status = reported.status.as_ref().unwrap();
    let trimming = status.trimmed.as_ref().unwrap();
    let reported_bytes = serde_json::to_vec(current_state(&reported)).unwrap().len();
    eprintln!(
        "{MACVLANS} macvlans: the state takes {} bytes, {reported_bytes} reported under a cap of {CAP}: {trimming:?}",
        trimming.state_bytes
    );
    assert!(reported_bytes <= CAP, "{reported_bytes} bytes reported");
    assert_eq!(trimming.reported_bytes as usize, reported_bytes);
    assert!(trimming.state_bytes as usize > CAP);
    assert_eq!(trimming.max_bytes as usize, CAP);
    assert!(trimming.interfaces_without_details + trimming.interfaces_summarized >= MACVLANS as u32 / 2);
    let condition = find_condition(&status.conditions, "Trimmed").expect("a Trimmed condition");
    assert!(condition.is_true());
    assert_eq!(condition.reason, "StateAboveSizeCap");
    assert!(
        condition.message.contains(&format!("above the cap of {CAP}")),
        "{}",
        condition.message
    );
    let eth1 = interfaces(&reported)
        .into_iter()
        .find(|i| i["name"] == "eth1")
        .unwrap()
        .clone();
    assert!(
        eth1.get("ethtool").is_some(),
        "the node's NIC keeps its details: {eth1}"
    );
    let macvlan = interfaces(&reported)
        .into_iter()
        .find(|i| i["name"] == "mv0")
        .unwrap()
        .clone();
    assert!(
        macvlan.get("ethtool").is_none(),
        "a macvlan loses its details: {macvlan}"
    );
    stop_handler(&mut handler);

    // Left out by name: no macvlans, nothing trimmed.
    let mut handler = start_handler_with(&node, &log, &[("NNS_EXCLUDE_INTERFACES", "mv*")]);
    let untrimmed = eventually(
        "a NodeNetworkState without macvlans",
        Duration::from_secs(60),
        || async {
            let state = states.get_opt(&node_name).await.unwrap()?;
            let no_macvlans = interfaces(&state).iter().all(|i| i["type"] != "mac-vlan");
            no_macvlans.then_some(state)
        },
    )
    .await
    .unwrap();
    let status = untrimmed.status.as_ref().unwrap();
    assert_eq!(status.trimmed, None);
    assert!(
        find_condition(&status.conditions, "Trimmed").is_none(),
        "{:?}",
        status.conditions
    );
    assert!(interfaces(&untrimmed).iter().any(|i| i["name"] == "eth1"));
    eprintln!(
        "excluding mv*: {} bytes reported",
        serde_json::to_vec(current_state(&untrimmed)).unwrap().len()
    );
    stop_handler(&mut handler);
    drop(node);
    let _ = std::fs::remove_file(batch);
}
