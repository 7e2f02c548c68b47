//! Warning events on a policy when its enactment on this node gives up, as upstream records
//! them: reason `ReconcileFailed`, source component `<node>.nmstate-handler`, in the `default`
//! namespace (policies are cluster-scoped). Written as core/v1 Events, which `kubectl describe
//! nncp` lists and which kube-apiserver 1.20 accepts for cluster-scoped objects.

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{Api, Client, Resource, ResourceExt, api::PostParams};
use nmstate_api::NodeNetworkConfigurationPolicy;
use tracing::warn;

/// Events of cluster-scoped objects land here, as with client-go's recorder.
pub const EVENTS_NAMESPACE: &str = "default";
pub const RECONCILE_FAILED: &str = "ReconcileFailed";
/// A policy's `maxUnavailable` cannot be read; the default is used.
pub const INVALID_MAX_UNAVAILABLE: &str = "InvalidMaxUnavailable";

/// Upstream's message when the retries are used up.
pub fn failed_after_retries(enactment: &str, retries: u32) -> String {
    format!("reconciliation of enactment \"{enactment}\" has failed after {retries} retries")
}

/// Our message for an error that retrying cannot heal, so none was made.
pub fn failed_without_retries(enactment: &str) -> String {
    format!("reconciliation of enactment \"{enactment}\" has failed with an error that retrying cannot heal")
}

/// Upstream's message when too many nodes failed the policy for this one to try.
pub fn aborted(enactment: &str) -> String {
    format!("reconciliation of enactment \"{enactment}\" has aborted")
}

/// The Warning event `ReconcileFailed` on `policy`, reported by this node's handler.
pub fn reconcile_failed(policy: &NodeNetworkConfigurationPolicy, node: &str, message: String) -> Event {
    warning(policy, node, RECONCILE_FAILED, message)
}

/// A Warning event on `policy`, reported by this node's handler.
pub fn warning(policy: &NodeNetworkConfigurationPolicy, node: &str, reason: &str, message: String) -> Event {
    warning_on(policy, &format!("{node}.nmstate-handler"), node, reason, message)
}

/// A Warning event on a cluster-scoped `object`, reported by `component` on `host`. Core/v1,
/// in [`EVENTS_NAMESPACE`]: events.k8s.io refuses events on cluster-scoped objects on older
/// servers, and upstream's tooling looks for them there.
pub fn warning_on<K: Resource<DynamicType = ()>>(
    object: &K,
    component: &str,
    host: &str,
    reason: &str,
    message: String,
) -> Event {
    let now = Timestamp::now();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", object.name_any(), now.as_nanosecond())),
            namespace: Some(EVENTS_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(object.name_any()),
            uid: object.uid(),
            resource_version: object.resource_version(),
            ..ObjectReference::default()
        },
        type_: Some("Warning".into()),
        reason: Some(reason.into()),
        message: Some(message),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource {
            component: Some(component.into()),
            host: Some(host.into()),
        }),
        reporting_component: Some(component.into()),
        reporting_instance: Some(host.into()),
        ..Event::default()
    }
}

pub async fn record(client: &Client, event: &Event) {
    let events: Api<Event> = Api::namespaced(client.clone(), EVENTS_NAMESPACE);
    if let Err(error) = events.create(&PostParams::default(), event).await {
        warn!(
            reason = event.reason.as_deref().unwrap_or_default(),
            "cannot record an event in namespace {EVENTS_NAMESPACE} (the handler needs `create` on \
             events there): {error}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_names_the_policy_and_the_reporting_node() {
        let mut policy = NodeNetworkConfigurationPolicy::new("br1-eth1", Default::default());
        policy.metadata.uid = Some("0d1e".into());
        let event = reconcile_failed(&policy, "node01", failed_after_retries("node01.br1-eth1", 5));
        assert_eq!(
            event.message.as_deref(),
            Some("reconciliation of enactment \"node01.br1-eth1\" has failed after 5 retries")
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
        assert!(event.metadata.name.unwrap().starts_with("br1-eth1."));
        assert_eq!(
            event.involved_object.kind.as_deref(),
            Some("NodeNetworkConfigurationPolicy")
        );
        assert_eq!(
            event.involved_object.api_version.as_deref(),
            Some("nmstate.io/v1")
        );
        assert_eq!(event.involved_object.uid.as_deref(), Some("0d1e"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("ReconcileFailed"));
        assert_eq!(
            event.source.unwrap().component.as_deref(),
            Some("node01.nmstate-handler")
        );
    }
}
