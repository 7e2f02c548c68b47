//! What the handler's integration tests share: running the handler on a sandbox node, and
//! waiting for an enactment's conditions.

#![allow(dead_code)] // each test binary uses its own part

use kube::Api;
use nmstate_api::{
    Condition, NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, condition::find_condition,
};
use nmstate_localenv::testing::{NodeProcess, TestNode, eventually};
use serde_json::json;
use std::time::Duration;

pub mod examples;

pub const HANDLER: &str = env!("CARGO_BIN_EXE_nmstate-handler");

/// The handler's settings for these tests: quick retries and probes, and a DNS name the
/// sandbox's DNS answers.
pub const HANDLER_ENV: [(&str, &str); 7] = [
    ("NNCP_MAX_RETRIES", "2"),
    ("NNCP_INITIAL_BACKOFF_SECONDS", "1"),
    ("NNCP_MAX_BACKOFF_SECONDS", "2"),
    ("PROBE_TIMEOUT_SECONDS", "5"),
    ("PROBE_DNS_HOST", "gw.sandbox.test"),
    ("RUST_LOG", "info"),
    // As the handler DaemonSet sets it (templates/handler/daemonset.yaml.hbs).
    ("MALLOC_ARENA_MAX", "2"),
];

pub fn start_handler(node: &TestNode, log: &std::path::Path) -> NodeProcess {
    start_handler_with(node, log, &[])
}

/// The handler with [`HANDLER_ENV`], and `overrides` taking precedence.
pub fn start_handler_with(node: &TestNode, log: &std::path::Path, overrides: &[(&str, &str)]) -> NodeProcess {
    start_handler_binary(HANDLER, node, log, overrides)
}

/// [`start_handler_with`] for another handler binary (a bench's baseline).
pub fn start_handler_binary(
    binary: &str,
    node: &TestNode,
    log: &std::path::Path,
    overrides: &[(&str, &str)],
) -> NodeProcess {
    let env: Vec<(&str, &str)> = HANDLER_ENV.iter().chain(overrides).copied().collect();
    NodeProcess::start(node, binary.as_ref(), &["run"], &env, log.to_path_buf()).unwrap()
}

/// Adds a bridge `name` in the node's kernel, behind NetworkManager's back: an out-of-band
/// change.
pub fn add_kernel_bridge(node: &TestNode, name: &str) {
    let added = node
        .command("ip")
        .unwrap()
        .args(["link", "add", name, "type", "bridge"])
        .status()
        .unwrap();
    assert!(
        added.success(),
        "ip link add {name} type bridge failed on {}",
        node.node.name
    );
}

/// The median of `values` (the upper middle one of an even count); None when there are none.
pub fn median<T: Copy + PartialOrd>(values: &[T]) -> Option<T> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sorted.get(sorted.len() / 2).copied()
}

/// Whether a line of `log` containing `text` was logged from `from` to `to` (inclusive), by the
/// timestamp each of the handler's log lines starts with.
pub fn logged_between(
    log: &str,
    text: &str,
    from: k8s_openapi::jiff::Timestamp,
    to: k8s_openapi::jiff::Timestamp,
) -> bool {
    log.lines().filter(|line| line.contains(text)).any(|line| {
        line.split_whitespace()
            .next()
            .and_then(|stamp| stamp.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .is_some_and(|at| at >= from && at <= to)
    })
}

pub fn stop_handler(handler: &mut NodeProcess) {
    stop_handler_within(handler, Duration::from_secs(20));
}

/// SIGTERM; how long `handler` took to exit, which it must, successfully, within `within` (its
/// log is printed when it does not: [`NodeProcess`] prints it on a panic).
pub fn stop_handler_within(handler: &mut NodeProcess, within: Duration) -> Duration {
    let stopping = std::time::Instant::now();
    let status = handler
        .terminate(within)
        .unwrap_or_else(|| panic!("the handler did not stop within {within:?} of SIGTERM"));
    let took = stopping.elapsed();
    assert!(status.success(), "the handler exited with {status}");
    took
}

pub fn policy(
    name: &str,
    selector: serde_json::Value,
    desired: serde_json::Value,
) -> NodeNetworkConfigurationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "nmstate.io/v1", "kind": "NodeNetworkConfigurationPolicy",
        "metadata": {"name": name},
        "spec": {"nodeSelector": selector, "desiredState": desired},
    }))
    .unwrap()
}

/// A linux bridge `br1` over eth1 with a static address: the benches' policy.
pub fn bridge_over_eth1() -> serde_json::Value {
    json!({"interfaces": [{
        "name": "br1", "type": "linux-bridge", "state": "up",
        "ipv4": {"enabled": true, "dhcp": false, "address": [{"ip": "10.77.1.50", "prefix-length": 24}]},
        "ipv6": {"enabled": false},
        "bridge": {"options": {"stp": {"enabled": false}}, "port": [{"name": "eth1"}]},
    }]})
}

pub fn true_condition(enactment: &NodeNetworkConfigurationEnactment) -> Option<Condition> {
    enactment
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|condition| condition.is_true())
        .cloned()
}

/// What `args` (a program and its arguments) prints inside `node`.
pub fn stdout_of(node: &TestNode, args: &[&str]) -> String {
    let output = node.command(args[0]).unwrap().args(&args[1..]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An enactment's outcomes, as `(type, reason)` of its True condition.
pub const AVAILABLE: (&str, &str) = ("Available", "SuccessfullyConfigured");
pub const FAILING: (&str, &str) = ("Failing", "FailedToConfigure");

/// Waits until condition `type_` of the enactment is True with `reason`.
pub async fn wait_for_condition(
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
    (type_, reason): (&str, &str),
    timeout: Duration,
) -> NodeNetworkConfigurationEnactment {
    eventually(&format!("{name} {type_}/{reason}"), timeout, || async {
        let enactment = enactments.get_opt(name).await.unwrap()?;
        let conditions = &enactment.status.as_ref()?.conditions;
        let settled = find_condition(conditions, type_).is_some_and(|c| c.is_true() && c.reason == reason);
        settled.then_some(enactment)
    })
    .await
    .unwrap()
}
