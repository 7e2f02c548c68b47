//! What the handler's binaries share as processes: logging, the API client and shutdown.

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

/// Completes on SIGTERM (how Kubernetes stops a pod) or SIGINT.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            warn!("cannot listen for SIGTERM ({error}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
