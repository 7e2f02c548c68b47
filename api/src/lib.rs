//! The `nmstate.io` API: NMState, NodeNetworkConfigurationPolicy (`nncp`),
//! NodeNetworkConfigurationEnactment (`nnce`) and NodeNetworkState (`nns`).
//!
//! Types only, no I/O. Field names, defaults, condition types, reasons and label keys are wire
//! compatible with upstream kubernetes-nmstate, so its manifests apply unchanged.

pub mod condition;
pub mod crd;
pub mod document;
pub mod enactment;
pub mod labels;
pub mod names;
pub mod nmstate;
pub mod policy;
pub mod state;

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
