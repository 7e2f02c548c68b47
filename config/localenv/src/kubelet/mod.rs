//! The kubelet's part, where no kubelet runs: [`container`] reads what a pod's container runs
//! from its template, [`pods`] runs a namespace's pods as processes.

/// What a container of a pod runs (program, arguments, environment), from its template.
pub mod container;
/// A namespace's DaemonSet and Deployment pods, run as processes until stopped.
pub mod pods;

pub use container::{KubeletError, PodFacts, invocation};
