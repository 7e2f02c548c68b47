//! The operator's RBAC rules: what it calls itself, plus every rule of the operand roles it
//! renders. Kubernetes lets a subject grant only permissions it holds, so the operand rules
//! are read from the render step itself and cannot fall behind the templates.

use nmstate_api::NMStateSpec;
use nmstate_operator::{
    config::OperatorConfig,
    render::{ClusterFacts, RenderError, render},
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const WRITE: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];

/// The rules the operator needs cluster-wide.
fn own_cluster_rules() -> Vec<Value> {
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| json!({"apiGroups": [group], "resources": resources, "verbs": verbs});
    vec![
        // The singleton rule deletes later NMStates; ownerReferences block their deletion.
        rule("nmstate.io", &["nmstates"], &["get", "list", "watch", "delete"]),
        rule("nmstate.io", &["nmstates/status"], &["get", "update", "patch"]),
        rule("nmstate.io", &["nmstates/finalizers"], &["update"]),
        // The NMState CRD is checked at start. The channels install and upgrade the CRDs
        // (MANAGE_CRDS=false or nmstate), so the operator writes its own CRD at most.
        rule(
            "apiextensions.k8s.io",
            &["customresourcedefinitions"],
            &["get", "list", "watch"],
        ),
        rule(
            "",
            &["namespaces"],
            &["get", "list", "watch", "create", "update", "patch"],
        ),
        // Webhook replicas follow the infra nodes' taints.
        rule("", &["nodes"], &["get", "list", "watch"]),
        rule("", &["events"], &["create", "patch"]),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
        // Rendered and pruned: see apply.rs.
        rule("", &["serviceaccounts", "services"], WRITE),
        rule("apps", &["daemonsets", "deployments"], WRITE),
        rule("policy", &["poddisruptionbudgets"], WRITE),
        rule("networking.k8s.io", &["networkpolicies"], WRITE),
        rule(
            "rbac.authorization.k8s.io",
            &["clusterroles", "clusterrolebindings", "roles", "rolebindings"],
            WRITE,
        ),
        rule(
            "admissionregistration.k8s.io",
            &[
                "mutatingwebhookconfigurations",
                "validatingwebhookconfigurations",
                "validatingadmissionpolicies",
                "validatingadmissionpolicybindings",
            ],
            WRITE,
        ),
    ]
}

/// The rules the operator needs in its own namespace: its leader Lease.
fn own_namespace_rules() -> Vec<Value> {
    vec![json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": WRITE})]
}

/// The rules of the roles rendered for an NMState that turns every option on (so every rule
/// an option adds is the operator's too), split into those granted in the handler namespace
/// (its Roles) and the rest (ClusterRoles, and Roles elsewhere).
fn operand_rules() -> Result<(Vec<Value>, Vec<Value>), RenderError> {
    let config = OperatorConfig::defaults();
    let every_option = NMStateSpec {
        network_readiness: Some(nmstate_api::nmstate::NetworkReadiness {
            startup_taint: Some("nmstate.io/network-unready".into()),
        }),
        ..NMStateSpec::default()
    };
    let facts = ClusterFacts {
        server_minor: u32::MAX,
        tolerated_infra_taints: 0,
    };
    let mut in_namespace = Vec::new();
    let mut cluster_wide = Vec::new();
    for object in render(&every_option, &config, &facts)? {
        let rules = object["rules"].as_array().cloned().unwrap_or_default();
        match object["kind"].as_str() {
            Some("Role") if object["metadata"]["namespace"] == json!(config.handler_namespace) => {
                in_namespace.extend(rules)
            }
            Some("Role" | "ClusterRole") => cluster_wide.extend(rules),
            _ => {}
        }
    }
    Ok((in_namespace, cluster_wide))
}

/// The operator's ClusterRole rules; `patches_nmstate_crd` when it keeps the NMState CRD
/// current itself (`MANAGE_CRDS=nmstate`, the Helm chart).
pub fn cluster_rules(patches_nmstate_crd: bool) -> Result<Vec<Value>, RenderError> {
    let (_, cluster_wide) = operand_rules()?;
    let nmstate_crd = json!({"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
        "resourceNames": ["nmstates.nmstate.io"], "verbs": ["patch"]});
    let extra = patches_nmstate_crd.then_some(nmstate_crd);
    Ok(merge(
        own_cluster_rules().into_iter().chain(cluster_wide).chain(extra),
    ))
}

/// The operator's Role rules in the handler namespace.
pub fn namespace_rules() -> Result<Vec<Value>, RenderError> {
    let (in_namespace, _) = operand_rules()?;
    Ok(merge(own_namespace_rules().into_iter().chain(in_namespace)))
}

/// One rule per (group, resource, resource names), with the union of their verbs; ordered,
/// so the generated files are stable.
fn merge(rules: impl Iterator<Item = Value>) -> Vec<Value> {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item.as_str().map(str::to_string))
            .collect()
    };
    let mut verbs: BTreeMap<(String, String, Vec<String>), BTreeSet<String>> = BTreeMap::new();
    for rule in rules {
        let names = strings(&rule["resourceNames"]);
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                verbs
                    .entry((group.clone(), resource, names.clone()))
                    .or_default()
                    .extend(strings(&rule["verbs"]));
            }
        }
    }
    // A resource-name rule adds nothing when the same verbs are granted for every name.
    let unrestricted = verbs.clone();
    verbs.retain(|(group, resource, names), granted| {
        names.is_empty()
            || !unrestricted
                .get(&(group.clone(), resource.clone(), Vec::new()))
                .is_some_and(|all| granted.is_subset(all))
    });
    // Resources of one group with the same names and verbs share a rule.
    let mut grouped: BTreeMap<(String, Vec<String>, BTreeSet<String>), Vec<String>> = BTreeMap::new();
    for ((group, resource, names), granted) in verbs {
        grouped.entry((group, names, granted)).or_default().push(resource);
    }
    grouped
        .into_iter()
        .map(|((group, names, granted), resources)| {
            let mut rule = json!({"apiGroups": [group], "resources": resources});
            if !names.is_empty() {
                rule["resourceNames"] = json!(names);
            }
            rule["verbs"] = json!(ordered_verbs(&granted));
            rule
        })
        .collect()
}

/// Verbs in the order people write them.
fn ordered_verbs(verbs: &BTreeSet<String>) -> Vec<String> {
    let order = ["get", "list", "watch", "create", "update", "patch", "delete"];
    let rank = |verb: &String| {
        order
            .iter()
            .position(|known| known == verb)
            .unwrap_or(order.len())
    };
    let mut sorted: Vec<String> = verbs.iter().cloned().collect();
    sorted.sort_by_key(|verb| (rank(verb), verb.clone()));
    sorted
}
