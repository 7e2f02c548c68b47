//! `nmstate-cluster`, the cluster controller: the single writer of every policy's status
//! (leader-elected), and upstream's Prometheus metrics. It ships in the handler image as
//! upstream's Deployment `nmstate-metrics`; its other wire names are in `nmstate_api::names`
//! (`CLUSTER_*`).

/// The driver: leader election, the watches, and one status write per policy change.
pub mod controller;
/// The revert finalizer of policies with `deletionPolicy: Revert`.
pub mod finalizer;
/// Upstream's gauges, computed from the leader's watch caches at every scrape.
pub mod metrics;
/// A policy's conditions from its enactments and the nodes it selects (pure).
pub mod status;
