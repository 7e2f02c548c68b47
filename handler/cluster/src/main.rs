//! `nmstate-cluster`: the cluster-level controller of kubernetes-nmstate. Writes every policy's
//! status (the only writer, leader-elected) and serves the Prometheus metrics.

use clap::Parser;
use nmstate_api::names;
use nmstate_cluster::{
    controller::{self, ClusterError, Settings},
    metrics::ClusterMetrics,
};
use nmstate_runtime::{
    election::ReplicaArgs,
    metrics,
    process::{self, ClientError},
};
use std::{net::SocketAddr, process::ExitCode, sync::Arc};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "nmstate-cluster",
    version,
    about = "kubernetes-nmstate cluster controller: writes policy statuses (leader-elected) and serves metrics"
)]
struct Cli {
    /// The handlers' heartbeats are in the namespace too.
    #[command(flatten)]
    replica: ReplicaArgs,
    /// How long a node that cannot revert a deleted policy (NotReady, or no live handler)
    /// holds the deletion of a policy with `deletionPolicy: Revert`
    #[arg(long, env = "REVERT_TIMEOUT_SECONDS", default_value_t = nmstate_cluster::finalizer::DEFAULT_REVERT_TIMEOUT.as_secs())]
    revert_timeout_seconds: u64,
    /// Where /metrics, /healthz and /readyz are served
    #[arg(long, env = "METRICS_BIND_ADDRESS", default_value = "0.0.0.0:8089", value_parser = bind_address)]
    metrics_bind_address: SocketAddr,
}

/// Accepts upstream's `:8089` form as well as `host:port`.
fn bind_address(value: &str) -> Result<SocketAddr, String> {
    let full = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_string()
    };
    full.parse()
        .map_err(|_| format!("{value:?} is not an address such as :8089 or 0.0.0.0:8089"))
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot serve metrics on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_tracing("info");
    process::run_to_exit(run(cli))
}

async fn run(cli: Cli) -> Result<(), MainError> {
    // First: a PID 1 ignores SIGTERM until it listens for it (see `shutdown_signal`).
    let shutdown = process::shutdown_signal();
    let client = process::kube_client(cli.replica.kubeconfig.clone()).await?;
    let metrics = Arc::new(ClusterMetrics::default());
    let address = cli.metrics_bind_address;
    let server = metrics::serve(address, metrics.served.clone())
        .await
        .map_err(|source| MainError::Bind { address, source })?;
    info!(%address, "serving /metrics");
    let settings = Settings {
        namespace: cli.replica.namespace.clone(),
        election: cli
            .replica
            .election(names::CLUSTER_LEASE, "writing policy statuses"),
        revert_timeout: std::time::Duration::from_secs(cli.revert_timeout_seconds),
    };
    let result = controller::run(client, settings, metrics, shutdown).await;
    server.abort();
    info!("stopped");
    Ok(result?)
}
