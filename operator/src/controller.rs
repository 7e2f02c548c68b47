//! The NMState controller: dereference (singleton, cluster facts) → render (pure) → apply →
//! prune → status. Reconciles on every change of an NMState or of an object it applied.

use crate::{
    apply::{Applier, ApplyError, OWNER_LABEL},
    config::OperatorConfig,
    render::{self, ClusterFacts, RenderError},
    status,
};
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::{
    api::{
        admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
        apps::v1::{DaemonSet, Deployment},
        core::v1::{Node, Service, ServiceAccount, Toleration},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use nmstate_api::{NMState, condition::updated_conditions};
use nmstate_runtime::events::Events;
use nmstate_runtime::kube_errors::is_not_found;
use nmstate_runtime::watch;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::{sync::Arc, time::Duration};
use tracing::{info, warn};

/// The field manager of NMState's status (separate from the apply manager: on 1.20 a status
/// apply by the owner of the labels drops them).
pub const STATUS_FIELD_MANAGER: &str = nmstate_api::names::OPERATOR_STATUS_FIELD_MANAGER;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl OperatorError {
    /// A bounded category, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            OperatorError::Render(_) => "render",
            OperatorError::Apply(_) => "apply",
            OperatorError::Kube(_) => "kube",
        }
    }
}

pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub applier: Applier,
    /// Warning events on the NMState CR.
    pub events: Events,
    /// The API server's minor version.
    pub server_minor: u32,
    /// `kubernetes_nmstate_reconcile_total{controller="nmstate"}` and its durations.
    pub metrics: Arc<nmstate_runtime::metrics::Metrics>,
}

/// The operator's reporting component, and its leader election's name.
pub const COMPONENT: &str = nmstate_api::names::OPERATOR;
/// Warning event on an NMState CR other than the one in charge, which is deleted.
pub const SINGLETON_VIOLATION: &str = "SingletonViolation";

/// The metrics' `controller` label.
pub const CONTROLLER: &str = nmstate_api::names::OPERATOR_METRICS_CONTROLLER;

/// Reconciles until `shutdown`.
pub async fn run(context: Arc<Context>, shutdown: impl Future<Output = ()> + Send + 'static) {
    // The controller wants a shareable future: relay the signal through a channel.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(());
    });
    let shutdown = async move {
        let _ = stopped.await;
    }
    .shared();
    let client = context.client.clone();
    // Every watch through the same retries (a Controller's own would wait out a backoff after
    // the API server says a resumed watch expired); of what it applied, only objects carrying
    // its label.
    let (nmstates, nmstate_stream) = watch::cached(
        "NMState",
        watcher(Api::<NMState>::all(client.clone()), watcher::Config::default()),
    );
    let controller = Controller::for_stream(nmstate_stream, nmstates)
        .watches_stream(applied::<DaemonSet>(&client, "daemon sets"), owner_of)
        .watches_stream(applied::<Deployment>(&client, "deployments"), owner_of)
        .watches_stream(applied::<Service>(&client, "services"), owner_of)
        .watches_stream(applied::<ServiceAccount>(&client, "service accounts"), owner_of)
        .watches_stream(applied::<Role>(&client, "roles"), owner_of)
        .watches_stream(applied::<RoleBinding>(&client, "role bindings"), owner_of)
        .watches_stream(applied::<ClusterRole>(&client, "cluster roles"), owner_of)
        .watches_stream(
            applied::<ClusterRoleBinding>(&client, "cluster role bindings"),
            owner_of,
        )
        .watches_stream(
            applied::<MutatingWebhookConfiguration>(&client, "mutating webhooks"),
            owner_of,
        )
        .watches_stream(
            applied::<ValidatingWebhookConfiguration>(&client, "validating webhooks"),
            owner_of,
        );
    let unlisted = watch::stopped_before_listed(controller.store(), shutdown.clone());
    let controller = controller
        .graceful_shutdown_on(shutdown)
        .run(measured_reconcile, error_policy, context)
        .for_each(|_| async {});
    tokio::select! {
        () = controller => {}
        () = unlisted => {}
    }
}

/// The objects of kind `K` the operator applied (carrying its label), as they change.
fn applied<K>(
    client: &Client,
    what: &'static str,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let ours = watcher::Config::default().labels(OWNER_LABEL);
    watch::touched(what, watcher(Api::<K>::all(client.clone()), ours))
}

/// The NMState that controls `object`. Cluster-scoped, so the reference carries no namespace
/// (`owns` would add the child's, and one NMState would be reconciled as several at once).
fn owner_of<K: Resource>(object: K) -> Option<ObjectRef<NMState>> {
    object
        .owner_references()
        .iter()
        .find(|reference| reference.controller == Some(true) && reference.kind == NMState::kind(&()))
        .map(|reference| ObjectRef::new(&reference.name))
}

/// The oldest NMState wins, whatever its name (upstream's rule); `true` when `nmstate` is it.
fn is_the_singleton(nmstate: &NMState, all: &[NMState]) -> bool {
    let key = |candidate: &NMState| {
        (
            candidate.creation_timestamp().map(|time| time.0),
            candidate.name_any(),
        )
    };
    all.iter().map(key).min() == Some(key(nmstate)) || all.is_empty()
}

async fn measured_reconcile(nmstate: Arc<NMState>, context: Arc<Context>) -> Result<Action, OperatorError> {
    let started = std::time::Instant::now();
    let result = reconcile(nmstate, context.clone()).await;
    context
        .metrics
        .record_reconcile(CONTROLLER, result.is_ok(), started.elapsed());
    result
}

async fn reconcile(nmstate: Arc<NMState>, context: Arc<Context>) -> Result<Action, OperatorError> {
    if nmstate.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api = Api::<NMState>::all(context.client.clone());
    let all = api.list(&ListParams::default()).await?.items;
    if !is_the_singleton(&nmstate, &all) {
        let reason =
            "Ignoring NMState.nmstate.io because one already exists and does not match existing name";
        warn!(name = %nmstate.name_any(), "{reason}; deleting it");
        context
            .events
            .warn(&*nmstate, SINGLETON_VIOLATION, "Delete", reason.into())
            .await;
        match api.delete(&nmstate.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(error.into()),
        }
        return Ok(Action::await_change());
    }
    let outcome = async {
        let facts = ClusterFacts {
            server_minor: context.server_minor,
            tolerated_infra_taints: tolerated_infra_taints(&context.client, &nmstate).await?,
        };
        let objects = render::render(&nmstate.spec, &context.config, &facts)?;
        let applied = context.applier.apply(&nmstate, objects).await?;
        let namespaces = [context.config.handler_namespace.as_str(), "default"];
        context
            .applier
            .prune(&nmstate.name_any(), &namespaces, &applied)
            .await?;
        waiting_workloads(&context).await
    }
    .await;
    match &outcome {
        Ok(waiting) => write_status(&context.client, &nmstate, Ok(waiting)).await?,
        Err(error) => write_status(&context.client, &nmstate, Err(&error.to_string())).await?,
    }
    outcome?;
    // Owned workloads wake it up; this is the safety net.
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy(_: Arc<NMState>, error: &OperatorError, _: Arc<Context>) -> Action {
    warn!(category = error.category(), "reconcile failed: {error}");
    Action::requeue(Duration::from_secs(5))
}

/// Upstream's webhook replica rule: (node, taint) pairs among the nodes the infra selector
/// picks whose taint an infra toleration (the default ones included) matches exactly.
async fn tolerated_infra_taints(client: &Client, nmstate: &NMState) -> Result<usize, kube::Error> {
    let tolerations = render::infra_tolerations(&nmstate.spec);
    let selector = nmstate
        .spec
        .infra_node_selector
        .clone()
        .unwrap_or_else(|| [("kubernetes.io/os".to_string(), "linux".to_string())].into());
    let labels: Vec<String> = selector
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&labels.join(",")))
        .await?;
    Ok(count_tolerated_taints(&nodes.items, &tolerations))
}

/// The (node, taint) pairs whose taint some toleration matches by key, value and effect.
fn count_tolerated_taints(nodes: &[Node], tolerations: &[Toleration]) -> usize {
    nodes
        .iter()
        .flat_map(|node| node.spec.iter().flat_map(|spec| spec.taints.iter().flatten()))
        .filter(|taint| {
            tolerations.iter().any(|toleration| {
                toleration.key.as_deref() == Some(taint.key.as_str())
                    && toleration.value == taint.value
                    && toleration.effect.as_deref() == Some(taint.effect.as_str())
            })
        })
        .count()
}

/// What the workloads are still waiting for, in upstream's messages.
async fn waiting_workloads(context: &Context) -> Result<Vec<String>, OperatorError> {
    let namespace = &context.config.handler_namespace;
    let prefix = context.config.name_prefix();
    let mut waiting = Vec::new();
    let daemonsets = Api::<DaemonSet>::namespaced(context.client.clone(), namespace);
    if let Some(daemonset) = daemonsets.get_opt(&format!("{prefix}nmstate-handler")).await? {
        waiting.extend(status::daemonset_progress(&daemonset));
    }
    let deployments = Api::<Deployment>::namespaced(context.client.clone(), namespace);
    for name in ["nmstate-webhook", "nmstate-metrics"] {
        if let Some(deployment) = deployments.get_opt(&format!("{prefix}{name}")).await? {
            waiting.extend(status::deployment_progress(&deployment));
        }
    }
    Ok(waiting)
}

/// Writes the conditions when anything but their times changed.
async fn write_status(
    client: &Client,
    nmstate: &NMState,
    outcome: Result<&[String], &str>,
) -> Result<(), kube::Error> {
    let current = nmstate.status.clone().unwrap_or_default().conditions;
    let now = Time(Timestamp::now());
    let Some(updated) = updated_conditions(&current, status::conditions(outcome), &now) else {
        return Ok(());
    };
    let patch = json!({
        "apiVersion": "nmstate.io/v1", "kind": "NMState",
        "status": {"conditions": updated},
    });
    Api::<NMState>::all(client.clone())
        .patch_status(
            &nmstate.name_any(),
            &PatchParams::apply(STATUS_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    info!(name = %nmstate.name_any(), "status updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nmstate(name: &str, created: &str) -> NMState {
        serde_json::from_value(json!({
            "apiVersion": "nmstate.io/v1", "kind": "NMState",
            "metadata": {"name": name, "creationTimestamp": created}, "spec": {},
        }))
        .unwrap()
    }

    #[test]
    fn webhook_replicas_count_exactly_tolerated_taints() {
        let node = |taints: serde_json::Value| -> Node {
            serde_json::from_value(json!({"spec": {"taints": taints}})).unwrap()
        };
        let master = json!({"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"});
        let nodes = [
            node(json!([master])),
            node(json!([master, {"key": "other", "effect": "NoSchedule"}])),
            node(json!([])),
        ];
        let tolerations: Vec<Toleration> = serde_json::from_value(json!([
            {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
        ]))
        .unwrap();
        assert_eq!(count_tolerated_taints(&nodes, &tolerations), 2);
        let other_effect: Vec<Toleration> = serde_json::from_value(json!([
            {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoExecute"},
        ]))
        .unwrap();
        assert_eq!(count_tolerated_taints(&nodes, &other_effect), 0);
    }

    #[test]
    fn the_oldest_nmstate_wins_whatever_its_name() {
        let first = nmstate("zeta", "2026-01-01T00:00:00Z");
        let second = nmstate("alpha", "2026-01-02T00:00:00Z");
        let all = [first.clone(), second.clone()];
        assert!(is_the_singleton(&first, &all));
        assert!(!is_the_singleton(&second, &all));
        // Created in the same second: the name decides, the same way everywhere.
        let twin = nmstate("beta", "2026-01-01T00:00:00Z");
        let all = [first.clone(), twin.clone()];
        assert!(is_the_singleton(&twin, &all));
        assert!(!is_the_singleton(&first, &all));
    }
}
