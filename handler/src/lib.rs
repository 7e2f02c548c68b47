//! The kubernetes-nmstate node handler.

pub mod config;
pub mod node_state;
