use super::*;
use nmstate_api::{
    condition::{Condition, ConditionStatus},
    policy::NodeNetworkConfigurationPolicyStatus,
};
use serde_json::json;

fn policy(name: &str, spec: Value) -> NodeNetworkConfigurationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "nmstate.io/v1", "kind": "NodeNetworkConfigurationPolicy",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn bridge() -> Value {
    json!({"desiredState": {"interfaces": [{"name": "br1", "type": "linux-bridge", "state": "up"}]}})
}

fn settled(mut policy: NodeNetworkConfigurationPolicy, reason: &str) -> NodeNetworkConfigurationPolicy {
    policy.status = Some(NodeNetworkConfigurationPolicyStatus {
        conditions: vec![Condition {
            type_: "Available".into(),
            status: ConditionStatus::True,
            reason: reason.into(),
            ..Condition::default()
        }],
        ..Default::default()
    });
    policy
}

fn refusal(result: Result<(), Refusal>) -> String {
    result.unwrap_err().message().to_string()
}

#[test]
fn a_valid_policy_passes() {
    let spec = json!({
        "nodeSelector": {"node-role.kubernetes.io/worker": ""},
        "maxUnavailable": "25%",
        "desiredState": bridge()["desiredState"],
    });
    assert_eq!(validate(&policy("br1-policy", spec), None), Ok(()));
    assert_eq!(validate(&policy("empty", json!({})), None), Ok(()));
}

#[test]
fn policy_names_must_be_label_values() {
    let long = "p".repeat(64);
    assert_eq!(
        refusal(validate(&policy(&long, bridge()), None)),
        format!(
            "invalid policy name: {long:?}: must be no more than 63 characters or match label value format"
        )
    );
    assert_eq!(validate(&policy(&"p".repeat(63), bridge()), None), Ok(()));
    // Only creation is checked: an existing object keeps its name.
    let old = settled(policy(&long, bridge()), "SuccessfullyConfigured");
    assert_eq!(validate(&policy(&long, bridge()), Some(&old)), Ok(()));
}

#[test]
fn the_spec_is_frozen_while_the_policy_is_in_progress() {
    let changed = policy("p", json!({"desiredState": {"interfaces": []}}));
    for reason in ["", "ConfigurationProgressing"] {
        let old = settled(policy("p", bridge()), reason);
        assert_eq!(
            validate(&changed, Some(&old)),
            Err(Refusal::Forbidden("policy p is still in progress".into())),
            "reason {reason:?}"
        );
    }
    let never_reported = policy("p", bridge());
    assert!(validate(&changed, Some(&never_reported)).is_err());
    // A previewed policy is settled: its mark can be removed to apply it.
    for reason in [
        "SuccessfullyConfigured",
        "FailedToConfigure",
        "NoMatchingNode",
        "Previewed",
    ] {
        let old = settled(policy("p", bridge()), reason);
        assert_eq!(validate(&changed, Some(&old)), Ok(()), "reason {reason:?}");
    }
    // Labels, annotations or status: the spec did not change, so nothing is frozen.
    let in_progress = settled(policy("p", bridge()), "ConfigurationProgressing");
    assert_eq!(validate(&policy("p", bridge()), Some(&in_progress)), Ok(()));
}

#[test]
fn capture_cannot_be_added_removed_or_changed() {
    let with = |expression: &str| {
        let mut spec = bridge();
        spec["capture"] = json!({"gw": expression});
        policy("p", spec)
    };
    let message = "invalid policy operation: capture field cannot be modified";
    let old = settled(
        with("routes.running.destination==\"0.0.0.0/0\""),
        "SuccessfullyConfigured",
    );
    assert_eq!(
        refusal(validate(
            &with("routes.running.destination==\"::/0\""),
            Some(&old)
        )),
        message
    );
    assert_eq!(refusal(validate(&policy("p", bridge()), Some(&old))), message);
    let plain = settled(policy("p", bridge()), "SuccessfullyConfigured");
    assert_eq!(
        refusal(validate(
            &with("routes.running.destination==\"::/0\""),
            Some(&plain)
        )),
        message
    );
    let mut other_state = with("routes.running.destination==\"0.0.0.0/0\"");
    other_state.spec.desired_state = None;
    assert_eq!(validate(&other_state, Some(&old)), Ok(()));
}

#[test]
fn node_selector_keys_and_values_follow_label_rules() {
    let spec = json!({"nodeSelector": {"bad key": "ok", "good": "bad value"}});
    let message = refusal(validate(&policy("p", spec), None));
    assert!(
        message.starts_with("invalid label key: \"bad key\": name part must consist of"),
        "{message}"
    );
    assert!(
        message.contains("; invalid label value: \"bad value\": at key: \"good\": a valid label must be"),
        "{message}"
    );
}

#[test]
fn max_unavailable_is_a_count_or_a_percentage() {
    for accepted in [json!(0), json!(3), json!("0%"), json!("50%"), json!("100%")] {
        let spec = json!({"maxUnavailable": accepted});
        assert_eq!(validate(&policy("p", spec), None), Ok(()), "{accepted}");
    }
    for (refused, shown) in [
        (json!(-1), "-1"),
        (json!("abc"), "\"abc\""),
        (json!("3"), "\"3\""),
        (json!("101%"), "\"101%\""),
        (json!("-5%"), "\"-5%\""),
        (json!("%"), "\"%\""),
    ] {
        let spec = json!({"maxUnavailable": refused});
        assert_eq!(
            refusal(validate(&policy("p", spec), None)),
            format!(
                "invalid spec.maxUnavailable: {shown}: must be a non-negative integer or a percentage \
                 from \"0%\" to \"100%\" such as \"50%\""
            )
        );
    }
}

#[test]
fn probes_have_a_bounded_timeout_dns_names_and_tcp_addresses() {
    let accepted = json!({"probes": {
        "timeoutSeconds": 30,
        "gateway": {"enabled": false},
        "dns": {"host": "Gw.Sandbox.test."},
        "tcp": [{"host": "10.77.0.1", "port": 53}, {"host": "fd00:77::1", "port": 443},
                {"host": "api.example.test", "port": 6443}],
    }});
    assert_eq!(validate(&policy("p", accepted), None), Ok(()));
    assert_eq!(validate(&policy("p", json!({"probes": {}})), None), Ok(()));

    let refused = json!({"probes": {
        "timeoutSeconds": 901,
        "dns": {"host": "not a name"},
        "tcp": [{"host": "", "port": 53}, {"host": "10.0.0.1", "port": 0}],
    }});
    let message = refusal(validate(&policy("p", refused), None));
    for expected in [
        "invalid spec.probes.timeoutSeconds: 901: must be from 1 to 900 seconds",
        "invalid spec.probes.dns.host: \"not a name\": must be a DNS name (",
        "invalid spec.probes.tcp[0].host: \"\": must be an IP address or a DNS name (",
        "invalid spec.probes.tcp[1].port: 0: must be from 1 to 65535",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message:?}");
    }
    assert!(!message.contains("tcp[1].host"), "{message}");
    let zero = json!({"probes": {"timeoutSeconds": 0}});
    assert!(refusal(validate(&policy("p", zero), None)).contains("timeoutSeconds: 0"));
    let many: Vec<Value> = (1..=17)
        .map(|port| json!({"host": "10.0.0.1", "port": port}))
        .collect();
    assert_eq!(
        refusal(validate(&policy("p", json!({"probes": {"tcp": many}})), None)),
        "invalid spec.probes.tcp: 17 probes: at most 16 are allowed"
    );
}

#[test]
fn node_selector_terms_follow_kubernetes_rules() {
    let spec = json!({"nodeSelectorTerms": [
        {"matchExpressions": [
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]},
            {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"},
            {"key": "example.com/cores", "operator": "Gt", "values": ["8"]},
        ]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node03"]}]},
    ]});
    assert_eq!(validate(&policy("p", spec), None), Ok(()));
    let spec = json!({"nodeSelectorTerms": [
        {},
        {"matchExpressions": [
            {"key": "zone", "operator": "In"},
            {"key": "gpu", "operator": "Exists", "values": ["yes"]},
            {"key": "cores", "operator": "Lt", "values": ["many"]},
            {"key": "zone", "operator": "Matches", "values": ["a"]},
            {"key": "bad key", "operator": "Exists"},
        ]},
        {"matchFields": [{"key": "metadata.labels", "operator": "Exists"}]},
    ]});
    let message = refusal(validate(&policy("p", spec), None));
    for expected in [
        "invalid spec.nodeSelectorTerms[0]: an empty term selects no node: give matchExpressions or matchFields",
        "invalid spec.nodeSelectorTerms[1].matchExpressions[0].values: []: In must have at least one value",
        "invalid spec.nodeSelectorTerms[1].matchExpressions[1].values: [\"yes\"]: Exists must have no values",
        "invalid spec.nodeSelectorTerms[1].matchExpressions[2].values: [\"many\"]: Lt must have exactly one value, an integer",
        "invalid spec.nodeSelectorTerms[1].matchExpressions[3].operator: \"Matches\": must be one of In, NotIn, Exists, DoesNotExist, Gt, Lt",
        "invalid spec.nodeSelectorTerms[1].matchExpressions[4].key: \"bad key\": ",
        "invalid spec.nodeSelectorTerms[2].matchFields[0].key: \"metadata.labels\": the only field is \"metadata.name\"",
        "invalid spec.nodeSelectorTerms[2].matchFields[0].operator: \"Exists\": must be In or NotIn for a field",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
    let spec = json!({"nodeSelectorTerms": []});
    assert!(refusal(validate(&policy("p", spec), None)).contains("must have at least one term"));
}

#[test]
fn depends_on_names_other_policies_once() {
    let spec = json!({"dependsOn": ["bridge", "bond"]});
    assert_eq!(validate(&policy("vlan", spec), None), Ok(()));
    let spec = json!({"dependsOn": ["vlan", "Not A Name", "bond", "bond"]});
    assert_eq!(
        refusal(validate(&policy("vlan", spec), None)),
        "invalid spec.dependsOn[0]: \"vlan\": a policy cannot depend on itself; \
         invalid spec.dependsOn[1]: \"Not A Name\": not a policy name (a label value); \
         invalid spec.dependsOn[3]: \"bond\": listed twice"
    );
}

#[test]
fn the_desired_state_must_be_an_nmstate_state() {
    let spec =
        json!({"desiredState": {"interfaces": [{"name": "br1", "type": "linux-bridge", "mtu": "big"}]}});
    assert_eq!(
        refusal(validate(&policy("p", spec), None)),
        "invalid spec.desiredState.interfaces[0]: invalid digit found in string",
        "nmstate's message, with where it applies"
    );

    let spec = json!({"desiredState": {"interfacez": []}});
    let message = refusal(validate(&policy("p", spec), None));
    assert!(message.contains("interfacez"), "{message}");

    let spec = json!({"desiredState": {"interfaces": [{"name": "eth1", "type": "ethernet", "ipv4": {"enabled": "maybe"}}]}});
    assert!(
        refusal(validate(&policy("p", spec), None)).starts_with("invalid spec.desiredState.interfaces[0]: ")
    );
    // Only what needs no node is checked: a route's next hop, a MAC to copy, are the node's.
    let spec = json!({"desiredState": {"routes": {"config": [{"destination": "0.0.0.0/0"}]}}});
    assert_eq!(validate(&policy("p", spec), None), Ok(()));
}

#[test]
fn captures_must_parse_and_be_defined_where_referenced() {
    let spec = json!({
        "capture": {"gw": "routes.running.destination=="},
        "desiredState": {"interfaces": []},
    });
    let message = refusal(validate(&policy("p", spec), None));
    assert!(message.starts_with("invalid spec.capture.gw: "), "{message}");

    let spec = json!({
        "capture": {"gw": "routes.running.destination==\"0.0.0.0/0\""},
        "desiredState": {"interfaces": [{"name": "{{ capture.nic.interfaces.0.name }}", "type": "ethernet"}]},
    });
    assert_eq!(
        refusal(validate(&policy("p", spec), None)),
        "invalid spec.desiredState: it refers to capture \"nic\", which spec.capture does not define"
    );

    let spec = json!({
        "capture": {"gw": "routes.running.destination==\"0.0.0.0/0\""},
        "desiredState": {"interfaces": [{"name": "{{ capture.gw.routes.running.0.next-hop-interface }}", "type": "ethernet", "mtu": "{{ capture.gw.x }}"}]},
    });
    assert_eq!(validate(&policy("p", spec), None), Ok(()));

    // Without captures a reference cannot be resolved at all.
    let spec = json!({"desiredState": {"interfaces": [{"name": "{{ capture.nic.interfaces.0.name }}"}]}});
    assert!(refusal(validate(&policy("p", spec), None)).starts_with("invalid spec.desiredState: "));
}

#[test]
fn variables_are_checked_and_their_template_is_left_to_the_nodes() {
    let spec = json!({
        "variables": {"storage": {"fromIPPool": {"name": "storage"}}, "rack": {"fromNode": {"label": "rack"}}},
        "desiredState": {"interfaces": [{"name": "eth2", "type": "ethernet", "description": "rack {{ var.rack }}",
            "ipv4": {"enabled": true, "address": [{"ip": "{{ var.storage.address }}", "prefix-length": "{{ var.storage.prefix }}"}]}}]},
    });
    assert_eq!(validate(&policy("p", spec), None), Ok(()));

    let spec = json!({
        "variables": {"rack": {"fromNode": {"label": "rack"}, "perNode": {}}},
        "desiredState": {"interfaces": [{"name": "eth2", "ipv4": {"address": [{"ip": "{{ var.storage.address }}", "prefix-length": 24}]}}]},
    });
    assert_eq!(
        refusal(validate(&policy("p", spec), None)),
        "invalid spec.variables.rack: set exactly one of fromNode, perNode, fromIPPool; \
         invalid spec.desiredState: it refers to variable \"storage\", which spec.variables does not define"
    );
}

#[test]
fn every_broken_rule_is_reported() {
    let spec = json!({"maxUnavailable": "x", "nodeSelector": {"k": "a b"}});
    let message = refusal(validate(&policy(&"n".repeat(70), spec), None));
    assert_eq!(message.matches("; ").count(), 2, "{message}");
}

/// Every example policy in `examples/` is one the webhook accepts as written.
#[test]
fn every_example_policy_is_accepted() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(document).unwrap();
            if object["kind"] != "NodeNetworkConfigurationPolicy" {
                continue;
            }
            let policy: NodeNetworkConfigurationPolicy = serde_json::from_value(object).unwrap();
            if let Err(refusal) = validate(&policy, None) {
                panic!("{} is refused: {}", path.display(), refusal.message());
            }
            checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(
        checked.len() >= 20,
        "only {} example policies: {checked:?}",
        checked.len()
    );
}
