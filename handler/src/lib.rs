//! The kubernetes-nmstate node handler.

pub mod apply;
pub mod bridge_vlan;
pub mod capture;
pub mod cluster;
pub mod config;
pub mod drift;
pub mod enactment;
pub mod enactment_conditions;
pub mod enactment_objects;
pub mod external_probes;
pub mod heartbeat;
pub mod leases;
pub mod metrics;
pub mod network_manager;
pub mod node_lock;
pub mod node_state;
pub mod node_state_reporter;
pub mod policy_events;
pub mod policy_status;
pub mod probes;
pub mod process;
pub mod profiler;
pub mod profiles;
pub mod rollout;
pub mod state_filter;
