//! The enactment objects of this node: creating, writing the status of, and removing
//! `<node>.<policy>`.

use crate::status_patch::write_whole;
use crate::{
    config::HandlerConfig,
    enactment::{Context, conditions::EnactmentSituation},
};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::Node,
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{controller::Action, watcher},
};
use nmstate_api::names::HANDLER_FIELD_MANAGER as FIELD_MANAGER;
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationEnactmentStatus,
    NodeNetworkConfigurationPolicy,
    enactment::{EnactmentConditionType as Type, NodeNetworkConfigurationEnactmentFields, enactment_name},
    labels,
};
use nmstate_runtime::kube_errors::{is_conflict, is_not_found};
use nmstate_runtime::watch;
use std::sync::Arc;
use tracing::{info, warn};

use crate::enactment::EnactmentError;

pub async fn finish(
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
    status: &mut NodeNetworkConfigurationEnactmentStatus,
    situation: EnactmentSituation,
) -> Result<Action, EnactmentError> {
    let generation = status.policy_generation.unwrap_or_default();
    situation.apply_to(&mut status.conditions, generation, &Time(Timestamp::now()));
    write_status(enactments, name, status).await?;
    Ok(Action::await_change())
}

/// Enactments this node left Progressing when its handler stopped (killed, or its pod
/// replaced) say Pending instead: nothing applies on the node now (a change left uncommitted
/// was rolled back at start), and until the handler gets to each policy again nobody may count
/// the node as applying it, while its place in the rollout lapses and another node takes it.
pub async fn mark_interrupted(client: &kube::Client, node: &str) {
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let mine = ListParams::default().labels(&format!("{}={node}", labels::NODE));
    let listed = match enactments.list(&mine).await {
        Ok(listed) => listed,
        Err(error) => return warn!("cannot list this node's enactments: {error}"),
    };
    for enactment in listed {
        let Some(mut status) = enactment.status.clone() else {
            continue;
        };
        if !status.is(Type::Progressing) {
            continue;
        }
        let name = enactment.name_any();
        match finish(&enactments, &name, &mut status, EnactmentSituation::Pending).await {
            Ok(_) => {
                info!(enactment = %name, "was Progressing when the last handler stopped: Pending until looked at again")
            }
            Err(error) => {
                warn!(enactment = %name, "cannot say that the last handler stopped mid-apply: {error}")
            }
        }
    }
}

pub async fn write_status(
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
    status: &NodeNetworkConfigurationEnactmentStatus,
) -> Result<(), EnactmentError> {
    write_whole(enactments, name, serde_json::to_value(status)?).await?;
    Ok(())
}

pub async fn create_enactment(
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
    policy: &str,
    node: &Node,
    config: &HandlerConfig,
) -> Result<NodeNetworkConfigurationEnactment, EnactmentError> {
    let mut enactment =
        NodeNetworkConfigurationEnactment::new(name, NodeNetworkConfigurationEnactmentFields {});
    let mut object_labels = config.relationship_labels.clone();
    object_labels.insert(labels::POLICY.into(), policy.into());
    object_labels.insert(labels::NODE.into(), config.node_name.clone());
    enactment.metadata.labels = Some(object_labels);
    enactment.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: config.node_name.clone(),
        uid: node.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }]);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match enactments.create(&params, &enactment).await {
        Ok(created) => Ok(created),
        Err(error) if is_conflict(&error) => Ok(enactments.get(name).await?),
        Err(error) => Err(error.into()),
    }
}

/// Whether `policy` (this very object, by UID) is still there and not being deleted.
pub async fn policy_still_exists(
    client: &kube::Client,
    policy: &NodeNetworkConfigurationPolicy,
) -> Result<bool, EnactmentError> {
    let current = Api::<NodeNetworkConfigurationPolicy>::all(client.clone())
        .get_opt(&policy.name_any())
        .await?;
    Ok(current.is_some_and(|current| {
        current.uid() == policy.uid() && current.metadata.deletion_timestamp.is_none()
    }))
}

pub async fn delete_enactment(
    enactments: &Api<NodeNetworkConfigurationEnactment>,
    name: &str,
) -> Result<bool, EnactmentError> {
    // Read first: most policies do not select most nodes, and a read is cheaper than a write.
    if enactments.get_opt(name).await?.is_none() {
        return Ok(false);
    }
    match enactments.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            info!(enactment = name, "removed the enactment");
            Ok(true)
        }
        Err(error) if is_not_found(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Removes this node's enactments whose policy is gone: at start (policies deleted while the
/// handler was down), then whenever a policy is deleted. Runs until the watch ends.
pub async fn remove_enactments_of_deleted_policies(context: Arc<Context>) {
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(context.client.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(context.client.clone());
    let node = context.config.node_name.clone();
    let mine = ListParams::default().labels(&format!("{}={node}", labels::NODE));
    match enactments.list(&mine).await {
        Ok(list) => {
            for enactment in list {
                let Some(policy) = enactment.labels().get(labels::POLICY).cloned() else {
                    continue;
                };
                if matches!(policies.get_opt(&policy).await, Ok(None)) {
                    let _ = delete_enactment(&enactments, &enactment.name_any()).await;
                }
            }
        }
        Err(error) => warn!("cannot list this node's enactments: {error}"),
    }
    let mut deletions = watch::retried(watcher(policies, watcher::Config::default())).boxed();
    while let Some(event) = deletions.next().await {
        match event {
            Ok(watcher::Event::Delete(policy)) => {
                context.forget(&policy.name_any());
                context.rollout.release(&policy.name_any()).await;
                super::variables::release(&context.client, &policy, &node).await;
                if let Err(error) =
                    delete_enactment(&enactments, &enactment_name(&node, &policy.name_any())).await
                {
                    warn!(
                        "cannot remove the enactment of deleted policy {}: {error}",
                        policy.name_any()
                    );
                }
            }
            Ok(_) => {}
            Err(error) => warn!("watching policies for deletions: {error}"),
        }
    }
}
