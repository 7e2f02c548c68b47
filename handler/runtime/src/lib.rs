//! What every kubernetes-nmstate program (the node agent, the cluster controller, the webhook
//! and the operator) shares as a process. No nmstate, no NetworkManager: the operator links it.

/// Leader election among a Deployment's replicas (kube-lease-manager).
pub mod election;
/// Warning events on cluster-scoped objects, by the events API the server takes.
pub mod events;
/// The node agent's heartbeat Leases, as their readers see them.
pub mod heartbeat;
/// 404 and 409, written once.
pub mod kube_errors;
/// Leases held by hand: names, expiry, holding and renewing.
pub mod leases;
/// `/metrics`, `/healthz` and `/readyz`, with a reconcile counter per controller.
pub mod metrics;
/// Start-up and shutdown: logging, the API client, SIGTERM, the exit code.
pub mod process;
/// The backoff of every watch: back within seconds of the API server.
pub mod watch;
