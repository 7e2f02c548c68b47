//! Warning events on cluster-scoped objects (policies, the NMState CR), in the `default`
//! namespace where `kubectl describe` looks for them, as client-go's recorders put them.
//!
//! On servers that accept `events.k8s.io/v1` events about cluster-scoped objects (1.21 and later,
//! kubernetes#100125) they go through kube-runtime's [`Recorder`], which folds a repeated event
//! into one with a growing series count. Kubernetes 1.20 refuses those ("involvedObject.namespace:
//! does not match event.namespace"), so there they are written as core/v1 Events, one per
//! occurrence. Either way `kubectl describe` shows the same reason, message and reporter.

use k8s_openapi::{
    api::core::v1::{Event as CoreEvent, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PostParams,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tracing::warn;

/// Events of cluster-scoped objects land here, as with client-go's recorders.
pub const EVENTS_NAMESPACE: &str = "default";

/// The first Kubernetes minor version (1.x) that takes `events.k8s.io/v1` events about
/// cluster-scoped objects.
pub const EVENTS_API_SINCE_MINOR: u32 = 21;

/// Records this process's events, by the API the server takes.
pub struct Events {
    client: Client,
    reporter: Reporter,
    recorder: Option<Recorder>,
}

impl Events {
    /// Events reported by `component` (upstream's source component, such as
    /// `node01.nmstate-handler`) from `instance`, to a server of version 1.`server_minor`.
    pub fn new(client: Client, component: &str, instance: &str, server_minor: u32) -> Self {
        let reporter = Reporter {
            controller: component.into(),
            instance: Some(instance.into()),
        };
        let recorder = uses_events_api(server_minor).then(|| Recorder::new(client.clone(), reporter.clone()));
        Events {
            client,
            reporter,
            recorder,
        }
    }

    /// Records a Warning `reason` about `object`; `action` says what was being done. A failure
    /// is logged, never returned: an event is worth less than the work that reports it.
    pub async fn warn<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.record(object, EventType::Warning, reason, action, note)
            .await;
    }

    /// Records a Normal `reason` about `object` (something a user waits for, such as a revert
    /// done), as [`Events::warn`] does.
    pub async fn normal<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.record(object, EventType::Normal, reason, action, note).await;
    }

    async fn record<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let result = match &self.recorder {
            Some(recorder) => {
                let event = Event {
                    type_,
                    reason: reason.into(),
                    note: Some(note),
                    action: action.into(),
                    secondary: None,
                };
                recorder.publish(&event, &object.object_ref(&())).await
            }
            None => {
                let event = core_event(object, &self.reporter, type_, reason, action, note);
                Api::<CoreEvent>::namespaced(self.client.clone(), EVENTS_NAMESPACE)
                    .create(&PostParams::default(), &event)
                    .await
                    .map(drop)
            }
        };
        if let Err(error) = result {
            warn!(
                reason,
                object = %object.name_any(),
                "cannot record an event in namespace {EVENTS_NAMESPACE} (this process needs \
                 `create` and `patch` on events there): {error}"
            );
        }
    }
}

/// Whether a server of version 1.`server_minor` takes `events.k8s.io/v1` events about
/// cluster-scoped objects.
pub fn uses_events_api(server_minor: u32) -> bool {
    server_minor >= EVENTS_API_SINCE_MINOR
}

/// A core/v1 event about a cluster-scoped `object`, for servers before
/// [`EVENTS_API_SINCE_MINOR`]: upstream's shape, with the source component set.
fn core_event<K: Resource<DynamicType = ()>>(
    object: &K,
    reporter: &Reporter,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) -> CoreEvent {
    let now = Timestamp::now();
    let instance = reporter.instance.clone();
    CoreEvent {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", object.name_any(), now.as_nanosecond())),
            namespace: Some(EVENTS_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            namespace: None,
            ..object.object_ref(&())
        },
        type_: Some(
            match type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        reason: Some(reason.into()),
        action: Some(action.into()),
        message: Some(note),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource {
            component: Some(reporter.controller.clone()),
            host: instance.clone(),
        }),
        reporting_component: Some(reporter.controller.clone()),
        reporting_instance: instance,
        ..CoreEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nmstate_api::NodeNetworkConfigurationPolicy;

    #[test]
    fn the_events_api_is_used_from_the_first_server_that_takes_it_for_cluster_scoped_objects() {
        for (minor, expected) in [(20, false), (21, true), (37, true)] {
            assert_eq!(uses_events_api(minor), expected, "1.{minor}");
        }
    }

    #[test]
    fn an_old_server_gets_upstreams_core_event_naming_the_policy_and_the_reporter() {
        let mut policy = NodeNetworkConfigurationPolicy::new("br1-eth1", Default::default());
        policy.metadata.uid = Some("0d1e".into());
        let reporter = Reporter {
            controller: "node01.nmstate-handler".into(),
            instance: Some("node01".into()),
        };
        let event = core_event(
            &policy,
            &reporter,
            EventType::Warning,
            "ReconcileFailed",
            "Apply",
            "failed".into(),
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
        assert!(event.metadata.name.unwrap().starts_with("br1-eth1."));
        let object = &event.involved_object;
        assert_eq!(object.kind.as_deref(), Some("NodeNetworkConfigurationPolicy"));
        assert_eq!(object.api_version.as_deref(), Some("nmstate.io/v1"));
        assert_eq!(object.uid.as_deref(), Some("0d1e"));
        assert_eq!(object.namespace, None);
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("ReconcileFailed"));
        assert_eq!(event.message.as_deref(), Some("failed"));
        let source = event.source.unwrap();
        assert_eq!(source.component.as_deref(), Some("node01.nmstate-handler"));
        assert_eq!(source.host.as_deref(), Some("node01"));
    }
}
