//! A handler killed (SIGKILL) in the middle of applying a policy does not strand the node:
//! NetworkManager rolls the uncommitted change back when the checkpoint expires, and the
//! restarted handler resumes the policy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use kube::{Api, api::PostParams};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, condition::find_condition,
};
use nmstate_handler::network::network_manager::checkpoints;
use nmstate_localenv::testing::{NodeProcess, TestNode, eventually, install_crds, shared_env, unique_name};
use serde_json::json;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

const HANDLER: &str = env!("CARGO_BIN_EXE_nmstate-handler");
/// With 5 s probes the checkpoint expires after 20 s (4 × the probe timeout).
const PROBE_TIMEOUT_SECONDS: &str = "5";

fn start_handler(node: &TestNode, log: &std::path::Path) -> NodeProcess {
    start_handler_probing(node, log, PROBE_TIMEOUT_SECONDS)
}

fn start_handler_probing(node: &TestNode, log: &std::path::Path, probe_timeout: &str) -> NodeProcess {
    let env = [
        ("PROBE_TIMEOUT_SECONDS", probe_timeout),
        ("NNCP_MAX_RETRIES", "1"),
        ("RUST_LOG", "info"),
    ];
    NodeProcess::start(node, HANDLER.as_ref(), &["run"], &env, log.to_path_buf()).unwrap()
}

fn eth0_is_up(node: &TestNode) -> bool {
    let output = node
        .command("ip")
        .unwrap()
        .args(["-4", "-br", "addr", "show", "eth0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.contains(" UP ") && text.contains(&node.address())
}

#[tokio::test]
async fn a_handler_killed_mid_apply_leaves_the_node_to_networkmanagers_rollback() {
    let (client, node, mut handler, log, policy_name) =
        killable_mid_apply("crash", PROBE_TIMEOUT_SECONDS).await;
    let node_name = node.name.clone();
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    handler.kill();
    let killed_at = Instant::now();

    // NetworkManager rolls back on its own once the checkpoint expires.
    eventually(
        "NetworkManager rolls the node back",
        Duration::from_secs(60),
        || async { eth0_is_up(&node).then_some(()) },
    )
    .await
    .unwrap();
    eprintln!(
        "node rolled back by NetworkManager {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    eventually("the checkpoint is gone", Duration::from_secs(10), || async {
        checkpoints(Some(&node.bus_address()))
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await
    .unwrap();

    // The restarted handler resumes the policy: it is applied again, rolled back again by the
    // probes (it really does cut the node off), and reported as failed; the node stays up.
    let mut handler = start_handler(&node, &log);
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let name = format!("{node_name}.{policy_name}");
    let failed = eventually(
        "the resumed policy is reported failed",
        Duration::from_secs(120),
        || async {
            let enactment = enactments.get_opt(&name).await.unwrap()?;
            let conditions = &enactment.status.as_ref()?.conditions;
            find_condition(conditions, "Failing")
                .is_some_and(|c| c.is_true() && c.reason == "FailedToConfigure")
                .then_some(enactment)
        },
    )
    .await
    .unwrap();
    let status = failed.status.unwrap();
    let message = &find_condition(&status.conditions, "Failing").unwrap().message;
    assert!(message.contains("failed running probe 'ping'"), "{message}");
    assert!(
        eth0_is_up(&node),
        "the node must be up after the handler's own rollback"
    );

    handler.kill();
    policies.delete(&policy_name, &Default::default()).await.unwrap();
    if !std::thread::panicking() {
        let _ = std::fs::remove_file(&log);
    }
}

/// A node whose handler applies a policy that cuts it off (eth0 down) and is still probing,
/// the change live and uncommitted: a window to kill the handler in.
async fn killable_mid_apply(
    prefix: &str,
    probe_timeout: &str,
) -> (kube::Client, TestNode, NodeProcess, std::path::PathBuf, String) {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let node_name = unique_name(prefix);
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    let handler = start_handler_probing(&node, &log, probe_timeout);

    // A policy that cuts the node off (eth0 down): the probes fail for their timeout before the handler
    // would roll back, which leaves a window to kill it with the change live and uncommitted.
    let policy_name = format!("{node_name}-cut");
    let policy: NodeNetworkConfigurationPolicy = serde_json::from_value(json!({
        "apiVersion": "nmstate.io/v1", "kind": "NodeNetworkConfigurationPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node_name},
            "desiredState": {"interfaces": [{"name": "eth0", "type": "ethernet", "state": "down"}]},
        },
    }))
    .unwrap();
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    policies.create(&PostParams::default(), &policy).await.unwrap();
    eventually(
        "the change is live on the node",
        Duration::from_secs(60),
        || async { (!eth0_is_up(&node)).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(
        checkpoints(Some(&node.bus_address())).await.unwrap().len(),
        1,
        "the change is not committed"
    );
    (client, node, handler, log, policy_name)
}

/// Restarted while the change it left is still live (before NetworkManager's checkpoint
/// expires), the handler rolls it back first thing, so a node cut off by a crashed apply is
/// reachable again within seconds, not minutes.
#[tokio::test]
async fn a_handler_restarted_over_a_change_left_live_rolls_it_back_at_once() {
    // 30-s probes: the checkpoint would expire on its own only 120 s after the apply.
    let (client, node, mut handler, log, policy_name) = killable_mid_apply("crashback", "30").await;
    handler.kill();
    let mut handler = start_handler_probing(&node, &log, "30");
    let restarted = Instant::now();
    eventually("eth0 back up", Duration::from_secs(20), || async {
        eth0_is_up(&node).then_some(())
    })
    .await
    .unwrap();
    let back = restarted.elapsed();
    // NetworkManager's rollback call returns, and the handler logs it, only once every device
    // is back in its place: eth0's address can be seen a moment before.
    let said = eventually(
        "the handler says it rolled back",
        Duration::from_secs(10),
        || async {
            handler
                .log()
                .contains("rolled back a change an earlier handler left uncommitted")
                .then_some(())
        },
    )
    .await;
    assert!(said.is_ok(), "{}", handler.log());
    eprintln!(
        "a change left live by a killed handler rolled back: eth0 up {:.2} s after the restart, \
         the handler's log line {:.2} s after",
        back.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    handler.kill();
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client);
    policies.delete(&policy_name, &Default::default()).await.unwrap();
}
