//! The kubernetes-nmstate node handler.

pub mod apply;
pub mod bridge_vlan;
pub mod capture;
pub mod config;
pub mod drift;
pub mod enactment;
pub mod enactment_conditions;
pub mod external_probes;
pub mod network_manager;
pub mod node_lock;
pub mod node_state;
pub mod node_state_reporter;
pub mod policy_events;
pub mod probes;
pub mod profiler;
pub mod profiles;
pub mod state_filter;
