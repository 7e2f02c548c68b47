//! `NodeNetworkConfigurationPolicy` (`nncp`): a desired network state for the nodes its
//! selector matches. `v1` is stored; `v1beta1` is served with the same schema and marked
//! deprecated (see [`crate::crd`]).

use crate::condition::{Condition, wire_strings};
use crate::document::NetworkStateDocument;
use crate::probes::PolicyProbes;
use k8s_openapi::{
    api::core::v1::NodeSelectorTerm,
    apimachinery::pkg::{apis::meta::v1::Time, util::intstr::IntOrString},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `maxUnavailable` when a policy does not set it.
pub const DEFAULT_MAX_UNAVAILABLE: &str = "50%";

// The CEL rules (`x-kubernetes-validations`) mirror the admission webhook's checks for clusters
// that run them (1.25+); the webhook checks everything, on any version, with fuller messages.
// A spec change while the policy is in progress cannot be a CEL rule: desiredState keeps unknown
// fields, which CEL cannot compare.

/// The desired network configuration and which nodes it is for.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "nmstate.io",
    version = "v1",
    kind = "NodeNetworkConfigurationPolicy",
    plural = "nodenetworkconfigurationpolicies",
    doc = "NodeNetworkConfigurationPolicy is the desired network configuration of the nodes it selects.",
    singular = "nodenetworkconfigurationpolicy",
    shortname = "nncp",
    status = "NodeNetworkConfigurationPolicyStatus",
    printcolumn = r#"{"name": "Status", "type": "string", "description": "Status", "jsonPath": ".status.conditions[?(@.status==\"True\")].type"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "description": "Reason", "jsonPath": ".status.conditions[?(@.status==\"True\")].reason"}"#,
    printcolumn = r#"{"name": "Message", "type": "string", "description": "Progress of the rollout", "jsonPath": ".status.conditions[?(@.status==\"True\")].message"}"#,
    validation = Rule::new(
        "size(self.metadata.name) <= 63 && self.metadata.name.matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')"
    ).message("invalid policy name: must be no more than 63 characters or match label value format"),
)]
#[x_kube(validation = Rule::new(
    "has(self.capture) == has(oldSelf.capture) && (!has(self.capture) || self.capture == oldSelf.capture)"
).message("invalid policy operation: capture field cannot be modified"))]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkConfigurationPolicySpec {
    /// Labels a node must all carry (equality) for the policy to apply to it. Empty or
    /// missing: every node that runs a handler (and that `nodeSelectorTerms` selects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Bounded sizes keep the rules within the API server's CEL cost budget: with values of
    // unbounded length, 1.25+ servers refuse the whole CRD ("estimated rule cost exceeds budget
    // by factor of 96.6x", seen on 1.37). Label values are at most 63 characters anyway.
    #[schemars(extend("maxProperties" = 256, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    #[x_kube(
        validation = Rule::new(
            "self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))"
        ).message("nodeSelector keys must be valid qualified names"),
        validation = Rule::new(
            "self.all(k, size(self[k]) <= 63 && self[k].matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$'))"
        ).message("nodeSelector values must be valid label values"),
    )]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Kubernetes' node-selector terms (`matchExpressions` with `In`, `NotIn`, `Exists`,
    /// `DoesNotExist`, `Gt`, `Lt`; `matchFields` on `metadata.name`): a node must match one of
    /// them, and `nodeSelector` too. Left out: `nodeSelector` alone decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub node_selector_terms: Option<Vec<NodeSelectorTerm>>,
    /// Named nmpolicy expressions evaluated against the node's current state, referenced from
    /// `desiredState` as `"{{ capture.<name>.<path> }}"`. Cannot change after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<BTreeMap<String, String>>,
    /// The nmstate desired state to apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_state: Option<NetworkStateDocument>,
    /// How many selected nodes (a number, or a percentage such as `"50%"`) may apply the
    /// policy at the same time. Default `"50%"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(
        "string(self).matches('^([0-9]+|(100|[1-9]?[0-9])%)$')"
    ).message("maxUnavailable must be a non-negative integer or a percentage from 0% to 100%"))]
    pub max_unavailable: Option<IntOrString>,
    /// Values that `desiredState` refers to as `{{ var.<name> }}` (or, for an address,
    /// `{{ var.<name>.address }}`, `.prefix`, `.cidr`, `.gateway`), resolved on each node before
    /// captures: from the Node (`fromNode`), per node name (`perNode`), or an address from a
    /// NodeNetworkIPPool (`fromIPPool`). The enactment shows the node's resolved state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = crate::variables::MAX_VARIABLES))]
    pub variables: Option<BTreeMap<String, crate::variables::PolicyVariable>>,
    /// The checks the change must pass on each node before it is committed; what is left out
    /// keeps upstream's behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<PolicyProbes>,
    /// `true`: each selected node works out what the policy would change (its enactment's
    /// `status.preview` and `Previewed` condition) and applies nothing. Set it to `false`, or
    /// remove it, to apply the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<bool>,
    /// What deleting the policy does to the nodes: `Orphan` (default, as upstream) leaves their
    /// network as it is; `Revert` undoes the policy on each node first, back to before its
    /// first apply, leaving alone what other policies on the node still declare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Policies this one is applied after: on each node, it waits (Pending,
    /// `WaitingForDependency`) until every one of them that selects the node is Available there
    /// for its current generation. On delete with `Revert`, it is reverted before them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_DEPENDENCIES))]
    pub depends_on: Option<Vec<String>>,
}

/// At most this many entries in `dependsOn`.
pub const MAX_DEPENDENCIES: usize = 32;

impl NodeNetworkConfigurationPolicy {
    /// Whether it holds the revert finalizer ([`crate::labels::REVERT_FINALIZER`]).
    pub fn holds_revert_finalizer(&self) -> bool {
        self.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|finalizer| finalizer == crate::labels::REVERT_FINALIZER)
    }
}

/// [`NodeNetworkConfigurationPolicySpec::deletion_policy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Orphan,
    Revert,
}

impl NodeNetworkConfigurationPolicySpec {
    pub fn is_preview(&self) -> bool {
        self.preview == Some(true)
    }

    pub fn reverts_on_deletion(&self) -> bool {
        self.deletion_policy == Some(DeletionPolicy::Revert)
    }

    /// The policies this one depends on.
    pub fn dependencies(&self) -> &[String] {
        self.depends_on.as_deref().unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkConfigurationPolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Upstream's per-generation count of nodes applying the policy. Kept so objects written
    /// by upstream kubernetes-nmstate keep their status; this project coordinates with Leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_node_count_map: Option<BTreeMap<String, i64>>,
    /// Legacy upstream field, no longer written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_node_count: Option<i64>,
    /// Legacy upstream field, no longer written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_unavailable_node_count_update: Option<Time>,
}

wire_strings! {
    /// Condition types of a policy.
    PolicyConditionType {
        Available = "Available",
        Degraded = "Degraded",
        Progressing = "Progressing",
        Ignored = "Ignored",
        /// The policy is a preview (`spec.preview`), and every node worked out what it would do.
        Previewed = "Previewed",
    }
}

impl PolicyConditionType {
    /// The four types upstream writes on every policy; `Previewed` is only written on previews.
    pub const UPSTREAM: [PolicyConditionType; 4] = [
        PolicyConditionType::Available,
        PolicyConditionType::Degraded,
        PolicyConditionType::Progressing,
        PolicyConditionType::Ignored,
    ];
}

wire_strings! {
    /// Condition reasons of a policy.
    PolicyConditionReason {
        FailedToConfigure = "FailedToConfigure",
        SuccessfullyConfigured = "SuccessfullyConfigured",
        ConfigurationProgressing = "ConfigurationProgressing",
        NoMatchingNode = "NoMatchingNode",
        Previewed = "Previewed",
        /// The policy depends, through `dependsOn`, on itself.
        DependencyCycle = "DependencyCycle",
    }
}
