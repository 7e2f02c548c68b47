//! NetworkManager restarted on a node (SIGTERM, then started again on the same bus, as
//! `systemctl restart NetworkManager` does), between two applies and in the middle of one:
//! the handler stays up, follows the new NetworkManager's signals (an out-of-band change
//! reaches the NodeNetworkState well before the periodic refresh), and the policy it was
//! applying, as the next one, ends Available with the node's network as it says. And
//! NetworkManager hung (it holds its bus name and answers nothing) while the handler reads the
//! node: the handler still stops within seconds of SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{
    AVAILABLE, add_kernel_bridge, policy, start_handler_with, stop_handler, stop_handler_within,
    wait_for_condition,
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use nmstate_api::{NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, NodeNetworkState};
use nmstate_localenv::testing::{NodeProcess, TestNode, eventually, install_crds, shared_env, unique_name};
use serde_json::json;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

fn bridge(name: &str) -> serde_json::Value {
    json!({"interfaces": [{"name": name, "type": "linux-bridge", "state": "up",
        "bridge": {"options": {"stp": {"enabled": false}}, "port": []}}]})
}

async fn reports(states: &Api<NodeNetworkState>, node: &str, interface: &str) -> bool {
    let Ok(Some(state)) = states.get_opt(node).await else {
        return false;
    };
    let current = state.status.and_then(|status| status.current_state);
    current.is_some_and(|document| {
        document.0["interfaces"]
            .as_array()
            .is_some_and(|interfaces| interfaces.iter().any(|i| i["name"] == interface))
    })
}

/// A sandbox node running a handler, and the APIs the tests read.
struct Node {
    name: String,
    node: TestNode,
    handler: NodeProcess,
    policies: Api<NodeNetworkConfigurationPolicy>,
    enactments: Api<NodeNetworkConfigurationEnactment>,
    states: Api<NodeNetworkState>,
}

impl Node {
    async fn start(prefix: &str) -> Node {
        Node::start_with(prefix, &[]).await
    }

    /// As [`Node::start`], the handler's environment with `overrides`.
    async fn start_with(prefix: &str, overrides: &[(&str, &str)]) -> Node {
        let env = shared_env().await.unwrap();
        let client = env.client().await.unwrap();
        install_crds(&client).await.unwrap();
        let name = unique_name(prefix);
        let node = TestNode::start(&env, &name, &BTreeMap::new()).await.unwrap();
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let handler = start_handler_with(&node, &log, overrides);
        Node {
            name,
            node,
            handler,
            policies: Api::all(client.clone()),
            enactments: Api::all(client.clone()),
            states: Api::all(client),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_network_manager_restart_the_handler_reports_and_applies_again() {
    let Node {
        name,
        node,
        mut handler,
        policies,
        enactments,
        states,
    } = Node::start("nmrestart").await;
    let this_node = json!({"kubernetes.io/hostname": name});

    let first = format!("{name}-a");
    policies
        .create(
            &PostParams::default(),
            &policy(&first, this_node.clone(), bridge("br-a")),
        )
        .await
        .unwrap();
    wait_for_condition(
        &enactments,
        &format!("{name}.{first}"),
        AVAILABLE,
        Duration::from_secs(60),
    )
    .await;

    let before = node.network_manager_pid();
    tokio::task::block_in_place(|| node.restart_network_manager())
        .unwrap_or_else(|error| panic!("restarting NetworkManager on {name}: {error}"));
    let restarted = Instant::now();
    assert_ne!(node.network_manager_pid(), before, "NetworkManager was restarted");

    // A change nobody asked for: the new NetworkManager's signals bring it to the node state.
    add_kernel_bridge(&node, "br-oob");
    eventually(
        "the out-of-band bridge reported",
        Duration::from_secs(30),
        || async { reports(&states, &name, "br-oob").await.then_some(()) },
    )
    .await
    .unwrap();
    let reported = restarted.elapsed();

    let second = format!("{name}-b");
    policies
        .create(
            &PostParams::default(),
            &policy(&second, this_node, bridge("br-b")),
        )
        .await
        .unwrap();
    wait_for_condition(
        &enactments,
        &format!("{name}.{second}"),
        AVAILABLE,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        reports(&states, &name, "br-b").await,
        "the applied bridge is in the node state"
    );
    println!(
        "NetworkManager restarted: an out-of-band change reported {:.1} s later, the next policy Available {:.1} s later",
        reported.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    assert!(handler.is_running(), "the handler exited: {}", handler.log());

    for policy in [first, second] {
        let _ = policies.delete(&policy, &DeleteParams::default()).await;
    }
    stop_handler(&mut handler);
}

/// `count` bridges `<prefix>0`…: an apply long enough for a restart to land inside it.
fn bridges(prefix: &str, count: usize) -> serde_json::Value {
    let interfaces: Vec<serde_json::Value> = (0..count)
        .map(|index| bridge(&format!("{prefix}{index}"))["interfaces"][0].clone())
        .collect();
    json!({ "interfaces": interfaces })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_manager_restart_mid_apply_ends_with_the_policy_applied() {
    let Node {
        name,
        node,
        mut handler,
        policies,
        enactments,
        states,
    } = Node::start("nmmidapply").await;
    eventually("the node state", Duration::from_secs(60), || async {
        states.get_opt(&name).await.ok().flatten().map(|_| ())
    })
    .await
    .unwrap();

    let policy_name = format!("{name}-mid");
    let enactment = format!("{name}.{policy_name}");
    policies
        .create(
            &PostParams::default(),
            &policy(
                &policy_name,
                json!({"kubernetes.io/hostname": name}),
                bridges("br-mid", 12),
            ),
        )
        .await
        .unwrap();
    // Restarted once nmstate holds a checkpoint and changes the node: the checkpoint, kept in
    // NetworkManager's memory, goes with it, so neither commit nor rollback can use it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !handler.log().contains("Created checkpoint") {
        assert!(
            Instant::now() < deadline,
            "no checkpoint taken: {}",
            handler.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| node.restart_network_manager())
        .unwrap_or_else(|error| panic!("restarting NetworkManager on {name}: {error}"));
    let restarted = Instant::now();

    wait_for_condition(&enactments, &enactment, AVAILABLE, Duration::from_secs(90)).await;
    let available = restarted.elapsed();
    for index in 0..12 {
        let bridge = format!("br-mid{index}");
        assert!(
            reports(&states, &name, &bridge).await,
            "{bridge} in the node state"
        );
    }
    let handler_log = handler.log();
    assert!(
        handler_log.contains("apply failed"),
        "the restart landed inside the apply: {handler_log}"
    );
    println!(
        "NetworkManager restarted mid-apply: the policy Available {:.1} s later; what the handler said:\n{}",
        available.as_secs_f64(),
        handler_log
            .lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(handler.is_running(), "the handler exited: {handler_log}");
    let _ = policies.delete(&policy_name, &DeleteParams::default()).await;
    stop_handler(&mut handler);
}

/// Sends SIGCONT to NetworkManager when dropped, the test passing or not: a stopped daemon
/// would hold up the node's teardown.
struct Resume(nix::unistd::Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handler_stops_while_network_manager_hangs() {
    // The kernel checked every second: a link added there starts a read within seconds.
    let Node {
        name,
        node,
        mut handler,
        states,
        ..
    } = Node::start_with("nmhang", &[("NNS_CHECK_INTERVAL_SECONDS", "1")]).await;
    eventually("the node state reported", Duration::from_secs(30), || async {
        reports(&states, &name, "eth0").await.then_some(())
    })
    .await
    .unwrap();

    // SIGSTOP: NetworkManager keeps its bus name and answers nothing, as a hung daemon does.
    let network_manager = nix::unistd::Pid::from_raw(node.network_manager_pid().unwrap() as i32);
    nix::sys::signal::kill(network_manager, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let _resume = Resume(network_manager);
    add_kernel_bridge(&node, "br-hang");
    // The next kernel check sees the bridge; the read of the node it starts then waits on
    // NetworkManager (nmstate sets no timeout on its D-Bus calls).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !reports(&states, &name, "br-hang").await,
        "the node was read although NetworkManager was stopped"
    );

    let took = stop_handler_within(&mut handler, Duration::from_secs(10));

    // Started again meanwhile (as the kubelet restarts it), a handler waits in its start-up: it
    // first looks for a checkpoint left behind, over D-Bus. It stops as promptly.
    let log = std::env::temp_dir().join(format!("{name}-again.log"));
    let mut again = start_handler_with(&node, &log, &[]);
    eventually("the handler started again", Duration::from_secs(10), || async {
        again.log().contains("starting").then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !again.log().contains("connected to the API server"),
        "the handler got past NetworkManager although it was stopped:\n{}",
        again.log()
    );
    let took_starting = stop_handler_within(&mut again, Duration::from_secs(10));
    assert!(again.log().contains("stopped during start-up"), "{}", again.log());
    println!(
        "NetworkManager hung: the handler stopped {:.2} s after SIGTERM, {:.2} s in its start-up",
        took.as_secs_f64(),
        took_starting.as_secs_f64()
    );
    let _ = std::fs::remove_file(log);
}
