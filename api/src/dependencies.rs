//! Ordering between policies (`spec.dependsOn`): the one rule both the node agent and the
//! cluster controller need, whether a policy depends on itself through others.

use std::collections::BTreeMap;

/// The cycle through `policy`, as the names along it (`[a, b, a]`), when following `dependsOn`
/// (`depends_on`: each policy's dependencies, by name) leads back to it. A dependency that does
/// not exist ends its path.
pub fn cycle_through(policy: &str, depends_on: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    let mut path = vec![policy.to_string()];
    let mut seen = std::collections::BTreeSet::new();
    find(policy, policy, depends_on, &mut path, &mut seen).then_some(path)
}

fn find(
    start: &str,
    at: &str,
    depends_on: &BTreeMap<String, Vec<String>>,
    path: &mut Vec<String>,
    seen: &mut std::collections::BTreeSet<String>,
) -> bool {
    for next in depends_on.get(at).into_iter().flatten() {
        path.push(next.clone());
        if next == start {
            return true;
        }
        if seen.insert(next.clone()) && find(start, next, depends_on, path, seen) {
            return true;
        }
        path.pop();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(from, to)| (from.to_string(), to.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_policy_in_a_cycle_gets_the_cycle_and_others_none() {
        let policies = graph(&[
            ("vlan", &["bond"]),
            ("bond", &[]),
            ("a", &["b", "missing"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("self", &["self"]),
            ("into-cycle", &["a"]),
        ]);
        let cycle = |policy: &str| cycle_through(policy, &policies);
        assert_eq!(cycle("vlan"), None);
        assert_eq!(cycle("bond"), None);
        assert_eq!(
            cycle("a"),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(
            cycle("c"),
            Some(vec!["c".into(), "a".into(), "b".into(), "c".into()])
        );
        assert_eq!(cycle("self"), Some(vec!["self".into(), "self".into()]));
        assert_eq!(cycle("into-cycle"), None, "depends on a cycle, but is not in it");
        assert_eq!(cycle("unknown"), None);
    }
}
