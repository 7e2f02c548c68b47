//! `nmstate-handler apply` inside a real sandbox node: the engine that applies policies.
//! Applied under a checkpoint and committed; rolled back when a probe fails (API server cut off,
//! wrong default gateway, unreachable DNS servers); invalid input
//! refused before anything changes; a stale checkpoint cleared first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::stdout_of;
use nmstate_handler::network::network_manager::checkpoints;
use nmstate_localenv::testing::{TestNode, shared_env, unique_name};
use std::{collections::BTreeMap, process::Output, time::Duration};

const HANDLER: &str = env!("CARGO_BIN_EXE_nmstate-handler");

fn apply(node: &TestNode, name: &str, desired: &str) -> Output {
    let file = std::env::temp_dir().join(format!("{}-{name}.yaml", node.name));
    std::fs::write(&file, desired).unwrap();
    let output = node
        .command(HANDLER)
        .unwrap()
        .args(["apply", file.to_str().unwrap()])
        .env("PROBE_TIMEOUT_SECONDS", "5")
        // The switch's DNS answers only for its own domain (no upstream servers here).
        .env("PROBE_DNS_HOST", "gw.sandbox.test")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    output
}

async fn no_checkpoint_left(node: &TestNode) {
    assert_eq!(
        checkpoints(Some(&node.bus_address())).await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn policies_are_applied_under_a_checkpoint_and_rolled_back_when_a_probe_fails() {
    let env = shared_env().await.unwrap();
    let node = TestNode::start(&env, &unique_name("apply"), &BTreeMap::new())
        .await
        .unwrap();

    // A bridge over eth1 with DHCP: committed, and the lease arrives from the switch.
    let bridge = "interfaces:\n- name: br1\n  type: linux-bridge\n  state: up\n  ipv4: {enabled: true, dhcp: true}\n  \
                  bridge:\n    options: {stp: {enabled: false}}\n    port: [{name: eth1}]\n";
    let output = apply(&node, "bridge", bridge);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    no_checkpoint_left(&node).await;
    let mut address = String::new();
    for _ in 0..100 {
        address = stdout_of(&node, &["ip", "-4", "-br", "addr", "show", "br1"]);
        if address.contains("10.77.1.") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(address.contains("10.77.1."), "no DHCP lease on br1: {address:?}");

    // Taking eth0 down cuts the node off its gateway (and the API server behind it): the first
    // probe, ping, fails and the change is rolled back.
    let output = apply(
        &node,
        "cut",
        "interfaces:\n- name: eth0\n  type: ethernet\n  state: down\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("failed running probe 'ping' after network changes"),
        "{stderr}"
    );
    assert!(
        stderr.contains("currentState"),
        "the message shows the state after the rollback: {stderr}"
    );
    assert!(stdout_of(&node, &["ip", "-4", "-br", "addr", "show", "eth0"]).contains(&node.address()));
    assert!(stdout_of(&node, &["ip", "route"]).contains("default via 10.77.0.1 dev eth0"));
    no_checkpoint_left(&node).await;

    // A wrong default gateway: the ping probe fails and the route is rolled back.
    let wrong_gateway = "routes:\n  config:\n  - destination: 0.0.0.0/0\n    next-hop-address: 10.77.0.254\n    \
                         next-hop-interface: eth0\n    metric: 1\n    table-id: 254\n";
    let output = apply(&node, "gateway", wrong_gateway);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("failed running probe 'ping' after network changes"),
        "{stderr}"
    );
    let routes = stdout_of(&node, &["ip", "route"]);
    assert!(
        routes.contains("default via 10.77.0.1 dev eth0") && !routes.contains("10.77.0.254"),
        "{routes}"
    );
    no_checkpoint_left(&node).await;

    // Unreachable DNS servers: the dns probe fails, and DNS (NetworkManager's global DNS,
    // which a checkpoint does not cover) is restored.
    let output = apply(
        &node,
        "dns",
        "dns-resolver:\n  config:\n    server: [10.77.0.253]\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("failed running probe 'dns' after network changes"),
        "{stderr}"
    );
    let resolv = stdout_of(&node, &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 10.77.0.1") && !resolv.contains("10.77.0.253"),
        "{resolv}"
    );
    assert!(stdout_of(&node, &["getent", "hosts", "gw.sandbox.test"]).starts_with("10.77.0.1"));
    no_checkpoint_left(&node).await;

    // Invalid input is refused with nmstate's message and changes nothing.
    let profiles = stdout_of(&node, &["nmcli", "-t", "-f", "NAME,DEVICE", "connection"]);
    let output = apply(
        &node,
        "bad",
        "interfaces:\n- name: eth1\n  type: ethernet\n  state: sideways\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("unknown variant `sideways`"), "{stderr}");
    assert_eq!(
        stdout_of(&node, &["nmcli", "-t", "-f", "NAME,DEVICE", "connection"]),
        profiles
    );

    // A checkpoint left behind (a handler killed mid-apply) is rolled back before the next apply.
    let connection = zbus::connection::Builder::address(node.bus_address().as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let manager = zbus::Proxy::new(
        &connection,
        "org.freedesktop.NetworkManager",
        "/org/freedesktop/NetworkManager",
        "org.freedesktop.NetworkManager",
    )
    .await
    .unwrap();
    let devices: Vec<zbus::zvariant::ObjectPath> = Vec::new();
    let _: zbus::zvariant::OwnedObjectPath = manager
        .call("CheckpointCreate", &(devices, 300u32, 0u32))
        .await
        .unwrap();
    assert_eq!(checkpoints(Some(&node.bus_address())).await.unwrap().len(), 1);
    let output = apply(
        &node,
        "after-stale",
        "interfaces:\n- name: eth2\n  type: ethernet\n  state: up\n  ipv4: {enabled: false}\n  ipv6: {enabled: false}\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("rolled back a checkpoint left uncommitted"));
    no_checkpoint_left(&node).await;
}

#[tokio::test]
async fn the_api_server_and_node_readiness_probes_pass_and_fail_for_real() {
    use nmstate_handler::apply::probes::{Check, Prober};
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    let node = TestNode::start(&env, &unique_name("probes"), &BTreeMap::new())
        .await
        .unwrap();
    let timeout = Duration::from_secs(2);
    let prober = Prober {
        client: client.clone(),
        node: node.name.clone(),
    };

    assert!(prober.run(&Check::ApiServer, timeout).await.is_ok());
    assert!(prober.run(&Check::NodeReadiness, timeout).await.is_ok());

    let unknown = Prober {
        client: client.clone(),
        node: "no-such-node".into(),
    };
    assert!(unknown.run(&Check::NodeReadiness, timeout).await.is_err());
    let mut closed = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    closed.accept_invalid_certs = true;
    let unreachable = Prober {
        client: kube::Client::try_from(closed).unwrap(),
        node: node.name.clone(),
    };
    let started = std::time::Instant::now();
    assert!(unreachable.run(&Check::ApiServer, timeout).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a failing probe gives up after its timeout"
    );
}
