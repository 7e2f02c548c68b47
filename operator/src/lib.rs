//! The kubernetes-nmstate operator.

pub mod crds;
