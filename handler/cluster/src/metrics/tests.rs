use super::*;
use serde_json::json;

fn state(node: &str, current: Value) -> NodeNetworkState {
    serde_json::from_value(json!({
        "apiVersion": "nmstate.io/v1beta1", "kind": "NodeNetworkState",
        "metadata": {"name": node},
        "status": {"currentState": current},
    }))
    .unwrap()
}

fn labelled(series: Vec<Series>) -> Vec<(Vec<(&'static str, String)>, i64)> {
    series
}

#[test]
fn interfaces_are_counted_by_type_per_node() {
    let nns = state(
        "node01",
        json!({"interfaces": [
            {"name": "eth0", "type": "ethernet"}, {"name": "eth1", "type": "ethernet"},
            {"name": "br0", "type": "linux-bridge"}]}),
    );
    let node = || ("node", "node01".to_string());
    assert_eq!(
        labelled(interfaces_by_type(&nns)),
        vec![
            (vec![("type", "ethernet".into()), node()], 2),
            (vec![("type", "linux-bridge".into()), node()], 1)
        ]
    );
}

#[test]
fn routes_are_static_when_configured_and_split_by_ip_stack() {
    let nns = state(
        "node01",
        json!({"routes": {
            "config": [{"destination": "198.51.100.0/24"}],
            "running": [
                {"destination": "198.51.100.0/24"}, {"destination": "0.0.0.0/0"},
                {"destination": "fe80::/64"}]}}),
    );
    let series = routes(&nns);
    let value = |stack: &str, kind: &str| {
        series
            .iter()
            .find(|(labels, _)| {
                labels.contains(&("ip_stack", stack.into())) && labels.contains(&("type", kind.into()))
            })
            .map(|(_, value)| *value)
    };
    assert_eq!(value("ipv4", "static"), Some(1));
    assert_eq!(value("ipv4", "dynamic"), Some(1));
    assert_eq!(value("ipv6", "dynamic"), Some(1));
    assert_eq!(value("ipv6", "static"), None);
}

fn with_true(kind: &str, name: &str, node: &str, true_type: &str) -> Value {
    json!({
        "apiVersion": "nmstate.io/v1", "kind": kind,
        "metadata": {"name": name, "labels": {labels::NODE: node}},
        "spec": {},
        "status": {"conditions": [
            {"type": "Degraded", "status": "False"}, {"type": true_type, "status": "True"}],
            "features": ["static-dns"]},
    })
}

#[test]
fn policies_and_enactments_count_by_their_first_true_condition() {
    let policies: Vec<NodeNetworkConfigurationPolicy> =
        [("a", "Available"), ("b", "Available"), ("c", "Degraded")]
            .iter()
            .map(|(name, status)| {
                serde_json::from_value(with_true("NodeNetworkConfigurationPolicy", name, "", status)).unwrap()
            })
            .collect();
    let series = policies_status(policies.iter());
    assert_eq!(series.len(), 5, "every status, zero included: {series:?}");
    assert!(series.contains(&(vec![("status", "Previewed".into())], 0)));
    assert!(series.contains(&(vec![("status", "Available".into())], 2)));
    assert!(series.contains(&(vec![("status", "Ignored".into())], 0)));

    let enactments: Vec<NodeNetworkConfigurationEnactment> = [
        ("node01.a", "node01", "Available"),
        ("node01.b", "node01", "Pending"),
        ("node01.c", "node01", "Previewed"),
    ]
    .iter()
    .map(|(name, node, status)| {
        serde_json::from_value(with_true("NodeNetworkConfigurationEnactment", name, node, status)).unwrap()
    })
    .collect();
    let series = enactments_status(enactments.iter());
    assert_eq!(series.len(), 6);
    assert!(series.contains(&(vec![("node", "node01".into()), ("status", "Previewed".into())], 1)));
    assert!(series.contains(&(vec![("node", "node01".into()), ("status", "Pending".into())], 1)));
    assert!(series.contains(&(vec![("node", "node01".into()), ("status", "Failing".into())], 0)));
    assert_eq!(
        features_applied(enactments.iter()),
        BTreeSet::from(["static-dns".to_string()])
    );
}

#[test]
fn probe_results_are_counted_by_kind_and_result() {
    let enactment = |probes: Value| -> NodeNetworkConfigurationEnactment {
        serde_json::from_value(json!({
            "apiVersion": "nmstate.io/v1beta1", "kind": "NodeNetworkConfigurationEnactment",
            "metadata": {"name": "n.p"}, "status": {"probes": probes},
        }))
        .unwrap()
    };
    let enactments = [
        enactment(json!([
            {"name": "ping", "selected": true, "result": "Failed"},
            {"name": "ping6", "selected": false, "message": "not used"},
            {"name": "tcp 10.0.0.1:53", "selected": true, "result": "NotRun"},
        ])),
        enactment(json!([
            {"name": "ping", "selected": true, "result": "Passed"},
            {"name": "tcp 10.0.0.1:53", "selected": true, "result": "Passed"},
            {"name": "tcp [fd00::1]:443", "selected": true, "result": "Passed"},
        ])),
    ];
    let series = probe_results(enactments.iter());
    let count = |probe: &str, result: &str| {
        series
            .iter()
            .find(|(labels, _)| labels == &vec![("probe", probe.to_string()), ("result", result.to_string())])
            .map(|(_, count)| *count)
    };
    assert_eq!(count("ping", "Failed"), Some(1));
    assert_eq!(count("ping", "Passed"), Some(1));
    assert_eq!(count("ping6", "NotSelected"), Some(1));
    assert_eq!(count("tcp", "Passed"), Some(2));
    assert_eq!(count("tcp", "NotRun"), Some(1));
    assert_eq!(series.len(), 5);
}

#[test]
fn nodes_are_counted_by_their_network_configured_condition() {
    let node = |name: &str, status: Option<&str>| -> k8s_openapi::api::core::v1::Node {
        let conditions: Vec<Value> = status
            .map(|status| json!({"type": "NetworkConfigured", "status": status}))
            .into_iter()
            .chain([json!({"type": "Ready", "status": "True"})])
            .collect();
        serde_json::from_value(json!({"metadata": {"name": name}, "status": {"conditions": conditions}}))
            .unwrap()
    };
    let nodes = [
        node("a", Some("True")),
        node("b", Some("False")),
        node("c", Some("True")),
        node("d", None),
    ];
    assert_eq!(
        network_configured(nodes.iter()),
        vec![
            (vec![("status", "False".to_string())], 1),
            (vec![("status", "True".to_string())], 2),
        ]
    );
}

#[test]
fn pools_count_their_allocated_and_free_addresses() {
    let pool = |name: &str, end: &str, allocated: usize| -> NodeNetworkIPPool {
        let allocations: Vec<serde_json::Value> = (0..allocated)
            .map(|index| json!({"address": format!("10.77.2.{}", 20 + index), "node": format!("n{index}"), "policy": "p", "variable": "v"}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"cidr": "10.77.2.0/24", "start": "10.77.2.20", "end": end},
            "status": {"allocations": allocations, "allocated": allocated}}))
        .unwrap()
    };
    let pools = [pool("storage", "10.77.2.22", 3), pool("scarce", "10.77.2.21", 1)];
    let series = pool_addresses(pools.iter());
    let rendered: Vec<(String, String, i64)> = series
        .into_iter()
        .map(|(labels, value)| (labels[0].1.clone(), labels[1].1.clone(), value))
        .collect();
    assert_eq!(
        rendered,
        [
            ("storage".to_string(), "allocated".to_string(), 3),
            ("storage".to_string(), "free".to_string(), 0),
            ("scarce".to_string(), "allocated".to_string(), 1),
            ("scarce".to_string(), "free".to_string(), 1),
        ]
    );
}
