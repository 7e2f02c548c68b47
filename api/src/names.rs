//! The names each program writes under: field managers, leader-election Leases, event reporters
//! and metrics labels. They are on the wire: `managedFields` and Lease ownership are keyed by
//! them, so a new value would orphan what an older version wrote (upstream keeps its own in
//! `api/names/names.go`). Label and annotation keys are in [`crate::labels`].
//!
//! The cluster controller is the program `nmstate-cluster` (source `handler/cluster`), shipped as
//! upstream's Deployment `nmstate-metrics`; the names below are its other wire names.

/// The namespace the operands run in, unless `POD_NAMESPACE` says otherwise.
pub const DEFAULT_NAMESPACE: &str = "nmstate";

/// The node agent (`nmstate-handler`): the objects it creates (node states, enactments, its
/// Leases).
pub const HANDLER_FIELD_MANAGER: &str = "nmstate-handler";
/// The node agent: the status of its node state and of its enactments. A manager of its own:
/// before Kubernetes 1.22 an apply to `/status` by the manager that applied the labels takes
/// their ownership away.
pub const HANDLER_STATUS_FIELD_MANAGER: &str = "nmstate-handler-status";
/// Suffix of a node's heartbeat Lease, `<node>.nmstate-handler`, and of its event reporter.
pub const HANDLER_SUFFIX: &str = ".nmstate-handler";

/// The cluster controller's Lease: only its holder writes policy statuses.
pub const CLUSTER_LEASE: &str = "nmstate-cluster";
/// The cluster controller: policy statuses.
pub const CLUSTER_STATUS_FIELD_MANAGER: &str = "nmstate-policy-status";
/// The cluster controller's `controller` label in the reconcile metrics.
pub const CLUSTER_METRICS_CONTROLLER: &str = "policy-status";
/// The reporting component of the cluster controller's events on policies.
pub const CLUSTER_EVENTS_COMPONENT: &str = "nmstate-cluster";

/// The webhook's certificate writer: its Lease and the field manager of its Secrets and
/// caBundles.
pub const WEBHOOK_CERTS: &str = "nmstate-webhook-certs";

/// What the names of the operator's operands start with when its `HANDLER_PREFIX` is
/// `handler_prefix`: `<handler_prefix>-`, or nothing (`nmstate-handler`, `blue-nmstate-handler`).
pub fn operand_prefix(handler_prefix: &str) -> String {
    if handler_prefix.is_empty() {
        String::new()
    } else {
        format!("{handler_prefix}-")
    }
}

/// The operator: its Lease, its event reporter, and the field manager of what it renders.
pub const OPERATOR: &str = "nmstate-operator";
/// The operator: the NMState CR's status.
pub const OPERATOR_STATUS_FIELD_MANAGER: &str = "nmstate-operator-status";
/// The operator's `controller` label in the reconcile metrics.
pub const OPERATOR_METRICS_CONTROLLER: &str = "nmstate";
