//! Applying what was rendered: server-side apply with one field manager, forced, controller
//! ownerReferences on everything but the CRDs and the Namespace (uninstall must not remove
//! those), and pruning by label of what the current render no longer contains. The spec of a
//! workload is the operator's alone: what earlier writers left there is taken over and dropped
//! (`apply/takeover.rs`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
    discovery::{Discovery, Scope},
};
use nmstate_api::NMState;
use nmstate_runtime::kube_errors::is_not_found;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use tracing::info;

/// Moving a workload's spec to this operator from whoever wrote it before.
mod takeover;

/// The field manager of everything the operator renders.
pub const FIELD_MANAGER: &str = nmstate_api::names::OPERATOR;
/// Marks the objects rendered for an NMState (value: its name), for pruning.
pub const OWNER_LABEL: &str = "nmstate.io/nmstate";

/// Kinds the operator renders and may have to prune: (group, kind).
const PRUNABLE: &[(&str, &str)] = &[
    ("", "ServiceAccount"),
    ("", "Service"),
    ("apps", "DaemonSet"),
    ("apps", "Deployment"),
    ("policy", "PodDisruptionBudget"),
    ("networking.k8s.io", "NetworkPolicy"),
    ("rbac.authorization.k8s.io", "Role"),
    ("rbac.authorization.k8s.io", "RoleBinding"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"),
];

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the API server does not serve {0}: is the cluster too old for kubernetes-nmstate?")]
    Unserved(String),
    #[error("a rendered object is not a Kubernetes object: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{kind} {name}: {source}")]
    Kube {
        kind: String,
        name: String,
        source: kube::Error,
    },
}

/// One applied object, to tell what to prune.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

/// Applies and prunes with the API resources the server serves (discovered once).
pub struct Applier {
    client: Client,
    discovery: Discovery,
}

impl Applier {
    pub async fn new(client: Client) -> Result<Applier, kube::Error> {
        let discovery = Discovery::new(client.clone()).run().await?;
        Ok(Applier { client, discovery })
    }

    fn api(&self, resource: &ApiResource, scope: &Scope, namespace: Option<&str>) -> Api<DynamicObject> {
        match (scope, namespace) {
            (Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(self.client.clone(), namespace, resource)
            }
            _ => Api::all_with(self.client.clone(), resource),
        }
    }

    /// Applies `objects` in order for `owner`; returns what was applied.
    pub async fn apply(
        &self,
        owner: &NMState,
        objects: Vec<Value>,
    ) -> Result<BTreeSet<ObjectKey>, ApplyError> {
        let owner_reference = owner.controller_owner_ref(&());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut applied = BTreeSet::new();
        for object in objects {
            let mut object: DynamicObject = serde_json::from_value(object)?;
            let types = object.types.clone().unwrap_or_default();
            let (group, version) = types
                .api_version
                .split_once('/')
                .unwrap_or(("", &types.api_version));
            let gvk = GroupVersionKind::gvk(group, version, &types.kind);
            let (resource, capabilities) = self
                .discovery
                .resolve_gvk(&gvk)
                .ok_or_else(|| ApplyError::Unserved(format!("{}/{}", types.api_version, types.kind)))?;
            object.labels_mut().insert(OWNER_LABEL.into(), owner.name_any());
            let survives_uninstall = matches!(types.kind.as_str(), "CustomResourceDefinition" | "Namespace");
            if !survives_uninstall && let Some(reference) = &owner_reference {
                object.metadata.owner_references = Some(vec![OwnerReference {
                    block_owner_deletion: Some(true),
                    ..reference.clone()
                }]);
            }
            let name = object.name_any();
            let namespace = object.namespace();
            let api = self.api(&resource, &capabilities.scope, namespace.as_deref());
            let failed = |source| ApplyError::Kube {
                kind: types.kind.clone(),
                name: name.clone(),
                source,
            };
            let live = api
                .patch(&name, &params, &Patch::Apply(&object))
                .await
                .map_err(failed)?;
            if takeover::SPEC_OWNED.contains(&types.kind.as_str())
                && let Some(takeover) = takeover::take_over_spec(live.managed_fields(), FIELD_MANAGER)
            {
                // (The resource version makes the write conditional: a concurrent writer's
                // fields are never moved unseen.)
                let ownership = json!({"metadata": {
                    "resourceVersion": live.resource_version(),
                    "managedFields": takeover.managed_fields,
                }});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&ownership))
                    .await
                    .map_err(failed)?;
                api.patch(&name, &params, &Patch::Apply(&object))
                    .await
                    .map_err(failed)?;
                info!(
                    kind = %types.kind, %name, from = ?takeover.from,
                    "took over the spec: what earlier writers set and this operator does not render is removed"
                );
            }
            applied.insert(ObjectKey {
                kind: types.kind,
                namespace,
                name,
            });
        }
        Ok(applied)
    }

    /// Deletes the objects labelled for `owner` that `keep` does not contain, in `namespaces`
    /// and cluster-wide; returns how many.
    pub async fn prune(
        &self,
        owner: &str,
        namespaces: &[&str],
        keep: &BTreeSet<ObjectKey>,
    ) -> Result<usize, ApplyError> {
        let selector = ListParams::default().labels(&format!("{OWNER_LABEL}={owner}"));
        let mut pruned = 0;
        for (group, kind) in PRUNABLE {
            let Some((resource, capabilities)) = self
                .discovery
                .get(group)
                .and_then(|group| group.recommended_kind(kind))
            else {
                continue;
            };
            let scopes: Vec<Option<&str>> = match capabilities.scope {
                Scope::Namespaced => namespaces.iter().map(|namespace| Some(*namespace)).collect(),
                Scope::Cluster => vec![None],
            };
            for namespace in scopes {
                let api = self.api(&resource, &capabilities.scope, namespace);
                let failed = |source| ApplyError::Kube {
                    kind: kind.to_string(),
                    name: format!("(list in {})", namespace.unwrap_or("the cluster")),
                    source,
                };
                for found in api.list_metadata(&selector).await.map_err(failed)? {
                    let key = ObjectKey {
                        kind: kind.to_string(),
                        namespace: found.metadata.namespace.clone(),
                        name: found.name_any(),
                    };
                    if keep.contains(&key) {
                        continue;
                    }
                    match api.delete(&key.name, &DeleteParams::background()).await {
                        Ok(_) => {}
                        Err(error) if is_not_found(&error) => continue,
                        Err(source) => {
                            return Err(ApplyError::Kube {
                                kind: key.kind,
                                name: key.name,
                                source,
                            });
                        }
                    }
                    info!(kind = %key.kind, name = %key.name, "pruned: no longer rendered");
                    pruned += 1;
                }
            }
        }
        Ok(pruned)
    }
}
