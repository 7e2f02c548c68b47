//! The `nmstate.io` API: NMState, NodeNetworkConfigurationPolicy (`nncp`),
//! NodeNetworkConfigurationEnactment (`nnce`) and NodeNetworkState (`nns`).
//!
//! Types only, no I/O. Field names, defaults, condition types, reasons and label keys are wire
//! compatible with upstream kubernetes-nmstate, so its manifests apply unchanged.

/// Conditions as upstream writes them, and the wire strings of their types and reasons.
pub mod condition;
/// The CRDs, as each server version takes them (CEL rules from 1.25).
pub mod crd;
/// Ordering between policies: whether `dependsOn` leads a policy back to itself.
pub mod dependencies;
/// An nmstate state inside a resource (`desiredState`, `currentState`).
pub mod document;
/// NodeNetworkConfigurationEnactment (`nnce`): one per node and policy.
pub mod enactment;
/// NodeNetworkIPPool (`nnip`): addresses policies hand out to nodes.
pub mod ip_pool;
/// Label and annotation keys on the wire.
pub mod labels;
/// The names each program writes under: field managers, Leases, reporters.
pub mod names;
/// NMState: the operator's singleton.
pub mod nmstate;
/// NodeNetworkConfigurationPolicy (`nncp`), and which nodes it selects.
pub mod policy;
/// The checks a change must pass before it is committed: a policy's, and their reports.
pub mod probes;
/// Which nodes a policy selects.
pub mod selection;
/// NodeNetworkState (`nns`): a node's current network state.
pub mod state;
/// Per-node values in one policy: `spec.variables` and `{{ var.<name> }}` references.
pub mod variables;

#[cfg(test)]
mod tests;

pub use condition::{Condition, ConditionStatus};
pub use document::NetworkStateDocument;
pub use enactment::{NodeNetworkConfigurationEnactment, NodeNetworkConfigurationEnactmentStatus};
pub use nmstate::{NMState, NMStateSpec, NMStateStatus};
pub use policy::{
    NodeNetworkConfigurationPolicy, NodeNetworkConfigurationPolicySpec, NodeNetworkConfigurationPolicyStatus,
};
pub use state::{NodeNetworkState, NodeNetworkStateStatus};

/// The API group of every kind here.
pub const GROUP: &str = "nmstate.io";
