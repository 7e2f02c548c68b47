//! `NodeNetworkState` (`nns`): the network state a node reports. Named after the node, owned
//! by the Node. It has no spec; everything is status.

use crate::condition::{Condition, wire_strings};
use crate::document::NetworkStateDocument;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The fields of a node state besides metadata and status: none (upstream has no `spec`).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "nmstate.io",
    version = "v1beta1",
    kind = "NodeNetworkState",
    plural = "nodenetworkstates",
    doc = "NodeNetworkState is the network state a node reports.",
    singular = "nodenetworkstate",
    shortname = "nns",
    status = "NodeNetworkStateStatus",
    no_spec
)]
pub struct NodeNetworkStateFields {}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkStateStatus {
    /// The node's network state as nmstate reports it, filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_state: Option<NetworkStateDocument>,
    /// When `currentState` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_update_time: Option<Time>,
    /// The NetworkManager version on the host, read over D-Bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network_manager_version: Option<String>,
    /// The nmstate library version the handler is built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_nmstate_version: Option<String>,
    /// Defined upstream, never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_network_manager_version: Option<String>,
    /// Set when the state was above the size cap (`NMState.spec.stateReporting.maxBytes`) and
    /// parts of it were left out; the `Trimmed` condition says the same in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trimmed: Option<StateTrimming>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// What was left out of a node's reported state to keep it under the size cap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateTrimming {
    /// The cap, in bytes of compact JSON.
    pub max_bytes: u64,
    /// The size of the state before trimming.
    pub state_bytes: u64,
    /// The size of the reported state.
    pub reported_bytes: u64,
    /// Interfaces reported without their details (ethtool, LLDP, MTU bounds, ...): name, type,
    /// state, MAC address, MTU, controller, IP configuration and their type's own section.
    #[serde(default)]
    pub interfaces_without_details: u32,
    /// Interfaces reported by name, type and state only.
    #[serde(default)]
    pub interfaces_summarized: u32,
    /// Interfaces left out entirely.
    #[serde(default)]
    pub interfaces_omitted: u32,
    /// Entries of `routes.running` left out (routes that are not in `routes.config`).
    #[serde(default)]
    pub running_routes_omitted: u32,
}

wire_strings! {
    /// Condition types of a node state.
    NodeStateConditionType {
        Available = "Available",
        Failing = "Failing",
        /// Present, True, only while the reported state is trimmed to stay under the size cap.
        Trimmed = "Trimmed",
    }
}

wire_strings! {
    /// Condition reasons of a node state.
    NodeStateConditionReason {
        FailedToConfigure = "FailedToConfigure",
        SuccessfullyConfigured = "SuccessfullyConfigured",
        /// The node's NetworkManager is older than the oldest supported version; no policy
        /// is applied on it.
        UnsupportedNetworkManager = "UnsupportedNetworkManager",
        /// The node's state is above the size cap; parts of it are not reported.
        StateAboveSizeCap = "StateAboveSizeCap",
    }
}
