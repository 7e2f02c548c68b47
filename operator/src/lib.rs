//! The kubernetes-nmstate operator.

pub mod apply;
pub mod config;
pub mod controller;
pub mod install;
pub mod render;
pub mod status;
