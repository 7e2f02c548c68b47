//! The kubernetes-nmstate operator.

pub mod apply;
pub mod config;
pub mod controller;
pub mod crds;
pub mod render;
pub mod status;
