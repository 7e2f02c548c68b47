//! `nmstate-operator`: installs kubernetes-nmstate from the NMState resource.

use clap::{Parser, ValueEnum};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, CustomResourceExt,
    api::{Patch, PatchParams},
};
use nmstate_api::NMState;
use nmstate_operator::{
    apply::Applier,
    config::{ConfigError, CrdManagement, OperatorConfig},
    controller::{self, Context},
};
use nmstate_runtime::{
    election::ReplicaArgs,
    events::Events,
    process::{self, ClientError},
};
use std::{net::SocketAddr, process::ExitCode, sync::Arc};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "nmstate-operator",
    version,
    about = "kubernetes-nmstate operator: installs the node handler, \
    webhook, certificates and RBAC described by the NMState resource"
)]
struct Cli {
    #[command(flatten)]
    replica: ReplicaArgs,
    /// Log verbosity; RUST_LOG overrides it
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
    /// Where /healthz, /readyz and /metrics are served
    #[arg(long, env = "HEALTH_BIND_ADDRESS", default_value = "0.0.0.0:8081")]
    health_bind_address: SocketAddr,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Info,
    Debug,
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "the NMState CRD ({0}) is not installed: install the operator with its Helm chart or OLM bundle, \
         or `kubectl apply -f manifests/crds/{0}.yaml`"
    )]
    MissingCrd(&'static str),
    #[error("cannot serve health checks on {address}: {source}")]
    Health {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("leader election: {0}")]
    Election(#[from] kube_lease_manager::LeaseManagerError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_tracing(match cli.log_level {
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    });
    process::run_to_exit(run(cli))
}

async fn run(cli: Cli) -> Result<(), MainError> {
    // First: a PID 1 ignores SIGTERM until it listens for it (see `shutdown_signal`).
    let shutdown = process::shutdown_signal();
    let config = OperatorConfig::from_lookup(|name| std::env::var(name).ok())?;
    info!(namespace = %config.handler_namespace, image = %config.handler_image, "starting");
    let client = process::kube_client(cli.replica.kubeconfig.clone()).await?;
    let server = client.apiserver_version().await?;
    info!(server = %server.git_version, "connected to the API server");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds.get_opt(NMState::crd_name()).await?.is_none() {
        return Err(MainError::MissingCrd(NMState::crd_name()));
    }
    if config.crds == CrdManagement::NMState {
        // Installed once by Helm from crds/; this release's version of it, from here on.
        let crd = nmstate_api::crd::for_server(
            nmstate_api::crd::nmstates(),
            nmstate_api::crd::server_minor(&server),
        );
        crds.patch(
            NMState::crd_name(),
            &PatchParams::apply(nmstate_operator::apply::FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
        info!(crd = NMState::crd_name(), "applied");
    }
    let address = cli.health_bind_address;
    let metrics = Arc::new(nmstate_runtime::metrics::Metrics::default());
    let health = nmstate_runtime::metrics::serve(address, metrics.clone())
        .await
        .map_err(|source| MainError::Health { address, source })?;
    let election = cli
        .replica
        .election(controller::COMPONENT, "installing kubernetes-nmstate");
    let server_minor = nmstate_api::crd::server_minor(&server);
    let context = Arc::new(Context {
        applier: Applier::new(client.clone()).await?,
        events: Events::new(
            client.clone(),
            controller::COMPONENT,
            &election.identity,
            server_minor,
        ),
        server_minor,
        client: client.clone(),
        config,
        metrics,
    });
    let lead = || controller::run(context.clone(), std::future::pending());
    let result = nmstate_runtime::election::run_while_leading(client, &election, shutdown, lead, || {}).await;
    health.abort();
    info!("stopped");
    Ok(result?)
}
