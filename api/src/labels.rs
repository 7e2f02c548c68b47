//! Label and annotation keys that are part of the wire contract with upstream
//! kubernetes-nmstate (selectors, dashboards and scripts match on them).

/// On an enactment: the policy it enacts.
pub const POLICY: &str = "nmstate.io/policy";
/// On an enactment or a node state: the node it belongs to.
pub const NODE: &str = "nmstate.io/node";
/// On a node state: bumped by the handler after a successful apply to force a refresh.
pub const FORCE_NNS_REFRESH: &str = "nmstate.io/force-nns-refresh";
/// Annotation on a policy: written by the mutating webhook on every create and update.
pub const WEBHOOK_MUTATING_TIMESTAMP: &str = "nmstate.io/webhook-mutating-timestamp";
/// Annotation on webhook and metrics pod templates: a hash of the TLS profile.
pub const TLS_PROFILE_HASH: &str = "nmstate.io/tls-profile-hash";

/// Finalizer on a policy with `deletionPolicy: Revert`: held until every node undid it.
pub const REVERT_FINALIZER: &str = "nmstate.io/revert";

/// On a Lease the handler writes: what it is for ([`LEASE_HANDLER`] or [`LEASE_ROLLOUT_SLOT`]).
pub const LEASE: &str = "nmstate.io/lease";
/// [`LEASE`] value of a node's handler heartbeat: the node runs a live handler.
pub const LEASE_HANDLER: &str = "handler";
/// [`LEASE`] value of one of a policy's rollout slots: its holder may apply the policy.
pub const LEASE_ROLLOUT_SLOT: &str = "rollout-slot";
/// Annotation on a rollout slot: the policy generation its holder applies.
pub const POLICY_GENERATION: &str = "nmstate.io/policy-generation";
/// Annotation on a rollout slot: `failed` once its holder failed that generation for good; the
/// slot then stays taken for the generation, so failures use up the policy's budget.
pub const ROLLOUT_OUTCOME: &str = "nmstate.io/outcome";

/// `app.kubernetes.io/component`, copied from the handler's `COMPONENT` env.
pub const APP_COMPONENT: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/part-of`, copied from `PART_OF`.
pub const APP_PART_OF: &str = "app.kubernetes.io/part-of";
/// `app.kubernetes.io/version`, copied from `VERSION`.
pub const APP_VERSION: &str = "app.kubernetes.io/version";
/// `app.kubernetes.io/managed-by`, copied from `MANAGED_BY`.
pub const APP_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Operand pods carry `app: kubernetes-nmstate`.
pub const APP: &str = "app";
pub const APP_VALUE: &str = "kubernetes-nmstate";
/// Operand pods carry `component: kubernetes-nmstate-<x>`; the handler's value identifies
/// nodes that run a handler.
pub const COMPONENT: &str = "component";
pub const COMPONENT_HANDLER: &str = "kubernetes-nmstate-handler";
pub const COMPONENT_WEBHOOK: &str = "kubernetes-nmstate-webhook";
pub const COMPONENT_METRICS: &str = "kubernetes-nmstate-metrics";
pub const COMPONENT_CERT_MANAGER: &str = "kubernetes-nmstate-cert-manager";
/// Metrics objects carry `prometheus.nmstate.io: "true"`.
pub const PROMETHEUS: &str = "prometheus.nmstate.io";

/// The node-role labels a real cluster puts on its nodes.
pub const NODE_ROLE_CONTROL_PLANE: &str = "node-role.kubernetes.io/control-plane";
pub const NODE_ROLE_MASTER: &str = "node-role.kubernetes.io/master";
pub const NODE_ROLE_WORKER: &str = "node-role.kubernetes.io/worker";
