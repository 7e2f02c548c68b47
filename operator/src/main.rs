//! `nmstate-operator`: installs kubernetes-nmstate from the NMState resource.

use clap::{Parser, ValueEnum};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Config, CustomResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
};
use nmstate_api::NMState;
use nmstate_operator::config::{ConfigError, OperatorConfig};
use std::{path::PathBuf, process::ExitCode};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "nmstate-operator",
    version,
    about = "kubernetes-nmstate operator: installs the node handler, \
    webhook, certificates and RBAC described by the NMState resource"
)]
struct Cli {
    /// kubeconfig to use [default: KUBECONFIG, ~/.kube/config, else the in-cluster service account]
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Log verbosity; RUST_LOG overrides it
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Info,
    Debug,
}

#[derive(Debug, thiserror::Error)]
enum OperatorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot load kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("cannot find a kubeconfig or in-cluster configuration: {0}")]
    InferConfig(#[from] kube::config::InferConfigError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "the NMState CRD ({0}) is not installed: install the operator with its Helm chart or OLM bundle, \
         or `kubectl apply -f manifests/crds/{0}.yaml`"
    )]
    MissingCrd(&'static str),
    #[error(
        "installing the operands is not part of this build yet: the API server and the NMState CRD \
         were reachable, and the operator stops here"
    )]
    ReconcilerUnavailable,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.log_level {
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: container logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<(), OperatorError> {
    let config = OperatorConfig::from_lookup(|name| std::env::var(name).ok())?;
    info!(namespace = %config.handler_namespace, image = %config.handler_image, "starting");
    let client = kube_client(cli.kubeconfig.clone()).await?;
    let server = client.apiserver_version().await?;
    info!(server = %server.git_version, "connected to the API server");
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    if crds.get_opt(NMState::crd_name()).await?.is_none() {
        return Err(OperatorError::MissingCrd(NMState::crd_name()));
    }
    Err(OperatorError::ReconcilerUnavailable)
}

async fn kube_client(kubeconfig: Option<PathBuf>) -> Result<Client, OperatorError> {
    let config = match kubeconfig {
        Some(path) => {
            Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &KubeConfigOptions::default())
                .await?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}
