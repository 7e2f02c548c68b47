//! `nmstate-operator`, the cluster operator: watches the singleton NMState CR, renders the
//! operands (the handler DaemonSet, the webhook, the cluster controller, certificates and RBAC)
//! from the templates in `templates/`, applies them with server-side apply, prunes what is no
//! longer rendered, and reports status. Its own packaging (chart, bundle, manifest) is
//! `nmstate-packaging`, beside it.

/// Server-side apply of what was rendered, and pruning of what no longer is.
pub mod apply;
/// Settings, from the environment its Deployment sets.
pub mod config;
/// The driver: dereference → render → apply → status, while leading.
pub mod controller;
/// The operands for an NMState and the cluster's facts (pure).
pub mod render;
/// The NMState's conditions from its operands' rollout (pure).
pub mod status;
