//! `nmstate-handler run` inside a real sandbox node enacts the policies that select it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{
    AVAILABLE, FAILING, policy, start_handler, start_handler_with, stdout_of, stop_handler, true_condition,
    wait_for_condition,
};
use k8s_openapi::api::core::v1::{Event, Node};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, condition::find_condition,
    enactment::EnactmentConditionType,
};
use nmstate_handler::network::state::READ_ON_THE_PATH;
use nmstate_localenv::testing::{TestNode, eventually, install_crds, kubectl, shared_env, unique_name};
use serde_json::{Value, json};
use std::{collections::BTreeMap, time::Duration};

#[tokio::test]
async fn policies_selecting_the_node_are_enacted_and_reported() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let node_name = unique_name("enact");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    let mut handler = start_handler(&node, &log);
    let this_node = json!({"kubernetes.io/hostname": node_name});

    // A bridge over eth1 with DHCP: enacted, reported, and real on the node.
    let bridge = format!("{node_name}-bridge");
    let desired = json!({"interfaces": [{
        "name": "br1", "type": "linux-bridge", "state": "up", "ipv4": {"enabled": true, "dhcp": true},
        "bridge": {"options": {"stp": {"enabled": false}}, "port": [{"name": "eth1"}]},
    }]});
    policies
        .create(
            &PostParams::default(),
            &policy(&bridge, this_node.clone(), desired),
        )
        .await
        .unwrap();
    let bridge_enactment = format!("{node_name}.{bridge}");
    let enacted =
        wait_for_condition(&enactments, &bridge_enactment, AVAILABLE, Duration::from_secs(60)).await;
    assert_eq!(enacted.labels()["nmstate.io/policy"], bridge);
    assert_eq!(enacted.labels()["nmstate.io/node"], node_name);
    assert_eq!(enacted.owner_references()[0].kind, "Node");
    let status = enacted.status.clone().unwrap();
    assert_eq!(status.policy_generation, Some(1));
    assert_eq!(status.desired_state.unwrap().0["interfaces"][0]["name"], "br1");
    assert_eq!(
        find_condition(&status.conditions, "Available").unwrap().reason,
        "SuccessfullyConfigured"
    );
    // The node state was reported before the enactment said Available: read once, no waiting.
    let states: Api<nmstate_api::NodeNetworkState> = Api::all(client.clone());
    let reported = states
        .get(&node_name)
        .await
        .unwrap()
        .status
        .unwrap()
        .current_state
        .unwrap()
        .0;
    let br1 = reported["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|interface| interface["name"] == "br1");
    let ports: Option<Vec<&Value>> = br1.and_then(|br1| {
        Some(
            br1["bridge"]["port"]
                .as_array()?
                .iter()
                .map(|port| &port["name"])
                .collect(),
        )
    });
    assert_eq!(
        ports,
        Some(vec![&json!("eth1")]),
        "br1 in the node state: {br1:?}"
    );
    let address = eventually("a DHCP lease on br1", Duration::from_secs(10), || async {
        let text = stdout_of(&node, &["ip", "-4", "-br", "addr", "show", "br1"]);
        text.contains("10.77.1.").then_some(text)
    })
    .await
    .unwrap();
    eprintln!("br1: {}", address.trim());

    // Static address, route and DNS in one policy: the kernel's table and the resolver show it.
    let static_net = format!("{node_name}-static");
    let desired = json!({
        "interfaces": [{
            "name": "eth2", "type": "ethernet", "state": "up",
            "ipv4": {"enabled": true, "dhcp": false, "address": [{"ip": "10.77.2.50", "prefix-length": 24}]},
            "ipv6": {"enabled": false},
        }],
        "routes": {"config": [{
            "destination": "198.51.100.0/24", "next-hop-address": "10.77.2.1", "next-hop-interface": "eth2",
            "metric": 150, "table-id": 254,
        }]},
        "dns-resolver": {"config": {"search": ["example.test", "sandbox.test"], "server": ["10.77.0.1"]}},
    });
    policies
        .create(
            &PostParams::default(),
            &policy(&static_net, this_node.clone(), desired),
        )
        .await
        .unwrap();
    wait_for_condition(
        &enactments,
        &format!("{node_name}.{static_net}"),
        AVAILABLE,
        Duration::from_secs(60),
    )
    .await;
    let show = |args: &[&str]| stdout_of(&node, args);
    assert!(show(&["ip", "-4", "-br", "addr", "show", "eth2"]).contains("10.77.2.50/24"));
    let route = show(&["ip", "route", "show", "198.51.100.0/24"]);
    assert!(
        route.contains("via 10.77.2.1 dev eth2") && route.contains("metric 150"),
        "{route}"
    );
    let resolv = show(&["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("search example.test sandbox.test") && resolv.contains("nameserver 10.77.0.1"),
        "{resolv}"
    );
    assert!(
        show(&["ping", "-c", "1", "-W", "3", "10.77.2.1"]).contains("1 received"),
        "the static address works"
    );

    // A policy for an interface the node does not have: Failing after the retries, with
    // nmstate's message.
    let missing = format!("{node_name}-missing");
    let desired = json!({"interfaces": [{"name": "eth9", "type": "ethernet", "state": "up"}]});
    policies
        .create(
            &PostParams::default(),
            &policy(&missing, this_node.clone(), desired),
        )
        .await
        .unwrap();
    let failed = wait_for_condition(
        &enactments,
        &format!("{node_name}.{missing}"),
        FAILING,
        Duration::from_secs(240),
    )
    .await;
    let failing = true_condition(&failed).unwrap();
    assert!(
        !find_condition(&failed.status.as_ref().unwrap().conditions, "Progressing")
            .unwrap()
            .is_true()
    );
    assert!(
        failing
            .message
            .contains(&format!("on node {node_name} at desired state apply")),
        "{}",
        failing.message
    );
    assert!(
        failing.message.contains("eth9"),
        "nmstate's message names the interface: {}",
        failing.message
    );
    assert_eq!(failed.status.unwrap().retry_count.unwrap()["1"], 2);
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let about_missing = ListParams::default().fields(&format!("involvedObject.name={missing}"));
    let recorded = events.list(&about_missing).await.unwrap().items;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].reason.as_deref(), Some("ReconcileFailed"));
    assert_eq!(recorded[0].type_.as_deref(), Some("Warning"));
    assert_eq!(
        recorded[0].message.as_deref(),
        Some(
            format!("reconciliation of enactment \"{node_name}.{missing}\" has failed after 2 retries")
                .as_str()
        )
    );
    assert_eq!(
        recorded[0].reporting_component,
        Some(format!("{node_name}.nmstate-handler"))
    );
    // What a user reads, whichever events API the server took them through.
    let described = kubectl(&env)
        .args(["describe", "nncp", &missing])
        .output()
        .unwrap();
    let described = String::from_utf8_lossy(&described.stdout);
    let failed_line = described
        .lines()
        .find(|line| line.contains("ReconcileFailed"))
        .unwrap_or_else(|| panic!("no ReconcileFailed event in `kubectl describe`:\n{described}"));
    for expected in [
        "Warning",
        &format!("{node_name}.nmstate-handler"),
        "has failed after 2 retries",
    ] {
        assert!(failed_line.contains(expected), "{expected:?} in {failed_line:?}");
    }

    // A policy selecting a label the node does not carry yet: nothing, until the label comes.
    let labelled = format!("{node_name}-labelled");
    let desired = json!({"interfaces": [{
        "name": "br9", "type": "linux-bridge", "state": "up",
        "ipv4": {"enabled": false}, "ipv6": {"enabled": false}, "bridge": {"port": []},
    }]});
    policies
        .create(
            &PostParams::default(),
            &policy(&labelled, json!({"nmstate-test/enact": node_name}), desired),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        enactments
            .get_opt(&format!("{node_name}.{labelled}"))
            .await
            .unwrap()
            .is_none()
    );
    let label = json!({"metadata": {"labels": {"nmstate-test/enact": node_name}}});
    nodes
        .patch(&node_name, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    wait_for_condition(
        &enactments,
        &format!("{node_name}.{labelled}"),
        AVAILABLE,
        Duration::from_secs(60),
    )
    .await;

    // A restart re-applies only what the node drifted from. Taken down while the handler is
    // stopped, br9 comes back; the bridge and static policies are not applied again, nor are
    // their enactments even rewritten.
    let applied_before_restart = handler.log().matches("reconcile: applying").count();
    let before = enactments.get(&bridge_enactment).await.unwrap();
    let static_before = enactments
        .get(&format!("{node_name}.{static_net}"))
        .await
        .unwrap();
    stop_handler(&mut handler);
    let take_br9_down = || {
        let down = node
            .command("nmcli")
            .unwrap()
            .args(["connection", "down", "br9"])
            .output()
            .unwrap();
        assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    };
    take_br9_down();
    let mut handler = start_handler(&node, &log);
    eventually(
        "the restarted handler puts br9 back",
        Duration::from_secs(30),
        || async {
            handler
                .log()
                .contains("the node drifted from the policy: re-applying")
                .then_some(())
        },
    )
    .await
    .unwrap();
    // The enactment was Available before the restart already: wait for the bridge itself.
    eventually("br9 is back", Duration::from_secs(30), || async {
        show(&["ip", "-br", "link", "show", "br9"])
            .contains("br9")
            .then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", handler.log()));
    wait_for_condition(
        &enactments,
        &format!("{node_name}.{labelled}"),
        AVAILABLE,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log_text = handler.log();
    assert_eq!(
        log_text.matches("reconcile: applying").count() - applied_before_restart,
        1, // br9 only
        "{log_text}"
    );
    assert_eq!(
        log_text.matches("the node is still in the desired state").count(),
        2,
        "{log_text}"
    );
    let after = enactments.get(&bridge_enactment).await.unwrap();
    assert_eq!(after.resource_version(), before.resource_version());
    let static_after = enactments
        .get(&format!("{node_name}.{static_net}"))
        .await
        .unwrap();
    assert_eq!(static_after.resource_version(), static_before.resource_version());

    // A change made outside the handler right before a policy's next generation: the read the
    // node-state reporter kept is outdated by NetworkManager's signal, so the node is read again,
    // found drifted, and the policy applied (a kept read taken for current would find br9 up
    // and apply nothing).
    take_br9_down();
    let next = json!({"spec": {"maxUnavailable": 1}});
    policies
        .patch(&labelled, &PatchParams::default(), &Patch::Merge(&next))
        .await
        .unwrap();
    eventually(
        "the next generation is Available",
        Duration::from_secs(30),
        || async {
            let status = enactments
                .get(&format!("{node_name}.{labelled}"))
                .await
                .unwrap()
                .status?;
            (status.policy_generation == Some(2) && status.is(EnactmentConditionType::Available))
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        show(&["ip", "-br", "link", "show", "br9"]).contains("br9"),
        "br9 is back: {}",
        handler.log()
    );

    // Deleting a policy removes its enactment.
    policies.delete(&bridge, &Default::default()).await.unwrap();
    eventually(
        "the enactment of a deleted policy is removed",
        Duration::from_secs(20),
        || async {
            enactments
                .get_opt(&bridge_enactment)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await
    .unwrap();

    stop_handler(&mut handler);
    for name in [missing, labelled, static_net] {
        policies.delete(&name, &Default::default()).await.unwrap();
    }
    let _ = std::fs::remove_file(&log);
}

/// The first policy after the handler started is applied over the read the handler made at
/// start, not over a read on the apply's path: nothing the handler does at start (its probe of
/// the kernel's VLAN filtering adds and removes a bridge) outdates that read.
#[tokio::test]
async fn the_first_apply_merges_over_the_state_the_handler_read_at_start() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let node_name = unique_name("first-apply");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    let rust_log = "info,nmstate_handler::network::state=debug";
    let mut handler = start_handler_with(&node, &log, &[("RUST_LOG", rust_log)]);
    wait_for_the_report(&client, &node_name).await;

    let policy = apply_a_bridge(&client, &node_name).await;
    stop_handler(&mut handler);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains(READ_ON_THE_PATH),
        "the apply read the node on its path: the read made at start was outdated (log: {})",
        log.display()
    );
    delete_policy(&client, &policy).await;
    let _ = std::fs::remove_file(&log);
}

/// The kernel notifies a change NetworkManager does not signal, undone before the next periodic
/// check (a sysctl set and set back): the check reads the kernel alone, finds it as it was at
/// the handler's last full read, and keeps that read for the next apply, which then does not
/// read the node on its path. (A router advertisement renewing an address's lifetimes, or a
/// container's veth come and gone, notifies the same way.)
#[tokio::test]
async fn a_kernel_notification_of_nothing_that_stayed_changed_keeps_the_read_for_the_apply() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let node_name = unique_name("notified");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    let rust_log = "info,nmstate_handler::network::state=debug,nmstate_handler::node_state_reporter=debug";
    let mut handler = start_handler_with(
        &node,
        &log,
        &[("RUST_LOG", rust_log), ("NNS_CHECK_INTERVAL_SECONDS", "2")],
    );
    wait_for_the_report(&client, &node_name).await;
    let logged_since = |from: usize, line: &'static str| {
        let handler = &handler;
        async move { handler.log()[from..].find(line).map(|at| from + at) }
    };
    eventually("a check finds nothing notified", Duration::from_secs(20), || {
        logged_since(0, "periodic check: nothing notified")
    })
    .await
    .unwrap();

    let flapped = handler.log().len();
    // Set and set back by one process, so no check falls in between.
    let flap = [
        "net.ipv4.conf.eth1.forwarding=1",
        "net.ipv4.conf.eth1.forwarding=0",
    ];
    let set = node
        .command("sysctl")
        .unwrap()
        .args(["-q", "-w"])
        .args(flap)
        .status()
        .unwrap();
    assert!(set.success(), "sysctl -w {flap:?}: {set}");
    let checked = eventually("a check reads the kernel", Duration::from_secs(20), || {
        logged_since(flapped, "periodic check: the kernel read")
    })
    .await
    .unwrap();
    let log_after_check = &handler.log()[checked..];
    assert!(
        log_after_check
            .lines()
            .next()
            .is_some_and(|line| line.contains("moved=false")),
        "the kernel was read as moved: {log_after_check}"
    );

    let policy = apply_a_bridge(&client, &node_name).await;
    stop_handler(&mut handler);
    let since_the_flap = &handler.log()[flapped..];
    assert!(
        !since_the_flap.contains(READ_ON_THE_PATH),
        "the apply read the node on its path: the read kept was given up for a notification \
         of nothing that stayed changed (log: {})",
        log.display()
    );
    delete_policy(&client, &policy).await;
    let _ = std::fs::remove_file(&log);
}

async fn wait_for_the_report(client: &kube::Client, node_name: &str) {
    let states: Api<nmstate_api::NodeNetworkState> = Api::all(client.clone());
    eventually("the node state reported", Duration::from_secs(30), || async {
        let state = states.get_opt(node_name).await.unwrap()?;
        state.status?.current_state
    })
    .await
    .unwrap();
}

/// Applies a policy that adds a bridge on `node_name`, waits for it to be Available there, and
/// returns its name.
async fn apply_a_bridge(client: &kube::Client, node_name: &str) -> String {
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let name = format!("{node_name}-bridge");
    let desired = json!({"interfaces": [{
        "name": "br5", "type": "linux-bridge", "state": "up",
        "bridge": {"options": {"stp": {"enabled": false}}, "port": []},
    }]});
    let this_node = json!({"kubernetes.io/hostname": node_name});
    policies
        .create(&PostParams::default(), &policy(&name, this_node, desired))
        .await
        .unwrap();
    let enactment = format!("{node_name}.{name}");
    wait_for_condition(&enactments, &enactment, AVAILABLE, Duration::from_secs(60)).await;
    name
}

async fn delete_policy(client: &kube::Client, name: &str) {
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    policies.delete(name, &Default::default()).await.unwrap();
}
