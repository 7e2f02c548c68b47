//! `nmstate-cluster`: the cluster-level controller of kubernetes-nmstate. Writes every policy's
//! status (the only writer, leader-elected) and serves the Prometheus metrics.

use axum::{Router, routing::get};
use clap::Parser;
use nmstate_handler::{
    cluster::{self, ClusterError, Settings},
    config::DEFAULT_NAMESPACE,
    leader,
    metrics::Metrics,
    process::{self, ClientError},
};
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "nmstate-cluster",
    version,
    about = "kubernetes-nmstate cluster controller: writes policy statuses (leader-elected) and serves metrics"
)]
struct Cli {
    /// kubeconfig to use [default: KUBECONFIG, ~/.kube/config, else the in-cluster service account]
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the handlers' heartbeats and of the election Lease
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// This replica's name in the leader election [default: <hostname>-<pid>]
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the leader's lease lasts without renewal (a dead leader is replaced after it)
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 30)]
    lease_duration_seconds: u64,
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
    let client = process::kube_client(cli.kubeconfig).await?;
    let metrics = Arc::new(Metrics::default());
    let address = cli.metrics_bind_address;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| MainError::Bind { address, source })?;
    info!(%address, "serving /metrics");
    let served = metrics.clone();
    let routes = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = served.clone();
                async move { nmstate_handler::metrics::exposition(metrics.encode()) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    let server = tokio::spawn(async move { axum::serve(listener, routes).await });
    let identity = cli
        .identity
        .unwrap_or_else(|| leader::default_identity("nmstate-cluster"));
    let settings = Settings {
        namespace: cli.namespace,
        identity,
        lease_duration: Duration::from_secs(cli.lease_duration_seconds),
    };
    let result = cluster::run(client, settings, metrics, process::shutdown_signal()).await;
    server.abort();
    info!("stopped");
    Ok(result?)
}
