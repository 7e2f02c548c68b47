//! `NodeNetworkConfigurationEnactment` (`nnce`): how one policy went on one node. Named
//! `<node>.<policy>`, owned by the Node, labelled [`crate::labels::POLICY`] and
//! [`crate::labels::NODE`]. It has no spec; everything is status.

use crate::condition::{Condition, wire_strings};
use crate::document::NetworkStateDocument;
use crate::probes::ProbeReport;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The fields of an enactment besides metadata and status: none. Upstream stores enactments
/// with no `spec`, so none is written here either.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "nmstate.io",
    version = "v1beta1",
    kind = "NodeNetworkConfigurationEnactment",
    plural = "nodenetworkconfigurationenactments",
    doc = "NodeNetworkConfigurationEnactment reports how one policy was applied on one node.",
    singular = "nodenetworkconfigurationenactment",
    shortname = "nnce",
    status = "NodeNetworkConfigurationEnactmentStatus",
    no_spec,
    printcolumn = r#"{"name": "Status", "type": "string", "description": "Status", "jsonPath": ".status.conditions[?(@.status==\"True\")].type"}"#,
    printcolumn = r#"{"name": "Status Age", "type": "date", "description": "Status Age", "jsonPath": ".status.conditions[?(@.status==\"True\")].lastTransitionTime"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "description": "Reason", "jsonPath": ".status.conditions[?(@.status==\"True\")].reason"}"#
)]
pub struct NodeNetworkConfigurationEnactmentFields {}

/// The name of the enactment of `policy` on `node`.
pub fn enactment_name(node: &str, policy: &str) -> String {
    format!("{node}.{policy}")
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkConfigurationEnactmentStatus {
    /// The policy's desired state for this node, after capture resolution and defaulting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_state: Option<NetworkStateDocument>,
    /// Resolved captures, reused on later reconciles so results stay stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_states: Option<BTreeMap<String, CapturedState>>,
    /// Defined upstream, never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_state_meta_info: Option<StateMetaInfo>,
    /// The policy generation these conditions belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// nmstate features the desired state uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Failed applies per policy generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_count: Option<BTreeMap<String, i64>>,
    /// Each probe of the last apply: whether it ran, its result and how long it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Vec<ProbeReport>>,
    /// What the policy would do on this node, when it is a preview (`spec.preview`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<EnactmentPreview>,
    /// The state that undoes the policy on this node, back to before its first apply: worked
    /// out before each apply, the earliest value of each interface, route and DNS setting
    /// kept. Applied when the policy, with `deletionPolicy: Revert`, is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_state: Option<NetworkStateDocument>,
}

impl NodeNetworkConfigurationEnactmentStatus {
    /// Whether its condition `type_` is True.
    pub fn is(&self, type_: EnactmentConditionType) -> bool {
        crate::condition::find_condition(&self.conditions, type_.as_str()).is_some_and(Condition::is_true)
    }
}

/// What applying the policy would do on the node, worked out without applying it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnactmentPreview {
    /// What the apply would change: the parts of the desired state the node does not have yet
    /// (nmstate's difference from the node's current state). Absent: nothing would change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<NetworkStateDocument>,
    /// The state that would undo the change on this node: what an interface, route or DNS
    /// setting the policy changes is now (nmstate's revert, against the node's current state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<NetworkStateDocument>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapturedState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<NetworkStateDocument>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_info: Option<StateMetaInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StateMetaInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

wire_strings! {
    /// Condition types of an enactment.
    EnactmentConditionType {
        Available = "Available",
        Failing = "Failing",
        Progressing = "Progressing",
        Pending = "Pending",
        Aborted = "Aborted",
        /// The policy is a preview: what it would do is worked out, nothing is applied.
        Previewed = "Previewed",
    }
}

wire_strings! {
    /// Condition reasons of an enactment.
    EnactmentConditionReason {
        FailedToConfigure = "FailedToConfigure",
        Retrying = "Retrying",
        SuccessfullyConfigured = "SuccessfullyConfigured",
        MaxUnavailableLimitReached = "MaxUnavailableLimitReached",
        ConfigurationProgressing = "ConfigurationProgressing",
        ConfigurationAborted = "ConfigurationAborted",
        /// Previewed: applying would change the node.
        WouldChange = "WouldChange",
        /// Previewed: the node already is in the desired state.
        NoChange = "NoChange",
        /// Previewed: this node would refuse the policy (its kernel or NetworkManager).
        WouldFail = "WouldFail",
        /// The policy is being deleted and undone on this node.
        Reverting = "Reverting",
        /// Undoing the deleted policy failed (rolled back); it is tried again.
        FailedToRevert = "FailedToRevert",
        /// A policy in `dependsOn` is not Available on this node yet.
        WaitingForDependency = "WaitingForDependency",
        /// A variable of the policy has no value on this node (a missing label, annotation or
        /// `perNode` entry, a missing pool); nothing was applied. Looked at again periodically.
        VariableUnresolved = "VariableUnresolved",
        /// The pool of a `fromIPPool` variable has no free address; nothing was applied. Taken
        /// as soon as one is freed.
        IPPoolExhausted = "IPPoolExhausted",
    }
}
