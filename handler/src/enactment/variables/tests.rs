use super::*;
use serde_json::json;

fn node() -> Node {
    serde_json::from_value(json!({"metadata": {"name": "node02",
        "labels": {"topology.kubernetes.io/rack": "r7"}, "annotations": {"example.com/vlan": "120"}}}))
    .unwrap()
}

fn variable(value: serde_json::Value) -> PolicyVariable {
    serde_json::from_value(value).unwrap()
}

#[test]
fn values_come_from_the_node_or_a_per_node_map_and_misses_name_what_to_fix() {
    let table = [
        (json!({"fromNode": {"field": "name"}}), Ok("node02")),
        (
            json!({"fromNode": {"label": "topology.kubernetes.io/rack"}}),
            Ok("r7"),
        ),
        (json!({"fromNode": {"annotation": "example.com/vlan"}}), Ok("120")),
        (json!({"perNode": {"node01": "100", "node02": "200"}}), Ok("200")),
        (
            json!({"fromNode": {"label": "rack"}}),
            Err("variable \"v\": node node02 has no label \"rack\"; label it, or change the variable"),
        ),
        (
            json!({"fromNode": {"annotation": "vlan"}}),
            Err(
                "variable \"v\": node node02 has no annotation \"vlan\"; annotate it, or change the variable",
            ),
        ),
        (
            json!({"perNode": {"node01": "100"}}),
            Err("variable \"v\": perNode has no value for node node02; add one"),
        ),
    ];
    for (source, expected) in table {
        let resolved = from_node("v", &variable(source.clone()), &node());
        match expected {
            Ok(value) => assert_eq!(resolved, Ok(Resolved::Text(value.into())), "{source}"),
            Err(message) => {
                let unresolved = resolved.unwrap_err();
                assert_eq!(unresolved.reason, Reason::VariableUnresolved);
                assert_eq!(unresolved.message, message, "{source}");
            }
        }
    }
}
