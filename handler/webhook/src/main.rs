//! `nmstate-webhook`: the admission webhook for policies (HTTPS), and the leader-elected writer
//! of its self-signed CA and serving certificate.

use clap::Parser;
use nmstate_api::names;
use nmstate_runtime::{
    election::{self, ReplicaArgs},
    process::{self, ClientError},
};
use nmstate_webhook::{
    certs::{self, config::RotationConfig, manager::CertSettings},
    server::{self, WebhookServeError, WebhookState},
    tls,
};
use std::{net::SocketAddr, process::ExitCode};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "nmstate-webhook",
    version,
    about = "kubernetes-nmstate admission webhook: validates and mutates policies over TLS, and rotates its own certificates"
)]
struct Cli {
    /// The certificate Secrets are in the namespace too.
    #[command(flatten)]
    replica: ReplicaArgs,
    /// Where the webhook is served (HTTPS)
    #[arg(long, env = "WEBHOOK_BIND_ADDRESS", default_value = "0.0.0.0:9443")]
    bind_address: SocketAddr,
    /// The Service in front of the webhook: its names go into the serving certificate
    #[arg(long, env = "WEBHOOK_SERVICE", default_value = "nmstate-webhook")]
    service: String,
    /// More names (DNS or IP) for the serving certificate, comma-separated
    #[arg(long, env = "WEBHOOK_EXTRA_NAMES", value_delimiter = ',')]
    extra_names: Vec<String>,
    /// Secret with the serving certificate (tls.crt, tls.key, ca.crt)
    #[arg(long, env = "WEBHOOK_SECRET", default_value = "nmstate-webhook")]
    serving_secret: String,
    /// Secret with the CA (tls.crt, tls.key, ca-bundle.crt)
    #[arg(long, env = "WEBHOOK_CA_SECRET", default_value = "nmstate-ca")]
    ca_secret: String,
    /// The Mutating- and ValidatingWebhookConfiguration whose caBundle is kept up to date
    #[arg(long, env = "WEBHOOK_CONFIGURATION", default_value = "nmstate")]
    webhook_configuration: String,
    /// Make and rotate the certificates here (false when something else, e.g. cert-manager,
    /// fills the serving Secret and the caBundle)
    #[arg(long, env = "MANAGE_CERTIFICATES", default_value_t = true, action = clap::ArgAction::Set)]
    manage_certificates: bool,
    /// selfSignConfiguration.caRotateInterval [default: 8760h0m0s]
    #[arg(long, env = "CA_ROTATE_INTERVAL")]
    ca_rotate_interval: Option<String>,
    /// selfSignConfiguration.caOverlapInterval [default: 24h0m0s]
    #[arg(long, env = "CA_OVERLAP_INTERVAL")]
    ca_overlap_interval: Option<String>,
    /// selfSignConfiguration.certRotateInterval [default: 4380h0m0s]
    #[arg(long, env = "CERT_ROTATE_INTERVAL")]
    cert_rotate_interval: Option<String>,
    /// selfSignConfiguration.certOverlapInterval [default: 24h0m0s]
    #[arg(long, env = "CERT_OVERLAP_INTERVAL")]
    cert_overlap_interval: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Rotation(#[from] certs::config::RotationConfigError),
    #[error(transparent)]
    Serve(#[from] WebhookServeError),
    #[error("leader election: {0}")]
    Election(#[from] kube_lease_manager::LeaseManagerError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_tracing("info");
    process::run_to_exit(run(cli))
}

/// The Service's in-cluster names, then the extra ones.
fn serving_names(cli: &Cli) -> Vec<String> {
    let (service, namespace) = (&cli.service, &cli.replica.namespace);
    let mut names = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.clone(),
    ];
    names.extend(
        cli.extra_names
            .iter()
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty()),
    );
    names
}

async fn run(cli: Cli) -> Result<(), MainError> {
    // First: a PID 1 ignores SIGTERM until it listens for it (see `shutdown_signal`).
    let shutdown = process::shutdown_signal();
    // Checked before anything starts, so a bad NMState.spec.selfSignConfiguration is reported
    // at once and by name.
    let rotation = RotationConfig::from_settings(
        cli.ca_rotate_interval.as_deref(),
        cli.ca_overlap_interval.as_deref(),
        cli.cert_rotate_interval.as_deref(),
        cli.cert_overlap_interval.as_deref(),
    )?;
    let client = process::kube_client(cli.replica.kubeconfig.clone()).await?;
    let state = WebhookState::default();
    let certificate = state.certificate.clone();
    let follower = tokio::spawn(tls::follow_secret(
        client.clone(),
        cli.replica.namespace.clone(),
        cli.serving_secret.clone(),
        certificate.clone(),
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut server_stopped = stopped.clone();
    info!(address = %cli.bind_address, "serving the webhook");
    let server = tokio::spawn(server::serve(cli.bind_address, state, async move {
        let _ = server_stopped.wait_for(|stopped| *stopped).await;
    }));
    let certificates = async {
        if !cli.manage_certificates {
            shutdown.await;
            return Ok(());
        }
        let settings = CertSettings {
            namespace: cli.replica.namespace.clone(),
            ca_secret: cli.ca_secret.clone(),
            serving_secret: cli.serving_secret.clone(),
            webhook_configuration: cli.webhook_configuration.clone(),
            names: serving_names(&cli),
            rotation,
        };
        let election = cli
            .replica
            .election(names::WEBHOOK_CERTS, "rotating the webhook certificates");
        let lead = || certs::manager::run(client.clone(), settings.clone());
        election::run_while_leading(client.clone(), &election, shutdown, lead, || {}).await
    };
    let elected = certificates.await;
    let _ = stop.send(true);
    let served = server.await;
    follower.abort();
    info!("stopped");
    elected?;
    match served {
        Ok(result) => Ok(result?),
        Err(_) => Ok(()),
    }
}
