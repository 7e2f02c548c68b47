//! A policy the node's kernel cannot do (`examples/bond.yaml`: this kernel has no bonding
//! driver) fails once, with the kernel's message, and is not retried: nmstate already spends
//! about two minutes on each such attempt. And every other example the sandbox cannot do fails
//! saying why, touching nothing (side by side with the first test: the same two minutes).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{
    FAILING,
    examples::{Shows, as_written, enact, example_for},
    true_condition,
};

use kube::{Api, api::PostParams};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, condition::find_condition,
};
use nmstate_localenv::testing::{NodeProcess, TestNode, install_crds, shared_env, unique_name};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

const HANDLER: &str = env!("CARGO_BIN_EXE_nmstate-handler");

#[tokio::test]
async fn a_bond_on_a_kernel_without_bonding_fails_once_without_retries() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let node_name = unique_name("nobond");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let kernel_says = node
        .command("ip")
        .unwrap()
        .args(["link", "add", "probe0", "type", "bond"])
        .output()
        .unwrap();
    assert!(
        !kernel_says.status.success(),
        "this test needs a kernel without bonding; this one has it"
    );

    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    let mut handler = NodeProcess::start(
        &node,
        HANDLER.as_ref(),
        &["run"],
        &[("PROBE_TIMEOUT_SECONDS", "5")],
        log.clone(),
    )
    .unwrap();

    // examples/bond.yaml: bond0 over eth1 and eth2.
    let policy = example_for("bond", &node_name, as_written);
    let policy_name = format!("{node_name}-bond");
    assert_eq!(policy.metadata.name.as_deref(), Some(policy_name.as_str()));
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    policies.create(&PostParams::default(), &policy).await.unwrap();

    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let name = format!("{node_name}.{policy_name}");
    let started = Instant::now();
    let failed = loop {
        let enactment = enactments.get_opt(&name).await.unwrap();
        let status = enactment.as_ref().and_then(|enactment| enactment.status.clone());
        if let Some(status) = status
            && find_condition(&status.conditions, "Failing")
                .is_some_and(|c| c.is_true() && c.reason == "FailedToConfigure")
        {
            break status;
        }
        // The handler's log is printed when it is dropped during the panic.
        assert!(
            started.elapsed() < Duration::from_secs(400),
            "not failed within 400 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!("bond failed after {:.0} s", started.elapsed().as_secs_f64());
    let message = &find_condition(&failed.conditions, "Failing").unwrap().message;
    assert!(
        message.contains("Operation not supported"),
        "the kernel's message: {message}"
    );
    assert_eq!(failed.retry_count.unwrap()["1"], 1, "tried once, not retried");
    let links = node
        .command("ip")
        .unwrap()
        .args(["-br", "link"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("bond0"),
        "nothing left behind"
    );

    handler.kill();
    policies.delete(&policy_name, &Default::default()).await.unwrap();
    let _ = std::fs::remove_file(&log);
}

/// `examples/<file>.yaml` fails with a message containing `reason`, and leaves none of the
/// links `leaves_no` on the node.
async fn fails_saying(
    client: &kube::Client,
    file: &'static str,
    reason: &str,
    leaves_no: &'static [&'static str],
) {
    let nothing_left = [Shows {
        command: &["ip", "-br", "link"],
        contains: &["eth1"],
        lacks: leaves_no,
    }];
    let enactment = enact(client, file, as_written, FAILING, &nothing_left).await;
    let message = true_condition(&enactment).unwrap().message;
    assert!(message.contains(reason), "{file}: {message}");
    eprintln!("{file}: {message}");
}

#[tokio::test]
async fn the_examples_this_sandbox_cannot_do_fail_saying_why() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    const KERNEL: &str = "Operation not supported";
    const NO_OVS: &str = "not able to connect OVS daemon";
    futures::join!(
        // No bonding, 802.1Q or VRF driver in this kernel: nmstate gives up after ~127 s (bond
        // itself: the first test).
        fails_saying(&client, "bond-vlan", KERNEL, &["bond0"]),
        fails_saying(&client, "vlan", KERNEL, &["eth1.102"]),
        fails_saying(&client, "vrf", KERNEL, &["vrf102"]),
        // No Open vSwitch on these machines.
        fails_saying(&client, "ovs-bridge", NO_OVS, &["br1"]),
        fails_saying(&client, "ovs-bridge-iface", NO_OVS, &["br1", "ovs0"]),
        // No bridge VLAN filtering in this kernel: refused before anything is applied.
        fails_saying(
            &client,
            "linux-bridge-vlan",
            "br1 port eth1 set VLANs, but this node's kernel does not support bridge VLAN filtering",
            &["br1"],
        ),
        // The sandbox's NICs are veths: the capture finds no ethernet interface.
        fails_saying(&client, "lldp", "interface with 'type=ethernet' not found", &[]),
    );
}
