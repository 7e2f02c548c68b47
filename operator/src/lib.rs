//! The kubernetes-nmstate operator.

pub mod config;
pub mod crds;
pub mod render;
