//! The repository's example policies that this kernel supports, enacted by the handler on real
//! sandbox nodes (one node each, side by side): each reaches Available and the node's real
//! state shows it. And policies that would cut a node off, rolled back by the probes, with the
//! enactment naming the probe and the node's default route and DNS as before.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{AVAILABLE, FAILING, start_handler_with, stdout_of, true_condition, wait_for_condition};
use kube::{Api, Client, api::PostParams};
use nmstate_api::{NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy};
use nmstate_localenv::testing::{TestNode, eventually, install_crds, shared_env, unique_name};
use serde_json::{Value, json};
use std::{collections::BTreeMap, time::Duration};

/// What a node must show once a policy is enacted: a command run in it, and text its output
/// must (or must not) contain.
struct Shows {
    command: &'static [&'static str],
    contains: &'static [&'static str],
    lacks: &'static [&'static str],
}

const fn shows(command: &'static [&'static str], contains: &'static [&'static str]) -> Shows {
    Shows {
        command,
        contains,
        lacks: &[],
    }
}

const DHCP_LEASE_ON_ETH1: Shows = shows(&["ip", "-4", "-br", "addr", "show", "eth1"], &["10.77.1."]);
const DEFAULT_ROUTE: Shows = shows(&["ip", "route", "show", "default"], &["via 10.77.0.1 dev eth0"]);
const SANDBOX_DNS: Shows = Shows {
    command: &["cat", "/etc/resolv.conf"],
    contains: &["nameserver 10.77.0.1", "search sandbox.test"],
    lacks: &["192.0.2.251", "10.77.0.254"],
};

/// `examples/<file>.yaml` as a policy for `node` only, named after both.
fn example_for(file: &str, node: &str, edit: fn(&mut Value)) -> NodeNetworkConfigurationPolicy {
    let path = format!("{}/../examples/{file}.yaml", env!("CARGO_MANIFEST_DIR"));
    let mut policy: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    policy["metadata"]["name"] = json!(format!("{node}-{file}"));
    policy["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    edit(&mut policy);
    serde_json::from_value(policy).unwrap()
}

fn as_written(_: &mut Value) {}

/// Runs `policy` on a node of its own; returns the enactment once `outcome` is reached, after
/// checking what the node shows.
async fn enact(
    client: &Client,
    file: &str,
    edit: fn(&mut Value),
    outcome: (&str, &str),
    checks: &[Shows],
) -> NodeNetworkConfigurationEnactment {
    let env = shared_env().await.unwrap();
    let node_name = unique_name("ex");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    // One attempt: the probes' verdict does not change on a retry.
    let _handler = start_handler_with(&node, &log, &[("NNCP_MAX_RETRIES", "1")]);
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    let policy = example_for(file, &node_name, edit);
    let policy_name = policy.metadata.name.clone().unwrap();
    policies.create(&PostParams::default(), &policy).await.unwrap();
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let enactment = wait_for_condition(
        &enactments,
        &format!("{node_name}.{policy_name}"),
        outcome,
        Duration::from_secs(90),
    )
    .await;
    for check in checks {
        let description = format!("{file}: `{}` on {node_name}", check.command.join(" "));
        // DHCP leases arrive after the apply returns.
        let shown = eventually(&description, Duration::from_secs(15), || async {
            let text = stdout_of(&node, check.command);
            let right = check.contains.iter().all(|wanted| text.contains(wanted))
                && !check.lacks.iter().any(|unwanted| text.contains(unwanted));
            right.then_some(text)
        })
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", stdout_of(&node, check.command)));
        eprintln!("{description}:\n{}", shown.trim_end());
    }
    policies.delete(&policy_name, &Default::default()).await.unwrap();
    let _ = std::fs::remove_file(&log);
    enactment
}

#[tokio::test]
async fn the_examples_this_kernel_supports_are_enacted_for_real() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();

    let bridge = [
        shows(&["ip", "-4", "-br", "addr", "show", "br1"], &["10.77.1."]),
        shows(&["ip", "-br", "link", "show", "master", "br1"], &["eth1"]),
        DEFAULT_ROUTE,
    ];
    let static_ip = [shows(
        &["ip", "-4", "-br", "addr", "show", "eth2"],
        &["10.244.0.2/24"],
    )];
    let route = [
        shows(&["ip", "-4", "-br", "addr", "show", "eth2"], &["192.0.2.251/24"]),
        shows(
            &["ip", "route", "show", "198.51.100.0/24"],
            &["via 192.0.2.2 dev eth2"],
        ),
    ];
    // The example's name servers answer nowhere, so the DNS probe would (rightly) roll it back;
    // here it names the sandbox's server instead, which replaces every other.
    let dns = [Shows {
        command: &["cat", "/etc/resolv.conf"],
        contains: &["search example.com example.org", "nameserver 10.77.0.1"],
        lacks: &["192.0.2.251", "search sandbox.test"],
    }];
    fn sandbox_name_server(policy: &mut Value) {
        policy["spec"]["desiredState"]["dns-resolver"]["config"]["server"] = json!(["10.77.0.1"]);
    }
    let enacted = futures::join!(
        enact(&client, "linux-bridge", as_written, AVAILABLE, &bridge),
        enact(&client, "static-ip", as_written, AVAILABLE, &static_ip),
        enact(&client, "dhcp", as_written, AVAILABLE, &[DHCP_LEASE_ON_ETH1]),
        enact(&client, "ethernet", as_written, AVAILABLE, &[DHCP_LEASE_ON_ETH1]),
        enact(&client, "route", as_written, AVAILABLE, &route),
        enact(&client, "dns", sandbox_name_server, AVAILABLE, &dns),
    );
    let bridge_enactment = enacted.0;
    let desired = &bridge_enactment.status.unwrap().desired_state.unwrap().0;
    assert_eq!(desired["interfaces"][0]["bridge"]["port"][0]["name"], "eth1");
}

#[tokio::test]
async fn changes_that_cut_a_node_off_are_rolled_back_and_the_probe_named() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();

    fn wrong_default_gateway(policy: &mut Value) {
        policy["spec"]["desiredState"] = json!({"routes": {"config": [{
            "destination": "0.0.0.0/0", "next-hop-address": "10.77.0.254", "next-hop-interface": "eth0",
            "metric": 1, "table-id": 254,
        }]}});
    }
    let as_before = [DEFAULT_ROUTE, SANDBOX_DNS];
    let (gateway, dns) = futures::join!(
        // The route example, turned into a default route through a gateway that is not there.
        enact(&client, "route", wrong_default_gateway, FAILING, &as_before),
        // The dns example as written: its name servers answer nowhere.
        enact(&client, "dns", as_written, FAILING, &as_before),
    );
    for (enactment, probe) in [(gateway, "ping"), (dns, "dns")] {
        let message = true_condition(&enactment).unwrap().message;
        assert!(
            message.contains(&format!("failed running probe '{probe}' after network changes")),
            "{message}"
        );
        assert!(
            message.starts_with("error reconciling NodeNetworkConfigurationPolicy"),
            "{message}"
        );
        assert!(
            message.contains("rolling back desired state configuration") && message.contains("currentState"),
            "the message shows the state after the rollback: {message}"
        );
    }
}
