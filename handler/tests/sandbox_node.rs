//! A real NetworkManager node from the local environment, read in-process through the nmstate
//! crate by the handler binary running inside the node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use nmstate_localenv::testing::{TestNode, kubectl_program, shared_env, unique_name};
use serde_json::Value;
use std::{collections::BTreeMap, process::Command};

const HANDLER: &str = env!("CARGO_BIN_EXE_nmstate-handler");

/// What of the host's own networking a sandbox node must never change.
fn host_view() -> String {
    let run = |program: &str, args: &[&str]| {
        let output = Command::new(program).args(args).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    [
        run("ip", &["-o", "link"]),
        run("ip", &["-o", "addr"]),
        run("ip", &["route"]),
        run("ip", &["-6", "route"]),
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        run("hostname", &[]),
    ]
    .join("\n")
}

fn succeed(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn interface<'a>(state: &'a Value, name: &str) -> &'a Value {
    state["interfaces"]
        .as_array()
        .and_then(|interfaces| interfaces.iter().find(|interface| interface["name"] == name))
        .unwrap_or_else(|| panic!("no interface {name} in {state:#}"))
}

#[tokio::test]
async fn a_sandbox_node_is_real_networkmanager_read_in_process_by_the_handler() {
    let env = shared_env().await.unwrap();
    let host_before = host_view();
    let name = unique_name("sandbox");
    let labels = BTreeMap::from([("node-role.kubernetes.io/worker".to_string(), String::new())]);
    let node = TestNode::start(&env, &name, &labels).await.unwrap();

    // The matching Node object: Ready, with the usual labels and the extra one.
    let nodes: Api<Node> = Api::all(env.client().await.unwrap());
    let object = nodes.get(&name).await.unwrap();
    let node_labels = object.metadata.labels.unwrap();
    assert_eq!(node_labels["kubernetes.io/hostname"], name);
    assert_eq!(node_labels["node-role.kubernetes.io/worker"], "");
    let conditions = object.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|condition| condition.type_ == "Ready" && condition.status == "True")
    );

    // NetworkManager manages the secondary NICs (nothing configured yet) and the primary one.
    let devices = succeed(
        node.command("nmcli")
            .unwrap()
            .args(["-t", "-f", "DEVICE,STATE", "device"]),
    );
    for expected in ["eth0:connected", "eth1:disconnected", "eth2:disconnected"] {
        assert!(
            devices.lines().any(|line| line == expected),
            "{expected} not in:\n{devices}"
        );
    }

    // The handler reads the node's state with the nmstate crate, in-process.
    let yaml = succeed(node.command(HANDLER).unwrap().arg("show"));
    let state: Value = serde_yaml::from_str(&yaml).unwrap();
    for nic in ["eth1", "eth2"] {
        assert_eq!(
            interface(&state, nic)["state"],
            "down",
            "{nic} has no profile yet"
        );
        assert!(interface(&state, nic)["mac-address"].is_string());
    }
    let eth0 = interface(&state, "eth0");
    assert_eq!(eth0["state"], "up");
    assert_eq!(eth0["ipv4"]["address"][0]["ip"], node.address());
    let default_route = state["routes"]["running"]
        .as_array()
        .unwrap()
        .iter()
        .find(|route| route["destination"] == "0.0.0.0/0")
        .unwrap_or_else(|| panic!("no default route in {:#}", state["routes"]));
    assert_eq!(default_route["next-hop-address"], "10.77.0.1");
    assert_eq!(state["dns-resolver"]["running"]["server"][0], "10.77.0.1");
    let only_eth1: Value =
        serde_yaml::from_str(&succeed(node.command(HANDLER).unwrap().args(["show", "eth1"]))).unwrap();
    assert_eq!(only_eth1["interfaces"].as_array().unwrap().len(), 1);

    // NetworkManager's version, read over the node's D-Bus as node states will report it.
    let version = nmstate_handler::network::network_manager::version(Some(&node.bus_address()))
        .await
        .unwrap();
    let parsed = nmstate_handler::network::network_manager::check_supported(&version).unwrap();
    assert!(
        parsed >= semver::Version::new(1, 42, 0),
        "Debian 12 ships 1.42, found {version}"
    );

    // From inside, the node reaches its gateway, its DNS and the API server, as a real node does.
    succeed(
        node.command("ping")
            .unwrap()
            .args(["-c", "1", "-W", "3", "10.77.0.1"]),
    );
    assert!(
        succeed(node.command("getent").unwrap().args(["hosts", "gw.sandbox.test"])).starts_with("10.77.0.1")
    );
    let seen = succeed(
        node.command(kubectl_program())
            .unwrap()
            .args(["get", "node", &name, "-o", "name"]),
    );
    assert_eq!(seen.trim(), format!("node/{name}"));

    // That path is the node's network: with eth0 down, the API server is out of reach.
    succeed(node.command("ip").unwrap().args(["link", "set", "eth0", "down"]));
    let cut_off = node
        .command(kubectl_program())
        .unwrap()
        .args(["get", "node", &name, "--request-timeout=3s"])
        .output()
        .unwrap();
    assert!(
        !cut_off.status.success(),
        "the API server must be reached over eth0, not a side channel"
    );

    // Teardown removes the namespace, the processes and the Node object; the host is untouched.
    let (netns, profiles) = (node.netns.clone(), node.profiles_dir());
    drop(node);
    assert!(
        !std::path::Path::new("/run/netns").join(&netns).exists(),
        "namespace {netns} left behind"
    );
    assert!(!profiles.exists(), "node directory left behind");
    assert!(
        nodes.get_opt(&name).await.unwrap().is_none(),
        "Node object left behind"
    );
    assert_eq!(
        host_view(),
        host_before,
        "the host's links, addresses, routes, resolv.conf or hostname changed"
    );
}
