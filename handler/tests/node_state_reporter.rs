//! `nmstate-handler run` inside a real sandbox node reports the node's NodeNetworkState and
//! keeps it current: created with its owner and labels, versions set, rewritten after an
//! out-of-band change (well before the periodic check), and after one NetworkManager does not
//! signal (by the periodic check of the kernel), untouched while nothing changes,
//! recreated after deletion; a second handler waits for the node lock; SIGTERM stops it cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use k8s_openapi::api::core::v1::Node;
use kube::{Api, ResourceExt};
use nmstate_api::NodeNetworkState;
use nmstate_handler::network::state::NMSTATE_VERSION;
use nmstate_localenv::testing::{NodeProcess, TestNode, eventually, install_crds, shared_env, unique_name};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

const HANDLER: &str = env!("CARGO_BIN_EXE_nmstate-handler");

fn interface_names(state: &NodeNetworkState) -> Vec<String> {
    let current = &state.status.as_ref().unwrap().current_state.as_ref().unwrap().0;
    current["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_handler_reports_its_node_state_and_keeps_it_current() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let name = unique_name("reporter");
    let node = TestNode::start(&env, &name, &BTreeMap::new()).await.unwrap();
    let states: Api<NodeNetworkState> = Api::all(client.clone());
    let log = std::env::temp_dir().join(format!("{name}.log"));
    let handler_env = [
        ("PART_OF", "kubernetes-nmstate"),
        ("RUST_LOG", "info,nmstate_handler::node_state_reporter=debug"),
        ("NNS_CHECK_INTERVAL_SECONDS", "2"),
    ];
    let mut handler =
        NodeProcess::start(&node, HANDLER.as_ref(), &["run"], &handler_env, log.clone()).unwrap();

    // Created, owned by the Node, labelled, with the versions and the node's interfaces.
    let reported = eventually(
        "the NodeNetworkState is reported",
        Duration::from_secs(30),
        || async {
            states
                .get_opt(&name)
                .await
                .unwrap()
                .filter(|state| state.status.is_some())
        },
    )
    .await
    .unwrap();
    let owner = &reported.owner_references()[0];
    let node_object = Api::<Node>::all(client.clone()).get(&name).await.unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Node", name.as_str())
    );
    assert_eq!(Some(&owner.uid), node_object.metadata.uid.as_ref());
    assert_eq!(
        reported.labels()["app.kubernetes.io/part-of"],
        "kubernetes-nmstate"
    );
    let status = reported.status.clone().unwrap();
    assert!(status.host_network_manager_version.unwrap().starts_with("1.42."));
    assert_eq!(status.handler_nmstate_version.as_deref(), Some(NMSTATE_VERSION));
    let names = interface_names(&reported);
    assert!(
        names.contains(&"eth1".into()) && names.contains(&"eth2".into()),
        "{names:?}"
    );

    // Nothing changes on the node: nothing is written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = states.get(&name).await.unwrap();
    assert_eq!(
        idle.resource_version(),
        reported.resource_version(),
        "an idle node must cause no writes"
    );

    // An out-of-band change (a link NetworkManager did not create) shows up on its own,
    // well before a periodic check would have.
    let changed_at = Instant::now();
    assert!(
        node.command("ip")
            .unwrap()
            .args(["link", "add", "brtest", "type", "bridge"])
            .status()
            .unwrap()
            .success()
    );
    let updated = eventually(
        "brtest appears in the NodeNetworkState",
        Duration::from_secs(20),
        || async {
            let state = states.get(&name).await.unwrap();
            interface_names(&state)
                .contains(&"brtest".to_string())
                .then_some(state)
        },
    )
    .await
    .unwrap();
    eprintln!(
        "out-of-band change reported after {:.2} s",
        changed_at.elapsed().as_secs_f64()
    );
    let updated_status = updated.status.clone().unwrap();
    assert!(updated_status.last_successful_update_time > status.last_successful_update_time);

    // A change NetworkManager does not signal (a sysctl): the kernel notifies it, the next
    // periodic check finds it notified and reads the kernel, which moved, and a full refresh
    // reports it. While nothing is notified, the checks read nothing.
    let forwarding = |state: &NodeNetworkState| {
        let current = &state.status.as_ref().unwrap().current_state.as_ref().unwrap().0;
        current["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|interface| interface["name"] == "eth1")
            .map(|eth1| eth1["ipv4"]["forwarding"].clone())
    };
    assert_eq!(forwarding(&updated), Some(serde_json::json!(false)));
    // Once the node is quiet (a check found nothing notified), from here on in the log.
    let quiet_from = handler.log().len();
    let quiet = eventually(
        "a check finds nothing notified",
        Duration::from_secs(20),
        || async {
            handler.log()[quiet_from..]
                .find("periodic check: nothing notified")
                .map(|at| quiet_from + at)
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}: {}", handler.log()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_log = handler.log()[quiet..].to_string();
    assert!(
        !idle_log.contains("periodic check: the kernel read"),
        "a periodic check read the kernel although nothing was notified:\n{idle_log}"
    );
    let before_sysctl = handler.log().len();
    assert!(
        node.command("sysctl")
            .unwrap()
            .args(["-q", "-w", "net.ipv4.conf.eth1.forwarding=1"])
            .status()
            .unwrap()
            .success()
    );
    let changed_at = Instant::now();
    eventually(
        "eth1's forwarding appears in the NodeNetworkState",
        Duration::from_secs(20),
        || async {
            let state = states.get(&name).await.unwrap();
            (forwarding(&state) == Some(serde_json::json!(true))).then_some(())
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}: {}", handler.log()));
    eprintln!(
        "unsignalled change reported after {:.2} s (checks every 2 s)",
        changed_at.elapsed().as_secs_f64()
    );
    let handler_log = handler.log()[before_sysctl..].to_string();
    assert!(
        handler_log.contains("periodic check: the kernel notified a change"),
        "the change was not found through the kernel's notifications:\n{handler_log}"
    );

    // Deleted: recreated (a new object, same name).
    let old_uid = updated.uid().unwrap();
    states.delete(&name, &Default::default()).await.unwrap();
    eventually(
        "the deleted NodeNetworkState is recreated",
        Duration::from_secs(20),
        || async {
            states
                .get_opt(&name)
                .await
                .unwrap()
                .filter(|state| state.uid().as_ref() != Some(&old_uid) && state.status.is_some())
        },
    )
    .await
    .unwrap();

    // A second handler on the same node waits for the node lock instead of acting; SIGTERM
    // stops it there, cleanly. It listens for SIGTERM before its start-up: as its container's
    // PID 1 it would otherwise ignore it, left Terminating for the whole grace period (here
    // the default action, killed by the signal, would fail the exit status).
    let second_log = std::env::temp_dir().join(format!("{name}-second.log"));
    let mut second = NodeProcess::start(&node, HANDLER.as_ref(), &["run"], &[], second_log.clone()).unwrap();
    eventually(
        "the second handler waits for the node lock",
        Duration::from_secs(20),
        || async {
            second
                .log()
                .contains("another handler holds the node lock")
                .then_some(())
        },
    )
    .await
    .unwrap();
    let stopped = second
        .terminate(Duration::from_secs(5))
        .expect("the waiting handler exits within 5 s of SIGTERM");
    assert!(
        stopped.success(),
        "the waiting handler exited with {stopped}\n{}",
        second.log()
    );
    assert!(
        second.log().contains("stopped during start-up"),
        "{}",
        second.log()
    );
    drop(second);

    // SIGTERM: a clean, prompt exit.
    let exited = handler
        .terminate(Duration::from_secs(10))
        .expect("the handler exits within 10 s of SIGTERM");
    assert!(exited.success(), "the handler exited with {exited}");

    // The Node deleted and registered again while no handler runs: the NodeNetworkState it
    // left is adopted by the new Node object, not left to be collected after the handler
    // reported into it. Its owner reference is dropped first, as a deletion with propagation
    // Orphan does, so that the garbage collector cannot race the handler (on a fresh control
    // plane it only learns of the CRD at its next discovery, up to 30 s later).
    let nodes: Api<Node> = Api::all(client.clone());
    let unowned = serde_json::json!({"metadata": {"ownerReferences": null}});
    let kept = states
        .patch(&name, &Default::default(), &kube::api::Patch::Merge(&unowned))
        .await
        .unwrap()
        .uid();
    nodes.delete(&name, &Default::default()).await.unwrap();
    eventually("the Node is gone", Duration::from_secs(30), || async {
        nodes.get_opt(&name).await.unwrap().is_none().then_some(())
    })
    .await
    .unwrap();
    let mut registered = node_object.clone();
    registered.metadata = kube::api::ObjectMeta {
        name: Some(name.clone()),
        labels: node_object.metadata.labels.clone(),
        ..Default::default()
    };
    let new_uid = nodes
        .create(&Default::default(), &registered)
        .await
        .unwrap()
        .uid();
    let third_log = std::env::temp_dir().join(format!("{name}-third.log"));
    let mut third =
        NodeProcess::start(&node, HANDLER.as_ref(), &["run"], &handler_env, third_log.clone()).unwrap();
    let adopted = eventually(
        "the new Node owns the NodeNetworkState",
        Duration::from_secs(30),
        || async {
            let state = states.get(&name).await.unwrap();
            state
                .owner_references()
                .iter()
                .any(|owner| Some(&owner.uid) == new_uid.as_ref())
                .then_some(state)
        },
    )
    .await
    .unwrap();
    assert_eq!(adopted.uid(), kept, "adopted, not deleted and created again");
    third
        .terminate(Duration::from_secs(10))
        .expect("the third handler stops");
    for file in [log, second_log, third_log] {
        let _ = std::fs::remove_file(file);
    }
}
