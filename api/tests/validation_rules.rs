//! The policy CRD's CEL rules, run by a CEL interpreter (kube-cel): the API server the
//! integration tests use (1.20) predates them, and clusters from 1.25 on run them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use nmstate_api::crd;
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = crd::policies();
    serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap()
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "nmstate.io/v1", "kind": "NodeNetworkConfigurationPolicy", "metadata": {"name": name}, "spec": spec})
}

/// The messages of the rules `object` (updated from `old`) breaks.
fn broken(object: &Value, old: Option<&Value>) -> Vec<String> {
    match kube_cel::validate(&schema(), object, old) {
        Ok(()) => vec![],
        Err(errors) => errors.into_vec().into_iter().map(|error| error.message).collect(),
    }
}

#[test]
fn valid_policies_pass() {
    let spec = json!({
        "nodeSelector": {"node-role.kubernetes.io/worker": "", "kubernetes.io/hostname": "node-1"},
        "maxUnavailable": "50%",
        "desiredState": {"interfaces": []},
    });
    assert_eq!(
        broken(&policy("br1-policy", spec.clone()), None),
        Vec::<String>::new()
    );
    for limit in [json!(0), json!(3), json!("0%"), json!("100%")] {
        let spec = json!({"maxUnavailable": limit});
        assert_eq!(broken(&policy("p", spec), None), Vec::<String>::new(), "{limit}");
    }
}

#[test]
fn names_must_be_label_values() {
    let expected = ["invalid policy name: must be no more than 63 characters or match label value format"];
    assert_eq!(broken(&policy(&"p".repeat(64), json!({})), None), expected);
    assert_eq!(
        broken(&policy(&"p".repeat(63), json!({})), None),
        Vec::<String>::new()
    );
}

#[test]
fn node_selectors_are_labels() {
    let keys = json!({"nodeSelector": {"bad key": "x"}});
    assert_eq!(
        broken(&policy("p", keys), None),
        ["nodeSelector keys must be valid qualified names"]
    );
    let values = json!({"nodeSelector": {"role": "a b"}});
    assert_eq!(
        broken(&policy("p", values), None),
        ["nodeSelector values must be valid label values"]
    );
    let long = json!({"nodeSelector": {"role": "v".repeat(64)}});
    assert_eq!(
        broken(&policy("p", long), None),
        ["nodeSelector values must be valid label values"]
    );
}

#[test]
fn max_unavailable_is_a_count_or_a_percentage() {
    // A string of digits ("3") passes here (CEL of 1.25 cannot tell it from the number); the
    // webhook refuses it.
    for limit in [json!(-1), json!("abc"), json!("-5%"), json!("101%")] {
        let spec = json!({"maxUnavailable": limit});
        assert_eq!(
            broken(&policy("p", spec), None),
            ["maxUnavailable must be a non-negative integer or a percentage from 0% to 100%"],
            "{limit}"
        );
    }
}

#[test]
fn capture_cannot_change() {
    let with = |expression: &str| policy("p", json!({"capture": {"gw": expression}}));
    let message = ["invalid policy operation: capture field cannot be modified"];
    let old = with("routes.running.destination==\"0.0.0.0/0\"");
    assert_eq!(
        broken(&with("routes.running.destination==\"::/0\""), Some(&old)),
        message
    );
    assert_eq!(broken(&policy("p", json!({})), Some(&old)), message);
    assert_eq!(broken(&old, Some(&policy("p", json!({})))), message);
    assert_eq!(broken(&old.clone(), Some(&old)), Vec::<String>::new());
}

#[test]
fn servers_before_1_25_get_the_crd_without_rules() {
    let has_rules = |minor| {
        serde_json::to_string(&crd::for_server(crd::policies(), minor))
            .unwrap()
            .contains("x-kubernetes-validations")
    };
    assert!(!has_rules(20));
    assert!(!has_rules(24));
    assert!(has_rules(25));
}

/// kube-cel's cost estimate of every rule stays within the API server's per-rule budget. The
/// estimate is coarse (the API server's own is stricter about unbounded strings, hence the
/// bounded sizes in the rules); its scope check is not used, as it does not know the variables
/// that `all()` binds.
#[test]
fn rules_stay_within_the_cost_budget() {
    fn visit(schema: &Value, found: &mut Vec<(String, Value)>) {
        for rule in schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            found.push((rule["rule"].as_str().unwrap().to_string(), schema.clone()));
        }
        for child in schema["properties"]
            .as_object()
            .into_iter()
            .flat_map(|map| map.values())
        {
            visit(child, found);
        }
        if schema["additionalProperties"].is_object() {
            visit(&schema["additionalProperties"], found);
        }
    }
    let mut rules = Vec::new();
    visit(&schema(), &mut rules);
    assert_eq!(rules.len(), 5, "{rules:?}");
    for (rule, schema) in rules {
        let compiled = kube_cel::compile_schema(&schema);
        let warnings = kube_cel::analyze_rule(&rule, &compiled, kube_cel::ScopeContext::CrdValidation);
        let over: Vec<_> = warnings
            .iter()
            .filter(|warning| matches!(warning.kind, kube_cel::WarningKind::CostExceeded))
            .collect();
        assert!(over.is_empty(), "{rule}: {over:?}");
    }
}
