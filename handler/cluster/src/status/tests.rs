use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nmstate_api::{
    NodeNetworkConfigurationEnactmentStatus, condition::updated_conditions,
    enactment::NodeNetworkConfigurationEnactmentFields,
};

fn node(name: &str) -> NodeView {
    NodeView {
        name: name.into(),
        selected: true,
        ready: true,
        runs_handler: true,
    }
}

fn enactment(node: &str, generation: i64, true_types: &[&str]) -> NodeNetworkConfigurationEnactment {
    let mut enactment = NodeNetworkConfigurationEnactment::new(
        &format!("{node}.web"),
        NodeNetworkConfigurationEnactmentFields {},
    );
    enactment.metadata.labels = Some([(labels::NODE.to_string(), node.to_string())].into());
    let conditions = ["Available", "Failing", "Progressing", "Pending", "Aborted"]
        .iter()
        .map(|type_| Condition::new(*type_, true_types.contains(type_).into(), "", ""))
        .collect();
    enactment.status = Some(NodeNetworkConfigurationEnactmentStatus {
        policy_generation: Some(generation),
        conditions,
        ..Default::default()
    });
    enactment
}

fn outcome(nodes: &[NodeView], enactments: &[NodeNetworkConfigurationEnactment]) -> PolicyOutcome {
    evaluate(2, nodes, &enactments.iter().collect::<Vec<_>>())
}

#[test]
fn no_selected_node_with_a_handler_is_ignored() {
    let unselected = NodeView {
        selected: false,
        ..node("node01")
    };
    let without_handler = NodeView {
        runs_handler: false,
        ..node("node02")
    };
    assert_eq!(
        outcome(&[unselected, without_handler], &[]),
        PolicyOutcome::Ignored
    );
    let conditions = PolicyOutcome::Ignored.conditions(2);
    let ignored = find_condition(&conditions, "Ignored").unwrap();
    assert!(ignored.is_true());
    assert_eq!(
        (ignored.reason.as_str(), ignored.message.as_str()),
        ("NoMatchingNode", "Policy does not match any node")
    );
}

#[test]
fn progress_counts_finished_nodes_of_the_current_generation() {
    let nodes = [
        node("node01"),
        node("node02"),
        node("node03"),
        node("node04"),
        node("node05"),
    ];
    let enactments = [
        enactment("node01", 2, &["Available"]),
        enactment("node02", 2, &["Available"]),
        enactment("node03", 2, &["Progressing"]),
        enactment("node04", 1, &["Available"]), // an older generation
    ];
    assert_eq!(
        outcome(&nodes, &enactments),
        PolicyOutcome::Progressing("Policy is progressing 2/5 nodes finished".into())
    );
}

#[test]
fn pending_nodes_keep_the_policy_progressing_and_are_mentioned() {
    let nodes = [node("node01"), node("node02")];
    let enactments = [
        enactment("node01", 2, &["Available"]),
        enactment("node02", 2, &["Pending"]),
    ];
    assert_eq!(
        outcome(&nodes, &enactments),
        PolicyOutcome::Progressing("Policy is progressing 1/2 nodes finished, 1 pending".into())
    );
}

#[test]
fn all_ready_nodes_available_is_success_and_not_ready_nodes_are_mentioned() {
    let nodes = [
        node("node01"),
        node("node02"),
        node("node03"),
        NodeView {
            ready: false,
            ..node("node04")
        },
    ];
    let enactments: Vec<_> = ["node01", "node02", "node03"]
        .iter()
        .map(|n| enactment(n, 2, &["Available"]))
        .collect();
    let result = outcome(&nodes, &enactments);
    assert_eq!(
        result,
        PolicyOutcome::Available(
            "3/3 nodes successfully configured, 1 nodes ignored due to NotReady state".into()
        )
    );
    let conditions = result.conditions(2);
    let available = find_condition(&conditions, "Available").unwrap();
    assert!(available.is_true());
    assert_eq!(available.reason, "SuccessfullyConfigured");
    assert_eq!(available.observed_generation, Some(2));
    assert_eq!(
        find_condition(&conditions, "Degraded").unwrap().status,
        ConditionStatus::False
    );
}

#[test]
fn a_failed_or_aborted_node_degrades_the_policy_but_a_retrying_one_does_not() {
    let nodes = [node("node01"), node("node02"), node("node03")];
    let retrying = [
        enactment("node01", 2, &["Failing", "Progressing"]),
        enactment("node02", 2, &["Available"]),
    ];
    assert!(matches!(
        outcome(&nodes, &retrying),
        PolicyOutcome::Progressing(_)
    ));
    let failed = [
        enactment("node01", 2, &["Failing"]),
        enactment("node02", 2, &["Aborted"]),
        enactment("node03", 2, &["Aborted"]),
    ];
    let result = outcome(&nodes, &failed);
    assert_eq!(
        result,
        PolicyOutcome::Degraded("1/3 nodes failed to configure, 2 nodes aborted configuration".into())
    );
    let conditions = result.conditions(2);
    let degraded = find_condition(&conditions, "Degraded").unwrap();
    assert!(degraded.is_true());
    assert_eq!(degraded.reason, "FailedToConfigure");
    assert_eq!(
        find_condition(&conditions, "Progressing").unwrap().reason,
        "ConfigurationProgressing"
    );
}

#[test]
fn enactments_of_nodes_outside_the_policy_do_not_count() {
    let nodes = [
        node("node01"),
        NodeView {
            runs_handler: false,
            ..node("node02")
        },
    ];
    let enactments = [
        enactment("node01", 2, &["Available"]),
        enactment("node02", 2, &["Failing"]),
    ];
    assert_eq!(
        outcome(&nodes, &enactments),
        PolicyOutcome::Available("1/1 nodes successfully configured".into())
    );
}

#[test]
fn unchanged_conditions_are_not_rewritten() {
    let at = |s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
    let wanted = PolicyOutcome::Available("1/1 nodes successfully configured".into()).conditions(2);
    let written = updated_conditions(&[], wanted.clone(), &at(10)).unwrap();
    assert_eq!(updated_conditions(&written, wanted, &at(20)), None);
    let progressing =
        PolicyOutcome::Progressing("Policy is progressing 0/1 nodes finished".into()).conditions(3);
    let rewritten = updated_conditions(&written, progressing, &at(30)).unwrap();
    let available = find_condition(&rewritten, "Available").unwrap();
    assert_eq!(available.status, ConditionStatus::Unknown);
    assert_eq!(available.last_transition_time, Some(at(30)));
}

fn previewed(node: &str, generation: i64, reason: &str) -> NodeNetworkConfigurationEnactment {
    let mut enactment = enactment(node, generation, &[]);
    let status = enactment.status.as_mut().unwrap();
    status
        .conditions
        .push(Condition::new("Previewed", ConditionStatus::True, reason, ""));
    enactment
}

#[test]
fn a_preview_counts_the_nodes_that_would_change_once_every_node_previewed() {
    let nodes = [node("node01"), node("node02"), node("node03")];
    let partial = [
        previewed("node01", 2, "WouldChange"),
        previewed("node02", 2, "NoChange"),
    ];
    assert_eq!(
        outcome(&nodes, &partial),
        PolicyOutcome::Progressing("Policy is progressing 2/3 nodes finished".into())
    );
    let all = [
        previewed("node01", 2, "WouldChange"),
        previewed("node02", 2, "NoChange"),
        previewed("node03", 2, "WouldFail"),
    ];
    let previewed_outcome = outcome(&nodes, &all);
    assert_eq!(
        previewed_outcome,
        PolicyOutcome::Previewed("1/3 nodes would change, 1 nodes would refuse the policy".into())
    );
    assert_eq!(previewed_outcome.status(), "Previewed");
    let conditions = previewed_outcome.conditions(2);
    let rows: Vec<(&str, ConditionStatus, &str)> = conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status, c.reason.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("Degraded", ConditionStatus::False, "Previewed"),
            ("Available", ConditionStatus::False, "Previewed"),
            ("Progressing", ConditionStatus::False, "Previewed"),
            ("Ignored", ConditionStatus::False, "Previewed"),
            ("Previewed", ConditionStatus::True, "Previewed"),
        ]
    );

    // Leaving the preview: the policy's Previewed condition turns False, and stays so.
    let applied = PolicyOutcome::Available("3/3 nodes successfully configured".into());
    let after = applied.conditions_over(&conditions, 3);
    let condition = find_condition(&after, "Previewed").unwrap();
    assert_eq!(
        (condition.status, condition.reason.as_str()),
        (ConditionStatus::False, "SuccessfullyConfigured")
    );
    assert!(find_condition(&applied.conditions_over(&[], 3), "Previewed").is_none());
}

#[test]
fn a_dependency_cycle_degrades_the_policy_naming_the_cycle() {
    let cycle = ["a".to_string(), "b".to_string(), "a".to_string()];
    let outcome = PolicyOutcome::cycle(&cycle);
    assert_eq!(outcome.status(), "Degraded");
    let conditions = outcome.conditions(3);
    let degraded = find_condition(&conditions, "Degraded").unwrap();
    assert!(degraded.is_true());
    assert_eq!(degraded.reason, "DependencyCycle");
    assert_eq!(
        degraded.message,
        "the policies depend on each other (a → b → a): none of them is applied; remove one dependsOn"
    );
    assert!(!find_condition(&conditions, "Available").unwrap().is_true());
}
