//! Upstream's mutations of a policy, as JSON patches: the `nmstate.io/webhook-mutating-timestamp`
//! annotation on every create and update, and `Unknown` conditions for a status written
//! without any.
//!
//! The API server drops `status` from a created custom resource after mutation, so conditions
//! cannot be set on create; upstream's "mutate" webhook that empties them there is kept as a
//! no-op endpoint for configurations that still call it.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use nmstate_api::{condition::ConditionStatus, labels, policy::PolicyConditionType};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// Sets the timestamp annotation (nanoseconds since the epoch, as upstream) on `object`.
pub fn timestamp(object: &Value, now: SystemTime) -> Patch {
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default()
        .to_string();
    let has_annotations = object
        .pointer("/metadata/annotations")
        .is_some_and(Value::is_object);
    let operation = if has_annotations {
        add(
            PointerBuf::from_tokens(["metadata", "annotations", labels::WEBHOOK_MUTATING_TIMESTAMP]),
            Value::String(nanos),
        )
    } else {
        add(
            PointerBuf::from_tokens(["metadata", "annotations"]),
            json!({ labels::WEBHOOK_MUTATING_TIMESTAMP: nanos }),
        )
    };
    Patch(vec![operation])
}

/// Four `Unknown` conditions when `object`'s status has none; `None` otherwise.
pub fn initial_conditions(object: &Value) -> Option<Patch> {
    let conditions = object.pointer("/status/conditions");
    let empty = match conditions {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.is_empty(),
        Some(_) => false,
    };
    if !empty {
        return None;
    }
    let unknown: Vec<Value> = PolicyConditionType::UPSTREAM
        .iter()
        .map(|kind| json!({"type": kind.as_str(), "status": ConditionStatus::Unknown}))
        .collect();
    let operation = if object.get("status").is_some_and(Value::is_object) {
        add(
            PointerBuf::from_tokens(["status", "conditions"]),
            Value::Array(unknown),
        )
    } else {
        add(
            PointerBuf::from_tokens(["status"]),
            json!({ "conditions": unknown }),
        )
    };
    Some(Patch(vec![operation]))
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn patched(mut object: Value, patch: &Patch) -> Value {
        json_patch::patch(&mut object, patch).unwrap();
        object
    }

    #[test]
    fn the_timestamp_is_added_with_or_without_annotations() {
        let now = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let bare = json!({"metadata": {"name": "p"}});
        let annotated = json!({"metadata": {"name": "p", "annotations": {"a": "b"}}});
        let key = labels::WEBHOOK_MUTATING_TIMESTAMP;
        assert_eq!(
            patched(bare.clone(), &timestamp(&bare, now))["metadata"]["annotations"][key],
            "1700000000000000005"
        );
        let result = patched(annotated.clone(), &timestamp(&annotated, now));
        assert_eq!(result["metadata"]["annotations"]["a"], "b");
        assert_eq!(result["metadata"]["annotations"][key], "1700000000000000005");
        // An existing timestamp is replaced ("add" on an existing member replaces it).
        let later = timestamp(&result, now + Duration::from_secs(1));
        assert_eq!(
            patched(result, &later)["metadata"]["annotations"][key],
            "1700000001000000005"
        );
    }

    #[test]
    fn empty_conditions_become_unknown() {
        for object in [
            json!({}),
            json!({"status": {}}),
            json!({"status": {"conditions": []}}),
        ] {
            let result = patched(object.clone(), &initial_conditions(&object).unwrap());
            let conditions = result["status"]["conditions"].as_array().unwrap();
            let types: Vec<&str> = conditions.iter().map(|c| c["type"].as_str().unwrap()).collect();
            assert_eq!(types, ["Available", "Degraded", "Progressing", "Ignored"]);
            assert!(conditions.iter().all(|c| c["status"] == "Unknown"));
        }
        let reported = json!({"status": {"conditions": [{"type": "Available", "status": "True"}]}});
        assert_eq!(initial_conditions(&reported), None);
    }
}
