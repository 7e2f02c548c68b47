//! What a pod's container runs, read from its template, for tests that run the operator as a
//! host process the way its Deployment says ([`crate::testing::start_operator_as_deployed`]).
//! Pods themselves run on real kubelets ([`crate::kube_node`]).

/// What a container of a pod runs (program, arguments, environment), from its template.
pub mod container;

pub use container::{KubeletError, PodFacts, invocation};
