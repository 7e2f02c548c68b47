//! What every program shares as a process: logging, the API client and shutdown.

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use std::path::PathBuf;
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot load kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("cannot find a kubeconfig or in-cluster configuration: {0}")]
    InferConfig(#[from] kube::config::InferConfigError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// A client from `kubeconfig`, else from the environment (KUBECONFIG, ~/.kube/config, or the
/// in-cluster service account).
pub async fn kube_client(kubeconfig: Option<PathBuf>) -> Result<Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &KubeConfigOptions::default())
                .await?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Logs to stderr at `default` level unless RUST_LOG says otherwise; colours only on a
/// terminal, so container logs and files get plain text.
pub fn init_tracing(default: &str) {
    let requested = std::env::var("RUST_LOG")
        .ok()
        .filter(|filter| !filter.trim().is_empty());
    let mut filter = tracing_subscriber::EnvFilter::new(requested.as_deref().unwrap_or(default));
    // nispor warns on every link when the kernel has no nl80211 (no Wi-Fi): not worth a line,
    // unless nispor's logs were asked for.
    if !requested.as_deref().unwrap_or_default().contains("nispor")
        && let Ok(directive) = "nispor=error".parse()
    {
        filter = filter.add_directive(directive);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Completes on SIGTERM (how Kubernetes stops a pod) or SIGINT. It listens from the call on,
/// not from the first poll: as its container's PID 1 a process ignores the signals it has no
/// handler for, and the kubelet then waits out the whole grace period before it kills it, so
/// each program calls this first thing, before its start-up (which may wait: for the node's
/// lock, the API server, NetworkManager).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                warn!("cannot listen for SIGTERM and SIGINT ({error}); stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Runs `main` on a multi-threaded runtime and turns its outcome into the exit code, logging
/// the error that stopped it.
pub fn run_to_exit<E: std::fmt::Display>(
    main: impl Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))
        .and_then(|runtime| runtime.block_on(main).map_err(|error| error.to_string()));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            std::process::ExitCode::FAILURE
        }
    }
}
