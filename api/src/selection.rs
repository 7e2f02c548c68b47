//! Which nodes a policy selects: its equality `nodeSelector` (upstream's) AND its
//! `nodeSelectorTerms` (Kubernetes' node-selector terms, ORed, with Kubernetes' semantics). The
//! node agent, its rollout's count of selected nodes and the cluster controller all decide with
//! [`selects`].

use crate::policy::NodeNetworkConfigurationPolicySpec;
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use std::collections::BTreeMap;

/// The only field a `matchFields` requirement may name, as in Kubernetes.
pub const NODE_NAME_FIELD: &str = "metadata.name";

/// Whether the policy selects the node named `node` with `labels`.
pub fn selects(
    spec: &NodeNetworkConfigurationPolicySpec,
    node: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let equal = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    equal
        && spec
            .node_selector_terms
            .as_ref()
            .is_none_or(|terms| terms.iter().any(|term| term_matches(term, node, labels)))
}

/// A term matches when all its requirements do; an empty term matches no node (Kubernetes').
fn term_matches(term: &NodeSelectorTerm, node: &str, labels: &BTreeMap<String, String>) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let name = BTreeMap::from([(NODE_NAME_FIELD.to_string(), node.to_string())]);
    expressions
        .iter()
        .all(|requirement| requirement_matches(requirement, labels))
        && fields
            .iter()
            .all(|requirement| requirement_matches(requirement, &name))
}

/// Kubernetes' node-selector operators. `Gt` and `Lt` compare integers; a value that is no
/// integer, or an unknown operator, matches nothing.
fn requirement_matches(requirement: &NodeSelectorRequirement, values_of: &BTreeMap<String, String>) -> bool {
    let value = values_of.get(&requirement.key);
    let values = requirement.values.as_deref().unwrap_or_default();
    let compare = |ordering: std::cmp::Ordering| {
        let (Some(value), [bound]) = (value, values) else {
            return false;
        };
        match (value.parse::<i64>(), bound.parse::<i64>()) {
            (Ok(value), Ok(bound)) => value.cmp(&bound) == ordering,
            _ => false,
        }
    };
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|value| values.contains(value)),
        "NotIn" => value.is_none_or(|value| !values.contains(value)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn spec(
        selector: &[(&str, &str)],
        terms: Option<Vec<NodeSelectorTerm>>,
    ) -> NodeNetworkConfigurationPolicySpec {
        NodeNetworkConfigurationPolicySpec {
            node_selector: (!selector.is_empty()).then(|| labels(selector)),
            node_selector_terms: terms,
            ..Default::default()
        }
    }

    fn expressions(requirements: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(requirements),
            match_fields: None,
        }
    }

    #[test]
    fn equality_selectors_match_every_label_as_upstream() {
        let node = labels(&[
            ("kubernetes.io/hostname", "node01"),
            ("node-role.kubernetes.io/worker", ""),
        ]);
        assert!(selects(&spec(&[], None), "node01", &node));
        assert!(selects(
            &spec(&[("node-role.kubernetes.io/worker", "")], None),
            "node01",
            &node
        ));
        assert!(!selects(
            &spec(&[("node-role.kubernetes.io/worker", "yes")], None),
            "node01",
            &node
        ));
        assert!(!selects(
            &spec(&[("kubernetes.io/hostname", "node01"), ("zone", "a")], None),
            "node01",
            &node
        ));
    }

    #[test]
    fn each_operator_has_kubernetes_semantics() {
        let node = labels(&[("zone", "a"), ("cores", "16"), ("gpu", "")]);
        // (requirement, matches)
        let table = [
            (requirement("zone", "In", &["a", "b"]), true),
            (requirement("zone", "In", &["b"]), false),
            (requirement("missing", "In", &["a"]), false),
            (requirement("zone", "NotIn", &["b"]), true),
            (requirement("zone", "NotIn", &["a"]), false),
            (requirement("missing", "NotIn", &["a"]), true),
            (requirement("gpu", "Exists", &[]), true),
            (requirement("missing", "Exists", &[]), false),
            (requirement("missing", "DoesNotExist", &[]), true),
            (requirement("gpu", "DoesNotExist", &[]), false),
            (requirement("cores", "Gt", &["8"]), true),
            (requirement("cores", "Gt", &["16"]), false),
            (requirement("cores", "Lt", &["32"]), true),
            (requirement("cores", "Lt", &["16"]), false),
            (requirement("zone", "Gt", &["1"]), false),
            (requirement("missing", "Lt", &["1"]), false),
            (requirement("cores", "Gt", &["1", "2"]), false),
            (requirement("zone", "Matches", &["a"]), false),
        ];
        for (requirement, expected) in table {
            let terms = Some(vec![expressions(vec![requirement.clone()])]);
            assert_eq!(
                selects(&spec(&[], terms), "node01", &node),
                expected,
                "{requirement:?}"
            );
        }
    }

    #[test]
    fn terms_are_ored_requirements_anded_and_both_selectors_must_agree() {
        let node = labels(&[("zone", "a"), ("tier", "edge")]);
        let zone_b = requirement("zone", "In", &["b"]);
        let edge = requirement("tier", "In", &["edge"]);
        let zone_a = requirement("zone", "In", &["a"]);
        let or = Some(vec![
            expressions(vec![zone_b.clone()]),
            expressions(vec![edge.clone()]),
        ]);
        assert!(selects(&spec(&[], or.clone()), "n", &node));
        let and = Some(vec![expressions(vec![zone_b, edge.clone()])]);
        assert!(!selects(&spec(&[], and), "n", &node));
        assert!(
            !selects(&spec(&[("zone", "b")], or.clone()), "n", &node),
            "the equality selector is ANDed"
        );
        assert!(selects(
            &spec(&[("zone", "a")], Some(vec![expressions(vec![zone_a, edge])])),
            "n",
            &node
        ));
        // An empty term, or no term at all, matches nothing.
        assert!(!selects(
            &spec(&[], Some(vec![NodeSelectorTerm::default()])),
            "n",
            &node
        ));
        assert!(!selects(&spec(&[], Some(vec![])), "n", &node));
        // matchFields: the node's name only.
        let by_name = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![requirement(NODE_NAME_FIELD, "In", &["node02", "node03"])]),
        };
        assert!(selects(&spec(&[], Some(vec![by_name.clone()])), "node02", &node));
        assert!(!selects(&spec(&[], Some(vec![by_name])), "node01", &node));
    }
}
