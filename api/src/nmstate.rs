//! `NMState` (`nmstates.nmstate.io`): the singleton that installs the handler, webhook and
//! their certificates and RBAC. `v1` is stored; `v1beta1` is served with the same schema and
//! marked deprecated (see [`crate::crd`]).

use crate::condition::{Condition, wire_strings};
use k8s_openapi::api::core::v1::{Affinity, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The DNS name the handler's DNS probe resolves when none is configured.
pub const DEFAULT_DNS_PROBE_HOST: &str = "root-servers.net";

/// Where and how the handler, webhook and certificates run. Only the oldest NMState object
/// is honoured; later ones are deleted by the operator.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "nmstate.io",
    version = "v1",
    kind = "NMState",
    plural = "nmstates",
    doc = "NMState installs and configures kubernetes-nmstate on the cluster. Only the oldest NMState is honoured.",
    singular = "nmstate",
    status = "NMStateStatus",
    printcolumn = r#"{"name": "Status", "type": "string", "description": "Status", "jsonPath": ".status.conditions[?(@.status==\"True\")].type"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "description": "Reason", "jsonPath": ".status.conditions[?(@.status==\"True\")].reason"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NMStateSpec {
    /// Node selector of the handler DaemonSet. Default: `kubernetes.io/os: linux`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the handler DaemonSet. Default: tolerate every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the handler DaemonSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Node selector of the webhook, metrics and certificate Deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the webhook, metrics and certificate Deployments. Default: the
    /// control-plane and master `NoSchedule` taints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_tolerations: Option<Vec<Toleration>>,
    /// Affinity of the webhook, metrics and certificate Deployments. Default: prefer
    /// control-plane nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_affinity: Option<Affinity>,
    /// Rotation of the webhook's self-signed CA and serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_sign_configuration: Option<SelfSignConfiguration>,
    /// Connectivity probes run by the handler after each change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = {"dns": {"host": DEFAULT_DNS_PROBE_HOST}}))]
    pub probe_configuration: Option<ProbeConfiguration>,
    /// Kept for compatibility with upstream manifests; metrics are always served by the
    /// metrics component, this field changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = {}))]
    pub metrics_configuration: Option<MetricsConfiguration>,
    /// A network-ready gate for nodes: with it, each handler keeps the Node condition
    /// `NetworkConfigured` (True once every policy selecting the node is Available there for
    /// its current generation; False, naming the pending policies, otherwise) and removes the
    /// startup taint, if one is named, once the node is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_readiness: Option<NetworkReadiness>,
    /// What the handlers leave out of each NodeNetworkState, and the size cap above which they
    /// trim it so that the API server never refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reporting: Option<StateReporting>,
    /// Log verbosity of the handler: `info` (default) or `debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "info"))]
    pub log_level: Option<LogLevel>,
}

/// Rotation intervals as Go duration strings (e.g. `8760h0m0s`). A field left out takes
/// its default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfSignConfiguration {
    /// How long the CA is valid. Default `8760h0m0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotate_interval: Option<String>,
    /// How long the old CA stays trusted after a rotation. Default `24h0m0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_overlap_interval: Option<String>,
    /// How long the serving certificate is valid. Default `4380h0m0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_rotate_interval: Option<String>,
    /// How long the old serving certificate stays in use after a rotation. Default `24h0m0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_overlap_interval: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProbeConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = {"host": DEFAULT_DNS_PROBE_HOST}))]
    pub dns: Option<DnsProbeConfiguration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DnsProbeConfiguration {
    /// The name the DNS probe resolves. Default `root-servers.net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = DEFAULT_DNS_PROBE_HOST))]
    pub host: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkReadiness {
    /// The key of a taint your provisioning puts on new nodes (for example
    /// `nmstate.io/network-unready`): the handler removes it once the node's network is
    /// configured, so workloads that need the node's networks are not scheduled before. It is
    /// never added back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub startup_taint: Option<String>,
}

/// The cap on a node's reported state when `maxBytes` is not set: well under etcd's default
/// request limit (1.5 MiB), leaving room for the rest of the object.
pub const DEFAULT_MAX_STATE_BYTES: u32 = 900 * 1024;
/// The smallest cap accepted: enough for a summary of a few hundred interfaces.
pub const MIN_MAX_STATE_BYTES: u32 = 32 * 1024;
/// The largest cap accepted.
pub const MAX_MAX_STATE_BYTES: u32 = 1024 * 1024;
/// How many patterns each exclude list may hold.
pub const MAX_EXCLUDE_PATTERNS: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateReporting {
    /// Interfaces left out of NodeNetworkState, by name: shell-style patterns (`*` any
    /// characters, `?` one), e.g. `veth*`, `mv-*`. Routes through them go too. Beyond the
    /// default, which leaves out veths NetworkManager ignores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_EXCLUDE_PATTERNS), inner(regex(pattern = r"^[A-Za-z0-9_.@+*?-]{1,64}$")))]
    pub exclude_interfaces: Vec<String>,
    /// Interfaces left out of NodeNetworkState, by nmstate type (`mac-vlan`, `vlan`, `veth`,
    /// `vxlan`, ...): shell-style patterns as for `excludeInterfaces`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_EXCLUDE_PATTERNS), inner(regex(pattern = r"^[A-Za-z0-9_.@+*?-]{1,64}$")))]
    pub exclude_types: Vec<String>,
    /// The most a node's reported state (`status.currentState`, as compact JSON) may take, in
    /// bytes (32768–1048576; default 921600, 900 KiB). Above it the handler drops details:
    /// first the per-interface details of virtual interfaces, then of the others, then running
    /// routes that are not configured, then whole interfaces; the NodeNetworkState says so in
    /// `status.trimmed` and its `Trimmed` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MIN_MAX_STATE_BYTES, max = MAX_MAX_STATE_BYTES))]
    pub max_bytes: Option<u32>,
}

/// The Node condition the network-ready gate keeps.
pub const NETWORK_CONFIGURED: &str = "NetworkConfigured";

wire_strings! {
    /// Reasons of the Node condition [`NETWORK_CONFIGURED`].
    NetworkConfiguredReason {
        /// Every policy selecting the node is Available there.
        PoliciesAvailable = "PoliciesAvailable",
        /// Some policy selecting the node is not Available there yet.
        PoliciesPending = "PoliciesPending",
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = ":8089"))]
    pub bind_address: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    #[default]
    Info,
    Debug,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NMStateStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

wire_strings! {
    /// Condition types of an NMState.
    NMStateConditionType {
        Available = "Available",
        Progressing = "Progressing",
        Degraded = "Degraded",
    }
}

wire_strings! {
    /// Condition reasons of an NMState.
    NMStateConditionReason {
        Deploying = "Deploying",
        SuccessfullyDeployed = "SuccessfullyDeployed",
        InternalError = "InternalError",
    }
}
