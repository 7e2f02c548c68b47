//! Taking over the spec of a workload another field manager wrote before this operator.
//!
//! Server-side apply removes a field only when the applier owned it and stops applying it. A
//! field another manager set stays, owned by that manager, forever. Upstream's operator writes
//! its handler DaemonSet with plain updates, so after an upgrade from upstream its
//! `args: [--zap-time-encoding=iso8601]` and its `readinessProbe: cat /tmp/healthy` would stay
//! in the DaemonSet this operator applies: the handler would refuse the argument and no probe
//! could pass. The same holds for anything a `kubectl edit` added.
//!
//! The spec of a workload is this operator's alone, so its ownership moves to this operator's
//! apply entry, as `kubectl` does when it moves an object from client-side to server-side
//! apply (client-go's `csaupgrade`). The next apply then drops what it does not render.
//! Metadata stays shared: the deployment controller owns its revision annotation there, and
//! `kubectl rollout restart` its annotation on the pod template.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use serde_json::{Map, Value, json};

/// Kinds whose spec only this operator decides.
pub const SPEC_OWNED: &[&str] = &["DaemonSet", "Deployment"];

const SPEC: &str = "f:spec";

/// What moves: the new `managedFields`, and the managers that gave up the spec.
#[derive(Debug, PartialEq)]
pub struct Takeover {
    pub managed_fields: Vec<ManagedFieldsEntry>,
    pub from: Vec<String>,
}

/// The managed fields of an object `manager` has just applied, with every other writer's
/// share of the spec moved to `manager`'s apply entry; `None` when `manager` owns the spec
/// alone (or did not apply it). Entries of subresources (status, scale) are left alone.
pub fn take_over_spec(entries: &[ManagedFieldsEntry], manager: &str) -> Option<Takeover> {
    let ours = |entry: &ManagedFieldsEntry| {
        entry.manager.as_deref() == Some(manager) && entry.operation.as_deref() == Some("Apply")
    };
    let on_main_resource =
        |entry: &ManagedFieldsEntry| entry.subresource.as_deref().is_none_or(str::is_empty);
    let mut taken = Value::Object(Map::new());
    let mut from = Vec::new();
    let mut managed_fields = Vec::new();
    for entry in entries {
        let mut rest = entry.clone();
        let moved = match rest.fields_v1.as_mut() {
            Some(FieldsV1(Value::Object(fields))) if !ours(entry) && on_main_resource(entry) => {
                split_spec(fields)
            }
            _ => None,
        };
        if let Some(moved) = moved {
            merge(&mut taken, &moved);
            from.push(entry.manager.clone().unwrap_or_default());
            // An entry left with nothing (or only its `.` marker) is dropped.
            let empty = rest
                .fields_v1
                .as_ref()
                .and_then(|fields| fields.0.as_object())
                .is_none_or(|fields| fields.keys().all(|key| key == "."));
            if empty {
                continue;
            }
        }
        managed_fields.push(rest);
    }
    if from.is_empty() {
        return None;
    }
    let applier = managed_fields.iter_mut().find(|entry| ours(entry))?;
    let fields = applier
        .fields_v1
        .get_or_insert_with(|| FieldsV1(Value::Object(Map::new())));
    let Value::Object(fields) = &mut fields.0 else {
        return None;
    };
    merge(
        fields.entry(SPEC).or_insert_with(|| Value::Object(Map::new())),
        &taken,
    );
    Some(Takeover { managed_fields, from })
}

/// Takes the spec out of `fields` but the pod template's metadata (`kubectl rollout restart`
/// stamps an annotation there; taking it would roll the pods a second time): what moves, if
/// anything does.
fn split_spec(fields: &mut Map<String, Value>) -> Option<Value> {
    let mut spec = fields.remove(SPEC)?;
    let template_metadata = spec
        .get_mut("f:template")
        .and_then(Value::as_object_mut)
        .and_then(|template| template.remove("f:metadata"));
    if let Some(metadata) = template_metadata {
        fields.insert(SPEC.into(), json!({"f:template": {"f:metadata": metadata}}));
    }
    let empty = |value: &Value| value.as_object().is_none_or(|map| map.is_empty());
    if let Some(template) = spec.get("f:template")
        && empty(template)
        && let Some(spec) = spec.as_object_mut()
    {
        spec.remove("f:template");
    }
    (!empty(&spec)).then_some(spec)
}

/// Adds the field set `from` to `into` (both in the FieldsV1 form: nested objects).
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(
                    into.entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new())),
                    value,
                );
            }
        }
        (into, from) => *into = from.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(manager: &str, operation: &str, subresource: Option<&str>, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            subresource: subresource.map(Into::into),
            api_version: Some("apps/v1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            time: None,
        }
    }

    fn container(fields: Value) -> Value {
        json!({"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"nmstate-handler\"}": fields}}}})
    }

    #[test]
    fn the_spec_moves_to_the_applier_and_the_rest_stays() {
        let ours = json!({"f:metadata": {"f:labels": {"f:app": {}}},
                          "f:spec": container(json!({".": {}, "f:image": {}, "f:command": {}}))});
        let upstream = json!({"f:metadata": {"f:annotations": {"f:note": {}}},
                              "f:spec": container(json!({".": {}, "f:args": {}, "f:readinessProbe": {".": {}}}))});
        let revision = json!({"f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}}});
        let status = json!({"f:status": {"f:numberReady": {}}});
        let entries = [
            entry("nmstate-operator", "Apply", None, ours),
            entry("manager", "Update", None, upstream),
            entry("kube-controller-manager", "Update", None, revision.clone()),
            entry(
                "kube-controller-manager",
                "Update",
                Some("status"),
                status.clone(),
            ),
        ];
        let takeover = take_over_spec(&entries, "nmstate-operator").unwrap();
        assert_eq!(takeover.from, ["manager"]);
        let fields: Vec<Value> = takeover
            .managed_fields
            .iter()
            .map(|entry| entry.fields_v1.clone().unwrap().0)
            .collect();
        assert_eq!(
            fields[0],
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": container(json!({".": {}, "f:image": {}, "f:command": {}, "f:args": {},
                                              "f:readinessProbe": {".": {}}}))})
        );
        // Upstream keeps its annotation; the controller its revision and status.
        assert_eq!(
            fields[1],
            json!({"f:metadata": {"f:annotations": {"f:note": {}}}})
        );
        assert_eq!(fields[2], revision);
        assert_eq!(fields[3], status);
    }

    #[test]
    fn the_pod_template_metadata_stays_with_its_writer() {
        let restarted = json!({"f:spec": {"f:template": {"f:metadata": {"f:annotations": {
            "f:kubectl.kubernetes.io/restartedAt": {}}}}}});
        let entries = [
            entry(
                "nmstate-operator",
                "Apply",
                None,
                json!({"f:spec": {"f:replicas": {}}}),
            ),
            entry("kubectl-rollout", "Update", None, restarted.clone()),
        ];
        assert_eq!(take_over_spec(&entries, "nmstate-operator"), None);

        let mut edited = restarted.clone();
        edited["f:spec"]["f:template"]["f:spec"] = json!({"f:hostPID": {}});
        let entries = [entries[0].clone(), entry("kubectl-edit", "Update", None, edited)];
        let takeover = take_over_spec(&entries, "nmstate-operator").unwrap();
        assert_eq!(takeover.from, ["kubectl-edit"]);
        assert_eq!(takeover.managed_fields[1].fields_v1.clone().unwrap().0, restarted);
        assert_eq!(
            takeover.managed_fields[0].fields_v1.clone().unwrap().0,
            json!({"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:hostPID": {}}}}})
        );
    }

    #[test]
    fn nothing_moves_when_no_one_else_owns_the_spec() {
        let cases = [
            // Only ours.
            vec![entry(
                "nmstate-operator",
                "Apply",
                None,
                json!({"f:spec": {"f:replicas": {}}}),
            )],
            // Another manager, but only in metadata; a subresource's spec (scale).
            vec![
                entry(
                    "nmstate-operator",
                    "Apply",
                    None,
                    json!({"f:spec": {"f:replicas": {}}}),
                ),
                entry(
                    "kube-controller-manager",
                    "Update",
                    None,
                    json!({"f:metadata": {}}),
                ),
                entry(
                    "kubectl-scale",
                    "Update",
                    Some("scale"),
                    json!({"f:spec": {"f:replicas": {}}}),
                ),
            ],
        ];
        for entries in cases {
            assert_eq!(take_over_spec(&entries, "nmstate-operator"), None, "{entries:?}");
        }
    }

    #[test]
    fn an_entry_with_only_the_spec_is_dropped_and_our_own_update_entry_folds_in() {
        let entries = [
            entry(
                "nmstate-operator",
                "Update",
                None,
                json!({"f:spec": {"f:paused": {}}}),
            ),
            entry("nmstate-operator", "Apply", None, json!({"f:metadata": {}})),
        ];
        let takeover = take_over_spec(&entries, "nmstate-operator").unwrap();
        assert_eq!(takeover.managed_fields.len(), 1);
        assert_eq!(
            takeover.managed_fields[0].fields_v1.clone().unwrap().0,
            json!({"f:metadata": {}, "f:spec": {"f:paused": {}}})
        );
    }
}
