//! A policy the node's kernel cannot do (a bond: this kernel has no bonding driver) fails once,
//! with the kernel's message, and is not retried: nmstate already spends about two minutes on
//! each such attempt.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use kube::{Api, api::PostParams};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, condition::find_condition,
};
use nmstate_localenv::testing::{NodeProcess, TestNode, install_crds, shared_env, unique_name};
use serde_json::json;
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

    let policy_name = format!("{node_name}-bond");
    let policy: NodeNetworkConfigurationPolicy = serde_json::from_value(json!({
        "apiVersion": "nmstate.io/v1", "kind": "NodeNetworkConfigurationPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node_name},
            "desiredState": {"interfaces": [{
                "name": "bond0", "type": "bond", "state": "up",
                "link-aggregation": {"mode": "active-backup", "port": ["eth2"]},
            }]},
        },
    }))
    .unwrap();
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
