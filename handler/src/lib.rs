//! `nmstate-handler`, the node agent of kubernetes-nmstate (a DaemonSet): reports this node's
//! NodeNetworkState and applies the policies that select it through NetworkManager, one
//! enactment per policy, under a checkpoint with probes, within each policy's rollout.
//!
//! The cluster controller (`nmstate-cluster`), the webhook (`nmstate-webhook`) and what every
//! program shares (`nmstate-runtime`) are the crates beside this one, under `handler/`.

/// A desired state applied under a NetworkManager checkpoint, committed only if the probes
/// (gateway, DNS, API server) still pass.
pub mod apply;
/// The agent's settings, from the environment its DaemonSet sets.
pub mod config;
/// The policy controller on this node: one enactment per policy, its decisions in a pure plan.
pub mod enactment;
/// The node's network, through nmstate, NetworkManager and the kernel; never Kubernetes.
pub mod network;
/// One agent per node: a lock file on the host.
pub mod node_lock;
/// NodeNetworkState: written when the node's state changes, and after each apply.
pub mod node_state_reporter;
/// How long each phase of an apply takes, logged for `make bench`.
pub mod phases;
/// CPU profiles and heap figures over HTTP (`ENABLE_PROFILER`).
pub mod profiler;
/// Slots in a policy's rollout (`maxUnavailable`), and this node's heartbeat.
pub mod rollout;
/// The statuses only this agent writes, written whole by a JSON patch.
pub mod status_patch;
