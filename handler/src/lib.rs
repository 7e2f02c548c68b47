//! The kubernetes-nmstate node handler.

pub mod config;
pub mod node_state;
pub mod state_filter;
